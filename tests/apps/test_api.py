"""The backend's API in process, on one worker: parsing of every endpoint, and what each command does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from millionws import metrics
from millionws.apps.apikit import integer, parse_query
from millionws.apps.pubsub import Session
from millionws.apps.routes import App
from millionws.protocol.http import HttpError
from tests.apps.test_apps import Conn, documents, host, request

REFUSED = metrics.REFUSED


def app(**settings: Any) -> App:
    made = App(host(**settings)[0], 10)
    made.start()
    return made


def call(target: App, path: str, body: bytes = b"", method: bytes = b"POST") -> tuple[int, dict]:
    try:
        response = target.handle(request(path.encode(), method), body, conn=Conn())
    except HttpError as exc:
        return exc.status, {"error": exc.message, "code": exc.code, "headers": dict(exc.headers)}
    assert response is not None  # one worker, no bus: every answer is known at once
    _head, _, payload = response.data.partition(b"\r\n\r\n")
    return response.status, json.loads(payload)


def user_connections(target: App, user: str, channels: list[str], n: int) -> list[Conn]:
    conns = []
    for _ in range(n):
        conn = Conn()
        session = Session(target.pubsub, user)
        session.on_open(conn)
        if channels:
            session.on_message(conn, True, json.dumps({"op": "subscribe", "channels": channels}).encode())
        conns.append(conn)
    return conns


# -- the query string ----------------------------------------------------------------------------------------

def test_parse_query_is_strict():
    stats = host()[0].stats
    spec = {"limit": integer(1, 10), "cursor": str}
    assert parse_query(stats, b"", spec) == {}
    assert parse_query(stats, b"limit=3&cursor=a%2Bb+c&", spec) == {"limit": 3, "cursor": "a+b+c"}  # + is a plus
    for raw in (b"limit=0", b"limit=11", b"limit=+3", b"limit=3.0", b"limit=%203", b"limit=0x1", b"nope=1",
                b"limit=1&limit=2", b"cursor=%ff", b"limit=" + b"1" * 17, b"x" * 2049):
        with pytest.raises(HttpError) as refused:
            parse_query(stats, raw, spec)
        assert (refused.value.status, refused.value.code) == (400, "bad_request"), raw
    assert stats.c[REFUSED["bad_request"]] == 11


@given(st.binary(max_size=200))
def test_any_query_string_is_parsed_or_refused_400(raw):
    stats = host()[0].stats
    try:
        params = parse_query(stats, raw, {"limit": integer(1, 10), "since": integer(0, 2 ** 53 - 1)})
    except HttpError as exc:
        assert (exc.status, exc.code) == (400, "bad_request")
        return
    assert set(params) <= {"limit", "since"} and all(type(v) is int for v in params.values())


@given(st.binary(max_size=200))
def test_any_body_of_a_command_is_answered_or_refused_never_a_crash(raw):
    target = app()
    for path in ("/users/alice/disconnect", "/users/alice/unsubscribe", "/broadcast"):
        status, doc = call(target, path, raw)
        assert status == 200 or (400 <= status < 500 and doc["code"]), (path, raw, doc)


# -- POST /users/{id}/disconnect ---------------------------------------------------------------------------

def test_disconnect_closes_every_connection_of_the_user_with_the_code_asked():
    target = app()
    alice = user_connections(target, "alice", [], 3)
    bob = user_connections(target, "bob", [], 1)
    assert call(target, "/users/alice/disconnect") == (200, {"user": "alice", "disconnected": 3, "partial": False})
    assert [conn.closed for conn in alice] == [(4500, "")] * 3 and bob[0].closed is None  # 4500: final
    body = json.dumps({"code": 4001, "reason": "come back later é"}).encode()
    assert call(target, "/users/bob/disconnect", body)[1]["disconnected"] == 1
    assert bob[0].closed == (4001, "come back later é")
    assert call(target, "/users/nobody/disconnect")[1]["disconnected"] == 0
    assert call(target, "/users/auth0%7C42/disconnect")[1]["user"] == "auth0|42"  # percent-encoded ids


@pytest.mark.parametrize("body, code", [
    (b'{"code": 999}', "bad_code"), (b'{"code": 1001}', "bad_code"), (b'{"code": 1006}', "bad_code"),
    (b'{"code": 2999}', "bad_code"), (b'{"code": 5000}', "bad_code"), (b'{"code": "4500"}', "bad_code"),
    (b'{"code": 4500.0}', "bad_code"), (b'{"code": true}', "bad_code"),
    (b'{"reason": "' + b"x" * 124 + b'"}', "bad_request"), (b'{"reason": "' + "é".encode() * 62 + b'"}', "bad_request"),
    (b'{"reason": 7}', "bad_request"), (b'{"why": 1}', "bad_request"), (b"[]", "bad_request"),
    (b"{", "bad_json"), (b'{"reason": "\\ud800"}', "bad_unicode"), (b"\xff", "bad_json"),
])
def test_disconnect_refuses_bad_bodies(body, code):
    target = app()
    conn = user_connections(target, "alice", [], 1)[0]
    status, doc = call(target, "/users/alice/disconnect", body)
    assert (status, doc["code"]) == (400, code), doc
    assert conn.closed is None


@pytest.mark.parametrize("code", [1000, 1008, 1011, 1012, 1013, 3000, 4000, 4499, 4999])
def test_disconnect_takes_the_codes_a_server_may_send(code):
    target = app()
    conn = user_connections(target, "alice", [], 1)[0]
    assert call(target, "/users/alice/disconnect", b'{"code": %d}' % code)[0] == 200
    assert conn.closed == (code, "")


@pytest.mark.parametrize("path, status, code", [
    ("/users/bad%20id/disconnect", 400, "bad_user"), ("/users//disconnect", 400, "bad_user"),
    ("/users/a/kick", 404, None), ("/users/a/b/disconnect", 404, None), ("/broadcastx", 404, None),
])
def test_user_paths_are_checked(path, status, code):
    got, doc = call(app(), path)
    assert (got, doc.get("code")) == (status, code)


def test_commands_are_post_only():
    target = app()
    for path in ("/users/a/disconnect", "/users/a/unsubscribe", "/broadcast"):
        status, doc = call(target, path, method=b"GET")
        assert (status, doc["headers"]["Allow"]) == (405, "POST"), path


# -- POST /users/{id}/unsubscribe -------------------------------------------------------------------------

def test_unsubscribe_takes_the_users_connections_out_and_tells_them():
    target = app()
    both = user_connections(target, "alice", ["news", "chat"], 2)
    news_only = user_connections(target, "alice", ["news"], 1)[0]
    neither = user_connections(target, "alice", ["other"], 1)[0]
    stranger = user_connections(target, "bob", ["chat"], 1)[0]
    for conn in (*both, news_only, neither, stranger):
        conn.sent.clear()
    body = json.dumps({"channels": ["chat", "chat", "missing"]}).encode()
    assert call(target, "/users/alice/unsubscribe", body) == (200, {"user": "alice", "unsubscribed": 2,
                                                                    "partial": False})
    for conn in both:
        assert documents(conn.sent) == [{"op": "unsubscribed", "channels": ["chat"], "reason": "server"}]
    assert news_only.sent == [] and neither.sent == [] and stranger.sent == []
    registry = target.pubsub.hub.registry
    assert registry.holders("chat") == [stranger]
    assert call(target, "/users/alice/unsubscribe", body)[1]["unsubscribed"] == 0  # nothing left to take


@pytest.mark.parametrize("body, code", [
    (b"{}", "bad_request"), (b'{"channels": []}', "bad_request"), (b'{"channels": "news"}', "bad_request"),
    (b'{"channels": ["bad name"]}', "bad_channel"), (b'{"channels": ["@user:alice"]}', "bad_channel"),
    (b'{"channels": [7]}', "bad_channel"), (b'{"channels": ["a"], "x": 1}', "bad_request"), (b"", "bad_json"),
    (json.dumps({"channels": [f"c{i}" for i in range(4)]}).encode(), "too_many_channels"),
])
def test_unsubscribe_refuses_bad_bodies(body, code):
    status, doc = call(app(api_max_channels=3), "/users/alice/unsubscribe", body)
    assert (status, doc["code"]) == (400, code), doc


# -- POST /broadcast ----------------------------------------------------------------------------------------

def test_broadcast_publishes_to_every_channel_and_answers_in_request_order():
    target = app()
    listener = Conn()
    target.pubsub.on_message(listener, True, b'{"op":"subscribe","channels":["b","a"]}')
    listener.sent.clear()
    target.pubsub.hub.publish("a", b"0", 0.0)  # a is at seq 1 already
    body = json.dumps({"channels": ["b", "a"], "data": {"x": [1]}}).encode()
    assert call(target, "/broadcast", body) == (200, {"results": [{"channel": "b", "seq": 1},
                                                                   {"channel": "a", "seq": 2}]})
    got = [(d["channel"], d["seq"], d["data"]) for d in documents(listener.sent)]
    assert got == [("a", 1, 0), ("b", 1, {"x": [1]}), ("a", 2, {"x": [1]})]


def test_broadcast_reports_each_channels_refusal_and_publishes_the_rest():
    target = app(rate_limit_publishes=1.0)
    assert call(target, "/publish/hot", b"1", method=b"POST")[0] == 200  # the channel's burst used up
    status, doc = call(target, "/broadcast", b'{"channels": ["cold", "hot"], "data": 1}')
    assert (status, doc) == (200, {"results": [{"channel": "cold", "seq": 1}, {"channel": "hot",
                                                                                "error": "rate_limited"}]})
    assert target.host.stats.c[REFUSED["rate_limited"]] == 1


def test_broadcast_data_may_be_as_deep_as_a_published_document():
    target = app(max_json_depth=3)
    assert call(target, "/broadcast", b'{"channels": ["c"], "data": [[[1]]]}')[0] == 200
    assert call(target, "/broadcast", b'{"channels": ["c"], "data": [[[[1]]]]}')[1]["code"] == "too_deep"


@pytest.mark.parametrize("body, code", [
    (b'{"channels": ["a"]}', "bad_request"), (b'{"channels": ["a", "a"], "data": 1}', "bad_request"),
    (b'{"channels": [], "data": 1}', "bad_request"), (b'{"channels": ["@user:x"], "data": 1}', "bad_channel"),
    (b'{"channels": ["a"], "data": 1, "ttl": 5}', "bad_request"), (b'{"channels": ["a"], "data": NaN}', "bad_number"),
    (json.dumps({"channels": [f"c{i}" for i in range(4)], "data": 1}).encode(), "too_many_channels"),
])
def test_broadcast_refuses_bad_bodies(body, code):
    target = app(api_max_channels=3)
    status, doc = call(target, "/broadcast", body)
    assert (status, doc["code"]) == (400, code), doc
    assert target.host.stats.c[metrics.F["publishes"]] == 0  # nothing published


# -- GET /channels, history on one worker ---------------------------------------------------------------------

def test_channels_and_history_on_one_worker_answer_at_once():
    target = app(trust_user_param=True)
    user_connections(target, "alice", ["news"], 2)
    status, doc = call(target, "/channels", method=b"GET")
    assert (status, doc) == (200, {"channels": [{"channel": "news", "subscribers": 2}], "next_cursor": None,
                                   "partial": False})
    assert call(target, "/channels?users=1&limit=1", method=b"GET")[1]["next_cursor"] == "@user:alice"
    target.pubsub.hub.publish("news", b'{"a":1}', 0.0)
    status, doc = call(target, "/channels/news/history?since=0", method=b"GET")
    assert doc["messages"] == [{"seq": 1, "data": {"a": 1}}] and doc["seq"] == 1
    status, doc = call(target, "/channels/news/history", method=b"POST")
    assert (status, doc["headers"]["Allow"]) == (405, "GET")
    status, doc = call(app(channel_options="news history=off"), "/channels/news/history", method=b"GET")
    assert (status, doc["code"]) == (403, "history_disabled")
