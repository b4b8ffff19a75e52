"""millionws.protocol.deflate: the permessage-deflate codec, and websocket.receive on a DeflatePool.

The differential test at the end is test_websocket.py's, with compressed traffic: our fast path, pooled
wsproto objects and bounded inflater against one dedicated wsproto connection per client carrying wsproto's
own ``PerMessageDeflate`` (no context takeover both ways, as we negotiate).  That reference gets one fix,
see :class:`ReferenceDeflate`.
"""

from __future__ import annotations

import os
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

from benchmarks.wscodec import close_payload
from millionws.protocol.deflate import TAIL, DeflatePool, Deflater, InboundDeflate
from millionws.protocol.lifecycle import CLOSING, LINGER, R_PROTOCOL, R_TOO_BIG
from millionws.protocol.websocket import FramePool, encode_frame

from .test_websocket import (
    ENDINGS,
    KEYS,
    TOO_BIG_REASON,
    Reference,
    against_references,
    client_frame,
    close_codes,
    control_frame,
    cut_anywhere,
    data_message,
    fresh_conn,
    payloads,
    receive,
    recording_handler,
    start_close,
)

NEGOTIATED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def deflated(payload: bytes, bits: int = 15, level: int = 6, tail: bool = False, final: bool = False) -> bytes:
    """What a client sends for one message: a deflate stream of its own, ``00 00 ff ff`` removed (§7.2.1)."""
    co = zlib.compressobj(level, zlib.DEFLATED, -bits)
    if final:  # a sender may end with BFINAL set: the tail we append then lands after the end of the stream
        return co.compress(payload) + co.flush(zlib.Z_FINISH)
    body = co.compress(payload) + co.flush(zlib.Z_SYNC_FLUSH)
    return body if tail else body[:-4]


def compressed_frame(opcode: int, payload: bytes, **kw: object) -> bytes:
    return client_frame(opcode, deflated(payload), rsv=4, **kw)  # type: ignore[arg-type]


def client_reader() -> WSConnection:
    """A client-side wsproto that negotiated what we answer: reads our compressed frames independently."""
    ext = PerMessageDeflate()
    ext.finalize(NEGOTIATED)
    return WSConnection(ConnectionType.CLIENT, extensions=[ext])


def messages_of(data: bytes) -> list[tuple[bool, bytes]]:
    reader = client_reader()
    reader.receive_data(data)
    got = []
    for ev in reader.events():
        if isinstance(ev, TextMessage | BytesMessage):
            assert ev.message_finished
            got.append((isinstance(ev, TextMessage), ev.data.encode() if isinstance(ev, TextMessage) else ev.data))
    return got


def first_bytes(data: bytes) -> list[int]:
    """The first byte (FIN, RSV, opcode) of each server frame in ``data``."""
    firsts, pos = [], 0
    while pos < len(data):
        firsts.append(data[pos])
        length = data[pos + 1]
        skip = 2 if length < 126 else 4 if length == 126 else 10
        if length >= 126:
            length = int.from_bytes(data[pos + 2:pos + skip], "big")
        pos += skip + length
    return firsts


def feed(conn, data: bytes, pool: FramePool, max_size: int = 1 << 20, log: list | None = None) -> bytes:
    return receive(conn, data, recording_handler([] if log is None else log), max_size, pool)


# -- the compressor ----------------------------------------------------------------------------------

def test_consecutive_messages_of_one_compressor_inflate_on_their_own() -> None:
    """Z_FULL_FLUSH after each message: the next one never refers to it, so one compressor serves every
    connection of a worker and each message inflates with a fresh decompressor (no context takeover)."""
    deflater = Deflater(6, 0)
    text = b'{"op":"message","channel":"news","data":{"headline":"same words again and again"}}' * 3
    first = deflater.compress(text)
    second = deflater.compress(text)  # what a context-taking compressor would shrink to a back-reference
    assert second == first
    for packed in (first, second, deflater.compress(b"other" + text)):
        assert zlib.decompressobj(-15).decompress(packed + TAIL).endswith(text)
    assert len(first) < len(text) / 2


@pytest.mark.parametrize("bits", range(8, 16))
def test_the_compressor_stays_within_the_negotiated_window(bits: int) -> None:
    block = os.urandom(3000)  # incompressible, so only a back-reference 3000 bytes away can shrink the repeats
    data = block * 4
    packed = Deflater(9, 0).compress(data, bits)
    # A decoder with a window of 2^bits fails ("invalid distance too far back") on any longer reference.
    assert zlib.decompressobj(-bits).decompress(packed + TAIL) == data
    if bits >= 12:
        assert len(packed) < len(data) / 2  # and where the window reaches, the repeats are found


def test_frames_compresses_data_frames_only() -> None:
    counters = [0, 0]
    deflater = Deflater(6, 128, counters, 0)
    big_text = ("\u00e9t\u00e9 " * 100).encode()
    big_binary = bytes(70000)  # a 64-bit length
    random = os.urandom(1000)  # does not shrink: sent as it is
    data = (encode_frame(1, b"short") + encode_frame(9, b"ping") + encode_frame(1, big_text)
            + encode_frame(2, random) + encode_frame(2, big_binary) + encode_frame(8, close_payload(1000)))
    out = deflater.frames(data)
    assert first_bytes(out) == [0x81, 0x89, 0xC1, 0x82, 0xC2, 0x88]  # RSV1 on the two that shrank
    assert messages_of(out) == [(True, b"short"), (True, big_text), (False, random), (False, big_binary)]
    assert counters[1] == len(big_text) + len(big_binary)
    assert 0 < counters[0] < counters[1] / 10
    assert deflater.frames(encode_frame(1, b"x" * 127)) == encode_frame(1, b"x" * 127)  # under min_size
    assert deflater.frames(encode_frame(1, b"x" * 128))[0] == 0xC1


# -- the inflater, whole frames ----------------------------------------------------------------------

def test_inflate_a_whole_message() -> None:
    pool = DeflatePool(counters=[0, 0], at=0)
    payload = b"hello " * 100
    for packed in (deflated(payload), deflated(payload, tail=True), deflated(payload, final=True), deflated(b"")):
        want = payload if packed != deflated(b"") else b""
        assert pool.inflate(packed, 1 << 20) == want
    assert pool.inflate(b"\xff\xff\xff", 1 << 20) is None  # corrupt
    assert pool.inflate(deflated(payload), 600) == payload  # exactly the limit
    assert pool.inflate(deflated(payload), 599) is None


def test_a_deflate_bomb_stops_at_the_limit() -> None:
    bomb = deflated(bytes(64 << 20))  # 64 MiB of zeros in about 64 KB
    assert len(bomb) < 100_000
    pool = DeflatePool()
    tracemalloc.start()
    try:
        assert pool.inflate(bomb, 1 << 20) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # inflated in full it would be 64 MiB


# -- websocket.receive on a DeflatePool --------------------------------------------------------------

def test_fast_path_inflates_whole_compressed_frames_without_wsproto() -> None:
    counters = [0, 0]
    pool = DeflatePool(counters=counters, at=0)
    conn = fresh_conn()
    log: list[tuple[bool, bytes]] = []
    text = ("caf\u00e9 " * 200).encode()
    data = compressed_frame(1, text) + client_frame(2, b"plain") + compressed_frame(2, b"\x00" * 5000)
    out = feed(conn, data, pool, log=log)
    assert log == [(True, text), (False, b"plain"), (False, b"\x00" * 5000)]
    assert out == encode_frame(1, text) + encode_frame(2, b"plain") + encode_frame(2, b"\x00" * 5000)
    assert pool.created == 0
    assert conn.ws is None
    assert counters == [len(deflated(text)) + len(deflated(b"\x00" * 5000)), len(text) + 5000]


def test_fragmented_compressed_message_with_a_ping_between() -> None:
    pool = DeflatePool()
    conn = fresh_conn()
    text = ("fragment " * 300).encode()
    body = deflated(text)
    frames = [client_frame(1, body[:10], rsv=4, fin=False), client_frame(9, b"?"),
              client_frame(0, body[10:40], fin=False), client_frame(0, body[40:])]
    log: list[tuple[bool, bytes]] = []
    outs = [feed(conn, f, pool, log=log) for f in frames]
    assert outs[1] == b"\x8a\x01?"  # the pong, uncompressed (the worker never compresses control frames)
    assert log == [(True, text)]
    assert outs[3] == encode_frame(1, text)
    assert conn.ws is None
    ws = pool.take()  # back in the pool between messages, holding no inflater
    ext = ws._proto.extensions[0]
    assert isinstance(ext, InboundDeflate)
    assert ext.inflater is None


@pytest.mark.parametrize(("data", "code", "reason"), [
    pytest.param(client_frame(2, b"\xff\xfe\xfd\xfc" * 3, rsv=4), 1007, R_PROTOCOL, id="corrupt"),
    pytest.param(client_frame(1, deflated(b"\xff\xfe"), rsv=4), 1007, R_PROTOCOL, id="bad-utf8-inside"),
    pytest.param(client_frame(1, deflated(b"x" * 301), rsv=4), 1009, R_TOO_BIG, id="too-big-inflated"),
    pytest.param(client_frame(1, deflated(b"x" * 400)[:3], rsv=4, fin=False)
                 + client_frame(0, deflated(b"x" * 400)[3:]), 1009, R_TOO_BIG, id="too-big-fragments"),
    pytest.param(client_frame(1, b"a", fin=False) + client_frame(0, b"b", rsv=4), 1002, R_PROTOCOL,
                 id="rsv1-on-continuation"),
    pytest.param(client_frame(9, b"p", rsv=4), 1002, R_PROTOCOL, id="rsv1-on-ping"),
    pytest.param(client_frame(1, b"x", rsv=2), 1002, R_PROTOCOL, id="rsv2"),
])
def test_failures(data: bytes, code: int, reason: int) -> None:
    pool = DeflatePool(max_size=300)
    conn = fresh_conn()
    out = feed(conn, data, pool, max_size=300)
    assert close_codes(out) == [code]
    assert conn.state == LINGER
    assert conn.reason == reason
    assert conn.ws is None


@pytest.mark.parametrize("fragment", [0, 1000, 64 * 1024])
def test_a_deflate_bomb_gets_1009_before_it_is_inflated_in_full(fragment: int) -> None:
    body = deflated(bytes(64 << 20))
    if fragment:
        pieces = [body[i:i + fragment] for i in range(0, len(body), fragment)]
        data = b"".join(client_frame(2 if i == 0 else 0, p, rsv=4 if i == 0 else 0, fin=i == len(pieces) - 1)
                        for i, p in enumerate(pieces))
    else:
        data = client_frame(2, body, rsv=4)
    pool = DeflatePool(max_size=1 << 20)
    conn = fresh_conn()
    tracemalloc.start()
    try:
        out = feed(conn, data, pool, max_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert close_codes(out) == [1009]
    assert conn.reason == R_TOO_BIG
    assert peak < 8 << 20  # 64 MiB if it had been inflated


def test_a_plain_pool_still_refuses_rsv1() -> None:
    conn = fresh_conn()
    assert close_codes(feed(conn, compressed_frame(1, b"hello"), FramePool())) == [1002]


def test_our_close_on_a_deflate_connection_still_reads_compressed_frames() -> None:
    pool = DeflatePool()
    conn = fresh_conn()
    start_close(conn, pool, 1001, "going away")
    assert feed(conn, compressed_frame(1, b"late" * 50), pool) == b""  # read and dropped, not a 1002
    feed(conn, client_frame(8, close_payload(1001)), pool)
    assert conn.state == LINGER


# -- the equivalence with a dedicated wsproto + PerMessageDeflate ------------------------------------

class FixedDeflate(PerMessageDeflate):
    """wsproto's PerMessageDeflate, with control frames kept out of the message's state: wsproto 1.2-1.3
    records a ping between two fragments as the start of a message and forgets, at its end, that the message
    being reassembled is compressed (so the next fragment is not inflated).  InboundDeflate does not."""

    message_compressed = False  # for ReferenceDeflate: the message being received has RSV1

    def frame_inbound_header(self, proto, opcode, rsv, payload_length):  # type: ignore[no-untyped-def]
        if opcode.iscontrol():
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        if opcode is not Opcode.CONTINUATION:
            self.message_compressed = rsv.rsv1
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto, data):  # type: ignore[no-untyped-def]
        if proto.header is not None and proto.header.opcode.iscontrol():
            return data
        return super().frame_inbound_payload_data(proto, data)

    def frame_inbound_complete(self, proto, fin):  # type: ignore[no-untyped-def]
        if proto.header is not None and proto.header.opcode.iscontrol():
            return None
        return super().frame_inbound_complete(proto, fin)


class ReferenceDeflate(Reference):
    """The reference, plus the one rule of the bounded inflater: a message that inflates past ``max_size``
    fails the connection with 1009 in every state, also once our Close is sent (where plain data is read
    and dropped: compressed data must still be inflated to be dropped, and never beyond the bound)."""

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        ext = FixedDeflate(client_no_context_takeover=True, server_no_context_takeover=True)
        ext.finalize(NEGOTIATED)
        self.ws = WSConnection(ConnectionType.SERVER, extensions=[ext])
        self.inflated = 0  # bytes of the current compressed message so far, whatever the state
        events = self.ws.events

        def bounded():  # type: ignore[no-untyped-def]
            for ev in events():
                if isinstance(ev, TextMessage | BytesMessage) and ext.message_compressed:
                    self.inflated += len(ev.data.encode() if isinstance(ev, TextMessage) else ev.data)
                    if self.inflated > self.max_size and self.state == CLOSING:
                        yield CloseConnection(1009, TOO_BIG_REASON)
                        return
                    if ev.message_finished:
                        self.inflated = 0
                yield ev

        self.ws.events = bounded  # type: ignore[method-assign]


@st.composite
def deflate_message(draw: st.DrawFn, valid: bool = True) -> bytes:
    """A compressed message, whole or fragmented (the compressed stream cut anywhere), maybe with pings between
    fragments; broken: corrupt data, bad UTF-8 inside, RSV1 on a continuation."""
    text = draw(st.booleans())
    payload = draw(payloads(text, valid))
    if not valid:
        # Small: over the limit, a bomb-proof inflater and the reference see different faults first
        # (we stop inflating at the limit, the reference finds the bad UTF-8 in what it inflated whole).
        payload = payload[:100]
    body = deflated(payload, bits=draw(st.integers(9, 15)), level=draw(st.integers(1, 9)),
                    tail=draw(st.integers(0, 5)) == 0, final=draw(st.integers(0, 5)) == 0)
    broken = None if valid else draw(st.sampled_from(["corrupt", "rsv1-continuation", None]))
    if broken == "corrupt":
        body = draw(st.binary(min_size=1, max_size=20))
    key = draw(KEYS)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = []
    for i, piece in enumerate(pieces):
        if i and draw(st.integers(0, 3)) == 0:
            out.append(draw(control_frame(valid=True)))
        rsv = 4 if i == 0 or (broken == "rsv1-continuation" and i == len(pieces) - 1) else 0
        opcode = (1 if text else 2) if i == 0 else 0
        out.append(client_frame(opcode, piece, fin=i == len(pieces) - 1, rsv=rsv, key=key))
    return b"".join(out)


DEFLATE_VALID = st.one_of(deflate_message(), deflate_message(), data_message(), control_frame())
DEFLATE_ENDINGS = st.one_of(ENDINGS, deflate_message(valid=False), deflate_message(valid=False))


@st.composite
def deflate_stream(draw: st.DrawFn) -> list[bytes]:
    parts = draw(st.lists(DEFLATE_VALID, max_size=5))
    parts.append(draw(DEFLATE_ENDINGS))
    parts += draw(st.lists(DEFLATE_VALID | DEFLATE_ENDINGS, max_size=2))
    return cut_anywhere(draw, b"".join(parts) or compressed_frame(1, b"x"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    streams=st.lists(deflate_stream(), min_size=1, max_size=2),
    max_size=st.sampled_from([300, 125, 1 << 20, 1 << 20]),
    max_free=st.sampled_from([1024, 1]),
    server_close_at=st.none() | st.integers(0, 6),
)
def test_pooled_deflate_matches_a_dedicated_wsproto(streams: list[list[bytes]], max_size: int, max_free: int,
                                                    server_close_at: int | None) -> None:
    pool = DeflatePool(max_free, max_size)
    against_references(streams, pool, [ReferenceDeflate(max_size) for _ in streams], max_size, server_close_at)
    assert len(pool) <= max_free


def test_the_reference_fix_is_needed() -> None:
    """Why FixedDeflate exists: wsproto's own extension loses a compressed message at a ping between fragments."""
    body = deflated(b"abc" * 50)
    data = (client_frame(2, body[:5], rsv=4, fin=False) + client_frame(9, b"") + client_frame(0, body[5:]))
    ext = PerMessageDeflate(client_no_context_takeover=True, server_no_context_takeover=True)
    ext.finalize(NEGOTIATED)
    ws = WSConnection(ConnectionType.SERVER, extensions=[ext])
    ws.receive_data(data)
    got = b"".join(ev.data for ev in ws.events() if isinstance(ev, BytesMessage))
    assert got != b"abc" * 50
    pool = DeflatePool()
    log: list[tuple[bool, bytes]] = []
    feed(fresh_conn(), data, pool, log=log)
    assert log == [(False, b"abc" * 50)]
