"""Channel state without sockets: two hubs wired by an in-memory link, as two workers would be."""

from __future__ import annotations

import json
import time

import pytest

from benchmarks.wscodec import server_frames
from millionws import metrics
from millionws.protocol.websocket import encode_frame
from millionws.pubsub import channels
from millionws.pubsub.channels import ChannelError, Hub
from millionws.pubsub.records import GAP_EXPIRED


class Conn:
    """A subscriber: collects the JSON documents written to it (frames are small, unmasked text)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs: list[dict] = []

    def take(self, data: bytes) -> None:
        for opcode, fin, payload in server_frames(data, strict=True):  # strict: no RSV bit
            assert opcode == 1 and fin
            self.docs.append(json.loads(payload))

    def seqs(self, channel: str) -> list[int]:
        return [d["seq"] for d in self.docs if d.get("op") == "message" and d["channel"] == channel]

    def __repr__(self) -> str:
        return self.name


class Node:
    """``n`` hubs; records queue up until :meth:`pump` hands them over (the end of a loop turn)."""

    def __init__(self, n: int = 2, **kwargs) -> None:
        self.shared = metrics.SharedStats(n)
        self.queue: list[tuple[int, int, bytes]] = []
        self.hubs = [self._hub(i, n, kwargs) for i in range(n)]

    def _hub(self, i: int, n: int, kwargs: dict) -> Hub:
        def send(dest: int, record: bytes) -> None:
            self.queue.append((i, dest, bytes(record)))

        def fanout(conns, frame: bytes) -> int:
            for conn in conns:
                conn.take(frame)
            return len(conns)

        return Hub(i, n, send, lambda conn, data: conn.take(data), fanout, metrics.WorkerStats(self.shared, i),
                   **kwargs)

    def pump(self) -> int:
        moved = 0
        while self.queue:
            src, dest, record = self.queue.pop(0)
            self.hubs[dest].on_record(src, memoryview(record))
            moved += 1
        return moved

    def channel_owned_by(self, worker: int) -> str:
        return next(f"ch{i}" for i in range(1000) if channels.owner_of(f"ch{i}", len(self.hubs)) == worker)

    def counter(self, worker: int, field: str) -> int:
        return self.hubs[worker].c[metrics.F[field]]


def test_since_older_than_the_buffer_is_announced():
    node = Node(2, replay_max_messages=2)
    ch = node.channel_owned_by(0)
    for i in range(5):
        node.hubs[0].publish(ch, b"%d" % i, 0.0)
    for hub in (0, 1):
        conn = Conn("late")
        node.hubs[hub].subscribe(conn, [ch], since={ch: 1})
        node.pump()
        assert conn.docs[0] == {"op": "gap", "channel": ch, "since": 1, "first": 4, "reason": "expired"}
        assert conn.seqs(ch) == [4, 5]
        assert node.counter(hub, "replay_misses") == 1
    conn = Conn("future")
    node.hubs[1].subscribe(conn, [ch], since={ch: 99})
    node.pump()
    assert conn.docs == [{"op": "gap", "channel": ch, "since": 99, "first": 6, "reason": "unknown"}]


def test_limits_refuse_without_changing_anything():
    node = Node(1, max_channels_per_connection=3, max_subscribers=4)
    hub = node.hubs[0]
    a, b = Conn("a"), Conn("b")
    hub.subscribe(a, ["x", "y"])
    with pytest.raises(ChannelError) as err:
        hub.subscribe(a, ["z", "w"])
    assert err.value.code == "too_many_channels"
    hub.subscribe(a, ["x", "z"])  # x again does not count
    assert hub.registry.of_conn[a] == {"x", "y", "z"} and hub.registry.subscriptions == 3
    with pytest.raises(ChannelError) as err:
        hub.subscribe(b, ["p", "q"])
    assert err.value.code == "too_many_subscribers"
    assert b not in hub.registry.of_conn
    hub.subscribe(b, ["p"])
    assert node.counter(0, "subscriptions") == 4 and node.counter(0, "channels") == 4


def test_drop_forgets_everything_and_tells_the_owner():
    node = Node(2)
    ch = node.channel_owned_by(0)
    conn = Conn("c")
    node.hubs[1].subscribe(conn, [ch, "other"], since={ch: 0})
    node.hubs[1].drop(conn)
    node.pump()
    hub = node.hubs[1]
    reg = hub.registry
    assert reg.subs == {} and reg.holds == {} and reg.of_conn == {} and reg.subscriptions == 0
    assert node.hubs[0].route.sequencer.owned[ch].interest == set()
    assert conn.docs == []  # the replay answer found nobody
    node.hubs[1].drop(conn)  # idempotent


def test_idle_channels_are_evicted_after_the_replay_window_and_restart_at_1():
    shared = metrics.SharedStats(1)
    stats = metrics.WorkerStats(shared, 0)
    sub = Conn("s")
    hub = Hub(0, 1, lambda *_: None, lambda conn, data: conn.take(data),
              lambda conns, frame: sum(1 for c in conns if c.take(frame) is None), stats, replay_seconds=10)
    hub.publish("idle", b"1", channels.monotonic())
    hub.subscribe(sub, ["busy"])
    hub.publish("busy", b"1", channels.monotonic())
    now = channels.monotonic()
    hub.sweep(now + 5)
    assert set(hub.route.sequencer.owned) == {"idle", "busy"}  # inside the window: kept
    hub.sweep(now + 11)
    assert set(hub.route.sequencer.owned) == {"busy"}  # a subscriber keeps a channel
    assert stats.c[metrics.F["channels_evicted"]] == 1
    hub.publish("idle", b"2", channels.monotonic())
    assert hub.route.sequencer.owned["idle"].seq == 1


def test_a_message_is_encoded_once_and_handed_to_one_fanout_for_every_subscriber():
    calls = []
    stats = metrics.WorkerStats(metrics.SharedStats(1), 0)
    hub = Hub(0, 1, lambda *_: None, lambda conn, data: None, lambda conns, frame: calls.append((conns, frame)) or 0,
              stats)
    conns = [Conn(f"c{i}") for i in range(5)]
    for conn in conns:
        hub.subscribe(conn, ["news"])
    hub.publish("news", b'{"k":1}', 0.0)
    (got, frame), = calls
    assert got == tuple(conns)  # a snapshot, in subscription order: a write may close one of them
    assert frame == channels.message_frame("news", 1, b'{"k":1}')


def test_on_the_owner_the_acknowledgement_comes_before_the_replay_and_the_replay_before_live_messages():
    node = Node(1)
    hub = node.hubs[0]
    for i in range(3):
        hub.publish("news", b"%d" % i, 0.0)
    conn = Conn("c")
    hub.subscribe(conn, ["news"], since={"news": 1}, ack=encode_frame(1, b'{"op":"subscribed"}'))
    hub.publish("news", b"3", 0.0)
    assert conn.docs[0] == {"op": "subscribed"} and conn.seqs("news") == [2, 3, 4]
    assert hub.registry.holds == {} and node.counter(0, "replay_hits") == 1  # no hold on the owner


def test_a_connection_held_for_its_replay_gets_no_live_message_before_it():
    node = Node(2)
    ch = node.channel_owned_by(0)
    node.hubs[0].publish(ch, b"1", 0.0)
    conn = Conn("c")
    node.hubs[1].subscribe(conn, [ch], since={ch: 0})
    node.hubs[1].deliver(ch, 2, b"2", 0.0)  # a live message while the replay is asked for
    assert conn.docs == [] and [m[0] for m in node.hubs[1].registry.holds[ch][conn].held] == [2]
    node.pump()
    assert conn.seqs(ch) == [1, 2] and conn in node.hubs[1].registry.subs[ch]


class Failing(Conn):
    """A connection whose next write fails: the server closes it at once, inside the write."""

    hub: Hub

    def take(self, data: bytes) -> None:
        self.hub.drop(self)  # what the worker's close does (the application's on_close)


def test_a_subscription_whose_acknowledgement_cannot_be_written_leaves_nothing_behind():
    node = Node(2)
    hub = node.hubs[0]
    mine, theirs = node.channel_owned_by(0), node.channel_owned_by(1)
    hub.publish(mine, b"1", 0.0)
    conn = Failing("c")
    conn.hub = hub
    hub.subscribe(conn, [mine, theirs, "plain"], since={mine: 0, theirs: 0}, ack=b"ack")
    registry = hub.registry
    assert conn not in registry.of_conn and registry.subs == {} and registry.holds == {}
    node.pump()  # the replay asked for the held channel comes back: for nobody
    assert conn not in registry.of_conn and registry.subs == {} and registry.holds == {}


def test_a_held_connection_whose_replay_cannot_be_written_is_not_made_a_subscriber():
    node = Node(2)
    ch = node.channel_owned_by(0)
    node.hubs[0].publish(ch, b"1", 0.0)
    conn = Failing("c")
    conn.hub = node.hubs[1]
    node.hubs[1].subscribe(conn, [ch], since={ch: 0})  # no ack: nothing written yet, held
    assert conn in node.hubs[1].registry.holds[ch]
    node.pump()  # the replay arrives, its write fails
    assert conn not in node.hubs[1].registry.of_conn and node.hubs[1].registry.subs == {}


def _late_replay_setup() -> tuple[Node, str, Conn]:
    """Worker 1 holds a connection for the replay of a channel of worker 0, whose answer is late."""
    node = Node(2, replay_timeout=10.0)
    ch = node.channel_owned_by(0)
    node.hubs[0].publish(ch, b"1", 0.0)
    node.hubs[0].publish(ch, b"2", 0.0)
    conn = Conn("c")
    node.hubs[1].subscribe(conn, [ch], since={ch: 0})
    node.hubs[1].expire(time.monotonic() + 10.5)  # --replay-timeout passed, the request still unanswered
    assert conn.docs == [{"op": "gap", "channel": ch, "since": 0, "first": 1, "reason": "unknown"}]
    return node, ch, conn


def test_a_replay_later_than_its_timeout_is_still_written_when_nothing_of_the_channel_came_first():
    """The reconnect storm (benchmarks/storm) lost messages this way: the gap said first = since + 1, then the
    messages since + 1 ... were never sent and the next live one jumped past them."""
    node, ch, conn = _late_replay_setup()
    node.pump()  # the answer arrives; on its way it is ahead of every later message of the channel
    node.hubs[0].publish(ch, b"3", 0.0)
    node.pump()
    assert conn.seqs(ch) == [1, 2, 3]
    hub = node.hubs[1]
    assert hub._late == {} and hub.pending.requests == {} and node.counter(1, "replay_holds_expired") == 1


def test_a_late_replay_is_dropped_once_a_message_or_gap_of_the_channel_went_out_or_its_second_deadline_passed():
    node, ch, conn = _late_replay_setup()
    node.hubs[1].deliver(ch, 3, b"3", 0.0)  # a live message before the answer: the answer can no longer go first
    node.pump()
    assert conn.seqs(ch) == [3] and node.hubs[1]._late == {}

    node, ch, conn = _late_replay_setup()
    node.hubs[1].gap(ch, 2, 4, GAP_EXPIRED)
    node.pump()
    assert conn.seqs(ch) == [] and node.hubs[1]._late == {}

    node, ch, conn = _late_replay_setup()
    hub = node.hubs[1]
    hub.expire(time.monotonic() + 21)  # the second deadline: given up, nothing left behind
    assert hub._late == {} and hub.pending.requests == {}
    node.pump()
    assert conn.seqs(ch) == [] and len(conn.docs) == 1  # the gap alone; the answer found nobody


def presence_node(n: int = 2, **kwargs) -> Node:
    from millionws.namespaces import ChannelOptions, Namespaces

    node = Node(n, **kwargs)
    for hub in node.hubs:
        hub.enable_presence(Namespaces("chat:* presence=on join-leave=on", ChannelOptions("", 120.0, 1000, 1 << 20,
                                                                                           0.0)))
    return node


def test_presence_follows_subscriptions_and_a_closed_connection_leaves_no_trace():
    node = presence_node(2, max_channels_per_connection=2)
    hub0, hub1 = node.hubs
    asker, other = Conn("asker"), Conn("other")
    hub1.subscribe(asker, ["chat:1"], user="alice", presence=True)
    hub0.subscribe(other, ["chat:1", "news"], user="bob")
    node.pump()
    for _ in range(2):
        for hub in node.hubs:
            hub.presence.tick()
        node.pump()
    assert [d["count"] for d in asker.docs if d["op"] == "presence"][-1] == 2
    with pytest.raises(ChannelError):  # refused by the registry: presence does not change either
        hub0.subscribe(Conn("greedy"), ["chat:1", "chat:2", "chat:3"], user="carol")
    assert hub0.presence.memberships == 1 and list(hub0.presence.rooms["chat:1"].members) == [other]
    hub0.drop(other)
    assert hub0.presence.rooms["chat:1"].members == {} and hub0.presence.memberships == 0
    assert hub0.registry.of_conn == {}
    hub1.unsubscribe(asker, ["chat:1"])
    assert hub1.presence.memberships == 0
    for hub in node.hubs:
        hub.presence.tick()
    assert hub0.presence.rooms == {} and hub1.presence.rooms == {}  # flushed, then gone: back to the baseline


def test_a_malformed_presence_record_is_dropped_and_counted():
    node = presence_node(2)
    node.hubs[0].on_record(1, memoryview(bytes([16, 3]) + b"abc"))
    assert node.counter(0, "dropped_mesh_malformed") == 1
    node.hubs[0].on_signal(b"\x12\x03ABC")
    assert node.counter(0, "dropped_broker_malformed") == 1
