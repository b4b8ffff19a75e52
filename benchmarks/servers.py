"""Starting, probing and stopping the servers under test; shared by the benchmark drivers.

A server is a name and an argv in which ``{host}`` and ``{port}`` are substituted. It runs in its own
session, so one ``killpg`` reaches a supervisor and every worker it forked, and its output goes to a log
file (a pipe nobody reads would block a chatty server once 64 KiB are buffered).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `python benchmarks/<driver>.py` works as well as `-m`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.peers import PEERS  # noqa: E402


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """The options every driver shares to name servers and place processes on CPUs."""
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="a server command, shell-quoted; {host} and {port} are substituted (repeatable)",
    )
    parser.add_argument("--peers", action="store_true", help="also run the websockets, aiohttp and picows peers")
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
    if args.peers:
        for name, script in PEERS.items():
            servers.append((name, [sys.executable, str(script), "--host", "{host}", "--port", "{port}"]))
    if not servers:
        parser.error("nothing to run: give --peers, --server NAME=CMD or -- CMD")
    return servers


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
    argv: list[str], host: str, port: int, log_path: Path, pin: str = "", startup_timeout: float = 30.0
) -> tuple[subprocess.Popen, list[str]]:
    """Start a server and wait until its port accepts. Returns (process, the argv actually run)."""
    argv = [a.replace("{port}", str(port)).replace("{host}", host) for a in argv]
    if pin:
        argv = ["taskset", "-c", pin, *argv]  # taskset execs: the pid stays the server's
    if port_accepts(host, port):
        raise RuntimeError(f"port {port} is already in use: pick another --port")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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


def loadgen_cmd(args: argparse.Namespace, mode: str, port: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.loadgen", mode, "--url", f"ws://{args.host}:{port}{args.path}"]
    cmd += ["--sources", args.sources, "--quiet", *extra]
    if args.loadgen_cpus:
        cmd = ["taskset", "-c", args.loadgen_cpus, *cmd]
    return cmd


def machine() -> dict[str, Any]:
    lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    mem_total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ip_local_port_range": [int(lo), int(hi)],
    }
