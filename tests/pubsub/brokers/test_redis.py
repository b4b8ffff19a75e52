"""redis: the sequencing function, junk on its channels, a server older than Redis 7."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import ResponseError

from millionws.metrics import F
from millionws.pubsub.brokers.base import E_GAP, E_REPLAY, GAP_EXPIRED, GAP_NONE, GAP_UNKNOWN, BusConfigError
from millionws.pubsub.brokers.redis import REDIS_TOO_OLD, redis_connect
from millionws.pubsub.brokers.schemes import preflight
from tests.conftest import free_port
from tests.pubsub.brokers.harness import CHANNEL, fake_bridge, gaps, malformed, namespaces, stored, subscribed


def test_the_module_named_redis_drives_the_client_library_not_itself():
    import redis.exceptions

    with pytest.raises(redis.exceptions.ConnectionError):  # a self-import would fail before connecting
        asyncio.run(redis_connect(f"redis://127.0.0.1:{free_port()}", 1.0))


def test_a_live_subscription_is_used_only_once_redis_confirmed_it():
    """The channel's last seq is read right after, on another connection: a SUBSCRIBE still in flight then
    would miss a message published in between, which no cursor would ever ask for again."""
    from millionws.pubsub.brokers.redis import RedisBackend

    class Pool:
        async def set(self, *args, **kwargs):
            return True

    class PubSub:
        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.inbox: asyncio.Queue = asyncio.Queue()

        async def subscribe(self, name):
            self.sent.append(name)

        async def listen(self):
            while True:
                yield await self.inbox.get()

    async def main() -> None:
        backend = RedisBackend(fake_bridge("redis://x", connect_timeout=0.3))  # type: ignore[arg-type]
        backend.r, backend.ps = Pool(), PubSub()
        reader = asyncio.get_running_loop().create_task(backend._read())
        waiting = asyncio.get_running_loop().create_task(backend.subscribe_live("news"))
        await asyncio.sleep(0.05)
        assert backend.ps.sent == [b"mws:live:news"] and not waiting.done()
        await backend.ps.inbox.put({"type": "subscribe", "channel": b"mws:live:other", "data": 2})
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await backend.ps.inbox.put({"type": "subscribe", "channel": b"mws:live:news", "data": 3})
        assert await asyncio.wait_for(waiting, 1) is True
        with pytest.raises(TimeoutError):  # never confirmed: the sync retries later
            await backend.subscribe_live("silent")
        assert backend._confirming == {}
        reader.cancel()

    asyncio.run(main())


def test_redis_function_remembers_recent_seqs_per_publisher(redis_broker, harness):
    h = harness(redis_broker.url).start()
    h.run_until(h.up, what="bus up (function loaded)")

    async def main():
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_broker.url)
        call = lambda n, floor: r.fcall("mws_publish", 1, "d", b"{}", "", "p", n, floor)  # noqa: E731
        assert [await call(5, 5), await call(6, 5), await call(5, 5), await call(6, 5)] == [1, 2, 1, 2]
        assert await r.zcard("mws:{d}:acks:p") == 2
        assert await call(7, 6) == 3
        assert await r.zrange("mws:{d}:acks:p", 0, -1) == [b"2", b"3"]  # 5 was answered (below the floor)
        assert await r.fcall("mws_publish", 1, "d", b"{}") == 4  # a backend: no publisher id
        assert await r.fcall("mws_publish", 1, "d", b"{}", "nan") == 5  # a bad time is replaced
        rows = await r.xrange("mws:{d}:log")
        assert [row[0] for row in rows] == [b"0-1", b"0-2", b"0-3", b"0-4", b"0-5"]
        assert float(rows[4][1][b"t"]) == pytest.approx(time.time(), abs=60)
        await r.aclose()

    asyncio.run(main())


def test_redis_junk_is_dropped_counted_and_the_channel_goes_on(redis_broker, harness):
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


def test_a_redis_older_than_7_is_refused(old_redis, harness):
    with pytest.raises(BusConfigError) as info:
        preflight(old_redis)
    assert str(info.value).startswith(REDIS_TOO_OLD)
    h = harness(old_redis).start()
    h.run_until(lambda: h.bridge.error.startswith(REDIS_TOO_OLD), what="the reason")
    assert not h.up()


# -- each channel's stream has its namespace's limits (--channel-options) ---------------------------------------

def test_each_channel_is_trimmed_expired_and_replayed_by_its_namespace(redis_broker, harness):
    import redis.asyncio as aioredis

    h = harness(redis_broker.url, namespaces=namespaces("chat:* replay-messages=2 replay-seconds=5")).start()
    h.run_until(h.up, what="bus up (function loaded)")
    for i in range(5):
        for channel in ("chat:1", "news"):
            h.publish(channel, {"i": i})
    h.run_until(lambda: len(h.acks()) == 10, what="the publishes answered")
    assert [seq for seq, _ in stored(redis_broker.url, "chat:1")] == [4, 5]  # MAXLEN of its rule, per call
    assert [seq for seq, _ in stored(redis_broker.url, "news")] == [1, 2, 3, 4, 5]  # the global flags

    async def check() -> None:
        r = aioredis.Redis.from_url(redis_broker.url)
        assert 0 < await r.ttl("mws:{chat:1}:log") <= 6 and await r.ttl("mws:{news}:log") > 100
        assert await r.get("mws:{chat:1}:limits") == b"2 6"  # recorded for the backends below
        assert await r.ttl("mws:{chat:1}:limits") > 86_000
        await r.fcall("mws_publish", 1, "chat:1", b"{}")  # a backend without limits: the channel's rule
        assert await r.xlen("mws:{chat:1}:log") == 2 and 0 < await r.ttl("mws:{chat:1}:log") <= 6
        await r.fcall("mws_publish", 1, "fresh", b"{}")  # no node touched it: the loading node's global flags
        assert await r.ttl("mws:{fresh}:log") > 100
        await r.fcall("mws_publish", 1, "fresh", b"{}", "", "", "", "", 1, 3)  # a backend that passes limits
        assert await r.xlen("mws:{fresh}:log") == 1 and 0 < await r.ttl("mws:{fresh}:log") <= 3
        for bad in ((1,), (-1, 5), (1, 0), ("x", 5)):
            with pytest.raises(ResponseError, match="maxlen is an integer"):
                await r.fcall("mws_publish", 1, "fresh", b"{}", "", "", "", "", *bad)
        assert await r.get("mws:{fresh}:seq") == b"2"  # refused calls numbered nothing
        # Published 30 s ago: outside chat:*'s 5 s window, inside the default 120 s.
        for channel in ("chat:old", "old"):
            await r.fcall("mws_publish", 1, channel, b'{"old":1}', repr(time.time() - 30))
        await r.aclose()

    asyncio.run(check())
    for req, channel in ((101, "chat:old"), (102, "old")):
        h.bridge.interest(channel, True)
        h.run_until(lambda channel=channel: h.subscribed(channel), what=f"subscribed to {channel}")
        h.bridge.replay(req, channel, 0)
    h.run_until(lambda: sum(e[0] == E_REPLAY for e in h.events) == 2, what="the replay answers")
    answers = {e[1]: (e[2], e[3], [x[0] for x in e[4]]) for e in h.events if e[0] == E_REPLAY}
    assert answers == {101: (GAP_EXPIRED, 2, []), 102: (GAP_NONE, 1, [1])}


def test_a_node_records_a_channels_limits_when_it_subscribes(redis_broker, harness):
    """The ticker case: only backends publish (FCALL, no limits given), a node only subscribes."""
    import redis.asyncio as aioredis

    h = harness(redis_broker.url, namespaces=namespaces("ticker:* replay-messages=3 replay-seconds=10")).start()
    h.bridge.interest("ticker:a", True)
    h.run_until(lambda: h.up() and h.subscribed("ticker:a"), what="bus up, subscribed")

    async def backend() -> None:
        r = aioredis.Redis.from_url(redis_broker.url)
        for i in range(5):
            await r.fcall("mws_publish", 1, "ticker:a", b"%d" % i)
        assert await r.xlen("mws:{ticker:a}:log") == 3 and 0 < await r.ttl("mws:{ticker:a}:log") <= 11
        await r.aclose()

    asyncio.run(backend())
    h.run_until(lambda: len(h.messages("ticker:a")) == 5, what="the live messages")


def test_a_publish_is_not_acknowledged_until_the_replicas_hold_it(redis_broker, harness):
    """--bus-replicas 2 on a Redis without replicas: WAIT never confirms, so no ack (and no refusal) comes; the
    publish stays in the outbox, re-sent and stored once, until a replica holds it or the worker times it out.
    Nor is it live meanwhile: a primary that died now would take it along, and its successor number another
    message the same."""
    h = harness(redis_broker.url, replicas=2, connect_timeout=0.2).start()
    h.bridge.interest("wait", True)
    h.run_until(lambda: h.up() and h.subscribed("wait"), what="bus up, subscribed")
    req = h.publish("wait", {"x": 1})
    deadline = time.monotonic() + 1.5  # several WAIT rounds of 0.2 s
    while time.monotonic() < deadline:
        h.run_until(lambda: True)
        assert req not in h.acks()
        time.sleep(0.05)
    assert h.c[F["bus_outbox"]] == 1
    assert h.messages("wait") == []
    r = redis.Redis(port=redis_broker.port)
    assert r.get("mws:{wait}:seq") == b"1"  # stored on the primary once, however often re-sent
    r.close()


def test_a_held_message_is_released_live_from_the_log(redis_broker, harness):
    """mws_publish with hold stores without publishing; mws_release publishes what the log holds under a seq,
    as mws_publish would have (same seq, time and data); a seq the log no longer holds releases nothing."""
    h = harness(redis_broker.url).start()
    h.bridge.interest("held", True)
    h.run_until(lambda: h.up() and h.subscribed("held"), what="subscribed")
    r = redis.Redis(port=redis_broker.port)
    seq = r.fcall("mws_publish", 1, "held", b'{"n":1}', "", "", "", "", "", "", "1")
    h.run_until(lambda: True)
    time.sleep(0.2)
    h.run_until(lambda: True)
    assert seq == 1 and h.messages("held") == []
    assert r.fcall("mws_release", 1, "held", 1) == 1
    h.run_until(lambda: h.messages("held") == [(1, {"n": 1})], what="the released message")
    assert r.fcall("mws_release", 1, "held", 7) == 0  # never stored
    with pytest.raises(ResponseError, match="seq is an integer"):
        r.fcall("mws_release", 1, "held", "1 2")
    r.close()
def test_every_key_of_a_channel_expires_so_idle_channels_cost_nothing(redis_broker, harness):
    """The sequence and epoch too (a day after the last publish), not only the log: a channel of the past keeps
    no key; one unused that long starts again at 1 with another epoch."""
    import redis.asyncio as aioredis

    from millionws.pubsub.brokers.redis import LIMITS_TTL

    h = harness(redis_broker.url).start()
    h.bridge.interest("idle", True)
    h.run_until(lambda: h.up() and h.subscribed("idle"), what="subscribed")
    reqs = [h.publish("idle", {"n": i}) for i in range(3)]
    h.run_until(lambda: all(r in h.acks() for r in reqs), what="acks")

    async def ttls():
        r = aioredis.Redis.from_url(redis_broker.url)
        try:
            keys = sorted(await r.keys("mws:{idle}:*"))
            return {k.decode().rpartition(":")[2]: await r.ttl(k) for k in keys}
        finally:
            await r.aclose()

    found = asyncio.run(ttls())
    assert {"seq", "epoch", "log", "limits"} <= found.keys()
    assert all(0 < ttl <= LIMITS_TTL for ttl in found.values()), found  # no key lives forever
    assert found["seq"] > LIMITS_TTL - 60 and found["epoch"] > LIMITS_TTL - 60
