"""Publishing across nodes: the outbox of the bridge thread and the one answer per publish.

Theory of operation.

**A publish is acknowledged with its seq.**  ``Bridge.publish(channel, data, t0, req)`` is
answered exactly once with ``(E_ACK, req, seq, error)``:

* ``seq >= 1, error == ""``: the broker stored it as that seq of the channel (NATS: the
  PubAck; Redis: what ``mws_publish`` returned).
* ``seq == 0, error == ""``: stored, seq unknown.  Part of the contract for a broker that
  answers a retry without the original seq; NATS and Redis as used here always give it.
* ``seq == 0, error == "unavailable: …"``: not stored; the client may retry.

The thread publishes the outbox in order, in batches of ``--bus-publish-batch`` on one
connection, one batch at a time, and answers each message in outbox order
(:meth:`Outbox._settle`): an answer never overtakes an earlier publish's, so a client's
acks come back in the order it published.

**Outage policy: nothing is parked silently.**  A message is *sent* once it went into a
batch, whether or not the broker answered.  A publish that reaches the thread while the
connection is down, and every message still unsent in the outbox when the connection
drops, is answered ``unavailable`` at once: it was never written, so a retry cannot
duplicate it.  Sent and unanswered messages may be stored: they stay at the head of the
outbox and are sent again first after reconnecting, the broker's de-duplication (each
message carries the publisher id and its number, :class:`base.Pending`) stores them once
and answers with the original seq.  De-duplication lasts a window (NATS: the replay window
capped at 120 s; Redis: the replay window): a message still unanswered after an outage
longer than that may be stored twice (at least once, never silently lost).  A message the
broker explicitly refused (an error answer, not a timeout: ``refused``) is sent again
``REFUSALS - 1`` times with backoff, then answered ``unavailable``, unless an earlier attempt of it went
unanswered (``Pending.unknown``: it may be stored, e.g. a PubAck lost with a dying stream leader and the
retry refused during the election); that one is sent again until acknowledged or timed out.  Beyond
``--bus-outbox-messages`` a publish is answered ``unavailable: outbox full`` and counted in
``bus_dropped`` (the commands: :mod:`backend`).  ``millionws_bus_outbox`` is the outbox depth
(sent or not, unanswered).  Should the thread itself stop (a bug), unsent publishes are
answered ``unavailable`` and sent ones are left to the worker's publish timeout: their
outcome is unknown (:mod:`bridge`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable

from ...jsonsafe import MAX_SAFE_INTEGER
from ...metrics import F
from .base import E_ACK, REFUSALS, BackendBase, Pending, describe

_SENT, _OUTBOX = F["bus_published"], F["bus_outbox"]


class Outbox(BackendBase):
    """The thread's publishing side: batches out, answers back in outbox order."""

    def _refuse_unsent(self, error: str) -> None:
        outbox = self.outbox
        refused: list[Pending] = []
        while outbox and not outbox[-1].sent:  # the sent ones are a prefix
            refused.append(outbox.pop())
        emit = self.bridge.emit
        for pending in reversed(refused):
            emit((E_ACK, pending.req, 0, error))
        self.c[_OUTBOX] = len(outbox)

    async def _publisher(self) -> None:
        ready = self._outbox_ready
        assert ready is not None
        delays = self._backoff()
        while True:
            try:
                if not self.outbox or not self.connected:
                    ready.clear()
                    await ready.wait()
                    delays = self._backoff()
                    continue
                batch = list(itertools.islice(self.outbox, self.bridge.publish_batch))
                for pending in batch:
                    pending.sent = True
                results = await self._send(batch)
                if self._settle(batch, results):
                    delays = self._backoff()
                elif self.connected:  # refused or no answer on a live connection: not too fast
                    await asyncio.sleep(next(delays))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._bug("publisher", exc)
                await asyncio.sleep(1.0)

    async def _send(self, batch: list[Pending]) -> list[int | BaseException]:
        # A task of its own, so that a lost connection can cancel it rather than wait for timeouts.
        task = asyncio.get_running_loop().create_task(self.publish_batch(batch))
        self._sending = task
        try:
            await asyncio.wait((task,))
        finally:
            self._sending = None
        if task.cancelled():
            return [ConnectionError("connection lost")] * len(batch)
        exc = task.exception()
        if exc is not None:
            return [exc] * len(batch)
        return task.result()

    def _settle(self, batch: list[Pending], results: Iterable[int | BaseException]) -> bool:
        """Answer what the broker answered, in outbox order; True when it all went through."""
        outbox = self.outbox
        emit = self.bridge.emit
        stored = 0
        answered = 0
        complete = True
        results = list(results)
        for pending, result in zip(batch, results, strict=False):
            if isinstance(result, BaseException) and not self.refused(result):
                pending.unknown = True
        for pending, result in zip(batch, results, strict=False):  # a short answer: the rest go again
            if not outbox or outbox[0] is not pending:
                complete = False
                break
            if isinstance(result, BaseException):
                if not self.refused(result):
                    complete = False  # no answer: it may be stored; sent again (stored once)
                    break
                pending.refusals += 1
                reason = describe(result)
                self.log("refused", reason, logging.WARNING, "bus %s: the broker refused a publish on %r: %s",
                         self.name, pending.channel, reason)
                # An earlier attempt went unanswered and may be stored (its acknowledgement lost with a
                # failing broker server): "unavailable" would say it was not, so it goes on being sent (stored
                # once) until acknowledged or the worker's publish timeout answers that the outcome is unknown.
                if pending.refusals < REFUSALS or pending.unknown:
                    complete = False
                    break
                outbox.popleft()
                emit((E_ACK, pending.req, 0, "unavailable: the broker refused it: " + reason))
                answered += 1
                continue
            seq = result if type(result) is int and 0 <= result <= MAX_SAFE_INTEGER else 0
            outbox.popleft()
            emit((E_ACK, pending.req, seq, ""))
            stored += 1
            answered += 1
        self.c[_SENT] += stored
        self.c[_OUTBOX] = len(outbox)
        return complete and answered == len(batch)
