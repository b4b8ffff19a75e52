"""delivery, on a broker in memory: cursors move by one or by a gap, catch-up reads, replay answers,
malformed and forged records."""

from __future__ import annotations

import asyncio

from millionws import metrics
from millionws.pubsub.brokers import base
from millionws.pubsub.brokers.base import E_GAP, E_REPLAY, GAP_EXPIRED, GAP_NONE, GAP_UNKNOWN, checked_entry
from tests.pubsub.brokers.harness import Fake, delivered

F = metrics.F


def test_live_path_losses_are_read_back_from_the_stream_in_order():
    async def main():
        fake = Fake({"c": [1, 2, 3]})
        fake.channels["c"] = base.Channel()
        await fake.sync("c")  # cursor = 3: starts with the next message
        fake.stored["c"] += [4, 5, 6]
        fake.on_live("c", 6, 0.0, b"6")  # 4 and 5 were lost on the live path
        fake.on_live("c", 5, 0.0, b"5")
        await asyncio.sleep(0)
        fake.stored["c"].append(7)
        fake.on_live("c", 7, 0.0, b"7")
        fake.on_live("c", 7, 0.0, b"7")  # a duplicate
        assert delivered(fake) == [4, 5, 6, 7]

        fake.stored["c"] = [9, 10]  # 8 expired before the node could read it
        fake.on_live("c", 10, 0.0, b"10")
        await asyncio.sleep(0)
        assert (E_GAP, "c", 7, 9, GAP_EXPIRED) in fake.events
        assert delivered(fake)[-2:] == [9, 10]

        fake.channels["c"].replays.append((1, 8))
        await fake.sync("c")
        assert fake.events[-1] == (E_REPLAY, 1, GAP_NONE, 9, [(9, fake.events[-1][4][0][1], b"9"),
                                                              (10, fake.events[-1][4][1][1], b"10")])
        fake.channels["c"].replays.append((2, 6))
        await fake.sync("c")
        assert fake.events[-1][:4] == (E_REPLAY, 2, GAP_EXPIRED, 9)
        assert fake.c[F["dropped_broker_malformed"]] == 0

    asyncio.run(main())


def test_malformed_records_become_one_seq_gaps_and_forged_ones_are_dropped():
    async def main():
        fake = Fake({"c": [1, 2]}, poison={4})
        fake.channels["c"] = base.Channel()
        await fake.sync("c")
        malformed = F["dropped_broker_malformed"]

        fake.on_live("c", b"x", b"1.0", b"{}")  # no valid seq: dropped at once
        assert fake.c[malformed] == 1 and not fake.events

        fake.on_live("c", 3, b"nan", b"{}")  # seq 3 with a bad time, never stored: forged
        await asyncio.sleep(0)
        assert fake.c[malformed] == 2 and not fake.events
        fake.on_live("c", 1000, 1.0, b"{}")  # far ahead of the stream: forged, no endless catch-up
        await asyncio.sleep(0)
        assert fake.c[malformed] == 3 and not fake.events and fake.channels["c"].buffer == []

        fake.stored["c"] += [3, 4, 5]  # 4 is stored but malformed
        fake.on_live("c", 3, 1.0, b"3")
        fake.on_live("c", 4, 1.0, b"not json")  # the stream's version decides: it is malformed too
        await asyncio.sleep(0)
        assert delivered(fake) == [3, 5]
        assert (E_GAP, "c", 3, 5, GAP_UNKNOWN) in fake.events
        assert fake.channels["c"].cursor == 5
        assert fake.c[malformed] == 4

        fake.on_live("c", 6, 1.0, b"not json")  # a forged copy of a seq the stream holds valid
        fake.stored["c"].append(6)
        await asyncio.sleep(0)
        assert delivered(fake) == [3, 5, 6]  # the stored one, not skipped

        # A replay is cut after its last malformed record.
        fake.channels["c"].replays.append((7, 2))
        await fake.sync("c")
        reason, first, entries = fake.events[-1][2:]
        assert (reason, first, [e[0] for e in entries]) == (GAP_UNKNOWN, 5, [5, 6])
        fake.channels["c"].replays.append((8, 4))
        await fake.sync("c")
        assert fake.events[-1][2:4] == (GAP_NONE, 5)

    asyncio.run(main())


def test_the_broker_losing_its_data_is_an_unknown_gap():
    async def main():
        fake = Fake({"c": [1, 2, 3]})
        fake.channels["c"] = base.Channel()
        await fake.sync("c")
        fake.stored["c"] = [1]  # the broker came back without its data
        fake.channels["c"].catchup = True  # as after a reconnect
        await fake.sync("c")
        assert fake.events == [(E_GAP, "c", 3, 2, GAP_UNKNOWN)]
        fake.stored["c"].append(2)
        fake.on_live("c", 2, 1.0, b"2")
        assert delivered(fake) == [2]

    asyncio.run(main())


def test_records_from_the_broker_deeper_than_the_configured_depth_are_malformed():
    assert checked_entry(b"1", b"1.0", b"[[[1]]]", max_depth=3)[2] == b"[[[1]]]"
    assert checked_entry(b"1", b"1.0", b"[[[1]]]", max_depth=2)[2] is None
    assert checked_entry(b"1", b"1.0", b"[" * 64 + b"]" * 64)[2] is not None  # the default: 64
    assert checked_entry(b"1", b"1.0", b"[" * 65 + b"]" * 65)[2] is None

    async def main():
        fake = Fake({"c": [1, 2]}, max_json_depth=2)  # --bus-max-json-depth 2
        fake.channels["c"] = base.Channel()
        await fake.sync("c")
        fake.on_live("c", 3, 1.0, b"[[3]]")
        fake.on_live("c", 4, 1.0, b"[[[4]]]")  # too deep: not handed over; the stream decides
        assert delivered(fake) == [3]
        assert fake.channels["c"].buffer[-1][:1] == (4,) and fake.channels["c"].buffer[-1][2] is None
        await asyncio.sleep(0)  # the catch-up: the stream never stored 4, so it was forged
        assert delivered(fake) == [3] and fake.c[F["dropped_broker_malformed"]] == 1

    asyncio.run(main())


def test_replays_waiting_for_a_channel_are_answered_from_one_read_of_the_stream():
    """A node drained: its subscribers come back together and ask from the same few seqs. One read each
    cost a round trip per message per subscriber and fell behind --replay-timeout at 100 000 (the storm)."""

    async def main():
        fake = Fake({"c": [3, 4, 5, 6]})  # 1 and 2 expired
        fake.channels["c"] = base.Channel()
        await fake.sync("c")  # cursor 6
        reads = []
        fetch = fake.fetch

        async def counting(channel, first, last):
            reads.append((first, last))
            return await fetch(channel, first, last)

        fake.fetch = counting
        for req, since in enumerate([4, 4, 5, 1, 6, 9, 4], start=1):
            fake.channels["c"].replays.append((req, since))
        await fake.sync("c")
        assert reads == [(2, 6)]  # one read, from the lowest since
        answers = {e[1]: (e[2], e[3], [x[0] for x in e[4]]) for e in fake.events if e[0] == E_REPLAY}
        assert answers == {
            1: (GAP_NONE, 5, [5, 6]), 2: (GAP_NONE, 5, [5, 6]), 7: (GAP_NONE, 5, [5, 6]),
            3: (GAP_NONE, 6, [6]),
            4: (GAP_EXPIRED, 3, [3, 4, 5, 6]),  # since 1: 2 is gone
            5: (GAP_NONE, 7, []),  # up to date
            6: (GAP_UNKNOWN, 7, []),  # beyond the stream: its sequence restarted
        }
        assert not fake.channels["c"].replays

    asyncio.run(main())


def test_a_channel_without_replay_answers_since_with_a_gap_and_still_catches_up_the_live_path():
    """As on one node: its rule keeps nothing for since, whatever the stream holds (a broker keeps at least
    one message); the live path still reads a lost message back from the stream."""

    async def main():
        fake = Fake({"ticker:a": [1, 2, 3], "news": [1, 2, 3]}, spec="ticker:* replay-seconds=0")
        for channel in ("ticker:a", "news"):
            fake.channels[channel] = base.Channel()
            await fake.sync(channel)
            fake.channels[channel].replays.extend([(1, 1), (2, 3)])
            await fake.sync(channel)
        assert [(e[2], e[3], [x[0] for x in e[4]]) for e in fake.events if e[0] == E_REPLAY] == [
            (GAP_EXPIRED, 4, []), (GAP_NONE, 4, []),  # ticker:a: a gap to the next message, as one node says
            (GAP_NONE, 2, [2, 3]), (GAP_NONE, 4, []),  # news: the stream's messages
        ]
        fake.stored["ticker:a"] += [4, 5]
        fake.on_live("ticker:a", 5, 0.0, b"5")  # 4 was lost on the live path
        await asyncio.sleep(0)
        assert delivered(fake) == [4, 5]

    asyncio.run(main())
