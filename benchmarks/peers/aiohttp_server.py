"""Echo peer on aiohttp's web server (one process, compression off, no heartbeat).

    python benchmarks/peers/aiohttp_server.py --host 127.0.0.1 --port 8002

Serves /echo: every text or binary message is sent back unchanged. Serves /fanout (subscribers: one
{"op":"subscribed"} text message, then every broadcast) and /fanout/publish (each text message of a
publisher is sent to every /fanout connection with ``send_str``: aiohttp has no encode-once broadcast, so
the frame is built per subscriber). Other paths answer 404.
Prints "listening" on stdout once the socket accepts connections. ``--tls-cert FILE --tls-key FILE``: the same
over wss://.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl

from aiohttp import WSMsgType, web
from tlsctx import tls_context  # this folder is sys.path[0]: the peers run as scripts

MAX_SIZE = 1 << 20  # 1 MiB: the same limit in all peers
BACKLOG = 4096  # = net.core.somaxconn here


async def echo(request: web.Request) -> web.WebSocketResponse:
    # heartbeat=None: no keepalive pings (autoping=True still answers the client's pings).
    # max_msg_size + 1: aiohttp closes with 1009 on a message of exactly max_msg_size bytes, while the
    # other peers accept up to and including their limit.
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE + 1, heartbeat=None, autoping=True)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


SUBSCRIBERS: set[web.WebSocketResponse] = set()


async def fanout(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE + 1, heartbeat=None, autoping=True)
    await ws.prepare(request)
    SUBSCRIBERS.add(ws)
    try:
        await ws.send_str('{"op":"subscribed"}')
        async for _msg in ws:
            pass  # subscribers only listen
    finally:
        SUBSCRIBERS.discard(ws)
    return ws


async def fanout_publish(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE + 1, heartbeat=None, autoping=True)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            for sub in tuple(SUBSCRIBERS):
                if not sub.closed:
                    await sub.send_str(msg.data)
    return ws


async def main(host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/fanout", fanout)
    app.router.add_get("/fanout/publish", fanout_publish)
    # access_log=None: a log line per handshake would dominate connect-rate figures.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG, ssl_context=tls)
    await site.start()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    print("listening", flush=True)
    try:
        await stop
    finally:
        # A short shutdown: the benchmark driver already closed its clients or does not care.
        await runner.shutdown()
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--tls-cert", default="", help="PEM certificate (chain): serve wss://")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert (if not in the same file)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.host, args.port, tls_context(args.tls_cert, args.tls_key)))
