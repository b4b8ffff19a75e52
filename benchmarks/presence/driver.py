"""Presence at 10 000 members of one channel: join cost, memory per member, coalescing, list time.

    python -m benchmarks.presence --members 10000 --workers 1,2 --runs 3 \\
        --json-out benchmarks/results/presence.json --md-out benchmarks/results/presence.md

Per run, per worker count W and per mode, interleaved, the order of the modes turning from run to run (drift
on a shared machine hits every mode alike):

* ``off``: no ``--channel-options`` rule: the same subscribes without presence (the baseline);
* ``on``: ``chat:* presence=on join-leave=on``, the subscribers do not ask for events: membership, the
  per-interval batches between workers, nothing fanned out;
* ``askers``: the same rule, every subscriber asks (``"presence": true``): each also gets the presence
  frames, one per interval at most, the count alone during the storm (over ``--presence-max-events``).

1. Start ``millionws serve --workers W --trust-user-param --presence-interval I`` (W = 1 under ``taskset -c
   0`` with the member processes on CPU 1; W = 2 and its members unpinned).
2. Open N idle ``/pubsub?user=u<i>`` WebSockets from ``--procs`` member processes (source addresses
   127.0.0.2-5, :mod:`benchmarks.presence.members`); wait ``--settle`` s; the server's CPU time (user +
   system over the supervisor and workers, psutil = /proc/<pid>/stat) and PSS (GUIDE §4: psutil and
   smaps_rollup over the process tree).
3. The join storm: every connection subscribes to ``chat:bench`` at ``--join-rate`` per second in total;
   wait for every ``subscribed``, then 3 intervals (so every flush and batch of the storm is done), then
   ``--settle`` s; CPU and PSS again.  Join cost = CPU delta / N; memory per member = PSS delta / N; the
   difference between a mode and ``off`` in the same run is what presence costs.
4. ``on`` and ``askers``: a ``presence_list`` of ``limit`` N on a WebSocket of its own (3 times, the median)
   and one ``GET /channels/chat:bench/presence?limit=N``: milliseconds from request to the whole answer, its
   ``count`` checked.
5. ``askers``: presence frames per connection received from the start of the storm to 2 intervals after
   its end, and the most any connection got within one interval (sliding window): the coalescing.

The summary is the median over runs of each figure (and of each per-run difference with ``off``).  Also
measured, in process (:mod:`benchmarks.presence.micro`): 1 000 subscribes at 1 000 and 100 000 members.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchmarks import servers
from benchmarks.memory import tree_memory
from benchmarks.presence import members as member_proc
from benchmarks.presence import micro

CHANNEL = "chat:bench"
RULE = "chat:* presence=on join-leave=on"
MODES = ("off", "on", "askers")


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (from /proc/<pid>/stat, via psutil)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(pipes: list, kind: str, timeout: float) -> list[dict]:
    got: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(pipes):
        for i, pipe in enumerate(pipes):
            if i not in got and pipe.poll(0.01):
                msg = pipe.recv()
                if msg[0] != kind:
                    raise RuntimeError(f"member process {i}: {msg!r} while waiting for {kind}")
                got[i] = msg[1]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pipes) - len(got)} member processes did not say {kind} in {timeout} s")
    return [got[i] for i in range(len(pipes))]


def list_times(port: int, n: int, repeat: int = 3) -> dict[str, Any]:
    """Milliseconds for a presence_list of limit n on a WebSocket (median of ``repeat``), and for the GET."""
    from websockets.sync.client import connect

    ws_ms = []
    with connect(f"ws://127.0.0.1:{port}/pubsub", compression=None, max_size=None) as ws:
        for i in range(repeat):
            t0 = time.perf_counter()
            ws.send(json.dumps({"op": "presence_list", "channel": CHANNEL, "limit": n, "id": i}))
            doc = json.loads(ws.recv(timeout=30))
            ws_ms.append((time.perf_counter() - t0) * 1000)
            if doc.get("count") != n or len(doc.get("members", ())) != n:
                raise RuntimeError(f"presence_list: count {doc.get('count')}, {len(doc.get('members', ()))} members")
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/channels/{CHANNEL}/presence?limit={n}", timeout=30) as r:
        body = json.loads(r.read())
    http_ms = (time.perf_counter() - t0) * 1000
    if body["count"] != n or body["partial"]:
        raise RuntimeError(f"GET presence: count {body['count']}, partial {body['partial']}")
    return {"ws_ms": statistics.median(ws_ms), "ws_ms_runs": ws_ms, "http_ms": http_ms,
            "bytes": len(json.dumps(doc))}


def run_case(args: argparse.Namespace, workers: int, mode: str, workdir: Path) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-m", "millionws", "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers",
            str(workers), "--ping-interval", "0", "--trust-user-param", "--presence-interval", str(args.interval),
            "--log-level", "warning"]
    if mode != "off":
        argv += ["--channel-options", RULE]
    pin = "0" if workers == 1 and args.pin else ""
    proc, ran = servers.start_server(argv, "127.0.0.1", port, workdir / f"server-{workers}-{mode}.log", pin)
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    per = math.ceil(args.members / args.procs)
    try:
        for k in range(args.procs):
            first, n = k * per, min(per, args.members - k * per)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=member_proc.run, daemon=True,
                            args=(child, "127.0.0.1", port, first, n, args.sources, args.open_rate / args.procs,
                                  200, [1] if pin else None))
            p.start()
            pipes.append(parent)
            procs.append(p)
        opened = wait_all(pipes, "open", 120)
        open_n = sum(o["open"] for o in opened)
        if open_n != args.members:
            raise RuntimeError(f"{open_n} of {args.members} opened: {[o['failures'] for o in opened]}")
        idle0, t_idle0 = tree_cpu(proc.pid), time.monotonic()
        time.sleep(args.settle)
        mem0, cpu0 = tree_memory(proc.pid), tree_cpu(proc.pid)
        t_join = time.monotonic()
        idle_rate = (cpu0 - idle0) / (t_join - t_idle0)  # what the idle server spends per second (timers)
        for pipe in pipes:
            pipe.send(("join", args.join_rate / args.procs, mode == "askers", CHANNEL))
        joined = wait_all(pipes, "joined", 120)
        t_joined = time.monotonic()
        members_n = sum(j["members"] for j in joined)
        if members_n != args.members:
            raise RuntimeError(f"{members_n} of {args.members} joined: {[j['failures'] for j in joined]}")
        time.sleep(3 * args.interval)
        cpu1, t_cpu1 = tree_cpu(proc.pid), time.monotonic()
        join_cpu = cpu1 - cpu0 - idle_rate * (t_cpu1 - t_join)
        time.sleep(args.settle)
        mem1 = tree_memory(proc.pid)
        result: dict[str, Any] = {
            "workers": workers, "mode": mode, "members": members_n, "server": ran,
            "storm_s": t_joined - t_join,
            "cpu_s": cpu1 - cpu0, "idle_cpu_per_s": idle_rate, "join_cpu_s": join_cpu,
            "cpu_us_per_join": join_cpu / members_n * 1e6,
            "pss_per_member": (mem1["pss"] - mem0["pss"]) / members_n,
            "pss_anon_per_member": (mem1["pss_anon"] - mem0["pss_anon"]) / members_n,
            "rss_per_member": (mem1["rss"] - mem0["rss"]) / members_n,
            "memory_before": mem0, "memory_after": mem1,
        }
        if mode != "off":
            result["list"] = list_times(port, members_n)
        for pipe in pipes:
            pipe.send(("report", args.interval, t_join, t_joined + 2 * args.interval))
        reports = wait_all(pipes, "report", 60)
        per_conn: dict[int, int] = {}
        counts: dict[int, int] = {}
        for r in reports:
            for frames, n in r["frames_per_connection"].items():
                per_conn[frames] = per_conn.get(frames, 0) + n
            for count, n in r["last_counts"].items():
                counts[count] = counts.get(count, 0) + n
        window_s = t_joined + 2 * args.interval - t_join
        result["frames"] = {
            "total": sum(r["frames"] for r in reports),
            "per_connection": dict(sorted(per_conn.items())),
            "max_in_one_interval": max(r["max_in_interval"] for r in reports),
            "gap_min_s": min((r["gaps"]["min"] for r in reports if r["gaps"]["n"]), default=None),
            "gap_p1_s": min((r["gaps"]["p1"] for r in reports if r["gaps"]["n"]), default=None),
            "gap_p50_s": statistics.median(r["gaps"]["p50"] for r in reports) if all(
                r["gaps"]["n"] for r in reports) else None,
            "window_s": window_s, "intervals": window_s / args.interval,
            "last_counts": counts,
        }
        if mode == "askers":
            result["frames"]["per_connection_per_interval"] = (result["frames"]["total"] / members_n
                                                               / (window_s / args.interval))
        return result
    finally:
        for pipe in pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        servers.stop_process(proc)


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def summarize(runs: list[dict[str, Any]], workers: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in workers:
        rows = {mode: [r for r in runs if r["workers"] == w and r["mode"] == mode] for mode in MODES}
        entry: dict[str, Any] = {}
        for mode in MODES:
            if not rows[mode]:
                continue
            entry[mode] = {key: median_of(rows[mode], key) for key in
                           ("cpu_us_per_join", "pss_per_member", "pss_anon_per_member", "rss_per_member", "storm_s")}
            if mode != "off":
                entry[mode]["list_ws_ms"] = statistics.median(r["list"]["ws_ms"] for r in rows[mode])
                entry[mode]["list_http_ms"] = statistics.median(r["list"]["http_ms"] for r in rows[mode])
            if mode == "askers":
                entry[mode]["frames_per_connection_per_interval"] = statistics.median(
                    r["frames"]["per_connection_per_interval"] for r in rows[mode])
                entry[mode]["max_frames_in_one_interval"] = max(r["frames"]["max_in_one_interval"] for r in rows[mode])
                entry[mode]["frame_gap_p1_s"] = statistics.median(r["frames"]["gap_p1_s"] for r in rows[mode])
                entry[mode]["frame_gap_p50_s"] = statistics.median(r["frames"]["gap_p50_s"] for r in rows[mode])
            # presence's own cost: this mode minus off, within each run (same index = same run)
            if mode != "off" and len(rows["off"]) == len(rows[mode]):
                for key in ("cpu_us_per_join", "pss_per_member", "pss_anon_per_member"):
                    entry[mode][key + "_minus_off"] = statistics.median(
                        on[key] - off[key] for on, off in zip(rows[mode], rows["off"], strict=True))
        out[str(w)] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    lines = [
        "# Presence at 10 000 members of one channel",
        "",
        f"{m['cpus']} cores ({m['cpu_model']}), Linux {m['kernel']}, Python {m['python']}, commit "
        f"{m['git_commit'][:10]}; load average at the start {m['loadavg']}. Shared machine.",
        f"Command: `{cfg['command']}`. {cfg['members']} members, joins at {cfg['join_rate']:g}/s in total, "
        f"`--presence-interval {cfg['interval']:g}`, `--presence-max-events` 100 (default); medians of "
        f"{cfg['runs']} runs; W = 1 pinned to CPU 0 (members on CPU 1), W = 2 unpinned.",
        "",
        "| W | mode | server CPU per join | presence's part | PSS (anon) per member | presence's part | "
        "presence_list of all (WS) | GET presence (HTTP) | frames per subscriber per interval | gap between "
        "two frames to one subscriber: 1st pct / median |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w, entry in result["summary"].items():
        for mode, s in entry.items():
            def cell(key: str, fmt: str, unit: str = "", s: dict = s) -> str:
                return format(s[key], fmt) + unit if key in s else ""
            lines.append(
                f"| {w} | {mode} | {s['cpu_us_per_join']:.1f} us | {cell('cpu_us_per_join_minus_off', '+.1f', ' us')} "
                f"| {s['pss_anon_per_member']:.0f} B | {cell('pss_anon_per_member_minus_off', '+.0f', ' B')} "
                f"| {cell('list_ws_ms', '.1f', ' ms')} | {cell('list_http_ms', '.1f', ' ms')} "
                f"| {cell('frames_per_connection_per_interval', '.2f')} "
                f"| {cell('frame_gap_p1_s', '.2f', ' s')}{' / ' if 'frame_gap_p50_s' in s else ''}"
                f"{cell('frame_gap_p50_s', '.2f', ' s')} |")
    mic = result["micro"]
    lines += [
        "",
        "In process (`benchmarks/presence/micro.py`): microseconds per `Hub.subscribe` of 1 000 new members "
        "(and per unsubscribe), median of " + str(mic["rows"][0]["repeat"]) + " runs:",
        "",
        "| members already in | presence off: join | on: join | presence's part | off: leave | on: leave |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by = {(r["members"], r["presence"]): r for r in mic["rows"]}
    for members in sorted({r["members"] for r in mic["rows"]}):
        off, on = by[(members, False)], by[(members, True)]
        lines.append(f"| {members:,} | {off['join_us']:.2f} | {on['join_us']:.2f} | "
                     f"{on['join_us'] - off['join_us']:+.2f} | {off['leave_us']:.2f} | {on['leave_us']:.2f} |"
                     .replace(",", " "))
    rec = result.get("records")
    if rec:
        lines += ["", f"One batch of {rec['joins']} joins, per receiving worker (`micro.record_costs`): the binary "
                  f"record {rec['bytes_binary']} B, built in {rec['build_binary_us']:.0f} us, checked in "
                  f"{rec['check_binary_us']:.0f} us; as a JSON notice {rec['bytes_json']} B, "
                  f"{rec['build_json_us']:.0f} us, parsed and checked in {rec['check_json_us']:.0f} us."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.presence", description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="--presence-interval of the server")
    parser.add_argument("--join-rate", type=float, default=2500.0, help="subscribes per second, all processes")
    parser.add_argument("--open-rate", type=float, default=4000.0, help="connections opened per second")
    parser.add_argument("--procs", type=int, default=2, help="member processes (each < 20 000 sockets)")
    parser.add_argument("--sources", default="127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="W = 1: do not pin to CPU 0")
    parser.add_argument("--micro-sizes", default="1000,100000")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--md-out", type=Path)
    args = parser.parse_args(argv)
    args.sources = [s for s in args.sources.split(",") if s]
    workers = [int(w) for w in args.workers.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if args.members / args.procs > 19_000:
        parser.error("more than 19 000 sockets per member process: raise --procs")
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="millionws-presence-"))
    servers.use_snapshot()
    result: dict[str, Any] = {"machine": servers.machine(), "config": {
        "command": "python -m benchmarks.presence " + " ".join(argv if argv is not None else sys.argv[1:]),
        "members": args.members, "workers": workers, "modes": modes, "runs": args.runs, "interval": args.interval,
        "join_rate": args.join_rate, "procs": args.procs, "sources": args.sources}, "runs": []}
    try:
        for run in range(args.runs):
            for w in workers:
                # the order of the modes turns with the run: a position in the sequence (the previous case's
                # sockets closing, a warmer machine) must not favour one mode in every run
                for mode in modes[run % len(modes):] + modes[:run % len(modes)]:
                    row = run_case(args, w, mode, workdir)
                    row["run"] = run
                    result["runs"].append(row)
                    print(f"run {run} W={w} {mode}: {row['cpu_us_per_join']:.1f} us/join, "
                          f"{row['pss_anon_per_member']:.0f} B/member (anon), list "
                          f"{row.get('list', {}).get('ws_ms', 0):.1f} ms, frames {row['frames']['total']}, "
                          f"max/interval {row['frames']['max_in_one_interval']}", flush=True)
    finally:
        servers.remove_snapshot()
    result["summary"] = summarize(result["runs"], workers)
    result["micro"] = micro.measure(tuple(int(s) for s in args.micro_sizes.split(",")))
    result["records"] = micro.record_costs()
    text = json.dumps(result, indent=1, default=str)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    if args.md_out:
        args.md_out.write_text(markdown(result))
    print(markdown(result))
    return 0
