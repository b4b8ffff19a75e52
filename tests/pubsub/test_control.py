"""The control plane (millionws/pubsub/control.py, members.py, records.decode_control), in process.

Workers of one node are wired by an in-memory mesh that the test pumps; the bus is a fake bridge whose
published messages the test hands to the other nodes' controls, as the broker would."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from millionws import metrics
from millionws.jsonsafe import JsonError
from millionws.pubsub import records
from millionws.pubsub.brokers.base import E_ANSWER, E_CTL, E_STATE
from millionws.pubsub.control import Control
from millionws.pubsub.members import MISSED, Members, peer_id

F = metrics.F
NODE_A, NODE_B = "aa" * 8, "bb" * 8


class Timers:
    def __init__(self) -> None:
        self.calls: list[tuple[float, Any]] = []

    def call_later(self, delay: float, fn: Any) -> None:
        self.calls.append((delay, fn))

    def fire(self) -> None:
        calls, self.calls = self.calls, []
        for _, fn in calls:
            fn()


class FakeBridge:
    """What the control plane uses of a brokers.Bridge; ``sent``: (to, body) published."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.sent: list[tuple[str | None, bytes]] = []
        self.queries: list[tuple] = []
        self.control_id: str | None = None
        self.on_control: Any = None

    def control_publish(self, to: str | None, body: bytes) -> None:
        self.sent.append((to, body))

    def query(self, req: int, what: str, args: tuple) -> None:
        self.queries.append((req, what, args))


class Node:
    """``workers`` controls of one node on an in-memory mesh (``drop``: workers whose records are lost)."""

    def __init__(self, workers: int, node: str = NODE_A, bus: bool = False, **kwargs: Any) -> None:
        self.queue: list[tuple[int, int, bytes]] = []
        self.timers = Timers()
        self.drop: set[int] = set()
        self.counters = [[0] * len(metrics.FIELDS) for _ in range(workers)]
        self.controls = [Control(i, workers, self._sender(i), self.timers.call_later, self.counters[i], node, **kwargs)
                         for i in range(workers)]
        self.bridges = [FakeBridge() for _ in range(workers)] if bus else []
        for control, bridge in zip(self.controls, self.bridges, strict=False):
            control.connect_bus(bridge)

    def _sender(self, src: int) -> Any:
        def send(dest: int, record: bytes) -> None:
            assert dest != src
            self.queue.append((src, dest, bytes(record)))
        return send

    def pump(self) -> None:
        while self.queue:
            src, dest, record = self.queue.pop(0)
            if dest not in self.drop:
                self.controls[dest].on_record(src, memoryview(record))

    def register(self, kind: str, handler_of: Any) -> None:
        for i, control in enumerate(self.controls):
            control.register(kind, handler_of(i))


def collect() -> tuple[list, Any]:
    got: list = []

    def done(answers: list, complete: bool) -> None:
        got.append((answers, complete))
    return got, done


# -- the messages ------------------------------------------------------------------------------------

def decode(body: bytes) -> tuple:
    return records.decode_control(body, 1 << 20, 40)


def test_control_messages_round_trip():
    assert decode(records.control_message("req", NODE_A, 3, id=7, kind="channels", args={"limit": 5})) \
        == ("req", NODE_A, 3, 7, "channels", {"limit": 5})
    assert decode(records.control_message("ans", NODE_A, 0, id=7, ok=True, answer=[1, "x"])) \
        == ("ans", NODE_A, 0, 7, True, [1, "x"])
    assert decode(records.control_message("ans", NODE_A, 0, id=7, ok=True, answer=None))[5] is None
    assert decode(records.control_message("ans", NODE_A, 0, id=7, ok=False, error="no")) \
        == ("ans", NODE_A, 0, 7, False, "no")
    assert decode(records.control_message("note", NODE_B, 1, kind="drop", args={})) == ("note", NODE_B, 1, "drop", {})
    assert decode(records.control_message("hello", NODE_B, 1, ask=True)) == ("hello", NODE_B, 1, True)
    extra = json.dumps({"op": "hello", "node": NODE_B, "w": 1, "ask": False, "later": "field"}).encode()
    assert decode(extra) == ("hello", NODE_B, 1, False)  # a later version's extra fields are ignored
    assert records.control(b"{}") == bytes((records.T_CTL,)) + b"{}"


@pytest.mark.parametrize("doc", [
    [], "hello", {"op": "hello", "node": NODE_A, "w": 0},  # no ask
    {"op": "hello", "node": NODE_A, "w": 0, "ask": 1},
    {"op": "hello", "node": "NOTHEX", "w": 0, "ask": True}, {"op": "hello", "node": "", "w": 0, "ask": True},
    {"op": "hello", "node": "a" * 33, "w": 0, "ask": True}, {"op": "hello", "node": NODE_A, "w": -1, "ask": True},
    {"op": "hello", "node": NODE_A, "w": 1 << 16, "ask": True}, {"op": "hello", "node": NODE_A, "w": True, "ask": True},
    {"op": "hello", "node": NODE_A, "w": 1.0, "ask": True}, {"op": "boom", "node": NODE_A, "w": 0},
    {"op": "req", "node": NODE_A, "w": 0, "id": 1, "kind": "Channels", "args": {}},
    {"op": "req", "node": NODE_A, "w": 0, "id": 1, "kind": "x" * 33, "args": {}},
    {"op": "req", "node": NODE_A, "w": 0, "id": 1, "kind": "channels", "args": []},
    {"op": "req", "node": NODE_A, "w": 0, "id": 0, "kind": "channels", "args": {}},
    {"op": "req", "node": NODE_A, "w": 0, "id": 1 << 32, "kind": "channels", "args": {}},
    {"op": "req", "node": NODE_A, "w": 0, "kind": "channels", "args": {}},
    {"op": "note", "node": NODE_A, "w": 0, "kind": 7, "args": {}},
    {"op": "ans", "node": NODE_A, "w": 0, "id": 1, "ok": True},  # no answer
    {"op": "ans", "node": NODE_A, "w": 0, "id": 1, "ok": False, "error": "x" * 201},
    {"op": "ans", "node": NODE_A, "w": 0, "id": 1, "ok": 1, "answer": 2},
])
def test_every_field_of_a_control_message_is_checked(doc):
    with pytest.raises(ValueError):
        decode(json.dumps(doc).encode())


@pytest.mark.parametrize("raw", [b"", b"{", b'{"op":"hello","node":"aa","w":0,"ask":NaN}', b"\xff",
                                 b'{"a":' * 50 + b"1" + b"}" * 50, b'{"op":"hello","node":"\\ud800"}'])
def test_what_is_not_one_bounded_json_document_is_refused(raw):
    with pytest.raises(JsonError):
        decode(raw)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@given(st.binary(max_size=300) | st.dictionaries(st.sampled_from(["op", "node", "w", "id", "kind", "args", "ok",
                                                                  "answer", "error", "ask"]), JSON).map(
    lambda doc: json.dumps(doc).encode()))
def test_decoding_any_bytes_gives_checked_fields_or_a_value_error(raw):
    try:
        msg = decode(raw)
    except ValueError:
        return
    assert msg[0] in ("req", "ans", "note", "hello") and records.NODE_RE.match(msg[1]) and 0 <= msg[2] <= 0xFFFF


def test_a_control_message_over_the_limit_is_refused_before_it_is_parsed():
    body = records.control_message("hello", NODE_A, 0, ask=True)
    assert records.decode_control(body, len(body), 4)
    with pytest.raises(ValueError, match="bytes"):
        records.decode_control(body, len(body) - 1, 4)


# -- the roll call -----------------------------------------------------------------------------------

def test_members_are_other_nodes_workers_forgotten_after_missed_intervals_and_bounded():
    members = Members(NODE_A, interval=2.0, max_peers=2)
    assert members.heard(NODE_A, 1, 0.0) is False and members.current(0.0) == set()  # this node: the mesh's
    assert members.heard(NODE_B, 0, 0.0) is True
    assert members.heard(NODE_B, 0, 1.0) is False  # heard again: same row
    assert members.heard(NODE_B, 1, 1.0) is True
    assert members.heard("cc" * 8, 0, 1.0) is False and members.refused == 1  # full
    assert members.current(1.0) == {peer_id(NODE_B, 0), peer_id(NODE_B, 1)}
    later = 1.0 + MISSED * 2.0 + 0.5
    assert members.current(later) == set()  # both silent for 3 intervals
    assert members.heard("cc" * 8, 0, later) is True  # room again
    assert members.current(later) == {peer_id("cc" * 8, 0)}


# -- one node, the mesh ------------------------------------------------------------------------------

def test_gather_asks_every_worker_of_the_node_and_answers_once_complete():
    node = Node(3)
    node.register("who", lambda i: lambda args: {"worker": i, "x": args["x"]})
    got, done = collect()
    node.controls[1].gather("who", {"x": 5}, done)
    assert got == []  # the others answer over the mesh
    node.pump()
    assert len(got) == 1
    answers, complete = got[0]
    assert complete is True
    assert answers[0] == {"worker": 1, "x": 5}  # its own first
    assert sorted(a["worker"] for a in answers) == [0, 1, 2]
    node.timers.fire()  # the deadline finds nothing left
    assert len(got) == 1 and node.counters[1][F["control_partial"]] == 0


def test_one_worker_without_a_bus_answers_at_once():
    node = Node(1)
    node.register("who", lambda i: lambda args: (1, 2))
    got, done = collect()
    node.controls[0].gather("who", {}, done)
    assert got == [([[1, 2]], True)]  # through JSON, like everyone's: a list


def test_a_silent_worker_makes_the_gather_partial_at_its_deadline():
    node = Node(3, timeout=0.5)
    node.register("who", lambda i: lambda args: i)
    node.drop = {2}
    got, done = collect()
    node.controls[0].gather("who", {}, done)
    node.pump()
    assert got == []
    assert node.timers.calls[-1][0] == 0.5  # --control-timeout
    node.timers.fire()
    assert got == [([0, 1], False)]
    assert node.counters[0][F["control_partial"]] == 1
    assert node.controls[0].gathers == {}  # the table is back to empty
    node.drop = set()
    node.controls[0].gather("who", {}, done, timeout=9.0)
    assert node.timers.calls[-1][0] == 9.0  # the caller's own timeout


def test_a_handler_that_raises_is_an_error_answer_counted_and_the_gather_partial():
    node = Node(2)

    def handler_of(i: int) -> Any:
        def handler(args: dict) -> Any:
            if i == 1:
                raise RuntimeError("bug")
            return i
        return handler

    node.register("who", handler_of)
    got, done = collect()
    node.controls[0].gather("who", {}, done)
    node.pump()
    assert got == [([0], False)]
    assert node.counters[1][F["internal_error_handler"]] == 1


def test_an_answer_that_is_not_json_or_too_large_is_an_error_answer():
    node = Node(2, max_bytes=4096)
    node.register("nan", lambda i: lambda args: float("nan"))
    node.register("big", lambda i: lambda args: "x" * 5000)
    for kind in ("nan", "big"):
        got, done = collect()
        node.controls[0].gather(kind, {}, done)
        node.pump()
        assert got == [([], False)], kind


def test_a_kind_unknown_to_a_peer_is_an_error_answer_not_a_wait():
    node = Node(2)
    node.controls[0].register("new", lambda args: "here")  # a worker of a later version
    got, done = collect()
    node.controls[0].gather("new", {}, done)
    node.pump()
    assert got == [(["here"], False)]
    with pytest.raises(ValueError):
        node.controls[1].gather("new", {}, done)  # asking for what is not registered is a bug


def test_ask_one_worker_and_notify_all():
    node = Node(3)
    seen: list[tuple[int, dict]] = []
    node.register("own", lambda i: lambda args: f"worker {i}")
    node.register("tell", lambda i: lambda args: seen.append((i, args)))
    got, done = collect()
    node.controls[0].ask(2, "own", {}, done)
    node.pump()
    assert got == [(["worker 2"], True)]
    node.controls[0].ask(0, "own", {}, done)
    assert got[-1] == (["worker 0"], True)  # itself: at once
    with pytest.raises(ValueError):
        node.controls[0].ask(3, "own", {}, done)
    node.controls[1].notify("tell", {"u": "x"})
    assert seen == [(1, {"u": "x"})]  # its own at once
    node.pump()
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert not any(control.gathers for control in node.controls)  # nothing waits for a notice


def test_register_checks_the_kind():
    node = Node(1)
    for bad in ("", "Who", "1x", "x" * 33, "a b"):
        with pytest.raises(ValueError):
            node.controls[0].register(bad, lambda args: None)
    node.controls[0].register("ok.kind:1-2_3", lambda args: None)
    with pytest.raises(ValueError):
        node.controls[0].register("ok.kind:1-2_3", lambda args: None)


def test_malformed_and_spoofed_mesh_records_are_dropped_and_counted():
    node = Node(3)
    node.register("who", lambda i: lambda args: i)
    got, done = collect()
    node.controls[0].gather("who", {}, done)
    req = json.loads(node.queue[0][2][1:])["id"]
    node.queue.clear()
    c = node.counters[0]
    spoofed = records.control_message("ans", NODE_A, 2, id=req, ok=True, answer="forged")  # claims worker 2
    for src, body in ((1, spoofed), (1, b"{nope"), (1, records.control_message("ans", NODE_B, 1, id=req, ok=True,
                                                                                  answer="other node")),
                      (1, records.control_message("hello", NODE_A, 1, ask=True)), (7, b"{}"), (0, b"{}")):
        node.controls[0].on_record(src, memoryview(records.control(body)))
    assert c[F["dropped_mesh_malformed"]] == 6 and got == []
    node.controls[0].on_record(1, memoryview(records.control(
        records.control_message("ans", NODE_A, 1, id=req, ok=True, answer="one"))))
    node.controls[0].on_record(1, memoryview(records.control(
        records.control_message("ans", NODE_A, 1, id=req, ok=True, answer="twice"))))
    node.controls[0].on_record(2, memoryview(records.control(
        records.control_message("ans", NODE_A, 2, id=req, ok=True, answer="two"))))
    assert got == [([0, "one", "two"], True)]  # once per worker
    node.controls[0].on_record(2, memoryview(records.control(
        records.control_message("ans", NODE_A, 2, id=req, ok=True, answer="late"))))
    assert len(got) == 1  # after the end: ignored


def test_the_mesh_handler_sends_control_records_here_and_the_rest_to_the_channels():
    node = Node(2)
    node.register("who", lambda i: lambda args: i)
    others: list[tuple[int, bytes]] = []
    demux = node.controls[0].demux(lambda src, record: others.append((src, bytes(record))))
    got, done = collect()
    node.controls[0].gather("who", {}, done)
    node.controls[1].on_record(0, memoryview(node.queue.pop()[2]))
    src, _dest, answer = node.queue.pop()
    demux(src, memoryview(answer))
    demux(1, memoryview(records.HELLO))
    demux(1, memoryview(b""))  # the hub counts it as malformed
    assert got == [([0, 1], True)] and others == [(1, records.HELLO), (1, b"")]


def test_request_numbers_wrap_and_skip_those_still_waiting():
    node = Node(2)
    node.register("who", lambda i: lambda args: i)
    control = node.controls[0]
    control._next_req = records.MAX_REQ
    _, done = collect()
    control.gather("who", {}, done)
    control.gather("who", {}, done)
    assert set(control.gathers) == {records.MAX_REQ, 1}
    control._next_req = 1
    control.gather("who", {}, done)
    assert set(control.gathers) == {records.MAX_REQ, 1, 2}


# -- across nodes, the bus ---------------------------------------------------------------------------

def deliver(control: Control, body: bytes) -> None:
    control.on_broker((E_CTL, body))


def test_across_nodes_a_gather_waits_for_the_announced_workers_of_other_nodes():
    a, b = Node(2, NODE_A, bus=True), Node(2, NODE_B, bus=True)
    for node in (a, b):
        node.register("who", lambda i, node=node: lambda args: f"{node.controls[0].node[:2]}{i}")
    assert a.bridges[0].control_id == peer_id(NODE_A, 0) and a.bridges[0].on_control is not None
    # B's workers come up: each says hello, asking; A's workers answer each one directly.
    for i, control in enumerate(b.controls):
        control.on_broker((E_STATE, True))
        (to, hello), = b.bridges[i].sent
        assert to is None and decode(hello) == ("hello", NODE_B, i, True)
        for j, peer in enumerate(a.controls):
            deliver(peer, hello)
            assert a.bridges[j].sent[-1][0] == peer_id(NODE_B, i)  # to that worker's own subject
            deliver(control, a.bridges[j].sent[-1][1])
    assert b.controls[0].members.seen.keys() == {peer_id(NODE_A, 0), peer_id(NODE_A, 1)}
    assert a.controls[0].members.seen.keys() == {peer_id(NODE_B, 0), peer_id(NODE_B, 1)}
    assert a.counters[0][F["control_peers"]] == 2
    got, done = collect()
    a.controls[0].gather("who", {"q": 1}, done)
    to, request = a.bridges[0].sent[-1]
    assert to is None and decode(request)[:5] == ("req", NODE_A, 0, decode(request)[3], "who")
    a.pump()
    assert got == []  # B's two workers still to answer
    for j, peer in enumerate(b.controls):
        deliver(peer, request)
        reply_to, answer = b.bridges[j].sent[-1]
        assert reply_to == peer_id(NODE_A, 0)
        deliver(a.controls[0], answer)
    assert len(got) == 1 and got[0][1] is True
    assert sorted(got[0][0]) == ["aa0", "aa1", "bb0", "bb1"]


def test_what_a_node_sent_itself_on_the_bus_is_ignored_and_junk_is_counted():
    a = Node(2, NODE_A, bus=True)
    a.register("who", lambda i: lambda args: i)
    ran: list[int] = []
    a.controls[1].register("tell", lambda args: ran.append(1))
    a.controls[0].register("tell", lambda args: ran.append(0))
    a.controls[0].notify("tell", {})
    (_, note), = a.bridges[0].sent
    deliver(a.controls[1], note)  # its own node: it had it over the mesh
    assert ran == [0] and a.bridges[1].sent == []
    a.pump()
    assert ran == [0, 1]
    deliver(a.controls[1], b"not json")
    deliver(a.controls[1], records.control_message("req", NODE_B, 0, id=1, kind="who", args=[]))
    assert a.counters[1][F["dropped_broker_malformed"]] == 2 and a.bridges[1].sent == []
    deliver(a.controls[1], records.control_message("req", NODE_B, 0, id=1, kind="unknown", args={}))
    to, answer = a.bridges[1].sent[-1]
    assert to == peer_id(NODE_B, 0) and decode(answer)[4] is False  # an error answer, not silence


def test_with_the_bus_down_a_gather_is_partial_and_nothing_is_published():
    a = Node(2, NODE_A, bus=True)
    a.register("who", lambda i: lambda args: i)
    a.bridges[0].up = False
    got, done = collect()
    a.controls[0].gather("who", {}, done)
    a.pump()
    assert got == [([0, 1], False)] and a.bridges[0].sent == []
    a.controls[0].on_broker((E_STATE, False))
    a.controls[0]._announce_periodically()
    assert a.bridges[0].sent == []  # no hello while down


def test_announcements_repeat_and_silent_peers_stop_being_waited_for(monkeypatch):
    a = Node(1, NODE_A, bus=True, announce_interval=2.0)
    control = a.controls[0]
    control.start()
    (delay, tick), = a.timers.calls
    assert delay == 2.0
    now = [100.0]
    monkeypatch.setattr("millionws.pubsub.control.monotonic", lambda: now[0])
    deliver(control, records.control_message("hello", NODE_B, 0, ask=False))
    assert control.members.seen
    tick()
    assert decode(a.bridges[0].sent[-1][1]) == ("hello", NODE_A, 0, False) and a.timers.calls[-1][0] == 2.0
    now[0] += MISSED * 2.0 + 0.1
    tick()
    assert not control.members.seen and a.counters[0][F["control_peers"]] == 0


def test_query_broker_is_answered_once_unavailable_without_a_bus_or_timeout():
    alone = Node(1)
    got: list = []
    alone.controls[0].query_broker("history", ("c", 0, 10), lambda result, error: got.append((result, error)))
    assert got == [(None, "unavailable")]
    a = Node(1, NODE_A, bus=True)
    control = a.controls[0]
    control.query_broker("history", ("c", 0, 10), lambda result, error: got.append((result, error)))
    (req, what, args), = a.bridges[0].queries
    assert (what, args) == ("history", ("c", 0, 10))
    control.on_broker((E_ANSWER, req, "", "the result"))
    control.on_broker((E_ANSWER, req, "", "again"))
    assert got[-1] == ("the result", "") and len(got) == 2
    control.query_broker("history", ("c", 0, 10), lambda result, error: got.append((result, error)))
    a.timers.fire()
    assert got[-1] == (None, "timeout") and control.queries == {}
