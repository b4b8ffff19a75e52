"""The connection record's lifecycle: one transition table, applied by the server only."""

from __future__ import annotations

import pytest

from millionws.protocol import lifecycle as c
from millionws.protocol import websocket
from millionws.protocol.lifecycle import TRANSITIONS, advance
from millionws.server.connection import F_PING_SENT, Connection


def record(state: int) -> Connection:
    conn = Connection(-1, None)
    conn.state = state
    return conn


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS))
def test_every_transition_of_the_table(state: int, event: int):
    conn = record(state)
    conn.reason = c.R_SHUTDOWN  # as if a drain had begun the closing
    new_state, reason = TRANSITIONS[state, event]
    assert advance(conn, event) == new_state == conn.state
    assert conn.reason == (c.R_SHUTDOWN if reason is None else reason)


def test_a_pair_outside_the_table_is_a_bug_that_says_what_it_was():
    conn = record(c.LINGER)
    with pytest.raises(RuntimeError, match="PEER_CLOSED in state LINGER"):
        advance(conn, c.PEER_CLOSED)
    assert conn.state == c.LINGER


def test_every_way_out_of_a_websocket_goes_through_linger():
    for (state, _event), (new_state, _reason) in TRANSITIONS.items():
        if state in (c.OPEN, c.CLOSING):
            assert new_state in (c.CLOSING, c.LINGER)


def receive(conn: Connection, data: bytes, max_size: int, pool: websocket.FramePool) -> tuple[bytes, int]:
    out: list[bytes] = []
    event = websocket.receive(conn, data, lambda *a: None, max_size, pool, out)
    return b"".join(out), event


def test_the_protocol_reports_and_never_writes_the_lifecycle():
    pool = websocket.FramePool()
    conn = record(c.OPEN)
    conn.flags = F_PING_SENT
    masked_close = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # Close 1000, masked with a zero key
    out, event = receive(conn, b"\x8a\x80\x00\x00\x00\x00" + masked_close, 1 << 20, pool)
    assert event == websocket.PONG | c.PEER_CLOSED and out.startswith(b"\x88")  # the Close answered
    assert (conn.state, conn.reason, conn.flags) == (c.OPEN, c.R_NORMAL, F_PING_SENT)  # untouched
    conn = record(c.OPEN)
    out, event = receive(conn, b"\x81\x05hello", 1 << 20, pool)  # unmasked: 1002
    assert event == c.FAILED_PROTOCOL and conn.state == c.OPEN and out.startswith(b"\x88")
    conn = record(c.OPEN)
    out, event = receive(conn, b"\x82\xfe\xff\xff\x00\x00\x00\x00", 1000, pool)
    assert event == c.FAILED_TOO_BIG and conn.ws is None  # refused at the header, memory given up
