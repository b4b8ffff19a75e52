"""The application: what each path answers.

Theory of operation: the worker hands a complete HTTP request here and gets back the
bytes of the response, or, for a WebSocket route, the 101 response and the object that
will receive that connection's messages.  A WebSocket application is any object with
``on_message(conn, is_text, payload) -> bytes | None`` (the reply, already framed) and
``on_close(conn)``.  Nothing here blocks or touches a socket.

Routes:

==========  ==========  ===================================================================
path        method      answer
==========  ==========  ===================================================================
/echo, /ws  GET+Upgrade WebSocket; every text and binary message back unchanged
/health     GET, HEAD   200 {"status":"ok",...}; 503 {"status":"draining"} while draining
/metrics    GET, HEAD   Prometheus text exposition for every worker of the pod
/stats      GET, HEAD   JSON snapshot: per worker and total
==========  ==========  ===================================================================
"""

from __future__ import annotations

from typing import Any, Protocol

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import http, metrics
from .http import HttpError
from .websocket import encode_frame

F = metrics.F
_MSG_IN, _MSG_OUT = F["messages_in"], F["messages_out"]


class WorkerView(Protocol):
    """What the application may see of its worker."""

    index: int
    draining: bool
    stats: metrics.WorkerStats

    def websocket_count(self) -> int: ...


class Echo:
    """``/echo``: sends every message back, same type, same bytes."""

    __slots__ = ("c",)

    def __init__(self, counters: list[int]) -> None:
        self.c = counters

    def on_message(self, conn: Any, is_text: bool, payload: bytes) -> bytes:
        c = self.c
        c[_MSG_IN] += 1
        c[_MSG_OUT] += 1
        return encode_frame(1 if is_text else 2, payload)

    def on_close(self, conn: Any) -> None:
        pass


class Response:
    """What :meth:`App.handle` decided: bytes to send, and the WebSocket app on upgrade."""

    __slots__ = ("data", "status", "keep_alive", "websocket")

    def __init__(self, data: bytes, status: int, keep_alive: bool, websocket: Any = None) -> None:
        self.data = data
        self.status = status
        self.keep_alive = keep_alive
        self.websocket = websocket


class App:
    def __init__(self, worker: WorkerView, max_connections: int) -> None:
        self.worker = worker
        self.max_connections = max_connections
        self.echo = Echo(worker.stats.c)
        self.websocket_routes: dict[bytes, Any] = {b"/echo": self.echo, b"/ws": self.echo}
        self.http_routes = {b"/health": self.health, b"/metrics": self.metrics, b"/stats": self.stats}

    def handle(self, request: h11.Request, body: bytes) -> Response:
        """Answer one complete request.  Raises HttpError for refusals."""
        path = request.target.split(b"?", 1)[0]
        keep_alive = http.keep_alive(request)
        ws_app = self.websocket_routes.get(path)
        if ws_app is not None:
            accepted = http.check_upgrade(request)
            if self.worker.draining:
                raise HttpError(503, "draining", http.HS_DRAINING)
            if self.worker.websocket_count() >= self.max_connections:
                raise HttpError(503, "connection limit of this worker reached", http.HS_OVER_CAPACITY,
                                (("Retry-After", "1"),))
            return Response(accepted, 101, True, ws_app)
        route = self.http_routes.get(path)
        if route is None:
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method not in (b"GET", b"HEAD"):
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "GET, HEAD"),))
        status, data = route(request.method == b"HEAD", keep_alive)
        return Response(data, status, keep_alive)

    def health(self, head: bool, keep_alive: bool) -> tuple[int, bytes]:
        worker = self.worker
        if worker.draining:
            return 503, http.render_json(503, {"status": "draining", "worker": worker.index}, keep_alive, head)
        document = {"status": "ok", "worker": worker.index, "connections": worker.websocket_count()}
        return 200, http.render_json(200, document, keep_alive, head)

    def metrics(self, head: bool, keep_alive: bool) -> tuple[int, bytes]:
        self.worker.stats.flush()
        body = metrics.render(self.worker.stats.shared)
        return 200, http.render(200, body, CONTENT_TYPE_LATEST, keep_alive, head=head)

    def stats(self, head: bool, keep_alive: bool) -> tuple[int, bytes]:
        self.worker.stats.flush()
        document = metrics.snapshot(self.worker.stats.shared)
        document["served_by"] = self.worker.index
        return 200, http.render_json(200, document, keep_alive, head)
