from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from millionws import metrics
from millionws.metrics import F, SharedStats, WorkerStats


def samples(shared):
    out = {}
    for family in text_string_to_metric_families(metrics.render(shared).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_worker_slot_is_rendered_with_help():
    shared = SharedStats(3)
    stats = [WorkerStats(shared, i) for i in range(3)]
    for i, s in enumerate(stats):
        s.c[F["accepted"]] = 10 * (i + 1)
        s.c[F["connections"]] = i
        s.flush()
    text = metrics.render(shared).decode()
    assert "# HELP millionws_connections_active Open WebSocket connections." in text
    got = samples(shared)
    assert [got[("millionws_connections_accepted_total", (("worker", str(i)),))] for i in range(3)] == [10, 20, 30]
    assert sum(got[("millionws_connections_active", (("worker", str(i)),))] for i in range(3)) == 3
    assert got[("millionws_workers", ())] == 3
    # Process figures come from psutil for the slot's pid (all this process here).
    assert got[("millionws_process_resident_memory_bytes", (("worker", "0"),))] > 0


def test_loop_histogram_is_cumulative():
    shared = SharedStats(1)
    s = WorkerStats(shared, 0)
    for seconds in (0.00005, 0.0003, 0.0003, 2.0):
        s.observe_turn(seconds)
    s.flush()
    got = samples(shared)
    def bucket(le):
        return got[("millionws_loop_turn_seconds_bucket", (("le", le), ("worker", "0")))]
    assert bucket("0.0001") == 1
    assert bucket("0.0005") == 3
    assert bucket("1.0") == 3
    assert bucket("+Inf") == 4
    assert got[("millionws_loop_turn_seconds_count", (("worker", "0"),))] == 4
    assert abs(got[("millionws_loop_turn_seconds_sum", (("worker", "0"),))] - 2.00065) < 1e-6


def test_counters_survive_a_restart_gauges_do_not():
    shared = SharedStats(1)
    first = WorkerStats(shared, 0)
    first.c[F["accepted"]] = 5
    first.c[F["connections"]] = 4
    first.flush()
    shared.worker_gone(0)
    shared.count_restart()
    assert shared.get(0, "connections") == 0 and shared.get(0, "pid") == 0
    second = WorkerStats(shared, 0)
    assert second.c[F["accepted"]] == 5 and second.c[F["connections"]] == 0
    assert second.c[F["pid"]] == os.getpid()
    assert samples(shared)[("millionws_worker_restarts_total", ())] == 1


def test_snapshot_totals():
    shared = SharedStats(2)
    for i in range(2):
        s = WorkerStats(shared, i)
        s.c[F["messages_in"]] = 7
        s.flush()
    doc = metrics.snapshot(shared)
    assert doc["total"]["messages_in"] == 14
    assert [w["worker"] for w in doc["workers"]] == [0, 1]
    assert doc["workers"][0]["rss"] > 0


def test_http_status_other_bucket():
    shared = SharedStats(1)
    s = WorkerStats(shared, 0)
    s.http_status(200)
    s.http_status(418)
    assert s.c[F["http_200"]] == 1 and s.c[F["http_0"]] == 1


def test_descriptor_limit_and_bus_configured_are_rendered():
    """The alert rules compare open fds with the limit, and read bus_up only where a bus is configured."""
    import resource

    for bus in (False, True):
        shared = SharedStats(1, bus=bus)
        WorkerStats(shared, 0).flush()  # the slot's pid is this process
        got = samples(shared)
        assert got[("millionws_process_max_fds", (("worker", "0"),))] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got[("millionws_bus_configured", ())] == int(bus)
