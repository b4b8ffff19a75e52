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
only through ``lifecycle.advance`` and its one table (``protocol/lifecycle.py``; ``CLOSED`` is set by
``closing.Closer.close``, the only way out).  ``ws``, ``msg`` and ``msg_size`` are lent to the WebSocket
protocol as its memory for the message in flight; it reports what happened (an event of
``websocket``) and the server applies it here.

States, events and the transition table: ``protocol/lifecycle.py``.
"""

from __future__ import annotations

from typing import Any

from ..protocol.lifecycle import (
    CLOSING,
    EVENT_MASK,
    HTTP,
    NO_EVENT,
    OPEN,
    PONG,
    R_NORMAL,
    STATE_NAMES,
    advance,
)

# flags
F_PAUSED = 1  # reading stopped: pending bytes over the limit
F_PING_SENT = 2  # a keepalive ping is unanswered
F_SHUT = 4  # our FIN is sent
F_PROXY = 8  # a PROXY protocol header is still owed (proxied.py): no HTTP before it
F_PONG_DUE = 16  # the armed deadline is the pong deadline of our keepalive ping (keepalive.py)
F_ADMIN = 32  # accepted on the admin port: only /health, /metrics, /stats
F_WAITING = 64  # an HTTP answer is deferred (a publish waits for its seq): not reading meanwhile
F_EXPIRES = 128  # an entry of the token-expiry heap names this connection
# permessage-deflate (protocol/extensions.py, protocol/deflate.py): negotiated, and the window our compressor
# may use for this client as 15 minus its bits (0: 2^15 ... 7: 2^8), so one flag word says both
F_DEFLATE = 256
F_WINDOW = 7 << 9
DEFLATE_KEY = F_DEFLATE | F_WINDOW  # connections with equal keys get the same compressed bytes


def deflate_flags(window_bits: int) -> int:
    """The flags of a connection that negotiated permessage-deflate with this server window (8..15)."""
    return F_DEFLATE | (15 - window_bits) << 9


def window_bits(flags: int) -> int:
    """The server window bits of a connection's flags that include F_DEFLATE."""
    return 15 - ((flags & F_WINDOW) >> 9)


def apply(conn: Connection, reported: int) -> None:
    """Apply what the WebSocket layer reported, unless the server already ended the connection
    meanwhile (a failed write, a slow-consumer goodbye during the application's call)."""
    if reported & PONG:
        conn.flags &= ~F_PING_SENT
    event = reported & EVENT_MASK
    if event != NO_EVENT and (conn.state == OPEN or conn.state == CLOSING):
        advance(conn, event)


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
