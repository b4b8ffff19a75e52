"""Who may connect: per-address limits, decided at ``accept()`` before a byte is parsed.

Theory of operation: two limits of SECURITY.md, each off (None) unless configured, so an
unused limit costs nothing: ``--max-connect-rate-per-ip`` (a token bucket per source address,
forgotten once full again) and ``--max-connections-per-ip`` (a count per address, the entry
removed with the address's last connection).  :meth:`Admission.admit` answers with the one
``str`` object that stands for the address (shared by all its connections, so a thousand
connections from one address hold one string) or None: refused, counted, and the worker
closes the descriptor at once (the cheapest answer to a flood).  No I/O here.
"""

from __future__ import annotations

from ..metrics import F
from ..ratelimit import KeyedBuckets, Rate

_REFUSED_RATE, _REFUSED_COUNT = F["rate_limited_connect_rate"], F["rate_limited_connections_per_ip"]
_KEYS = F["admission_keys"]


class Admission:
    """The per-address limits of one worker.  ``active``: whether any limit is on."""

    __slots__ = ("active", "c", "counts", "max_per_ip", "rate", "_keys")

    def __init__(self, counters: list[int], connect_rate: float = 0.0, max_per_ip: int = 0) -> None:
        self.c = counters
        self.rate = KeyedBuckets(Rate(connect_rate)) if connect_rate else None
        self.max_per_ip = max_per_ip
        self.counts: dict[str, int] | None = {} if max_per_ip else None
        self._keys: dict[str, str] = {}  # one str object per address, shared by its connections
        self.active = self.rate is not None or self.counts is not None

    def admit(self, address: str, now: float) -> str | None:
        """The shared key of ``address`` if its limits allow one more connection, else None."""
        if self.rate is not None and not self.rate.take(address, now):
            self.c[_REFUSED_RATE] += 1
            return None
        counts = self.counts
        if counts is None:
            return address  # only the rate is limited: nothing is kept per connection
        held = counts.get(address, 0)
        if held >= self.max_per_ip:
            self.c[_REFUSED_COUNT] += 1
            return None
        key = self._keys.setdefault(address, address)
        counts[key] = held + 1
        return key

    def release(self, key: str) -> None:
        """A connection admitted under ``key`` ended."""
        counts = self.counts
        if counts is None:
            return
        left = counts.pop(key) - 1
        if left:
            counts[key] = left
        else:
            del self._keys[key]

    def sweep(self, now: float) -> None:
        """Forget addresses whose bucket is full again; publish the size of the tables."""
        if self.rate is not None:
            self.rate.sweep(now)
        self.c[_KEYS] = (len(self.rate) if self.rate is not None else 0) + (len(self.counts) if self.counts else 0)
