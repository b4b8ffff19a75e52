"""Channels end to end: a real 2-worker server, real clients, fan-out across workers, replay, limits."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from benchmarks.wscodec import close_code
from millionws.pubsub.channels import owner_of
from tests.conftest import wait_for
from tests.e2e.test_routes import metrics, total
from tests.wsraw import RawClient, frame

TIMEOUT = 15


def post(port: int, path: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body if method == "POST" else None,
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def channel_owned_by(worker: int, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(1000) if owner_of(f"{prefix}{i}", 2) == worker)


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def request(ws, doc: dict) -> dict:
    await ws.send(json.dumps(doc))
    return await recv(ws)


async def subscribed(server, channels: list[str], since: dict | None = None, query: str = ""):
    ws = await connect(server.url("/pubsub" + query), compression=None, max_queue=None)
    doc = {"op": "subscribe", "channels": channels}
    if since is not None:
        doc["since"] = since
    reply = await request(ws, doc)
    assert reply == {"op": "subscribed", "channels": channels}, reply
    return ws


def connections_per_worker(server, expected: int) -> list[int]:
    """Wait until /stats counts ``expected`` WebSockets; return them per worker."""
    def counted():
        per = [w["connections"] for w in server.stats()["workers"]]
        return per if sum(per) == expected else None
    return wait_for(counted, TIMEOUT, what=f"{expected} connections in /stats")


async def open_on_both_workers(server, n: int, open_one, others: int = 0) -> list:
    """Open ``n`` connections, more if needed, until both workers hold some (SO_REUSEPORT hashes).

    ``others``: WebSockets already open."""
    clients = [await open_one() for _ in range(n)]
    # The kernel hashes each connection's 4-tuple onto a worker: with n = 2 and 5 rounds, all 10 on one
    # worker happens once in 500 calls, so once in a few runs of the suite (seen in CI); 12 rounds of at
    # least 2 make it one in 8 million.
    for _ in range(12):
        per = await asyncio.to_thread(connections_per_worker, server, len(clients) + others)
        if min(per) > 0:
            return clients
        clients += [await open_one() for _ in range(max(n, 2))]
    raise AssertionError(f"connections all landed on one worker: {per}")


async def messages(ws, channel: str, count: int) -> list[dict]:
    got = []
    while len(got) < count:
        doc = await recv(ws)
        assert doc["op"] == "message" and doc["channel"] == channel, doc
        got.append(doc)
    return got


def test_publish_by_websocket_and_http_reaches_both_workers_in_order_once(start_server):
    server = start_server()

    async def main():
        # since 0: exact from the first message, even on a worker the owner has not heard from yet.
        subs = await open_on_both_workers(server, 16, lambda: subscribed(server, ["news"], {"news": 0}))
        publisher = await connect(server.url("/pubsub"), compression=None)
        # Order is per publishing connection: one WebSocket, one keep-alive HTTP connection.
        backend = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        acked = []
        for i in range(30):
            await publisher.send(json.dumps({"op": "publish", "channel": "news", "data": {"ws": i}}))
            backend.request("POST", "/publish/news", json.dumps({"http": i}).encode())
            response = backend.getresponse()
            answer = json.loads(response.read())
            assert (response.status, answer["status"], answer["channel"]) == (200, "published", "news")
            acked.append(answer["seq"])
        assert acked == sorted(acked) and len(set(acked)) == 30  # each answer names its message's seq
        backend.close()
        await publisher.send(json.dumps({"op": "publish", "channel": "news", "data": "end", "id": 7}))
        assert await recv(publisher) == {"op": "published", "channel": "news", "seq": 61, "id": 7}
        for ws in subs:
            got = await messages(ws, "news", 61)
            assert [d["seq"] for d in got] == list(range(1, 62))  # strictly increasing, gap-free, once
            assert [d["data"]["ws"] for d in got if "ws" in d["data"]] == list(range(30))
            assert [d["data"]["http"] for d in got if "http" in d["data"]] == list(range(30))
            assert [d["data"] for d in got].count("end") == 1
        for ws in [*subs, publisher]:
            await ws.close()
        return len(subs)

    n = asyncio.run(main())
    # Each worker publishes its counters every 0.25 s: poll.
    def counted():
        s = metrics(server.port)
        return (total(s, "millionws_publishes_total") == 61 and total(s, "millionws_deliveries_total") >= 61 * n
                and all(total(s, "millionws_fanout_latency_seconds_count", worker=w) > 0 for w in ("0", "1")))

    wait_for(counted, TIMEOUT, what="publishes, deliveries and fan-out latency counted on both workers")


def test_since_replays_exactly_the_missed_then_live_on_either_owner(start_server):
    server = start_server()
    near, far = channel_owned_by(0, "r"), channel_owned_by(1, "r")  # one per owner

    async def main():
        publisher = await connect(server.url("/pubsub"), compression=None)

        async def publish(k: int):
            for channel in (near, far):
                await publisher.send(json.dumps({"op": "publish", "channel": channel, "data": k}))

        probe = await subscribed(server, [near, far], {near: 0, far: 0})
        for k in range(1, 12):
            await publish(k)
        # Accepted is not sequenced yet: wait until the owners hold 1..11 (a real client's since
        # is always a seq it received).
        seen = [(d["channel"], d["seq"]) for d in [await recv(probe) for _ in range(22)]]
        assert sorted(seen) == sorted([(near, k) for k in range(1, 12)] + [(far, k) for k in range(1, 12)])
        live = 11

        async def keep_publishing():
            nonlocal live
            while live < 60:
                live += 1
                await publish(live)
                await asyncio.sleep(0.005)  # pacing, so subscribers join mid-stream

        task = asyncio.create_task(keep_publishing())
        late = await open_on_both_workers(server, 8, lambda: subscribed(server, [near, far], {near: 4, far: 7}),
                                            others=2)
        await task
        await publish(61)
        for ws in late:
            got: dict[str, list[int]] = {near: [], far: []}
            while len(got[near]) + len(got[far]) < (61 - 4) + (61 - 7):
                doc = await recv(ws)
                assert doc["op"] == "message", doc
                got[doc["channel"]].append(doc["seq"])
                assert doc["data"] == doc["seq"]
            assert got[near] == list(range(5, 62))
            assert got[far] == list(range(8, 62))
        return len(late)

    n = asyncio.run(main())  # the probe's two since: 0 are hits too
    wait_for(lambda: total(metrics(server.port), "millionws_replay_hits_total") == 2 * n + 2, TIMEOUT,
             what="replay hits counted")


def test_since_older_than_the_buffer_gets_an_explicit_gap(start_server):
    server = start_server("--replay-max-messages", "3")
    channel = channel_owned_by(1, "g")

    async def main():
        probe = await subscribed(server, [channel], {channel: 0})
        for k in range(1, 11):
            await asyncio.to_thread(post, server.port, f"/publish/{channel}", str(k).encode())
        # Each answer comes once the message is sequenced; the probe seeing seq 10 shows the order too.
        assert [d["seq"] for d in await messages(probe, channel, 10)] == list(range(1, 11))
        subs = await open_on_both_workers(server, 4, lambda: subscribed(server, [channel], {channel: 2}), others=1)
        for ws in subs:
            assert await recv(ws) == {"op": "gap", "channel": channel, "since": 2, "first": 8, "reason": "expired"}
            assert [d["seq"] for d in await messages(ws, channel, 3)] == [8, 9, 10]
        ws = await subscribed(server, [channel], {channel: 50})
        assert await recv(ws) == {"op": "gap", "channel": channel, "since": 50, "first": 11, "reason": "unknown"}
        assert (await subscribed(server, [channel], {channel: 10})) is not None

    asyncio.run(main())
    wait_for(lambda: total(metrics(server.port), "millionws_replay_misses_total") >= 5, TIMEOUT,
             what="replay misses counted")


def test_replay_seconds_expires_messages(start_server):
    server = start_server("--replay-seconds", "0.3")

    async def main():
        await asyncio.to_thread(post, server.port, "/publish/t", b'"old"')

        async def gap_after_expiry():
            ws = await subscribed(server, ["t"], {"t": 0})
            doc = await recv(ws)
            await ws.close()
            if doc["op"] == "message":
                return None
            return doc

        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            doc = await gap_after_expiry()
            if doc is not None:
                assert doc == {"op": "gap", "channel": "t", "since": 0, "first": 2, "reason": "expired"}
                return
        raise AssertionError("message never expired")

    asyncio.run(main())


def test_user_messages_reach_every_connection_of_that_user_only(start_server):
    server = start_server("--trust-user-param")

    async def main():
        async def open_user(user: str):
            return await connect(server.url(f"/pubsub?user={user}"), compression=None)

        alice = await open_on_both_workers(server, 6, lambda: open_user("alice"))
        bob = await open_user("bob")
        await asyncio.to_thread(connections_per_worker, server, len(alice) + 1)
        # The user subscription is made at the upgrade; a round trip proves each connection is set up.
        for ws in [*alice, bob]:
            assert (await request(ws, {"op": "unsubscribe", "channels": ["none"]}))["op"] == "unsubscribed"
        status, doc = await asyncio.to_thread(post, server.port, "/users/alice/messages", b'{"hi":"alice"}')
        assert (status, doc) == (200, {"status": "published", "channel": "@user:alice", "seq": 1, "user": "alice",
                                       "stored": True, "online": True})
        await asyncio.to_thread(post, server.port, "/users/bob/messages", b'"for bob"')
        for ws in alice:
            assert await recv(ws) == {"op": "message", "channel": "@user:alice", "seq": 1, "data": {"hi": "alice"}}
        assert await recv(bob) == {"op": "message", "channel": "@user:bob", "seq": 1, "data": "for bob"}
        reply = await request(bob, {"op": "subscribe", "channels": ["@user:alice"]})
        assert reply["op"] == "error" and reply["code"] == "bad_channel"

    asyncio.run(main())


def test_user_param_needs_the_flag(start_server):
    server = start_server()

    async def main():
        with pytest.raises(InvalidStatus) as err:
            await connect(server.url("/pubsub?user=alice"))
        assert err.value.response.status_code == 403

    asyncio.run(main())


ERRORS = [
    ({"op": "dance"}, "unknown_op"),
    ({"channels": ["a"]}, "unknown_op"),
    ({"op": "subscribe", "channels": ["bad name"]}, "bad_channel"),
    ({"op": "subscribe", "channels": ["x" * 129]}, "bad_channel"),
    ({"op": "subscribe", "channels": []}, "bad_request"),
    ({"op": "subscribe", "channels": "news"}, "bad_request"),
    ({"op": "subscribe", "channels": ["a", "b", "c", "d"]}, "too_many_channels"),
    ({"op": "subscribe", "channels": ["a"], "since": {"a": -1}}, "bad_since"),
    ({"op": "subscribe", "channels": ["a"], "since": {"b": 1}}, "bad_since"),
    ({"op": "subscribe", "channels": ["a"], "since": [1]}, "bad_since"),
    ({"op": "unsubscribe", "channels": ["a/b"]}, "bad_channel"),
    ({"op": "publish", "channel": "a"}, "bad_request"),
    ({"op": "publish", "channel": "a b", "data": 1}, "bad_channel"),
    ({"op": "publish", "data": 1}, "bad_channel"),
]


def test_every_refusal_is_an_error_reply_and_the_connection_stays_usable(start_server):
    server = start_server("--max-channels-per-connection", "3", workers=1)

    async def main():
        ws = await connect(server.url("/pubsub"), compression=None)
        for doc, code in ERRORS:
            reply = await request(ws, {**doc, "id": "r1"})
            assert reply["op"] == "error" and reply["code"] == code and reply["id"] == "r1", (doc, reply)
            assert reply["message"]
        for raw, code in (("{nope", "bad_json"), ("[1]", "bad_request"), ('{"op":"publish","channel":"a",'
                                                                          '"data":NaN}', "bad_number")):
            await ws.send(raw)
            assert (await recv(ws))["code"] == code
        await ws.send(b'{"op":"subscribe","channels":["a"]}')
        reply = await recv(ws)
        assert reply["code"] == "binary_not_supported"
        assert await request(ws, {"op": "subscribe", "channels": ["a", "b", "c"]}) == {
            "op": "subscribed", "channels": ["a", "b", "c"]}
        assert (await request(ws, {"op": "subscribe", "channels": ["d"]}))["code"] == "too_many_channels"
        await ws.close()

    asyncio.run(main())


def test_max_subscribers_per_worker(start_server):
    server = start_server("--max-subscribers-per-worker", "2", workers=1)

    async def main():
        ws = await subscribed(server, ["a", "b"])
        other = await connect(server.url("/pubsub"), compression=None)
        assert (await request(other, {"op": "subscribe", "channels": ["c"]}))["code"] == "too_many_subscribers"
        await request(ws, {"op": "unsubscribe", "channels": ["a"]})
        assert (await request(other, {"op": "subscribe", "channels": ["c"]}))["op"] == "subscribed"

    asyncio.run(main())


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/publish/bad%20name", b"1", 400),
    ("POST", "/publish/ok", b"{not json", 400),
    ("POST", "/publish/ok", b"NaN", 400),
    ("POST", "/publish/ok", "\"\u00e9\"".encode("utf-16"), 400),
    ("GET", "/publish/ok", b"", 405),
    ("POST", "/users/a%20b/messages", b"1", 400),
    ("POST", "/users/alice/other", b"1", 404),
    ("POST", "/publish/a/b", b"1", 404),
])
def test_http_publish_refusals(server, method, path, body, status):
    assert post(server.port, path, body, method)[0] == status


def test_a_slow_consumer_delays_nobody_and_is_closed_1013(start_server):
    server = start_server("--max-pending-bytes", "262144", "--close-timeout", "20")
    # The slow socket must fill the kernel's buffers first (its send buffer autotunes to ~4 MB on
    # loopback) before the server holds bytes for it: 5 MB in all, in rounds of 128 kB that the
    # 100 readers take as they come, so that only the one that never reads falls behind.
    rounds, batch, size = 40, 8, 16000
    count = rounds * batch
    prefix = '{"op":"message","channel":"firehose","seq":'

    async def main():
        slow = RawClient(server.port)  # default buffers: a small window it never opens by reading
        slow.handshake("/pubsub")
        slow.send(frame(0x1, b'{"op":"subscribe","channels":["firehose"]}'))
        assert json.loads(slow.read_frame()[2])["op"] == "subscribed"
        fast = await open_on_both_workers(server, 50, lambda: subscribed(server, ["firehose"]), others=1)
        fast += [await subscribed(server, ["firehose"]) for _ in range(100 - len(fast))]
        publisher = await connect(server.url("/pubsub"), compression=None)
        seqs: list[list[int]] = [[] for _ in fast]

        async def take(i: int, ws) -> None:
            for _ in range(batch):  # the head names the seq: no need to parse 16 kB of JSON
                head = (await ws.recv())[:60]
                assert head.startswith(prefix), head
                seqs[i].append(int(head[len(prefix):].split(",", 1)[0]))

        loop = asyncio.get_running_loop()
        slowest_round = 0.0
        for _ in range(rounds):
            started = loop.time()
            for _ in range(batch):
                await publisher.send(json.dumps({"op": "publish", "channel": "firehose", "data": "x" * size}))
            await asyncio.wait_for(asyncio.gather(*(take(i, ws) for i, ws in enumerate(fast))), TIMEOUT)
            slowest_round = max(slowest_round, loop.time() - started)
        assert all(s == list(range(1, count + 1)) for s in seqs)
        return slow, len(fast), slowest_round

    slow, n, slowest_round = asyncio.run(main())
    assert n == 100
    assert slowest_round < 5, slowest_round  # 100 readers x 128 kB a round; nobody waited for the slow one
    wait_for(lambda: total(metrics(server.port), "millionws_slow_consumers_total") == 1, TIMEOUT,
             what="the slow consumer counted")
    # It reads at last: an in-order prefix of the stream, then Close 1013.
    slow.sock.settimeout(TIMEOUT)
    got = []
    while True:
        fr = slow.read_frame()
        assert fr is not None
        if fr[0] == 0x8:
            assert close_code(fr[2]) == 1013
            break
        got.append(json.loads(fr[2])["seq"])
    assert got == list(range(1, len(got) + 1)) and len(got) < count
    slow.close()  # our FIN: the server closes its side and counts the reason
    wait_for(lambda: total(metrics(server.port), "millionws_disconnections_total", reason="slow_consumer") == 1,
             TIMEOUT, what="disconnection counted as slow_consumer")
