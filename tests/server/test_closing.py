"""The closing part with a fake transport and reactor: our Close, the linger, the FIN, the one way to CLOSED."""

from __future__ import annotations

import pytest

from millionws.metrics import DISCONNECT0, F
from millionws.protocol.lifecycle import (
    CLOSED,
    CLOSING,
    LINGER,
    OPEN,
    R_ERROR,
    R_NORMAL,
    R_POLICY,
    R_SHUTDOWN,
    R_SLOW,
    R_TIMEOUT,
)
from millionws.server.connection import F_SHUT, Connection

from .fakes import FakeReactor, FakeTransport, closer


class App:
    def __init__(self) -> None:
        self.closed: list[Connection] = []

    def on_close(self, conn: Connection) -> None:
        self.closed.append(conn)


def websocket(part, fd: int = 7, app: App | None = None) -> Connection:
    """An open WebSocket as the HTTP pipeline leaves it after the upgrade: registered and counted."""
    conn = Connection(fd, None)
    conn.state = OPEN
    conn.app = app or App()
    part.reactor.conns[fd] = conn
    part.c[F["connections"]] += 1
    return conn


def test_our_close_waiting_for_the_peer_moves_to_closing_and_keeps_the_protocol_object():
    part = closer()
    conn = websocket(part)
    frame = part.begin_close(conn, 1001, "server going away", R_SHUTDOWN, wait_for_peer=True)
    assert frame[:1] == b"\x88" and frame[2:4] == (1001).to_bytes(2, "big") and frame.endswith(b"going away")
    assert (conn.state, conn.reason) == (CLOSING, R_SHUTDOWN) and conn.ws is not None  # it parses the answer


def test_our_close_to_a_peer_not_listening_lingers_at_once_and_lets_the_protocol_object_go():
    part = closer()
    conn = websocket(part)
    frame = part.begin_close(conn, 1013, "slow consumer", R_SLOW, wait_for_peer=False)
    assert frame[2:4] == (1013).to_bytes(2, "big")
    assert (conn.state, conn.reason, conn.ws) == (LINGER, R_SLOW, None)


def test_lingering_sends_the_fin_once_the_backlog_is_gone_and_arms_the_close_timeout():
    transport, reactor = FakeTransport(), FakeReactor()
    part = closer(transport, reactor, close_timeout=3.0)
    conn = websocket(part)
    conn.pending = bytearray(b"unread")
    part.begin_close(conn, 1000, "", R_NORMAL, wait_for_peer=False)
    part.state_changed(conn)
    assert transport.shut == [] and conn.deadline != 0  # the FIN would overtake the backlog
    conn.pending = None
    part.state_changed(conn)
    part.state_changed(conn)
    assert transport.shut == [7] and conn.flags & F_SHUT  # once
    assert reactor.wheel.expire(reactor.wheel.next_deadline() + 0.2) == [conn]


def test_closing_arms_the_close_timeout_without_a_fin():
    transport, reactor = FakeTransport(), FakeReactor()
    part = closer(transport, reactor)
    conn = websocket(part)
    part.begin_close(conn, 1008, "token expired", R_POLICY, wait_for_peer=True)
    part.state_changed(conn)
    assert transport.shut == [] and conn.deadline != 0  # the peer's Close is awaited, then its FIN


def test_a_fin_that_cannot_be_sent_closes_the_connection():
    transport = FakeTransport()
    transport.fail_shutdown = True
    part = closer(transport)
    conn = websocket(part)
    part.begin_close(conn, 1011, "keepalive ping timeout", R_TIMEOUT, wait_for_peer=False)
    part.state_changed(conn)
    assert conn.state == CLOSED and transport.closed == [7]
    assert part.c[DISCONNECT0 + R_TIMEOUT] == 1  # the reason of the goodbye, not of the failed FIN


def test_close_gives_everything_back_once_and_counts_the_websocket_by_its_reason():
    transport = FakeTransport()
    part = closer(transport, per_ip=2)
    app = App()
    conn = websocket(part, app=app)
    conn.pending = buf = bytearray(b"left")
    conn.peer = part.admission.admit("10.0.0.1", 0.0)
    part.expiries.add(conn, 10.0 ** 10)
    part.abort(conn, R_ERROR)
    part.close(conn)
    assert conn.state == CLOSED and transport.closed == [7] and 7 not in part.reactor.conns
    assert conn.pending is None and len(part.pool) == 1 and buf == b""  # the buffer is back, empty
    assert part.admission.counts == {} and part.expiries.stale == 1
    assert part.c[F["connections"]] == 0 and part.c[DISCONNECT0 + R_ERROR] == 1 and app.closed == [conn]
    assert conn.deadline == 0


def test_a_connection_that_never_upgraded_is_not_counted_as_a_websocket():
    part = closer()
    conn = Connection(9, object())
    part.reactor.conns[9] = conn
    part.abort(conn, R_ERROR)
    assert conn.state == CLOSED and conn.http is None
    assert conn.reason == R_NORMAL and sum(part.c[DISCONNECT0:DISCONNECT0 + 8]) == 0


@pytest.mark.parametrize("state", [OPEN, CLOSING])
def test_abort_records_why_only_a_websocket_ended(state):
    part = closer()
    conn = websocket(part)
    conn.state = state
    conn.reason = R_SHUTDOWN
    part.abort(conn, R_ERROR)
    assert part.c[DISCONNECT0 + R_ERROR] == 1


def test_an_aborted_linger_keeps_the_reason_its_goodbye_gave():
    part = closer()
    conn = websocket(part)
    part.begin_close(conn, 1001, "", R_SHUTDOWN, wait_for_peer=False)
    part.abort(conn, R_ERROR)
    assert part.c[DISCONNECT0 + R_SHUTDOWN] == 1 and part.c[DISCONNECT0 + R_ERROR] == 0


def test_the_drain_hears_when_the_last_websocket_closes():
    part = closer()
    first, last = websocket(part, 7), websocket(part, 8)
    done = object()
    part.close(first)
    assert part.reactor.calls == []  # nobody asked
    part.when_no_websocket_is_left(done)
    http_only = Connection(9, object())
    part.reactor.conns[9] = http_only
    part.close(http_only)
    assert part.reactor.calls == []  # one WebSocket is still open
    part.close(last)
    assert part.reactor.calls == [(0, done)]  # in the next loop turn, not inside close()


def test_the_state_changed_of_a_closed_connection_does_nothing():
    transport, reactor = FakeTransport(), FakeReactor()
    part = closer(transport, reactor)
    conn = websocket(part)
    part.close(conn)
    conn.pending = None
    part.state_changed(conn)
    part.shutdown(conn)
    assert transport.shut == [] and reactor.wheel.next_deadline() is None and conn.state == CLOSED
