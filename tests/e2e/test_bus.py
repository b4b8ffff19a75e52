"""Across nodes: two servers (2 workers each) sharing a real broker, NATS JetStream and Redis.

Every test runs once per broker (the ``broker`` fixture of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest
from websockets.asyncio.client import connect

from tests.conftest import http_get, wait_for
from tests.e2e.test_pubsub import messages, open_on_both_workers, recv, subscribed
from tests.e2e.test_routes import metrics, total

TIMEOUT = 20


def node(start_server, broker, *args: str):
    return start_server("--bus", broker.url, "--close-timeout", "2", *args, workers=2)


def bus_up(server) -> bool:
    s = metrics(server.port)
    return all(total(s, "millionws_bus_up", worker=w) == 1 for w in ("0", "1"))


async def publish_on_broker(broker, channel: str, documents: list) -> None:
    """What a backend service does: publish on the broker, no WebSocket, no millionws API."""
    if broker.kind == "nats":
        import nats

        nc = await nats.connect(broker.url)
        js = nc.jetstream()
        for doc in documents:
            await js.publish(f"mws.in.{channel}", json.dumps(doc).encode())
        await nc.close()
    else:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(broker.url)
        for doc in documents:
            await r.fcall("mws_publish", 1, channel, json.dumps(doc))
        await r.aclose()


def test_websocket_http_and_broker_publishes_reach_both_nodes_in_order_once(start_server, broker):
    a, b = node(start_server, broker), node(start_server, broker)
    for server in (a, b):
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up on every worker")

    async def main():
        subs = []
        for server in (a, b):
            subs += await open_on_both_workers(server, 4, lambda server=server: subscribed(server, ["news"],
                                                                                             {"news": 0}))
        publisher = await connect(a.url("/pubsub"), compression=None)
        backend = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
        for i in range(20):
            await publisher.send(json.dumps({"op": "publish", "channel": "news", "data": {"ws": i}}))
            backend.request("POST", "/publish/news", json.dumps({"http": i}).encode())
            response = backend.getresponse()
            assert response.status == 200, response.read()
            response.read()
        backend.close()
        await publish_on_broker(broker, "news", [{"broker": i} for i in range(20)])
        for ws in subs:
            got = await messages(ws, "news", 60)
            assert [d["seq"] for d in got] == list(range(1, 61))  # one sequence on every node, once
            for source in ("ws", "http", "broker"):
                assert [d["data"][source] for d in got if source in d["data"]] == list(range(20))
        with pytest.raises(asyncio.TimeoutError):  # and nothing twice
            await asyncio.wait_for(subs[0].recv(), 0.5)
        for ws in [*subs, publisher]:
            await ws.close()

    asyncio.run(main())
    wait_for(lambda: total(metrics(a.port), "millionws_bus_published_total") == 40, TIMEOUT,
             what="publishes acknowledged by the broker")
    status, body = http_get(b.port, "/health")
    assert status == 200 and json.loads(body)["bus"]["up"] is True


def test_replay_with_since_across_nodes(start_server, broker):
    a, b = node(start_server, broker), node(start_server, broker)

    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)  # one connection: publishes keep their order

    def publish(k: int) -> None:
        conn.request("POST", "/publish/r", str(k).encode())
        response = conn.getresponse()
        assert response.status == 200
        response.read()

    async def main():
        for k in range(1, 21):
            await asyncio.to_thread(publish, k)
        probe = await subscribed(a, ["r"], {"r": 0})  # on A: all 20 sequenced
        assert [d["seq"] for d in await messages(probe, "r", 20)] == list(range(1, 21))
        late = await open_on_both_workers(b, 3, lambda: subscribed(b, ["r"], {"r": 5}))
        for k in range(21, 26):
            await asyncio.to_thread(publish, k)
        for ws in late:
            got = await messages(ws, "r", 20)
            assert [d["seq"] for d in got] == list(range(6, 26))
            assert [d["data"] for d in got] == list(range(6, 26))
        ahead = await subscribed(b, ["r"], {"r": 99})
        assert await recv(ahead) == {"op": "gap", "channel": "r", "since": 99, "first": 26, "reason": "unknown"}

    asyncio.run(main())
    conn.close()


def test_broker_killed_and_restarted_mid_stream(start_server, broker):
    a, b = node(start_server, broker), node(start_server, broker)
    for server in (a, b):
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up on every worker")
    count = 120

    async def main():
        subs = [await subscribed(server, ["live"], {"live": 0}) for server in (a, b, a, b)]

        def publish_all():
            conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
            for k in range(1, count + 1):
                if k == 40:
                    broker.kill()
                    # Down: the node still answers, healthy, and says the bus is down.
                    wait_for(lambda: not bus_up(a), TIMEOUT, what="bus_up 0")
                    status, body = http_get(a.port, "/health")
                    assert status == 200 and json.loads(body)["bus"]["up"] is False
                if k == 80:
                    broker.start()
                conn.request("POST", "/publish/live", json.dumps(k).encode())
                response = conn.getresponse()
                assert response.status == 200
                response.read()
                time.sleep(0.01)
            conn.close()

        await asyncio.to_thread(publish_all)
        for ws in subs:
            got = await messages(ws, "live", count)
            assert [d["seq"] for d in got] == list(range(1, count + 1))
            assert [d["data"] for d in got] == list(range(1, count + 1))
        for ws in subs:
            await ws.close()

    asyncio.run(main())
    for server in (a, b):
        assert server.proc.poll() is None
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up again")
        s = metrics(server.port)
        assert all(total(s, "millionws_bus_reconnects_total", worker=w) >= 1 for w in ("0", "1"))
