"""The ``picows`` client over ws:// and wss://: echo, fragments, ping, close (frames, not messages)."""

from __future__ import annotations

import asyncio

import picows
import pytest

from tests.interop.conftest import SIZES, blob_of, text_of

pytestmark = pytest.mark.e2e

T, B, C = picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION


class Listener(picows.WSListener):
    """Every frame received, in order: (type, payload, fin, close code)."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        code = frame.get_close_code() if frame.msg_type == picows.WSMsgType.CLOSE else None
        self.frames.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), frame.fin, code))

    async def next(self) -> tuple:
        return await asyncio.wait_for(self.frames.get(), 10)


async def open_(target, host: str = "localhost") -> tuple[picows.WSTransport, Listener]:
    transport, listener = await picows.ws_connect(Listener, target.url(host=host), ssl_context=target.ssl_context(),
                                                  max_frame_size=2 << 20)
    assert transport.is_secure == target.tls
    return transport, listener


async def close(transport: picows.WSTransport, listener: Listener) -> None:
    transport.send_close(picows.WSCloseCode.OK, b"done")
    kind, _, _, code = await listener.next()
    assert (kind, code) == (picows.WSMsgType.CLOSE, picows.WSCloseCode.OK)  # the server's answer
    await asyncio.wait_for(transport.wait_disconnected(), 10)  # and then its FIN


@pytest.mark.parametrize("size", SIZES)
def test_text_and_binary_echo(target, size):
    async def main():
        transport, listener = await open_(target)
        transport.send(T, text_of(size).encode())
        assert await listener.next() == (T, text_of(size).encode(), True, None)
        transport.send(B, blob_of(size))
        assert await listener.next() == (B, blob_of(size), True, None)
        await close(transport, listener)
    asyncio.run(main())


def test_fragments_ping_and_a_clean_close(target):
    before = target.counters("millionws_disconnections_total", "reason")["normal"]

    async def main():
        transport, listener = await open_(target, host="127.0.0.1")  # the certificate's IP address SAN
        transport.send(T, b"ab", fin=False)
        transport.send_ping(b"between fragments")
        transport.send(C, "cé".encode(), fin=False)
        transport.send(C, b"", fin=False)
        transport.send(C, b"f", fin=True)
        assert await listener.next() == (picows.WSMsgType.PONG, b"between fragments", True, None)
        assert await listener.next() == (T, "abcéf".encode(), True, None)
        chunk = blob_of(65536)
        for i in range(16):  # 1 MiB - 1 in 16 frames
            transport.send(B if i == 0 else C, chunk if i < 15 else chunk[:-1], fin=i == 15)
        assert await listener.next() == (B, chunk * 15 + chunk[:-1], True, None)
        transport.send_ping(b"p" * 125)  # the largest control frame
        assert await listener.next() == (picows.WSMsgType.PONG, b"p" * 125, True, None)
        await close(transport, listener)
    asyncio.run(main())
    target.wait_disconnected("normal", before + 1)
