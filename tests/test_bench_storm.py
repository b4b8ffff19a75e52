"""The reconnect-storm benchmark (benchmarks/storm) at small N, through the same code as the 100 000 run.

Two real nodes joined by a real nats-server; 2 000 subscribers on node A, node A drained with SIGTERM while
a publisher posts to node B. Asserts behaviour (every subscriber back on B, nothing lost or duplicated,
the report complete, nothing left running), never timing: this machine is shared.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from array import array
from pathlib import Path

import psutil

from benchmarks.storm import report
from benchmarks.storm.fleet import DROPPED, HANDSHAKE_OK, SUBSCRIBED_EV

REPO = Path(__file__).resolve().parent.parent


def test_storm_small_run_loses_nothing_and_reports_every_figure(tmp_path: Path) -> None:
    out, png = tmp_path / "storm.json", tmp_path / "storm.png"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.storm", "--subscribers", "2000", "--channels", "20", "--rate", "50",
         "--pre", "2", "--post", "2", "--storm-timeout", "60", "--json-out", str(out), "--png", str(png)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["settings"]["workers"] == 2 and r["settings"]["procs"] == 2
    assert r["ramp"]["on_a"] == 2000
    storm = r["storm"]
    assert storm["moved"] == 2000 and storm["node_a_returncode"] == 0
    assert storm["close_codes"] == {"close_1001": 2000}  # the drain said "going away" to every one
    assert 0 < storm["t50_s"] <= storm["t99_s"] <= storm["t100_s"]
    assert storm["handshakes"]["handshakes_b"] >= 2000 and storm["handshakes"]["peak_per_s"] > 0
    m = r["messages"]
    assert m["published"] > 0 and m["acknowledged"] == m["published"] and m["publish_errors"] == {}
    assert m["expected"] == m["acknowledged"] * 100  # 100 subscribers per channel, each owed every seq
    assert m["lost"] == 0 and m["holes"] == 0 and m["gaps"] == {}
    assert m["delivered"] == m["expected"] and m["duplicates_dropped"] == 0
    rows = r["timeline"]
    assert rows[0]["on_a"] == 2000 and rows[-1]["on_b"] == 2000 and rows[-1]["on_a"] == 0
    cleanup = r["cleanup"]
    assert cleanup["fleet_killed"] == 0 and cleanup["leftover_processes"] == [] and "errors" not in cleanup
    assert r["machine"]["cpus"] and r["command"].endswith(f"--png {png}")
    assert png.stat().st_size > 10_000
    assert len(cleanup["pids"]) == 5  # nats-server, two nodes, two load generators: none of them left
    assert not [p for p in cleanup["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_report_counts_the_events_it_is_given() -> None:
    t0 = 100.0
    assert report.time_to([101.0, 102.0, math.nan, 103.0], 4, 0.5, t0) == 2.0
    assert report.time_to([101.0, 102.0, math.nan, 103.0], 4, 1.0, t0) is None  # one never came back
    # two subscribers: both on A, both dropped at 100.1, back on B at 100.3 and 101.2
    times = array("d", [99.0, 99.0, 99.1, 99.1, 100.1, 100.1, 100.3, 100.3, 101.2, 101.2])
    codes = array("B", [HANDSHAKE_OK * 2, HANDSHAKE_OK * 2, SUBSCRIBED_EV * 2, SUBSCRIBED_EV * 2,
                        DROPPED * 2, DROPPED * 2, HANDSHAKE_OK * 2 + 1, SUBSCRIBED_EV * 2 + 1,
                        HANDSHAKE_OK * 2 + 1, SUBSCRIBED_EV * 2 + 1])
    rows = report.timeline(times, codes, t0, t0 - 0.5, t0 + 1.5)
    # 0.25 s bins ending at 99.75, 100.0, ... 101.5: each pair is (on A, on B) at the bin's end
    assert [(r["on_a"], r["on_b"]) for r in rows] == [(2, 0), (2, 0), (0, 0), (0, 1), (0, 1), (0, 1), (0, 2),
                                                       (0, 2)]
    assert sum(r["handshakes_per_s_b"] for r in rows) * report.BIN_S == 2
    rates = report.handshake_rates(times, codes, t0, t0 + 1.2)
    assert rates["handshakes_b"] == 2 and rates["peak_per_s"] == 1 and rates["mean_per_s"] == round(2 / 1.2, 1)
