"""Hostile input against real 2-worker servers: a table of inputs, each with the exact answer it must get.

"Bad input gets a clear error, never a crash": every row below sends one hostile thing (a ``/pubsub``
frame, an HTTP publish body or path, a user id, a request head, a token's claims) and asserts the exact
answer: the ``code`` of the error reply and the usability of the connection after it, the HTTP status
and body ``code``, the close code, the 401 and the reason it is counted under.  The classes that used to
kill a worker are all here: 100 000 nested ``[`` on ``/pubsub`` and in POST bodies, ``since`` of 2^64 and
2^53, lone surrogates in data, ids, keys and channel names, token subjects with non-ASCII, quotes and
control characters (the last one used to crash the *other* worker through the mesh), odd channel names.

Two servers: ``plain`` (``--trust-user-param``, for ``?user=``) and ``secured`` (``--auth-jwt-secret``,
``--backend-token``, no ``--trust-user-param``).  Before the first row each gets neighbours on both of its
workers (echo connections and ``/pubsub`` subscribers).  After the table (the ``test_zz_*`` tests, last in
this file): no worker restarted (same pids, ``millionws_worker_restarts_total`` 0), every neighbour still
served, ``millionws_internal_errors_total`` 0 (a hostile input meets a checked refusal, never an internal
error), and every refusal counted under its code in ``millionws_input_refused_total`` /
``millionws_auth_failures_total``.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from millionws.pubsub.channels import owner_of
from tests.conftest import Server, free_port, wait_for
from tests.test_metrics_helpers import metric_samples
from tests.wsraw import RawClient, frame, upgrade_request

pytestmark = pytest.mark.e2e

SECRET = "hostile-table-secret-0123456789"
BACKEND = "hostile-backend-token-0123456789"
MAX_SAFE = (1 << 53) - 1
MiB = 1 << 20
TIMEOUT = 5.0
NO_ID = object()  # the error reply must carry no id


# -- tokens, built by hand so that a claim may hold anything (NaN, deep nesting, lone surrogates) -------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: str, header: str = '{"alg":"HS256","typ":"JWT"}', secret: str = SECRET) -> str:
    """An HS256 JWS of exactly these JSON texts (``json.dumps`` escapes lone surrogates as ``\\udxxx``)."""
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


EXP = int(time.time()) + 3 * 3600  # tokens of this module are made at import
_DROP = object()  # claims(exp=_DROP): no exp at all


def claims(**values: Any) -> str:
    """A token of these claims; ``exp`` defaults to three hours ahead, ``channels`` to ``["news.*"]``."""
    document = {"sub": "alice", "channels": ["news.*"], "exp": EXP, **values}
    return signed(json.dumps({k: v for k, v in document.items() if v is not _DROP}))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {token}"),)


# -- the servers and what they looked like before the table ---------------------------------------------

@dataclass
class Target:
    name: str
    server: Server = field(repr=False)
    pids: list[int] = field(default_factory=list)
    echoes: list[RawClient] = field(default_factory=list, repr=False)
    subscribers: list[RawClient] = field(default_factory=list, repr=False)
    refused: collections.Counter = field(default_factory=collections.Counter, repr=False)  # expected, by code
    auth: collections.Counter = field(default_factory=collections.Counter, repr=False)  # expected 401s, by reason
    baseline: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)


def per_worker_connections(server: Server) -> list[int]:
    return [w["connections"] for w in server.stats()["workers"]]


def settled_connections(server: Server) -> list[int]:
    """Connections per worker once /stats stopped moving (workers publish their counters every 0.25 s)."""
    last: list[list[int]] = [per_worker_connections(server)]

    def steady() -> list[int] | None:
        time.sleep(0.3)
        now = per_worker_connections(server)
        same, last[0] = now == last[0], now
        return now if same else None

    return wait_for(steady, TIMEOUT, what="/stats connections to settle")


def open_on_both_workers(target: Target, open_one, into: list[RawClient]) -> None:
    """Open connections until both workers hold one of this kind (SO_REUSEPORT hashes the 4-tuple)."""
    server = target.server
    before = settled_connections(server)
    already = sum(before)
    for _ in range(8):
        into.extend(open_one() for _ in range(4))
        wanted = already + len(into)

        def settled(wanted: int = wanted) -> list[int] | None:
            per = per_worker_connections(server)
            return per if sum(per) == wanted else None

        per = wait_for(settled, TIMEOUT, what=f"{wanted} connections in /stats")
        if all(now > then for now, then in zip(per, before, strict=True)):
            return
    raise AssertionError(f"{target.name}: connections all landed on one worker: {per}")


def counted(port: int) -> dict[tuple[str, str], float]:
    """Sums over workers of the labelled counters the table is about."""
    sums: dict[tuple[str, str], float] = collections.defaultdict(float)
    for s in metric_samples(port):
        if s.name == "millionws_input_refused_total":
            sums[("refused", s.labels["code"])] += s.value
        elif s.name == "millionws_auth_failures_total":
            sums[("auth", s.labels["reason"])] += s.value
        elif s.name == "millionws_internal_errors_total":
            sums[("internal", s.labels["where"])] += s.value
        elif s.name == "millionws_records_dropped_total":
            sums[("dropped", s.labels["kind"])] += s.value
        elif s.name == "millionws_worker_restarts_total":
            sums[("restarts", "")] += s.value
    return sums


def pubsub_client(port: int, path: str = "/pubsub", headers: tuple[tuple[str, str], ...] = ()) -> RawClient:
    client = RawClient(port, timeout=TIMEOUT)
    client.send(upgrade_request(path, extra="".join(f"{k}: {v}\r\n" for k, v in headers)))
    status, _, body = client.read_http_response()
    assert status == 101, (status, body)
    return client


def read_doc(client: RawClient) -> dict:
    got = client.read_frame()
    assert got is not None, "the server closed the connection instead of answering"
    opcode, fin, payload = got
    assert opcode == 1 and fin, (opcode, payload[:200])
    return json.loads(payload)


def request(client: RawClient, document: dict) -> dict:
    client.send(frame(1, json.dumps(document).encode()))
    return read_doc(client)


NEIGHBOUR_CHANNEL = "hostile.neighbours"


@pytest.fixture(scope="module")
def arena() -> Iterator[dict[str, Target]]:
    plain = Server(free_port(), 2, ["--trust-user-param", "--handshake-timeout", "3", "--close-timeout", "2"])
    secured = Server(free_port(), 2, ["--auth-jwt-secret", SECRET, "--backend-token", BACKEND,
                                      "--handshake-timeout", "3", "--close-timeout", "2"])
    targets = {"plain": Target("plain", plain), "secured": Target("secured", secured)}
    neighbour_token = claims(sub="neighbour", channels=["hostile.*"])
    try:
        for target in targets.values():
            headers = bearer(neighbour_token) if target.name == "secured" else ()
            target.pids = target.server.worker_pids()

            def echo_client(headers=headers, port=target.server.port) -> RawClient:
                return pubsub_client(port, "/echo", headers)

            def subscriber(headers=headers, port=target.server.port) -> RawClient:
                client = pubsub_client(port, "/pubsub", headers)
                answer = request(client, {"op": "subscribe", "channels": [NEIGHBOUR_CHANNEL],
                                          "since": {NEIGHBOUR_CHANNEL: 0}})
                assert answer == {"op": "subscribed", "channels": [NEIGHBOUR_CHANNEL]}, answer
                return client

            open_on_both_workers(target, echo_client, target.echoes)
            open_on_both_workers(target, subscriber, target.subscribers)
            target.baseline = counted(target.server.port)
        yield targets
    finally:
        for target in targets.values():
            for client in (*target.echoes, *target.subscribers):
                client.close()
            target.server.stop()


# -- the table ---------------------------------------------------------------------------------------------

def j(document: Any) -> bytes:
    """JSON text of ``document``: lone surrogates come out as ``\\udxxx`` escapes, NaN as NaN."""
    return json.dumps(document).encode()


def publish(data: bytes, channel: str = "hx", extra: bytes = b"") -> bytes:
    """A publish frame whose data is the raw JSON text ``data``."""
    return b'{"op":"publish","channel":"' + channel.encode() + b'",' + extra + b'"data":' + data + b"}"


@dataclass(frozen=True)
class Frame:
    """A ``/pubsub`` frame.  ``code``: the error expected (``id``: the id it must echo, or NO_ID);
    else ``reply``: the exact answer (``None``: no answer, the next request's answer comes first)."""

    payload: bytes
    code: str | None = None
    id: Any = NO_ID
    reply: dict | None = None
    opcode: int = 1
    path: str = "/pubsub"
    server: str = "plain"
    token: str | None = None


@dataclass(frozen=True)
class Closes:
    """Bytes after a good ``/pubsub`` handshake that must end in a Close with ``code``."""

    data: bytes
    code: int


@dataclass(frozen=True)
class Post:
    """An HTTP request (POST by default) with a JSON body; ``doc``: keys the 200 body must have."""

    target: str
    body: bytes = b"{}"
    status: int = 400
    code: str | None = None
    method: str = "POST"
    doc: dict | None = None
    server: str = "plain"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Head:
    """Raw bytes of a request; the answer must be ``status``."""

    data: bytes
    status: int


@dataclass(frozen=True)
class Upgrade:
    """A WebSocket upgrade; ``status`` 101 or a refusal with ``code`` (HTTP body) / ``reason`` (auth)."""

    path: str = "/pubsub"
    status: int = 401
    headers: tuple[tuple[str, str], ...] = ()
    code: str | None = None
    reason: str | None = None
    server: str = "plain"


def deep(opening: str, n: int, inner: str = "1", closing: str | None = None) -> bytes:
    closing = closing if closing is not None else {"[": "]", '{"a":': "}"}[opening]
    return (opening * n + inner + closing * n).encode()


TOO_MANY = [f"c{i}" for i in range(101)]
DIGITS_4301 = b"9" * 4301
DIGITS_4300 = b"9" * 4300
# The token of the secured Frame rows: alice, may use news.*
ALICE = claims()

FRAMES = [
    # -- bad_json: not one JSON document
    pytest.param(Frame(b"not json", "bad_json"), id="json-garbage"),
    pytest.param(Frame(b'{"op":"subscribe"', "bad_json"), id="json-truncated"),
    pytest.param(Frame(b"", "bad_json"), id="json-empty-frame"),
    pytest.param(Frame(b"{} {}", "bad_json"), id="json-two-documents"),
    pytest.param(Frame(b"{'op': 'publish'}", "bad_json"), id="json-single-quotes"),
    pytest.param(Frame("\ufeff{}".encode(), "bad_json"), id="json-bom"),
    pytest.param(Frame(publish(b"01"), "bad_json"), id="json-leading-zero"),
    pytest.param(Frame(publish(b'"a\x01b"'), "bad_json"), id="json-raw-control-char"),
    pytest.param(Frame(publish(b'"\\x41"'), "bad_json"), id="json-bad-escape"),
    pytest.param(Frame(publish(b'"\\ud8"'), "bad_json"), id="json-cut-unicode-escape"),
    # -- bad_number
    pytest.param(Frame(publish(b"NaN"), "bad_number"), id="number-nan"),
    pytest.param(Frame(publish(b"[Infinity]"), "bad_number"), id="number-infinity"),
    pytest.param(Frame(publish(b'{"x":-Infinity}'), "bad_number"), id="number-minus-infinity"),
    pytest.param(Frame(publish(b"1e400"), "bad_number"), id="number-1e400"),
    pytest.param(Frame(publish(b"[-1E+999]"), "bad_number"), id="number-minus-1e999"),
    pytest.param(Frame(publish(DIGITS_4301), "bad_number"), id="number-4301-digits"),
    pytest.param(Frame(publish(b"-" + DIGITS_4301), "bad_number"), id="number-minus-4301-digits"),
    pytest.param(Frame(b'{"op":"publish","channel":"hx","data":1,"id":1e400}', "bad_number"), id="number-id-1e400"),
    pytest.param(Frame(b'{"op":"subscribe","channels":["hx"],"since":{"hx":1e999}}', "bad_number"),
                 id="number-since-1e999"),
    # -- too_deep (default --max-json-depth 32; the depth of {"a":1} is 1)
    pytest.param(Frame(b"[" * 100_000, "too_deep"), id="deep-100000-brackets-alone"),
    pytest.param(Frame(publish(b"[" * 100_000), "too_deep"), id="deep-100000-brackets-in-data"),
    pytest.param(Frame(publish(deep('{"a":', 100_000)), "too_deep"), id="deep-100000-objects-in-data"),
    pytest.param(Frame(publish(b'[{"a":' * 20_000), "too_deep"), id="deep-mixed-unclosed"),
    pytest.param(Frame(publish(deep("[", 32)), "too_deep"), id="deep-33-levels"),
    pytest.param(Frame(b'{"op":"subscribe","channels":' + deep("[", 40, '"hx"') + b"}", "too_deep"),
                 id="deep-channels"),
    pytest.param(Frame(b'{"op":"subscribe","channels":["hx"],"since":{"hx":' + deep("[", 2000, "1") + b"}}",
                       "too_deep"), id="deep-since"),
    pytest.param(Frame(publish(deep("[", 31), extra=b'"id":"d31",'),
                       reply={"op": "published", "channel": "hx", "seq": int, "id": "d31"}), id="deep-32-accepted"),
    # -- bad_unicode: a lone surrogate anywhere
    pytest.param(Frame(publish(b'"\\ud800"'), "bad_unicode"), id="unicode-high-surrogate-data"),
    pytest.param(Frame(publish(b'["x","\\udc00"]'), "bad_unicode"), id="unicode-low-surrogate-data"),
    pytest.param(Frame(publish(b'{"\\ud800":1}'), "bad_unicode"), id="unicode-surrogate-key"),
    pytest.param(Frame(publish(b'{"a":[{"b":{"\\udfff":0}}]}'), "bad_unicode"), id="unicode-surrogate-nested-key"),
    pytest.param(Frame(publish(b'"\\ude00\\ud83d"'), "bad_unicode"), id="unicode-reversed-pair"),
    pytest.param(Frame(publish(b'"\\ud800\\u0041"'), "bad_unicode"), id="unicode-high-then-letter"),
    pytest.param(Frame(publish(b"1", extra=b'"id":"\\ud800",'), "bad_unicode"), id="unicode-surrogate-id"),
    pytest.param(Frame(publish(b"1", channel="\\udc00"), "bad_unicode"), id="unicode-surrogate-channel"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx", "\ud800"]}), "bad_unicode"),
                 id="unicode-surrogate-in-channels"),
    pytest.param(Frame(j({"op": "\udbff"}), "bad_unicode"), id="unicode-surrogate-op"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"\udc00": 1}}), "bad_unicode"),
                 id="unicode-surrogate-since-key"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "x": "\ud800"}), "bad_unicode"),
                 id="unicode-surrogate-unused-field"),
    pytest.param(Frame(publish(b'"\\ud83d\\ude00"', extra=b'"id":"pair",'),
                       reply={"op": "published", "channel": "hx", "seq": int, "id": "pair"}), id="unicode-pair-ok"),
    pytest.param(Frame(publish(b'"\\\\ud800"', extra=b'"id":"esc",'),
                       reply={"op": "published", "channel": "hx", "seq": int, "id": "esc"}),
                 id="unicode-escaped-backslash-ok"),
    # -- bad_request
    pytest.param(Frame(b"[]", "bad_request"), id="request-array"),
    pytest.param(Frame(b'"subscribe"', "bad_request"), id="request-string"),
    pytest.param(Frame(b"42", "bad_request"), id="request-number"),
    pytest.param(Frame(b"null", "bad_request"), id="request-null"),
    pytest.param(Frame(b"true", "bad_request"), id="request-true"),
    pytest.param(Frame(j({"op": "subscribe", "id": 5}), "bad_request", id=5), id="request-no-channels"),
    pytest.param(Frame(j({"op": "subscribe", "channels": []}), "bad_request"), id="request-empty-channels"),
    pytest.param(Frame(j({"op": "subscribe", "channels": "hx"}), "bad_request"), id="request-channels-string"),
    pytest.param(Frame(j({"op": "subscribe", "channels": {"hx": 1}}), "bad_request"), id="request-channels-object"),
    pytest.param(Frame(j({"op": "unsubscribe", "channels": None}), "bad_request"), id="request-channels-null"),
    pytest.param(Frame(j({"op": "publish", "channel": "hx", "id": "nd"}), "bad_request", id="nd"),
                 id="request-publish-without-data"),
    # -- bad_id (the reply then carries no id)
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": True}), "bad_id"), id="id-true"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": -1}), "bad_id"), id="id-negative"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": 1 << 53}), "bad_id"), id="id-2-53"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": 1 << 64}), "bad_id"), id="id-2-64"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": 1.5}), "bad_id"), id="id-float"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": 1.0}), "bad_id"), id="id-integral-float"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": "x" * 129}), "bad_id"), id="id-129-chars"),
    pytest.param(Frame(j({"op": "publish", "channel": "hx", "data": 1, "id": []}), "bad_id"), id="id-array"),
    pytest.param(Frame(j({"op": "nonsense", "id": {"a": 1}}), "bad_id"), id="id-object-before-op"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": MAX_SAFE}),
                       reply={"op": "subscribed", "channels": ["hx"], "id": MAX_SAFE}), id="id-2-53-minus-1-ok"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": "x" * 128}),
                       reply={"op": "subscribed", "channels": ["hx"], "id": "x" * 128}), id="id-128-chars-ok"),
    pytest.param(Frame(j({"op": "publish", "channel": "hx", "data": None, "id": 0}),
                       reply={"op": "published", "channel": "hx", "seq": int, "id": 0}), id="id-0-ok"),
    # A null id is no id (the server treats it as absent): answered like a request without one.
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "id": None}),
                       reply={"op": "subscribed", "channels": ["hx"]}), id="id-null-is-absent"),
    # -- unknown_op
    pytest.param(Frame(j({"channels": ["hx"], "id": 1}), "unknown_op", id=1), id="op-missing"),
    pytest.param(Frame(j({"op": "SUBSCRIBE", "channels": ["hx"]}), "unknown_op"), id="op-upper-case"),
    pytest.param(Frame(j({"op": "publish ", "channel": "hx", "data": 1}), "unknown_op"), id="op-trailing-space"),
    pytest.param(Frame(j({"op": ["subscribe"], "channels": ["hx"]}), "unknown_op"), id="op-array"),
    pytest.param(Frame(j({"op": None, "id": "n"}), "unknown_op", id="n"), id="op-null"),
    pytest.param(Frame(j({"op": 1}), "unknown_op"), id="op-number"),
    # -- bad_channel
    pytest.param(Frame(j({"op": "subscribe", "channels": [""]}), "bad_channel"), id="channel-empty"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["x" * 129]}), "bad_channel"), id="channel-129-chars"),
    pytest.param(Frame(j({"op": "publish", "channel": "a b" * 70_000, "data": 1}), "bad_channel"),
                 id="channel-210000-chars"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx", "a b"], "id": 3}), "bad_channel", id=3),
                 id="channel-space-second"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["a/b"]}), "bad_channel"), id="channel-slash"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["é"]}), "bad_channel"), id="channel-non-ascii"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["news\n"]}), "bad_channel"), id="channel-newline"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ['a"b']}), "bad_channel"), id="channel-quote"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["@user:x"]}), "bad_channel"), id="channel-user-no-user"),
    pytest.param(Frame(j({"op": "subscribe", "channels": [42]}), "bad_channel"), id="channel-number"),
    pytest.param(Frame(j({"op": "subscribe", "channels": [None]}), "bad_channel"), id="channel-null"),
    pytest.param(Frame(j({"op": "subscribe", "channels": [["hx"]]}), "bad_channel"), id="channel-array"),
    pytest.param(Frame(j({"op": "unsubscribe", "channels": ["a*"]}), "bad_channel"), id="channel-glob-unsubscribe"),
    pytest.param(Frame(j({"op": "publish", "channel": "\u0000", "data": 1}), "bad_channel"), id="channel-nul"),
    pytest.param(Frame(j({"op": "publish", "data": 1, "id": "nc"}), "bad_channel", id="nc"),
                 id="channel-missing-publish"),
    pytest.param(Frame(j({"op": "publish", "channel": ["hx"], "data": 1}), "bad_channel"), id="channel-array-publish"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["@user:alice"]}), "bad_channel", path="/pubsub?user=bob"),
                 id="channel-other-users"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["@user:bob"], "since": {"@user:bob": 0}, "id": 9}),
                       reply={"op": "subscribed", "channels": ["@user:bob"], "id": 9}, path="/pubsub?user=bob"),
                 id="channel-own-user-ok"),
    pytest.param(Frame(j({"op": "subscribe", "channels": TOO_MANY}), "too_many_channels"), id="channel-101"),
    # -- bad_since
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": 1 << 64}}), "bad_since"),
                 id="since-2-64"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": 1 << 53}, "id": 2}), "bad_since",
                       id=2), id="since-2-53"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": -1}}), "bad_since"),
                 id="since-negative"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": True}}), "bad_since"),
                 id="since-bool"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": 1.0}}), "bad_since"),
                 id="since-float"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": "1"}}), "bad_since"),
                 id="since-string"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": None}}), "bad_since"),
                 id="since-null-value"),
    pytest.param(Frame(b'{"op":"subscribe","channels":["hx"],"since":{"hx":' + DIGITS_4300 + b"}}", "bad_since"),
                 id="since-4300-digits"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": [0]}), "bad_since"), id="since-array"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": 0}), "bad_since"), id="since-number"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"other": 0}}), "bad_since"),
                 id="since-other-channel"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"], "since": {"hx": 0, "@user:bob": 0}}), "bad_since",
                       path="/pubsub?user=bob"), id="since-user-channel-not-listed"),
    # -- binary frames
    pytest.param(Frame(j({"op": "subscribe", "channels": ["hx"]}), "binary_not_supported", opcode=2),
                 id="binary-json"),
    pytest.param(Frame(b"", "binary_not_supported", opcode=2), id="binary-empty"),
    # -- with a token (secured server): grants and odd users
    pytest.param(Frame(j({"op": "subscribe", "channels": ["other"], "id": "f"}), "forbidden", id="f",
                       server="secured", token=ALICE), id="token-forbidden-subscribe"),
    pytest.param(Frame(j({"op": "publish", "channel": "newsx", "data": 1}), "forbidden", server="secured",
                       token=ALICE), id="token-forbidden-publish"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["@user:bob"]}), "bad_channel", server="secured",
                       token=ALICE), id="token-other-user-channel"),
    pytest.param(Frame(publish(b"[" * 100_000, channel="news.1"), "too_deep", server="secured", token=ALICE),
                 id="token-deep-publish"),
    pytest.param(Frame(j({"op": "subscribe", "channels": ["@user:a+b=c|d@e"], "since": {"@user:a+b=c|d@e": 0}}),
                       reply={"op": "subscribed", "channels": ["@user:a+b=c|d@e"]}, server="secured",
                       token=claims(sub="a+b=c|d@e")), id="token-odd-user-own-channel-ok"),
]

# Text that is not UTF-8 never reaches the JSON layer: RFC 6455 8.1 says the endpoint MUST fail the
# connection (1007), which the frame layer does (README, Endpoints).  ``bad_json`` for "not UTF-8" is what an
# HTTP body gets (POSTS below) and what PubSub.on_message answers if handed such bytes (fuzz/app_layer.py).
CLOSES = [
    pytest.param(Closes(frame(1, publish(b'"\xff"')), 1007), id="close-invalid-utf8-text"),
    pytest.param(Closes(frame(1, publish(b'"\xed\xa0\x80"')), 1007), id="close-utf8-encoded-surrogate"),
    pytest.param(Closes(frame(1, b"[" * (MiB + 1)), 1009), id="close-over-max-message-size"),
    pytest.param(Closes(frame(1, j({"op": "subscribe", "channels": ["hx"]}), mask=False), 1002), id="close-unmasked"),
    pytest.param(Closes(frame(1, b"{}", rsv=4), 1002), id="close-rsv-bit"),
]

USERS_OK = {"status": "published", "channel": "@user:alice", "user": "alice"}
POSTS = [
    # bodies of POST /publish/{channel}
    pytest.param(Post("/publish/hx", b"not json", code="bad_json"), id="post-garbage"),
    pytest.param(Post("/publish/hx", b"\xff\xfe", code="bad_json"), id="post-not-utf8"),
    pytest.param(Post("/publish/hx", b'"\xed\xa0\x80"', code="bad_json"), id="post-utf8-encoded-surrogate"),
    pytest.param(Post("/publish/hx", b"", code="bad_json"), id="post-empty"),
    pytest.param(Post("/publish/hx", b"{} {}", code="bad_json"), id="post-two-documents"),
    pytest.param(Post("/publish/hx", b"NaN", code="bad_number"), id="post-nan"),
    pytest.param(Post("/publish/hx", b'{"a":[-Infinity]}', code="bad_number"), id="post-minus-infinity"),
    pytest.param(Post("/publish/hx", b"1e400", code="bad_number"), id="post-1e400"),
    pytest.param(Post("/publish/hx", DIGITS_4301, code="bad_number"), id="post-4301-digits"),
    pytest.param(Post("/publish/hx", b"[" * 100_000, code="too_deep"), id="post-100000-brackets"),
    pytest.param(Post("/publish/hx", deep('{"a":', 100_000), code="too_deep"), id="post-100000-objects"),
    pytest.param(Post("/publish/hx", deep("[", 33), code="too_deep"), id="post-33-levels"),
    pytest.param(Post("/publish/hx", b'"\\ud800"', code="bad_unicode"), id="post-lone-surrogate"),
    pytest.param(Post("/publish/hx", b'{"\\udc00":1}', code="bad_unicode"), id="post-surrogate-key"),
    pytest.param(Post("/publish/hx", b'["\\ude00\\ud83d"]', code="bad_unicode"), id="post-reversed-pair"),
    pytest.param(Post("/publish/hx", b'"\\ud83d\\ude00"', 200, doc={"status": "published", "channel": "hx"}),
                 id="post-pair-ok"),
    pytest.param(Post("/publish/hx", deep("[", 32), 200, doc={"status": "published", "channel": "hx"}),
                 id="post-32-levels-ok"),
    pytest.param(Post("/publish/hx", DIGITS_4300, 200, doc={"status": "published", "channel": "hx"}),
                 id="post-4300-digits-ok"),
    pytest.param(Post("/publish/hx", b"[" * (MiB + 1), 413), id="post-over-max-request-body"),
    # paths of POST /publish/{channel}
    pytest.param(Post("/publish/", code="bad_channel"), id="post-channel-empty"),
    pytest.param(Post("/publish/a%20b", code="bad_channel"), id="post-channel-space"),
    pytest.param(Post("/publish/%C3%A9", code="bad_channel"), id="post-channel-non-ascii"),
    pytest.param(Post("/publish/@user:alice", code="bad_channel"), id="post-channel-user"),
    pytest.param(Post("/publish/" + "x" * 129, code="bad_channel"), id="post-channel-129-chars"),
    pytest.param(Post("/publish/a*b", code="bad_channel"), id="post-channel-glob"),
    pytest.param(Post("/publish/a%22b", code="bad_channel"), id="post-channel-quote"),
    pytest.param(Post("http://x/publish/hx", b"[1]", 200, doc={"status": "published", "channel": "hx"}),
                 id="post-absolute-form-ok"),
    pytest.param(Post("/publish/hx?x=%ff&y", b"[1]", 200, doc={"status": "published", "channel": "hx"}),
                 id="post-odd-query-ok"),
    pytest.param(Post("/publish/" + "y" * 5000, code="bad_channel"), id="post-channel-5000-chars"),
    pytest.param(Post("/publish/hx/extra", status=404), id="post-channel-extra-segment"),
    pytest.param(Post("/publish", status=404), id="post-publish-no-slash"),
    pytest.param(Post("/publish/hx", status=405, method="GET"), id="get-publish-405"),
    pytest.param(Post("/publish/hx", status=405, method="PUT"), id="put-publish-405"),
    pytest.param(Post("/publish/hx", status=405, method="DELETE"), id="delete-publish-405"),
    # POST /users/{id}/messages
    pytest.param(Post("/users/alice/messages", b'{"t":1}', 200, doc=USERS_OK), id="users-ok"),
    pytest.param(Post("/users/auth0%7C5f7c/messages", b"1", 200,
                      doc={"status": "published", "channel": "@user:auth0|5f7c", "user": "auth0|5f7c"}),
                 id="users-percent-encoded-ok"),
    pytest.param(Post("/users/a+b=c@d.e:f_g-h/messages", b"1", 200,
                      doc={"status": "published", "channel": "@user:a+b=c@d.e:f_g-h", "user": "a+b=c@d.e:f_g-h"}),
                 id="users-odd-alphabet-ok"),
    pytest.param(Post("/users/%C3%A9/messages", code="bad_user"), id="users-non-ascii"),
    pytest.param(Post("/users/%ff/messages", code="bad_user"), id="users-not-utf8"),
    pytest.param(Post("/users/a%2Fb/messages", code="bad_user"), id="users-slash"),
    pytest.param(Post("/users/a%00b/messages", code="bad_user"), id="users-nul"),
    pytest.param(Post("/users/a%0Ab/messages", code="bad_user"), id="users-newline"),
    pytest.param(Post("/users/a%22b/messages", code="bad_user"), id="users-quote"),
    pytest.param(Post("/users/a%20b/messages", code="bad_user"), id="users-space"),
    pytest.param(Post("/users/%ZZ/messages", code="bad_user"), id="users-bad-percent"),
    pytest.param(Post("/users//messages", code="bad_user"), id="users-empty"),
    pytest.param(Post("/users/" + "u" * 129 + "/messages", code="bad_user"), id="users-129-chars"),
    pytest.param(Post("/users/alice/messages/", status=404), id="users-trailing-slash"),
    pytest.param(Post("/users/alice", status=404), id="users-no-messages"),
    pytest.param(Post("/users/alice/messages", status=405, method="GET"), id="users-get-405"),
    pytest.param(Post("/users/alice/messages", b"[" * 100_000, code="too_deep"), id="users-100000-brackets"),
    pytest.param(Post("/users/alice/messages", b'{"t":"\\udfff"}', code="bad_unicode"), id="users-lone-surrogate"),
    pytest.param(Post("/users/alice/messages", b"Infinity", code="bad_number"), id="users-infinity"),
    # with auth on, the backend endpoints need the backend credential
    pytest.param(Post("/publish/news.1", b"1", 401, server="secured"), id="secured-post-without-credential"),
    pytest.param(Post("/publish/news.1", b"1", 401, server="secured",
                      headers=(("Authorization", "Bearer " + "x" * 32),)), id="secured-post-wrong-credential"),
    pytest.param(Post("/publish/news.1", b"[" * 100_000, code="too_deep", server="secured",
                      headers=(("Authorization", f"Bearer {BACKEND}"),)), id="secured-post-deep"),
]

HEADS = [
    pytest.param(Head(b"GET /health HTTP/1.1\r\n\r\n", 400), id="head-no-host"),
    pytest.param(Head(b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400), id="head-two-hosts"),
    pytest.param(Head(b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", 400), id="head-bad-host"),
    pytest.param(Head(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
                 id="head-431"),
    pytest.param(Head(b"POST /publish/hx HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
                 id="head-transfer-encoding-gzip"),
    pytest.param(Head(b"POST /publish/hx HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Length: 2\r\n\r\n{}", 400), id="head-te-and-cl"),
    pytest.param(Head(b"POST /publish/hx HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 400),
                 id="head-bad-content-length"),
    pytest.param(Head(b"POST /publish/hx HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                      400), id="head-two-content-lengths"),
    pytest.param(Head(b"GET /p\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400), id="head-non-ascii-target"),
    pytest.param(Head(b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400), id="head-nul-in-value"),
    pytest.param(Head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400), id="head-tls-hello"),
    pytest.param(Head(b"GET /health?ready HTTP/1.1\r\nHost: x\r\n\r\n", 200), id="head-health-ready"),
    pytest.param(Head(b"GET /health?ready=%ff&%00 HTTP/1.1\r\nHost: x\r\n\r\n", 200), id="head-health-odd-query"),
]

UPGRADES = [
    # ?user= with --trust-user-param
    pytest.param(Upgrade("/pubsub?user=%C3%A9", 400, code="bad_user"), id="user-param-non-ascii"),
    pytest.param(Upgrade("/pubsub?user=a%22b", 400, code="bad_user"), id="user-param-quote"),
    pytest.param(Upgrade("/pubsub?user=a%00b", 400, code="bad_user"), id="user-param-nul"),
    pytest.param(Upgrade("/pubsub?user=a%0D%0Ab", 400, code="bad_user"), id="user-param-crlf"),
    pytest.param(Upgrade("/pubsub?user=" + "u" * 129, 400, code="bad_user"), id="user-param-129-chars"),
    pytest.param(Upgrade("/pubsub?user=a&user=b", 400, code="bad_user"), id="user-param-twice"),
    pytest.param(Upgrade("/pubsub?user=auth0%7Cabc", 101), id="user-param-odd-ok"),
    # token claims (secured server, HS256 with the right secret unless said otherwise)
    pytest.param(Upgrade(headers=bearer(claims(sub="é")), reason="invalid_claims", server="secured"),
                 id="sub-non-ascii"),
    pytest.param(Upgrade(headers=bearer(claims(sub='a"b')), reason="invalid_claims", server="secured"),
                 id="sub-quote"),
    pytest.param(Upgrade(headers=bearer(claims(sub="a\nb")), reason="invalid_claims", server="secured"),
                 id="sub-newline"),
    pytest.param(Upgrade(headers=bearer(claims(sub="a\x00b")), reason="invalid_claims", server="secured"),
                 id="sub-nul"),
    pytest.param(Upgrade(headers=bearer(claims(sub="a\x7fb")), reason="invalid_claims", server="secured"),
                 id="sub-del"),
    pytest.param(Upgrade(headers=bearer(claims(sub="\ud800")), reason="invalid_claims", server="secured"),
                 id="sub-lone-surrogate"),
    pytest.param(Upgrade(headers=bearer(claims(sub="s" * 129)), reason="invalid_claims", server="secured"),
                 id="sub-129-chars"),
    pytest.param(Upgrade(headers=bearer(claims(sub="")), reason="invalid_claims", server="secured"),
                 id="sub-empty"),
    pytest.param(Upgrade(headers=bearer(claims(sub="a b")), reason="invalid_claims", server="secured"),
                 id="sub-space"),
    pytest.param(Upgrade(headers=bearer(claims(sub=42)), reason="invalid_claims", server="secured"),
                 id="sub-number"),
    pytest.param(Upgrade(headers=bearer(claims(sub=["alice"])), reason="invalid_claims", server="secured"),
                 id="sub-array"),
    pytest.param(Upgrade(headers=bearer(claims(channels="news")), reason="invalid_claims", server="secured"),
                 id="channels-string"),
    pytest.param(Upgrade(headers=bearer(claims(channels=[1])), reason="invalid_claims", server="secured"),
                 id="channels-number"),
    pytest.param(Upgrade(headers=bearer(claims(channels=[None])), reason="invalid_claims", server="secured"),
                 id="channels-null-pattern"),
    pytest.param(Upgrade(headers=bearer(claims(channels=None)), reason="invalid_claims", server="secured"),
                 id="channels-null"),
    pytest.param(Upgrade(headers=bearer(claims(channels=["a b"])), reason="invalid_claims", server="secured"),
                 id="channels-space"),
    pytest.param(Upgrade(headers=bearer(claims(channels=["news.é"])), reason="invalid_claims", server="secured"),
                 id="channels-non-ascii"),
    pytest.param(Upgrade(headers=bearer(claims(channels=["[\ud800]"])), reason="invalid_claims", server="secured"),
                 id="channels-lone-surrogate"),
    pytest.param(Upgrade(headers=bearer(claims(channels=[""])), reason="invalid_claims", server="secured"),
                 id="channels-empty-pattern"),
    pytest.param(Upgrade(headers=bearer(claims(channels=["p" * 257])), reason="invalid_claims", server="secured"),
                 id="channels-257-chars"),
    pytest.param(Upgrade(headers=bearer(claims(channels=["a"] * 257)), reason="invalid_claims", server="secured"),
                 id="channels-257-patterns"),
    pytest.param(Upgrade(headers=bearer(claims(channels={"news": 1})), reason="invalid_claims", server="secured"),
                 id="channels-object"),
    pytest.param(Upgrade(headers=bearer(claims(exp=1 << 60)), reason="invalid_claims", server="secured"),
                 id="exp-2-60"),
    pytest.param(Upgrade(headers=bearer(claims(exp=1e300)), reason="invalid_claims", server="secured"),
                 id="exp-1e300"),
    pytest.param(Upgrade(headers=bearer(claims(exp=_DROP)), reason="invalid_claims", server="secured"),
                 id="exp-missing"),
    pytest.param(Upgrade(headers=bearer(claims(exp="soon")), reason="malformed", server="secured"),
                 id="exp-string"),
    pytest.param(Upgrade(headers=bearer(claims(exp=float("nan"))), reason="malformed", server="secured"),
                 id="exp-nan"),
    pytest.param(Upgrade(headers=bearer(claims(exp=float("inf"))), reason="malformed", server="secured"),
                 id="exp-infinity"),
    pytest.param(Upgrade(headers=bearer(claims(exp=-1)), reason="expired", server="secured"), id="exp-negative"),
    pytest.param(Upgrade(headers=bearer(signed('{"sub":"alice","exp":' + str(EXP) + ',"x":' + "[" * 5000 + "1"
                                               + "]" * 5000 + "}")), reason="malformed", server="secured"),
                 id="claims-5000-deep"),
    pytest.param(Upgrade(headers=bearer(signed(json.dumps({"exp": EXP}), header="[" * 3000 + "]" * 3000)),
                         reason="malformed", server="secured"), id="header-3000-deep"),
    pytest.param(Upgrade(headers=bearer(signed(json.dumps({"exp": EXP}), header="[]")), reason="malformed",
                         server="secured"), id="header-array"),
    pytest.param(Upgrade(headers=bearer(signed(json.dumps({"exp": EXP}), header='{"alg":"none"}')),
                         reason="bad_signature", server="secured"), id="header-alg-none"),
    pytest.param(Upgrade("/pubsub?token=" + "%ff" * 100, reason="malformed", server="secured"),
                 id="token-query-garbage"),
    pytest.param(Upgrade(headers=bearer(claims(sub="auth0|abc", channels=["news.*", "[!x]*", "a?"])), status=101,
                         server="secured"), id="token-odd-ok"),
]


# -- running one row -------------------------------------------------------------------------------------

AFTER = {w: next(f"after{i}" for i in range(1000) if owner_of(f"after{i}", 2) == w) for w in (0, 1)}


def still_usable(client: RawClient, token_channels: bool = False) -> None:
    """After any answer the connection serves a publish sequenced by either worker."""
    for worker, channel in AFTER.items():
        channel = f"news.{channel}" if token_channels else channel
        answer = request(client, {"op": "publish", "channel": channel, "data": worker, "id": f"after-{worker}"})
        assert answer["op"] == "published" and answer["id"] == f"after-{worker}", answer
        assert type(answer["seq"]) is int and answer["seq"] >= 1 and answer["channel"] == channel, answer


def matches(expected: dict, got: dict) -> bool:
    """Exactly ``expected``; a value ``int`` there stands for any integer."""
    return set(expected) == set(got) and all(
        (type(got[k]) is int) if v is int else got[k] == v for k, v in expected.items())


@pytest.mark.parametrize("case", FRAMES)
def test_pubsub_frame(arena: dict[str, Target], case: Frame) -> None:
    target = arena[case.server]
    headers = bearer(case.token) if case.token else ()
    client = pubsub_client(target.server.port, case.path, headers)
    try:
        if case.code is not None:
            target.refused[case.code] += 1
        client.send(frame(case.opcode, case.payload))
        answer = read_doc(client)
        if case.code is not None:
            assert answer["op"] == "error" and answer["code"] == case.code, answer
            assert type(answer["message"]) is str and answer["message"], answer
            assert set(answer) <= {"op", "code", "message", "id", "channel"}, answer
            assert answer.get("id", NO_ID) == case.id, answer
            assert type(answer.get("channel", "")) is str and len(answer.get("channel", "")) <= 128, answer
        else:
            assert matches(case.reply, answer), answer
        still_usable(client, token_channels=case.token is not None)
    finally:
        client.close()


@pytest.mark.parametrize("case", CLOSES)
def test_pubsub_close(arena: dict[str, Target], case: Closes) -> None:
    client = pubsub_client(arena["plain"].server.port)
    try:
        client.send(case.data)
        code, eof = client.read_close()
        assert (code, eof) == (case.code, True)
    finally:
        client.close()


def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    client = RawClient(port, timeout=TIMEOUT)
    try:
        client.send(data)
        return client.read_http_response()
    finally:
        client.close()


def http_body(body: bytes) -> dict:
    document = json.loads(body)
    assert type(document) is dict, body
    return document


@pytest.mark.parametrize("case", POSTS)
def test_http_publish(arena: dict[str, Target], case: Post) -> None:
    target = arena[case.server]
    if case.code is not None:
        target.refused[case.code] += 1
    head = (f"{case.method} {case.target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in case.headers))
    data = (head + f"Content-Length: {len(case.body)}\r\n\r\n").encode() + case.body if case.method != "GET" else (
        head + "\r\n").encode()
    status, _, body = exchange(target.server.port, data)
    assert status == case.status, (status, body[:300])
    document = http_body(body)
    if status == 200:
        assert {k: document.get(k) for k in case.doc} == case.doc, document
        assert type(document["seq"]) is int and document["seq"] >= 1, document
    else:
        assert type(document["error"]) is str and document["error"], document
        assert document.get("code") == case.code, document


@pytest.mark.parametrize("case", HEADS)
def test_request_head(arena: dict[str, Target], case: Head) -> None:
    status, _, body = exchange(arena["plain"].server.port, case.data)
    assert status == case.status, (status, body[:300])
    http_body(body)


@pytest.mark.parametrize("case", UPGRADES)
def test_upgrade(arena: dict[str, Target], case: Upgrade) -> None:
    target = arena[case.server]
    if case.code is not None:
        target.refused[case.code] += 1
    if case.reason is not None:
        target.auth[case.reason] += 1
    client = RawClient(target.server.port, timeout=TIMEOUT)
    try:
        client.send(upgrade_request(case.path, extra="".join(f"{k}: {v}\r\n" for k, v in case.headers)))
        status, headers, body = client.read_http_response()
        assert status == case.status, (status, body[:300])
        if status == 101:
            answer = request(client, {"op": "subscribe", "channels": ["news.1"], "id": "ok"})
            assert answer == {"op": "subscribed", "channels": ["news.1"], "id": "ok"}, answer
            return
        document = http_body(body)
        assert document.get("code") == case.code, document
        if status == 401:
            assert headers.get("www-authenticate") == "Bearer", headers
    finally:
        client.close()


def test_head_error_has_no_body(arena: dict[str, Target]) -> None:
    """RFC 9110 9.3.2: the answer to HEAD has no content, errors included (405 and 404 here)."""
    for target in (b"/publish/hx", b"/no/such/path"):
        client = RawClient(arena["plain"].server.port, timeout=TIMEOUT)
        try:
            client.send(b"HEAD " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            while b"\r\n\r\n" not in client.buf:
                assert client._fill(), client.buf
            head, _, rest = client.buf.partition(b"\r\n\r\n")
            while client._fill():
                pass
            rest = client.buf.partition(b"\r\n\r\n")[2]
            assert head.split(b" ")[1] in (b"404", b"405"), head
            assert rest == b"", f"HEAD {target.decode()}: the error answer carries content {rest!r}"
        finally:
            client.close()


# -- scenarios the table cannot express -------------------------------------------------------------------

def test_largest_since_is_answered_at_once_by_either_worker(arena: dict[str, Target]) -> None:
    """``since`` 2^53-1 is valid: a fresh channel answers ``gap`` ``unknown`` with ``first`` 1 at once,
    whichever worker owns the channel (the replay request then crosses the mesh), and no record is
    dropped as malformed on the way."""
    target = arena["plain"]
    names = {w: next(f"maxsince.{w}.{i}" for i in range(1000) if owner_of(f"maxsince.{w}.{i}", 2) == w)
             for w in (0, 1)}
    client = pubsub_client(target.server.port)
    try:
        channels = list(names.values())
        answer = request(client, {"op": "subscribe", "channels": channels,
                                  "since": dict.fromkeys(channels, MAX_SAFE)})
        assert answer == {"op": "subscribed", "channels": channels}, answer
        started = time.monotonic()
        gaps = {}
        client.sock.settimeout(3.0)
        while len(gaps) < 2:
            try:
                doc = read_doc(client)
            except TimeoutError:
                break
            assert doc["op"] == "gap", doc
            gaps[doc["channel"]] = doc
        waited = time.monotonic() - started
        for channel in channels:
            assert gaps.get(channel) == {"op": "gap", "channel": channel, "since": MAX_SAFE, "first": 1,
                                         "reason": "unknown"}, (channel, gaps, f"after {waited:.1f} s")
    finally:
        client.close()
    dropped = wait_for(lambda: counted(target.server.port), TIMEOUT)
    assert dropped[("dropped", "mesh_malformed")] == target.baseline[("dropped", "mesh_malformed")]


def test_a_refused_resume_of_the_user_channel_is_one_error_and_changes_nothing(arena: dict[str, Target]) -> None:
    """docs/protocol.md: "The whole request is refused if ... a limit would be passed; nothing changes then."
    A user connection holding 100 channels (its own and 99) asks to resume its own channel and add one:
    the answer is one ``too_many_channels`` error, not a ``subscribed`` naming the channel it did not get."""
    target = arena["plain"]
    client = pubsub_client(target.server.port, "/pubsub?user=bob")
    try:
        names = [f"cap{i}" for i in range(99)]
        assert request(client, {"op": "subscribe", "channels": names}) == {"op": "subscribed", "channels": names}
        target.refused["too_many_channels"] += 1
        client.send(frame(1, j({"op": "subscribe", "channels": ["@user:bob", "cap.extra"],
                                "since": {"@user:bob": 0}, "id": 7})))
        client.send(frame(1, j({"op": "unsubscribe", "channels": ["sentinel"], "id": "sentinel"})))
        answers = []
        while (doc := read_doc(client)).get("id") != "sentinel":
            answers.append(doc)
        assert [(a["op"], a.get("code")) for a in answers] == [("error", "too_many_channels")], answers
        assert answers[0]["id"] == 7, answers
        still_usable(client)
    finally:
        client.close()


def test_hostile_but_valid_values_are_delivered_intact(arena: dict[str, Target]) -> None:
    """What the checks let through reaches subscribers on both workers exactly as sent."""
    target = arena["plain"]
    nested: object = "x"
    for _ in range(31):  # with the request object around it: 32 levels, the limit
        nested = [nested]
    values = [
        "\U0001F600", "\\ud800", "\u0000\u001f\u2028\u2029", "é\"'<>&", {"": {"": [None]}}, -0.0, 1e308, 5e-324,
        10 ** 4299, -(10 ** 4299), MAX_SAFE, 1 << 64, nested, "x" * 100_000, {"\U0001F600": "\ufeff"},
    ]
    channel = next(f"intact{i}" for i in range(1000) if owner_of(f"intact{i}", 2) == 1)
    subscribers = []
    try:
        open_on_both_workers(target, lambda: pubsub_client(target.server.port), subscribers)
        for client in subscribers:
            answer = request(client, {"op": "subscribe", "channels": [channel], "since": {channel: 0}})
            assert answer["op"] == "subscribed", answer
        publisher = subscribers[0]
        for value in values:
            publisher.send(frame(1, json.dumps({"op": "publish", "channel": channel, "data": value}).encode()))
        for client in subscribers:
            got = [read_doc(client) for _ in values]
            assert [d["seq"] for d in got] == list(range(1, len(values) + 1)), got
            assert [d["data"] for d in got] == values
    finally:
        for client in subscribers:
            client.close()


def test_odd_user_ids_reach_every_connection_on_both_workers(arena: dict[str, Target]) -> None:
    """A token's odd-but-valid ``sub``: POST /users/{id}/messages (percent-encoded) reaches all its
    connections, wherever they landed and whoever owns its channel (through the mesh)."""
    target = arena["secured"]
    for user in ("a+b=c|d@e.f:g_h-i", "auth0|5f7c8ec7c33c6c004bbafe82", "@user:x", "=" * 128):
        token = claims(sub=user)
        connections: list[RawClient] = []
        try:
            open_on_both_workers(target, lambda token=token: pubsub_client(target.server.port, "/pubsub",
                                                                          bearer(token)), connections)
            quoted = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in user)
            status, _, body = exchange(target.server.port, (
                f"POST /users/{quoted}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BACKEND}\r\n"
                f"Content-Length: 10\r\n\r\n").encode() + b'{"to":"u"}')
            assert status == 200, body
            document = http_body(body)
            assert document["user"] == user and document["channel"] == f"@user:{user}", document
            for client in connections:
                doc = read_doc(client)
                assert doc == {"op": "message", "channel": f"@user:{user}", "seq": document["seq"],
                               "data": {"to": "u"}}, doc
        finally:
            for client in connections:
                client.close()


# -- after the table (keep these last in the file) ------------------------------------------------------------

def test_zz_no_worker_restarted_and_neighbours_are_served(arena: dict[str, Target]) -> None:
    for target in arena.values():
        server = target.server
        assert server.proc.poll() is None, server.output()[-3000:]
        assert server.worker_pids() == target.pids, f"{target.name}: a worker was replaced\n{server.output()[-3000:]}"
        now = counted(server.port)
        assert now[("restarts", "")] == 0, target.name
        for client in target.echoes:
            client.send(frame(1, b"still there?"))
            assert client.read_frame() == (1, True, b"still there?")
        headers = (("Authorization", f"Bearer {BACKEND}"),) if target.name == "secured" else ()
        status, _, body = exchange(server.port, (
            f"POST /publish/{NEIGHBOUR_CHANNEL} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + b'"last"')
        assert status == 200, body
        seq = http_body(body)["seq"]
        for client in target.subscribers:
            doc = read_doc(client)
            assert doc == {"op": "message", "channel": NEIGHBOUR_CHANNEL, "seq": seq, "data": "last"}, doc


def test_zz_no_internal_error(arena: dict[str, Target]) -> None:
    """A hostile input meets a checked refusal: no exception boundary was needed."""
    for target in arena.values():
        now = wait_for(lambda target=target: counted(target.server.port), TIMEOUT)
        errors = {k[1]: v for k, v in now.items() if k[0] == "internal" and v}
        assert not errors, f"{target.name}: internal errors {errors}\n{target.server.output()[-4000:]}"


def test_zz_every_refusal_is_counted_under_its_code(arena: dict[str, Target]) -> None:
    """``millionws_input_refused_total{code}`` and ``millionws_auth_failures_total{reason}`` moved by exactly
    the refusals of the rows that ran."""
    for target in arena.values():
        def deltas(target=target) -> tuple[dict, dict]:
            now = counted(target.server.port)
            diff = {k: now[k] - target.baseline.get(k, 0) for k in now}
            refused = {k[1]: v for k, v in diff.items() if k[0] == "refused" and v}
            auth = {k[1]: v for k, v in diff.items() if k[0] == "auth" and v}
            return refused, auth

        expected = ({k: float(v) for k, v in target.refused.items() if v},
                    {k: float(v) for k, v in target.auth.items() if v})
        try:
            wait_for(lambda deltas=deltas, expected=expected: deltas() == expected, 3.0)
        except AssertionError:
            refused, auth = deltas()
            missing = {k: (refused.get(k, 0), v) for k, v in expected[0].items() if refused.get(k, 0) != v}
            extra = {k: v for k, v in refused.items() if k not in expected[0]}
            auth_diff = {k: (auth.get(k, 0), expected[1].get(k, 0)) for k in auth.keys() | expected[1].keys()
                         if auth.get(k, 0) != expected[1].get(k, 0)}
            raise AssertionError(f"{target.name}: refused (counted, expected) {missing}, unexpected {extra}; "
                                 f"auth failures (counted, expected) {auth_diff}") from None
