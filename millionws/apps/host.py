"""What an application may use of the server that runs it: the Host.

Theory of operation: applications (``echo``, ``pubsub``, the HTTP routes) run inside a worker's loop, but
they are given this small object, not the worker.  It names the few things an application does with the
server, each a plain attribute holding a bound method or a value, so a call through it costs what a
call to the worker's own method costs:

* ``send(conn, data)``: bytes to one connection.  The one way an application answers: a reply to the
  message being handled, a subscription's acknowledgement, a replayed message.  Sent now; only what the
  kernel refuses is kept (backpressure: ``server/output.py``).
* ``fanout(conns, frame)``: one encoded frame to many connections (a broadcast encodes once).
* ``answer(conn, response)``: the deferred answer of an HTTP request (a publish waiting for its ``seq``).
* ``close(conn, code, reason) -> bool``: end an open WebSocket from the server side, through the server's
  own closing path (our Close frame with that code and reason, the closing handshake, the close timeout;
  counted as ``backend`` in ``millionws_disconnections_total``).  False when the connection is not open, or
  is the one whose message is being handled (its reply comes first: close it after).
* ``websocket_count()``, ``draining()``: what admission decisions need to know.
* ``expire_at(conn, expires)``: the connection's token now expires at ``expires`` (a Unix time; None:
  never), after a ``refresh`` on ``/pubsub``.  The server closes it 1008 then, and no longer at the
  time its upgrade's token said (``server/expiry.py``).
* ``index``, ``config``, ``stats``, ``mesh``, ``call_later``, ``reactor``: identity, settings, counters,
  the link to the other workers of the node, timers, and the loop (a broker registers its wake-up
  descriptor there).

:class:`Response` is the other half of the interface: what an application decides about an HTTP request
(the bytes to send, and on an upgrade the WebSocket application that takes the connection and the
permessage-deflate parameters the 101 accepted).

The worker builds one Host when it starts (``server/worker.py``); tests and the fuzz target build one
from fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..auth import Identity
from ..config import Config
from ..metrics import WorkerStats


class Host:
    __slots__ = ("answer", "call_later", "close", "config", "draining", "expire_at", "fanout", "index", "mesh",
                 "reactor", "send", "stats", "websocket_count")

    def __init__(self, index: int, config: Config, stats: WorkerStats, reactor: Any, mesh: Any,
                 send: Callable[[Any, bytes], None], fanout: Callable[[Iterable[Any], bytes], int],
                 answer: Callable[[Any, Any], None], websocket_count: Callable[[], int],
                 draining: Callable[[], bool], expire_at: Callable[[Any, float | None], None],
                 close: Callable[[Any, int, str], bool]) -> None:
        self.index = index
        self.config = config
        self.stats = stats
        self.reactor = reactor
        self.call_later = reactor.call_later
        self.mesh = mesh
        self.send = send
        self.fanout = fanout
        self.answer = answer
        self.websocket_count = websocket_count
        self.draining = draining
        self.expire_at = expire_at
        self.close = close


class Response:
    """What :meth:`App.handle` decided: bytes to send, and the WebSocket app on upgrade.  ``deflate``: the
    server window bits (8..15) of the permessage-deflate the 101 accepted, 0 when none was."""

    __slots__ = ("data", "deflate", "identity", "keep_alive", "status", "websocket")

    def __init__(self, data: bytes, status: int, keep_alive: bool, websocket: Any = None,
                 identity: Identity | None = None, deflate: int = 0) -> None:
        self.data = data
        self.status = status
        self.keep_alive = keep_alive
        self.websocket = websocket
        self.identity = identity
        self.deflate = deflate
