"""The fan-out benchmark (benchmarks/fanout) against a real millionws: 50 subscribers, every message delivered.

A short run (2 s of publishing, a message every 200 ms) through the same code path as the full benchmark:
subscriber processes with SO_TIMESTAMPNS, a /pubsub publisher, the server in its own session. Asserts
delivery, not latency (this machine is shared; latency is the benchmark's job, not a test's).
"""

from __future__ import annotations

import sys
import time

import pytest

from benchmarks.fanout.driver import make_server, run_one


@pytest.mark.parametrize("workers", [1, 2])
def test_fanout_delivers_every_message(workers: int, tmp_path) -> None:
    started = time.monotonic()
    server = make_server(f"millionws:{workers}", sys.executable)
    result = run_one(server, 50, duration=2.0, interval=0.2, procs=2, pin_server="", loadgen_cpus="",
                     drain=5.0, log_dir=tmp_path, quiet=True)
    assert result["connect"] == {**result["connect"], "subscribed": 50, "failed": 0}
    assert result["published"] == 10
    assert result["received"] == result["expected"] == 500
    assert result["delivery_pct"] == 100.0
    assert result["dup"] == 0 and result["drops"] == 0 and result["bad"] == 0
    assert result["no_timestamp"] == 0  # every receipt carried its kernel timestamp
    sock, app = result["sock_ms"], result["app_ms"]
    assert 0 < sock["p50"] <= sock["p99"] <= sock["max"]
    assert sock["p50"] <= app["p50"] + 1.0  # the kernel saw it before the application did
    assert len(result["cdf_sock_ms"]) == 101
    assert time.monotonic() - started < 15
