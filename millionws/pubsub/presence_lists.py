"""Presence lists: up to ``limit`` members of a channel, gathered from every worker that has some.

Theory of operation:

* A list is asked by ``presence_list`` (a client) or ``GET /channels/{c}/presence`` (a backend) on any
  worker.  That worker's own part is read at once (:meth:`presence.Presence.local_list`); the others are
  asked with one LIST_REQ (:mod:`presence_records`) and answer with at most ``limit`` members each, their
  count, and the sources they know to have members.
* **Whom to wait for.**  On one node every other worker answers (the mesh reaches them all), so the list is
  complete after ``peers`` answers.  Over a bus the request reaches the workers that follow the channel
  (those with members): the requester waits for the sources its own room knows of, or, if it has no member
  of the channel, for those the first answer names.  Whatever has not answered within ``timeout`` is left
  out and the answer says ``partial``.
* The members are merged in the order the answers come, cut at ``limit``; ``count`` is the sum of the
  counts answered, so ``truncated`` (``count`` > members listed) is exact for what answered.
* **Bounded.**  At most ``max_pending`` lists wait at once per worker (beyond: ``rate_limited``), each for at
  most ``timeout``, each holding at most ``limit`` members.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..config import DEFAULTS
from . import presence_records as wire
from .names import ChannelError

# done(count, members, truncated, partial): members are (user, client) pairs.
Done = Callable[[int, list[wire.Member], bool, bool], None]


class Gather:
    """One list waiting for answers."""

    __slots__ = ("answered", "count", "done", "expected", "limit", "members", "peers_left")

    def __init__(self, limit: int, done: Done, count: int, members: list[wire.Member]) -> None:
        self.limit = limit
        self.done = done
        self.count = count
        self.members = members
        self.answered: set[str] = set()
        self.expected: set[str] | None = None  # over a bus: the sources to wait for (None: not known yet)
        self.peers_left = 0  # on a mesh: answers still to come


class Lists:
    """The lists this worker asked for.  See the module docstring.

    ``link``: :class:`presence.Link`; ``call_later``: the reactor's timer (None: lists end only by answers).
    """

    def __init__(self, counters: list[int], link: Any, source: str,
                 call_later: Callable[[float, Callable[[], None]], None] | None = None,
                 timeout: float = DEFAULTS.presence_list_timeout,
                 max_pending: int = DEFAULTS.presence_max_lists) -> None:
        self.c = counters
        self.link = link
        self.source = source
        self.call_later = call_later
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending: dict[int, Gather] = {}
        self._next_req = 1

    def start(self, channel: str, limit: int, local: tuple[int, list[wire.Member], bool, list[str]], done: Done,
              known: bool) -> None:
        """Gather a list: ``local`` is this worker's part (:meth:`presence.Presence.local_list`); ``known``:
        this worker has members of the channel, so its ``sources`` are whom to wait for over a bus."""
        count, members, _truncated, sources = local
        peers = self.link.peers
        if peers == 0 or (peers is None and known and not sources):
            done(count, members, len(members) < count, False)  # nobody else has members
            return
        if len(self.pending) >= self.max_pending:
            raise ChannelError("rate_limited", f"{self.max_pending} presence lists are in flight on this worker: "
                                               "retry later", channel)
        req = self._next_req
        self._next_req = req + 1 if req < 0xFFFFFFFF else 1
        gather = Gather(limit, done, count, members)
        if peers is None:
            gather.expected = set(sources) if known else None
        else:
            gather.peers_left = peers
        self.pending[req] = gather
        self.link.to_channel(channel, wire.list_req(self.source, req, limit, channel))
        if self.call_later is not None:
            self.call_later(self.timeout, partial(self._expire, req))

    def on_answer(self, source: str, channel: str, req: int, count: int, truncated: bool, sources: list[str],
                  members: list[wire.Member]) -> None:
        """One answer (LIST_ANS) from ``source``: merged, and the list given once every answer is in."""
        gather = self.pending.get(req)
        if gather is None or source in gather.answered:
            return  # timed out, asked by this worker's previous incarnation, or a duplicate
        gather.answered.add(source)
        gather.count += count
        room = gather.limit - len(gather.members)
        if room > 0:
            gather.members.extend(members[:room])
        if gather.expected is None and self.link.peers is None:
            gather.expected = set(sources)
        if gather.expected is not None:
            gather.expected.discard(self.source)
            complete = gather.expected <= gather.answered
        else:
            gather.peers_left -= 1
            complete = gather.peers_left <= 0
        if complete:
            del self.pending[req]
            gather.done(gather.count, gather.members, len(gather.members) < gather.count, False)

    def _expire(self, req: int) -> None:
        gather = self.pending.pop(req, None)
        if gather is None:
            return
        if self.link.peers is None:  # over a bus, silence from nobody named means nobody else has members
            missing = gather.expected is not None and not gather.expected <= gather.answered
        else:
            missing = gather.peers_left > 0
        gather.done(gather.count, gather.members, len(gather.members) < gather.count, missing)
