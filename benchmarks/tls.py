"""The figures of issue 11 (wss://) in one run: memory per idle connection and echo over TLS, with the peers.

    python -m benchmarks.tls                       # = just bench-tls: ~20 minutes on 2 cores
    python -m benchmarks.tls --deflate-flags ''            # without millionws-deflate
    python -m benchmarks.tls --summarize-only      # recompute the summary from the JSON files already there

1. ``benchmarks.memory --tls`` at ``--connections`` (10 000), median of ``--memory-runs`` (3), in one run (runs
   interleave servers): millionws over ws://, millionws over ws:// with permessage-deflate negotiated
   (``--deflate-flags``, default ``--compression deflate``; the load generator then offers it with
   ``--deflate`` and the run fails if the server declines), millionws over wss://, picows and websockets
   over wss://.
2. ``benchmarks.throughput --tls --mode echo``, 100 connections x 64 B for 5 s, 1 and then 8 messages in flight,
   median of ``--echo-runs`` (5): millionws over wss:// and picows over wss://.
3. A summary: the medians, each peer's figure over millionws's (memory: how many times more a peer needs;
   echo: millionws's messages/s over picows's) and the issue's memory target (PSS per idle wss connection
   at most 20 KB), into ``<prefix>_summary.json`` and on stderr.

Servers are pinned to CPU 0 and the load generator to CPU 1, as in the other benchmarks. Results go to
``<prefix>_memory.json``, ``<prefix>_echo1.json``, ``<prefix>_echo8.json`` (``--prefix``, default
``benchmarks/results/issue11_tls``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/tls.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import REPO_ROOT

TARGET_BYTES = 20 * 1024  # issue 11: at most 20 KB per idle wss connection
TLS_FLAGS = "--tls-cert {cert} --tls-key {key}"


def memory_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    mw = args.millionws
    cmd = [
        sys.executable, "-m", "benchmarks.memory", "--connections", str(args.connections),
        "--runs", str(args.memory_runs), "--pin", "0", "--loadgen-cpus", "1", "--tls", "--port", str(args.port),
        "--server", f"millionws={mw}", "--server", f"millionws-wss={mw} {TLS_FLAGS}",
    ]  # fmt: skip
    if args.deflate_flags:
        cmd += ["--server", f"millionws-deflate={mw} {args.deflate_flags}"]
        cmd += ["--server-args", "millionws-deflate=--deflate"]
    return [*cmd, "--peer", "picows", "--peer", "websockets", "--json-out", str(out)]


def echo_cmd(args: argparse.Namespace, inflight: int, out: Path) -> list[str]:
    load = f"--connections 100 --inflight {inflight} --size 64 --duration {args.echo_duration:g}"
    return [
        sys.executable, "-m", "benchmarks.throughput", "--mode", "echo", "--runs", str(args.echo_runs),
        "--pin", "0", "--loadgen-cpus", "1", "--tls", "--port", str(args.port + 10),
        "--server", f"millionws-wss={args.millionws} {TLS_FLAGS}", "--peer", "picows",
        "--loadgen-args", load, "--json-out", str(out),
    ]  # fmt: skip


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summarize(files: dict[str, Path]) -> dict[str, Any]:
    """Medians and same-run ratios from the JSON files of one bench-tls run (those that exist)."""
    out: dict[str, Any] = {"target_bytes_per_wss_conn": TARGET_BYTES}
    if files["memory"].exists():
        mem = json.loads(files["memory"].read_text())
        rows = {}
        for name, s in mem["summary"].items():
            m = s["median_bytes_per_conn"]
            rows[name] = {
                "scheme": s.get("scheme"),
                "tls": (s.get("tls") or {}).get("version"),
                "runs": s["runs"],
                "pss": m["pss"],
                "pss_anon": m["pss_anon"],
                "rss": m["rss"],
                "slab_sockets_pair": m["slab_sockets"],
                "loadgen_pss_per_conn": s["loadgen_pss_per_conn"],
                "deflate_negotiated": s.get("deflate_negotiated"),
            }
        base = rows.get("millionws-wss", {})
        for row in rows.values():
            # > 1: the server needs that many times millionws-wss's bytes per connection
            row["pss_over_millionws_wss"] = ratio(row["pss"], base.get("pss"))
            row["pss_anon_over_millionws_wss"] = ratio(row["pss_anon"], base.get("pss_anon"))
        plain = rows.get("millionws", {})
        out["memory"] = {
            "connections": mem["connections"],
            "machine_loadavg": mem["machine"]["loadavg"],
            "servers": rows,
            "wss_cost_over_ws": {  # what TLS adds per idle connection in millionws
                k: round(base[k] - plain[k], 1) if base.get(k) is not None and plain.get(k) is not None else None
                for k in ("pss", "pss_anon")
            },
            "millionws_wss_meets_target": base.get("pss") is not None and base["pss"] <= TARGET_BYTES,
            "deflate_cost_over_ws": {  # issue 11: within 100 B of plain, since no zlib object stays per connection
                k: round(rows["millionws-deflate"][k] - plain[k], 1)
                if "millionws-deflate" in rows and plain.get(k) is not None else None
                for k in ("pss", "pss_anon")
            },
        }
    for key in ("echo1", "echo8"):
        if not files[key].exists():
            continue
        echo = json.loads(files[key].read_text())
        rows = {
            name: {"runs": s["runs"], "all_ok": s["all_ok"], "tls": (s.get("tls") or {}).get("version"), **s["median"]}
            for name, s in echo["summary"].items()
        }
        mine, peer = rows.get("millionws-wss", {}), rows.get("picows", {})
        out[key] = {
            "loadgen_args": echo["loadgen_args"],
            "machine_loadavg": echo["machine"]["loadavg"],
            "servers": rows,
            # > 1: millionws echoes more messages per second than picows, both over TLS, same run
            "millionws_over_picows_msgs": ratio(mine.get("messages_per_s"), peer.get("messages_per_s")),
            "millionws_over_picows_per_server_cpu_s": ratio(
                mine.get("messages_per_server_cpu_s"), peer.get("messages_per_server_cpu_s")
            ),
        }
    return out


def print_summary(summary: dict[str, Any]) -> None:
    def log(line: str) -> None:
        print(f"[tls] {line}", file=sys.stderr, flush=True)

    if "memory" in summary:
        m = summary["memory"]
        log(f"memory per idle connection, N = {m['connections']}, medians (B):")
        for name, r in m["servers"].items():
            log(
                f"  {name:>18} {r['scheme']:>3} {r['tls'] or '':>7}  PSS {r['pss']:>8}  anon {r['pss_anon']:>8}  "
                f"RSS {r['rss']:>8}  x{r['pss_over_millionws_wss']} of millionws-wss  "
                f"loadgen {r['loadgen_pss_per_conn']}"
            )
        log(f"  TLS adds {m['wss_cost_over_ws']} per connection; <= 20 KB: {m['millionws_wss_meets_target']}")
    for key in ("echo1", "echo8"):
        if key in summary:
            e = summary[key]
            for name, r in e["servers"].items():
                log(
                    f"{key} {name:>14}: {r['messages_per_s']} msg/s, "
                    f"RTT P50 {r['rtt_p50_ms']} P99 {r['rtt_p99_ms']} ms, "
                    f"server CPU {r['server_cpu_pct']} %, loadgen CPU {r['loadgen_cpu_pct']} %"
                )
            log(f"{key} millionws-wss / picows: {e['millionws_over_picows_msgs']} (msg/s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--millionws",
        default=f"{sys.executable} -m millionws serve --host {{host}} --port {{port}} --workers 1 --ping-interval 0",
        help="millionws command ({host}, {port}); TLS flags are appended for the wss variants",
    )
    parser.add_argument(
        "--deflate-flags",
        default="--compression deflate",
        help="server flags that enable permessage-deflate in millionws: millionws-deflate (ws, load generator "
        "--deflate); empty: left out",
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--echo-runs", type=int, default=5)
    parser.add_argument("--echo-duration", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=18200, help="first port (memory); echo uses port + 10 on")
    parser.add_argument("--prefix", default="benchmarks/results/issue11_tls", help="result files: PREFIX_*.json")
    parser.add_argument("--only", default="memory,echo1,echo8", help="which steps to run (comma-separated)")
    parser.add_argument("--summarize-only", action="store_true", help="run nothing, summarize existing files")
    args = parser.parse_args(argv)
    prefix = Path(args.prefix)
    files = {key: prefix.with_name(f"{prefix.name}_{key}.json") for key in ("memory", "echo1", "echo8")}
    steps = {
        "memory": memory_cmd(args, files["memory"]),
        "echo1": echo_cmd(args, 1, files["echo1"]),
        "echo8": echo_cmd(args, 8, files["echo8"]),
    }
    failed = []
    if not args.summarize_only:
        for key in (k.strip() for k in args.only.split(",")):
            if key not in steps:
                parser.error(f"--only: unknown step {key!r}")
            print(f"[tls] {key}: {shlex.join(steps[key])}", file=sys.stderr, flush=True)
            # Each driver is bounded by its own timeouts; this one only guards against a wedged machine.
            done = subprocess.run(steps[key], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, timeout=3600, check=False)
            if done.returncode != 0:
                failed.append(key)
    summary = summarize(files)
    summary["commands"] = {key: shlex.join(cmd) for key, cmd in steps.items()}
    summary["failed_steps"] = failed
    out = prefix.with_name(f"{prefix.name}_summary.json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
