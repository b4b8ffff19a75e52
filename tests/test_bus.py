"""The local bus over a real socketpair mesh, driven by hand (no loop running)."""

from __future__ import annotations

import os

from millionws.bus import LocalBus, Mesh
from millionws.reactor import EPOLLOUT, Reactor


def pair():
    mesh = Mesh(2)
    got: list[tuple[int, bytes]] = []
    ends = dict(mesh.ends)
    a = LocalBus(0, {1: ends[(0, 1)]}, Reactor(lambda *_: None, lambda *_: None))
    b = LocalBus(1, {0: ends[(1, 0)]}, Reactor(lambda *_: None, lambda *_: None),
                 on_record=lambda src, rec: got.append((src, bytes(rec))))
    return a, b, got


def test_records_of_a_turn_leave_in_one_datagram_in_order():
    a, b, got = pair()
    records = [os.urandom(n) for n in (1, 50, 0, 300)] * 50
    for record in records:
        a.send(1, record)
    assert a.datagrams_sent == 0  # nothing leaves before the end of the turn
    a.flush()
    assert a.datagrams_sent == 1
    b._receive(0)
    assert got == [(0, r) for r in records]


def test_a_record_larger_than_a_datagram_is_fragmented_and_reassembled():
    a, b, got = pair()
    big = os.urandom(a.max_datagram * 3 + 17)
    a.send(1, b"before")
    a.send(1, big)
    a.send(1, b"after")
    a.flush()
    assert a.datagrams_sent >= 4
    b._receive(0)
    assert got == [(0, b"before"), (0, big), (0, b"after")]


def test_a_full_peer_queue_is_buffered_and_resumed_on_epollout():
    a, b, got = pair()
    sent = [b"%06d" % i + b"x" * 20000 for i in range(2000)]  # 40 MB: far beyond the peer's queue
    for i, record in enumerate(sent):
        a.send(1, record)
        if i % 50 == 49:
            a.flush()  # one turn
    a.flush()
    assert 1 in a._blocked and a._out[1]  # EAGAIN: kept, not lost, and EPOLLOUT asked for
    handler = a.reactor._handlers[a._fds[1]]
    for _ in range(10000):
        b._receive(0)
        handler(EPOLLOUT)
        if not a._out[1] and len(got) == len(sent):
            break
    assert [r for _, r in got] == sent


def test_a_continuation_without_its_start_is_dropped():
    a, b, got = pair()
    sock = a.peers[1]
    sock.send(b"\x00" + b"orphan tail of a record")  # as a restarted sender's predecessor would leave
    a.send(1, b"next")
    a.flush()
    b._receive(0)
    assert got == [(0, b"next")]


def test_take_keeps_only_the_workers_ends():
    mesh = Mesh(3)
    ends = mesh.take(1)
    assert sorted(ends) == [0, 2]
    assert all(s.fileno() >= 0 for s in ends.values())
