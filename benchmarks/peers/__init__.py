"""Peer WebSocket servers (websockets, aiohttp, picows, uWebSockets, Go gorilla) measured by the same instruments
as millionws.

Each peer is one file run as a script with the same CLI (``--host H --port P``); ``PEERS`` names them for the
drivers' ``--peer NAME``. ``DEFAULT_PEERS`` are the ones ``--peers`` starts: the three Python peers every driver
and results table (``benchmarks/run.py``, ``bench-memory``, ``bench-smoke``...) was built and compared against.
uws and gorilla are opt-in (``--peer uws --peer gorilla``): they need system packages (``scripts/bench-system-deps``),
gorilla compiles on first start, and uws spins on its core (see uws_server.py), so adding them to ``--peers``
would change every existing table and make CPU utilisation figures meaningless there.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: name -> script path; every script serves /echo and prints "listening" once ready.
PEERS: dict[str, Path] = {
    "websockets": _HERE / "websockets_server.py",
    "aiohttp": _HERE / "aiohttp_server.py",
    "picows": _HERE / "picows_server.py",
    "uws": _HERE / "uws_server.py",  # uWebSockets (C++) through socketify
    "gorilla": _HERE / "gorilla_server.py",  # Go + gorilla/websocket, built on demand
}

#: the peers --peers starts (and benchmarks/run.py tabulates); the others only by --peer NAME.
DEFAULT_PEERS: tuple[str, ...] = ("websockets", "aiohttp", "picows")
