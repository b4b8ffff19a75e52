"""Per-connection message limits (SECURITY.md): messages and bytes a second, over a limit close 1008.

Theory of operation: the limits wrap the application's message handler instead of sitting on the read
path, so with both off (the default) the worker hands ``conn.app.on_message`` straight to the WebSocket
layer and an unused limit costs nothing per message.  With one on, :meth:`MessageLimits.on_message` is
the handler: each connection's token buckets (one list in ``conn.bucket``, made on its first message,
never for an idle connection) are refilled by elapsed time and charged; a message over a limit is not
delivered and its answer is our Close 1008.  The WebSocket layer stops reading the rest of what came
(the connection is no longer OPEN) and the worker applies the move to CLOSING like any other.
"""

from __future__ import annotations

from ..core.reactor import monotonic
from ..metrics import F
from ..protocol.lifecycle import R_POLICY
from ..ratelimit import Rate
from .closing import Closer
from .connection import Connection

_MESSAGES, _BYTES = F["rate_limited_messages"], F["rate_limited_bytes"]


class MessageLimits:
    """``messages``, ``bytes_``: per second, 0 when off.  Make one only when either is on."""

    __slots__ = ("msg_rate", "byte_rate", "c", "closer")

    def __init__(self, messages: float, bytes_: float, max_message_size: int, counters: list[int],
                 closer: Closer) -> None:
        self.msg_rate = Rate(messages) if messages else None
        # A message larger than one second of bytes must still fit in a full bucket.
        self.byte_rate = Rate(bytes_, max(bytes_, max_message_size)) if bytes_ else None
        self.c = counters
        self.closer = closer

    def on_message(self, conn: Connection, is_text: bool, payload: bytes) -> bytes | None:
        """The message handler when limits are on: the application's answer, or our Close 1008."""
        now = monotonic()
        msg_rate, byte_rate = self.msg_rate, self.byte_rate
        bucket = conn.bucket
        if bucket is None:  # [message tokens, last refill, byte tokens, last refill]
            conn.bucket = bucket = [msg_rate.burst if msg_rate else 0.0, now,
                                    byte_rate.burst if byte_rate else 0.0, now]
        if msg_rate is not None and not msg_rate.take(bucket, now, 1.0, 0):
            self.c[_MESSAGES] += 1
        elif byte_rate is not None and not byte_rate.take(bucket, now, len(payload), 2):
            self.c[_BYTES] += 1
        else:
            return conn.app.on_message(conn, is_text, payload)
        return self.closer.begin_close(conn, 1008, "rate limit exceeded", R_POLICY, wait_for_peer=True)
