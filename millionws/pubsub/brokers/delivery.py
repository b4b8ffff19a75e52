"""Delivery across nodes, gap-free: live messages, catch-up reads and replay answers, in the
bridge thread, per channel with a local subscriber.

Theory of operation.

**Gap-free on every node.**  The thread keeps, per channel with a local subscriber, the
last ``seq`` it handed to the worker (the cursor, :class:`base.Channel`).  A live message
is handed over only if it is ``cursor + 1``; an older one is a duplicate and dropped; a
newer one (core pub/sub lost some, or the bus was down) triggers a catch-up read of the
missing range from the stream before it.  When the range is no longer stored,
subscribers get a ``gap`` (``expired``); when the broker's sequence went backwards (its
data was lost), a ``gap`` ``unknown``.  A ``subscribe`` with ``since`` is answered by the
thread in order with the live events of that channel: the answer holds ``since+1 ..
cursor`` and every later live message follows it, so the worker needs no hold buffer.
The replays waiting for a channel are answered from one read of the stream, from the
lowest ``since`` among them (none when the channel's rule turns replay off: a ``gap``).
One task at a time brings a channel up to date (:meth:`Delivery.sync`, ``Channel.busy``);
what arrives meanwhile waits in the channel's buffer, so order never depends on task
scheduling.

**Malformed and forged records.**  Records are checked where they are read
(:func:`base.checked_entry`).  A live record with a valid seq but bad time or data is
never handed over from the live path: it triggers a catch-up, because the stream, not
the live subject, says what that seq holds.  A stored record that is malformed is skipped
without stalling the channel: the cursor moves past it and subscribers get ``gap``
``unknown`` for that one seq.  Live records that were ahead of the stream's last seq when
the thread read it were never stored (the broker publishes live only after storing) and
are dropped, so a forged future seq cannot make the thread catch up forever.  A replay
answer is cut after its last hole or malformed record (``gap`` ``unknown``).

**Interest.**  A worker subscribes to ``mws.live.C`` / ``mws:live:C`` only while it has a
local subscriber of C (each worker is a broker client; a node subscribes at most once
per worker), and unsubscribes with the last one (the commands: :mod:`backend`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...metrics import F
from .base import (
    E_GAP,
    E_MSG,
    E_REPLAY,
    GAP_EXPIRED,
    GAP_NONE,
    GAP_UNKNOWN,
    BackendBase,
    Channel,
    Entry,
    checked_entry,
    describe,
    log,
    seq_key,
    to_monotonic,
)

_RECEIVED, _CATCHUPS = F["bus_received"], F["bus_catchups"]


class Delivery(BackendBase):
    """The thread's delivery side: each channel's cursor moved only forward by one, or by a gap."""

    async def _unsubscribe(self, channel: str, sub: Any) -> None:
        try:
            await self.unsubscribe_live(channel, sub)
        except Exception as exc:
            log.debug("unsubscribe %s: %s", channel, exc)

    # -- live messages and catch-up ----------------------------------------------------------
    def on_live(self, channel: str, raw_seq: object, raw_t: object, data: object) -> None:
        """A message from the live subject; raw values are checked here (module docstring)."""
        state = self.channels.get(channel)
        if state is None:
            return
        self.c[_RECEIVED] += 1
        entry = checked_entry(raw_seq, raw_t, data, self.max_depth)
        if entry is None:
            self._malformed(1, f"a live message of {channel!r} without a valid sequence number")
            return
        seq = entry[0]
        if state.busy or state.cursor is None:
            state.buffer.append(entry)
            return
        if seq <= state.cursor:
            return  # already handed over (a catch-up read it first)
        if seq == state.cursor + 1 and entry[2] is not None:
            self._hand_over(channel, state, entry)
            return
        # Lost messages before it, or a malformed one whose stored version decides.
        state.buffer.append(entry)
        state.catchup = True
        self._spawn(self.sync(channel))

    def _hand_over(self, channel: str, state: Channel, entry: Entry) -> None:
        seq, t_wall, data = entry
        state.cursor = seq
        if data is None:  # stored but malformed: skip it, say so
            self._malformed(1, f"seq {seq} of {channel!r} is not one JSON document with a valid time")
            self.bridge.emit((E_GAP, channel, seq - 1, seq + 1, GAP_UNKNOWN))
        else:
            self.bridge.emit((E_MSG, channel, seq, data, to_monotonic(t_wall)))

    async def sync(self, channel: str) -> None:
        """Bring one channel up to date: subscribe, catch up, flush the buffer, answer replays."""
        state = self.channels.get(channel)
        if state is None or state.busy or not self.connected:
            return
        state.busy = True
        try:
            while self.connected and self.channels.get(channel) is state:
                if state.live is None:
                    state.live = await self.subscribe_live(channel)
                if state.cursor is None:
                    state.cursor = await self.last_seq(channel)  # start with the next message
                    state.catchup = False
                if state.catchup:
                    state.catchup = False
                    await self._catch_up(channel, state)
                buffered = sorted(state.buffer, key=seq_key)
                state.buffer = []
                for i, entry in enumerate(buffered):
                    if entry[0] <= state.cursor:
                        continue
                    if entry[0] != state.cursor + 1 or entry[2] is None:
                        state.buffer = buffered[i:]
                        state.catchup = True
                        break
                    self._hand_over(channel, state, entry)
                if state.catchup:
                    continue
                while state.replays:
                    await self._answer_replays(channel, state)
                if not state.buffer and not state.catchup:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection is gone (the next connect resyncs) or the broker refused
            state.catchup = state.cursor is not None
            if self.connected:  # e.g. JetStream not ready yet after a broker restart: try again
                self.log("sync", describe(exc), logging.WARNING, "bus %s: cannot bring %r up to date: %s (retrying)",
                         self.name, channel, describe(exc))
                self._spawn(self._sync_later(channel))
        finally:
            state.busy = False

    async def _sync_later(self, channel: str, delay: float = 0.5) -> None:
        await asyncio.sleep(delay)
        await self.sync(channel)

    async def _catch_up(self, channel: str, state: Channel) -> None:
        # The broker publishes live only after storing, so a live message already here
        # when the last seq is read and beyond it was never stored: forged, dropped.
        before, state.buffer = state.buffer, []
        try:
            last = await self.last_seq(channel)
        except BaseException:
            state.buffer = before + state.buffer
            raise
        ahead = sum(1 for entry in before if entry[0] > last)
        if ahead:
            self._malformed(ahead, f"live message(s) of {channel!r} beyond the stream's last seq {last}")
        state.buffer = [entry for entry in before if entry[0] <= last] + state.buffer
        cursor = state.cursor
        assert cursor is not None
        if last < cursor:  # the broker lost the channel's data and restarted its sequence
            self.bridge.emit((E_GAP, channel, cursor, last + 1, GAP_UNKNOWN))
            state.cursor = last
            state.buffer = [entry for entry in state.buffer if entry[0] > last]
            return
        if last == cursor:
            return
        self.c[_CATCHUPS] += 1
        entries = await self.fetch(channel, cursor + 1, last)
        emit = self.bridge.emit
        for entry in entries:
            seq = entry[0]
            if seq <= state.cursor:
                continue
            if seq > state.cursor + 1:  # before the first kept record: expired; later: deleted
                emit((E_GAP, channel, state.cursor, seq, GAP_EXPIRED if state.cursor == cursor else GAP_UNKNOWN))
            self._hand_over(channel, state, entry)
        if state.cursor < last:
            emit((E_GAP, channel, state.cursor, last + 1, GAP_EXPIRED if state.cursor == cursor else GAP_UNKNOWN))
            state.cursor = last

    async def _answer_replays(self, channel: str, state: Channel) -> None:
        """Answer every replay waiting for the channel from one read of the stream.

        Subscribers that come back together (a node drained, a network blip) mostly ask from the same
        ``since``; a read per request cost the broker a round trip per missing message for each of them,
        and under a reconnect storm the replays fell behind ``--replay-timeout``."""
        cursor = state.cursor
        assert cursor is not None
        waiting = list(state.replays)
        low = min(since for _req, since in waiting)
        # A channel whose rule turns replay off answers since as one node does (a gap), whatever its stream
        # holds: a broker cannot keep nothing, its stream keeps the last message (for the live path's catch-up).
        replays = self.bridge.namespaces.of(channel).replays
        entries = await self.fetch(channel, low + 1, cursor) if low < cursor and replays else []
        bad = sum(1 for entry in entries if entry[2] is None)
        if bad:
            self._malformed(bad, f"stored record(s) of {channel!r} left out of a replay")
        empty = not entries and self.nothing_stored(channel, cursor)
        for req, since in waiting:
            if empty and since == 0:  # the whole window asked for, and it holds nothing: nothing is missing
                self.bridge.emit((E_REPLAY, req, GAP_NONE, cursor + 1, []))
            else:
                self.bridge.emit(self._replay(req, since, cursor, entries))
            state.replays.popleft()  # requests that arrived during the read stay for the next round

    def nothing_stored(self, channel: str, cursor: int) -> bool:
        """The broker holds nothing of ``channel`` and ``cursor`` is only where its next seq will be above
        (:mod:`nats_shards`); never with a broker whose sequences start at 1."""
        return False

    @staticmethod
    def _replay(req: int, since: int, cursor: int, entries: list[Entry]) -> tuple:
        """The answer to a replay from ``since``; ``entries``: what the stream holds of some range ending at
        ``cursor`` that starts at or below ``since + 1``."""
        if since > cursor:
            return (E_REPLAY, req, GAP_UNKNOWN, cursor + 1, [])
        if since == cursor:
            return (E_REPLAY, req, GAP_NONE, cursor + 1, [])
        # The answer is contiguous up to the cursor: cut it after its last hole or malformed record.
        run: list[tuple[int, float, bytes]] = []
        expect = cursor
        anomaly = False
        for seq, t_wall, data in reversed(entries):
            if seq <= since:
                break
            if seq != expect or data is None:
                anomaly = True
                break
            run.append((seq, to_monotonic(t_wall), data))
            expect -= 1
        run.reverse()
        if expect == since:
            return (E_REPLAY, req, GAP_NONE, since + 1, run)
        return (E_REPLAY, req, GAP_UNKNOWN if anomaly else GAP_EXPIRED, expect + 1, run)
