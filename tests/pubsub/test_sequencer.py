"""The owner's table without a hub: numbering, replay arithmetic, interest per worker, bounds and eviction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from millionws.namespaces import ChannelOptions, Namespaces
from millionws.pubsub import sequencer
from millionws.pubsub.records import GAP_EXPIRED, GAP_NONE, GAP_UNKNOWN
from millionws.pubsub.sequencer import ReplayBuffer, Sequencer


@pytest.fixture
def clock(monkeypatch):
    """The sequencer's clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(sequencer, "monotonic", lambda: now[0])
    return now


def test_replay_buffer_bounded_by_count():
    buf = ReplayBuffer(seconds=100, max_messages=3)
    for seq in range(1, 6):
        buf.append(seq, 10.0, b"%d" % seq)
    assert [e[0] for e in buf.entries] == [3, 4, 5]
    assert buf.after(2, 5, 10.0) == (GAP_NONE, 3, list(buf.entries))
    reason, first, entries = buf.after(0, 5, 10.0)
    assert (reason, first, [e[0] for e in entries]) == (GAP_EXPIRED, 3, [3, 4, 5])
    assert buf.after(5, 5, 10.0) == (GAP_NONE, 6, [])
    assert buf.after(9, 5, 10.0) == (GAP_UNKNOWN, 6, [])


def test_replay_buffer_bounded_by_time():
    buf = ReplayBuffer(seconds=2, max_messages=100)
    for seq in range(1, 5):
        buf.append(seq, float(seq), b"x")  # seq 1 at t=1 ... seq 4 at t=4
    assert [e[0] for e in buf.entries] == [2, 3, 4]  # t=1 is older than 4 - 2
    reason, first, entries = buf.after(1, 4, 5.5)  # at 5.5 only t >= 3.5 remains: seq 4
    assert (reason, first, [e[0] for e in entries]) == (GAP_EXPIRED, 4, [4])
    reason, first, entries = buf.after(3, 4, 100.0)
    assert (reason, first, entries) == (GAP_EXPIRED, 5, [])


@given(st.integers(1, 50), st.integers(0, 60), st.integers(0, 60))
def test_replay_after_is_exact_or_announces_the_gap(keep, published, since):
    buf = ReplayBuffer(seconds=1e9, max_messages=keep)
    for seq in range(1, published + 1):
        buf.append(seq, 0.0, b"")
    reason, first, entries = buf.after(since, published, 0.0)
    seqs = [e[0] for e in entries]
    assert seqs == list(range(first, published + 1)) or (reason == GAP_UNKNOWN and seqs == [])
    if reason == GAP_NONE:
        assert first == since + 1
    elif reason == GAP_EXPIRED:
        assert first > since + 1
    else:
        assert since > published


def test_a_replay_buffer_of_zero_messages_keeps_nothing():
    buf = ReplayBuffer(seconds=100, max_messages=0)
    buf.append(1, 0.0, b"x")
    assert not buf.entries and buf.size == 0
    assert buf.after(0, 1, 0.0) == (GAP_EXPIRED, 2, [])


def test_each_channel_is_numbered_from_1_without_gap(clock):
    seqr = Sequencer()
    seqs = [(ch, seqr.number(ch, b"%d" % i).seq) for i, ch in enumerate(["a", "b", "a", "a", "b"])]
    assert seqs == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]
    assert list(seqr.owned["a"].replay.entries) == [(1, 1000.0, b"0"), (2, 1000.0, b"2"), (3, 1000.0, b"3")]


def test_a_full_table_refuses_a_new_channel_and_changes_nothing_but_numbers_the_known_ones():
    seqr = Sequencer(max_owned=2)
    seqr.number("a", b"1")
    seqr.number("b", b"1")
    assert seqr.number("c", b"1") is None and seqr.take("c") is None
    assert set(seqr.owned) == {"a", "b"}
    assert seqr.number("a", b"2").seq == 2
    seqr.interest("c", 1, True)  # a worker's interest in a channel that does not fit: not recorded
    assert "c" not in seqr.owned


def test_after_a_channel_never_sequenced_here_creates_nothing():
    seqr = Sequencer()
    assert seqr.after("new", 0) == (0, GAP_NONE, 1, [])
    assert seqr.after("new", 5) == (0, GAP_UNKNOWN, 1, [])  # a sequence from before a restart or an eviction
    assert seqr.owned == {}


def test_after_reads_the_buffer_with_the_last_seq(clock):
    seqr = Sequencer(replay_seconds=10, replay_max_messages=2)
    for i in range(4):
        seqr.number("a", b"%d" % i)
    assert seqr.after("a", 3) == (4, GAP_NONE, 4, [(4, 1000.0, b"3")])
    assert seqr.after("a", 1) == (4, GAP_EXPIRED, 3, [(3, 1000.0, b"2"), (4, 1000.0, b"3")])
    clock[0] += 11  # the window passed: the buffer is empty, the sequence goes on
    assert seqr.after("a", 1) == (4, GAP_EXPIRED, 5, [])


def test_interest_is_per_worker_and_a_restarted_worker_is_forgotten():
    seqr = Sequencer()
    seqr.interest("a", 1, True)
    seqr.interest("a", 2, True)
    seqr.interest("b", 1, True)
    seqr.interest("a", 2, False)
    seqr.interest("unknown", 2, False)  # nothing to forget: nothing made
    assert seqr.owned["a"].interest == {1} and "unknown" not in seqr.owned
    seqr.forget(1)
    assert seqr.owned["a"].interest == set() and seqr.owned["b"].interest == set()


def test_sweep_forgets_only_what_nothing_keeps(clock):
    seqr = Sequencer(replay_seconds=10)
    for ch in ("buffered", "listened", "local", "idle"):
        seqr.number(ch, b"x")
    seqr.interest("listened", 1, True)
    clock[0] += 5
    seqr.number("buffered", b"y")  # its last message is inside the window
    # At +11 every buffer but "buffered"'s emptied; "listened" is kept by a worker's interest, "local" by
    # its subscribers here: only "idle" goes.
    assert seqr.sweep(clock[0] + 6, lambda ch: ch == "local") == 1
    assert set(seqr.owned) == {"buffered", "listened", "local"}
    assert seqr.number("idle", b"z").seq == 1  # a forgotten channel starts again at 1


def test_sweep_keeps_a_channel_touched_within_the_window(clock):
    seqr = Sequencer(replay_seconds=10, replay_max_messages=0)  # nothing buffered: only the time counts
    seqr.number("a", b"x")
    assert seqr.sweep(clock[0] + 9, lambda ch: False) == 0 and "a" in seqr.owned
    assert seqr.sweep(clock[0] + 11, lambda ch: False) == 1 and seqr.owned == {}


# -- limits by namespace (--channel-options) --------------------------------------------------------------------

def namespaces(spec: str) -> Namespaces:
    return Namespaces(spec, ChannelOptions("", 30.0, 1000, 4 << 20, 0.0))


def test_each_channel_keeps_what_its_namespace_says(clock):
    seqr = Sequencer(namespaces=namespaces("chat:* replay-messages=3; big:* replay-bytes=10; "
                                           "chat:vip replay-messages=5"))
    for i in range(8):
        for ch in ("chat:1", "chat:vip", "news", "big:1"):
            seqr.number(ch, b"%d" % i)
    kept = {ch: [e[0] for e in seqr.owned[ch].replay.entries] for ch in ("chat:1", "chat:vip", "news", "big:1")}
    assert kept == {"chat:1": [6, 7, 8], "chat:vip": [4, 5, 6, 7, 8], "news": list(range(1, 9)),
                    "big:1": list(range(1, 9))}
    for i in range(10, 14):  # two bytes each: with two of one byte they fill the 10 bytes of big:*
        seqr.number("big:1", b"%d" % i)
    assert [e[0] for e in seqr.owned["big:1"].replay.entries] == [7, 8, 9, 10, 11, 12]
    assert seqr.after("chat:1", 2) == (8, GAP_EXPIRED, 6, list(seqr.owned["chat:1"].replay.entries))
    assert seqr.after("news", 2)[1:3] == (GAP_NONE, 3)


def test_a_channel_without_replay_keeps_no_buffer_of_its_own_and_answers_since_with_a_gap(clock):
    seqr = Sequencer(namespaces=namespaces("ticker:* replay-seconds=0; quiet:* replay-messages=0"))
    for ch in ("ticker:a", "ticker:b", "quiet:a", "news"):
        for i in range(3):
            seqr.number(ch, b"%d" % i)
    a, b, quiet = (seqr.owned[ch].replay for ch in ("ticker:a", "ticker:b", "quiet:a"))
    assert a is b and a is not quiet and a is not seqr.owned["news"].replay  # one shared empty buffer per rule
    assert not a.entries and not quiet.entries and len(seqr.owned["news"].replay.entries) == 3
    assert len(seqr._no_replay) == 2
    assert seqr.after("ticker:a", 1) == (3, GAP_EXPIRED, 4, [])  # as with --replay-max-messages 0
    assert seqr.after("ticker:a", 3) == (3, GAP_NONE, 4, [])
    assert seqr.after("ticker:a", 9) == (3, GAP_UNKNOWN, 4, [])


def test_the_sweep_gives_each_channel_its_own_window(clock):
    seqr = Sequencer(namespaces=namespaces("short:* replay-seconds=5; off:* replay-seconds=2 replay-messages=0"))
    for ch in ("short:a", "off:a", "news"):
        seqr.number(ch, b"x")
    assert seqr.sweep(clock[0] + 3, lambda ch: False) == 1 and "off:a" not in seqr.owned  # past its 2 s
    assert seqr.sweep(clock[0] + 6, lambda ch: False) == 1 and set(seqr.owned) == {"news"}  # short:a past its 5
    assert len(seqr.owned["news"].replay.entries) == 1  # the default 30 s window still holds it
    assert seqr.sweep(clock[0] + 31, lambda ch: False) == 1 and seqr.owned == {}


def test_without_namespaces_every_channel_gets_the_global_limits():
    seqr = Sequencer(replay_seconds=7, replay_max_messages=2, replay_max_bytes=99)
    options = seqr.namespaces.of("anything")
    assert (options.replay_seconds, options.replay_max_messages, options.replay_max_bytes) == (7, 2, 99)
    replay = seqr.take("anything").replay
    assert (replay.seconds, replay.max_messages, replay.max_bytes) == (7, 2, 99)
