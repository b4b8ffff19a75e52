"""The benchmark scenarios of issue 3, driven end to end: JSON results, PNG plots, a side-by-side table.

    python -m benchmarks.run                 # the complete set (just bench-full), ~15 minutes
    python -m benchmarks.run --quick         # the reduced set (just bench), < 3 minutes
    python -m benchmarks.run --only echo     # one scenario (memory, echo, connect, profile, table)

Scenarios (each measured by the existing drivers, so figures compare with theirs):

* ``memory`` (scenario 1): ``benchmarks.memory`` at N = 10 000, 50 000, 100 000 idle connections for
  millionws, with ``--workers ceil(N / 18 000)`` because one process holds at most 20 000 files here
  (so at most 18 000 connections per worker, and each worker's figure stays comparable); the peers at
  N = 10 000 only (one process each, they cannot pass the limit). PSS/RSS over the server's process
  tree and the socket slab caches, before and after; bytes per connection vs N in ``memory.png``.
* ``echo`` (scenario 3): ``benchmarks.throughput --mode echo`` over connections {100, 10 000} x
  size {64 B, 4 KiB} x in flight {1, 8}; millionws with one worker pinned to core 0, the load
  generator pinned to core 1; the peers (single process, pinned the same way) in every case with 100
  connections and in 10 000 x 8 x 64 B. CPU of both sides is sampled over the measured window.
* ``connect`` (scenario 4): ``benchmarks.throughput --mode connect-rate``: handshakes per second of one
  worker, same pinning, same peers.
* ``profile``: ``benchmarks.profile`` (py-spy) of one worker under connect-rate, echo 64 B and echo 4 KiB:
  where the time goes, for the notes on targets that are missed (full set only).
* ``table`` (scenario 5): ``side_by_side.{json,md}`` from whatever results exist in the directory,
  with ratios of millionws against each peer.

Servers run a snapshot of millionws/ copied when the driver starts (the checkout may be edited by
others meanwhile); its sha256 is in each result's ``machine.millionws_sha256``.

Runs interleave servers (drift on a shared machine hits all alike); the summary is the median of
``--runs``. Every result file carries the machine (CPU model, cores, RAM, kernel, Python, packages),
the git commit and the files that differed from it, the date, the command of this driver and the
command of every driver and server it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import memory, servers, throughput
from benchmarks.peers import DEFAULT_PEERS
from benchmarks.servers import REPO_ROOT, machine

RESULTS = REPO_ROOT / "benchmarks" / "results"
PEER_NAMES = DEFAULT_PEERS  # what --peers starts: the tables have a column for each
SERVER = "millionws"
PER_WORKER = 18_000  # connections per millionws worker in the memory scenario (open-files limit 20 000)

# (connections, in flight, size): the echo matrix of the issue
ECHO_CASES = [(c, k, b) for c in (100, 10_000) for b in (64, 4096) for k in (1, 8)]
ECHO_PEER_CASES = {(100, 1, 64), (100, 8, 64), (100, 1, 4096), (100, 8, 4096), (10_000, 8, 64)}


def case_name(case: tuple[int, int, int]) -> str:
    c, k, b = case
    return f"{c}x{k}x{b}B"


def millionws_cmd(workers: int) -> str:
    # Keepalive pings off, like the peers' (a ping would be traffic on an "idle" connection).
    return shlex.join(
        [
            sys.executable,
            "-m",
            "millionws",
            "serve",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--workers",
            str(workers),
            "--ping-interval",
            "0",
        ]
    )


def log(msg: str) -> None:
    print(f"[run] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def call_driver(module: Any, argv: list[str]) -> tuple[int, dict[str, Any], str]:
    """Run a driver's main() in-process with --json-out; returns (exit status, report, exact command)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    argv = [*argv, "--json-out", str(out)]
    command = shlex.join([sys.executable, "-m", module.__name__, *argv])
    log(f"$ {command}")
    with contextlib.redirect_stdout(io.StringIO()):  # the drivers print the whole report; the file has it
        status = module.main(argv)
    try:
        report = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        report = {}
    out.unlink(missing_ok=True)
    return status, report, command


def common_args(args: argparse.Namespace) -> list[str]:
    return ["--pin", args.pin, "--loadgen-cpus", args.loadgen_cpus, "--port", str(args.port)]


def envelope(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "command": shlex.join([sys.executable, "-m", "benchmarks.run", *args.argv]),
        "quick": args.quick,
        "runs": args.runs,
        "machine": machine(),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    data["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: how busy it was
    data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    log(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


def spread(values: list[float | None]) -> list[float] | None:
    vals = [v for v in values if v is not None]
    return [min(vals), max(vals)] if vals else None


# ---------------------------------------------------------------------------------------------- memory
def scenario_memory(args: argparse.Namespace) -> dict[str, Any]:
    result = envelope("memory", args)
    result["notes"] = [
        f"millionws runs --workers ceil(N / {PER_WORKER}): the open-files hard limit here is 20 000 per "
        "process, so no worker holds more than ~18 000 connections (SO_REUSEPORT spreads them by hash)",
        "peers are single-process and are measured at 10 000 only (they cannot pass the open-files limit)",
        "server pinned to core 0, load generator to core 1; keepalive pings off on every server",
        "slab and slab_sockets are machine-wide and count both ends of each loopback connection",
    ]
    points: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    errors: list[str] = []
    for n in args.memory_n:
        workers = max(1, math.ceil(n / PER_WORKER))
        argv = ["--connections", str(n), "--runs", str(args.runs), *common_args(args), "--rate", str(args.rate)]
        argv += ["--server", f"{SERVER}={millionws_cmd(workers)}"]
        if n in args.peer_memory_n:
            argv.append("--peers")
        status, report, command = call_driver(memory, argv)
        raw[str(n)] = report
        errors += report.get("errors", []) if report else [f"memory N={n}: no report (exit {status})"]
        for name, summary in report.get("summary", {}).items():
            runs = report["runs"][name]
            points.append(
                {
                    "server": name,
                    "connections": n,
                    "workers": workers if name == SERVER else 1,
                    "runs": summary["runs"],
                    "median_bytes_per_conn": summary["median_bytes_per_conn"],
                    "pss_spread": spread([r["per_conn"]["pss"] for r in runs]),
                    "established": summary["established"],
                    "verify_ok": summary["verify_ok"],
                    "loadgen_pss_per_conn": summary["loadgen_pss_per_conn"],
                    "retained_pss_per_conn_after_close": [r["retained_per_conn_after_close"] for r in runs],
                    "server_command": runs[0]["command"] if runs else None,
                    "driver_command": command,
                }
            )
            m = summary["median_bytes_per_conn"]
            log(f"  {name} N={n}: PSS {m['pss']} B/conn RSS {m['rss']} slab_sockets {m['slab_sockets']}")
    result.update(points=points, errors=errors, raw=raw)
    write_json(args.out / "memory.json", result)
    return result


# ---------------------------------------------------------------------------------------------- echo
def scenario_echo(args: argparse.Namespace) -> dict[str, Any]:
    result = envelope("echo", args)
    result["notes"] = [
        "one millionws worker (and each peer, single process) pinned to core 0, the load generator to core 1",
        "messages_per_s counts echoes received inside the window; server_cpu_pct / loadgen_cpu_pct are the "
        "process trees' own CPU over the window, core0/core1_busy_pct the whole core (softirq included: on "
        "loopback much of TCP runs there); messages_per_server_cpu_s = messages_per_s / server CPU share",
        "a side is the bottleneck when its core is ~100 % busy; when neither is, the pair is bound by the "
        "loopback round trip (both cores share the TCP work)",
    ]
    cases: list[dict[str, Any]] = []
    errors: list[str] = []
    for case in args.echo_cases:
        c, k, b = case
        loadgen_args = f"--connections {c} --inflight {k} --size {b} --duration {args.duration}"
        argv = ["--mode", "echo", "--runs", str(args.runs), *common_args(args), "--loadgen-args", loadgen_args]
        argv += ["--server", f"{SERVER}={millionws_cmd(1)}"]
        if case in args.echo_peer_cases:
            argv.append("--peers")
        status, report, command = call_driver(throughput, argv)
        errors += report.get("errors", []) if report else [f"echo {case_name(case)}: no report (exit {status})"]
        servers = {}
        for name, summary in report.get("summary", {}).items():
            runs = report["runs"][name]
            servers[name] = {
                **summary,
                "messages_per_s_spread": spread([r["figures"]["messages_per_s"] for r in runs]),
                "server_command": runs[0]["command"] if runs else None,
                "loadgen_command": runs[0]["loadgen_command"] if runs else None,
                "runs_figures": [r["figures"] for r in runs],
            }
            med = summary["median"]
            log(
                f"  {case_name(case)} {name}: {med['messages_per_s']} msg/s, P50 {med['rtt_p50_ms']} ms, "
                f"P99 {med['rtt_p99_ms']} ms, server CPU {med['server_cpu_pct']} %, "
                f"loadgen CPU {med['loadgen_cpu_pct']} %"
            )
        cases.append(
            {
                "case": case_name(case),
                "connections": c,
                "inflight": k,
                "size": b,
                "duration_s": args.duration,
                "servers": servers,
                "driver_command": command,
            }
        )
    result.update(cases=cases, errors=errors)
    write_json(args.out / "echo.json", result)
    return result


# ---------------------------------------------------------------------------------------------- connect
def scenario_connect(args: argparse.Namespace) -> dict[str, Any]:
    result = envelope("connect", args)
    result["notes"] = [
        "handshakes per second of one worker (millionws --workers 1) or one peer process, pinned to core 0; "
        "the load generator on core 1 opens, handshakes and closes (close handshake, the server closes TCP "
        "first) with --concurrency sockets at a time",
        "each completed handshake is a new TCP connection + HTTP upgrade + close handshake",
    ]
    loadgen_args = f"--concurrency {args.concurrency} --duration {args.duration}"
    argv = ["--mode", "connect-rate", "--runs", str(args.runs), *common_args(args), "--loadgen-args", loadgen_args]
    argv += ["--server", f"{SERVER}={millionws_cmd(1)}", "--peers"]
    status, report, command = call_driver(throughput, argv)
    servers = {}
    for name, summary in report.get("summary", {}).items():
        runs = report["runs"][name]
        servers[name] = {
            **summary,
            "handshakes_per_s_spread": spread([r["figures"]["handshakes_per_s"] for r in runs]),
            "server_command": runs[0]["command"] if runs else None,
            "loadgen_command": runs[0]["loadgen_command"] if runs else None,
            "runs_figures": [r["figures"] for r in runs],
        }
        med = summary["median"]
        log(
            f"  {name}: {med['handshakes_per_s']} handshakes/s, P50 {med['handshake_p50_ms']} ms, "
            f"server CPU {med['server_cpu_pct']} %, loadgen CPU {med['loadgen_cpu_pct']} %"
        )
    result.update(
        concurrency=args.concurrency,
        duration_s=args.duration,
        servers=servers,
        driver_command=command,
        errors=report.get("errors", []) if report else [f"connect: no report (exit {status})"],
    )
    write_json(args.out / "connect.json", result)
    return result


# ---------------------------------------------------------------------------------------------- profile
PROFILES = {
    "profile_connect": ("connect-rate", "--concurrency 64 --duration 14"),
    "profile_echo_64B": ("echo", "--connections 100 --inflight 8 --size 64 --duration 14"),
    "profile_echo_4KiB": ("echo", "--connections 100 --inflight 8 --size 4096 --duration 14"),
}


def scenario_profile(args: argparse.Namespace) -> list[str]:
    """py-spy profiles of one worker: where the time goes where a target is missed (benchmarks.profile)."""
    from benchmarks import profile

    if not profile.find_pyspy():
        log("py-spy is not installed (pip install -e '.[bench]'): no profiles")
        return []
    errors = []
    for name, (mode, loadgen_args) in PROFILES.items():
        out = args.out / f"{name}.json"
        argv = ["--mode", mode, "--loadgen-args", loadgen_args, "--port", str(args.port), "--out", str(out)]
        log(f"$ {shlex.join([sys.executable, '-m', 'benchmarks.profile', *argv])}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                profile.main(argv)
        except Exception as exc:  # a profile is an extra: report it, keep the suite going
            errors.append(f"{name}: {exc!r}")
            continue
        top = json.loads(out.read_text())["self_pct"][:5]
        log(f"  {name}: " + "; ".join(f"{pct} % {frame}" for pct, frame in top))
    return errors


# ---------------------------------------------------------------------------------------------- table
def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}".replace(",", " ")
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text + unit


def side_by_side(out: Path) -> dict[str, Any]:
    """Rows of (figure, better direction, value per server) from memory/echo/connect results, ratios vs peers."""
    rows: list[dict[str, Any]] = []
    mem, echo, conn = _load(out / "memory.json"), _load(out / "echo.json"), _load(out / "connect.json")

    def add(label: str, lower_is_better: bool, values: dict[str, float | None], unit: str = "") -> None:
        ratios = {}
        mine = values.get(SERVER)
        for peer in PEER_NAMES:
            theirs = values.get(peer)
            if mine and theirs and mine > 0 and theirs > 0:
                # always "how many times better millionws is" (> 1 = better)
                ratios[peer] = round(theirs / mine if lower_is_better else mine / theirs, 2)
        rows.append(
            {"figure": label, "unit": unit, "lower_is_better": lower_is_better, "values": values, "ratios": ratios}
        )

    if mem:
        at = {}
        for p in mem["points"]:
            at.setdefault(p["connections"], {})[p["server"]] = p["median_bytes_per_conn"]
        base = at.get(10_000, {})
        add(
            "PSS (anonymous part) per idle connection, N = 10 000",
            True,
            {s: v.get("pss_anon") for s, v in base.items()},
            " B",
        )
        add(
            "PSS per idle connection, N = 10 000 (GUIDE 4; its file-backed part moves with other processes)",
            True,
            {s: v["pss"] for s, v in base.items()},
            " B",
        )
        add("RSS per idle connection, N = 10 000", True, {s: v["rss"] for s, v in base.items()}, " B")
        for n in sorted(at):
            if n != 10_000 and SERVER in at[n]:
                label = f"N = {n:,}".replace(",", " ")
                add(
                    f"PSS (anonymous part) per idle connection, {label}",
                    True,
                    {SERVER: at[n][SERVER].get("pss_anon")},
                    " B",
                )
                add(f"PSS per idle connection, {label}", True, {SERVER: at[n][SERVER]["pss"]}, " B")
        # The kernel's cost does not depend on the server (same TCP socket); it is machine-wide, so at
        # 10 000 other tenants' sockets coming and going swamp it: quote it where it is steady.
        biggest = max(at)
        if SERVER in at[biggest]:
            add(
                "kernel socket slab per connection pair (both ends), N = " + f"{biggest:,}".replace(",", " "),
                True,
                {SERVER: at[biggest][SERVER]["slab_sockets"]},
                " B",
            )
    if echo:
        for case in echo["cases"]:
            servers = case["servers"]
            if len(servers) < 2 and case["case"] != "100x8x64B":
                continue
            add(
                f"echo {case['case']}, messages/s",
                False,
                {s: v["median"]["messages_per_s"] for s, v in servers.items()},
            )
            add(
                f"echo {case['case']}, messages per server CPU-second",
                False,
                {s: v["median"].get("messages_per_server_cpu_s") for s, v in servers.items()},
            )
            if case["case"] == "100x8x64B":
                add(
                    f"echo {case['case']}, RTT P50",
                    True,
                    {s: v["median"]["rtt_p50_ms"] for s, v in servers.items()},
                    " ms",
                )
                add(
                    f"echo {case['case']}, RTT P99",
                    True,
                    {s: v["median"]["rtt_p99_ms"] for s, v in servers.items()},
                    " ms",
                )
    if conn:
        servers = conn["servers"]
        add("handshakes/s, one worker", False, {s: v["median"]["handshakes_per_s"] for s, v in servers.items()})
        add(
            "handshakes per server CPU-second",
            False,
            {s: v["median"].get("handshakes_per_server_cpu_s") for s, v in servers.items()},
        )
    table = {"servers": [SERVER, *PEER_NAMES], "rows": rows}
    lines = [
        "| figure | " + " | ".join([SERVER, *PEER_NAMES]) + " | " + " | ".join(f"vs {p}" for p in PEER_NAMES) + " |",
        "| --- | " + " | ".join(["---:"] * (1 + 2 * len(PEER_NAMES))) + " |",
    ]
    for row in rows:
        vals = [_fmt(row["values"].get(s), row["unit"]) for s in [SERVER, *PEER_NAMES]]
        vals[0] = f"**{vals[0]}**"
        ratios = [f"{row['ratios'][p]:.1f}\u00d7" if p in row["ratios"] else "n/a" for p in PEER_NAMES]
        lines.append(f"| {row['figure']} | " + " | ".join(vals + ratios) + " |")
    lines.append("")
    lines.append(
        "Ratios: how many times better millionws is than the peer (> 1 = better; memory and latency: "
        "peer / millionws, rates: millionws / peer)."
    )
    table["markdown"] = "\n".join(lines)
    return table


def scenario_table(args: argparse.Namespace) -> dict[str, Any]:
    result = envelope("side_by_side", args)
    table = side_by_side(args.out)
    result.update(table)
    write_json(args.out / "side_by_side.json", result)
    (args.out / "side_by_side.md").write_text(table["markdown"] + "\n")
    print(table["markdown"], flush=True)
    return result


# ---------------------------------------------------------------------------------------------- plots
def plots(out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return
    colours = {SERVER: "tab:green", "websockets": "tab:blue", "aiohttp": "tab:orange", "picows": "tab:red"}

    mem = _load(out / "memory.json")
    if mem and mem.get("points"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in [SERVER, *PEER_NAMES]:
            pts = sorted((p for p in mem["points"] if p["server"] == name), key=lambda p: p["connections"])
            if not pts:
                continue
            xs = [p["connections"] for p in pts]
            pss = [p["median_bytes_per_conn"]["pss"] for p in pts]
            anon = [p["median_bytes_per_conn"].get("pss_anon") for p in pts]
            rss = [p["median_bytes_per_conn"]["rss"] for p in pts]
            slab = [p["median_bytes_per_conn"]["slab_sockets"] for p in pts]
            ax1.plot(xs, pss, "o-", color=colours[name], label=f"{name} PSS")
            if name == SERVER and None not in anon:
                ax1.plot(xs, anon, "s:", color=colours[name], alpha=0.8, label=f"{name} PSS, anonymous part")
            ax1.plot(xs, rss, "x--", color=colours[name], alpha=0.6, label=f"{name} RSS")
            ax2.plot(xs, slab, "o-", color=colours[name], label=name)
            for x, y in zip(xs, pss, strict=True):
                if y is None or y <= 0:
                    continue
                ax1.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax1.axhline(2500, color="grey", ls=":", lw=1)
        ax1.text(10_000, 2600, "target 2 500 B", fontsize=7, color="grey")
        ax1.axhline(1000, color="grey", ls=":", lw=1)
        ax1.text(10_000, 1050, "stretch 1 000 B", fontsize=7, color="grey")
        ax1.set_yscale("log")
        ax1.set_xscale("log")
        ax1.set_xlabel("idle connections N")
        ax1.set_ylabel("server bytes per connection (user space)")
        ax1.set_title("Server PSS / RSS per idle connection")
        ax1.legend(fontsize=7)
        ax2.set_xscale("log")
        ax2.set_xlabel("idle connections N")
        ax2.set_ylabel("bytes per connection pair")
        ax2.set_title("Kernel socket slab caches (both loopback ends)")
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=7)
        fig.text(0.01, 0.01, _caption(mem), fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
        log(f"wrote {out / 'memory.png'}")

    echo = _load(out / "echo.json")
    if echo and echo.get("cases"):
        cases = echo["cases"]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7))
        width = 0.2
        names = [SERVER, *PEER_NAMES]
        for i, name in enumerate(names):
            xs, ys, p50, p99 = [], [], [], []
            for j, case in enumerate(cases):
                s = case["servers"].get(name)
                if s and s["median"]["messages_per_s"]:
                    xs.append(j + (i - 1.5) * width)
                    ys.append(s["median"]["messages_per_s"])
                    p50.append(s["median"]["rtt_p50_ms"])
                    p99.append(s["median"]["rtt_p99_ms"])
            if not xs:
                continue
            ax1.bar(xs, ys, width, color=colours[name], label=name)
            ax2.bar(xs, p99, width, color=colours[name], alpha=0.35)
            ax2.bar(xs, p50, width, color=colours[name], label=f"{name} P50 (light: P99)")
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(cases)))
            ax.set_xticklabels([c["case"].replace("x", " x ", 2) for c in cases], fontsize=8)
        ax1.set_ylabel("echoed messages / s")
        ax1.set_title("Echo throughput: connections x in flight x size (server on core 0, load on core 1)")
        ax1.legend(fontsize=8)
        ax2.set_yscale("log")
        ax2.set_ylabel("RTT (ms)")
        ax2.set_title("Round-trip time P50 (dark) and P99 (light)")
        ax2.legend(fontsize=7)
        fig.text(0.01, 0.01, _caption(echo), fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / "echo.png", dpi=110)
        plt.close(fig)
        log(f"wrote {out / 'echo.png'}")

    conn = _load(out / "connect.json")
    if conn and conn.get("servers"):
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [n for n in [SERVER, *PEER_NAMES] if n in conn["servers"]]
        vals = [conn["servers"][n]["median"]["handshakes_per_s"] or 0 for n in names]
        bars = ax.bar(names, vals, color=[colours[n] for n in names])
        for bar, n in zip(bars, names, strict=True):
            med = conn["servers"][n]["median"]
            ax.annotate(
                f"{bar.get_height():,.0f}/s\nP50 {med['handshake_p50_ms']} ms",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylabel("WebSocket handshakes / s (one process)")
        ax.set_title(f"Handshake rate, concurrency {conn['concurrency']} (server on core 0, load on core 1)")
        ax.set_ylim(0, max(vals) * 1.2 if vals else 1)
        fig.text(0.01, 0.01, _caption(conn), fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(out / "connect.png", dpi=110)
        plt.close(fig)
        log(f"wrote {out / 'connect.png'}")


def _caption(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"{m['cpus']} x {m['cpu_model']}, {m['mem_total_bytes'] / 2**30:.0f} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, commit {m['git_commit'][:10]}, {m['date']}; median of {result['runs']} run(s)"
    )


# ---------------------------------------------------------------------------------------------- main
def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """'100x8x64,10000x1x4096' -> [(100, 8, 64), (10000, 1, 4096)]"""
    cases = []
    for part in text.split(","):
        c, k, b = (int(x) for x in part.lower().removesuffix("b").split("x"))
        cases.append((c, k, b))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the reduced set of `just bench` (< 3 minutes)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated scenarios (default memory,echo,connect,profile,table; --quick: without profile)",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per server and case (default 3; --quick 1)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--memory-n", default=None, help="N list for the memory scenario (default 10000,50000,100000)")
    parser.add_argument("--echo-cases", default=None, help="CxKxB list (default: the 8 cases of the issue)")
    parser.add_argument("--duration", type=float, default=5.0, help="echo / connect-rate window (s)")
    parser.add_argument("--concurrency", type=int, default=64, help="connect-rate sockets in flight")
    parser.add_argument("--rate", type=float, default=5000.0, help="memory: new connections per second")
    parser.add_argument("--pin", default="0", help="CPU list for the servers")
    parser.add_argument("--loadgen-cpus", default="1", help="CPU list for the load generator")
    parser.add_argument("--port", type=int, default=18100, help="first port (each server of a run gets its own)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    args.out.mkdir(parents=True, exist_ok=True)
    default_n = "10000" if args.quick else "10000,50000,100000"
    args.memory_n = [int(x) for x in (args.memory_n or default_n).split(",")]
    args.peer_memory_n = {10_000}
    if args.echo_cases:
        args.echo_cases = parse_cases(args.echo_cases)
    else:
        args.echo_cases = [(100, 8, 64)] if args.quick else ECHO_CASES
    args.echo_peer_cases = ECHO_PEER_CASES
    only = args.only or ("memory,echo,connect,table" if args.quick else "memory,echo,connect,profile,table")
    scenarios = [s.strip() for s in only.split(",") if s.strip()]
    unknown = set(scenarios) - {"memory", "echo", "connect", "profile", "table"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    log(f"scenarios {scenarios}, {args.runs} run(s) each, results in {args.out}")
    errors: list[str] = []
    if scenarios != ["table"]:
        log(f"servers run a snapshot of millionws/ taken now: {servers.use_snapshot()}")
    try:
        errors += run_scenarios(args, scenarios)
    finally:
        servers.remove_snapshot()
    if not args.no_plots:
        plots(args.out)
    log(f"all done in {time.monotonic() - started:.0f} s" + (f"; {len(errors)} error(s)" if errors else ""))
    for err in errors:
        log(f"  error: {err}")
    return 1 if errors else 0


def run_scenarios(args: argparse.Namespace, scenarios: list[str]) -> list[str]:
    errors: list[str] = []
    for name in scenarios:
        t0 = time.monotonic()
        if name == "memory":
            errors += scenario_memory(args)["errors"]
        elif name == "echo":
            errors += scenario_echo(args)["errors"]
        elif name == "connect":
            errors += scenario_connect(args)["errors"]
        elif name == "profile":
            errors += scenario_profile(args)
        elif name == "table":
            scenario_table(args)
        log(f"{name} done in {time.monotonic() - t0:.0f} s")
    return errors


if __name__ == "__main__":
    raise SystemExit(main())
