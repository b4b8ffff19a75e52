"""Where a channel's sequencer is: the mesh between the workers of a node (hubs wired by an in-memory link,
as in tests/pubsub/test_channels.py), and the broker (a fake bridge in place of brokers.Bridge)."""

from __future__ import annotations

import pytest

from millionws import metrics
from millionws.pubsub import brokers, records, routes
from millionws.pubsub.brokers import E_ACK, E_GAP, E_MSG, E_REPLAY
from millionws.pubsub.records import GAP_EXPIRED, GAP_NONE
from millionws.pubsub.routes import BrokerRoute, MeshRoute
from tests.pubsub.test_channels import Conn, Node

# -- MeshRoute: the owner is a worker of this node --------------------------------------------------------------

def test_owner_is_stable_and_spread():
    owners = [routes.owner_of(f"c{i}", 4) for i in range(400)]
    assert owners == [routes.owner_of(f"c{i}", 4) for i in range(400)]
    assert set(owners) == {0, 1, 2, 3}


def test_sequence_is_gap_free_whichever_worker_publishes():
    node = Node(2)
    a, b = Conn("a"), Conn("b")
    node.hubs[0].subscribe(a, ["news"])
    node.hubs[1].subscribe(b, ["news"])
    node.pump()
    for i in range(10):
        node.hubs[i % 2].publish("news", b"%d" % i, 0.0)
        node.pump()
    assert a.seqs("news") == b.seqs("news") == list(range(1, 11))
    assert [d["data"] for d in a.docs] == list(range(10))
    assert node.counter(0, "publishes") == node.counter(1, "publishes") == 5


def test_interest_only_where_subscribers_are():
    node = Node(2)
    ch = node.channel_owned_by(0)
    conn = Conn("c")
    node.hubs[0].publish(ch, b"1", 0.0)
    assert node.queue == []  # nobody else is interested: no record leaves the owner
    node.hubs[1].subscribe(conn, [ch])
    node.pump()
    assert node.hubs[0].route.sequencer.owned[ch].interest == {1}
    node.hubs[0].publish(ch, b"2", 0.0)
    assert len(node.queue) == 1 and node.queue[0][:2] == (0, 1)
    node.pump()
    node.hubs[1].unsubscribe(conn, [ch])
    node.pump()
    assert node.hubs[0].route.sequencer.owned[ch].interest == set()
    node.hubs[0].publish(ch, b"3", 0.0)
    assert node.queue == []
    assert conn.seqs(ch) == [2]


def test_one_record_per_interested_worker_not_per_subscriber():
    node = Node(3)
    ch = node.channel_owned_by(0)
    conns = [Conn(f"c{i}") for i in range(30)]
    for i, conn in enumerate(conns):
        node.hubs[1 + i % 2].subscribe(conn, [ch])
    node.pump()
    node.hubs[0].publish(ch, b"{}", 0.0)
    assert sorted(dest for _, dest, _ in node.queue) == [1, 2]
    node.pump()
    assert all(conn.seqs(ch) == [1] for conn in conns)


@pytest.mark.parametrize("owner", [0, 1])
def test_since_gives_exactly_the_missed_then_live_even_with_traffic_in_flight(owner):
    node = Node(2)
    ch = node.channel_owned_by(owner)
    early = Conn("early")
    node.hubs[1].subscribe(early, [ch])  # worker 1 is already interested
    node.pump()
    for i in range(5):
        node.hubs[owner].publish(ch, b"%d" % i, 0.0)
    node.pump()
    late = Conn("late")
    node.hubs[1].subscribe(late, [ch], since={ch: 2}, ack=b"\x81\x02{}")
    # Publishes race with the replay request: some reach worker 1 before the replay answer.
    node.hubs[owner].publish(ch, b"5", 0.0)
    node.pump()
    node.hubs[owner].publish(ch, b"6", 0.0)
    node.pump()
    assert late.docs[0] == {}
    assert late.seqs(ch) == [3, 4, 5, 6, 7]
    assert early.seqs(ch) == [1, 2, 3, 4, 5, 6, 7]
    assert node.counter(1, "replay_hits") == 1


def test_held_messages_are_not_duplicated_when_they_reach_the_worker_before_the_replay():
    node = Node(2)
    ch = node.channel_owned_by(0)
    node.hubs[1].subscribe(Conn("early"), [ch])
    node.pump()
    node.hubs[0].publish(ch, b"1", 0.0)
    late = Conn("late")
    node.hubs[1].subscribe(late, [ch], since={ch: 0})  # request queued after the MSG of seq 1
    node.hubs[0].publish(ch, b"2", 0.0)  # MSG seq 2 queued before the request is even read
    node.pump()
    node.hubs[0].publish(ch, b"3", 0.0)
    node.pump()
    assert late.seqs(ch) == [1, 2, 3]


def test_restarted_owner_gets_interest_and_requests_again():
    node = Node(2)
    ch = node.channel_owned_by(0)
    conn = Conn("c")
    node.hubs[1].subscribe(conn, [ch])
    node.pump()
    held = Conn("held")
    node.hubs[1].subscribe(held, [ch], since={ch: 0})
    node.queue.clear()  # worker 0 died with the request unread
    node.hubs[0] = node._hub(0, 2, {})
    node.hubs[0].hello()
    node.pump()
    assert node.hubs[0].route.sequencer.owned[ch].interest == {1}
    node.hubs[0].publish(ch, b"1", 0.0)
    node.pump()
    assert conn.seqs(ch) == [1] and held.seqs(ch) == [1]


def test_a_record_about_a_channel_of_another_worker_changes_nothing():
    node = Node(2)
    ch = node.channel_owned_by(0)
    node.hubs[1].on_record(0, memoryview(records.interest(ch, True)))
    assert node.counter(1, "dropped_mesh_malformed") == 1 and node.hubs[1].route.sequencer.owned == {}


# -- BrokerRoute: the owner is the broker ------------------------------------------------------------------------

class FakeBridge:
    """What BrokerRoute uses of brokers.Bridge; records the commands, events are handed in by the test."""

    def __init__(self, url, reactor, counters, on_event, *, namespaces, **limits) -> None:
        self.on_event = on_event
        self.namespaces = namespaces
        self.limits = (url, limits)
        self.up = True
        self.started = False
        self.commands: list[tuple] = []

    def start(self) -> None:
        self.started = True

    def publish(self, channel, data, t0, req) -> None:
        self.commands.append(("publish", channel, data, req))

    def interest(self, channel, on) -> None:
        self.commands.append(("interest", channel, on))

    def replay(self, req, channel, since) -> None:
        self.commands.append(("replay", req, channel, since))


@pytest.fixture
def bus(monkeypatch):
    """Worker 0 of 2 connected to a (fake) broker; every record it would send to its peer is kept."""
    monkeypatch.setattr(brokers, "Bridge", FakeBridge)
    node = Node(2, replay_seconds=30.0, replay_max_messages=7)
    hub = node.hubs[0]
    hub.connect_bus("nats://broker:4222", reactor=None, fetch_batch=3)
    return node, hub, hub.remote


def test_connect_bus_takes_the_broker_route_with_the_replay_bounds_and_limits(bus):
    node, hub, bridge = bus
    assert isinstance(hub.route, BrokerRoute) and hub.route.bridge is bridge
    assert bridge.limits == ("nats://broker:4222", {"fetch_batch": 3})
    assert bridge.namespaces is hub.namespaces  # the broker's streams get the limits the sequencer would have
    options = bridge.namespaces.of("any")
    assert (options.replay_seconds, options.replay_max_messages) == (30.0, 7)
    assert bridge.on_event == hub.route.on_event
    hub.hello()  # no worker depends on another with a bus
    hub.start_bus()
    assert bridge.started and node.queue == []


def test_a_publish_is_answered_by_the_broker_and_refused_at_once_while_it_is_away(bus):
    _node, hub, bridge = bus
    answers = []
    ch = _node.channel_owned_by(0)  # owned by this worker on the mesh: irrelevant with a bus
    hub.publish(ch, b"1", 0.0, lambda *a: answers.append(a))
    hub.publish(ch, b"2", 0.0)  # no answer wanted: still a request number, the bridge answers every publish
    (_, _, _, req1), (_, _, _, req2) = bridge.commands
    assert bridge.commands[0][:3] == ("publish", ch, b"1") and req1 >= 1 and req2 not in (0, req1)
    assert answers == []  # answered with the broker's acknowledgement, not before
    bridge.on_event((E_ACK, req2, 2, ""))
    bridge.on_event((E_ACK, req1, 1, ""))
    assert answers == [(1, "", -1)]
    hub.publish(ch, b"3", 0.0, lambda *a: answers.append(a))
    bridge.on_event((E_ACK, bridge.commands[-1][3], 0, "unavailable: broker connection lost"))
    assert answers[-1] == (0, "unavailable", -1)
    bridge.up = False
    hub.publish(ch, b"4", 0.0, lambda *a: answers.append(a))
    assert answers[-1] == (0, "unavailable", -1) and len(bridge.commands) == 3
    assert hub.c[metrics.F["publishes"]] == 4 and hub.pending.acks == {}


def test_interest_follows_the_first_and_last_subscriber(bus):
    _node, hub, bridge = bus
    a, b = Conn("a"), Conn("b")
    hub.subscribe(a, ["news"])
    hub.subscribe(b, ["news"])
    hub.unsubscribe(a, ["news"])
    assert bridge.commands == [("interest", "news", True)]
    hub.drop(b)
    assert bridge.commands == [("interest", "news", True), ("interest", "news", False)]


def test_a_since_is_always_answered_by_the_broker_in_order_with_the_live_messages(bus):
    node, hub, bridge = bus
    ch = node.channel_owned_by(0)  # on the mesh this worker would answer from its own buffer
    early, late = Conn("early"), Conn("late")
    hub.subscribe(early, [ch])
    hub.subscribe(late, [ch], since={ch: 1}, ack=b"\x81\x02{}")
    assert bridge.commands[-1][0] == "replay" and bridge.commands[-1][2:] == (ch, 1)
    req = bridge.commands[-1][1]
    bridge.on_event((E_MSG, ch, 4, b'"d"', 0.0))  # a live message before the answer: in the answer already
    assert late.docs == [{}] and early.seqs(ch) == [4]
    bridge.on_event((E_REPLAY, req, GAP_NONE, 2, [(2, 0.0, b'"b"'), (3, 0.0, b'"c"'), (4, 0.0, b'"d"')]))
    bridge.on_event((E_MSG, ch, 5, b'"e"', 0.0))
    assert late.seqs(ch) == [2, 3, 4, 5] and early.seqs(ch) == [4, 5]
    assert hub.pending.requests == {} and late in hub.registry.subs[ch]
    bridge.on_event((E_REPLAY, req, GAP_NONE, 2, []))  # answered already: ignored
    assert late.seqs(ch) == [2, 3, 4, 5]


def test_a_replay_for_a_connection_that_left_is_for_nobody(bus):
    _node, hub, bridge = bus
    conn = Conn("c")
    hub.subscribe(conn, ["news"], since={"news": 0})
    req = bridge.commands[-1][1]
    hub.drop(conn)
    bridge.on_event((E_REPLAY, req, GAP_NONE, 1, [(1, 0.0, b"1")]))
    assert conn.docs == [] and hub.registry.subs == {} and hub.pending.requests == {}


def test_a_gap_of_the_live_path_reaches_every_subscriber_of_the_channel(bus):
    _node, hub, bridge = bus
    a, b, other = Conn("a"), Conn("b"), Conn("other")
    hub.subscribe(a, ["news"])
    hub.subscribe(b, ["news"])
    hub.subscribe(other, ["sport"])
    bridge.on_event((E_GAP, "news", 4, 9, GAP_EXPIRED))
    gap = {"op": "gap", "channel": "news", "since": 4, "first": 9, "reason": "expired"}
    assert a.docs == b.docs == [gap] and other.docs == []


def test_with_a_bus_a_record_from_a_peer_is_dropped_and_nothing_is_swept(bus):
    node, hub, _bridge = bus
    hub.on_record(1, memoryview(b"\x07"))  # a well-formed HELLO: workers exchange nothing with a bus
    assert node.counter(0, "dropped_mesh_malformed") == 1 and node.queue == []
    hub.sweep(10.0 ** 9)
    assert node.counter(0, "channels_evicted") == 0


def test_the_route_is_chosen_before_the_first_subscription(monkeypatch):
    monkeypatch.setattr(brokers, "Bridge", FakeBridge)
    node = Node(2)
    hub = node.hubs[0]
    assert isinstance(hub.route, MeshRoute)
    hub.subscribe(Conn("c"), ["news"])
    with pytest.raises(RuntimeError):
        hub.connect_bus("nats://broker:4222", reactor=None)
    assert isinstance(hub.route, MeshRoute) and hub.remote is None
