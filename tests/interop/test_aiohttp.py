"""The ``aiohttp`` client over ws:// and wss://: echo, ping, close, /pubsub.

aiohttp has no API to send a fragmented message (it receives them), so fragments are covered by the
other clients; its compression is off unless asked for (``compress=``), as here."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.interop.conftest import SIZES, blob_of, text_of

pytestmark = pytest.mark.e2e


def run(target, use, **options):
    """``await use(ws)`` on a WebSocket opened by an aiohttp session; its Close code afterwards."""
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(target.url(options.pop("path", "/echo"), host=options.pop("host",
                                          "localhost")), ssl=target.ssl_context() or True, **options) as ws:
                peer = ws.get_extra_info("peercert")
                assert (peer is not None) == target.tls
                await use(ws)
                return ws.close_code
    return asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("size", SIZES)
def test_text_and_binary_echo(target, size):
    async def use(ws):
        await ws.send_str(text_of(size))
        assert await ws.receive_str() == text_of(size)
        await ws.send_bytes(blob_of(size))
        assert await ws.receive_bytes() == blob_of(size)
    run(target, use)


def test_ping_then_a_clean_close(target):
    before = target.counters("millionws_disconnections_total", "reason")["normal"]

    async def use(ws):
        await ws.ping(b"are you there")
        msg = await ws.receive(5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")
        assert await ws.close(code=1000, message=b"bye")
        assert ws.close_code == 1000  # what the server answered (aiohttp keeps the peer's code)
    assert run(target, use, autoping=False, host="127.0.0.1") == 1000
    target.wait_disconnected("normal", before + 1)


def test_pubsub_round_trip(target):
    channel = f"interop.aiohttp.{target.scheme}"

    async def use(ws):
        await ws.send_json({"op": "subscribe", "channels": [channel], "id": 1})
        assert await ws.receive_json() == {"op": "subscribed", "channels": [channel], "id": 1}
        await ws.send_str(json.dumps({"op": "publish", "channel": channel, "data": [1, "two"], "id": 2}))
        got = [await ws.receive_json(), await ws.receive_json()]  # its own message and the confirmation
        assert sorted(got, key=lambda m: m["op"]) == [
            {"op": "message", "channel": channel, "seq": 1, "data": [1, "two"]},
            {"op": "published", "channel": channel, "seq": 1, "id": 2}]
    run(target, use, path="/pubsub")
