"""When the server itself ends an open WebSocket: a silent peer, an expired token, a drain.

Theory of operation:

* Keepalive: every deadline of an open WebSocket is its record's one ``deadline`` slot in the reactor's
  timer wheel, so a million idle connections cost no timer object and a loop turn costs only what is
  due.  One slot serves the ping and the pong: :meth:`Keepalive.on_timer` tells them apart by flags.
  With no flag the deadline is "time to ping": the ping goes out, ``F_PING_SENT | F_PONG_DUE`` are set
  and the slot is re-armed ``ping_timeout`` later.  The pong clears ``F_PING_SENT`` (the worker applies
  what the WebSocket layer reports); when the pong deadline fires with it cleared, ``F_PONG_DUE`` is
  cleared and the next ping is armed for the rest of the interval; with it still set, the peer is
  silent: Close 1011 and linger without waiting for an answer it will not send.
* The first ping of a new WebSocket (armed by the HTTP pipeline at the upgrade) is not one whole interval
  after its open but :func:`first_ping_delay` of it, in (0, interval]: the k-th upgrade of a worker takes
  the fraction 1 - frac(k * golden ratio), a low-discrepancy sequence, so any run of consecutive upgrades
  (a reconnect storm, a benchmark's ramp) has its pings spread evenly across the interval instead of all
  at once, and every later ping keeps that phase.  The k is one counter per worker, not a slot per
  connection, and a connection is still pinged within one interval of its open.
* Token expiry (SECURITY.md: no silent extension): the heap of :mod:`expiry`, checked once a second;
  an expired token gets Close 1008 and the normal closing handshake.  Only a newer token, verified as
  the upgrade's was (``refresh`` on ``/pubsub``), moves a connection's expiry (``Expiries.move``).
* Drain (SIGTERM/SIGINT, decided by the worker, which owns the signals): every open WebSocket gets
  Close 1001 and the closing handshake; the worker is finished once none is left or the grace period
  is over, whichever comes first.  Upgrades are refused meanwhile by the application (``draining``).

All three are the same move, :meth:`Keepalive.close_with`: our Close frame from the closing part,
queued through the output behind whatever the peer has not read yet, then the close timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.reactor import Reactor, monotonic
from ..metrics import F
from ..protocol.lifecycle import OPEN, R_POLICY, R_SHUTDOWN, R_TIMEOUT
from ..protocol.websocket import PING_FRAME
from .closing import Closer
from .connection import F_PING_SENT, F_PONG_DUE, Connection
from .expiry import Expiries

_CONNECTIONS = F["connections"]
_GOLDEN = 0.6180339887498949  # (sqrt(5) - 1) / 2: its multiples modulo 1 are the most evenly spread of any


def first_ping_delay(interval: float, k: int) -> float:
    """Seconds from the k-th upgrade of a worker to its first ping: in (0, interval], evenly spread over k."""
    return interval * (1.0 - (k * _GOLDEN) % 1.0)


class Keepalive:
    """Pings, token expiry and drain of one worker; see the module docstring."""

    __slots__ = ("reactor", "closer", "write", "expiries", "c", "ping_interval", "ping_timeout")

    def __init__(self, reactor: Reactor, closer: Closer, write: Callable[[Connection, bytes], None],
                 expiries: Expiries, counters: list[int], ping_interval: float, ping_timeout: float) -> None:
        self.reactor = reactor
        self.c = counters
        self.closer = closer
        self.write = write
        self.expiries = expiries
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout

    def close_with(self, conn: Connection, code: int, text: str, reason: int, wait_for_peer: bool) -> None:
        """Start the closing handshake from our side; without ``wait_for_peer``, linger at once."""
        self.write(conn, self.closer.begin_close(conn, code, text, reason, wait_for_peer))
        self.closer.state_changed(conn)

    def on_timer(self, conn: Connection) -> None:
        """The deadline of an open WebSocket fired: ping, wait for the pong, or give up on the peer."""
        now = monotonic()
        flags = conn.flags
        if flags & F_PING_SENT:
            self.close_with(conn, 1011, "keepalive ping timeout", R_TIMEOUT, wait_for_peer=False)
        elif flags & F_PONG_DUE:
            conn.flags = flags & ~F_PONG_DUE
            self.reactor.wheel.schedule(conn, now + max(0.0, self.ping_interval - self.ping_timeout))
        else:
            conn.flags = flags | F_PING_SENT | F_PONG_DUE
            self.write(conn, PING_FRAME)
            if conn.state == OPEN:
                self.reactor.wheel.schedule(conn, now + self.ping_timeout)

    def check_expiries(self) -> None:
        """Close 1008 the connections whose token expired; runs once a second from the first call."""
        self.reactor.call_later(1.0, self.check_expiries)  # first: one that raises is skipped once, not forever
        for conn in self.expiries.due(time.time()):
            if conn.state == OPEN:
                self.close_with(conn, 1008, "token expired", R_POLICY, wait_for_peer=True)

    def drain(self, finish: Callable[[], None], grace: float) -> None:
        """Close 1001 every open WebSocket; ``finish`` once none is left or after ``grace`` seconds."""
        reactor = self.reactor
        # Before the Close frames: a write that fails closes its connection at once, maybe the last one.
        self.closer.when_no_websocket_is_left(finish)
        for conn in list(reactor.conns.values()):
            if conn.state == OPEN:
                self.close_with(conn, 1001, "server going away", R_SHUTDOWN, wait_for_peer=True)
        # Leave the supervisor a margin to see us exit before it kills.
        reactor.call_later(max(0.1, grace - 0.5), finish)
        if self.c[_CONNECTIONS] == 0:
            reactor.call_later(0, finish)
