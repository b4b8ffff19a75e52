"""The presence benchmark (benchmarks/presence) against a real millionws: 60 members, every figure there.

A short run through the same code path as the full benchmark (member processes, the join storm, the list,
the frames report). Asserts what must hold whatever the machine's load (counts, coalescing), not costs."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.presence import driver
from benchmarks.presence.members import max_in_window


def test_max_in_window_counts_a_sliding_window():
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 1.0, 2.0], 1.0) == 1  # half-open: a frame exactly one interval later is the next
    assert max_in_window([0.0, 0.5, 0.9, 2.0], 1.0) == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_a_short_run_measures_every_figure(workers: int, tmp_path) -> None:
    args = argparse.Namespace(members=60, procs=2, sources=["127.0.0.2", "127.0.0.3"], open_rate=1000.0,
                              join_rate=100.0, interval=0.2, settle=0.2, pin=False)
    off = driver.run_case(args, workers, "off", tmp_path)
    askers = driver.run_case(args, workers, "askers", tmp_path)
    assert off["members"] == askers["members"] == 60 and "list" not in off
    assert askers["list"]["ws_ms"] > 0 and askers["list"]["http_ms"] > 0  # run_case checked count == 60
    frames = askers["frames"]
    assert frames["last_counts"] == {60: 60}  # every asker saw the whole channel, across the workers
    assert off["frames"]["total"] == 0 < frames["total"]
    # coalesced: far fewer frames than joins (60 joins reach each asker in a few 0.2 s flushes)
    assert frames["total"] <= 60 * (frames["intervals"] + 2)
    assert frames["gap_p50_s"] >= 0.15
    summary = driver.summarize([{**off, "run": 0}, {**askers, "run": 0}], [workers])
    assert "cpu_us_per_join_minus_off" in summary[str(workers)]["askers"]
