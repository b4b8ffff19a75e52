"""permessage-deflate (RFC 7692 §7.2) on the frames of one worker, with no zlib object per connection.

Theory of operation.  Negotiation (:mod:`extensions`) always imposes no context takeover in both
directions, so every message is a deflate stream of its own, and a zlib object is needed only while one
message is being compressed or inflated:

* **In, whole frame** (the fast path of :func:`websocket.receive`): a final text/binary frame with RSV1 is
  unmasked and given to :meth:`DeflatePool.inflate`: a fresh ``decompressobj`` for that message (CPython
  cannot reset one, and one shared between connections would let a client's back-references reach
  another client's plaintext in its window), ``00 00 ff ff`` appended (§7.2.2), output bounded by
  ``max_size`` + 1 bytes (a deflate bomb stops there, whatever its ratio).  Anything wrong (corrupt data,
  too big, bad UTF-8) goes to wsproto instead, which decides the close code.
* **In, everything else** (fragments, partial frames, frames too big for the fast path): the wsproto
  objects of a :class:`DeflatePool` carry :class:`InboundDeflate`, an ``Extension`` that inflates each
  message with the same bound (wsproto's own ``PerMessageDeflate`` has none) and answers a bomb with
  1009, corrupt data with 1007, RSV1 on a control or continuation frame with 1002.  Its inflater lives
  from the first frame of a message to the last, so a pooled object between messages holds none.
* **Out**: :class:`Deflater` rewrites the data frames the server produced for a connection (replies,
  sends, broadcasts: whole final frames from :func:`websocket.encode_frame`) as compressed frames with
  RSV1, when the payload has at least ``min_size`` bytes and shrinks.  One compressor per window size
  per worker, reused for every message of every connection: ``Z_FULL_FLUSH`` ends each message and
  resets the compressor so nothing after it refers to anything before (``tests/protocol/test_deflate.py``
  inflates consecutive messages with fresh decompressors).  A broadcast is compressed once per window
  size and the same bytes go to every subscriber of that window.  Control frames are never compressed.

Byte counters (``millionws_compressed_bytes_total`` and ``millionws_uncompressed_bytes_total``, by
direction) are kept in the worker's counter list at the indices it gives: this layer knows no metric.
"""

from __future__ import annotations

import zlib
from typing import Any

from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

from ..config import DEFAULTS
from .websocket import FramePool, frame_header

TAIL = b"\x00\x00\xff\xff"  # what a sender removes from the end of each message (§7.2.1) and we put back
_NO_RSV = RsvBits(False, False, False)
_RSV1 = RsvBits(True, False, False)
_CONTROL = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)
_decompressobj = zlib.decompressobj
_ZError = zlib.error


class InboundDeflate(Extension):
    """wsproto's hook for compressed messages off the fast path: inflate with a bound (see module docstring).

    ``counters[at]`` and ``counters[at + 1]`` count compressed and inflated bytes.
    """

    name = "permessage-deflate"

    def __init__(self, max_size: int, counters: list[int], at: int) -> None:
        self.max_size = max_size
        self.counters = counters
        self.at = at
        self.inflater: Any = None  # the message's decompressobj, from its first frame to its last
        self.produced = 0  # bytes inflated so far in this message
        self.inflating = False  # the payload of the current frame is compressed

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False  # server side only: negotiation is protocol/extensions.py's

    def frame_inbound_header(self, proto: Any, opcode: Opcode, rsv: RsvBits, payload_length: int) -> Any:
        if opcode in _CONTROL:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR  # §6.1: control frames are never compressed
            self.inflating = False  # a ping between fragments: the message's inflater waits
            return _NO_RSV
        if opcode is Opcode.CONTINUATION:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR  # §6.1: RSV1 only on a message's first frame
            self.inflating = self.inflater is not None
            return _NO_RSV
        # The first frame of a message (a new one in the middle of another is wsproto's protocol error).
        self.inflating = rsv.rsv1
        self.inflater = _decompressobj(-15) if rsv.rsv1 else None
        self.produced = 0
        return _RSV1

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        room = self.max_size - self.produced
        try:
            out = self.inflater.decompress(data, room + 1)  # never 0: that would mean "no limit"
        except _ZError:
            self.inflater = None
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room or self.inflater.unconsumed_tail:
            self.inflater = None
            return CloseReason.MESSAGE_TOO_BIG
        self.produced += len(out)
        self.counters[self.at + 1] += len(out)
        return out

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self.inflating:
            return data
        self.counters[self.at] += len(data)
        return self._inflate(data)

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if not (self.inflating and fin):
            return None
        out = self._inflate(TAIL)
        self.inflater = None
        self.inflating = False
        return out


class DeflatePool(FramePool):
    """The :class:`websocket.FramePool` of connections that negotiated permessage-deflate: its wsproto
    objects carry :class:`InboundDeflate`, and it inflates whole frames for the fast path."""

    __slots__ = ("max_size", "counters", "at")

    def __init__(self, max_free: int = DEFAULTS.frame_pool_size, max_size: int = DEFAULTS.max_message_size,
                 counters: list[int] | None = None, at: int = 0) -> None:
        super().__init__(max_free)
        self.max_size = max_size
        self.counters = counters if counters is not None else [0, 0]
        self.at = at

    def new(self) -> WSConnection:
        return WSConnection(ConnectionType.SERVER, [InboundDeflate(self.max_size, self.counters, self.at)])

    def inflate(self, payload: bytes, max_size: int) -> bytes | None:
        """A whole compressed message, inflated; None when it is corrupt or inflates beyond ``max_size``
        (the caller hands the frame to wsproto, which answers with the right close code)."""
        inflater = _decompressobj(-15)
        try:
            out = inflater.decompress(payload, max_size + 1)
            if len(out) <= max_size and not inflater.unconsumed_tail:
                out += inflater.decompress(TAIL, max_size + 1 - len(out))
        except _ZError:
            return None
        if len(out) > max_size or inflater.unconsumed_tail:
            return None
        counters = self.counters
        counters[self.at] += len(payload)
        counters[self.at + 1] += len(out)
        return out


class Deflater:
    """Compresses the data frames of server output (see module docstring); one per worker.

    ``level``: zlib's 1..9; ``min_size``: payloads shorter than this are sent as they are;
    ``counters[at]`` and ``counters[at + 1]`` count compressed and uncompressed bytes out.
    """

    __slots__ = ("level", "min_size", "counters", "at", "_compressors")

    def __init__(self, level: int = DEFAULTS.compression_level, min_size: int = DEFAULTS.compression_min_size,
                 counters: list[int] | None = None, at: int = 0) -> None:
        self.level = level
        self.min_size = min_size
        self.counters = counters if counters is not None else [0, 0]
        self.at = at
        self._compressors: list[Any] = [None] * 16  # by window bits 8..15, made on first use

    def _compressor(self, bits: int) -> Any:
        if bits == 8:  # zlib's raw deflate has no 256-byte window: code without back-references instead
            co = zlib.compressobj(self.level, zlib.DEFLATED, -9, 8, zlib.Z_HUFFMAN_ONLY)
        else:
            co = zlib.compressobj(self.level, zlib.DEFLATED, -bits)
        self._compressors[bits] = co
        return co

    def compress(self, payload: bytes | memoryview, bits: int = 15) -> bytes:
        """One message's payload as a permessage-deflate payload, sharing nothing with any other."""
        co = self._compressors[bits] or self._compressor(bits)
        return (co.compress(payload) + co.flush(zlib.Z_FULL_FLUSH))[:-4]

    def frames(self, data: bytes, bits: int = 15) -> bytes:
        """``data``, whole server frames one after the other, with each final text or binary frame of at
        least ``min_size`` bytes that compression shrinks replaced by its compressed frame."""
        min_size = self.min_size
        n = len(data)
        pos = done = 0
        parts: list[bytes] | None = None
        view = memoryview(data)
        while pos + 2 <= n:
            b0 = data[pos]
            length = data[pos + 1]  # a server frame is unmasked: 7-bit length, or 126 / 127 and more bytes
            if length < 126:
                start = pos + 2
            elif length == 126:
                length = data[pos + 2] << 8 | data[pos + 3]
                start = pos + 4
            else:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if (b0 == 0x81 or b0 == 0x82) and length >= min_size:
                packed = self.compress(view[start:end], bits)
                if len(packed) < length:
                    if parts is None:
                        parts = []
                    parts.append(data[done:pos])
                    parts.append(frame_header(b0 & 0x0F | 0x40, len(packed)))
                    parts.append(packed)
                    done = end
                    counters = self.counters
                    counters[self.at] += len(packed)
                    counters[self.at + 1] += length
            pos = end
        if parts is None:
            return data
        parts.append(data[done:])
        return b"".join(parts)
