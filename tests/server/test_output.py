"""The output with a transport whose kernel refuses bytes: backlogs, backpressure, fan-out, slow consumers."""

from __future__ import annotations

from millionws.core.reactor import EPOLLIN, EPOLLOUT
from millionws.metrics import DISCONNECT0, F
from millionws.protocol.lifecycle import CLOSED, HTTP, LINGER, OPEN, R_ERROR, R_SLOW
from millionws.server.connection import F_PAUSED, F_SHUT, Connection
from millionws.server.output import Output

from .fakes import FakeReactor, FakeTransport, closer


class Sink:
    def on_close(self, conn: Connection) -> None:
        pass


def make(limit: int = 100):
    transport, reactor = FakeTransport(), FakeReactor()
    part = closer(transport, reactor)
    output = Output(transport, reactor, part.pool, part.c, limit, part)  # one pool, as in the worker
    return output, transport, reactor


def conn_of(output: Output, fd: int, state: int = OPEN) -> Connection:
    conn = Connection(fd, None)
    conn.state = state
    if state == OPEN:
        conn.app = Sink()
        output.c[F["connections"]] += 1
    output.closer.reactor.conns[fd] = conn
    return conn


def test_what_the_kernel_takes_leaves_nothing_behind():
    output, transport, reactor = make()
    conn = conn_of(output, 3)
    output.write(conn, b"hello")
    assert transport.sent[3] == b"hello" and conn.pending is None and reactor.events == {}
    assert output.c[F["bytes_out"]] == 5


def test_only_what_the_kernel_refused_is_kept_and_later_bytes_queue_behind_it():
    output, transport, reactor = make()
    conn = conn_of(output, 3)
    transport.room[3] = 2
    output.write(conn, b"hello")
    output.write(conn, b" world")
    assert transport.sent[3] == b"he" and conn.pending == b"llo world"
    assert reactor.events[3] == EPOLLIN | EPOLLOUT  # still reading: under the limit
    transport.room[3] = None
    assert output.flush(conn) is False
    assert transport.sent[3] == b"hello world" and conn.pending is None and len(output.pool) == 1
    assert reactor.events[3] == EPOLLIN and output.c[F["bytes_out"]] == 11


def test_a_kernel_that_takes_nothing_is_not_an_error():
    output, transport, _reactor = make()
    conn = conn_of(output, 3)
    transport.room[3] = 0
    output.write(conn, b"abc")
    assert conn.pending == b"abc" and conn.state == OPEN
    assert output.flush(conn) is False and conn.pending == b"abc"


def test_over_the_limit_reading_stops_until_the_backlog_halves():
    output, transport, reactor = make(limit=100)
    conn = conn_of(output, 3, HTTP)
    transport.room[3] = 0
    output.write(conn, b"x" * 60)
    assert not conn.flags & F_PAUSED
    output.write(conn, b"y" * 60)
    assert conn.flags & F_PAUSED and reactor.events[3] == EPOLLOUT  # input no longer reported
    transport.room[3] = 40
    assert output.flush(conn) is False and conn.flags & F_PAUSED  # 80 left: more than half
    transport.room[3] = 30
    assert output.flush(conn) is True  # 50 left: reading resumes, and the pipeline with it
    assert not conn.flags & F_PAUSED and reactor.events[3] == EPOLLIN | EPOLLOUT


def test_a_pause_that_ends_with_the_backlog_gone_resumes_only_an_http_connection():
    output, transport, reactor = make(limit=10)
    for fd, state, resumed in ((3, HTTP, True), (4, OPEN, False)):
        conn = conn_of(output, fd, state)
        transport.room[fd] = 0
        output.write(conn, b"z" * 20)
        assert conn.flags & F_PAUSED
        transport.room[fd] = None
        assert output.flush(conn) is resumed
        assert not conn.flags & F_PAUSED and reactor.events[fd] == EPOLLIN


def test_a_lingering_connection_gets_its_fin_once_its_backlog_is_flushed():
    output, transport, _reactor = make()
    conn = conn_of(output, 3)
    transport.room[3] = 1
    output.write(conn, b"bye")
    conn.state = LINGER
    transport.room[3] = None
    output.flush(conn)
    assert transport.sent[3] == b"bye" and transport.shut == [3] and conn.flags & F_SHUT


def test_a_failed_write_aborts_the_connection_and_later_writes_are_dropped():
    output, transport, _reactor = make()
    conn = conn_of(output, 3)
    transport.broken.add(3)
    output.write(conn, b"hello")
    assert conn.state == CLOSED and output.c[DISCONNECT0 + R_ERROR] == 1
    output.write(conn, b"again")
    assert 3 not in transport.sent and conn.pending is None


def test_a_failed_flush_aborts_the_connection_and_gives_the_buffer_back():
    output, transport, _reactor = make()
    conn = conn_of(output, 3)
    transport.room[3] = 0
    output.write(conn, b"hello")
    transport.broken.add(3)
    assert output.flush(conn) is False
    assert conn.state == CLOSED and conn.pending is None and len(output.pool) == 1


def test_fanout_writes_the_same_bytes_to_every_open_subscriber():
    output, transport, reactor = make()
    subscribers = [conn_of(output, fd) for fd in (3, 4, 5)]
    lingering = conn_of(output, 6)
    lingering.state = LINGER
    transport.room[4] = 2
    assert output.fanout([*subscribers, lingering], b"frame") == 3
    assert transport.sent[3] == b"frame" and transport.sent[4] == b"fr" and subscribers[1].pending == b"ame"
    assert 6 not in transport.sent and reactor.events == {4: EPOLLIN | EPOLLOUT}
    assert output.c[F["bytes_out"]] == 5 + 2 + 5
    assert output.fanout(subscribers, b"next") == 3
    assert subscribers[1].pending == b"amenext"  # behind its backlog, not written past it


def test_a_slow_consumer_gets_close_1013_behind_its_backlog_and_leaves_the_fanout_alone():
    output, transport, _reactor = make(limit=10)
    fast, slow, broken = conn_of(output, 3), conn_of(output, 4), conn_of(output, 5)
    transport.room[4] = 0
    output.write(slow, b"12345678")
    transport.broken.add(5)
    assert output.fanout([slow, fast, broken], b"frame") == 1  # only the fast one got it
    assert transport.sent[3] == b"frame"
    assert slow.state == LINGER and slow.reason == R_SLOW and output.c[F["slow_consumers"]] == 1
    assert slow.pending[:8] == b"12345678" and slow.pending[8:9] == b"\x88"  # the Close, behind the unread
    assert slow.pending[10:12] == (1013).to_bytes(2, "big") and slow.deadline != 0  # the close timeout
    assert broken.state == CLOSED and output.c[DISCONNECT0 + R_ERROR] == 1
    assert output.fanout([slow, fast], b"again") == 1  # no longer open: skipped


class SealingTransport(FakeTransport):
    """TLS as the output sees it: every write is sealed first, per connection, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sealed: list[tuple[int, bytes]] = []

    def seal(self, fd: int, data: bytes) -> bytes:
        self.sealed.append((fd, bytes(data)))
        return b"<%d:" % fd + bytes(data) + b">"


def test_with_tls_a_broadcast_frame_is_sealed_once_per_connection_and_a_backlog_holds_ciphertext():
    transport, reactor = SealingTransport(), FakeReactor()
    part = closer(transport, reactor)
    output = Output(transport, reactor, part.pool, part.c, 20, part)
    fast, backlogged, slow = conn_of(output, 3), conn_of(output, 4), conn_of(output, 5)
    transport.room[4] = transport.room[5] = 0
    output.write(backlogged, b"ab")
    output.write(slow, b"0123456789abc")
    assert backlogged.pending == b"<4:ab>"  # what the kernel refused is kept as it goes on the wire
    transport.sealed.clear()
    assert output.fanout([fast, backlogged, slow], b"frame") == 2
    # The slow consumer is decided before sealing: a record sealed and never sent would break its stream.
    assert transport.sealed[:2] == [(3, b"frame"), (4, b"frame")]
    assert transport.sent[3] == b"<3:frame>" and backlogged.pending == b"<4:ab><4:frame>"
    assert slow.reason == R_SLOW and slow.pending.startswith(b"<5:0123456789abc><5:\x88")  # then its Close 1013


def test_a_fanout_compresses_once_per_window_size_for_the_deflate_subscribers_only():
    from millionws.protocol.deflate import Deflater
    from millionws.protocol.websocket import encode_frame
    from millionws.server.connection import deflate_flags

    transport, reactor = FakeTransport(), FakeReactor()
    part = closer(transport, reactor)
    counters = [0, 0]
    output = Output(transport, reactor, part.pool, part.c, 1 << 20, part, Deflater(6, 64, counters, 0))
    plain = [conn_of(output, fd) for fd in (3, 4)]
    wide = [conn_of(output, fd) for fd in (5, 6, 7)]
    narrow = [conn_of(output, fd) for fd in (8, 9)]
    for conn in wide:
        conn.flags |= deflate_flags(15)
    for conn in narrow:
        conn.flags |= deflate_flags(9)
    frame = encode_frame(1, b'{"op":"message","data":"' + b"words " * 200 + b'"}')
    assert output.fanout([plain[0], *wide, narrow[0], plain[1], narrow[1]], frame) == 7
    assert transport.sent[3] == transport.sent[4] == frame
    assert transport.sent[5] == transport.sent[6] == transport.sent[7] != frame
    assert transport.sent[8] == transport.sent[9] != frame
    assert transport.sent[5][0] == transport.sent[8][0] == 0xC1  # RSV1: compressed
    assert counters[1] == 2 * (len(frame) - 4)  # two compressions (one per window), not five
    assert output.c[F["bytes_out"]] == 2 * len(frame) + 3 * len(transport.sent[5]) + 2 * len(transport.sent[8])
