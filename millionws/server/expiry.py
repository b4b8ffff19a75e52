"""Token expiry: close 1008 the connections whose token's ``exp`` has passed (SECURITY.md).

Theory of operation: a heap of ``(exp, seq, connection)``, checked once a second.  A
connection that closes before its token expires is not searched for in the heap (that would
cost O(n) per close): its entry goes stale, is counted (the record carries ``F_EXPIRES``
while it has an entry), and the heap is compacted once stale entries are more than half of
it, so a day-long token of a connection closed after a minute does not keep its record for
a day.  No I/O here: :meth:`Expiries.due` hands the expired open connections to the caller.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from ..protocol.lifecycle import CLOSED
from .connection import F_EXPIRES

_COMPACT_AFTER = 64  # stale entries tolerated before compaction is considered


class Expiries:
    __slots__ = ("heap", "_seq", "stale")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Any]] = []
        self._seq = 0
        self.stale = 0

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, conn: Any, expires: float) -> None:
        self._seq += 1
        conn.flags |= F_EXPIRES
        heapq.heappush(self.heap, (expires, self._seq, conn))

    def closed(self, conn: Any) -> None:
        """``conn`` closed; call only when it has ``F_EXPIRES``."""
        self.stale += 1
        if self.stale > _COMPACT_AFTER and self.stale * 2 > len(self.heap):
            self.heap = [entry for entry in self.heap if entry[2].state != CLOSED]
            heapq.heapify(self.heap)
            self.stale = 0

    def due(self, now: float) -> Iterator[Any]:
        """The connections still open whose token expired at ``now`` (each once)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            conn = heapq.heappop(heap)[2]
            if conn.state == CLOSED:
                self.stale -= 1
                continue
            conn.flags &= ~F_EXPIRES
            yield conn
