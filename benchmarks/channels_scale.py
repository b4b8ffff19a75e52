"""Many channels across nodes (issue 14 §3): what the broker holds for N user channels + 1 000 shared ones.

    python -m benchmarks.channels_scale --users 10000,100000 --layouts nats-shards,redis \\
        --old-at 10000 --json-out benchmarks/results/channels_scale.json

Per (layout, N), on a fresh broker (nats-server -js with file store, or redis-server without persistence):

1. Two node processes, each one ``Backend`` of millionws's bridge thread (the broker-side half of a worker,
   the code a node runs, without its WebSockets: the broker sees exactly what two nodes' workers do):
   node A holds the even user channels ``@user:<i>``, node B the odd ones, both hold the 1 000 shared
   channels ``room:<j>`` (a local subscriber each: one live subscription per channel per node).
2. Node A publishes one message on every user channel and 5 on every shared channel, all at once (through the
   outbox, ``--bus-publish-batch`` 256, like POST /publish): the rate, and the time from command to
   acknowledgement under that burst (p50/p99, queueing included); then each node counts what it was
   delivered (expected: one per user channel it holds, 5 000 shared messages each).
3. Replay: node B answers 1 000 replays ``since`` = the first seq of one of its user channels minus one
   (the stored message back): milliseconds per replay (p50/p99), each checked to hold its message.
4. Publish latency: node A publishes 1 000 messages one at a time on user channels (each after the
   previous one's acknowledgement): p50/p99 from command to acknowledgement.
5. The broker (measured before step 4): streams (``/jsz``) or keys (``DBSIZE``), its memory (nats-server
   RSS from /proc and the ``/jsz`` memory + store bytes; Redis ``INFO memory`` used_memory and RSS), empty,
   after the subscribes and after the publishes.

The extrapolation to 1 000 000 users is the line through the two measured sizes (broker memory, streams/keys,
subscribe time): cost(N) = a + b N, b from the two points; printed with the points.  ``--runs R`` measures
every (layout, size) R times, the runs outermost; the points are the medians, with their ranges.

``--layouts``: ``nats-shards`` (``--bus-shards 16``), ``nats`` (a stream per channel, the old layout; only at
``--old-at`` users: at 100 000 it needs 100 000 streams), ``redis``.  The node processes subscribe
:data:`CHUNK` channels at a time (users arrive over time; 50 000 syncs at once make the broker's answers
time out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from typing import Any

SHARED = 1000
SHARED_MESSAGES = 5
CHUNK = 1000  # channels subscribed at once by a node (each waits for the previous chunk)
LATENCY = 1000  # publishes one at a time, each after the previous one's ack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- one node: a Backend driven without a reactor ----------------------------------------------------------

DEFAULT_REPLAY = 120.0
REPLAY_SECONDS = [DEFAULT_REPLAY]  # the nodes' --replay-seconds (--replay-seconds)
IDLE = [0.0]  # seconds past the window before the idle measurement (--idle; 0: none)


def _bridge(url: str, shards: int, events: list) -> Any:
    from millionws import metrics
    from millionws.config import DEFAULTS
    from millionws.namespaces import ChannelOptions, Namespaces

    commands: list[tuple] = []
    bridge = types.SimpleNamespace(
        url=url, c=[0] * len(metrics.FIELDS), loop=None, closing=False, error="", reconnects=0,
        namespaces=Namespaces("", ChannelOptions("", REPLAY_SECONDS[0], DEFAULTS.replay_max_messages,
                                                 DEFAULTS.replay_max_bytes, 0.0)),
        outbox_messages=1_000_000, publish_batch=DEFAULTS.bus_publish_batch, fetch_batch=DEFAULTS.bus_fetch_batch,
        backoff_min=0.1, backoff_max=1.0, connect_timeout=5.0, heartbeat=30.0,
        live_pending_messages=DEFAULTS.bus_live_pending_messages, live_pending_bytes=DEFAULTS.bus_live_pending_bytes,
        max_json_depth=DEFAULTS.bus_max_json_depth, control_id=None, control_max_bytes=DEFAULTS.control_max_bytes,
        shards=shards, replicas=DEFAULTS.bus_replicas, emit=events.append, commands=commands)
    bridge.take_commands = lambda: [commands.pop(0) for _ in range(len(commands))]
    return bridge


async def _node(conn: Any, url: str, shards: int, channels: list[str]) -> None:
    from millionws.pubsub.brokers.base import E_ACK, E_MSG, E_REPLAY, E_STATE
    from millionws.pubsub.brokers.schemes import backend_for

    events: list[tuple] = []
    bridge = _bridge(url, shards, events)
    backend = backend_for(bridge)
    main = asyncio.get_running_loop().create_task(backend.main())

    async def until(predicate, timeout=600.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(bridge.error)
            await asyncio.sleep(0.0002)  # the poll's own delay stays far below what it measures

    await until(lambda: any(e[0] == E_STATE and e[1] for e in events), 30)
    t0 = time.monotonic()
    for lo in range(0, len(channels), CHUNK):  # users arrive over time, not all in one loop turn
        for ch in channels[lo:lo + CHUNK]:
            bridge.commands.append(("interest", ch, True))
        backend.commands_ready()
        await until(lambda: all(s.cursor is not None and s.live is not None and not s.busy
                                for s in backend.channels.values()))
    conn.send({"subscribed": len(channels), "subscribe_s": time.monotonic() - t0})
    delivered: dict[str, list[int]] = {}
    sent: dict[int, float] = {}
    acks: dict[int, tuple[float, int, str]] = {}
    answers: dict[int, tuple] = {}
    req = 0

    def drain() -> None:
        now = time.monotonic()
        for e in events:
            if e[0] == E_MSG:
                delivered.setdefault(e[1], []).append(e[2])
            elif e[0] == E_ACK:
                acks[e[1]] = (now - sent[e[1]], e[2], e[3])
            elif e[0] == E_REPLAY:
                answers[e[1]] = (now, e)
        events.clear()

    while True:
        cmd = await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # the loop reads the broker meanwhile
        drain()
        if cmd[0] == "stop":
            break
        if cmd[0] == "publish":
            t0 = time.monotonic()
            for ch, data in cmd[1]:
                req += 1
                sent[req] = time.monotonic()
                bridge.commands.append(("publish", ch, data, time.time(), req))
                if req % 256 == 0:
                    backend.commands_ready()
                    await asyncio.sleep(0)
                    drain()
            backend.commands_ready()
            await until(lambda: (drain() or True) and len(acks) == len(sent))
            lat = sorted(a[0] for a in acks.values())
            errors = sum(1 for a in acks.values() if a[2])
            conn.send({"published": len(acks), "errors": errors, "publish_s": time.monotonic() - t0,
                       "ack_p50_ms": 1000 * lat[len(lat) // 2], "ack_p99_ms": 1000 * lat[int(len(lat) * 0.99)]})
        elif cmd[0] == "latency":
            lat = []
            for ch in cmd[1]:
                req += 1
                sent[req] = t0 = time.monotonic()
                bridge.commands.append(("publish", ch, b'{"n":2}', time.time(), req))
                backend.commands_ready()
                await until(lambda r=req: (drain() or True) and r in acks, 30)
                lat.append(acks[req][0])
            lat.sort()
            conn.send({"sequential_publishes": len(lat), "latency_p50_ms": 1000 * lat[len(lat) // 2],
                       "latency_p99_ms": 1000 * lat[int(len(lat) * 0.99)]})
        elif cmd[0] == "count":
            await asyncio.sleep(cmd[1])
            drain()
            conn.send({"delivered": sum(len(v) for v in delivered.values()),
                       "channels_delivered": len(delivered),
                       "in_order": all(v == sorted(v) and len(set(v)) == len(v) for v in delivered.values()),
                       "first": {ch: v[0] for ch, v in list(delivered.items())[:5000] if ch.startswith("@user:")}})
        elif cmd[0] == "replay":
            times = []
            ok = 0
            for ch, since in cmd[1]:
                req += 1
                t0 = time.monotonic()
                bridge.commands.append(("replay", ch, req, since))
                backend.commands_ready()
                await until(lambda r=req: (drain() or True) and r in answers, 30)
                times.append(answers[req][0] - t0)
                ok += len(answers[req][1][4]) == 1
            times.sort()
            conn.send({"replays": len(times), "replays_with_the_message": ok,
                       "replay_p50_ms": 1000 * times[len(times) // 2],
                       "replay_p99_ms": 1000 * times[int(len(times) * 0.99)]})
    main.cancel()


def node_process(conn: Any, url: str, shards: int, channels: list[str]) -> None:
    try:
        asyncio.run(_node(conn, url, shards, channels))
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        conn.send({"error": repr(exc)})


# -- the broker ------------------------------------------------------------------------------------------

class Broker:
    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.http = free_port()
        self.dir = workdir
        if kind == "nats":
            cmd = [shutil.which("nats-server") or "nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                   "-sd", workdir, "-m", str(self.http)]
        else:
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
                   "--appendonly", "no", "--daemonize", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    def figures(self) -> dict:
        out: dict[str, Any] = {"broker_rss_bytes": rss_of(self.proc.pid)}
        if self.kind == "nats":
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/jsz", timeout=30) as r:
                jsz = json.load(r)
            out.update(streams=jsz.get("streams"), messages=jsz.get("messages"), store_bytes=jsz.get("bytes"),
                       js_memory_bytes=jsz.get("memory"), js_storage_bytes=jsz.get("storage"))
            out["store_dir_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.dir)
                                         for f in fs)
        else:
            import redis

            r = redis.Redis(port=self.port)
            info = r.info("memory")
            out.update(keys=r.dbsize(), used_memory_bytes=info["used_memory"],
                       used_memory_rss_bytes=info["used_memory_rss"])
            r.close()
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


# -- one measurement -------------------------------------------------------------------------------------

def measure(layout: str, users: int, shards: int, shared_channels: int = SHARED) -> dict:
    kind = "redis" if layout == "redis" else "nats"
    with tempfile.TemporaryDirectory(prefix="mws-chscale-") as workdir:
        broker = Broker(kind, workdir)
        try:
            empty = broker.figures()
            shared = [f"room:{j}" for j in range(shared_channels)]
            user = [f"@user:{i}" for i in range(users)]
            ctx = mp.get_context("fork")
            pipes, procs = [], []
            for k in range(2):
                here, there = ctx.Pipe()
                p = ctx.Process(target=node_process, args=(there, broker.url, shards if layout != "nats" else 0,
                                                           user[k::2] + shared))
                p.start()
                pipes.append(here)
                procs.append(p)
            ready = [c.recv() for c in pipes]
            for r in ready:
                if "error" in r:
                    raise RuntimeError(r["error"])
            subscribed = broker.figures()
            a, b = pipes
            messages = [(ch, b'{"n":1}') for ch in user] + [(ch, b'{"n":%d}' % m) for m in range(SHARED_MESSAGES)
                                                          for ch in shared]
            a.send(("publish", messages))
            pub = a.recv()
            counts = []
            for c in pipes:
                c.send(("count", 2.0))
            counts = [c.recv() for c in pipes]
            firsts = counts[1]["first"]
            sample = list(firsts.items())[:1000]
            b.send(("replay", [(ch, seq - 1) for ch, seq in sample]))
            replay = b.recv()
            after = broker.figures()
            a.send(("latency", [user[(i * 7919) % users] for i in range(LATENCY)]))  # on channels that have a head
            latency = a.recv()
            idle = None
            if IDLE[0]:  # every channel idle past its window, subscribers still there
                time.sleep(REPLAY_SECONDS[0] + IDLE[0])
                idle = broker.figures()
            for c in pipes:
                c.send(("stop",))
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
            per_node = shared_channels * SHARED_MESSAGES
            expected = [users // 2 + users % 2 + per_node, users // 2 + per_node]
            return {"layout": layout, "users": users, "shared": shared_channels,
                    "shards": shards if layout != "nats" else 0,
                    "broker_empty": empty, "broker_subscribed": subscribed, "broker_after_publish": after,
                    "broker_idle": idle, "replay_seconds": REPLAY_SECONDS[0],
                    "subscribe_s": [r["subscribe_s"] for r in ready], **pub,
                    "delivered": [c["delivered"] for c in counts], "delivered_expected": expected,
                    "delivered_in_order": all(c["in_order"] for c in counts), **replay, **latency}
        finally:
            broker.stop()


def extrapolate(points: list[dict], key: str, target: int = 1_000_000) -> float | None:
    if len(points) < 2:
        return None
    (x1, y1), (x2, y2) = ((p["users"], p[key]) for p in points[:2])
    slope = (y2 - y1) / (x2 - x1)
    return y1 + slope * (target - x1)


# What the summary takes the median of over --runs: broker figures after the publishes and the client side's.
MEDIANS = ("rss", "count", "mem", "subscribe_s", "rate", "latency_p50_ms", "latency_p99_ms", "replay_p50_ms",
           "replay_p99_ms")


def point(r: dict) -> dict:
    """The figures of one run that the summary compares across sizes."""
    after = r["broker_after_publish"]
    return {"users": r["users"], "rss": after["broker_rss_bytes"],
            "count": after.get("streams", after.get("keys")) or 0,
            "mem": after.get("used_memory_bytes", after.get("store_dir_bytes", 0)),
            "subscribe_s": max(r["subscribe_s"]), "rate": r["published"] / r["publish_s"] if r["publish_s"] else 0,
            **{k: r[k] for k in MEDIANS[5:]}}


def median_point(runs: list[dict]) -> dict:
    """Per figure, the median over the runs of one (layout, size), and the range it came from."""
    out: dict[str, Any] = {"users": runs[0]["users"], "runs": len(runs)}
    for k in MEDIANS:
        values = sorted(r[k] for r in runs)
        out[k] = statistics.median(values)
        out[k + "_range"] = [values[0], values[-1]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", default="10000,100000")
    ap.add_argument("--layouts", default="nats-shards,redis,nats")
    ap.add_argument("--old-at", type=int, default=10000, help="the per-channel-stream layout only at this size")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--shared", type=int, default=SHARED, help="shared channels held by both nodes")
    ap.add_argument("--runs", type=int, default=1, help="each (layout, size) this many times; the summary: medians")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--replay-seconds", type=float, default=DEFAULT_REPLAY, help="the nodes' replay window")
    ap.add_argument("--idle", type=float, default=0.0,
                    help="then wait the window + this many seconds and measure the broker again (0: not)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.users.split(",")]
    layouts = args.layouts.split(",")
    REPLAY_SECONDS[0], IDLE[0] = args.replay_seconds, args.idle
    results = []
    for run in range(1, args.runs + 1):  # runs outermost: a slow minute of the machine spreads over layouts
        for layout in layouts:
            for users in sizes:
                if layout == "nats" and users != args.old_at:
                    continue
                t0 = time.monotonic()
                r = measure(layout, users, args.shards, args.shared)
                r["wall_s"] = time.monotonic() - t0
                r["run"] = run
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if not isinstance(v, dict)}), flush=True)
                print("  broker after publish:", json.dumps(r["broker_after_publish"]), flush=True)
                print("  broker idle:", json.dumps(r["broker_idle"]), flush=True)
    summary = {}
    for layout in layouts:
        pts = [median_point([point(r) for r in results if r["layout"] == layout and r["users"] == users])
               for users in sizes if any(r["layout"] == layout and r["users"] == users for r in results)]
        summary[layout] = {"points": pts, "at_1000000": {k: extrapolate(pts, k) for k in ("rss", "count", "mem",
                                                                                           "subscribe_s")}}
    print(json.dumps(summary, indent=1))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": os.uname().nodename, "cpus": os.cpu_count(), "command": " ".join(sys.argv),
                       "runs": args.runs, "results": results, "extrapolation": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
