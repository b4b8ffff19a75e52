"""The worker's own code: how it wires its parts and dispatches readiness, deadlines and errors to them.
A real worker (no loop running) and socketpairs as clients."""

from __future__ import annotations

import socket
import zlib

import pytest

from millionws import metrics
from millionws.config import Config
from millionws.core.reactor import EPOLLHUP, EPOLLIN, EPOLLOUT
from millionws.metrics import F
from millionws.protocol import http
from millionws.protocol.lifecycle import CLOSED, CLOSING, HTTP, LINGER, OPEN, R_SHUTDOWN
from millionws.protocol.websocket import PING_FRAME, encode_frame
from millionws.server.connection import F_PAUSED, F_SHUT, F_WAITING, Connection
from millionws.server.worker import Worker

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


class Loud:
    """A WebSocket application with a bug in it."""

    def on_message(self, conn, is_text, payload):
        raise ValueError("a bug in the application")

    def on_close(self, conn):
        pass


class Echo:
    def on_message(self, conn, is_text, payload):
        return encode_frame(1 if is_text else 2, payload)

    def on_close(self, conn):
        pass


@pytest.fixture
def worker():
    made = []

    def make(**limits) -> Worker:
        w = Worker(Config(workers=1, **limits), 0, metrics.SharedStats(1))
        made.append(w)
        return w

    yield make
    for w in made:
        for conn in list(w.reactor.conns.values()):
            w.closer.close(conn)
        w.reactor.close()


def client(w: Worker, state: int = HTTP, app=None) -> tuple[Connection, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(2.0)
    conn = Connection(a.detach(), http.new_parser(w.config.max_request_head) if state == HTTP else None)
    w.reactor.add_conn(conn.fd, conn)
    if state != HTTP:
        conn.state = state
        conn.app = app or Echo()
        w.c[F["connections"]] += 1  # as the upgrade counts it
    return conn, b


def masked(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def test_what_the_application_sends_outside_a_read_leaves_at_once(worker):
    w = worker()
    conn, peer = client(w, OPEN)
    w.send(conn, b"direct")
    assert peer.recv(100) == b"direct"


class Chatty:
    """Sends through the host while it handles a message, to itself and to everyone (a publish)."""

    def __init__(self, w: Worker, everyone: list[Connection]) -> None:
        self.w = w
        self.everyone = everyone

    def on_message(self, conn, is_text, payload):
        if payload == b"pub":
            self.w.fanout(self.everyone, b"<message>")
            self.w.send(conn, b"<ack>")
            return None
        self.w.send(conn, b"<pushed:" + payload + b">")
        return b"<reply:" + payload + b">"

    def on_close(self, conn):
        pass


def test_every_byte_to_the_connection_being_read_leaves_in_the_order_it_was_produced(worker):
    w = worker()
    writes: list[tuple[int, bytes]] = []
    real = w.output._write  # the transport's write, as the output holds it

    def recording(fd: int, data: bytes) -> int:
        writes.append((fd, bytes(data)))
        return real(fd, data)

    w.output._write = recording
    conn, peer = client(w, OPEN)
    other, other_peer = client(w, OPEN)
    app = Chatty(w, [conn, other])
    conn.app = other.app = app
    peer.sendall(masked(1, b"a") + masked(1, b"b") + masked(1, b"pub") + masked(1, b"c"))
    w.on_event(conn, EPOLLIN)
    got = b""
    while not got.endswith(b"<reply:c>"):
        got += peer.recv(1000)
    # pushes before replies of the same message, the read's output before the broadcast, the ack after it
    assert got == b"<pushed:a><reply:a><pushed:b><reply:b><message><ack><pushed:c><reply:c>"
    assert other_peer.recv(100) == b"<message>"
    # three writes to the connection read: what came before the fan-out, its copy, the rest: not one per message
    assert [fd for fd, _ in writes].count(conn.fd) == 3


def test_what_a_failed_read_had_gathered_never_reaches_another_connection(worker):
    w = worker()
    conn, peer = client(w, OPEN, Loud())
    other, other_peer = client(w, OPEN)
    w.send(conn, b"before")  # not being read: leaves at once
    assert peer.recv(100) == b"before"

    class SendsThenRaises:
        def on_message(self, conn, is_text, payload):
            w.send(conn, b"half an answer")
            raise ValueError("a bug after a send")

        def on_close(self, conn):
            pass

    conn.app = SendsThenRaises()
    peer.sendall(masked(1, b"x"))
    with pytest.raises(ValueError):
        w.on_event(conn, EPOLLIN)
    w.on_error("connection", conn, ValueError("a bug after a send"))  # what the reactor's boundary does
    assert w._reading is None
    other_peer.sendall(masked(1, b"y"))
    w.on_event(other, EPOLLIN)
    assert other_peer.recv(100) == b"\x81\x01y"


def test_an_echo_goes_from_the_descriptor_through_the_application_back_to_the_descriptor(worker):
    w = worker()
    conn, peer = client(w, OPEN)
    peer.sendall(masked(1, b"hi") + masked(2, b"yo"))
    w.on_event(conn, EPOLLIN)
    assert peer.recv(100) == b"\x81\x02hi\x82\x02yo" and w.c[F["bytes_in"]] == 16


def test_the_end_of_a_pause_resumes_the_requests_read_before_it(worker):
    w = worker(max_pending_bytes=100)
    conn, peer = client(w)
    conn.pending = bytearray(b"x" * 150)  # answers the client has not read yet
    conn.flags |= F_PAUSED
    w.pipeline.http_in(conn, GET * 2)  # read before the pause took effect: held in the parser
    assert conn.http.trailing_data[0] == GET * 2
    w.on_event(conn, EPOLLOUT | EPOLLIN)
    got = b""
    while got.count(b"HTTP/1.1 200") < 2:
        got += peer.recv(1 << 16)
    assert got.startswith(b"x" * 150) and not conn.flags & F_PAUSED and conn.pending is None


def test_a_hang_up_while_an_answer_is_deferred_ends_the_connection(worker):
    w = worker()
    conn, peer = client(w)
    conn.flags |= F_WAITING
    peer.sendall(GET)  # pipelined behind the request being answered: not read, the answer is awaited
    peer.shutdown(socket.SHUT_WR)
    w.on_event(conn, EPOLLHUP)  # epoll asks for nothing meanwhile: only a hang-up is reported
    assert conn.state == CLOSED


def test_eof_without_a_closing_handshake_ends_a_websocket_as_an_error(worker):
    w = worker()
    conn, peer = client(w, OPEN)
    peer.close()
    w.on_event(conn, EPOLLIN)
    assert conn.state == CLOSED and w.c[F["disconnect_error"]] == 1


def test_the_peer_s_close_is_answered_and_the_connection_lingers_with_its_fin_sent(worker):
    w = worker()
    conn, peer = client(w, OPEN)
    peer.sendall(masked(8, (1000).to_bytes(2, "big")))
    w.on_event(conn, EPOLLIN)
    assert conn.state == LINGER and conn.flags & F_SHUT and conn.deadline != 0
    assert peer.recv(100) == b"\x88\x02\x03\xe8"
    assert peer.recv(100) == b""  # our FIN


def test_deadlines_go_to_the_part_that_armed_them(worker):
    w = worker(ping_interval=30.0)
    ws, ws_peer = client(w, OPEN)
    w.on_timer(ws)
    assert ws_peer.recv(100) == PING_FRAME
    waiting, waiting_peer = client(w)
    waiting.flags |= F_WAITING
    w.on_timer(waiting)
    assert waiting_peer.recv(1000).startswith(b"HTTP/1.1 503 ")
    closing, _closing_peer = client(w, OPEN)
    closing.state = CLOSING
    w.on_timer(closing)
    assert closing.state == CLOSED


def test_an_application_that_raises_costs_its_connection_a_1011_and_nothing_else(worker):
    w = worker()
    conn, peer = client(w, OPEN, Loud())
    peer.sendall(masked(1, b"boom"))
    with pytest.raises(ValueError) as raised:
        w.on_event(conn, EPOLLIN)
    w.on_error("connection", conn, raised.value)  # what the reactor's boundary does with it
    assert peer.recv(100).startswith(b"\x88\x10\x03\xf3") and conn.state == LINGER
    assert w.c[F["internal_error_connection"]] == 1


def test_an_error_before_the_upgrade_is_a_500(worker):
    w = worker()
    conn, peer = client(w)
    w.on_error("connection", conn, RuntimeError("a bug"))
    assert peer.recv(1000).startswith(b"HTTP/1.1 500 ") and conn.state == LINGER
    assert w.c[F["internal_error_http"]] == 1


def test_drain_says_1001_to_every_websocket_and_the_application_sees_it(worker):
    w = worker(grace=5.0)
    conn, peer = client(w, OPEN)
    w.drain.start()
    assert w.drain.draining and w.app.host.draining() and w.c[F["draining"]] == 1
    assert peer.recv(100)[2:4] == (1001).to_bytes(2, "big")
    assert (conn.state, conn.reason) == (CLOSING, R_SHUTDOWN)
    w.closer.close(conn)  # the last WebSocket gone: the loop is asked to stop in its next turn
    due = [cb for when, _, cb in w.reactor._calls if cb == w.drain.finish]
    assert len(due) == 2  # the grace deadline and the "none left" one


def test_output_to_a_deflate_connection_is_compressed_in_order_and_control_frames_are_not(worker):
    from millionws.protocol.deflate import TAIL
    from millionws.server.connection import deflate_flags

    w = worker(compression="deflate", compression_min_size=10)
    conn, peer = client(w, OPEN)
    conn.flags |= deflate_flags(15)
    w.send(conn, encode_frame(1, b"outside a read " * 10))  # not being read: compressed and sent at once
    first = peer.recv(1000)
    assert first[0] == 0xC1
    assert zlib.decompressobj(-15).decompress(first[2:] + TAIL) == b"outside a read " * 10
    peer.sendall(masked(9, b"p") + masked(1, b"tiny") + masked(1, b"x" * 100))
    w.on_event(conn, EPOLLIN)
    got = peer.recv(1000)
    assert got.startswith(b"\x8a\x01p" + encode_frame(1, b"tiny") + b"\xc1")  # pong and tiny reply as they are
    assert zlib.decompressobj(-15).decompress(got[11:] + TAIL) == b"x" * 100
    assert w.c[F["uncompressed_out"]] == 150 + 100


def test_the_application_may_close_an_open_websocket_with_its_code_through_the_closing_handshake(worker):
    w = worker()
    conn, peer = client(w, OPEN)
    assert w.close_websocket(conn, 4500, "logged out") is True
    assert peer.recv(100) == b"\x88\x0c" + (4500).to_bytes(2, "big") + b"logged out"
    assert conn.state == CLOSING and conn.deadline != 0  # waits for the peer's Close, then the close timeout
    assert w.close_websocket(conn, 4500, "again") is False  # not open any more: nothing sent twice
    peer.sendall(masked(8, (4500).to_bytes(2, "big")))
    w.on_event(conn, EPOLLIN)
    assert conn.state == LINGER
    w.closer.close(conn)
    assert w.c[F["disconnect_backend"]] == 1
    http_conn, _ = client(w)
    assert w.close_websocket(http_conn, 4500, "") is False  # not a WebSocket

    class ClosesItself:
        def on_message(self, conn, is_text, payload):
            assert w.close_websocket(conn, 4000, "") is False  # its read's output would come after the Close
            return None

        def on_close(self, conn):
            pass

    reading, reading_peer = client(w, OPEN, ClosesItself())
    reading_peer.sendall(masked(1, b"x"))
    w.on_event(reading, EPOLLIN)
    assert reading.state == OPEN
