"""Channels of one worker: what the apps layer asks of pubsub, and who gets which message.

Theory of operation.  :class:`Hub` is the one object the apps layer and the worker talk to (publish,
subscribe, unsubscribe, drop; records, sweeps and deadlines).  It decides little alone; it puts
together parts that each hold one idea:

* :mod:`registry`: which connection holds which channel, the limits, and when the worker's interest in
  a channel turns on or off;
* :mod:`routes`: where a channel's sequencer is.  :class:`routes.MeshRoute` (a worker of this node)
  or :class:`routes.BrokerRoute` (``--bus``), chosen once, when the hub is built or connected to a bus,
  so nothing here asks which.  The :mod:`sequencer` belongs to the mesh route: with a bus nothing on
  this node numbers messages, and a hub connected to one holds no owner state at all;
* :mod:`pending`: the publishes and replays waiting for another process, each with a deadline;
* :mod:`names`: the names a client may use and :class:`ChannelError`;
* :mod:`presence`, when a ``--channel-options`` rule turns it on: the members of presence channels, their
  join and leave events and counts, carried by a link that follows the route (the mesh, or the broker).

The module keeps the name its callers know it by: to the apps layer it is "the channels of this
worker", and what it re-exports (``__all__``) is all they import from pubsub, whichever part defines it.

What stays here is what every route shares:

* **Encode once.**  A message becomes one WebSocket frame (:func:`message_frame`) and the same bytes go
  to every local subscriber through the worker's ``fanout``: the cost per subscriber is one ``write``,
  and the hub adds nothing per subscriber.  The broadcast path is publish, the route (on the owner the
  sequencer, one record per interested worker), :meth:`Hub.deliver`, one ``fanout`` of one frame.  The
  subscribers are handed over as a snapshot: a write may close a connection, whose ``on_close``
  changes the set.
* **Replay without gap or duplicate.**  A ``subscribe`` with ``since`` is answered in this process when
  the route has the messages here (the owner worker: written before any live one, no race).  Otherwise
  the connection is *held*: not yet a subscriber, the live messages of the channel are kept for it, and
  the route asks for the replay.  :meth:`Hub.resolve` writes the answer (a ``gap`` first when ``since``
  is older than what is kept, naming the first ``seq`` to come), then makes the connection a
  subscriber.  A hold whose answer does not come in time gets ``gap`` ``unknown`` and what was kept; if
  nothing was kept, the answer is still written when it comes before any other message or gap of the
  channel (the answer precedes them on its way from the sequencer), which makes that gap's ``first`` true.
* **Answers before consequences.**  ``subscribe`` writes its acknowledgement before any replayed
  message, so a client learns it is subscribed before it gets messages of the channel.
* Records are input like any other: a route raises before anything changes when a record is not
  acceptable, and the hub drops it and counts it (``dropped_mesh_malformed``, logged at 1, 2, 4, 8...).
  The message data inside is carried as opaque bytes: it was checked where it entered the node
  (:mod:`jsonsafe`), and the frame it goes into cannot be broken by it.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from ..config import DEFAULTS
from ..metrics import F, WorkerStats
from ..namespaces import Namespaces
from ..protocol.websocket import encode_frame
from .names import ChannelError, user_channel, valid_channel, valid_user
from .pending import Done, Hold, Pending
from .presence import Presence
from .presence_links import BusLink, MeshLink
from .presence_records import T_FIRST, T_LAST
from .records import GAP_NONE, GAP_REASONS, GAP_UNKNOWN, T_HELLO
from .registry import Registry
from .routes import BrokerRoute, MeshRoute, owner_of
from .sequencer import Entry, Sequencer

# What the apps layer uses of pubsub, importable from here whichever module of pubsub defines it.
__all__ = ["ChannelError", "Done", "Hub", "gap_frame", "message_frame", "owner_of", "user_channel", "valid_channel",
           "valid_user"]

log = logging.getLogger("millionws.pubsub.channels")

_C_PUBLISHES, _C_DELIVERIES, _C_MSG_OUT = F["publishes"], F["deliveries"], F["messages_out"]
_C_REPLAY_HITS, _C_REPLAY_MISSES = F["replay_hits"], F["replay_misses"]
_C_EVICTED = F["channels_evicted"]
_C_MALFORMED = F["dropped_mesh_malformed"]
_C_BROKER_MALFORMED = F["dropped_broker_malformed"]

monotonic = time.monotonic


def message_frame(channel: str, seq: int, data: bytes) -> bytes:
    """The one frame every subscriber of this worker gets for a message (names need no escaping)."""
    payload = b'{"op":"message","channel":"%s","seq":%d,"data":%s}' % (channel.encode(), seq, data)
    return encode_frame(1, payload)


def gap_frame(channel: str, since: int, first: int, reason: int) -> bytes:
    return encode_frame(1, b'{"op":"gap","channel":"%s","since":%d,"first":%d,"reason":"%s"}'
                        % (channel.encode(), since, first, GAP_REASONS[reason].encode()))


class Hub:
    """Channel state of one worker.  See the module docstring.

    ``send(dest, record)``: queue a record for another worker (the local bus).
    ``write(conn, data)``: the worker's write path for one connection.
    ``fanout(conns, frame)``: the same frame to many connections (slow-consumer policy inside).
    ``namespaces``: each channel's replay limits (``--channel-options``), for its sequencer on this worker or
    its stream on the broker; without it every channel gets ``replay_seconds``, ``replay_max_messages`` and
    ``replay_max_bytes``.
    """

    def __init__(self, index: int, workers: int, send: Callable[[int, bytes], None],
                 write: Callable[[Any, bytes], None], fanout: Callable[[Iterable[Any], bytes], int],
                 stats: WorkerStats, replay_seconds: float = 120.0, replay_max_messages: int = 1000,
                 max_channels_per_connection: int = 100, max_subscribers: int = 2_000_000,
                 publish_timeout: float = DEFAULTS.publish_timeout, replay_timeout: float = DEFAULTS.replay_timeout,
                 call_later: Callable[[float, Callable[[], None]], None] | None = None,
                 replay_max_bytes: int = 4 << 20, max_owned: int = 2_000_000,
                 namespaces: Namespaces | None = None) -> None:
        self.index = index
        self.workers = workers
        self.write = write
        self.fanout = fanout
        self.stats = stats
        self.c = stats.c
        sequencer = Sequencer(replay_seconds, replay_max_messages, replay_max_bytes, max_owned, namespaces)
        self.namespaces = sequencer.namespaces  # the bus takes the same (connect_bus)
        self.registry = Registry(self.c, max_channels_per_connection, max_subscribers)
        self._subs, self._holds = self.registry.subs, self.registry.holds  # bound once: the delivery path
        self._late: dict[str, set[Hold]] = {}  # channel -> expired holds whose answer may still come
        self.pending = Pending(self.c, publish_timeout, replay_timeout, call_later, self._hold_expired)
        self.remote: Any = None  # the brokers.Bridge with --bus (its state is /health's)
        self.presence: Presence | None = None  # only with a presence=on rule (enable_presence)
        self.call_later = call_later
        self.route: MeshRoute | BrokerRoute
        self._take(MeshRoute(index, workers, send, sequencer, self.registry, self.pending, self))

    def _take(self, route: MeshRoute | BrokerRoute) -> None:
        if self.registry.of_conn or self.pending.acks or self.pending.requests:
            raise RuntimeError("a hub's route is chosen before its first subscription or publish")
        self.route = route
        self.registry.on_interest = route.interest

    def connect_bus(self, url: str, reactor: Any, **limits: Any) -> None:
        """Number and carry messages through a broker shared by the nodes (see :mod:`brokers`);
        ``limits`` are the ``--bus-*`` bounds, as :class:`brokers.Bridge` names them."""
        from .brokers import Bridge

        connect = partial(Bridge, url, reactor, self.c, namespaces=self.namespaces, **limits)
        route = BrokerRoute(connect, self.pending, self)
        self._take(route)
        self.remote = route.bridge

    def start_bus(self) -> None:
        """The worker's loop is about to run: start what the route needs (the bridge thread), and presence."""
        self.route.start()
        if self.presence is not None:
            self.presence.start()

    def enable_presence(self, namespaces: Namespaces, **limits: Any) -> None:
        """Track the members of presence channels (:mod:`presence`), across workers by the link that follows
        the route: called after :meth:`connect_bus`.  ``limits``: the ``--presence-*`` bounds."""
        if isinstance(self.route, BrokerRoute):
            link: BusLink | MeshLink = BusLink(self.remote)
        else:
            link = MeshLink(self.index, self.workers, self.route.send)
        self.presence = Presence(namespaces, link, self.fanout, self.c, self.call_later, **limits)

    def hello(self) -> None:
        """Announce this (possibly restarted) worker to the peers that depend on it."""
        self.route.hello()

    def owner(self, channel: str) -> int:
        """The worker of this node that sequences ``channel`` when there is no bus."""
        return owner_of(channel, self.workers)

    @property
    def max_channels(self) -> int:
        """Channels one connection may hold (the apps layer refuses a longer list before asking)."""
        return self.registry.max_channels

    # -- the client's operations ---------------------------------------------------------
    def publish(self, channel: str, data: bytes, t0: float, done: Done | None = None) -> None:
        """Accept a message (``data``: one JSON document, UTF-8, checked) for ``channel``.

        ``done`` is called once with the outcome (see ``Done``); without it nothing is answered.
        """
        self.c[_C_PUBLISHES] += 1
        self.route.publish(channel, data, t0, done)

    def subscribe(self, conn: Any, channels: list[str], since: dict[str, int] | None = None,
                  internal: bool = False, ack: bytes = b"", user: str = "", presence: bool = False) -> None:
        """Subscribe ``conn``: write ``ack``, then any replay.  Raises ChannelError, changing nothing.

        ``user`` names the connection in presence channels ("" for none); ``presence``: it asks for their
        join and leave events (:meth:`presence.Presence.join`).

        The tables change before anything is written: a write that fails closes the connection at once,
        and its ``drop`` must find everything this call added (else a closed connection stays a subscriber).
        Nothing runs between the two halves, so no live message can overtake the acknowledgement.
        """
        registry = self.registry
        new = registry.admit(conn, channels, internal)
        replays = []
        requests = []
        for channel in new:
            after = None if since is None else since.get(channel)
            if after is None:
                registry.add(conn, channel)
                continue
            replay = self.route.local_replay(channel, after)
            if replay is not None:
                registry.add(conn, channel)
                replays.append((channel, after, replay))
            else:
                hold = Hold(conn, channel, after)
                registry.hold(conn, channel, hold)  # interest first: the request follows on the same link
                requests.append(hold)
        if self.presence is not None:  # a member before the write that may close it: its drop finds it
            self.presence.join(conn, channels, user, presence, registry.of_conn.get(conn, ()))
        if ack:
            self.write(conn, ack)  # before any replayed message
        for channel, after, replay in replays:
            self._write_replay(conn, channel, after, *replay)
        for hold in requests:
            self.route.request_replay(hold)

    def unsubscribe(self, conn: Any, channels: list[str]) -> None:
        if self.presence is not None:
            self.presence.leave(conn, channels)
        for hold in self.registry.remove(conn, channels):
            hold.conn = None  # its replay, when it comes, is for nobody

    def channels_of(self, conn: Any) -> tuple[str, ...]:
        """The channels ``conn`` holds (subscribed, or waiting for its replay); a copy, so the caller may
        unsubscribe while it goes through them."""
        return tuple(self.registry.of_conn.get(conn, ()))

    def drop(self, conn: Any) -> None:
        """``conn`` closed: forget every subscription of it (idempotent)."""
        if self.presence is not None:
            mine = self.registry.of_conn.get(conn)
            if mine:
                self.presence.leave(conn, list(mine))
        for hold in self.registry.drop(conn):
            hold.conn = None

    # -- delivery --------------------------------------------------------------------------
    def deliver(self, channel: str, seq: int, data: bytes, t0: float) -> None:
        """A sequenced message to this worker's connections: kept for the held, one frame for the subscribers."""
        holds = self._holds.get(channel)
        if holds is not None:
            for hold in holds.values():
                hold.held.append((seq, t0, data))
        if self._late:
            self._too_late(channel)
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

    def gap(self, channel: str, since: int, first: int, reason: int) -> None:
        """Every subscriber of ``channel`` missed what lies between ``since`` and ``first``."""
        if self._late:
            self._too_late(channel)
        subs = self._subs.get(channel)
        if subs:
            self.fanout(tuple(subs), gap_frame(channel, since, first, reason))

    def resolve(self, hold: Hold, reason: int, first: int, entries: list[Entry]) -> None:
        """Make a held connection a subscriber, then write its replay (in that order: a write that fails
        closes the connection, and its ``drop`` must find it where it now is)."""
        conn, channel = hold.conn, hold.channel
        if conn is None:  # unsubscribed or closed meanwhile: the replay is for nobody
            return
        if hold.late:  # nothing of the channel reached it since its gap (see _too_late): still in order
            self._forget_late(hold)
            if conn in self._subs.get(channel, ()):
                self._write_replay(conn, channel, hold.since, reason, first, entries)
            return
        self.registry.release(conn, channel)
        self._write_replay(conn, channel, hold.since, reason, first, entries)

    def _hold_expired(self, hold: Hold) -> bool:
        """The replay of ``hold`` did not come in time: a gap, what was kept meanwhile, then a plain subscriber.
        True: nothing was kept, so the answer, if it comes before anything else of the channel, is still
        written (``first`` = ``since + 1`` of that gap holds then; before, those messages were never sent)."""
        if hold.late:  # the second deadline: given up
            self._forget_late(hold)
            return False
        first = hold.held[0][0] if hold.held else hold.since + 1
        self.resolve(hold, GAP_UNKNOWN, first, hold.held)
        if hold.held or hold.conn is None:
            return False
        hold.late = True
        self._late.setdefault(hold.channel, set()).add(hold)
        return True

    def _too_late(self, channel: str) -> None:
        """A message or gap of ``channel`` went out: an answer still to come would arrive out of order."""
        for hold in self._late.pop(channel, ()):
            hold.conn = None

    def _forget_late(self, hold: Hold) -> None:
        late = self._late.get(hold.channel)
        if late is not None:
            late.discard(hold)
            if not late:
                del self._late[hold.channel]

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

    # -- the worker's calls ------------------------------------------------------------------
    def on_record(self, src: int, record: memoryview) -> None:
        """One record from worker ``src``.  Malformed: dropped and counted, nothing changed."""
        try:
            if self.presence is not None:
                if T_FIRST <= record[0] <= T_LAST:
                    self.presence.on_record(src, record)
                    return
                if record[0] == T_HELLO and len(record) == 1:
                    self.presence.peer_restarted(src)
            self.route.on_record(src, record)
        except (struct.error, ValueError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
            self.c[_C_MALFORMED] += 1
            if self.c[_C_MALFORMED] & (self.c[_C_MALFORMED] - 1) == 0:  # 1, 2, 4, 8 ...: a trace, not a flood
                log.warning("worker %d: malformed record from worker %d dropped (%s)", self.index, src, exc)

    def on_signal(self, data: bytes) -> None:
        """A presence record from the broker (:class:`presence_links.BusLink`).  Malformed: dropped, counted."""
        if self.presence is None:
            return
        try:
            self.presence.on_record(None, data)
        except (struct.error, ValueError, IndexError) as exc:
            self.c[_C_BROKER_MALFORMED] += 1
            if self.c[_C_BROKER_MALFORMED] & (self.c[_C_BROKER_MALFORMED] - 1) == 0:
                log.warning("worker %d: malformed presence record from the broker dropped (%s)", self.index, exc)

    def bus_up(self) -> None:
        """The broker is back: presence records sent or due meanwhile may be lost."""
        if self.presence is not None:
            self.presence.resync()

    def expire(self, now: float) -> None:
        """Answer the publishes and replays whose answer did not come in time."""
        self.pending.expire(now)

    def sweep(self, now: float) -> None:
        """Let time expire buffered messages; forget channels idle past their replay window."""
        self.c[_C_EVICTED] += self.route.sweep(now)
