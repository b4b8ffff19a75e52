"""The README's side-by-side performance table, rendered from the result files of benchmarks/results/.

    python -m benchmarks.table            # print the table
    python -m benchmarks.table --write    # replace the block between the README's markers

Nothing here is typed in by hand: every cell is read from a result file that a benchmark wrote (the file
is named in the row), so the README cannot say more than was measured.  ``tests/test_bench_table.py``
checks that the README's block is what this module renders from the committed results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DASH, TIMES, MICRO, ELLIPSIS, ARROW = "\u2013", "\u00d7", "\u00b5", "\u2026", "\u2192"  # as the README writes them

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- performance-table:start (python -m benchmarks.table --write) -->"
END = "<!-- performance-table:end -->"
PEERS = ("picows", "uws", "gorilla")
HEADER = ("| figure | millionws | picows | uWebSockets | Go gorilla | vs picows | vs uWebSockets | file |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}".replace(",", " ")


def ratio(ours: float | None, theirs: float | None, lower_is_better: bool) -> str:
    """How many times better millionws is (memory, time: theirs / ours; rates: ours / theirs)."""
    if not ours or not theirs:
        return ""
    return f"{(theirs / ours if lower_is_better else ours / theirs):.2f}{TIMES}"


def row(figure: str, values: dict[str, float | None], file: str, digits: int = 0,
        lower_is_better: bool = False) -> str:
    ours = values.get("millionws")
    cells = [number(values.get(name), digits) for name in ("millionws", *PEERS)]
    cells[0] = f"**{cells[0]}**"
    return (f"| {figure} | {' | '.join(cells)} | {ratio(ours, values.get('picows'), lower_is_better)} | "
            f"{ratio(ours, values.get('uws'), lower_is_better)} | `{file}` |")


def medians(result: dict[str, Any], key: str, names: dict[str, str] | None = None) -> dict[str, float | None]:
    """``summary[server]["median"][key]`` per server, renamed (e.g. ``after`` -> ``millionws``)."""
    names = names or {}
    return {names.get(server, server): entry["median"].get(key) for server, entry in result["summary"].items()}


def echo_rows(lines: list[str]) -> None:
    for inflight in (1, 8):
        name = f"issue12_echo{inflight}_peers.json"
        result = load(name)
        if result is None:
            continue
        label = f"echo 100 conn. {TIMES} {inflight} in flight {TIMES} 64 B"
        lines.append(row(f"{label}, messages per server CPU-second", medians(result, "messages_per_server_cpu_s"),
                         name))
        lines.append(row(f"{label}, messages/s", medians(result, "messages_per_s"), name))


def memory_row(lines: list[str]) -> None:
    name = "issue12_memory.json"
    result = load(name)
    if result is None:
        return
    values = {server: entry["median_bytes_per_conn"].get("pss_anon") for server, entry in result["summary"].items()}
    lines.append(row(f"bytes per idle connection, PSS anonymous, N = {number(result['connections'])}", values, name,
                     lower_is_better=True))


def handshake_row(lines: list[str]) -> None:
    name = "issue12_handshakes.json"
    result = load(name)
    if result is None:
        return
    values = medians(result, "handshakes_per_server_cpu_s", {"after": "millionws"})
    values.pop("before", None)
    lines.append(row("WebSocket handshakes (open + close) per server CPU-second", values, name))


def fanout_rows(lines: list[str]) -> None:
    name = "issue12_fanout10000.json"
    result = load(name)
    if result is None:
        return
    by_server = {r["server"].split(":")[0]: r for r in result["sections"]["latency"]["summary"]["rows"]}

    def pick(key: str) -> dict[str, float | None]:
        return {server: r.get(key) for server, r in by_server.items()}

    lines.append(row(f"fan-out to 10 000 subscribers, server CPU {MICRO}s per delivered copy",
                     pick("server_cpu_us_per_delivery"), name, digits=2, lower_is_better=True))
    lines.append(row(f"{ELLIPSIS} P99 publish {ARROW} subscriber's kernel, ms", pick("sock_ms.p99"), name, digits=1,
                     lower_is_better=True))
    lines.append(row(f"{ELLIPSIS} P50, ms", pick("sock_ms.p50"), name, digits=1, lower_is_better=True))


def million_line() -> str | None:
    result = load("million.json")
    if result is None:
        return None
    ramp, per = result["ramp"], result["memory_per_conn"]
    return (f"- **A million** (`million.json`, `just bench-million`): verdict `ok: {str(result['ok']).lower()}`, "
            f"{number(ramp['established'])} established, {number(ramp['failed'])} failed, ramp "
            f"{number(ramp['seconds'], 1)} s at {number(ramp['rate_per_s'])}/s; server PSS "
            f"{number(per['server_pss'])} B per connection, kernel slab {number(per['kernel_slab_per_pair'])} B "
            f"per loopback connection pair (both ends).")


def storm_line() -> str | None:
    result = load("storm.json")
    if result is None:
        return None
    storm, messages = result["storm"], result["messages"]
    return (f"- **Reconnect storm** (`storm.json`, `storm.png`, `just bench-storm`): "
            f"{number(storm['subscribers'])} subscribers moved from a drained node; 99 % back in "
            f"{number(storm['t99_s'], 1)} s, 100 % in {number(storm['t100_s'], 1)} s, "
            f"{number(storm['handshakes']['mean_per_s'])} handshakes/s on average "
            f"(busiest second {number(storm['handshakes']['peak_per_s'])}); {number(messages['expected'])} "
            f"deliveries owed, {number(messages['lost'])} lost, {number(messages['duplicates_dropped'])} duplicated.")


def render() -> str:
    lines = [HEADER]
    memory_row(lines)
    echo_rows(lines)
    handshake_row(lines)
    fanout_rows(lines)
    extra = [line for line in (million_line(), storm_line()) if line]
    return "\n".join(lines) + ("\n\n" + "\n".join(extra) if extra else "")


def write(readme: Path = README) -> bool:
    """Replace the README's block; True when it changed."""
    text = readme.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{readme}: the markers {START!r} and {END!r} are missing")
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    readme.write_text(new)
    return new != text


def readme_block(readme: Path = README) -> str:
    text = readme.read_text()
    return text.partition(START)[2].partition(END)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the README's block")
    args = parser.parse_args(argv)
    if args.write:
        print("README.md " + ("updated" if write() else "already up to date"))
    else:
        sys.stdout.write(render() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
