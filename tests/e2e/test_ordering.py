"""Acknowledged publishes keep their order (docs/protocol.md, Ordering), on one node of 2 workers.

A publisher that waits for each answer before sending the next must see its messages
delivered in that order, whichever worker each request lands on: the answer comes only
once the channel's sequencer assigned the seq, and carries it.
"""

from __future__ import annotations

import asyncio
import http.client
import json

from websockets.asyncio.client import connect

from tests.e2e.test_pubsub import channel_owned_by, messages, open_on_both_workers, recv, request, subscribed

COUNT = 300


def post_on_new_connection(port: int, path: str, body: bytes) -> tuple[int, dict]:
    """One request per TCP connection: SO_REUSEPORT spreads them over both workers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_sequential_http_publishes_from_any_worker_are_delivered_in_order(start_server):
    server = start_server()
    # The owner is worker 1: about half the requests land on worker 0 and travel through the mesh.
    channel = channel_owned_by(1, "ord")

    async def main():
        subs = await open_on_both_workers(server, 4, lambda: subscribed(server, [channel], {channel: 0}))
        acked = []
        for i in range(COUNT):
            status, answer = await asyncio.to_thread(post_on_new_connection, server.port, f"/publish/{channel}",
                                                     json.dumps({"i": i}).encode())
            assert status == 200 and answer["status"] == "published", answer
            acked.append(answer["seq"])
        assert acked == list(range(1, COUNT + 1))  # each answer names the seq of its own message
        for ws in subs:
            got = await messages(ws, channel, COUNT)
            assert [(m["seq"], m["data"]["i"]) for m in got] == [(s, i) for i, s in enumerate(acked)]

    asyncio.run(main())


def test_sequential_websocket_publishes_from_connections_on_both_workers_keep_their_order(start_server):
    server = start_server()
    channel = channel_owned_by(0, "wsord")

    async def main():
        probe = await subscribed(server, [channel], {channel: 0})
        publishers = await open_on_both_workers(
            server, 4, lambda: connect(server.url("/pubsub"), compression=None), others=1)
        for i in range(COUNT // 3):
            ws = publishers[i % len(publishers)]
            reply = await request(ws, {"op": "publish", "channel": channel, "data": i, "id": i})
            assert reply == {"op": "published", "channel": channel, "seq": i + 1, "id": i}, reply
        got = await messages(probe, channel, COUNT // 3)
        assert [m["data"] for m in got] == list(range(COUNT // 3))

    asyncio.run(main())


def test_user_resumes_own_channel_with_since(start_server):
    server = start_server("--trust-user-param")

    async def main():
        for k in range(1, 6):
            status, answer = await asyncio.to_thread(post_on_new_connection, server.port, "/users/carol/messages",
                                                     json.dumps(k).encode())
            # Nobody of carol's is connected: the answer says so, and that the message is stored for her.
            assert (status, answer["seq"], answer["online"], answer["stored"]) == (200, k, False, True), answer
        ws = await connect(server.url("/pubsub?user=carol"), compression=None)
        reply = await request(ws, {"op": "subscribe", "channels": ["@user:carol"], "since": {"@user:carol": 2},
                                   "id": 1})
        assert reply == {"op": "subscribed", "channels": ["@user:carol"], "id": 1}
        got = await messages(ws, "@user:carol", 3)
        assert [(m["seq"], m["data"]) for m in got] == [(3, 3), (4, 4), (5, 5)]
        status, answer = await asyncio.to_thread(post_on_new_connection, server.port, "/users/carol/messages", b"6")
        assert (status, answer["seq"], answer["online"]) == (200, 6, True)
        assert (await recv(ws))["seq"] == 6
        # Another user's channel stays out of reach, with or without since.
        reply = await request(ws, {"op": "subscribe", "channels": ["@user:dave"], "since": {"@user:dave": 0}})
        assert reply["op"] == "error" and reply["code"] == "bad_channel"

    asyncio.run(main())
