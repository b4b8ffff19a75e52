"""The backend's API (docs/api.md) end to end: 2 workers of one node, and 2 nodes of 2 workers on a broker.

Each endpoint's answer merges every worker's part, so every test puts connections on both workers (and
both nodes) and checks the sum, then what hostile input gets."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest

from tests.conftest import wait_for
from tests.e2e.test_bus import bus_up
from tests.e2e.test_pubsub import open_on_both_workers, subscribed
from tests.e2e.test_routes import metrics, total

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
