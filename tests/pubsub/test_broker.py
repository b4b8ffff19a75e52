"""The broker bridge: naming and ordering logic without a broker, then acks, outages and
preflight against real brokers (NATS JetStream and Redis, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import types
from collections.abc import Callable

import pytest

from millionws import metrics
from millionws.config import DEFAULTS
from millionws.core.reactor import EPOLLIN, Reactor
from millionws.pubsub.brokers import base
from millionws.pubsub.brokers.backend import Backend
from millionws.pubsub.brokers.base import (
    E_ACK,
    E_GAP,
    E_MSG,
    E_REPLAY,
    E_STATE,
    GAP_EXPIRED,
    GAP_NONE,
    GAP_UNKNOWN,
    BusConfigError,
    checked_entry,
    redact,
)
from millionws.pubsub.brokers.bridge import Bridge
from millionws.pubsub.brokers.nats import NatsBackend, nats_names, subject_token
from millionws.pubsub.brokers.schemes import preflight
from tests.conftest import free_port

F = metrics.F


def test_subject_names():
    assert subject_token("chat.42") == "chat.42"
    assert subject_token("a..b") == "~" + b"a..b".hex()
    assert subject_token(".a").startswith("~")
    stream, subject, live = nats_names("news")
    assert stream.startswith("MWS_") and len(stream) == 36
    assert (subject, live) == ("mws.in.news", "mws.live.news")
    assert nats_names("a")[0] != nats_names("b")[0]


def test_event_constants_keep_their_values():
    assert (E_MSG, E_GAP, E_REPLAY, E_STATE, E_ACK) == (0, 1, 2, 3, 4)


def test_redact_hides_passwords():
    assert redact("redis://:s3cret@h:6379/0") == "redis://***@h:6379/0"
    assert redact("nats://user:pw@h:4222") == "nats://user:***@h:4222"
    assert redact("nats://h:4222") == "nats://h:4222"


def test_records_read_from_the_broker_are_checked():
    now = time.time()
    assert checked_entry(b"7", b"12.5", b'{"a":1}') == (7, 12.5, b'{"a":1}')
    assert checked_entry("7", None, b"[1]")[:1] == (7,)  # no Mws-T0: a backend publish, now
    assert checked_entry("7", None, b"[1]")[1] >= now
    for bad_seq in (None, b"", b"0", b"-1", b" 1", b"1_0", b"+1", b"\xc2\xb2", "9007199254740992", b"1.0", 1 << 53):
        assert checked_entry(bad_seq, b"1.0", b"{}") is None, bad_seq
    assert checked_entry(b"9007199254740991", b"1", b"{}")[0] == (1 << 53) - 1
    for bad_t in (b"nan", b"inf", b"-inf", b"x", b"", b"1" * 100):
        assert checked_entry(b"3", bad_t, b"{}")[2] is None, bad_t  # valid seq: kept as malformed
    for bad_data in (b"", b"not json", b"{} {}", b"\xff", b"[1e400]", b"NaN", b'"\\ud800"', b"[" * 65 + b"]" * 65,
                     None, "{}"):
        entry = checked_entry(b"3", b"1.0", bad_data)
        assert entry is not None and entry[0] == 3 and entry[2] is None, bad_data


def test_failure_lines_are_rate_limited_per_reason(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    now = [1000.0]
    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    limit = base.Limiter()
    for _ in range(5):
        limit("connection", "refused", logging.WARNING, "down: %s", "refused")
    limit("connection", "timeout", logging.WARNING, "down: %s", "timeout")  # another reason: at once
    now[0] += base.LOG_INTERVAL
    limit("connection", "timeout", logging.WARNING, "down: %s", "timeout")
    assert [r.getMessage() for r in caplog.records] == ["down: refused",
                                                        "down: timeout (4 more like the previous line suppressed)",
                                                        "down: timeout"]


# -- the thread's logic on a broker in memory ---------------------------------------------------------------------


def fake_bridge(url: str = "nats://x", **limits) -> types.SimpleNamespace:
    """What a Backend reads of its Bridge; ``limits`` override the ``--bus-*`` defaults (Bridge's keywords)."""
    events: list[tuple] = []
    bounds = {"outbox_messages": DEFAULTS.bus_outbox_messages, "publish_batch": DEFAULTS.bus_publish_batch,
              "fetch_batch": DEFAULTS.bus_fetch_batch, "events_per_wake": DEFAULTS.bus_events_per_wake,
              "backoff_min": DEFAULTS.bus_backoff_min, "backoff_max": DEFAULTS.bus_backoff_max,
              "live_pending_messages": DEFAULTS.bus_live_pending_messages,
              "live_pending_bytes": DEFAULTS.bus_live_pending_bytes, "max_json_depth": DEFAULTS.bus_max_json_depth}
    assert limits.keys() <= bounds.keys(), limits
    bounds.update(limits)
    return types.SimpleNamespace(emit=events.append, events=events, c=[0] * len(metrics.FIELDS), url=url, error="",
                                 replay_seconds=120.0, replay_max_messages=1000, **bounds)


class Fake(Backend):
    """A broker in memory: a stream per channel, ``stored[channel]`` the seqs still there
    (``poison``: the seqs whose stored record is malformed)."""

    def __init__(self, stored: dict[str, list[int]], poison: set[int] = frozenset(), **limits) -> None:
        bridge = fake_bridge(**limits)
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

    async def last_seq(self, channel):
        return max(self.stored[channel], default=0)

    async def fetch(self, channel, first, last):
        return [(s, 0.0, None if s in self.poison else b"%d" % s) for s in self.stored[channel] if first <= s <= last]


def delivered(fake: Fake) -> list[int]:
    return [e[2] for e in fake.events if e[0] == E_MSG]


def test_live_path_losses_are_read_back_from_the_stream_in_order():
    async def main():
        fake = Fake({"c": [1, 2, 3]})
        fake.channels["c"] = base.Channel()
        await fake.sync("c")  # cursor = 3: starts with the next message
        fake.stored["c"] += [4, 5, 6]
        fake.on_live("c", 6, 0.0, b"6")  # 4 and 5 were lost on the live path
        fake.on_live("c", 5, 0.0, b"5")
        await asyncio.sleep(0)
        fake.stored["c"].append(7)
        fake.on_live("c", 7, 0.0, b"7")
        fake.on_live("c", 7, 0.0, b"7")  # a duplicate
        assert delivered(fake) == [4, 5, 6, 7]

        fake.stored["c"] = [9, 10]  # 8 expired before the node could read it
        fake.on_live("c", 10, 0.0, b"10")
        await asyncio.sleep(0)
        assert (E_GAP, "c", 7, 9, GAP_EXPIRED) in fake.events
        assert delivered(fake)[-2:] == [9, 10]

        fake.channels["c"].replays.append((1, 8))
        await fake.sync("c")
        assert fake.events[-1] == (E_REPLAY, 1, GAP_NONE, 9, [(9, fake.events[-1][4][0][1], b"9"),
                                                              (10, fake.events[-1][4][1][1], b"10")])
        fake.channels["c"].replays.append((2, 6))
        await fake.sync("c")
        assert fake.events[-1][:4] == (E_REPLAY, 2, GAP_EXPIRED, 9)
        assert fake.c[F["dropped_broker_malformed"]] == 0

    asyncio.run(main())


def test_malformed_records_become_one_seq_gaps_and_forged_ones_are_dropped():
    async def main():
        fake = Fake({"c": [1, 2]}, poison={4})
        fake.channels["c"] = base.Channel()
        await fake.sync("c")
        malformed = F["dropped_broker_malformed"]

        fake.on_live("c", b"x", b"1.0", b"{}")  # no valid seq: dropped at once
        assert fake.c[malformed] == 1 and not fake.events

        fake.on_live("c", 3, b"nan", b"{}")  # seq 3 with a bad time, never stored: forged
        await asyncio.sleep(0)
        assert fake.c[malformed] == 2 and not fake.events
        fake.on_live("c", 1000, 1.0, b"{}")  # far ahead of the stream: forged, no endless catch-up
        await asyncio.sleep(0)
        assert fake.c[malformed] == 3 and not fake.events and fake.channels["c"].buffer == []

        fake.stored["c"] += [3, 4, 5]  # 4 is stored but malformed
        fake.on_live("c", 3, 1.0, b"3")
        fake.on_live("c", 4, 1.0, b"not json")  # the stream's version decides: it is malformed too
        await asyncio.sleep(0)
        assert delivered(fake) == [3, 5]
        assert (E_GAP, "c", 3, 5, GAP_UNKNOWN) in fake.events
        assert fake.channels["c"].cursor == 5
        assert fake.c[malformed] == 4

        fake.on_live("c", 6, 1.0, b"not json")  # a forged copy of a seq the stream holds valid
        fake.stored["c"].append(6)
        await asyncio.sleep(0)
        assert delivered(fake) == [3, 5, 6]  # the stored one, not skipped

        # A replay is cut after its last malformed record.
        fake.channels["c"].replays.append((7, 2))
        await fake.sync("c")
        reason, first, entries = fake.events[-1][2:]
        assert (reason, first, [e[0] for e in entries]) == (GAP_UNKNOWN, 5, [5, 6])
        fake.channels["c"].replays.append((8, 4))
        await fake.sync("c")
        assert fake.events[-1][2:4] == (GAP_NONE, 5)

    asyncio.run(main())


def test_the_broker_losing_its_data_is_an_unknown_gap():
    async def main():
        fake = Fake({"c": [1, 2, 3]})
        fake.channels["c"] = base.Channel()
        await fake.sync("c")
        fake.stored["c"] = [1]  # the broker came back without its data
        fake.channels["c"].catchup = True  # as after a reconnect
        await fake.sync("c")
        assert fake.events == [(E_GAP, "c", 3, 2, GAP_UNKNOWN)]
        fake.stored["c"].append(2)
        fake.on_live("c", 2, 1.0, b"2")
        assert delivered(fake) == [2]

    asyncio.run(main())


class Refusing(Fake):
    def refused(self, exc):
        return isinstance(exc, ValueError)


def test_acks_follow_outbox_order_and_refusals_end_after_a_few_tries():
    fake = Refusing({})
    pending = [base.Pending("c", b"1", 0.0, n, req=10 + n) for n in range(4)]
    fake.outbox.extend(pending)
    # 0 stored; 1 refused; 2 stored (will be sent again: stored once, same seq); 3 no answer
    assert not fake._settle(pending, [5, ValueError("no"), 6, TimeoutError()])
    assert fake.events == [(E_ACK, 10, 5, "")]
    assert list(fake.outbox) == pending[1:]
    for _ in range(base.REFUSALS - 2):
        assert not fake._settle(pending[1:], [ValueError("no"), 6, 7])
    assert len(fake.events) == 1
    assert not fake._settle(pending[1:], [ValueError("no"), 6, TimeoutError()])
    assert fake.events[1:] == [(E_ACK, 11, 0, "unavailable: the broker refused it: ValueError: no"), (E_ACK, 12, 6, "")]
    assert fake._settle(pending[3:], [7])
    assert fake.events[-1] == (E_ACK, 13, 7, "") and not fake.outbox
    assert fake.c[F["bus_published"]] == 3 and fake.c[F["bus_outbox"]] == 0


def test_an_outage_refuses_what_was_never_sent_and_keeps_what_may_be_stored():
    fake = Fake({}, outbox_messages=3)  # --bus-outbox-messages 3
    fake.connected = False
    fake.bridge._cmds = []
    fake.bridge.take_commands = lambda: [("publish", "c", b"1", 0.0, 1)]
    fake.commands_ready()
    assert fake.events == [(E_ACK, 1, 0, "unavailable: broker not connected")]

    fake.connected = True
    fake.bridge.take_commands = lambda: [("publish", "c", b"1", 0.0, req) for req in range(2, 7)]
    fake.commands_ready()
    assert [p.req for p in fake.outbox] == [2, 3, 4]
    assert fake.events[1:] == [(E_ACK, 5, 0, "unavailable: outbox full"), (E_ACK, 6, 0, "unavailable: outbox full")]
    assert fake.c[F["bus_dropped"]] == 2 and fake.c[F["bus_outbox"]] == 3

    fake.outbox[0].sent = True  # in a batch when the connection dropped
    fake._refuse_unsent("unavailable: broker connection lost")
    assert [p.req for p in fake.outbox] == [2]
    assert fake.events[3:] == [(E_ACK, 3, 0, "unavailable: broker connection lost"),
                               (E_ACK, 4, 0, "unavailable: broker connection lost")]
    assert fake.c[F["bus_outbox"]] == 1


# -- the --bus-* limits, each honoured -----------------------------------------------------------------------------

def test_publishes_leave_in_batches_of_the_configured_size():
    class Batches(Fake):
        def __init__(self, **limits) -> None:
            super().__init__({}, **limits)
            self.sizes: list[int] = []

        async def publish_batch(self, batch):
            self.sizes.append(len(batch))
            return [p.n for p in batch]

    async def main():
        fake = Batches(publish_batch=2)  # --bus-publish-batch 2
        fake._outbox_ready = asyncio.Event()
        fake.outbox.extend(base.Pending("c", b"1", 0.0, n, req=n) for n in range(1, 6))
        fake._outbox_ready.set()
        task = asyncio.get_running_loop().create_task(fake._publisher())
        while fake.outbox:
            await asyncio.sleep(0)
        task.cancel()
        return fake

    fake = asyncio.run(main())
    assert fake.sizes == [2, 2, 1]
    assert [e[1:] for e in fake.events] == [(n, n, "") for n in range(1, 6)]


def test_reconnects_wait_within_the_configured_backoff(monkeypatch):
    import itertools

    assert all(d <= 0.004 for d in itertools.islice(base.backoff_delays(0.001, 0.004), 200))
    bounds: list[tuple[float, float]] = []
    real = base.backoff_delays

    def recorded(minimum, maximum):
        bounds.append((minimum, maximum))
        return real(minimum, maximum)

    monkeypatch.setattr(base, "backoff_delays", recorded)

    class Unreachable(Fake):
        attempts = 0

        async def connect(self):
            self.attempts += 1
            raise ConnectionError("refused")

    async def main():
        fake = Unreachable({}, backoff_min=0.001, backoff_max=0.004)  # --bus-backoff-min/-max
        fake.connected = False
        task = asyncio.get_running_loop().create_task(fake._connection_loop())
        await asyncio.sleep(0.2)
        task.cancel()
        return fake

    fake = asyncio.run(main())
    assert bounds == [(0.001, 0.004)]
    assert fake.attempts > 20  # with the default (0.1 s doubling to 5 s) about 3 fit in 0.2 s


def test_broker_events_are_handled_at_most_the_configured_number_per_wake():
    reactor = Reactor(lambda *_: None, lambda _: None)
    got: list[tuple] = []
    bridge = Bridge("nats://127.0.0.1:1", reactor, [0] * len(metrics.FIELDS), got.append,
                    events_per_wake=2)  # --bus-events-per-wake 2
    for req in range(1, 6):
        bridge.emit((E_ACK, req, req, ""))
    bridge._on_wake(EPOLLIN)
    assert [e[1] for e in got] == [1, 2] and bridge._wake_pending  # the eventfd is written again for the rest
    bridge._on_wake(EPOLLIN)
    bridge._on_wake(EPOLLIN)
    assert [e[1] for e in got] == [1, 2, 3, 4, 5] and not bridge._wake_pending
    bridge.close()
    reactor.close()


def test_a_live_nats_subscription_buffers_at_most_the_configured_pending_limits():
    subscribed: dict = {}

    class Client:
        async def subscribe(self, subject, **kwargs):
            subscribed.update(kwargs, subject=subject)
            return "sub"

    backend = NatsBackend(fake_bridge(live_pending_messages=10, live_pending_bytes=4096))  # type: ignore[arg-type]
    backend.nc = Client()

    async def no_stream(channel):
        return None

    backend.ensure_stream = no_stream
    assert asyncio.run(backend.subscribe_live("news")) == "sub"
    assert subscribed["subject"] == "mws.live.news"
    assert (subscribed["pending_msgs_limit"], subscribed["pending_bytes_limit"]) == (10, 4096)


def test_a_nats_catch_up_asks_for_at_most_the_configured_batch_at_once():
    backend = NatsBackend(fake_bridge(fetch_batch=3))  # type: ignore[arg-type]  # --bus-fetch-batch 3
    rounds: list[list[int]] = []
    in_flight: list[int] = []

    class JetStream:
        async def stream_info(self, stream):
            return types.SimpleNamespace(state=types.SimpleNamespace(first_seq=1, last_seq=10))

        async def get_msg(self, stream, seq, direct):
            if not in_flight:
                rounds.append([])
            in_flight.append(seq)
            rounds[-1].append(seq)
            await asyncio.sleep(0)  # all of one gather are in flight together
            in_flight.remove(seq)
            return types.SimpleNamespace(seq=seq, headers={"Mws-T0": "1.0"}, time=None, data=b"%d" % seq)

    backend.js = JetStream()
    entries = asyncio.run(backend.fetch("c", 1, 10))
    assert [e[0] for e in entries] == list(range(1, 11))
    assert rounds == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


def test_records_from_the_broker_deeper_than_the_configured_depth_are_malformed():
    assert checked_entry(b"1", b"1.0", b"[[[1]]]", max_depth=3)[2] == b"[[[1]]]"
    assert checked_entry(b"1", b"1.0", b"[[[1]]]", max_depth=2)[2] is None
    assert checked_entry(b"1", b"1.0", b"[" * 64 + b"]" * 64)[2] is not None  # the default: 64
    assert checked_entry(b"1", b"1.0", b"[" * 65 + b"]" * 65)[2] is None

    async def main():
        fake = Fake({"c": [1, 2]}, max_json_depth=2)  # --bus-max-json-depth 2
        fake.channels["c"] = base.Channel()
        await fake.sync("c")
        fake.on_live("c", 3, 1.0, b"[[3]]")
        fake.on_live("c", 4, 1.0, b"[[[4]]]")  # too deep: not handed over; the stream decides
        assert delivered(fake) == [3]
        assert fake.channels["c"].buffer[-1][:1] == (4,) and fake.channels["c"].buffer[-1][2] is None
        await asyncio.sleep(0)  # the catch-up: the stream never stored 4, so it was forged
        assert delivered(fake) == [3] and fake.c[F["dropped_broker_malformed"]] == 1

    asyncio.run(main())


# -- a real Bridge on a real reactor -----------------------------------------------------------------------------


class Harness:
    """A Bridge on a real Reactor that the test drives (the test thread is the reactor thread)."""

    def __init__(self, url: str, on_event: Callable[[tuple], None] | None = None, **kwargs) -> None:
        self.reactor = Reactor(lambda *_: None, lambda _: None)
        self.c = [0] * len(metrics.FIELDS)
        self.events: list[tuple] = []
        self.hook = on_event
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


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(url: str, **kwargs) -> Harness:
        h = Harness(url, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def stored(url: str, channel: str) -> list[tuple[int, object]]:
    """(seq, document) of every record the broker holds for ``channel``, read without millionws."""

    async def read() -> list[tuple[int, object]]:
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


def test_acks_arrive_in_publish_order_with_consecutive_seqs(broker, harness):
    h = harness(broker.url).start()
    h.bridge.interest("acks", True)
    h.run_until(lambda: h.up() and h.subscribed("acks"), what="bus up, subscribed")
    reqs = [h.publish("acks", {"i": i}) for i in range(600)]  # more than two batches
    h.run_until(lambda: len(h.acks()) == len(reqs), what="every publish answered")
    answered = [e[1] for e in h.events if e[0] == E_ACK]
    assert answered == reqs
    assert [h.acks()[req] for req in reqs] == [(seq, "") for seq in range(1, 601)]
    h.run_until(lambda: len(h.messages("acks")) == 600, what="every message delivered")
    assert h.messages("acks") == [(seq, {"i": seq - 1}) for seq in range(1, 601)]
    assert h.c[F["bus_outbox"]] == 0 and h.bridge.detail()["outbox"] == 0
    assert h.c[F["bus_published"]] == 600


@pytest.mark.parametrize("scheme", ["nats", "redis"])
def test_a_publish_while_the_broker_is_down_is_refused_at_once(scheme, harness, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    url = f"{scheme}://127.0.0.1:{free_port()}"  # nobody listens
    h = harness(url).start()
    h.run_until(lambda: h.bridge.error, what="a failed connect")
    assert not h.up() and h.c[F["bus_up"]] == 0
    assert any("cannot connect" in r.getMessage() and h.bridge.error in r.getMessage() for r in caplog.records)
    assert h.bridge.detail() == {"kind": scheme, "up": False, "reconnects": 0, "outbox": 0, "error": h.bridge.error}
    t0 = time.monotonic()
    req = h.publish("down", {"x": 1})
    h.run_until(lambda: req in h.acks(), timeout=2, what="the answer")
    assert time.monotonic() - t0 < 1
    assert h.acks()[req] == (0, "unavailable: broker not connected")
    assert h.c[F["bus_outbox"]] == 0
    warnings = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(warnings) == 1  # the same reason again within LOG_INTERVAL: not logged again


def test_a_broker_killed_with_publishes_in_flight_answers_each_once_and_stores_each_once(broker, harness, caplog):
    caplog.set_level(logging.INFO, "millionws.pubsub.brokers")
    h = harness(broker.url, replay_max_messages=100_000).start()
    h.run_until(h.up, what="bus up")
    first = [h.publish("kill", {"i": i}) for i in range(200)]
    h.run_until(lambda: len(h.acks()) == 200, what="the first publishes answered")
    assert [h.acks()[r][0] for r in first] == list(range(1, 201))

    broker.proc.send_signal(signal.SIGSTOP)  # takes the next batch and answers nothing
    rest = [h.publish("kill", {"i": i}) for i in range(200, 1200)]
    outbox = h.bridge.backend.outbox
    h.run_until(lambda: len(outbox) == 1000 and outbox[0].sent, what="a batch in flight")
    broker.kill()
    h.run_until(lambda: not h.up(), what="the connection lost")
    in_flight = {p.req for p in outbox}
    assert 0 < len(in_flight) <= h.bridge.publish_batch
    refused = [r for r in rest if r not in in_flight]
    h.run_until(lambda: all(r in h.acks() for r in refused), timeout=5, what="unsent publishes refused")
    assert all(h.acks()[r] == (0, "unavailable: broker connection lost") for r in refused)
    assert not in_flight & h.acks().keys()  # kept: they may have been stored
    assert h.bridge.detail()["outbox"] == len(in_flight) == h.c[F["bus_outbox"]]
    assert any("connection lost" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    broker.start()
    h.run_until(lambda: in_flight <= h.acks().keys(), timeout=30, what="in-flight publishes answered after restart")
    assert any("reconnected after" in r.getMessage() for r in caplog.records)
    acks = h.acks()
    assert set(acks) == set(first) | set(rest)
    sent = {r: i for i, r in enumerate(first + rest)}
    acked = {sent[r]: seq for r, (seq, error) in acks.items() if not error}
    assert all(seq > 0 for seq in acked.values())
    records = stored(broker.url, "kill")
    documents = [doc["i"] for _seq, doc in records]
    assert len(documents) == len(set(documents)), "a message stored twice"
    assert {doc["i"]: seq for seq, doc in records} == acked  # each acked with the seq it was stored as
    assert h.bridge.detail()["outbox"] == 0 and h.c[F["bus_outbox"]] == 0


def test_a_retry_after_a_lost_answer_gets_the_original_seq(broker, harness):
    h = harness(broker.url)
    backend = h.bridge.backend
    real = backend.publish_batch
    lost: list[int] = []

    async def lose_first_answer(batch):
        results = await real(batch)
        if not lost:
            lost.extend(results)
            raise ConnectionError("the answer was lost")  # stored, but nobody knows
        return results

    backend.publish_batch = lose_first_answer
    h.start()
    h.run_until(h.up, what="bus up")
    reqs = [h.publish("retry", {"i": i}) for i in range(3)]
    h.run_until(lambda: len(h.acks()) == 3, what="the answers")
    assert lost == [1, 2, 3]
    assert [h.acks()[r] for r in reqs] == [(1, ""), (2, ""), (3, "")]
    assert stored(broker.url, "retry") == [(1, {"i": 0}), (2, {"i": 1}), (3, {"i": 2})]


def test_redis_function_remembers_recent_seqs_per_publisher(redis_broker, harness):
    h = harness(redis_broker.url).start()
    h.run_until(h.up, what="bus up (function loaded)")

    async def main():
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_broker.url)
        call = lambda n, floor: r.fcall("mws_publish", 1, "d", b"{}", "", "p", n, floor)  # noqa: E731
        assert [await call(5, 5), await call(6, 5), await call(5, 5), await call(6, 5)] == [1, 2, 1, 2]
        assert await r.zcard("mws:{d}:acks:p") == 2
        assert await call(7, 6) == 3
        assert await r.zrange("mws:{d}:acks:p", 0, -1) == [b"2", b"3"]  # 5 was answered (below the floor)
        assert await r.fcall("mws_publish", 1, "d", b"{}") == 4  # a backend: no publisher id
        assert await r.fcall("mws_publish", 1, "d", b"{}", "nan") == 5  # a bad time is replaced
        rows = await r.xrange("mws:{d}:log")
        assert [row[0] for row in rows] == [b"0-1", b"0-2", b"0-3", b"0-4", b"0-5"]
        assert float(rows[4][1][b"t"]) == pytest.approx(time.time(), abs=60)
        await r.aclose()

    asyncio.run(main())


# -- fail fast -----------------------------------------------------------------------------------------------------


def test_preflight_accepts_a_working_broker(broker):
    assert preflight(broker.url) is None


@pytest.mark.parametrize("scheme", ["nats", "redis"])
def test_preflight_of_an_unreachable_broker_is_a_quick_warning(scheme):
    t0 = time.monotonic()
    warning = preflight(f"{scheme}://127.0.0.1:{free_port()}", timeout=1.0)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(warning, str) and "\n" not in warning
    assert "unreachable" in warning and "not ready" in warning


@pytest.mark.parametrize("scheme,module", [("nats", "nats"), ("redis", "redis")])
def test_preflight_without_the_client_library_refuses(scheme, module, monkeypatch, harness):
    monkeypatch.setitem(__import__("sys").modules, module, None)
    url = f"{scheme}://127.0.0.1:{free_port()}"
    with pytest.raises(BusConfigError) as info:
        preflight(url)
    message = str(info.value)
    assert f"pip install 'millionws[{scheme}]'" in message and f"--bus {url}" in message and "\n" not in message
    h = harness(url).start()  # a bridge started anyway says the same in /health
    h.run_until(lambda: "needs the" in h.bridge.error, what="the reason")
    assert f"millionws[{scheme}]" in h.bridge.detail()["error"]


def test_preflight_rejects_an_unknown_scheme():
    with pytest.raises(BusConfigError, match="nats://host:port or redis://host:port"):
        preflight("amqp://h")


def test_a_frozen_broker_is_noticed_and_its_in_flight_publishes_are_stored_once(broker, harness, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    h = harness(broker.url).start()
    h.run_until(h.up, what="bus up")
    broker.proc.send_signal(signal.SIGSTOP)  # no RST, no answer: only pings / heartbeats can tell
    try:
        reqs = [h.publish("frozen", {"i": i}) for i in range(10)]
        outbox = h.bridge.backend.outbox
        h.run_until(lambda: outbox and outbox[0].sent, what="the batch sent")
        h.run_until(lambda: not h.up(), timeout=4 * broker_module_heartbeat(), what="the frozen broker noticed")
        # The thread reports the state before it writes the log line: poll for the line too.
        h.run_until(lambda: any("connection lost" in r.getMessage() for r in caplog.records),
                    what="the loss logged with its reason")
        assert not h.acks() and h.bridge.detail()["outbox"] == 10  # sent, maybe stored: kept
    finally:
        broker.proc.send_signal(signal.SIGCONT)  # it reads and stores what the old connection sent
    h.run_until(lambda: len(h.acks()) == 10, what="the answers after the broker thawed")
    assert [h.acks()[r] for r in reqs] == [(seq, "") for seq in range(1, 11)]
    assert stored(broker.url, "frozen") == [(seq, {"i": seq - 1}) for seq in range(1, 11)]


def broker_module_heartbeat() -> float:
    return base.HEARTBEAT
