"""The routes of a worker: what each path answers.

Theory of operation: the server hands a complete HTTP request here and gets back a :class:`Response`: the
bytes of the answer, or, for a WebSocket route, the 101 answer and the application that will receive that
connection's messages (``apps/__init__.py`` states their interface).  Refusals are raised as
``HttpError`` and rendered by the server.  Nothing here blocks or touches a socket.

path        method      answer
==========  ==========  ===================================================================
/echo, /ws  GET+Upgrade WebSocket; every text and binary message back unchanged (``echo``)
/pubsub     GET+Upgrade WebSocket; channels, JSON protocol of docs/protocol.md (``pubsub``)
/publish/C  POST        body: one JSON document, published to channel C (``backend``)
/users/U/messages POST  body: one JSON document, to every connection of user U (``backend``)
/channels/C/presence GET members of a presence channel, every worker's (``backend``)
/health     GET, HEAD   200 {"status":"ok",...}; 503 {"status":"draining"} while draining;
                        ``?ready``: also 503 while the --bus broker is unreachable
/metrics    GET, HEAD   Prometheus text exposition for every worker of the pod
/stats      GET, HEAD   JSON snapshot: per worker and total; the channel options in effect
==========  ==========  ===================================================================
=======
======================  ===========  ================================================================
path                    method       answer
======================  ===========  ================================================================
/echo, /ws              GET+Upgrade  WebSocket; every text and binary message back unchanged (``echo``)
/pubsub                 GET+Upgrade  WebSocket; channels, JSON protocol of docs/protocol.md (``pubsub``)
/publish/C              POST         body: one JSON document, published to channel C (``backend``)
/users/U/messages       POST         body: one JSON document, to every connection of user U (``backend``)
/channels               GET          active channels and their subscribers, every worker and node (``api``)
/channels/C/history     GET          what C's sequencer holds after ?since=, with seq and epoch (``api``)
/users/U/disconnect     POST         close every connection of user U, everywhere (``commands``)
/users/U/unsubscribe    POST         take user U's connections out of channels, everywhere (``commands``)
/broadcast              POST         one message to many channels (``commands``)
/health                 GET, HEAD    200 {"status":"ok",...}; 503 {"status":"draining"} while draining;
                                     ``?ready``: also 503 while the --bus broker is unreachable
/metrics                GET, HEAD    Prometheus text exposition for every worker of the pod
/stats                  GET, HEAD    JSON snapshot: per worker and total; the channel options in effect
======================  ===========  ================================================================

Every path under ``/publish/``, ``/users/``, ``/channels`` and ``/broadcast`` is the backend's API
(docs/api.md) and needs the backend credential (``check_backend``) before anything else is looked at.

Cheap refusals come first on an upgrade (origin, drain, capacity) so that a flood of upgrades costs no
signature verification each.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qs

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import metrics
from ..auth import AuthError, Identity, Verifier, bearer, extract_token
from ..protocol import extensions, http
from ..protocol.http import HttpError
from ..pubsub.channels import valid_user
from .api import Api
from .apikit import refused
from .backend import Backend
from .commands import Commands
from .echo import Echo
from .host import Host, Response
from .pubsub import BAD_USER, PubSub, Session

_AUTH_FAILED0 = metrics.F["auth_failed_missing"]
_PROTOCOL_HEADER = b"Sec-WebSocket-Protocol: millionws\r\n\r\n"
# The backend's API (docs/api.md): every path under these needs the backend credential.
_BACKEND_PATHS = (b"/publish/", b"/users/", b"/channels", b"/broadcast")


class App:
    """Routes a complete request: an upgrade to a WebSocket application, a backend call, or a page."""

    def __init__(self, host: Host, max_connections: int) -> None:
        cfg = host.config
        self.host = host
        self.max_connections = max_connections
        self.echo = Echo(host.stats.c)
        self.verifier = (Verifier(cfg.auth_jwt_secret, cfg.auth_jwks, cfg.auth_audience, cfg.auth_issuer)
                         if cfg.auth_jwt_secret or cfg.auth_jwks else None)
        self.pubsub = PubSub(host, self.verifier)  # the same verifier: a refresh is checked as an upgrade is
        self.backend = Backend(host, self.pubsub)
        self.api = Api(host, self.pubsub)
        self.commands = Commands(host, self.pubsub)
        self.trust_user_param = cfg.trust_user_param
        self.websocket_routes: dict[bytes, Any] = {b"/echo": self.echo, b"/ws": self.echo,
                                                   b"/pubsub": self.pubsub}
        self.http_routes = {b"/health": self.health, b"/metrics": self.metrics, b"/stats": self.stats}
        # With an admin port, /metrics and /stats leave the public port (and the admin port serves nothing else).
        self.admin_split = cfg.admin_port != 0
        self.auth_required = cfg.auth_required
        origins = {o.strip().lower().encode() for o in cfg.allowed_origins.split(",") if o.strip()}
        self.origins = None if not origins or b"*" in origins else origins
        self.backend_token = cfg.backend_token.encode() if cfg.backend_token else None
        self.compression = cfg.compression == "deflate"

    def start(self) -> None:
        """The worker's loop is about to run."""
        self.pubsub.start()

    def handle(self, request: h11.Request, body: bytes, admin: bool = False, conn: Any = None) -> Response | None:
        """Answer one complete request (its framing already checked at its head: ``http.check_framing``,
        in the worker).  Raises HttpError for refusals.

        None: the answer is deferred (a publish waits for its seq) and will be given through
        ``host.answer(conn, ...)``, within --publish-timeout.
        """
        target = request.target
        path = http.request_path(target)
        query = target.partition(b"?")[2]
        ws_app = None if admin else self.websocket_routes.get(path)
        if ws_app is not None:
            accepted = http.check_upgrade(request)
            # Cheap refusals first: a flood of upgrades to a draining or full worker, or from a
            # foreign page, must not cost a signature verification each.
            self.check_origin(request)
            if self.host.draining():
                raise HttpError(503, "draining", http.HS_DRAINING)
            if self.host.websocket_count() >= self.max_connections:
                raise HttpError(503, "connection limit of this worker reached", http.HS_OVER_CAPACITY,
                                (("Retry-After", "1"),))
            identity, offered = self.authenticate(request)
            if offered:  # the client proposed our subprotocol: confirm it (browsers insist on an answer)
                accepted = accepted[:-2] + _PROTOCOL_HEADER
            deflate = 0
            if self.compression:  # --compression deflate, and the client offered it acceptably
                agreed = extensions.negotiate(v for k, v in request.headers if k == b"sec-websocket-extensions")
                if agreed is not None:
                    accepted = accepted[:-2] + agreed[0] + b"\r\n"
                    deflate = agreed[1]
            if ws_app is self.pubsub:
                if identity is not None:
                    ws_app = Session(self.pubsub, identity.user, identity)
                elif query:
                    ws_app = self.user_session(query)
            return Response(accepted, 101, True, ws_app, identity, deflate)
        keep_alive = http.keep_alive(request)
        if not admin and path.startswith(_BACKEND_PATHS):  # docs/api.md
            self.check_backend(request)
            if path.startswith(b"/publish/") or (path.startswith(b"/users/") and path.endswith(b"/messages")):
                return self.backend.post(request, path, body, keep_alive, conn)
            if path.startswith(b"/channels"):
                return self.api.handle(request, path, query, body, keep_alive, conn)
            return self.commands.handle(request, path, body, keep_alive, conn)
        route = self.http_routes.get(path)
        if self.admin_split and not admin and path != b"/health":
            route = None  # /metrics and /stats live on the admin port
        if route is None:
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method not in (b"GET", b"HEAD"):
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "GET, HEAD"),))
        status, data = route(request.method == b"HEAD", keep_alive, query)
        return Response(data, status, keep_alive)

    def check_origin(self, request: h11.Request) -> None:
        """--allowed-origins: a browser's cross-site WebSocket is refused with 403.

        Requests without Origin (non-browser clients) pass: the check exists to stop
        pages on other sites from using a visitor's browser against us.
        """
        if self.origins is None:
            return
        origin = http.header(request, b"origin")
        if origin is not None and origin.strip().lower() not in self.origins:
            raise HttpError(403, "origin not allowed", http.HS_FORBIDDEN)

    def authenticate(self, request: h11.Request) -> tuple[Identity | None, bool]:
        """The token's identity (None without auth), and whether the client offered our subprotocol."""
        token, offered = extract_token(request.headers, request.target)
        if self.verifier is None or (token is None and not self.auth_required):
            return None, offered
        try:
            if token is None:
                raise AuthError(0, "a token is required: Authorization: Bearer, subprotocol or ?token=")
            return self.verifier.verify(token), offered
        except AuthError as exc:
            self.host.stats.c[_AUTH_FAILED0 + exc.reason] += 1
            raise HttpError(401, exc.message, http.HS_UNAUTHORIZED, (("WWW-Authenticate", "Bearer"),)) from None

    def check_backend(self, request: h11.Request) -> None:
        """The backend endpoints need --backend-token; with auth on and none configured, nobody may use them."""
        if self.backend_token is None:
            if self.auth_required:
                raise HttpError(401, "backend endpoints need --backend-token when auth is on", http.HS_UNAUTHORIZED,
                                (("WWW-Authenticate", "Bearer"),))
            return
        credentials = bearer(http.header(request, b"authorization"))
        if credentials is None or not hmac.compare_digest(credentials, self.backend_token):
            raise HttpError(401, "backend credential missing or wrong", http.HS_UNAUTHORIZED,
                            (("WWW-Authenticate", "Bearer"),))

    def user_session(self, query: bytes) -> Any:
        users = parse_qs(query.decode("latin-1")).get("user")
        if not users:
            return self.pubsub
        if not self.trust_user_param:
            raise HttpError(403, "?user= is accepted only with --trust-user-param")
        if len(users) != 1 or not valid_user(users[0]):
            raise refused(self.host.stats, 400, BAD_USER, "bad_user")
        return Session(self.pubsub, users[0])

    def health(self, head: bool, keep_alive: bool, query: bytes = b"") -> tuple[int, bytes]:
        """Liveness (plain) and readiness (``?ready``): a node that cannot reach its broker is
        alive (it serves local traffic) but not ready (it cannot sequence a publish)."""
        host = self.host
        if host.draining():
            return 503, http.render_json(503, {"status": "draining", "worker": host.index}, keep_alive, head)
        document: dict[str, Any] = {"status": "ok", "worker": host.index, "connections": host.websocket_count()}
        status = 200
        remote = self.pubsub.hub.remote
        if remote is not None:
            document["bus"] = remote.detail()
            if not remote.up and "ready" in parse_qs(query.decode("latin-1"), keep_blank_values=True):
                status = 503
                document["status"] = "not_ready"
        return status, http.render_json(status, document, keep_alive, head)

    def metrics(self, head: bool, keep_alive: bool, _query: bytes = b"") -> tuple[int, bytes]:
        self.host.stats.flush()
        body = metrics.render(self.host.stats.shared)
        return 200, http.render(200, body, CONTENT_TYPE_LATEST, keep_alive, head=head)

    def stats(self, head: bool, keep_alive: bool, _query: bytes = b"") -> tuple[int, bytes]:
        self.host.stats.flush()
        document = metrics.snapshot(self.host.stats.shared)
        document["served_by"] = self.host.index
        # What the running server applies (--channel-options over the global flags), for an operator who
        # wonders why a channel keeps what it keeps: the rules as given; the longest matching pattern wins.
        namespaces = self.pubsub.namespaces
        document["channel_options"] = {"default": namespaces.default.as_dict(),
                                       "rules": [rule.as_dict() for rule in namespaces.rules]}
        return 200, http.render_json(200, document, keep_alive, head)
