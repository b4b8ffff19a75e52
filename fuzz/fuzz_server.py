"""Coverage-guided fuzz target (atheris) for what a millionws worker does with client bytes, in process.

The first byte of an input picks the mode (``& 7``): 0-3 the sans-IO layers (HTTP upgrade, WebSocket
frames), described below; 4-7 the layers above them, in ``fuzz/app_layer.py`` (its docstring has the
details and invariants): 4 raw and 5, 7 grammar-built ``/pubsub`` requests into ``PubSub.on_message`` of
two fake workers wired by an in-memory mesh (``Hub.on_record``), 6 raw HTTP into ``App.handle``.

Modes 0-3 drive what a worker does with the bytes it reads from one or two clients:

* HTTP (modes 2, 3): chunks into an h11 parser made by ``millionws.protocol.http.new_parser``, events handled as
  ``HttpPipeline.http_in`` handles them (head and body limits, keep-alive with pipelining, the upgrade through
  ``http.check_upgrade``), and after a 101 the bytes that follow into ``millionws.protocol.websocket.receive``.
* WebSocket (modes 0, 1): chunks from two connections that share one ``FramePool`` (as in a worker) into
  ``websocket.receive``, sometimes with ``websocket.start_close`` (drain, keepalive) between them; mode 1
  builds frames from the input (opcode, RSV bits, mask, length encoding) so that the fuzzer gets past the
  framing quickly, mode 0 takes raw bytes.

Invariants (any other exception, or a failed ``assert``, is a finding; in a worker it would be a crash):

* h11 raises only ``h11.RemoteProtocolError`` (status hint 400, 431 or 501); ``check_upgrade`` raises only
  ``HttpError`` with 400, 405 or 426, and what it accepts is a GET over HTTP/1.1 with ``Upgrade: websocket``,
  ``Connection: upgrade``, exactly one ``Sec-WebSocket-Version: 13`` and one key of 16 bytes of base64; its 101
  carries the right ``Sec-WebSocket-Accept``; every response the server would send parses as one HTTP/1.1
  response (an h11 client reads it) with the status it meant.
* ``receive`` and ``start_close`` never raise; their output is whole, unmasked, final server frames; a Close
  has no code or a code allowed on the wire and a UTF-8 reason of at most 123 bytes; nothing follows a Close;
  control frames carry at most 125 bytes; the state moves only OPEN -> OPEN | CLOSING | LINGER,
  CLOSING -> CLOSING | LINGER, LINGER -> LINGER; in LINGER the record holds no wsproto object and no
  fragments; the application sees only whole messages within the limit, text in valid UTF-8.
* The pool holds only idle wsproto objects, never one that a connection still uses.
* Differential: each connection's output and messages equal those of one dedicated wsproto connection fed
  the same chunks (``tests.protocol.test_websocket.Reference``, itself checked against the RFC cases).

Run: ``python fuzz/fuzz_server.py [libFuzzer flags] CORPUS_DIR fuzz/seeds`` (see fuzz/README.md);
``python fuzz/fuzz_server.py --write-seeds fuzz/seeds`` rewrites the seed inputs.  Without atheris the
module still imports: ``one_input(data)`` is the whole target (tests/test_fuzz.py drives it with hypothesis).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # the target still runs without it (hypothesis fallback)
    atheris = None

# Instrumented only when run as the fuzzer: imported by a test, the modules stay as they are.
_fuzzing = __name__ == "__main__" and atheris is not None and sys.argv[1:2] != ["--write-seeds"]
_instrument = atheris.instrument_imports() if _fuzzing else contextlib.nullcontext()
with _instrument:
    import h11
    import wsproto  # noqa: F401  (instrumented here: it parses every frame the fast path hands over)

    from millionws import auth as _auth  # noqa: F401
    from millionws import jsonsafe as _jsonsafe  # noqa: F401
    from millionws.apps import backend as _backend  # noqa: F401  (instrumented: the layers of modes 4-7)
    from millionws.apps import pubsub as _pubsub  # noqa: F401
    from millionws.apps import routes as _routes  # noqa: F401
    from millionws.protocol import http, websocket
    from millionws.protocol.lifecycle import CLOSING, HTTP, LINGER, OPEN
    from millionws.pubsub import channels as _channels  # noqa: F401
    from millionws.server.connection import Connection

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_layer  # noqa: E402  (the harness of modes 4-7; not instrumented)

from benchmarks import wscodec  # noqa: E402  (the frame codec of the tests and benchmarks; not instrumented)
from tests.protocol.test_websocket import Reference, receive, start_close  # noqa: E402  (the oracle is not instrumented: its coverage is noise)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WIRE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, *range(3000, 5000)}
# States ``receive`` may move a connection to; only ``start_close`` moves OPEN to CLOSING.
LEGAL = {OPEN: {OPEN, LINGER}, CLOSING: {CLOSING, LINGER}, LINGER: {LINGER}}
MAX_SIZES = (125, 300, 4096, 1 << 20)
MAX_HEAD = 2048
MAX_BODY = 4096
WS_ROUTES = (b"/echo", b"/ws")


# -- reading the input ----------------------------------------------------------------------------------

def records(data: bytes, pos: int) -> list[tuple[int, bytes]]:
    """``[ctrl][len][len bytes]...``; bit 7 of ctrl multiplies len by 64 (big chunks stay reachable)."""
    out = []
    n = len(data)
    while pos < n:
        ctrl = data[pos]
        size = data[pos + 1] if pos + 1 < n else 0
        if ctrl & 0x80:
            size *= 64
        out.append((ctrl, data[pos + 2:pos + 2 + size]))
        pos += 2 + size
    return out


def build_frame(spec: int, flags: int, payload: bytes) -> bytes:
    """A client frame from the fuzzer: ``spec`` is the first byte (FIN, RSV, opcode); ``flags`` bit 0:
    unmasked, bits 1-2: length encoding (minimal, 16-bit, 64-bit, 64-bit with the MSB set)."""
    n = len(payload)
    mode = (flags >> 1) & 3
    length = n & 0xFFFF if mode == 1 else n | 1 << 63 if mode == 3 else n
    return wscodec.encode(spec & 0x0F, payload, fin=bool(spec & 0x80), mask=not flags & 1, rsv=(spec >> 4) & 7,
                          length=length, length_bytes=(None, 2, 8, 8)[mode],
                          key=bytes((flags, flags ^ 0x5A, n & 0xFF, 0xA5)))


# -- checking what the server sends -----------------------------------------------------------------------

def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """What the server wrote: whole, unmasked, final frames with minimal lengths and valid payloads."""
    try:
        frames = wscodec.server_frames(data, strict=True)
    except wscodec.ProtocolError as exc:  # masked, truncated, an RSV bit or an unknown opcode
        raise AssertionError(str(exc)) from None
    out = []
    for opcode, fin, payload in frames:
        assert fin, "not a final frame"
        assert opcode != 0, "a continuation frame"
        if opcode >= 8:
            assert len(payload) <= 125, "control frame over 125 bytes"
        if opcode == 8 and payload:
            assert len(payload) >= 2, "Close with a 1-byte payload"
            assert wscodec.close_code(payload) in WIRE_CODES, payload
            payload[2:].decode("utf-8")
        if opcode == 1:
            payload.decode("utf-8")
        out.append((opcode, payload))
    # The same frames encoded minimally: any longer length field than needed shows as a difference.
    assert b"".join(wscodec.encode(op, p, mask=False) for op, p in out) == data, "non-minimal length"
    return out


def parse_response(data: bytes, status: int) -> None:
    """``data`` is exactly one HTTP/1.1 response with ``status``, as an h11 client reads it."""
    client = h11.Connection(h11.CLIENT)
    headers = [("Host", "x")]
    if status == 101:  # h11 takes a 101 only as the answer to a proposed upgrade
        headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    client.send(h11.Request(method="GET", target="/", headers=headers))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    event = client.next_event()
    assert isinstance(event, h11.Response | h11.InformationalResponse), event
    assert event.status_code == status, (event.status_code, status)
    if status == 101:
        assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1
        return
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    assert not client.trailing_data[0], "bytes after the response"


class Peer:
    """One connection under test, its oracle, and what its output has shown so far."""

    def __init__(self, max_size: int, pool: websocket.FramePool) -> None:
        self.conn = Connection(-1, None)
        self.conn.state = OPEN
        self.ref = Reference(max_size)
        self.max_size = max_size
        self.pool = pool
        self.messages: list[tuple[bool, bytes]] = []
        self.closed = False  # a Close frame went out

    def handler(self, _conn: object, is_text: bool, payload: bytes) -> bytes:
        assert len(payload) <= self.max_size, "a message over the limit reached the application"
        if is_text:
            payload.decode("utf-8")
        self.messages.append((is_text, payload))
        return websocket.encode_frame(1 if is_text else 2, payload)

    def sent(self, out: bytes, want: bytes) -> None:
        for opcode, _ in server_frames(out):
            assert not self.closed, "a frame after our Close"
            self.closed = opcode == 8
        assert out == want, (out, want)
        assert self.messages == self.ref.messages

    def feed(self, chunk: bytes) -> None:
        conn = self.conn
        before = conn.state
        out = receive(conn, chunk, self.handler, self.max_size, self.pool)
        assert conn.state in LEGAL[before], (before, conn.state)
        self.sent(out, self.ref.receive(chunk))
        self.check_record()

    def start_close(self, code: int) -> None:
        conn = self.conn
        if conn.state != OPEN:
            return
        out = start_close(conn, self.pool, code, "going away")
        assert conn.state == CLOSING
        self.sent(out, self.ref.start_close(code, "going away"))
        self.check_record()

    def check_record(self) -> None:
        conn = self.conn
        assert conn.state == self.ref.state, (conn.state, self.ref.state)
        if conn.state == LINGER:
            assert conn.ws is None and conn.msg is None
        if conn.state == CLOSING:
            assert conn.ws is not None
        if conn.ws is not None:
            assert all(ws is not conn.ws for ws in self.pool._free), "a pooled object still in use"


def check_pool(pool: websocket.FramePool) -> None:
    assert len(pool) <= pool.max_free
    assert len({id(ws) for ws in pool._free}) == len(pool), "an object pooled twice"
    for ws in pool._free:
        assert websocket.is_idle(ws), "a pooled object is not idle"


# -- the modes ----------------------------------------------------------------------------------------------

def fuzz_frames(data: bytes, structured: bool) -> None:
    head = data[1] if len(data) > 1 else 0
    pool = websocket.FramePool(max_free=1 if head & 0x80 else 1024)
    max_size = MAX_SIZES[head & 3]
    peers = [Peer(max_size, pool), Peer(max_size, pool)]
    streams = [bytearray(), bytearray()]
    for ctrl, chunk in records(data, 2):
        peer = peers[ctrl & 1]
        if ctrl & 0x60 == 0x60:
            peer.start_close(1001 if ctrl & 0x10 else 1011)
        if structured:  # chunk = [spec][flags][payload...]; ctrl bit 2: send what is built so far
            if len(chunk) >= 2:
                streams[ctrl & 1] += build_frame(chunk[0], chunk[1], chunk[2:])
            if ctrl & 4 and streams[ctrl & 1]:
                stream = bytes(streams[ctrl & 1])
                streams[ctrl & 1].clear()
                cut = (ctrl >> 3 & 3) * len(stream) // 4  # maybe in two pieces
                for piece in (stream[:cut], stream[cut:]):
                    if piece:
                        peer.feed(piece)
        elif chunk:
            peer.feed(chunk)
        check_pool(pool)
    for i, peer in enumerate(peers):
        if streams[i]:
            peer.feed(bytes(streams[i]))
    check_pool(pool)


def check_accepted(request: h11.Request, response: bytes) -> None:
    """What ``check_upgrade`` accepted is a valid opening handshake (RFC 6455 4.2.1), answered right."""
    assert request.method == b"GET" and request.http_version == b"1.1"
    assert b"websocket" in http.header_values(request, b"upgrade")
    assert b"upgrade" in http.header_values(request, b"connection")
    assert [v for k, v in request.headers if k == b"sec-websocket-version"] == [b"13"]
    keys = [v for k, v in request.headers if k == b"sec-websocket-key"]
    assert len(keys) == 1 and len(base64.b64decode(keys[0].strip(), validate=True)) == 16
    parse_response(response, 101)
    accept = base64.b64encode(hashlib.sha1(keys[0].strip() + WS_GUID).digest())
    assert b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n" in response


def refuse(error: http.HttpError, allowed: set[int]) -> None:
    assert error.status in allowed, (error.status, error.message)
    parse_response(http.render_error(error), error.status)


def fuzz_http(data: bytes) -> None:
    """Mirror of ``HttpPipeline.http_in`` / ``dispatch`` / ``upgraded`` (server/http_pipeline.py) without sockets."""
    head = data[1] if len(data) > 1 else 0
    pool = websocket.FramePool()
    peer: Peer | None = None
    parser = http.new_parser(MAX_HEAD)
    state = HTTP
    msg: list = []
    for ctrl, chunk in records(data, 2):
        if state == OPEN:
            if ctrl & 0x60 == 0x60:
                peer.start_close(1001)
            if chunk:
                peer.feed(chunk)
            check_pool(pool)
            continue
        if state != HTTP:
            return  # refused: the worker reads and drops the rest
        parser.receive_data(chunk)
        while state == HTTP:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                refuse(http.HttpError(status, str(exc) or "malformed request"), {400, 431, 501})
                state = LINGER
                break
            if isinstance(event, h11.Request):
                if http.head_size(event) > MAX_HEAD:
                    refuse(http.HttpError(431, "request head too large", http.HS_TOO_LARGE), {431})
                    state = LINGER
                    break
                msg = [event]
            elif isinstance(event, h11.Data):
                msg.append(event.data)
                if sum(len(part) for part in msg[1:]) > MAX_BODY:
                    refuse(http.HttpError(413, "request body too large"), {413})
                    state = LINGER
                    break
            elif isinstance(event, h11.EndOfMessage):
                request = msg[0]
                http.keep_alive(request)
                path = request.target.partition(b"?")[0]
                trailing = parser.trailing_data[0]
                if path in WS_ROUTES:
                    try:
                        response = http.check_upgrade(request)
                    except http.HttpError as error:
                        refuse(error, {400, 405, 426})
                        state = LINGER
                        break
                    check_accepted(request, response)
                    peer = Peer(MAX_SIZES[head & 3], pool)
                    state = OPEN
                    if trailing:
                        peer.feed(trailing)
                    break
                parse_response(http.render_json(200, {"path": path.decode("latin-1")}, http.keep_alive(request)),
                               200)
                if not http.keep_alive(request):
                    state = LINGER
                    break
                parser = http.new_parser(MAX_HEAD)
                if trailing:
                    parser.receive_data(trailing)
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                state = LINGER
    check_pool(pool)


def one_input(data: bytes) -> None:
    """The whole target: the first byte picks the mode (``& 7``; see the module docstring)."""
    if not data:
        return
    mode = data[0] & 7
    if mode == 0:
        fuzz_frames(data, structured=False)
    elif mode == 1:
        fuzz_frames(data, structured=True)
    elif mode in (2, 3):
        fuzz_http(data)
    elif mode == 4:
        app_layer.fuzz_pubsub(data, False, server_frames, records)
    elif mode in (5, 7):
        app_layer.fuzz_pubsub(data, True, server_frames, records)
    else:
        app_layer.fuzz_app_http(data, parse_response, records)


# -- seeds --------------------------------------------------------------------------------------------------

def record(ctrl: int, chunk: bytes) -> bytes:
    out = b""
    while True:  # chunks over 255 bytes become several records to the same connection
        piece, chunk = chunk[:255], chunk[255:]
        out += bytes((ctrl & 0x7F, len(piece))) + piece
        if not chunk:
            return out


def seeds() -> dict[str, bytes]:
    def client(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
        return build_frame((0x80 if fin else 0) | opcode, 0, payload)

    def spec(opcode: int, payload: bytes = b"", fin: bool = True, flags: int = 0) -> bytes:
        return bytes(((0x80 if fin else 0) | opcode, flags)) + payload

    upgrade = (b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    traffic = (client(1, b"hello") + client(2, bytes(range(40))) + client(1, b"frag", fin=False)
               + client(9, b"ping") + client(0, b"ment") + client(8, wscodec.close_payload(1000, b"bye")))
    return {
        "ws-raw-echo": b"\x00\x02" + record(0, traffic[:7]) + record(1, traffic) + record(0, traffic[7:]),
        "ws-raw-bad": b"\x00\x00" + record(0, client(1, b"\xff\xfe")) + record(1, client(3, b"x")),
        "ws-raw-big": b"\x00\x01" + record(0, client(2, b"b" * 400)) + record(0x61, client(1, b"late")),
        "ws-structured": b"\x01\x82" + record(0, spec(1, b"hi")) + record(5, spec(2, b"\x00\x01"))
        + record(0, spec(1, b"a", fin=False)) + record(4, spec(0, b"b")) + record(12, spec(10, b"p"))
        + record(0x14, spec(8, wscodec.close_payload(4000))) + record(1, spec(1, b"u", flags=1)),
        "http-upgrade": b"\x02\x02" + record(0, upgrade[:30]) + record(0, upgrade[30:] + client(1, b"x"))
        + record(0, client(8, wscodec.close_payload(1001))),
        "http-keepalive": b"\x03\x00" + record(0, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade)
        + record(0, client(2, b"after")),
        "http-refused": b"\x02\x00" + record(0, upgrade.replace(b"13", b"8")),
        "http-post": b"\x02\x00" + record(0, b"POST /publish/c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{\"a\"")
        + record(0, b"}"),
        **app_layer.seeds(record),
    }


def main() -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        target = Path(sys.argv[2])
        target.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            one_input(data)  # every seed passes the invariants
            (target / name).write_bytes(data)
        print(f"{len(seeds())} seeds written to {target}")
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (tests/test_fuzz.py falls back to hypothesis)")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
