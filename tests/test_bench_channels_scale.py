"""The many-channels benchmark (benchmarks/channels_scale, `just bench-channels`) at small N, through the same
code as the 100 000-user run: real nats-server and redis-server, two node processes.

Asserts behaviour (every message delivered in order, every replay holding its message, what the broker holds
per layout, the summary's medians and line), never timing: this machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.channels_scale import extrapolate, median_point

REPO = Path(__file__).resolve().parent.parent


def test_a_small_run_of_every_layout_delivers_everything_and_reports_the_broker(tmp_path: Path) -> None:
    out = tmp_path / "channels.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.channels_scale", "--users", "100,200", "--shared", "10",
         "--layouts", "nats-shards,redis,nats", "--old-at", "100", "--shards", "4", "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    seen = {(x["layout"], x["users"]) for x in r["results"]}
    assert seen == {("nats-shards", 100), ("nats-shards", 200), ("redis", 100), ("redis", 200), ("nats", 100)}
    for x in r["results"]:
        assert x["errors"] == 0 and x["published"] == x["users"] + 10 * 5, x
        assert x["delivered"] == x["delivered_expected"] and x["delivered_in_order"], x
        assert x["replays"] > 0 and x["replays_with_the_message"] == x["replays"], x
        after = x["broker_after_publish"]
        if x["layout"] == "nats-shards":
            assert after["streams"] == 4  # whatever the number of channels
        elif x["layout"] == "nats":
            assert after["streams"] == x["users"] + 10  # one per channel ever used
        else:
            assert after["keys"] >= x["users"] + 10  # at least the seq of every channel with a message
    lines = r["extrapolation"]
    assert lines["nats-shards"]["at_1000000"]["count"] == 4
    assert lines["redis"]["at_1000000"]["count"] > 200 * 10  # keys grow with the channels that have messages
    assert lines["nats"]["at_1000000"]["rss"] is None  # one size only: no line drawn through a single point


def test_the_summary_takes_medians_over_runs_and_draws_the_line_through_two_sizes() -> None:
    def run(users: int, rss: float) -> dict:
        return {"users": users, "rss": rss, "count": 16, "mem": rss / 10, "subscribe_s": 1.0, "rate": 100.0,
                "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "replay_p50_ms": 1.0, "replay_p99_ms": 2.0}

    small = median_point([run(10, 300.0), run(10, 100.0), run(10, 200.0)])
    large = median_point([run(20, 400.0), run(20, 9000.0), run(20, 300.0)])
    assert small["rss"] == 200.0 and small["rss_range"] == [100.0, 300.0] and small["runs"] == 3
    assert large["rss"] == 400.0  # one slow run does not move it
    assert extrapolate([small, large], "rss", target=30) == 600.0
    assert extrapolate([small], "rss") is None
