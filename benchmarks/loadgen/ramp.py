"""The adaptive ramp of ``idle`` and ``echo`` (``--adaptive``): how many handshakes may be in flight at once.

Theory of operation
-------------------
A fixed ``--rate`` is either below what the machine can do (the ramp is slower than it needs to be) or above
it: then handshakes queue in the kernel and in the server, their latency grows past ``--connect-timeout`` and
they fail, which is how a run at a fixed 6 000/s on two cores lost 2 % of a million. A closed loop cannot
overrun: a new connection is started only when one of a bounded number in flight (the *window*) has settled,
and the window follows the measured handshake latency.

* One window for all the load generator's processes. Each reports, four times a second, the latencies of
  the handshakes it completed since its last report and the age of its oldest handshake still in flight;
  the parent decides every ``period`` seconds and gives each process still opening its share (>= 1).
* The signal is the p90 of the latencies completed in the period, against ``target``; a handshake older
  than ``stall`` still in flight counts as over target too (a server that stopped answering completes
  nothing, so it would otherwise send no signal at all).
* Slow start: the window grows by half each period until the first period over target, then AIMD: one
  ``step`` more per period under target (only while at least half the window is in use, now or on average
  over the period by Little's law, the sum of the latencies completed in it over its length: a ceiling
  ``--rate`` leaves it partly empty and then it must not grow without bound), times ``decrease`` over target.
  Never below ``window_min`` (one per process) nor above ``window_max``.
* No retries. A handshake that fails (a timeout after ``--connect-timeout``, a reset) is counted as failed
  and not opened again, so "no failure" in a report means every first attempt succeeded; the window shrinks
  long before a healthy server makes a handshake time out.
"""

from __future__ import annotations

import math
from typing import Any


class AdaptiveWindow:
    """The window of handshakes in flight over all processes; see the module docstring.

    ``window_min``/``window_max``: bounds of the window (all processes together); ``target``: the p90 of the
    handshake latency (seconds) under which it grows; ``stall``: age (seconds) of a handshake in flight that
    counts as over target; ``step``: additive growth per period; ``decrease``: factor over target.
    """

    def __init__(
        self,
        window_min: int,
        window_max: int,
        target: float,
        stall: float | None = None,
        step: int | None = None,
        decrease: float = 0.7,
        min_samples: int = 20,
    ) -> None:
        if not 1 <= window_min <= window_max:
            raise ValueError(f"window bounds must satisfy 1 <= min <= max, not {window_min}..{window_max}")
        if target <= 0:
            raise ValueError("the latency target must be positive")
        self.window_min = window_min
        self.window_max = window_max
        self.target = target
        self.stall = stall if stall is not None else max(1.0, 4 * target)
        self.step = step if step is not None else max(1, window_max // 32)
        self.decrease = decrease
        self.min_samples = min_samples
        self.window = window_min
        self.slow_start = True
        self.samples: list[float] = []
        self.oldest_pending = 0.0
        self.trace: list[list[float]] = []  # see summary()
        self.periods_over = 0
        self.periods_under = 0
        self.last_t: float | None = None

    def observe(self, latencies: list[float], oldest_pending: float) -> None:
        """One process's report: handshake latencies (s) completed since its last, age (s) of its oldest."""
        self.samples.extend(latencies)
        self.oldest_pending = max(self.oldest_pending, oldest_pending)

    def p90(self) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]

    def decide(self, t: float, inflight: int) -> int:
        """End a period: the new window from what was observed in it (``inflight``: handshakes in flight now)."""
        p90 = self.p90()
        over = self.oldest_pending > self.stall or (
            p90 is not None and len(self.samples) >= self.min_samples and p90 > self.target
        )
        under = not over and p90 is not None and len(self.samples) >= self.min_samples
        length = t - self.last_t if self.last_t is not None else 0.0
        self.last_t = t
        if length > 0:
            inflight = max(inflight, round(sum(self.samples) / length))
        if over:
            self.periods_over += 1
            self.slow_start = False
            self.window = max(self.window_min, int(self.window * self.decrease))
        elif under and inflight >= self.window // 2:
            self.periods_under += 1
            grown = self.window + max(1, self.window // 2) if self.slow_start else self.window + self.step
            self.window = min(self.window_max, grown)
        self.trace.append(
            [round(t, 2), self.window, inflight, round(p90 * 1000, 1) if p90 is not None else -1, len(self.samples)]
        )
        self.samples = []
        self.oldest_pending = 0.0
        return self.window

    def shares(self, opening: list[int]) -> dict[int, int]:
        """The window split over the processes still opening (by index), each at least one."""
        if not opening:
            return {}
        base, extra = divmod(self.window, len(opening))
        return {index: max(1, base + (1 if i < extra else 0)) for i, index in enumerate(opening)}

    def summary(self) -> dict[str, Any]:
        windows = [row[1] for row in self.trace]
        return {
            "target_p90_ms": round(self.target * 1000, 1),
            "stall_s": self.stall,
            "window_min": self.window_min,
            "window_max": self.window_max,
            "step": self.step,
            "decrease": self.decrease,
            "periods": len(self.trace),
            "periods_over_target": self.periods_over,
            "periods_grown": self.periods_under,
            "window_median": sorted(windows)[len(windows) // 2] if windows else None,
            "window_max_reached": max(windows) if windows else None,
            # [s since start, window, in flight (now or the period's mean, the larger), p90 ms (-1: none), completed]
            "trace": self.trace,
        }
