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
