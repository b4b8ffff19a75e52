"""The backend's API (docs/api.md) end to end: 2 workers of one node, and 2 nodes of 2 workers on a broker.

Each endpoint's answer merges every worker's part, so every test puts connections on both workers (and
both nodes) and checks the sum, then what hostile input gets."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import time

import pytest
from websockets.asyncio.client import connect

from millionws.pubsub.channels import owner_of
from tests.conftest import wait_for
from tests.e2e.test_bus import bus_up
from tests.e2e.test_pubsub import channel_owned_by, open_on_both_workers, subscribed
from tests.e2e.test_routes import metrics, total


@pytest.fixture
def broker(layouts_broker):
    """Each test here runs with NATS (16 shard streams, the default; and a stream per channel) and with Redis."""
    return layouts_broker

TIMEOUT = 20
TOKEN = "backend-credential-0123456789"


def call(port: int, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         timeout: float = 10.0) -> tuple[int, dict, dict]:
    """One request on a connection of its own (SO_REUSEPORT spreads them over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}, dict(response.getheaders())
    finally:
        conn.close()


def get(port: int, path: str, **kwargs) -> tuple[int, dict]:
    status, doc, _ = call(port, "GET", path, **kwargs)
    return status, doc


def api_node(start_server, *args: str, workers: int = 2):
    return start_server("--backend-token", TOKEN, "--close-timeout", "2", *args, workers=workers)


def bus_node(start_server, broker, *args: str, announce: float = 0.5):
    return api_node(start_server, "--bus", broker.url, "--control-announce-interval", str(announce), *args)


def wait_bus_up(*servers) -> None:
    for server in servers:
        wait_for(lambda server=server: bus_up(server), TIMEOUT, what="bus up on every worker")


def counts(doc: dict) -> dict[str, int]:
    return {row["channel"]: row["subscribers"] for row in doc["channels"]}


def settled(port: int, path: str, expected: dict[str, int]) -> dict:
    """GET ``path`` until it answers complete with ``expected`` (every worker and node heard from)."""
    def check():
        status, doc = get(port, path)
        assert status == 200, doc
        return doc if not doc["partial"] and counts(doc) == expected else None
    return wait_for(check, TIMEOUT, interval=0.1, what=f"{path} == {expected}")


# -- GET /channels ------------------------------------------------------------------------------------------

def test_channels_sums_the_subscribers_of_every_worker_pages_and_filters(start_server):
    server = api_node(start_server, "--trust-user-param")

    async def main():
        news = await open_on_both_workers(server, 3, lambda: subscribed(server, ["news", "chat.1"]))
        others = [await subscribed(server, ["chat.2"]) for _ in range(2)]
        users = [await subscribed(server, ["chat.1"], query="?user=alice") for _ in range(2)]
        n = len(news)
        everything = await asyncio.to_thread(settled, server.port, "/channels", {"chat.1": n + 2, "chat.2": 2,
                                                                                  "news": n})
        assert everything["next_cursor"] is None
        page1 = await asyncio.to_thread(settled, server.port, "/channels?limit=2", {"chat.1": n + 2, "chat.2": 2})
        assert page1["next_cursor"] == "chat.2"
        page2 = await asyncio.to_thread(settled, server.port, "/channels?limit=2&cursor=chat.2", {"news": n})
        assert page2["next_cursor"] is None
        await asyncio.to_thread(settled, server.port, "/channels?prefix=chat.", {"chat.1": n + 2, "chat.2": 2})
        await asyncio.to_thread(settled, server.port, "/channels?users=1&prefix=%40user",  # percent-encoded
                                {"@user:alice": 2})
        for ws in [*news, *others, *users]:
            await ws.close()
        await asyncio.to_thread(settled, server.port, "/channels", {})

    asyncio.run(main())


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=1001", "limit=99999999999999999999", "limit=1e3",
                                   "limit=%201", "limit=", "limit=1&limit=2", "cursor=bad%20name", "cursor=",
                                   "users=yes", "prefix=" + "a" * 129, "prefix=%ff", "sort=name", "limit=%C3%A9"])
def test_channels_refuses_a_bad_query_with_400_bad_request(server_with_token, query):
    status, doc = get(server_with_token.port, "/channels?" + query)
    assert (status, doc["code"]) == (400, "bad_request"), doc


@pytest.fixture(scope="module")
def server_with_token():
    from tests.conftest import Server, free_port

    server = Server(free_port(), 2, ["--backend-token", TOKEN, "--channels-max-limit", "1000"])
    yield server
    server.stop()


def test_the_api_needs_the_backend_credential_and_its_methods(server_with_token):
    port = server_with_token.port
    for token in (None, "wrong-credential-0123456789"):
        status, doc = get(port, "/channels", token=token)
        assert status == 401, doc
    status, doc, headers = call(port, "POST", "/channels", b"{}")
    assert (status, headers["Allow"]) == (405, "GET")
    assert get(port, "/channels/")[0] == 404 and get(port, "/channelsx")[0] == 404
    before = total(metrics(port), "millionws_input_refused_total", code="bad_request")
    assert get(port, "/channels?limit=0")[0] == 400
    wait_for(lambda: total(metrics(port), "millionws_input_refused_total", code="bad_request") >= before + 1,
             TIMEOUT, what="the refusal counted")


def test_channels_across_two_nodes_sums_both_and_a_dead_node_makes_it_partial_not_slow(start_server, broker):
    a = bus_node(start_server, broker, "--control-timeout", "1", announce=1.0)
    b = bus_node(start_server, broker, "--control-timeout", "1", announce=1.0)
    wait_bus_up(a, b)

    async def main():
        on_a = await open_on_both_workers(a, 2, lambda: subscribed(a, ["news"]))
        on_b = await open_on_both_workers(b, 2, lambda: subscribed(b, ["news", "only.b"]))
        expected = {"news": len(on_a) + len(on_b), "only.b": len(on_b)}
        await asyncio.to_thread(settled, a.port, "/channels", expected)
        await asyncio.to_thread(settled, b.port, "/channels", expected)
        b.stop()  # SIGKILL: its workers say nothing
        started = time.monotonic()
        status, doc = await asyncio.to_thread(get, a.port, "/channels")
        assert status == 200 and time.monotonic() - started < 5  # the deadline (1 s), not a hang
        # B is still expected (until 3 silent announce intervals): A says it could not hear everyone.
        assert (doc["partial"], counts(doc)) == (True, {"news": len(on_a)})
        await asyncio.to_thread(settled, a.port, "/channels", {"news": len(on_a)})  # B forgotten: complete again
        for ws in on_a:
            await ws.close()

    asyncio.run(main())
    assert total(metrics(a.port), "millionws_control_partial_total") >= 1
    wait_for(lambda: total(metrics(a.port), "millionws_control_peers") == 0, TIMEOUT, what="B forgotten")


def test_channels_with_the_bus_down_answers_this_node_partial(start_server, nats_broker):
    a = bus_node(start_server, nats_broker, "--control-timeout", "1")
    wait_bus_up(a)

    async def main():
        subs = await open_on_both_workers(a, 2, lambda: subscribed(a, ["news"]))
        await asyncio.to_thread(settled, a.port, "/channels", {"news": len(subs)})
        nats_broker.kill()
        wait_for(lambda: total(metrics(a.port), "millionws_bus_up") == 0, TIMEOUT, what="bus down")
        status, doc = await asyncio.to_thread(get, a.port, "/channels")
        assert (status, doc["partial"], counts(doc)) == (200, True, {"news": len(subs)})
        for ws in subs:
            await ws.close()

    asyncio.run(main())


# -- GET /channels/{c}/history ------------------------------------------------------------------------------

def publish(port: int, channel: str, documents: list) -> list[int]:
    """POST /publish on one keep-alive connection (so the publishes keep their order); their seqs."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seqs = []
    try:
        for doc in documents:
            conn.request("POST", f"/publish/{channel}", json.dumps(doc).encode(),
                         {"Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            seqs.append(answer["seq"])
    finally:
        conn.close()
    return seqs


def history(port: int, channel: str, query: str = "") -> dict:
    status, doc = get(port, f"/channels/{channel}/history{query}")
    assert status == 200, doc
    return doc


def test_history_on_two_workers_reads_the_owner_whichever_worker_answers(start_server):
    server = api_node(start_server, "--channel-options", "secret.* history=off")
    channel = "hist"
    assert publish(server.port, channel, [{"n": n} for n in range(1, 13)]) == list(range(1, 13))
    before = metrics(server.port)
    epochs = set()
    for _ in range(16):  # one connection each: both workers answer some
        doc = history(server.port, channel, "?since=3&limit=4")
        assert {k: doc[k] for k in ("channel", "seq", "first", "reset")} == \
            {"channel": channel, "seq": 12, "first": 1, "reset": False}
        assert doc["messages"] == [{"seq": n, "data": {"n": n}} for n in range(4, 8)]
        epochs.add(doc["epoch"])
    assert len(epochs) == 1 and len(next(iter(epochs))) == 16

    def both_answered():
        after = metrics(server.port)
        return all(total(after, "millionws_http_requests_total", status="200", worker=w)
                   > total(before, "millionws_http_requests_total", status="200", worker=w) for w in ("0", "1"))
    wait_for(both_answered, TIMEOUT, what="history answered by both workers")
    assert history(server.port, channel)["messages"][0]["seq"] == 1  # since 0, limit 100 by default
    assert history(server.port, channel, "?since=12")["messages"] == []
    ahead = history(server.port, channel, "?since=500&limit=2")
    assert ahead["reset"] is True and [m["seq"] for m in ahead["messages"]] == [1, 2]
    never = history(server.port, "never.used")
    assert (never["seq"], never["epoch"], never["first"], never["messages"]) == (0, None, 1, [])
    status, doc = get(server.port, "/channels/secret.plans/history")
    assert (status, doc["code"]) == (403, "history_disabled")
    wait_for(lambda: total(metrics(server.port), "millionws_input_refused_total", code="history_disabled") == 1,
             TIMEOUT, what="counted")


def test_history_epoch_changes_when_the_owner_restarts_and_its_sequence_starts_again(start_server):
    server = api_node(start_server)
    channel = "restarts"
    publish(server.port, channel, [1, 2, 3])
    before = history(server.port, channel)
    pid = server.worker_pids()[owner_of(channel, 2)]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in server.worker_pids() and all(server.worker_pids()), TIMEOUT, what="restarted")
    after = wait_for(lambda: (doc := history(server.port, channel)) and doc["seq"] == 0 and doc, TIMEOUT,
                     what="the owner's new sequence")
    assert publish(server.port, channel, ["again"]) == [1]
    again = history(server.port, channel)
    assert again["seq"] == 1 and again["epoch"] != before["epoch"] and after["epoch"] is None
    assert again["messages"] == [{"seq": 1, "data": "again"}]


@pytest.mark.parametrize("path", ["/channels/c/history?since=-1", "/channels/c/history?since=x",
                                  "/channels/c/history?since=9007199254740992", "/channels/c/history?limit=0",
                                  "/channels/c/history?limit=1001", "/channels/c/history?limit=1&limit=1",
                                  "/channels/c/history?from=1", "/channels/bad%20name/history",
                                  "/channels/%ff/history", "/channels/@user:/history"])
def test_history_refuses_bad_requests(server_with_token, path):
    status, doc = get(server_with_token.port, path)
    assert status == 400 and doc["code"] in ("bad_request", "bad_channel"), doc
    assert doc["code"] == ("bad_channel" if "?" not in path else "bad_request")


def test_history_method_and_credential(server_with_token):
    status, _, headers = call(server_with_token.port, "POST", "/channels/c/history", b"")
    assert (status, headers["Allow"]) == (405, "GET")
    assert get(server_with_token.port, "/channels/c/history", token=None)[0] == 401
    assert get(server_with_token.port, "/channels/c/nothing")[0] == 404


def test_history_across_nodes_is_the_brokers_with_one_epoch(start_server, broker):
    a, b = bus_node(start_server, broker), bus_node(start_server, broker)
    wait_bus_up(a, b)
    assert publish(a.port, "shared", [{"k": k} for k in range(1, 8)]) == list(range(1, 8))
    on_b = history(b.port, "shared", "?since=2&limit=3")
    on_a = history(a.port, "shared", "?since=2&limit=3")
    assert on_a == on_b
    assert (on_b["seq"], on_b["first"], on_b["reset"]) == (7, 1, False)
    assert on_b["messages"] == [{"seq": k, "data": {"k": k}} for k in (3, 4, 5)]
    assert len(on_b["epoch"]) == 16
    never = history(b.port, "never.used")
    assert (never["seq"], never["epoch"], never["messages"]) == (0, None, [])
    assert history(a.port, "shared", "?since=99")["reset"] is True
    broker.kill()
    wait_for(lambda: total(metrics(b.port), "millionws_bus_up") == 0, TIMEOUT, what="bus down")
    status, doc, headers = call(b.port, "GET", "/channels/shared/history")
    assert (status, doc["code"], headers["Retry-After"]) == (503, "unavailable", "1")


# -- POST /users/{id}/disconnect, /users/{id}/unsubscribe, /broadcast -----------------------------------------

def post(port: int, path: str, doc: object | None = None) -> tuple[int, dict]:
    status, answer, _ = call(port, "POST", path, json.dumps(doc).encode() if doc is not None else b"")
    return status, answer


def control_settled(*servers) -> None:
    """Every worker of every node heard from: a question gets every answer (membership has settled)."""
    for server in servers:
        wait_for(lambda server=server: not get(server.port, "/channels?limit=1")[1]["partial"], TIMEOUT,
                 interval=0.1, what="complete answers")


async def user_on_both_workers(server, user: str, channels: list[str] | None = None, others: int = 0) -> list:
    """Connections of ``user`` on both workers of ``server`` (``others``: WebSockets open there already)."""
    async def one():
        return await subscribed(server, channels, query=f"?user={user}") if channels else \
            await connect_user(server, user)
    return await open_on_both_workers(server, 3, one, others)


async def connect_user(server, user: str):
    return await connect(server.url(f"/pubsub?user={user}"), compression=None, max_queue=None)


async def closed_with(ws) -> tuple[int | None, str | None]:
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    return ws.close_code, ws.close_reason


async def still_open(ws) -> bool:
    await ws.send(json.dumps({"op": "unsubscribe", "channels": ["nothing"], "id": 1}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return reply["op"] == "unsubscribed"


def test_disconnect_closes_the_users_connections_on_both_workers_with_the_code(start_server):
    server = api_node(start_server, "--trust-user-param")

    async def main():
        alice = await user_on_both_workers(server, "alice")
        bob = await connect_user(server, "bob")
        others = len(alice) + 1
        status, doc = await asyncio.to_thread(post, server.port, "/users/alice/disconnect",
                                              {"code": 4001, "reason": "logged out"})
        assert (status, doc) == (200, {"user": "alice", "disconnected": len(alice), "partial": False})
        for ws in alice:
            assert await closed_with(ws) == (4001, "logged out")
        assert await still_open(bob)
        status, doc = await asyncio.to_thread(post, server.port, "/users/alice/disconnect")
        assert doc["disconnected"] == 0
        status, doc = await asyncio.to_thread(post, server.port, "/users/bob/disconnect")  # default: 4500
        assert (status, doc["disconnected"]) == (200, 1) and await closed_with(bob) == (4500, "")
        return others

    others = asyncio.run(main())
    wait_for(lambda: total(metrics(server.port), "millionws_disconnections_total", reason="backend") == others,
             TIMEOUT, what="counted as backend")


def test_unsubscribe_pushes_to_the_users_connections_on_both_workers_and_stops_their_messages(start_server):
    server = api_node(start_server, "--trust-user-param")

    async def main():
        alice = await user_on_both_workers(server, "alice", ["news", "chat"])
        bob = await subscribed(server, ["chat"], query="?user=bob")
        status, doc = await asyncio.to_thread(post, server.port, "/users/alice/unsubscribe", {"channels": ["chat"]})
        assert (status, doc) == (200, {"user": "alice", "unsubscribed": len(alice), "partial": False})
        for ws in alice:
            push = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert push == {"op": "unsubscribed", "channels": ["chat"], "reason": "server"}
        assert await asyncio.to_thread(publish, server.port, "chat", ["after"]) == [1]
        assert await asyncio.to_thread(publish, server.port, "news", ["still"]) == [1]
        for ws in alice:  # news still comes; chat no more
            doc = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert (doc["channel"], doc["data"]) == ("news", "still")
        doc = json.loads(await asyncio.wait_for(bob.recv(), TIMEOUT))
        assert (doc["channel"], doc["data"]) == ("chat", "after")
        for ws in [*alice, bob]:
            await ws.close()

    asyncio.run(main())


def test_broadcast_to_channels_owned_by_both_workers(start_server):
    server = api_node(start_server)
    channels = [channel_owned_by(0, "b"), channel_owned_by(1, "b"), channel_owned_by(0, "c")]

    async def main():
        subs = await open_on_both_workers(server, 2, lambda: subscribed(server, channels,
                                                                        {c: 0 for c in channels}))
        status, doc = await asyncio.to_thread(post, server.port, "/broadcast", {"channels": channels,
                                                                                "data": {"hello": 1}})
        assert (status, doc) == (200, {"results": [{"channel": c, "seq": 1} for c in channels]})
        for ws in subs:
            got = sorted((d["channel"], d["seq"], json.dumps(d["data"]))
                         for d in [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in channels])
            assert got == sorted((c, 1, '{"hello": 1}') for c in channels)
        for ws in subs:
            await ws.close()

    asyncio.run(main())


def test_commands_across_two_nodes(start_server, broker):
    a = bus_node(start_server, broker, "--trust-user-param")
    b = bus_node(start_server, broker, "--trust-user-param")
    wait_bus_up(a, b)
    control_settled(a, b)

    async def main():
        on_b = await user_on_both_workers(b, "alice", ["news", "chat"])
        alice = [*await user_on_both_workers(a, "alice", ["news", "chat"]), *on_b]
        listeners = await open_on_both_workers(b, 2, lambda: subscribed(b, ["x.1", "x.2"], {"x.1": 0, "x.2": 0}),
                                               others=len(on_b))
        # unsubscribe from A reaches B's connections of alice
        status, doc = await asyncio.to_thread(post, a.port, "/users/alice/unsubscribe", {"channels": ["chat"]})
        assert (status, doc) == (200, {"user": "alice", "unsubscribed": len(alice), "partial": False})
        for ws in alice:
            push = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert push == {"op": "unsubscribed", "channels": ["chat"], "reason": "server"}
        await asyncio.to_thread(settled, b.port, "/channels?prefix=chat", {})
        # broadcast from A reaches listeners on B, numbered by the broker
        status, doc = await asyncio.to_thread(post, a.port, "/broadcast", {"channels": ["x.1", "x.2"], "data": 7})
        assert (status, doc) == (200, {"results": [{"channel": "x.1", "seq": 1}, {"channel": "x.2", "seq": 1}]})
        for ws in listeners:
            got = sorted((d["channel"], d["seq"], d["data"])
                         for d in [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(2)])
            assert got == [("x.1", 1, 7), ("x.2", 1, 7)]
        # disconnect from B closes alice on both nodes
        status, doc = await asyncio.to_thread(post, b.port, "/users/alice/disconnect", {"code": 4403})
        assert (status, doc) == (200, {"user": "alice", "disconnected": len(alice), "partial": False})
        for ws in alice:
            assert (await closed_with(ws))[0] == 4403
        for ws in listeners:
            await ws.close()

    asyncio.run(main())


def test_broadcast_with_the_broker_down_is_503_when_nothing_could_be_published(start_server, nats_broker):
    a = bus_node(start_server, nats_broker)
    wait_bus_up(a)
    nats_broker.kill()
    wait_for(lambda: total(metrics(a.port), "millionws_bus_up") == 0, TIMEOUT, what="bus down")
    status, doc, headers = call(a.port, "POST", "/broadcast", b'{"channels": ["a", "b"], "data": 1}')
    assert (status, doc["code"], headers["Retry-After"]) == (503, "unavailable", "1")
    status, doc = post(a.port, "/users/alice/disconnect")
    assert (status, doc["partial"]) == (200, True)  # this node was asked; the others could not be


def test_publish_and_user_messages_across_two_nodes(start_server, broker):
    a = bus_node(start_server, broker, "--trust-user-param")
    b = bus_node(start_server, broker, "--trust-user-param")
    wait_bus_up(a, b)

    async def main():
        alice = await user_on_both_workers(b, "alice")
        bob = await connect_user(b, "bob")
        for ws in alice:  # since 0 for both: exact across nodes (without it a publish right after may be missed)
            await ws.send(json.dumps({"op": "subscribe", "channels": ["@user:alice", "news"],
                                      "since": {"@user:alice": 0, "news": 0}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["op"] == "subscribed"
        status, doc = await asyncio.to_thread(post, a.port, "/users/alice/messages", {"text": "shipped"})
        assert (status, doc["channel"], doc["seq"], doc["user"]) == (200, "@user:alice", 1, "alice")
        assert await asyncio.to_thread(publish, a.port, "news", [{"n": 1}]) == [1]
        for ws in alice:
            got = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(2)]
            assert sorted((d["channel"], d["seq"], json.dumps(d["data"])) for d in got) == \
                [("@user:alice", 1, '{"text": "shipped"}'), ("news", 1, '{"n": 1}')]
        with pytest.raises(TimeoutError):  # not bob's
            await asyncio.wait_for(bob.recv(), 0.3)
        for ws in [*alice, bob]:
            await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("path, body, status, code", [
    ("/users/alice/disconnect", b'{"code": 1006}', 400, "bad_code"),
    ("/users/alice/disconnect", b'{"code": 70000}', 400, "bad_code"),
    ("/users/alice/disconnect", b'{"reason": "' + b"r" * 200 + b'"}', 400, "bad_request"),
    ("/users/alice/disconnect", b"{not json", 400, "bad_json"),
    ("/users/alice/disconnect", b'{"code": 1e400}', 400, "bad_number"),
    ("/users/bad%20user/disconnect", b"", 400, "bad_user"),
    ("/users/alice/unsubscribe", b'{"channels": "news"}', 400, "bad_request"),
    ("/users/alice/unsubscribe", b'{"channels": ["no spaces"]}', 400, "bad_channel"),
    ("/users/alice/unsubscribe", b"[" * 100 + b"]" * 100, 400, "too_deep"),
    ("/broadcast", json.dumps({"channels": [f"c{i}" for i in range(1001)], "data": 1}).encode(), 400,
     "too_many_channels"),
    ("/broadcast", b'{"channels": ["a", "a"], "data": 1}', 400, "bad_request"),
    ("/broadcast", b'{"channels": ["a"], "data": "\\ud800"}', 400, "bad_unicode"),
    ("/broadcast", b'{"channels": ["a"]}', 400, "bad_request"),
])
def test_commands_refuse_hostile_bodies_and_the_server_keeps_serving(server_with_token, path, body, status, code):
    got, doc, _ = call(server_with_token.port, "POST", path, body)
    assert (got, doc.get("code")) == (status, code), doc
    assert get(server_with_token.port, "/channels")[0] == 200  # nothing broke


def test_commands_need_the_backend_credential(server_with_token):
    for path in ("/users/alice/disconnect", "/users/alice/unsubscribe", "/broadcast"):
        status, _doc, headers = call(server_with_token.port, "POST", path, b"{}", token=None)
        assert (status, headers["WWW-Authenticate"]) == (401, "Bearer"), path
