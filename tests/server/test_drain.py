"""Signals and drain (millionws/server/drain.py): the first signal drains, the second stops the loop."""

from __future__ import annotations

import os
import signal

from millionws import metrics
from millionws.metrics import F
from millionws.server.drain import Drain


class Loop:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def drain_with_pipe() -> tuple[Drain, Loop, list, int]:
    loop = Loop()
    closing: list = []
    stats = metrics.WorkerStats(metrics.SharedStats(1), 0)
    drain = Drain(loop, stats, 0, 7.5, lambda finish, grace: closing.append((finish, grace)))
    r, w = os.pipe2(os.O_NONBLOCK)
    drain._signal_r = r  # as install() would, without touching this process's signal handlers
    return drain, loop, closing, w


def test_the_first_signal_drains_and_the_second_stops_the_loop():
    drain, loop, closing, w = drain_with_pipe()
    os.write(w, bytes([signal.SIGTERM]))
    drain.on_signal(0)
    assert drain.is_draining() and drain.stats.c[F["draining"]] == 1
    assert closing == [(drain.finish, 7.5)] and loop.stopped == 0  # 1001 to everyone, the loop still runs
    os.write(w, bytes([signal.SIGINT]))
    drain.on_signal(0)
    assert loop.stopped == 1 and len(closing) == 1


def test_other_signals_and_an_empty_pipe_change_nothing():
    drain, loop, closing, w = drain_with_pipe()
    drain.on_signal(0)  # nothing to read
    os.write(w, bytes([signal.SIGHUP, signal.SIGUSR1]))
    drain.on_signal(0)
    assert not drain.is_draining() and closing == [] and loop.stopped == 0
