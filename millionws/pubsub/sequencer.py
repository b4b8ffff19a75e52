"""The owner's state of the channels one worker sequences: their ``seq``, their replay buffer, who listens.

Theory of operation:

* **One sequencer per channel.**  Exactly one process numbers a channel's messages (on one node: the
  owner worker, :func:`routes.owner_of`), so ``seq`` is 1, 2, 3, ... with no gap and no duplicate
  whichever worker accepted the publish.  This module is that process's table; it does no I/O and
  knows no connection: :mod:`routes` carries the messages, :mod:`channels` delivers them.
* **Replay is arithmetic.**  The buffer keeps the last ``replay_seconds`` and at most
  ``replay_max_messages`` / ``replay_max_bytes`` of each channel.  Its entries have consecutive
  ``seq``, so what follows ``since`` is an index, not a search, and what is no longer there is
  named exactly: ``gap`` ``expired`` (older than the buffer, with the first ``seq`` still held) or
  ``unknown`` (a ``since`` beyond the latest ``seq``: a sequence from before a restart or an eviction).
* **Each channel's limits are its namespace's** (``--channel-options``, :mod:`namespaces`).  They are
  looked up once, when the channel's state is made, and its buffer keeps them: numbering, trimming and
  the sweep read the buffer, never the rules.  A channel whose rule turns replay off gets its rule's one
  shared empty buffer (it keeps nothing, so it may be shared), not a deque of its own.
* **Interest is per worker, not per subscriber.**  :attr:`Owned.interest` holds the other workers that
  have subscribers, so a message costs one record per interested worker whatever their number of
  subscribers.
* **Memory follows the live channels.**  A channel whose buffer emptied, with no interested worker
  and no local subscriber, untouched for its own replay window, is forgotten (:meth:`Sequencer.sweep`);
  its sequence then starts again at 1.  At most ``max_owned`` channels are held: beyond that a new
  one is refused (``None``), so a flood of one-message channels cannot grow the table without bound.
* The sequence of a restarted worker starts again at 1 too: persistence across restarts is the job of
  an external bus (:mod:`brokers`), which then numbers the messages instead of this module.
* **Epochs.**  So that a reader of a channel's history can tell "the sequence started again" from "nothing
  new", each sequence has an epoch (:meth:`Sequencer.epoch`): this table's random incarnation (a restart
  makes another) and the number of the channel's state in it (an eviction and a new start make another),
  one int per channel.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable

from ..namespaces import ChannelOptions, Namespaces
from .records import GAP_EXPIRED, GAP_NONE, GAP_UNKNOWN

# A buffered message: (seq, monotonic time it was sequenced or published, data).
Entry = tuple[int, float, bytes]

monotonic = time.monotonic


class ReplayBuffer:
    """The recent messages of one channel: at most ``max_messages`` and ``max_bytes`` of data, none
    older than ``seconds``.

    Entries are ``(seq, t, data)`` with consecutive ``seq``, so the entry after ``since`` is
    found by arithmetic, not by search.  The byte bound keeps one channel of large messages
    from holding ``max_messages`` of them (a gigabyte at 1 MiB each), and a replay answer
    between workers within what the mesh carries.
    """

    __slots__ = ("seconds", "entries", "max_messages", "max_bytes", "size")

    def __init__(self, seconds: float, max_messages: int, max_bytes: int = 4 << 20) -> None:
        self.seconds = seconds
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: deque[Entry] = deque()

    def append(self, seq: int, t: float, data: bytes) -> None:
        if self.max_messages <= 0:
            return
        entries = self.entries
        entries.append((seq, t, data))
        self.size += len(data)
        while len(entries) > self.max_messages or (self.size > self.max_bytes and len(entries) > 1):
            self.size -= len(entries.popleft()[2])
        self.trim(t)

    def trim(self, now: float) -> None:
        entries = self.entries
        horizon = now - self.seconds
        while entries and entries[0][1] < horizon:
            self.size -= len(entries.popleft()[2])

    def after(self, since: int, last: int, now: float) -> tuple[int, int, list[Entry]]:
        """``(gap_reason, first, entries)``: what a subscriber who saw ``since`` gets.

        ``first`` is the first ``seq`` it will see (``last + 1`` when nothing is buffered).
        """
        self.trim(now)
        entries = self.entries
        if since > last:
            return GAP_UNKNOWN, last + 1, []  # a sequence from before a restart
        oldest = entries[0][0] if entries else last + 1
        if since + 1 < oldest:
            return GAP_EXPIRED, oldest, list(entries)
        skip = since + 1 - oldest
        return GAP_NONE, since + 1, [entries[i] for i in range(skip, len(entries))]


class Owned:
    """A channel this worker sequences.  ``replay`` holds its namespace's limits (and, for the sweep, the
    time it stays after its last use: its ``seconds``)."""

    __slots__ = ("seq", "replay", "interest", "touched", "born")

    def __init__(self, replay: ReplayBuffer, born: int = 0) -> None:
        self.seq = 0
        self.born = born  # the how-manieth channel state of its sequencer: with its incarnation, the epoch
        self.touched = monotonic()  # last publish or interest: for eviction
        self.replay = replay
        self.interest: set[int] = set()  # other workers with subscribers


class Sequencer:
    """The channels one worker sequences, by name.  See the module docstring.

    ``namespaces`` gives each channel its replay limits; without it every channel gets ``replay_seconds``,
    ``replay_max_messages`` and ``replay_max_bytes``.  At most ``max_owned`` channels are held.
    """

    def __init__(self, replay_seconds: float = 120.0, replay_max_messages: int = 1000,
                 replay_max_bytes: int = 4 << 20, max_owned: int = 2_000_000,
                 namespaces: Namespaces | None = None) -> None:
        if namespaces is None:
            namespaces = Namespaces("", ChannelOptions("", replay_seconds, replay_max_messages, replay_max_bytes,
                                                       0.0))
        self.namespaces = namespaces
        self.max_owned = max_owned
        self.owned: dict[str, Owned] = {}
        # One empty buffer per rule whose channels keep nothing: bounded by the number of rules.
        self._no_replay: dict[ChannelOptions, ReplayBuffer] = {}
        self.incarnation = secrets.token_hex(8)  # this table's: a restarted worker has another
        self.created = 0  # channel states made so far

    def take(self, channel: str) -> Owned | None:
        """The state of ``channel``, made if new; None when a new one would pass ``max_owned``."""
        owned = self.owned.get(channel)
        if owned is None:
            if len(self.owned) >= self.max_owned:
                return None
            self.created += 1
            self.owned[channel] = owned = Owned(self._buffer(self.namespaces.of(channel)), self.created)
        return owned

    def epoch(self, owned: Owned) -> str:
        """The epoch of ``owned``'s sequence: 16 hex digits, another one whenever the sequence starts again."""
        return hashlib.blake2b(b"%s.%d" % (self.incarnation.encode(), owned.born), digest_size=8).hexdigest()

    def _buffer(self, options: ChannelOptions) -> ReplayBuffer:
        """A new channel's buffer, with its rule's limits."""
        if options.replays:
            return ReplayBuffer(options.replay_seconds, options.replay_max_messages, options.replay_max_bytes)
        buffer = self._no_replay.get(options)
        if buffer is None:
            # max_messages 0: append keeps nothing, so the channels of the rule can share it; its seconds
            # still say how long an idle channel's sequence is kept (the sweep).
            buffer = self._no_replay[options] = ReplayBuffer(options.replay_seconds, 0, options.replay_max_bytes)
        return buffer

    def number(self, channel: str, data: bytes) -> Owned | None:
        """Give ``data`` the next ``seq`` of ``channel`` and buffer it; the channel's state (its ``seq`` is
        the message's), or None when the channel is new and the table full (nothing changed)."""
        owned = self.owned.get(channel)
        if owned is None:
            owned = self.take(channel)
            if owned is None:
                return None
        owned.seq = seq = owned.seq + 1
        owned.touched = now = monotonic()
        owned.replay.append(seq, now, data)
        return owned

    def after(self, channel: str, since: int) -> tuple[int, int, int, list[Entry]]:
        """``(last, gap_reason, first, entries)`` for a subscriber that saw ``since``; creates nothing.

        A channel not held here has sequenced nothing yet: ``since`` 0 is exact, anything beyond unknown.
        """
        owned = self.owned.get(channel)
        if owned is None:
            return 0, (GAP_UNKNOWN if since > 0 else GAP_NONE), 1, []
        return owned.seq, *owned.replay.after(since, owned.seq, monotonic())

    def interest(self, channel: str, worker: int, on: bool) -> None:
        """``worker`` got its first subscriber of ``channel`` (``on``) or lost its last one.

        When the table is full a new channel's interest is not recorded: that worker's subscribers then
        get what publishes can reach, nothing, rather than this worker holding unbounded state.
        """
        if on:
            owned = self.take(channel)
            if owned is not None:
                owned.interest.add(worker)
                owned.touched = monotonic()
        else:
            owned = self.owned.get(channel)
            if owned is not None:
                owned.interest.discard(worker)

    def forget(self, worker: int) -> None:
        """``worker`` restarted: its subscribers died with it (it says again what it is interested in)."""
        for owned in self.owned.values():
            owned.interest.discard(worker)

    def sweep(self, now: float, in_use: Callable[[str], bool]) -> int:
        """Let time expire buffered messages; forget the channels idle past their own replay window that
        ``in_use`` (local subscribers) does not keep.  Returns how many were forgotten."""
        idle: list[str] = []
        for channel, owned in self.owned.items():
            replay = owned.replay
            replay.trim(now)  # its own window: the buffer holds its rule's seconds
            if (not replay.entries and not owned.interest and owned.touched < now - replay.seconds
                    and not in_use(channel)):
                idle.append(channel)
        for channel in idle:
            del self.owned[channel]
        return len(idle)
