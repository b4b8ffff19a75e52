"""Starting, probing and stopping the servers under test; shared by the benchmark drivers.

A server is a name and an argv in which ``{host}`` and ``{port}`` are substituted. It runs in its own
session, so one ``killpg`` reaches a supervisor and every worker it forked, and its output goes to a log
file (a pipe nobody reads would block a chatty server once 64 KiB are buffered).

wss:// (``--tls``): the driver makes a test CA and server certificate in its work directory
(``benchmarks.tlscert``) and substitutes ``{cert}`` and ``{key}`` (and ``{ca}``) too. A server whose command
names ``{cert}`` or ``{key}`` is measured over wss:// (the load generator trusts the test CA), the peers are
started with ``--tls-cert/--tls-key``; any other command is measured over plain ws:// in the same run, so
ws and wss figures of one server can be compared side by side.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `python benchmarks/<driver>.py` works as well as `-m`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.peers import DEFAULT_PEERS, PEERS  # noqa: E402
from benchmarks.tlscert import TestCert, make_test_cert  # noqa: E402

# Where servers start. `python -m millionws` imports the package from its working directory first, so a
# driver that calls use_snapshot() runs a frozen copy of millionws/ even if the checkout is edited meanwhile.
SERVER_CWD: Path = REPO_ROOT


def use_snapshot() -> Path:
    """Copy millionws/ (as it is now, committed or not) to a temporary directory and start servers there.

    A benchmark suite restarts servers for many minutes; on a checkout that others edit, a half-written
    file would otherwise end up in some runs and not in others (or stop a server from starting). The
    copy's digest is in machine()["millionws_sha256"]; remove_snapshot() deletes it.
    """
    import shutil
    import tempfile

    global SERVER_CWD
    root = Path(tempfile.mkdtemp(prefix="millionws-code-"))
    shutil.copytree(REPO_ROOT / "millionws", root / "millionws", ignore=shutil.ignore_patterns("__pycache__"))
    SERVER_CWD = root
    return root


def remove_snapshot() -> None:
    import shutil

    global SERVER_CWD
    if SERVER_CWD != REPO_ROOT:
        shutil.rmtree(SERVER_CWD, ignore_errors=True)
        SERVER_CWD = REPO_ROOT


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """The options every driver shares to name servers and place processes on CPUs."""
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="a server command, shell-quoted; {host} and {port} are substituted (repeatable)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help=f"also run the default peers ({', '.join(DEFAULT_PEERS)}); the others by --peer NAME",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        choices=tuple(PEERS),
        help="also run this peer (repeatable; --peers = the default ones, uws and gorilla only by name)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="make a test CA + certificate; peers and commands naming {cert}/{key} are measured over wss://",
    )
    parser.add_argument(
        "--server-args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="extra load generator arguments for server NAME only, e.g. millionws-deflate='--deflate'",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080, help="first port; each server gets its own")
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--pin", default="", help="run servers under taskset -c PIN (e.g. 0)")
    parser.add_argument("--loadgen-cpus", default="", help="run the load generator under taskset -c CPUS (e.g. 1)")
    parser.add_argument("--sources", default="127.0.0.2-127.0.0.50", help="loadgen source addresses")
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD...: one more server, named 'server'")


def servers_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, list[str]]]:
    servers: list[tuple[str, list[str]]] = []
    for spec in args.server:
        name, sep, cmd = spec.partition("=")
        if not sep or not cmd.strip():
            parser.error(f"--server wants NAME=CMD, got {spec!r}")
        servers.append((name, shlex.split(cmd)))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        servers.append(("server", command))
    tls_flags = ["--tls-cert", "{cert}", "--tls-key", "{key}"] if getattr(args, "tls", False) else []
    for name, script in PEERS.items():
        if (args.peers and name in DEFAULT_PEERS) or name in getattr(args, "peer", []):
            servers.append((name, [sys.executable, str(script), "--host", "{host}", "--port", "{port}", *tls_flags]))
    if not servers:
        parser.error("nothing to run: give --peers, --peer NAME, --server NAME=CMD or -- CMD")
    names = [name for name, _ in servers]
    if len(set(names)) != len(names):
        parser.error(f"server names must differ: {names}")
    for name, argv in servers:
        if is_tls(argv) and not getattr(args, "tls", False):
            parser.error(f"{name}: its command names {{cert}} or {{key}}: add --tls")
    extra = server_extra_args(args)
    for name in extra:
        if name not in names:
            parser.error(f"--server-args {name}=...: no server of that name")
    return servers


def is_tls(argv: list[str]) -> bool:
    """A server is measured over wss:// when its command is given the test certificate."""
    return any("{cert}" in a or "{key}" in a for a in argv)


def server_extra_args(args: argparse.Namespace) -> dict[str, list[str]]:
    """--server-args NAME=ARGS as {name: argv}: load generator arguments for that server only."""
    out: dict[str, list[str]] = {}
    for spec in getattr(args, "server_args", []):
        name, _, extra = spec.partition("=")
        out.setdefault(name, []).extend(shlex.split(extra))
    return out


def prepare_tls(args: argparse.Namespace, workdir: Path) -> TestCert | None:
    """With --tls: the test CA and server certificate, in workdir (deleted with it); kept as args.test_cert."""
    args.test_cert = make_test_cert(workdir) if getattr(args, "tls", False) else None
    return args.test_cert


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def start_server(
    argv: list[str],
    host: str,
    port: int,
    log_path: Path,
    pin: str = "",
    startup_timeout: float = 30.0,
    cert: TestCert | None = None,
) -> tuple[subprocess.Popen, list[str]]:
    """Start a server and wait until its port accepts. Returns (process, the argv actually run).

    ``cert``: the test certificate whose paths replace {cert}, {key} and {ca}."""
    subst = {"{port}": str(port), "{host}": host, **(cert.subst() if cert else {})}
    if cert is None and is_tls(argv):
        raise RuntimeError(f"{shlex.join(argv)}: names {{cert}}/{{key}} but no test certificate was made (--tls)")
    out = []
    for arg in argv:
        for key, value in subst.items():
            arg = arg.replace(key, value)
        out.append(arg)
    argv = out
    if pin:
        argv = ["taskset", "-c", pin, *argv]  # taskset execs: the pid stays the server's
    if port_accepts(host, port):
        raise RuntimeError(f"port {port} is already in use: pick another --port")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=SERVER_CWD,  # `python -m millionws` works from a checkout (or its snapshot) without an install
        )
    if not wait_until(lambda: proc.poll() is not None or port_accepts(host, port), startup_timeout):
        stop_process(proc)
        raise RuntimeError(f"{shlex.join(argv)}: port {port} not accepting after {startup_timeout}s")
    if proc.poll() is not None:
        raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}: see {log_path}")
    return proc, argv


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to the whole session the process leads, SIGKILL after timeout, then reap."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    # Workers of a supervisor that exited first may still hold the port: kill what is left of the session.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def loadgen_cmd(
    args: argparse.Namespace, mode: str, port: int, extra: list[str], server: list[str] | None = None, name: str = ""
) -> list[str]:
    """The load generator's command line against the server ``name`` whose command is ``server``: wss:// with the
    test CA if that command is given the certificate (see is_tls), plus its --server-args."""
    tls = server is not None and is_tls(server)
    scheme = "wss" if tls else "ws"
    cmd = [sys.executable, "-m", "benchmarks.loadgen", mode, "--url", f"{scheme}://{args.host}:{port}{args.path}"]
    if tls:
        cmd += ["--ca", str(args.test_cert.ca)]
    cmd += ["--sources", args.sources, "--quiet", *server_extra_args(args).get(name, []), *extra]
    if args.loadgen_cpus:
        cmd = ["taskset", "-c", args.loadgen_cpus, *cmd]
    return cmd


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.rstrip("\n") if done.returncode == 0 else ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def code_digest(root: Path | None = None) -> str:
    """sha256 over millionws/*.py (names and contents): which code ran, even when it was not committed."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(((root or SERVER_CWD) / "millionws").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def machine() -> dict[str, Any]:
    """Where and from what a result came: the machine, the code (commit + uncommitted files), the time."""
    lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    mem_total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    dirty = [line[3:] for line in _git("status", "--porcelain", "--", "millionws", "benchmarks").splitlines()]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {
            d: _version(d) for d in ("wsproto", "h11", "websockets", "aiohttp", "picows", "socketify", "psutil")
        },
        "go": _go_version(),  # what the gorilla peer was built with (None: no Go here)
        "git_commit": _git("rev-parse", "HEAD").strip(),
        "git_uncommitted": dirty,  # files of millionws/ or benchmarks/ that differ from the commit
        "millionws_sha256": code_digest(),  # of the code the servers ran (a snapshot, see use_snapshot)
        "millionws_snapshot": SERVER_CWD != REPO_ROOT,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "ip_local_port_range": [int(lo), int(hi)],
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def _go_version() -> str | None:
    try:
        done = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def core_busy() -> dict[str, float]:
    """Busy seconds per core from /proc/stat ("core0", ...): everything but idle and iowait.

    Unlike a process's own CPU time this includes softirq work (on loopback, much of TCP runs there)
    and whatever else the shared machine ran on that core.
    """
    out: dict[str, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
            out["core" + name[3:]] = (user + nice + system + irq + softirq + steal) / _CLK_TCK
    return out


def busy_pct_over(seconds: float) -> float:
    """Mean busy share of all cores over the next ``seconds`` (preflights: is another heavy run going?)."""
    b0, t0 = core_busy(), time.monotonic()
    time.sleep(seconds)
    b1, t1 = core_busy(), time.monotonic()
    return round(100 * sum(b1[c] - b0[c] for c in b1) / (t1 - t0) / max(1, len(b1)), 1)


class CpuSampler:
    """Samples the CPU seconds (user + system) of process trees every ``interval`` s in a thread.

    A tree is a root pid and whatever it has forked; each pid's own counters are kept (never the
    ``children_*`` ones, which would count a reaped child twice), and a pid that exits keeps its last
    reading. ``cpu_between(name, t0, t1)`` interpolates the samples: CPU seconds spent in [t0, t1].
    Each core's busy time is sampled too, under the names "core0", "core1", ...
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.2) -> None:
        import psutil  # imported here: the drivers that never sample do not need it

        self._psutil = psutil
        self.roots = roots
        self.interval = interval
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
        self._per_pid: dict[str, dict[int, float]] = {name: {} for name in roots}
        self._procs: dict[int, Any] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _tree(self, root: int) -> list[Any]:
        psutil = self._psutil
        try:
            top = self._procs.get(root) or psutil.Process(root)
            self._procs[root] = top
            procs = [top]
            for child in top.children(recursive=True):
                procs.append(self._procs.setdefault(child.pid, child))
            return procs
        except psutil.Error:
            return [p for pid, p in self._procs.items() if pid == root]

    def sample(self) -> None:
        with self._lock:
            now = time.time()
            for core, busy in core_busy().items():
                self.samples.setdefault(core, []).append((now, busy))
            for name, root in self.roots.items():
                per_pid = self._per_pid[name]
                for proc in self._tree(root):
                    try:
                        t = proc.cpu_times()
                    except self._psutil.Error:
                        continue
                    per_pid[proc.pid] = t.user + t.system
                self.samples[name].append((now, sum(per_pid.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def cpu_at(self, name: str, t: float) -> float | None:
        samples = self.samples[name]
        if samples and samples[0][0] - 2 * self.interval <= t < samples[0][0]:
            return samples[0][1]  # a window that opened just before the first sample (the tree was starting)
        if not samples or t < samples[0][0] or t > samples[-1][0]:
            return None
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return samples[-1][1]

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        a, b = self.cpu_at(name, t0), self.cpu_at(name, t1)
        return None if a is None or b is None else b - a

    def percent(self, name: str, t0: float, t1: float) -> float | None:
        """CPU in [t0, t1] as percent of one core (200 = two cores busy)."""
        samples = self.samples.get(name)
        if samples and samples[-1][0] < t1 <= time.time():
            self.sample()  # a window that ends now: read the counters once more
        used = self.cpu_between(name, t0, t1)
        return round(100.0 * used / (t1 - t0), 1) if used is not None and t1 > t0 else None
