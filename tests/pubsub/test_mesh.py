"""The local bus over a real socketpair mesh, driven by hand (no loop running)."""

from __future__ import annotations

import os

from millionws.core.reactor import EPOLLOUT, Reactor
from millionws.pubsub.mesh import LocalBus, Mesh


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


# -- the --mesh-* limits -----------------------------------------------------------------------------------------------

def test_the_socket_buffer_is_the_configured_one_and_bounds_the_datagram():
    import socket

    mesh = Mesh(2, socket_buffer=64 << 10)  # --mesh-socket-buffer 65536 (below wmem_max: no privilege needed)
    ends = dict(mesh.ends)
    sock = ends[(0, 1)]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * (64 << 10)  # Linux doubles what it is given
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * (64 << 10)
    local = LocalBus(0, {1: sock}, Reactor(lambda *_: None, lambda *_: None), max_datagram=256 << 10)
    assert local.max_datagram == (64 << 10) - 64  # a datagram never exceeds what the socket can queue
    for s in ends.values():
        s.close()


def configured_pair(**limits):
    mesh = Mesh(2)
    got: list[tuple[int, bytes]] = []
    ends = dict(mesh.ends)
    a = LocalBus(0, {1: ends[(0, 1)]}, Reactor(lambda *_: None, lambda *_: None), **limits)
    b = LocalBus(1, {0: ends[(1, 0)]}, Reactor(lambda *_: None, lambda *_: None),
                 on_record=lambda src, rec: got.append((src, bytes(rec))), **limits)
    return a, b, got


def test_the_configured_datagram_size_splits_batches_and_fragments_records():
    a, b, got = configured_pair(max_datagram=2048)  # --mesh-max-datagram 2048
    assert a.max_datagram == 2048
    small = [os.urandom(1000) for _ in range(4)]  # two fit a datagram (2 x 1004 bytes), three do not
    for record in small:
        a.send(1, record)
    a.flush()
    assert a.datagrams_sent == 2
    big = os.urandom(5000)
    a.send(1, big)
    a.flush()
    assert a.datagrams_sent == 2 + 3  # 5004 bytes in fragments of at most 2048
    b._receive(0)
    assert got == [(0, r) for r in [*small, big]]


def test_the_configured_datagrams_per_wake_bound_one_read_turn():
    a, b, got = configured_pair(datagrams_per_wake=2)  # --mesh-datagrams-per-wake 2
    for i in range(5):
        a.send(1, b"%d" % i)
        a.flush()  # one datagram each
    assert a.datagrams_sent == 5
    b._receive(0)
    assert [r for _, r in got] == [b"0", b"1"]  # the rest waits for the next readiness (level-triggered)
    b._receive(0)
    b._receive(0)
    assert [r for _, r in got] == [b"0", b"1", b"2", b"3", b"4"]
