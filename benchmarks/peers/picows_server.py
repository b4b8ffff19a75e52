"""Echo peer on picows (one process, no compression: picows has none; auto-ping off, auto-pong on).

    python benchmarks/peers/picows_server.py --host 127.0.0.1 --port 8003

Serves /echo: every frame of a text or binary message is sent back with the same opcode and FIN bit,
so fragmented messages come back as the same message. Serves /fanout (subscribers: one
{"op":"subscribed"} text message, then every broadcast) and /fanout/publish (each text frame of a
publisher is sent to every /fanout transport with ``transport.send``; picows frames each send in C, there
is no encode-once broadcast). Other paths answer 404.
Prints "listening" on stdout once the socket accepts connections. ``--tls-cert FILE --tls-key FILE``: the same
over wss:// (picows hands the context to its transport, aiofastnet's when it is used).

picows's other defaults are kept (they are what a user gets), notably read_buffer_init_size=16 KiB per
connection and aiofastnet transports (a picows dependency): both show in memory per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)
from tlsctx import tls_context  # this folder is sys.path[0]: the peers run as scripts

MAX_SIZE = 1 << 20  # 1 MiB: the same limit in all peers (picows checks frames, not messages)
BACKLOG = 4096  # = net.core.somaxconn here


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(msg_type, frame.get_payload_as_memoryview(), fin=frame.fin)
        elif msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        # PING is answered by picows itself (enable_auto_pong=True); PONG needs nothing.


SUBSCRIBERS: set[WSTransport] = set()
SUBSCRIBED = b'{"op":"subscribed"}'


class Subscriber(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.add(transport)
        transport.send(WSMsgType.TEXT, SUBSCRIBED)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Publisher(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            for sub in tuple(SUBSCRIBERS):
                sub.send(WSMsgType.TEXT, payload)
        elif msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


def route(request: WSUpgradeRequest) -> WSListener | None:
    """None makes picows answer 404 and disconnect."""
    path = request.path.split(b"?", 1)[0]
    if path == b"/echo":
        return Echo()
    if path == b"/fanout":
        return Subscriber()
    if path == b"/fanout/publish":
        return Publisher()
    return None


async def main(host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    server = await ws_create_server(
        route,
        host,
        port,
        enable_auto_ping=False,
        enable_auto_pong=True,
        max_frame_size=MAX_SIZE,
        backlog=BACKLOG,
        ssl=tls,
    )
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    print("listening", flush=True)
    try:
        await stop
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--tls-cert", default="", help="PEM certificate (chain): serve wss://")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert (if not in the same file)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.host, args.port, tls_context(args.tls_cert, args.tls_key)))
