"""What the broker tests share: a Backend on a broker in memory (``Fake``), a real Bridge on a
real Reactor that the test drives (``Harness``), and reading back what a real broker stored."""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import Callable

from millionws import metrics
from millionws.config import DEFAULTS
from millionws.core.reactor import Reactor
from millionws.namespaces import ChannelOptions, Namespaces
from millionws.pubsub.brokers.backend import Backend
from millionws.pubsub.brokers.base import E_ACK, E_GAP, E_MSG
from millionws.pubsub.brokers.bridge import Bridge
from millionws.pubsub.brokers.nats import nats_names
from millionws.pubsub.brokers.nats_shards import shard_names

F = metrics.F
CHANNEL = "hostile"  # of the tests that put junk on a real broker (test_nats, test_redis)


def namespaces(spec: str = "", replay_seconds: float = 120.0, replay_max_messages: int = 1000,
               replay_max_bytes: int = 4 << 20) -> Namespaces:
    """``--channel-options`` ``spec`` over these global replay flags."""
    return Namespaces(spec, ChannelOptions("", replay_seconds, replay_max_messages, replay_max_bytes, 0.0))


def fake_bridge(url: str = "nats://x", spec: str = "", **limits) -> types.SimpleNamespace:
    """What a Backend reads of its Bridge; ``limits`` override the ``--bus-*`` defaults (Bridge's keywords),
    ``spec`` is its ``--channel-options``."""
    events: list[tuple] = []
    bounds = {"outbox_messages": DEFAULTS.bus_outbox_messages, "publish_batch": DEFAULTS.bus_publish_batch,
              "fetch_batch": DEFAULTS.bus_fetch_batch, "events_per_wake": DEFAULTS.bus_events_per_wake,
              "backoff_min": DEFAULTS.bus_backoff_min, "backoff_max": DEFAULTS.bus_backoff_max,
              "connect_timeout": DEFAULTS.bus_connect_timeout, "heartbeat": DEFAULTS.bus_heartbeat,
              "live_pending_messages": DEFAULTS.bus_live_pending_messages,
              "live_pending_bytes": DEFAULTS.bus_live_pending_bytes, "max_json_depth": DEFAULTS.bus_max_json_depth,
              "replicas": DEFAULTS.bus_replicas,
              "shards": 0}  # NATS: these tests are of the stream-per-channel layout; test_nats_shards passes N
    assert limits.keys() <= bounds.keys(), limits
    bounds.update(limits)
    return types.SimpleNamespace(emit=events.append, events=events, c=[0] * len(metrics.FIELDS), url=url, error="",
                                 namespaces=namespaces(spec), control_id=None,
                                 control_max_bytes=DEFAULTS.control_max_bytes, **bounds)


class Fake(Backend):
    """A broker in memory: a stream per channel, ``stored[channel]`` the seqs still there
    (``poison``: the seqs whose stored record is malformed)."""

    def __init__(self, stored: dict[str, list[int]], poison: set[int] = frozenset(), spec: str = "",
                 **limits) -> None:
        bridge = fake_bridge(spec=spec, **limits)
        super().__init__(bridge)  # type: ignore[arg-type]
        self.events = bridge.events
        self.stored = stored
        self.poison = poison
        self.connected = True

    async def connect(self):
        pass

    async def wait_closed(self):
        return await asyncio.get_running_loop().create_future()  # never lost

    async def close(self):
        pass

    async def subscribe_live(self, channel):
        return object()

    async def unsubscribe_live(self, channel, sub):
        pass

    async def publish_batch(self, batch):
        raise AssertionError("no test publishes through this fake")

    async def subscribe_signal(self, name):
        return object()

    async def unsubscribe_signal(self, name, sub):
        pass

    async def publish_signals(self, batch):
        self.published_signals = [*getattr(self, "published_signals", []), *batch]

    async def last_seq(self, channel):
        return max(self.stored[channel], default=0)

    async def fetch(self, channel, first, last):
        return [(s, 0.0, None if s in self.poison else b"%d" % s) for s in self.stored[channel] if first <= s <= last]

    async def subscribe_control(self, me):
        raise AssertionError("no test of this fake has a control plane")

    async def publish_control(self, to, body):
        raise AssertionError("no test of this fake has a control plane")

    async def history_head(self, channel):
        stored = self.stored.get(channel)
        if not stored:
            return 0, 1, None
        return max(stored), min(stored), "epoch"


def delivered(fake: Fake) -> list[int]:
    return [e[2] for e in fake.events if e[0] == E_MSG]


class Harness:
    """A Bridge on a real Reactor that the test drives (the test thread is the reactor thread)."""

    def __init__(self, url: str, on_event: Callable[[tuple], None] | None = None, **kwargs) -> None:
        self.reactor = Reactor(lambda *_: None, lambda _: None)
        self.c = [0] * len(metrics.FIELDS)
        self.events: list[tuple] = []
        self.hook = on_event
        kwargs.setdefault("shards", 0)  # NATS: a stream per channel unless the test asks for shards
        self.bridge = Bridge(url, self.reactor, self.c, self.on_event, **kwargs)
        self.req = 0

    def start(self) -> Harness:
        self.bridge.start()
        return self

    def on_event(self, event: tuple) -> None:
        if self.hook is not None:
            self.hook(event)
        self.events.append(event)

    def run_until(self, predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        failed: list[str] = []

        def check() -> None:
            if predicate():
                self.reactor.stop()
            elif time.monotonic() > deadline:
                failed.append(what or repr(predicate))
                self.reactor.stop()
            else:
                self.reactor.call_later(0.005, check)

        self.reactor.call_later(0, check)
        self.reactor.run()
        assert not failed, f"timed out waiting for {failed[0]}; error {self.bridge.error!r}"

    def publish(self, channel: str, document: object) -> int:
        self.req += 1
        self.bridge.publish(channel, json.dumps(document).encode(), time.monotonic(), self.req)
        return self.req

    def acks(self) -> dict[int, tuple[int, str]]:
        acks: dict[int, tuple[int, str]] = {}
        for event in self.events:
            if event[0] == E_ACK:
                assert event[1] not in acks, f"req {event[1]} answered twice"
                acks[event[1]] = (event[2], event[3])
        return acks

    def messages(self, channel: str) -> list[tuple[int, object]]:
        return [(e[2], json.loads(e[3])) for e in self.events if e[0] == E_MSG and e[1] == channel]

    def up(self) -> bool:
        return self.bridge.up

    def subscribed(self, channel: str) -> bool:
        state = self.bridge.backend.channels.get(channel)
        return state is not None and state.cursor is not None and state.live is not None and not state.busy

    def close(self) -> None:
        self.bridge.close()
        self.reactor.close()


def stored(url: str, channel: str, shards: int = 0) -> list[tuple[int, object]]:
    """(seq, document) of every record the broker holds for ``channel``, read without millionws (NATS:
    ``shards`` as the nodes' --bus-shards)."""

    async def read() -> list[tuple[int, object]]:
        if url.startswith("nats://") and shards:
            import nats
            from nats.js.errors import NotFoundError

            nc = await nats.connect(url)
            js = nc.jetstream()
            stream, subject, _ = shard_names(channel, shards)
            out, start = [], 1
            while True:
                try:
                    msg = await js.get_msg(stream, seq=start, subject=subject, next=True)
                except NotFoundError:
                    break
                out.append((int((msg.headers or {}).get("Mws-Seq") or msg.seq), json.loads(msg.data)))
                start = msg.seq + 1
            await nc.close()
            return out
        if url.startswith("nats://"):
            import nats
            from nats.js.errors import NotFoundError

            nc = await nats.connect(url)
            js = nc.jetstream()
            stream = nats_names(channel)[0]
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq=seq, direct=True)
                except NotFoundError:
                    continue
                out.append((msg.seq, json.loads(msg.data)))
            await nc.close()
            return out
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        rows = await r.xrange(f"mws:{{{channel}}}:log")
        await r.aclose()
        return [(int(entry_id.split(b"-")[1]), json.loads(fields[b"d"])) for entry_id, fields in rows]

    return asyncio.run(read())


# -- a real broker with junk on it ---------------------------------------------------------------------------------

def malformed(h: Harness) -> int:
    return h.c[F["dropped_broker_malformed"]]


def gaps(h: Harness) -> list[tuple]:
    return [e for e in h.events if e[0] == E_GAP]


def subscribed(h: Harness) -> None:
    h.bridge.interest(CHANNEL, True)
    h.run_until(lambda: h.up() and h.subscribed(CHANNEL), what="bus up, subscribed")
