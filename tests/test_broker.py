"""Broker naming and the bridge's ordering logic, without a broker."""

from __future__ import annotations

import asyncio

from millionws import broker, metrics
from millionws.broker import E_GAP, E_MSG, E_REPLAY, GAP_EXPIRED, Backend, nats_names, subject_token


def test_subject_names():
    assert subject_token("chat.42") == "chat.42"
    assert subject_token("a..b") == "~" + b"a..b".hex()
    assert subject_token(".a").startswith("~")
    stream, subject, live = nats_names("news")
    assert stream.startswith("MWS_") and len(stream) == 36
    assert (subject, live) == ("mws.in.news", "mws.live.news")
    assert nats_names("a")[0] != nats_names("b")[0]


class Fake(Backend):
    """A broker in memory: a stream per channel with the first ``first`` messages expired."""

    def __init__(self, stored: dict[str, list[int]]) -> None:
        events: list[tuple] = []
        bridge = type("B", (), {"emit": events.append, "c": metrics.WorkerStats(metrics.SharedStats(1), 0).c,
                                "url": "nats://x", "error": ""})()
        super().__init__(bridge)  # type: ignore[arg-type]
        self.events = events
        self.stored = stored
        self.connected = True

    async def subscribe_live(self, channel):
        return object()

    async def last_seq(self, channel):
        return max(self.stored[channel], default=0)

    async def fetch(self, channel, first, last):
        entries = [(s, 0.0, b"%d" % s) for s in self.stored[channel] if first <= s <= last]
        return (entries[0][0] if entries else last + 1), entries


def test_live_path_losses_are_read_back_from_the_stream_in_order():
    async def main():
        fake = Fake({"c": [1, 2, 3]})
        fake.channels["c"] = broker.Channel()
        await fake.sync("c")  # cursor = 3: starts with the next message
        fake.stored["c"] += [4, 5, 6]
        fake.on_live("c", 6, 0.0, b"6")  # 4 and 5 were lost on the live path
        fake.on_live("c", 5, 0.0, b"5")
        await asyncio.sleep(0.01)
        fake.on_live("c", 7, 0.0, b"7")
        fake.on_live("c", 7, 0.0, b"7")  # a duplicate
        assert [e[2] for e in fake.events if e[0] == E_MSG] == [4, 5, 6, 7]

        fake.stored["c"] = [9, 10]  # 8 expired before the node could read it
        fake.on_live("c", 10, 0.0, b"10")
        await asyncio.sleep(0.01)
        assert (E_GAP, "c", 7, 9, GAP_EXPIRED) in fake.events
        assert [e[2] for e in fake.events if e[0] == E_MSG][-2:] == [9, 10]

        fake.channels["c"].replays.append((1, 8))
        await fake.sync("c")
        assert fake.events[-1] == (E_REPLAY, 1, 0, 9, [(9, fake.events[-1][4][0][1], b"9"),
                                                       (10, fake.events[-1][4][1][1], b"10")])

    asyncio.run(main())
