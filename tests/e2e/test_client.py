"""millionws.client against a real node that drains (SIGTERM) and restarts mid-stream, with a NATS bus."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import jwt
import pytest

from millionws.client import AuthFailed, Client, Disconnected, Gap, Message, ServerError, Unsubscribed, token_expiry
from tests.conftest import Server, free_port, wait_for
from tests.test_metrics_helpers import metric_total


def test_client_sees_every_message_once_in_order_across_a_drain_and_restart(nats_broker):
    port = free_port()
    args = ["--bus", nats_broker.url, "--grace", "3", "--close-timeout", "1"]
    servers = [Server(port, 2, args)]
    count = 150

    async def main():
        import nats

        nc = await nats.connect(nats_broker.url)
        js = nc.jetstream()
        async with Client(f"ws://127.0.0.1:{port}/pubsub", min_delay=0.05, max_delay=0.5) as client:
            await client.subscribe("feed", since=0)

            async def backend():
                # Publishes on the broker, not on the node the client uses. With the shard streams (the
                # default) a node numbers each one: while none listens (the new one is still connecting to
                # NATS) nobody answers and nothing is stored, so the backend sends again, under the same
                # Nats-Msg-Id, which stores a retry of an unanswered publish once.
                from nats.errors import NoRespondersError
                from nats.js.errors import NoStreamResponseError

                for k in range(1, count + 1):
                    for _ in range(200):
                        try:
                            await js.publish("mws.in.feed", json.dumps(k).encode(), headers={"Nats-Msg-Id": f"k{k}"})
                            break
                        except (NoRespondersError, NoStreamResponseError, TimeoutError):  # nobody answered
                            await asyncio.sleep(0.05)
                    else:
                        raise AssertionError(f"publish {k}: no node answered for 10 s")
                    if k == 50:
                        old = servers[-1]
                        old.signal(signal.SIGTERM)  # drain: every WebSocket gets 1001
                        await asyncio.to_thread(old.proc.wait, 15)
                        servers.append(await asyncio.to_thread(Server, port, 2, args))
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(backend())
            got = []
            while len(got) < count:
                event = await client.next(timeout=30)
                assert isinstance(event, Message), event
                got.append(event)
            await task
            first = got[0].seq  # 1, or on the shard streams (the default) the shard's next sequence
            assert [m.seq for m in got] == list(range(first, first + count))
            assert [m.data for m in got] == list(range(1, count + 1))
            assert client.reconnects >= 1 and client.last == {"feed": first + count - 1}
            # Still subscribed on the new node, still publishing through it.
            await client.publish("feed", "after")
            event = await client.next(timeout=10)
            assert event == Message("feed", first + count, "after")
        await nc.close()

    try:
        asyncio.run(main())
        assert servers[0].proc.returncode == 0  # the drain ended cleanly
    finally:
        for server in servers:
            server.stop()


def test_full_jitter_backoff_stays_within_its_bounds():
    from millionws.pubsub.brokers.base import backoff_delays

    delays = backoff_delays(0.1, 2.0)
    caps = [min(2.0, 0.1 * 2 ** n) for n in range(12)]
    values = [next(delays) for _ in caps]
    assert all(0 <= v <= cap for v, cap in zip(values, caps, strict=True))
    wait_for(lambda: True)


def test_client_reconnect_delay_is_full_jitter_under_its_cap():
    import random

    from millionws.client import MAX_DELAY, MIN_DELAY, backoff_delay

    random.seed(12)
    for attempt in (0, 1, 3, 7, 20, 5000):  # 5000: far past the cap, where 2**attempt would not fit a float
        cap = min(MAX_DELAY, MIN_DELAY * 2 ** min(attempt, 64))
        draws = [backoff_delay(attempt) for _ in range(400)]
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over the whole interval


# -- tokens: get_token, in-band refresh, 401s and terminal closes (issue 13) ----------------------------------------

SECRET = "client-e2e-secret-that-is-32-bytes"
ROTATED = "client-e2e-rotated-secret-of-32-b!"


def mint(ttl: float, secret: str = SECRET, channels: tuple[str, ...] = ("feed", "chat")) -> str:
    return jwt.encode({"sub": "alice", "channels": list(channels), "exp": time.time() + ttl}, secret,
                      algorithm="HS256")


async def until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` on the loop until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        await asyncio.sleep(0.01)


async def next_message(client: Client, timeout: float = 10) -> Message:
    while True:
        event = await client.next(timeout=timeout)
        if isinstance(event, Message):
            return event


def test_short_lived_tokens_are_refreshed_in_band_across_three_expiries_without_a_reconnect(start_server):
    server = start_server("--auth-jwt-secret", SECRET, workers=1)
    issued: list[str] = []

    def get_token() -> str:  # a plain function: the client takes sync and async ones
        issued.append(mint(2.0))
        return issued[-1]

    async def main():
        # refresh_fraction 0.5: each 2-second token is replaced 1 s after it came, so tokens 1, 2 and 3 expire
        # (at t0 + 2, 3, 4) while the connection stays; the server checks expiry once a second.
        async with Client(server.url("/pubsub"), get_token=get_token, refresh_fraction=0.5) as client:
            await client.subscribe("feed", since=0)
            third_expiry = token_expiry(issued[0]) + 2
            while time.time() < third_expiry + 1.2:
                await client.publish("feed", len(issued))
                assert (await next_message(client)).channel == "feed"
                await asyncio.sleep(0.2)
            assert client.reconnects == 0 and client.refreshes >= 3 and len(issued) == client.refreshes + 1
    asyncio.run(main())
    assert metric_total(server.port, "millionws_disconnections_total", reason="policy") == 0


def test_a_server_restart_reconnects_with_a_fresh_token_and_drops_channels_the_new_one_does_not_grant():
    port = free_port()
    secret = [SECRET]
    grants = [("feed", "chat")]
    calls = []

    async def get_token() -> str:  # async: the client awaits it
        calls.append(secret[0])
        return mint(60, secret[0], grants[0])

    servers = [Server(port, 1, ["--auth-jwt-secret", SECRET])]

    async def main():
        async with Client(f"ws://127.0.0.1:{port}/pubsub", get_token=get_token, min_delay=0.05,
                          max_delay=0.5) as client:
            await client.subscribe("feed", "chat", since=0)
            await client.publish("feed", 1)
            assert (await next_message(client)).data == 1
            # The restarted server takes only tokens of a rotated key, and the backend now grants less:
            # a client that reused its token would get 401 until AuthFailed.
            await asyncio.to_thread(servers[0].stop)
            secret[0], grants[0] = ROTATED, ("feed",)
            servers.append(await asyncio.to_thread(Server, port, 1, ["--auth-jwt-secret", ROTATED]))
            event = await client.next(timeout=15)
            while not isinstance(event, Unsubscribed):  # a Gap of feed may come first: the node lost its buffer
                assert isinstance(event, Gap), event
                event = await client.next(timeout=15)
            assert event == Unsubscribed(("chat",), "forbidden") and list(client.channels) == ["feed"]
            await client.publish("feed", 2)
            assert (await next_message(client)).data == 2  # feed was subscribed again, chat left out
            assert client.reconnects >= 1 and calls[-1] == ROTATED and client.auth_failures == 0
    try:
        asyncio.run(main())
    finally:
        for server in servers:
            server.stop()


def test_a_refresh_that_shrinks_the_grants_surfaces_unsubscribed(start_server):
    server = start_server("--auth-jwt-secret", SECRET, workers=1)
    grants = [("feed", "chat")]

    def get_token() -> str:
        token = mint(2.0, channels=grants[0])
        grants[0] = ("feed",)  # every later token grants less
        return token

    async def main():
        async with Client(server.url("/pubsub"), get_token=get_token, refresh_fraction=0.5) as client:
            await client.subscribe("feed", "chat", since=0)
            event = await client.next(timeout=5)
            assert event == Unsubscribed(("chat",), "forbidden")
            assert list(client.channels) == ["feed"] and client.refreshes == 1 and client.reconnects == 0
            with pytest.raises(ServerError) as refused:
                await client.publish("chat", 1)
            assert refused.value.code == "forbidden"
    asyncio.run(main())


def test_a_refused_refresh_reconnects_and_persistent_401s_end_iteration_with_auth_failed(start_server):
    server = start_server("--auth-jwt-secret", SECRET, workers=1)
    calls = []

    def get_token() -> str:
        calls.append(1)  # the first token is good; then the backend hands out tokens of a key the server lacks
        return mint(2.0) if len(calls) == 1 else mint(60.0, secret=ROTATED)

    async def main():
        client = Client(server.url("/pubsub"), get_token=get_token, refresh_fraction=0.5, max_auth_failures=3,
                        min_delay=0.01, max_delay=0.05)
        await client.start()
        await client.subscribe("feed", since=0)
        await client.publish("feed", "before")
        with pytest.raises(AuthFailed) as failed:
            async for event in client:
                assert event == Message("feed", 1, "before")
        assert failed.value.attempts == 3 and "signature" in failed.value.detail
        # One refresh (bad_token), then a reconnect per 401, each with a token asked for it.
        assert len(calls) == 1 + 1 + 3 and client.refreshes == 0
        with pytest.raises(AuthFailed):
            await client.publish("feed", "after")
        with pytest.raises(AuthFailed):
            await client.next(timeout=1)
        await client.close()
    asyncio.run(main())


def test_get_token_raising_surfaces():
    async def get_token() -> str:
        raise RuntimeError("token service down")

    async def main():
        client = Client(f"ws://127.0.0.1:{free_port()}/pubsub", get_token=get_token)
        with pytest.raises(RuntimeError, match="token service down"):
            await client.start()
        with pytest.raises(RuntimeError, match="token service down"):
            await client.next(timeout=1)
        await client.close()
    asyncio.run(main())


@pytest.mark.parametrize(("code", "reason", "again"), [
    (4500, "logged out", False),
    (4999, "", False),
    (1008, "rate limit exceeded", False),
    (4000, "try again", True),
    (1008, "token expired", True),
    (1012, "", True),
])
def test_a_close_the_server_means_as_final_ends_iteration_with_disconnected(code, reason, again):
    """A stand-in server closes the first connection with ``code`` (any code, not only those the backend's
    POST /users/{id}/disconnect may choose); later ones stay open."""
    from websockets.asyncio.server import serve

    async def main():
        connections = []

        async def handler(ws):
            connections.append(ws)
            if len(connections) == 1:
                await ws.close(code, reason)
            else:
                await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0) as stub:
            port = stub.sockets[0].getsockname()[1]
            client = Client(f"ws://127.0.0.1:{port}/pubsub", min_delay=0.01, max_delay=0.05)
            await client.start()
            if again:
                await until(lambda: len(connections) == 2 and client.connected)
                assert client.reconnects == 1
            else:
                with pytest.raises(Disconnected) as info:
                    await client.next(timeout=5)
                assert (info.value.code, info.value.reason) == (code, reason)
                # Raised once the client's loop is over: nothing can connect again.
                assert len(connections) == 1 and client.reconnects == 0 and not client.connected
            await client.close()
    asyncio.run(main())


# -- the user channel @user:<id>: what the backend sent while the client was away is replayed ---------------------

USER = "@user:alice"


@pytest.mark.parametrize("identity", ["token", "user-param"])
def test_user_messages_sent_while_disconnected_reach_the_client_once_in_order_after_it_reconnects(
        start_server, identity):
    """A backend posts to /users/alice/messages throughout; twice it closes alice's connection with 4000 (the
    application's "try again") and posts more while the client is held away (its get_token waits for the
    test), then more while it reconnects.  Without a since for @user:alice the messages of each absence are
    lost; delivered before the resumption's answer, a live one would have the replay dropped."""
    from tests.e2e.test_api import TOKEN, post

    who = ["--auth-jwt-secret", SECRET] if identity == "token" else ["--trust-user-param"]
    server = start_server(*who, "--backend-token", TOKEN, workers=2)
    url = server.url("/pubsub" if identity == "token" else "/pubsub?user=alice")

    async def main():
        held: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()  # reconnects waiting for the test
        calls = []

        async def get_token() -> str | None:
            calls.append(1)
            if len(calls) > 1:  # a reconnect: hold it until the backend has posted while the client is away
                release = asyncio.get_running_loop().create_future()
                held.put_nowait(release)
                await release
            return mint(600) if identity == "token" else None

        sent = 0

        async def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                sent += 1
                status, doc = await asyncio.to_thread(post, server.port, "/users/alice/messages", sent)
                assert (status, doc["channel"], doc["seq"], doc["stored"]) == (200, USER, sent, True), doc

        async with Client(url, get_token=get_token, min_delay=0.01, max_delay=0.05) as client:
            assert client.user_channel == USER  # from the token's sub, or the url's ?user=
            got: list[Message] = []

            async def receive(until: int) -> None:
                """Up to message ``until``: one lost shows as missing from ``got``, not as a timeout."""
                while not got or got[-1].data != until:
                    event = await client.next(timeout=10)
                    assert isinstance(event, Message), event
                    got.append(event)

            await send(10)
            await receive(10)  # a seq of the user channel is known: there is a position to resume from
            for _ in range(2):
                status, doc = await asyncio.to_thread(post, server.port, "/users/alice/disconnect",
                                                      {"code": 4000, "reason": "try again"})
                assert (status, doc["disconnected"]) == (200, 1), doc
                release = await asyncio.wait_for(held.get(), 10)  # the client is away, asking for a token
                assert not client.connected
                await send(5)  # only the replay can bring these
                release.set_result(None)
                await send(10)  # while it reconnects and resumes, and after
            await receive(sent)
            assert [(m.channel, m.seq, m.data) for m in got] == [(USER, k, k) for k in range(1, sent + 1)]
            assert client.reconnects == 2 and client.last == {USER: sent}
            await asyncio.sleep(0.3)  # no late duplicate either
            with pytest.raises(TimeoutError):
                await client.next(timeout=0.2)

    asyncio.run(main())
