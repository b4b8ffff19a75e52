"""The subscriptions of one worker: which connections hold which channel, and when the worker's interest changes.

Theory of operation:

* One relation, two views kept together: channel -> its connections (to deliver a message) and
  connection -> its channels (to count a request against its limit, and to forget a closed connection
  without scanning every channel).
* A connection holds a channel in one of two ways.  A **subscriber** (``subs``) gets every message from
  now on.  A **held** connection (``holds``) waits for the replay of what it missed; the hub keeps the
  live messages for it meanwhile and :meth:`Registry.release` makes it a subscriber once the replay is
  written.  What a hold is, this module does not look at: it keeps the object the hub gives it.  Both ways
  count alike, as a subscription against the limits and as the worker's interest.
* **Interest is per worker, not per subscriber.**  The first connection to hold a channel turns the
  worker's interest on, the last to leave turns it off: ``on_interest(channel, on)``, which the hub points
  at its route (a record to the owner worker, or a broker subscription).  That is all the rest of the node
  hears of subscribers, so a message costs one record per interested worker whatever their number.  The
  call is made before :meth:`Registry.hold` returns, so a replay request sent next follows the interest
  on the same ordered link.
* **A refusal changes nothing.**  :meth:`Registry.admit` checks a whole request (every channel new to the
  connection) against ``max_channels`` per connection and ``max_subscribers`` per worker before anything
  is added.  A connection's reserved user channel is added ``internal``: not the client's choice, so not
  counted against its per-connection limit (still against the worker's).
* Subscribers are dicts used as ordered sets: delivery follows subscription order, removal is O(1).  The
  gauges (``channels``, ``subscriptions``) follow every change in O(1), from the interest transitions.
* Nothing here knows where a channel is sequenced or what a ``seq`` is.
* The API reads it too (:meth:`Registry.page`, :meth:`Registry.holders`): one page of channels costs one
  pass over this worker's channels (no index is kept for a call that is rare next to a message), the
  connections of one channel a dict lookup.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from ..metrics import F
from .names import ChannelError
from .records import USER_PREFIX

_C_CHANNELS, _C_SUBS = F["channels"], F["subscriptions"]


def _nobody(channel: str, on: bool) -> None:
    pass


class Registry:
    """The subscriptions of one worker.  See the module docstring.

    ``counters``: the worker's counters (``WorkerStats.c``), whose gauges this keeps current.
    """

    def __init__(self, counters: list[int], max_channels: int = 100, max_subscribers: int = 2_000_000) -> None:
        self.c = counters
        self.max_channels = max_channels  # per connection
        self.max_subscribers = max_subscribers  # per worker
        self.on_interest: Callable[[str, bool], None] = _nobody
        # The hub binds ``subs`` and ``holds`` once for its hot path: they are never replaced, only changed.
        self.subs: dict[str, dict[Any, None]] = {}  # channel -> its subscribers (an ordered set)
        self.holds: dict[str, dict[Any, Any]] = {}  # channel -> connection -> its hold
        self.of_conn: dict[Any, set[str]] = {}  # connection -> its channels (subscribed or held)
        self.subscriptions = 0
        self.channel_count = 0  # channels with a subscriber or a hold: the worker's interest

    def interested(self, channel: str) -> bool:
        """Whether a connection of this worker holds ``channel`` (subscribed or held)."""
        return channel in self.subs or channel in self.holds

    def channels(self) -> set[str]:
        """Every channel this worker is interested in."""
        return self.subs.keys() | self.holds.keys()

    def page(self, after: str, prefix: str, limit: int, users: bool) -> list[tuple[str, int]]:
        """Up to ``limit`` channels held here, by name, after ``after``, starting with ``prefix`` (``users``:
        users' own channels too), each with its number of connections (subscribed or held)."""
        subs, holds = self.subs, self.holds
        names = (name for name in subs.keys() | holds.keys()
                 if name > after and name.startswith(prefix) and (users or not name.startswith(USER_PREFIX)))
        return [(name, len(subs.get(name, ())) + len(holds.get(name, ())))
                for name in heapq.nsmallest(limit, names)]

    def holders(self, channel: str) -> list[Any]:
        """The connections of this worker holding ``channel`` (subscribed or held), a snapshot."""
        return [*self.subs.get(channel, ()), *self.holds.get(channel, ())]

    def channels_of(self, conn: Any) -> set[str]:
        """The channels ``conn`` holds (the registry's own set: not to be changed)."""
        return self.of_conn.get(conn) or set()

    def admit(self, conn: Any, channels: Iterable[str], internal: bool = False) -> list[str]:
        """The channels of ``channels`` new to ``conn``, in order, once; ChannelError if they would pass a
        limit.  Changes nothing: the caller adds them (:meth:`add`, :meth:`hold`)."""
        mine = self.of_conn.get(conn)
        new = [ch for ch in dict.fromkeys(channels) if mine is None or ch not in mine]
        if not internal:
            have = len(mine) if mine else 0
            if have + len(new) > self.max_channels:
                raise ChannelError("too_many_channels",
                                   f"at most {self.max_channels} channels per connection ({have} subscribed)")
        if self.subscriptions + len(new) > self.max_subscribers:
            raise ChannelError("too_many_subscribers", "this server holds as many subscriptions as it may")
        return new

    def add(self, conn: Any, channel: str) -> None:
        """``conn`` (admitted) becomes a subscriber of ``channel``."""
        first = self._count_in(conn, channel)
        subs = self.subs.get(channel)
        if subs is None:
            self.subs[channel] = subs = {}
        subs[conn] = None
        if first:
            self.on_interest(channel, True)

    def hold(self, conn: Any, channel: str, hold: Any) -> None:
        """``conn`` (admitted) waits for its replay of ``channel``; ``hold`` is what the caller keeps for it."""
        first = self._count_in(conn, channel)
        holds = self.holds.get(channel)
        if holds is None:
            self.holds[channel] = holds = {}
        holds[conn] = hold
        if first:
            self.on_interest(channel, True)

    def release(self, conn: Any, channel: str) -> None:
        """The held ``conn`` becomes a subscriber (its replay is written); interest and counts stay."""
        holds = self.holds[channel]
        del holds[conn]
        if not holds:
            del self.holds[channel]
        subs = self.subs.get(channel)
        if subs is None:
            self.subs[channel] = subs = {}
        subs[conn] = None

    def remove(self, conn: Any, channels: Iterable[str]) -> list[Any]:
        """``conn`` leaves ``channels`` (those it does not hold are skipped); the holds it had among them,
        whose replay is now for nobody."""
        mine = self.of_conn.get(conn)
        if not mine:
            return []
        cancelled = []
        for channel in channels:
            if channel not in mine:
                continue
            mine.discard(channel)
            self.subscriptions -= 1
            subs = self.subs.get(channel)
            if subs is not None and subs.pop(conn, 0) is None and not subs:
                del self.subs[channel]
            holds = self.holds.get(channel)
            if holds is not None:
                hold = holds.pop(conn, None)
                if hold is not None:
                    cancelled.append(hold)
                if not holds:
                    del self.holds[channel]
            if channel not in self.subs and channel not in self.holds:
                self.channel_count -= 1
                self.on_interest(channel, False)
        if not mine:
            del self.of_conn[conn]
        self._gauges()
        return cancelled

    def drop(self, conn: Any) -> list[Any]:
        """``conn`` closed: it leaves every channel (idempotent).  Its cancelled holds, as :meth:`remove`."""
        mine = self.of_conn.get(conn)
        return self.remove(conn, list(mine)) if mine else []

    def _count_in(self, conn: Any, channel: str) -> bool:
        """Count ``conn`` in ``channel``; whether it is the channel's first here (the caller turns interest on
        once the connection is in its table)."""
        mine = self.of_conn.get(conn)
        if mine is None:
            self.of_conn[conn] = mine = set()
        mine.add(channel)
        self.subscriptions += 1
        first = channel not in self.subs and channel not in self.holds
        if first:
            self.channel_count += 1
        self._gauges()
        return first

    def _gauges(self) -> None:
        c = self.c
        c[_C_CHANNELS] = self.channel_count
        c[_C_SUBS] = self.subscriptions
