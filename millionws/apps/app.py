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
/publish/C  POST        body: one JSON document, published to channel C (200 once sequenced)
/users/U/messages POST  body: one JSON document, to every connection of user U (200 once sequenced)
/health     GET, HEAD   200 {"status":"ok",...}; 503 {"status":"draining"} while draining;
                        ``?ready``: also 503 while the --bus broker is unreachable
/metrics    GET, HEAD   Prometheus text exposition for every worker of the pod
/stats      GET, HEAD   JSON snapshot: per worker and total
==========  ==========  ===================================================================

The /pubsub operations are parsed here and carried out by :class:`channels.Hub`.
Every byte a client sends is checked here, once, before the hub sees it: JSON through
:mod:`jsonsafe` (depth, numbers, Unicode), ids and ``since`` values within 0 … 2^53-1,
names against their alphabets.  A refusal is an error reply (or HTTP status) with a code,
counted in ``millionws_input_refused_total{code}``.  A publish is answered only once its
channel's sequencer numbered it (``seq`` in the answer), so acknowledged publishes keep
their order; a publish the sequencer cannot take gets ``unavailable`` / 503.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote_to_bytes

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import jsonsafe, metrics
from ..auth import AuthError, Identity, Verifier, bearer, extract_token
from ..config import Config
from ..core.reactor import monotonic
from ..jsonsafe import JsonError
from ..protocol import http
from ..protocol.http import HttpError
from ..protocol.websocket import encode_frame
from ..pubsub.channels import ChannelError, Hub, user_channel, valid_channel, valid_user
from ..ratelimit import KeyedBuckets, Rate

F = metrics.F
_MSG_IN, _MSG_OUT = F["messages_in"], F["messages_out"]
_RATE_PUBLISHES = F["rate_limited_publishes"]
_AUTH_FAILED0 = F["auth_failed_missing"]
_REFUSED = metrics.REFUSED
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

    def answer(self, conn: Any, response: Any) -> None: ...


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


_ID_HELP = "id is an integer 0..2^53-1 or a string of at most 128 characters"
_PUBLISH_ERRORS = {
    "unavailable": "the channel's sequencer cannot be reached now (broker away): not published, retry later",
    "publish_timeout": "the channel's sequencer did not confirm in time: the message may or may not be published",
    "channel_limit": "this server sequences as many channels as it may (--max-channels-per-worker): not published",
}


def _segment(raw: bytes) -> str:
    """A percent-decoded path segment; "" (valid as nothing) when it does not decode to ASCII."""
    try:
        return unquote_to_bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        return ""


def _valid_id(value: object) -> bool:
    return jsonsafe.safe_int(value) or (type(value) is str and len(value) <= 128)


class PubSub:
    """``/pubsub``: the JSON operations of docs/protocol.md.  Every refusal is an error reply."""

    __slots__ = ("c", "hub", "max_depth", "publish_rate", "reactor", "sweep_interval")

    def __init__(self, worker: WorkerView) -> None:
        cfg = worker.config
        self.c = worker.stats.c
        self.reactor = worker.reactor
        self.max_depth = cfg.max_json_depth
        self.sweep_interval = cfg.sweep_interval
        self.publish_rate = KeyedBuckets(Rate(cfg.rate_limit_publishes)) if cfg.rate_limit_publishes else None
        self.hub = Hub(worker.index, cfg.workers, worker.bus.send, worker.write, worker.fanout, worker.stats,
                       cfg.replay_seconds, cfg.replay_max_messages, cfg.max_channels_per_connection,
                       cfg.max_subscribers_per_worker, cfg.publish_timeout, cfg.replay_timeout,
                       worker.reactor.call_later, cfg.replay_max_bytes, cfg.max_channels_per_worker)
        worker.bus.on_record = self.hub.on_record
        if cfg.bus:  # across nodes: millionws/pubsub/brokers/
            self.hub.connect_bus(cfg.bus, worker.reactor, outbox_messages=cfg.bus_outbox_messages,
                                 publish_batch=cfg.bus_publish_batch, fetch_batch=cfg.bus_fetch_batch,
                                 events_per_wake=cfg.bus_events_per_wake, backoff_min=cfg.bus_backoff_min,
                                 backoff_max=cfg.bus_backoff_max, live_pending_messages=cfg.bus_live_pending_messages,
                                 live_pending_bytes=cfg.bus_live_pending_bytes, max_json_depth=cfg.bus_max_json_depth)

    def start(self) -> None:
        self.hub.hello()
        self.hub.start_bus()
        self._sweep()

    def _sweep(self) -> None:
        self.reactor.call_later(self.sweep_interval, self._sweep)  # first: one that raises is skipped once, not forever
        now = monotonic()
        self.hub.sweep(now)
        if self.publish_rate is not None:
            self.publish_rate.sweep(now)

    def _reply(self, conn: Any, document: dict[str, Any], request_id: Any = None) -> bytes:
        if request_id is not None:
            document["id"] = request_id
        self.c[_MSG_OUT] += 1
        return encode_frame(1, jsonsafe.dump(document))

    def _error(self, conn: Any, code: str, message: str, request_id: Any = None, channel: Any = None) -> None:
        self.c[_REFUSED[code]] += 1
        document: dict[str, Any] = {"op": "error", "code": code, "message": message}
        if type(channel) is str:  # checked Unicode (jsonsafe); cut so an error is never larger than its cause
            document["channel"] = channel[:128]
        self.hub.write(conn, self._reply(conn, document, request_id))

    def on_message(self, conn: Any, is_text: bool, payload: bytes, session: Session | None = None) -> None:
        # Replies are written here, not returned: they must precede messages this request causes.
        self.c[_MSG_IN] += 1
        if not is_text:
            self._error(conn, "binary_not_supported", "binary frames are not accepted: send JSON text frames")
            return None
        try:
            msg = jsonsafe.parse(payload, self.max_depth)
        except JsonError as exc:
            self._error(conn, exc.code, exc.message)
            return None
        if type(msg) is not dict:
            self._error(conn, "bad_request", "a request is a JSON object with an \"op\"")
            return None
        request_id = msg.get("id")
        if request_id is not None and not _valid_id(request_id):
            self._error(conn, "bad_id", _ID_HELP)
            return None
        identity = session.identity if session is not None else None
        user = user_channel(session.user) if session is not None and session.user is not None else None
        try:
            op = msg.get("op")
            if op == "subscribe":
                channels = _channel_list(msg, user, self.hub.max_channels)
                if identity is not None:
                    for channel in channels:
                        if channel != user:
                            _authorize(identity, channel)
                self.subscribe(conn, channels, msg.get("since"), request_id, user)
            elif op == "unsubscribe":
                channels = _channel_list(msg, user, self.hub.max_channels)
                self.hub.unsubscribe(conn, channels)
                self.hub.write(conn, self._reply(conn, {"op": "unsubscribed", "channels": channels}, request_id))
            elif op == "publish":
                channel = msg.get("channel")
                if not valid_channel(channel):
                    raise ChannelError("bad_channel", _BAD_NAME, channel)
                if "data" not in msg:
                    raise ChannelError("bad_request", "publish needs \"data\"")
                if identity is not None:
                    _authorize(identity, channel)
                now = monotonic()
                if not self.allow_publish(channel, now):
                    raise ChannelError("rate_limited", "too many publishes on this channel, retry later", channel)
                self.hub.publish(channel, jsonsafe.dump(msg["data"]), now, self._publish_answer(conn, channel,
                                                                                                request_id))
            else:
                raise ChannelError("unknown_op", "op must be subscribe, unsubscribe or publish")
        except ChannelError as exc:
            self._error(conn, exc.code, exc.message, request_id, exc.channel)
        return None

    def _publish_answer(self, conn: Any, channel: str, request_id: Any) -> Any:
        def done(seq: int, error: str, _reach: int) -> None:
            if error:
                self._error(conn, error, _PUBLISH_ERRORS[error], request_id, channel)
            elif request_id is not None:  # acknowledged only when the client can match the answer
                self.hub.write(conn, self._reply(conn, {"op": "published", "channel": channel, "seq": seq or None},
                                                 request_id))
        return done

    def subscribe(self, conn: Any, channels: list[str], since: Any, request_id: Any, user: str | None) -> None:
        if since is not None:
            if type(since) is not dict:
                raise ChannelError("bad_since", "since is an object: {channel: last seq seen}")
            names = set(channels)
            for channel, seq in since.items():
                if channel not in names:
                    raise ChannelError("bad_since", "since names a channel that is not subscribed here", channel)
                if not jsonsafe.safe_int(seq):
                    raise ChannelError("bad_since", "a since value is an integer 0..2^53-1", channel)
        ack = self._reply(conn, {"op": "subscribed", "channels": channels}, request_id)
        if user is None or since is None or user not in since:
            self.hub.subscribe(conn, channels, since, ack=ack)
            return
        # Resuming the user's own channel, subscribed since the upgrade: the others first (they may be
        # refused, and then nothing has changed), then the user channel again, with since.
        others = [channel for channel in channels if channel != user]
        if others:
            self.hub.subscribe(conn, others, since, ack=ack)
            ack = b""
        self.hub.unsubscribe(conn, [user])
        self.hub.subscribe(conn, [user], {user: since[user]}, internal=True, ack=ack)

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
_BAD_USER = "a user id is 1 to 128 characters of A-Z a-z 0-9 . _ : - @ + = |"


def _channel_list(msg: dict[str, Any], user: str | None, most: int) -> list[str]:
    channels = msg.get("channels")
    if type(channels) is not list or not channels:
        raise ChannelError("bad_request", "channels must be a non-empty list of channel names")
    if len(channels) > most + 1:  # + 1: the user's own channel; the hub counts exactly
        raise ChannelError("too_many_channels", f"at most {most} channels per connection")
    for channel in channels:
        if not valid_channel(channel) and (user is None or channel != user):
            raise ChannelError("bad_channel", _BAD_NAME, channel)
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
        return self.pubsub.on_message(conn, is_text, payload, self)

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

    def handle(self, request: h11.Request, body: bytes, admin: bool = False, conn: Any = None) -> Response | None:
        """Answer one complete request (its framing already checked at its head: ``http.check_framing``,
        in the worker).  Raises HttpError for refusals.

        None: the answer is deferred (a publish waits for its seq) and will be given through
        ``worker.answer(conn, ...)``, within --publish-timeout.
        """
        target = request.target
        path = http.request_path(target)
        query = target.partition(b"?")[2]
        keep_alive = http.keep_alive(request)
        ws_app = None if admin else self.websocket_routes.get(path)
        if ws_app is not None:
            accepted = http.check_upgrade(request)
            # Cheap refusals first: a flood of upgrades to a draining or full worker, or from a
            # foreign page, must not cost a signature verification each.
            self.check_origin(request)
            if self.worker.draining:
                raise HttpError(503, "draining", http.HS_DRAINING)
            if self.worker.websocket_count() >= self.max_connections:
                raise HttpError(503, "connection limit of this worker reached", http.HS_OVER_CAPACITY,
                                (("Retry-After", "1"),))
            identity, offered = self.authenticate(request)
            if offered:  # the client proposed our subprotocol: confirm it (browsers insist on an answer)
                accepted = accepted[:-2] + _PROTOCOL_HEADER
            if ws_app is self.pubsub:
                if identity is not None:
                    ws_app = Session(self.pubsub, identity.user, identity)
                elif query:
                    ws_app = self.user_session(query)
            return Response(accepted, 101, True, ws_app, identity)
        if not admin and (path.startswith(b"/publish/") or path.startswith(b"/users/")):
            self.check_backend(request)
            return self.post(request, path, body, keep_alive, conn)
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
        if len(users) != 1 or not valid_user(users[0]):
            raise self._refused(400, _BAD_USER, "bad_user")
        return Session(self.pubsub, users[0])

    def post(self, request: h11.Request, path: bytes, body: bytes, keep_alive: bool, conn: Any) -> Response | None:
        """``POST /publish/{channel}`` and ``POST /users/{id}/messages``: the body is the message's data.

        Answered once the channel's sequencer numbered the message: 200 with its ``seq``.
        """
        parts = path.split(b"/")
        if parts[1] == b"publish" and len(parts) == 3:
            name = _segment(parts[2])
            if not valid_channel(name):
                raise self._refused(400, _BAD_NAME, "bad_channel")
            channel = name
        elif parts[1] == b"users" and len(parts) == 4 and parts[3] == b"messages":
            name = _segment(parts[2])  # ids like auth0|5f7c... arrive percent-encoded from careful clients
            if not valid_user(name):
                raise self._refused(400, _BAD_USER, "bad_user")
            channel = user_channel(name)
        else:
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method != b"POST":
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "POST"),))
        try:
            data = jsonsafe.dump(jsonsafe.parse(body, self.pubsub.max_depth))
        except JsonError as exc:
            raise self._refused(400, f"the body must be one JSON document in UTF-8: {exc.message}", exc.code) from None
        now = monotonic()
        if not self.pubsub.allow_publish(channel, now):
            raise HttpError(429, "too many publishes on this channel", http.HS_RATE_LIMITED, (("Retry-After", "1"),),
                            code="rate_limited")
        answer = _DeferredAnswer(self, conn, channel, name if channel != name else None, keep_alive)
        self.pubsub.hub.publish(channel, data, now, answer.done)
        return answer.returned()

    def _refused(self, status: int, message: str, code: str, headers: Iterable[tuple[str, str]] = ()) -> HttpError:
        self.worker.stats.c[_REFUSED[code]] += 1
        return HttpError(status, message, http.HS_UNAVAILABLE if status == 503 else http.HS_BAD_REQUEST, headers,
                         code)

    def publish_outcome(self, channel: str, user: str | None, keep_alive: bool, seq: int, error: str,
                        reach: int) -> Response | HttpError:
        if error:
            return self._refused(503, _PUBLISH_ERRORS[error], error, (("Retry-After", "1"),))
        document: dict[str, Any] = {"status": "published", "channel": channel, "seq": seq or None}
        if user is not None:
            cfg = self.worker.config
            document["user"] = user
            # Stored: the user can resume it with since (docs/protocol.md, Users) for the replay window.
            document["stored"] = cfg.replay_max_messages > 0 and cfg.replay_seconds > 0
            if reach >= 0:  # known on one node: were any of the user's connections subscribed here
                document["online"] = bool(reach)
        return Response(http.render_json(200, document, keep_alive), 200, keep_alive)

    def health(self, head: bool, keep_alive: bool, query: bytes = b"") -> tuple[int, bytes]:
        """Liveness (plain) and readiness (``?ready``): a node that cannot reach its broker is
        alive (it serves local traffic) but not ready (it cannot sequence a publish)."""
        worker = self.worker
        if worker.draining:
            return 503, http.render_json(503, {"status": "draining", "worker": worker.index}, keep_alive, head)
        document: dict[str, Any] = {"status": "ok", "worker": worker.index, "connections": worker.websocket_count()}
        status = 200
        remote = self.pubsub.hub.remote
        if remote is not None:
            document["bus"] = remote.detail()
            if not remote.up and "ready" in parse_qs(query.decode("latin-1"), keep_blank_values=True):
                status = 503
                document["status"] = "not_ready"
        return status, http.render_json(status, document, keep_alive, head)

    def metrics(self, head: bool, keep_alive: bool, _query: bytes = b"") -> tuple[int, bytes]:
        self.worker.stats.flush()
        body = metrics.render(self.worker.stats.shared)
        return 200, http.render(200, body, CONTENT_TYPE_LATEST, keep_alive, head=head)

    def stats(self, head: bool, keep_alive: bool, _query: bytes = b"") -> tuple[int, bytes]:
        self.worker.stats.flush()
        document = metrics.snapshot(self.worker.stats.shared)
        document["served_by"] = self.worker.index
        return 200, http.render_json(200, document, keep_alive, head)


class _DeferredAnswer:
    """The HTTP answer to a publish: given at once when the sequencer is local, else later."""

    __slots__ = ("app", "channel", "conn", "keep_alive", "outcome", "user", "waiting")

    def __init__(self, app: App, conn: Any, channel: str, user: str | None, keep_alive: bool) -> None:
        self.app = app
        self.conn = conn
        self.channel = channel
        self.user = user
        self.keep_alive = keep_alive
        self.outcome: Response | HttpError | None = None
        self.waiting = False

    def done(self, seq: int, error: str, reach: int) -> None:
        outcome = self.app.publish_outcome(self.channel, self.user, self.keep_alive, seq, error, reach)
        if self.waiting:
            self.app.worker.answer(self.conn, outcome)
        else:
            self.outcome = outcome

    def returned(self) -> Response | None:
        """What :meth:`App.handle` returns: the answer if it is known already, else None (deferred)."""
        outcome = self.outcome
        if isinstance(outcome, HttpError):
            raise outcome
        self.waiting = outcome is None
        return outcome
