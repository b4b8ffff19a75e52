"""Echo peer on the `websockets` asyncio server (one process, compression off, no keepalive pings).

    python benchmarks/peers/websockets_server.py --host 127.0.0.1 --port 8001

Serves /echo: every text or binary message is sent back unchanged (str stays text, bytes stay binary).
Serves /fanout (subscribers: one {"op":"subscribed"} text message, then every broadcast) and
/fanout/publish (each message a publisher sends goes to every /fanout connection through
``websockets.broadcast``, the library's fan-out helper: no task or await per subscriber).
Any other path answers 404. Prints "listening" on stdout once the socket accepts connections.
``--tls-cert FILE --tls-key FILE``: the same over wss://. ``--deflate``: permessage-deflate with the library's
defaults (the benchmarks run it off; this is for the load generator's own tests of --deflate).
"""

from __future__ import annotations

import argparse
import asyncio
import http
import logging
import signal
import ssl

from tlsctx import tls_context  # this folder is sys.path[0]: the peers run as scripts
from websockets.asyncio.server import Request, Response, ServerConnection, broadcast, serve

MAX_SIZE = 1 << 20  # 1 MiB: the same limit in all peers so they refuse the same messages
BACKLOG = 4096  # = net.core.somaxconn here; a short backlog turns connect bursts into SYN retries


def reject_other_paths(connection: ServerConnection, request: Request) -> Response | None:
    """Answer 404 before the upgrade for anything but /echo, /fanout and /fanout/publish."""
    if request.path.split("?", 1)[0] not in ("/echo", "/fanout", "/fanout/publish"):
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
    return None


SUBSCRIBERS: set[ServerConnection] = set()


async def echo(ws: ServerConnection) -> None:
    path = ws.request.path.split("?", 1)[0] if ws.request is not None else "/echo"
    if path == "/fanout":
        SUBSCRIBERS.add(ws)
        try:
            await ws.send('{"op":"subscribed"}')
            await ws.wait_closed()
        finally:
            SUBSCRIBERS.discard(ws)
        return
    if path == "/fanout/publish":
        async for message in ws:
            broadcast(SUBSCRIBERS, message)
        return
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int, tls: ssl.SSLContext | None = None, deflate: bool = False) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        echo,
        host,
        port,
        process_request=reject_other_paths,
        compression="deflate" if deflate else None,
        max_size=MAX_SIZE,
        # Keepalive pings off: an idle-memory comparison must not include ping traffic or its timers.
        ping_interval=None,
        ping_timeout=None,
        backlog=BACKLOG,
        ssl=tls,
    ):
        print("listening", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tls-cert", default="", help="PEM certificate (chain): serve wss://")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert (if not in the same file)")
    parser.add_argument("--deflate", action="store_true", help="accept permessage-deflate (default: off)")
    args = parser.parse_args()
    # Per-connection INFO lines would cost more than the connections themselves at 10^5 sockets.
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.host, args.port, tls_context(args.tls_cert, args.tls_key), args.deflate))
