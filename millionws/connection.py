"""The per-connection record.

Theory of operation: a connection is one small ``__slots__`` object and nothing else.
It names its file descriptor (an ``int``: no socket object is kept), its state, and
the few things that are non-empty only while something is in flight:

* ``http``: the h11 parser, only until the request is answered or upgraded;
* ``ws``: wsproto's frame-level connection, only while a frame or fragmented message is
  incomplete or the closing handshake runs (between messages it goes back to a pool);
* ``pending``: bytes the kernel refused, only until they drain;
* ``msg``: fragments of a message being reassembled;
* ``bucket``, ``peer``: rate-limit state and source address, only when those limits are on.

An idle WebSocket therefore costs this record, its dict entry and the kernel socket.

Who writes what: ``state``, ``reason`` and ``flags`` are the server's, and ``state`` changes
only through :func:`advance` and the one table below (``CLOSED`` is set by the worker's
``close``, the only way out).  ``ws``, ``msg`` and ``msg_size`` are lent to the WebSocket
protocol as its memory for the message in flight; it reports what happened (an event of
``websocket``) and the server applies it here.

States (``state``):

===========  =====================================================================
HTTP         reading HTTP requests (h11); plain HTTP and the upgrade request
OPEN         WebSocket open
CLOSING      we sent a Close frame and wait for the peer's (close timeout runs)
LINGER       the closing handshake is over or the connection failed: flush what is
             pending, send FIN, discard input until the peer's FIN (close timeout)
CLOSED       the descriptor is closed; the record is garbage
===========  =====================================================================
"""

from __future__ import annotations

from typing import Any

HTTP, OPEN, CLOSING, LINGER, CLOSED = range(5)
STATE_NAMES = ("HTTP", "OPEN", "CLOSING", "LINGER", "CLOSED")

# Why a WebSocket ended: the index is stored in the record, the name labels the metric.
REASONS = ("normal", "error", "timeout", "protocol", "too_big", "slow_consumer", "shutdown", "policy")
R_NORMAL, R_ERROR, R_TIMEOUT, R_PROTOCOL, R_TOO_BIG, R_SLOW, R_SHUTDOWN, R_POLICY = range(len(REASONS))

# Events of the lifecycle: what the protocol reported or the server decided.
(UPGRADED,  # the 101 is sent: a WebSocket
 LAST_ANSWER,  # an HTTP answer after which the connection ends (Connection: close, a refusal)
 CLOSE_SENT,  # our Close frame is out; the peer's is awaited (close timeout)
 GOODBYE,  # our Close frame is out and the peer is not waited for (slow, silent, or we failed)
 PEER_CLOSED,  # the peer's Close came and was answered: a normal end
 CLOSE_ANSWERED,  # the peer answered our Close
 FAILED_PROTOCOL,  # the peer broke RFC 6455: our Close 1002/1007/... is out
 FAILED_TOO_BIG,  # a message over the limit: our Close 1009 is out
 ) = range(8)
EVENT_NAMES = ("UPGRADED", "LAST_ANSWER", "CLOSE_SENT", "GOODBYE", "PEER_CLOSED", "CLOSE_ANSWERED",
               "FAILED_PROTOCOL", "FAILED_TOO_BIG")

# (state, event) -> (next state, reason to record or None to keep the one set when the closing began).
# A pair that is not here is a bug, and raises (the exception boundary closes that connection).
TRANSITIONS: dict[tuple[int, int], tuple[int, int | None]] = {
    (HTTP, UPGRADED): (OPEN, R_NORMAL),
    (HTTP, LAST_ANSWER): (LINGER, None),
    (OPEN, CLOSE_SENT): (CLOSING, None),
    (OPEN, GOODBYE): (LINGER, None),
    (OPEN, PEER_CLOSED): (LINGER, R_NORMAL),
    (OPEN, FAILED_PROTOCOL): (LINGER, R_PROTOCOL),
    (OPEN, FAILED_TOO_BIG): (LINGER, R_TOO_BIG),
    (CLOSING, GOODBYE): (LINGER, None),
    (CLOSING, CLOSE_ANSWERED): (LINGER, None),
    (CLOSING, FAILED_PROTOCOL): (LINGER, R_PROTOCOL),
    (CLOSING, FAILED_TOO_BIG): (LINGER, R_TOO_BIG),
}


# How the WebSocket layer reports a receive (websocket.receive): one of the events above or NO_EVENT,
# with PONG or-ed in when the peer answered our keepalive ping.
NO_EVENT = 0xFF
EVENT_MASK = 0xFF
PONG = 0x100


def apply(conn: Connection, reported: int) -> None:
    """Apply what the WebSocket layer reported, unless the server already ended the connection
    meanwhile (a failed write, a slow-consumer goodbye during the application's call)."""
    if reported & PONG:
        conn.flags &= ~F_PING_SENT
    event = reported & EVENT_MASK
    if event != NO_EVENT and (conn.state == OPEN or conn.state == CLOSING):
        advance(conn, event)


def advance(conn: Connection, event: int) -> int:
    """Apply ``event`` to ``conn`` through :data:`TRANSITIONS`; return the new state."""
    try:
        state, reason = TRANSITIONS[conn.state, event]
    except KeyError:
        raise RuntimeError(f"{EVENT_NAMES[event]} in state {STATE_NAMES[conn.state]}") from None
    conn.state = state
    if reason is not None:
        conn.reason = reason
    return state


# flags
F_PAUSED = 1  # reading stopped: pending bytes over the limit
F_PING_SENT = 2  # a keepalive ping is unanswered
F_SHUT = 4  # our FIN is sent
F_ADMIN = 32  # accepted on the admin port: only /health, /metrics, /stats
F_WAITING = 64  # an HTTP answer is deferred (a publish waits for its seq): not reading meanwhile
F_EXPIRES = 128  # an entry of the token-expiry heap names this connection


class Connection:
    """One client connection; see the module docstring for what each slot holds."""

    __slots__ = ("fd", "state", "flags", "deadline", "http", "ws", "pending", "msg", "msg_size",
                 "app", "reason", "bucket", "peer")

    def __init__(self, fd: int, http: Any) -> None:
        self.fd = fd
        self.state = HTTP
        self.flags = 0
        self.deadline = 0
        self.http = http
        self.ws: Any = None
        self.pending: bytearray | None = None
        self.msg: list[bytes] | None = None
        self.msg_size = 0
        self.app: Any = None
        self.reason = R_NORMAL
        self.bucket: list[float] | None = None  # rate-limit state, created on first use when limits are on
        self.peer: str | None = None  # source address, kept only when per-address limits are on

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {STATE_NAMES[self.state]} flags={self.flags}>"
