"""Reconnect storm (issue 12, target 4; ``just bench-storm``): drain a node holding N subscribers, time their return.

    python -m benchmarks.storm                          # 100 000 subscribers, 1 000 channels (take the lock:
                                                        # flock /tmp/millionws-bench.lock python -m benchmarks.storm)
    python -m benchmarks.storm --subscribers 2000 --channels 20 --json-out /tmp/s.json --png ''   # rehearsal

What it does, bounded by the timeouts of each step, and cleaned up whatever happens:

1. preflight: at most 18 000 subscribers per server worker and per load-generator process (the open-files hard
   limit here is 20 000 per process), memory available against an estimate, the ports free, nats-server
   present, and (above 10 000 subscribers) the CPUs idle enough: another heavy run would make the figures
   meaningless;
2. a fresh ``nats-server -js`` and two nodes, A and B, each ``millionws serve --workers W --bus nats://...
   --backend-token T`` (a random token), pings off;
3. ``--procs`` load-generator processes (``fleet.py``) open N subscribers on node A, paced at ``--ramp-rate``,
   each subscribed with ``since: 0`` to one of ``--channels`` channels (subscriber i to channel i mod M);
4. once all are subscribed, the publisher (``publisher.py``) posts to node B, ``--rate`` messages per second
   round-robin over the channels, and keeps every acknowledged seq; after ``--pre`` seconds SIGTERM goes to
   node A's supervisor: its workers close every WebSocket with 1001 and exit;
5. the subscribers reconnect to node B after the full-jitter backoff of ``millionws.client`` and subscribe with
   ``since`` = the last seq they saw; the storm ends when all N are subscribed on B, or after
   ``--storm-timeout`` s;
6. ``--post`` more seconds of publishing, then each subscriber waits (at most ``--finish-wait`` s) for the last
   acknowledged seq of its channel and is checked against every acknowledged seq: lost, duplicated, holes;
7. report (``--json-out``) and plot (``--png``): time until 99 % / 100 % were subscribed again on B, handshakes/s
   on B (mean from SIGTERM to 100 %, busiest second, timeline), messages published / delivered / lost /
   duplicated, CPU of each side, the settings, the command, the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.fanout.driver import free_port, nats_binary, start_nats, wait_bus_up
from benchmarks.memory import meminfo
from benchmarks.servers import REPO_ROOT, CpuSampler, busy_pct_over, machine, stop_process, wait_until
from benchmarks.storm import report
from benchmarks.storm.fleet_pool import FleetPool
from benchmarks.storm.publisher import Publisher
from millionws.client import MAX_DELAY, MIN_DELAY

RESULTS = REPO_ROOT / "benchmarks" / "results"
PER_PROCESS_MAX = 18_000  # sockets per process: the open-files hard limit is 20 000 here
BYTES_PER_SUBSCRIBER = 16_000  # kernel ~10 KB per loopback pair + server and load generator user space, rounded up
HEAVY = 10_000  # above this many subscribers, a busy machine is a reason to stop


def log(msg: str) -> None:
    print(f"[storm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storm", description=__doc__.split("\n")[0])
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--channels", type=int, default=1_000)
    p.add_argument("--workers", type=int, default=0, help="workers per node (0: N / 15 000 rounded up, at least 2)")
    p.add_argument("--procs", type=int, default=0, help="load-generator processes (0: as --workers)")
    p.add_argument("--sources", type=int, default=50, help="loopback source addresses 127.0.0.2 ...")
    p.add_argument("--ramp-rate", type=float, default=2_000.0, help="new subscribers per second on node A")
    p.add_argument("--rate", type=float, default=100.0, help="publishes per second during the whole run")
    p.add_argument("--pre", type=float, default=5.0, help="seconds of publishing before SIGTERM")
    p.add_argument("--post", type=float, default=5.0, help="seconds of publishing after the storm")
    p.add_argument("--storm-timeout", type=float, default=120.0)
    p.add_argument("--finish-wait", type=float, default=30.0)
    p.add_argument("--open-timeout", type=float, default=10.0, help="seconds from connect to the 101")
    p.add_argument("--min-delay", type=float, default=MIN_DELAY, help="backoff: millionws.client's default")
    p.add_argument("--max-delay", type=float, default=MAX_DELAY, help="backoff: millionws.client's default")
    p.add_argument("--grace", type=float, default=10.0, help="node A's --grace (the server's default)")
    p.add_argument("--server-args", default="", help="more flags for both nodes")
    p.add_argument("--max-busy", type=float, default=50.0, help="preflight: CPU percent above which to stop")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--json-out", default=str(RESULTS / "storm.json"))
    p.add_argument("--png", default=str(RESULTS / "storm.png"), help="'' for no plot")
    args = p.parse_args(argv)
    n = args.subscribers
    if n < 1 or args.channels < 1 or args.channels > n:
        p.error("need 1 <= --channels <= --subscribers")
    args.workers = args.workers or max(2, math.ceil(n / 15_000))
    args.procs = args.procs or args.workers
    return args


class Storm:
    """One run: the processes it starts, the figures it takes, the cleanup it owes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="millionws-storm-"))
        self.token = secrets.token_urlsafe(24)
        self.channels = [f"storm.{k}" for k in range(args.channels)]
        self.nats: Any = None
        self.nodes: list[Any] = []
        self.ports: list[int] = []
        self.pool: FleetPool | None = None
        self.publisher: Publisher | None = None
        self.marks: dict[str, float] = {}  # monotonic times of the steps
        self.result: dict[str, Any] = {
            "scenario": "reconnect storm (issue 12, target 4)",
            "command": shlex.join([sys.executable, "-m", "benchmarks.storm", *sys.argv[1:]]),
        }

    def mark(self, what: str) -> float:
        self.marks[what] = now = time.monotonic()
        log(what)
        return now

    def preflight(self) -> dict[str, Any]:
        args = self.args
        n = args.subscribers
        busy = busy_pct_over(2.0)
        available = meminfo().get("MemAvailable", 0)
        pre = {
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "cpu_busy_pct_before": busy,
            "mem_available": available,
            "memory_estimate": n * BYTES_PER_SUBSCRIBER,
            "subscribers_per_worker": round(n / args.workers),
            "subscribers_per_loadgen_proc": round(n / args.procs),
        }
        problems = []
        if n / args.workers > PER_PROCESS_MAX:
            problems.append(f"{n / args.workers:.0f} subscribers per worker > {PER_PROCESS_MAX}: raise --workers")
        if n / args.procs > PER_PROCESS_MAX:
            problems.append(f"{n / args.procs:.0f} subscribers per load generator > {PER_PROCESS_MAX}: raise --procs")
        if available < n * BYTES_PER_SUBSCRIBER:
            problems.append(f"MemAvailable {available / 2**30:.1f} GiB < estimate {n * 16e3 / 2**30:.1f} GiB")
        if n > HEAVY and busy > args.max_busy:
            problems.append(f"the CPUs are {busy} % busy (> {args.max_busy}): another heavy run is going on")
        try:
            nats_binary()
        except RuntimeError as exc:
            problems.append(str(exc))
        pre["problems"] = problems
        log(f"preflight: {json.dumps(pre)}")
        return pre

    def start_servers(self) -> None:
        args = self.args
        self.nats, nats_port = start_nats(args.host, self.workdir)
        bus = f"nats://{args.host}:{nats_port}"
        for name in ("a", "b"):
            port = free_port(args.host)
            argv = [sys.executable, "-m", "millionws", "serve", "--host", "{host}", "--port", "{port}",
                    "--workers", str(args.workers), "--ping-interval", "0", "--log-level", "warning",
                    "--bus", bus, "--backend-token", self.token, "--grace", str(args.grace),
                    *shlex.split(args.server_args)]
            proc, _ = servers.start_server(argv, args.host, port, self.workdir / f"node-{name}.log")
            self.nodes.append(proc)
            self.ports.append(port)
        for port in self.ports:
            if not wait_until(lambda p=port: len((stats(args.host, p) or {}).get("workers", [])) == args.workers, 30):
                raise RuntimeError(f"node on port {port}: not every worker up within 30 s")
            wait_bus_up(args.host, port)

    def run(self) -> dict[str, Any]:
        args = self.args
        n = args.subscribers
        result = self.result
        result["settings"] = {k: v for k, v in vars(args).items() if k not in ("json_out", "png")}
        result["preflight"] = self.preflight()
        if result["preflight"]["problems"]:
            result["problems"] = result["preflight"]["problems"]
            return result
        self.start_servers()
        sources = [f"127.0.0.{2 + k}" for k in range(args.sources)]
        self.pool = FleetPool(args, self.ports, self.channels, sources)  # forks: before any thread of ours
        roots = {"node_a": self.nodes[0].pid, "node_b": self.nodes[1].pid, "nats": self.nats.pid,
                 **{f"fleet{k}": p.pid for k, p in enumerate(self.pool.procs)}}
        wall = time.time() - time.monotonic()
        with CpuSampler(roots, interval=1.0) as cpu:
            t_ramp = self.mark("ramp: opening subscribers on node A")
            if not self.pool.pump(lambda: self.pool.ready == args.procs, 2 * n / args.ramp_rate + 60):
                raise RuntimeError(f"ramp: {self.pool.totals()} after the ramp timeout")
            ramp_s = time.monotonic() - t_ramp
            result["ramp"] = {"seconds": round(ramp_s, 2), **self.pool.totals()}
            self.publisher = Publisher(args.host, self.ports[1], self.token, self.channels, args.rate)
            self.publisher.start()
            self.mark("publishing")
            self.pool.pump(lambda: False, args.pre)
            result["node_a_before"] = (stats(args.host, self.ports[0]) or {}).get("total")  # /stats lags ~1 s
            tcp0 = report.tcp_counters()
            os.kill(self.nodes[0].pid, signal.SIGTERM)
            t0 = self.mark("SIGTERM to node A")
            a_exit: list[float] = []

            def storm_over() -> bool:
                if not a_exit and self.nodes[0].poll() is not None:
                    a_exit.append(time.monotonic())
                return self.pool.totals()["moved"] >= n

            self.pool.pump(storm_over, args.storm_timeout)
            t_end = self.mark(f"storm over: {self.pool.totals()}")
            tcp1 = report.tcp_counters()
            self.pool.pump(lambda: False, args.post)
            self.publisher.stop()
            self.mark("publisher stopped")
            acked = {ch: list(seqs) for ch, seqs in self.publisher.acked.items()}
            done = self.pool.finish(acked, args.finish_wait)
            t_done = self.mark("subscribers checked")
            result["node_b_after"] = (stats(args.host, self.ports[1]) or {}).get("total")
            cpu_window = {name: cpu.percent(name, wall + t0, wall + t_end)
                          for name in ("node_a", "node_b", "nats", "core0", "core1")}
            fleet_cpu = [cpu.percent(f"fleet{k}", wall + t0, wall + t_end) for k in range(args.procs)]
            cpu_window["load_generator"] = round(sum(x or 0 for x in fleet_cpu), 1)
            cpu_window["load_generator_max_process"] = max((x or 0 for x in fleet_cpu), default=None)
        ev_t, ev_code, moved, waits = self.pool.events()
        t100 = report.time_to(moved, n, 1.00, t0)
        rates = report.handshake_rates(ev_t, ev_code, t0, t0 + t100 if t100 is not None else t_end)
        result["storm"] = {
            "subscribers": n,
            "moved": done["moved_to_b"],
            "t50_s": report.time_to(moved, n, 0.50, t0),
            "t99_s": report.time_to(moved, n, 0.99, t0),
            "t100_s": t100,
            "node_a_exit_s": round(a_exit[0] - t0, 3) if a_exit else None,
            "node_a_returncode": self.nodes[0].poll(),
            "handshakes": rates,
            "subscribe_wait_s": report.quantiles(waits),  # from the 101 on B to its subscribed reply
            "attempts_total": done["attempts"],
            "failed_attempts": done["failures"],
            "close_codes": done["close_codes"],
            # percent of one core (200 = both cores of this machine); core0/core1: busy, whoever ran, softirq too
            "cpu_pct_sigterm_to_end": cpu_window,
            "tcp_counters_sigterm_to_end": report.delta(tcp0, tcp1),
        }
        pub = self.publisher
        result["messages"] = {
            "published": pub.sent,
            "acknowledged": sum(len(v) for v in acked.values()),
            "publish_errors": dict(pub.errors),
            "publish_latency_max_s": round(pub.latency_max, 3),
            "publisher_late": pub.late,
            **{k: done[k] for k in ("expected", "delivered", "lost", "duplicates_dropped", "holes",
                                    "delivered_unacknowledged", "subscribers_with_loss", "loss_examples",
                                    "gaps", "errors")},
        }
        result["timeline"] = report.timeline(ev_t, ev_code, t0, t0 - 2.0, t_done)
        return result

    def cleanup(self) -> dict[str, Any]:
        """Stop everything this run started, the subscribers first (a node stopping would make them reconnect).

        Each step runs whatever the one before did: a failure is recorded, never a reason to leave a process."""
        out: dict[str, Any] = {"errors": []}

        def step(what: str, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception as exc:
                out["errors"].append(f"{what}: {type(exc).__name__}: {exc}")
                return None

        if self.publisher is not None and self.publisher.is_alive():
            step("publisher", self.publisher.stop)
        if self.pool is not None:
            out["fleet_killed"] = step("load generators", self.pool.stop)
        procs = [p for p in [*self.nodes, self.nats] if p is not None]
        out["pids"] = [p.pid for p in procs] + ([p.pid for p in self.pool.procs] if self.pool else [])
        for proc in procs:
            step(f"process {proc.pid}", lambda proc=proc: stop_process(proc))
        left = [pid for proc in procs for pid in session_pids(proc.pid)]
        for pid in left:
            step(f"kill {pid}", lambda pid=pid: os.kill(pid, signal.SIGKILL))
        out["leftover_processes"] = left  # killed; should always be empty
        shutil.rmtree(self.workdir, ignore_errors=True)
        if not out["errors"]:
            del out["errors"]
        return out


def stats(host: str, port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def session_pids(sid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    out.append(int(name))
            except (ProcessLookupError, PermissionError):
                continue
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storm = Storm(args)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    result = storm.result
    try:
        storm.run()
    except (Exception, KeyboardInterrupt) as exc:  # whatever went wrong, the cleanup below runs and is reported
        result.setdefault("problems", []).append(f"{type(exc).__name__}: {exc}")
        log(f"stopped: {type(exc).__name__}: {exc}")
        if not isinstance(exc, RuntimeError | KeyboardInterrupt):
            traceback.print_exc()
    finally:
        cleanup = storm.cleanup()
    result["cleanup"] = cleanup
    result["machine"] = machine()
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.json_out}")
    if args.png and "timeline" in result and report.plot(result, Path(args.png)):
        log(f"wrote {args.png}")
    if "storm" in result:
        s, m = result["storm"], result["messages"]
        log(f"99 % back in {s['t99_s']} s, 100 % in {s['t100_s']} s; handshakes/s on B mean "
            f"{s['handshakes']['mean_per_s']} peak {s['handshakes']['peak_per_s']}; published {m['published']} "
            f"delivered {m['delivered']}/{m['expected']} lost {m['lost']} duplicates {m['duplicates_dropped']}")
    return 0 if "storm" in result and not result.get("problems") else 1
