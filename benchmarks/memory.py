"""Memory per idle WebSocket connection, measured the GUIDE §4 way, for any server command.

    python -m benchmarks.memory --connections 10000 --runs 3 --peers
    python -m benchmarks.memory --connections 10000 --runs 3 --pin 0 --loadgen-cpus 1 \\
        --server millionws='millionws serve --host {host} --port {port} --workers 1' --peers
    python -m benchmarks.memory --connections 10000 -- python my_server.py --port {port}

For each run and each server (runs interleave servers, so drift on a shared machine hits all alike):

1. start the server (optionally under ``taskset -c CPU``) in its own session; wait until its port accepts;
2. warm it up with a small connect-rate budget, so first-use costs (lazy imports, caches, pools) land in the
   baseline instead of the per-connection figure;
3. baseline: PSS/RSS/USS summed over the server's process tree (psutil), open fds, ``Slab`` and
   ``SUnreclaim`` from /proc/meminfo;
4. run ``benchmarks.loadgen idle`` for N connections with ``--ready-file``; once it appears (all N open),
   wait ``--settle`` seconds and measure again; then create ``READY.done`` so the load generator verifies
   every connection with a ping and closes;
5. divide the deltas by the connections established, and measure once more after the close (what the
   server keeps); stop the server (SIGTERM to its session, SIGKILL after 10 s).

Slab is machine-wide: on loopback it includes the load generator's client sockets (both ends of every
TCP connection) and anything else the machine does meanwhile. The report keeps it apart from PSS.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # `python benchmarks/memory.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import (
    REPO_ROOT,
    add_server_args,
    loadgen_cmd,
    machine,
    servers_from_args,
    start_server,
    stop_process,
    wait_until,
)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def smaps_rollup(pid: int) -> dict[str, int]:
    """Pss_Anon and Pss_File of a process in bytes (/proc/PID/smaps_rollup, Linux >= 5.9), else {}."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss_Anon", "Pss_File"):
            out[name.lower()] = int(rest.split()[0]) * 1024
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """Sum PSS, USS and RSS over a process and all its descendants (supervisor + workers).

    PSS is split into its anonymous part (heap: what connections cost) and its file-backed part
    (interpreter, libraries). The file-backed part moves when *other* processes map the same files
    (the load generator starting, other Python processes on a shared machine), so at a few hundred
    bytes per connection ``pss_anon`` is the steadier figure; ``pss`` stays the GUIDE §4 one.
    """
    total = {"pss": 0, "pss_anon": 0, "pss_file": 0, "uss": 0, "rss": 0, "fds": 0, "procs": 0}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for proc in procs:
        try:
            info = proc.memory_full_info()
            fds = proc.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total["pss"] += info.pss
        for key, value in smaps_rollup(proc.pid).items():
            total[key] += value
        total["uss"] += info.uss
        total["rss"] += info.rss
        total["fds"] += fds
        total["procs"] += 1
    return total


# Slab caches that grow by one object per socket end (TCP socket, its inode, dentry and file, its epoll
# item). Summing only these keeps unrelated kernel activity on a shared machine out of "slab_sockets";
# tw_sock_TCP is left out on purpose: TIME_WAIT from earlier runs expires at random moments.
SOCKET_CACHES = ("TCP", "sock_inode_cache", "dentry", "filp", "eventpoll_epi", "eventpoll_pwq")


def slab_caches() -> dict[str, int]:
    """Bytes in use per slab cache of interest (/proc/slabinfo: active_objs * objsize; root only)."""
    out: dict[str, int] = {}
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if fields and fields[0] in SOCKET_CACHES:
            out[fields[0]] = int(fields[1]) * int(fields[3])
    return out


def tcp_sockstat() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return {f"tcp_{k}": int(v) for k, v in zip(fields[::2], fields[1::2], strict=False)}
    return {}


def snapshot(pid: int) -> dict[str, int]:
    mem = tree_memory(pid)
    info = meminfo()
    mem["slab"] = info.get("Slab", 0)
    mem["sunreclaim"] = info.get("SUnreclaim", 0)
    caches = slab_caches()
    mem["slab_sockets"] = sum(caches.values())
    mem.update({f"slab_{name}": size for name, size in caches.items()})
    mem.update(tcp_sockstat())
    return mem


class Driver:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir

    def log(self, msg: str) -> None:
        print(f"[memory] {msg}", file=sys.stderr, flush=True)

    def measure_once(self, name: str, argv: list[str], port: int, run: int) -> dict[str, Any]:
        args = self.args
        tag = f"{name}-run{run}"
        server_log = self.workdir / f"{tag}.server.log"
        server, argv = start_server(argv, args.host, port, server_log, args.pin, args.startup_timeout)
        result: dict[str, Any] = {"server": name, "run": run, "command": shlex.join(argv)}
        try:
            if args.warmup:
                subprocess.run(
                    loadgen_cmd(
                        args,
                        "connect-rate",
                        port,
                        ["--connections", str(args.warmup), "--concurrency", "20", "--duration", "30"],
                    ),
                    cwd=REPO_ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=90,
                    check=False,
                )
            time.sleep(args.settle)
            before = snapshot(server.pid)

            ready = self.workdir / f"{tag}.ready"
            report_path = self.workdir / f"{tag}.loadgen.json"
            # The hold only bounds the run: the driver ends it through READY.done as soon as it has measured.
            # Twice the planned opening time, for servers slower than --rate.
            open_time = 2 * (args.connections / args.rate if args.rate else args.connections / 2000)
            hold = open_time + args.settle + 120
            extra = [
                "--connections",
                str(args.connections),
                "--hold",
                f"{hold:.0f}",
                "--ready-file",
                str(ready),
                "--json-out",
                str(report_path),
                "--verify-ping",
            ]
            extra += shlex.split(args.loadgen_args)
            if args.rate:
                extra += ["--rate", str(args.rate)]
            if args.procs:
                extra += ["--procs", str(args.procs)]
            loadgen_log = (self.workdir / f"{tag}.loadgen.log").open("wb")
            loadgen = subprocess.Popen(
                loadgen_cmd(args, "idle", port, extra),
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=loadgen_log,
                start_new_session=True,
            )
            try:
                opened = wait_until(lambda: ready.exists() or loadgen.poll() is not None, open_time + 120, 0.2)
                if not opened or not ready.exists():
                    raise RuntimeError(f"{name}: load generator never became ready (see {loadgen_log.name})")
                time.sleep(args.settle)
                during = snapshot(server.pid)
                ready_info = json.loads(ready.read_text())
                Path(str(ready) + ".done").touch()
                loadgen.wait(timeout=args.connections / 1000 + 120)
            finally:
                stop_process(loadgen)
                loadgen_log.close()
            time.sleep(args.settle)
            after = snapshot(server.pid)
        finally:
            stop_process(server)

        n = ready_info["established"]
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        result.update(
            established=n,
            failed=ready_info["failed"],
            before=before,
            during=during,
            after_close=after,
            per_conn={
                key: round((during[key] - before[key]) / n, 1) if n else None
                for key in ("pss", "pss_anon", "pss_file", "uss", "rss", "slab", "sunreclaim", "slab_sockets", "fds")
                if key in during and key in before
            },
            slab_caches_per_conn={
                key[5:]: round((during[key] - before.get(key, 0)) / n, 1) if n else None
                for key in during
                if key.startswith("slab_") and key != "slab_sockets"
            },
            retained_per_conn_after_close=round((after["pss"] - before["pss"]) / n, 1) if n else None,
            loadgen_pss_per_conn=report.get("loadgen_memory", {}).get("pss_bytes_per_conn"),
            loadgen_ok=report.get("ok"),
            loadgen_failures=report.get("failures"),
            loadgen_drops=report.get("drops"),
            verify=report.get("idle", {}).get("verify"),
            connect_rate_per_s=report.get("connect", {}).get("rate_per_s"),
            deflate_negotiated=report.get("deflate_negotiated"),
        )
        return result


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["per_conn"][key] for r in runs if r.get("per_conn", {}).get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory",
        description="Bytes per idle WebSocket connection (PSS/RSS over the server's process tree, Slab).",
    )
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections per run (>= 10000 advised)")
    parser.add_argument("--runs", type=int, default=1, help="runs per server; the summary is the median")
    add_server_args(parser)
    parser.add_argument("--rate", type=float, default=5000.0, help="loadgen connections per second (0 = unpaced)")
    parser.add_argument("--procs", type=int, default=0, help="loadgen processes (default: its own choice)")
    parser.add_argument("--warmup", type=int, default=200, help="handshakes before the baseline (0 = none)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each reading")
    parser.add_argument("--loadgen-args", default="",
                        help="more arguments of the idle load generator, e.g. --deflate (offer permessage-deflate)")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with server logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    servers = servers_from_args(args, parser)

    workdir = Path(tempfile.mkdtemp(prefix="millionws-memory-"))
    driver = Driver(args, workdir)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
    errors: list[str] = []
    for run in range(1, args.runs + 1):
        for index, (name, cmd) in enumerate(servers):
            driver.log(f"run {run}/{args.runs}: {name} with {args.connections} connections")
            try:
                result = driver.measure_once(name, cmd, args.port + index, run)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as exc:
                errors.append(f"{name} run {run}: {exc}")
                driver.log(f"  failed: {exc}")
                continue
            runs[name].append(result)
            pc = result["per_conn"]
            driver.log(
                f"  established {result['established']}: PSS {pc['pss']} B/conn (anon {pc['pss_anon']}), "
                f"RSS {pc['rss']}, "
                f"slab {pc['slab']} (sockets {pc.get('slab_sockets')}), "
                f"loadgen PSS {result['loadgen_pss_per_conn']}"
                + (f", failures {result['loadgen_failures']}" if result["loadgen_failures"] else "")
            )
    summary = {
        name: {
            "runs": len(rs),
            "median_bytes_per_conn": {
                k: median_of(rs, k)
                for k in ("pss", "pss_anon", "pss_file", "uss", "rss", "slab", "sunreclaim", "slab_sockets")
            },
            "established": [r["established"] for r in rs],
            "loadgen_pss_per_conn": [r["loadgen_pss_per_conn"] for r in rs],
            "verify_ok": all(r["verify"] and r["verify"]["missing"] == 0 for r in rs),
        }
        for name, rs in runs.items()
    }
    report = {
        "command": shlex.join([sys.executable, "-m", "benchmarks.memory", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "connections": args.connections,
        "summary": summary,
        "runs": runs,
        "errors": errors,
        "workdir": str(workdir) if args.keep_logs else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    if not args.keep_logs and not errors:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    for name, s in summary.items():
        m = s["median_bytes_per_conn"]
        driver.log(
            f"{name:>12}: median PSS {m['pss']} B/conn, RSS {m['rss']}, slab {m['slab']} "
            f"(sockets {m['slab_sockets']}) ({s['runs']} runs)"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
