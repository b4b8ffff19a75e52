"""Where a channel's sequencer is, and how a worker talks to it: one strategy per worker, chosen once.

Theory of operation:

* The hub does the same few things whoever numbers its channels: publish, say when its interest in a
  channel turns on or off, ask for what a held connection missed, and take back messages, answers and
  replays.  Only *where the sequencer is* differs, so that is a strategy object with those methods
  (``hello``, ``start``, ``publish``, ``interest``, ``local_replay``, ``request_replay``, ``on_record``,
  ``sweep``), picked when the hub is built (:class:`MeshRoute`) or connected to a bus
  (:class:`BrokerRoute`, before the worker's loop runs).  The hub never asks which one it has.

**MeshRoute: the owner is a worker of this node** (records over :mod:`mesh`, laid out by :mod:`records`).

* The owner of a channel is worker ``crc32(name) % workers`` (:func:`owner_of`); it alone numbers the
  channel (:mod:`sequencer`).  A publish accepted elsewhere goes to it as ``PUB`` with the time it was
  accepted; the owner numbers it, sends one ``MSG`` to each interested worker, delivers to its own
  subscribers, and answers ``PUBACK`` with the ``seq`` and whether it reached a subscriber of the node.
* ``INTEREST`` / ``UNINTEREST`` carry the registry's transitions to the owner, so it sends a message only
  to the workers with subscribers of it.
* **Replay without gap or duplicate.**  On the owner, a ``since`` is answered from the buffer at once,
  before any live message (same process, no race: :meth:`MeshRoute.local_replay`).  Elsewhere the hub
  holds the connection and this route sends ``REPLAY_REQ`` after the ``INTEREST`` on the same ordered
  link.  The owner answers ``REPLAY`` with its buffer up to its latest ``seq``; live ``MSG`` records that
  reached the held connection meanwhile are appended only past the newest ``seq`` of the answer.
* **Restarts.**  A worker announces itself on start (``HELLO``).  Its peers forget its old interest,
  tell it again in which of its channels they are interested, and re-ask the replays that were waiting
  for it (the old answers will not come).  The sequence of a channel it owned starts again at 1.
* Records are input like any other: :func:`records.decode` checks every field, this route checks what
  only the receiver can (the sender is a peer, a ``PUB``, ``INTEREST`` or ``REPLAY_REQ`` names a channel
  this worker owns, a ``REPLAY`` names the channel of its request), and raises before anything changes.

**BrokerRoute: the owner is the broker** (``--bus``, :mod:`brokers`): it numbers every channel, the same
``seq`` on every node.

* Every worker publishes to the broker and subscribes to it for the channels it has subscribers of
  (interest).  The owner worker, the mesh and a local replay buffer are not used for channels.
* A publish is answered with the broker's acknowledgement; with the broker away, ``unavailable`` at once
  (nothing was published).
* A replay answer comes from the broker's stream in order with the live messages: it ends where the
  live messages that follow it begin, so what the hold kept meanwhile is already in it.  A gap the broker
  cannot fill on the live path reaches every subscriber of the channel as a ``gap``.
* Workers do not depend on each other: no ``HELLO``, and a record from a peer is refused as malformed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Protocol

from . import records
from .pending import Done, Hold, Pending
from .records import (
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

Replay = tuple[int, int, list[Entry]]  # (gap reason, first seq, entries)


class Host(Protocol):
    """What a route hands back to its hub (:class:`channels.Hub`).

    The hub itself rather than three bound methods kept as attributes: calling a method of an attribute
    costs fewer instructions per message than calling a stored bound method (callgrind, the ``MSG`` path).
    """

    def deliver(self, channel: str, seq: int, data: bytes, t0: float) -> None:
        """A sequenced message for this worker's connections."""

    def resolve(self, hold: Hold, reason: int, first: int, entries: list[Entry]) -> None:
        """The replay of a held connection: written, and the connection made a subscriber."""

    def gap(self, channel: str, since: int, first: int, reason: int) -> None:
        """Every subscriber of ``channel`` missed what lies between ``since`` and ``first``."""

    def on_signal(self, data: bytes) -> None:
        """A presence record from the broker (checked by the hub's presence)."""

    def bus_up(self) -> None:
        """The broker connection is (back) up."""


def owner_of(channel: str, workers: int) -> int:
    """The worker that sequences ``channel`` on a node without a bus: stable for a given number of workers."""
    return zlib.crc32(channel.encode()) % workers


class MeshRoute:
    """The owner of a channel is a worker of this node.  See the module docstring.

    ``send(dest, record)`` queues a record for worker ``dest``; ``sequencer`` is this worker's table of the
    channels it owns.
    """

    def __init__(self, index: int, workers: int, send: Callable[[int, bytes], None], sequencer: Sequencer,
                 registry: Registry, pending: Pending, hub: Host) -> None:
        self.index = index
        self.workers = workers
        self.send = send
        self.sequencer = sequencer
        self.registry = registry
        self.pending = pending
        self.hub = hub
        self._subs, self._holds = registry.subs, registry.holds  # for the reach of each message

    def hello(self) -> None:
        """Announce this (possibly restarted) worker to its peers."""
        for worker in range(self.workers):
            if worker != self.index:
                self.send(worker, records.HELLO)

    def start(self) -> None:
        pass  # the mesh is the worker's, up before its loop runs

    def publish(self, channel: str, data: bytes, t0: float, done: Done | None) -> None:
        owner = zlib.crc32(channel.encode()) % self.workers  # owner_of, inline: every publish passes here
        if owner == self.index:
            seq, reach = self.sequence(channel, data, t0)
            if done is not None:
                if seq:
                    done(seq, "", reach)
                else:
                    done(0, "channel_limit", -1)
            return
        req = self.pending.track(done) if done is not None else 0
        self.send(owner, records.pub(t0, req, channel, data))

    def sequence(self, channel: str, data: bytes, t0: float) -> tuple[int, int]:
        """Number a message of a channel this worker owns and send it on: ``(seq, reach)``, or
        ``(0, REFUSED_CHANNEL_LIMIT)`` when the channel is new and the sequencer full."""
        owned = self.sequencer.number(channel, data)
        if owned is None:
            return 0, REFUSED_CHANNEL_LIMIT
        seq = owned.seq
        interest = owned.interest
        if interest:
            record = records.msg(t0, seq, channel, data)  # one record for every worker
            send = self.send
            for worker in interest:
                send(worker, record)
        # Before delivering: a write may close the last subscriber, the message still reached it.
        reach = 1 if interest or channel in self._subs or channel in self._holds else 0
        self.hub.deliver(channel, seq, data, t0)
        return seq, reach

    def interest(self, channel: str, on: bool) -> None:
        owner = owner_of(channel, self.workers)
        if owner != self.index:  # the owner's own subscribers are in its registry already
            self.send(owner, records.interest(channel, on))

    def local_replay(self, channel: str, since: int) -> Replay | None:
        """What a subscriber that saw ``since`` gets, if this worker owns ``channel``; None: ask the owner."""
        if owner_of(channel, self.workers) != self.index:
            return None
        _last, reason, first, entries = self.sequencer.after(channel, since)
        return reason, first, entries

    def request_replay(self, hold: Hold) -> None:
        req = self.pending.wait(hold)
        self.send(owner_of(hold.channel, self.workers), records.replay_req(req, hold.since, hold.channel))

    def sweep(self, now: float) -> int:
        """Let time expire buffered messages, forget idle channels; how many were forgotten."""
        return self.sequencer.sweep(now, self.registry.interested)

    # -- records from the other workers ----------------------------------------------------
    def on_record(self, src: int, record: memoryview) -> None:
        """One record from worker ``src``: acted on, or ValueError / struct.error with nothing changed."""
        if not 0 <= src < self.workers or src == self.index:
            raise ValueError(f"no such peer {src}")
        fields = records.decode(record)  # every field checked before anything changes here
        kind = fields[0]
        if kind == T_MSG:
            _, channel, seq, data, t0 = fields
            self.hub.deliver(channel, seq, data, t0)
        elif kind == T_PUB:
            _, channel, req, data, t0 = fields
            seq, reach = self.sequence(self._mine(channel), data, t0)
            if req:
                self.send(src, records.puback(req, seq, reach))
        elif kind == T_PUBACK:
            _, req, seq, reach = fields
            if reach == REFUSED_CHANNEL_LIMIT:
                self.pending.acked(req, 0, "channel_limit", -1)
            else:
                self.pending.acked(req, seq, "", 1 if reach else 0)
        elif kind == T_INTEREST or kind == T_UNINTEREST:
            self.sequencer.interest(self._mine(fields[1]), src, kind == T_INTEREST)
        elif kind == T_REPLAY_REQ:
            _, req, since, channel = fields
            last, reason, first, entries = self.sequencer.after(self._mine(channel), since)
            self.send(src, records.replay(req, reason, first, last, channel, entries))
        elif kind == T_REPLAY:
            self._on_replay(*fields[1:])
        elif kind == T_HELLO:
            self._on_hello(src)

    def _mine(self, channel: str) -> str:
        """``channel`` if this worker sequences it: a record about another's channel is malformed."""
        owner = owner_of(channel, self.workers)
        if owner != self.index:
            raise ValueError(f"{channel!r} belongs to worker {owner}")
        return channel

    def _on_replay(self, req: int, reason: int, first: int, last: int, channel: str, entries: list[Entry]) -> None:
        requests = self.pending.requests
        hold = requests.get(req)
        if hold is None:
            return  # timed out, or asked of this worker's previous incarnation
        if hold.channel != channel:
            raise ValueError(f"replay {req} names {channel!r}, not {hold.channel!r}")
        del requests[req]
        if hold.conn is None:
            return  # unsubscribed or closed meanwhile
        # Live messages kept meanwhile: only those the owner sequenced after its answer.
        newest = entries[-1][0] if entries else max(last, first - 1)
        entries.extend(m for m in hold.held if m[0] > newest)
        self.hub.resolve(hold, reason, first, entries)

    def _on_hello(self, src: int) -> None:
        self.sequencer.forget(src)
        workers = self.workers
        for channel in self.registry.channels():
            if owner_of(channel, workers) == src:
                self.send(src, records.interest(channel, True))
        requests = self.pending.requests
        for req, hold in list(requests.items()):
            if owner_of(hold.channel, workers) == src:
                del requests[req]
                if hold.conn is not None:
                    self.request_replay(hold)  # the old answer will not come; the new owner answers


class BrokerRoute:
    """The owner of every channel is the broker.  See the module docstring.

    ``connect(on_event=...)`` makes the :class:`brokers.Bridge` (not started) that will hand its events to
    :meth:`on_event`; the hub keeps it as ``remote`` for /health.
    """

    def __init__(self, connect: Callable[..., Any], pending: Pending, hub: Host) -> None:
        self.pending = pending
        self.hub = hub
        self.bridge = connect(on_event=self.on_event)

    def hello(self) -> None:
        pass  # no worker depends on another for channels: nothing to announce

    def start(self) -> None:
        self.bridge.start()

    def publish(self, channel: str, data: bytes, t0: float, done: Done | None) -> None:
        if not self.bridge.up:
            if done is not None:
                done(0, "unavailable", -1)
            return
        # A number even without ``done``: the bridge answers every publish, and one that waits for nothing
        # finds nothing.
        req = self.pending.track(done) if done is not None else self.pending.new_req()
        self.bridge.publish(channel, data, t0, req)

    def interest(self, channel: str, on: bool) -> None:
        self.bridge.interest(channel, on)

    def local_replay(self, channel: str, since: int) -> Replay | None:
        return None  # always the broker's stream, in order with the live messages

    def request_replay(self, hold: Hold) -> None:
        self.bridge.replay(self.pending.wait(hold), hold.channel, hold.since)

    def sweep(self, now: float) -> int:
        return 0  # the broker keeps the replay window

    def on_record(self, src: int, record: memoryview) -> None:
        raise ValueError(f"a record from worker {src}: workers exchange none with a bus")

    def on_event(self, event: tuple) -> None:
        """One event of the bridge, on the reactor (:class:`brokers.Bridge` names them)."""
        from .brokers import E_ACK, E_GAP, E_MSG, E_REPLAY, E_SIGNAL, E_STATE

        kind = event[0]
        if kind == E_ACK:
            _, req, seq, error = event
            self.pending.acked(req, seq, "unavailable" if error else "", -1)
            return
        if kind == E_MSG:
            _, channel, seq, data, t0 = event
            self.hub.deliver(channel, seq, data, t0)
        elif kind == E_REPLAY:
            _, req, reason, first, entries = event
            hold = self.pending.requests.pop(req, None)
            if hold is not None and hold.conn is not None:
                self.hub.resolve(hold, reason, first, entries)
        elif kind == E_GAP:  # the broker could not give back what its live path lost
            _, channel, last, first, reason = event
            self.hub.gap(channel, last, first, reason)
        elif kind == E_SIGNAL:
            self.hub.on_signal(event[2])
        elif kind == E_STATE and event[1]:
            self.hub.bus_up()
