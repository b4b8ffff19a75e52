"""millionws.client against a real node that drains (SIGTERM) and restarts mid-stream, with a NATS bus."""

from __future__ import annotations

import asyncio
import json
import signal

from millionws.client import Client, Message
from millionws.pubsub.brokers.nats import nats_names
from tests.conftest import Server, free_port, wait_for


def test_client_sees_every_message_once_in_order_across_a_drain_and_restart(nats_broker):
    port = free_port()
    args = ["--bus", nats_broker.url, "--grace", "3", "--close-timeout", "1"]
    servers = [Server(port, 2, args)]
    count = 150

    async def main():
        import nats

        nc = await nats.connect(nats_broker.url)
        js = nc.jetstream()
        async with Client(f"ws://127.0.0.1:{port}/pubsub", min_delay=0.05, max_delay=0.5) as client:
            await client.subscribe("feed", since=0)
            # The node creates the channel's stream on its first subscriber; a backend publishing
            # on the subject before any node used the channel would find no stream.
            stream = nats_names("feed")[0]
            for _ in range(100):
                try:
                    await js.stream_info(stream)
                    break
                except Exception:
                    await asyncio.sleep(0.05)

            async def backend():  # publishes straight on the broker: it does not care about the node
                for k in range(1, count + 1):
                    await js.publish("mws.in.feed", json.dumps(k).encode())
                    if k == 50:
                        old = servers[-1]
                        old.signal(signal.SIGTERM)  # drain: every WebSocket gets 1001
                        await asyncio.to_thread(old.proc.wait, 15)
                        servers.append(await asyncio.to_thread(Server, port, 2, args))
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(backend())
            got = []
            while len(got) < count:
                event = await client.next(timeout=30)
                assert isinstance(event, Message), event
                got.append(event)
            await task
            assert [m.seq for m in got] == list(range(1, count + 1))
            assert [m.data for m in got] == list(range(1, count + 1))
            assert client.reconnects >= 1 and client.last == {"feed": count}
            # Still subscribed on the new node, still publishing through it.
            await client.publish("feed", "after")
            event = await client.next(timeout=10)
            assert event == Message("feed", count + 1, "after")
        await nc.close()

    try:
        asyncio.run(main())
        assert servers[0].proc.returncode == 0  # the drain ended cleanly
    finally:
        for server in servers:
            server.stop()


def test_full_jitter_backoff_stays_within_its_bounds():
    from millionws.pubsub.brokers.base import backoff_delays

    delays = backoff_delays(0.1, 2.0)
    caps = [min(2.0, 0.1 * 2 ** n) for n in range(12)]
    values = [next(delays) for _ in caps]
    assert all(0 <= v <= cap for v, cap in zip(values, caps, strict=True))
    wait_for(lambda: True)


def test_client_reconnect_delay_is_full_jitter_under_its_cap():
    import random

    from millionws.client import MAX_DELAY, MIN_DELAY, backoff_delay

    random.seed(12)
    for attempt in (0, 1, 3, 7, 20, 5000):  # 5000: far past the cap, where 2**attempt would not fit a float
        cap = min(MAX_DELAY, MIN_DELAY * 2 ** min(attempt, 64))
        draws = [backoff_delay(attempt) for _ in range(400)]
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over the whole interval
