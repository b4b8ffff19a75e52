"""outbox, on a broker in memory: one answer per publish in outbox order, refusals, the outage
policy, batches of --bus-publish-batch."""

from __future__ import annotations

import asyncio

from millionws import metrics
from millionws.pubsub.brokers import base
from millionws.pubsub.brokers.base import E_ACK
from tests.pubsub.brokers.harness import Fake

F = metrics.F


class Refusing(Fake):
    def refused(self, exc):
        return isinstance(exc, ValueError)


def test_acks_follow_outbox_order_and_refusals_end_after_a_few_tries():
    fake = Refusing({})
    pending = [base.Pending("c", b"1", 0.0, n, req=10 + n) for n in range(4)]
    fake.outbox.extend(pending)
    # 0 stored; 1 refused; 2 stored (will be sent again: stored once, same seq); 3 no answer
    assert not fake._settle(pending, [5, ValueError("no"), 6, TimeoutError()])
    assert fake.events == [(E_ACK, 10, 5, "")]
    assert list(fake.outbox) == pending[1:]
    for _ in range(base.REFUSALS - 2):
        assert not fake._settle(pending[1:], [ValueError("no"), 6, 7])
    assert len(fake.events) == 1
    assert not fake._settle(pending[1:], [ValueError("no"), 6, TimeoutError()])
    assert fake.events[1:] == [(E_ACK, 11, 0, "unavailable: the broker refused it: ValueError: no"), (E_ACK, 12, 6, "")]
    assert fake._settle(pending[3:], [7])
    assert fake.events[-1] == (E_ACK, 13, 7, "") and not fake.outbox
    assert fake.c[F["bus_published"]] == 3 and fake.c[F["bus_outbox"]] == 0


def test_a_refusal_after_an_unanswered_attempt_is_never_answered_unavailable():
    """The first attempt went unanswered (a PubAck lost with a dying stream leader): it may be stored, so the
    refusals of its retries (no leader yet) must not answer "unavailable" (= not stored, send it again,
    which would store it twice): it is sent on until acknowledged, with its first seq, or timed out."""
    fake = Refusing({})
    lost, fresh = base.Pending("c", b"1", 0.0, 1, req=21), base.Pending("d", b"2", 0.0, 2, req=22)
    fake.outbox.extend([lost, fresh])
    assert not fake._settle([lost, fresh], [TimeoutError(), TimeoutError()])
    for _ in range(base.REFUSALS * 3):
        assert not fake._settle([lost, fresh], [ValueError("no leader"), ValueError("no leader")])
    assert fake.events == [] and list(fake.outbox) == [lost, fresh]  # neither: fresh was unanswered too
    assert fake._settle([lost, fresh], [7, 8])
    assert fake.events == [(E_ACK, 21, 7, ""), (E_ACK, 22, 8, "")]


def test_an_outage_refuses_what_was_never_sent_and_keeps_what_may_be_stored():
    fake = Fake({}, outbox_messages=3)  # --bus-outbox-messages 3
    fake.connected = False
    fake.bridge._cmds = []
    fake.bridge.take_commands = lambda: [("publish", "c", b"1", 0.0, 1)]
    fake.commands_ready()
    assert fake.events == [(E_ACK, 1, 0, "unavailable: broker not connected")]

    fake.connected = True
    fake.bridge.take_commands = lambda: [("publish", "c", b"1", 0.0, req) for req in range(2, 7)]
    fake.commands_ready()
    assert [p.req for p in fake.outbox] == [2, 3, 4]
    assert fake.events[1:] == [(E_ACK, 5, 0, "unavailable: outbox full"), (E_ACK, 6, 0, "unavailable: outbox full")]
    assert fake.c[F["bus_dropped"]] == 2 and fake.c[F["bus_outbox"]] == 3

    fake.outbox[0].sent = True  # in a batch when the connection dropped
    fake._refuse_unsent("unavailable: broker connection lost")
    assert [p.req for p in fake.outbox] == [2]
    assert fake.events[3:] == [(E_ACK, 3, 0, "unavailable: broker connection lost"),
                               (E_ACK, 4, 0, "unavailable: broker connection lost")]
    assert fake.c[F["bus_outbox"]] == 1


def test_publishes_leave_in_batches_of_the_configured_size():
    class Batches(Fake):
        def __init__(self, **limits) -> None:
            super().__init__({}, **limits)
            self.sizes: list[int] = []

        async def publish_batch(self, batch):
            self.sizes.append(len(batch))
            return [p.n for p in batch]

    async def main():
        fake = Batches(publish_batch=2)  # --bus-publish-batch 2
        fake._outbox_ready = asyncio.Event()
        fake.outbox.extend(base.Pending("c", b"1", 0.0, n, req=n) for n in range(1, 6))
        fake._outbox_ready.set()
        task = asyncio.get_running_loop().create_task(fake._publisher())
        while fake.outbox:
            await asyncio.sleep(0)
        task.cancel()
        return fake

    fake = asyncio.run(main())
    assert fake.sizes == [2, 2, 1]
    assert [e[1:] for e in fake.events] == [(n, n, "") for n in range(1, 6)]
