"""Soak: steady connections with churn, echo and fan-out traffic, for minutes (default) or hours.

    python -m benchmarks.soak                       # 2 minutes against a fresh 2-worker millionws
    python -m benchmarks.soak --hours 4 --connections 2000 --churn 50 --json-out /tmp/soak.json
    python -m benchmarks.soak --attach PID --port 8080   # a server that is already running (PID: supervisor)

One process, one ``select.epoll`` loop over non-blocking sockets (frames from ``benchmarks.wscodec``, the
handshake from ``benchmarks.loadgen.wsframe``), so the client costs little and never blocks on one connection:

* ``--connections`` echo WebSockets are kept open; every second ``--churn`` of them are closed with a
  clean closing handshake (Close 1000, the server's Close, the server's FIN) and as many new ones opened.
* ``--echo-rate`` messages per second in all go to random open echo connections; every echo must come back
  unchanged and in order within ``--reply-timeout``.
* If the server answers ``/pubsub`` (``--pubsub auto``), ``--subscribers`` connections subscribe to one
  channel (a tenth of them churned as well) and one publisher publishes ``--publish-rate`` messages per
  second; every subscriber must see the channel's sequence numbers without a gap.
* Every ``--sample-every`` seconds: the server's PSS, USS and RSS summed over supervisor and workers,
  the workers' open descriptors, the connections open on both sides, and the error counts.

Errors: anything a correct server would not do (connect or handshake failure, a drop, a wrong or late
echo, a gap, a Close that is not the echo of ours, a protocol violation, a server that still counts
connections after every client left).  Memory, summed over supervisor and workers, as ``pss``, ``pss_anon``
(the anonymous part of PSS, from smaps_rollup), ``uss`` and ``rss``: for each, the mean after ``--warmup``
seconds over the first sample (taken before any connection) per connection, and the drift: the
least-squares slope over time after the warm-up, per second, per hour, per hour and connection, and over
the window.  Read the drift of ``pss_anon``: the file-backed part of PSS (the interpreter's pages) moves by
megabytes whenever any other process mapping the same files starts or exits on the machine.  Exit status 0
when there was no error, no worker restart (and, with ``--max-drift-kb-per-hour``, the ``pss_anon`` drift was
within it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import resource
import select
import shlex
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402

from benchmarks import wscodec  # noqa: E402
from benchmarks.loadgen import wsframe  # noqa: E402
from benchmarks.memory import tree_memory  # noqa: E402
from benchmarks.servers import start_server, stop_process  # noqa: E402

CHANNEL = "soak"
HANDSHAKE, OPEN, SUBSCRIBING, CLOSING = range(4)


class Conn:
    __slots__ = ("sock", "fd", "kind", "state", "buf", "out", "accept", "expect", "since", "last_seq", "sent_at")

    def __init__(self, sock: socket.socket, kind: str, accept: bytes) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.kind = kind  # echo | sub | pub
        self.state = HANDSHAKE
        self.buf = bytearray()
        self.out = bytearray()
        self.accept = accept
        self.expect: collections.deque[tuple[float, bytes]] = collections.deque()
        self.since = time.monotonic()  # when the current state began
        self.last_seq: int | None = None
        self.sent_at = 0.0


def tree_pss_anon(pid: int) -> int:
    """Anonymous PSS (heap, stacks, copy-on-write pages) of a process and its children, from smaps_rollup.

    The file-backed part of PSS (the interpreter's own pages) moves whenever another process that maps the
    same files starts or exits anywhere on the machine; the anonymous part is the server's own memory.
    """
    total = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            for line in Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def least_squares_slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


class Soak:
    def __init__(self, args: argparse.Namespace, host: str, port: int, server_pid: int) -> None:
        self.args = args
        self.host, self.port = host, port
        self.server_pid = server_pid
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: list[dict[str, Any]] = []
        self.pubsub = False
        self.publisher: Conn | None = None
        self.seq_published = 0

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, detail)

    def of_kind(self, kind: str, state: int | None = OPEN) -> list[Conn]:
        return [c for c in self.conns.values() if c.kind == kind and (state is None or c.state == state)]

    # -- connections ----------------------------------------------------------------------------------------
    def open(self, kind: str) -> Conn | None:
        path = "/pubsub" if kind in ("sub", "pub") else self.args.path
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
        except OSError as exc:
            self.error("connect", repr(exc))
            return None
        sock.setblocking(False)
        request, accept = wsframe.handshake_request(self.host, self.port, path)
        conn = Conn(sock, kind, accept)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLIN)
        self.counts[f"opened_{kind}"] += 1
        self.send(conn, request)
        return conn

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.drop(conn, "send", repr(exc))
            return
        if n < len(data):
            conn.out += data[n:]
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(conn, "send", repr(exc))
            return
        del conn.out[:n]
        if not conn.out:
            self.ep.modify(conn.fd, select.EPOLLIN)

    def forget(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            self.ep.unregister(conn.fd)
            conn.sock.close()
        if conn is self.publisher:
            self.publisher = None

    def drop(self, conn: Conn, kind: str, detail: str = "") -> None:
        """The connection ended in a way a correct server would not cause."""
        self.error(f"{kind}_{conn.kind}", detail)
        self.forget(conn)

    def begin_close(self, conn: Conn) -> None:
        conn.state = CLOSING
        conn.since = time.monotonic()
        self.send(conn, wscodec.close_frame(1000))

    # -- input ----------------------------------------------------------------------------------------------
    def readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(conn, "reset", repr(exc))
            return
        if not data:
            if conn.state == CLOSING and conn.kind == "closed":
                self.counts["closed_clean"] += 1
                self.forget(conn)
            else:
                self.drop(conn, "eof", f"state {conn.state}")
            return
        conn.buf += data
        if conn.state == HANDSHAKE:
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                status = wsframe.parse_handshake_response(bytes(conn.buf[:end]), conn.accept)
            except wsframe.ProtocolError as exc:
                self.drop(conn, "handshake", str(exc))
                return
            if status != 101:
                self.drop(conn, "handshake", f"status {status}")
                return
            del conn.buf[:end + 4]
            conn.since = time.monotonic()
            if conn.kind == "sub":
                conn.state = SUBSCRIBING
                self.send(conn, wscodec.encode(wscodec.OP_TEXT, json.dumps(
                    {"op": "subscribe", "channels": [CHANNEL]}).encode()))
            else:
                conn.state = OPEN
        self.frames(conn)

    def frames(self, conn: Conn) -> None:
        heads = bytearray()
        payloads: list[bytearray] = []
        try:
            cut, error = wscodec.split_frames(conn.buf, heads, payloads), ""
        except wscodec.ProtocolError as exc:  # a masked frame: the ones before it first
            cut, error = 0, str(exc)
        for b0, payload in zip(heads, payloads, strict=True):
            if b0 & 0x70 or not b0 & 0x80:
                self.drop(conn, "protocol", f"frame header {b0:#x}")
                return
            if not self.frame(conn, b0 & 0x0F, bytes(payload)) or conn.fd not in self.conns:
                return
        if error:
            self.drop(conn, "protocol", error)
            return
        del conn.buf[:cut]

    def frame(self, conn: Conn, opcode: int, payload: bytes) -> bool:
        if opcode == wscodec.OP_PING:
            self.send(conn, wscodec.encode(wscodec.OP_PONG, payload))
            return True
        if opcode == wscodec.OP_PONG:
            return True
        if opcode == wscodec.OP_CLOSE:
            code = wscodec.close_code(payload)
            if conn.state == CLOSING and code == 1000:
                conn.kind = "closed"  # the echo of our Close: now the server's FIN
                return True
            self.drop(conn, "server_close", f"code {code} {payload[2:]!r}")
            return False
        if conn.kind == "echo":
            if not conn.expect:
                self.drop(conn, "unexpected_message", repr(payload[:40]))
                return False
            sent, want = conn.expect.popleft()
            if payload != want:
                self.drop(conn, "echo_mismatch", f"{payload[:40]!r} != {want[:40]!r}")
                return False
            self.counts["echoes"] += 1
            self.counts["echo_rtt_ms_total"] += int((time.monotonic() - sent) * 1000)
            return True
        if conn.kind == "sub":
            try:
                msg = json.loads(payload)
            except ValueError:
                self.drop(conn, "protocol", f"not JSON: {payload[:60]!r}")
                return False
            op = msg.get("op")
            if op == "subscribed" and conn.state == SUBSCRIBING:
                conn.state = OPEN
                return True
            if op == "message" and msg.get("channel") == CHANNEL:
                seq = msg["seq"]
                if conn.last_seq is not None and seq != conn.last_seq + 1:
                    self.drop(conn, "gap", f"seq {seq} after {conn.last_seq}")
                    return False
                conn.last_seq = seq
                self.counts["deliveries"] += 1
                return True
            if conn.state == CLOSING:
                return True  # a delivery that crossed our Close
            self.drop(conn, "pubsub_reply", repr(msg)[:120])
            return False
        if conn.state == CLOSING:
            return True
        self.drop(conn, "unexpected_message", repr(payload[:60]))
        return False

    # -- traffic --------------------------------------------------------------------------------------------
    def echo_one(self) -> None:
        ready = [c for c in self.of_kind("echo") if len(c.expect) < 4]
        if not ready:
            return
        conn = random.choice(ready)
        payload = os.urandom(self.args.size // 2).hex().encode()[: self.args.size]
        conn.expect.append((time.monotonic(), payload))
        self.send(conn, wscodec.encode(wscodec.OP_TEXT, payload))

    def publish_one(self) -> None:
        if self.publisher is None or self.publisher.state != OPEN:
            return
        self.seq_published += 1
        doc = {"op": "publish", "channel": CHANNEL, "data": {"n": self.seq_published, "t": time.time()}}
        self.send(self.publisher, wscodec.encode(wscodec.OP_TEXT, json.dumps(doc).encode()))
        self.counts["publishes"] += 1

    def churn(self, kind: str, n: int, target: int) -> None:
        """Close ``n`` open connections of ``kind`` cleanly, then open enough to be back at ``target``."""
        candidates = [c for c in self.of_kind(kind) if not c.expect]  # with echoes in flight: next time
        for conn in random.sample(candidates, min(n, len(candidates))):
            self.begin_close(conn)
            self.counts[f"churned_{kind}"] += 1
        live = sum(c.kind == kind and c.state != CLOSING for c in self.conns.values())
        for _ in range(target - live):
            self.open(kind)

    def deadlines(self, now: float) -> None:
        timeout = self.args.reply_timeout
        for conn in list(self.conns.values()):
            if conn.state in (HANDSHAKE, SUBSCRIBING) and now - conn.since > timeout:
                self.drop(conn, "handshake_timeout")
            elif conn.state == CLOSING and now - conn.since > timeout:
                self.drop(conn, "close_timeout")
            elif conn.expect and now - conn.expect[0][0] > timeout:
                self.drop(conn, "echo_timeout")

    # -- measuring ------------------------------------------------------------------------------------------
    def server_stats(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/stats", timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def sample(self, started: float) -> dict[str, Any]:
        mem = tree_memory(self.server_pid)
        try:
            workers = psutil.Process(self.server_pid).children()
            worker_fds = sum(p.num_fds() for p in workers)
        except psutil.Error:
            worker_fds = -1
        stats = self.server_stats() or {}
        entry = {
            "t": round(time.monotonic() - started, 3),
            "pss": mem["pss"], "pss_anon": tree_pss_anon(self.server_pid), "uss": mem["uss"], "rss": mem["rss"],
            "worker_fds": worker_fds,
            "client_open": sum(c.state == OPEN for c in self.conns.values()),
            "server_connections": stats.get("total", {}).get("connections"),
            "worker_restarts": stats.get("worker_restarts"),
            "errors": sum(self.errors.values()),
        }
        self.samples.append(entry)
        if not self.args.quiet:
            print(f"t={entry['t']:8.1f}s pss={entry['pss'] / 1e6:7.2f}MB anon={entry['pss_anon'] / 1e6:7.2f}MB "
                  f"fds={worker_fds:6d} "
                  f"open={entry['client_open']:6d} server={entry['server_connections']} "
                  f"echoes={self.counts['echoes']} deliveries={self.counts['deliveries']} errors={entry['errors']}",
                  flush=True)
        return entry

    def probe_pubsub(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as sock:
                request, _ = wsframe.handshake_request(self.host, self.port, "/pubsub")
                sock.sendall(request)
                head = b""
                while b"\r\n" not in head:
                    data = sock.recv(4096)
                    if not data:
                        break
                    head += data
                ok = head.startswith(b"HTTP/1.1 101")
                if ok:
                    sock.sendall(wscodec.close_frame(1000))
                return ok
        except OSError:
            return False

    # -- the run --------------------------------------------------------------------------------------------
    def run(self, duration: float) -> dict[str, Any]:
        args = self.args
        self.pubsub = args.pubsub == "on" or (args.pubsub == "auto" and self.probe_pubsub())
        baseline_settle = time.monotonic() + 1.0
        while time.monotonic() < baseline_settle:  # let the probe's connection go
            time.sleep(0.05)
        started = time.monotonic()
        self.sample(started)
        for i in range(args.connections):
            self.open("echo")
            if i % 200 == 199:
                self.pump(0)
        if self.pubsub:
            for _ in range(args.subscribers):
                self.open("sub")
            self.publisher = self.open("pub")
        echo_every = 1.0 / args.echo_rate if args.echo_rate > 0 else None
        publish_every = 1.0 / args.publish_rate if self.pubsub and args.publish_rate > 0 else None
        next_echo = next_publish = next_churn = started
        next_sample = started + args.sample_every
        end = started + duration
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if echo_every is not None:
                while next_echo <= now:
                    self.echo_one()
                    next_echo += echo_every
            if publish_every is not None:
                while next_publish <= now:
                    self.publish_one()
                    next_publish += publish_every
            if now >= next_churn:
                next_churn += 1.0
                self.churn("echo", args.churn, args.connections)
                if self.pubsub:
                    self.churn("sub", max(1, args.churn // 10) if args.churn else 0, args.subscribers)
                    if self.publisher is None:
                        self.publisher = self.open("pub")
                self.deadlines(now)
            if now >= next_sample:
                next_sample += args.sample_every
                self.sample(started)
            wake = min(x for x in (next_echo if echo_every else end, next_publish if publish_every else end,
                                   next_churn, next_sample, end))
            self.pump(max(0.0, wake - time.monotonic()))
        # Wind down: every connection closed cleanly, then one last sample once the server let go.
        for conn in list(self.conns.values()):
            if conn.state == OPEN or conn.state == SUBSCRIBING:
                self.begin_close(conn)
        wind_down = time.monotonic() + args.reply_timeout
        while self.conns and time.monotonic() < wind_down:
            self.pump(0.1)
        for conn in list(self.conns.values()):
            self.drop(conn, "close_timeout", "at wind-down")
        elapsed = time.monotonic() - started
        # The server's count of open WebSockets must come back to zero (a worker publishes it every 0.25 s).
        settle = time.monotonic() + args.reply_timeout
        while time.monotonic() < settle:
            stats = self.server_stats()
            if stats is not None and stats["total"]["connections"] == 0:
                break
            time.sleep(0.25)
        final = self.sample(started)
        if final["server_connections"] not in (0, None):
            self.error("server_connections_left", f"{final['server_connections']} after every client closed")
        return self.report(elapsed, final)

    def pump(self, timeout: float) -> None:
        for fd, events in self.ep.poll(timeout):
            conn = self.conns.get(fd)
            if conn is None:
                continue
            if events & select.EPOLLOUT and conn.out:
                self.flush(conn)
                if conn.fd not in self.conns:
                    continue
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self.readable(conn)

    def report(self, elapsed: float, final: dict[str, Any]) -> dict[str, Any]:
        args = self.args
        steady = [s for s in self.samples[:-1] if s["t"] >= args.warmup]
        window = steady[-1]["t"] - steady[0]["t"] if len(steady) >= 2 else 0.0
        conns = args.connections + (args.subscribers if self.pubsub else 0)
        first = self.samples[0]

        def drift(key: str) -> dict[str, Any]:
            slope = least_squares_slope([(s["t"], s[key]) for s in steady])
            mean = sum(s[key] for s in steady) / len(steady) if steady else None
            return {
                "baseline": first[key],
                "steady_mean": round(mean) if mean is not None else None,
                "per_connection": round((mean - first[key]) / conns) if mean is not None else None,
                "drift_bytes_per_s": round(slope, 1),
                "drift_bytes_per_hour": round(slope * 3600),
                "drift_bytes_per_hour_per_connection": round(slope * 3600 / conns, 1),
                "drift_over_window_bytes": round(slope * window),
                "after_close": final[key],
            }

        memory = {key: drift(key) for key in ("pss", "pss_anon", "uss", "rss")}
        memory.update(window_s=round(window, 1), samples_in_window=len(steady))
        drift_per_hour = memory["pss_anon"]["drift_bytes_per_hour"]
        fds = [s["worker_fds"] for s in steady]
        echoes = self.counts["echoes"]
        result = {
            "target": f"ws://{self.host}:{self.port}{args.path}",
            "duration_s": round(elapsed, 1),
            "config": {k: getattr(args, k) for k in ("connections", "churn", "echo_rate", "size", "subscribers",
                                                      "publish_rate", "sample_every", "warmup")},
            "pubsub": self.pubsub,
            "counts": dict(self.counts),
            "echo_rtt_ms_mean": round(self.counts["echo_rtt_ms_total"] / echoes, 2) if echoes else None,
            "errors": dict(self.errors),
            "error_examples": self.examples,
            "memory": memory,
            "fds": {"baseline": first["worker_fds"], "steady_min": min(fds, default=None),
                    "steady_max": max(fds, default=None), "after_close": final["worker_fds"]},
            "worker_restarts": final["worker_restarts"],
            "samples": self.samples,
        }
        drift_ok = args.max_drift_kb_per_hour is None or drift_per_hour <= args.max_drift_kb_per_hour * 1024
        result["ok"] = not self.errors and drift_ok and not final["worker_restarts"]
        return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="run length (default 2 minutes)")
    length.add_argument("--hours", type=float, default=None)
    length.add_argument("--seconds", type=float, default=None)
    p.add_argument("--connections", type=int, default=500, help="echo connections kept open")
    p.add_argument("--churn", type=int, default=20, help="echo connections closed and opened per second")
    p.add_argument("--echo-rate", type=float, default=500.0, help="echo messages per second, all connections")
    p.add_argument("--size", type=int, default=64, help="bytes per echo message")
    p.add_argument("--pubsub", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--publish-rate", type=float, default=5.0, help="publishes per second (each to every subscriber)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before the drift window (default: a quarter of the run)")
    p.add_argument("--reply-timeout", type=float, default=5.0, help="echo, handshake and close deadline")
    p.add_argument("--max-drift-kb-per-hour", type=float, default=None,
                   help="fail above this slope of anonymous PSS")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port for the server started here")
    p.add_argument("--path", default="/echo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--server", default="{python} -m millionws serve --host {host} --port {port} --workers {workers}",
                   help="server command started here ({python} {host} {port} {workers} substituted)")
    p.add_argument("--attach", type=int, default=None, metavar="PID",
                   help="measure an already running server (its supervisor PID, with --port) instead")
    p.add_argument("--json-out", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.hours is not None:
        duration = args.hours * 3600
    elif args.seconds is not None:
        duration = args.seconds
    else:
        duration = (args.minutes if args.minutes is not None else 2.0) * 60
    if args.warmup is None:
        args.warmup = duration / 4
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        sys.exit("soak targets loopback addresses only")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # the client holds every connection and those in churn
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc = None
    if args.attach is not None:
        if not args.port:
            sys.exit("--attach needs --port")
        port, pid = args.port, args.attach
    else:
        port = args.port or free_port(args.host)
        cmd = args.server.format(python=shlex.quote(sys.executable), host=args.host, port=port, workers=args.workers)
        log = Path(tempfile.gettempdir()) / f"millionws-soak-{port}.log"
        proc, _ = start_server(shlex.split(cmd), args.host, port, log)
        pid = proc.pid
        deadline = time.monotonic() + 15
        while len(psutil.Process(pid).children()) < args.workers and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        result = Soak(args, args.host, port, pid).run(duration)
    finally:
        if proc is not None:
            stop_process(proc)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
