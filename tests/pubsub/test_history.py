"""A channel's history (millionws/pubsub/history.py) on one node of two workers, in process; epochs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from millionws import metrics
from millionws.pubsub.channels import Hub, owner_of
from millionws.pubsub.control import Control
from millionws.pubsub.history import History, checked_page
from millionws.pubsub.sequencer import Sequencer

NODE = "cd" * 8


class Rig:
    """Two workers: a Hub, a Control and a History each, on an in-memory mesh the test pumps."""

    def __init__(self, max_bytes: int = 1 << 20, **hub: Any) -> None:
        shared = metrics.SharedStats(2)
        self.queue: list[tuple[int, int, bytes]] = []
        self.timers: list[Any] = []
        self.hubs, self.controls, self.histories, self.handlers = [], [], [], []
        for i in range(2):
            stats = metrics.WorkerStats(shared, i)
            send = self._sender(i)
            hub_ = Hub(i, 2, send, lambda conn, data: None, lambda conns, frame: 0, stats, **hub)
            control = Control(i, 2, send, lambda delay, fn: self.timers.append(fn), stats.c, NODE, max_bytes=max_bytes)
            self.hubs.append(hub_)
            self.controls.append(control)
            self.histories.append(History(hub_, control, 1000))
            self.handlers.append(control.demux(hub_.on_record))

    def _sender(self, src: int) -> Any:
        return lambda dest, record: self.queue.append((src, dest, bytes(record)))

    def pump(self) -> None:
        while self.queue:
            src, dest, record = self.queue.pop(0)
            self.handlers[dest](src, memoryview(record))

    def publish(self, worker: int, channel: str, *documents: Any) -> None:
        for doc in documents:
            self.hubs[worker].publish(channel, json.dumps(doc).encode(), 0.0)
        self.pump()

    def read(self, worker: int, channel: str, since: int = 0, limit: int = 100) -> tuple:
        got: list = []
        self.histories[worker].read(channel, since, limit, lambda page, error: got.append((page, error)))
        self.pump()
        assert len(got) == 1, got
        return got[0]


def channel_of(owner: int) -> str:
    return next(f"h{i}" for i in range(100) if owner_of(f"h{i}", 2) == owner)


@pytest.mark.parametrize("reader", [0, 1])
def test_history_is_read_from_the_owner_whichever_worker_asks(reader):
    rig = Rig()
    channel = channel_of(0)
    rig.publish(1, channel, *({"n": n} for n in range(1, 6)))
    page, error = rig.read(reader, channel)
    assert error == ""
    last, epoch, first, reset, entries = page
    assert (last, first, reset) == (5, 1, False) and len(epoch) == 16
    assert entries == [(n, b'{"n":%d}' % n) for n in range(1, 6)]
    assert rig.read(reader, channel, since=2, limit=2)[0][4] == [(3, b'{"n":3}'), (4, b'{"n":4}')]
    assert rig.read(reader, channel, since=5)[0][4] == []
    page, _ = rig.read(reader, channel, since=99, limit=1)  # a since from an earlier sequence
    assert page[3] is True and page[4] == [(1, b'{"n":1}')]
    assert rig.read(1 - reader, channel)[0][1] == epoch  # one epoch, whoever asks


def test_a_never_used_channel_has_seq_0_and_no_epoch_and_reading_creates_nothing():
    rig = Rig()
    channel = channel_of(1)
    assert rig.read(0, channel) == ((0, None, 1, False, []), "")
    assert rig.read(0, channel, since=3) == ((0, None, 1, True, []), "")
    assert channel not in rig.hubs[1].route.sequencer.owned


def test_first_is_the_oldest_held_so_a_reader_sees_what_expired():
    rig = Rig(replay_max_messages=3)
    channel = channel_of(1)
    rig.publish(0, channel, *range(1, 8))
    last, _, first, _, entries = rig.read(0, channel, since=2)[0]
    assert (last, first, [seq for seq, _ in entries]) == (7, 5, [5, 6, 7])  # 3..4 are gone: first > since + 1


def test_an_answer_between_workers_stops_before_the_control_budget_but_carries_one_message():
    rig = Rig(max_bytes=8192)
    channel = channel_of(1)
    rig.publish(0, channel, *("x" * 3000 for _ in range(4)))
    entries = rig.read(0, channel)[0][4]
    assert [seq for seq, _ in entries] == [1, 2]  # the rest: the next page, since=2
    assert [seq for seq, _ in rig.read(0, channel, since=2)[0][4]] == [3, 4]
    rig.publish(0, channel, "y" * 7000)
    assert [seq for seq, _ in rig.read(0, channel, since=4)[0][4]] == [5]  # alone over the budget: still sent


def test_an_owner_that_does_not_answer_is_an_error_at_the_deadline():
    rig = Rig()
    channel = channel_of(1)
    got: list = []
    rig.histories[0].read(channel, 0, 10, lambda page, error: got.append((page, error)))
    rig.queue.clear()  # the question is lost
    for fn in rig.timers:
        fn()
    assert got and got[0][0] is None and "did not answer" in got[0][1]


def test_an_epoch_changes_when_the_sequence_starts_again():
    sequencer = Sequencer(replay_seconds=0.0)
    owned = sequencer.number("c", b"1")
    epoch = sequencer.epoch(owned)
    assert sequencer.epoch(sequencer.number("c", b"2")) == epoch  # same sequence
    assert sequencer.sweep(float("inf"), lambda channel: False) == 1  # evicted: the sequence is gone
    assert sequencer.epoch(sequencer.number("c", b"1")) != epoch
    assert sequencer.epoch(sequencer.number("d", b"1")) != epoch
    restarted = Sequencer()
    assert restarted.epoch(restarted.number("c", b"1")) != epoch  # another worker incarnation


GOOD = {"seq": 5, "epoch": "ab" * 8, "first": 2, "reset": False, "messages": [[3, {"a": 1}], [4, "x"]]}


def test_a_well_formed_owner_answer_is_a_page():
    assert checked_page(GOOD, 2, 10) == (5, "ab" * 8, 2, False, [(3, b'{"a":1}'), (4, b'"x"')])
    assert checked_page({**GOOD, "epoch": None, "messages": []}, 2, 10) == (5, None, 2, False, [])
    assert checked_page({**GOOD, "reset": True, "messages": [[2, 0]]}, 9, 10)[4] == [(2, b"0")]


@pytest.mark.parametrize("change", [
    {"seq": -1}, {"seq": 2 ** 53}, {"seq": "5"}, {"first": 0}, {"first": 7}, {"reset": True}, {"reset": 0},
    {"epoch": "AB" * 8}, {"epoch": "ab"}, {"epoch": 5}, {"messages": {}},
    {"messages": [[3, 1]] * 11}, {"messages": [[2, 1]]}, {"messages": [[6, 1]]}, {"messages": [[4, 1], [3, 1]]},
    {"messages": [[3, 1], [3, 1]]}, {"messages": [["3", 1]]}, {"messages": [[3]]}, {"messages": [[1, 1]]},
])
def test_every_field_of_an_owner_answer_is_checked(change):
    assert checked_page({**GOOD, **change}, 2, 10) is None
    assert checked_page([GOOD], 2, 10) is None
