"""Every tunable of the server, in one table.

Theory of operation: each limit is declared once, in ``OPTIONS``, with its flag, its
environment variable, its default and its help text.  The command line, the environment,
the configuration file (:mod:`millionws.configfile`), the README table and the tests all read
that table, so a limit cannot exist in one place and be missing in another.
Precedence: command-line flag > environment > configuration file > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .namespaces import namespaces_of


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except OSError:
        return 4096


@dataclasses.dataclass(frozen=True)
class Option:
    name: str  # attribute of Config
    type: type
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "MILLIONWS_" + self.name.upper()


# With TLS each socket read leaves room for a whole TLS record (core/tls.py, RECORD_MAX: 18 437 bytes).
TLS_MIN_RECEIVE_BUFFER = 1 << 16

OPTIONS: tuple[Option, ...] = (
    Option("host", str, "0.0.0.0", "address to listen on"),
    Option("port", int, 8080, "TCP port; every worker binds it with SO_REUSEPORT"),
    Option("workers", int, None, "worker processes (default: CPUs this process may use)"),
    Option("grace", float, 10.0, "seconds a drain may take after SIGTERM before workers are killed"),
    Option("max_message_size", int, 1 << 20, "largest WebSocket message accepted, bytes (over it: close 1009)"),
    Option("handshake_timeout", float, 10.0, "seconds to complete an HTTP request or the WebSocket upgrade"),
    Option("ping_interval", float, 0.0, "seconds between server pings (0: no pings)"),
    Option("ping_timeout", float, 20.0, "seconds to wait for a pong before closing (1011)"),
    Option("close_timeout", float, 5.0, "seconds to wait for the peer during the closing handshake"),
    Option("max_pending_bytes", int, 1 << 20,
           "bytes the kernel refused that one connection may buffer; over it the server stops reading it"),
    Option("max_connections", int, 1_000_000, "open WebSockets per worker; over it upgrades get HTTP 503"),
    Option("max_request_head", int, 16384, "largest HTTP request head, bytes (over it: HTTP 431)"),
    Option("max_request_body", int, 1 << 20, "largest HTTP request body, bytes (over it: HTTP 413)"),
    Option("backlog", int, None, "listen() backlog (default: net.core.somaxconn)"),
    Option("log_level", str, "info", "debug, info, warning or error"),
    Option("max_channels_per_connection", int, 100, "channels one /pubsub connection may subscribe to"),
    Option("max_subscribers_per_worker", int, 2_000_000,
           "channel subscriptions (connection x channel) one worker holds; over it subscribe gets an error"),
    # The replay flags and rate_limit_publishes are the defaults of every channel; --channel-options rules
    # override them per namespace (millionws/namespaces.py).
    Option("replay_seconds", float, 120.0, "seconds a channel's messages stay available to subscribe with since"),
    Option("replay_max_messages", int, 1000, "messages per channel kept for replay (0: no replay)"),
    Option("replay_max_bytes", int, 4 << 20, "bytes of message data per channel kept for replay (oldest go first)"),
    Option("max_channels_per_worker", int, 2_000_000,
           "channels one worker sequences (with their replay buffers); a publish to a new one beyond: channel_limit"),
    Option("max_json_depth", int, 32,
           "deepest nesting of arrays and objects in a /pubsub request or an HTTP publish body (over it: too_deep)"),
    Option("publish_timeout", float, 5.0,
           "seconds a publish waits for its seq from the channel's sequencer before 503 publish_timeout"),
    # 30, not 10: in the reconnect storm of benchmarks/storm (100 000 resubscribes on a saturated node) the
    # slowest replays took 15 s, and a replay given up on can cost a message (docs/protocol.md, "gap").
    Option("replay_timeout", float, 30.0,
           "seconds a subscribe with since waits for its replay from another worker or the broker (then gap)"),
    Option("trust_user_param", bool, False,
           "accept ?user=ID on /pubsub as the connection's user id, unauthenticated (ignored when auth is on)"),
    # -- permessage-deflate (RFC 7692; millionws/protocol/deflate.py, README "Compression") ---------------
    Option("compression", str, "off",
           "off, or deflate: permessage-deflate when the client offers it (less bandwidth, more CPU per message)"),
    Option("compression_min_size", int, 128, "payloads shorter than this many bytes are sent uncompressed"),
    Option("compression_level", int, 6, "zlib level of outgoing messages, 1 (fastest) to 9 (smallest)"),
    # -- security (SECURITY.md) ------------------------------------------------------------
    Option("auth_jwt_secret", str, None, "HS256 secret: WebSocket upgrades need a JWT signed with it"),
    Option("auth_jwks", str, None, "JWKS file of RS256/ES256 public keys for WebSocket tokens"),
    Option("auth_required", bool, None, "refuse upgrades without a valid token (default: on when a key is set)"),
    Option("auth_audience", str, None, "required aud claim of tokens"),
    Option("auth_issuer", str, None, "required iss claim of tokens"),
    Option("backend_token", str, None,
           "bearer token POST /publish and /users/{id}/messages require (with auth on and none set: refused)"),
    Option("admin_port", int, 0, "serve /metrics and /stats only on this port (0: on the main port)"),
    Option("proxy_protocol", bool, False,
           "every connection on the main port starts with a PROXY protocol v1/v2 header (a balancer's): its client "
           "address is the one limits and logs see; a connection without one is closed"),
    Option("proxy_protocol_from", str, "",
           "comma-separated CIDRs whose PROXY headers are believed (empty: any source); others are closed"),
    Option("max_proxy_header", int, 4096, "largest PROXY protocol v2 header, bytes (52 to 65551; v1 is 107 by spec)"),
    Option("tls_cert", str, None, "PEM certificate chain: the main port speaks TLS (wss://); needs tls_key"),
    Option("tls_key", str, None, "PEM private key of tls_cert"),
    Option("tls_reload_interval", float, 10.0,
           "seconds between checks of the certificate files for a change (0: reload on SIGHUP only)"),
    Option("allowed_origins", str, "",
           "comma-separated Origin values allowed to open WebSockets, '*' for any (empty: any)"),
    Option("rate_limit_messages", float, 0.0, "messages per second per connection, burst of one second (0: off)"),
    Option("rate_limit_bytes", float, 0.0, "bytes per second per connection, burst of one second (0: off)"),
    Option("rate_limit_publishes", float, 0.0,
           "publishes per second per channel (0: off); a --channel-options rule may set its own"),
    Option("channel_options", str, "",
           "rules by channel namespace, ';'-separated: 'chat:* presence=on replay-messages=200; ticker:* "
           "publish=backend' (keys: docs/channel-options.md); unset keys take the global flags"),
    # -- presence (millionws/pubsub/presence.py, docs/presence.md) ----------------------------------------
    Option("presence_interval", float, 1.0,
           "seconds between presence flushes: a subscriber that asked gets at most one presence frame per channel "
           "per interval"),
    Option("presence_max_events", int, 100,
           "joins and leaves of a channel listed per interval; beyond, the presence frame carries the count alone"),
    Option("presence_timeout", float, 30.0,
           "seconds a worker (of any node) may stay silent before its members leave the presence counts"),
    Option("presence_max_sources", int, 4096,
           "workers of the deployment whose presence counts a worker keeps; records of more are dropped, counted"),
    Option("presence_list_max", int, 10000, "largest limit of presence_list and GET /channels/{c}/presence"),
    Option("presence_list_timeout", float, 2.0,
           "seconds a presence list waits for the other workers' answers; then it is answered partial"),
    Option("presence_max_lists", int, 256,
           "presence lists one worker gathers at once; beyond: error rate_limited (HTTP 429)"),
    Option("max_connect_rate_per_ip", float, 0.0, "new connections per second per source address (0: off)"),
    Option("max_connections_per_ip", int, 0, "concurrent connections per source address (0: off)"),
    # -- across nodes (millionws/pubsub/brokers/) -----------------------------------------------------
    Option("bus", str, "", "broker shared by the nodes: nats://host:port[,nats://host:port...] (a cluster), "
           "redis://host:port or redis+sentinel://host:port[,host:port...]/<service> (empty: this node only)"),
    Option("bus_replicas", int, 0,
           "copies of each message the broker holds before a publish is acknowledged: NATS JetStream stream replicas "
           "(a majority acknowledges), Redis primary + replicas confirmed with WAIT; 0: NATS 3 in a cluster else 1, "
           "Redis Sentinel 2, Redis 1 (1..5)"),
    Option("bus_shards", int, 16,
           "NATS: every channel on N JetStream shard streams, so the broker's cost follows active channels "
           "(docs/protocol.md); 0: a stream per channel (every channel ever used keeps one); every node of a "
           "deployment must use the same value"),
    Option("bus_outbox_messages", int, 100_000,
           "publishes a worker keeps waiting for the broker's answer; past it a publish gets unavailable: outbox full"),
    Option("bus_publish_batch", int, 256, "publishes sent to the broker in one batch; the rest wait for its answer"),
    Option("bus_fetch_batch", int, 256,
           "stored messages requested from NATS at once in a catch-up or replay; the rest in the next round"),
    Option("bus_events_per_wake", int, 20_000,
           "broker events (messages, acks) a worker handles per loop turn; the rest wait for the next turn"),
    Option("bus_backoff_min", float, 0.1,
           "seconds: first bound of the reconnect and publish-retry backoff (full jitter, doubling per failure)"),
    Option("bus_backoff_max", float, 5.0,
           "seconds: largest reconnect and publish-retry delay (at least --bus-backoff-min)"),
    Option("bus_connect_timeout", float, 2.0,
           "seconds a connection to the broker may take (the whole setup: 4x this); then a reconnect, with backoff"),
    Option("bus_heartbeat", float, 5.0,
           "seconds between liveness probes of the broker; a silent broker is declared down after 2-3 of them"),
    Option("bus_live_pending_messages", int, 1_000_000,
           "NATS: live messages a subscription may buffer; past it the client drops them (then caught up)"),
    Option("bus_live_pending_bytes", int, 256 << 20,
           "NATS: live message bytes a subscription may buffer; past it the client drops them (then caught up)"),
    Option("bus_max_json_depth", int, 64,
           "deepest JSON accepted from the broker (<= 512; with --bus >= --max-json-depth); deeper: malformed, gap"),
    # -- the control plane: questions to every worker of every node (millionws/pubsub/control.py) -------------
    Option("control_timeout", float, 2.0,
           "seconds a question to every worker (GET /channels, disconnect...) waits for answers; then partial: true"),
    Option("control_max_bytes", int, 2 << 20,
           "largest control message between workers (a question or an answer), bytes; at least the largest message "
           "+ 64 KiB (a history answer carries one); answers between nodes over NATS also within its max_payload"),
    Option("control_max_peers", int, 1024,
           "workers of other nodes a worker keeps track of on the bus; beyond, gathers do not wait for newcomers"),
    Option("control_announce_interval", float, 2.0,
           "seconds between announcements of each worker on the bus; a peer silent for 3 of them is forgotten"),
    # -- the API for backends (docs/api.md, millionws/apps/api.py) ---------------------------------------------
    Option("channels_max_limit", int, 1000,
           "largest page of GET /channels (?limit=); each worker answers at most this many names"),
    Option("history_max_limit", int, 1000, "most messages one GET /channels/{c}/history answers (?limit=)"),
    Option("api_max_channels", int, 1000, "channels one POST /broadcast or /users/{id}/unsubscribe may name"),
    # -- between the workers of one node (millionws/pubsub/mesh.py) ----------------------------------------
    Option("mesh_socket_buffer", int, 4 << 20,
           "bytes in flight per direction on each worker-to-worker socket; past it records wait in an outbox"),
    Option("mesh_max_datagram", int, 256 << 10,
           "largest datagram between workers, bytes (1024 to half of --mesh-socket-buffer); bigger records are split"),
    Option("mesh_max_outbox", int, 64 << 20,
           "bytes queued for a worker that is not reading; past it records to it are dropped (counted, logged)"),
    Option("mesh_datagrams_per_wake", int, 64,
           "datagrams read from one worker per readiness; the rest wait for the next loop turn"),
    # -- the loop of each worker (millionws/server/, millionws/core/reactor.py) -------------------------------
    Option("receive_buffer", int, 256 << 10,
           "bytes one read takes from a socket (one buffer per worker; with TLS at least 65536); more input "
           "waits for the next read"),
    Option("buffer_pool_size", int, 256,
           "empty output buffers a worker keeps for reuse (0: none); beyond it released ones are freed"),
    Option("frame_pool_size", int, 1024,
           "idle WebSocket frame parsers a worker keeps for reuse (0: none); beyond it returned ones are freed"),
    Option("accept_batch", int, 256,
           "connections accepted per listener readiness; the rest wait for the next loop turn"),
    Option("pipeline_budget", int, 32,
           "pipelined HTTP requests answered per connection per loop turn; the rest wait for the next turn"),
    Option("timer_resolution", float, 0.05,
           "seconds per tick of the timer wheel: connection deadlines fire up to this late (0.001 to 1)"),
    Option("stats_interval", float, 0.25,
           "seconds between flushes of a worker's counters to shared memory (how stale /metrics may be)"),
    Option("sweep_interval", float, 5.0,
           "seconds between sweeps that expire replay buffers, forget idle channels and publish rate-limit keys"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """The server's settings. Build one with :func:`load`; defaults are in ``OPTIONS``."""

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    grace: float = 10.0
    max_message_size: int = 1 << 20
    handshake_timeout: float = 10.0
    ping_interval: float = 0.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    max_pending_bytes: int = 1 << 20
    max_connections: int = 1_000_000
    max_request_head: int = 16384
    max_request_body: int = 1 << 20
    backlog: int = 4096
    log_level: str = "info"
    max_channels_per_connection: int = 100
    max_subscribers_per_worker: int = 2_000_000
    replay_seconds: float = 120.0
    replay_max_messages: int = 1000
    replay_max_bytes: int = 4 << 20
    max_channels_per_worker: int = 2_000_000
    max_json_depth: int = 32
    publish_timeout: float = 5.0
    replay_timeout: float = 30.0
    trust_user_param: bool = False
    compression: str = "off"
    compression_min_size: int = 128
    compression_level: int = 6
    auth_jwt_secret: str | None = None
    auth_jwks: str | None = None
    auth_required: bool = False
    auth_audience: str | None = None
    auth_issuer: str | None = None
    backend_token: str | None = None
    admin_port: int = 0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_reload_interval: float = 10.0
    allowed_origins: str = ""
    proxy_protocol: bool = False
    proxy_protocol_from: str = ""
    max_proxy_header: int = 4096
    rate_limit_messages: float = 0.0
    rate_limit_bytes: float = 0.0
    rate_limit_publishes: float = 0.0
    channel_options: str = ""
    presence_interval: float = 1.0
    presence_max_events: int = 100
    presence_timeout: float = 30.0
    presence_max_sources: int = 4096
    presence_list_max: int = 10000
    presence_list_timeout: float = 2.0
    presence_max_lists: int = 256
    max_connect_rate_per_ip: float = 0.0
    max_connections_per_ip: int = 0
    bus: str = ""
    bus_replicas: int = 0
    bus_shards: int = 16
    bus_outbox_messages: int = 100_000
    bus_publish_batch: int = 256
    bus_fetch_batch: int = 256
    bus_events_per_wake: int = 20_000
    bus_backoff_min: float = 0.1
    bus_backoff_max: float = 5.0
    bus_connect_timeout: float = 2.0
    bus_heartbeat: float = 5.0
    bus_live_pending_messages: int = 1_000_000
    bus_live_pending_bytes: int = 256 << 20
    bus_max_json_depth: int = 64
    control_timeout: float = 2.0
    control_max_bytes: int = 2 << 20
    control_max_peers: int = 1024
    control_announce_interval: float = 2.0
    channels_max_limit: int = 1000
    history_max_limit: int = 1000
    api_max_channels: int = 1000
    mesh_socket_buffer: int = 4 << 20
    mesh_max_datagram: int = 256 << 10
    mesh_max_outbox: int = 64 << 20
    mesh_datagrams_per_wake: int = 64
    receive_buffer: int = 256 << 10
    buffer_pool_size: int = 256
    frame_pool_size: int = 1024
    accept_batch: int = 256
    pipeline_budget: int = 32
    timer_resolution: float = 0.05
    stats_interval: float = 0.25
    sweep_interval: float = 5.0

    def validate(self) -> None:
        positive = ("workers", "max_message_size", "handshake_timeout", "ping_timeout", "close_timeout",
                    "max_pending_bytes", "max_connections", "max_request_head", "backlog",
                    "max_channels_per_connection", "max_subscribers_per_worker", "max_json_depth",
                    "publish_timeout", "replay_timeout", "replay_max_bytes", "max_channels_per_worker",
                    "bus_outbox_messages", "bus_publish_batch", "bus_fetch_batch", "bus_events_per_wake",
                    "bus_backoff_min", "bus_backoff_max", "bus_connect_timeout", "bus_heartbeat",
                    "bus_live_pending_messages", "bus_live_pending_bytes",
                    "bus_max_json_depth", "control_timeout", "control_max_peers", "control_announce_interval",
                    "channels_max_limit", "history_max_limit", "api_max_channels",
                    "mesh_socket_buffer", "mesh_max_datagram", "mesh_max_outbox",
                    "mesh_datagrams_per_wake", "receive_buffer", "accept_batch", "pipeline_budget",
                    "timer_resolution", "stats_interval", "sweep_interval", "presence_interval",
                    "presence_max_events", "presence_timeout", "presence_max_sources", "presence_list_max",
                    "presence_list_timeout", "presence_max_lists")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("grace", "ping_interval", "max_request_body", "replay_seconds", "replay_max_messages",
                     "buffer_pool_size", "frame_pool_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("rate_limit_messages", "rate_limit_bytes", "rate_limit_publishes", "max_connect_rate_per_ip",
                     "max_connections_per_ip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off)")
        if not 0 <= self.bus_shards <= 4096:
            raise ValueError("bus_shards must be within 0..4096 (0: a stream per channel)")
        namespaces_of(self)  # raises ValueError naming the rule that does not parse
        if self.auth_required and not (self.auth_jwt_secret or self.auth_jwks):
            raise ValueError("auth_required needs auth_jwt_secret or auth_jwks")
        if not 0 <= self.admin_port <= 65535 or (self.admin_port and self.admin_port == self.port):
            raise ValueError("admin_port must be within 1..65535 and differ from port (0: off)")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")
        if self.bus and not self.bus.startswith(("nats://", "redis://", "redis+sentinel://")):
            raise ValueError("bus must be nats://host:port[,...], redis://host:port or "
                             "redis+sentinel://host:port[,...]/<service>")
        if not 0 <= self.bus_replicas <= 5:
            raise ValueError("bus_replicas must be within 0..5 (0: chosen by the broker's topology)")
        if self.compression not in ("off", "deflate"):
            raise ValueError("compression must be off or deflate")
        if self.compression_min_size < 0:
            raise ValueError("compression_min_size must be >= 0")
        if not 1 <= self.compression_level <= 9:
            raise ValueError("compression_level must be within 1..9")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")
        if not 52 <= self.max_proxy_header <= 65551:
            raise ValueError("max_proxy_header must be 52..65551 (a v2 header with IPv6 addresses .. the largest v2)")
        trusted_networks(self.proxy_protocol_from)  # raises ValueError naming the CIDR that does not parse
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: a certificate needs its key")
        if self.tls_cert is not None and self.receive_buffer < TLS_MIN_RECEIVE_BUFFER:
            raise ValueError(f"receive_buffer must be at least {TLS_MIN_RECEIVE_BUFFER} with TLS: each read keeps "
                             "room for a whole TLS record (18437 bytes)")
        if self.tls_reload_interval < 0:
            raise ValueError("tls_reload_interval must be >= 0 (0: SIGHUP only)")
        if self.proxy_protocol_from and not self.proxy_protocol:
            raise ValueError("proxy_protocol_from needs proxy_protocol")
        # Flags that contradict each other: refuse rather than pick one silently.
        if self.trust_user_param and (self.auth_jwt_secret or self.auth_jwks):
            raise ValueError("trust_user_param contradicts auth: with a key, user ids come from tokens only")
        if (self.auth_audience or self.auth_issuer) and not (self.auth_jwt_secret or self.auth_jwks):
            raise ValueError("auth_audience/auth_issuer need auth_jwt_secret or auth_jwks")
        if self.auth_jwt_secret is not None and len(self.auth_jwt_secret) < 16:
            raise ValueError("auth_jwt_secret must be at least 16 characters (a guessable key is no key)")
        if self.backend_token is not None and len(self.backend_token) < 16:
            raise ValueError("backend_token must be at least 16 characters")
        if self.max_json_depth > 512:
            raise ValueError("max_json_depth must be at most 512 (deeper documents break common parsers)")
        # Internal bounds: a combination that cannot work stops the server here, not in a worker.
        if self.bus_max_json_depth > 512:
            raise ValueError("bus_max_json_depth must be at most 512 (deeper documents break common parsers)")
        if self.bus and self.bus_max_json_depth < self.max_json_depth:
            raise ValueError(f"bus_max_json_depth ({self.bus_max_json_depth}) must be at least max_json_depth "
                             f"({self.max_json_depth}): this node's own messages come back from the broker")
        if self.bus_backoff_min > self.bus_backoff_max:
            raise ValueError("bus_backoff_min must be at most bus_backoff_max")
        if not 4096 <= self.control_max_bytes <= 64 << 20:
            raise ValueError("control_max_bytes must be within 4096..67108864")
        largest = max(self.max_message_size, self.max_request_body)
        if self.control_max_bytes < largest + (64 << 10):
            raise ValueError(f"control_max_bytes ({self.control_max_bytes}) must be at least the largest message "
                             f"({largest}, max_message_size or max_request_body) + 65536: a channel's history "
                             "between workers carries at least one message")
        if self.mesh_socket_buffer > 1 << 30:
            raise ValueError("mesh_socket_buffer must be at most 1073741824 (the kernel doubles it into an int)")
        if self.mesh_max_datagram < 1024:
            raise ValueError("mesh_max_datagram must be at least 1024")
        if self.mesh_max_datagram > self.mesh_socket_buffer // 2:
            raise ValueError(f"mesh_max_datagram ({self.mesh_max_datagram}) must be at most half of "
                             f"mesh_socket_buffer ({self.mesh_socket_buffer}): a datagram must fit the socket's queue")
        if self.presence_max_events > 65535 or self.presence_list_max > 65535:
            raise ValueError("presence_max_events and presence_list_max must be at most 65535 (what a presence "
                             "record carries)")
        if self.presence_timeout < 3 * self.presence_interval:
            raise ValueError(f"presence_timeout ({self.presence_timeout:g}) must be at least 3 x presence_interval "
                             f"({self.presence_interval:g}): a worker announces itself every third of it")
        if not 0.001 <= self.timer_resolution <= 1.0:
            raise ValueError("timer_resolution must be within 0.001..1 seconds (epoll waits in milliseconds; "
                             "the loop wakes at least once a second)")


# The defaults as a Config, for constructors that take one limit (``max_free: int = DEFAULTS.frame_pool_size``):
# a module never reads the running configuration from here, the worker passes its values in.
DEFAULTS = Config()

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse(option: Option, raw: str) -> Any:
    if option.type is bool:  # bool("0") is True: spell the accepted words out
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{option.env}/{option.flag}: {raw!r} is not one of {'/'.join(_TRUE + _FALSE)}")
    try:
        return option.type(raw)
    except ValueError as exc:
        raise ValueError(f"{option.env}/{option.flag}: {raw!r} is not a valid {option.type.__name__}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; unset flags stay None so the environment can fill them."""
    for option in OPTIONS:
        if option.type is bool:  # a switch: present means true
            parser.add_argument(option.flag, dest=option.name, action="store_const", const=True, default=None,
                                help=f"{option.help} [env {option.env}]")
            continue
        parser.add_argument(option.flag, dest=option.name, type=option.type, default=None,
                            help=f"{option.help} [env {option.env}]")


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
         file_values: Mapping[str, Any] | None = None) -> Config:
    """Resolve every option from flags, then the environment, then ``file_values`` (a configuration
    file, already typed: :func:`millionws.configfile.read`), then the default."""
    environ = os.environ if environ is None else environ
    file_values = file_values or {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None) if args is not None else None
        if value is None and environ.get(option.env, "") != "":
            value = _parse(option, environ[option.env])
        if value is None:
            value = file_values.get(option.name)
        if value is None:
            value = option.default
        values[option.name] = value
    if values["workers"] is None:
        values["workers"] = _cpus()
    if values["backlog"] is None:
        values["backlog"] = _somaxconn()
    if values["auth_required"] is None:  # secure by default once a key exists
        values["auth_required"] = bool(values["auth_jwt_secret"] or values["auth_jwks"])
    config = Config(**values)
    config.validate()
    return config


def from_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse ``serve``-style arguments; used by tests and the CLI alike."""
    parser = argparse.ArgumentParser(prog="millionws serve")
    add_arguments(parser)
    return load(parser.parse_args(list(argv)), environ)


def trusted_networks(cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--proxy-protocol-from``: the networks whose PROXY headers are believed (empty: any)."""
    networks = []
    for part in (p.strip() for p in cidrs.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"proxy_protocol_from: {part!r} is not a CIDR (like 10.0.0.0/8)") from None
    return tuple(networks)
