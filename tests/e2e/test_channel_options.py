"""--channel-options end to end: replay, who may publish and publish rates by namespace, on one node of two
workers and on two nodes sharing a broker (NATS JetStream and Redis)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from websockets.asyncio.client import connect

from tests.conftest import wait_for
from tests.e2e.test_bus import bus_up, node, publish_on_broker
from tests.e2e.test_pubsub import TIMEOUT, channel_owned_by, messages, open_on_both_workers, post, recv, subscribed
from tests.e2e.test_routes import metrics, total


@pytest.fixture
def broker(layouts_broker):
    """Each test here runs with NATS (16 shard streams, the default; and a stream per channel) and with Redis."""
    return layouts_broker

RULES = "chat:* replay-messages=3; ticker:* publish=backend; limited:* rate-limit-publishes=3"


async def publish_over_websocket(ws, channel: str, count: int) -> list[dict]:
    """``count`` publishes sent at once (each with an id), and their answers."""
    for i in range(count):
        await ws.send(json.dumps({"op": "publish", "channel": channel, "data": i, "id": i}))
    return [await recv(ws) for _ in range(count)]


async def check_replay(publish_to, subscribe_to, chat: str, news: str) -> None:
    """Six messages each; a since 0 gets the last 3 of chat:* (a gap first) and all 6 of the other."""
    for k in range(1, 7):
        for channel in (chat, news):
            status, answer = await asyncio.to_thread(post, publish_to.port, f"/publish/{channel}", str(k).encode())
            assert (status, answer["seq"]) == (200, k), answer
    subs = await open_on_both_workers(subscribe_to, 2, lambda: subscribed(subscribe_to, [chat, news],
                                                                           {chat: 0, news: 0}))
    for ws in subs:
        got = [await recv(ws) for _ in range(1 + 3 + 6)]
        assert [d for d in got if d["op"] == "gap"] == [{"op": "gap", "channel": chat, "since": 0, "first": 4,
                                                        "reason": "expired"}]
        assert [(d["seq"], d["data"]) for d in got if d.get("channel") == chat and d["op"] == "message"] == \
            [(4, 4), (5, 5), (6, 6)]
        assert [(d["seq"], d["data"]) for d in got if d.get("channel") == news] == [(k, k) for k in range(1, 7)]
        await ws.close()


async def check_publish_permission(publish_to, subscribe_to, broker=None) -> None:
    """A client cannot publish on ticker:*, a backend can (HTTP, and the broker itself with a bus)."""
    listener = await subscribed(subscribe_to, ["ticker:eurusd"], {"ticker:eurusd": 0})
    client = await connect(publish_to.url("/pubsub"), compression=None)
    refusal = await publish_over_websocket(client, "ticker:eurusd", 1)
    assert refusal == [{"op": "error", "code": "publish_forbidden", "channel": "ticker:eurusd", "id": 0,
                        "message": "ticker:* channels are published by backends only (publish=backend in "
                                   "--channel-options)"}]
    assert (await publish_over_websocket(client, "news", 1))[0]["op"] == "published"  # other namespaces may
    status, answer = await asyncio.to_thread(post, publish_to.port, "/publish/ticker:eurusd", b'{"bid":1.08}')
    first = answer["seq"]
    # A new channel starts at 1; on NATS shards (the default) at its shard stream's sequence (docs/protocol.md).
    sharded = broker is not None and broker.kind == "nats" and os.environ.get("MILLIONWS_BUS_SHARDS") != "0"
    assert status == 200 and (first == 1 or (sharded and first > 1))
    expected = [(first, {"bid": 1.08})]
    if broker is not None:
        await publish_on_broker(broker, "ticker:eurusd", [{"bid": 1.09}])
        expected.append((first + 1, {"bid": 1.09}))
    got = await messages(listener, "ticker:eurusd", len(expected))
    assert [(d["seq"], d["data"]) for d in got] == expected  # nothing of the refused publish
    for ws in (listener, client):
        await ws.close()


async def check_rates(server) -> None:
    """limited:* allows 3 publishes a second per channel (a burst of 3); news has no limit."""
    ws = await connect(server.url("/pubsub"), compression=None)
    answers = await publish_over_websocket(ws, "limited:x", 8)
    published = [a for a in answers if a["op"] == "published"]
    refused = [a for a in answers if a.get("code") == "rate_limited"]
    assert 3 <= len(published) <= 4 and len(published) + len(refused) == 8, answers  # 4: a refill meanwhile
    assert all(a["op"] == "published" for a in await publish_over_websocket(ws, "news", 30))
    await ws.close()
    wait_for(lambda: total(metrics(server.port), "millionws_rate_limited_total", kind="publishes") == len(refused),
             TIMEOUT, what="rate-limited publishes counted")


def test_namespaces_on_one_node_of_two_workers(start_server):
    server = start_server("--channel-options", RULES)
    chat, news = channel_owned_by(1, "chat:r"), channel_owned_by(0, "n")  # sequenced by each worker

    async def main():
        await check_replay(server, server, chat, news)
        await check_publish_permission(server, server)
        await check_rates(server)

    asyncio.run(main())
    wait_for(lambda: total(metrics(server.port), "millionws_input_refused_total", code="publish_forbidden") == 1,
             TIMEOUT, what="the refused publish counted")
    rules = server.stats()["channel_options"]["rules"]
    assert [(r["pattern"], r["replay_max_messages"], r["publish"], r["rate_limit_publishes"]) for r in rules] == [
        ("chat:*", 3, "clients", 0.0), ("ticker:*", 1000, "backend", 0.0), ("limited:*", 1000, "clients", 3.0)]


def test_namespaces_across_two_nodes(start_server, broker):
    a, b = (node(start_server, broker, "--channel-options", RULES) for _ in range(2))
    for server in (a, b):
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up on every worker")

    async def main():
        await check_replay(a, b, "chat:room", "news")  # the broker's stream keeps what the rule says
        await check_publish_permission(b, a, broker)
        await check_rates(b)

    asyncio.run(main())
