"""Authentication, authorization, origins, the admin port and rate limits, against a real server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from benchmarks.wscodec import close_code
from tests.conftest import free_port, http_get, wait_for
from tests.test_metrics_helpers import metric_total
from tests.wsraw import RawClient, frame, upgrade_request

SECRET = "e2e-secret-that-is-long-enough-32b"
BACKEND = "backend-token-for-tests"


def token(sub="alice", channels=("news.*", "chat"), ttl=300.0, secret=SECRET):
    return jwt.encode({"sub": sub, "channels": list(channels), "exp": time.time() + ttl}, secret, algorithm="HS256")


def post(port, path, document, bearer=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(document).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def secured():
    from tests.conftest import Server
    server = Server(free_port(), 2, ["--auth-jwt-secret", SECRET, "--backend-token", BACKEND,
                                     "--allowed-origins", "https://app.example", "--close-timeout", "1"])
    yield server
    server.stop()


def status_of(port, headers=(), path="/pubsub"):
    c = RawClient(port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    c.send(upgrade_request(path, extra=extra))
    status, response_headers, _ = c.read_http_response()
    c.close()
    return status, response_headers


@pytest.mark.parametrize(("headers", "reason"), [
    ((), "missing"),
    ((("Authorization", "Bearer not.a.jwt"),), "malformed"),
    ((("Authorization", f"Bearer {token(ttl=-60)}"),), "expired"),
    ((("Authorization", f"Bearer {token(secret='another-secret-that-is-32-bytes!!')}"),), "bad_signature"),
])
def test_invalid_tokens_get_401_counted_by_reason(secured, headers, reason):
    before = metric_total(secured.port, "millionws_auth_failures_total", reason=reason)
    status, response_headers = status_of(secured.port, headers)
    assert status == 401 and response_headers["www-authenticate"] == "Bearer"
    wait_for(lambda: metric_total(secured.port, "millionws_auth_failures_total", reason=reason) == before + 1)


def test_token_in_header_subprotocol_or_query(secured):
    async def main():
        async with connect(secured.url("/echo"), additional_headers={"Authorization": f"Bearer {token()}"}) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        async with connect(secured.url("/echo"), subprotocols=["millionws", f"millionws.bearer.{token()}"]) as ws:
            assert ws.subprotocol == "millionws"  # confirmed, and the token is not echoed back
        async with connect(secured.url("/echo") + f"?token={token()}") as ws:
            await ws.send("q")
            assert await ws.recv() == "q"
    asyncio.run(main())


def test_claims_authorize_channels_and_name_the_user(secured):
    async def main():
        headers = {"Authorization": f"Bearer {token(sub='alice')}"}
        async with connect(secured.url("/pubsub"), additional_headers=headers) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channels": ["news.sport"]}))
            assert json.loads(await ws.recv())["op"] == "subscribed"
            await ws.send(json.dumps({"op": "subscribe", "channels": ["admin"]}))
            reply = json.loads(await ws.recv())
            assert (reply["op"], reply["code"], reply["channel"]) == ("error", "forbidden", "admin")
            await ws.send(json.dumps({"op": "publish", "channel": "secret", "data": 1}))
            reply = json.loads(await ws.recv())
            assert (reply["op"], reply["code"]) == ("error", "forbidden")
            # The user id comes from "sub": the backend reaches this connection by it.
            status = await asyncio.to_thread(post, secured.port, "/users/alice/messages", {"hello": "alice"},
                                             BACKEND)
            assert status == 200
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert message["op"] == "message" and message["data"] == {"hello": "alice"}
    asyncio.run(main())


def test_backend_endpoints_need_their_credential(secured):
    assert post(secured.port, "/publish/news.x", {"a": 1}) == 401
    assert post(secured.port, "/publish/news.x", {"a": 1}, bearer="wrong") == 401
    assert post(secured.port, "/publish/news.x", {"a": 1}, bearer=BACKEND) == 200


def test_origin_check(secured):
    auth = ("Authorization", f"Bearer {token()}")
    assert status_of(secured.port, (auth, ("Origin", "https://evil.example")))[0] == 403
    assert status_of(secured.port, (auth, ("Origin", "https://app.example")))[0] == 101
    assert status_of(secured.port, (auth,))[0] == 101  # no Origin: not a browser


def test_token_expiry_closes_with_1008(secured):
    async def main():
        headers = {"Authorization": f"Bearer {token(ttl=1.5)}"}
        async with connect(secured.url("/echo"), additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1008 and "expired" in info.value.rcvd.reason
    asyncio.run(main())
    wait_for(lambda: metric_total(secured.port, "millionws_disconnections_total", reason="policy") >= 1)


def test_admin_port(start_server):
    admin = free_port()
    server = start_server("--admin-port", str(admin), workers=1, stats_port=admin)
    assert http_get(server.port, "/metrics")[0] == 404
    assert http_get(server.port, "/stats")[0] == 404
    assert http_get(server.port, "/health")[0] == 200
    assert http_get(admin, "/metrics")[0] == 200 and http_get(admin, "/health")[0] == 200
    c = RawClient(admin)
    c.send(upgrade_request("/echo"))
    assert c.read_http_response()[0] == 404  # no WebSockets on the admin port


def test_message_rate_limit_closes_1008(start_server):
    server = start_server("--rate-limit-messages", "20", workers=1)
    c = RawClient(server.port)
    c.handshake()
    c.send(b"".join(frame(1, b"m") for _ in range(100)))
    echoed = 0
    while True:
        fr = c.read_frame()
        assert fr is not None
        if fr[0] == 8:
            assert close_code(fr[2]) == 1008
            break
        echoed += 1
    assert 15 <= echoed <= 25  # one second of burst, then the limit
    assert metric_total(server.port, "millionws_rate_limited_total", kind="messages") == 1


def test_publish_rate_limit(start_server):
    server = start_server("--rate-limit-publishes", "5", workers=1)
    statuses = [post(server.port, "/publish/busy", {"n": i}) for i in range(20)]
    assert statuses.count(200) >= 5 and statuses.count(429) >= 10
    assert metric_total(server.port, "millionws_rate_limited_total", kind="publishes") == statuses.count(429)


def test_connections_per_ip(start_server):
    server = start_server("--max-connections-per-ip", "3", workers=1)
    held = [RawClient(server.port) for _ in range(3)]
    for c in held:
        c.handshake()
    extra = RawClient(server.port, timeout=3)
    extra.send(upgrade_request())
    with pytest.raises((ConnectionError, OSError)):
        extra.read_http_response()  # closed at accept
    held[0].close()

    def accepted_again():
        c = RawClient(server.port)
        try:
            c.handshake()
            return True
        except (ConnectionError, OSError, AssertionError):
            return False
        finally:
            c.close()
    wait_for(accepted_again, 5)
    for c in held[1:]:
        c.close()
    # Only now may /metrics connect from the same address.
    wait_for(lambda: metric_total(server.port, "millionws_rate_limited_total", kind="connections_per_ip") >= 1)


def test_connect_rate_per_ip(start_server):
    server = start_server("--max-connect-rate-per-ip", "5", workers=1)
    refused = 0
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(2)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            if not s.recv(100):
                refused += 1
        except (ConnectionError, OSError):
            refused += 1
        s.close()
    assert refused >= 20
    # The scrape itself comes from the limited address: retry until the bucket lets it in.
    wait_for(lambda: metric_total(server.port, "millionws_rate_limited_total", kind="connect_rate") >= refused, 5)


def test_unauthenticated_is_refused_even_for_echo(secured):
    async def main():
        with pytest.raises(InvalidStatus) as info:
            await connect(secured.url("/echo"))
        assert info.value.response.status_code == 401
    asyncio.run(main())


# -- refresh: a newer token over the open connection (docs/protocol.md, SECURITY.md "Expiry during a connection") --

async def _ask(ws, document):
    """Send ``document``; the frames up to and including the one that carries its id."""
    await ws.send(json.dumps(document))
    frames = []
    while True:
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        if frames[-1].get("id") == document["id"]:
            return frames


def test_a_refreshed_token_keeps_the_connection_past_its_first_exp_and_the_new_exp_closes_it(start_server):
    server = start_server("--auth-jwt-secret", SECRET, "--close-timeout", "1", workers=1)

    async def main():
        opened = time.time()
        async with connect(server.url("/pubsub"), additional_headers={"Authorization": f"Bearer {token(ttl=2)}"}) as ws:
            await asyncio.sleep(1)
            second_exp = time.time() + 3
            second = jwt.encode({"sub": "alice", "channels": ["chat"], "exp": second_exp}, SECRET, algorithm="HS256")
            frames = await _ask(ws, {"op": "refresh", "token": second, "id": 7})
            assert frames == [{"op": "refreshed", "expires": second_exp, "id": 7}]
            # Past the first exp and at least one expiry check (once a second): still open and answering.
            await asyncio.sleep(max(0.0, opened + 3.2 - time.time()))
            frames = await _ask(ws, {"op": "subscribe", "channels": ["chat"], "id": 8})
            assert frames[-1]["op"] == "subscribed"
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), 10)
            closed = time.time()
            assert info.value.rcvd.code == 1008 and "expired" in info.value.rcvd.reason
            assert second_exp <= closed < second_exp + 2.5  # at the second exp (checked once a second), not before
    asyncio.run(main())


def test_a_refresh_with_another_users_token_is_forbidden_and_the_connection_stays(secured):
    async def main():
        async with connect(secured.url("/pubsub"), additional_headers={"Authorization": f"Bearer {token()}"}) as ws:
            frames = await _ask(ws, {"op": "refresh", "token": token(sub="mallory"), "id": 1})
            assert [(f["op"], f["code"]) for f in frames] == [("error", "forbidden")]
            frames = await _ask(ws, {"op": "subscribe", "channels": ["chat"], "id": 2})
            assert frames[-1]["op"] == "subscribed"
    asyncio.run(main())


def test_a_refresh_with_a_bad_token_is_bad_token_saying_why_and_counted(secured):
    before = metric_total(secured.port, "millionws_input_refused_total", code="bad_token")

    async def main():
        async with connect(secured.url("/pubsub"), additional_headers={"Authorization": f"Bearer {token()}"}) as ws:
            frames = await _ask(ws, {"op": "refresh", "token": token(ttl=-60), "id": 1})
            assert [(f["op"], f["code"]) for f in frames] == [("error", "bad_token")]
            assert "expired" in frames[0]["message"]
            frames = await _ask(ws, {"op": "refresh", "token": token(secret="another-secret-that-is-32-bytes!!"),
                                     "id": 2})
            assert frames[0]["code"] == "bad_token" and "signature" in frames[0]["message"]
    asyncio.run(main())
    wait_for(lambda: metric_total(secured.port, "millionws_input_refused_total", code="bad_token") == before + 2)


def test_a_refresh_that_shrinks_the_grants_unsubscribes_the_lost_channels_with_a_push(secured):
    async def main():
        headers = {"Authorization": f"Bearer {token(sub='carol', channels=['news.*', 'chat.r'])}"}
        async with connect(secured.url("/pubsub"), additional_headers=headers) as ws:
            frames = await _ask(ws, {"op": "subscribe", "channels": ["news.r", "chat.r"], "since": {"chat.r": 0},
                                     "id": 1})
            assert frames[0] == {"op": "subscribed", "channels": ["news.r", "chat.r"], "id": 1}
            frames = await _ask(ws, {"op": "refresh", "token": token(sub="carol", channels=["news.*"]), "id": 2})
            assert [f["op"] for f in frames] == ["unsubscribed", "refreshed"]
            assert frames[0] == {"op": "unsubscribed", "channels": ["chat.r"], "reason": "forbidden"}
            # The lost channel's messages stop; the kept one's still come.
            for channel in ("chat.r", "news.r"):
                status = await asyncio.to_thread(post, secured.port, f"/publish/{channel}", {"on": channel}, BACKEND)
                assert status == 200
            got = [json.loads(await asyncio.wait_for(ws.recv(), 5))]
            while got[-1].get("channel") != "news.r":
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            # A request after it: the chat message, sequenced before news.r was published, had time to arrive.
            got += await _ask(ws, {"op": "subscribe", "channels": ["chat.r"], "id": 3})
            assert (got[-1]["op"], got[-1]["code"]) == ("error", "forbidden")
            assert [(f["channel"], f["data"]) for f in got if f["op"] == "message"] == [("news.r", {"on": "news.r"})]
    asyncio.run(main())
