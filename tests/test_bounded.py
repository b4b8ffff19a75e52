"""Every per-worker table that grows with clients returns to its baseline, and every wait has a
deadline: publishes waiting for their seq, replays waiting for their owner, rate-limit keys,
the mesh outbox (drops counted, not silent)."""

from __future__ import annotations

import socket

from millionws import metrics
from millionws.core.reactor import EPOLLIN, Reactor
from millionws.metrics import F
from millionws.pubsub import mesh as bus
from millionws.pubsub.channels import GAP_REASONS, GAP_UNKNOWN
from millionws.ratelimit import KeyedBuckets, Rate
from tests.pubsub.test_channels import Conn, Node


def test_a_publish_is_answered_with_its_seq_once_the_owner_sequenced_it():
    node = Node(2)
    channel = node.channel_owned_by(1)
    answers = []
    node.hubs[0].publish(channel, b'"x"', 0.0, lambda *a: answers.append(a))
    assert answers == [] and len(node.hubs[0].pending.acks) == 1  # not before the owner numbered it
    node.pump()  # PUB to the owner, PUBACK back
    assert answers == [(1, "", 0)] and node.hubs[0].pending.acks == {}
    assert node.hubs[0].c[F["publishes_pending"]] == 0


def test_a_publish_whose_owner_never_answers_times_out_and_leaves_no_trace():
    node = Node(2, publish_timeout=5.0)
    hub = node.hubs[0]
    channel = node.channel_owned_by(1)
    answers = []
    for _ in range(100):
        hub.publish(channel, b"1", 0.0, lambda *a: answers.append(a))
    node.queue.clear()  # the owner is gone: nothing will come back
    hub.expire(10.0 ** 9)
    assert answers == [(0, "publish_timeout", -1)] * 100
    assert hub.pending.acks == {} and not hub.pending._ack_deadlines and hub.c[F["publishes_pending"]] == 0


def test_a_late_acknowledgement_after_the_timeout_is_ignored():
    node = Node(2, publish_timeout=5.0)
    channel = node.channel_owned_by(1)
    answers = []
    node.hubs[0].publish(channel, b"1", 0.0, lambda *a: answers.append(a))
    node.hubs[0].expire(10.0 ** 9)
    node.pump()
    assert answers == [(0, "publish_timeout", -1)]


def test_a_replay_hold_whose_answer_never_comes_ends_with_a_gap_and_live_messages():
    node = Node(2, replay_timeout=10.0)
    hub = node.hubs[0]
    channel = node.channel_owned_by(1)
    conn = Conn("c")
    hub.subscribe(conn, [channel], {channel: 3})
    node.queue.clear()  # INTEREST and REPLAY_REQ lost: the owner restarted before reading them
    assert len(hub.pending.requests) == 1 and conn in hub.registry.holds[channel]
    hub.expire(10.0 ** 9)
    assert channel not in hub.registry.holds and conn in hub.registry.subs[channel]
    assert conn.docs == [{"op": "gap", "channel": channel, "since": 3, "first": 4,
                          "reason": GAP_REASONS[GAP_UNKNOWN]}]
    assert hub.c[F["replay_holds_expired"]] == 1
    assert len(hub.pending.requests) == 1  # a late answer could still be placed: one more deadline
    hub.expire(10.0 ** 9 + 10.5)
    assert hub.pending.requests == {}  # then given up for good: the table is empty again
    assert hub.c[F["replay_holds_expired"]] == 1


def test_keyed_buckets_forget_keys_once_their_bucket_is_full_again():
    buckets = KeyedBuckets(Rate(10))  # burst 10: full again one second after the last take
    assert buckets.idle == 1.0
    for i in range(10_000):
        buckets.take(f"10.0.{i // 256}.{i % 256}", 100.0)
    assert len(buckets) == 10_000
    buckets.sweep(101.5)
    assert len(buckets) == 0


def test_mesh_outbox_drops_are_counted():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    counters = [0] * len(metrics.FIELDS)
    reactor = Reactor(lambda *_: None, lambda *_: None)
    local = bus.LocalBus(0, {1: a}, reactor, counters, max_outbox=1000)  # --mesh-max-outbox 1000
    for _ in range(100):  # never flushed: the peer is "away"
        local.send(1, b"x" * 100)
    assert counters[F["dropped_mesh_outbox_full"]] == 100 - 10
    a.close()
    b.close()
    reactor.close()


def test_a_record_that_breaks_its_handler_is_dropped_and_counted():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    counters = [0] * len(metrics.FIELDS)
    got = []

    def handler(src: int, record: memoryview) -> None:
        if bytes(record) == b"boom":
            raise RuntimeError("a bug in the handler")
        got.append(bytes(record))

    sender = bus.LocalBus(1, {0: b}, Reactor(lambda *_: None, lambda *_: None))
    receiver = bus.LocalBus(0, {1: a}, Reactor(lambda *_: None, lambda *_: None), counters, on_record=handler)
    for record in (b"one", b"boom", b"two"):
        sender.send(0, record)
    sender.flush()
    receiver._receive(1)
    assert got == [b"one", b"two"] and counters[F["internal_error_mesh"]] == 1
    a.close()
    b.close()


def test_token_expiry_entries_of_closed_connections_are_compacted_away():
    import time

    from millionws.config import Config
    from millionws.protocol.lifecycle import OPEN
    from millionws.server.connection import Connection
    from millionws.server.worker import Worker

    worker = Worker(Config(workers=1), 0, metrics.SharedStats(1))
    peers = []
    conns = []
    for _ in range(1000):
        a, b = socket.socketpair()
        peers.append(b)
        conn = Connection(a.detach(), None)
        conn.state = OPEN
        worker.reactor.add_conn(conn.fd, conn)
        worker.expiries.add(conn, time.time() + 86_400)  # as dispatch does for a token with a day to live
        conns.append(conn)
    for conn in conns[:999]:
        worker.closer.close(conn)
    assert len(worker.expiries) <= 130  # not 1000: closed connections' entries do not wait a day
    assert conns[999] in [entry[2] for entry in worker.expiries.heap]
    assert list(worker.expiries.due(time.time() + 90_000)) == [conns[999]]
    for peer in peers:
        peer.close()
    worker.closer.close(conns[999])
    worker.reactor.close()


def test_the_replay_buffer_holds_at_most_its_bytes():
    from millionws.pubsub.sequencer import ReplayBuffer

    buffer = ReplayBuffer(120.0, 1000, max_bytes=10_000)
    for seq in range(1, 101):
        buffer.append(seq, 0.0, b"x" * 1000)
    assert buffer.size <= 10_000 and [e[0] for e in buffer.entries] == list(range(91, 101))
    buffer.trim(10.0 ** 9)
    assert buffer.size == 0 and not buffer.entries
    big = ReplayBuffer(120.0, 1000, max_bytes=10)
    big.append(1, 0.0, b"y" * 100)  # one message larger than the bound is still kept: it is the latest
    assert [e[0] for e in big.entries] == [1]


def test_channels_a_worker_sequences_are_bounded_and_a_refusal_is_answered():
    node = Node(2, max_owned=3)
    answers = []
    local = [f"ch{i}" for i in range(200) if node.hubs[1].owner(f"ch{i}") == 1][:5]
    for channel in local:  # published on the owner itself
        node.hubs[1].publish(channel, b"1", 0.0, lambda *a: answers.append(a))
    assert [a[1] for a in answers] == ["", "", "", "channel_limit", "channel_limit"]
    assert len(node.hubs[1].route.sequencer.owned) == 3
    answers.clear()
    node.hubs[0].publish(local[4], b"1", 0.0, lambda *a: answers.append(a))  # through the mesh
    node.pump()
    assert answers == [(0, "channel_limit", -1)]
    node.hubs[1].publish(local[0], b"2", 0.0, lambda *a: answers.append(a))  # a known channel still works
    assert answers[-1] == (2, "", 0)


# -- the limits that were module constants, as the worker is given them ----------------------------------------------

def _worker(**limits):
    from millionws.config import Config
    from millionws.server.worker import Worker

    return Worker(Config(workers=1, **limits), 0, metrics.SharedStats(1))


def _http_conn(worker):
    from millionws.protocol import http
    from millionws.server.connection import Connection

    a, b = socket.socketpair()
    conn = Connection(a.detach(), http.new_parser(worker.config.max_request_head))
    worker.reactor.add_conn(conn.fd, conn)
    return conn, b


def _run_calls_due(worker) -> None:
    """Run what the worker scheduled for the next loop turn (call_later(0, ...))."""
    calls, worker.reactor._calls = worker.reactor._calls, []
    for _, _, callback in sorted(calls):
        callback()


def test_a_worker_builds_its_parts_with_the_configured_limits():
    import time

    worker = _worker(receive_buffer=4096, buffer_pool_size=3, frame_pool_size=5, timer_resolution=0.01,
                     mesh_max_datagram=4096, mesh_max_outbox=1 << 20, mesh_datagrams_per_wake=7,
                     stats_interval=0.5, sweep_interval=60.0)
    assert len(worker.rbuf.buf) == 4096
    assert worker.pool.max_free == 3 and worker.frames.max_free == 5
    assert worker.reactor.wheel.resolution == 0.01
    assert (worker.bus.max_datagram, worker.bus.max_outbox, worker.bus.datagrams_per_wake) == (4096, 1 << 20, 7)
    now = time.monotonic()
    worker._flush_periodically()  # --stats-interval: when the next flush is due
    worker.app.pubsub._sweep()  # --sweep-interval: when the next sweep is due
    due = sorted(round(when - now, 1) for when, _, _ in worker.reactor._calls)
    assert due == [0.5, 60.0]
    worker.reactor.close()


def test_the_broker_bridge_gets_the_configured_bus_limits():
    limits = {"outbox_messages": 7, "publish_batch": 3, "fetch_batch": 5, "events_per_wake": 11, "backoff_min": 0.2,
              "backoff_max": 0.4, "live_pending_messages": 13, "live_pending_bytes": 4096, "max_json_depth": 40}
    worker = _worker(bus="nats://127.0.0.1:1", **{"bus_" + name: value for name, value in limits.items()})
    bridge = worker.app.pubsub.hub.remote  # made, not started: no thread, no connection
    assert {name: getattr(bridge, name) for name in limits} == limits
    assert bridge.backend.max_depth == 40
    bridge.close()
    worker.reactor.close()


def test_the_receive_buffer_bounds_one_read():
    worker = _worker(receive_buffer=1024)  # --receive-buffer 1024
    conn, peer = _http_conn(worker)
    peer.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 3000)  # a head still incomplete
    worker.on_event(conn, EPOLLIN)
    assert worker.c[F["bytes_in"]] == 1024
    worker.on_event(conn, EPOLLIN)
    assert worker.c[F["bytes_in"]] == 2048
    worker.closer.close(conn)
    peer.close()
    worker.reactor.close()


def test_pipelined_requests_are_answered_at_most_the_budget_per_turn():
    worker = _worker(pipeline_budget=2)  # --pipeline-budget 2
    conn, peer = _http_conn(worker)
    peer.setblocking(False)
    worker.pipeline.http_in(conn, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 5)

    def answers() -> int:
        try:
            return peer.recv(1 << 16).count(b"HTTP/1.1 200")
        except BlockingIOError:
            return 0

    assert answers() == 2  # the other connections get the rest of this turn
    _run_calls_due(worker)
    assert answers() == 2
    _run_calls_due(worker)
    assert answers() == 1
    worker.closer.close(conn)
    peer.close()
    worker.reactor.close()


def test_connections_are_accepted_at_most_the_batch_per_readiness():
    from millionws.server.acceptor import listen_socket

    worker = _worker(accept_batch=2)  # --accept-batch 2
    listener = listen_socket("127.0.0.1", 0, 16)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]  # queued by the kernel
    counts = []
    for _ in range(3):
        worker.acceptor.accept_from(listener, 0)
        counts.append(worker.c[F["accepted"]])
    assert counts == [2, 4, 5]
    for conn in list(worker.reactor.conns.values()):
        worker.closer.close(conn)
    for client in clients:
        client.close()
    listener.close()
    worker.reactor.close()


def test_an_answer_that_raises_does_not_stop_the_others_from_timing_out(monkeypatch):
    import pytest

    from millionws.pubsub import pending

    scheduled = []
    node = Node(2, publish_timeout=5.0, call_later=lambda delay, fn: scheduled.append(fn))
    hub = node.hubs[0]
    channel = node.channel_owned_by(1)
    answers = []

    def broken(*_a):
        raise RuntimeError("a bug in one answer")

    hub.publish(channel, b"1", 0.0, broken)
    hub.publish(channel, b"2", 0.0, lambda *a: answers.append(a))
    node.queue.clear()
    monkeypatch.setattr(pending, "monotonic", lambda: 10.0 ** 9)
    scheduled.clear()
    with pytest.raises(RuntimeError):
        hub.pending._expire_tick()  # the reactor's boundary counts this one (tests/core/test_reactor.py)
    assert scheduled, "the tick must come again"
    scheduled.pop()()
    assert answers == [(0, "publish_timeout", -1)] and hub.pending.acks == {}
