"""Presence end to end: a real 2-worker server, real clients; events, counts and lists across the workers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect

from tests.conftest import wait_for
from tests.e2e.test_pubsub import open_on_both_workers, recv, request
from tests.e2e.test_routes import metrics, total

TIMEOUT = 15
RULES = "chat:* presence=on join-leave=on; room:* presence=on"


def server_with_presence(start_server, *args: str, workers: int = 2):
    return start_server("--channel-options", RULES, "--presence-interval", "0.2", *args, workers=workers)


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


async def member(server, user: str, channels: list[str], presence: bool):
    ws = await connect(server.url(f"/pubsub?user={user}"), compression=None, max_queue=None)
    reply = await request(ws, {"op": "subscribe", "channels": channels, "presence": presence})
    assert reply["op"] == "subscribed", reply
    return ws, reply


async def presence_until(ws, predicate, timeout: float = TIMEOUT) -> list[dict]:
    """Presence frames received until one satisfies ``predicate``."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        doc = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if doc["op"] != "presence":
            continue
        frames.append(doc)
        if predicate(doc):
            return frames


def test_joins_leaves_and_counts_reach_askers_on_both_workers(start_server):
    server = server_with_presence(start_server, "--trust-user-param")

    async def main():
        users = iter(range(1000))

        async def open_one():
            return (await member(server, f"u{next(users)}", ["chat:1", "news"], True))[0]

        askers = await open_on_both_workers(server, 4, open_one)
        n = len(askers)
        for ws in askers:  # every asker sees every member, whichever worker it is on
            await presence_until(ws, lambda d: d["count"] == n)
        late, reply = await member(server, "late", ["chat:1", "room:1"], False)
        assert reply["channels"] == ["chat:1", "room:1"] and "presence" not in reply
        for ws in askers:
            frames = await presence_until(ws, lambda d: d["count"] == n + 1)
            assert "late" in [j["user"] for f in frames for j in f.get("joins", [])], frames
        await late.close()
        for ws in askers:
            frames = await presence_until(ws, lambda d: d["count"] == n)
            assert "late" in [x["user"] for f in frames for x in f.get("leaves", [])], frames
        # a list from any worker holds every member, each with a client id unique across the workers
        listed = await request(askers[0], {"op": "presence_list", "channel": "chat:1", "limit": 1000, "id": 7})
        assert listed["op"] == "presence_list" and listed["id"] == 7 and listed["count"] == n
        assert sorted(m["user"] for m in listed["members"]) == sorted(f"u{i}" for i in range(n))
        assert len({m["client"] for m in listed["members"]}) == n and listed["truncated"] is False
        small = await request(askers[-1], {"op": "presence_list", "channel": "chat:1", "limit": 2})
        assert small["count"] == n and len(small["members"]) == 2 and small["truncated"] is True
        for ws in askers:
            await ws.close()

    asyncio.run(main())
    s = metrics(server.port)
    assert total(s, "millionws_presence_frames_total") > 0 and total(s, "millionws_presence_batches_total") > 0


def test_the_subscribed_reply_names_the_channels_with_events_and_refusals_have_codes(start_server):
    server = server_with_presence(start_server, workers=1)

    async def main():
        ws = await connect(server.url("/pubsub"), compression=None)
        reply = await request(ws, {"op": "subscribe", "channels": ["chat:1", "room:1", "news"], "presence": True})
        assert reply == {"op": "subscribed", "channels": ["chat:1", "room:1", "news"], "presence": ["chat:1"]}
        (frame,) = await presence_until(ws, lambda d: True)
        assert frame["count"] == 1 and frame["joins"][0]["user"] == "" and frame["leaves"] == []
        bad = await request(ws, {"op": "subscribe", "channels": ["chat:2"], "presence": "yes"})
        assert bad["code"] == "bad_request"
        for doc, code in (({"channel": "news"}, "presence_disabled"), ({"channel": "bad name"}, "bad_channel"),
                          ({"channel": "room:1", "limit": -1}, "bad_request"),
                          ({"channel": "room:1", "limit": 10001}, "bad_request"),
                          ({"channel": "room:1", "limit": 1.5}, "bad_request")):
            answer = await request(ws, {"op": "presence_list", **doc})
            assert answer["op"] == "error" and answer["code"] == code, (doc, answer)
        listed = await request(ws, {"op": "presence_list", "channel": "room:1"})
        assert listed["count"] == 1 and listed["members"][0]["user"] == ""
        await ws.close()

    asyncio.run(main())
    s = metrics(server.port)
    assert total(s, "millionws_input_refused_total", code="presence_disabled") == 1


def test_the_backend_endpoint_lists_members_of_every_worker(start_server):
    token = "b" * 20
    server = server_with_presence(start_server, "--trust-user-param", "--backend-token", token)

    async def main():
        users = iter(range(1000))

        async def open_one():
            return (await member(server, f"u{next(users)}", ["room:7"], False))[0]

        clients = await open_on_both_workers(server, 3, open_one)
        n = len(clients)
        status, body = await asyncio.to_thread(get, server.port, "/channels/room:7/presence?limit=1000", token)
        assert status == 200, body
        assert body["channel"] == "room:7" and body["count"] == n and body["partial"] is False
        assert sorted(m["user"] for m in body["members"]) == sorted(f"u{i}" for i in range(n))
        status, body = await asyncio.to_thread(get, server.port, "/channels/room:7/presence?limit=1", token)
        assert (status, body["count"], len(body["members"]), body["truncated"]) == (200, n, 1, True)
        for path, expected, code in (("/channels/room:7/presence", 401, None),
                                     ("/channels/news/presence", 404, "presence_disabled"),
                                     ("/channels/room:7/presence?limit=x", 400, "bad_request"),
                                     ("/channels/room:7/presence?limit=10001", 400, "bad_request"),
                                     ("/channels/bad%20name/presence", 400, "bad_channel"),
                                     ("/channels/room:7/other", 404, None)):
            status, body = await asyncio.to_thread(get, server.port, path, None if expected == 401 else token)
            assert status == expected and body.get("code") == code, (path, status, body)
        for ws in clients:
            await ws.close()
        status, body = await asyncio.to_thread(get, server.port, "/channels/room:7/presence", token)
        assert (status, body["count"], body["members"]) == (200, 0, [])  # closed connections left

    asyncio.run(main())


def test_a_join_storm_gives_each_asker_few_frames_with_the_count_alone(start_server):
    server = server_with_presence(start_server, "--presence-max-events", "5", "--presence-interval", "0.5", workers=1)

    async def main():
        asker = (await member(server, "", ["chat:9"], True))[0]
        await presence_until(asker, lambda d: d["count"] == 1)
        storm = [await connect(server.url("/pubsub"), compression=None) for _ in range(60)]
        for ws in storm:  # all the requests, then all the replies: a storm within an interval or two
            await ws.send(json.dumps({"op": "subscribe", "channels": ["chat:9"]}))
        for ws in storm:
            await recv(ws)
        frames = await presence_until(asker, lambda d: d["count"] == 61)
        assert len(frames) <= 4, frames  # coalesced: one per interval, not one per join
        assert any("joins" not in f for f in frames)  # past 5 changes: the count alone
        for ws in [asker, *storm]:
            await ws.close()

    asyncio.run(main())


def test_across_nodes_over_the_broker_counts_events_and_lists_meet(start_server, broker):
    from tests.e2e.test_bus import bus_up

    token = "b" * 20
    nodes = [start_server("--bus", broker.url, "--close-timeout", "2", "--channel-options", RULES,
                          "--presence-interval", "0.2", "--trust-user-param", "--backend-token", token, workers=2)
             for _ in range(2)]
    for server in nodes:
        wait_for(lambda server=server: bus_up(server), 20, what="bus up on every worker")

    async def main():
        users = iter(range(1000))
        askers = []
        for server in nodes:
            async def open_one(server=server):
                return (await member(server, f"u{next(users)}", ["chat:x"], True))[0]
            askers += await open_on_both_workers(server, 3, open_one)
        n = len(askers)
        for ws in askers:  # four workers on two nodes, each asker sees them all
            await presence_until(ws, lambda d: d["count"] == n)
        late, _ = await member(nodes[1], "late", ["chat:x"], False)
        for ws in askers:
            frames = await presence_until(ws, lambda d: d["count"] == n + 1)
            assert "late" in [j["user"] for f in frames for j in f.get("joins", [])], frames
        listed = await request(askers[0], {"op": "presence_list", "channel": "chat:x", "limit": 1000})
        assert listed["count"] == n + 1 and len({m["client"] for m in listed["members"]}) == n + 1
        status, body = await asyncio.to_thread(get, nodes[0].port, "/channels/chat:x/presence?limit=1000", token)
        assert status == 200 and body["count"] == n + 1 and body["partial"] is False, body
        await late.close()
        for ws in askers:
            await presence_until(ws, lambda d: d["count"] == n)
        for ws in askers:
            await ws.close()

    asyncio.run(main())
