"""millionws.protocol.websocket: the fast path and the pooled wsproto behave like one dedicated wsproto per client.

The reference below feeds every byte of a client to its own ``wsproto`` connection and applies
the rules the module documents (reassemble up to ``max_size``, refuse an oversized frame at its
header with 1009, answer pings while open, answer the peer's Close with its code, fail with the
code wsproto reports, drop data once we said goodbye).  Hypothesis then drives the real
``websocket.receive`` (fast path, hand-over mid-stream, pool shared between clients) and the
reference with the same chunks and compares everything observable.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from benchmarks.wscodec import close_code, close_payload, encode, header, mask_payload, server_frames
from millionws.protocol import websocket
from millionws.protocol.lifecycle import (
    CLOSE_SENT,
    CLOSING,
    LINGER,
    OPEN,
    R_ERROR,
    R_NORMAL,
    R_PROTOCOL,
    R_TOO_BIG,
    advance,
)
from millionws.protocol.websocket import FramePool, encode_frame, frame_header, unmask, unmask_python
from millionws.server.connection import (
    F_PING_SENT,
    Connection,
    apply,
)

TOO_BIG_REASON = "message too big"  # the reason text websocket._fail sends with 1009


# -- building client frames and reading the server's (the codec is benchmarks.wscodec) ---------

LENGTH_BYTES = {"min": None, "7": 0, "16": 2, "64": 8, "msb": 8}


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, masked: bool = True,
                 key: bytes = b"\x11\x22\x33\x44", length_mode: str = "min") -> bytes:
    """A client frame.  ``length_mode``: min, 16, 64 (non-minimal encodings), msb (64-bit, MSB set)."""
    n = len(payload)
    length = n & 0xFFFF if length_mode == "16" else n | 1 << 63 if length_mode == "msb" else n
    return encode(opcode, payload, fin=fin, mask=masked, rsv=rsv, length=length,
                  length_bytes=LENGTH_BYTES[length_mode], key=key)


def close_codes(data: bytes) -> list[int | None]:
    """Codes of the Close frames in ``data``; None for a Close without a code."""
    return [close_code(p) for op, _, p in server_frames(data) if op == 8]


# -- the server's side of the protocol: apply what it reports, as the worker does ------------------

def receive(conn: Connection, data: bytes, handler, max_size: int, pool: FramePool) -> bytes:
    """``websocket.receive``, its event applied to the record with ``connection.apply``."""
    out: list[bytes] = []
    reported = websocket.receive(conn, data, handler, max_size, pool, out)
    apply(conn, reported)
    return b"".join(out)


def start_close(conn: Connection, pool: FramePool, code: int, reason: str) -> bytes:
    """``websocket.start_close``, then CLOSE_SENT, as ``Closer.begin_close`` does when it waits for the peer."""
    out = websocket.start_close(conn, pool, code, reason)
    advance(conn, CLOSE_SENT)
    return out


# -- the application and the reference ------------------------------------------------------

def recording_handler(log: list[tuple[bool, bytes]]) -> Callable[[object, bool, bytes], bytes]:
    def handler(_conn: object, is_text: bool, payload: bytes) -> bytes:
        log.append((is_text, payload))
        return encode_frame(1 if is_text else 2, payload)  # an echo, so replies show up in the output
    return handler


def fresh_conn() -> Connection:
    conn = Connection(-1, None)
    conn.state = OPEN
    conn.app = None
    conn.reason = R_ERROR  # a sentinel: every way out of OPEN must set it (or leave it) the same way
    conn.flags = F_PING_SENT  # a pong must clear it
    return conn


class Reference:
    """One dedicated wsproto connection for one client, no fast path, no pool."""

    def __init__(self, max_size: int) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.max_size = max_size
        self.state = OPEN
        self.reason = R_ERROR
        self.flags = F_PING_SENT
        self.parts: list[bytes] | None = None  # the message being reassembled
        self.size = 0
        self.messages: list[tuple[bool, bytes]] = []
        self.handler = recording_handler(self.messages)
        self.output = bytearray()  # everything sent to the client

    def receive(self, data: bytes) -> bytes:
        out: list[bytes] = []
        self._receive(data, out)
        reply = b"".join(out)
        self.output += reply
        return reply

    def _receive(self, data: bytes, out: list[bytes]) -> None:
        if self.state == LINGER:
            return
        self.ws.receive_data(data)
        self._events(out)
        if self.state == OPEN:
            decoder = self.ws._proto._frame_decoder
            header = decoder.header
            if (header is not None and header.opcode < 8
                    and self.size + header.payload_len - decoder.payload_consumed > self.max_size):
                self._fail(1009, TOO_BIG_REASON, out)

    def start_close(self, code: int, reason: str) -> bytes:
        self.state = CLOSING
        self.parts = None
        reply = self.ws.send(CloseConnection(code=code, reason=reason))
        self.output += reply
        return reply

    def _fail(self, code: int, reason: str, out: list[bytes]) -> None:
        if self.ws.state is ConnectionState.OPEN:
            out.append(self.ws.send(CloseConnection(code=code, reason=reason)))
        self.state = LINGER
        self.parts = None
        self.reason = R_TOO_BIG if code == 1009 else R_PROTOCOL

    def _events(self, out: list[bytes]) -> None:
        ws = self.ws
        for ev in ws.events():
            if isinstance(ev, TextMessage | BytesMessage):
                if self.state != OPEN:
                    continue
                is_text = isinstance(ev, TextMessage)
                chunk = ev.data.encode() if is_text else bytes(ev.data)
                if self.size + len(chunk) > self.max_size:
                    self._fail(1009, TOO_BIG_REASON, out)
                    return
                parts = self.parts if self.parts is not None else []
                parts.append(chunk)
                if ev.message_finished:
                    self.parts = None
                    self.size = 0
                    reply = self.handler(self, is_text, b"".join(parts))
                    if reply:
                        out.append(reply)
                else:
                    self.parts = parts
                    self.size += len(chunk)
            elif isinstance(ev, Ping):
                if ws.state is ConnectionState.OPEN:
                    out.append(ws.send(ev.response()))
            elif isinstance(ev, Pong):
                self.flags &= ~F_PING_SENT
            elif isinstance(ev, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    out.append(ws.send(ev.response()))
                    self.reason = R_NORMAL
                elif ws.state is not ConnectionState.CLOSED:
                    self._fail(ev.code, ev.reason or "", out)
                    return
                self.state = LINGER
                self.parts = None
                return

    def idle(self) -> bool:
        """Between messages, no partial frame buffered: what a fresh wsproto connection looks like."""
        decoder = self.ws._proto._frame_decoder
        return (self.state == OPEN and self.parts is None and self.ws.state is ConnectionState.OPEN
                and decoder.header is None and not decoder.buffer.buffer)


@dataclass
class Client:
    """The real thing for one client: its record and what its handler got."""

    conn: Connection = field(default_factory=fresh_conn)
    messages: list[tuple[bool, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handler = recording_handler(self.messages)


def assert_same_state(client: Client, ref: Reference) -> None:
    conn = client.conn
    assert client.messages == ref.messages
    assert conn.state == ref.state
    assert conn.reason == ref.reason
    assert conn.flags == ref.flags
    if conn.state == OPEN:
        assert (conn.msg is None) == (ref.parts is None)
        assert b"".join(conn.msg or []) == b"".join(ref.parts or [])
        assert conn.msg_size == ref.size
        # Between messages with nothing buffered the record holds no protocol object ...
        assert (conn.ws is None) == ref.idle()
    elif conn.state == CLOSING:
        # ... our closing handshake keeps it until the peer's Close arrives ...
        assert conn.ws is not None
        assert conn.msg is None
    else:
        # ... and once the handshake is over or failed (LINGER) nothing is parsed any more: dropped.
        assert conn.state == LINGER
        assert conn.ws is None
        assert conn.msg is None
    if conn.ws is not None:
        assert conn.ws.state is ref.ws.state


# -- hypothesis strategies ---------------------------------------------------------------------

SIZES = st.one_of(
    st.integers(0, 20),
    st.sampled_from([124, 125, 126, 127, 299, 300, 301]),
    st.integers(0, 3000),
    st.sampled_from([65535, 65536]) | st.integers(0, 125),  # the big ones stay rare
)
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]
KEYS = st.binary(min_size=4, max_size=4)


@st.composite
def payloads(draw: st.DrawFn, text: bool, valid: bool) -> bytes:
    size = draw(SIZES)
    if text:
        unit = draw(st.text(min_size=1, max_size=4)).encode()
    else:
        unit = draw(st.binary(min_size=1, max_size=8))
    data = unit * (size // len(unit) + 1)
    if valid:
        return data[:size] if not text else data[:size].decode(errors="ignore").encode()
    data = data[:size]  # may cut a character in two: invalid UTF-8 too
    if text and draw(st.booleans()):
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.sampled_from(BAD_UTF8)) + data[pos:]
    return data


@st.composite
def mutations(draw: st.DrawFn) -> dict:
    """Break a frame: unmasked, RSV bits, a non-minimal or MSB-set 64-bit length."""
    return draw(st.fixed_dictionaries({}, optional={
        "masked": st.just(False),
        "rsv": st.integers(1, 7),
        "length_mode": st.sampled_from(["16", "64", "msb"]),
    }))


@st.composite
def data_message(draw: st.DrawFn, valid: bool = True) -> bytes:
    """A text or binary message, whole or fragmented, maybe with control frames between fragments."""
    text = draw(st.booleans())
    opcode = 1 if text else 2
    payload = draw(payloads(text, valid))
    key = draw(KEYS)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    broken = -1 if valid else draw(st.integers(-1, len(pieces) - 1))  # which fragment to break, if any
    out = []
    for i, piece in enumerate(pieces):
        if i and draw(st.integers(0, 3)) == 0:
            out.append(draw(control_frame(valid=True)))
        op = opcode if i == 0 else 0
        out.append(client_frame(op, piece, fin=i == len(pieces) - 1, key=key,
                                **(draw(mutations()) if i == broken else {})))
    return b"".join(out)


@st.composite
def control_frame(draw: st.DrawFn, valid: bool = True) -> bytes:
    key = draw(KEYS)
    opcode = draw(st.sampled_from([9, 10]))
    if valid:
        return client_frame(opcode, draw(st.binary(max_size=125)), key=key)
    kind = draw(st.sampled_from(["big", "fragmented", "mutated"]))
    if kind == "big":
        return client_frame(opcode, b"p" * draw(st.sampled_from([126, 127, 65536])), key=key)
    if kind == "fragmented":
        return client_frame(opcode, draw(st.binary(max_size=125)), fin=False, key=key)
    return client_frame(opcode, draw(st.binary(max_size=125)), key=key, **draw(mutations()))


CLOSE_CODES = [1000, 1000, 1001, 1002, 1003, 1007, 1008, 1010, 1011, 1012, 1013, 3000, 3999, 4999,  # valid
               999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000]  # not allowed on the wire (1014: wsproto)


@st.composite
def close_frame(draw: st.DrawFn) -> bytes:
    payload = draw(st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=1),
        st.builds(close_payload,
                  st.sampled_from(CLOSE_CODES),
                  st.sampled_from([b"", b"bye", "\u00e9t\u00e9".encode(), b"\xff\xfe", b"r" * 123, b"r" * 124])),
    ))
    extra = draw(mutations()) if draw(st.integers(0, 5)) == 0 else {}
    return client_frame(8, payload, key=draw(KEYS), **extra)


@st.composite
def bad_frame(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF, 0]))  # 0: continuation, no start
    return client_frame(opcode, draw(st.binary(max_size=10)), fin=draw(st.booleans()), key=draw(KEYS))


VALID = st.one_of(data_message(), data_message(), data_message(), control_frame())
ENDINGS = st.one_of(
    st.just(b""),  # the stream just stops (maybe mid-frame, given the cuts)
    close_frame(), close_frame(),
    data_message(valid=False), data_message(valid=False),
    control_frame(valid=False),
    bad_frame(),
    st.binary(min_size=1, max_size=12),  # junk
)


@st.composite
def chunked_stream(draw: st.DrawFn) -> list[bytes]:
    """Valid traffic, then maybe something that ends it, then maybe more; cut at arbitrary points."""
    parts = draw(st.lists(VALID, max_size=5))
    parts.append(draw(ENDINGS))
    parts += draw(st.lists(VALID | ENDINGS, max_size=2))  # after a Close or an error: must be ignored
    stream = b"".join(parts)
    if not stream:
        stream = client_frame(1, b"x")
    return cut_anywhere(draw, stream)


def cut_anywhere(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` in up to 9 reads, cut at points the strategy draws."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))))
    bounds = [0, *(c for c in cuts if c < len(stream)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# -- the equivalence -----------------------------------------------------------------------

def against_references(streams: list[list[bytes]], pool: FramePool, refs: list, max_size: int,
                       server_close_at: int | None) -> None:
    """Each client's reads through the pooled ``receive`` and through its own dedicated reference, step by
    step and interleaved (the pool is shared, as in a worker): the same bytes out, the same messages, the
    same final state."""
    clients = [Client() for _ in streams]
    for step in range(max(len(s) for s in streams)):
        for chunks, client, ref in zip(streams, clients, refs, strict=True):
            if step == server_close_at and client.conn.state == OPEN:
                # Our side starts the closing handshake (drain, keepalive timeout) mid-stream.
                got = start_close(client.conn, pool, 1001, "going away")
                assert got == ref.start_close(1001, "going away")
            if step >= len(chunks):
                continue
            got = receive(client.conn, chunks[step], client.handler, max_size, pool)
            want = ref.receive(chunks[step])
            assert close_codes(got) == close_codes(want)
            assert got == want
            assert client.messages == ref.messages
    for client, ref in zip(clients, refs, strict=True):
        assert_same_state(client, ref)
        codes = close_codes(bytes(ref.output))
        event(f"state={client.conn.state} close={codes[-1] if codes else '-'} messages={min(len(ref.messages), 3)}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    streams=st.lists(chunked_stream(), min_size=1, max_size=2),
    max_size=st.sampled_from([300, 125, 1 << 20, 1 << 20]),
    max_free=st.sampled_from([1024, 1]),
    server_close_at=st.none() | st.integers(0, 6),
)
def test_pooled_fast_path_matches_a_dedicated_wsproto(streams: list[list[bytes]], max_size: int, max_free: int,
                                                      server_close_at: int | None) -> None:
    pool = FramePool(max_free)  # shared by the clients, as in a worker
    against_references(streams, pool, [Reference(max_size) for _ in streams], max_size, server_close_at)
    event(f"pool created={pool.created} clients={len(streams)}")
    assert len(pool) <= max_free
    if max_free >= len(streams):
        assert pool.created <= len(streams)  # one object per client at most: given back, then reused


# -- explicit cases -------------------------------------------------------------------------

def feed(conn: Connection, data: bytes, pool: FramePool, max_size: int = 1 << 20,
         log: list | None = None) -> bytes:
    return receive(conn, data, recording_handler([] if log is None else log), max_size, pool)


@pytest.mark.parametrize("pure_python", [False, True], ids=["speedups", "pure-python-mask"])
@pytest.mark.parametrize("n", [0, 1, 125, 126, 300, 513, 65535])
def test_fast_path_takes_simple_frames_without_wsproto(n: int, pure_python: bool, monkeypatch) -> None:
    if pure_python:  # the fallback without the C speedup, for short payloads (inlined) and long ones
        monkeypatch.setattr(websocket, "_mask", websocket.apply_mask_python)
        monkeypatch.setattr(websocket, "_apply_mask", None)
    pool = FramePool()
    conn = fresh_conn()
    log: list[tuple[bool, bytes]] = []
    text = ("\u00e9" * n).encode()[:n] if n % 2 == 0 else b"a" * n
    binary = os.urandom(n)
    data = client_frame(1, text) + client_frame(2, binary) + client_frame(1, b"tail")
    out = feed(conn, data, pool, max_size=max(n, 4), log=log)  # a frame of exactly max_size is allowed
    assert log == [(True, text), (False, binary), (True, b"tail")]
    assert out == encode_frame(1, text) + encode_frame(2, binary) + encode_frame(1, b"tail")
    assert pool.created == 0
    assert conn.ws is None
    assert conn.state == OPEN


@pytest.mark.parametrize("frame_bytes", [
    pytest.param(client_frame(1, b"x" * 301), id="over-max-size"),
    pytest.param(client_frame(1, b"\xff"), id="bad-utf8"),
    pytest.param(client_frame(1, b"hi", fin=False), id="fragment"),
    pytest.param(client_frame(9, b"hi"), id="ping"),
    pytest.param(client_frame(1, b"hi", rsv=4), id="rsv1"),
    pytest.param(client_frame(1, b"hi", masked=False), id="unmasked"),
    pytest.param(client_frame(2, b"hi" * 100, length_mode="64"), id="64-bit-length"),
    pytest.param(client_frame(2, b"hi", length_mode="16"), id="non-minimal-16-bit"),
])
def test_fast_path_hands_anything_else_to_wsproto(frame_bytes: bytes) -> None:
    pool = FramePool()
    conn = fresh_conn()
    log: list[tuple[bool, bytes]] = []
    out = feed(conn, client_frame(1, b"first") + frame_bytes, pool, max_size=300, log=log)
    assert log[0] == (True, b"first")  # the simple frame before it took the fast path
    assert out.startswith(encode_frame(1, b"first"))
    assert pool.created == 1  # the rest went to wsproto


def test_partial_frame_takes_a_pooled_object_and_gives_it_back() -> None:
    pool = FramePool()
    conn = fresh_conn()
    data = client_frame(2, b"0123456789" * 20)
    assert feed(conn, data[:7], pool) == b""
    assert conn.ws is not None
    first = conn.ws
    assert pool.created == 1
    assert len(pool) == 0
    log: list[tuple[bool, bytes]] = []
    assert feed(conn, data[7:], pool, log=log) == encode_frame(2, b"0123456789" * 20)
    assert log == [(False, b"0123456789" * 20)]
    assert conn.ws is None
    assert len(pool) == 1  # back in the pool once complete
    # The next partial frame reuses that very object; nothing new is created.
    other = fresh_conn()
    feed(other, data[:3], pool)
    assert other.ws is first
    assert pool.created == 1
    assert len(pool) == 0


def test_fragmented_message_keeps_the_object_until_the_last_fragment() -> None:
    pool = FramePool()
    conn = fresh_conn()
    log: list[tuple[bool, bytes]] = []
    feed(conn, client_frame(1, "h\u00e9".encode()[:2], fin=False), pool, log=log)
    assert conn.ws is not None
    assert conn.msg is not None
    feed(conn, client_frame(9, b"ping?"), pool, log=log)  # a control frame between fragments
    assert conn.ws is not None
    out = feed(conn, client_frame(0, "h\u00e9".encode()[2:]), pool, log=log)
    assert log == [(True, "h\u00e9".encode())]
    assert out == encode_frame(1, "h\u00e9".encode())
    assert conn.ws is None
    assert conn.msg is None
    assert conn.msg_size == 0
    assert len(pool) == 1


def test_ping_is_answered_and_the_object_goes_back() -> None:
    pool = FramePool()
    conn = fresh_conn()
    out = feed(conn, client_frame(9, b"abc") + client_frame(10, b"late pong"), pool)
    assert out == b"\x8a\x03abc"
    assert conn.flags & F_PING_SENT == 0
    assert conn.ws is None
    assert len(pool) == 1


def test_peer_close_answers_then_drops_the_object() -> None:
    pool = FramePool()
    conn = fresh_conn()
    out = feed(conn, client_frame(8, close_payload(1000, b"bye")), pool)
    assert close_codes(out) == [1000]
    assert out == b"\x88\x05\x03\xe8bye"
    assert conn.state == LINGER
    assert conn.reason == R_NORMAL
    assert conn.ws is None  # a CLOSED wsproto object is never pooled, and not kept while we linger
    assert len(pool) == 0
    assert pool.created == 0  # a valid Close that ends the read is answered on the fast path
    assert feed(conn, client_frame(1, b"after"), pool) == b""  # LINGER: read and dropped


@pytest.mark.parametrize("payload, fast", [
    (b"", True), (close_payload(1001), True), (close_payload(4000, "\u00e9t\u00e9".encode()), True),
    (close_payload(1000, b"r" * 123), True),
    (b"\x03", False), (close_payload(1005), False), (close_payload(1014), False), (close_payload(2999), False),
    (close_payload(1000, b"\xff"), False), (close_payload(1000, b"r" * 124), False),
])
def test_peer_close_takes_the_fast_path_only_when_valid(payload: bytes, fast: bool) -> None:
    pool, reference = FramePool(), Reference(1 << 20)
    conn = fresh_conn()
    frame = client_frame(8, payload)
    assert feed(conn, frame, pool) == reference.receive(frame)
    assert conn.state == LINGER and conn.ws is None
    assert pool.created == (0 if fast else 1)


def test_peer_close_with_bytes_after_it_goes_to_wsproto() -> None:
    pool = FramePool()
    conn = fresh_conn()
    out = feed(conn, client_frame(8, close_payload(1000)) + client_frame(1, b"late"), pool)
    assert close_codes(out) == [1000] and pool.created == 1


def test_our_close_keeps_the_object_through_the_handshake() -> None:
    pool = FramePool()
    conn = fresh_conn()
    out = start_close(conn, pool, 1001, "going away")
    assert close_codes(out) == [1001]
    assert conn.state == CLOSING
    ws = conn.ws
    assert ws is not None
    log: list[tuple[bool, bytes]] = []
    # Data after our Close is read and dropped; a ping is not answered any more.
    assert feed(conn, client_frame(1, b"late") + client_frame(9, b"p"), pool, log=log) == b""
    assert log == []
    assert conn.ws is ws
    assert feed(conn, client_frame(8, close_payload(1001)), pool) == b""  # the peer's answer
    assert conn.state == LINGER
    assert conn.ws is None  # handshake over: dropped, not pooled
    assert ws.state is ConnectionState.CLOSED
    assert len(pool) == 0


@pytest.mark.parametrize(("data", "code", "reason"), [
    pytest.param(client_frame(1, b"\xff"), 1007, R_PROTOCOL, id="bad-utf8"),
    pytest.param(client_frame(2, b"x" * 301), 1009, R_TOO_BIG, id="too-big-whole"),
    pytest.param(client_frame(2, b"x" * 301)[:20], 1009, R_TOO_BIG, id="too-big-at-header"),
    pytest.param(client_frame(2, b"x" * 200, fin=False) + client_frame(0, b"x" * 101), 1009, R_TOO_BIG,
                 id="too-big-fragments"),
    pytest.param(client_frame(3), 1002, R_PROTOCOL, id="reserved-opcode"),
])
def test_failures(data: bytes, code: int, reason: int) -> None:
    pool = FramePool()
    conn = fresh_conn()
    out = feed(conn, data, pool, max_size=300)
    assert close_codes(out) == [code]
    assert conn.state == LINGER
    assert conn.reason == reason
    assert conn.ws is None


def test_pool_keeps_at_most_max_free() -> None:
    pool = FramePool(max_free=2)
    objs = [pool.take() for _ in range(4)]
    assert pool.created == 4
    for ws in objs:
        pool.give_back(ws)
    assert len(pool) == 2


# -- encoding and unmasking ---------------------------------------------------------------------

@pytest.mark.parametrize(("opcode", "n"), [
    pytest.param(opcode, n, id=f"op{opcode}-{n}")
    for opcode in (1, 2, 8, 9, 10) for n in (0, 125, 126, 65535, 65536)
    if opcode < 8 or n <= 125  # control frames carry at most 125 bytes
])
def test_frame_header_and_encode_frame(opcode: int, n: int) -> None:
    """The server's encoder is the reference of the tests' and benchmarks' codec: both give the same bytes."""
    want = header(0x80 | opcode, n, mask=False)
    assert len(want) == (2 if n < 126 else 4 if n < 65536 else 10)
    assert frame_header(opcode, n) == want
    payload = (b"\x00\x01\x02\xff" * (n // 4 + 1))[:n] if opcode != 1 else b"t" * n
    if opcode == 8 and n:
        payload = close_payload(1000, b"r" * n)[:n]
    frame_bytes = encode_frame(opcode, payload)
    assert frame_bytes == want + payload
    assert frame_bytes == encode(opcode, payload, mask=False)
    assert server_frames(frame_bytes) == [(opcode, True, payload)]
    # And a client-side wsproto reads back exactly what was framed.
    client = WSConnection(ConnectionType.CLIENT)
    client.receive_data(frame_bytes)
    events = list(client.events())
    assert len(events) == 1
    event = events[0]
    if opcode == 1:
        assert isinstance(event, TextMessage)
        assert event.data.encode() == payload
    elif opcode == 2:
        assert isinstance(event, BytesMessage)
        assert event.data == payload
    elif opcode == 8:
        assert isinstance(event, CloseConnection)
        assert event.code == (1000 if n else 1005)
    elif opcode == 9:
        assert isinstance(event, Ping)
        assert event.payload == payload
    else:
        assert isinstance(event, Pong)
        assert event.payload == payload


@settings(max_examples=200, deadline=None)
@given(prefix=st.binary(max_size=9), key=KEYS, payload=st.binary(max_size=300), suffix=st.binary(max_size=9))
def test_unmask_matches_the_codec(prefix: bytes, key: bytes, payload: bytes, suffix: bytes) -> None:
    """The server's unmask and the codec's mask (itself checked against wsproto's) are the same XOR."""
    data = prefix + key + payload + suffix
    start = len(prefix) + 4
    end = start + len(payload)
    got = unmask(data, start, end)
    assert got == mask_payload(payload, key)
    assert unmask_python(data, start, end) == got  # the C speedup and the pure-Python fallback agree
    assert len(got) == len(payload)
    assert unmask(data[:start] + mask_payload(payload, key), start, end) == payload  # an involution
    masked = encode(2, payload, key=key)  # a whole client frame: the server unmasks what the codec masked
    assert unmask(masked, len(masked) - len(payload), len(masked)) == payload


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 125, 126, 65535, 65536])
def test_unmask_sizes(n: int) -> None:
    payload = os.urandom(n)
    key = b"\x00\xff\xa5\x5a"
    data = b"\x82\xfe" + key + mask_payload(payload, key)
    assert unmask(data, 6, 6 + n) == payload
    assert unmask_python(data, 6, 6 + n) == payload
