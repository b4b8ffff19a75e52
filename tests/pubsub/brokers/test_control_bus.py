"""The control plane's side of the bridge, on real brokers: control subjects, and history read from the stream."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from millionws import metrics
from millionws.pubsub.brokers.base import E_ANSWER, E_CTL
from millionws.pubsub.brokers.nats import nats_names
from tests.conftest import free_port
from tests.pubsub.brokers.harness import Harness, namespaces

F = metrics.F


def with_control(harness, url: str, me: str | None, **kwargs) -> Harness:
    h = harness(url, **kwargs)
    h.bridge.control_id = me
    h.bridge.on_control = h.events.append
    return h.start()


def received(h: Harness) -> list[bytes]:
    return [e[1] for e in h.events if e[0] == E_CTL]


def send(h: Harness, to: str | None, body: bytes) -> None:
    """A control message out: the command leaves in the reactor's next turn (one thread wake-up per turn)."""
    h.bridge.control_publish(to, body)
    h.run_until(lambda: True)


def answer(h: Harness, req: int) -> tuple:
    h.run_until(lambda: any(e[0] == E_ANSWER and e[1] == req for e in h.events), what=f"answer {req}")
    (event,) = [e for e in h.events if e[0] == E_ANSWER and e[1] == req]
    return event[2:]


def test_control_messages_reach_every_worker_or_just_one(broker, harness):
    a = with_control(harness, broker.url, "aa.0", control_max_bytes=4096)
    b = with_control(harness, broker.url, "bb.1", control_max_bytes=4096)
    for h in (a, b):
        h.run_until(h.up, what="up")
    send(a, None, b'{"to":"all"}')
    b.run_until(lambda: b'{"to":"all"}' in received(b), what="everyone's subject")
    a.run_until(lambda: b'{"to":"all"}' in received(a), what="its own too (the control plane skips its node)")
    send(a, "bb.1", b'{"to":"b"}')
    b.run_until(lambda: b'{"to":"b"}' in received(b), what="b's own subject")
    send(b, "aa.0", b'{"to":"a"}')
    a.run_until(lambda: b'{"to":"a"}' in received(a), what="a's own subject")
    assert b'{"to":"b"}' not in received(a) and b'{"to":"a"}' not in received(b)
    send(a, None, b"x" * 4097)  # over --control-max-bytes: dropped where it arrives
    send(a, None, b'{"after":1}')
    b.run_until(lambda: b'{"after":1}' in received(b), what="the next one")
    assert not any(len(body) > 4096 for body in received(b))
    assert b.c[F["dropped_broker_malformed"]] == 1


def test_without_a_control_id_no_control_subject_is_subscribed(broker, harness):
    a = with_control(harness, broker.url, "aa.0")
    quiet = with_control(harness, broker.url, None)
    for h in (a, quiet):
        h.run_until(h.up, what="up")
    send(a, None, b'{"n":1}')
    a.run_until(lambda: b'{"n":1}' in received(a), what="delivered")
    time.sleep(0.2)
    quiet.run_until(lambda: True)
    assert received(quiet) == []


def keys_of(url: str, channel: str) -> list:
    async def read() -> list:
        if url.startswith("nats://"):
            import nats

            nc = await nats.connect(url)
            names = await nc.jetstream().streams_info()
            await nc.close()
            return [info.config.name for info in names if info.config.name == nats_names(channel)[0]]
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        found = await r.keys(f"mws:{{{channel}}}:*")
        await r.aclose()
        return found

    return asyncio.run(read())


def restart_sequence(url: str, channel: str) -> None:
    """What losing the broker's data for one channel looks like: its stream or keys gone."""
    async def drop() -> None:
        if url.startswith("nats://"):
            import nats

            nc = await nats.connect(url)
            await nc.jetstream().delete_stream(nats_names(channel)[0])
            await nc.close()
            return
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        await r.delete(*await r.keys(f"mws:{{{channel}}}:*"))
        await r.aclose()

    asyncio.run(drop())


def test_history_reads_the_stream_creating_nothing_and_its_epoch_follows_the_sequence(broker, harness):
    h = with_control(harness, broker.url, None, namespaces=namespaces(replay_max_messages=5))  # the stream keeps 5
    h.run_until(h.up, what="up")
    h.bridge.query(1, "history", ("never.used", 0, 10))
    assert answer(h, 1) == ("", (0, None, 1, False, []))
    assert keys_of(broker.url, "never.used") == []  # a read made no stream, no key
    reqs = [h.publish("h", {"n": n}) for n in range(1, 9)]
    h.run_until(lambda: all(r in h.acks() for r in reqs), what="8 acks")
    h.bridge.query(2, "history", ("h", 0, 100))
    error, (last, epoch, first, reset, entries) = answer(h, 2)
    assert (error, last, first, reset) == ("", 8, 4, False)
    assert [(seq, data) for seq, data in entries] == [(s, b'{"n": %d}' % s) for s in range(4, 9)]
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    h.bridge.query(3, "history", ("h", 5, 2))
    _, (_, epoch3, _, reset, entries) = answer(h, 3)
    assert ([s for s, _ in entries], reset, epoch3) == ([6, 7], False, epoch)
    h.bridge.query(4, "history", ("h", 99, 2))  # from a sequence before a restart: from the oldest held
    _, (last, _, _, reset, entries) = answer(h, 4)
    assert (last, reset, [s for s, _ in entries]) == (8, True, [4, 5])
    h.bridge.query(5, "history", ("h", 8, 10))
    assert answer(h, 5)[1][4] == []
    # another node reads the same epoch
    other = with_control(harness, broker.url, None, namespaces=namespaces(replay_max_messages=5))
    other.run_until(other.up, what="up")
    other.bridge.query(1, "history", ("h", 0, 1))
    assert answer(other, 1)[1][1] == epoch
    restart_sequence(broker.url, "h")
    again = [h.publish("h", {"n": "again"}) for _ in range(3)]  # NATS: the stream is made again on a refusal
    h.run_until(lambda: all(r in h.acks() for r in again), what="acks after the restart")
    h.bridge.query(6, "history", ("h", 0, 100))
    _, (last, epoch6, first, _, entries) = answer(h, 6)
    assert epoch6 != epoch and last == len(entries) >= 1 and first == 1  # a new sequence, a new epoch


def test_a_history_read_while_disconnected_is_answered_unavailable_at_once(harness):
    h = with_control(harness, f"nats://127.0.0.1:{free_port()}", None)
    h.bridge.query(9, "history", ("c", 0, 1))
    error, result = answer(h, 9)
    assert error.startswith("unavailable") and result is None


@pytest.mark.parametrize("what", ["drop_everything", ""])
def test_an_unknown_query_is_an_error_answer(broker, harness, what):
    h = with_control(harness, broker.url, None)
    h.run_until(h.up, what="up")
    h.bridge.query(1, what, ())
    error, result = answer(h, 1)
    assert "no query" in error and result is None


def test_a_control_message_the_broker_refuses_is_logged_not_a_bug(nats_broker, harness, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")  # whatever another module set (fuzz: ERROR)
    h = with_control(harness, nats_broker.url, "aa.0", control_max_bytes=64 << 20)
    h.run_until(h.up, what="up")
    send(h, None, b"x" * (2 << 20))  # over nats-server's max_payload (1 MiB)
    send(h, None, b'{"small":1}')
    h.run_until(lambda: b'{"small":1}' in received(h), what="the next one still goes")
    h.run_until(lambda: "was not sent" in caplog.text, what="the line saying so")  # logged by the bridge thread
    assert "unexpected error" not in caplog.text, caplog.text
