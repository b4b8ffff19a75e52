"""Echo peer on uWebSockets through socketify (its Python binding; one process, no compression).

    python benchmarks/peers/uws_server.py --host 127.0.0.1 --port 8004

Serves /echo: every message (uWS reassembles fragments) is sent back whole with the same opcode. Serves
/fanout (subscribers: one {"op":"subscribed"} text message, then every broadcast) and /fanout/publish (each
text message of a publisher goes to every /fanout socket with ``app.publish``: uWS's own topic tree, which
frames a message once per publish). Other paths answer 404.
Prints "listening" on stdout once the socket accepts connections. ``--tls-cert FILE --tls-key FILE``: the same
over wss://, with uSockets' own OpenSSL context (socketify takes file names, not an ``ssl.SSLContext``, so
tlsctx.py's policy cannot be handed over; uSockets' defaults are what a user gets).

Measure CPU per message, not utilisation: socketify's default ``app.run()`` drives libuv from an asyncio loop
that re-schedules itself with ``call_soon`` while busy and, once idle, only after 10 000 empty turns relaxes to a
1 ms and then a 10 ms timer. Under load (and for a while after) the process therefore spins at ~100 % of its
core whatever the traffic; its CPU seconds are an upper bound of the work per message, and utilisation says
nothing.

Settings that differ from socketify's defaults, each so that uWS behaves like the other peers:
``max_payload_length`` 1 MiB (default 16 KiB), ``idle_timeout`` 0 (default 120 s would close the idle
connections of the memory benchmark), ``max_backpressure`` 0 = unbounded (the 64 KiB default makes uWS drop
sends while more is buffered, which the others never do), compression disabled (the default too).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from socketify import App, AppOptions, CompressOptions, OpCode

MAX_SIZE = 1 << 20  # 1 MiB: the same limit in all peers
TOPIC = "fanout"
SUBSCRIBED = '{"op":"subscribed"}'

# What each route does with a message; uWS answers pings and close frames itself.
ECHO_OPCODES = (OpCode.TEXT, OpCode.BINARY)


def behaviour(**handlers: Any) -> dict[str, Any]:
    """The ws options shared by every route, plus that route's handlers."""
    return {
        "compression": CompressOptions.DISABLED,
        "max_payload_length": MAX_SIZE,
        "idle_timeout": 0,
        "max_backpressure": 0,
        "send_pings_automatically": False,  # as the other peers: no keepalive traffic on idle connections
        **handlers,
    }


def echo(ws: Any, message: bytes | str, opcode: OpCode) -> None:
    if opcode in ECHO_OPCODES:
        ws.send(message, opcode)


def subscribed(ws: Any) -> None:
    ws.subscribe(TOPIC)
    ws.send(SUBSCRIBED, OpCode.TEXT)


def ignore(ws: Any, message: bytes | str, opcode: OpCode) -> None:
    """Subscribers only listen."""


def make_app(host: str, port: int, cert: str = "", key: str = "") -> App:
    # lifespan=False: no asyncio start/shutdown hooks, nothing that a plain uWS server would not run.
    options = AppOptions(cert_file_name=cert, key_file_name=key or cert) if cert else None
    app = App(options, lifespan=False)

    def publish(ws: Any, message: bytes | str, opcode: OpCode) -> None:
        if opcode == OpCode.TEXT:
            app.publish(TOPIC, message, OpCode.TEXT)

    app.ws("/echo", behaviour(message=echo))
    app.ws("/fanout", behaviour(open=subscribed, message=ignore))
    app.ws("/fanout/publish", behaviour(message=publish))
    app.any("/*", lambda res, req: res.write_status(404).end("not found"))

    def listening(config: Any) -> None:
        print("listening", flush=True)

    # socketify raises from the listen callback when the port is taken: the process then exits non-zero.
    app.listen({"port": port, "host": host}, listening)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
    parser.add_argument("--tls-cert", default="", help="PEM certificate (chain): serve wss://")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert (if not in the same file)")
    args = parser.parse_args(argv)
    app = make_app(args.host, args.port, args.tls_cert, args.tls_key)
    # app.run() installs a SIGINT handler only; the drivers stop servers with SIGTERM, so stop the loop on both.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: app.close())
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
