"""The client's opening handshake (RFC 6455 section 4) and the echo messages of the load generator.

Frames themselves are built and split by ``benchmarks.wscodec``, which the tests share. Nothing here touches
a socket and nothing here keeps per-connection state: callers hold the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import zlib

from benchmarks.wscodec import OP_BINARY, OP_TEXT, ProtocolError, header, mask_payload

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# What a browser offers (RFC 7692): the server may answer with any window and either no-context-takeover.
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
TAIL = b"\x00\x00\xff\xff"  # removed from the end of each compressed message, put back to inflate it


def handshake_request(host: str, port: int, path: str, deflate: bool = False) -> tuple[bytes, bytes]:
    """Return (request bytes, expected Sec-WebSocket-Accept value) for one new connection; ``deflate``
    offers permessage-deflate."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        + (DEFLATE_OFFER if deflate else b"")
        + b"\r\n"
    )
    return request, accept_for(key)


def accepts_deflate(head: bytes) -> bool:
    """Whether a 101 response head accepted permessage-deflate."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-extensions" and b"permessage-deflate" in value.lower():
            return True
    return False


def inflate(payload: bytes | bytearray | memoryview) -> bytes:
    """One compressed message's payload (the server takes no context over: a fresh inflater each time)."""
    return zlib.decompressobj(-15).decompress(bytes(payload) + TAIL)


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def parse_handshake_response(head: bytes, expected_accept: bytes) -> int:
    """Check a response head (up to, not including, the blank line). Return its status code.

    Raises ProtocolError when the status is 101 but the accept key is missing or wrong.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError("not an HTTP response")
    try:
        status = int(parts[1])
    except ValueError:
        raise ProtocolError("bad status code") from None
    if status != 101:
        return status
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip() != expected_accept:
                raise ProtocolError("wrong Sec-WebSocket-Accept")
            return status
    raise ProtocolError("no Sec-WebSocket-Accept")


class MessageTemplate:
    """Echo messages of a fixed size whose first bytes carry the send time.

    Building each frame from scratch (random key, XOR over the whole payload) would make the load generator
    the bottleneck for large messages. Instead one random key per template masks the constant filler once,
    and only the timestamp is masked per message. Reusing a key breaks no server: the server unmasks every
    byte whatever the key, so its work is unchanged; RFC 6455 wants fresh keys against proxy cache poisoning,
    which does not apply on loopback.

    Binary messages carry the send time as 8 big-endian bytes of ``time.perf_counter_ns()``; text messages
    as 16 lowercase hex digits (valid UTF-8). The rest is filler that the echo must return unchanged.
    """

    __slots__ = ("_head", "_key_int", "_masked_filler", "filler", "opcode", "size", "ts_len")

    def __init__(self, size: int, text: bool = False) -> None:
        self.opcode = OP_TEXT if text else OP_BINARY
        self.ts_len = 16 if text else 8
        if size < self.ts_len:
            raise ValueError(f"--size must be >= {self.ts_len} to carry the timestamp")
        self.size = size
        self.filler = b"x" * (size - self.ts_len)
        key = random.getrandbits(32).to_bytes(4, "little")
        self._head = header(0x80 | self.opcode, size) + key
        # The key as it lines up with the timestamp bytes (big-endian int of the first ts_len stream bytes).
        self._key_int = int.from_bytes((key * 4)[: self.ts_len], "big")
        # Filler starts at offset ts_len (a multiple of 4), so the key stream restarts aligned.
        self._masked_filler = mask_payload(self.filler, key)

    def frame(self, now_ns: int) -> bytes:
        if self.opcode == OP_BINARY:
            ts = now_ns.to_bytes(8, "big")
        else:
            ts = b"%016x" % now_ns
        masked_ts = (int.from_bytes(ts, "big") ^ self._key_int).to_bytes(self.ts_len, "big")
        return self._head + masked_ts + self._masked_filler

    def deflated_frame(self, now_ns: int, compressor: zlib._Compress) -> bytes:
        """:meth:`frame` compressed (RSV1): one message of its own (Z_FULL_FLUSH), as a browser sends it."""
        ts = now_ns.to_bytes(8, "big") if self.opcode == OP_BINARY else b"%016x" % now_ns
        packed = (compressor.compress(ts + self.filler) + compressor.flush(zlib.Z_FULL_FLUSH))[:-4]
        key = random.getrandbits(32).to_bytes(4, "little")
        return header(0xC0 | self.opcode, len(packed)) + key + mask_payload(packed, key)

    def sent_at(self, payload: bytes | bytearray | memoryview) -> int:
        """Send time carried by an echoed payload, or -1 when the payload is not one of ours unchanged."""
        if len(payload) != self.size or payload[self.ts_len :] != self.filler:
            return -1
        if self.opcode == OP_BINARY:
            return int.from_bytes(payload[:8], "big")
        try:
            return int(bytes(payload[:16]), 16)
        except ValueError:
            return -1
