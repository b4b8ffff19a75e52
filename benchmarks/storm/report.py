"""The figures of the reconnect storm, from what the load-generator processes recorded: timeline, quantiles, plot.

Events are (time.monotonic(), code) pairs with code = kind * 2 + node (``fleet.HANDSHAKE_OK`` ...); every
figure here is counted from them, relative to the moment SIGTERM was sent to node A.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.storm.fleet import DROPPED, FAILED, HANDSHAKE_OK, SUBSCRIBED_EV

BIN_S = 0.25
# kernel counters that say whether connection attempts were dropped or delayed at the listening sockets
TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "SyncookiesSent",
                "SyncookiesRecv", "SyncookiesFailed", "TCPTimeouts", "TCPSynRetrans", "RetransSegs",
                "PassiveOpens", "ActiveOpens", "AttemptFails", "EstabResets")


def tcp_counters() -> dict[str, int]:
    """The ``TCP_COUNTERS`` of /proc/net/netstat and /proc/net/snmp (machine-wide: both nodes, both ends)."""
    out: dict[str, int] = {}
    for name in ("/proc/net/netstat", "/proc/net/snmp"):
        lines = Path(name).read_text().splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            keys, vals = head.split()[1:], values.split()[1:]
            for k, v in zip(keys, vals, strict=False):
                if k in TCP_COUNTERS:
                    out[k] = int(v)
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in TCP_COUNTERS if k in after}


def time_to(moved: Sequence[float], n: int, fraction: float, t0: float) -> float | None:
    """Seconds from ``t0`` until ``fraction`` of the ``n`` subscribers were subscribed on node B (None: never)."""
    done = sorted(t for t in moved if not math.isnan(t))
    need = math.ceil(fraction * n)
    if need == 0 or len(done) < need:
        return None
    return round(done[need - 1] - t0, 3)


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50 / p99 / max in seconds, nearest rank."""
    v = sorted(values)
    if not v:
        return {"p50": None, "p99": None, "max": None}
    pick = lambda q: round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))], 4)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(v[-1], 4)}


def timeline(ev_t: array, ev_code: array, t0: float, start: float, end: float) -> list[dict[str, Any]]:
    """Per ``BIN_S`` from ``start`` to ``end`` (monotonic): subscribers per node at the bin's end, and the
    handshakes (101 received), failed attempts and drops per node in the bin, as rates per second."""
    nbins = max(1, math.ceil((end - start) / BIN_S))
    counts = [[0] * 8 for _ in range(nbins)]
    level = [0, 0]
    levels = []
    order = sorted(range(len(ev_t)), key=ev_t.__getitem__)
    k = 0
    for b in range(nbins):
        bin_end = start + (b + 1) * BIN_S
        while k < len(order) and ev_t[order[k]] < bin_end:
            code = ev_code[order[k]]
            kind, node = divmod(code, 2)
            if ev_t[order[k]] >= start:
                counts[b][code] += 1
            if kind == SUBSCRIBED_EV:
                level[node] += 1
            elif kind == DROPPED:
                level[node] -= 1
            k += 1
        levels.append(tuple(level))
    rows = []
    for b in range(nbins):
        c = counts[b]
        rows.append({
            "t": round(start + b * BIN_S - t0, 3),
            "on_a": levels[b][0],
            "on_b": levels[b][1],
            "handshakes_per_s_a": c[HANDSHAKE_OK * 2] / BIN_S,
            "handshakes_per_s_b": c[HANDSHAKE_OK * 2 + 1] / BIN_S,
            "failed_per_s": (c[FAILED * 2] + c[FAILED * 2 + 1]) / BIN_S,
            "dropped_per_s": (c[DROPPED * 2] + c[DROPPED * 2 + 1]) / BIN_S,
        })
    return rows


def handshake_rates(ev_t: array, ev_code: array, t0: float, t1: float) -> dict[str, Any]:
    """Handshakes (101 received) on node B from ``t0`` (SIGTERM) to ``t1`` (all back, or the storm's timeout):
    the mean, and the peak over whole seconds counted from ``t0``."""
    code = HANDSHAKE_OK * 2 + 1
    times = [t for t, c in zip(ev_t, ev_code, strict=True) if c == code and t0 <= t <= t1]
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t - t0)] = per_second.get(int(t - t0), 0) + 1
    span = t1 - t0
    return {
        "handshakes_b": len(times),
        "window_s": round(span, 3),
        "mean_per_s": round(len(times) / span, 1) if span > 0 else None,
        "peak_per_s": max(per_second.values(), default=0),  # the busiest whole second after SIGTERM
    }


def plot(result: dict[str, Any], path: Path) -> bool:
    """Subscribers on A and on B, and handshakes/s, over the seconds around SIGTERM. False: no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["timeline"]
    t = [r["t"] for r in rows]
    storm = result["storm"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=(3, 2))
    ax1.plot(t, [r["on_a"] for r in rows], label="subscribed on node A")
    ax1.plot(t, [r["on_b"] for r in rows], label="subscribed on node B")
    ax1.set_ylabel("subscribers")
    s = result["settings"]
    ax1.set_title(
        f"Reconnect storm: {s['subscribers']:,} subscribers, node A ({s['workers']} workers) drained, "
        f"node B ({s['workers']} workers) takes them; NATS\n"
        f"99 % back in {storm['t99_s']} s, 100 % in {storm['t100_s']} s; "
        f"lost {result['messages']['lost']} of {result['messages']['expected']:,} deliveries "
        f"(gaps announced: {sum(result['messages']['gaps'].values())})\nfull-jitter backoff "
        f"{s['min_delay']:g}-{s['max_delay']:g} s{', server ' + s['server_args'] if s['server_args'] else ''}",
        fontsize=9,
    )
    ax2.plot(t, [r["handshakes_per_s_b"] for r in rows], label="handshakes/s on B")
    ax2.plot(t, [r["failed_per_s"] for r in rows], label="failed attempts/s", alpha=0.7)
    ax2.set_ylabel(f"per second ({BIN_S:g} s bins)")
    ax2.set_xlabel("seconds since SIGTERM to node A")
    for ax in (ax1, ax2):
        ax.axvline(0, color="grey", ls=":", lw=0.8)
        for name in ("t99_s", "t100_s"):
            if storm.get(name) is not None:
                ax.axvline(storm[name], color="green", ls="--", lw=0.7)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
