"""A channel's history for the API: what its sequencer holds after a ``seq``, with the sequence's epoch.

Theory of operation.  The history of a channel is its replay window, read rather than subscribed to, so it
lives where the channel is sequenced; :meth:`History.read` asks there and hands back one :data:`Page`:

* **One node** (no bus): the owner worker (:func:`routes.owner_of`) holds the channel's ``seq`` and replay
  buffer (:mod:`sequencer`).  This worker reads them itself when it is the owner, else asks the owner
  through the control plane (``Control.ask``, kind ``history``).  The epoch is the sequencer's
  (:meth:`Sequencer.epoch`): another after a restart of the owner or an eviction of the channel.
* **With a bus** the broker sequences: the bridge thread reads the stream (``Control.query_broker``,
  :meth:`brokers.backend.Backend.history`), epoch from when the broker's sequence began.

Either way: at most ``limit`` messages with ``seq`` after ``since``, in order; ``first`` is the oldest
``seq`` held (``seq + 1`` when none is), so ``first > since + 1`` tells a reader it missed messages that
are gone; a ``since`` beyond ``seq`` belongs to an earlier sequence (the reader's epoch differs) and is
answered from the oldest message held, ``reset`` True.  Nothing is created by a read: a channel never
sequenced has ``seq`` 0, no epoch, nothing held.

An answer from the owner worker crossed a process boundary: every field is checked (:func:`checked_page`)
and one that fails is an error, never a half-believed page.  An answer between workers is bounded by
``--control-max-bytes``: the owner stops adding messages before the budget (but always sends one), and the
reader pages on with ``since`` = the last ``seq`` it got.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import islice
from typing import Any

from ..core.reactor import monotonic
from ..jsonsafe import MAX_SAFE_INTEGER, dump
from .control import ENVELOPE, Control
from .records import valid_internal

# (seq, epoch or None, first, reset, [(seq, data), ...]): data is one compact JSON document, checked.
Page = tuple[int, str | None, int, bool, list[tuple[int, bytes]]]
Read = Callable[[Page | None, str], None]  # done(page, error): error "" with a page

_EPOCH_RE = re.compile(r"[0-9a-f]{16}\Z")
PER_MESSAGE = 32  # bytes of a message's frame in an answer ([seq, ...],) beyond its data: the budget's margin


class History:
    """Reads of channels' histories for one worker.  ``hub``: its :class:`channels.Hub`; ``control``: its
    :class:`control.Control` (which gets the ``history`` handler here)."""

    def __init__(self, hub: Any, control: Control, max_limit: int) -> None:
        self.hub = hub
        self.control = control
        self.max_limit = max_limit
        self.budget = control.max_bytes - ENVELOPE - 1024  # the data an answer between workers may carry
        control.register("history", self._here)

    def read(self, channel: str, since: int, limit: int, done: Read) -> None:
        """``done(page, "")`` once with what the sequencer holds, or ``done(None, error)`` when it cannot be
        reached (the broker down, the owner worker silent past --control-timeout)."""
        if self.hub.remote is not None:  # with a bus the broker sequences
            self.control.query_broker("history", (channel, since, limit), done)
            return
        args = {"channel": channel, "since": since, "limit": limit}
        owner = self.hub.owner(channel)

        def answered(answers: list[Any], complete: bool) -> None:
            if not answers:
                done(None, "the channel's owner worker did not answer in time")
                return
            page = checked_page(answers[0], since, limit)
            done(page, "" if page is not None else "the channel's owner worker answered something malformed")

        self.control.ask(owner, "history", args, answered)

    def _here(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ``history`` handler: this worker owns the channel; its page as JSON (data as values)."""
        channel, since, limit = args.get("channel"), args.get("since"), args.get("limit")
        if not (type(channel) is str and valid_internal(channel) and type(since) is int
                and 0 <= since <= MAX_SAFE_INTEGER and type(limit) is int and 1 <= limit <= self.max_limit):
            raise ValueError(f"history: arguments out of range {args!r:.200}")
        if self.hub.owner(channel) != self.control.index:
            raise ValueError(f"history: {channel!r} is not sequenced by this worker")
        sequencer = self.hub.route.sequencer  # the mesh route's: a hub on a bus never gets here
        owned = sequencer.owned.get(channel)
        if owned is None:
            return {"seq": 0, "epoch": None, "first": 1, "reset": since > 0, "messages": []}
        buffer = owned.replay
        buffer.trim(monotonic())
        last = owned.seq
        reset = since > last
        if reset:
            since = 0
        entries = buffer.entries
        first = entries[0][0] if entries else last + 1
        messages = []
        size = 0
        for seq, _t, data in islice(entries, max(0, since + 1 - first), None):
            size += len(data) + PER_MESSAGE
            if len(messages) >= limit or (messages and size > self.budget):
                break
            messages.append([seq, json.loads(data)])  # checked where it entered: one JSON document
        return {"seq": last, "epoch": sequencer.epoch(owned), "first": first, "reset": reset, "messages": messages}


def checked_page(answer: Any, since: int, limit: int) -> Page | None:
    """The owner's answer as a :data:`Page`, every field checked against the question; None if one fails."""
    if type(answer) is not dict:
        return None
    last, epoch, first, reset, messages = (answer.get(key) for key in ("seq", "epoch", "first", "reset",
                                                                        "messages"))
    if (type(last) is not int or not 0 <= last <= MAX_SAFE_INTEGER or type(first) is not int
            or not 1 <= first <= last + 1 or type(reset) is not bool or reset != (since > last)
            or not (epoch is None or (type(epoch) is str and _EPOCH_RE.match(epoch)))
            or type(messages) is not list or len(messages) > limit):
        return None
    after = 0 if reset else since
    entries = []
    for item in messages:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not int:
            return None
        seq = item[0]
        if not max(after, first - 1) < seq <= last:
            return None
        after = seq  # strictly increasing
        entries.append((seq, dump(item[1])))
    return last, epoch, first, reset, entries
