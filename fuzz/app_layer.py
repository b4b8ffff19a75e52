"""Fuzz modes past the frame layer (fuzz_server.py modes 4-6): the ``/pubsub`` JSON handling and the HTTP
endpoints, in process, on two fake workers wired by an in-memory mesh.

* Mode 4 (raw) and 5 (structured): frames from four connections (a plain one and one with a user on each
  worker; in one configuration the second user connection carries a token's identity) into
  ``PubSub.on_message`` / ``Session.on_message``, with, between them, binary frames, mesh records delivered
  (``Hub.on_record`` of the other worker), connections closed and reopened, and time passing (publish and
  replay timeouts, the idle sweep).  Mode 5 builds each request from the input with a small grammar (op,
  id, channels, channel, since, data drawn from tables of good and hostile values: 2^53-1 and 2^53,
  surrogates, NaN, 4301 digits, 5000 levels, odd names, the user's own channel and another's), so the
  fuzzer spends its time in the semantics, not in JSON syntax.  Four configurations: defaults, tight
  limits (3 channels per connection, 8 subscribers, 4 channels per worker, replay of 2 messages / 64
  bytes, depth 4), a publish rate limit with no replay, and a token identity.
* Mode 6: raw HTTP chunks into an h11 parser (keep-alive, pipelining) and every complete request into
  ``App.handle`` on a fake worker, with or without ``--auth-jwt-secret`` / ``--backend-token``; ``$T0``
  ... ``$T9`` in the input stand for prepared tokens (valid, odd ``sub``, bad claims, NaN ``exp``, deep
  claims, wrong key...) and ``$B`` for the backend credential, so that the fuzzer reaches the claims and
  the endpoints behind them.  A deferred answer (a publish waiting for its ``seq``) is collected after the
  mesh is pumped and time has passed.

Invariants (anything else raised, or an ``assert``, is a finding: in a worker it would end a unit of work
with an internal error):

* ``on_message``, ``on_open``, ``on_close``, ``on_record``, ``expire``, ``sweep``, ``App.handle`` raise
  nothing but ``HttpError`` (from ``handle``); the counters stay publishable (``WorkerStats.flush``).
* Every frame written is a well-formed server text frame holding a JSON object (no NaN, valid UTF-8) with
  an ``op`` the protocol knows; an error has a ``code`` of ``metrics.INPUT_CODES`` and a message, a
  ``channel`` of at most 128 characters, an ``id`` only if it is a valid one.
* One request, at most one answer written at once; by the end (mesh pumped, timeouts passed) every request
  has exactly one answer, except a publish without id (at most one); no id is answered twice.
* HTTP: ``HttpError`` statuses are refusals the server documents, their codes in ``INPUT_CODES``, and every
  response parses as one HTTP/1.1 response with its status; a deferred answer comes exactly once, 200 or 503.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import h11

from millionws import auth, metrics
from millionws.apps.host import Host, Response
from millionws.apps.pubsub import Session
from millionws.apps.routes import App
from millionws.config import Config
from millionws.core.reactor import monotonic
from millionws.protocol import http
from millionws.pubsub.channels import owner_of

MAX_SAFE = (1 << 53) - 1
SECRET = "fuzz-secret-0123456789abcdef-0123456789"
BACKEND = "fuzz-backend-credential-0123"
ANSWERS = frozenset({"error", "subscribed", "unsubscribed", "published"})
SERVER_OPS = ANSWERS | {"message", "gap"}
INPUT_CODES = frozenset(metrics.INPUT_CODES)
HTTP_REFUSALS = frozenset({400, 401, 403, 404, 405, 426, 429, 503})
MAX_HEAD = 16384
MAX_BODY = 64 << 10
# Two correct workers never send each other a malformed record: any record the in-memory mesh carries
# that the receiving hub drops as malformed is a bug of the sender (it found since 2^53-1 being refused).
MESH_RECORDS_MUST_BE_CLEAN = True
_MALFORMED = metrics.F["dropped_mesh_malformed"]

logging.getLogger("millionws").setLevel(logging.ERROR)  # a warning per dropped record per input drowns the log


# -- fakes: what the application sees of a worker --------------------------------------------------------------------

class FakeConn:
    __slots__ = ("name", "out", "answers", "opened")

    def __init__(self, name: str) -> None:
        self.name = name
        self.out: list[bytes] = []  # frames written (pubsub) or raw responses (HTTP)
        self.answers: list[Any] = []  # deferred HTTP answers (worker.answer)
        self.opened = 0  # answer frames written by on_open (not answers to a request)

    def __repr__(self) -> str:
        return self.name


class FakeReactor:
    def __init__(self) -> None:
        self.later: list[Callable[[], None]] = []

    def call_later(self, _delay: float, callback: Callable[[], None]) -> None:
        self.later.append(callback)  # never run: time passes explicitly (Node.time_passes)


class FakeBus:
    node = "f0" * 8  # the node's id, as the supervisor's mesh names it (pubsub/mesh.py)

    def __init__(self, owner: Node, index: int) -> None:
        self.owner = owner
        self.index = index
        self.on_record: Any = None

    def send(self, dest: int, record: bytes) -> None:
        assert dest != self.index and 0 <= dest < 2, dest
        self.owner.queue.append((self.index, dest, bytes(record)))


class FakeWorker:
    def __init__(self, node: Node, index: int, config: Config) -> None:
        self.index = index
        self.draining = False
        self.config = config
        self.stats = metrics.WorkerStats(node.shared, index)
        self.bus = FakeBus(node, index)
        self.reactor = FakeReactor()
        self.closed: list[tuple[FakeConn, int, str]] = []

    def websocket_count(self) -> int:
        return 0

    def expire_at(self, conn: FakeConn, expires: float | None) -> None:
        # No configuration here verifies tokens, so no refresh succeeds: a call is a bug of the harness's input.
        raise AssertionError(f"expiry of {conn!r} moved to {expires} without a verifier")

    def write(self, conn: FakeConn, data: bytes) -> None:
        conn.out.append(bytes(data))

    def fanout(self, conns: Any, frame: bytes) -> int:
        conns = tuple(conns)
        for conn in conns:
            conn.out.append(frame)
        return len(conns)

    def answer(self, conn: FakeConn, response: Any) -> None:
        conn.answers.append(response)

    def close(self, conn: FakeConn, code: int, reason: str) -> bool:
        self.closed.append((conn, code, reason))  # a backend's disconnect (the closing itself is the server's)
        return True


class Node:
    """Two workers of one node, their mesh a queue that :meth:`pump` empties."""

    def __init__(self, config: Config) -> None:
        self.shared = metrics.SharedStats(2)
        self.queue: list[tuple[int, int, bytes]] = []
        self.workers = [FakeWorker(self, i, config) for i in range(2)]
        self.apps = [App(Host(w.index, w.config, w.stats, w.reactor, w.bus, w.write, w.fanout, w.answer,
                              w.websocket_count, lambda w=w: w.draining, w.expire_at, w.close), 1000)
                     for w in self.workers]
        for app in self.apps:
            app.start()  # HELLO to the peer; the sweep goes to the fake reactor
        self.pump()

    def pump(self) -> None:
        for _ in range(100_000):
            if not self.queue:
                self.flush()
                return
            src, dest, record = self.queue.pop(0)
            self.workers[dest].bus.on_record(src, memoryview(record))
        raise AssertionError("the mesh never settles")

    def time_passes(self, seconds: float) -> None:
        now = monotonic() + seconds
        for app in self.apps:
            app.pubsub.hub.expire(now)
            app.pubsub.hub.sweep(now)
        self.pump()

    def flush(self) -> None:
        for worker in self.workers:
            worker.stats.flush()  # an int64 overflow here would break every scrape of the worker


# -- checking what was written ---------------------------------------------------------------------------------------

def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} in server output")


def documents(frames: list[bytes], server_frames: Callable[[bytes], list[tuple[int, bytes]]]) -> list[dict]:
    docs = []
    for opcode, payload in server_frames(b"".join(frames)):
        assert opcode == 1, f"opcode {opcode} from /pubsub"
        doc = json.loads(payload, parse_constant=_refuse_constant)
        assert type(doc) is dict and doc.get("op") in SERVER_OPS, doc
        if doc["op"] == "error":
            assert doc.get("code") in INPUT_CODES, doc
            assert type(doc.get("message")) is str and doc["message"], doc
            assert set(doc) <= {"op", "code", "message", "channel", "id"}, doc
            if "channel" in doc:
                assert type(doc["channel"]) is str and len(doc["channel"]) <= 128, doc
        if "id" in doc:
            rid = doc["id"]
            assert (type(rid) is int and 0 <= rid <= MAX_SAFE) or (type(rid) is str and len(rid) <= 128), doc
        docs.append(doc)
    return docs


def answers_in(frames: list[bytes], server_frames: Callable[[bytes], list[tuple[int, bytes]]]) -> list[dict]:
    return [doc for doc in documents(frames, server_frames) if doc["op"] in ANSWERS]


# -- /pubsub ---------------------------------------------------------------------------------------------------------

def _config(variant: int) -> tuple[Config, auth.Identity | None]:
    if variant == 1:  # tight limits: the refusals and evictions are reachable in a few requests
        return Config(workers=2, trust_user_param=True, max_channels_per_connection=3, max_subscribers_per_worker=8,
                      replay_max_messages=2, replay_max_bytes=64, max_channels_per_worker=4, max_json_depth=4), None
    if variant == 2:  # and namespaces: publish_forbidden, a rule without a publish rate, one with replay
        return Config(workers=2, trust_user_param=True, rate_limit_publishes=2.0, replay_max_messages=0,
                      channel_options="b.* publish=backend; news.* rate-limit-publishes=0 replay-messages=2"), None
    if variant == 3:
        identity = auth.identity_of({"sub": "u1", "channels": ["news.*", "a", "[!x]*.4?"], "exp": 2e9})
        return Config(workers=2, trust_user_param=True), identity
    return Config(workers=2, trust_user_param=True), None


class Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = Absent()
UNIQUE = object()  # a fresh id "r<n>", unique in the input


class Raw:
    """JSON text put in the document as it is (hostile numbers, escapes, nesting)."""

    def __init__(self, text: str) -> None:
        self.text = text


def owned(worker: int, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(1000) if owner_of(f"{prefix}{i}", 2) == worker)


OPS = [ABSENT, "subscribe", "unsubscribe", "publish", "subscribe", "publish", "SUBSCRIBE", Raw("[]")]
IDS = [ABSENT, UNIQUE, UNIQUE, UNIQUE, UNIQUE, 0, MAX_SAFE, 1 << 53, -1, True, 1.5, "x" * 128, "x" * 129, None,
       Raw('"\\ud800"'), Raw("1e400")]
NAMES = [owned(0, "c"), owned(1, "c"), owned(0, "news."), owned(1, "news."), "a", "b.x4", "x" * 128, "x" * 129, "",
         "a b", "é", "@user:u1", "@user:u2", Raw('"\\udc00"'), 42, None]
SINCES = [0, 1, 2, 3, 5, 100, MAX_SAFE, 1 << 53, 1 << 64, -1, True, 1.0, "1", None, Raw("NaN"), Raw("9" * 4301)]
DATA = [Raw("1"), Raw('"x"'), Raw('{"k":[1,2]}'), Raw("null"), Raw("NaN"), Raw("-Infinity"), Raw("1e400"),
        Raw("9" * 4301), Raw("9" * 4300), Raw("[" * 31 + "]" * 31), Raw("[" * 32 + "]" * 32),
        Raw("[" * 5000 + "]" * 5000), Raw('"\\ud800"'), Raw('"\\ud83d\\ude00"'), Raw('{"\\udfff":0}'),
        Raw('"' + "y" * 3000 + '"')]


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join((k.text if isinstance(k, Raw) else json.dumps(k)) + ":" + dump(v)
                               for k, v in value.items() if v is not ABSENT) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def _key(name: Any) -> Any:
    """A name as an object key: strings and Raw string literals as they are, anything else spelt out."""
    return name if isinstance(name, str | Raw) else json.dumps(name)


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def rest(self) -> bytes:
        return self.data[self.pos:]


def build_request(chunk: bytes, counter: list[int]) -> tuple[bytes, bool, str | None]:
    """(frame payload, whether it may go unanswered: a publish without id, the unique id it carries)."""
    r = Reader(chunk)
    op, rid, flags = OPS[r.byte() & 7], IDS[r.byte() & 15], r.byte()
    unique = None
    if rid is UNIQUE:
        counter[0] += 1
        rid = unique = f"r{counter[0]}"
    document: dict[str, Any] = {"op": op, "id": rid}
    if flags & 1:
        document["channels"] = [NAMES[r.byte() & 15] for _ in range(r.byte() & 7)]
    if flags & 64:
        document["channels"] = NAMES[r.byte() & 15]  # not a list
    if flags & 2:
        document["channel"] = NAMES[r.byte() & 15]
    if flags & 4:
        document["since"] = {_key(NAMES[r.byte() & 15]): SINCES[r.byte() & 15] for _ in range(r.byte() & 3)}
    if flags & 16:
        document["since"] = SINCES[r.byte() & 15]  # not an object
    if flags & 8:
        document["data"] = DATA[r.byte() & 15]
    if flags & 32:
        document[r.rest()[:8].decode("latin-1")] = r.rest()[8:].decode("latin-1")
    silent = op == "publish" and rid in (ABSENT, None)
    return dump(document).encode(), silent, unique


def fuzz_pubsub(data: bytes, structured: bool, server_frames: Callable[[bytes], list[tuple[int, bytes]]],
                records: Callable[[bytes, int], list[tuple[int, bytes]]]) -> None:
    head = data[1] if len(data) > 1 else 0
    config, identity = _config(head & 3)
    node = Node(config)
    conns: list[FakeConn] = []
    live: list[tuple[int, Any, FakeConn]] = []
    requests = {}  # conn -> [requests, may go unanswered]
    uniques: set[str] = set()
    counter = [0]

    def open_conn(slot: int) -> tuple[int, Any, FakeConn]:
        worker = slot & 1
        pubsub = node.apps[worker].pubsub
        conn = FakeConn(f"c{slot}.{len(conns)}")
        conns.append(conn)
        requests[conn] = [0, 0]
        if slot < 2:
            app: Any = pubsub
        else:
            app = Session(pubsub, "u1", identity if slot == 3 else None)
            before = len(conn.out)
            app.on_open(conn)
            conn.opened = len(answers_in(conn.out[before:], server_frames))
        return worker, app, conn

    live = [open_conn(slot) for slot in range(4)]
    for ctrl, chunk in records(data, 2):
        slot = ctrl & 3
        action = (ctrl >> 2) & 7
        _worker, app, conn = live[slot]
        if action <= 4:
            if action == 4:
                is_text, payload, silent = False, chunk, False
            elif structured:
                payload, silent, unique = build_request(chunk, counter)
                is_text = True
                if unique:
                    uniques.add(unique)
            else:
                is_text, payload, silent = True, chunk, True
            before = len(conn.out)
            reply = app.on_message(conn, is_text, payload)
            if reply is not None:  # the reply convention (millionws/apps/__init__.py): returned, the server sends it
                conn.out.append(reply)
            now = answers_in(conn.out[before:], server_frames)
            assert len(now) <= 1, f"one request, {len(now)} answers at once: {now}"
            if not is_text:
                assert [a["code"] for a in now] == ["binary_not_supported"], now
            requests[conn][1 if silent else 0] += 1
        elif action == 5:
            node.pump()
        elif action == 6:
            app.on_close(conn)
            app.on_close(conn)  # idempotent
            live[slot] = open_conn(slot)
        else:
            node.time_passes(chunk[0] if chunk else 30.0)
    node.pump()
    node.time_passes(1000.0)  # every publish and replay timeout is over
    node.pump()
    answered: dict[str, int] = {}
    for conn in conns:
        got = answers_in(conn.out, server_frames)
        required, optional = requests[conn]
        count = len(got) - conn.opened
        assert required <= count <= required + optional, (conn, required, optional, got)
        for doc in got:
            if doc.get("id") in uniques:
                answered[doc["id"]] = answered.get(doc["id"], 0) + 1
    assert all(n == 1 for n in answered.values()), {k: n for k, n in answered.items() if n != 1}
    if MESH_RECORDS_MUST_BE_CLEAN:
        assert [w.stats.c[_MALFORMED] for w in node.workers] == [0, 0], "a record between the workers was malformed"


# -- HTTP endpoints --------------------------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(payload: str, secret: str = SECRET, header: str = '{"alg":"HS256","typ":"JWT"}') -> bytes:
    signing = f"{_b64(header.encode())}.{_b64(payload.encode())}"
    return (signing + "." + _b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())).encode()


_EXP = 4_000_000_000
TOKENS = [
    _token(json.dumps({"sub": "u1", "channels": ["news.*", "a"], "exp": _EXP})),
    _token(json.dumps({"sub": "a+b=c|d@e.f", "channels": ["*"], "exp": _EXP})),
    _token(json.dumps({"sub": "é\"\n", "exp": _EXP})),
    _token(json.dumps({"sub": "u1", "channels": "news", "exp": _EXP})),
    _token('{"sub":"u1","exp":NaN}'),
    _token('{"exp":' + str(_EXP) + ',"x":' + "[" * 3000 + "]" * 3000 + "}"),
    _token(json.dumps({"sub": "u1", "exp": 1})),
    _token(json.dumps({"sub": "u1", "channels": ["a"]})),
    _token(json.dumps({"channels": ["[!x]*", "a?"], "exp": 1e300})),
    _token(json.dumps({"sub": "u1", "exp": _EXP}), secret="not-the-secret-of-this-server"),
]


def _substitute(data: bytes) -> bytes:
    if b"$" not in data:
        return data
    for i, token in enumerate(TOKENS):
        data = data.replace(b"$T%d" % i, token)
    return data.replace(b"$B", BACKEND.encode())


def _check_response(response: Any, parse_response: Callable[[bytes, int], None]) -> None:
    if isinstance(response, http.HttpError):
        assert response.status in HTTP_REFUSALS, (response.status, response.message)
        assert response.code is None or response.code in INPUT_CODES, response.code
        parse_response(http.render_error(response), response.status)
        return
    assert isinstance(response, Response), response
    assert response.status in (101, 200, 503), response.status  # 503: /health while draining or not ready
    parse_response(response.data, response.status)
    if response.status == 200 and b'"status":"published"' in response.data:
        document = json.loads(response.data.partition(b"\r\n\r\n")[2])
        assert type(document["seq"]) is int and 1 <= document["seq"] <= MAX_SAFE, document


def fuzz_app_http(data: bytes, parse_response: Callable[[bytes, int], None],
                  records: Callable[[bytes, int], list[tuple[int, bytes]]]) -> None:
    head = data[1] if len(data) > 1 else 0
    if head & 1:
        config = Config(workers=2, auth_jwt_secret=SECRET, auth_required=True, backend_token=BACKEND,
                        allowed_origins="https://ok.example")
    else:
        config = Config(workers=2, trust_user_param=True, admin_port=9 if head & 2 else 0)
    node = Node(config)
    app = node.apps[(head >> 2) & 1]
    conn = FakeConn("http")
    parser = http.new_parser(MAX_HEAD)
    message: list[Any] = []
    for ctrl, chunk in records(data, 2):
        parser.receive_data(_substitute(chunk))  # b"": the peer's FIN (a worker reads 0 bytes only then)
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError:
                return  # the frame layer's target covers these refusals
            if isinstance(event, h11.Request):
                if http.head_size(event) > MAX_HEAD:
                    return
                message = [event]
            elif isinstance(event, h11.Data):
                message.append(event.data)
                if sum(len(part) for part in message[1:]) > MAX_BODY:
                    return
            elif isinstance(event, h11.EndOfMessage):
                request, body = message[0], b"".join(message[1:])
                try:
                    response = app.handle(request, body, bool(ctrl & 0x40), conn)
                except http.HttpError as error:
                    _check_response(error, parse_response)
                    return  # a refusal ends the connection
                if response is None:  # deferred: a publish waiting for its seq
                    node.pump()
                    if not conn.answers:
                        node.time_passes(1000.0)
                    assert len(conn.answers) == 1, conn.answers
                    response = conn.answers.pop()
                    if isinstance(response, http.HttpError):
                        assert response.status == 503, response.status
                        _check_response(response, parse_response)
                        return
                _check_response(response, parse_response)
                if response.websocket is not None or not response.keep_alive:
                    return
                trailing = parser.trailing_data[0]
                parser = http.new_parser(MAX_HEAD)
                if trailing:
                    parser.receive_data(trailing)
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        if not chunk:
            return  # after the FIN the worker closes: nothing more is read
    node.pump()
    node.time_passes(1000.0)
    assert not conn.answers, f"an answer nobody waited for: {conn.answers}"


# -- seeds -----------------------------------------------------------------------------------------------------------

def seeds(record: Callable[[int, bytes], bytes]) -> dict[str, bytes]:
    def text(slot: int, document: str) -> bytes:
        return record(slot, document.encode())

    def req(slot: int, *spec: int, tail: bytes = b"") -> bytes:
        return record(slot, bytes(spec) + tail)

    pump, later = 5 << 2, 7 << 2
    raw = (text(0, '{"op":"subscribe","channels":["news"],"since":{"news":0},"id":1}')
           + text(1, '{"op":"publish","channel":"news","data":{"x":[1,2]},"id":"p"}') + record(pump, b"")
           + text(2, '{"op":"subscribe","channels":["@user:u1"],"since":{"@user:u1":9007199254740991}}')
           + text(3, '{"op":"publish","channel":"a","data":"\\ud800"}') + text(0, "[" * 200)
           + record(4 << 2, b"\x00bin") + record(6 << 2 | 1, b"") + record(later, b"\x05"))
    # structured: [op][id][flags][...]: subscribe with since on both workers, publish with ids, odd names
    structured = (req(0, 1, 1, 1 | 4, 2, 0, 1, 2, 0, 0, 1, 0) + req(1, 3, 2, 2 | 8, 1, 0)
                  + req(2, 1, 3, 1 | 4, 2, 11, 0, 1, 11, 6) + record(pump, b"") + req(3, 3, 4, 2 | 8, 3, 13)
                  + req(1, 2, 0, 1, 3, 9, 10, 12) + req(0, 3, 5, 2 | 8, 0, 11) + record(later, b"\x0c"))
    http_plain = (b"POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
                  b"POST /users/auth0%7Cu1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n[1,2"
                  b"]GET /pubsub?user=u1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    http_secured = (b"POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $B\r\nContent-Length: 9\r\n\r\n"
                    b"[[[[1]]]]GET /pubsub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Authorization: Bearer $T0\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n")
    return {
        "pubsub-raw": b"\x04\x00" + raw,
        "pubsub-raw-tight": b"\x04\x01" + raw,
        "pubsub-structured": b"\x05\x00" + structured,
        "pubsub-structured-tight": b"\x05\x01" + structured,
        "pubsub-structured-token": b"\x05\x03" + structured,
        "app-http-plain": b"\x06\x00" + record(0, http_plain),
        "app-http-secured": b"\x06\x01" + record(0, http_secured),
        "app-http-deep-body": b"\x06\x04" + record(0, b"POST /publish/n HTTP/1.1\r\nHost: x\r\nContent-Length: 1200"
                                                   b"\r\n\r\n" + b"[" * 600 + b"]" * 600),
    }
