"""Real clients (websockets, picows) against a 2-worker server: echo, fragments, ping, close."""

from __future__ import annotations

import asyncio
import os

import picows
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from tests.conftest import wait_for

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 100_000, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_websockets_text_and_binary(server, size):
    async def main():
        async with connect(server.url(), max_size=None, compression=None) as ws:
            text = ("é" * size)[: max(0, size // 2)] if size < 1 << 20 else "a" * size
            blob = os.urandom(size)
            await ws.send(text)
            assert await ws.recv() == text
            await ws.send(blob)
            assert await ws.recv() == blob
    asyncio.run(main())


def test_websockets_alias_ws_and_fragmented_messages(server):
    async def main():
        async with connect(server.url("/ws"), compression=None) as ws:
            await ws.send(["fr", "ag", "mé", "nt"])
            assert await ws.recv() == "fragmént"
            await ws.send([b"\x00" * 70000, b"\x01" * 3, b""])
            assert await ws.recv() == b"\x00" * 70000 + b"\x01" * 3
            # Interleaved with control frames: a ping between fragments is answered.
            async def fragments():
                yield "a"
                await ws.ping(b"mid")
                yield "b"
            await ws.send(fragments())
            assert await ws.recv() == "ab"
    asyncio.run(main())


def test_websockets_ping_pong_and_close(server):
    async def main():
        ws = await connect(server.url(), compression=None)
        pong = await ws.ping(b"hello")
        latency = await asyncio.wait_for(pong, 5)
        assert latency >= 0
        await ws.close(code=1000, reason="bye")
        assert ws.close_code == 1000
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()
    asyncio.run(main())


def test_many_messages_in_flight_keep_order(server):
    async def main():
        async with connect(server.url(), compression=None) as ws:
            sent = [f"m{i}" * (i % 50) for i in range(2000)]
            async def writer():
                for m in sent:
                    await ws.send(m)
            task = asyncio.create_task(writer())
            got = [await ws.recv() for _ in sent]
            await task
            assert got == sent
    asyncio.run(main())


class _Listener(picows.WSListener):
    def __init__(self) -> None:
        self.frames: asyncio.Queue = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self.frames.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), frame.fin,
                                frame.get_close_code() if frame.msg_type == picows.WSMsgType.CLOSE else None))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 1 << 20])
def test_picows_text_binary_ping_close(server, size):
    async def main():
        transport, listener = await picows.ws_connect(_Listener, server.url(), max_frame_size=2 << 20)
        payload = os.urandom(size)
        transport.send(picows.WSMsgType.BINARY, payload)
        kind, data, fin, _ = await asyncio.wait_for(listener.frames.get(), 10)
        assert (kind, data, fin) == (picows.WSMsgType.BINARY, payload, True)
        text = b"x" * size
        transport.send(picows.WSMsgType.TEXT, text)
        kind, data, _, _ = await asyncio.wait_for(listener.frames.get(), 10)
        assert (kind, data) == (picows.WSMsgType.TEXT, text)
        # A message in three frames comes back as one.
        transport.send(picows.WSMsgType.TEXT, b"ab", fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, b"cd", fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, b"ef", fin=True)
        kind, data, _, _ = await asyncio.wait_for(listener.frames.get(), 10)
        assert (kind, data) == (picows.WSMsgType.TEXT, b"abcdef")
        transport.send_ping(b"p")
        kind, data, _, _ = await asyncio.wait_for(listener.frames.get(), 10)
        assert (kind, data) == (picows.WSMsgType.PONG, b"p")
        transport.send_close(picows.WSCloseCode.OK, b"done")
        kind, _, _, code = await asyncio.wait_for(listener.frames.get(), 10)
        assert kind == picows.WSMsgType.CLOSE and code == picows.WSCloseCode.OK
        await asyncio.wait_for(transport.wait_disconnected(), 10)
    asyncio.run(main())


def test_concurrent_clients_on_both_workers(server):
    async def one(i):
        async with connect(server.url(), compression=None) as ws:
            for j in range(20):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"
    async def main():
        await asyncio.gather(*(one(i) for i in range(100)))
    asyncio.run(main())
    # Each worker publishes its counters every 0.25 s: poll, do not sleep.
    wait_for(lambda: all(w["accepted"] > 0 for w in server.stats()["workers"]), what="both workers accepted")


def test_websockets_version_is_recent():
    assert int(websockets.__version__.split(".")[0]) >= 13
