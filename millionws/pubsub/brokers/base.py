"""What every broker shares: the events the bridge thread hands to the worker, the checks of
everything read from a broker, and the interface a broker implements.

Theory of operation.

**Events.**  The thread hands the worker tuples whose first item is one of ``E_MSG``,
``E_GAP``, ``E_REPLAY``, ``E_STATE``, ``E_ACK``, ``E_SIGNAL``, and for the control plane (:mod:`..control`)
``E_CTL`` and ``E_ANSWER`` (their shapes: :class:`bridge.Bridge`).  They
are plain tuples of ints, strings and bytes because they cross a thread boundary through a
deque and must cost nothing to build; their values are fixed (a test pins them).

**Nothing read from the broker is trusted.**  Anyone who can publish on the broker can
put anything there, so every record is checked in the thread before it reaches the
worker (:func:`checked_entry`): a seq is a decimal integer in 1 … 2^53-1, a time a finite
float, the data one JSON document (:func:`jsonsafe.parse`, at most ``--bus-max-json-depth``
deep).  A record without a valid seq cannot be placed and is dropped
(``millionws_records_dropped_total{kind="broker_malformed"}``); one with a valid seq but a
bad time or data is kept with ``data`` None, so that the delivery logic
(:mod:`delivery`) can skip exactly that seq.  Answers that break an invariant (a seq out of
the requested range, a sequence that is not a number: :class:`BrokerDataError`) are
counted or end the one task, logged; they never stop the thread.

**Loud, but one line per reason.**  Failures are logged at WARNING with their reason, at
most one line per ``LOG_INTERVAL`` seconds while the reason stays the same (:class:`Limiter`;
the next line says how many were suppressed): a broker that stays away must not flood the
log, and a new reason must not wait.  All of the package logs to one logger,
``millionws.pubsub.brokers``, so an operator sets one level for the bus.

**The interface.**  :class:`BackendBase` names, as abstract methods, the few operations a
broker must provide (connect, wait for the loss, subscribe to a live subject, read the last
seq, fetch a stored range, publish a batch) and holds the state and helpers the thread's
parts share.  It is an :class:`abc.ABC` so that a broker missing one fails when it is
built, not at the first outage.  The thread's work is split over mixins that each subclass
it, one concern per module (:mod:`delivery`, :mod:`outbox`, :mod:`backend`), so each is read
alone against this one base.  The thread sees its :class:`bridge.Bridge` only through
:class:`BridgeSide`: importing the bridge here would make an import cycle (the bridge builds
the backend), and the protocol says exactly what the thread may touch.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import importlib
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from ...config import DEFAULTS
from ...jsonsafe import MAX_SAFE_INTEGER, JsonError
from ...jsonsafe import parse as parse_json
from ...metrics import F
from ...namespaces import Namespaces

log = logging.getLogger("millionws.pubsub.brokers")

STABLE = 10.0  # a connection up this long resets the reconnect backoff
LOG_INTERVAL = 30.0
REFUSALS = 3
# A t0 from the broker only feeds the fanout latency histogram: an absurd one must not
# overflow its int64 sum.
MAX_AGE = 86_400.0

# Events for the worker (first item); from E_CTL on, for the control plane rather than the channels.
E_MSG, E_GAP, E_REPLAY, E_STATE, E_ACK, E_SIGNAL, E_CTL, E_ANSWER = range(8)
# A signal (a presence record, :mod:`...presence_links`) larger than this is malformed: ours are far smaller
# (a list answer stays under 1 MiB), and a Redis pub/sub message could otherwise be 512 MB.
MAX_SIGNAL = 2 << 20
GAP_NONE, GAP_EXPIRED, GAP_UNKNOWN = 0, 1, 2  # as in channels

_MALFORMED = F["dropped_broker_malformed"]

# One decoded record read from the broker: (seq, wall-clock time, data or None when malformed).
Entry = tuple[int, float, bytes | None]


class BusConfigError(Exception):
    """A ``--bus`` that cannot work as configured; the message is one line for the operator."""


class BrokerDataError(Exception):
    """The broker answered something that breaks an invariant (a sequence that is not a number)."""


def backoff_delays(minimum: float = DEFAULTS.bus_backoff_min, maximum: float = DEFAULTS.bus_backoff_max) -> Any:
    """Exponential backoff with full jitter: uniform(0, min(maximum, minimum * 2**n))."""
    n = 0
    while True:
        yield random.uniform(0, min(maximum, minimum * 2 ** n))
        n += 1


def redact(url: str) -> str:
    """The URL without its password, for logs and messages; each URL of a comma-separated list too."""
    if "," in url and url.count("://") > 1:  # nats://a,nats://b: several URLs, each may carry a password
        return ",".join(redact(part) for part in url.split(","))
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}{slash}{path}"


def host_ports(hosts: str, url: str, default_port: int) -> list[tuple[str, int]]:
    """``h1:p1,h2:p2`` (a URL's comma-separated hosts) as pairs, or BusConfigError naming ``url``."""
    pairs: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        host = host.strip("[]")  # [::1]:26379
        if not host or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
            raise BusConfigError(f"--bus {redact(url)}: {item.strip()!r} is not host:port")
        pairs.append((host, int(port) if colon else default_port))
    return pairs


def describe(exc: BaseException) -> str:
    """One line naming an exception, for logs and ``/health``."""
    if isinstance(exc, BusConfigError | BrokerDataError):
        return str(exc)
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:300]


def require_libraries(url: str, extra: str, modules: Iterable[str]) -> None:
    """Import the client library of a broker (``modules``) or raise BusConfigError naming its extra."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        raise BusConfigError(f"--bus {redact(url)} needs the {extra} extra: pip install 'millionws[{extra}]' "
                             f"({describe(exc)})") from None


async def quietly(awaitable: Any, timeout: float = 2.0) -> None:
    """Await a clean-up that may fail or hang (closing a dead connection); never raises."""
    try:
        await asyncio.wait_for(awaitable, timeout)
    except Exception:
        pass


# -- what is read from the broker ------------------------------------------------------------

def int_of(raw: object, lowest: int) -> int | None:
    """A decimal integer in ``lowest`` … 2^53-1, else None (``int()`` alone takes ``" 1_0"``)."""
    if type(raw) is int:
        return raw if lowest <= raw <= MAX_SAFE_INTEGER else None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if type(raw) is not str or not 0 < len(raw) <= 16 or not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if lowest <= value <= MAX_SAFE_INTEGER else None


def _seq_of(raw: object) -> int | None:
    return int_of(raw, 1)


def time_of(raw: object) -> float | None:
    """A finite float, else None."""
    if type(raw) is float:
        return raw if math.isfinite(raw) else None
    if not isinstance(raw, str | bytes) or len(raw) > 64:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_document(data: object, max_depth: int) -> bool:
    if not isinstance(data, bytes):
        return False
    try:
        parse_json(data, max_depth)
    except JsonError:
        return False
    return True


def checked_entry(raw_seq: object, raw_t: object, data: object,
                  max_depth: int = DEFAULTS.bus_max_json_depth) -> Entry | None:
    """``(seq, t_wall, data)`` of a record read from the broker; ``data`` None when the record
    has a valid seq but a bad time or data (not one JSON document at most ``max_depth`` deep);
    None when it has no valid seq.

    A missing time (``raw_t`` None: a backend published without ``Mws-T0``) is now."""
    seq = _seq_of(raw_seq)
    if seq is None:
        return None
    if raw_t is None:
        t_wall: float | None = time.time()
    else:
        t_wall = time_of(raw_t)
    if t_wall is None or not _is_document(data, max_depth):
        return (seq, time.time() if t_wall is None else t_wall, None)
    return (seq, t_wall, data)


def epoch_of(*parts: str | bytes) -> str:
    """A channel's epoch (docs/api.md, history) from what the broker says about when its sequence began:
    16 hex digits, whatever the broker holds (read from it: untrusted, so never passed on as it is)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def to_monotonic(t_wall: float) -> float:
    """A broker's wall-clock time as this process's monotonic clock (for latency), at most MAX_AGE old."""
    return time.monotonic() - min(MAX_AGE, max(0.0, time.time() - t_wall))


def seq_key(entry: tuple) -> int:
    return entry[0]


class Limiter:
    """At most one log line per topic per ``LOG_INTERVAL`` while its key stays the same."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, float]] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, topic: str, key: str, level: int, msg: str, *args: Any, exc_info: Any = None) -> None:
        now = time.monotonic()
        last = self._last.get(topic)
        if last is not None and last[0] == key and now - last[1] < LOG_INTERVAL:
            self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
            return
        self._last[topic] = (key, now)
        skipped = self._suppressed.pop(topic, 0)
        if skipped:
            msg += " (%d more like the previous line suppressed)"
            args = (*args, skipped)
        log.log(level, msg, *args, exc_info=exc_info)


# -- the thread's view of its bridge, and what a broker implements ------------------------------

class BridgeSide(Protocol):
    """What the thread reads and writes of its :class:`bridge.Bridge` (and nothing else)."""

    url: str
    c: list[int]  # the thread writes only the bus_* fields and dropped_broker_malformed
    loop: asyncio.AbstractEventLoop | None
    closing: bool
    error: str
    reconnects: int
    # Each channel's replay limits (--channel-options), and the --bus-* bounds (config.OPTIONS), as the
    # Bridge's keywords name them.
    namespaces: Namespaces
    outbox_messages: int
    publish_batch: int
    fetch_batch: int
    backoff_min: float
    backoff_max: float
    connect_timeout: float
    heartbeat: float
    live_pending_messages: int
    live_pending_bytes: int
    max_json_depth: int
    replicas: int  # --bus-replicas: copies of a message before its publish is acknowledged (0: the broker's default)
    # The control plane (..control): this worker's id on the bus (None: no control subjects), and the
    # largest control message accepted from the broker.
    control_id: str | None
    control_max_bytes: int
    # NATS: 0 for a stream per channel (nats), else the number of shard streams (nats_shards).
    shards: int

    def emit(self, event: tuple) -> None: ...
    def take_commands(self) -> list[tuple]: ...


class Channel:
    """What the thread knows of one channel with a local subscriber (:mod:`delivery`)."""

    __slots__ = ("cursor", "buffer", "replays", "busy", "live", "catchup")

    def __init__(self) -> None:
        self.cursor: int | None = None  # last seq handed to the worker
        # Live messages waiting for a catch-up: (seq, t_wall, data, or None when malformed).
        self.buffer: list[Entry] = []
        self.replays: deque[tuple[int, int]] = deque()  # (request, since)
        self.busy = False
        self.live: Any = None  # the broker subscription on the current connection
        self.catchup = False


class Pending:
    """One publish in the outbox (:mod:`outbox`)."""

    __slots__ = ("channel", "data", "t_wall", "n", "req", "sent", "refusals", "unknown")

    def __init__(self, channel: str, data: bytes, t_wall: float, n: int, req: int) -> None:
        self.channel = channel
        self.data = data
        self.t_wall = t_wall
        self.n = n  # this publisher's message number: the de-duplication id
        self.req = req
        self.sent = False
        self.refusals = 0
        self.unknown = False  # an attempt went unanswered: it may be stored, so never answered "unavailable"


class BackendBase(abc.ABC):
    """The operations a broker implements, and the state and helpers the thread's parts share.

    The mixins (:class:`delivery.Delivery`, :class:`outbox.Outbox`) and :class:`backend.Backend`
    build on this; a broker subclasses :class:`backend.Backend`."""

    def __init__(self, bridge: BridgeSide) -> None:
        self.bridge = bridge
        self.c = bridge.c
        self.name = redact(bridge.url)
        self.channels: dict[str, Channel] = {}
        self.outbox: deque[Pending] = deque()
        self.publisher_id = uuid.uuid4().hex
        self.counter = 0
        self.connected = False
        self.log = Limiter()
        self._outbox_ready: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()  # work on the current connection
        self._sending: asyncio.Task | None = None
        self._main: asyncio.Task | None = None
        self.max_depth = bridge.max_json_depth  # of every record read (checked_entry)
        # Signal subjects followed (presence), by name: the broker's handle, None while one is being made.
        self.signals: dict[str, Any] = {}

    def _backoff(self) -> Any:
        return backoff_delays(self.bridge.backoff_min, self.bridge.backoff_max)

    # -- what a broker implements ----------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection(s); raise (BusConfigError for a broker that can never work) if not."""

    @abc.abstractmethod
    async def wait_closed(self) -> str:
        """Wait until the connection is lost; the reason."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection(s), whatever state they are in."""

    @abc.abstractmethod
    async def subscribe_live(self, channel: str) -> Any:
        """Subscribe to the channel's live messages, handed to ``on_live``; a handle for unsubscribe_live."""

    @abc.abstractmethod
    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        """Undo subscribe_live (``sub`` is what it returned)."""

    @abc.abstractmethod
    async def last_seq(self, channel: str) -> int:
        """The last seq the broker stored for the channel (0: none yet)."""

    @abc.abstractmethod
    async def fetch(self, channel: str, first: int, last: int) -> list[Entry]:
        """The stored records ``first`` … ``last`` that are still there, checked (:func:`checked_entry`):
        sorted by seq, unique, within the range; ``data`` None for a malformed one."""

    @abc.abstractmethod
    async def publish_batch(self, batch: list[Pending]) -> list[int | BaseException]:
        """Publish in order; per message its seq (0: stored, seq unknown) or what went wrong."""

    @abc.abstractmethod
    async def subscribe_control(self, me: str) -> None:
        """On the current connection, hand every message of the control subjects (everyone's, and ``me``'s
        own) to ``on_control_message``."""

    @abc.abstractmethod
    async def publish_control(self, to: str | None, body: bytes) -> None:
        """Publish a control message to every worker (``to`` None) or to worker ``to``'s own subject."""

    @abc.abstractmethod
    async def history_head(self, channel: str) -> tuple[int, int, str | None]:
        """``(last seq, oldest seq held or last + 1, epoch)`` of the channel, creating nothing: ``(0, 1, None)``
        for a channel never sequenced.  The epoch changes when the sequence starts again (:func:`epoch_of`)."""

    @abc.abstractmethod
    async def subscribe_signal(self, name: str) -> Any:
        """Follow the signal subject ``name``: what is published there is handed to ``on_signal``; a handle."""

    @abc.abstractmethod
    async def unsubscribe_signal(self, name: str, sub: Any) -> None:
        """Undo subscribe_signal (``sub`` is what it returned)."""

    @abc.abstractmethod
    async def publish_signals(self, batch: list[tuple[str, bytes]]) -> None:
        """Publish ``(name, data)`` on signal subjects, at most once (core pub/sub, no stream, no answer)."""

    def on_signal(self, name: str, data: object) -> None:
        """Something published on a followed signal subject: to the worker, which checks it (bytes, bounded)."""
        if name not in self.signals:
            return  # unsubscribed meanwhile
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_SIGNAL:
            self._malformed(1, f"a signal on {name[:60]!r} of {len(data) if isinstance(data, bytes) else 0} bytes")
            return
        self.bridge.emit((E_SIGNAL, name, data))

    def refused(self, exc: BaseException) -> bool:
        """The broker answered that it did not store the message (as opposed to no answer)."""
        return False

    # -- tasks on the current connection ------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._bug("task", exc)

    def _bug(self, where: str, exc: BaseException) -> None:
        self.log("bug:" + where, "", logging.ERROR, "bus %s: unexpected error in the %s (it ended; the bridge goes on)",
                 self.name, where, exc_info=(type(exc), exc, exc.__traceback__))

    # -- records a broker read, checked (for its fetch) ----------------------------------------
    def _keep(self, entries: dict[int, Entry], raw_seq: Any, raw_t: Any, data: Any, first: int, last: int) -> bool:
        """Add one stored record of a fetch to ``entries`` (by seq, first copy wins); False if malformed."""
        entry = checked_entry(raw_seq, raw_t, data, self.max_depth)
        if entry is None or not first <= entry[0] <= last:
            return False
        entries.setdefault(entry[0], entry)
        return True

    def _fetched(self, channel: str, entries: dict[int, Entry], bad: int) -> list[Entry]:
        """A fetch's checked records in seq order; the malformed ones counted and logged."""
        if bad:
            self._malformed(bad, f"stored record(s) of {channel!r} without a valid sequence number")
        return sorted(entries.values(), key=seq_key)

    def _malformed(self, count: int, what: str) -> None:
        self.c[_MALFORMED] += count
        self.log("malformed", "", logging.WARNING, "bus %s: dropped %d malformed record(s) from the broker: %s",
                 self.name, count, what)
