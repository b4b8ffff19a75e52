"""A broker node lost under load: two millionws nodes on a NATS cluster or Redis Sentinel, kill -9 under traffic.

Two millionws nodes (2 workers each) are given the whole cluster (``--bus`` with every NATS server, or the
Sentinels).  WebSocket subscribers on every worker of both nodes subscribe with ``since: 0`` before the first
publish.  A backend publishes sequentially over HTTP (``POST /publish/storm``, the next one only after the
previous one's ack), alternating between the nodes and, on ``503 unavailable`` (not stored, by contract),
retrying on the other node after 50 ms (faster than ``Retry-After: 1``, to measure recovery to the tenth of a
second).  Meanwhile a broker server is killed with SIGKILL: NATS, the leader of the channel's stream, then,
once it is back and current, the new leader; Redis, the primary (the Sentinels promote a replica).

What must hold, at every subscriber: message ``i`` of the backend arrives once, as ``seq`` i + 1, in order
(no acknowledged publish lost, none twice, order kept, the seq of each ack is the one delivered); no
``publish_timeout`` (an outcome the backend could not know).  What is measured, per kill: the time from the
kill to the ack of the first publish sent after it (publishing recovered), and to the moment the last
subscriber received that message (delivery recovered).  ``FAILOVER_REPORT=path`` appends the figures as
JSON lines (deploy/PRODUCTION.md quotes them); ``FAILOVER_SECONDS`` stretches the traffic around each kill
(``just failover``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect

from millionws.config import DEFAULTS
from millionws.pubsub.brokers.nats import nats_names
from millionws.pubsub.brokers.nats_shards import shard_names
from tests.conftest import wait_for
from tests.e2e.test_pubsub import open_on_both_workers, recv
from tests.e2e.test_routes import metrics, total

pytestmark = pytest.mark.e2e

CHANNEL = "storm"
# Traffic before the first kill, and after each recovery before the next step; longer with `just failover`.
SECONDS = float(os.environ.get("FAILOVER_SECONDS", "2"))
RETRY = 0.05  # seconds between retries of a publish answered 503 unavailable


def bus_up(server) -> bool:
    s = metrics(server.port)
    return all(total(s, "millionws_bus_up", worker=w) == 1 for w in ("0", "1"))


@dataclass
class Backend:
    """The publishing backend, in a thread: sequential, each publish acknowledged before the next."""

    ports: list[int]
    acks: list[tuple[int, int, float, float]] = field(default_factory=list)  # (i, seq, t sent, t acked)
    unavailable: int = 0  # 503 unavailable answers, retried
    unknown: list[str] = field(default_factory=list)  # answers a backend could not act on (publish_timeout...)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for port in self.ports]
        i = attempt = 0
        while not self.stop.is_set():
            conn = conns[attempt % len(conns)]
            attempt += 1
            sent = time.monotonic()
            try:
                conn.request("POST", f"/publish/{CHANNEL}", json.dumps({"i": i}).encode())
            except OSError:  # a keep-alive connection the node closed while idle: nothing sent, send again
                conn.close()
                continue
            try:
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:  # sent, no answer: may be published
                self.unknown.append(f"{i}: {exc!r}")
                conn.close()
                time.sleep(RETRY)
                continue
            if response.status == 200:
                self.acks.append((i, json.loads(body)["seq"], sent, time.monotonic()))
                i += 1  # each request, answered or not, goes to the other node than the previous one
            elif response.status == 503 and b"unavailable" in body and b"publish_timeout" not in body:
                self.unavailable += 1
                time.sleep(RETRY)
            else:
                self.unknown.append(f"{i}: {response.status} {body[:200]!r}")
                time.sleep(RETRY)
        for conn in conns:
            conn.close()

    def acked_since(self, t: float) -> int:
        return sum(1 for ack in self.acks if ack[3] > t)


class Subscribers:
    """WebSockets on every worker of both nodes, since 0; each records ``(seq, i, t)`` of every message."""

    def __init__(self) -> None:
        self.got: list[list[tuple[int, int, float]]] = []
        self.other: list[dict] = []  # anything but a message of the channel (a gap would land here)
        self.tasks: list[asyncio.Task] = []
        self.sockets: list = []

    async def open(self, servers: list) -> None:
        for server in servers:
            async def one(server=server):
                ws = await connect(server.url("/pubsub"), compression=None, max_queue=None)
                await ws.send(json.dumps({"op": "subscribe", "channels": [CHANNEL], "since": {CHANNEL: 0}}))
                reply = await recv(ws)
                assert reply == {"op": "subscribed", "channels": [CHANNEL]}, reply
                return ws
            self.sockets += await open_on_both_workers(server, 2, one)
        for ws in self.sockets:
            self.got.append([])
            self.tasks.append(asyncio.get_running_loop().create_task(self._read(ws, self.got[-1])))

    async def _read(self, ws, got: list) -> None:
        async for raw in ws:
            doc = json.loads(raw)
            if doc.get("op") == "message" and doc.get("channel") == CHANNEL:
                got.append((doc["seq"], doc["data"]["i"], time.monotonic()))
            else:
                self.other.append(doc)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for ws in self.sockets:
            await ws.close()


@dataclass
class Kill:
    what: str
    t: float
    acked_before: int  # acks before the kill


def recovery(kill: Kill, backend: Backend, subs: Subscribers) -> dict:
    """Seconds from the kill to the ack of the first publish sent after it, and to its delivery everywhere."""
    first = next(ack for ack in backend.acks if ack[2] > kill.t)
    delivered = max(next(t for seq, _, t in got if seq == first[1]) for got in subs.got)
    return {"kill": kill.what, "publish_recovery_s": round(first[3] - kill.t, 3),
            "delivery_recovery_s": round(delivered - kill.t, 3)}


async def storm(servers: list, steps, report: dict) -> None:
    """Subscribe, publish throughout, run ``steps(backend) -> list[Kill]`` (blocking, in a thread), check."""
    subs = Subscribers()
    await subs.open(servers)
    backend = Backend([server.port for server in servers])
    thread = threading.Thread(target=backend.run, name="backend", daemon=True)
    thread.start()
    try:
        kills = await asyncio.to_thread(steps, backend)
    finally:
        backend.stop.set()
        await asyncio.to_thread(thread.join, 90)
    n = len(backend.acks)
    assert not backend.unknown, backend.unknown[:5]
    # Each ack: the next seq. A channel's first seq is 1, or with --bus-shards its first stream sequence.
    first = backend.acks[0][1] if backend.acks else 1
    assert [ack[:2] for ack in backend.acks] == [(i, first + i) for i in range(n)]

    def delivered() -> bool:
        return all(len(got) >= n for got in subs.got)
    try:
        await asyncio.to_thread(wait_for, delivered, 30, 0.05, "every acknowledged publish at every subscriber")
    except AssertionError:
        missing = [next((first + k for k, m in enumerate(got) if m[0] != first + k), None) for got in subs.got]
        raise AssertionError(f"{n} acknowledged; received per subscriber: {[len(got) for got in subs.got]}, last "
                             f"seqs {[got[-1][0] if got else None for got in subs.got]}, other {subs.other[:3]}, "
                             f"first missing {missing}") from None
    await asyncio.sleep(0.5)  # anything delivered twice or beyond would arrive now
    for got in subs.got:
        assert [(seq, i) for seq, i, _ in got] == [(first + i, i) for i in range(n)]  # none lost or twice, in order
    assert not subs.other, subs.other[:5]
    report.update(publishes=n, subscribers=len(subs.got), losses=0, duplicates=0, retried_503=backend.unavailable,
                  recoveries=[recovery(kill, backend, subs) for kill in kills])
    await subs.close()


def record(report: dict) -> None:
    path = os.environ.get("FAILOVER_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(report) + "\n")
    print(json.dumps(report))


def traffic(backend: Backend, since: float, count: int = 0) -> None:
    """Wait until SECONDS of acknowledged traffic (and at least ``count`` acks) followed ``since``."""
    wait_for(lambda: backend.acked_since(since) >= max(count, 1), 60, 0.02, "publishes acknowledged again")
    time.sleep(SECONDS)


def nodes(start_server, url: str, *flags: str) -> list:
    # The replay window must hold what is published while a worker reconnects (its backoff reaches
    # --bus-backoff-max, 5 s, during a failover): with the default 1000 messages, a worker back 3 s after the
    # others at ~300 publishes/s found its next message trimmed (gap expired), measured.
    servers = [start_server("--bus", url, "--publish-timeout", "30", "--close-timeout", "2",
                            "--replay-max-messages", "100000", *flags, workers=2)
               for _ in range(2)]
    for server in servers:
        wait_for(lambda server=server: bus_up(server), 30, what="bus up on every worker")
    return servers


def stream_leader(cluster, stream: str) -> str:
    """The server name leading ``stream`` (JetStream API, through any live server)."""
    import nats

    async def ask() -> str:
        nc = await nats.connect(servers=[f"nats://127.0.0.1:{p}" for i, p in enumerate(cluster.ports)
                                         if cluster.alive(i)], connect_timeout=2)
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
        finally:
            await nc.close()
        replicas = info.cluster.replicas or []
        assert info.config.num_replicas == 3, info.config  # --bus-replicas 0 in a cluster: 3 copies
        if len(replicas) != 2 or not all(peer.current and not peer.offline for peer in replicas):
            raise AssertionError(f"stream replicas not all current: {replicas}")
        return info.cluster.leader
    return asyncio.run(ask())


SHARDS = DEFAULTS.bus_shards


@pytest.mark.parametrize("layout", ["shards", "streams"])
def test_nats_cluster_loses_two_servers_in_turn_under_load(start_server, nats_cluster, layout):
    """The shard streams (the default; a node numbers each message there, so a PubAck lost with its leader
    must not make the resend a second message), and a stream per channel (``--bus-shards 0``)."""
    cluster = nats_cluster
    if layout == "shards":
        servers = nodes(start_server, cluster.url)
        stream = shard_names(CHANNEL, SHARDS)[0]
    else:
        servers = nodes(start_server, cluster.url, "--bus-shards", "0")
        stream = nats_names(CHANNEL)[0]

    def steps(backend: Backend) -> list[Kill]:
        kills = []
        traffic(backend, 0, 50)
        for _ in range(2):  # the stream's leader; once it is back and current, the new leader
            leader = cluster.index_of(wait_for(lambda: stream_leader(cluster, stream), 30, 0.1,
                                               what="stream in sync"))
            before = len(backend.acks)
            kills.append(Kill(f"nats n{leader} (stream leader)", cluster.kill(leader), before))
            traffic(backend, kills[-1].t, 50)
            cluster.start(leader)
            cluster.wait_healthy(leader)
        wait_for(lambda: stream_leader(cluster, stream), 30, 0.1, what="stream in sync")
        return kills

    shape = f"{SHARDS} shard streams" if layout == "shards" else "a stream per channel"
    report = {"broker": f"nats cluster of 3, stream replicas 3, {shape}", "nodes": "2 millionws x 2 workers"}
    asyncio.run(storm(servers, steps, report))
    record(report)


def test_redis_sentinel_fails_the_primary_over_under_load(start_server, redis_sentinel):
    redis = redis_sentinel
    servers = nodes(start_server, redis.url)

    def steps(backend: Backend) -> list[Kill]:
        traffic(backend, 0, 50)
        old = redis.primary()
        for replica in {0, 1, 2} - {old}:  # FUNCTION LOAD is replicated: the one promoted can sequence at once
            assert "mws_publish" in redis.cli(replica, "FUNCTION", "LIST", "LIBRARYNAME", "millionws")
        kill = Kill(f"redis primary ({old})", redis.kill(old), len(backend.acks))
        wait_for(lambda: redis.primary() != old, 30, 0.05, what="a replica promoted")
        traffic(backend, kill.t, 50)
        redis.start(old)  # back as a replica of the new primary (the Sentinels reconfigure it)
        traffic(backend, time.monotonic(), 50)
        return [kill]

    report = {"broker": "redis primary + 2 replicas + 3 sentinels (quorum 2, down-after 1 s)",
              "nodes": "2 millionws x 2 workers"}
    asyncio.run(storm(servers, steps, report))
    record(report)
