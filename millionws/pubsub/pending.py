"""What a worker waits for from a sequencer elsewhere, each wait with its deadline.

Theory of operation:

* Two things wait for another process: the answer to a publish (``done``), and the replay a *held*
  connection needs before it becomes a subscriber (:class:`Hold`).  Each gets a request number, and
  the answer that carries it (``PUBACK`` / ``REPLAY`` from the owner worker, ``E_ACK`` / ``E_REPLAY``
  from the broker) finds it here.  A publish sequenced in this very process is answered at once and
  never waits.
* **Acknowledged in order.**  ``done(seq, error, reach)`` is called only once the sequencer assigned
  the message its ``seq``, so a publish sent after another was acknowledged is sequenced after it,
  from any connection or worker.
* **Every wait ends.**  No answer within ``publish_timeout``: ``done(0, "publish_timeout", -1)``, the
  outcome unknown (the message may have been sequenced).  No replay within ``replay_timeout``:
  ``on_hold_expired(hold)``, and the hub gives that connection ``gap`` ``unknown`` and what it kept
  meanwhile.  When it kept nothing, the answer can still be placed if it comes before any other message
  of the channel (it precedes them on its way here): ``on_hold_expired`` then returns True and the
  request waits one more ``replay_timeout`` (``hold.late``), after which it is given up for good.  An
  answer that comes after its deadline finds nothing and is ignored; so is the replay of a connection
  that left meanwhile (the registry or the hub cancelled its hold: ``hold.conn`` is None).
* Each timeout is one constant, so deadlines arrive in the order they were set: a deque per kind, not
  a heap.  One reactor timer (0.1 s) runs while anything waits, and comes again even when an answer
  raised, so that one bug does not leave the others waiting forever.
* Request numbers are 32 bits (what the records carry), never 0 (PUB's "no answer wanted"), and wrap:
  a number comes back after 4 billion requests, long past its deadline.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import DEFAULTS
from ..metrics import F
from .sequencer import Entry

_C_PENDING, _C_HOLDS_EXPIRED = F["publishes_pending"], F["replay_holds_expired"]

# done(seq, error, reach): the answer to a publish.  error "" (sequenced as seq; seq 0 when the
# broker stored it earlier and cannot say which), "unavailable", "publish_timeout" or
# "channel_limit" (the owner holds --max-channels-per-worker channels already).  reach: 1 if
# the channel had a subscriber on this node when sequenced, 0 if not, -1 unknown (with a bus).
Done = Callable[[int, str, int], None]

monotonic = time.monotonic


class Hold:
    """A connection waiting for its replay of ``channel`` after ``since``, and the live messages meanwhile."""

    __slots__ = ("conn", "channel", "since", "held", "late")

    def __init__(self, conn: Any, channel: str, since: int) -> None:
        self.conn: Any = conn  # None once it left: the replay is then for nobody
        self.channel = channel
        self.since = since
        self.held: list[Entry] = []
        self.late = False  # past its first deadline: the connection is a subscriber, told gap unknown


class Pending:
    """The publishes and replays a worker waits for.  See the module docstring.

    ``call_later(delay, fn)``: the reactor's timer (None: only explicit :meth:`expire` calls end waits).
    """

    def __init__(self, counters: list[int], publish_timeout: float = DEFAULTS.publish_timeout,
                 replay_timeout: float = DEFAULTS.replay_timeout,
                 call_later: Callable[[float, Callable[[], None]], None] | None = None,
                 on_hold_expired: Callable[[Hold], bool | None] | None = None) -> None:
        self.c = counters
        self.publish_timeout = publish_timeout
        self.replay_timeout = replay_timeout
        self.on_hold_expired = on_hold_expired
        self.acks: dict[int, Done] = {}  # publish request -> its answer, until sequenced or timed out
        self.requests: dict[int, Hold] = {}  # replay request -> the connection waiting for it
        self._next_req = 1
        self._ack_deadlines: deque[tuple[float, int]] = deque()  # (deadline, request), in deadline order
        self._hold_deadlines: deque[tuple[float, int]] = deque()
        self._call_later = call_later
        self._expiry_scheduled = False

    def new_req(self) -> int:
        req = self._next_req
        self._next_req = req + 1 if req < 0xFFFFFFFF else 1
        return req

    def track(self, done: Done) -> int:
        """A request number for a publish whose answer ``done`` waits for its ``seq``."""
        req = self.new_req()
        self.acks[req] = done
        self._ack_deadlines.append((monotonic() + self.publish_timeout, req))
        self.c[_C_PENDING] = len(self.acks)
        self._expire_soon()
        return req

    def acked(self, req: int, seq: int, error: str, reach: int) -> None:
        """The answer to publish ``req`` came: give it to its ``done``, unless that timed out already."""
        done = self.acks.pop(req, None)
        if done is not None:
            self.c[_C_PENDING] = len(self.acks)
            done(seq, error, reach)

    def wait(self, hold: Hold) -> int:
        """A request number for the replay ``hold`` waits for."""
        req = self.new_req()
        self.requests[req] = hold
        self._hold_deadlines.append((monotonic() + self.replay_timeout, req))
        self._expire_soon()
        return req

    def expire(self, now: float) -> None:
        """Answer the publishes and replays whose answer did not come in time."""
        deadlines = self._ack_deadlines
        while deadlines and deadlines[0][0] <= now:
            done = self.acks.pop(deadlines.popleft()[1], None)
            if done is not None:
                done(0, "publish_timeout", -1)
        self.c[_C_PENDING] = len(self.acks)
        deadlines = self._hold_deadlines
        while deadlines and deadlines[0][0] <= now:
            req = deadlines.popleft()[1]
            hold = self.requests.pop(req, None)
            if hold is not None and hold.conn is not None:
                if not hold.late:
                    self.c[_C_HOLDS_EXPIRED] += 1
                if self.on_hold_expired is not None and self.on_hold_expired(hold):
                    self.requests[req] = hold  # its answer may still be placed: one more timeout
                    deadlines.append((now + self.replay_timeout, req))

    def _expire_soon(self) -> None:
        if not self._expiry_scheduled and self._call_later is not None:
            self._expiry_scheduled = True
            self._call_later(0.1, self._expire_tick)

    def _expire_tick(self) -> None:
        self._expiry_scheduled = False
        try:
            self.expire(monotonic())
        finally:  # even if an answer raised: the others must still get theirs
            if self._ack_deadlines or self._hold_deadlines:
                self._expire_soon()
