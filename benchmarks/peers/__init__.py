"""Peer WebSocket servers (websockets, aiohttp, picows) measured by the same instruments as millionws.

Each peer is one file run as a script with the same CLI (``--host H --port P``); ``PEERS`` names them
for drivers such as ``benchmarks/memory.py --peers``.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: name -> script path; every script serves /echo and prints "listening" once ready.
PEERS: dict[str, Path] = {
    "websockets": _HERE / "websockets_server.py",
    "aiohttp": _HERE / "aiohttp_server.py",
    "picows": _HERE / "picows_server.py",
}
