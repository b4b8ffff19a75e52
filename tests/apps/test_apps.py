"""The application interface (millionws/apps/__init__.py): a Host instead of the worker, one reply convention."""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest

from benchmarks.wscodec import server_frames
from millionws import metrics
from millionws.apps.echo import Echo
from millionws.apps.host import Host, Response
from millionws.apps.pubsub import PubSub
from millionws.apps.routes import App
from millionws.config import Config
from millionws.protocol.http import HttpError
from millionws.protocol.websocket import encode_frame


class FakeMesh:
    on_record: Any = None
    node = "ab" * 8  # the node's id (pubsub/mesh.py)

    def send(self, dest: int, record: bytes) -> None:
        raise AssertionError("one worker: no record leaves it")


class FakeReactor:
    def __init__(self) -> None:
        self.later: list[Any] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append(callback)


class Conn:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.expires: list[float | None] = []  # what the application asked of the expiry heap (host.expire_at)
        self.closed: tuple[int, str] | None = None


def host(draining: bool = False, count: int = 0, **settings: Any) -> tuple[Host, list[tuple[Any, Any]]]:
    answers: list[tuple[Any, Any]] = []

    def send(conn: Conn, data: bytes) -> None:
        conn.sent.append(bytes(data))

    def fanout(conns: Any, frame: bytes) -> int:
        conns = list(conns)
        for conn in conns:
            conn.sent.append(frame)
        return len(conns)

    def expire_at(conn: Conn, expires: float | None) -> None:
        conn.expires.append(expires)

    config = Config(workers=1, **settings)
    stats = metrics.WorkerStats(metrics.SharedStats(1), 0)
    def close(conn: Conn, code: int, reason: str) -> bool:
        conn.closed = (code, reason)
        return True

    return Host(0, config, stats, FakeReactor(), FakeMesh(), send, fanout, lambda c, r: answers.append((c, r)),
                lambda: count, lambda: draining, expire_at, close), answers


def documents(data: list[bytes] | bytes | None) -> list[dict]:
    raw = b"".join(data) if isinstance(data, list) else (data or b"")
    return [json.loads(payload) for _, _, payload in server_frames(raw)]


def test_echo_returns_its_reply():
    c = [0] * len(metrics.FIELDS)
    assert Echo(c).on_message(None, True, b"hi") == b"\x81\x02hi"


def test_pubsub_returns_an_error_reply_and_sends_nothing():
    pubsub = PubSub(host()[0])
    conn = Conn()
    reply = pubsub.on_message(conn, True, b"{not json")
    assert [d["op"] for d in documents(reply)] == ["error"] and conn.sent == []
    reply = pubsub.on_message(conn, False, b"\x00")
    assert documents(reply)[0]["code"] == "binary_not_supported"


def test_a_subscription_is_acknowledged_before_its_replay_through_the_host():
    h, _ = host()
    pubsub = PubSub(h)
    pubsub.start()
    publisher = Conn()
    for n in range(3):
        assert pubsub.on_message(publisher, True, json.dumps({"op": "publish", "channel": "c", "data": n}).encode()) \
            is None
    conn = Conn()
    reply = pubsub.on_message(conn, True, b'{"op":"subscribe","channels":["c"],"since":{"c":1},"id":7}')
    assert reply is None  # sent with what it causes, in order
    docs = documents(conn.sent)
    assert docs[0] == {"op": "subscribed", "channels": ["c"], "id": 7}
    assert [d["seq"] for d in docs[1:]] == [2, 3]
    assert [d["op"] for d in documents(pubsub.on_message(conn, True, b'{"op":"unsubscribe","channels":["c"]}'))] \
        == ["unsubscribed"]


def test_a_publish_is_acknowledged_through_the_host_once_sequenced():
    pubsub = PubSub(host()[0])
    pubsub.start()
    conn = Conn()
    assert pubsub.on_message(conn, True, b'{"op":"publish","channel":"c","data":1,"id":"a"}') is None
    assert documents(conn.sent) == [{"op": "published", "channel": "c", "seq": 1, "id": "a"}]


def request(target: bytes, method: bytes = b"GET", upgrade: bool = False) -> h11.Request:
    headers = [(b"host", b"x")]
    if upgrade:
        headers += [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-version", b"13"),
                    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    return h11.Request(method=method, target=target, headers=headers)


def test_routes_consult_the_host_not_a_worker():
    app = App(host(draining=True)[0], 10)
    with pytest.raises(HttpError) as refused:
        app.handle(request(b"/echo", upgrade=True), b"")
    assert refused.value.status == 503
    full = App(host(count=10)[0], 10)
    with pytest.raises(HttpError) as over:
        full.handle(request(b"/echo", upgrade=True), b"")
    assert over.value.status == 503 and b"Retry-After" in b"".join(k.encode() for k, _ in over.value.headers)
    ok = App(host()[0], 10).handle(request(b"/echo", upgrade=True), b"")
    assert isinstance(ok, Response) and ok.status == 101 and isinstance(ok.websocket, Echo)
    health = App(host()[0], 10).handle(request(b"/health"), b"")
    assert health.status == 200 and b'"connections":0' in health.data


def test_a_backend_publish_is_answered_with_its_seq():
    app = App(host()[0], 10)
    app.start()
    response = app.handle(request(b"/publish/news", b"POST"), b'{"a":1}')
    assert response.status == 200 and json.loads(response.data.split(b"\r\n\r\n", 1)[1])["seq"] == 1


@pytest.mark.parametrize(("compression", "offer", "deflate"), [
    ("deflate", b"permessage-deflate; client_max_window_bits", 15),
    ("deflate", b"permessage-deflate; server_max_window_bits=10", 10),
    ("deflate", b"permessage-deflate; bogus", 0),
    ("off", b"permessage-deflate", 0),
    ("deflate", None, 0),
])
def test_an_upgrade_accepts_permessage_deflate_only_when_configured_and_offered(compression, offer, deflate):
    app = App(host(compression=compression)[0], 10)
    req = request(b"/pubsub", upgrade=True)
    headers = [*req.headers, (b"sec-websocket-protocol", b"millionws")]
    if offer is not None:
        headers.append((b"sec-websocket-extensions", offer))
    response = app.handle(h11.Request(method=b"GET", target=b"/pubsub", headers=headers), b"")
    assert response.status == 101 and response.deflate == deflate
    head = response.data
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    assert b"Sec-WebSocket-Protocol: millionws\r\n" in head  # the subprotocol answer stays
    assert (b"Sec-WebSocket-Extensions: permessage-deflate" in head) == bool(deflate)
    if deflate == 10:
        assert b"server_max_window_bits=10\r\n" in head


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536])
@pytest.mark.parametrize("is_text", [True, False])
def test_echo_reply_is_the_encoded_frame_whatever_the_length(n: int, is_text: bool) -> None:
    """Echo builds short replies from the header table itself: the bytes are encode_frame's at every length."""
    payload = b"a" * n
    assert Echo([0] * len(metrics.FIELDS)).on_message(None, is_text, payload) == encode_frame(1 if is_text else 2,
                                                                                               payload)
