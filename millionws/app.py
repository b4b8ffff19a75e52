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
/pubsub     GET+Upgrade WebSocket; channels, JSON protocol of docs/protocol.md
/publish/C  POST        body: one JSON document, published to channel C (202)
/users/U/messages POST  body: one JSON document, to every connection of user U (202)
/health     GET, HEAD   200 {"status":"ok",...}; 503 {"status":"draining"} while draining
/metrics    GET, HEAD   Prometheus text exposition for every worker of the pod
/stats      GET, HEAD   JSON snapshot: per worker and total
==========  ==========  ===================================================================

The /pubsub operations are parsed here and carried out by :class:`channels.Hub`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import parse_qs

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import http, metrics
from .auth import AuthError, Identity, Verifier, bearer, extract_token
from .channels import ChannelError, Hub, user_channel, valid_channel
from .config import Config
from .http import HttpError
from .ratelimit import KeyedBuckets, Rate
from .reactor import monotonic
from .websocket import encode_frame

F = metrics.F
_MSG_IN, _MSG_OUT = F["messages_in"], F["messages_out"]
_RATE_PUBLISHES = F["rate_limited_publishes"]
_AUTH_FAILED0 = F["auth_failed_missing"]
_PROTOCOL_HEADER = b"Sec-WebSocket-Protocol: millionws\r\n\r\n"


class WorkerView(Protocol):
    """What the application may see of its worker."""

    index: int
    draining: bool
    stats: metrics.WorkerStats
    config: Config
    bus: Any  # bus.LocalBus
    reactor: Any  # reactor.Reactor

    def websocket_count(self) -> int: ...

    def write(self, conn: Any, data: bytes) -> None: ...

    def fanout(self, conns: Iterable[Any], frame: bytes) -> int: ...


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


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON (no NaN/Infinity, which subscribers' parsers would refuse)."""
    return json.loads(raw, parse_constant=_reject_constant)


def dump_json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class PubSub:
    """``/pubsub``: the JSON operations of docs/protocol.md.  Every refusal is an error reply."""

    __slots__ = ("c", "hub", "publish_rate", "reactor")

    def __init__(self, worker: WorkerView) -> None:
        cfg = worker.config
        self.c = worker.stats.c
        self.reactor = worker.reactor
        self.publish_rate = KeyedBuckets(Rate(cfg.rate_limit_publishes)) if cfg.rate_limit_publishes else None
        self.hub = Hub(worker.index, cfg.workers, worker.bus.send, worker.write, worker.fanout, worker.stats,
                       cfg.replay_seconds, cfg.replay_max_messages, cfg.max_channels_per_connection,
                       cfg.max_subscribers_per_worker)
        worker.bus.on_record = self.hub.on_record
        if cfg.bus:  # across nodes: millionws/broker.py
            self.hub.connect_bus(cfg.bus, worker.reactor)

    def start(self) -> None:
        self.hub.hello()
        self.hub.start_bus()
        self._sweep()

    def _sweep(self) -> None:
        self.hub.sweep(monotonic())
        self.reactor.call_later(5.0, self._sweep)

    def _reply(self, conn: Any, document: dict[str, Any], request_id: Any = None) -> bytes:
        if request_id is not None:
            document["id"] = request_id
        self.c[_MSG_OUT] += 1
        return encode_frame(1, dump_json(document))

    def _error(self, conn: Any, code: str, message: str, request_id: Any = None, channel: str | None = None) -> None:
        document: dict[str, Any] = {"op": "error", "code": code, "message": message}
        if channel is not None:
            document["channel"] = channel
        self.hub.write(conn, self._reply(conn, document, request_id))

    def on_message(self, conn: Any, is_text: bool, payload: bytes, identity: Identity | None = None) -> None:
        # Replies are written here, not returned: they must precede messages this request causes.
        self.c[_MSG_IN] += 1
        if not is_text:
            self._error(conn, "binary_not_supported", "binary frames are not accepted: send JSON text frames")
            return None
        try:
            msg = parse_json(payload)
        except ValueError as exc:
            self._error(conn, "bad_json", f"not a JSON document: {exc}")
            return None
        if not isinstance(msg, dict):
            self._error(conn, "bad_request", "a request is a JSON object with an \"op\"")
            return None
        request_id = msg.get("id")
        try:
            op = msg.get("op")
            if op == "subscribe":
                if identity is not None:
                    for channel in _channel_list(msg):
                        _authorize(identity, channel)
                self.subscribe(conn, msg, request_id)
            elif op == "unsubscribe":
                channels = _channel_list(msg)
                self.hub.unsubscribe(conn, channels)
                self.hub.write(conn, self._reply(conn, {"op": "unsubscribed", "channels": channels}, request_id))
            elif op == "publish":
                channel = msg.get("channel")
                if not valid_channel(channel):
                    raise ChannelError("bad_channel", _BAD_NAME, channel if isinstance(channel, str) else None)
                if "data" not in msg:
                    raise ChannelError("bad_request", "publish needs \"data\"")
                if identity is not None:
                    _authorize(identity, channel)
                now = monotonic()
                if not self.allow_publish(channel, now):
                    raise ChannelError("rate_limited", "too many publishes on this channel, retry later", channel)
                self.hub.publish(channel, dump_json(msg["data"]), now)
                if request_id is not None:  # acknowledged only when the client can match the answer
                    self.hub.write(conn, self._reply(conn, {"op": "published", "channel": channel}, request_id))
            else:
                raise ChannelError("unknown_op", "op must be subscribe, unsubscribe or publish")
        except ChannelError as exc:
            self._error(conn, exc.code, exc.message, request_id, exc.channel)
        return None

    def subscribe(self, conn: Any, msg: dict[str, Any], request_id: Any) -> None:
        channels = _channel_list(msg)
        since = msg.get("since")
        if since is not None:
            if not isinstance(since, dict):
                raise ChannelError("bad_since", "since is an object: {channel: last seq seen}")
            for channel, seq in since.items():
                if channel not in channels:
                    raise ChannelError("bad_since", "since names a channel that is not subscribed here", channel)
                if type(seq) is not int or seq < 0:
                    raise ChannelError("bad_since", "a since value is an integer >= 0", channel)
        ack = self._reply(conn, {"op": "subscribed", "channels": channels}, request_id)
        self.hub.subscribe(conn, channels, since, ack=ack)

    def on_close(self, conn: Any) -> None:
        self.hub.drop(conn)

    def allow_publish(self, channel: str, now: float) -> bool:
        """Per-channel publish rate (--rate-limit-publishes), per worker."""
        if self.publish_rate is None or self.publish_rate.take(channel, now):
            return True
        self.c[_RATE_PUBLISHES] += 1
        return False


def _authorize(identity: Identity, channel: str) -> None:
    if not identity.may_use(channel):
        raise ChannelError("forbidden", "the token does not grant this channel", channel)


_BAD_NAME = "a channel name is 1 to 128 characters of A-Z a-z 0-9 . _ : -"


def _channel_list(msg: dict[str, Any]) -> list[str]:
    channels = msg.get("channels")
    if not isinstance(channels, list) or not channels:
        raise ChannelError("bad_request", "channels must be a non-empty list of channel names")
    for channel in channels:
        if not valid_channel(channel):
            raise ChannelError("bad_channel", _BAD_NAME, channel if isinstance(channel, str) else None)
    return channels


class Session:
    """The ``/pubsub`` application of a connection with a user id or a token's identity."""

    __slots__ = ("identity", "pubsub", "user")

    def __init__(self, pubsub: PubSub, user: str | None, identity: Identity | None = None) -> None:
        self.pubsub = pubsub
        self.user = user
        self.identity = identity

    def on_open(self, conn: Any) -> None:
        if self.user is None:
            return
        try:
            self.pubsub.hub.subscribe(conn, [user_channel(self.user)], internal=True)
        except ChannelError as exc:
            self.pubsub._error(conn, exc.code, exc.message)

    def on_message(self, conn: Any, is_text: bool, payload: bytes) -> None:
        return self.pubsub.on_message(conn, is_text, payload, self.identity)

    def on_close(self, conn: Any) -> None:
        self.pubsub.on_close(conn)


class Response:
    """What :meth:`App.handle` decided: bytes to send, and the WebSocket app on upgrade."""

    __slots__ = ("data", "identity", "keep_alive", "status", "websocket")

    def __init__(self, data: bytes, status: int, keep_alive: bool, websocket: Any = None,
                 identity: Identity | None = None) -> None:
        self.data = data
        self.status = status
        self.keep_alive = keep_alive
        self.websocket = websocket
        self.identity = identity


class App:
    def __init__(self, worker: WorkerView, max_connections: int) -> None:
        cfg = worker.config
        self.worker = worker
        self.max_connections = max_connections
        self.echo = Echo(worker.stats.c)
        self.pubsub = PubSub(worker)
        self.trust_user_param = cfg.trust_user_param
        self.websocket_routes: dict[bytes, Any] = {b"/echo": self.echo, b"/ws": self.echo,
                                                   b"/pubsub": self.pubsub}
        self.http_routes = {b"/health": self.health, b"/metrics": self.metrics, b"/stats": self.stats}
        # With an admin port, /metrics and /stats leave the public port (and the admin port serves nothing else).
        self.admin_split = cfg.admin_port != 0
        self.verifier = (Verifier(cfg.auth_jwt_secret, cfg.auth_jwks, cfg.auth_audience, cfg.auth_issuer)
                         if cfg.auth_jwt_secret or cfg.auth_jwks else None)
        self.auth_required = cfg.auth_required
        origins = {o.strip().lower().encode() for o in cfg.allowed_origins.split(",") if o.strip()}
        self.origins = None if not origins or b"*" in origins else origins
        self.backend_token = cfg.backend_token.encode() if cfg.backend_token else None

    def start(self) -> None:
        """The worker's loop is about to run."""
        self.pubsub.start()

    def handle(self, request: h11.Request, body: bytes, admin: bool = False) -> Response:
        """Answer one complete request.  Raises HttpError for refusals."""
        http.check_framing(request)
        target = request.target
        path = http.request_path(target)
        query = target.partition(b"?")[2]
        keep_alive = http.keep_alive(request)
        ws_app = None if admin else self.websocket_routes.get(path)
        if ws_app is not None:
            accepted = http.check_upgrade(request)
            self.check_origin(request)
            identity, offered = self.authenticate(request)
            if offered:  # the client proposed our subprotocol: confirm it (browsers insist on an answer)
                accepted = accepted[:-2] + _PROTOCOL_HEADER
            if ws_app is self.pubsub:
                if identity is not None:
                    ws_app = Session(self.pubsub, identity.user, identity)
                elif query:
                    ws_app = self.user_session(query)
            if self.worker.draining:
                raise HttpError(503, "draining", http.HS_DRAINING)
            if self.worker.websocket_count() >= self.max_connections:
                raise HttpError(503, "connection limit of this worker reached", http.HS_OVER_CAPACITY,
                                (("Retry-After", "1"),))
            return Response(accepted, 101, True, ws_app, identity)
        if not admin and (path.startswith(b"/publish/") or path.startswith(b"/users/")):
            self.check_backend(request)
            return Response(self.post(request, path, body, keep_alive), 202, keep_alive)
        route = self.http_routes.get(path)
        if self.admin_split and not admin and path != b"/health":
            route = None  # /metrics and /stats live on the admin port
        if route is None:
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method not in (b"GET", b"HEAD"):
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "GET, HEAD"),))
        status, data = route(request.method == b"HEAD", keep_alive)
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
            self.worker.stats.c[_AUTH_FAILED0 + exc.reason] += 1
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
        if len(users) != 1 or not valid_channel(users[0]):
            raise HttpError(400, "a user id is 1 to 128 characters of A-Z a-z 0-9 . _ : -")
        return Session(self.pubsub, users[0])

    def post(self, request: h11.Request, path: bytes, body: bytes, keep_alive: bool) -> bytes:
        """``POST /publish/{channel}`` and ``POST /users/{id}/messages``: the body is the message's data."""
        parts = path.decode("latin-1").split("/")
        if parts[1] == "publish" and len(parts) == 3:
            channel, name = parts[2], parts[2]
        elif parts[1] == "users" and len(parts) == 4 and parts[3] == "messages":
            channel, name = user_channel(parts[2]), parts[2]
        else:
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method != b"POST":
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "POST"),))
        if not valid_channel(name):
            raise HttpError(400, _BAD_NAME.replace("a channel name", "a channel name or user id"))
        try:
            text = body.decode("utf-8").strip()
            parse_json(text)
        except ValueError as exc:  # UnicodeDecodeError included
            raise HttpError(400, f"the body must be one JSON document in UTF-8: {exc}") from None
        now = monotonic()
        if not self.pubsub.allow_publish(channel, now):
            raise HttpError(429, "too many publishes on this channel", http.HS_RATE_LIMITED, (("Retry-After", "1"),))
        self.pubsub.hub.publish(channel, text.encode(), now)
        return http.render_json(202, {"status": "accepted", "channel": channel}, keep_alive)

    def health(self, head: bool, keep_alive: bool) -> tuple[int, bytes]:
        worker = self.worker
        if worker.draining:
            return 503, http.render_json(503, {"status": "draining", "worker": worker.index}, keep_alive, head)
        document = {"status": "ok", "worker": worker.index, "connections": worker.websocket_count()}
        if self.pubsub.hub.remote is not None:  # down: still 200, this node serves its local traffic
            document["bus"] = self.pubsub.hub.remote.detail()
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
