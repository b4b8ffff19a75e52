"""millionws.client's pure rules (reading a token's exp and sub, when to refresh, which closes end the client),
and how it resumes the user channel, against a stand-in server that sends frames in an order a real one
shows only by chance (tests/e2e/test_client.py runs the client against the real server)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve

from millionws.client import (
    REFRESH_MARGIN,
    Client,
    Message,
    reconnects_after,
    refresh_time,
    token_expiry,
    token_user,
    url_user,
)


def _unsigned(payload: bytes) -> str:
    part = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{part}.c2ln"


def test_token_expiry_reads_exp_without_the_key():
    token = jwt.encode({"sub": "a", "exp": 1_900_000_000}, "a-secret-nobody-on-the-client-side-has", algorithm="HS256")
    assert token_expiry(token) == 1_900_000_000.0
    assert token_expiry(_unsigned(json.dumps({"exp": 12.5}).encode())) == 12.5
    # Payload lengths that need each amount of base64 padding.
    for filler in ("", "x", "xy", "xyz"):
        assert token_expiry(_unsigned(json.dumps({"f": filler, "exp": 7}).encode())) == 7.0


@pytest.mark.parametrize("token", [
    "", "opaque-api-key", "a.b", "a.b.c.d",
    _unsigned(b"not json"), _unsigned(b"[1]"), _unsigned(b'{"sub":"a"}'), _unsigned(b'{"exp":"soon"}'),
    _unsigned(b'{"exp":true}'), _unsigned(b"\xff\xfe"), "eyJ.!!!.c2ln",
])
def test_a_token_without_a_readable_exp_has_none(token):
    assert token_expiry(token) is None


def test_refresh_time_is_thirty_seconds_or_a_tenth_of_the_life_before_exp():
    assert refresh_time(3600.0, 0.0) == 3600.0 - REFRESH_MARGIN  # an hour-long token: 30 s before
    assert refresh_time(20.0, 0.0) == 18.0  # a 20-second token: 2 s before
    assert refresh_time(100.0, 90.0, margin=30.0, fraction=0.5) == 95.0
    assert refresh_time(10.0, 50.0) == 10.0  # received after its exp: at once (the caller's delay is 0)


@pytest.mark.parametrize(("code", "reason", "again"), [
    (None, "", True),  # no Close frame: the network
    (1000, "", True), (1001, "server going away", True), (1011, "keepalive ping timeout", True),
    (1012, "", True), (1013, "slow consumer", True), (1014, "", True),
    (1008, "token expired", True),
    (4000, "", True), (4499, "try later", True), (3000, "", True),
    (1008, "rate limit exceeded", False), (1008, "", False), (1002, "", False), (1003, "", False),
    (1007, "", False), (1009, "", False), (1010, "", False),
    (4500, "logged out", False), (4999, "banned", False),
])
def test_which_closes_reconnect(code, reason, again):
    assert reconnects_after(code, reason) is again


def test_token_user_is_the_sub_claim_and_url_user_the_single_user_parameter():
    assert token_user(jwt.encode({"sub": "auth0|42"}, "a-secret-nobody-on-the-client-side-has")) == "auth0|42"
    for payload in (b'{"exp":1}', b'{"sub":""}', b'{"sub":7}', b"[]", b"not json"):
        assert token_user(_unsigned(payload)) is None
    assert token_user("opaque-api-key") is None
    assert url_user("ws://h/pubsub?user=alice") == "alice"
    assert url_user("ws://h/pubsub?x=1&user=auth0%7C42") == "auth0|42"
    for url in ("ws://h/pubsub", "ws://h/pubsub?user=", "ws://h/pubsub?user=a&user=b"):
        assert url_user(url) is None


# -- the user channel across a reconnect, against a stand-in server -------------------------------------------------

USER = "@user:alice"


def subscribed(request: dict[str, Any]) -> str:
    return json.dumps({"op": "subscribed", "channels": request["channels"], "id": request["id"]})


def message(channel: str, seq: int) -> str:
    return json.dumps({"op": "message", "channel": channel, "seq": seq, "data": seq})


class StandIn:
    """A WebSocket server playing ``script(stand_in, ws, n)`` on its ``n``-th connection (from 0), keeping the
    requests the client sent (read through :meth:`recv`)."""

    def __init__(self, script: Callable[[StandIn, ServerConnection, int], Awaitable[None]]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.connections = 0

    async def recv(self, ws: ServerConnection) -> dict[str, Any]:
        self.requests.append(json.loads(await ws.recv()))
        return self.requests[-1]

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await self.script(self, ws, self.connections - 1)

    async def run(self, main: Callable[[str], Awaitable[None]]) -> None:
        """``main(url)`` while the stand-in serves at ``url``."""
        async with serve(self.handler, "127.0.0.1", 0) as server:
            await main(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/pubsub")


async def messages(client: Client, until: tuple[str, int]) -> list[tuple[str, int]]:
    """(channel, seq) of the messages delivered, up to ``until``, the last frame the stand-in sends (so a
    client that dropped some shows which, instead of timing out waiting for them)."""
    got: list[tuple[str, int]] = []
    while until not in got:
        event = await client.next(timeout=5)
        assert isinstance(event, Message), event
        got.append((event.channel, event.seq))
    return got


def _sub(user: str) -> str:
    # Unsigned: the stand-in verifies nothing; the client reads sub without the key.
    return _unsigned(json.dumps({"sub": user}).encode())


async def first_connection(stand_in: StandIn, ws: ServerConnection) -> None:
    """Answers the application's subscribe to news, brings @user:alice 1-2 and news 1, then closes 4000 (the
    application's "try again": the client reconnects)."""
    await ws.send(subscribed(await stand_in.recv(ws)))
    for frame in (message(USER, 1), message(USER, 2), message("news", 1)):
        await ws.send(frame)
    await ws.close(4000, "try again")


@pytest.mark.parametrize("identity", ["token", "header", "url", "message"])
def test_the_user_channel_is_resumed_with_since_and_its_live_messages_ahead_of_the_answer_are_ignored(identity):
    """On connection 2 the server's own subscription of the user channel delivers seq 5 *before* the answer
    to the resumption; then the replay brings 3, 4, 5, and the live 6 follows.  Delivering the early 5 would
    have dropped 3 and 4 as seen."""

    async def script(stand_in: StandIn, ws: ServerConnection, n: int) -> None:
        if n == 0:
            await first_connection(stand_in, ws)
            return
        request = await stand_in.recv(ws)  # the resubscription, sent as soon as the connection opened
        await ws.send(message(USER, 5))  # live, from the subscription the server made at the upgrade
        await ws.send(subscribed(request))
        for frame in (message(USER, 3), message(USER, 4), message(USER, 5), message(USER, 6), message("news", 2)):
            await ws.send(frame)
        await ws.wait_closed()

    stand_in = StandIn(script)
    got: list[tuple[str, int]] = []

    async def main(url: str) -> None:
        kwargs: dict[str, Any] = {"min_delay": 0.01, "max_delay": 0.05}
        if identity == "token":
            kwargs["get_token"] = lambda: _sub("alice")
        elif identity == "header":
            # Two Authorization headers (a proxy's, then the token): the bearer one names the user.
            kwargs["additional_headers"] = [("Authorization", "Basic cHJveHk6eA=="),
                                            ("Authorization", f"Bearer {_sub('alice')}")]
        elif identity == "url":
            url += "?user=alice"
        async with Client(url, **kwargs) as client:
            # Known at the upgrade from the token or the url; learned from its first message otherwise.
            assert client.user_channel == (None if identity == "message" else USER)
            await client.subscribe("news")
            got.extend(await messages(client, ("news", 2)))
            assert client.user_channel == USER and client.last == {USER: 6, "news": 2} and client.reconnects == 1

    asyncio.run(stand_in.run(main))
    assert got == [(USER, 1), (USER, 2), ("news", 1), (USER, 3), (USER, 4), (USER, 5), (USER, 6), ("news", 2)]
    assert stand_in.requests[1] == {"op": "subscribe", "channels": ["news", USER], "since": {"news": 1, USER: 2},
                                    "id": 0}


def test_the_user_channel_is_asked_again_alone_when_the_resubscription_is_refused_for_another_channel():
    """A refusal refuses the whole request (say news is now over a limit): the user channel's replay must
    not be lost with it.  Until the answer of that second request, its early live messages are ignored too."""

    async def script(stand_in: StandIn, ws: ServerConnection, n: int) -> None:
        if n == 0:
            await first_connection(stand_in, ws)
            return
        request = await stand_in.recv(ws)
        await ws.send(json.dumps({"op": "error", "code": "too_many_channels", "message": "no", "id": request["id"]}))
        alone = await stand_in.recv(ws)
        await ws.send(message(USER, 4))  # live, ahead of the answer
        await ws.send(subscribed(alone))
        for seq in (3, 4, 5):
            await ws.send(message(USER, seq))
        await ws.wait_closed()

    stand_in = StandIn(script)
    got: list[tuple[str, int]] = []

    async def main(url: str) -> None:
        async with Client(url, get_token=lambda: _sub("alice"), min_delay=0.01, max_delay=0.05) as client:
            await client.subscribe("news")
            got.extend(await messages(client, (USER, 5)))

    asyncio.run(stand_in.run(main))
    assert got == [(USER, 1), (USER, 2), ("news", 1), (USER, 3), (USER, 4), (USER, 5)]
    assert stand_in.requests[2] == {"op": "subscribe", "channels": [USER], "since": {USER: 2}, "id": 0}


def test_a_token_for_another_user_forgets_the_old_user_channel():
    """Naming alice's channel on bob's connection would have the whole resubscription refused (bad_channel)."""
    tokens = iter([_sub("alice"), _sub("bob")])

    async def script(stand_in: StandIn, ws: ServerConnection, n: int) -> None:
        if n == 0:
            await first_connection(stand_in, ws)
            return
        await ws.send(subscribed(await stand_in.recv(ws)))
        await ws.send(message("news", 2))
        await ws.wait_closed()

    stand_in = StandIn(script)

    async def main(url: str) -> None:
        async with Client(url, get_token=lambda: next(tokens), min_delay=0.01, max_delay=0.05) as client:
            await client.subscribe("news")
            assert await messages(client, ("news", 2)) == [(USER, 1), (USER, 2), ("news", 1), ("news", 2)]
            assert client.user_channel == "@user:bob" and client.last == {"news": 2}

    asyncio.run(stand_in.run(main))
    assert stand_in.requests[1] == {"op": "subscribe", "channels": ["news"], "since": {"news": 1}, "id": 0}
