"""Signals and drain: how a worker stops without dropping what it holds.

Theory of operation: SIGTERM or SIGINT reach the loop through a wakeup pipe (``signal.set_wakeup_fd``),
so a handler never runs in the middle of a unit of work.  The first signal begins the drain: the worker
keeps accepting, so probes see 503 ``draining``; the application refuses upgrades (``Host.draining``);
every WebSocket is told 1001 (:meth:`keepalive.Keepalive.drain`), and the loop stops once none is left
or the grace period is over.  A second signal stops the loop at once.  SIGHUP, which the supervisor
passes on, reloads the TLS certificate (``rotation.py``) when the worker has one.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from ..core.reactor import EPOLLIN, Reactor
from ..metrics import F, WorkerStats

log = logging.getLogger("millionws.server.drain")

_DRAINING, _CONNECTIONS = F["draining"], F["connections"]


class Drain:
    __slots__ = ("draining", "grace", "index", "on_hangup", "reactor", "start_closing", "stats", "_signal_r")

    def __init__(self, reactor: Reactor, stats: WorkerStats, index: int, grace: float,
                 start_closing: Callable[[Callable[[], None], float], None]) -> None:
        self.reactor = reactor
        self.stats = stats
        self.index = index
        self.grace = grace
        self.start_closing = start_closing  # Keepalive.drain: 1001 to every WebSocket, finish when none is left
        self.draining = False
        self.on_hangup: Callable[[], None] | None = None
        self._signal_r = -1

    def is_draining(self) -> bool:
        return self.draining

    def install(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signal_r = r
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the news
        self.reactor.add_handler(r, EPOLLIN, self.on_signal)

    def on_signal(self, _events: int) -> None:
        try:
            signals = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.draining:
                    log.warning("worker %d: second signal, exiting now", self.index)
                    self.finish()
                else:
                    self.start()
            elif signum == signal.SIGHUP and self.on_hangup is not None:
                self.on_hangup()

    def start(self) -> None:
        self.draining = True
        c = self.stats.c
        c[_DRAINING] = 1
        self.stats.flush()
        log.info("worker %d draining: %d WebSockets", self.index, c[_CONNECTIONS])
        self.start_closing(self.finish, self.grace)

    def finish(self) -> None:
        self.reactor.stop()
