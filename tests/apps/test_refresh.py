"""``refresh`` on /pubsub (docs/protocol.md): a newer token replaces a connection's grants and expiry, through
the Host, with a fake server underneath (tests/apps/test_apps.py's)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from millionws import metrics
from millionws.apps.pubsub import PubSub, Session
from millionws.auth import Verifier

from .test_apps import Conn, documents, host

SECRET = "unit-secret-that-is-long-enough-32b"


def token(sub: str | None = "alice", channels: Any = ("news.*", "chat"), ttl: float | None = 300.0,
          secret: str = SECRET) -> str:
    claims: dict[str, Any] = {"channels": list(channels)}
    if sub is not None:
        claims["sub"] = sub
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, secret, algorithm="HS256")


def connection(sub: str | None = "alice", channels: Any = ("news.*", "chat"),
               **settings: Any) -> tuple[PubSub, Session, Conn]:
    verifier = Verifier(SECRET)
    pubsub = PubSub(host(**settings)[0], verifier)
    pubsub.start()
    identity = verifier.verify(token(sub, channels))
    session = Session(pubsub, identity.user, identity)
    conn = Conn()
    session.on_open(conn)
    return pubsub, session, conn


def ask(session: Any, conn: Conn, document: dict[str, Any]) -> list[dict]:
    """Every frame the request caused: what was sent through the Host, then the returned reply."""
    before = len(conn.sent)
    reply = session.on_message(conn, True, json.dumps(document).encode())
    return documents(conn.sent[before:] + ([reply] if reply else []))


def refused(pubsub: PubSub, code: str) -> int:
    return pubsub.c[metrics.REFUSED[code]]


def test_a_refresh_answers_with_the_new_expiry_and_moves_it_through_the_host():
    _pubsub, session, conn = connection()
    fresh = token(ttl=3600)
    exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
    assert ask(session, conn, {"op": "refresh", "token": fresh, "id": 7}) == [
        {"op": "refreshed", "expires": exp, "id": 7}]
    assert conn.expires == [exp] and session.identity.expires == exp
    assert ask(session, conn, {"op": "refresh", "token": token(ttl=60)}) == [{"op": "refreshed", "expires": exp - 3540}]


def test_grants_follow_the_newest_token_and_lost_channels_are_pushed_before_the_reply():
    pubsub, session, conn = connection(channels=["news.*", "chat"])
    assert ask(session, conn, {"op": "subscribe", "channels": ["news.a", "chat"], "id": 1})[0]["op"] == "subscribed"
    assert ask(session, conn, {"op": "subscribe", "channels": ["admin"]})[0]["code"] == "forbidden"
    docs = ask(session, conn, {"op": "refresh", "token": token(channels=["news.a", "admin"]), "id": "r"})
    assert docs[0] == {"op": "unsubscribed", "channels": ["chat"], "reason": "forbidden"}
    assert [d["op"] for d in docs] == ["unsubscribed", "refreshed"] and docs[1]["id"] == "r"
    assert set(pubsub.hub.channels_of(conn)) == {"@user:alice", "news.a"}  # the user's own channel needs no grant
    assert ask(session, conn, {"op": "subscribe", "channels": ["admin"]})[0]["op"] == "subscribed"
    assert ask(session, conn, {"op": "subscribe", "channels": ["chat"]})[0]["code"] == "forbidden"
    assert ask(session, conn, {"op": "publish", "channel": "news.b", "data": 1})[0]["code"] == "forbidden"
    # A message of the lost channel no longer reaches the connection.
    before = len(conn.sent)
    pubsub.hub.publish("chat", b"1", time.monotonic())
    pubsub.hub.publish("news.a", b"2", time.monotonic())
    assert [(d["channel"], d["data"]) for d in documents(conn.sent[before:])] == [("news.a", 2)]


def test_a_refresh_that_keeps_every_channel_pushes_nothing():
    _pubsub, session, conn = connection()
    ask(session, conn, {"op": "subscribe", "channels": ["news.a"]})
    assert [d["op"] for d in ask(session, conn, {"op": "refresh", "token": token()})] == ["refreshed"]


@pytest.mark.parametrize(("connected_as", "new_sub"), [("alice", "bob"), ("alice", None), (None, "alice")])
def test_a_token_of_another_user_is_forbidden_and_changes_nothing(connected_as, new_sub):
    pubsub, session, conn = connection(sub=connected_as)
    ask(session, conn, {"op": "subscribe", "channels": ["chat"]})
    identity = session.identity
    docs = ask(session, conn, {"op": "refresh", "token": token(sub=new_sub, channels=[]), "id": 3})
    assert [(d["op"], d["code"], d["id"]) for d in docs] == [("error", "forbidden", 3)]
    assert session.identity is identity and conn.expires == [] and "chat" in pubsub.hub.channels_of(conn)
    assert refused(pubsub, "forbidden") == 1


@pytest.mark.parametrize(("bad", "says"), [
    ("not.a.jwt", "malformed"),
    (token(ttl=-60), "expired"),
    (token(secret="another-secret-that-is-32-bytes!!"), "bad signature"),
    (token(ttl=None), "exp"),  # auth requires exp, as at the upgrade
    (token(sub="a b"), "sub must be"),  # claims checked where they enter, as at the upgrade
])
def test_a_token_that_fails_verification_is_bad_token_saying_why(bad, says):
    pubsub, session, conn = connection()
    identity = session.identity
    docs = ask(session, conn, {"op": "refresh", "token": bad, "id": 1})
    assert [(d["op"], d["code"]) for d in docs] == [("error", "bad_token")] and says in docs[0]["message"]
    assert session.identity is identity and conn.expires == [] and refused(pubsub, "bad_token") == 1


@pytest.mark.parametrize("document", [
    {"op": "refresh"},
    {"op": "refresh", "token": 42},
    {"op": "refresh", "token": ""},
    {"op": "refresh", "token": "x" * 1025},  # over --max-request-head, which bounds a token at the upgrade
])
def test_a_refresh_without_a_usable_token_string_is_bad_request(document):
    pubsub, session, conn = connection(max_request_head=1024)
    assert [d["code"] for d in ask(session, conn, document)] == ["bad_request"]
    assert conn.expires == [] and refused(pubsub, "bad_request") == 1


def test_a_refresh_on_a_server_or_connection_without_tokens_is_bad_request():
    unverified = PubSub(host()[0])  # no --auth-jwt-secret / --auth-jwks
    conn = Conn()
    docs = ask(Session(unverified, "alice"), conn, {"op": "refresh", "token": token()})
    assert docs[0]["code"] == "bad_request" and "verifies no tokens" in docs[0]["message"]
    pubsub, _session, conn = connection()
    docs = ask(pubsub, conn, {"op": "refresh", "token": token()})  # opened without a token (auth optional)
    assert docs[0]["code"] == "bad_request" and "without a token" in docs[0]["message"] and conn.expires == []


def test_an_unknown_op_names_refresh_among_the_known_ones():
    _pubsub, session, conn = connection()
    assert "refresh" in ask(session, conn, {"op": "renew"})[0]["message"]
