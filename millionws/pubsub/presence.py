"""Presence: who is subscribed to a channel, join and leave events, and counts across workers and nodes.

Theory of operation.

* **Opt-in per channel.**  Only channels whose ``--channel-options`` rule says ``presence=on`` have members;
  ``join-leave=on`` adds events for the subscribers that ask (``"presence": true`` in their subscribe).  A
  worker without such a rule has no :class:`Presence` at all, and a connection that never subscribes to a
  presence channel costs nothing here: the connection record is untouched, the tables below are keyed by it.
* **A member is a connection subscribed to a presence channel**, named by its user (the token's ``sub``, or
  ``""``) and a client id made here the first time it joins one (``<source>-<counter>``: the source is this
  worker's random id, so client ids are unique across the deployment).  Its :class:`Member` lives in the
  rooms it is in and nowhere else: a connection in a second presence channel finds it there, through the
  channels the registry knows it holds (at most ``--max-channels-per-connection``), so no table per
  connection is kept here (it would cost ~50 bytes per member, a third of what a member costs).
* **Join and leave are O(1).**  A :class:`Room` (one presence channel with local members) keeps its members
  in a dict and the changes since the last interval in two more (``joins``, ``leaves``: a join and a leave of
  the same member within an interval cancel out).  Past ``max_events`` changes in an interval it stops
  listing them (``overflow``): the count alone goes out, so a storm of 100 000 joins costs 100 dict inserts
  of listing, not 100 000.
* **Coalesced per interval.**  Every ``interval`` the worker flushes the rooms that changed: one batch record
  per room (its local count, and its joins and leaves unless overflowed) to the other workers (:mod:`presence_links`:
  the mesh, or the broker subject of the channel), and one ``presence`` frame, encoded once, fanned out to
  the room's askers: at most one frame per channel per interval per subscriber, whatever the churn.  The
  frame lists joins and leaves (this worker's and those batches brought in) when there are at most
  ``max_events`` of them and every batch it merges was complete; otherwise it carries ``count`` alone.
* **Counts across workers and nodes.**  A batch carries its sender's local count, absolute: a receiver
  keeps the last one per source (:attr:`Room.remote`, at most ``max_sources``) and the total is its own
  count plus theirs.  A worker that opens a room asks the others for theirs (SYNC, answered in their next
  batch).  Every source says ALIVE every ``timeout / 3``; one silent for ``timeout`` (a dead worker or
  node) leaves the sums.  A batch whose count does not follow from the previous one and its joins and
  leaves (a source new to the room, a lost batch) makes that interval's frame count-only: the list a client
  holds may be wrong then, ``presence_list`` tells the truth.
* **Lists are bounded.**  ``presence_list`` and ``GET /channels/{c}/presence`` ask every worker for at most
  ``limit`` members (:mod:`presence_lists`); this worker's part is a slice of a dict, O(limit).
* Records from other workers and the broker are untrusted: :mod:`presence_records` checks every field, a
  source beyond ``max_sources`` is dropped and counted, and nothing here grows without a bound.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, Protocol

from ..config import DEFAULTS
from ..metrics import F
from ..namespaces import Namespaces
from ..protocol.websocket import encode_frame
from . import presence_records as wire
from .presence_lists import Done, Lists

_C_MEMBERS, _C_FRAMES, _C_BATCHES = F["presence_members"], F["presence_frames"], F["presence_batches"]
_C_SOURCES_DROPPED = F["dropped_presence_sources"]
LIST_MAX_BYTES = 900_000  # of members in one list answer: what a NATS message holds by default (1 MiB), with room

monotonic = time.monotonic


def new_source() -> str:
    """This worker's id among every worker of the deployment: random, so a restarted worker is a new source."""
    return secrets.token_hex(6)


class Link(Protocol):
    """How presence records travel (:mod:`presence_links`: the mesh of a node, or the broker between nodes)."""

    peers: int | None  # workers that answer every list request (mesh), None: unknown (a bus)

    def start(self, source: str) -> None: ...
    def to_channel(self, channel: str, record: bytes) -> None: ...
    def to_all(self, record: bytes) -> None: ...
    def to_source(self, peer: int | None, source: str, record: bytes) -> None: ...
    def follow(self, channel: str, on: bool, first: bytes) -> None: ...


class Member:
    """A connection in at least one presence channel: its client number and user."""

    __slots__ = ("n", "user")

    def __init__(self, n: int, user: str) -> None:
        self.n = n  # the client id is made from it when needed: an int is cheaper to keep than the string
        self.user = user


class Room:
    """A presence channel with members on this worker."""

    __slots__ = ("announce", "askers", "events", "joins", "leaves", "members", "name", "overflow", "remote",
                 "rjoins", "rleaves", "roverflow", "show", "shown")

    def __init__(self, name: str, events: bool) -> None:
        self.name = name
        self.events = events  # join-leave=on: changes are listed, askers get frames
        self.members: dict[Any, Member] = {}  # connection -> member, in join order
        self.askers: dict[Any, None] = {}  # members that asked for events
        self.joins: dict[Member, None] = {}  # local changes since the last flush
        self.leaves: dict[Member, None] = {}
        self.overflow = False
        self.announce = False  # a batch is owed to the others (a local change, or a SYNC)
        self.remote: dict[str, int] = {}  # source -> its count (only sources with members)
        self.rjoins: dict[str, str] = {}  # changes batches brought since the last flush: client -> user
        self.rleaves: dict[str, str] = {}
        self.roverflow = False
        self.show = False  # a frame is owed to the askers even without a change (a new asker)
        self.shown = -1  # the count of the last frame


class Presence:
    """The presence state of one worker.  See the module docstring.

    ``link``: how records reach the other workers; ``fanout(conns, frame)``: the worker's fan-out;
    ``call_later``: the reactor's timer (None in tests that call :meth:`tick` themselves).
    """

    def __init__(self, namespaces: Namespaces, link: Link, fanout: Callable[[Iterable[Any], bytes], int],
                 counters: list[int], call_later: Callable[[float, Callable[[], None]], None] | None = None,
                 interval: float = DEFAULTS.presence_interval, max_events: int = DEFAULTS.presence_max_events,
                 timeout: float = DEFAULTS.presence_timeout, max_sources: int = DEFAULTS.presence_max_sources,
                 list_timeout: float = DEFAULTS.presence_list_timeout, max_lists: int = DEFAULTS.presence_max_lists,
                 source: str | None = None) -> None:
        self.namespaces = namespaces
        self.link = link
        self.fanout = fanout
        self.c = counters
        self.call_later = call_later
        self.interval = interval
        self.max_events = max_events
        self.timeout = timeout
        self.max_sources = max_sources
        self.source = source or new_source()
        self.rooms: dict[str, Room] = {}
        self.dirty: dict[Room, None] = {}  # rooms to flush at the next tick
        self.sources: dict[str, tuple[float, int | None]] = {}  # other workers heard: (when, mesh peer or None)
        self.memberships = 0  # connection x presence channel
        self._counter = 0
        self._next_alive = 0.0
        self.lists = Lists(counters, link, self.source, call_later, list_timeout, max_lists)

    def start(self) -> None:
        """The worker's loop is about to run: follow what the link needs, and tick every interval."""
        self.link.start(self.source)
        if self.call_later is not None:
            self.call_later(self.interval, self.tick)

    # -- the options of a channel ----------------------------------------------------------
    def tracked(self, channel: str) -> bool:
        """Whether ``channel`` has members (``presence=on``)."""
        return self.namespaces.of(channel).presence

    def events(self, channel: str) -> bool:
        """Whether subscribers of ``channel`` may ask for join and leave events (``join-leave=on``)."""
        return self.namespaces.of(channel).join_leave

    def client_id(self, member: Member) -> str:
        return f"{self.source}-{member.n:x}"

    # -- local subscribers ------------------------------------------------------------------
    def join(self, conn: Any, channels: Iterable[str], user: str, ask: bool, holds: Iterable[str] = ()) -> None:
        """``conn`` (user ``user``, "" for none) subscribed to ``channels``; ``ask``: it wants events.
        Channels without presence are skipped; a channel it is a member of already only takes ``ask``.
        ``holds``: every channel the connection holds (the registry's), where its member may be already."""
        of = self.namespaces.of
        member: Member | None = None
        for channel in channels:
            options = of(channel)
            if not options.presence:
                continue
            room = self.rooms.get(channel)
            if room is None:
                room = self.rooms[channel] = Room(channel, options.join_leave)
                self.link.follow(channel, True, wire.sync(self.source, channel))
            if conn not in room.members:
                if member is None:
                    member = self._member_of(conn, holds)
                    if member is None:
                        self._counter += 1
                        member = Member(self._counter, user)
                room.members[conn] = member
                self.memberships += 1
                if room.events:
                    self._change(room, member, room.leaves, room.joins)
                room.announce = True
                self.dirty[room] = None
            if ask and room.events and conn not in room.askers:
                room.askers[conn] = None
                room.show = True
                self.dirty[room] = None
        self.c[_C_MEMBERS] = self.memberships

    def _member_of(self, conn: Any, holds: Iterable[str]) -> Member | None:
        """The member ``conn`` is in another presence channel, if any."""
        rooms = self.rooms
        for channel in holds:
            room = rooms.get(channel)
            if room is not None:
                member = room.members.get(conn)
                if member is not None:
                    return member
        return None

    def member(self, conn: Any, holds: Iterable[str]) -> tuple[str, str] | None:
        """``(user, client)`` of ``conn`` if it is a member of a presence channel among ``holds``."""
        member = self._member_of(conn, holds)
        return None if member is None else (member.user, self.client_id(member))

    def leave(self, conn: Any, channels: Iterable[str]) -> None:
        """``conn`` left ``channels`` (unsubscribed, or closed); those it was not a member of are skipped."""
        for channel in channels:
            room = self.rooms.get(channel)
            if room is None:
                continue
            member = room.members.pop(conn, None)
            if member is None:
                continue
            room.askers.pop(conn, None)
            self.memberships -= 1
            if room.events:
                self._change(room, member, room.joins, room.leaves)
            room.announce = True
            self.dirty[room] = None
        self.c[_C_MEMBERS] = self.memberships

    def _change(self, room: Room, member: Member, undo: dict[Member, None], do: dict[Member, None]) -> None:
        """A join (``do`` = joins) or leave of ``member``: cancels the opposite change of this interval."""
        if room.overflow:
            return
        if member in undo:
            del undo[member]
        else:
            do[member] = None
            if len(room.joins) + len(room.leaves) > self.max_events:
                room.overflow = True  # the count alone this interval: nothing more is listed
                room.joins.clear()
                room.leaves.clear()

    # -- every interval ----------------------------------------------------------------------
    def tick(self) -> None:
        if self.call_later is not None:
            self.call_later(self.interval, self.tick)  # first: a tick that raises is skipped once, not forever
        now = monotonic()
        if now >= self._next_alive:
            self._next_alive = now + self.timeout / 3
            self.link.to_all(wire.alive(self.source))
        if self.sources:
            self.expire(now)  # O(sources), bounded by max_sources: every tick, so a dead one goes on time
        dirty, self.dirty = self.dirty, {}
        for room in dirty:
            self._flush(room)

    def _flush(self, room: Room) -> None:
        # Take the interval's changes and reset them first: the fan-out may close an asker, whose leave then
        # belongs to the next interval (recorded in the fresh dicts), not to this one's (lost).
        local = len(room.members)
        joins, leaves = self._named(room.joins), self._named(room.leaves)
        rjoins, rleaves = room.rjoins, room.rleaves
        overflow, roverflow, show = room.overflow, room.roverflow, room.show
        if room.announce:
            self.link.to_channel(room.name, wire.batch(self.source, room.name, local, joins, leaves, overflow))
            self.c[_C_BATCHES] += 1
        room.announce = room.overflow = room.roverflow = room.show = False
        if room.joins:
            room.joins = {}
        if room.leaves:
            room.leaves = {}
        if rjoins:
            room.rjoins = {}
        if rleaves:
            room.rleaves = {}
        if room.askers:
            total = local + sum(room.remote.values())
            listed = len(joins) + len(leaves) + len(rjoins) + len(rleaves)
            if listed or overflow or roverflow or show or total != room.shown:
                if overflow or roverflow or listed > self.max_events:
                    frame = presence_frame(room.name, total, None, None)
                else:
                    joins.update(rjoins)
                    leaves.update(rleaves)
                    frame = presence_frame(room.name, total, joins, leaves)
                room.shown = total
                self.c[_C_FRAMES] += self.fanout(tuple(room.askers), frame)  # a snapshot: a write may close one
        if not room.members and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.link.follow(room.name, False, b"")

    def _named(self, members: dict[Member, None]) -> dict[str, str]:
        source = self.source
        return {f"{source}-{m.n:x}": m.user for m in members}

    def expire(self, now: float) -> None:
        """Sources silent for ``timeout`` leave every sum."""
        horizon = now - self.timeout
        dead = [source for source, (heard, _peer) in self.sources.items() if heard < horizon]
        if dead:
            self._forget(dead)

    def peer_restarted(self, peer: int) -> None:
        """Mesh worker ``peer`` started again: its previous incarnation's members died with it."""
        self._forget([source for source, (_heard, p) in self.sources.items() if p == peer])

    def _forget(self, sources: list[str]) -> None:
        for source in sources:
            del self.sources[source]
        for room in self.rooms.values():
            for source in sources:
                if room.remote.pop(source, None) is not None:
                    room.roverflow = True  # its members vanished without leave events
                    self.dirty[room] = None

    def resync(self) -> None:
        """The link came back after an outage: what was sent meanwhile may be lost.  Ask again, tell again."""
        for room in self.rooms.values():
            self.link.follow(room.name, True, wire.sync(self.source, room.name))
            room.announce = True
            self.dirty[room] = None

    # -- records from other workers ----------------------------------------------------------
    def on_record(self, peer: int | None, record: memoryview | bytes) -> None:
        """One presence record from mesh worker ``peer`` (None: from the broker).  ValueError or
        struct.error (nothing changed) when malformed; dropped and counted when its source is one too many."""
        fields = wire.decode(record)
        kind, source = fields[0], fields[1]
        if source == self.source:
            return  # our own, back from the broker
        heard = self.sources.get(source)
        if heard is None and len(self.sources) >= self.max_sources:
            self.c[_C_SOURCES_DROPPED] += 1
            return
        self.sources[source] = (monotonic(), peer)
        if kind == wire.T_BATCH:
            self._on_batch(source, *fields[2:])
        elif kind == wire.T_SYNC:
            room = self.rooms.get(fields[2])
            if room is not None:
                room.announce = True  # answered with the next batch: one per interval, however many ask
                self.dirty[room] = None
        elif kind == wire.T_LIST_REQ:
            _, _, channel, req, limit = fields
            count, members, truncated, sources = self.local_list(channel, limit)
            self.link.to_source(peer, source, wire.list_ans(self.source, req, count, truncated, channel,
                                                             sources, members))
        elif kind == wire.T_LIST_ANS:
            self.lists.on_answer(source, *fields[2:])

    def _on_batch(self, source: str, channel: str, count: int, overflow: bool, joins: list[wire.Member],
                  leaves: list[wire.Member]) -> None:
        room = self.rooms.get(channel)
        if room is None:
            return  # no member here: nothing to keep (a SYNC asks when one comes)
        old = room.remote.get(source, 0)
        if count:
            room.remote[source] = count
        else:
            room.remote.pop(source, None)
        if not room.askers:
            return
        if overflow or count != old + len(joins) - len(leaves):
            room.roverflow = True
        elif not room.roverflow:
            for user, client in joins:
                if room.rleaves.pop(client, None) is None:
                    room.rjoins[client] = user
            for user, client in leaves:
                if room.rjoins.pop(client, None) is None:
                    room.rleaves[client] = user
            if len(room.rjoins) + len(room.rleaves) > self.max_events:
                room.roverflow = True
                room.rjoins = {}
                room.rleaves = {}
        if count != old or joins or leaves or overflow:
            self.dirty[room] = None

    # -- lists -----------------------------------------------------------------------------------
    def local_list(self, channel: str, limit: int) -> tuple[int, list[wire.Member], bool, list[str]]:
        """``(count, members, truncated, sources)`` of this worker: at most ``limit`` members (and
        ``LIST_MAX_BYTES`` of them), and the other sources it knows to have members."""
        room = self.rooms.get(channel)
        if room is None:
            return 0, [], False, []
        limit = min(limit, wire.MAX_MEMBERS)  # a request from elsewhere may ask for more than an answer holds
        members = []
        size = 0
        source = self.source
        for member in islice(room.members.values(), limit):
            client = f"{source}-{member.n:x}"
            size += len(client) + len(member.user) + 2
            if size > LIST_MAX_BYTES:
                break
            members.append((member.user, client))
        return len(room.members), members, len(members) < len(room.members), list(room.remote)

    def list(self, channel: str, limit: int, done: Done) -> None:
        """Up to ``limit`` members of ``channel`` on every worker: ``done(count, members, truncated, partial)``,
        now or within the list timeout.  Raises ChannelError (``rate_limited``) with too many in flight."""
        self.lists.start(channel, limit, self.local_list(channel, limit), done, channel in self.rooms)


def _members_json(members: dict[str, str]) -> bytes:
    return b",".join(b'{"user":"%s","client":"%s"}' % (user.encode(), client.encode())
                     for client, user in members.items())


def presence_frame(channel: str, count: int, joins: dict[str, str] | None, leaves: dict[str, str] | None) -> bytes:
    """The frame every asker of a channel gets for one interval (names and ids need no escaping);
    ``joins`` None: the count alone."""
    if joins is None or leaves is None:
        return encode_frame(1, b'{"op":"presence","channel":"%s","count":%d}' % (channel.encode(), count))
    return encode_frame(1, b'{"op":"presence","channel":"%s","count":%d,"joins":[%s],"leaves":[%s]}'
                        % (channel.encode(), count, _members_json(joins), _members_json(leaves)))
