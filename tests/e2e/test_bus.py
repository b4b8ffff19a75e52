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


@pytest.fixture
def broker(layouts_broker):
    """Each test here runs with NATS (16 shard streams, the default; and a stream per channel) and with Redis."""
    return layouts_broker

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


def bus_down(server) -> bool:
    s = metrics(server.port)
    return all(total(s, "millionws_bus_up", worker=w) == 0 for w in ("0", "1"))


def post_new_connection(port: int, path: str, body: bytes) -> tuple[int, dict]:
    """One request per TCP connection: SO_REUSEPORT spreads them over the node's workers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_acknowledged_publishes_keep_their_order_across_nodes_and_workers(start_server, broker):
    a, b = node(start_server, broker), node(start_server, broker)
    for server in (a, b):
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up on every worker")
    count = 200

    async def main():
        subs = []
        for server in (a, b):
            subs += await open_on_both_workers(server, 4, lambda server=server: subscribed(server, ["ord"],
                                                                                             {"ord": 0}))
        acked = []
        for i in range(count):  # each sent after the previous one's answer, to alternating nodes and any worker
            server = (a, b)[i % 2]
            status, answer = await asyncio.to_thread(post_new_connection, server.port, "/publish/ord",
                                                     json.dumps(i).encode())
            assert status == 200 and answer["status"] == "published", answer
            acked.append(answer["seq"])
        assert acked == list(range(1, count + 1))
        for ws in subs:
            got = await messages(ws, "ord", count)
            assert [(d["seq"], d["data"]) for d in got] == [(s, i) for i, s in enumerate(acked)]

    asyncio.run(main())


def test_broker_killed_and_restarted_mid_stream(start_server, broker):
    """Down: publishes are refused at once (503 unavailable, never parked), the node stays alive but not
    ready; back: every acknowledged publish is delivered once, in order, on both nodes."""
    a, b = node(start_server, broker), node(start_server, broker)
    for server in (a, b):
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up on every worker")
    count = 120
    outcomes: dict[int, str] = {}
    refusals = []

    async def main():
        subs = [await subscribed(server, ["live"], {"live": 0}) for server in (a, b, a, b)]

        def publish_all():
            conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
            for k in range(1, count + 1):
                if k == 40:
                    broker.kill()
                    wait_for(lambda: bus_down(a), TIMEOUT, what="bus_up 0 on every worker")
                    status, body = http_get(a.port, "/health")  # alive: it serves its connections
                    assert status == 200 and json.loads(body)["bus"]["up"] is False
                    status, body = http_get(a.port, "/health?ready")  # but not ready: it cannot sequence
                    assert status == 503 and json.loads(body)["status"] == "not_ready"
                if k == 80:
                    broker.start()
                while True:  # what a backend does with 503 + Retry-After, except while the broker is away
                    conn.request("POST", "/publish/live", json.dumps(k).encode())
                    response = conn.getresponse()
                    answer = json.loads(response.read())
                    if response.status == 200:
                        outcomes[k] = "published"
                        break
                    assert response.status == 503 and response.getheader("Retry-After") == "1", answer
                    if answer["code"] == "publish_timeout":  # unknown outcome: it may still be delivered
                        outcomes[k] = "unknown"
                        break
                    assert answer["code"] == "unavailable"
                    refusals.append(k)
                    if k < 80:  # refused at once, not parked: give up on this one
                        outcomes[k] = "refused"
                        break
                    time.sleep(0.05)
            conn.close()

        await asyncio.to_thread(publish_all)
        assert refusals and min(refusals) >= 40  # refused only while the broker was away
        assert [k for k in range(40, 80) if outcomes[k] != "refused"] == []
        published = [k for k in range(1, count + 1) if outcomes[k] == "published"]
        for ws in subs:
            got = []
            while len([d for d in got if d["data"] in published]) < len(published):
                got += await messages(ws, "live", 1)
            assert [d["seq"] for d in got] == list(range(1, len(got) + 1))  # no gap, no duplicate
            data = [d["data"] for d in got]
            assert data == sorted(data) and len(set(data)) == len(data)  # in order, once
            assert set(published) <= set(data) <= {k for k, v in outcomes.items() if v != "refused"}
        for ws in subs:
            await ws.close()

    asyncio.run(main())
    for server in (a, b):
        assert server.proc.poll() is None
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up again")
        assert http_get(server.port, "/health?ready")[0] == 200
        s = metrics(server.port)
        assert all(total(s, "millionws_bus_reconnects_total", worker=w) >= 1 for w in ("0", "1"))
        assert total(s, "millionws_worker_restarts_total") == 0
