"""Locust load test for millionws.

Users
-----
EchoUser
    Opens one WebSocket to /echo and keeps it open. Every ``--echo-interval``
    seconds it sends a text message of ``--payload-bytes`` and waits for the
    echo. The round trip is reported as a Locust request (type ``WS``, name
    ``echo``); the handshake as ``WS connect``. A wrong echo, a timeout or a
    closed socket is a failure and the user reconnects.

SubscriberUser, PublisherUser (channels)
    Enabled only when the server has /pubsub (probed once at start; when it
    answers anything but a WebSocket upgrade, both classes are removed from the
    run). Subscribers subscribe to one of ``--channels`` channels and report
    each message's fan-out latency (publish time carried in the message ->
    receipt) as type ``SUB``, name ``fanout``. One publisher (fixed_count=1)
    POSTs to /publish/{channel} every ``--publish-interval`` seconds.
    Fan-out latency compares clocks of the publisher's and the subscriber's
    machines: run them on one host, or on nodes kept in sync (chrony / Amazon
    Time Sync, typically well under a millisecond apart).

Run (see run.sh and README.md)::

    locust -f locust/locustfile.py --host http://127.0.0.1:8080 --headless -u 1000 -r 100 -t 1m
"""

from __future__ import annotations

import json
import random
import string
import time
import urllib.error
import urllib.parse
import urllib.request

import websocket  # websocket-client: blocking, made cooperative by Locust's gevent monkey-patching
from locust.exception import StopUser
from locust.runners import WorkerRunner

from locust import User, between, constant_pacing, events, task

WS_TIMEOUT = 10.0


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("millionws")
    group.add_argument("--echo-path", default="/echo", env_var="LOCUST_ECHO_PATH", help="WebSocket echo path")
    group.add_argument("--echo-interval", type=float, default=1.0, env_var="LOCUST_ECHO_INTERVAL",
                       help="seconds between echo messages of one user")  # fmt: skip
    group.add_argument("--payload-bytes", type=int, default=32, env_var="LOCUST_PAYLOAD_BYTES",
                       help="size of each echo message")  # fmt: skip
    group.add_argument("--channels", type=int, default=10, env_var="LOCUST_CHANNELS",
                       help="channels the subscribers spread over")  # fmt: skip
    group.add_argument("--publish-interval", type=float, default=0.2, env_var="LOCUST_PUBLISH_INTERVAL",
                       help="seconds between publishes of the publisher user")  # fmt: skip
    group.add_argument("--pubsub", choices=["auto", "on", "off"], default="auto", env_var="LOCUST_PUBSUB",
                       help="run the channel users: auto = only when the server has /pubsub")  # fmt: skip


def ws_url(host: str, path: str) -> str:
    """http://h:p -> ws://h:p/path, https -> wss."""
    parts = urllib.parse.urlsplit(host if "://" in host else "http://" + host)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[parts.scheme]
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def http_url(host: str, path: str) -> str:
    parts = urllib.parse.urlsplit(host if "://" in host else "http://" + host)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def pubsub_available(host: str) -> bool:
    """True when a WebSocket handshake to /pubsub succeeds."""
    try:
        ws = websocket.create_connection(ws_url(host, "/pubsub"), timeout=5)
    except (websocket.WebSocketException, OSError):
        return False
    ws.close()
    return True


@events.init.add_listener
def _select_user_classes(environment, **_kwargs) -> None:
    # The master (or a local runner) decides which classes run; workers only
    # run what the master dispatches, so they keep the full list.
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    mode = environment.parsed_options.pubsub
    enabled = mode == "on" or (mode == "auto" and bool(environment.host) and pubsub_available(environment.host))
    if not enabled:
        channel_users = {SubscriberUser, PublisherUser}
        environment.user_classes[:] = [u for u in environment.user_classes if u not in channel_users]
        print("millionws locustfile: /pubsub not used, running EchoUser only", flush=True)


class WebSocketUser(User):
    """Base: one WebSocket per user, request events for everything measured."""

    abstract = True
    path = "/echo"

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.ws: websocket.WebSocket | None = None

    def fire(self, request_type: str, name: str, started: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    def connect(self) -> None:
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(ws_url(self.host, self.path), timeout=WS_TIMEOUT)
        except (websocket.WebSocketException, OSError) as e:
            self.ws = None
            self.fire("WS", "connect", started, 0, e)
            raise StopUser() from e
        self.fire("WS", "connect", started, 0, None)

    def on_start(self) -> None:
        self.connect()

    def on_stop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except (websocket.WebSocketException, OSError):
                pass
            self.ws = None


class EchoUser(WebSocketUser):
    """Echo round-trip time over one long-lived connection."""

    weight = 10

    def wait_time(self) -> float:
        return constant_pacing(self.environment.parsed_options.echo_interval)(self)

    def on_start(self) -> None:
        self.path = self.environment.parsed_options.echo_path
        self.payload_bytes = max(8, self.environment.parsed_options.payload_bytes)
        self.connect()

    @task
    def echo(self) -> None:
        if self.ws is None:
            self.connect()
        tag = "".join(random.choices(string.ascii_letters, k=8))
        message = (tag * (self.payload_bytes // 8 + 1))[: self.payload_bytes]
        started = time.perf_counter()
        try:
            self.ws.send(message)
            reply = self.ws.recv()
            if reply != message:
                raise AssertionError(f"echo mismatch: sent {len(message)} bytes, got {len(reply)}")
        except (websocket.WebSocketException, OSError, AssertionError) as e:
            self.fire("WS", "echo", started, 0, e)
            self.on_stop()  # reconnect on the next task
            return
        self.fire("WS", "echo", started, len(reply), None)


class SubscriberUser(WebSocketUser):
    """Subscribes to one channel and reports fan-out latency of every message it gets."""

    weight = 10
    path = "/pubsub"
    wait_time = between(0, 0)

    def on_start(self) -> None:
        self.connect()
        channels = self.environment.parsed_options.channels
        self.channel = f"bench-{random.randrange(channels)}"
        self.ws.send(json.dumps({"op": "subscribe", "channels": [self.channel]}))
        self.ws.settimeout(1.0)

    @task
    def receive(self) -> None:
        if self.ws is None:
            self.on_start()
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return  # nothing published in the last second
        except (websocket.WebSocketException, OSError) as e:
            self.fire("SUB", "fanout", time.perf_counter(), 0, e)
            self.on_stop()
            return
        received = time.time()
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if msg.get("op") != "message":
            return  # subscribe acknowledgements and the like
        data = msg.get("data")
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                return
        if not isinstance(data, dict) or "sent" not in data:
            return
        latency_ms = max(0.0, (received - float(data["sent"])) * 1000.0)
        self.environment.events.request.fire(
            request_type="SUB",
            name="fanout",
            response_time=latency_ms,
            response_length=len(raw),
            exception=None,
            context={"channel": msg.get("channel"), "seq": msg.get("seq")},
        )


class PublisherUser(User):
    """One publisher for all channels: POST /publish/{channel} with the send time."""

    fixed_count = 1

    def wait_time(self) -> float:
        return constant_pacing(self.environment.parsed_options.publish_interval)(self)

    @task
    def publish(self) -> None:
        channel = f"bench-{random.randrange(self.environment.parsed_options.channels)}"
        body = json.dumps({"sent": time.time(), "pad": "x" * 32}).encode()
        req = urllib.request.Request(http_url(self.host, f"/publish/{channel}"), data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=WS_TIMEOUT) as r:
                length = len(r.read())
        except (urllib.error.URLError, OSError) as e:
            self.fire_publish(started, 0, e)
            return
        self.fire_publish(started, length, None)

    def fire_publish(self, started: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="POST",
            name="/publish/[channel]",
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )
