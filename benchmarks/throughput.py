"""Echo throughput/latency and handshake rate of several servers, same load, medians of R runs.

    python -m benchmarks.throughput --mode echo --runs 3 --peers --pin 0 --loadgen-cpus 1 \\
        --loadgen-args "--connections 100 --inflight 8 --size 64 --duration 5"
    python -m benchmarks.throughput --mode connect-rate --runs 3 --peers --pin 0 --loadgen-cpus 1 \\
        --loadgen-args "--concurrency 64 --duration 5"

Each run starts a fresh server (runs interleave servers so machine drift hits all alike), runs one
``benchmarks.loadgen`` of the given mode against it, keeps the load generator's JSON report and stops the
server. On a 2-core machine pin the server and the load generator to different cores (``--pin 0
--loadgen-cpus 1``): unpinned, they steal each other's CPU and the figures swing from run to run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/throughput.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import (
    REPO_ROOT,
    CpuSampler,
    add_server_args,
    loadgen_cmd,
    machine,
    servers_from_args,
    start_server,
    stop_process,
)

# (report section, key path) of the figures summarised per mode; the CPU figures are not in the load
# generator's report: run_once measures them (server and load generator process trees, over the window).
FIGURES = {
    "echo": {
        "messages_per_s": ("echo", "messages_per_s"),
        "rtt_p50_ms": ("echo", "rtt_ms", "p50"),
        "rtt_p99_ms": ("echo", "rtt_ms", "p99"),
        "rtt_p99_9_ms": ("echo", "rtt_ms", "p99_9"),
        "rtt_max_ms": ("echo", "rtt_ms", "max"),
        "server_cpu_pct": (),
        "loadgen_cpu_pct": (),
        "core0_busy_pct": (),
        "core1_busy_pct": (),
        "messages_per_server_cpu_s": (),
    },
    "connect-rate": {
        "handshakes_per_s": ("connect_rate", "handshakes_per_s"),
        "handshake_p50_ms": ("connect_rate", "handshake_ms", "p50"),
        "handshake_p99_ms": ("connect_rate", "handshake_ms", "p99"),
        "handshake_max_ms": ("connect_rate", "handshake_ms", "max"),
        "server_cpu_pct": (),
        "loadgen_cpu_pct": (),
        "core0_busy_pct": (),
        "core1_busy_pct": (),
        "handshakes_per_server_cpu_s": (),
    },
}
SECTION = {"echo": "echo", "connect-rate": "connect_rate"}
RATE = {"echo": "messages_per_s", "connect-rate": "handshakes_per_s"}


def dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    if not path:
        return None
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_once(
    args: argparse.Namespace, name: str, argv: list[str], port: int, run: int, workdir: Path
) -> dict[str, Any]:
    server, argv = start_server(
        argv, args.host, port, workdir / f"{name}-run{run}.server.log", args.pin, args.startup_timeout
    )
    try:
        extra = shlex.split(args.loadgen_args) + shlex.split(dict(args.server_loadgen_args).get(name, ""))
        cmd = loadgen_cmd(args, args.mode, port, extra)
        loadgen = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        # Which side was the limit: CPU of the server's and of the load generator's process trees.
        with CpuSampler({"server": server.pid, "loadgen": loadgen.pid}) as cpu:
            try:
                stdout, stderr = loadgen.communicate(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                stop_process(loadgen)
                raise
    finally:
        stop_process(server)
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"no report from the load generator: {stderr.strip()[-400:]}") from None
    figures = {key: dig(report, path) for key, path in FIGURES[args.mode].items()}
    window = (report.get(SECTION[args.mode]) or {}).get("window_unix")
    if window:
        t0, t1 = window
        figures["server_cpu_pct"] = cpu.percent("server", t0, t1)
        figures["loadgen_cpu_pct"] = cpu.percent("loadgen", t0, t1)
        figures["core0_busy_pct"] = cpu.percent("core0", t0, t1)
        figures["core1_busy_pct"] = cpu.percent("core1", t0, t1)
        rate = figures[RATE[args.mode]]
        per_cpu = "messages_per_server_cpu_s" if args.mode == "echo" else "handshakes_per_server_cpu_s"
        if rate and figures["server_cpu_pct"]:
            figures[per_cpu] = round(rate / (figures["server_cpu_pct"] / 100.0), 1)
    return {
        "server": name,
        "run": run,
        "command": shlex.join(argv),
        "loadgen_command": shlex.join(cmd),
        "ok": report.get("ok"),
        "failures": report.get("failures"),
        "figures": figures,
        "report": report,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Run one loadgen mode against several servers; report medians of --runs runs.",
    )
    parser.add_argument("--mode", choices=tuple(FIGURES), default="echo")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--loadgen-args",
        default="--connections 100 --inflight 8 --size 64 --duration 5",
        help="extra arguments for benchmarks.loadgen MODE (one shell-quoted string)",
    )
    parser.add_argument(
        "--server-loadgen-args",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)) if "=" in text else parser.error("NAME=ARGS expected"),
        metavar="NAME=ARGS",
        help="more load generator arguments for one server only, e.g. millionws-deflate=--deflate (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one load generator run may take")
    parser.add_argument("--json-out", type=Path, default=None)
    add_server_args(parser)
    args = parser.parse_args(argv)
    servers = servers_from_args(args, parser)

    workdir = Path(tempfile.mkdtemp(prefix="millionws-throughput-"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
    errors: list[str] = []
    for run in range(1, args.runs + 1):
        for index, (name, cmd) in enumerate(servers):
            try:
                result = run_once(args, name, cmd, args.port + index, run, workdir)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                errors.append(f"{name} run {run}: {exc}")
                print(f"[throughput] {name} run {run} failed: {exc}", file=sys.stderr, flush=True)
                continue
            runs[name].append(result)
            print(f"[throughput] {name} run {run}: {result['figures']}", file=sys.stderr, flush=True)

    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        medians = {}
        for key in FIGURES[args.mode]:
            values = [r["figures"][key] for r in rs if r["figures"][key] is not None]
            medians[key] = round(statistics.median(values), 3) if values else None
        summary[name] = {"runs": len(rs), "all_ok": all(r["ok"] for r in rs), "median": medians}
        print(f"[throughput] {name:>12} median of {len(rs)}: {medians}", file=sys.stderr, flush=True)
    report = {
        "command": shlex.join([sys.executable, "-m", "benchmarks.throughput", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "mode": args.mode,
        "loadgen_args": args.loadgen_args,
        "server_loadgen_args": dict(args.server_loadgen_args),
        "summary": summary,
        "runs": runs,
        "errors": errors,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
