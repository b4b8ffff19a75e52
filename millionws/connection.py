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
