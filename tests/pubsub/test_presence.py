"""Presence without sockets: workers wired by an in-memory link, a clock the test moves, frames decoded."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.wscodec import server_frames
from millionws import metrics
from millionws.namespaces import ChannelOptions, Namespaces
from millionws.pubsub import presence as presence_mod
from millionws.pubsub import presence_records as wire
from millionws.pubsub.names import ChannelError
from millionws.pubsub.presence import Presence, presence_frame

DEFAULT = ChannelOptions("", 120.0, 1000, 4 << 20, 0.0)
RULES = "chat:* presence=on join-leave=on; room:* presence=on"


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.docs: list[dict] = []

    def take(self, frame: bytes) -> None:
        for opcode, fin, payload in server_frames(frame, strict=True):
            assert opcode == 1 and fin
            self.docs.append(json.loads(payload))

    def presence(self) -> list[dict]:
        return [d for d in self.docs if d["op"] == "presence"]

    def __repr__(self) -> str:
        return self.name


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(presence_mod, "monotonic", lambda: self.now)


class Mesh:
    """``n`` workers of one node: ``to_all`` queues a record for every other worker; :meth:`pump` delivers."""

    def __init__(self, n: int = 2, rules: str = RULES, **limits) -> None:
        self.queue: list[tuple[int, int, bytes]] = []
        self.timers: list[tuple[float, object]] = []
        self.c = [[0] * len(metrics.FIELDS) for _ in range(n)]
        self.workers = [self._worker(i, n, rules, limits) for i in range(n)]

    def _worker(self, i: int, n: int, rules: str, limits: dict) -> Presence:
        mesh = self

        class Link:
            peers = n - 1

            def start(self, source):
                pass

            def to_all(self, record):
                for dest in range(n):
                    if dest != i:
                        mesh.queue.append((i, dest, record))

            def to_channel(self, channel, record):
                self.to_all(record)

            def to_source(self, peer, source, record):
                mesh.queue.append((i, peer, record))

            def follow(self, channel, on, first):
                if on:
                    self.to_all(first)

        def fanout(conns, frame):
            for conn in conns:
                conn.take(frame)
            return len(conns)

        return Presence(Namespaces(rules, DEFAULT), Link(), fanout, self.c[i],
                        lambda delay, fn: self.timers.append((delay, fn)), source=f"{i + 10:x}" * 3, **limits)

    def pump(self) -> None:
        while self.queue:
            src, dest, record = self.queue.pop(0)
            self.workers[dest].on_record(src, memoryview(record))

    def tick(self) -> None:
        """One interval everywhere: flush, deliver the batches, flush again (a remote change shows after two)."""
        for _ in range(2):
            for worker in self.workers:
                worker.tick()
            self.pump()


def test_a_member_costs_nothing_outside_presence_channels_and_leaves_no_trace(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(1)
    p = mesh.workers[0]
    conn = Conn("a")
    p.join(conn, ["news", "other"], "alice", True)
    assert p.rooms == {} and p.memberships == 0  # no rule: no state at all
    p.join(conn, ["chat:1", "news"], "alice", True)
    p.join(conn, ["room:2"], "alice", False, holds=["chat:1", "news", "room:2"])
    assert set(p.rooms) == {"chat:1", "room:2"} and p.memberships == 2
    assert p.rooms["chat:1"].members[conn] is p.rooms["room:2"].members[conn]  # one client id per connection
    assert p.member(conn, ["room:2"]) == ("alice", p.source + "-1")
    assert mesh.c[0][metrics.F["presence_members"]] == 2
    p.leave(conn, ["chat:1"])
    assert p.memberships == 1 and p.member(conn, ["chat:1", "room:2"]) == ("alice", p.source + "-1")
    p.leave(conn, ["room:2", "news", "chat:1"])
    assert p.memberships == 0 and p.member(conn, ["chat:1", "room:2"]) is None
    p.tick()
    assert p.rooms == {} and not p.dirty  # the last batch went, the rooms with it
    p.join(conn, ["chat:1"], "alice", False)
    assert p.member(conn, ["chat:1"]) == ("alice", p.source + "-2")  # joining again: a new client id


def test_askers_get_one_frame_per_interval_with_the_joins_and_leaves_of_that_interval(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1).workers[0]
    asker, quiet = Conn("asker"), Conn("quiet")
    p.join(asker, ["chat:1"], "alice", True)
    p.join(quiet, ["chat:1"], "", False)
    others = [Conn(f"c{i}") for i in range(5)]
    for i, conn in enumerate(others):
        p.join(conn, ["chat:1"], f"u{i}", False)
    p.leave(others[0], ["chat:1"])  # joined and left within the interval: neither is listed
    assert asker.docs == [] and quiet.docs == []  # nothing before the interval ends
    p.tick()
    (frame,) = asker.presence()
    assert frame["count"] == 6 and frame["channel"] == "chat:1" and frame["leaves"] == []
    assert [j["user"] for j in frame["joins"]] == ["alice", "", "u1", "u2", "u3", "u4"]
    assert all(j["client"].startswith(p.source + "-") for j in frame["joins"])
    assert len({j["client"] for j in frame["joins"]}) == 6 and quiet.docs == []
    p.tick()
    assert len(asker.presence()) == 1  # nothing changed: no frame
    p.leave(others[1], ["chat:1"])
    p.tick()
    last = asker.presence()[-1]
    assert last["count"] == 5 and last["joins"] == [] and [x["user"] for x in last["leaves"]] == ["u1"]


def test_past_max_events_the_frame_carries_the_count_alone_then_lists_again(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1, max_events=10).workers[0]
    asker = Conn("asker")
    p.join(asker, ["chat:1"], "a", True)
    conns = [Conn(str(i)) for i in range(20)]
    for conn in conns:
        p.join(conn, ["chat:1"], "u", False)
    assert p.rooms["chat:1"].joins == {} and p.rooms["chat:1"].overflow  # nothing more is kept once past it
    p.tick()
    assert asker.presence() == [{"op": "presence", "channel": "chat:1", "count": 21}]
    for conn in conns[:10]:
        p.leave(conn, ["chat:1"])
    p.tick()
    assert asker.presence()[-1]["count"] == 11 and len(asker.presence()[-1]["leaves"]) == 10  # exactly the bound


def test_channels_without_join_leave_have_members_but_no_events(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1).workers[0]
    conn = Conn("a")
    p.join(conn, ["room:1"], "alice", True)
    p.tick()
    assert conn.docs == [] and p.rooms["room:1"].askers == {} and p.local_list("room:1", 10)[0] == 1
    assert not p.events("room:1") and p.events("chat:x") and p.tracked("room:1") and not p.tracked("news")


def test_counts_and_changes_cross_workers_and_a_new_room_asks_for_the_counts(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(2)
    w0, w1 = mesh.workers
    early = [Conn(f"e{i}") for i in range(3)]
    for conn in early:
        w0.join(conn, ["chat:1"], "bob", False)
    mesh.tick()
    asker = Conn("asker")
    w1.join(asker, ["chat:1"], "alice", True)  # opens the room on w1: a SYNC; w0 answers at its next tick
    mesh.pump()
    mesh.tick()
    assert asker.presence()[-1]["count"] == 4
    # w0's answer to the SYNC lists no joins for its 3 members: that interval's frame was the count alone
    assert any("joins" not in f for f in asker.presence())
    late = Conn("late")
    w0.join(late, ["chat:1"], "carol", False)
    mesh.tick()
    frame = asker.presence()[-1]
    assert frame["count"] == 5 and [j["user"] for j in frame["joins"]] == ["carol"]
    w0.leave(late, ["chat:1"])
    w0.leave(early[0], ["chat:1"])
    mesh.tick()
    frame = asker.presence()[-1]
    assert frame["count"] == 3 and [x["user"] for x in frame["leaves"]] == ["carol", "bob"]
    assert mesh.c[0][metrics.F["presence_batches"]] >= 3 and mesh.c[1][metrics.F["presence_frames"]] >= 3


def test_a_silent_source_leaves_the_sums_after_the_timeout(monkeypatch):
    clock = Clock(monkeypatch)
    mesh = Mesh(2, timeout=30.0)
    w0, w1 = mesh.workers
    asker = Conn("asker")
    w1.join(asker, ["chat:1"], "alice", True)
    w0.join(Conn("x"), ["chat:1"], "bob", False)
    mesh.pump()
    mesh.tick()
    assert asker.presence()[-1]["count"] == 2
    clock.now += 29.0
    w1.tick()
    assert asker.presence()[-1]["count"] == 2  # within the timeout (w0 said ALIVE at its first tick)
    clock.now += 2.0
    w1.tick()  # w0 said nothing for 31 s: its member is gone from the sum, and the frame is the count alone
    assert asker.presence()[-1] == {"op": "presence", "channel": "chat:1", "count": 1}
    assert w1.sources == {}


def test_alive_keeps_a_quiet_source_in_the_sums(monkeypatch):
    clock = Clock(monkeypatch)
    mesh = Mesh(2, timeout=30.0)
    w0, w1 = mesh.workers
    w1.join(Conn("asker"), ["chat:1"], "alice", True)
    w0.join(Conn("x"), ["chat:1"], "bob", False)
    for _ in range(10):  # 100 s, ticking every 10 s: ALIVE every third of the timeout
        clock.now += 10.0
        mesh.tick()
    assert w1.rooms["chat:1"].remote == {w0.source: 1}


def test_a_restarted_mesh_worker_takes_its_old_members_with_it(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(2)
    w0, w1 = mesh.workers
    asker = Conn("asker")
    w1.join(asker, ["chat:1"], "alice", True)
    w0.join(Conn("x"), ["chat:1"], "bob", False)
    mesh.pump()
    mesh.tick()
    w1.peer_restarted(0)
    w1.tick()
    assert asker.presence()[-1]["count"] == 1 and w1.sources == {}


def test_records_from_more_sources_than_allowed_are_dropped_and_counted(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(1, max_sources=3)
    p = mesh.workers[0]
    p.join(Conn("a"), ["chat:1"], "", True)
    for i in range(5):
        p.on_record(None, wire.batch(f"{i:x}" * 4, "chat:1", 1, {}, {}, False))
    assert len(p.sources) == 3 and len(p.rooms["chat:1"].remote) == 3
    assert mesh.c[0][metrics.F["dropped_presence_sources"]] == 2
    p.on_record(None, wire.alive("0000"))  # a known one is still heard
    assert len(p.sources) == 3


def test_own_records_back_from_a_broker_are_ignored(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1).workers[0]
    p.join(Conn("a"), ["chat:1"], "", True)
    p.on_record(None, wire.batch(p.source, "chat:1", 7, {}, {}, False))
    assert p.rooms["chat:1"].remote == {} and p.sources == {}


def test_the_frame_is_exact_json():
    frame = presence_frame("chat:1", 3, {"abc-1": "alice", "abc-2": ""}, {"abc-3": "auth0|x@y"})
    (_, _, payload), = server_frames(frame, strict=True)
    assert payload == (b'{"op":"presence","channel":"chat:1","count":3,"joins":[{"user":"alice","client":"abc-1"},'
                       b'{"user":"","client":"abc-2"}],"leaves":[{"user":"auth0|x@y","client":"abc-3"}]}')
    (_, _, payload), = server_frames(presence_frame("chat:1", 3, None, None), strict=True)
    assert payload == b'{"op":"presence","channel":"chat:1","count":3}'


# -- records ----------------------------------------------------------------------------------------
def test_records_round_trip():
    joins = {"abc-1": "alice", "abc-2": ""}
    assert wire.decode(wire.batch("abc", "chat:1", 5, joins, {"abc-3": "bob"}, False)) == (
        wire.T_BATCH, "abc", "chat:1", 5, False, [("alice", "abc-1"), ("", "abc-2")], [("bob", "abc-3")])
    assert wire.decode(wire.batch("abc", "chat:1", 500, joins, {}, True)) == (
        wire.T_BATCH, "abc", "chat:1", 500, True, [], [])
    assert wire.decode(wire.sync("abc", "@user:x|y")) == (wire.T_SYNC, "abc", "@user:x|y")
    assert wire.decode(wire.alive("abc")) == (wire.T_ALIVE, "abc")
    assert wire.decode(wire.list_req("abc", 7, 100, "chat:1")) == (wire.T_LIST_REQ, "abc", "chat:1", 7, 100)
    assert wire.decode(wire.list_ans("abc", 7, 9, True, "chat:1", ["def", "123"], [("u", "abc-f")])) == (
        wire.T_LIST_ANS, "abc", "chat:1", 7, 9, True, ["def", "123"], [("u", "abc-f")])


@pytest.mark.parametrize("record", [
    b"",
    b"\x10",
    bytes([wire.T_ALIVE, 3]) + b"ab",  # source cut short
    bytes([wire.T_ALIVE, 3]) + b"ABC",  # not a source
    bytes([wire.T_ALIVE, 3]) + b"abcd",  # a byte too many
    bytes([99, 3]) + b"abc",  # unknown type
    wire.sync("abc", "chat:1")[:-1],
    wire.sync("abc", "chat:1").replace(b"chat:1", b"chat 1"),
    wire.batch("abc", "c", 1, {"abc-1": "u"}, {}, False)[:-1],
    wire.batch("abc", "c", 1, {"abc-1": "u"}, {}, False).replace(b"abc-1", b"abc_1"),
    wire.batch("abc", "c", 1, {"abc-1": "u"}, {}, False).replace(b"\x01u", b"\x01\xff"),
    wire.batch("abc", "c", 1, {"abc-1": "u"}, {}, False) + b"x",
    wire.batch("abc", "c", 1, {}, {}, False).replace(b"\x00\x00\x00\x00\x01", b"\x04\x00\x00\x00\x01", 1),  # flag
    bytes([wire.T_BATCH, 3]) + b"abc" + struct.pack("!BIHHH", 0, 1, 65535, 0, 1) + b"c",  # a bogus member count
    wire.list_ans("abc", 1, 0, False, "c", [], [("u", "abc-1")]),  # more members than its count
    wire.list_ans("abc", 1, 1, False, "c", ["XYZ"], []),
])
def test_malformed_records_raise_before_anything_changes(record):
    with pytest.raises((ValueError, struct.error, IndexError)):
        wire.decode(record)


def test_a_malformed_record_changes_nothing(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1).workers[0]
    p.join(Conn("a"), ["chat:1"], "", True)
    with pytest.raises(ValueError):
        p.on_record(None, wire.batch("abc", "chat:1", 3, {"abc-1": "u"}, {}, False) + b"x")
    assert p.sources == {} and p.rooms["chat:1"].remote == {}


# -- lists ----------------------------------------------------------------------------------------
def test_a_list_on_one_worker_is_answered_at_once_and_bounded(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1).workers[0]
    conns = [Conn(str(i)) for i in range(30)]
    for i, conn in enumerate(conns):
        p.join(conn, ["room:1"], f"u{i}", False)
    got = []
    p.list("room:1", 10, lambda *answer: got.append(answer))
    ((count, members, truncated, partial),) = got
    assert (count, truncated, partial) == (30, True, False) and [u for u, _ in members] == [f"u{i}" for i in range(10)]
    p.list("room:9", 10, lambda *answer: got.append(answer))
    assert got[-1] == (0, [], False, False)


def test_a_list_gathers_every_worker_of_the_node(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(3)
    for w, worker in enumerate(mesh.workers):
        for i in range(4):
            worker.join(Conn(f"{w}.{i}"), ["room:1"], f"w{w}", False)
    mesh.pump()
    got = []
    mesh.workers[1].list("room:1", 6, lambda *answer: got.append(answer))
    assert got == []  # waits for the two others
    mesh.pump()
    ((count, members, truncated, partial),) = got
    assert (count, len(members), truncated, partial) == (12, 6, True, False)
    assert [u for u, _ in members][:4] == ["w1"] * 4  # its own first, then the answers as they came
    assert mesh.workers[1].lists.pending == {}


def test_a_list_whose_answers_do_not_come_is_answered_partial(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(2, list_timeout=2.0)
    w0 = mesh.workers[0]
    w0.join(Conn("a"), ["room:1"], "alice", False)
    got = []
    w0.list("room:1", 10, lambda *answer: got.append(answer))
    mesh.queue.clear()  # worker 1 never answers
    delay, expire = mesh.timers[-1]
    assert delay == 2.0
    expire()
    assert got == [(1, [("alice", f"{w0.source}-1")], False, True)] and w0.lists.pending == {}


def test_lists_in_flight_are_bounded(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(2, max_lists=2)
    w0 = mesh.workers[0]
    w0.list("room:1", 1, lambda *a: None)
    w0.list("room:1", 1, lambda *a: None)
    with pytest.raises(ChannelError) as info:
        w0.list("room:1", 1, lambda *a: None)
    assert info.value.code == "rate_limited"
    mesh.pump()  # the answers free the places
    w0.list("room:1", 1, lambda *a: None)


def test_over_a_bus_a_list_waits_for_the_sources_the_answers_name(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(1)
    p = mesh.workers[0]
    p.lists.link.peers = None  # as a BusLink: who answers is not known in advance
    sent = []
    p.lists.link.to_channel = lambda channel, record: sent.append(record)
    got = []
    p.list("room:1", 10, lambda *answer: got.append(answer))  # no member here: nobody known yet
    req = wire.decode(sent[-1])[3]
    p.on_record(None, wire.list_ans("a1a", req, 2, False, "room:1", ["bbb"], [("x", "a1a-1"), ("y", "a1a-2")]))
    assert got == []  # aaa names bbb: wait for it
    p.on_record(None, wire.list_ans("bbb", req, 1, False, "room:1", ["a1a"], [("z", "bbb-1")]))
    assert got == [(3, [("x", "a1a-1"), ("y", "a1a-2"), ("z", "bbb-1")], False, False)]
    p.join(Conn("me"), ["room:1"], "me", False)  # a member here, and no other source known: at once
    p.list("room:1", 10, lambda *answer: got.append(answer))
    assert got[-1][0] == 1


def test_a_list_request_from_elsewhere_asking_for_more_than_a_record_holds_is_cut(monkeypatch):
    Clock(monkeypatch)
    p = Mesh(1).workers[0]
    for i in range(3):
        p.join(Conn(str(i)), ["room:1"], "u", False)
    monkeypatch.setattr(wire, "MAX_MEMBERS", 2)
    count, members, truncated, _ = p.local_list("room:1", 1 << 31)
    assert (count, len(members), truncated) == (3, 2, True)


# -- properties of the record parser --------------------------------------------------------------
_sources = st.text("0123456789abcdef", min_size=1, max_size=32)
_users = st.one_of(st.just(""), st.text("abcXYZ019._:-@+=|", min_size=1, max_size=128))
_clients = st.builds(lambda s, n: f"{s}-{n:x}", _sources, st.integers(0, (1 << 64) - 1))
_channels = st.text("abcXYZ019._:-", min_size=1, max_size=128)
_changes = st.dictionaries(_clients, _users, max_size=20)


@settings(max_examples=200, deadline=None)
@given(_sources, _channels, st.integers(0, wire.MAX_COUNT), _changes, _changes, st.booleans())
def test_any_batch_round_trips(source, channel, count, joins, leaves, overflow):
    kind, src, ch, n, over, j, lv = wire.decode(wire.batch(source, channel, count, joins, leaves, overflow))
    assert (kind, src, ch, n, over) == (wire.T_BATCH, source, channel, count, overflow)
    if overflow:
        assert j == lv == []
    else:
        assert j == [(u, c) for c, u in joins.items()] and lv == [(u, c) for c, u in leaves.items()]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_make_the_parser_fail_otherwise_than_by_refusing(data):
    try:
        wire.decode(data)
    except (ValueError, struct.error, IndexError):
        pass  # what Hub.on_record and Hub.on_signal count as malformed


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 200))
def test_a_valid_record_with_bytes_changed_is_refused_or_still_valid(noise, at):
    record = bytearray(wire.list_ans("abc", 1, 5, True, "chat:1", ["def"], [("alice", "abc-1"), ("", "abc-2")]))
    at %= len(record)
    record[at:at + len(noise)] = noise
    try:
        fields = wire.decode(bytes(record))
    except (ValueError, struct.error, IndexError):
        return
    assert fields[0] in range(wire.T_FIRST, wire.T_LAST + 1)  # whatever passed is checked all the same


def test_an_asker_closed_by_the_fan_out_of_a_frame_leaves_in_the_next_interval(monkeypatch):
    Clock(monkeypatch)
    mesh = Mesh(1)
    p = mesh.workers[0]
    slow, watcher = Conn("slow"), Conn("watcher")

    def fanout(conns, frame):  # the slow consumer is closed by the write (as Output.fanout does: 1013)
        for conn in conns:
            if conn is slow:
                p.leave(slow, ["chat:1"])
            else:
                conn.take(frame)
        return len(conns)

    p.fanout = fanout
    p.join(slow, ["chat:1"], "slow", True)
    p.join(watcher, ["chat:1"], "w", True)
    p.tick()
    assert watcher.presence()[-1]["count"] == 2
    p.tick()
    last = watcher.presence()[-1]
    assert last["count"] == 1 and [x["user"] for x in last["leaves"]] == ["slow"]
