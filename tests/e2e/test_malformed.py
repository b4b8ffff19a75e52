"""Malformed handshakes and frames against a real server: the right refusal, and nothing else breaks.

Every case is sent with a raw socket (exact bytes, nothing forgiven).  A handshake case expects
an HTTP status (plus the headers RFC 6455 / RFC 9112 ask for) and then the server's FIN.  A
frame case completes a good handshake first, then expects a Close frame with a given code and
then the server's FIN.  After each case a fresh client must still get its echo; and all the
cases fired at once must leave both workers alive and no connection behind.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from websockets.sync.client import connect

from benchmarks.wscodec import close_code, close_frame
from tests.conftest import Server, wait_for
from tests.wsraw import KEY, RawClient, close_payload, frame

pytestmark = pytest.mark.e2e

MiB = 1 << 20  # the server's default --max-message-size and --max-request-body


# -- handshakes ------------------------------------------------------------------------------

GOOD_HEADERS = (("Host", "localhost"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13"))


def request(method: str = "GET", target: str = "/echo", version: str = "HTTP/1.1",
            headers: tuple[tuple[str, str], ...] = GOOD_HEADERS, drop: tuple[str, ...] = (),
            change: dict[str, str] | None = None, add: tuple[tuple[str, str], ...] = (),
            body: bytes = b"", end: bool = True) -> bytes:
    """An upgrade request with headers dropped, changed or added (repeated names allowed)."""
    change = change or {}
    lines = [f"{method} {target} {version}"]
    lines += [f"{name}: {change.get(name, value)}" for name, value in headers if name not in drop]
    lines += [f"{name}: {value}" for name, value in add]
    head = "\r\n".join(lines) + "\r\n" + ("\r\n" if end else "")
    return head.encode("latin-1") + body


@dataclass(frozen=True)
class Refusal:
    data: bytes
    status: int | tuple[int, ...]  # a tuple: any of these
    headers: tuple[tuple[str, str], ...] = ()  # expected (lower-case name, value) pairs


def xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


BIG_HEADER = (("X-Big", "a" * 20_000),)
HANDSHAKES = [
    # request line
    pytest.param(Refusal(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
                 id="garbage-request-line"),
    pytest.param(Refusal(b"GET /echo\r\n\r\n", 400), id="request-line-without-version"),
    pytest.param(Refusal(b"GET  /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400), id="request-line-double-space"),
    # Host (RFC 9112 3.2: 400 when missing, repeated or invalid)
    pytest.param(Refusal(request(drop=("Host",)), 400), id="missing-host"),
    pytest.param(Refusal(request(add=(("Host", "other"),)), 400), id="duplicated-host"),
    pytest.param(Refusal(request(change={"Host": "bad host"}), 400), id="invalid-host-value"),
    # method and Upgrade (RFC 6455 4.2.1)
    pytest.param(Refusal(request(method="POST"), 405, (("allow", "GET"),)), id="post-upgrade-405"),
    pytest.param(Refusal(request(method="HEAD"), 405, (("allow", "GET"),)), id="head-upgrade-405"),
    pytest.param(Refusal(request(drop=("Upgrade",)), 426, (("upgrade", "websocket"),)), id="get-without-upgrade-426"),
    pytest.param(Refusal(request(change={"Upgrade": "h2c"}), 426, (("upgrade", "websocket"),)), id="upgrade-h2c-426"),
    # Sec-WebSocket-Version (RFC 6455 4.4: 426 + the versions we speak)
    pytest.param(Refusal(request(change={"Sec-WebSocket-Version": "8"}), 426, (("sec-websocket-version", "13"),)),
                 id="version-8-426"),
    pytest.param(Refusal(request(drop=("Sec-WebSocket-Version",)), 426, (("sec-websocket-version", "13"),)),
                 id="version-missing-426"),
    pytest.param(Refusal(request(add=(("Sec-WebSocket-Version", "13"),)), 426, (("sec-websocket-version", "13"),)),
                 id="version-duplicated-426"),
    # Sec-WebSocket-Key: base64 of exactly 16 bytes, exactly once
    pytest.param(Refusal(request(drop=("Sec-WebSocket-Key",)), 400), id="key-missing"),
    pytest.param(Refusal(request(change={"Sec-WebSocket-Key": "not base64 at all!"}), 400), id="key-not-base64"),
    pytest.param(Refusal(request(change={"Sec-WebSocket-Key": "MDEyMzQ1Njc4OWFiY2Rl"}), 400), id="key-15-bytes"),
    pytest.param(Refusal(request(change={"Sec-WebSocket-Key": "MDEyMzQ1Njc4OWFiY2RlZmc="}), 400), id="key-17-bytes"),
    pytest.param(Refusal(request(change={"Sec-WebSocket-Key": KEY.rstrip("=")}), 400), id="key-unpadded"),
    pytest.param(Refusal(request(add=(("Sec-WebSocket-Key", KEY),)), 400), id="key-duplicated"),
    # Connection must carry the upgrade token; WebSocket needs HTTP/1.1
    pytest.param(Refusal(request(change={"Connection": "keep-alive"}), 400), id="connection-without-upgrade"),
    pytest.param(Refusal(request(drop=("Connection",)), 400), id="connection-missing"),
    pytest.param(Refusal(request(version="HTTP/1.0"), 400), id="http10-upgrade"),
    # size limits (--max-request-head 16384)
    pytest.param(Refusal(request(add=BIG_HEADER, end=False), 431), id="header-20k-still-coming-431"),
    pytest.param(Refusal(request(add=BIG_HEADER), 431), id="header-20k-431"),
    # routing
    pytest.param(Refusal(request(target="/nope"), 404), id="unknown-path-404"),
    pytest.param(Refusal(request(target="http://localhost/echo"), 101), id="absolute-form-target"),
    # header syntax (RFC 9112 5)
    pytest.param(Refusal(request(add=(("X-No-Colon-Here", ""),)).replace(b"X-No-Colon-Here: ", b"X-No-Colon-Here"),
                         400), id="header-line-without-colon"),
    pytest.param(Refusal(request().replace(b"Host:", b"Host :"), 400), id="space-before-colon"),
    pytest.param(Refusal(request(add=(("X-Nul", "a\0b"),)), 400), id="nul-in-header-value"),
    # message body framing (RFC 9112 6)
    pytest.param(Refusal(request(add=(("Content-Length", "abc"),)), 400), id="content-length-not-a-number"),
    pytest.param(Refusal(request(add=(("Content-Length", "-1"),)), 400), id="content-length-negative"),
    pytest.param(Refusal(request(add=(("Content-Length", "1"), ("Content-Length", "2")), body=b"ab"), 400),
                 id="content-length-conflicting"),
    pytest.param(Refusal(request("POST", "/stats", add=(("Content-Length", str(MiB + 1)),), body=b"x" * (MiB + 1)),
                         413), id="body-over-max-request-body-413"),
    pytest.param(Refusal(request("POST", "/stats", add=(("Transfer-Encoding", "chunked"),), body=b"zz\r\nab\r\n"),
                         400), id="chunk-size-not-hex"),
    pytest.param(Refusal(request("POST", "/stats", add=(("Transfer-Encoding", "gzip"),)), 501),
                 id="transfer-encoding-unknown-501"),
    pytest.param(Refusal(request("GET", "/stats", add=(("Transfer-Encoding", "chunked"), ("Content-Length", "5")),
                                 body=b"0\r\n\r\n"), (200, 400)),
                 id="te-and-content-length-must-close"),
    # an unfinished request (--handshake-timeout 2 on the fixture)
    pytest.param(Refusal(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n", 408), id="request-not-finished-408"),
]


EOF_WAIT = 1.5  # below --handshake-timeout/--close-timeout (2 s): a FIN by a timer does not count


def read_eof(client: RawClient) -> bytes:
    """Everything until the server's FIN, which must come at once (a timeout fails the test)."""
    client.sock.settimeout(EOF_WAIT)
    extra = client.buf
    client.buf = b""
    while True:
        data = client.sock.recv(65536)
        if not data:
            return extra
        extra += data


def read_response(client: RawClient, is_head: bool = False) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, every header line (lower-case names, repeats kept), body by Content-Length (none for HEAD)."""
    while b"\r\n\r\n" not in client.buf:
        assert client._fill(), f"closed before a response: {client.buf!r}"
    head, _, client.buf = client.buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    # 1xx responses carry no body and must not carry Content-Length (RFC 9110 8.6).
    # A HEAD answer has none either, whatever Content-Length says (RFC 9110 9.3.2).
    length = 0 if status.startswith("1") or is_head else int(dict(headers)["content-length"])
    while len(client.buf) < length:
        assert client._fill(), "closed inside the body"
    body, client.buf = client.buf[:length], client.buf[length:]
    return int(status), headers, body


def tokens(headers: list[tuple[str, str]], name: str) -> set[str]:
    return {t.strip().lower() for n, v in headers if n == name for t in v.split(",")}


def run_refusal(port: int, case: Refusal) -> None:
    client = RawClient(port)
    try:
        client.send(case.data)
        head = case.data.startswith(b"HEAD ")
        status, headers, body = read_response(client, head)
        assert status in (case.status if isinstance(case.status, tuple) else (case.status,)), (status, body)
        for name, value in case.headers:
            assert (name, value) in headers, (name, headers)
        if status == 101:
            client.send(frame(1, b"routed"))
            assert client.read_frame() == (1, True, b"routed")
            return
        if status >= 400 and not head:
            assert json.loads(body)["error"]
        assert "close" in tokens(headers, "connection")  # announced, and then done:
        assert read_eof(client) == b"", "bytes after the response"
    finally:
        client.close()


# -- frames ----------------------------------------------------------------------------------

SYNC = b"<sync>"  # in a chunk list: ping, and wait for the pong, so the next write is a separate read


@dataclass(frozen=True)
class Closing:
    chunks: tuple[bytes, ...]
    code: int | None  # the code of the server's Close; None: a Close without a payload
    before: tuple[tuple[int, bytes], ...] = ()  # frames the server must send before its Close


def one(*frames: bytes, code: int | None, before: tuple[tuple[int, bytes], ...] = ()) -> Closing:
    return Closing(tuple(frames), code, before)


def pieces(data: bytes, size: int) -> tuple[bytes, ...]:
    """``data`` in writes of ``size`` bytes (TCP_NODELAY: usually separate reads, not guaranteed)."""
    return tuple(data[i:i + size] for i in range(0, len(data), size))


ECHO_HI = ((1, b"hi"),)
FRAMES = [
    # masking, RSV, opcodes
    pytest.param(one(frame(1, b"hi"), frame(1, b"x", mask=False), code=1002, before=ECHO_HI), id="unmasked-text-1002"),
    pytest.param(one(frame(8, close_payload(1000), mask=False), code=1002), id="unmasked-close-1002"),
    pytest.param(one(frame(1, b"x", rsv=4), code=1002), id="rsv1-1002"),
    pytest.param(one(frame(1, b"x", rsv=2), code=1002), id="rsv2-1002"),
    pytest.param(one(frame(2, b"x", rsv=1), code=1002), id="rsv3-1002"),
    pytest.param(one(frame(0x3, b"x"), code=1002), id="data-opcode-0x3-1002"),
    pytest.param(one(frame(0x7, b"x"), code=1002), id="data-opcode-0x7-1002"),
    pytest.param(one(frame(0xB, b"x"), code=1002), id="control-opcode-0xB-1002"),
    pytest.param(one(frame(0xF, b"x"), code=1002), id="control-opcode-0xF-1002"),
    # control frames: never fragmented, at most 125 bytes
    pytest.param(one(frame(9, b"p", fin=False), code=1002), id="fragmented-ping-1002"),
    pytest.param(one(frame(8, close_payload(1000), fin=False), code=1002), id="fragmented-close-1002"),
    pytest.param(one(frame(9, b"p" * 126), code=1002), id="ping-126-bytes-1002"),
    pytest.param(one(frame(8, close_payload(1000, b"r" * 124)), code=1002), id="close-126-bytes-1002"),
    # fragmentation
    pytest.param(one(frame(0, b"x"), code=1002), id="continuation-without-start-1002"),
    pytest.param(one(frame(1, b"a", fin=False), frame(1, b"b"), code=1002), id="text-inside-fragmented-1002"),
    pytest.param(one(frame(1, b"a", fin=False), frame(2, b"b"), code=1002), id="binary-inside-fragmented-1002"),
    # UTF-8
    pytest.param(one(frame(1, b"hi"), frame(1, b"caf\xc3"), code=1007, before=ECHO_HI), id="invalid-utf8-1007"),
    pytest.param(one(frame(1, b"\xe2\x82", fin=False), frame(0, b"("), code=1007), id="invalid-utf8-across-fragments"),
    pytest.param(Closing((frame(1, b"ok \xe2\x82", fin=False), SYNC, frame(0, b"(")), 1007),
                 id="invalid-utf8-across-tcp-writes"),
    pytest.param(Closing(pieces(frame(1, b"0123456789 \xff"), 5), 1007), id="invalid-utf8-frame-in-4-writes"),
    pytest.param(one(frame(1, b"\xe2\x82"), code=1007), id="utf8-truncated-at-end-1007"),
    pytest.param(one(frame(1, b"\xe2", fin=False), frame(0, b"\x82"), code=1007),
                 id="utf8-truncated-at-end-of-fragments-1007"),
    pytest.param(one(frame(1, b"\xc0\xaf"), code=1007), id="utf8-overlong-1007"),
    pytest.param(one(frame(1, b"\xed\xa0\x80"), code=1007), id="utf8-surrogate-1007"),
    pytest.param(one(frame(1, b"\xf4\x90\x80\x80"), code=1007), id="utf8-above-u10ffff-1007"),
    # Close payloads (RFC 6455 5.5.1, 7.4)
    pytest.param(one(frame(8, b"\x03"), code=1002), id="close-1-byte-1002"),
    *(pytest.param(one(close_frame(code), code=1002), id=f"close-code-{code}-1002")
      for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000)),
    pytest.param(one(close_frame(1000, b"\xff\xfe"), code=1007), id="close-reason-invalid-utf8-1007"),
    # length encodings (RFC 6455 5.2: minimal, 64-bit MSB 0)
    pytest.param(one(frame(1, b"hello", length_bytes=2), code=1002), id="16-bit-length-for-5-bytes-1002"),
    pytest.param(one(frame(1, b"hello", length_bytes=8), code=1002), id="64-bit-length-for-5-bytes-1002"),
    pytest.param(one(frame(2, b"", length=1 << 63 | 5, length_bytes=8), code=1002), id="64-bit-length-msb-set-1002"),
    # --max-message-size (1 MiB)
    pytest.param(one(frame(2, b"", length=2 * MiB, length_bytes=8), code=1009), id="header-claims-2mib-1009"),
    pytest.param(one(frame(2, b"a" * (600 << 10), fin=False), frame(0, b"b" * (600 << 10)), code=1009),
                 id="fragments-grow-past-max-1009"),
    # valid closing handshakes
    pytest.param(one(frame(1, b"hi"), close_frame(1000), code=1000, before=ECHO_HI), id="close-1000-echoed"),
    pytest.param(one(close_frame(3000), code=3000), id="close-3000-echoed"),
    pytest.param(one(close_frame(4999, b"bye"), code=4999), id="close-4999-echoed"),
    pytest.param(one(frame(8), code=None), id="empty-close-empty-reply"),
    pytest.param(one(close_frame(1000), frame(1, b"after"), code=1000), id="data-after-close-ignored"),
    pytest.param(one(frame(1, b"he", fin=False), frame(9, b"p"), frame(0, b"llo"), frame(10, b"unsolicited"),
                     close_frame(1001), code=1001, before=((10, b"p"), (1, b"hello"))),
                 id="ping-between-fragments-then-close"),
]


def read_until_close(client: RawClient) -> tuple[list[tuple[int, bytes]], bytes]:
    """Frames before the server's Close, and the Close payload; the Close must come."""
    frames = []
    while True:
        fr = client.read_frame()
        assert fr is not None, f"EOF without a Close frame after {frames}"
        opcode, fin, payload = fr
        assert fin
        if opcode == 8:
            return frames, payload
        frames.append((opcode, payload))


def run_closing(port: int, case: Closing) -> None:
    client = RawClient(port)
    try:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.handshake()
        frames: list[tuple[int, bytes]] = []
        for chunk in case.chunks:
            if chunk is SYNC:
                client.send(frame(9, b"sync"))
                while (fr := client.read_frame()) is not None and fr[0] != 10:
                    frames.append((fr[0], fr[2]))
                assert fr == (10, True, b"sync"), fr
            else:
                client.send(chunk)
        more, payload = read_until_close(client)
        frames += more
        assert frames == list(case.before)
        if case.code is None:
            assert payload == b""
        else:
            assert len(payload) >= 2
            assert close_code(payload) == case.code, payload
            payload[2:].decode()  # our reason is valid UTF-8
        assert read_eof(client) == b"", "bytes after the Close frame"
    finally:
        client.close()


def assert_serves(server: Server) -> None:
    """A fresh client still gets its echo."""
    with connect(server.url(), open_timeout=5, close_timeout=5) as ws:
        ws.send("still there?")
        assert ws.recv(timeout=5) == "still there?"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"


@pytest.mark.parametrize("case", HANDSHAKES)
def test_malformed_handshake(server: Server, case: Refusal) -> None:
    run_refusal(server.port, case)
    assert_serves(server)


@pytest.mark.parametrize("case", FRAMES)
def test_malformed_frames(server: Server, case: Closing) -> None:
    run_closing(server.port, case)
    assert_serves(server)


def test_lenient_but_valid_handshake(server: Server) -> None:
    """Tokens are case-insensitive and lists may carry more: still a WebSocket, with nothing unasked."""
    data = request(change={"Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"},
                   add=(("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
                        ("Sec-WebSocket-Protocol", "chat"), ("Origin", "http://example.com"))) + frame(1, b"pipelined")
    client = RawClient(server.port)
    try:
        client.send(data)  # the first frame rides in the same write as the request
        status, headers, _ = client.read_http_response()
        assert status == 101
        assert headers["sec-websocket-accept"] == "BACScCJPNqyz+UBoqMH89VmURoA="  # RFC 6455 4.2.2 for KEY
        # An extension or subprotocol the server does not implement must not be confirmed (RFC 6455 4.2.2).
        assert "sec-websocket-extensions" not in headers
        assert "sec-websocket-protocol" not in headers
        assert client.read_frame() == (1, True, b"pipelined")
    finally:
        client.close()


def reasons(stats: dict) -> dict[str, int]:
    """Disconnections by reason, all workers together."""
    names = ("normal", "protocol", "too_big")
    return {name: sum(w["disconnections"][name] for w in stats["workers"]) for name in names}


def quiet_counters(server: Server) -> dict[str, int]:
    """The disconnection counters once nothing is open and they held still over a few flushes (0.25 s)."""
    seen: dict[str, object] = {}

    def still() -> dict[str, int] | None:
        stats = server.stats()
        now = (stats["total"]["connections"], reasons(stats))
        if seen.get("value") != now:
            seen.update(value=now, since=time.monotonic())
            return None
        return now[1] if now[0] == 0 and time.monotonic() - seen["since"] >= 0.6 else None

    counters = wait_for(still, 15, what="idle server with settled counters")
    assert isinstance(counters, dict)
    return counters


def test_all_cases_at_once(server: Server) -> None:
    cases: list[tuple[str, Callable[[], None]]] = []
    for param in HANDSHAKES:
        if not param.marks:  # the known failures are left to their own rows
            cases.append((param.id, lambda c=param.values[0]: run_refusal(server.port, c)))
    closings = [param.values[0] for param in FRAMES]
    for param in FRAMES:
        cases.append((param.id, lambda c=param.values[0]: run_closing(server.port, c)))
    pids = server.worker_pids()
    start = quiet_counters(server)
    errors: dict[str, BaseException] = {}

    def run(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors[name] = exc

    threads = [threading.Thread(target=run, args=case, daemon=True) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors

    # Every WebSocket case ended once, for the reason its close code says; nothing is left open.
    want = {
        "normal": sum(c.code not in (1002, 1007, 1009) for c in closings),
        "protocol": sum(c.code in (1002, 1007) for c in closings),
        "too_big": sum(c.code == 1009 for c in closings),
    }
    last: dict[str, object] = {}

    def settled() -> bool:
        stats = server.stats()
        got = {name: count - start[name] for name, count in reasons(stats).items()}
        last.update(got=got, connections=stats["total"]["connections"], restarts=stats["worker_restarts"])
        return stats["total"]["connections"] == 0 and got == want

    try:
        wait_for(settled, 15)
    except AssertionError:
        raise AssertionError(f"want connections 0 and disconnections {want}, last seen {last}") from None
    stats = server.stats()
    assert stats["worker_restarts"] == 0
    assert [w["pid"] for w in stats["workers"]] == pids
    assert_serves(server)
