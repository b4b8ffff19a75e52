"""The HTTP pipeline of one connection with a fake transport, reactor and application: limits, keep-alive,
pipelining, deferred answers, deadlines and the upgrade."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from millionws import metrics
from millionws.apps.host import Response
from millionws.apps.routes import App
from millionws.auth import Identity
from millionws.config import Config
from millionws.core.reactor import EPOLLIN, EPOLLOUT
from millionws.metrics import HANDSHAKE0, F
from millionws.protocol import fast_head, http
from millionws.protocol.lifecycle import CLOSED, HTTP, LINGER, OPEN
from millionws.server.connection import F_EXPIRES, F_PAUSED, F_WAITING, Connection
from millionws.server.http_pipeline import HttpPipeline
from millionws.server.output import Output

from ..apps.test_apps import host
from .fakes import FakeReactor, FakeTransport, closer

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


class Ws:
    def __init__(self) -> None:
        self.opened: list[Connection] = []

    def on_open(self, conn: Connection) -> None:
        self.opened.append(conn)

    def on_close(self, conn: Connection) -> None:
        pass


class Rig:
    """A pipeline wired as the worker wires it, around one connection on descriptor 3: fresh from accept
    (``unstarted``: its first read may take the fast path) or with an h11 parser already."""

    unstarted = False

    def __init__(self, **config) -> None:
        self.transport, self.reactor = FakeTransport(), FakeReactor()
        self.stats = metrics.WorkerStats(metrics.SharedStats(1), 0)
        self.closer = closer(self.transport, self.reactor, self.stats.c)
        output = Output(self.transport, self.reactor, self.closer.pool, self.stats.c, 1 << 20, self.closer)
        self.requests: list[tuple[bytes, bytes]] = []
        self.answers: list[Response | http.HttpError | None] = []  # what handle() returns, in turn
        self.ws_bytes: list[bytes] = []
        self.config = Config(workers=1, **config)
        self.pipeline = HttpPipeline(self.config, self.stats, self.reactor, self.handle, output.write, self.closer,
                                     self.closer.expiries, lambda conn, data: self.ws_bytes.append(data))
        self.conn = Connection(3, http.UNSTARTED if self.unstarted else http.new_parser(self.config.max_request_head))
        self.reactor.conns[3] = self.conn

    def handle(self, request, body: bytes, admin: bool, conn: Connection) -> Response | None:
        self.requests.append((request.target, body))
        answer = self.answers.pop(0) if self.answers else Response(http.render(200, b"ok"), 200, True)
        if isinstance(answer, http.HttpError):
            raise answer
        return answer

    def sent(self) -> bytes:
        out = bytes(self.transport.sent.get(3, b""))
        self.transport.sent.pop(3, None)
        return out

    def refused(self, reason: int) -> int:
        return self.stats.c[HANDSHAKE0 + reason]


@pytest.fixture(autouse=True, params=["h11", "fast-path"])
def first_read(request, monkeypatch):
    """Every test twice: the connection as the acceptor makes it (the fast path may read its first head) and
    with an h11 parser from the start; the behaviour must be the same."""
    monkeypatch.setattr(Rig, "unstarted", request.param == "fast-path")
    return request.param


def test_keep_alive_answers_each_pipelined_request_and_rearms_the_handshake_deadline():
    rig = Rig()
    rig.pipeline.http_in(rig.conn, GET + GET[:10])
    assert [t for t, _ in rig.requests] == [b"/health"] and rig.sent().count(b"200 OK") == 1
    assert rig.conn.state == HTTP and rig.conn.deadline != 0
    rig.pipeline.http_in(rig.conn, GET[10:])
    assert len(rig.requests) == 2 and rig.sent().count(b"200 OK") == 1


def test_a_deep_pipeline_yields_the_loop_after_its_budget():
    rig = Rig(pipeline_budget=2)
    rig.pipeline.http_in(rig.conn, GET * 5)
    assert len(rig.requests) == 2 and [delay for delay, _ in rig.reactor.calls] == [0]
    rig.reactor.calls.pop()[1]()
    assert len(rig.requests) == 4
    rig.reactor.calls.pop()[1]()
    assert len(rig.requests) == 5 and rig.reactor.calls == []


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 600 + b"\r\n\r\n", 431, http.HS_TOO_LARGE),  # whole, too big
    (b"POST /publish/c HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, 413, http.HS_BAD_REQUEST),
    (b"NOT HTTP\r\n\r\n", 400, http.HS_BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     http.HS_BAD_REQUEST),
])
def test_a_request_over_a_limit_is_refused_and_ends_the_connection(data, status, reason):
    rig = Rig(max_request_head=512, max_request_body=1000)
    rig.pipeline.http_in(rig.conn, data)
    assert rig.sent().startswith(f"HTTP/1.1 {status} ".encode()) and rig.requests == []
    assert rig.conn.state == LINGER and rig.conn.http is None and rig.refused(reason) == 1
    assert rig.transport.shut == [3]  # answered, then our FIN


def test_a_refusal_by_the_application_of_a_head_request_has_no_body():
    rig = Rig()
    rig.answers.append(http.HttpError(404, "no such route", http.HS_NOT_FOUND))
    rig.pipeline.http_in(rig.conn, b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = rig.sent()
    assert answer.startswith(b"HTTP/1.1 404 ") and answer.endswith(b"\r\n\r\n") and rig.conn.state == LINGER


def test_connection_close_ends_the_connection_after_the_answer():
    rig = Rig()
    rig.answers.append(Response(http.render(200, b"bye", keep_alive=False), 200, False))
    rig.pipeline.http_in(rig.conn, GET + GET)
    assert len(rig.requests) == 1 and rig.conn.state == LINGER


def test_nothing_is_parsed_while_paused_and_resume_goes_on_where_it_stopped():
    rig = Rig()
    rig.conn.flags |= F_PAUSED
    rig.pipeline.http_in(rig.conn, GET * 2)
    assert rig.requests == []
    rig.conn.flags &= ~F_PAUSED
    rig.pipeline.resume(rig.conn)
    assert len(rig.requests) == 2


def test_a_deferred_answer_stops_reading_until_it_comes_then_the_pipeline_goes_on():
    rig = Rig(publish_timeout=2.0)
    rig.answers.append(None)
    rig.pipeline.http_in(rig.conn, GET + GET)
    conn = rig.conn
    assert conn.flags & F_WAITING and len(rig.requests) == 1 and rig.reactor.events[3] == 0
    assert 2.8 < conn.deadline * rig.reactor.wheel.resolution - time.monotonic() < 3.3  # the backstop
    rig.pipeline.http_in(conn, None)
    assert len(rig.requests) == 1  # still waiting
    rig.pipeline.answer(conn, Response(http.render(200, b"seq"), 200, True))
    assert not conn.flags & F_WAITING and rig.reactor.events[3] == EPOLLIN
    assert rig.sent().count(b"200 OK") == 2 and len(rig.requests) == 2  # and the one behind it


def test_a_deferred_answer_keeps_asking_for_output_it_still_owes():
    rig = Rig()
    rig.answers.append(None)
    rig.conn.pending = bytearray(b"earlier answer")
    rig.pipeline.http_in(rig.conn, GET)
    assert rig.reactor.events[3] == EPOLLOUT
    rig.pipeline.answer(rig.conn, http.HttpError(503, "unavailable", http.HS_UNAVAILABLE))
    assert rig.conn.state == LINGER and rig.refused(http.HS_UNAVAILABLE) == 1


def test_an_answer_for_a_connection_that_ended_meanwhile_is_dropped():
    rig = Rig()
    rig.answers.append(None)
    rig.pipeline.http_in(rig.conn, GET)
    rig.closer.close(rig.conn)
    rig.pipeline.answer(rig.conn, Response(b"late", 200, True))
    assert rig.sent() == b"" and rig.conn.state == CLOSED


def test_the_deadline_of_a_deferred_answer_is_a_503_to_retry():
    rig = Rig()
    rig.answers.append(None)
    rig.pipeline.http_in(rig.conn, GET)
    rig.pipeline.on_timer(rig.conn)
    answer = rig.sent()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer and b"publish_timeout" in answer
    assert not rig.conn.flags & F_WAITING and rig.conn.state == LINGER


def test_the_handshake_deadline_closes_an_idle_keep_alive_silently_and_a_slow_request_with_408():
    idle = Rig()
    idle.pipeline.http_in(idle.conn, GET)
    idle.sent()
    idle.pipeline.on_timer(idle.conn)
    assert idle.conn.state == CLOSED and idle.sent() == b""
    slow = Rig()
    slow.pipeline.http_in(slow.conn, GET[:12])
    slow.pipeline.on_timer(slow.conn)
    assert slow.sent().startswith(b"HTTP/1.1 408 ") and slow.refused(http.HS_TIMEOUT) == 1


def test_a_connection_that_never_sent_a_byte_is_closed_silently_at_its_deadline():
    rig = Rig()
    rig.pipeline.resume(rig.conn)  # nothing read yet: nothing to do
    rig.pipeline.on_timer(rig.conn)
    assert rig.conn.state == CLOSED and rig.sent() == b"" and rig.requests == []


@pytest.mark.parametrize("ping_interval", [0.0, 30.0])
def test_the_upgrade_opens_the_websocket_then_hands_on_the_frames_that_came_with_it(ping_interval):
    rig = Rig(ping_interval=ping_interval)
    app = Ws()
    expires = time.time() + 60
    rig.answers.append(Response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 101, True, app,
                                Identity("u", ("*",), expires)))
    frame = b"\x81\x80\0\0\0\0"
    rig.pipeline.http_in(rig.conn, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" + frame)
    conn = rig.conn
    assert rig.sent().startswith(b"HTTP/1.1 101") and conn.state == OPEN and conn.http is None
    assert app.opened == [conn] and rig.ws_bytes == [frame] and rig.stats.c[F["connections"]] == 1
    assert (conn.deadline != 0) == (ping_interval > 0)  # the first ping, or no deadline at all
    assert conn.flags & F_EXPIRES and rig.closer.expiries.heap[0][0] == expires


# -- the fast path against h11, end to end through the real application ------------------------------

UPGRADE_LINES = [b"GET /echo HTTP/1.1", b"Host: 127.0.0.1:9000", b"Upgrade: websocket", b"Connection: Upgrade",
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]
OPTIONAL_LINES = [b"Origin: https://good.example", b"Origin: https://evil.example", b"origin:   HTTPS://GOOD.example ",
                  b"Sec-WebSocket-Protocol: millionws", b"Sec-WebSocket-Protocol: chat, millionws",
                  b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                  b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10",
                  b"Sec-WebSocket-Extensions: x-unknown", b"Sec-WebSocket-Version: 8", b"Sec-WebSocket-Key: short",
                  b"Connection: keep-alive", b"Upgrade: h2c", b"User-Agent: test/1.0 (x; y)", b"Pragma: no-cache"]


def answer_of(data: bytes, unstarted: bool) -> tuple[bytes, int, list[int], list[bytes]]:
    rig = Rig()
    rig.pipeline.handle = App(host(compression="deflate", allowed_origins="https://good.example")[0], 10).handle
    if unstarted:
        rig.conn.http = http.UNSTARTED
    rig.pipeline.http_in(rig.conn, data)
    counters = list(rig.stats.c)
    counters[F["started"]] = 0  # the rig's start time: two rigs built across a second boundary differ
    return rig.sent(), rig.conn.state, counters, rig.ws_bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.lists(st.sampled_from(OPTIONAL_LINES), max_size=4), target=st.sampled_from([b"/echo", b"/pubsub",
       b"/ws?x=1", b"/health", b"/nope"]), trailing=st.sampled_from([b"", b"\x81\x80abcd", GET]))
def test_the_fast_path_answers_byte_for_byte_as_h11(extra: list[bytes], target: bytes, trailing: bytes) -> None:
    lines = [UPGRADE_LINES[0].replace(b"/echo", target), *UPGRADE_LINES[1:], *extra]
    data = b"\r\n".join(lines) + b"\r\n\r\n" + trailing
    assert fast_head.parse(data, 8192) is not None  # the case under test: the fast path takes it
    fast, h11_path = answer_of(data, True), answer_of(data, False)
    assert fast == h11_path
    event(fast[0][:12].decode())


def test_a_burst_of_upgrades_has_its_first_pings_spread_across_the_interval_not_at_its_end():
    interval, n = 40.0, 400
    rig = Rig(ping_interval=interval)
    app = Ws()
    before = time.monotonic()
    conns = []
    for fd in range(10, 10 + n):  # a reconnect storm: all upgraded in the same instant
        conn = Connection(fd, None)
        rig.reactor.conns[fd] = conn
        rig.pipeline.upgraded(conn, b"HTTP/1.1 101 Switching Protocols\r\n\r\n", app, b"")
        conns.append(conn)
    after = time.monotonic()
    resolution = rig.reactor.wheel.resolution
    # Offsets from the burst to each first ping, to within the burst's own duration and one tick of the wheel.
    offsets = [c.deadline * resolution - before for c in conns]
    slack = (after - before) + 2 * resolution
    assert all(-slack < o <= interval + slack for o in offsets)
    quarters = [0] * 4
    for o in offsets:
        quarters[min(3, max(0, int(o / interval * 4)))] += 1
    assert all(abs(q - n // 4) <= n // 20 for q in quarters), quarters  # each quarter of the interval ~n/4
