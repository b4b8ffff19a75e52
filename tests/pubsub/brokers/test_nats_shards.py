"""nats_shards: a fixed number of streams, per-channel subjects, seq given by the publishing node."""

from __future__ import annotations

import asyncio

import pytest

from millionws.pubsub.brokers.base import E_GAP, E_REPLAY, GAP_NONE, BusConfigError
from millionws.pubsub.brokers.nats_shards import ShardedNatsBackend, shard_names, shard_of
from millionws.pubsub.brokers.schemes import preflight
from tests.pubsub.brokers.harness import fake_bridge, namespaces


def test_shard_names():
    assert shard_names("news", 16) == (f"MWS_S{shard_of('news', 16)}", f"mws.s.{shard_of('news', 16)}.news",
                                       f"mws.l.{shard_of('news', 16)}.news")
    assert shard_names("a..b", 4)[1].endswith(".~" + b"a..b".hex())
    assert len({shard_of(f"@user:{i}", 16) for i in range(200)}) == 16  # spread over every shard


def nodes(harness, url, n=2, **kwargs):
    made = [harness(url, shards=4, **kwargs).start() for _ in range(n)]
    return made


def seqs(h, channel):
    return [seq for seq, _doc in h.messages(channel)]


def test_two_nodes_publishing_one_channel_get_consecutive_seqs_in_ack_order(nats_broker, harness):
    a, b = nodes(harness, nats_broker.url)
    for h in (a, b):
        h.bridge.interest("c", True)
        h.run_until(lambda h=h: h.up() and h.subscribed("c"), what="subscribed")
    reqs = []
    for i in range(30):  # interleaved: each node's head goes stale, the conflict is read again and retried
        h = (a, b)[i % 2]
        reqs.append((h, h.publish("c", {"i": i})))
        h.run_until(lambda h=h, r=reqs[-1][1]: r in h.acks(), what="the ack")
    acked = [h.acks()[r][0] for h, r in reqs]
    assert acked == list(range(acked[0], acked[0] + 30))  # consecutive, in publish order
    for h in (a, b):
        h.run_until(lambda h=h: len(h.messages("c")) == 30, what="every message on every node")
        assert seqs(h, "c") == acked and not [e for e in h.events if e[0] == E_GAP]

    for single in (False, True):  # a replay from a node that never saw the channel; single: one direct get
        c = harness(nats_broker.url, shards=4, fetch_batch=7).start()  # per message, as with NATS 2.10
        c.run_until(c.up, what="up")
        if single:
            c.bridge.backend.batched = False
        c.bridge.interest("c", True)
        c.run_until(lambda c=c: c.subscribed("c"), what="subscribed")
        c.bridge.replay(9, "c", acked[9])
        c.run_until(lambda c=c: any(e[0] == E_REPLAY for e in c.events), what="the replay")
        _, req, reason, first, entries = next(e for e in c.events if e[0] == E_REPLAY)
        assert (req, reason, first, [s for s, _t, _d in entries]) == (9, GAP_NONE, acked[10], acked[10:])

    async def head():
        backend = ShardedNatsBackend(fake_bridge(nats_broker.url, shards=4))  # type: ignore[arg-type]
        await backend.connect()
        try:
            return await backend.history_head("c"), await backend.history_head("never"), len(
                [s async for s in streams(backend)])
        finally:
            await backend.close()

    (last, first, epoch), never, count = asyncio.run(head())
    assert (last, first, never, count) == (acked[-1], acked[0], (0, 1, None), 4)
    assert epoch and len(epoch) == 16


async def streams(backend):
    for info in await backend.js.streams_info():
        yield info.config.name


def test_many_channels_make_no_streams(nats_broker, harness):
    a, = nodes(harness, nats_broker.url, n=1)
    a.run_until(a.up, what="up")
    reqs = [a.publish(f"@user:{i}", {"i": i}) for i in range(300)]
    a.run_until(lambda: all(r in a.acks() for r in reqs), what="every ack")
    assert all(seq >= 1 and not err for seq, err in a.acks().values())

    async def count():
        backend = ShardedNatsBackend(fake_bridge(nats_broker.url, shards=4))  # type: ignore[arg-type]
        await backend.connect()
        try:
            return sorted([s async for s in streams(backend)])
        finally:
            await backend.close()

    assert asyncio.run(count()) == ["MWS_S0", "MWS_S1", "MWS_S2", "MWS_S3"]


def test_a_channel_idle_past_its_window_jumps_forward_without_a_gap_for_a_live_subscriber(nats_broker, harness):
    ns = namespaces(replay_seconds=1.0)
    a, b = nodes(harness, nats_broker.url, namespaces=ns)
    b.bridge.interest("idle", True)
    b.run_until(lambda: b.up() and b.subscribed("idle"), what="subscribed")
    first = a.publish("idle", {"n": 1})
    a.run_until(lambda: first in a.acks(), what="ack")
    b.run_until(lambda: len(b.messages("idle")) == 1, what="delivered")
    other = [a.publish("other", {"n": i}) for i in range(5)]  # the shard's sequence moves on meanwhile
    a.run_until(lambda: all(r in a.acks() for r in other), what="acks")

    async def empty():
        bridge = fake_bridge(nats_broker.url, shards=4)
        bridge.namespaces = ns  # the same rules, or its connect would bring the streams to other limits
        backend = ShardedNatsBackend(bridge)  # type: ignore[arg-type]
        await backend.connect()
        try:
            for _ in range(100):
                if await backend._head("idle") is None:
                    return True
                await asyncio.sleep(0.1)
            return False
        finally:
            await backend.close()

    assert asyncio.run(empty())  # expired: the broker holds nothing of the channel
    again = a.publish("idle", {"n": 2})
    a.run_until(lambda: again in a.acks(), what="ack")
    b.run_until(lambda: len(b.messages("idle")) == 2, what="delivered")
    s1, s2 = seqs(b, "idle")
    assert s2 > s1 and a.acks()[again][0] == s2  # a new run: forward, never back
    assert not [e for e in b.events if e[0] == E_GAP]  # the stream proved nothing was stored in between


def test_a_node_with_another_shard_count_refuses_to_start(nats_broker, harness):
    a, = nodes(harness, nats_broker.url, n=1)
    a.run_until(a.up, what="up")

    async def other():
        backend = ShardedNatsBackend(fake_bridge(nats_broker.url, shards=8))  # type: ignore[arg-type]
        try:
            await backend.connect()
        finally:
            await backend.close()

    with pytest.raises(BusConfigError, match="every node must agree"):
        asyncio.run(other())
    with pytest.raises(BusConfigError, match="every node must agree"):  # and before it forks its workers
        preflight(nats_broker.url, shards=8)
    assert preflight(nats_broker.url, shards=4) is None


def test_the_two_layouts_refuse_each_others_streams(nats_broker, harness):
    """A node of one layout beside streams of the other would split the channels between them (a rolling
    update that changes --bus-shards, or its default): it refuses to start, and a running one stays down."""
    streams, = [harness(nats_broker.url, shards=0).start()]
    streams.bridge.interest("c", True)
    streams.run_until(lambda: streams.up() and streams.subscribed("c"), what="a stream per channel made")
    with pytest.raises(BusConfigError, match=r"--bus-shards 16: this NATS holds a stream per channel .*MWS_"):
        preflight(nats_broker.url, shards=16)
    assert preflight(nats_broker.url, shards=0) is None
    sharded = harness(nats_broker.url, shards=4, backoff_max=0.2).start()
    sharded.run_until(lambda: "a stream per channel" in sharded.bridge.error, what="the reason, while down")
    assert not sharded.up()

    async def delete() -> None:
        import nats

        nc = await nats.connect(nats_broker.url)
        try:
            js = nc.jetstream()
            for name in [info.config.name for info in await js.streams_info()]:
                await js.delete_stream(name)
        finally:
            await nc.close()

    streams.bridge.interest("c", False)  # its node leaves the channel: nothing makes the stream again
    streams.run_until(lambda: not streams.subscribed("c"), what="unsubscribed")
    asyncio.run(delete())
    sharded.run_until(sharded.up, timeout=10, what="up once the other layout's streams are gone")
    with pytest.raises(BusConfigError, match=r"--bus-shards 0: this NATS holds shard streams"):
        preflight(nats_broker.url, shards=0)


def test_a_backend_publishes_on_mws_in_through_a_node_and_gets_the_seq(nats_broker, harness):
    """Nothing a backend sends is stored unchecked: one JSON document is numbered like a node's own publish and
    answered as a PubAck; anything else is answered with an error and stored nowhere."""
    import json

    import nats

    a, = nodes(harness, nats_broker.url, n=1)
    a.bridge.interest("feed", True)
    a.run_until(lambda: a.up() and a.subscribed("feed"), what="subscribed")
    node_req = a.publish("feed", {"from": "node"})
    a.run_until(lambda: node_req in a.acks(), what="the node's ack")

    answers: list = []

    async def backend():
        nc = await nats.connect(nats_broker.url)
        try:
            ack = await nc.jetstream().publish("mws.in.feed", b'{"from":"backend"}')  # a JetStream publish works
            answers.append((ack.stream, ack.seq))
            for subject, data in (("mws.in.feed", b"not json"), ("mws.in.feed", b"[" * 5000 + b"]" * 5000),
                                  ("mws.in.feed", b'"\\ud800"'), ("mws.in.feed", b"1e999"), ("mws.in.feed", b""),
                                  ("mws.in.bad!name", b"1"), ("mws.in.~zz", b"1"), ("mws.in." + "a" * 300, b"1")):
                bad = await nc.request(subject, data, timeout=5)
                answers.append(json.loads(bad.data))
        finally:
            await nc.close()

    import threading

    thread = threading.Thread(target=lambda: asyncio.run(backend()))
    thread.start()
    a.run_until(lambda: len(answers) == 9, what="the backend's answers")  # the node's loop answers meanwhile
    thread.join()
    first = a.acks()[node_req][0]
    assert answers[0] == (shard_names("feed", 4)[0], first + 1)
    assert [answer["error"] for answer in answers[1:]] == \
        [{"code": 400, "description": "not one JSON document"}] * 5 + \
        [{"code": 400, "description": "not a channel name"}] * 3
    a.run_until(lambda: len(a.messages("feed")) == 2, what="both delivered")
    assert a.messages("feed") == [(first, {"from": "node"}), (first + 1, {"from": "backend"})]
