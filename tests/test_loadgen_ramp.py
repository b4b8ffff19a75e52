"""The adaptive window of the load generator's ramp (benchmarks/loadgen/ramp.py): pure decisions, no sockets."""

from __future__ import annotations

import pytest

from benchmarks.loadgen.ramp import AdaptiveWindow

FAST = [0.01] * 50  # a period whose handshakes all finished well under a 100 ms target
SLOW = [0.01] * 5 + [0.5] * 45


def test_slow_start_grows_by_half_until_the_first_period_over_target_then_cuts_and_grows_by_steps():
    w = AdaptiveWindow(4, 1000, target=0.1, step=8)
    sizes = []
    for t in range(5):
        w.observe(FAST, 0.0)
        sizes.append(w.decide(t, inflight=w.window))
    assert sizes == [6, 9, 13, 19, 28]
    w.observe(SLOW, 0.0)
    assert w.decide(5, inflight=w.window) == int(28 * 0.7) and not w.slow_start
    w.observe(FAST, 0.0)
    assert w.decide(6, inflight=w.window) == int(28 * 0.7) + 8  # additive from now on


def test_the_window_stays_within_its_bounds():
    w = AdaptiveWindow(5, 40, target=0.1)
    for t in range(50):
        w.observe(FAST, 0.0)
        w.decide(t, inflight=w.window)
    assert w.window == 40
    for t in range(50):
        w.observe(SLOW, 0.0)
        w.decide(t, inflight=w.window)
    assert w.window == 5
    assert w.periods_over == 50 and w.summary()["window_max_reached"] == 40


def test_a_stalled_handshake_counts_as_over_target_even_with_no_completion():
    w = AdaptiveWindow(2, 100, target=0.1, stall=1.0)
    w.window = 50
    w.observe([], 3.0)  # nothing completed, the oldest in flight is 3 s old: the server stopped answering
    assert w.decide(0, inflight=50) == 35
    w.observe([], 0.5)  # younger than the stall age and no sample: no signal, no change
    assert w.decide(1, inflight=50) == 35


def test_it_does_not_grow_on_too_few_samples_nor_while_the_window_is_mostly_empty():
    w = AdaptiveWindow(2, 100, target=0.1)
    w.window = 20
    w.observe([0.01] * 3, 0.0)  # under min_samples: no signal
    assert w.decide(0, inflight=20) == 20
    w.observe(FAST, 0.0)  # fast, but a rate ceiling keeps most of the window unused: growing it means nothing
    assert w.decide(1, inflight=5) == 20


def test_shares_cover_the_window_over_the_processes_still_opening_one_each_at_least():
    w = AdaptiveWindow(3, 100, target=0.1)
    w.window = 10
    assert w.shares([0, 1, 2]) == {0: 4, 1: 3, 2: 3}
    assert w.shares([2]) == {2: 10}
    w.window = 3
    assert w.shares([0, 1, 2, 5, 7]) == {0: 1, 1: 1, 2: 1, 5: 1, 7: 1}
    assert w.shares([]) == {}


def test_the_trace_records_each_decision_and_the_p90_of_its_period():
    w = AdaptiveWindow(1, 10, target=0.1, min_samples=1)
    w.observe([0.001 * i for i in range(1, 11)], 0.0)  # 1..10 ms: p90 is 9 ms
    w.decide(0.5, inflight=1)
    w.decide(1.0, inflight=1)  # an empty period
    assert w.trace == [[0.5, 2, 1, 9.0, 10], [1.0, 2, 1, -1, 0]]


@pytest.mark.parametrize(("lo", "hi", "target"), [(0, 5, 0.1), (6, 5, 0.1), (1, 5, 0.0)])
def test_bounds_and_target_are_checked(lo, hi, target):
    with pytest.raises(ValueError):
        AdaptiveWindow(lo, hi, target)


def test_a_window_busy_on_average_grows_though_nothing_is_in_flight_at_the_instant_of_the_decision():
    w = AdaptiveWindow(2, 100, target=0.1, step=4)
    w.window = 10
    w.slow_start = False
    w.decide(0.0, inflight=0)
    w.observe([0.01] * 600, 0.0)  # 600 handshakes of 10 ms in one second: 6 in flight on average
    assert w.decide(1.0, inflight=0) == 14
    w.observe([0.01] * 300, 0.0)  # 3 on average: less than half of 14, a ceiling elsewhere holds it back
    assert w.decide(2.0, inflight=0) == 14
