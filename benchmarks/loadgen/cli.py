"""Command line, process orchestration and the JSON report of the load generator.

    python -m benchmarks.loadgen idle         --url ws://127.0.0.1:8080/echo --connections 10000 --hold 10
    python -m benchmarks.loadgen echo         --url ws://127.0.0.1:8080/echo --connections 100 --inflight 8
    python -m benchmarks.loadgen connect-rate --url ws://127.0.0.1:8080/echo --duration 5 --concurrency 50
    python -m benchmarks.loadgen echo         --url wss://127.0.0.1:8443/echo --ca /tmp/ca.pem   # or --insecure

The parent holds no sockets: it forks the workers, splits connections, rate, concurrency and source
addresses between them, runs the phases (ready -> hold/go -> stop) and merges their results. With
``--adaptive`` it also paces the opening: one window of handshakes in flight for all workers, following the
measured handshake latency (:mod:`benchmarks.loadgen.ramp`); ``--rate`` is then a ceiling only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import multiprocessing
import os
import resource
import signal
import ssl
import sys
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.loadgen.ramp import AdaptiveWindow
from benchmarks.loadgen.stats import Histogram
from benchmarks.loadgen.worker import Plan, client_context, run_worker

# Sockets per worker: under the 20 000 open-files hard limit with room for the pipe, epoll and stdio.
MAX_PER_PROC = 18_999
DEFAULT_PER_PROC = 18_000
DEFAULT_SOURCES = "127.0.0.2-127.0.0.50"


def parse_sources(spec: str) -> list[str]:
    """'127.0.0.2-127.0.0.50,127.0.1.1' -> list of addresses; 'none' -> [] (the kernel picks)."""
    if spec.strip().lower() in ("", "none"):
        return []
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            first, last = (ipaddress.IPv4Address(p.strip()) for p in part.split("-", 1))
            if last < first:
                raise ValueError(f"empty source range {part!r}")
            out.extend(str(ipaddress.IPv4Address(i)) for i in range(int(first), int(last) + 1))
        else:
            out.append(str(ipaddress.IPv4Address(part)))
    for addr in out:
        if not ipaddress.IPv4Address(addr).is_loopback:
            raise ValueError(f"source {addr} is not a loopback address")
    return out


def parse_url(url: str) -> tuple[str, int, str]:
    """ws[s]://host:port/path -> (IPv4 literal, port, path). Only loopback targets are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError("only ws:// and wss:// URLs are supported")
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"host must be an IPv4 literal or localhost, not {host!r}") from None
    # This workplace allows load only against the machine itself.
    if not addr.is_loopback:
        raise ValueError(f"refusing non-loopback target {host}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, parts.port or (443 if parts.scheme == "wss" else 80), path


def tls_options(args: argparse.Namespace) -> tuple[bool, str]:
    """(wss?, the host name the server's certificate must carry). Checks the TLS options against the URL and
    loads the CA file once here, so that a wrong file fails the run before any worker starts."""
    parts = urlsplit(args.url)
    tls = parts.scheme == "wss"
    if not tls:
        if args.ca or args.insecure or args.tls_max_version:
            raise ValueError("--ca, --insecure and --tls-max-version need a wss:// URL")
        return False, ""
    if not args.ca and not args.insecure:
        # The system's CAs never vouch for a loopback test server: say what to do instead of failing 10 000 times.
        raise ValueError("wss:// needs --ca FILE (the test CA) or --insecure")
    if args.ca and args.insecure:
        raise ValueError("--ca and --insecure exclude each other")
    try:
        client_context(args.ca or "", args.insecure, args.tls_max_version or "")
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--ca {args.ca}: {exc}") from None
    return True, parts.hostname or ""


def local_port_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True, help="ws:// or wss://127.0.0.1:PORT/echo (loopback only)")
    common.add_argument("--ca", default="", help="wss: PEM file of the CA that signed the server's certificate")
    common.add_argument("--insecure", action="store_true", help="wss: do not verify the server's certificate")
    common.add_argument(
        "--tls-max-version",
        choices=("1.2", "1.3"),
        default="",
        help="wss: highest TLS version offered (default: 1.3; the lowest is always 1.2)",
    )
    common.add_argument(
        "--deflate",
        action="store_true",
        help="offer permessage-deflate (client_max_window_bits); echo inflates compressed replies; "
        "a connection the server accepts without it counts in deflate.declined and makes the run not ok",
    )
    common.add_argument(
        "--connections",
        type=int,
        default=None,
        help="idle/echo: connections to open (default 1000 / 100); "
        "connect-rate: budget of handshakes (default 0 = until --duration)",
    )
    common.add_argument(
        "--procs",
        type=int,
        default=0,
        help=f"worker processes (default: enough for <= {DEFAULT_PER_PROC} sockets each)",
    )
    common.add_argument(
        "--sources",
        default=DEFAULT_SOURCES,
        help="source addresses to bind, e.g. 127.0.0.2-127.0.0.50,127.0.1.1 ('none': kernel picks)",
    )
    common.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="new connections per second, all workers together (0 = as fast as --max-pending allows)",
    )
    common.add_argument(
        "--max-pending",
        type=int,
        default=512,
        help="handshakes in progress per worker (keeps bursts under the server's accept backlog)",
    )
    common.add_argument(
        "--adaptive",
        action="store_true",
        help="idle/echo: a self-paced ramp: one window of handshakes in flight for all processes, grown while "
        "their p90 latency is under --latency-target-ms and cut when over (--max-pending is then ignored, "
        "--rate is a ceiling; see benchmarks/loadgen/ramp.py)",
    )
    common.add_argument("--window-max", type=int, default=256, help="adaptive: handshakes in flight, all procs")
    common.add_argument("--window-min", type=int, default=0, help="adaptive: floor of the window (default: procs)")
    common.add_argument("--latency-target-ms", type=float, default=200.0, help="adaptive: p90 handshake latency")
    common.add_argument("--control-period", type=float, default=0.5, help="adaptive: seconds between decisions")
    common.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach 101")
    common.add_argument("--close-timeout", type=float, default=5.0, help="seconds to wait for the server's FIN")
    common.add_argument(
        "--duration",
        type=float,
        default=None,
        help="echo/connect-rate: measured window (s); idle: cap on the whole run (default: derived)",
    )
    common.add_argument("--max-size", type=int, default=1 << 24, help="largest server frame accepted")
    common.add_argument("--json-out", type=Path, default=None, help="also write the report here")
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Cheap-per-connection WebSocket load generator (epoll, several processes).",
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    idle = sub.add_parser("idle", parents=[common], help="open N connections and hold them")
    idle.add_argument("--hold", type=float, default=10.0, help="seconds to hold once all are open")
    idle.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="written (JSON counts) once all are open; the hold also ends when PATH.done appears",
    )
    idle.add_argument("--verify-ping", action="store_true", help="at the end, ping every connection")
    idle.add_argument("--verify-timeout", type=float, default=10.0)
    idle.add_argument(
        "--verify-window",
        type=int,
        default=0,
        help="--verify-ping: our pings outstanding at once, all processes (0: every connection at once)",
    )
    idle.add_argument(
        "--close",
        dest="close_mode",
        choices=("ws", "fin", "rst"),
        default="ws",
        help="how the connections end after the hold: ws: close handshake; fin: plain close(); rst: abortive "
        "close (no TIME_WAIT; the cheapest teardown of a million on both sides)",
    )

    echo = sub.add_parser("echo", parents=[common], help="messages in flight on C connections for T s")
    echo.add_argument("--inflight", type=int, default=1, help="messages in flight per connection")
    echo.add_argument("--size", type=int, default=64, help="message size in bytes (>= 8, text >= 16)")
    echo.add_argument("--text", action="store_true", help="text messages instead of binary")
    echo.add_argument("--drain-timeout", type=float, default=2.0, help="wait for in-flight echoes after T")

    rate = sub.add_parser("connect-rate", parents=[common], help="open+handshake+close as fast as possible")
    rate.add_argument("--concurrency", type=int, default=64, help="live sockets at once, all workers")
    rate.add_argument(
        "--close",
        dest="close_mode",
        choices=("ws", "fin", "rst"),
        default="ws",
        help="ws: close handshake (server closes TCP first); fin: plain close(); rst: abortive close",
    )
    return parser


def make_plans(args: argparse.Namespace, start: float) -> list[Plan]:
    host, port, path = parse_url(args.url)
    tls, server_name = tls_options(args)
    sources = parse_sources(args.sources)
    mode = args.mode
    limit = min(MAX_PER_PROC, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100)
    if mode == "connect-rate":
        sockets = args.concurrency
        procs = args.procs or 1
    else:
        sockets = args.connections
        procs = args.procs or max(1, math.ceil(sockets / DEFAULT_PER_PROC))
    if sockets < 0 or (mode != "connect-rate" and sockets == 0):
        raise ValueError("--connections must be positive")
    if math.ceil(sockets / procs) > limit:
        raise ValueError(
            f"{sockets} sockets over {procs} procs is more than {limit} per process: "
            f"use --procs {math.ceil(sockets / limit)} or more"
        )
    if mode == "echo":
        minimum = 16 if args.text else 8
        if args.size < minimum:
            raise ValueError(f"--size must be >= {minimum}: the payload carries the send time")
        if args.inflight < 1:
            raise ValueError("--inflight must be >= 1")
    lo, hi = local_port_range()
    capacity = max(1, len(sources)) * (hi - lo + 1)
    if mode != "connect-rate" and sockets > 0.9 * capacity:
        raise ValueError(
            f"{sockets} connections to one server port need more than {len(sources) or 1} source "
            f"address(es) x {hi - lo + 1} ports: widen --sources or net.ipv4.ip_local_port_range"
        )

    duration = args.duration
    # Twice the planned opening time: a server slower than --rate must not cut the hold short.
    open_budget = 2 * (sockets / args.rate if args.rate else sockets / 2000) + args.connect_timeout + 60
    if mode == "idle":
        hard = start + (
            duration if duration else open_budget + args.hold + args.verify_timeout + args.close_timeout + 60
        )
        window = 0.0
    elif mode == "echo":
        window = duration or 10.0
        hard = start + open_budget + window + args.drain_timeout + args.close_timeout + 30
    else:
        window = duration or 10.0
        hard = start + window + args.connect_timeout + args.close_timeout + 30

    adaptive = bool(getattr(args, "adaptive", False)) and mode != "connect-rate"
    if adaptive:
        window_min = args.window_min or procs
        if not procs <= window_min <= args.window_max:
            raise ValueError(f"--window-min/--window-max: need {procs} (--procs) <= min <= max")
    conns = split(args.connections, procs)
    # adaptive: each starts with its share of the floor, one at least; the parent grows them
    pending = split(window_min, procs) if adaptive else [args.max_pending] * procs
    concurrency = split(args.concurrency, procs) if mode == "connect-rate" else [0] * procs
    plans = []
    for i in range(procs):
        plans.append(
            Plan(
                index=i,
                mode=mode,
                host=host,
                port=port,
                path=path,
                sources=sources,
                connections=conns[i],
                rate=args.rate / procs if args.rate else 0.0,
                max_pending=pending[i],
                concurrency=max(1, concurrency[i]),
                connect_timeout=args.connect_timeout,
                close_timeout=args.close_timeout,
                verify_timeout=getattr(args, "verify_timeout", 10.0),
                drain_timeout=getattr(args, "drain_timeout", 2.0),
                duration=window,
                inflight=getattr(args, "inflight", 1),
                size=getattr(args, "size", 64),
                text=getattr(args, "text", False),
                close_mode=getattr(args, "close_mode", "ws"),
                max_size=args.max_size,
                hard_deadline=hard,
                tls=tls,
                server_name=server_name,
                ca=args.ca or "",
                insecure=args.insecure,
                tls_max_version=args.tls_max_version or "",
                deflate=args.deflate,
                adaptive=adaptive,
                verify_window=max(1, args.verify_window // procs) if getattr(args, "verify_window", 0) else 0,
            )
        )
    if mode == "connect-rate" and args.connections:
        # A budget smaller than procs would leave a worker with 0, which means "no budget".
        for plan in plans:
            plan.connections = max(1, plan.connections)
    return plans


class Runner:
    """Parent side: start workers, drive the phases, collect results."""

    def __init__(self, args: argparse.Namespace, plans: list[Plan]) -> None:
        self.args = args
        self.plans = plans
        self.pipes: dict[Connection, int] = {}
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.ready: dict[int, tuple[int, int]] = {}
        self.progress: dict[int, tuple[int, int]] = {}
        self.results: dict[int, dict] = {}
        self.dead: set[int] = set()
        self.stop_requested = False
        self.interrupted = False
        self.last_print = 0.0
        self.t_ready = 0.0
        self.held = 0.0
        self.t_start = time.monotonic()
        self.inflight: dict[int, int] = {}  # adaptive: handshakes in flight per worker, from its last report
        self.shares: dict[int, int] = {}
        self.next_decision = 0.0
        self.ramp: AdaptiveWindow | None = None
        if plans[0].adaptive:
            self.ramp = AdaptiveWindow(
                args.window_min or len(plans), args.window_max, args.latency_target_ms / 1000.0
            )
            self.shares = {plan.index: plan.max_pending for plan in plans}

    def log(self, msg: str) -> None:
        if not self.args.quiet:
            print(f"[loadgen] {msg}", file=sys.stderr, flush=True)

    def start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        parent_ends: list[Connection] = []
        for plan in self.plans:
            parent_end, child_end = ctx.Pipe()
            close_fds = [p.fileno() for p in parent_ends] + [parent_end.fileno()]
            proc = ctx.Process(
                target=run_worker, args=(plan, child_end, close_fds), name=f"loadgen-{plan.index}", daemon=True
            )
            proc.start()
            child_end.close()
            parent_ends.append(parent_end)
            self.pipes[parent_end] = plan.index
            self.procs.append(proc)

    def pump(self, timeout: float) -> None:
        """Receive whatever the workers sent within timeout seconds."""
        live = [p for p, i in self.pipes.items() if i not in self.dead and i not in self.results]
        if not live:
            time.sleep(min(timeout, 0.05))
            return
        for pipe in wait(live, timeout):
            index = self.pipes[pipe]  # type: ignore[index]
            try:
                msg = pipe.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):
                self.dead.add(index)
                self.log(f"worker {index} exited without a result")
                continue
            kind = msg[0]
            if kind == "progress":
                self.progress[msg[1]] = (msg[2], msg[3])
                if self.ramp is not None and len(msg) > 4:
                    self.inflight[msg[1]] = msg[4]
                    self.ramp.observe(msg[6], msg[5])
            elif kind == "ready":
                self.ready[msg[1]] = (msg[2], msg[3])
                self.progress[msg[1]] = (msg[2], msg[3])
            elif kind == "result":
                self.results[msg[1]] = msg[2]

    def settled(self, which: dict) -> bool:
        return all(i in which or i in self.dead or i in self.results for i in range(len(self.plans)))

    def broadcast(self, msg: tuple) -> None:
        for pipe, index in self.pipes.items():
            if index not in self.dead and index not in self.results:
                try:
                    pipe.send(msg)
                except OSError:
                    self.dead.add(index)

    def print_progress(self, now: float) -> None:
        if now - self.last_print >= 2.0 and self.progress:
            self.last_print = now
            est = sum(p[0] for p in self.progress.values())
            failed = sum(p[1] for p in self.progress.values())
            self.log(f"established {est} failed {failed}")

    def wait_for(self, which: dict, deadline: float) -> None:
        while not self.settled(which) and not self.stop_requested and time.monotonic() < deadline:
            self.pump(0.1)
            now = time.monotonic()
            self.print_progress(now)
            if self.ramp is not None and now >= self.next_decision:
                self.control(now)

    def control(self, now: float) -> None:
        """Adaptive ramp: decide the window for the next period and give the workers still opening their share."""
        assert self.ramp is not None
        self.next_decision = now + self.args.control_period
        opening = [i for i in range(len(self.plans)) if i not in self.ready and i not in self.dead]
        self.ramp.decide(now - self.t_start, sum(self.inflight.get(i, 0) for i in opening))
        shares = self.ramp.shares(opening)
        for pipe, index in self.pipes.items():
            share = shares.get(index)
            if share is not None and share != self.shares.get(index):
                self.shares[index] = share
                try:
                    pipe.send(("window", share))
                except OSError:
                    self.dead.add(index)

    def run(self) -> None:
        args = self.args
        hard = self.plans[0].hard_deadline
        self.start()
        mode = args.mode
        if mode in ("idle", "echo"):
            self.wait_for(self.ready, hard)
            self.t_ready = time.monotonic()
            est = sum(r[0] for r in self.ready.values())
            failed = sum(r[1] for r in self.ready.values())
            self.log(f"ready: established {est} failed {failed}")
            if mode == "idle":
                self.hold(est, failed, hard)
                self.broadcast(("stop", bool(args.verify_ping)))
            elif not self.stop_requested:
                self.broadcast(("go",))
        # Results come after the window (echo), the stop (idle) or the budget (connect-rate).
        grace = hard + 30
        while not self.settled(self.results) and time.monotonic() < grace:
            if self.stop_requested:
                self.stop_requested = False
                self.broadcast(("stop", False))
            self.pump(0.2)
            if mode == "connect-rate":
                self.print_progress(time.monotonic())
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)

    def hold(self, established: int, failed: int, hard: float) -> None:
        args = self.args
        ready_file: Path | None = args.ready_file
        if ready_file is not None:
            info = {
                "target": args.connections,
                "established": established,
                "failed": failed,
                "loadgen_pids": [p.pid for p in self.procs],
                "time": time.time(),
            }
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, ready_file)  # atomic: a reader never sees half a file
        done_file = ready_file.with_name(ready_file.name + ".done") if ready_file else None
        until = min(self.t_ready + args.hold, hard)
        while time.monotonic() < until and not self.stop_requested:
            if done_file is not None and done_file.exists():
                break
            self.pump(0.1)
        self.held = time.monotonic() - self.t_ready

    def report(self) -> dict[str, Any]:
        args = self.args
        results = [self.results[i] for i in sorted(self.results)]
        failures: dict[str, int] = {}
        drops: dict[str, int] = {}
        closes: dict[str, int] = {}
        for r in results:
            for src, dst in ((r["failures"], failures), (r["drops"], drops), (r["closes"], closes)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
        started = sum(r["started"] for r in results)
        established = sum(r["established"] for r in results)
        handshake = Histogram()
        for r in results:
            handshake.merge_wire(r["handshake"])
        firsts = [r["first_open"] for r in results if r["first_open"]]
        lasts = [r["last_established"] for r in results if r["established"]]
        connect_elapsed = (max(lasts) - min(firsts)) if lasts and firsts else 0.0
        pss_delta = sum(r["mem_ready"][0] - r["mem_before"][0] for r in results if r["mem_ready"][0])
        rss_delta = sum(r["mem_ready"][1] - r["mem_before"][1] for r in results if r["mem_ready"][1])
        ready_est = sum(r[0] for r in self.ready.values()) or established
        report: dict[str, Any] = {
            "mode": args.mode,
            "url": args.url,
            "procs": len(self.plans),
            "sources": len(self.plans[0].sources),
            "workers_lost": len(self.dead),
            "connections": {
                "target": args.connections,
                "started": started,
                "established": established,
                "failed": sum(failures.values()),
                "dropped": sum(drops.values()),
            },
            "failures": failures,
            "drops": drops,
            "closes": closes,
            "connect": {
                "elapsed_s": round(connect_elapsed, 3),
                "rate_per_s": round(established / connect_elapsed, 1) if connect_elapsed > 0 else 0.0,
                "handshake_ms": handshake.summary_ms(),
            },
        }
        if args.mode != "connect-rate":
            report["loadgen_memory"] = {
                "pss_delta_bytes": pss_delta,
                "rss_delta_bytes": rss_delta,
                "pss_bytes_per_conn": round(pss_delta / ready_est) if ready_est else None,
                "rss_bytes_per_conn": round(rss_delta / ready_est) if ready_est else None,
            }
        if self.plans[0].tls:
            tls_hist = Histogram()
            for r in results:
                tls_hist.merge_wire(r["tls_handshake"])
            info = next((r["tls_info"] for r in results if r.get("tls_info")), {})
            report["tls"] = {
                "version": info.get("version"),
                "cipher": info.get("cipher"),
                "verified": not args.insecure,
                # TCP connect start -> TLS handshake done; connect.handshake_ms runs on to the 101.
                "handshake_ms": tls_hist.summary_ms(),
            }
        ok = not self.dead and not failures and not drops and len(results) == len(self.plans)
        if args.deflate:
            declined = sum(r["deflate_declined"] for r in results)
            report["deflate"] = {
                "offered": True,
                "negotiated": sum(r["deflate_negotiated"] for r in results),
                "declined": declined,
                "params": next((r["deflate_params"] for r in results if r.get("deflate_params")), None),
                "inflated_messages": sum(r["inflated"] for r in results),
            }
            # --deflate measures deflate-negotiated connections: a server that declines is not measured.
            ok = ok and declined == 0
        if args.mode == "idle":
            sent = sum(r["verify_sent"] for r in results)
            unsent = sum(r.get("verify_unsent", 0) for r in results)
            pongs = sum(r["verify_pongs"] for r in results)
            report["idle"] = {
                "hold_s": args.hold,
                "held_s": round(self.held, 3),
                "pings_answered": sum(r["pings_answered"] for r in results),
                # Per connection: how many of those open when the hold ended had answered >= 1 server ping
                # (a server with keepalive pings and a hold longer than its interval should see all of them).
                "server_pinged": {
                    "open_at_stop": sum(max(r.get("open_at_stop", 0), 0) for r in results),
                    "connections_pinged": sum(max(r.get("pinged_open", 0), 0) for r in results),
                },
                "unexpected_messages": sum(r["unexpected_messages"] for r in results),
            }
            if args.verify_ping:
                # missing: those pinged that did not answer, and those the verify timeout left unpinged
                report["idle"]["verify"] = {
                    "sent": sent,
                    "pongs": pongs,
                    "missing": sent + unsent - pongs,
                    "unsent": unsent,
                    "window": args.verify_window,
                }
                ok = ok and sent == pongs == established
            ok = ok and established == args.connections
        elif args.mode == "echo":
            rtt = Histogram()
            for r in results:
                rtt.merge_wire(r["rtt"])
            window = max((r["window"] for r in results), default=0.0)
            received = sum(r["received"] for r in results)
            mismatches = sum(r["mismatches"] for r in results)
            starts = [r["window_start_unix"] for r in results if r.get("window_start_unix")]
            report["echo"] = {
                "connections": established,
                "inflight": args.inflight,
                "size": args.size,
                "text": args.text,
                "window_s": round(window, 3),
                "window_unix": [min(starts), min(starts) + window] if starts else None,
                "sent": sum(r["sent"] for r in results),
                "messages": received,
                "messages_per_s": round(received / window, 1) if window else 0.0,
                "payload_mb_per_s": round(received * args.size / window / 1e6, 3) if window else 0.0,
                "rtt_ms": rtt.summary_ms(),
                "mismatches": mismatches,
                "late": sum(r["received_late"] for r in results),
                "lost_inflight": sum(r["lost_inflight"] for r in results),
            }
            ok = ok and mismatches == 0 and received > 0 and established == args.connections
        else:
            window = max((r.get("window", 0.0) for r in results), default=0.0)
            in_window = sum(r.get("in_window", 0) for r in results)
            starts = [r["window_start_unix"] for r in results if r.get("window_start_unix")]
            report["connect_rate"] = {
                "concurrency": args.concurrency,
                "close": args.close_mode,
                "window_s": round(window, 3),
                "window_unix": [min(starts), min(starts) + window] if starts else None,
                "handshakes": in_window,
                "handshakes_per_s": round(in_window / window, 1) if window else 0.0,
                "handshake_ms": handshake.summary_ms(),
            }
            ok = ok and in_window > 0
        if self.ramp is not None:
            # No retries (ramp.py): every connection counted established succeeded at its first attempt.
            report["ramp"] = {**self.ramp.summary(), "retries": 0}
        report["interrupted"] = self.interrupted
        report["ok"] = bool(ok) and not self.interrupted
        return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = {"idle": 1000, "echo": 100, "connect-rate": 0}[args.mode]
    start = time.monotonic()
    try:
        plans = make_plans(args, start)
    except ValueError as exc:
        parser.error(str(exc))
    runner = Runner(args, plans)

    def request_stop(signum: int, frame: object) -> None:
        runner.stop_requested = True
        runner.interrupted = True

    # Ctrl-C / SIGTERM: stop the workers cleanly and still print what was measured.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    runner.log(f"{args.mode}: {len(plans)} worker(s), {len(plans[0].sources)} source address(es)")
    runner.run()
    report = runner.report()
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return 0 if report["ok"] else 1
