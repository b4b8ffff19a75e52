"""The benchmark instruments cannot rot: every load generator mode against a real millionws, tiny scale.

Each test runs ``python -m benchmarks.loadgen MODE`` as the benchmarks do, against one real server
(1 worker, keepalive pings every second so the idle mode's per-connection ping count is exercised),
and checks the JSON report: connections established, no failure, no drop, the mode's own figures.
The whole module takes a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, free_port, wait_for
from tests.test_metrics_helpers import metric_total

ROOT = Path(__file__).resolve().parent.parent
SOURCES = "127.0.0.2-127.0.0.5"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ping_server() -> Iterator[Server]:
    srv = Server(free_port(), 1, ["--ping-interval", "1", "--ping-timeout", "5", "--close-timeout", "2"])
    yield srv
    srv.stop()


def loadgen(server: Server | str, mode: str, *args: str, timeout: float = 30) -> dict:
    """The load generator's JSON report against ``server`` (or a URL)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        mode,
        "--url",
        server if isinstance(server, str) else server.url(),
        "--sources",
        SOURCES,
        "--quiet",
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON report (exit {done.returncode}): {done.stderr[-2000:]}")
    assert done.returncode == (0 if report["ok"] else 1)
    return report


def assert_clean(report: dict, n: int) -> None:
    assert report["ok"] is True, report
    assert report["connections"]["established"] == n
    assert report["connections"]["failed"] == 0
    assert report["failures"] == {}
    assert report["drops"] == {}
    assert report["workers_lost"] == 0
    assert report["interrupted"] is False


def test_idle_holds_answers_server_pings_and_verifies(ping_server: Server) -> None:
    n = 120
    report = loadgen(ping_server, "idle", "--connections", str(n), "--procs", "2", "--hold", "2.5", "--verify-ping")
    assert_clean(report, n)
    assert report["procs"] == 2
    assert report["sources"] == 4
    idle = report["idle"]
    # the server pinged every connection at least once during the hold (interval 1 s), and each answered
    assert idle["pings_answered"] >= n
    assert idle["server_pinged"] == {"open_at_stop": n, "connections_pinged": n}
    assert idle["verify"] == {"sent": n, "pongs": n, "missing": 0, "unsent": 0, "window": 0}
    assert idle["unexpected_messages"] == 0
    assert report["loadgen_memory"]["pss_bytes_per_conn"] is not None
    assert report["closes"].get("clean") == n
    wait_for(lambda: ping_server.stats()["total"]["connections"] == 0, 10, what="server sees every close")


def test_idle_adaptive_ramp_opens_all_within_the_window_and_reports_its_trace(ping_server: Server) -> None:
    n = 400
    report = loadgen(
        ping_server, "idle", "--connections", str(n), "--procs", "3", "--hold", "0.5", "--adaptive",
        "--window-max", "24", "--latency-target-ms", "500", "--control-period", "0.05",
    )
    assert_clean(report, n)
    ramp = report["ramp"]
    assert ramp["retries"] == 0 and ramp["window_min"] == 3 and ramp["window_max"] == 24
    assert ramp["periods"] == len(ramp["trace"]) >= 1
    # every decision kept the window within its bounds, and the workers never had more in flight than it
    assert all(3 <= row[1] <= 24 and row[2] <= 24 for row in ramp["trace"])
    assert report["connect"]["handshake_ms"]["count"] == n


def test_idle_verify_window_pings_every_connection_with_few_outstanding(ping_server: Server) -> None:
    n = 300
    report = loadgen(
        ping_server, "idle", "--connections", str(n), "--procs", "2", "--hold", "0.2", "--verify-ping",
        "--verify-window", "4",
    )
    assert_clean(report, n)
    assert report["idle"]["verify"] == {"sent": n, "pongs": n, "missing": 0, "unsent": 0, "window": 4}


def test_echo_binary_counts_echoes_and_rtts(ping_server: Server) -> None:
    report = loadgen(ping_server, "echo", "--connections", "10", "--inflight", "4", "--size", "64", "--duration", "1")
    assert_clean(report, 10)
    echo = report["echo"]
    assert echo["messages"] > 0
    assert echo["messages_per_s"] > 0
    assert echo["mismatches"] == 0
    assert 0 < echo["rtt_ms"]["p50"] <= echo["rtt_ms"]["p99"] <= echo["rtt_ms"]["max"]
    start, end = echo["window_unix"]
    assert end - start == pytest.approx(echo["window_s"], abs=0.01)


def test_echo_text_4k(ping_server: Server) -> None:
    report = loadgen(
        ping_server, "echo", "--connections", "3", "--inflight", "2", "--size", "4096", "--text", "--duration", "0.5"
    )
    assert_clean(report, 3)
    assert report["echo"]["messages"] > 0
    assert report["echo"]["mismatches"] == 0


def test_deflate_is_measured_only_where_negotiated_and_compressed_both_ways(ping_server: Server,
                                                                           start_server) -> None:
    report = loadgen(ping_server, "idle", "--connections", "20", "--hold", "0.5", "--deflate")
    assert report["ok"] is False  # a server without --compression declines: not what --deflate measures
    assert report["deflate"]["declined"] == 20 and report["deflate"]["negotiated"] == 0
    deflating = start_server("--compression", "deflate", "--compression-min-size", "0", workers=1)
    report = loadgen(deflating, "echo", "--connections", "3", "--inflight", "2", "--size", "2048", "--text",
                     "--duration", "0.5", "--deflate")
    assert_clean(report, 3)
    assert report["deflate"]["negotiated"] == 3 and report["deflate"]["inflated_messages"] > 0
    assert report["echo"]["messages"] > 0 and report["echo"]["mismatches"] == 0
    in_, out = (metric_total(deflating.port, "millionws_compressed_bytes_total", direction=d) for d in ("in", "out"))
    assert in_ > 0 and out > 0  # both ways compressed


def test_connect_rate_budget(ping_server: Server) -> None:
    report = loadgen(ping_server, "connect-rate", "--connections", "150", "--concurrency", "8", "--duration", "5")
    assert report["ok"] is True, report
    assert report["failures"] == {}
    assert report["connections"]["established"] == 150
    rate = report["connect_rate"]
    assert rate["handshakes"] == 150
    assert rate["handshakes_per_s"] > 0
    assert report["closes"].get("clean") == 150  # close handshake, the server closed TCP first


def test_side_by_side_ratios(tmp_path: Path) -> None:
    """The results table: ratios are 'times better than the peer' in both directions of 'better'."""
    from benchmarks.run import side_by_side

    machine = {"cpus": 2}
    mem = {
        "machine": machine,
        "points": [
            {
                "server": name,
                "connections": 10_000,
                "median_bytes_per_conn": {"pss": pss, "pss_anon": pss, "rss": pss, "slab_sockets": 8000},
            }
            for name, pss in (("millionws", 400), ("websockets", 12_000), ("aiohttp", 14_000), ("picows", 28_000))
        ],
    }
    (tmp_path / "memory.json").write_text(json.dumps(mem))
    conn = {
        "machine": machine,
        "servers": {
            name: {"median": {"handshakes_per_s": rate, "handshakes_per_server_cpu_s": rate}}
            for name, rate in (("millionws", 5000), ("websockets", 4000), ("aiohttp", 5000), ("picows", 10_000))
        },
    }
    (tmp_path / "connect.json").write_text(json.dumps(conn))
    rows = {row["figure"]: row for row in side_by_side(tmp_path)["rows"]}
    pss = rows["PSS (anonymous part) per idle connection, N = 10 000"]["ratios"]
    assert pss == {"websockets": 30.0, "aiohttp": 35.0, "picows": 70.0}
    assert rows["handshakes/s, one worker"]["ratios"] == {"websockets": 1.25, "aiohttp": 1.0, "picows": 0.5}
