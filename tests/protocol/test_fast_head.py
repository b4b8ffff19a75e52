"""fast_head against h11, the parser of record: whatever the fast path accepts, h11 accepts as the same request
(method, target, headers in order, version, the bytes after the head), and the framing check passes; what it
declines is simply h11's to judge."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from millionws.protocol import fast_head, http

MAX_HEAD = 8192
UPGRADE = (b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def h11_reads(data: bytes, max_head: int = MAX_HEAD) -> tuple[h11.Request, bytes] | None:
    """(request, bytes after it) as the pipeline's h11 path reads it, or None if h11 refuses or wants more."""
    parser = http.new_parser(max_head)
    parser.receive_data(data)
    try:
        request = parser.next_event()
        if type(request) is not h11.Request:
            return None
        http.check_framing(request)
        if http.head_size(request) > max_head or type(parser.next_event()) is not h11.EndOfMessage:
            return None
    except (h11.RemoteProtocolError, http.HttpError):
        return None
    return request, parser.trailing_data[0]


def assert_agrees(data: bytes, max_head: int = MAX_HEAD) -> bool:
    fast = fast_head.parse(data, max_head)
    if fast is None:
        return False
    reference = h11_reads(data, max_head)
    assert reference is not None, data  # the fast path never accepts what h11 refuses
    (head, rest), (request, trailing) = fast, reference
    assert (head.method, head.target, head.http_version) == (request.method, request.target, request.http_version)
    assert head.headers == list(request.headers)
    assert rest == trailing
    return True


# -- generated heads -------------------------------------------------------------------------------

NAMES = st.sampled_from([b"Host", b"host", b"HOST", b"Upgrade", b"Connection", b"Sec-WebSocket-Key",
                         b"Sec-WebSocket-Version", b"Origin", b"X-Y", b"Content-Length", b"Transfer-Encoding",
                         b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions", b"a!#$%&'*+.^_`|~b", b"",
                         b"Bad Name", b"Bad\x00", b"Na\xe9me", b"(x)", b"x:y", b" lead"])
VALUES = st.one_of(
    st.sampled_from([b"websocket", b"Upgrade", b"keep-alive, Upgrade", b"13", b"dGhlIHNhbXBsZSBub25jZQ==",
                     b"127.0.0.1:9000", b"[::1]:80", b"ex ample", b"", b"  padded\t ", b"chunked", b"0", b"5",
                     b"caf\xc3\xa9", b"\xff\xfe", b"a\x01b", b"a\x7fb", b"a\x0bb", b"a\x00b", b"a\rb", b"a\nb",
                     b"a \t b", b"x" * 300]),
    st.binary(max_size=12),
)
SEPARATORS = st.sampled_from([b": ", b":", b":\t", b" : ", b":  "])
EOLS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "])  # "\r\n ": the next line folds


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"get", b"POST", b"HEAD", b"G\xc3T", b""]))
    target = draw(st.sampled_from([b"/echo", b"/ws?token=a.b.c", b"/", b"http://h/echo", b"*", b"/a b", b"/\x7f",
                                   b"/\xe9", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]))
    eol = draw(EOLS) if draw(st.integers(0, 7)) == 0 else b"\r\n"
    lines = [method + b" " + target + b" " + version]
    fields = draw(st.lists(st.tuples(NAMES, SEPARATORS, VALUES), max_size=8))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b": ", b"x"))
    for name, sep, value in fields:
        lines.append(name + sep + value)
        if draw(st.integers(0, 9)) == 0:
            lines[-1] += draw(EOLS)
    trailing = draw(st.sampled_from([b"", b"", b"\x81\x80abcd", b"GET / HTTP/1.1\r\n", b"junk"]))
    return eol.join(lines) + eol + eol + trailing


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The canonical upgrade with a few bytes replaced, inserted or removed."""
    data = bytearray(UPGRADE)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 127, 128, 255]) | st.integers(0, 255))
        if how == "replace":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


TOKEN_CHARS = "-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIELD_BYTES = st.sampled_from([*range(0x21, 0x7F), 0x20, 0x09, 0x80, 0xC3, 0xA9, 0xFF])


@st.composite
def plain_heads(draw: st.DrawFn) -> bytes:
    """Heads the fast path should mostly take: token names, visible values with inner and outer blanks."""
    fields = draw(st.lists(st.tuples(st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode),
                                     st.lists(FIELD_BYTES, max_size=20).map(bytes), SEPARATORS), max_size=6))
    extra = b"".join(name + sep + value + b"\r\n" for name, value, sep in fields)
    target = draw(st.text("".join(map(chr, range(0x21, 0x7F))), min_size=1, max_size=20)).encode()
    return b"GET " + target + UPGRADE[9:-2] + extra + b"\r\n" + draw(st.binary(max_size=8))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=heads() | mutated() | plain_heads())
def test_whatever_the_fast_path_accepts_h11_reads_the_same(data: bytes) -> None:
    event("accepted" if assert_agrees(data) else "declined")
    assert_agrees(data, max_head=len(data) // 2 + 1)  # a tight limit: declined, or the same


# -- explicit cases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    UPGRADE,
    UPGRADE + b"\x81\x85abcd" + b"hello",  # a frame sent right behind the request
    UPGRADE.replace(b"Host: 127.0.0.1:9000", b"host:\t127.0.0.1:9000  "),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Empty:\r\nX-Obs: caf\xc3\xa9 \t x\r\n\r\n"),
    b"GET /ws?token=a.b.c HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
])
def test_plain_upgrade_heads_take_the_fast_path(data: bytes) -> None:
    assert assert_agrees(data)


@pytest.mark.parametrize("data", [
    UPGRADE.replace(b"\r\n", b"\n"),  # bare LF: h11 reads it, the fast path leaves it to h11
    UPGRADE.replace(b"Upgrade: websocket\r\n", b"Upgrade:\r\n websocket\r\n"),  # obs-fold
    UPGRADE.replace(b"GET", b"POST"),
    UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nHost: again\r\n\r\n"),  # duplicate Host
    UPGRADE.replace(b"Host: 127.0.0.1:9000\r\n", b""),  # no Host
    UPGRADE.replace(b"127.0.0.1:9000", b"bad/host"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    UPGRADE.replace(b"Origin", b"Ori gin").replace(b"Upgrade: websocket", b"Upg rade: websocket"),
    UPGRADE.replace(b"websocket", b"web\x01socket"),  # h11 lets control characters through; we do not
    UPGRADE[:-2],  # incomplete
    b"\r\n" + UPGRADE,  # an empty line first
])
def test_anything_unusual_is_left_to_h11(data: bytes) -> None:
    assert fast_head.parse(data, MAX_HEAD) is None


def test_a_head_over_the_limit_is_left_to_h11() -> None:
    assert fast_head.parse(UPGRADE, len(UPGRADE)) is not None
    assert fast_head.parse(UPGRADE, len(UPGRADE) - 1) is None
