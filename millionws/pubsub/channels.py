"""Channels on one node: names, sequencing, replay, interest, and who gets which message.

Theory of operation (everything that decides a ``seq`` or a recipient lives here):

* **One sequencer per channel.**  The owner of a channel is worker
  ``crc32(name) % workers``.  Only the owner assigns ``seq`` (1, 2, 3, ... with no gap)
  and keeps the replay buffer (:class:`sequencer.ReplayBuffer`: the last ``replay_seconds`` and at
  most ``replay_max_messages``).  A publish accepted by another worker is forwarded to
  the owner (``PUB``) with the time it was accepted.
* **Interest-based fan-out.**  A worker tells a channel's owner when it gets its first
  local subscriber for the channel (``INTEREST``) and when it loses its last one
  (``UNINTEREST``).  The owner sends each sequenced message (``MSG``) only to the
  workers interested in it, then delivers to its own subscribers.
* **Encode once.**  A worker turns a message into one WebSocket frame and hands the same
  bytes to every local subscriber (``fanout``): the cost per subscriber is one ``write``.
* **Replay without gap or duplicate.**  ``subscribe`` with ``since``: on the owner, the
  missed messages are read from the buffer and written before any live one (same
  process, no race).  On another worker the connection is *held*: it is not yet a
  subscriber, live messages for the channel are kept for it, and the owner is asked
  for the messages after ``since`` (``REPLAY_REQ``, sent after ``INTEREST`` on the same
  ordered link).  The owner answers with the buffered messages up to its latest ``seq``
  (``REPLAY``); the worker writes them, then the held messages with a greater ``seq``,
  and the connection becomes a subscriber.  When ``since`` is older than the buffer the
  connection first gets a ``gap`` reply naming the first ``seq`` it will see.
* **Restarts.**  A worker announces itself on start (``HELLO``); its peers then forget
  its old interest and tell it again which of its channels they are interested in, and
  re-ask the replay requests that were waiting for it.  The sequence of a channel owned
  by a restarted worker starts again at 1 (a ``since`` beyond it gets ``gap`` with reason
  ``unknown``): persistence across restarts is the job of an external bus.
* Idle channels are forgotten: the owner drops a channel's state once it has no
  subscriber on any worker and its last message left the replay window (``sweep``,
  counted in ``channels_evicted``); its sequence then starts again at 1 (a ``since``
  beyond it gets ``gap`` ``unknown``), so memory follows the live channels, not every
  name ever used.
* Across nodes (``--bus``, :mod:`broker`): the broker numbers the messages instead of the
  owner worker.  Every worker publishes to the broker and subscribes to it for the
  channels it has subscribers of; the owner, the mesh and the local replay buffer are
  not used for channels then.  Replay answers come from the broker's stream, in order
  with the live messages, so a subscriber with ``since`` is never *held* for live ones.
* Users: a connection that carries a user id is subscribed to the reserved channel
  ``@user:<id>``; ``@`` is outside the client charset, so no client can subscribe to
  another user's channel (its own it may name, to resume it with ``since``).
* **Acknowledged in order.**  A publish that wants an answer carries a request number;
  the answer (``done(seq, error, reach)``) comes only once the sequencer assigned its
  ``seq``: at once on the owner, through ``PUBACK`` from another worker, through the
  broker's acknowledgement with ``--bus``.  So a publish sent after another was
  acknowledged is sequenced after it, from any connection or worker.  No answer within
  ``publish_timeout`` seconds: ``publish_timeout`` (the outcome is unknown); the broker
  away: ``unavailable`` at once (nothing was published).  The table of waiting answers is
  swept by the same deadline, as are replay requests whose answer never comes (a hold
  past ``replay_timeout`` gets ``gap`` ``unknown`` and becomes a plain subscriber).
* Records are input like any other: :meth:`Hub.on_record` has :func:`records.decode` check
  sizes, ranges and names, then checks what only it can (the sender, the channel's owner),
  before anything reaches the tables; what does not fit is dropped and counted.  The
  message data inside is carried as opaque bytes: it was checked where it entered the
  node (:mod:`jsonsafe`), and the frame it goes into cannot be broken by it.

Records between workers (PUB, PUBACK, MSG, INTEREST/UNINTEREST, REPLAY_REQ, REPLAY, HELLO): their
layout, and the check of every one received, are :mod:`records`.
"""

from __future__ import annotations

import logging
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from ..metrics import F, WorkerStats
from ..protocol.websocket import encode_frame
from . import records
from .names import ChannelError, user_channel, valid_channel, valid_user
from .pending import Done, Hold, Pending
from .records import (
    GAP_NONE,
    GAP_REASONS,
    GAP_UNKNOWN,
    REFUSED_CHANNEL_LIMIT,
    T_HELLO,
    T_INTEREST,
    T_MSG,
    T_PUB,
    T_PUBACK,
    T_REPLAY,
    T_REPLAY_REQ,
    T_UNINTEREST,
)
from .registry import Registry
from .sequencer import Entry, Sequencer

# What the apps layer uses of pubsub, importable from here whichever module of pubsub defines it.
__all__ = ["ChannelError", "Done", "Hub", "gap_frame", "message_frame", "owner_of", "user_channel", "valid_channel",
           "valid_user"]

log = logging.getLogger("millionws.pubsub.channels")

_C_PUBLISHES, _C_DELIVERIES, _C_MSG_OUT = F["publishes"], F["deliveries"], F["messages_out"]
_C_REPLAY_HITS, _C_REPLAY_MISSES = F["replay_hits"], F["replay_misses"]
_C_EVICTED = F["channels_evicted"]
_C_MALFORMED = F["dropped_mesh_malformed"]

monotonic = time.monotonic


def owner_of(channel: str, workers: int) -> int:
    """The worker that sequences ``channel``: stable for a given number of workers."""
    return zlib.crc32(channel.encode()) % workers


def message_frame(channel: str, seq: int, data: bytes) -> bytes:
    """The one frame every subscriber of this worker gets for a message (names need no escaping)."""
    payload = b'{"op":"message","channel":"%s","seq":%d,"data":%s}' % (channel.encode(), seq, data)
    return encode_frame(1, payload)


def reply_frame(document: bytes) -> bytes:
    return encode_frame(1, document)


def gap_frame(channel: str, since: int, first: int, reason: int) -> bytes:
    return encode_frame(1, b'{"op":"gap","channel":"%s","since":%d,"first":%d,"reason":"%s"}'
                        % (channel.encode(), since, first, GAP_REASONS[reason].encode()))


class Hub:
    """Channel state of one worker.  See the module docstring.

    ``send(dest, record)``: queue a record for another worker (the local bus).
    ``write(conn, data)``: the worker's write path for one connection.
    ``fanout(conns, frame)``: the same frame to many connections (slow-consumer policy inside).
    """

    def __init__(self, index: int, workers: int, send: Callable[[int, bytes], None],
                 write: Callable[[Any, bytes], None], fanout: Callable[[Iterable[Any], bytes], int],
                 stats: WorkerStats, replay_seconds: float = 120.0, replay_max_messages: int = 1000,
                 max_channels_per_connection: int = 100, max_subscribers: int = 2_000_000,
                 publish_timeout: float = 5.0, replay_timeout: float = 10.0,
                 call_later: Callable[[float, Callable[[], None]], None] | None = None,
                 replay_max_bytes: int = 4 << 20, max_owned: int = 2_000_000) -> None:
        self.index = index
        self.workers = workers
        self.send = send
        self.write = write
        self.fanout = fanout
        self.stats = stats
        self.c = stats.c
        self.replay_seconds = replay_seconds
        self.replay_max_messages = replay_max_messages
        self.sequencer = Sequencer(replay_seconds, replay_max_messages, replay_max_bytes, max_owned)
        self.registry = Registry(self.c, max_channels_per_connection, max_subscribers)
        self.registry.on_interest = self._interest_changed
        self._subs, self._holds = self.registry.subs, self.registry.holds  # bound once: the delivery path
        self.pending = Pending(self.c, publish_timeout, replay_timeout, call_later, self._hold_expired)
        self.remote: Any = None  # broker.Bridge with --bus

    def connect_bus(self, url: str, reactor: Any, **limits: Any) -> None:
        """Number and carry messages through a broker shared by the nodes (see :mod:`broker`);
        ``limits`` are the ``--bus-*`` bounds, as :class:`broker.Bridge` names them."""
        from .broker import Bridge

        self.remote = Bridge(url, reactor, self.c, self.on_bus_event, self.replay_seconds, self.replay_max_messages,
                             **limits)

    def start_bus(self) -> None:
        if self.remote is not None:
            self.remote.start()

    # -- helpers -----------------------------------------------------------------------
    def owner(self, channel: str) -> int:
        return owner_of(channel, self.workers)

    def _mine(self, channel: str) -> str:
        """``channel`` if this worker sequences it: a record about another's channel is malformed."""
        if self.owner(channel) != self.index:
            raise ValueError(f"{channel!r} belongs to worker {self.owner(channel)}")
        return channel

    @property
    def max_channels(self) -> int:
        """Channels one connection may hold (the apps layer refuses a longer list before asking)."""
        return self.registry.max_channels

    def _interest_changed(self, channel: str, on: bool) -> None:
        if self.remote is not None:
            self.remote.interest(channel, on)
            return
        owner = self.owner(channel)
        if owner != self.index:
            self.send(owner, records.interest(channel, on))

    def expire(self, now: float) -> None:
        """Answer the publishes and replays whose answer did not come in time."""
        self.pending.expire(now)

    def _hold_expired(self, hold: Hold) -> None:
        """The replay of ``hold`` never came: a gap, what was kept meanwhile, then a plain subscriber."""
        first = hold.held[0][0] if hold.held else hold.since + 1
        self._resolve(hold, GAP_UNKNOWN, first, hold.held)

    # -- the client's operations ---------------------------------------------------------
    def publish(self, channel: str, data: bytes, t0: float, done: Done | None = None) -> None:
        """Accept a message (``data``: one JSON document, UTF-8, checked) for ``channel``.

        ``done`` is called once with the outcome (see ``Done``); without it nothing is answered.
        """
        self.c[_C_PUBLISHES] += 1
        if self.remote is not None:
            if not self.remote.up:
                if done is not None:
                    done(0, "unavailable", -1)
                return
            req = self.pending.track(done) if done is not None else self.pending.new_req()
            self.remote.publish(channel, data, t0, req)
            return
        owner = self.owner(channel)
        if owner == self.index:
            try:
                seq, reach = self._sequence(channel, data, t0)
            except ChannelError:
                if done is not None:
                    done(0, "channel_limit", -1)
                return
            if done is not None:
                done(seq, "", reach)
            return
        req = self.pending.track(done) if done is not None else 0
        self.send(owner, records.pub(t0, req, channel, data))

    def subscribe(self, conn: Any, channels: list[str], since: dict[str, int] | None = None,
                  internal: bool = False, ack: bytes = b"") -> None:
        """Subscribe ``conn``: write ``ack``, then any replay.  Raises ChannelError, changing nothing."""
        registry = self.registry
        new = registry.admit(conn, channels, internal)
        if ack:
            self.write(conn, ack)  # before any replayed message
        for channel in new:
            after = None if since is None else since.get(channel)
            if after is None or (self.remote is None and self.owner(channel) == self.index):
                if after is not None:
                    self._replay_local(conn, channel, after)
                registry.add(conn, channel)
            else:
                hold = Hold(conn, channel, after)
                registry.hold(conn, channel, hold)  # interest first: the request follows on the same link
                self._request(hold)

    def unsubscribe(self, conn: Any, channels: Iterable[str]) -> None:
        for hold in self.registry.remove(conn, channels):
            hold.conn = None  # its replay, when it comes, is for nobody

    def drop(self, conn: Any) -> None:
        """``conn`` closed: forget every subscription of it (idempotent)."""
        for hold in self.registry.drop(conn):
            hold.conn = None

    # -- sequencing and delivery ---------------------------------------------------------
    def _sequence(self, channel: str, data: bytes, t0: float) -> tuple[int, int]:
        """Number a message and send it on; ``(seq, reach)``."""
        owned = self.sequencer.number(channel, data)
        if owned is None:
            raise ChannelError("channel_limit", "this server sequences as many channels as it may; retry later",
                               channel)
        seq = owned.seq
        if owned.interest:
            record = records.msg(t0, seq, channel, data)  # one record for every worker
            for worker in owned.interest:
                self.send(worker, record)
        reach = 1 if owned.interest or channel in self._subs or channel in self._holds else 0
        self._deliver(channel, seq, data, t0)
        return seq, reach

    def _deliver(self, channel: str, seq: int, data: bytes, t0: float) -> None:
        holds = self._holds.get(channel)
        if holds is not None:
            for hold in holds.values():
                hold.held.append((seq, t0, data))
        subs = self._subs.get(channel)
        if not subs:
            return
        frame = message_frame(channel, seq, data)
        # A snapshot: a write may close a connection, whose on_close changes ``subs``.
        delivered = self.fanout(tuple(subs), frame)
        c = self.c
        c[_C_DELIVERIES] += delivered
        c[_C_MSG_OUT] += delivered
        self.stats.observe_fanout(monotonic() - t0)

    def _replay_local(self, conn: Any, channel: str, since: int) -> None:
        _, reason, first, entries = self.sequencer.after(channel, since)
        self._write_replay(conn, channel, since, reason, first, entries)

    def _write_replay(self, conn: Any, channel: str, since: int, reason: int, first: int,
                      entries: list[Entry]) -> None:
        c = self.c
        if reason != GAP_NONE:
            c[_C_REPLAY_MISSES] += 1
            self.write(conn, gap_frame(channel, since, first, reason))
        else:
            c[_C_REPLAY_HITS] += 1
        if entries:
            self.write(conn, b"".join(message_frame(channel, seq, data) for seq, _t, data in entries))
            c[_C_DELIVERIES] += len(entries)
            c[_C_MSG_OUT] += len(entries)

    def _request(self, hold: Hold) -> None:
        req = self.pending.wait(hold)
        if self.remote is not None:
            self.remote.replay(req, hold.channel, hold.since)
            return
        self.send(self.owner(hold.channel), records.replay_req(req, hold.since, hold.channel))

    # -- records from the other workers ----------------------------------------------------
    def hello(self) -> None:
        """Announce this (possibly restarted) worker to its peers."""
        for worker in range(self.workers):
            if worker != self.index:
                self.send(worker, records.HELLO)

    def on_record(self, src: int, record: memoryview) -> None:
        """One record from worker ``src``.  Malformed: dropped and counted, nothing changed."""
        try:
            self._on_record(src, record)
        except (struct.error, ValueError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
            self.c[_C_MALFORMED] += 1
            if self.c[_C_MALFORMED] & (self.c[_C_MALFORMED] - 1) == 0:  # 1, 2, 4, 8 ...: a trace, not a flood
                log.warning("worker %d: malformed record from worker %d dropped (%s)", self.index, src, exc)

    def _on_record(self, src: int, record: memoryview) -> None:
        if not 0 <= src < self.workers or src == self.index:
            raise ValueError(f"no such peer {src}")
        fields = records.decode(record)  # every field checked before anything changes here
        kind = fields[0]
        if kind == T_MSG:
            _, channel, seq, data, t0 = fields
            self._deliver(channel, seq, data, t0)
        elif kind == T_PUB:
            _, channel, req, data, t0 = fields
            self._mine(channel)
            try:
                seq, reach = self._sequence(channel, data, t0)
            except ChannelError:
                seq, reach = 0, REFUSED_CHANNEL_LIMIT
            if req:
                self.send(src, records.puback(req, seq, reach))
        elif kind == T_PUBACK:
            _, req, seq, reach = fields
            if reach == REFUSED_CHANNEL_LIMIT:
                self.pending.acked(req, 0, "channel_limit", -1)
            else:
                self.pending.acked(req, seq, "", 1 if reach else 0)
        elif kind == T_INTEREST:
            self.sequencer.interest(self._mine(fields[1]), src, True)
        elif kind == T_UNINTEREST:
            self.sequencer.interest(self._mine(fields[1]), src, False)
        elif kind == T_REPLAY_REQ:
            _, req, since, channel = fields
            self._answer_replay(src, req, since, self._mine(channel))
        elif kind == T_REPLAY:
            self._on_replay(*fields[1:])
        elif kind == T_HELLO:
            self._on_hello(src)

    def _answer_replay(self, src: int, req: int, since: int, channel: str) -> None:
        last, reason, first, entries = self.sequencer.after(channel, since)
        self.send(src, records.replay(req, reason, first, last, channel, entries))

    def _on_replay(self, req: int, reason: int, first: int, last: int, channel: str,
                   entries: list[Entry]) -> None:
        hold = self.pending.requests.get(req)
        if hold is None:
            return  # timed out, or asked of this worker's previous incarnation
        if hold.channel != channel:
            raise ValueError(f"replay {req} names {channel!r}, not {hold.channel!r}")
        del self.pending.requests[req]
        if hold.conn is None:
            return  # unsubscribed or closed meanwhile
        # Live messages kept meanwhile: only those the owner sequenced after its answer.
        newest = entries[-1][0] if entries else max(last, first - 1)
        entries.extend(m for m in hold.held if m[0] > newest)
        self._resolve(hold, reason, first, entries)

    def _resolve(self, hold: Hold, reason: int, first: int, entries: list[Entry]) -> None:
        """Write the replay of a held connection, then make it a subscriber."""
        conn, channel = hold.conn, hold.channel
        self._write_replay(conn, channel, hold.since, reason, first, entries)
        self.registry.release(conn, channel)

    def _on_hello(self, src: int) -> None:
        if self.remote is not None:
            return  # with a bus, workers do not depend on each other for channels
        self.sequencer.forget(src)
        for channel in self.registry.channels():
            if self.owner(channel) == src:
                self.send(src, records.interest(channel, True))
        requests = self.pending.requests
        for req, hold in list(requests.items()):
            if self.owner(hold.channel) == src:
                del requests[req]
                if hold.conn is not None:
                    self._request(hold)  # the old answer will not come; the new owner answers

    def sweep(self, now: float) -> None:
        """Let time expire buffered messages; forget channels idle past the replay window."""
        self.c[_C_EVICTED] += self.sequencer.sweep(now, self.registry.interested)

    # -- events of the broker bridge (--bus) ------------------------------------------------
    def on_bus_event(self, event: tuple) -> None:
        from .broker import E_ACK, E_GAP, E_MSG, E_REPLAY

        kind = event[0]
        if kind == E_ACK:
            _, req, seq, error = event
            self.pending.acked(req, seq, "unavailable" if error else "", -1)
            return
        if kind == E_MSG:
            _, channel, seq, data, t0 = event
            self._deliver(channel, seq, data, t0)
        elif kind == E_REPLAY:
            _, req, reason, first, entries = event
            hold = self.pending.requests.pop(req, None)
            if hold is not None and hold.conn is not None:
                self._resolve(hold, reason, first, entries)
        elif kind == E_GAP:  # the broker could not give back what its live path lost
            _, channel, last, first, reason = event
            subs = self._subs.get(channel)
            if subs:
                self.fanout(tuple(subs), gap_frame(channel, last, first, reason))

