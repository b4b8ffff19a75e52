"""Token buckets, sized for a million connections.

Theory of operation: a bucket is a two-item list ``[tokens, last_refill]`` created on first
use, so a connection whose limits are off (or that never sends) pays one empty slot and
nothing else.  ``take`` refills by elapsed time, caps at the burst, and takes the cost if it
is there; the caller decides what a refusal means (close 1008, an error reply, a 429).
Keyed buckets (per source address, per channel) live in :class:`KeyedBuckets`, a dict that
forgets idle keys, so an attacker cycling addresses cannot grow it without bound.
"""

from __future__ import annotations


class Rate:
    """``per_second`` tokens a second, at most ``burst`` saved up (default: one second's worth)."""

    __slots__ = ("burst", "per_second")

    def __init__(self, per_second: float, burst: float | None = None) -> None:
        self.per_second = float(per_second)
        self.burst = float(burst if burst is not None else max(1.0, per_second))

    def new_bucket(self, now: float) -> list[float]:
        return [self.burst, now]

    def take(self, bucket: list[float], now: float, cost: float = 1.0, at: int = 0) -> bool:
        """Take ``cost`` from the bucket stored at ``bucket[at:at + 2]`` (several share one list)."""
        tokens = bucket[at] + (now - bucket[at + 1]) * self.per_second
        if tokens > self.burst:
            tokens = self.burst
        bucket[at + 1] = now
        if tokens >= cost:
            bucket[at] = tokens - cost
            return True
        bucket[at] = tokens
        return False


class KeyedBuckets:
    """Buckets by key (address, channel), dropping keys idle for ``idle`` seconds.

    By default ``idle`` is the time a bucket takes to fill up again: a full bucket is the same
    as a new one, so forgetting it changes no decision, and the table holds only the keys
    that were active within that time.
    """

    __slots__ = ("_buckets", "_next_sweep", "idle", "rate")

    def __init__(self, rate: Rate, idle: float | None = None) -> None:
        self.rate = rate
        self.idle = idle if idle is not None else max(1.0, rate.burst / rate.per_second)
        self._buckets: dict[object, list[float]] = {}
        self._next_sweep = 0.0  # the first take sweeps (an empty dict) and sets the real schedule

    def take(self, key: object, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if now >= self._next_sweep:
                self.sweep(now)
            self._buckets[key] = bucket = self.rate.new_bucket(now)
        return self.rate.take(bucket, now, cost)

    def sweep(self, now: float) -> None:
        horizon = now - self.idle
        self._buckets = {k: b for k, b in self._buckets.items() if b[1] >= horizon}
        self._next_sweep = now + self.idle

    def __len__(self) -> int:
        return len(self._buckets)
