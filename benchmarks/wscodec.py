"""The WebSocket frame codec (RFC 6455 section 5) of the tests, the benchmarks and the fuzz target.

The server's own encoder (``millionws.protocol.websocket.encode_frame``, ``unmask``) stays in the server and is the
reference this module is checked against (tests/protocol/test_websocket.py; wsproto in
tests/protocol/test_wscodec.py). This is the other side, a client's and a test's: it builds masked client frames and
unmasked server frames, well-formed or deliberately not (RSV bits, unknown opcodes, unmasked client frames,
non-minimal or lying length fields), and splits what a server sends back into frames.

Nothing here touches a socket or keeps per-connection state: callers hold the bytes. ``split_frames`` is the load
generator's inner loop, so it allocates nothing per frame but the payload slice it hands back."""

from __future__ import annotations

import random

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

NO_LIMIT = (1 << 63) - 1  # the largest length a 64-bit length field may carry


class ProtocolError(Exception):
    """The server broke RFC 6455: a masked, oversized or truncated frame, a bad handshake."""


# -- encoding -------------------------------------------------------------------------------------------------

def header(first: int, length: int, mask: bool = True, length_bytes: int | None = None) -> bytes:
    """The first byte as given (FIN, RSV, opcode), then the MASK bit and ``length``.

    ``length_bytes`` is the size of the extended length field: None picks the minimal encoding (0 up to 125,
    2 up to 65535, else 8); 0, 2 or 8 force one, so a test can send a non-minimal length or one that lies.
    The value must fit its field (at most 127 in the 7-bit one: 126 and 127 there claim a longer field).
    """
    bit = 0x80 if mask else 0
    if length_bytes is None:
        if length < 126:
            return bytes((first, bit | length))
        length_bytes = 2 if length < 65536 else 8
    elif length_bytes == 0:
        if not 0 <= length <= 127:
            raise ValueError(f"length {length} does not fit the 7-bit field")
        return bytes((first, bit | length))
    if length_bytes == 2:
        return bytes((first, bit | 126)) + length.to_bytes(2, "big")
    if length_bytes == 8:
        return bytes((first, bit | 127)) + length.to_bytes(8, "big")
    raise ValueError(f"length_bytes must be 0, 2 or 8, not {length_bytes}")


def mask_payload(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated: masks and unmasks (one big-int XOR, fast at any size)."""
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0,
           length: int | None = None, length_bytes: int | None = None, key: bytes | None = None) -> bytes:
    """One frame: masked as a client must (``mask=True``, with ``key`` or a fresh random one), or unmasked as a
    server sends (``mask=False``: with the defaults, the bytes of ``millionws.protocol.websocket.encode_frame``).

    ``rsv`` is the three RSV bits (4: RSV1); ``length`` the value written in the length field (default: the
    payload's; a different one lies about it); ``length_bytes``: see :func:`header`.

    The default key comes from ``random``, not ``os.urandom``: 60 ns instead of 300, and unpredictable keys
    only matter against proxy cache poisoning, which a test or a benchmark on loopback does not meet.
    """
    head = header((0x80 if fin else 0) | rsv << 4 | opcode, len(payload) if length is None else length, mask,
                  length_bytes)
    if not mask:
        return head + payload
    if key is None:
        key = random.getrandbits(32).to_bytes(4, "little")
    return head + key + mask_payload(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a Close frame: the 2-byte status code, then the UTF-8 reason."""
    return code.to_bytes(2, "big") + reason


def close_code(payload: bytes | bytearray | memoryview, default: int | None = None) -> int | None:
    """The status code of a Close payload; ``default`` when it carries none (fewer than 2 bytes)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else default


def close_frame(code: int = 1000, reason: bytes = b"", mask: bool = True) -> bytes:
    """A Close frame with ``code`` and ``reason``, a client's (masked) unless ``mask=False``."""
    return encode(OP_CLOSE, close_payload(code, reason), mask=mask)


# -- decoding -------------------------------------------------------------------------------------------------

def split_frames(buf: bytes | bytearray | memoryview, heads: bytearray, payloads: list, pos: int = 0,
                 max_size: int = NO_LIMIT, limit: int = -1, allow_masked: bool = False) -> int:
    """Split the whole frames in ``buf[pos:]``; return where the first incomplete one starts (``len(buf)``: none).

    For each frame, its first byte (FIN, RSV, opcode) goes to ``heads`` and its payload to ``payloads``: a
    slice of ``buf`` (a view if ``buf`` is a memoryview, which the caller must not keep past the buffer's
    reuse). At most ``limit`` frames are taken (negative: all). Server frames are unmasked: a masked one
    raises ProtocolError, unless ``allow_masked`` (a client's frames: its payload comes back unmasked), and so
    does a length over ``max_size``, as soon as the header is complete. Either way the frames before it are in
    ``heads`` and ``payloads``, for the caller to handle first.
    """
    n = len(buf)
    last = n - 1  # a header needs 2 bytes: pos < last (cheaper than pos + 2 <= n, once per frame)
    while limit and pos < last:
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        start = pos + 2
        if length > 125:
            if length == 126:
                start = pos + 4
                if start > n:
                    break
                length = buf[pos + 2] << 8 | buf[pos + 3]
            else:
                start = pos + 10
                if start > n:
                    break
                length = int.from_bytes(buf[pos + 2:start], "big")
        end = start + length
        if b1 & 0x80 or length > max_size:  # both rare: one test on the fast path
            if length > max_size:
                raise ProtocolError(f"frame of {length} bytes, over max_size {max_size}")
            if not allow_masked:
                raise ProtocolError("masked server frame")
            end += 4  # the key
            if end > n:
                break
            heads.append(buf[pos])
            payloads.append(mask_payload(buf[start + 4:end], bytes(buf[start:start + 4])))
        elif end > n:
            break
        else:
            heads.append(buf[pos])
            payloads.append(buf[start:end])
        pos = end
        limit -= 1
    return pos


def server_frames(data: bytes, complete: bool = True, strict: bool = False) -> list[tuple[int, bool, bytes]]:
    """Every server frame in ``data`` as (opcode, fin, payload), for tests.

    Raises ProtocolError for a masked frame, for a truncated one at the end if ``complete``, and if ``strict``
    for an RSV bit or an unknown opcode (what a server without extensions never sends), in the first byte of
    the truncated frame too.
    """
    heads = bytearray()
    payloads: list[bytes] = []
    end = split_frames(data, heads, payloads)
    if complete and end < len(data):
        raise ProtocolError(f"truncated server frame: {bytes(data[end:end + 20])!r}")
    if strict:
        for b0 in heads + data[end:end + 1]:
            if b0 & 0x70:
                raise ProtocolError(f"RSV bit set: {b0:#x}")
            if b0 & 0x0F not in OPCODES:
                raise ProtocolError(f"opcode {b0 & 0x0F}")
    return [(b0 & 0x0F, bool(b0 & 0x80), payload) for b0, payload in zip(heads, payloads, strict=True)]
