"""Records between workers are input like any other: ``Hub.on_record`` drops what is malformed.

A hub is built directly with fakes (as in tests/pubsub/test_channels.py) and given a state that every table
shows: owned channels with a replay buffer and a peer's interest, local subscribers of channels owned
here and elsewhere, a connection held for its replay (a request waiting), a publish waiting for its
``PUBACK``, a user's channel.  Each malformed record (unknown type, truncated, wrong lengths, a name
that is not ASCII or not a valid name, ``seq`` 0 or beyond 2^53-1, a time that is not finite, a REPLAY
whose counts do not add up, a PUB for a channel another worker owns, a source out of range) must be
dropped and counted in ``dropped_mesh_malformed``, must not raise, and must change no table, send no
record and write no byte.  Hypothesis then throws random bytes, mutated valid records and records of
random field values at it: ``on_record`` never raises and the counters stay publishable.

Formats (big-endian, first byte = type), from the docstring of millionws/pubsub/records.py:
PUB ``t0 req chan data`` · PUBACK ``req seq reach`` · MSG ``t0 seq chan data`` ·
INTEREST/UNINTEREST ``chan`` · REPLAY_REQ ``req since chan`` ·
REPLAY ``req reason first last chan n (seq t0 len data)*`` · HELLO.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millionws import metrics
from millionws.pubsub import channels, pending, sequencer
from millionws.pubsub.channels import Hub, owner_of

NOW = 5000.0  # the hubs' clock: fixed, so that what a record's time does is the same on every run


def monotonic() -> float:
    return NOW


# The hub's modules read their module's ``monotonic``; the tests here run them on the fixed clock (see Frozen).
CLOCKED = (channels, pending, sequencer)
_real_monotonic = {module: module.monotonic for module in CLOCKED}

MAX_SAFE = (1 << 53) - 1
MALFORMED = metrics.F["dropped_mesh_malformed"]

T_PUB, T_MSG, T_INTEREST, T_UNINTEREST, T_REPLAY_REQ, T_REPLAY, T_HELLO, T_PUBACK = range(1, 9)


# -- building records ------------------------------------------------------------------------------------------

def _name(channel: str | bytes) -> bytes:
    return channel if isinstance(channel, bytes) else channel.encode()


def pub(channel: str | bytes, data: bytes = b'"x"', t0: float | None = None, req: int = 0,
        n: int | None = None) -> bytes:
    name = _name(channel)
    t0 = monotonic() if t0 is None else t0
    return struct.pack("!BdIH", T_PUB, t0, req, len(name) if n is None else n) + name + data


def msg(channel: str | bytes, seq: int, data: bytes = b'"x"', t0: float | None = None, n: int | None = None) -> bytes:
    name = _name(channel)
    t0 = monotonic() if t0 is None else t0
    return struct.pack("!BdQH", T_MSG, t0, seq, len(name) if n is None else n) + name + data


def puback(req: int, seq: int, reach: int = 1) -> bytes:
    return struct.pack("!BIQB", T_PUBACK, req, seq, reach)


def interest(channel: str | bytes, on: bool = True, n: int | None = None) -> bytes:
    name = _name(channel)
    return struct.pack("!BH", T_INTEREST if on else T_UNINTEREST, len(name) if n is None else n) + name


def replay_req(req: int, since: int, channel: str | bytes, n: int | None = None) -> bytes:
    name = _name(channel)
    return struct.pack("!BIQH", T_REPLAY_REQ, req, since, len(name) if n is None else n) + name


Entry = tuple[int, float, bytes]


def replay(req: int, channel: str | bytes, entries: list[Entry] = (), reason: int = 0, first: int | None = None,
           last: int | None = None, count: int | None = None, n: int | None = None) -> bytes:
    name = _name(channel)
    entries = list(entries)
    first = (entries[0][0] if entries else 1) if first is None else first
    last = (entries[-1][0] if entries else 0) if last is None else last
    head = struct.pack("!BIBQQHI", T_REPLAY, req, reason, first, last, len(name) if n is None else n,
                       len(entries) if count is None else count)
    return head + name + b"".join(struct.pack("!QdI", seq, t, len(data)) + data for seq, t, data in entries)


HELLO = bytes((T_HELLO,))


# -- a hub with something in every table ----------------------------------------------------------------------

class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[bytes] = []

    def take(self, data: bytes) -> None:
        self.frames.append(bytes(data))

    def __repr__(self) -> str:
        return self.name


def owned_by(worker: int, prefix: str, workers: int = 2) -> str:
    return next(f"{prefix}{i}" for i in range(1000) if owner_of(f"{prefix}{i}", workers) == worker)


class Frozen:
    """The hub's clocks read :data:`NOW` inside the block."""

    def __enter__(self) -> None:
        for module in CLOCKED:
            module.monotonic = monotonic

    def __exit__(self, *_exc: object) -> None:
        for module in CLOCKED:
            module.monotonic = _real_monotonic[module]


class Rig:
    """Worker 0 of 2 (or ``index`` of ``workers``), in a state where every table holds something."""

    def __init__(self, index: int = 0, workers: int = 2) -> None:
        with Frozen():
            self._setup(index, workers)

    def _setup(self, index: int, workers: int) -> None:
        self.shared = metrics.SharedStats(workers)
        self.stats = metrics.WorkerStats(self.shared, index)
        self.sent: list[tuple[int, bytes]] = []
        self.answers: list[tuple[int, str, int]] = []
        peer = (index + 1) % workers
        self.peer = peer

        def fanout(conns, frame: bytes) -> int:
            for conn in conns:
                conn.take(frame)
            return len(conns)

        self.hub = hub = Hub(index, workers, lambda dest, record: self.sent.append((dest, bytes(record))),
                             lambda conn, data: conn.take(data), fanout, self.stats)
        self.mine = owned_by(index, "own", workers)  # sequenced here
        self.theirs = owned_by(peer, "far", workers)  # sequenced by the peer; a local subscriber
        self.held = owned_by(peer, "held", workers)  # a subscriber waits for its replay from the peer
        self.user = "@user:a+b=c|d@e"
        self.a, self.b, self.c = Conn("a"), Conn("b"), Conn("c")
        hub.subscribe(self.a, [self.mine, self.theirs])
        hub.publish(self.mine, b'"m1"', monotonic())
        hub.publish(self.mine, b'"m2"', monotonic())
        hub.on_record(peer, memoryview(interest(self.mine)))
        hub.subscribe(self.b, [self.held], since={self.held: 0})
        hub.publish(self.theirs, b'"p"', monotonic(), lambda *answer: self.answers.append(answer))
        hub.subscribe(self.c, [self.user], internal=True)
        (self.hold_req,) = hub.pending.requests
        (self.ack_req,) = hub.pending.acks
        assert self.malformed == 0
        self.sent.clear()
        for conn in (self.a, self.b, self.c):
            conn.frames.clear()

    @property
    def malformed(self) -> int:
        return self.hub.c[MALFORMED]

    def state(self) -> Any:
        """Everything a record could change (times excluded), and what went out."""
        hub = self.hub
        counters = list(hub.c)
        counters[MALFORMED] = 0
        return (
            {ch: (o.seq, sorted(o.interest), tuple(o.replay.entries))
             for ch, o in hub.route.sequencer.owned.items()},
            {ch: tuple(conns) for ch, conns in hub.registry.subs.items()},
            {ch: {conn: (h.since, tuple(h.held), h.conn) for conn, h in holds.items()}
             for ch, holds in hub.registry.holds.items()},
            {conn: sorted(chs) for conn, chs in hub.registry.of_conn.items()},
            {req: (h.channel, h.since) for req, h in hub.pending.requests.items()},
            sorted(hub.pending.acks), hub.registry.subscriptions, hub.pending._next_req,
            len(hub.pending._ack_deadlines), len(hub.pending._hold_deadlines),
            counters, list(self.sent), list(self.answers), [list(c.frames) for c in (self.a, self.b, self.c)],
        )

    def feed(self, src: int, record: bytes) -> None:
        with Frozen():
            self.hub.on_record(src, memoryview(record))


def assert_dropped(rig: Rig, src: int, record: bytes) -> None:
    before = rig.state()
    count = rig.malformed
    rig.feed(src, record)  # must not raise
    assert rig.malformed == count + 1, f"not counted as malformed: {record!r}"
    assert rig.state() == before, f"a dropped record changed something: {record!r}"
    rig.stats.flush()


# -- the builders make valid records ------------------------------------------------------------------------------

def valid_records(rig: Rig) -> dict[str, Callable[[], bytes]]:
    return {
        "msg": lambda: msg(rig.theirs, 1),
        "msg-user": lambda: msg(rig.user, 1),
        "pub": lambda: pub(rig.mine, req=77),
        "pub-user": lambda: pub(owned_by(0, "@user:u"), req=0),
        "puback": lambda: puback(rig.ack_req, 1),
        "interest": lambda: interest(owned_by(0, "newly")),
        "uninterest": lambda: interest(rig.mine, on=False),
        "replay_req": lambda: replay_req(9, 0, rig.mine),
        "replay": lambda: replay(rig.hold_req, rig.held, [(1, 1.0, b"1"), (2, 2.0, b"[2]")]),
        "replay-empty": lambda: replay(rig.hold_req, rig.held, first=1, last=0),
        "hello": lambda: HELLO,
    }


@pytest.mark.parametrize("kind", list(valid_records(Rig())))
def test_valid_records_are_taken(kind: str) -> None:
    """The builders agree with the hub: each valid record is acted on, not dropped."""
    rig = Rig()
    before = rig.state()
    rig.feed(rig.peer, valid_records(rig)[kind]())
    assert rig.malformed == 0
    assert rig.state() != before, f"{kind}: a valid record changed nothing"


def test_valid_records_do_what_they_say() -> None:
    rig = Rig()
    rig.feed(1, msg(rig.theirs, 5, b'{"k":1}'))
    assert json.loads(rig.a.frames[-1][2:]) == {"op": "message", "channel": rig.theirs, "seq": 5, "data": {"k": 1}}
    rig.feed(1, pub(rig.mine, b"[3]", req=77))
    assert rig.hub.route.sequencer.owned[rig.mine].seq == 3 and rig.sent[-1] == (1, puback(77, 3, 1))
    rig.feed(1, puback(rig.ack_req, 8, 0))
    assert rig.answers == [(8, "", 0)]
    rig.feed(1, replay(rig.hold_req, rig.held, [(1, 1.0, b"1")]))
    assert rig.b in rig.hub.registry.subs[rig.held] and not rig.hub.pending.requests
    assert rig.malformed == 0


# -- malformed records: dropped, counted, nothing changed ----------------------------------------------------------

BAD_NAMES = {
    "empty": b"", "space": b"a b", "non-ascii": "é".encode(), "latin1-byte": b"caf\xe9", "ff": b"\xff",
    "nul": b"a\x00b", "quote": b'a"b', "backslash": b"a\\b", "slash": b"a/b", "129-chars": b"x" * 129,
    "glob": b"a*", "newline": b"a\n", "user-empty": b"@user:", "user-non-ascii": "@user:é".encode(),
    "user-space": b"@user:a b", "user-quote": b'@user:a"b', "user-129": b"@user:" + b"u" * 129,
    "user-typo": b"@usr:alice", "at-only": b"@", "surrogate-utf8": b"\xed\xa0\x80",
}


def malformed_cases() -> list[Any]:
    rig = Rig()
    mine, theirs, held = rig.mine, rig.theirs, rig.held
    cases: dict[str, tuple[int, bytes]] = {
        "empty": (1, b""),
        "type-0": (1, b"\x00" + interest(mine)[1:]),
        "type-9": (1, b"\x09" + interest(mine)[1:]),
        "type-255": (1, b"\xff" * 40),
        "hello-long": (1, HELLO + b"\x00"),
        "puback-long": (1, puback(rig.ack_req, 1) + b"\x00"),
        "puback-seq-0": (1, puback(rig.ack_req, 0)),
        "puback-seq-2-53": (1, puback(rig.ack_req, 1 << 53)),
        "puback-seq-2-64": (1, puback(rig.ack_req, (1 << 64) - 1)),
        "interest-long": (1, interest(mine) + b"x"),
        "uninterest-long": (1, interest(mine, on=False) + b"x"),
        "interest-n-short": (1, interest(mine, n=len(mine) - 1)),
        "interest-n-past-end": (1, interest(mine, n=len(mine) + 1)),
        "interest-n-max": (1, interest(mine, n=0xFFFF)),
        "msg-n-past-end": (1, msg(theirs, 1, b"", n=len(theirs) + 5)),
        "msg-n-max": (1, msg(theirs, 1, n=0xFFFF)),
        "msg-seq-0": (1, msg(theirs, 0)),
        "msg-seq-2-53": (1, msg(theirs, 1 << 53)),
        "msg-seq-2-64": (1, msg(theirs, (1 << 64) - 1)),
        "msg-time-nan": (1, msg(theirs, 1, t0=math.nan)),
        "msg-time-inf": (1, msg(theirs, 1, t0=math.inf)),
        "msg-time-minus-inf": (1, msg(theirs, 1, t0=-math.inf)),
        "pub-time-nan": (1, pub(mine, t0=math.nan, req=3)),
        "pub-time-inf": (1, pub(mine, t0=math.inf, req=3)),
        "pub-not-owned": (1, pub(theirs, req=3)),
        "pub-not-owned-user": (1, pub(owned_by(1, "@user:u"), req=3)),
        "pub-n-past-end": (1, pub(mine, b"", n=len(mine) + 1)),
        "replay-req-n-short": (1, replay_req(9, 0, mine, n=len(mine) - 1)),
        "replay-req-long": (1, replay_req(9, 0, mine) + b"\x00"),
        "replay-req-since-2-64": (1, replay_req(9, (1 << 64) - 1, mine)),
        "replay-req-since-2-53": (1, replay_req(9, 1 << 53, mine)),
        "replay-reason-3": (1, replay(rig.hold_req, held, reason=3)),
        "replay-reason-255": (1, replay(rig.hold_req, held, reason=255)),
        "replay-first-0": (1, replay(rig.hold_req, held, first=0, last=0)),
        "replay-first-2-53": (1, replay(rig.hold_req, held, first=1 << 53)),
        "replay-last-2-53": (1, replay(rig.hold_req, held, first=1, last=MAX_SAFE + 1)),
        "replay-count-too-big": (1, replay(rig.hold_req, held, [(1, 1.0, b"1")], count=2)),
        "replay-count-huge": (1, replay(rig.hold_req, held, [(1, 1.0, b"1")], count=0xFFFFFFFF)),
        "replay-count-too-small": (1, replay(rig.hold_req, held, [(1, 1.0, b"1"), (2, 1.0, b"2")], count=1)),
        "replay-trailing-byte": (1, replay(rig.hold_req, held, [(1, 1.0, b"1")]) + b"\x00"),
        "replay-entry-size-past-end": (1, replay(rig.hold_req, held, [(1, 1.0, b"1")])[:-1]),
        "replay-entries-out-of-order": (1, replay(rig.hold_req, held, [(2, 1.0, b"2"), (1, 1.0, b"1")], first=1,
                                                  last=2)),
        "replay-entries-repeated": (1, replay(rig.hold_req, held, [(1, 1.0, b"1"), (1, 1.0, b"1")], last=1)),
        "replay-entry-seq-0": (1, replay(rig.hold_req, held, [(0, 1.0, b"0")], first=1, last=1)),
        "replay-entry-seq-2-53": (1, replay(rig.hold_req, held, [(1 << 53, 1.0, b"0")], first=1, last=1)),
        "replay-entry-time-nan": (1, replay(rig.hold_req, held, [(1, math.nan, b"1")])),
        "replay-entry-time-inf": (1, replay(rig.hold_req, held, [(1, math.inf, b"1")])),
        "replay-other-channel": (1, replay(rig.hold_req, theirs)),
        "replay-n-past-end": (1, replay(rig.hold_req, held, n=len(held) + 40)),
        "src-negative": (-1, interest(mine)),
        "src-self": (0, interest(mine)),
        "src-workers": (2, interest(mine)),
        "src-huge": (1 << 40, msg(theirs, 1)),
        "src-self-hello": (0, HELLO),
    }
    # Every valid record cut short of its name (data is opaque, so a cut inside it is another valid record).
    for kind, record in (
        ("msg", msg(theirs, 1, b"")), ("pub", pub(mine, b"", req=3)), ("puback", puback(rig.ack_req, 1)),
        ("interest", interest(mine)), ("uninterest", interest(mine, on=False)), ("replay_req", replay_req(9, 0, mine)),
        ("replay", replay(rig.hold_req, held, [(1, 1.0, b"1"), (2, 2.0, b"22")])),
    ):
        for cut in range(len(record)):
            cases[f"{kind}-cut-{cut}"] = (1, record[:cut])
    # Every record that names a channel, with each kind of bad name.
    for label, name in BAD_NAMES.items():
        cases[f"msg-name-{label}"] = (1, msg(name, 1))
        cases[f"pub-name-{label}"] = (1, pub(name, req=3))
        cases[f"interest-name-{label}"] = (1, interest(name))
        cases[f"uninterest-name-{label}"] = (1, interest(name, on=False))
        cases[f"replay-req-name-{label}"] = (1, replay_req(9, 0, name))
        cases[f"replay-name-{label}"] = (1, replay(rig.hold_req, name))
    return [pytest.param(src, record, id=label) for label, (src, record) in cases.items()]


@pytest.mark.parametrize(("src", "record"), malformed_cases())
def test_malformed_record_is_dropped_counted_and_changes_nothing(src: int, record: bytes) -> None:
    rig = Rig()
    assert_dropped(rig, src, record)


def test_every_malformed_case_on_one_hub_then_it_still_works() -> None:
    """All the cases in a row on one hub: each counted once; then valid records are served as before."""
    rig = Rig()
    cases = malformed_cases()
    for case in cases:
        assert_dropped(rig, *case.values)
    assert rig.malformed == len(cases)
    rig.feed(1, msg(rig.theirs, 1, b"[1]"))
    rig.feed(1, pub(rig.mine, b"[2]", req=5))
    assert json.loads(rig.a.frames[0][2:])["data"] == [1]
    assert (1, puback(5, 3, 1)) in rig.sent
    assert rig.malformed == len(cases)


# -- valid but extreme: answered, never dropped or raising ------------------------------------------------------------

def test_replay_request_for_the_largest_since_is_answered() -> None:
    """A client may send ``since`` 2^53-1 (docs: an integer 0..2^53-1); on a worker that does not own the
    channel it becomes a REPLAY_REQ, which the owner must answer (gap ``unknown``), not drop as malformed."""
    rig = Rig()
    rig.feed(1, replay_req(41, MAX_SAFE, rig.mine))
    assert rig.malformed == 0, "a valid since of 2^53-1 was dropped as a malformed record"
    (dest, record), = rig.sent
    assert dest == 1 and record[0] == T_REPLAY
    _, req, reason, first, last, _n, count = struct.unpack_from("!BIBQQHI", record)
    assert (req, reason, first, last, count) == (41, 2, 3, 2, 0)  # gap unknown: 2 messages, the next is 3


def test_largest_since_across_two_hubs_resolves_at_once() -> None:
    """The same through a pair of hubs: the held connection gets ``gap`` ``unknown`` at once."""
    shared = metrics.SharedStats(2)
    queue: list[tuple[int, int, bytes]] = []
    hubs: list[Hub] = []
    for i in range(2):
        hubs.append(Hub(i, 2, lambda dest, record, i=i: queue.append((i, dest, bytes(record))),
                        lambda conn, data: conn.take(data), lambda conns, f: 0, metrics.WorkerStats(shared, i)))
    channel = owned_by(0, "big")
    conn = Conn("c")
    hubs[1].subscribe(conn, [channel], since={channel: MAX_SAFE})
    while queue:
        src, dest, record = queue.pop(0)
        hubs[dest].on_record(src, memoryview(record))
    assert hubs[0].c[MALFORMED] == 0 and hubs[1].c[MALFORMED] == 0
    assert [json.loads(f[2:]) for f in conn.frames] == [
        {"op": "gap", "channel": channel, "since": MAX_SAFE, "first": 1, "reason": "unknown"}]
    assert conn in hubs[1].registry.subs[channel]


ABSURD_TIMES = [1e300, -1e300, 1e200, -1e200, 1e15, -1e15]  # finite, so they pass the NaN check


@pytest.mark.parametrize("kind", ["msg", "pub"])
def test_finite_but_absurd_time_never_raises_nor_breaks_the_counters(kind: str) -> None:
    """A record's ``t0`` is a monotonic time; one far from now (finite, so it passes the NaN check) must
    neither raise out of ``on_record`` nor push a counter past what the shared memory holds (int64): a
    worker copies its counters there every 0.25 s and before every scrape."""
    failures = {}
    for t0 in [5e-324, 1.0, *ABSURD_TIMES]:  # the first two: controls
        rig = Rig()
        record = msg(rig.theirs, 1, t0=t0) if kind == "msg" else pub(rig.mine, t0=t0, req=4)
        try:
            rig.feed(1, record)
            rig.stats.flush()
        except Exception as exc:
            failures[t0] = f"{type(exc).__name__}: {exc}"
    assert not failures, failures


# -- hypothesis: anything at all -------------------------------------------------------------------------------------

def check_any(rig: Rig, src: int, record: bytes) -> None:
    before = rig.state()
    count = rig.malformed
    rig.feed(src, record)  # never raises
    rig.stats.flush()  # counters stay within int64
    if rig.malformed != count:
        assert rig.malformed == count + 1
        assert rig.state() == before, f"a dropped record changed something: {record!r}"


SRC = st.one_of(st.just(1), st.integers(-3, 4))
HYPO = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPO
@given(src=SRC, record=st.binary(max_size=300))
def test_random_bytes_never_raise(src: int, record: bytes) -> None:
    check_any(Rig(), src, record)


@HYPO
@given(src=SRC, record=st.builds(lambda kind, rest: bytes([kind]) + rest, st.integers(0, 10),
                                 st.binary(max_size=200)))
def test_random_bytes_after_a_known_type_never_raise(src: int, record: bytes) -> None:
    check_any(Rig(), src, record)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    rig = Rig()
    records = [make() for make in valid_records(rig).values()]
    data = bytearray(draw(st.sampled_from(records)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            data = data[:pos]
    return bytes(data)


@HYPO
@given(src=SRC, record=mutated())
def test_mutated_valid_records_never_raise(src: int, record: bytes) -> None:
    check_any(Rig(), src, record)


_RIG = Rig()
NAMES = st.one_of(
    st.sampled_from([_RIG.mine, _RIG.theirs, _RIG.held, _RIG.user, "x" * 128, "@user:" + "u" * 128]),
    st.sampled_from(sorted(BAD_NAMES.values())),
    st.binary(max_size=140),
    st.text(max_size=140).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
U64 = st.one_of(st.integers(0, 4), st.sampled_from([MAX_SAFE, 1 << 53, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1))
U32 = st.one_of(st.integers(0, 4), st.integers(0, 0xFFFFFFFF))
TIMES = st.one_of(st.just(None), st.floats(), st.floats(-1e6, 1e6))
DATA = st.one_of(st.just(b'"x"'), st.binary(max_size=40))


@st.composite
def fielded(draw: st.DrawFn) -> bytes:
    """A record of a known type whose every field is drawn: values in and out of range, lengths that lie."""
    kind = draw(st.sampled_from(["msg", "pub", "puback", "interest", "replay_req", "replay", "hello"]))
    name = draw(NAMES)
    n = draw(st.one_of(st.none(), st.integers(0, 0xFFFF)))
    if kind == "msg":
        return msg(name, draw(U64), draw(DATA), draw(TIMES), n)
    if kind == "pub":
        return pub(name, draw(DATA), draw(TIMES), draw(U32), n)
    if kind == "puback":
        return puback(draw(st.one_of(st.integers(1, 3), U32)), draw(U64), draw(st.integers(0, 255)))
    if kind == "interest":
        return interest(name, draw(st.booleans()), n)
    if kind == "replay_req":
        return replay_req(draw(U32), draw(U64), name, n)
    if kind == "replay":
        entries = draw(st.lists(st.tuples(U64, st.one_of(st.floats(), st.just(1.0)), DATA), max_size=4))
        return replay(draw(st.one_of(st.integers(1, 3), U32)), name, entries, draw(st.integers(0, 255)),
                      draw(st.one_of(st.none(), U64)), draw(st.one_of(st.none(), U64)),
                      draw(st.one_of(st.none(), U32)), n)
    return HELLO + draw(st.binary(max_size=2))


@HYPO
@given(src=SRC, record=fielded())
def test_records_of_random_fields_never_raise(src: int, record: bytes) -> None:
    check_any(Rig(), src, record)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(SRC, st.one_of(fielded(), mutated(), st.binary(max_size=100))), max_size=30))
def test_a_stream_of_anything_leaves_a_working_hub(stream: list[tuple[int, bytes]]) -> None:
    """Many records on one hub, then a valid publish still reaches its subscriber exactly once."""
    rig = Rig()
    for src, record in stream:
        check_any(rig, src, record)
    conn = Conn("late")
    channel = owned_by(0, "late")
    with Frozen():
        rig.hub.subscribe(conn, [channel])
        rig.hub.publish(channel, b'"still"', monotonic())
    docs = [json.loads(f[2:]) for f in conn.frames]
    assert [d["data"] for d in docs] == ["still"] and docs[0]["channel"] == channel
