"""A short end-to-end check of the benchmark instruments: every loadgen mode against every server.

    python -m benchmarks.smoke --peers
    python -m benchmarks.smoke --server millionws='millionws serve --host {host} --port {port} --workers 1'

Small on purpose (hundreds of connections, about a second per mode) so it fits in CI. Each check passes
when the load generator's report says ``ok`` (no failure, no drop, echoes unchanged, every connection
answered its ping). Ends with the plain line "N passed, M failed".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/smoke.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import (
    REPO_ROOT,
    add_server_args,
    loadgen_cmd,
    prepare_tls,
    servers_from_args,
    start_server,
    stop_process,
)

CHECKS: list[tuple[str, str, list[str]]] = [
    ("idle", "idle", ["--connections", "300", "--hold", "1", "--verify-ping"]),
    ("idle-2procs", "idle", ["--connections", "300", "--procs", "2", "--hold", "0.5", "--verify-ping"]),
    ("echo", "echo", ["--connections", "20", "--inflight", "4", "--size", "64", "--duration", "1"]),
    (
        "echo-text-64k",
        "echo",
        ["--connections", "2", "--inflight", "2", "--size", "65536", "--text", "--duration", "1"],
    ),
    ("connect-rate", "connect-rate", ["--connections", "300", "--concurrency", "16", "--duration", "5"]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smoke", description=__doc__.splitlines()[0])
    add_server_args(parser)
    args = parser.parse_args(argv)
    servers = servers_from_args(args, parser)
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="millionws-smoke-") as tmp:
        prepare_tls(args, Path(tmp))  # --tls: peers and {cert} commands over wss://
        for index, (name, cmd) in enumerate(servers):
            port = args.port + index
            try:
                log = Path(tmp) / f"{name}.log"
                server, _ = start_server(cmd, args.host, port, log, args.pin, args.startup_timeout, args.test_cert)
            except RuntimeError as exc:
                print(f"FAIL {name}: server did not start: {exc}", flush=True)
                failed += len(CHECKS)
                continue
            try:
                for check, mode, extra in CHECKS:
                    done = subprocess.run(
                        loadgen_cmd(args, mode, port, extra, cmd, name),
                        cwd=REPO_ROOT,
                        capture_output=True,
                        text=True,
                        timeout=120,
                        check=False,
                    )
                    try:
                        report = json.loads(done.stdout)
                    except json.JSONDecodeError:
                        report = {"ok": False, "error": done.stderr.strip()[-300:]}
                    if report.get("ok") and done.returncode == 0:
                        passed += 1
                        print(f"PASS {name} {check}", flush=True)
                    else:
                        failed += 1
                        detail = {k: report.get(k) for k in ("connections", "failures", "drops", "error")}
                        print(f"FAIL {name} {check}: {json.dumps(detail)}", flush=True)
            finally:
                stop_process(server)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
