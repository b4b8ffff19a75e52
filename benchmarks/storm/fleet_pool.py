"""The driver's side of the load-generator processes: fork them, read what they report, collect and stop them.

Each process (``fleet.run``) takes a contiguous slice of the subscribers and talks over its own pipe; this
module keeps the last status of each, so the driver can wait for a condition over all of them while reading
every pipe, which no process may ever block on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from benchmarks.storm import fleet

SUMMED = ("on_a", "on_b", "moved", "n")


class FleetPool:
    """``args.procs`` processes sharing ``args.subscribers`` subscribers of ``channels`` against ``ports``."""

    def __init__(self, args: argparse.Namespace, ports: list[int], channels: list[str], sources: list[str]) -> None:
        ctx = multiprocessing.get_context("fork")  # the subscribers' code is already imported; nothing to pickle
        n, procs = args.subscribers, args.procs
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.status: list[dict[str, int]] = [{k: 0 for k in SUMMED} for _ in range(procs)]
        self.ready = 0
        self.results: list[tuple | None] = [None] * procs
        for k in range(procs):
            lo, hi = n * k // procs, n * (k + 1) // procs
            parent, child = ctx.Pipe()
            share = (hi - lo) / n * args.ramp_rate
            p = ctx.Process(target=fleet.run, name=f"storm-fleet-{k}", daemon=True,
                            args=(child, args.host, ports, range(lo, hi), channels, sources, share,
                                  args.open_timeout, args.min_delay, args.max_delay))
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Read every pipe until ``until()`` holds (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if until():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for conn in wait(self.conns, min(left, 0.2)):
                k = self.conns.index(conn)  # type: ignore[arg-type]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise RuntimeError(f"load generator {k} died (exit {self.procs[k].exitcode})") from None
                if msg[0] == "status":
                    self.status[k] = msg[1]
                elif msg[0] == "ready":
                    self.status[k] = msg[1]
                    self.ready += 1
                elif msg[0] == "done":
                    self.results[k] = msg[1:]

    def totals(self) -> dict[str, int]:
        return {key: sum(s[key] for s in self.status) for key in SUMMED}

    def finish(self, acked: dict[str, list[int]], wait_s: float) -> dict[str, Any]:
        """Hand every process the acknowledged seqs; return the sum of their accounts."""
        for conn in self.conns:
            conn.send(("finish", acked, wait_s))
        if not self.pump(lambda: all(r is not None for r in self.results), wait_s + 60):
            raise RuntimeError("a load generator did not finish its account")
        total: dict[str, Any] = {}
        for account, *_ in self.results:  # type: ignore[misc]
            for key, value in account.items():
                if isinstance(value, dict):
                    merged = total.setdefault(key, {})
                    for k, v in value.items():
                        merged[k] = merged.get(k, 0) + v
                elif isinstance(value, list):
                    total.setdefault(key, []).extend(value)
                else:
                    total[key] = total.get(key, 0) + value
        total["loss_examples"] = total.get("loss_examples", [])[:10]
        return total

    def events(self) -> tuple[array, array, array, array]:
        """Every process's events (times, codes), the time each subscriber was back on node B (nan: never) and
        how long each of those subscribes waited for its answer."""
        ev_t, ev_code, moved, waits = array("d"), array("B"), array("d"), array("d")
        for r in self.results:
            if r is not None:
                ev_t.extend(r[1])
                ev_code.extend(r[2])
                moved.extend(r[3])
                waits.extend(r[4])
        return ev_t, ev_code, moved, waits

    def stop(self) -> int:
        """Ask every process to close its sockets and exit; kill those that do not. Returns how many were killed."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        killed = 0
        deadline = time.monotonic() + 20
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
                killed += 1
        for conn in self.conns:
            conn.close()
        return killed
