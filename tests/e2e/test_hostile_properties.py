"""Hypothesis against live 2-worker servers: random JSON in every field of every request, each checked
against a model of the answer it must get.

* ``/pubsub`` frames: requests whose every field (``op``, ``id``, ``channels``, ``channel``, ``since``,
  ``data``, ``token``, extra keys) is drawn from all JSON types, with deep nesting, numbers beyond a double or of
  4301 digits, NaN, lone surrogates (keys too), long and odd strings; plus arbitrary JSON values, random
  text and bytes, binary frames, with or without a user (``?user=``).  The model predicts the answer: an
  error ``code`` (any of the JSON-level ones the document breaks, else the exact semantic one), with the
  request's ``id`` when it is valid, or the ``subscribed`` / ``unsubscribed`` / ``published`` reply, or
  silence (a publish without id), or Close 1007 (text that is not UTF-8).  A sentinel request after each
  one proves the connection still serves.
* HTTP: ``POST /publish/{c}`` and ``/users/{id}/messages`` with random path segments (percent escapes
  included), methods and bodies; the model predicts 200 / 400 + code / 404 / 405.
* JWT (a server with ``--auth-jwt-secret``): random ``sub``, ``channels``, ``exp`` and extra claims
  (deep, NaN, huge, surrogates); the model predicts 101 or 401; every 401 is counted under a reason.

After every example the neighbours (an echo connection on each worker, opened first) still echo; after
each test no worker restarted and no internal error was counted.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, free_port, wait_for
from tests.e2e.test_hostile import (
    Target,
    counted,
    exchange,
    open_on_both_workers,
    pubsub_client,
    read_doc,
    signed,
)
from tests.wsraw import RawClient, frame, upgrade_request

pytestmark = pytest.mark.e2e

SECRET = "hostile-properties-secret-0123456789"
BACKEND = "hostile-properties-backend-0123"
MAX_SAFE = (1 << 53) - 1
MAX_DEPTH = 32
_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def props(examples: int) -> settings:
    """Modest example counts (the file runs in well under a minute); no deadline (a live server answers)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=_CHECKS)


# -- the servers --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live() -> Iterator[Target]:
    server = Server(free_port(), 2, ["--trust-user-param", "--handshake-timeout", "3", "--close-timeout", "2"])
    yield from _target("live", server, ())


@pytest.fixture(scope="module")
def guarded() -> Iterator[Target]:
    server = Server(free_port(), 2, ["--auth-jwt-secret", SECRET, "--backend-token", BACKEND,
                                     "--handshake-timeout", "3", "--close-timeout", "2"])
    token = signed(json.dumps({"sub": "neighbour", "exp": int(time.time()) + 3600}), secret=SECRET)
    yield from _target("guarded", server, (("Authorization", f"Bearer {token}"),))


def _target(name: str, server: Server, headers: tuple[tuple[str, str], ...]) -> Iterator[Target]:
    target = Target(name, server)
    try:
        target.pids = server.worker_pids()
        open_on_both_workers(target, lambda: pubsub_client(server.port, "/echo", headers), target.echoes)
        target.baseline = counted(server.port)
        yield target
    finally:
        for client in target.echoes:
            client.close()
        server.stop()


def neighbours_echo(target: Target) -> None:
    for client in target.echoes:
        client.send(frame(1, b"ping?"))
        assert client.read_frame() == (1, True, b"ping?"), f"{target.name}: a neighbour stopped echoing"


def nothing_broke(target: Target) -> None:
    server = target.server
    assert server.proc.poll() is None, server.output()[-3000:]
    assert server.worker_pids() == target.pids, f"a worker was replaced\n{server.output()[-3000:]}"
    now = counted(server.port)
    assert now[("restarts", "")] == 0
    errors = {k[1]: v for k, v in now.items() if k[0] == "internal" and v}
    assert not errors, f"internal errors {errors}\n{server.output()[-4000:]}"
    neighbours_echo(target)


# -- JSON with everything in it ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """JSON text inserted as is; ``code``: the refusal it causes (None: valid, its value is ``value``)."""

    text: str
    code: str | None
    value: Any = None
    python_reads: bool = True  # Python's json (PyJWT's parser) takes it


RAWS = [
    Raw("1e400", "bad_number"), Raw("-1E+999", "bad_number"), Raw("NaN", "bad_number"), Raw("-Infinity", "bad_number"),
    Raw("9" * 4301, "bad_number", python_reads=False), Raw("-" + "1" * 5000, "bad_number", python_reads=False),
    Raw("[" * 40 + "0" + "]" * 40, "too_deep"), Raw("[" * 5000 + "]" * 5000, "too_deep", python_reads=False),
    Raw('{"a":' * 1200 + "1" + "}" * 1200, "too_deep", python_reads=False), Raw("[" * 1200 + "]" * 1200, "too_deep",
                                                                                python_reads=False),
    Raw("[" * 100_000 + "]" * 100_000, "too_deep", python_reads=False),
    Raw('"\\ud800"', "bad_unicode"), Raw('{"\\udfff":1}', "bad_unicode"), Raw('"\\udc00\\ud800"', "bad_unicode"),
    Raw("9" * 4300, None, int("9" * 4300)), Raw("1e308", None, 1e308), Raw("-0", None, 0), Raw("5e-324", None, 5e-324),
    Raw('"\\ud83d\\ude00"', None, "\U0001F600"), Raw('"\\u0000"', None, "\u0000"),
]

ODD_STRINGS = ["", "x" * 128, "x" * 129, "a b", "é", "\x00", "\n", '"', "\\", "@user:u1", "@user:u2", "\ud800",
               "\udc00", "\ud83d\ude00", "\ufeff", "a*", "news", "chat.42", "u1", "subscribe", "publish"]
TEXT = st.one_of(st.text(st.characters(codec=None), max_size=20), st.sampled_from(ODD_STRINGS),
                 st.text("abc.:_-@ ", min_size=1, max_size=5), st.text(max_size=300).map(lambda s: s * 3))
NUMBERS = st.one_of(st.integers(), st.sampled_from([0, -1, 1, MAX_SAFE, 1 << 53, 1 << 64, -(1 << 63), 10 ** 300]),
                    st.floats(), st.sampled_from([1.0, 0.5, -0.0, math.nan, math.inf, -math.inf]))
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.sampled_from(RAWS))


def nest(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = [value]
    return value


def json_values(leaves: st.SearchStrategy) -> st.SearchStrategy:
    def containers(inner: st.SearchStrategy) -> st.SearchStrategy:
        lists, objects = st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)
        return st.one_of(lists, objects, lists, objects, st.builds(nest, inner, st.integers(25, 40)))
    return st.recursive(leaves, containers, max_leaves=12)


JSON = json_values(LEAVES)
# Small enough for a token in a request head (--max-request-head 16 KiB): no raw piece over 3000 characters.
SMALL_JSON = json_values(st.one_of(
    st.none(), st.booleans(), NUMBERS, st.text(st.characters(codec=None), max_size=20), st.sampled_from(ODD_STRINGS),
    st.sampled_from([r for r in RAWS if len(r.text) <= 3000])))


class Shown:
    """A drawn case whose repr stays readable when hypothesis prints it (bodies and tokens can be huge)."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)

    def __repr__(self) -> str:
        return "Shown(" + ", ".join(_short(v) for v in self.values) + ")"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 600 else f"{text[:500]}...<{len(text)} chars>...{text[-80:]}"


def dump(value: Any) -> str:
    """JSON text: lone surrogates escaped (``\\udxxx``), NaN and Infinity as such, Raw pieces as they are."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return True
    return False


def joined(text: str) -> str:
    """The string the server reads: an escaped surrogate pair becomes one character."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16") if any(
        "\ud800" <= ch <= "\udfff" for ch in text) else text


def violations(value: Any, depth: int = 0) -> set[str]:
    """The JSON-level codes ``value`` (at nesting ``depth``) earns."""
    found: set[str] = set()
    if isinstance(value, Raw):
        if value.code:
            found.add(value.code)
    elif isinstance(value, float):
        if not math.isfinite(value):
            found.add("bad_number")
    elif isinstance(value, str):
        if lone_surrogate(value):
            found.add("bad_unicode")
    elif isinstance(value, (list, dict)):
        if depth + 1 > MAX_DEPTH:
            found.add("too_deep")
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for key, child in items:
            if key is not None and lone_surrogate(key):
                found.add("bad_unicode")
            found |= violations(child, depth + 1)
    return found


def server_view(value: Any) -> Any:
    """``value`` as the server parses it (only for documents without violations)."""
    if isinstance(value, Raw):
        return value.value
    if isinstance(value, str):
        return joined(value)
    if isinstance(value, dict):
        return {joined(k): server_view(v) for k, v in value.items()}
    if isinstance(value, list):
        return [server_view(v) for v in value]
    return value


# -- the model of /pubsub ------------------------------------------------------------------------------------------

CHANNEL = re.compile(r"[A-Za-z0-9._:-]{1,128}")
USER = re.compile(r"[A-Za-z0-9._:@+=|-]{1,128}")
JSON_CODES = {"bad_json", "bad_number", "too_deep", "bad_unicode"}


def safe_int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_SAFE


def channel_ok(value: Any) -> bool:
    return type(value) is str and CHANNEL.fullmatch(value) is not None


@dataclass(frozen=True)
class Expect:
    """What must come back: ``kind`` error (``codes``), subscribed, unsubscribed, published, silent, close."""

    kind: str
    codes: frozenset[str] = frozenset()
    id: Any = None  # the id the answer carries (None: none)
    channels: Any = None


def model(document: Any, user: str | None) -> Expect:
    """The answer to a parsed, valid JSON ``document`` on a fresh connection of ``user``."""
    if type(document) is not dict:
        return Expect("error", frozenset({"bad_request"}))
    rid = document.get("id")
    if rid is not None and not (safe_int(rid) or (type(rid) is str and len(rid) <= 128)):
        return Expect("error", frozenset({"bad_id"}))

    def error(code: str) -> Expect:
        return Expect("error", frozenset({code}), rid)

    own = f"@user:{user}" if user else None
    op = document.get("op")
    if op in ("subscribe", "unsubscribe") and type(op) is str:
        channels = document.get("channels")
        if type(channels) is not list or not channels:
            return error("bad_request")
        for channel in channels:
            if not channel_ok(channel) and (own is None or channel != own):
                return error("bad_channel")
        if op == "unsubscribe":
            return Expect("unsubscribed", id=rid, channels=channels)
        since = document.get("since")
        if since is not None:
            if type(since) is not dict:
                return error("bad_since")
            for channel, seq in since.items():
                if channel not in channels or not safe_int(seq):
                    return error("bad_since")
        if len(set(channels) - {own}) > 100:
            return error("too_many_channels")
        return Expect("subscribed", id=rid, channels=channels)
    if op == "publish" and type(op) is str:
        channel = document.get("channel")
        if not channel_ok(channel):
            return error("bad_channel")
        if "data" not in document:
            return error("bad_request")
        return Expect("published", id=rid, channels=channel) if rid is not None else Expect("silent")
    if op == "refresh" and type(op) is str:
        return error("bad_request")  # the server under test verifies no tokens: whatever "token" holds
    return error("unknown_op")


def expect_of(value: Any, user: str | None) -> Expect:
    bad = violations(value)
    if bad:
        return Expect("error", frozenset(bad))
    return model(server_view(value), user)


def expect_of_bytes(payload: bytes, user: str | None) -> Expect:
    """For text that did not come from a value: decode and parse it as the server would (stdlib json)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Expect("close", frozenset({"1007"}))

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=refuse)
    except RecursionError:
        return Expect("error", frozenset({"too_deep", "bad_json"}))
    except ValueError:
        return Expect("error", frozenset({"bad_json", "bad_number"}))
    return expect_of(value, user)


GOOD_CHANNELS = st.sampled_from(["news", "chat.42", "a", "b-c_d:e.f", "x" * 128, "@user:u1"])
SMALL = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=10), st.lists(st.integers(0, 3),
                  max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` five times in six: enough valid requests get through to be checked too."""
    return st.integers(0, 5).flatmap(lambda roll: bad if roll == 0 else good)


FIELDS = {
    "op": mostly(st.sampled_from(["subscribe", "unsubscribe", "publish", "refresh"]), JSON),
    "id": mostly(st.one_of(st.integers(0, MAX_SAFE), st.text(max_size=130)), JSON),
    "channels": mostly(st.lists(GOOD_CHANNELS, min_size=1, max_size=4),
                       st.one_of(st.lists(st.one_of(GOOD_CHANNELS, TEXT), min_size=1, max_size=5), JSON)),
    "channel": mostly(GOOD_CHANNELS, st.one_of(TEXT, JSON)),
    "since": mostly(st.dictionaries(GOOD_CHANNELS, st.one_of(st.integers(0, 5), st.just(MAX_SAFE)), max_size=2),
                    st.one_of(st.dictionaries(GOOD_CHANNELS, st.one_of(NUMBERS, JSON), max_size=3), JSON)),
    "data": mostly(SMALL, JSON),
    "token": mostly(st.text(max_size=40), JSON),
}

PRESENT = {"op": 19, "id": 10, "channels": 17, "channel": 17, "since": 8, "data": 17, "token": 5}  # in 20


@st.composite
def requests(draw: st.DrawFn) -> dict:
    document = {}
    for name, values in FIELDS.items():
        if draw(st.integers(0, 19)) < PRESENT[name]:
            document[name] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        document.update(draw(st.dictionaries(TEXT, JSON, max_size=2)))
    return document


@st.composite
def pubsub_cases(draw: st.DrawFn) -> Shown:
    user = draw(st.sampled_from([None, None, "u1"]))
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return Shown(2, draw(st.binary(max_size=50)), Expect("error", frozenset({"binary_not_supported"})), user)
    if kind == 1:
        payload = draw(st.binary(max_size=80))
        return Shown(1, payload, expect_of_bytes(payload, user), user)
    if kind == 2:
        payload = draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
        return Shown(1, payload, expect_of_bytes(payload, user), user)
    value = draw(JSON) if kind == 3 else draw(requests())
    return Shown(1, dump(value).encode(), expect_of(value, user), user)


# -- /pubsub --------------------------------------------------------------------------------------------------------

SENTINEL = {"op": "unsubscribe", "channels": ["sentinel"], "id": "sentinel"}
SENTINEL_REPLY = {"op": "unsubscribed", "channels": ["sentinel"], "id": "sentinel"}


def check_answers(expect: Expect, answers: list[dict]) -> None:
    if expect.kind == "silent":
        assert answers == [], answers
        return
    assert answers, "no answer"
    first, rest = answers[0], answers[1:]
    if expect.kind == "error":
        assert first["op"] == "error" and first["code"] in expect.codes, (first, sorted(expect.codes))
        assert type(first["message"]) is str and first["message"], first
        assert first.get("id") == expect.id, (first, expect.id)
    elif expect.kind == "subscribed":
        want = {"op": "subscribed", "channels": expect.channels}
        if expect.id is not None:
            want["id"] = expect.id
        assert first == want, (first, want)
        for doc in rest:  # replayed messages and gaps of what it subscribed to
            assert doc["op"] in ("message", "gap") and doc["channel"] in expect.channels, doc
        return
    elif expect.kind == "unsubscribed":
        want = {"op": "unsubscribed", "channels": expect.channels}
        if expect.id is not None:
            want["id"] = expect.id
        assert first == want, (first, want)
    elif expect.kind == "published":
        assert first["op"] == "published" and first["channel"] == expect.channels, first
        assert first["id"] == expect.id and type(first["seq"]) is int and first["seq"] >= 1, first
    assert rest == [], rest


@props(400)
@given(case=pubsub_cases())
def test_every_pubsub_frame_gets_the_answer_of_the_model(live: Target, case) -> None:
    opcode, payload, expect, user = case
    event(f"{expect.kind} {' '.join(sorted(expect.codes))}")
    client = pubsub_client(live.server.port, "/pubsub?user=u1" if user else "/pubsub")
    try:
        client.send(frame(opcode, payload))
        if expect.kind == "close":
            assert client.read_close() == (1007, True)
            return
        client.send(frame(1, json.dumps(SENTINEL).encode()))
        answers: list[dict] = []
        sentinel = False
        while not sentinel or (expect.kind == "published" and not any(a["op"] == "published" for a in answers)):
            doc = read_doc(client)
            if doc == SENTINEL_REPLY:
                sentinel = True
            else:
                answers.append(doc)
        check_answers(expect, answers)
    finally:
        client.close()
    neighbours_echo(live)


def test_pubsub_property_left_nothing_broken(live: Target) -> None:
    nothing_broke(live)


# -- HTTP ------------------------------------------------------------------------------------------------------------

SEGMENT_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "?#/%")
ESCAPES = st.integers(0, 255).map(lambda b: f"%{b:02X}")
GOOD_SEGMENTS = st.sampled_from(["news", "a", "x" * 128, "auth0|abc", "a+b=c@d.e", "auth0%7Cabc", "a%2Bb"])
SEGMENTS = st.one_of(
    GOOD_SEGMENTS, GOOD_SEGMENTS, GOOD_SEGMENTS, st.sampled_from(["x" * 129, "@user:u1", "%C3%A9", "%20", ""]),
    st.text(SEGMENT_CHARS, max_size=20),
    st.lists(st.one_of(st.text(SEGMENT_CHARS, min_size=1, max_size=3), ESCAPES), max_size=6).map("".join),
)


@st.composite
def http_cases(draw: st.DrawFn) -> Shown:
    method = draw(st.sampled_from(["POST"] * 12 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    form = draw(st.integers(0, 9))
    segment = draw(SEGMENTS)
    if form < 4:
        target = "/publish/" + segment.replace("%", "")
    elif form < 8:
        target = "/users/" + segment + "/messages"
    else:
        target = draw(st.sampled_from(["/publish", "/publish/a/b", "/users/a", "/users/a/messages/x",
                                       "/users//messages/", "/xx/" + segment.replace("%", "")]))
    if draw(st.integers(0, 3)):
        value = draw(mostly(SMALL, JSON))
        body = dump(value).encode()
        bad = violations(value)
    else:
        body = draw(st.binary(max_size=60))
        expect = expect_of_bytes(body, None)
        bad = {"bad_json"} if expect.kind == "close" else set(expect.codes & JSON_CODES)
    return Shown(method, target, body, http_model(method, target, bad))


def http_model(method: str, target: str, bad: set[str]) -> tuple[int, frozenset[str], dict]:
    parts = target.split("/")
    if parts[1] == "publish" and len(parts) == 3:
        if not channel_ok(parts[2]):
            return 400, frozenset({"bad_channel"}), {}
        doc = {"status": "published", "channel": parts[2]}
    elif parts[1] == "users" and len(parts) == 4 and parts[3] == "messages":
        try:
            user = unquote_to_bytes(parts[2]).decode("ascii")
        except UnicodeDecodeError:
            user = ""
        if USER.fullmatch(user) is None:
            return 400, frozenset({"bad_user"}), {}
        doc = {"status": "published", "channel": f"@user:{user}", "user": user}
    else:
        return 404, frozenset(), {}
    if method != "POST":
        return 405, frozenset(), {}
    if bad:
        return 400, frozenset(bad), {}
    return 200, frozenset(), doc


@props(300)
@given(case=http_cases())
def test_every_http_publish_gets_the_status_of_the_model(live: Target, case) -> None:
    method, target, body, (status, codes, doc) = case
    event(f"{status} {' '.join(sorted(codes))}")
    request = (f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    got, _, raw = exchange(live.server.port, request)
    answer = json.loads(raw)
    assert got == status, (got, answer, status, sorted(codes))
    if status == 200:
        assert {k: answer.get(k) for k in doc} == doc and type(answer["seq"]) is int, answer
    else:
        assert type(answer["error"]) is str, answer
        if codes:
            assert answer.get("code") in codes, (answer, sorted(codes))
    neighbours_echo(live)


def test_http_property_left_nothing_broken(live: Target) -> None:
    nothing_broke(live)


# -- JWT claims ------------------------------------------------------------------------------------------------------

_ABSENT = object()
PATTERN = re.compile(r"[A-Za-z0-9._:*?!\[\]-]{1,256}")
NOW = time.time()
SUBS = st.one_of(st.from_regex(USER, fullmatch=True), st.from_regex(USER, fullmatch=True), st.just(_ABSENT),
                 TEXT, SMALL_JSON)
PATTERNS = st.one_of(st.from_regex(PATTERN, fullmatch=True).filter(lambda p: len(p) <= 256), TEXT, SMALL_JSON)
CHANNELS = st.one_of(st.just(_ABSENT), st.lists(st.sampled_from(["news.*", "[!x]*", "a?", "*"]), max_size=3),
                     st.lists(st.from_regex(PATTERN, fullmatch=True), max_size=3), st.lists(PATTERNS, max_size=4),
                     st.just(["a"] * 257), SMALL_JSON)
GOOD_EXPS = st.one_of(st.sampled_from([NOW + 3600, int(NOW) + 3600]), st.integers(int(NOW) + 600, MAX_SAFE - 1),
                      st.floats(NOW + 600, MAX_SAFE - 1))
EXPS = st.one_of(GOOD_EXPS, GOOD_EXPS, st.just(_ABSENT),
                 st.sampled_from([NOW - 3600, 1 << 53, 1e300, -1, 0, math.nan, math.inf, "soon", str(int(NOW) + 3600),
                                  True, None]), SMALL_JSON)


def raws(value: Any) -> Iterator[Raw]:
    if isinstance(value, Raw):
        yield value
    elif isinstance(value, dict | list):
        for child in value.values() if isinstance(value, dict) else value:
            yield from raws(child)


def claims_ok(sub: Any, channels: Any, exp: Any, extra: Any) -> bool:
    """101 or 401: PyJWT reads the payload (Python's json), checks exp; identity_of checks the rest."""
    if not all(raw.python_reads for raw in raws(extra)):
        return False  # nested beyond the decoder's limit, or an integer literal Python refuses: malformed
    if exp is _ABSENT or type(exp) not in (int, float) or not math.isfinite(exp) or not NOW + 60 < exp < 1 << 53:
        return False
    if sub is not _ABSENT and not (type(sub) is str and not lone_surrogate(sub) and USER.fullmatch(sub)):
        return False
    if channels is _ABSENT:
        return True
    return type(channels) is list and len(channels) <= 256 and all(
        type(p) is str and not lone_surrogate(p) and PATTERN.fullmatch(p) for p in channels)


@st.composite
def token_cases(draw: st.DrawFn) -> Shown:
    def pick(good: st.SearchStrategy, bad: st.SearchStrategy) -> Any:
        return draw(good) if draw(st.integers(0, 9)) < 8 else draw(bad)

    sub = pick(st.one_of(st.from_regex(USER, fullmatch=True), st.just(_ABSENT)), SUBS)
    channels = pick(st.one_of(st.just(_ABSENT), st.lists(st.sampled_from(["news.*", "[!x]*", "a?", "*"]), max_size=3),
                              st.lists(st.from_regex(PATTERN, fullmatch=True), max_size=3)), CHANNELS)
    exp = pick(GOOD_EXPS, EXPS)
    extra = draw(st.dictionaries(st.sampled_from(["x", "role", "data"]), SMALL_JSON, max_size=2))
    claims = {k: v for k, v in (("sub", sub), ("channels", channels), ("exp", exp)) if v is not _ABSENT}
    claims.update(extra)
    ok = claims_ok(sub, channels, exp, extra)
    secret = SECRET if draw(st.integers(0, 9)) else "another-secret-of-enough-length"
    return Shown(signed(dump(claims), secret=secret), ok and secret == SECRET, claims)


@props(250)
@given(case=token_cases())
def test_every_token_gets_the_status_of_the_model(guarded: Target, case) -> None:
    token, ok, _claims = case
    event("101" if ok else "401")
    client = RawClient(guarded.server.port, timeout=5)
    try:
        client.send(upgrade_request("/pubsub", extra=f"Authorization: Bearer {token}\r\n"))
        status, headers, body = client.read_http_response()
        assert status == (101 if ok else 401), (status, body)
        if status == 101:
            client.send(frame(1, json.dumps(SENTINEL).encode()))
            assert read_doc(client) == SENTINEL_REPLY
        else:
            assert headers.get("www-authenticate") == "Bearer"
            guarded.auth["any"] += 1
    finally:
        client.close()
    neighbours_echo(guarded)


def test_token_property_counted_every_401_and_left_nothing_broken(guarded: Target) -> None:
    def failures() -> float:
        now = counted(guarded.server.port)
        return sum(v - guarded.baseline.get(k, 0) for k, v in now.items() if k[0] == "auth")

    wait_for(lambda: failures() == guarded.auth["any"], 3.0, what=f"{guarded.auth['any']} auth failures counted")
    nothing_broke(guarded)
