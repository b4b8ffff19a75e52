"""WebSocket frames on the server side: a fast path for the common frame, wsproto for the rest.

Theory of operation (sans-IO: bytes in, events to the application, bytes out):

* :func:`receive` takes the bytes read from one connection, appends the bytes to send back
  (replies, pongs, close frames) to the caller's list, and returns what happened to the connection: an
  event of :mod:`lifecycle` (``PEER_CLOSED``, ``CLOSE_ANSWERED``, ``FAILED_PROTOCOL``,
  ``FAILED_TOO_BIG``) or ``NO_EVENT``, with ``PONG`` or-ed in when a pong came.  It never
  touches a socket and never writes the record's state, reason or flags: the server
  applies the event (``lifecycle.advance``).  The record lends it ``ws``, ``msg`` and
  ``msg_size`` as its memory for the message in flight.
* Between messages a connection holds **no** protocol object (``conn.ws is None``).
  While that is so, complete frames that are final, unfragmented, masked, text or binary,
  have no RSV bit, a 7- or 16-bit length and fit the message limit are decoded right here
  (the fast path): unmask, check UTF-8 for text, hand the payload to the application.  On a
  connection that negotiated permessage-deflate (its pool is a ``deflate.DeflatePool``) such a
  frame may carry RSV1: it is inflated here, bounded by the message limit (:mod:`deflate`).
* At the first byte that is anything else (a control frame, a partial frame, a fragment,
  a frame that breaks a rule) the rest of the bytes go to a ``wsproto.connection.Connection``
  taken from :class:`FramePool`.  wsproto decides everything from there: errors, close
  codes, fragmentation, control frames.  When the connection is again between messages
  with nothing buffered (:func:`wsproto_internals.is_idle`: the one module that reads wsproto's
  private state), the object goes back to the pool.  A pooled
  object in that state is indistinguishable from a fresh one, so the behaviour is that
  of a dedicated wsproto connection per client (``tests/protocol/test_websocket.py`` proves it
  against one on random splits of random frame streams).
* A Close from the peer between messages that ends its read and is valid (code and UTF-8 reason, RFC 6455
  §5.5.1, §7.4) is answered on the fast path with its code and reason, as wsproto would answer it
  (:func:`close_answer`); any other Close goes to wsproto.  A closing handshake we start keeps its wsproto
  object until the descriptor is closed.
* Messages reach the application whole (fragments are reassembled up to
  ``max_size``; beyond it: close 1009) as ``handler(conn, is_text, payload) -> reply``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import LOCAL_ONLY_CLOSE_REASONS, CloseReason

from ..config import DEFAULTS
from .lifecycle import (
    CLOSE_ANSWERED,
    EVENT_MASK,
    FAILED_PROTOCOL,
    FAILED_TOO_BIG,
    LINGER,
    NO_EVENT,
    OPEN,
    PEER_CLOSED,
    PONG,
)
from .wsproto_internals import is_idle, partial_data_frame

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9

PING_FRAME = b"\x89\x00"
INTERNAL_ERROR_CLOSE = b"\x88\x10\x03\xf3internal error"  # Close 1011, for the exception boundary

Handler = Callable[[Any, bool, bytes], "bytes | None"]

_OPEN = ConnectionState.OPEN
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_CLOSED = ConnectionState.CLOSED
_SERVER = ConnectionType.SERVER
_from_bytes = int.from_bytes


class FramePool:
    """wsproto frame-level connections between uses. ``max_free`` bounds what is kept (``--frame-pool-size``)."""

    __slots__ = ("_free", "max_free", "created")

    inflate: Callable[[bytes, int], bytes | None] | None = None  # a DeflatePool inflates whole frames

    def __init__(self, max_free: int = DEFAULTS.frame_pool_size) -> None:
        self._free: list[WSConnection] = []
        self.max_free = max_free
        self.created = 0

    def take(self) -> WSConnection:
        if self._free:
            return self._free.pop()
        self.created += 1
        return self.new()

    def new(self) -> WSConnection:
        return WSConnection(_SERVER)

    def give_back(self, ws: WSConnection) -> None:
        if len(self._free) < self.max_free:
            self._free.append(ws)

    def __len__(self) -> int:
        return len(self._free)


# The 2-byte headers of short text and binary frames, made once: nearly every frame the server sends is one,
# and indexing a tuple is a fraction of building bytes from a tuple of ints (issue 12's per-message profile).
_SHORT_HEADERS = (None, *(tuple(bytes((0x80 | op, n)) for n in range(126)) for op in (OP_TEXT, OP_BINARY)))
TEXT_HEADERS, BINARY_HEADERS = _SHORT_HEADERS[OP_TEXT], _SHORT_HEADERS[OP_BINARY]  # [n]: header of n < 126 bytes


def frame_header(opcode: int, length: int) -> bytes:
    """Header of a final, unmasked (server) frame."""
    if length < 126:  # short text and binary frames take encode_frame's table before they get here
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126, length >> 8, length & 0xFF))
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A whole server frame.  Broadcasts call this once and send the result to everyone."""
    n = len(payload)
    if n < 126 and (opcode == OP_TEXT or opcode == OP_BINARY):  # the echo reply: no call to frame_header
        return _SHORT_HEADERS[opcode][n] + payload
    return frame_header(opcode, n) + payload


def unmask_python(data: bytes, start: int, end: int) -> bytes:
    """Payload ``data[start:end]`` unmasked with the key in the 4 bytes before ``start``."""
    return apply_mask_python(data[start:end], data[start - 4:start])


def apply_mask_python(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated: the reference of the C ``apply_mask``."""
    n = len(payload)
    if n == 0:
        return b""
    key = key * ((n + 3) >> 2)
    return (_from_bytes(payload, "little") ^ _from_bytes(key[:n], "little")).to_bytes(n, "little")


try:
    # websockets ships the XOR loop in C: 0.36 us instead of 6.4 us for 4 KiB (the big-int trick above is
    # the reference and the fallback; tests check both agree).  Installed with the `speedups` extra.
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - depends on the environment
    _apply_mask = None


def unmask(data: bytes, start: int, end: int) -> bytes:
    """Payload ``data[start:end]`` unmasked with the key in the 4 bytes before ``start``."""
    if _apply_mask is None:
        return unmask_python(data, start, end)
    if end - start <= _COPY_MAX:  # copying a short payload out costs less than two memoryviews
        return _apply_mask(data[start:end], data[start - 4:start])
    view = memoryview(data)
    return _apply_mask(view[start:end], view[start - 4:start])


_COPY_MAX = 512
_mask = apply_mask_python if _apply_mask is None else _apply_mask


def start_close(conn: Any, pool: FramePool, code: int, reason: str = "") -> bytes:
    """Our Close frame, from a wsproto object kept for the closing handshake (the server then
    moves the connection with CLOSE_SENT or GOODBYE)."""
    ws = conn.ws
    if ws is None:
        conn.ws = ws = pool.take()
    conn.msg = None
    return ws.send(CloseConnection(code=code, reason=reason or None))


def receive(conn: Any, data: bytes, handler: Handler, max_size: int, pool: FramePool, out: list[bytes]) -> int:
    """Consume ``data`` read from ``conn``; append the bytes to send to ``out``; return the event (see the
    module docstring).  ``out`` is the caller's: the server gathers there what the application sends to
    this connection meanwhile, so every byte to it leaves in the order it was produced, in one write."""
    state = conn.state
    if state == LINGER:
        return NO_EVENT
    pos = 0
    n = len(data)
    if conn.ws is None and state == OPEN:
        # Fast path: whole, simple frames only; stop at the first byte that is not one.  A pool of
        # deflate connections (protocol/deflate.py) also lets whole compressed frames (RSV1) through.
        inflate = pool.inflate
        while n - pos >= 6:
            b0 = data[pos]
            if b0 != 0x81 and b0 != 0x82 and (inflate is None or (b0 != 0xC1 and b0 != 0xC2)):
                if b0 == 0x88:  # the peer's Close, the end of every reconnect: answered without wsproto
                    answer = close_answer(data, pos, n)
                    if answer is not None:
                        out.append(answer)
                        conn.msg = None
                        return PEER_CLOSED
                break
            length = data[pos + 1] ^ 0x80  # masked frames have the high bit set
            if length < 126:
                start = pos + 6
            elif length == 126:
                if n - pos < 8:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
                if length < 126:
                    break
                start = pos + 8
            else:  # unmasked (>= 128) or a 64-bit length
                break
            end = start + length
            if end > n or length > max_size:
                break
            # unmask() inlined for the short payloads of most messages: one Python call less per message.
            payload = _mask(data[start:end], data[start - 4:start]) if length <= _COPY_MAX else unmask(data, start, end)
            if b0 > 0xC0:
                payload = inflate(payload, max_size)
                if payload is None:
                    break  # corrupt or too big once inflated: wsproto's extension says which close code
                b0 ^= 0x40
            if b0 == 0x81 and not payload.isascii():
                try:
                    payload.decode()
                except UnicodeDecodeError:
                    break
            pos = end
            reply = handler(conn, b0 == 0x81, payload)
            if reply:
                out.append(reply)
            if conn.state != OPEN:  # the server closed it meanwhile (a rate limit): the rest is not read
                return NO_EVENT
        if pos == n:
            return NO_EVENT
        conn.ws = pool.take()
    ws = conn.ws
    ws.receive_data(data[pos:] if pos else data)
    event = _drain_events(conn, ws, handler, max_size, out)
    if event & EVENT_MASK == NO_EVENT and conn.state == OPEN:
        if conn.msg is None and is_idle(ws):
            conn.ws = None
            pool.give_back(ws)
        else:
            coming = partial_data_frame(ws)
            if coming >= 0 and conn.msg_size + coming > max_size:
                # Refuse at the header: no need to receive megabytes we will reject.
                event = event & PONG | _fail(ws, CloseReason.MESSAGE_TOO_BIG, "message too big", out)
    if event & EVENT_MASK != NO_EVENT:
        # The closing handshake is over: nothing more will be parsed, so do not keep ~1.7 KB
        # per closing connection alive while we wait for the peer's FIN.
        conn.ws = None
        conn.msg = None
    return event


# Close codes a peer may send (RFC 6455 §7.4): wsproto's known ones that are not local-only, and 3000-4999.
_PEER_CLOSE_CODES = frozenset(int(c) for c in CloseReason if 1000 <= c <= 2999 and c not in LOCAL_ONLY_CLOSE_REASONS)


def close_answer(data: bytes, pos: int, n: int) -> bytes | None:
    """Our answer to a masked Close frame at ``data[pos]`` that ends the read exactly: the same code and
    reason back (what wsproto's ``event.response()`` sends).  None: anything wsproto must judge (an
    invalid code or reason, a 1-byte payload, bytes after it), so the fast path leaves it to wsproto."""
    length = data[pos + 1] ^ 0x80
    if length > 125 or length == 1 or pos + 6 + length != n:  # > 125: unmasked, or not a control length
        return None
    payload = unmask(data, pos + 6, n)
    if length:
        code = payload[0] << 8 | payload[1]
        if code not in _PEER_CLOSE_CODES and not 3000 <= code <= 4999:
            return None
        reason = payload[2:]
        if not reason.isascii():
            try:
                reason.decode()
            except UnicodeDecodeError:
                return None
    return bytes((0x88, length)) + payload


def _fail(ws: WSConnection, code: int, reason: str, out: list[bytes]) -> int:
    """Fail the WebSocket connection (RFC 6455 §7.1.7): our Close frame; the event to report."""
    if ws.state is _OPEN:
        out.append(ws.send(CloseConnection(code=code, reason=reason)))
    return FAILED_TOO_BIG if code == CloseReason.MESSAGE_TOO_BIG else FAILED_PROTOCOL


def _drain_events(conn: Any, ws: WSConnection, handler: Handler, max_size: int, out: list[bytes]) -> int:
    pong = 0
    for event in ws.events():
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            if conn.state != OPEN:
                continue  # we already said goodbye: data is read and dropped (RFC 6455 §1.4)
            chunk = event.data.encode() if kind is TextMessage else event.data
            size = conn.msg_size + len(chunk)
            if size > max_size:
                return pong | _fail(ws, CloseReason.MESSAGE_TOO_BIG, "message too big", out)
            if not event.message_finished:
                if conn.msg is None:
                    conn.msg = []
                conn.msg.append(chunk)
                conn.msg_size = size
                continue
            if conn.msg is not None:
                conn.msg.append(chunk)
                chunk = b"".join(conn.msg)
                conn.msg = None
                conn.msg_size = 0
            reply = handler(conn, kind is TextMessage, chunk)
            if reply:
                out.append(reply)
        elif kind is Ping:
            if ws.state is _OPEN:
                out.append(ws.send(event.response()))
        elif kind is Pong:
            pong = PONG
        elif kind is CloseConnection:
            if ws.state is _REMOTE_CLOSING:
                # The peer started the closing handshake: answer with its code.
                out.append(ws.send(event.response()))
                return pong | PEER_CLOSED
            if ws.state is not _CLOSED:
                # Not a close frame from the peer: wsproto reports a protocol error this way (1009 from
                # deflate.InboundDeflate: a message too big once inflated, said as every other 1009 is).
                reason = "message too big" if event.code == CloseReason.MESSAGE_TOO_BIG else event.reason or ""
                return pong | _fail(ws, event.code, reason, out)
            return pong | CLOSE_ANSWERED
    return pong | NO_EVENT
