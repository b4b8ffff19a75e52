"""Per-connection message limits: the handler that wraps the application's, through the WebSocket layer."""

from __future__ import annotations

from millionws.metrics import F
from millionws.protocol import websocket
from millionws.protocol.lifecycle import CLOSING, NO_EVENT, OPEN, R_POLICY
from millionws.server.connection import Connection
from millionws.server.limits import MessageLimits

from .fakes import closer


class Echo:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def on_message(self, conn: Connection, is_text: bool, payload: bytes) -> bytes:
        self.got.append(payload)
        return websocket.encode_frame(2, payload)


def masked(payload: bytes) -> bytes:
    """A client's binary frame, masked with a zero key (payload unchanged)."""
    assert len(payload) < 126
    return bytes((0x82, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def open_conn() -> Connection:
    conn = Connection(3, None)
    conn.state = OPEN
    conn.app = Echo()
    return conn


def test_over_the_message_rate_the_message_is_not_delivered_and_the_rest_of_the_read_is_not_parsed():
    part = closer()
    limits = MessageLimits(3, 0, 1 << 20, part.c, part)
    conn = open_conn()
    data = b"".join(masked(bytes([i])) for i in range(6))
    output: list[bytes] = []
    event = websocket.receive(conn, data, limits.on_message, 1 << 20, part.frames, output)
    out = b"".join(output)
    assert conn.app.got == [b"\0", b"\1", b"\2"]  # the burst: one second's worth
    assert event == NO_EVENT and (conn.state, conn.reason) == (CLOSING, R_POLICY)
    close = out[-(4 + len("rate limit exceeded")):]
    assert close[:1] == b"\x88" and close[2:4] == (1008).to_bytes(2, "big")
    assert part.c[F["rate_limited_messages"]] == 1 and part.c[F["rate_limited_bytes"]] == 0


def test_a_message_larger_than_a_second_of_bytes_still_fits_a_full_bucket():
    part = closer()
    limits = MessageLimits(0, 10, 100, part.c, part)  # 10 B/s, messages up to 100 B
    conn = open_conn()
    assert conn.bucket is None  # nothing is kept for a connection that never sent a message
    assert limits.on_message(conn, False, b"x" * 100) == websocket.encode_frame(2, b"x" * 100)
    assert conn.bucket is not None and conn.state == OPEN
    reply = limits.on_message(conn, False, b"y")  # the bucket is empty now
    assert reply[:1] == b"\x88" and conn.state == CLOSING and conn.app.got == [b"x" * 100]
    assert part.c[F["rate_limited_bytes"]] == 1
