"""bridge: the reactor's side, then a real Bridge against real brokers (NATS JetStream and Redis,
tests/conftest.py): acks, outages, a frozen broker, a handler that raises."""

from __future__ import annotations

import logging
import signal
import time

import pytest

from millionws import metrics
from millionws.core.reactor import EPOLLIN, Reactor
from millionws.pubsub.brokers.base import E_ACK
from millionws.pubsub.brokers.bridge import Bridge
from tests.conftest import free_port
from tests.pubsub.brokers.harness import namespaces, stored

F = metrics.F


@pytest.fixture(params=["nats-streams", "nats-shards", "redis"])
def broker(request: pytest.FixtureRequest):
    """Each test that takes it runs with both NATS layouts (a stream per channel; 4 shard streams) and Redis."""
    made = request.getfixturevalue("redis_broker" if request.param == "redis" else "nats_broker")
    made.shards = 4 if request.param == "nats-shards" else 0
    return made


def test_broker_events_are_handled_at_most_the_configured_number_per_wake():
    reactor = Reactor(lambda *_: None, lambda _: None)
    got: list[tuple] = []
    bridge = Bridge("nats://127.0.0.1:1", reactor, [0] * len(metrics.FIELDS), got.append,
                    events_per_wake=2)  # --bus-events-per-wake 2
    for req in range(1, 6):
        bridge.emit((E_ACK, req, req, ""))
    bridge._on_wake(EPOLLIN)
    assert [e[1] for e in got] == [1, 2] and bridge._wake_pending  # the eventfd is written again for the rest
    bridge._on_wake(EPOLLIN)
    bridge._on_wake(EPOLLIN)
    assert [e[1] for e in got] == [1, 2, 3, 4, 5] and not bridge._wake_pending
    bridge.close()
    reactor.close()


def test_an_event_handler_that_raises_costs_only_that_event(harness):
    def explode(event: tuple) -> None:
        if event[0] == E_ACK and event[1] == 2:
            raise RuntimeError("a bug in the worker")

    h = harness(f"nats://127.0.0.1:{free_port()}", on_event=explode).start()
    h.run_until(lambda: h.bridge.error, what="the first failed connect")
    reqs = [h.publish("boom", {"i": i}) for i in range(3)]
    h.run_until(lambda: {1, 3} <= h.acks().keys(), what="the other answers")
    assert reqs == [1, 2, 3] and 2 not in h.acks()
    assert h.c[F["internal_error_broker"]] == 1


def test_acks_arrive_in_publish_order_with_consecutive_seqs(broker, harness):
    h = harness(broker.url, shards=broker.shards).start()
    h.bridge.interest("acks", True)
    h.run_until(lambda: h.up() and h.subscribed("acks"), what="bus up, subscribed")
    reqs = [h.publish("acks", {"i": i}) for i in range(600)]  # more than two batches
    h.run_until(lambda: len(h.acks()) == len(reqs), what="every publish answered")
    answered = [e[1] for e in h.events if e[0] == E_ACK]
    assert answered == reqs
    assert [h.acks()[req] for req in reqs] == [(seq, "") for seq in range(1, 601)]
    h.run_until(lambda: len(h.messages("acks")) == 600, what="every message delivered")
    assert h.messages("acks") == [(seq, {"i": seq - 1}) for seq in range(1, 601)]
    assert h.c[F["bus_outbox"]] == 0 and h.bridge.detail()["outbox"] == 0
    assert h.c[F["bus_published"]] == 600


@pytest.mark.parametrize("scheme", ["nats", "redis"])
def test_a_publish_while_the_broker_is_down_is_refused_at_once(scheme, harness, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    url = f"{scheme}://127.0.0.1:{free_port()}"  # nobody listens
    h = harness(url).start()
    h.run_until(lambda: h.bridge.error, what="a failed connect")
    assert not h.up() and h.c[F["bus_up"]] == 0
    assert any("cannot connect" in r.getMessage() and h.bridge.error in r.getMessage() for r in caplog.records)
    assert h.bridge.detail() == {"kind": scheme, "up": False, "reconnects": 0, "outbox": 0, "error": h.bridge.error}
    t0 = time.monotonic()
    req = h.publish("down", {"x": 1})
    h.run_until(lambda: req in h.acks(), timeout=2, what="the answer")
    assert time.monotonic() - t0 < 1
    assert h.acks()[req] == (0, "unavailable: broker not connected")
    assert h.c[F["bus_outbox"]] == 0
    warnings = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(warnings) == 1  # the same reason again within LOG_INTERVAL: not logged again


def test_a_broker_killed_with_publishes_in_flight_answers_each_once_and_stores_each_once(broker, harness, caplog):
    caplog.set_level(logging.INFO, "millionws.pubsub.brokers")
    h = harness(broker.url, shards=broker.shards, namespaces=namespaces(replay_max_messages=100_000)).start()
    h.run_until(h.up, what="bus up")
    first = [h.publish("kill", {"i": i}) for i in range(200)]
    h.run_until(lambda: len(h.acks()) == 200, what="the first publishes answered")
    assert [h.acks()[r][0] for r in first] == list(range(1, 201))

    broker.proc.send_signal(signal.SIGSTOP)  # takes the next batch and answers nothing
    rest = [h.publish("kill", {"i": i}) for i in range(200, 1200)]
    outbox = h.bridge.backend.outbox
    h.run_until(lambda: len(outbox) == 1000 and outbox[0].sent, what="a batch in flight")
    broker.kill()
    h.run_until(lambda: not h.up(), what="the connection lost")
    in_flight = {p.req for p in outbox}
    assert 0 < len(in_flight) <= h.bridge.publish_batch
    refused = [r for r in rest if r not in in_flight]
    h.run_until(lambda: all(r in h.acks() for r in refused), timeout=5, what="unsent publishes refused")
    assert all(h.acks()[r] == (0, "unavailable: broker connection lost") for r in refused)
    assert not in_flight & h.acks().keys()  # kept: they may have been stored
    assert h.bridge.detail()["outbox"] == len(in_flight) == h.c[F["bus_outbox"]]
    assert any("connection lost" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    broker.start()
    h.run_until(lambda: in_flight <= h.acks().keys(), timeout=30, what="in-flight publishes answered after restart")
    assert any("reconnected after" in r.getMessage() for r in caplog.records)
    acks = h.acks()
    assert set(acks) == set(first) | set(rest)
    sent = {r: i for i, r in enumerate(first + rest)}
    acked = {sent[r]: seq for r, (seq, error) in acks.items() if not error}
    assert all(seq > 0 for seq in acked.values())
    records = stored(broker.url, "kill", broker.shards)
    documents = [doc["i"] for _seq, doc in records]
    assert len(documents) == len(set(documents)), "a message stored twice"
    assert {doc["i"]: seq for seq, doc in records} == acked  # each acked with the seq it was stored as
    assert h.bridge.detail()["outbox"] == 0 and h.c[F["bus_outbox"]] == 0


def test_a_retry_after_a_lost_answer_gets_the_original_seq(broker, harness):
    h = harness(broker.url, shards=broker.shards)
    backend = h.bridge.backend
    real = backend.publish_batch
    lost: list[int] = []

    async def lose_first_answer(batch):
        results = await real(batch)
        if not lost:
            lost.extend(results)
            raise ConnectionError("the answer was lost")  # stored, but nobody knows
        return results

    backend.publish_batch = lose_first_answer
    h.start()
    h.run_until(h.up, what="bus up")
    reqs = [h.publish("retry", {"i": i}) for i in range(3)]
    h.run_until(lambda: len(h.acks()) == 3, what="the answers")
    assert lost == [1, 2, 3]
    assert [h.acks()[r] for r in reqs] == [(1, ""), (2, ""), (3, "")]
    assert stored(broker.url, "retry", broker.shards) == [(1, {"i": 0}), (2, {"i": 1}), (3, {"i": 2})]


def test_a_frozen_broker_is_noticed_and_its_in_flight_publishes_are_stored_once(broker, harness, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    h = harness(broker.url, shards=broker.shards, heartbeat=1.0).start()  # --bus-heartbeat: how soon silence is noticed
    h.run_until(h.up, what="bus up")
    broker.proc.send_signal(signal.SIGSTOP)  # no RST, no answer: only pings / heartbeats can tell
    try:
        reqs = [h.publish("frozen", {"i": i}) for i in range(10)]
        outbox = h.bridge.backend.outbox
        h.run_until(lambda: outbox and outbox[0].sent, what="the batch sent")
        h.run_until(lambda: not h.up(), timeout=4.0, what="the frozen broker noticed within a few heartbeats")
        # The thread reports the state before it writes the log line: poll for the line too.
        h.run_until(lambda: any("connection lost" in r.getMessage() for r in caplog.records),
                    what="the loss logged with its reason")
        assert not h.acks() and h.bridge.detail()["outbox"] == 10  # sent, maybe stored: kept
    finally:
        broker.proc.send_signal(signal.SIGCONT)  # it reads and stores what the old connection sent
    h.run_until(lambda: len(h.acks()) == 10, what="the answers after the broker thawed")
    assert [h.acks()[r] for r in reqs] == [(seq, "") for seq in range(1, 11)]
    assert stored(broker.url, "frozen", broker.shards) == [(seq, {"i": seq - 1}) for seq in range(1, 11)]
