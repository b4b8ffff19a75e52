"""Token expiry: close 1008 the connections whose token's ``exp`` has passed (SECURITY.md).

Theory of operation: a heap of ``(exp, seq, connection)``, checked once a second.  A
connection that closes before its token expires is not searched for in the heap (that would
cost O(n) per close): its entry goes stale, is counted (the record carries ``F_EXPIRES``
while it has a live entry), and the heap is compacted once stale entries are more than half of
it, so a day-long token of a connection closed after a minute does not keep its record for
a day.  No I/O here: :meth:`Expiries.due` hands the expired open connections to the caller.

A token refreshed in band (``refresh`` on ``/pubsub``, docs/protocol.md) moves the expiry
(:meth:`Expiries.move`): the new entry is pushed (O(log n)) and the old one goes stale in
place, like a closed connection's.  To tell the two apart when the old one comes up, ``moved``
maps a connection to ``[seq of its live entry (0: none), stale entries it still has]``, only
while it has such stale entries: an entry of the map lasts from a refresh until the old ``exp``
(a client refreshes shortly before it, see docs/clients/python.md), so a connection that never
refreshes, or refreshed a while ago, costs nothing more than before.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from ..protocol.lifecycle import CLOSED
from .connection import F_EXPIRES

_COMPACT_AFTER = 64  # stale entries tolerated before compaction is considered


class Expiries:
    __slots__ = ("heap", "_seq", "stale", "moved")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Any]] = []
        self._seq = 0  # from 1: 0 in ``moved`` means "no live entry"
        self.stale = 0
        self.moved: dict[Any, list[int]] = {}

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, conn: Any, expires: float) -> None:
        self._seq += 1
        conn.flags |= F_EXPIRES
        moved = self.moved.get(conn)
        if moved is not None:  # older entries of it are still in the heap: this one is the live one
            moved[0] = self._seq
        heapq.heappush(self.heap, (expires, self._seq, conn))

    def move(self, conn: Any, expires: float | None) -> None:
        """``conn``'s token now expires at ``expires`` (None: never): its live entry, if any, goes stale
        and a new one is pushed.  O(log n): the old entry is not searched for."""
        if conn.flags & F_EXPIRES:
            moved = self.moved.get(conn)
            if moved is None:
                self.moved[conn] = moved = [0, 0]
            moved[0] = 0
            moved[1] += 1
            self.stale += 1
            conn.flags &= ~F_EXPIRES
        if expires is not None:
            self.add(conn, expires)
        self._compact_if_stale()

    def closed(self, conn: Any) -> None:
        """``conn`` closed; call only when it has ``F_EXPIRES``."""
        self.stale += 1
        self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        if self.stale > _COMPACT_AFTER and self.stale * 2 > len(self.heap):
            moved = self.moved
            self.heap = [entry for entry in self.heap if entry[2].state != CLOSED
                         and (entry[2] not in moved or moved[entry[2]][0] == entry[1])]
            heapq.heapify(self.heap)
            moved.clear()  # no stale entry is left, so every remaining one is its connection's live one
            self.stale = 0

    def due(self, now: float) -> Iterator[Any]:
        """The connections still open whose token expired at ``now`` (each once)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, seq, conn = heapq.heappop(heap)
            moved = self.moved.get(conn)
            if moved is not None and moved[0] != seq:  # superseded by a refresh
                self.stale -= 1
                moved[1] -= 1
                if moved[1] == 0:
                    del self.moved[conn]
                continue
            if conn.state == CLOSED:
                self.stale -= 1
                continue
            conn.flags &= ~F_EXPIRES
            yield conn
