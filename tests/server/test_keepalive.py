"""Keepalive, token expiry and drain with a fake transport and reactor: what is written, what is armed."""

from __future__ import annotations

import time

from millionws.metrics import F
from millionws.protocol.lifecycle import CLOSED, CLOSING, HTTP, LINGER, OPEN, PONG, R_POLICY, R_SHUTDOWN, R_TIMEOUT
from millionws.protocol.websocket import PING_FRAME
from millionws.server.connection import F_PING_SENT, F_PONG_DUE, Connection, apply
from millionws.server.keepalive import Keepalive, first_ping_delay
from millionws.server.output import Output

from .fakes import FakeReactor, FakeTransport, closer


class Sink:
    def on_close(self, conn: Connection) -> None:
        pass


def make(ping_interval: float = 20.0, ping_timeout: float = 5.0):
    transport, reactor = FakeTransport(), FakeReactor()
    part = closer(transport, reactor)
    output = Output(transport, reactor, part.pool, part.c, 1 << 20, part)
    keepalive = Keepalive(reactor, part, output.write, part.expiries, part.c, ping_interval, ping_timeout)
    return keepalive, transport, reactor


def websocket(keepalive: Keepalive, fd: int) -> Connection:
    conn = Connection(fd, None)
    conn.state = OPEN
    conn.app = Sink()
    keepalive.reactor.conns[fd] = conn
    keepalive.c[F["connections"]] += 1  # as the upgrade counts it
    return conn


def armed_in(reactor: FakeReactor, conn: Connection) -> float:
    """Seconds from now to the connection's deadline (to a tick of the wheel)."""
    return conn.deadline * reactor.wheel.resolution - time.monotonic()


def test_one_deadline_slot_carries_the_ping_the_pong_deadline_and_the_next_ping():
    keepalive, transport, reactor = make(ping_interval=20.0, ping_timeout=5.0)
    conn = websocket(keepalive, 3)
    keepalive.on_timer(conn)  # time to ping
    assert transport.sent[3] == PING_FRAME and conn.flags & F_PING_SENT and conn.flags & F_PONG_DUE
    assert 4.8 < armed_in(reactor, conn) < 5.3  # the pong deadline
    apply(conn, PONG | 0xFF)  # the pong came (as the worker applies what the WebSocket layer reports)
    keepalive.on_timer(conn)  # the pong deadline, answered: wait for the rest of the interval
    assert transport.sent[3] == PING_FRAME and not conn.flags & (F_PING_SENT | F_PONG_DUE)
    assert 14.8 < armed_in(reactor, conn) < 15.3
    keepalive.on_timer(conn)
    assert transport.sent[3] == PING_FRAME * 2 and conn.state == OPEN


def test_a_peer_that_does_not_answer_the_ping_gets_1011_and_is_not_waited_for():
    keepalive, transport, _reactor = make()
    conn = websocket(keepalive, 3)
    keepalive.on_timer(conn)
    keepalive.on_timer(conn)  # the pong deadline, F_PING_SENT still set
    close = transport.sent[3][len(PING_FRAME):]
    assert close[:1] == b"\x88" and close[2:4] == (1011).to_bytes(2, "big")
    assert (conn.state, conn.reason, conn.ws) == (LINGER, R_TIMEOUT, None)
    assert transport.shut == [3] and conn.deadline != 0  # FIN sent, close timeout armed


def test_an_expired_token_gets_1008_and_the_closing_handshake_and_the_check_comes_again():
    keepalive, transport, reactor = make()
    expired, valid, gone = websocket(keepalive, 3), websocket(keepalive, 4), websocket(keepalive, 5)
    keepalive.expiries.add(expired, time.time() - 1)
    keepalive.expiries.add(valid, time.time() + 3600)
    keepalive.expiries.add(gone, time.time() - 1)
    keepalive.closer.close(gone)
    keepalive.check_expiries()
    assert transport.sent[3][2:4] == (1008).to_bytes(2, "big")
    assert (expired.state, expired.reason) == (CLOSING, R_POLICY) and transport.shut == []  # the peer answers
    assert valid.state == OPEN and 4 not in transport.sent and 5 not in transport.sent
    assert reactor.calls == [(1.0, keepalive.check_expiries)]


def test_a_refreshed_token_is_not_closed_at_its_old_expiry_but_at_its_new_one():
    keepalive, transport, _reactor = make()
    conn = websocket(keepalive, 3)
    keepalive.expiries.add(conn, time.time() - 1)  # the upgrade's token: expired by the time the check runs
    keepalive.expiries.move(conn, time.time() + 3600)  # as the Host's expire_at does after a refresh
    keepalive.check_expiries()
    assert conn.state == OPEN and 3 not in transport.sent
    keepalive.expiries.move(conn, time.time() - 1)  # a later refresh whose token is already at its end
    keepalive.check_expiries()
    assert (conn.state, conn.reason) == (CLOSING, R_POLICY) and transport.sent[3][2:4] == (1008).to_bytes(2, "big")


def test_drain_says_1001_to_every_websocket_and_finishes_when_the_last_one_is_gone():
    keepalive, transport, reactor = make()
    first, second = websocket(keepalive, 3), websocket(keepalive, 4)
    http_conn = Connection(5, object())
    reactor.conns[5] = http_conn
    finished = []
    keepalive.drain(lambda: finished.append(1), grace=10.0)
    assert [c.state for c in (first, second, http_conn)] == [CLOSING, CLOSING, HTTP]
    assert first.reason == second.reason == R_SHUTDOWN
    assert transport.sent[3][2:4] == (1001).to_bytes(2, "big") and 5 not in transport.sent
    assert [delay for delay, _ in reactor.calls] == [9.5]  # the grace, less the supervisor's margin
    keepalive.closer.close(first)
    assert len(reactor.calls) == 1
    keepalive.closer.close(second)
    assert [delay for delay, _ in reactor.calls] == [9.5, 0]
    reactor.calls[-1][1]()
    assert finished == [1]


def test_drain_with_no_websocket_finishes_in_the_next_turn():
    keepalive, _transport, reactor = make()
    keepalive.drain(lambda: None, grace=0.2)
    assert sorted(delay for delay, _ in reactor.calls) == [0, 0.1]  # and never a grace below 0.1 s


def test_drain_finishes_even_when_the_last_goodbye_fails_to_be_written():
    keepalive, transport, reactor = make()
    conn = websocket(keepalive, 3)
    transport.broken.add(3)
    keepalive.drain(lambda: None, grace=10.0)
    assert conn.state == CLOSED
    assert 0 in [delay for delay, _ in reactor.calls]


def test_the_first_pings_of_consecutive_upgrades_cover_the_interval_evenly():
    interval = 30.0
    for start, n in ((1, 1000), (777, 200), (10**6, 5000)):  # any run of consecutive upgrades, not just the first
        delays = [first_ping_delay(interval, k) for k in range(start, start + n)]
        assert all(0.0 < d <= interval for d in delays)  # never later than one interval after the open
        bins = [0] * 10
        for d in delays:
            bins[min(9, int(d / interval * 10))] += 1
        assert max(bins) - min(bins) <= max(3, n // 100), bins  # uniform to within 1 %, not clustered
    assert len({round(first_ping_delay(interval, k), 9) for k in range(1, 10_001)}) == 10_000  # no two alike
