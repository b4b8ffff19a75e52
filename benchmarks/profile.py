"""Where a millionws worker spends its time under one load generator mode (py-spy, sampled).

    python -m benchmarks.profile --mode connect-rate --loadgen-args "--concurrency 64 --duration 14"
    python -m benchmarks.profile --mode echo --loadgen-args "--connections 100 --inflight 8 --size 64 --duration 14"

One worker pinned to core 0, the load generator on core 1 (as in ``benchmarks.run``); py-spy samples
the worker (``--rate`` Hz, ``--seconds`` s, on-CPU samples only) once the load has started. The summary
aggregates the samples per function: inclusive share (the function or anything it calls) and self share
(the function itself is the leaf; for a line that makes a system call, that is the kernel's work done
for it, which on loopback includes much of TCP). Needs ``py-spy`` (pip install py-spy) and root or
ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

if __package__ in (None, ""):  # `python benchmarks/profile.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import REPO_ROOT, machine, start_server, stop_process, wait_until

_FRAME = re.compile(r" \((?:.*/)?([^/]+/[^/]+\.py|<[^>]+>):(\d+)\)")


def find_pyspy() -> str | None:
    """py-spy next to this interpreter (a venv that is not activated) or on PATH."""
    return shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def aggregate(raw: str, top: int = 30) -> dict:
    """py-spy --format raw (collapsed stacks) -> shares per function, inclusive and self."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_FRAME.sub(r" (\1:\2)", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        self_[frames[-1]] += n

    def shares(counter: collections.Counter[str]) -> list[tuple[float, str]]:
        # frames present in (nearly) every sample are the entry points (runpy, supervisor, Worker.run): skipped
        rows = [(round(100 * n / total, 1), f) for f, n in counter.most_common() if n < 0.95 * total]
        return rows[:top]

    if not total:
        return {"samples": 0, "inclusive_pct": [], "self_pct": []}
    return {"samples": total, "inclusive_pct": shares(inclusive), "self_pct": shares(self_)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("echo", "connect-rate"), default="connect-rate")
    parser.add_argument("--loadgen-args", default="--concurrency 64 --duration 14")
    parser.add_argument("--seconds", type=int, default=8, help="sampling time (shorter than the load)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--port", type=int, default=18700)
    parser.add_argument("--out", type=Path, default=None, help="write the summary (JSON) here")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    pyspy = find_pyspy()
    if not pyspy:
        parser.error("py-spy is not installed: pip install py-spy")

    tmp = Path(tempfile.mkdtemp(prefix="millionws-profile-"))
    server_argv = [
        sys.executable,
        "-m",
        "millionws",
        "serve",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--workers",
        "1",
        "--ping-interval",
        "0",
        "--log-level",
        "warning",
    ]
    server, argv_run = start_server(server_argv, "127.0.0.1", args.port, tmp / "server.log", "0")
    try:
        wait_until(lambda: bool(psutil.Process(server.pid).children()), 10)
        worker = psutil.Process(server.pid).children()[0].pid
        loadgen = [
            "taskset",
            "-c",
            "1",
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            args.mode,
            "--url",
            f"ws://127.0.0.1:{args.port}/echo",
            "--quiet",
            *shlex.split(args.loadgen_args),
        ]
        load = subprocess.Popen(loadgen, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(2.0)  # connections open (echo) / the rate is steady (connect-rate)
        raw_path = tmp / "profile.raw"
        subprocess.run(
            [
                pyspy,
                "record",
                "-p",
                str(worker),
                "-d",
                str(args.seconds),
                "-r",
                str(args.rate),
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(raw_path),
            ],
            check=True,
            capture_output=True,
        )
        stdout, _ = load.communicate(timeout=120)
    finally:
        stop_process(server)
    report = json.loads(stdout)
    summary = aggregate(raw_path.read_text(), args.top)
    result = {
        "command": shlex.join([sys.executable, "-m", "benchmarks.profile", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "server_command": shlex.join(argv_run),
        "loadgen_command": shlex.join(loadgen),
        "loadgen_figures": report.get("echo") or report.get("connect_rate"),
        **summary,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"{summary['samples']} samples; inclusive:")
    for pct, frame in summary["inclusive_pct"]:
        print(f"  {pct:5.1f} %  {frame}")
    print("self (leaf):")
    for pct, frame in summary["self_pct"]:
        print(f"  {pct:5.1f} %  {frame}")
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
