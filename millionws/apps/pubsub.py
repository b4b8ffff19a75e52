"""``/pubsub``: the JSON operations of docs/protocol.md, on top of :class:`pubsub.channels.Hub`.

Theory of operation: every byte a client sends is checked here, once, before the hub sees it: JSON through
:mod:`jsonsafe` (depth, numbers, Unicode), ids and ``since`` values within 0 … 2^53-1, names against their
alphabets, the token's grants.  A refusal is an error reply with a code, counted in
``millionws_input_refused_total{code}``.

What a channel's namespace allows (``--channel-options``, :mod:`namespaces`) is looked up here once per
publish: who may publish (``publish=backend`` refuses the clients of ``/pubsub``, ``publish_forbidden``) and
the publish rate, one table of buckets per rule that sets one (``rate_limited``).  The replay limits go to
the hub, which gives them to each channel's sequencer or stream when it makes it.

Replies follow the convention of ``apps/__init__.py``: an error or an unsubscribe acknowledgement is
returned; a subscription's acknowledgement is handed to the hub, which sends it before the replay it
causes; a publish is acknowledged only once its channel's sequencer numbered it (``seq`` in the answer),
so acknowledged publishes keep their order, and a publish the sequencer cannot take gets ``unavailable``.

``refresh`` hands the connection a newer token (SECURITY.md, "Expiry during a connection"): it is
verified like the upgrade's, must name the same user, and then replaces the connection's grants (the
:class:`Session`'s identity) and its expiry (``host.expire_at``).  Channels the new grants no longer
allow are left at once and the client is told so in an ``unsubscribed`` push with ``reason``
``forbidden``, before the ``refreshed`` reply, so it never sees a message it may no longer read after
that reply.

Presence (docs/presence.md): ``"presence": true`` in a subscribe asks for the join and leave events of those
channels whose ``--channel-options`` rule has ``join-leave=on``; the ``subscribed`` reply names them in its
``presence`` list.  ``presence_list`` answers once every worker answered (or the list timeout passed).
"""

from __future__ import annotations

from typing import Any

from .. import jsonsafe
from ..auth import AuthError, Identity, Verifier
from ..core.reactor import monotonic
from ..jsonsafe import JsonError
from ..metrics import REFUSED, F
from ..namespaces import ChannelOptions, namespaces_of
from ..protocol.websocket import encode_frame
from ..pubsub.channels import ChannelError, Hub, user_channel, valid_channel
from ..pubsub.control import Control
from ..ratelimit import KeyedBuckets, Rate
from .host import Host

_MSG_IN, _MSG_OUT = F["messages_in"], F["messages_out"]
_RATE_PUBLISHES = F["rate_limited_publishes"]

_ID_HELP = "id is an integer 0..2^53-1 or a string of at most 128 characters"
PUBLISH_ERRORS = {
    "unavailable": "the channel's sequencer cannot be reached now (broker away): not published, retry later",
    "publish_timeout": "the channel's sequencer did not confirm in time: the message may or may not be published",
    "channel_limit": "this server sequences as many channels as it may (--max-channels-per-worker): not published",
}


def _valid_id(value: object) -> bool:
    return jsonsafe.safe_int(value) or (type(value) is str and len(value) <= 128)


class PubSub:
    """``/pubsub``: the JSON operations of docs/protocol.md.  Every refusal is an error reply."""

    __slots__ = ("c", "call_later", "control", "expire_at", "hub", "list_max", "max_depth", "max_token",
                 "namespaces", "publish_rates", "send", "sweep_interval", "verifier")

    def __init__(self, host: Host, verifier: Verifier | None = None) -> None:
        """``verifier``: the server's token verifier (``--auth-jwt-secret``, ``--auth-jwks``), which ``refresh``
        uses; None when the server verifies no tokens, and then ``refresh`` is refused."""
        cfg = host.config
        self.c = host.stats.c
        self.call_later = host.call_later
        self.send = host.send
        self.expire_at = host.expire_at
        self.verifier = verifier
        # A token in a refresh is bounded like one in an upgrade, where the head holds it.
        self.max_token = cfg.max_request_head
        self.max_depth = cfg.max_json_depth
        self.sweep_interval = cfg.sweep_interval
        self.namespaces = ns = namespaces_of(cfg)
        # Buckets per channel, a table per rule with a publish rate (the global flag's is the defaults' rule):
        # as many tables as rules, each keeping only the channels active within a refill (KeyedBuckets).
        self.publish_rates = {options: KeyedBuckets(Rate(options.rate_limit_publishes))
                              for options in (ns.default, *ns.rules) if options.rate_limit_publishes}
        self.hub = Hub(host.index, cfg.workers, host.mesh.send, host.send, host.fanout, host.stats,
                       cfg.replay_seconds, cfg.replay_max_messages, cfg.max_channels_per_connection,
                       cfg.max_subscribers_per_worker, cfg.publish_timeout, cfg.replay_timeout,
                       host.call_later, cfg.replay_max_bytes, cfg.max_channels_per_worker, ns)
        # The control plane (pubsub/control.py): questions to every worker of every node, for the API.  Its
        # answers may carry channel data, so they may be as deep as that plus their own few levels.
        self.control = Control(host.index, cfg.workers, host.mesh.send, host.call_later, self.c, host.mesh.node,
                               cfg.control_timeout, cfg.control_max_bytes,
                               max(cfg.max_json_depth, cfg.bus_max_json_depth) + 8, cfg.control_max_peers,
                               cfg.control_announce_interval)
        host.mesh.on_record = self.control.demux(self.hub.on_record)
        if cfg.bus:  # across nodes: millionws/pubsub/brokers/
            self.hub.connect_bus(cfg.bus, host.reactor, outbox_messages=cfg.bus_outbox_messages,
                                 publish_batch=cfg.bus_publish_batch, fetch_batch=cfg.bus_fetch_batch,
                                 events_per_wake=cfg.bus_events_per_wake, backoff_min=cfg.bus_backoff_min,
                                 backoff_max=cfg.bus_backoff_max, connect_timeout=cfg.bus_connect_timeout,
                                 heartbeat=cfg.bus_heartbeat, live_pending_messages=cfg.bus_live_pending_messages,
                                 live_pending_bytes=cfg.bus_live_pending_bytes, max_json_depth=cfg.bus_max_json_depth,
                                 control_max_bytes=cfg.control_max_bytes, replicas=cfg.bus_replicas,
                                 shards=cfg.bus_shards)
            self.control.connect_bus(self.hub.remote)
        self.list_max = cfg.presence_list_max
        if ns.any("presence"):  # else no presence state at all
            self.hub.enable_presence(ns, interval=cfg.presence_interval, max_events=cfg.presence_max_events,
                                     timeout=cfg.presence_timeout, max_sources=cfg.presence_max_sources,
                                     list_timeout=cfg.presence_list_timeout, max_lists=cfg.presence_max_lists)

    def start(self) -> None:
        self.hub.hello()
        self.hub.start_bus()
        self.control.start()
        self._sweep()

    def _sweep(self) -> None:
        self.call_later(self.sweep_interval, self._sweep)  # first: one that raises is skipped once, not forever
        now = monotonic()
        self.hub.sweep(now)
        for buckets in self.publish_rates.values():
            buckets.sweep(now)

    def _reply(self, document: dict[str, Any], request_id: Any = None) -> bytes:
        if request_id is not None:
            document["id"] = request_id
        self.c[_MSG_OUT] += 1
        return encode_frame(1, jsonsafe.dump(document))

    def _error(self, code: str, message: str, request_id: Any = None, channel: Any = None) -> bytes:
        """The error reply (a refusal, counted by its code)."""
        self.c[REFUSED[code]] += 1
        document: dict[str, Any] = {"op": "error", "code": code, "message": message}
        if type(channel) is str:  # checked Unicode (jsonsafe); cut so an error is never larger than its cause
            document["channel"] = channel[:128]
        return self._reply(document, request_id)

    def on_message(self, conn: Any, is_text: bool, payload: bytes, session: Session | None = None) -> bytes | None:
        """The reply, or None when it is sent with what the request causes (a subscription's
        acknowledgement before its replay; a publish's once the sequencer numbered it)."""
        self.c[_MSG_IN] += 1
        if not is_text:
            return self._error("binary_not_supported", "binary frames are not accepted: send JSON text frames")
        try:
            msg = jsonsafe.parse(payload, self.max_depth)
        except JsonError as exc:
            return self._error(exc.code, exc.message)
        if type(msg) is not dict:
            return self._error("bad_request", "a request is a JSON object with an \"op\"")
        request_id = msg.get("id")
        if request_id is not None and not _valid_id(request_id):
            return self._error("bad_id", _ID_HELP)
        identity = session.identity if session is not None else None
        name = session.user if session is not None and session.user is not None else ""
        user = user_channel(name) if name else None
        try:
            op = msg.get("op")
            if op == "subscribe":
                channels = _channel_list(msg, user, self.hub.max_channels)
                if identity is not None:
                    for channel in channels:
                        if channel != user:
                            _authorize(identity, channel)
                ask = msg.get("presence", False)
                if type(ask) is not bool:
                    raise ChannelError("bad_request", "presence is true or false")
                self.subscribe(conn, channels, msg.get("since"), request_id, user, name, ask)
            elif op == "unsubscribe":
                channels = _channel_list(msg, user, self.hub.max_channels)
                self.hub.unsubscribe(conn, channels)
                return self._reply({"op": "unsubscribed", "channels": channels}, request_id)
            elif op == "publish":
                channel = msg.get("channel")
                if not valid_channel(channel):
                    raise ChannelError("bad_channel", BAD_NAME, channel)
                if "data" not in msg:
                    raise ChannelError("bad_request", "publish needs \"data\"")
                if identity is not None:
                    _authorize(identity, channel)
                options = self.namespaces.of(channel)  # once per publish: who may, and how often
                if not options.clients_publish:
                    raise ChannelError("publish_forbidden", f"{options.pattern} channels are published by backends "
                                       "only (publish=backend in --channel-options)", channel)
                now = monotonic()
                if not self.allow_publish(channel, now, options):
                    raise ChannelError("rate_limited", "too many publishes on this channel, retry later", channel)
                self.hub.publish(channel, jsonsafe.dump(msg["data"]), now, self._publish_answer(conn, channel,
                                                                                                request_id))
            elif op == "refresh":
                return self.refresh(conn, msg.get("token"), session, request_id)
            elif op == "presence_list":
                self.presence_list(conn, msg, request_id, identity)
            else:
                raise ChannelError("unknown_op", "op must be subscribe, unsubscribe, publish, refresh or presence_list")
        except ChannelError as exc:
            return self._error(exc.code, exc.message, request_id, exc.channel)
        return None

    def _publish_answer(self, conn: Any, channel: str, request_id: Any) -> Any:
        def done(seq: int, error: str, _reach: int) -> None:
            if error:
                self.send(conn, self._error(error, PUBLISH_ERRORS[error], request_id, channel))
            elif request_id is not None:  # acknowledged only when the client can match the answer
                self.send(conn, self._reply({"op": "published", "channel": channel, "seq": seq or None}, request_id))
        return done

    def refresh(self, conn: Any, token: Any, session: Session | None, request_id: Any) -> bytes:
        """A newer token for this connection: the ``refreshed`` reply, after an ``unsubscribed`` push for the
        channels the new grants no longer allow.  Raises ChannelError, changing nothing."""
        if type(token) is not str or not token:
            raise ChannelError("bad_request", "refresh needs \"token\": the new JWT")
        if self.verifier is None:
            raise ChannelError("bad_request", "this server verifies no tokens: there is nothing to refresh")
        if session is None or session.identity is None:
            raise ChannelError("bad_request", "this connection was opened without a token: reconnect with one")
        if len(token) > self.max_token:
            raise ChannelError("bad_request", f"a token is at most {self.max_token} characters (--max-request-head)")
        try:
            identity = self.verifier.verify(token)
        except AuthError as exc:
            raise ChannelError("bad_token", exc.message) from None
        if identity.user != session.identity.user:
            raise ChannelError("forbidden", "the new token names another user (sub) than this connection's")
        session.identity = identity
        user = user_channel(session.user) if session.user is not None else None
        # Sorted: the push names them in an order a test (and a person reading a log) can rely on.
        lost = sorted(ch for ch in self.hub.channels_of(conn) if ch != user and not identity.may_use(ch))
        push = b""
        if lost:
            self.hub.unsubscribe(conn, lost)
            push = self._reply({"op": "unsubscribed", "channels": lost, "reason": "forbidden"})
        self.expire_at(conn, identity.expires)
        expires = identity.expires
        if expires is not None and expires.is_integer():
            expires = int(expires)  # the claim was most likely an integer: say it back as one
        return push + self._reply({"op": "refreshed", "expires": expires}, request_id)

    def subscribe(self, conn: Any, channels: list[str], since: Any, request_id: Any, user: str | None,
                  name: str = "", ask: bool = False) -> None:
        if since is not None:
            if type(since) is not dict:
                raise ChannelError("bad_since", "since is an object: {channel: last seq seen}")
            names = set(channels)
            for channel, seq in since.items():
                if channel not in names:
                    raise ChannelError("bad_since", "since names a channel that is not subscribed here", channel)
                if not jsonsafe.safe_int(seq):
                    raise ChannelError("bad_since", "a since value is an integer 0..2^53-1", channel)
        document: dict[str, Any] = {"op": "subscribed", "channels": channels}
        if ask:  # which of them will have join and leave events
            presence = self.hub.presence
            document["presence"] = [c for c in channels if presence is not None and presence.events(c)]
        ack = self._reply(document, request_id)
        if user is None or since is None or user not in since:
            self.hub.subscribe(conn, channels, since, ack=ack, user=name, presence=ask)
            return
        # Resuming the user's own channel, subscribed since the upgrade: the others first (they may be
        # refused, and then nothing has changed), then the user channel again, with since.
        others = [channel for channel in channels if channel != user]
        if others:
            self.hub.subscribe(conn, others, since, ack=ack, user=name, presence=ask)
            ack = b""
        self.hub.unsubscribe(conn, [user])
        self.hub.subscribe(conn, [user], {user: since[user]}, internal=True, ack=ack, user=name, presence=ask)

    def presence_list(self, conn: Any, msg: dict[str, Any], request_id: Any, identity: Identity | None) -> None:
        """``{"op":"presence_list","channel":c,"limit":n}``: answered once every worker answered."""
        channel = msg.get("channel")
        if not valid_channel(channel):
            raise ChannelError("bad_channel", BAD_NAME, channel)
        if identity is not None:
            _authorize(identity, channel)
        limit = msg.get("limit", 100)
        if not jsonsafe.safe_int(limit) or limit > self.list_max:
            raise ChannelError("bad_request", f"limit is an integer 0..{self.list_max} (--presence-list-max)", channel)
        presence = self.hub.presence
        if presence is None or not presence.tracked(channel):
            raise ChannelError("presence_disabled", "this channel has no presence (--channel-options presence=on)",
                               channel)

        def done(count: int, members: list[tuple[str, str]], truncated: bool, _partial: bool) -> None:
            self.send(conn, self._reply({"op": "presence_list", "channel": channel, "count": count,
                                         "members": [{"user": u, "client": c} for u, c in members],
                                         "truncated": truncated}, request_id))

        presence.list(channel, limit, done)

    def on_close(self, conn: Any) -> None:
        self.hub.drop(conn)

    def allow_publish(self, channel: str, now: float, options: ChannelOptions | None = None) -> bool:
        """Per-channel publish rate, per worker: the rate of the channel's rule (``options``, looked up when
        not given), which is --rate-limit-publishes unless the rule sets its own."""
        rates = self.publish_rates
        if not rates:
            return True
        buckets = rates.get(options if options is not None else self.namespaces.of(channel))
        if buckets is None or buckets.take(channel, now):
            return True
        self.c[_RATE_PUBLISHES] += 1
        return False


def _authorize(identity: Identity, channel: str) -> None:
    if not identity.may_use(channel):
        raise ChannelError("forbidden", "the token does not grant this channel", channel)


BAD_NAME = "a channel name is 1 to 128 characters of A-Z a-z 0-9 . _ : -"
BAD_USER = "a user id is 1 to 128 characters of A-Z a-z 0-9 . _ : - @ + = |"


def _channel_list(msg: dict[str, Any], user: str | None, most: int) -> list[str]:
    channels = msg.get("channels")
    if type(channels) is not list or not channels:
        raise ChannelError("bad_request", "channels must be a non-empty list of channel names")
    if len(channels) > most + 1:  # + 1: the user's own channel; the hub counts exactly
        raise ChannelError("too_many_channels", f"at most {most} channels per connection")
    for channel in channels:
        if not valid_channel(channel) and (user is None or channel != user):
            raise ChannelError("bad_channel", BAD_NAME, channel)
    return channels


class Session:
    """The ``/pubsub`` application of a connection with a user id or a token's identity.  ``identity`` is
    the newest token's: :meth:`PubSub.refresh` replaces it (the user stays: a refresh may not change it)."""

    __slots__ = ("identity", "pubsub", "user")

    def __init__(self, pubsub: PubSub, user: str | None, identity: Identity | None = None) -> None:
        self.pubsub = pubsub
        self.user = user
        self.identity = identity

    def on_open(self, conn: Any) -> None:
        if self.user is None:
            return
        try:
            self.pubsub.hub.subscribe(conn, [user_channel(self.user)], internal=True, user=self.user)
        except ChannelError as exc:
            self.pubsub.send(conn, self.pubsub._error(exc.code, exc.message))

    def on_message(self, conn: Any, is_text: bool, payload: bytes) -> bytes | None:
        return self.pubsub.on_message(conn, is_text, payload, self)

    def on_close(self, conn: Any) -> None:
        self.pubsub.on_close(conn)
