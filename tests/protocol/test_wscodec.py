"""benchmarks.wscodec, the frame codec of the tests and the benchmarks, checked on its own and against wsproto.

Against the server: tests/protocol/test_websocket.py (encoding and unmasking) checks that its unmasked frames are the
bytes of ``millionws.protocol.websocket.encode_frame`` and that ``unmask`` undoes its masking.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import XorMaskerSimple

from benchmarks import wscodec
from benchmarks.wscodec import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    ProtocolError,
    close_code,
    close_frame,
    close_payload,
    encode,
    header,
    mask_payload,
    server_frames,
    split_frames,
)

SIZES = [0, 1, 125, 126, 65535, 65536]


@given(payload=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4))
def test_mask_is_wsprotos_xor(payload: bytes, key: bytes) -> None:
    assert mask_payload(payload, key) == XorMaskerSimple(key).process(payload)
    assert mask_payload(bytearray(payload), key) == mask_payload(memoryview(payload), key)
    assert mask_payload(mask_payload(payload, key), key) == payload


@pytest.mark.parametrize("n", SIZES)
def test_a_server_reads_the_client_frames(n: int) -> None:
    """What a client sends is what an RFC 6455 server (wsproto) reads: masked, minimal lengths."""
    ws = WSConnection(ConnectionType.SERVER)
    text = ("\u00e9" * n).encode()[:n] if n % 2 == 0 else b"t" * n
    data = encode(OP_TEXT, text) + encode(OP_BINARY, b"\xff" * n) + encode(OP_PING, b"p" * min(n, 125))
    ws.receive_data(data + close_frame(4000, b"bye"))
    events = list(ws.events())
    assert [type(e) for e in events] == [TextMessage, BytesMessage, Ping, CloseConnection]
    assert events[0].data.encode() == text
    assert events[1].data == b"\xff" * n
    assert events[2].payload == b"p" * min(n, 125)
    assert (events[3].code, events[3].reason) == (4000, "bye")
    assert len(encode(OP_BINARY, b"x" * n)) == n + 4 + (2 if n < 126 else 4 if n < 65536 else 10)


def test_frames_can_be_broken_on_purpose() -> None:
    """RSV bits, no FIN, no mask, a chosen key, non-minimal or lying length fields: exactly these bytes."""
    assert encode(OP_TEXT, b"x", fin=False, rsv=4, mask=False) == b"\x41\x01x"
    assert encode(0xB, b"", mask=False) == b"\x8b\x00"
    assert encode(OP_TEXT, b"hi", key=b"\x00\x00\x00\x00") == b"\x81\x82\x00\x00\x00\x00hi"
    assert encode(OP_TEXT, b"hello", mask=False, length_bytes=2) == b"\x81\x7e\x00\x05hello"
    assert encode(OP_TEXT, b"hello", mask=False, length_bytes=8) == b"\x81\x7f" + (5).to_bytes(8, "big") + b"hello"
    assert encode(OP_BINARY, b"", mask=False, length=1 << 63 | 5) == b"\x82\x7f\x80" + b"\x00" * 6 + b"\x05"
    assert encode(OP_BINARY, b"", mask=False, length=126, length_bytes=0) == b"\x82\x7e"  # 16-bit length missing
    assert header(0x82, 2 << 20) == b"\x82\xff" + (2 << 20).to_bytes(8, "big")
    with pytest.raises(ValueError):
        header(0x82, 128, length_bytes=0)
    with pytest.raises(ValueError):
        header(0x82, 5, length_bytes=4)
    with pytest.raises(OverflowError):
        header(0x82, 65536, length_bytes=2)


def test_close_payloads() -> None:
    assert close_payload(1000, b"bye") == b"\x03\xe8bye"
    assert close_code(b"\x03\xe8bye") == 1000
    assert close_code(b"\x0f\xa0") == 4000
    assert close_code(b"") is None and close_code(b"\x03") is None
    assert close_code(b"", 1005) == 1005
    assert close_frame(1005, mask=False) == b"\x88\x02\x03\xed"
    assert server_frames(close_frame(4999, b"r", mask=False)) == [(OP_CLOSE, True, b"\x13\x87r")]


@st.composite
def server_streams(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], bytes]:
    frames = draw(st.lists(st.tuples(st.sampled_from([0x81, 0x82, 0x01, 0x80, 0x89, 0x8A, 0x88]),
                                     st.sampled_from([0, 1, 2, 125, 126, 127, 300, 65535, 65536])), max_size=6))
    out = [(b0, bytes([b0]) * n) for b0, n in frames]
    return out, b"".join(encode(b0 & 0x0F, p, fin=bool(b0 & 0x80), mask=False) for b0, p in out)


@given(server_streams(), st.lists(st.integers(0, 1 << 18), max_size=8))
def test_split_frames_incrementally(stream: tuple[list[tuple[int, bytes]], bytes], cuts: list[int]) -> None:
    """Fed in any chunks, as the load generator reads them, the frames come out whole and in order."""
    frames, data = stream
    heads = bytearray()
    payloads: list = []
    view = memoryview(data)
    pos = 0
    for end in [*sorted(cuts), len(data)]:
        pos = split_frames(view[:end], heads, payloads, pos)  # what arrived so far; from where it stopped
        assert pos <= end
    assert pos == len(data)
    assert all(type(p) is memoryview for p in payloads)  # views of the buffer, no copies
    assert [(b0, bytes(p)) for b0, p in zip(heads, payloads, strict=True)] == frames


def test_split_frames_stops_where_asked() -> None:
    data = encode(OP_TEXT, b"a", mask=False) + encode(OP_BINARY, b"b" * 200, mask=False) + b"\x81\x05abc"
    heads = bytearray()
    payloads: list = []
    assert split_frames(data, heads, payloads, limit=1) == 3
    assert split_frames(data, heads, payloads, pos=3, limit=1) == 3 + 4 + 200
    assert split_frames(data, heads, payloads, pos=207) == 207  # incomplete: nothing taken
    assert heads == b"\x81\x82" and payloads == [b"a", b"b" * 200]
    for cut in range(len(data) - 5):  # a header cut anywhere, a payload cut anywhere: an incomplete frame
        pos = split_frames(data[:cut], bytearray(), [])
        assert pos in (0, 3) and (pos == 3) == (cut >= 3)


def test_split_frames_refuses_masked_and_oversized_frames_after_taking_the_ones_before() -> None:
    good = encode(OP_TEXT, b"ok", mask=False)
    for bad, max_size in ((encode(OP_TEXT, b"masked"), 100), (encode(OP_BINARY, b"x" * 101, mask=False), 100),
                          (encode(OP_BINARY, b"", mask=False, length=1 << 63, length_bytes=8), wscodec.NO_LIMIT)):
        heads = bytearray()
        payloads: list = []
        with pytest.raises(ProtocolError):
            split_frames(good + bad[:10], heads, payloads, max_size=max_size)  # known from the header alone
        assert heads == b"\x81" and payloads == [b"ok"]


def test_split_frames_unmasks_client_frames_when_allowed() -> None:
    data = encode(OP_TEXT, b"hello", key=b"abcd") + encode(OP_BINARY, b"x" * 300) + encode(OP_TEXT, b"unmasked",
                                                                                            mask=False)
    heads = bytearray()
    payloads: list = []
    assert split_frames(data, heads, payloads, allow_masked=True) == len(data)
    assert heads == b"\x81\x82\x81" and payloads == [b"hello", b"x" * 300, b"unmasked"]
    assert split_frames(data[:-3], bytearray(), [], allow_masked=True) == len(data) - 10


def test_server_frames() -> None:
    data = encode(OP_TEXT, b"a", fin=False, mask=False) + encode(0, b"b", mask=False) + close_frame(1000, mask=False)
    assert server_frames(data) == [(OP_TEXT, False, b"a"), (0, True, b"b"), (OP_CLOSE, True, b"\x03\xe8")]
    assert server_frames(data + b"\x81\x05ab", complete=False) == server_frames(data)
    for broken in (data + b"\x81", data + b"\x81\x05ab", encode(OP_TEXT, b"masked")):
        with pytest.raises(ProtocolError):
            server_frames(broken)
    for odd in (encode(OP_TEXT, b"x", rsv=4, mask=False), encode(3, b"x", mask=False)):
        assert len(server_frames(odd)) == 1  # not strict: read as they are
        with pytest.raises(ProtocolError):
            server_frames(odd, strict=True)
        with pytest.raises(ProtocolError):
            server_frames(data + odd[:2] + b"x", complete=False, strict=True)  # even as the truncated tail
