"""How a connection ends: our Close frame, the linger, the FIN, and the one way to ``CLOSED``.

Theory of operation:

* A WebSocket that ends (the closing handshake finished, a protocol failure, a slow consumer, a
  drain) moves to LINGER: pending bytes are flushed, our FIN is sent (:meth:`Closer.shutdown`, the
  transport's ``shutdown``), and input is discarded until the peer's FIN or the close timeout.
  Closing a socket with unread input would send RST and could destroy our own Close frame in flight.
* Every move toward the end goes through ``protocol/lifecycle.advance`` (the one transition table):
  :meth:`Closer.begin_close` for the Close frame we start a closing handshake with, the WebSocket
  layer's events applied by the worker for the rest.  :meth:`Closer.state_changed` then arms the
  close timeout, the connection's one ``deadline`` slot in the reactor's wheel, so a peer that never
  answers our Close nor sends its FIN costs one record until that timeout and nothing after.
* :meth:`Closer.close` is the only way to ``CLOSED``: the descriptor goes back through the transport,
  the pending buffer back to the pool, the address back to admission, and the WebSocket is counted
  by why it ended (``conn.reason``) and told to its application.  It is idempotent, so every path
  that gives up on a connection (a failed write, EOF, a timeout, the exception boundary) may call it.

This part never writes: :meth:`Closer.begin_close` *returns* our Close frame and the caller queues it
through the output (which itself calls :meth:`Closer.abort` when a write fails).  That is what keeps
the two parts in one direction: output depends on closing, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.buffers import BufferPool
from ..core.reactor import Reactor, monotonic
from ..core.transport import Transport
from ..metrics import DISCONNECT0, F
from ..protocol import websocket
from ..protocol.lifecycle import CLOSE_SENT, CLOSED, CLOSING, GOODBYE, LINGER, OPEN, advance
from ..protocol.websocket import FramePool
from .admission import Admission
from .connection import F_DEFLATE, F_EXPIRES, F_SHUT, Connection
from .expiry import Expiries

_CONNECTIONS = F["connections"]


class Closer:
    """The end of every connection of one worker; see the module docstring."""

    __slots__ = ("reactor", "transport", "pool", "frames", "deflate_frames", "admission", "expiries", "c",
                 "close_timeout", "_on_empty")

    def __init__(self, reactor: Reactor, transport: Transport, pool: BufferPool, frames: FramePool,
                 admission: Admission, expiries: Expiries, counters: list[int], close_timeout: float,
                 deflate_frames: FramePool | None = None) -> None:
        self.reactor = reactor
        self.transport = transport
        self.pool = pool
        self.frames = frames
        # A connection that negotiated permessage-deflate keeps a wsproto object that accepts compressed
        # frames through its closing handshake: the peer may still send some after our Close.
        self.deflate_frames = deflate_frames if deflate_frames is not None else frames
        self.admission = admission
        self.expiries = expiries
        self.c = counters
        self.close_timeout = close_timeout
        self._on_empty: Callable[[], None] | None = None

    def begin_close(self, conn: Connection, code: int, text: str, reason: int, wait_for_peer: bool) -> bytes:
        """Our Close frame for ``conn`` (the caller writes it, then calls :meth:`state_changed`).

        With ``wait_for_peer`` the connection waits in CLOSING for the peer's Close; without, it lingers
        at once: the peer is not listening (slow, silent) and waiting for its Close would be waiting for
        nothing, so the wsproto object is let go now.
        """
        conn.reason = reason
        out = websocket.start_close(conn, self.deflate_frames if conn.flags & F_DEFLATE else self.frames, code, text)
        if wait_for_peer:
            advance(conn, CLOSE_SENT)
        else:
            advance(conn, GOODBYE)
            conn.ws = None
        return out

    def state_changed(self, conn: Connection) -> None:
        """The protocol moved ``conn`` to CLOSING or LINGER: FIN once flushed, arm the close timeout."""
        state = conn.state
        if state == CLOSED:
            return
        if state == LINGER and conn.pending is None:
            self.shutdown(conn)  # else the output sends it once the backlog is flushed
        if conn.state in (CLOSING, LINGER):
            self.reactor.wheel.schedule(conn, monotonic() + self.close_timeout)

    def shutdown(self, conn: Connection) -> None:
        """Send our FIN; the descriptor closes when the peer's FIN arrives (or on timeout)."""
        if conn.flags & F_SHUT or conn.state == CLOSED:
            return
        conn.flags |= F_SHUT
        try:
            self.transport.shutdown(conn.fd)
        except OSError:
            self.close(conn)

    def abort(self, conn: Connection, reason: int) -> None:
        """End ``conn`` now, without a closing handshake; ``reason`` is kept if a WebSocket ends so."""
        if conn.state == OPEN or conn.state == CLOSING:
            conn.reason = reason
        self.close(conn)

    def close(self, conn: Connection) -> None:
        """Close the descriptor and account for it; idempotent."""
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        self.reactor.remove_conn(conn.fd)
        self.transport.close(conn.fd)  # also removes it from the epoll set
        conn.deadline = 0
        if conn.pending is not None:
            self.pool.release(conn.pending)
            conn.pending = None
        conn.http = conn.ws = conn.msg = None
        if conn.peer is not None:
            self.admission.release(conn.peer)
        if conn.flags & F_EXPIRES:
            self.expiries.closed(conn)
        if conn.app is not None:
            c = self.c
            c[_CONNECTIONS] -= 1
            c[DISCONNECT0 + conn.reason] += 1
            conn.app.on_close(conn)
            if self._on_empty is not None and c[_CONNECTIONS] == 0:
                self.reactor.call_later(0, self._on_empty)

    def when_no_websocket_is_left(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the loop turn after the last WebSocket closes (drain).  Only the
        closing of a WebSocket checks, so a worker with none left already must check for itself."""
        self._on_empty = callback
