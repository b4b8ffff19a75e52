"""backend: the thread's connection loop (reconnect backoff within --bus-backoff-min/-max)."""

from __future__ import annotations

import asyncio

from millionws.pubsub.brokers import base
from tests.pubsub.brokers.harness import Fake


def test_reconnects_wait_within_the_configured_backoff(monkeypatch):
    import itertools

    assert all(d <= 0.004 for d in itertools.islice(base.backoff_delays(0.001, 0.004), 200))
    bounds: list[tuple[float, float]] = []
    real = base.backoff_delays

    def recorded(minimum, maximum):
        bounds.append((minimum, maximum))
        return real(minimum, maximum)

    monkeypatch.setattr(base, "backoff_delays", recorded)

    class Unreachable(Fake):
        attempts = 0

        async def connect(self):
            self.attempts += 1
            raise ConnectionError("refused")

    async def main():
        fake = Unreachable({}, backoff_min=0.001, backoff_max=0.004)  # --bus-backoff-min/-max
        fake.connected = False
        task = asyncio.get_running_loop().create_task(fake._connection_loop())
        await asyncio.sleep(0.2)
        task.cancel()
        return fake

    fake = asyncio.run(main())
    assert bounds == [(0.001, 0.004)]
    assert fake.attempts > 20  # with the default (0.1 s doubling to 5 s) about 3 fit in 0.2 s


class Signals(Fake):
    """Records what the thread asks of the broker's signal subjects."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []
        self.gate: asyncio.Event | None = None

    async def subscribe_signal(self, name):
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(("sub", name))
        return ("handle", name)

    async def unsubscribe_signal(self, name, sub):
        self.calls.append(("unsub", name, sub))

    async def publish_signals(self, batch):
        self.calls.append(("pub", *batch))


def test_a_followed_signal_is_subscribed_before_its_first_record_and_publishes_are_batched():
    async def main():
        fake = Signals({})
        fake.bridge.take_commands = lambda: [("signal_sub", "p.chat", True, b"sync"), ("signal_pub", "p.chat", b"1"),
                                             ("signal_pub", "alive", b"2")]
        fake.commands_ready()
        await asyncio.sleep(0.01)
        assert ("pub", ("p.chat", b"1"), ("alive", b"2")) in fake.calls  # one call for the batch of commands
        assert fake.calls.index(("sub", "p.chat")) < fake.calls.index(("pub", ("p.chat", b"sync")))
        assert len(fake.calls) == 3
        assert fake.signals == {"p.chat": ("handle", "p.chat")}
        fake.on_signal("p.chat", b"record")
        fake.on_signal("p.other", b"record")  # not followed: nothing
        fake.on_signal("p.chat", b"x" * (base.MAX_SIGNAL + 1))  # too large: malformed, counted
        assert [e for e in fake.events if e[0] == base.E_SIGNAL] == [(base.E_SIGNAL, "p.chat", b"record")]
        assert fake.c[base.F["dropped_broker_malformed"]] == 1
        fake.bridge.take_commands = lambda: [("signal_sub", "p.chat", False, b"")]
        fake.commands_ready()
        await asyncio.sleep(0.01)
        assert fake.calls[-1] == ("unsub", "p.chat", ("handle", "p.chat")) and fake.signals == {}

    asyncio.run(main())


def test_a_signal_dropped_while_its_subscription_is_made_is_unsubscribed_and_reconnects_resubscribe():
    async def main():
        fake = Signals({})
        fake.gate = asyncio.Event()
        fake.bridge.take_commands = lambda: [("signal_sub", "p.a", True, b""), ("signal_sub", "p.a", False, b""),
                                             ("signal_sub", "inbox.x", True, b"")]
        fake.commands_ready()
        fake.gate.set()
        await asyncio.sleep(0.01)
        assert ("unsub", "p.a", ("handle", "p.a")) in fake.calls and set(fake.signals) == {"inbox.x"}
        fake.calls.clear()
        await fake._resubscribe_signals()  # what a reconnect does before it says the bus is up
        assert fake.calls == [("sub", "inbox.x")] and fake.signals == {"inbox.x": ("handle", "inbox.x")}
        fake.connected = False
        fake.bridge.take_commands = lambda: [("signal_pub", "alive", b"1")]
        fake.commands_ready()  # while the broker is away: dropped (at most once)
        await asyncio.sleep(0.01)
        assert fake.calls == [("sub", "inbox.x")]

    asyncio.run(main())
