"""What a worker waits for, without a hub: answers found by request number, deadlines, the expiry timer."""

from __future__ import annotations

import pytest

from millionws import metrics
from millionws.pubsub import pending
from millionws.pubsub.pending import Hold, Pending

PENDING, EXPIRED = metrics.F["publishes_pending"], metrics.F["replay_holds_expired"]


class Rig:
    def __init__(self, **kwargs) -> None:
        self.c = [0] * len(metrics.FIELDS)
        self.timers: list = []
        self.expired: list[Hold] = []
        self.p = Pending(self.c, publish_timeout=5.0, replay_timeout=10.0,
                         call_later=lambda delay, fn: self.timers.append((delay, fn)),
                         on_hold_expired=self.expired.append, **kwargs)
        self.answers: list[tuple] = []

    def done(self, *answer) -> None:
        self.answers.append(answer)


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(pending, "monotonic", lambda: now[0])
    return now


def test_an_answer_reaches_its_publish_once_and_a_late_one_is_ignored(clock):
    rig = Rig()
    r1, r2 = rig.p.track(rig.done), rig.p.track(lambda *a: rig.answers.append(("second", *a)))
    assert r1 != r2 and rig.c[PENDING] == 2
    rig.p.acked(r2, 7, "", 1)
    rig.p.acked(r2, 8, "", 1)  # a duplicate answer finds nothing
    assert rig.answers == [("second", 7, "", 1)] and rig.c[PENDING] == 1
    clock[0] += 5
    rig.p.expire(clock[0])
    assert rig.answers[1:] == [(0, "publish_timeout", -1)] and rig.c[PENDING] == 0
    rig.p.acked(r1, 9, "", 1)  # after its deadline: ignored
    assert len(rig.answers) == 2 and rig.p.acks == {}


def test_deadlines_end_only_the_waits_that_are_due(clock):
    rig = Rig()
    rig.p.track(rig.done)
    clock[0] += 1
    late = rig.p.track(rig.done)
    rig.p.expire(105.5)
    assert rig.answers == [(0, "publish_timeout", -1)] and list(rig.p.acks) == [late]


def test_a_replay_that_never_comes_expires_its_hold_unless_the_connection_left(clock):
    rig = Rig()
    waiting, left = Hold("a", "x", 3), Hold("b", "x", 0)
    rig.p.wait(waiting)
    rig.p.wait(left)
    left.conn = None  # unsubscribed meanwhile
    rig.p.expire(109.0)
    assert rig.expired == [] and len(rig.p.requests) == 2
    rig.p.expire(110.0)
    assert rig.expired == [waiting] and rig.p.requests == {} and rig.c[EXPIRED] == 1


def test_request_numbers_wrap_at_32_bits_and_skip_0():
    rig = Rig()
    rig.p._next_req = 0xFFFFFFFF
    assert [rig.p.new_req() for _ in range(3)] == [0xFFFFFFFF, 1, 2]


def test_one_timer_while_anything_waits(clock):
    rig = Rig()
    rig.p.track(rig.done)
    rig.p.wait(Hold("a", "x", 0))
    assert len(rig.timers) == 1 and rig.timers[0][0] == 0.1
    rig.timers.pop()[1]()  # nothing due yet: the timer comes again
    assert len(rig.timers) == 1
    clock[0] += 10
    rig.timers.pop()[1]()  # everything answered: no timer left
    assert rig.timers == [] and rig.answers == [(0, "publish_timeout", -1)] and len(rig.expired) == 1
    rig.p.track(rig.done)
    assert len(rig.timers) == 1  # a new wait starts it again


def test_without_a_timer_only_explicit_expiry_ends_waits(clock):
    c = [0] * len(metrics.FIELDS)
    p = Pending(c, publish_timeout=1.0)
    answers = []
    p.track(lambda *a: answers.append(a))
    p.wait(Hold("a", "x", 0))  # no on_hold_expired: the hold is just forgotten
    p.expire(clock[0] + 100)
    assert answers == [(0, "publish_timeout", -1)] and p.requests == {} and c[EXPIRED] == 1


def test_a_hold_whose_late_answer_may_still_be_placed_waits_one_more_timeout_then_is_given_up(clock):
    expired: list[Hold] = []

    def on_expired(hold: Hold) -> bool:
        expired.append(hold)
        if hold.late:
            return False
        hold.late = True  # what the hub does when it kept nothing for the connection
        return True

    c = [0] * len(metrics.FIELDS)
    p = Pending(c, replay_timeout=10.0, on_hold_expired=on_expired)
    hold = Hold("a", "x", 3)
    req = p.wait(hold)
    p.expire(110.0)
    assert expired == [hold] and p.requests == {req: hold} and c[EXPIRED] == 1  # still findable by its answer
    p.expire(119.9)
    assert expired == [hold]
    p.expire(120.0)
    assert expired == [hold, hold] and p.requests == {} and c[EXPIRED] == 1  # counted once
