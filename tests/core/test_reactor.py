from __future__ import annotations

import os
import socket
import threading
import time

from millionws.core.reactor import EPOLLIN, Reactor, TimerWheel


class Rec:
    __slots__ = ("deadline", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.deadline = 0


def test_wheel_fires_due_records_in_order_once():
    wheel = TimerWheel(0.1, now=0.0)
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    wheel.schedule(a, 0.5)
    wheel.schedule(b, 0.25)
    wheel.schedule(c, 3.0)
    assert wheel.expire(0.2) == []
    assert [r.name for r in wheel.expire(0.65)] == ["b", "a"]
    assert wheel.expire(0.7) == []
    assert [r.name for r in wheel.expire(10)] == ["c"]
    assert a.deadline == b.deadline == c.deadline == 0


def test_rescheduled_and_cancelled_records_fire_only_at_their_latest_deadline():
    wheel = TimerWheel(0.1, now=0.0)
    a, b = Rec("a"), Rec("b")
    wheel.schedule(a, 0.5)
    wheel.schedule(a, 2.0)  # moved later: the 0.5 entry is stale
    wheel.schedule(b, 0.5)
    TimerWheel.cancel(b)
    assert wheel.expire(1.0) == []
    assert [r.name for r in wheel.expire(2.2)] == ["a"]
    assert len(wheel) == 0


def test_wheel_cost_does_not_grow_with_idle_records():
    wheel = TimerWheel(0.05, now=0.0)
    far = [Rec(str(i)) for i in range(100_000)]
    for r in far:
        wheel.schedule(r, 1000.0)
    soon = Rec("soon")
    wheel.schedule(soon, 0.1)
    started = time.perf_counter()
    for i in range(1, 1000):
        wheel.expire(i * 0.0001)  # many loop turns before anything is due
    elapsed = time.perf_counter() - started
    assert [r.name for r in wheel.expire(0.2)] == ["soon"]
    # 1000 turns over 100 000 idle records: the work is per turn, not per record.
    assert elapsed < 0.5
    assert wheel.next_deadline() is not None and wheel.next_deadline() >= 1000.0


def test_never_schedules_in_the_past():
    wheel = TimerWheel(0.1, now=100.0)
    wheel.expire(100.0)
    r = Rec("r")
    wheel.schedule(r, 50.0)
    assert [x.name for x in wheel.expire(100.15)] == ["r"]


def test_reactor_dispatches_connections_handlers_and_timers():
    seen: list = []
    reactor = Reactor(on_conn_event=lambda rec, ev: seen.append(("conn", rec.name, ev & EPOLLIN)),
                      on_timer=lambda rec: seen.append(("timer", rec.name)), timer_resolution=0.01)
    a, b = socket.socketpair()
    rec = Rec("sock")
    reactor.add_conn(a.fileno(), rec)
    r, w = os.pipe()
    reactor.add_handler(r, EPOLLIN, lambda ev: (os.read(r, 10), seen.append(("handler",)), reactor.stop()))
    reactor.wheel.schedule(Rec("deadline"), time.monotonic() + 0.02)
    turns: list[float] = []
    reactor.observe_turn = turns.append
    b.send(b"x")

    def later():
        time.sleep(0.1)
        os.write(w, b"!")
    threading.Thread(target=later).start()
    seen_before_stop = []
    reactor.call_later(0.05, lambda: seen_before_stop.append(len(seen)))
    reactor.run()
    assert ("conn", "sock", EPOLLIN) in seen
    assert ("timer", "deadline") in seen
    assert seen[-1] == ("handler",)
    assert seen_before_stop and turns and all(t >= 0 for t in turns)
    reactor.remove_conn(a.fileno())
    reactor.close()
    for s in (a, b):
        s.close()
    os.close(r)
    os.close(w)


def test_a_unit_of_work_that_raises_goes_to_on_error_and_the_loop_goes_on():
    a, b = socket.socketpair()
    a.setblocking(False)
    errors: list[tuple[str, object, str]] = []
    ran: list[str] = []

    class Record:
        deadline = 0

    record = Record()

    def on_event(rec, _ev):
        os.read(a.fileno(), 100)
        raise ValueError("connection bug")

    def on_timer(rec):
        raise KeyError("deadline bug")

    reactor = Reactor(on_event, on_timer)
    reactor.on_error = lambda where, rec, exc: errors.append((where, rec, type(exc).__name__))
    reactor.add_conn(a.fileno(), record)
    reactor.wheel.schedule(record, time.monotonic())
    reactor.call_later(0, lambda: 1 / 0)
    reactor.call_later(0.05, lambda: ran.append("later timer"))
    reactor.call_later(0.3, reactor.stop)
    b.send(b"x")
    reactor.run()
    assert ("connection", record, "ValueError") in errors
    assert ("timer", None, "ZeroDivisionError") in errors
    assert ran == ["later timer"]  # the loop went on after each
    a.close()
    b.close()
    reactor.close()


def test_without_a_boundary_the_error_ends_the_loop():
    reactor = Reactor(lambda *_: None, lambda *_: None)
    reactor.call_later(0, lambda: 1 / 0)
    try:
        reactor.run()
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("the default on_error re-raises")
    reactor.close()
