"""The event loop of one worker: file descriptors, readiness and deadlines.

Theory of operation:

* One ``select.epoll``, level-triggered.  Connections live in one dict ``fd -> record``;
  every ready connection is handed to a single callback (``on_conn_event``), so the
  reactor holds no bound method or closure per connection.  A few other descriptors
  (listening socket, signal pipe) have their own callback in ``_handlers``.
* Deadlines of connections (handshake timeout, ping, pong, close) live in a
  :class:`TimerWheel`: a dict of buckets keyed by tick, each bucket a plain list of
  records.  Scheduling appends the record to a bucket and stores the tick in the
  record's ``deadline`` slot; rescheduling simply appends elsewhere, and the old entry
  is recognised as stale when its bucket fires because the record's ``deadline`` no
  longer names it.  A loop turn therefore costs nothing for connections whose deadline
  is not due: the cost is proportional to what expires, never to what is idle.
* The handful of process-wide timers (metrics flush, drain deadline) use a small heap
  (:meth:`Reactor.call_later`).
* The reactor knows nothing of HTTP or WebSocket.
* Exception boundary: every unit of work the loop starts (one connection's readiness,
  one handler's readiness, one timer) runs inside ``try``; what it raises goes to
  ``on_error(where, record, exc)``, which ends that unit (closes that connection, skips
  that timer) and the loop goes on.  Only an error in the loop's own code below, or one
  raised by ``on_error`` itself, ends the worker (and the supervisor replaces it).
"""

from __future__ import annotations

import heapq
import itertools
import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..config import DEFAULTS

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP

monotonic = time.monotonic


class HasDeadline(Protocol):
    deadline: int


class TimerWheel:
    """Deadlines for many records at a fixed resolution.

    A record is any object with a writable ``deadline`` attribute (an ``int`` tick;
    0 means "no deadline").  Only the latest :meth:`schedule` of a record counts.
    """

    __slots__ = ("resolution", "_buckets", "_ticks", "_now_tick")

    def __init__(self, resolution: float = DEFAULTS.timer_resolution, now: float | None = None) -> None:
        self.resolution = resolution
        self._buckets: dict[int, list[Any]] = {}
        self._ticks: list[int] = []  # heap of the ticks that have a bucket
        self._now_tick = self._tick_of(monotonic() if now is None else now)

    def _tick_of(self, when: float) -> int:
        return int(when / self.resolution)

    def schedule(self, record: HasDeadline, when: float) -> None:
        """Fire ``record`` at monotonic time ``when`` (rounded up to the next tick)."""
        tick = self._tick_of(when) + 1
        if tick <= self._now_tick:
            tick = self._now_tick + 1
        record.deadline = tick
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = bucket = []
            heapq.heappush(self._ticks, tick)
        bucket.append(record)

    @staticmethod
    def cancel(record: HasDeadline) -> None:
        record.deadline = 0

    def __len__(self) -> int:
        """Entries held, stale ones included (for tests and stats)."""
        return sum(len(b) for b in self._buckets.values())

    def next_deadline(self) -> float | None:
        """Monotonic time of the earliest bucket, or None."""
        if not self._ticks:
            return None
        return self._ticks[0] * self.resolution

    def expire(self, now: float) -> list[Any]:
        """Remove and return the records whose deadline is due at ``now``."""
        now_tick = self._tick_of(now)
        self._now_tick = now_tick
        ticks = self._ticks
        if not ticks or ticks[0] > now_tick:
            return []
        due: list[Any] = []
        buckets = self._buckets
        while ticks and ticks[0] <= now_tick:
            tick = heapq.heappop(ticks)
            for record in buckets.pop(tick):
                if record.deadline == tick:
                    record.deadline = 0
                    due.append(record)
        return due


class Reactor:
    """An epoll loop with a timer wheel.  See the module docstring."""

    def __init__(self, on_conn_event: Callable[[Any, int], None], on_timer: Callable[[Any], None],
                 timer_resolution: float = DEFAULTS.timer_resolution) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, Any] = {}
        self.wheel = TimerWheel(timer_resolution)
        self._on_conn_event = on_conn_event
        self._on_timer = on_timer
        self.on_error: Callable[[str, Any, Exception], None] = _reraise
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._calls: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.running = False
        # Loop-turn observer: called with the seconds one turn's work took (not the wait).
        self.observe_turn: Callable[[float], None] | None = None

    # -- descriptors -------------------------------------------------------------------
    def add_handler(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self._handlers[fd] = callback
        self.epoll.register(fd, events)

    def remove_handler(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def add_conn(self, fd: int, record: Any, events: int = EPOLLIN) -> None:
        self.conns[fd] = record
        self.epoll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def remove_conn(self, fd: int) -> None:
        """Forget ``fd``; closing it is the caller's job (close() also drops it from epoll)."""
        del self.conns[fd]

    # -- time --------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._calls, (monotonic() + delay, next(self._seq), callback))

    def _timeout(self, now: float) -> float:
        deadline = self.wheel.next_deadline()
        if self._calls:
            first = self._calls[0][0]
            deadline = first if deadline is None or first < deadline else deadline
        if deadline is None:
            return 1.0
        wait = deadline - now  # comparisons, not min(max()): this runs once per loop turn
        return 1.0 if wait > 1.0 else wait if wait > 0.0 else 0.0

    def _run_timers(self, now: float) -> None:
        calls = self._calls
        wheel = self.wheel
        if (not calls or calls[0][0] > now) and (not wheel._ticks or wheel._ticks[0] * wheel.resolution > now):
            return  # most turns: nothing due, and the wheel's clock may lag until something is
        while calls and calls[0][0] <= now:
            _, _, callback = heapq.heappop(calls)
            try:
                callback()
            except Exception as exc:
                self.on_error("timer", None, exc)
        on_timer = self._on_timer
        for record in self.wheel.expire(now):  # returns at once when nothing is due
            try:
                on_timer(record)
            except Exception as exc:
                self.on_error("connection", record, exc)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        self.running = True
        poll = self.epoll.poll
        conns = self.conns
        handlers = self._handlers
        on_conn_event = self._on_conn_event
        clock = monotonic
        # Two clock reads per turn: the one after the work times the turn and is the "now" of the timers
        # and of the next wait (with one message per turn, each read is a few per cent of its cost).
        now = clock()
        while self.running:
            events = poll(self._timeout(now))
            t0 = clock()
            for fd, ev in events:
                record = conns.get(fd)
                try:  # free when nothing is raised (zero-cost exceptions, CPython >= 3.11)
                    if record is not None:
                        on_conn_event(record, ev)
                    else:
                        handler = handlers.get(fd)
                        if handler is not None:
                            handler(ev)
                except Exception as exc:
                    # The boundary of one unit of work; past this line an error ends the worker.
                    self.on_error("connection" if record is not None else "handler", record, exc)
            now = clock()
            self._run_timers(now)
            if self.observe_turn is not None:
                self.observe_turn(now - t0)

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.epoll.close()


def _reraise(where: str, record: Any, exc: Exception) -> None:
    raise exc
