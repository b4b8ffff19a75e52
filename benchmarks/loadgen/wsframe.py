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

from benchmarks.wscodec import OP_BINARY, OP_TEXT, ProtocolError, encode, header, mask_payload

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# What --deflate offers (RFC 7692 section 7.1): permessage-deflate, and that we accept any client window the
# server asks for. We never compress what we send (allowed: RSV1 is per message), so the client parameters
# the server answers with bind nothing we do; only the server's compressed frames need inflating.
DEFLATE_OFFER = b"permessage-deflate; client_max_window_bits"


def handshake_request(host: str, port: int, path: str, deflate: bool = False) -> tuple[bytes, bytes]:
    """Return (request bytes, expected Sec-WebSocket-Accept value) for one new connection.

    ``deflate`` adds the permessage-deflate offer (``DEFLATE_OFFER``).
    """
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        + (b"Sec-WebSocket-Extensions: " + DEFLATE_OFFER + b"\r\n" if deflate else b"")
        + b"\r\n"
    )
    return request, accept_for(key)


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def parse_handshake_response(head: bytes, expected_accept: bytes) -> int:
    """Check a response head (up to, not including, the blank line). Return its status code.

    Raises ProtocolError when the status is 101 but the accept key is missing or wrong, or when the server
    accepted an extension (none was offered).
    """
    return parse_response(head, expected_accept, deflate_offered=False)[0]


def parse_response(
    head: bytes, expected_accept: bytes, deflate_offered: bool
) -> tuple[int, dict[str, int | bool] | None]:
    """Check a response head (up to, not including, the blank line): (status, permessage-deflate parameters).

    The parameters are None when the server did not accept the offer (or none was made), else a dict of what it
    answered (``server_no_context_takeover``: True, ``server_max_window_bits``: 8..15, ...). Raises ProtocolError
    for a 101 whose accept key is missing or wrong, or that accepts an extension that was not offered or
    answers the offer with anything RFC 7692 does not allow (RFC 6455 section 4.1: the client fails then).
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
        return status, None
    accept: bytes | None = None
    extensions: list[bytes] = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"sec-websocket-accept":
            accept = value.strip()
        elif name == b"sec-websocket-extensions":
            extensions.extend(e for e in value.split(b",") if e.strip())
    if accept is None:
        raise ProtocolError("no Sec-WebSocket-Accept")
    if accept != expected_accept:
        raise ProtocolError("wrong Sec-WebSocket-Accept")
    if not extensions:
        return status, None
    if not deflate_offered:
        raise ProtocolError("the server accepted an extension that was not offered")
    if len(extensions) != 1:
        raise ProtocolError("more than one extension accepted for one offer")
    return status, parse_deflate_response(extensions[0])


_DEFLATE_FLAGS = (b"server_no_context_takeover", b"client_no_context_takeover")
_DEFLATE_BITS = (b"server_max_window_bits", b"client_max_window_bits")


def parse_deflate_response(extension: bytes) -> dict[str, int | bool]:
    """The server's answer to DEFLATE_OFFER (one element of Sec-WebSocket-Extensions), RFC 7692 section 7.1."""
    name, *params = (p.strip() for p in extension.split(b";"))
    if name.lower() != b"permessage-deflate":
        raise ProtocolError(f"unknown extension {name[:40]!r}")
    out: dict[str, int | bool] = {}
    for param in params:  # bounded by the header line's length
        key, eq, raw = param.partition(b"=")
        key = key.strip().lower()
        value = raw.strip().strip(b'"')  # a quoted-string value is allowed (RFC 7692 section 5)
        if key.decode("latin-1") in out:
            raise ProtocolError(f"{key!r} given twice")
        if key in _DEFLATE_FLAGS:
            if eq:
                raise ProtocolError(f"{key!r} takes no value")
            out[key.decode()] = True
        elif key in _DEFLATE_BITS:
            # client_max_window_bits needs a value in a response, and only because we offered it may it come.
            if not value.isdigit() or not 8 <= int(value) <= 15 or value.startswith(b"0"):
                raise ProtocolError(f"bad {key!r} value {value[:20]!r}")
            out[key.decode()] = int(value)
        else:
            raise ProtocolError(f"unknown permessage-deflate parameter {key[:40]!r}")
    return out


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

    def compressed_frame(self, now_ns: int, compressor: zlib._Compress) -> bytes:
        """The same message compressed for a connection that negotiated permessage-deflate (RFC 7692 §7.2.1):
        ``compressor`` is raw deflate, flushed with Z_FULL_FLUSH so each message inflates on its own (what the
        server's no-context-takeover answer asks), the 4-byte tail dropped, RSV1 set."""
        ts = now_ns.to_bytes(8, "big") if self.opcode == OP_BINARY else b"%016x" % now_ns
        data = compressor.compress(ts + self.filler) + compressor.flush(zlib.Z_FULL_FLUSH)
        return encode(self.opcode, data[:-4], rsv=4)

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
