"""Fakes for unit tests of the worker's parts: a transport whose kernel takes what the test says, a reactor
that records what was asked of epoll and the timers, and the real closing part wired to them."""

from __future__ import annotations

from millionws import metrics
from millionws.core.buffers import BufferPool
from millionws.core.reactor import TimerWheel
from millionws.protocol.websocket import FramePool
from millionws.server.admission import Admission
from millionws.server.closing import Closer
from millionws.server.expiry import Expiries


class FakeTransport:
    """``room``: bytes the kernel takes per descriptor before refusing (None: everything).  ``broken``:
    descriptors whose write fails as after a reset."""

    seal = None  # plain: what is written is what goes on the wire

    def __init__(self) -> None:
        self.room: dict[int, int | None] = {}
        self.sent: dict[int, bytearray] = {}
        self.broken: set[int] = set()
        self.shut: list[int] = []
        self.closed: list[int] = []
        self.fail_shutdown = False

    def readv(self, fd: int, buffers) -> int:
        raise BlockingIOError

    def write(self, fd: int, data) -> int:
        if fd in self.broken:
            raise ConnectionResetError(104, "reset by peer")
        room = self.room.get(fd)
        n = len(data) if room is None else min(room, len(data))
        if n == 0:
            raise BlockingIOError
        if room is not None:
            self.room[fd] = room - n
        self.sent.setdefault(fd, bytearray()).extend(bytes(data[:n]))
        return n

    def shutdown(self, fd: int) -> None:
        if self.fail_shutdown:
            raise OSError(107, "not connected")
        self.shut.append(fd)

    def close(self, fd: int) -> None:
        self.closed.append(fd)


class FakeReactor:
    def __init__(self) -> None:
        self.conns: dict[int, object] = {}
        self.events: dict[int, int] = {}
        self.wheel = TimerWheel(0.1)
        self.calls: list[tuple[float, object]] = []

    def modify(self, fd: int, events: int) -> None:
        self.events[fd] = events

    def remove_conn(self, fd: int) -> None:
        del self.conns[fd]

    def call_later(self, delay: float, callback) -> None:
        self.calls.append((delay, callback))


def counters() -> list[int]:
    return [0] * len(metrics.F)


def closer(transport: FakeTransport | None = None, reactor: FakeReactor | None = None, c: list[int] | None = None,
           close_timeout: float = 3.0, per_ip: int = 0) -> Closer:
    c = counters() if c is None else c
    return Closer(reactor or FakeReactor(), transport or FakeTransport(), BufferPool(4), FramePool(4),
                  Admission(c, 0.0, per_ip), Expiries(), c, close_timeout)
