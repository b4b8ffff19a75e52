"""Channels across nodes: ``--bus nats://host:port`` or ``--bus redis://host:port``.

Theory of operation.

**Who numbers the messages.**  With a bus the broker is the one sequencer of every
channel, so ``seq`` is the same on every node, strictly increasing and gap-free:

* NATS: one JetStream stream per channel (name ``MWS_<blake2b of the channel>``) that
  captures the subject ``mws.in.<channel>``.  The stream sequence *is* the channel's
  ``seq``.  The stream republishes every stored message on the core subject
  ``mws.live.<channel>`` with a ``Nats-Sequence`` header (JetStream RePublish): live
  traffic is plain core pub/sub, sequenced by the broker, with no consumer state.
  File storage, ``max_age`` = ``--replay-seconds``, ``max_msgs`` = ``--replay-max-messages``,
  ``allow_direct`` for replay reads: the replay window survives a restart of any node
  and of the broker.  Publishes carry ``Nats-Msg-Id`` so a retry after an outage is
  stored once (JetStream de-duplication); the PubAck of a duplicate carries the
  original's sequence.
* Redis: a function ``mws_publish`` (``FUNCTION LOAD``, Redis ≥ 7) runs atomically:
  ``INCR mws:{C}:seq``, ``XADD mws:{C}:log`` with the explicit id ``0-<seq>`` (trimmed to
  ``MAXLEN`` and expired after the replay window), and ``PUBLISH mws:live:C
  "<seq> <unix time> <data>"``; it returns the seq.  A per-publisher sorted set
  ``mws:{C}:acks:<publisher>`` (score: the publisher's message number, member: the seq)
  makes a retried publish a no-op that returns the original seq.  The publisher passes
  the number of its oldest unacknowledged message, and the function forgets everything
  older, so the set holds at most the messages in flight and expires with the window.
  Replay reads the stream with ``XRANGE``.  The ``{C}`` hash tag keeps a channel's keys
  in one cluster slot, the slot of the key ``C`` the function declares.

**Backends publish without a WebSocket.**  NATS: publish the JSON document on
``mws.in.<channel>`` (``nats pub mws.in.news '{"x":1}'``; JetStream publish to get an
ack).  Redis: ``FCALL mws_publish 1 news '{"x":1}'``.  Channel names with an empty
subject token (``a..b``, ``.a``) are spelt ``~<hex of the name>`` in NATS subjects.
Only the broker may publish on ``mws.live.>`` / ``mws:live:*`` (NATS permissions, Redis
ACLs): a well-formed message forged there is indistinguishable from a real one.

**Not blocking the reactor: a bridge thread per worker.**  Each worker runs one thread
with an asyncio loop and the maintained client library (``nats-py``, ``redis``).  The
reactor hands it commands (interest, publish, replay) through a deque and one
``call_soon_threadsafe`` per loop turn; the thread hands back events (messages, gaps,
replay answers, publish acks, bus state) through a deque and an ``eventfd`` registered
in the reactor, written only when the deque goes from empty to non-empty.  Chosen over a
sans-IO parser driven by the reactor because JetStream (stream management, direct get,
de-duplication) and Redis (RESP3, functions, reconnection) are large protocols whose
maintained clients are worth more than the GIL contention of one mostly idle thread; the
reactor never waits on the broker, and one eventfd read per batch of events costs less
than a message.  Each event the reactor hands to the worker runs inside an exception
boundary (:mod:`boundary`): one that raises is counted and logged, the next one runs.

**A publish is acknowledged with its seq.**  ``publish(channel, data, t0, req)`` is
answered exactly once with ``(E_ACK, req, seq, error)``:

* ``seq >= 1, error == ""``: the broker stored it as that seq of the channel (NATS: the
  PubAck; Redis: what ``mws_publish`` returned).
* ``seq == 0, error == ""``: stored, seq unknown.  Part of the contract for a broker that
  answers a retry without the original seq; NATS and Redis as used here always give it.
* ``seq == 0, error == "unavailable: …"``: not stored; the client may retry.

The thread publishes the outbox in order, in batches of ``--bus-publish-batch`` on one
connection, one batch at a time, and answers each message in outbox order.

**Outage policy: nothing is parked silently.**  A message is *sent* once it went into a
batch, whether or not the broker answered.  A publish that reaches the thread while the
connection is down, and every message still unsent in the outbox when the connection
drops, is answered ``unavailable`` at once: it was never written, so a retry cannot
duplicate it.  Sent and unanswered messages may be stored: they stay at the head of the
outbox and are sent again first after reconnecting, the de-duplication above stores them
once and answers with the original seq.  De-duplication lasts a window (NATS: the replay
window capped at 120 s; Redis: the replay window): a message still unanswered after an
outage longer than that may be stored twice (at least once, never silently lost).  A
message the broker explicitly refused (an error answer, not a timeout) is sent again
``REFUSALS - 1`` times with backoff, then answered ``unavailable``.  Beyond
``--bus-outbox-messages`` a publish is answered ``unavailable: outbox full`` and counted in
``bus_dropped``.  ``millionws_bus_outbox`` is the outbox depth (sent or not, unanswered).
Should the thread itself stop (a bug), unsent publishes are answered ``unavailable`` and
sent ones are left to the worker's publish timeout: their outcome is unknown.

**Fail fast and loud.**  :func:`preflight` runs once in the supervisor before it forks:
a missing client library, a NATS server without JetStream or a Redis older than 7 raise
:class:`BusConfigError` (the server refuses to start: it could never deliver across
nodes); an unreachable broker is a warning, since it may come up later.  The bridge
checks the same at every connect (a JetStream-less NATS counts as a failed connect, so
``bus.up`` stays false with the reason in ``/health``).  From the first failed connect
and on every lost connection the bridge logs a WARNING with the reason, at most one line
per ``LOG_INTERVAL`` seconds while the reason stays the same (the next line says how
many were suppressed), and one line when it is back.  A black-holed broker is noticed
too: NATS pings every 5 s; on Redis the thread publishes to its own heartbeat channel
every ``HEARTBEAT`` seconds and expects it back on its pub/sub connection.

**Gap-free on every node.**  The thread keeps, per channel with a local subscriber, the
last ``seq`` it handed to the worker (the cursor).  A live message is handed over only if
it is ``cursor + 1``; an older one is a duplicate and dropped; a newer one (core pub/sub
lost some, or the bus was down) triggers a catch-up read of the missing range from the
stream before it.  When the range is no longer stored, subscribers get a ``gap``
(``expired``); when the broker's sequence went backwards (its data was lost), a ``gap``
``unknown``.  A ``subscribe`` with ``since`` is answered by the thread in order with the
live events of that channel: the answer holds ``since+1 .. cursor`` and every later live
message follows it, so the worker needs no hold buffer.

**Nothing read from the broker is trusted.**  Anyone who can publish on the broker can
put anything there, so every record is checked in the thread before it reaches the
worker: a seq is a decimal integer in 1 … 2^53-1, a time a finite float, the data one
JSON document (:func:`jsonsafe.parse`, at most ``--bus-max-json-depth`` deep).  A record
without a valid seq cannot be placed and is dropped
(``millionws_records_dropped_total{kind="broker_malformed"}``).  A live record with a
valid seq but bad time or data is never handed over from the live path: it triggers a
catch-up, because the stream, not the live subject, says what that seq holds.  A stored
record that is malformed is skipped without stalling the channel: the cursor moves past
it and subscribers get ``gap`` ``unknown`` for that one seq.  Live records that were
ahead of the stream's last seq when the thread read it were never stored (the broker
publishes live only after storing) and are dropped, so a forged future seq cannot make
the thread catch up forever.  A replay answer is cut after its
last hole or malformed record (``gap`` ``unknown``).  Answers that break an invariant
(a seq out of the requested range, a sequence that is not a number) are counted or end
the one task, logged; they never stop the thread.

**Interest.**  A worker subscribes to ``mws.live.C`` / ``mws:live:C`` only while it has a
local subscriber of C (each worker is a broker client; a node subscribes at most once
per worker), and unsubscribes with the last one.

**Outage.**  The thread reconnects with exponential backoff and full jitter
(``--bus-backoff-min``, 0.1 s, doubling to ``--bus-backoff-max``, 5 s; back to the minimum
only after a connection that stayed up ``STABLE`` seconds, so a broker that accepts and
drops at once is not hammered), resubscribes every channel of interest and catches up
from each cursor.  Meanwhile the node serves
everything local (WebSockets, subscriptions, HTTP, /health 200 with ``bus.up: false``)
and answers publishes as above.  ``millionws_bus_up`` and
``millionws_bus_reconnects_total`` show it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from .. import boundary
from ..config import DEFAULTS
from ..core.reactor import EPOLLIN, Reactor
from ..jsonsafe import MAX_SAFE_INTEGER, JsonError
from ..jsonsafe import parse as parse_json
from ..metrics import F

log = logging.getLogger("millionws.pubsub.broker")

CONNECT_TIMEOUT = 2.0
HEARTBEAT = 5.0
STABLE = 10.0  # a connection up this long resets the reconnect backoff
LOG_INTERVAL = 30.0
REFUSALS = 3
# A t0 from the broker only feeds the fanout latency histogram: an absurd one must not
# overflow its int64 sum.
MAX_AGE = 86_400.0

# Events for the worker (first item).
E_MSG, E_GAP, E_REPLAY, E_STATE, E_ACK = range(5)
GAP_NONE, GAP_EXPIRED, GAP_UNKNOWN = 0, 1, 2  # as in channels

NO_JETSTREAM = "JetStream is not enabled on this NATS server (start nats-server with -js)"
REDIS_TOO_OLD = "Redis >= 7 is needed (millionws sequences with a Redis function, FUNCTION LOAD)"

_UP, _RECONNECTS = F["bus_up"], F["bus_reconnects"]
_SENT, _RECEIVED, _DROPPED, _CATCHUPS = F["bus_published"], F["bus_received"], F["bus_dropped"], F["bus_catchups"]
_OUTBOX, _MALFORMED = F["bus_outbox"], F["dropped_broker_malformed"]


class BusConfigError(Exception):
    """A ``--bus`` that cannot work as configured; the message is one line for the operator."""


class BrokerDataError(Exception):
    """The broker answered something that breaks an invariant (a sequence that is not a number)."""


def subject_token(channel: str) -> str:
    """The channel as (possibly several) NATS subject tokens."""
    if "" in channel.split("."):
        return "~" + channel.encode().hex()
    return channel


def nats_names(channel: str) -> tuple[str, str, str]:
    """``(stream, input subject, live subject)`` of a channel."""
    token = subject_token(channel)
    stream = "MWS_" + hashlib.blake2b(channel.encode(), digest_size=16).hexdigest()
    return stream, f"mws.in.{token}", f"mws.live.{token}"


def backoff_delays(minimum: float = DEFAULTS.bus_backoff_min, maximum: float = DEFAULTS.bus_backoff_max) -> Any:
    """Exponential backoff with full jitter: uniform(0, min(maximum, minimum * 2**n))."""
    n = 0
    while True:
        yield random.uniform(0, min(maximum, minimum * 2 ** n))
        n += 1


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}{slash}{path}"


def describe(exc: BaseException) -> str:
    """One line naming an exception, for logs and ``/health``."""
    if isinstance(exc, BusConfigError | BrokerDataError):
        return str(exc)
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:300]


# -- what is read from the broker ------------------------------------------------------------

def _int_of(raw: object, lowest: int) -> int | None:
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
    return _int_of(raw, 1)


def _time_of(raw: object) -> float | None:
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
                  max_depth: int = DEFAULTS.bus_max_json_depth) -> tuple[int, float, bytes | None] | None:
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
        t_wall = _time_of(raw_t)
    if t_wall is None or not _is_document(data, max_depth):
        return (seq, time.time() if t_wall is None else t_wall, None)
    return (seq, t_wall, data)


def _to_monotonic(t_wall: float) -> float:
    return time.monotonic() - min(MAX_AGE, max(0.0, time.time() - t_wall))


class _Limiter:
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


# -- connecting (shared by the bridge and preflight) ------------------------------------------

def _require(url: str) -> None:
    """Import the client library of ``url`` or raise BusConfigError."""
    extra = "nats" if url.startswith("nats://") else "redis" if url.startswith("redis://") else ""
    if not extra:
        raise BusConfigError(f"--bus {redact(url)}: must be nats://host:port or redis://host:port")
    try:
        if extra == "nats":
            importlib.import_module("nats")
            importlib.import_module("nats.js")
        else:
            importlib.import_module("redis")
            importlib.import_module("redis.asyncio")
    except ImportError as exc:
        raise BusConfigError(f"--bus {redact(url)} needs the {extra} extra: pip install 'millionws[{extra}]' "
                             f"({describe(exc)})") from None


async def _quietly(awaitable: Any, timeout: float = 2.0) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except Exception:
        pass


async def nats_connect(url: str, timeout: float, **options: Any) -> Any:
    """A connected nats-py client whose server has JetStream, or an exception."""
    _require(url)
    import nats
    from nats.errors import NoServersError
    from nats.js.errors import ServiceUnavailableError

    failures: list[BaseException] = []
    forward = options.pop("error_cb", None)

    async def on_error(exc: Exception) -> None:
        failures.append(exc)
        if forward is not None:
            await forward(exc)

    # nats-py retries a refused server forever unless max_reconnect_attempts > 0; the
    # caller has its own backoff, so one quick retry is enough.
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=timeout, max_reconnect_attempts=1,
                                reconnect_time_wait=0, error_cb=on_error, **options)
    except NoServersError:
        raise ConnectionError(describe(failures[-1]) if failures else "no NATS server answered") from None
    try:
        try:
            await nc.jetstream(timeout=timeout).account_info()
        except ServiceUnavailableError as exc:
            # No responders (JetStream off) or 10039 "jetstream not enabled for account";
            # other 503s (a cluster electing a leader) pass.
            if exc.err_code in (None, 10039):
                raise BusConfigError(NO_JETSTREAM) from None
            raise
    except BaseException:
        await _quietly(nc.close())
        raise
    return nc


async def redis_connect(url: str, timeout: float) -> Any:
    """A redis-py client that answered PING from a Redis >= 7 (when INFO tells), or an exception."""
    _require(url)
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ResponseError

    # No retry inside the library: a lost connection must reach Backend.main, which
    # resubscribes and catches up.
    r = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_keepalive=True,
                                retry=Retry(NoBackoff(), 0), health_check_interval=HEARTBEAT)
    try:
        try:
            await r.ping()
        except ResponseError as exc:  # redis-py speaks RESP3: HELLO is unknown before Redis 6
            if "unknown command" in str(exc).lower():
                raise BusConfigError(f"{REDIS_TOO_OLD}; this server does not even know HELLO (Redis < 6)") from None
            raise
        try:
            info = await r.info("server")
        except ResponseError:  # INFO renamed away (managed Redis): FUNCTION LOAD will tell
            info = {}
        version = str(info.get("redis_version", ""))
        major = version.split(".", 1)[0]
        if major.isdigit() and int(major) < 7:
            raise BusConfigError(f"{REDIS_TOO_OLD}; this server is Redis {version}")
    except BaseException:
        await _quietly(r.aclose())
        raise
    return r


def preflight(url: str, timeout: float = 2.0) -> str | None:
    """Check ``--bus`` once before the workers start.

    Raises :class:`BusConfigError` when the configuration cannot work (client library
    missing, NATS without JetStream, Redis < 7); returns a one-line warning when the broker
    cannot be reached right now (the server starts and reports not ready); None when all is
    well.  Synchronous, bounded by about ``timeout``."""
    _require(url)

    async def probe() -> None:
        if url.startswith("nats://"):
            nc = await nats_connect(url, timeout, error_cb=_ignore)
            await _quietly(nc.close())
            return
        from redis.exceptions import ResponseError

        r = await redis_connect(url, timeout)
        try:
            await r.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "millionws")
        except ResponseError as exc:
            if "unknown command" in str(exc).lower():
                raise BusConfigError(REDIS_TOO_OLD) from None
        finally:
            await _quietly(r.aclose())

    async def bounded() -> None:
        await asyncio.wait_for(probe(), timeout)

    try:
        _run_sync(bounded)
    except BusConfigError:
        raise
    except TimeoutError:
        return (f"bus {redact(url)}: no answer within {timeout:g} s; serving local traffic only, "
                "not ready until it connects")
    except Exception as exc:
        return (f"bus {redact(url)}: unreachable ({describe(exc)}); serving local traffic only, "
                "not ready until it connects")
    return None


async def _ignore(_exc: Exception) -> None:
    pass  # nats-py logs every connect error with a traceback unless given a callback


def _run_sync(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(factory())
        return
    failure: list[BaseException] = []  # called from a running loop (a test): use a thread

    def run() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="millionws-preflight", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


# -- the bridge ---------------------------------------------------------------------------------

class Channel:
    """What the thread knows of one channel with a local subscriber."""

    __slots__ = ("cursor", "buffer", "replays", "busy", "live", "catchup")

    def __init__(self) -> None:
        self.cursor: int | None = None  # last seq handed to the worker
        # Live messages waiting for a catch-up: (seq, t_wall, data, or None when malformed).
        self.buffer: list[tuple[int, float, bytes | None]] = []
        self.replays: deque[tuple[int, int]] = deque()  # (request, since)
        self.busy = False
        self.live: Any = None  # the broker subscription on the current connection
        self.catchup = False


class Pending:
    """One publish in the outbox."""

    __slots__ = ("channel", "data", "t_wall", "n", "req", "sent", "refusals")

    def __init__(self, channel: str, data: bytes, t_wall: float, n: int, req: int) -> None:
        self.channel = channel
        self.data = data
        self.t_wall = t_wall
        self.n = n  # this publisher's message number: the de-duplication id
        self.req = req
        self.sent = False
        self.refusals = 0


class Bridge:
    """The worker's side of the bus: commands out, events in.  See the module docstring.

    ``on_event(event)`` runs on the reactor with ``(E_MSG, channel, seq, data, t0)``,
    ``(E_GAP, channel, last, first, reason)``, ``(E_REPLAY, req, reason, first, entries)``,
    ``(E_STATE, up)`` or ``(E_ACK, req, seq, error)``.

    The keyword arguments are the ``--bus-*`` bounds of the same names (``config.OPTIONS``);
    the thread reads them from here.
    """

    def __init__(self, url: str, reactor: Reactor, counters: list[int], on_event: Callable[[tuple], None],
                 replay_seconds: float = 120.0, replay_max_messages: int = 1000, *,
                 outbox_messages: int = DEFAULTS.bus_outbox_messages, publish_batch: int = DEFAULTS.bus_publish_batch,
                 fetch_batch: int = DEFAULTS.bus_fetch_batch, events_per_wake: int = DEFAULTS.bus_events_per_wake,
                 backoff_min: float = DEFAULTS.bus_backoff_min, backoff_max: float = DEFAULTS.bus_backoff_max,
                 live_pending_messages: int = DEFAULTS.bus_live_pending_messages,
                 live_pending_bytes: int = DEFAULTS.bus_live_pending_bytes,
                 max_json_depth: int = DEFAULTS.bus_max_json_depth) -> None:
        self.url = url
        self.name = redact(url)
        self.reactor = reactor
        self.c = counters  # the thread writes only the bus_* fields and dropped_broker_malformed
        self.on_event = on_event
        self.replay_seconds = replay_seconds
        self.replay_max_messages = replay_max_messages
        self.outbox_messages = outbox_messages
        self.publish_batch = publish_batch
        self.fetch_batch = fetch_batch
        self.events_per_wake = events_per_wake
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.live_pending_messages = live_pending_messages
        self.live_pending_bytes = live_pending_bytes
        self.max_json_depth = max_json_depth
        self.backend: Backend = (NatsBackend if url.startswith("nats://") else RedisBackend)(self)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events: deque[tuple] = deque()
        self._wake_pending = False
        self._cmds: deque[tuple] = deque()
        self._kick_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.up = False
        self.reconnects = 0
        self.error = ""
        self.stopped = False  # the thread is gone: publishes are answered here
        self.closing = False

    # -- reactor side ----------------------------------------------------------------------
    def start(self) -> None:
        self.reactor.add_handler(self.efd, EPOLLIN, self._on_wake)
        self.thread = threading.Thread(target=self._thread_main, name="millionws-bus", daemon=True)
        self.thread.start()

    def interest(self, channel: str, on: bool) -> None:
        self._command(("interest", channel, on))

    def publish(self, channel: str, data: bytes, t0: float, req: int) -> None:
        """Publish; answered once with ``(E_ACK, req, seq, error)``.  ``req`` >= 1, unique per worker."""
        if self.stopped:
            self.emit((E_ACK, req, 0, "unavailable: broker thread stopped"))
            return
        self._command(("publish", channel, data, time.time() - (time.monotonic() - t0), req))

    def replay(self, req: int, channel: str, since: int) -> None:
        self._command(("replay", channel, req, since))

    def detail(self) -> dict[str, Any]:
        """For /health."""
        scheme = self.url.split("://", 1)[0]
        return {"kind": scheme, "up": self.up, "reconnects": self.reconnects, "outbox": len(self.backend.outbox),
                **({"error": self.error} if self.error and not self.up else {})}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the broker connection (tests; a worker that exits)."""
        self.closing = True
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.backend.stop)
            except RuntimeError:  # the loop is already closed
                pass
        if self.thread is not None:
            self.thread.join(timeout)
        self.reactor.remove_handler(self.efd)
        if self.thread is None or not self.thread.is_alive():  # else it may still write the eventfd
            os.close(self.efd)

    def _command(self, cmd: tuple) -> None:
        self._cmds.append(cmd)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self.reactor.call_later(0, self._kick)  # one thread wake-up per loop turn

    def _kick(self) -> None:
        self._kick_scheduled = False
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.backend.commands_ready)
            except RuntimeError:  # the loop is closed: the worker is exiting
                pass

    def _on_wake(self, _events: int) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        self._wake_pending = False
        events = self._events
        on_event = self.on_event
        for _ in range(self.events_per_wake):
            if not events:
                return
            event = events.popleft()
            if event[0] == E_STATE:
                self.up = event[1]
            try:
                on_event(event)
            except Exception as exc:  # one bad event must not cost the ones queued behind it
                boundary.report(self.c, "broker", exc, "bus event")
        if events:  # the clients get a turn too; come back for the rest
            self._wake_pending = True
            os.eventfd_write(self.efd, 1)

    # -- thread side -----------------------------------------------------------------------
    def emit(self, event: tuple) -> None:
        self._events.append(event)
        if not self._wake_pending:
            self._wake_pending = True
            os.eventfd_write(self.efd, 1)

    def take_commands(self) -> list[tuple]:
        cmds = []
        pop = self._cmds.popleft
        while self._cmds:
            cmds.append(pop())
        return cmds

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.backend.main())
        except asyncio.CancelledError:  # close()
            pass
        except Exception:  # never expected; the node keeps serving local traffic
            log.exception("bus %s: thread stopped", self.name)
        finally:
            self.c[_UP] = 0
            self.stopped = True
            for cmd in self.take_commands():  # nobody will send these
                if cmd[0] == "publish":
                    self.emit((E_ACK, cmd[4], 0, "unavailable: broker thread stopped"))
            # Sent ones may be stored: no answer is honest (the worker's publish timeout tells the client).
            self.backend._refuse_unsent("unavailable: broker thread stopped")
            if self.up:
                self.emit((E_STATE, False))


class Backend:
    """The broker-independent part of the thread: channels, cursors, outbox, reconnection."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.c = bridge.c
        self.name = redact(bridge.url)
        self.channels: dict[str, Channel] = {}
        self.outbox: deque[Pending] = deque()
        self.publisher_id = uuid.uuid4().hex
        self.counter = 0
        self.connected = False
        self.log = _Limiter()
        self._outbox_ready: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()  # work on the current connection
        self._sending: asyncio.Task | None = None
        self._main: asyncio.Task | None = None
        self.max_depth = bridge.max_json_depth  # of every record read (checked_entry)

    def _backoff(self) -> Any:
        return backoff_delays(self.bridge.backoff_min, self.bridge.backoff_max)

    # -- what a broker implements ----------------------------------------------------------
    async def connect(self) -> None: ...
    async def wait_closed(self) -> str:
        """Wait until the connection is lost; the reason."""
        raise NotImplementedError
    async def close(self) -> None: ...
    async def subscribe_live(self, channel: str) -> Any: ...
    async def unsubscribe_live(self, channel: str, sub: Any) -> None: ...
    async def last_seq(self, channel: str) -> int: ...

    async def fetch(self, channel: str, first: int, last: int) -> list[tuple[int, float, bytes | None]]:
        """The stored records ``first`` … ``last`` that are still there, checked (:func:`checked_entry`):
        sorted by seq, unique, within the range; ``data`` None for a malformed one."""
        raise NotImplementedError

    async def publish_batch(self, batch: list[Pending]) -> list[int | BaseException]:
        """Publish in order; per message its seq (0: stored, seq unknown) or what went wrong."""
        raise NotImplementedError

    def refused(self, exc: BaseException) -> bool:
        """The broker answered that it did not store the message (as opposed to no answer)."""
        return False

    # -- the loop ----------------------------------------------------------------------------
    async def main(self) -> None:
        self._main = asyncio.current_task()
        self._outbox_ready = asyncio.Event()
        self.bridge.loop = asyncio.get_running_loop()
        if self.bridge.closing:
            return
        self.commands_ready()
        publisher = asyncio.get_running_loop().create_task(self._publisher())
        try:
            await self._connection_loop()
        finally:
            publisher.cancel()
            self._drop_connection_tasks()
            self.connected = False
            await _quietly(self.close())

    def stop(self) -> None:
        if self._main is not None:
            self._main.cancel()

    async def _connection_loop(self) -> None:
        bridge = self.bridge
        delays = self._backoff()
        down_since = time.monotonic()
        ever_up = False
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self.connect(), CONNECT_TIMEOUT * 4)
            except TimeoutError:
                failures += 1
                self._down(f"no answer within {CONNECT_TIMEOUT * 4:g} s", "cannot connect")
                await asyncio.sleep(next(delays))
                continue
            except Exception as exc:
                failures += 1
                self._down(describe(exc), "cannot connect")
                await asyncio.sleep(next(delays))
                continue
            connected_at = time.monotonic()
            self.connected = True
            self.c[_UP] = 1
            more = f" ({failures} failed attempts)" if failures else ""
            if ever_up:
                self.c[_RECONNECTS] += 1
                bridge.reconnects += 1
                self.log("recovered", "", logging.WARNING, "bus %s: reconnected after %.1f s%s", self.name,
                         connected_at - down_since, more)
            elif failures:
                log.warning("bus %s: connected after %.1f s%s", self.name, connected_at - down_since, more)
            else:
                log.info("bus %s: connected", self.name)
            ever_up = True
            failures = 0
            bridge.emit((E_STATE, True))
            for channel, state in self.channels.items():
                state.live = None
                state.catchup = state.cursor is not None
                self._spawn(self.sync(channel))
            assert self._outbox_ready is not None
            self._outbox_ready.set()  # sent-but-unanswered messages go out again first
            try:
                reason = await self.wait_closed()
            except Exception as exc:
                reason = describe(exc)
            down_since = time.monotonic()
            self.connected = False
            self.c[_UP] = 0
            self._drop_connection_tasks()
            self._refuse_unsent("unavailable: broker connection lost")
            bridge.emit((E_STATE, False))
            self._down(reason or "connection closed", "connection lost")
            await _quietly(self.close())
            if down_since - connected_at >= STABLE:  # a connection that drops at once must not spin
                delays = self._backoff()
            await asyncio.sleep(next(delays))

    def _down(self, reason: str, what: str) -> None:
        self.bridge.error = reason
        self.log("connection", reason, logging.WARNING, "bus %s: %s: %s (publishes are refused until connected)",
                 self.name, what, reason)

    def _drop_connection_tasks(self) -> None:
        """Work blocked on a dead connection would never end: cancel it; the next connect resyncs."""
        if self._sending is not None:
            self._sending.cancel()
        for task in list(self._tasks):
            task.cancel()

    def _refuse_unsent(self, error: str) -> None:
        outbox = self.outbox
        refused: list[Pending] = []
        while outbox and not outbox[-1].sent:  # the sent ones are a prefix
            refused.append(outbox.pop())
        emit = self.bridge.emit
        for pending in reversed(refused):
            emit((E_ACK, pending.req, 0, error))
        self.c[_OUTBOX] = len(outbox)

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

    def _keep(self, entries: dict[int, tuple[int, float, bytes | None]], raw_seq: Any, raw_t: Any, data: Any,
              first: int, last: int) -> bool:
        """Add one stored record of a fetch to ``entries`` (by seq, first copy wins); False if malformed."""
        entry = checked_entry(raw_seq, raw_t, data, self.max_depth)
        if entry is None or not first <= entry[0] <= last:
            return False
        entries.setdefault(entry[0], entry)
        return True

    def _fetched(self, channel: str, entries: dict[int, tuple[int, float, bytes | None]],
                 bad: int) -> list[tuple[int, float, bytes]]:
        """A fetch's checked records in seq order; the malformed ones counted and logged."""
        if bad:
            self._malformed(bad, f"stored record(s) of {channel!r} without a valid sequence number")
        return sorted(entries.values(), key=_seq_key)

    def _malformed(self, count: int, what: str) -> None:
        self.c[_MALFORMED] += count
        self.log("malformed", "", logging.WARNING, "bus %s: dropped %d malformed record(s) from the broker: %s",
                 self.name, count, what)

    def commands_ready(self) -> None:
        added = False
        for cmd in self.bridge.take_commands():
            try:
                added = self._command(cmd) or added
            except Exception as exc:  # one bad command must not lose the others
                self._bug("command " + str(cmd[0]), exc)
        if added:
            self.c[_OUTBOX] = len(self.outbox)
            if self._outbox_ready is not None:
                self._outbox_ready.set()

    def _command(self, cmd: tuple) -> bool:
        kind = cmd[0]
        emit = self.bridge.emit
        if kind == "publish":
            _, channel, data, t_wall, req = cmd
            if not self.connected:
                emit((E_ACK, req, 0, "unavailable: broker not connected"))
            elif len(self.outbox) >= self.bridge.outbox_messages:
                self.c[_DROPPED] += 1
                emit((E_ACK, req, 0, "unavailable: outbox full"))
            else:
                self.counter += 1
                self.outbox.append(Pending(channel, data, t_wall, self.counter, req))
                return True
        elif kind == "interest":
            _, channel, on = cmd
            if on:
                if channel not in self.channels:
                    self.channels[channel] = Channel()
                    self._spawn(self.sync(channel))
            else:
                state = self.channels.pop(channel, None)
                if state is not None:
                    for req, _since in state.replays:  # nobody waits for them any more
                        emit((E_REPLAY, req, GAP_NONE, 0, []))
                    if state.live is not None and self.connected:
                        self._spawn(self._unsubscribe(channel, state.live))
        elif kind == "replay":
            _, channel, req, since = cmd
            state = self.channels.get(channel)
            if state is None:
                emit((E_REPLAY, req, GAP_NONE, 0, []))
            else:
                state.replays.append((req, since))
                self._spawn(self.sync(channel))
        return False

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

    def _hand_over(self, channel: str, state: Channel, entry: tuple[int, float, bytes | None]) -> None:
        seq, t_wall, data = entry
        state.cursor = seq
        if data is None:  # stored but malformed: skip it, say so
            self._malformed(1, f"seq {seq} of {channel!r} is not one JSON document with a valid time")
            self.bridge.emit((E_GAP, channel, seq - 1, seq + 1, GAP_UNKNOWN))
        else:
            self.bridge.emit((E_MSG, channel, seq, data, _to_monotonic(t_wall)))

    async def sync(self, channel: str) -> None:
        """Bring one channel up to date: subscribe, catch up, flush the buffer, answer replays."""
        state = self.channels.get(channel)
        if state is None or state.busy or not self.connected:
            return
        state.busy = True
        emit = self.bridge.emit
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
                buffered = sorted(state.buffer, key=_seq_key)
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
                    req, since = state.replays[0]
                    emit(await self._replay(channel, req, since, state.cursor))
                    state.replays.popleft()
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

    async def _replay(self, channel: str, req: int, since: int, cursor: int) -> tuple:
        if since > cursor:
            return (E_REPLAY, req, GAP_UNKNOWN, cursor + 1, [])
        if since == cursor:
            return (E_REPLAY, req, GAP_NONE, cursor + 1, [])
        entries = await self.fetch(channel, since + 1, cursor)
        # The answer is contiguous up to the cursor: cut it after its last hole or malformed record.
        run: list[tuple[int, float, bytes]] = []
        expect = cursor
        anomaly = False
        for seq, t_wall, data in reversed(entries):
            if seq != expect or data is None:
                anomaly = True
                break
            run.append((seq, _to_monotonic(t_wall), data))
            expect -= 1
        bad = sum(1 for entry in entries if entry[2] is None)
        if bad:
            self._malformed(bad, f"stored record(s) of {channel!r} left out of a replay")
        run.reverse()
        if expect == since:
            return (E_REPLAY, req, GAP_NONE, since + 1, run)
        return (E_REPLAY, req, GAP_UNKNOWN if anomaly else GAP_EXPIRED, expect + 1, run)

    # -- publishing --------------------------------------------------------------------------
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
                if pending.refusals < REFUSALS:
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


def _seq_key(entry: tuple) -> int:
    return entry[0]


class NatsBackend(Backend):
    """JetStream streams per channel, core subscriptions to their republished subjects."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(bridge)
        self.nc: Any = None
        self.js: Any = None
        self.streams: set[str] = set()
        self._closed: asyncio.Event | None = None

    async def connect(self) -> None:
        self._closed = closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        async def on_error(exc: Exception) -> None:
            self.bridge.error = describe(exc)

        self.nc = await nats_connect(self.bridge.url, CONNECT_TIMEOUT, closed_cb=on_closed,
                                     disconnected_cb=on_closed, error_cb=on_error, max_outstanding_pings=2,
                                     ping_interval=HEARTBEAT)
        self.js = self.nc.jetstream(timeout=5)
        self.streams.clear()

    async def wait_closed(self) -> str:
        assert self._closed is not None
        await self._closed.wait()
        err = self.nc.last_error if self.nc is not None else None
        return describe(err) if err is not None else "the connection closed"

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    def refused(self, exc: BaseException) -> bool:
        from nats.errors import MaxPayloadError, NoRespondersError
        from nats.js.errors import APIError, NoStreamResponseError

        return isinstance(exc, APIError | NoStreamResponseError | NoRespondersError | MaxPayloadError)

    def _config(self, channel: str) -> Any:
        from nats.js.api import RePublish, StorageType, StreamConfig

        stream, subject, live = nats_names(channel)
        bridge = self.bridge
        age = max(1.0, bridge.replay_seconds)
        return StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE,
                            max_msgs=max(1, bridge.replay_max_messages), max_age=age,
                            duplicate_window=min(age, 120.0), allow_direct=True,
                            republish=RePublish(src=subject, dest=live), description=f"millionws {channel}")

    async def ensure_stream(self, channel: str) -> Any:
        from nats.js.errors import BadRequestError

        config = self._config(channel)
        try:
            info = await self.js.add_stream(config)
        except BadRequestError:  # exists with another configuration (another node's flags)
            info = await self.js.stream_info(config.name)
        self.streams.add(config.name)
        return info

    async def subscribe_live(self, channel: str) -> Any:
        await self.ensure_stream(channel)
        on_live = self.on_live

        async def cb(msg: Any) -> None:
            try:
                headers = msg.headers or {}
                on_live(channel, headers.get("Nats-Sequence"), headers.get("Mws-T0"), msg.data)
            except Exception as exc:
                self._bug("live message handler", exc)

        # Past these the client drops live messages (slow consumer); the next one read shows the gap: caught up.
        return await self.nc.subscribe(nats_names(channel)[2], cb=cb,
                                       pending_msgs_limit=self.bridge.live_pending_messages,
                                       pending_bytes_limit=self.bridge.live_pending_bytes)

    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        await sub.unsubscribe()

    async def last_seq(self, channel: str) -> int:
        info = await self.ensure_stream(channel)
        last = _int_of(getattr(getattr(info, "state", None), "last_seq", None), 0)
        if last is None:
            raise BrokerDataError(f"stream info of {channel!r} has no valid last_seq")
        return last

    async def fetch(self, channel: str, first: int, last: int) -> list[tuple[int, float, bytes | None]]:
        from nats.js.errors import NotFoundError

        stream = nats_names(channel)[0]
        info = await self.js.stream_info(stream)
        start = max(first, _int_of(getattr(getattr(info, "state", None), "first_seq", None), 0) or 0)
        entries: dict[int, tuple[int, float, bytes | None]] = {}
        bad = 0

        async def get(seq: int) -> Any:
            try:
                return await self.js.get_msg(stream, seq=seq, direct=True)
            except NotFoundError:
                return None
            except (KeyError, ValueError, TypeError, AttributeError) as exc:  # an answer nats-py cannot read
                return BrokerDataError(describe(exc))

        batch = self.bridge.fetch_batch
        for lo in range(start, last + 1, batch):
            got = await asyncio.gather(*(get(s) for s in range(lo, min(last, lo + batch - 1) + 1)),
                                       return_exceptions=True)
            for msg in got:
                if msg is None:
                    continue
                if isinstance(msg, BrokerDataError):
                    bad += 1
                    continue
                if isinstance(msg, BaseException):
                    raise msg
                headers = msg.headers or {}
                raw_t = headers.get("Mws-T0")
                if raw_t is None and msg.time is not None:  # published by a backend: the store time
                    raw_t = msg.time.timestamp()
                if not self._keep(entries, msg.seq, raw_t, msg.data or b"", first, last):
                    bad += 1
        return self._fetched(channel, entries, bad)

    async def publish_batch(self, batch: list[Pending]) -> list[int | BaseException]:
        from nats.js.errors import NoStreamResponseError

        failed: dict[str, BaseException] = {}
        for channel in {pending.channel for pending in batch}:
            if nats_names(channel)[0] not in self.streams:
                try:
                    await self.ensure_stream(channel)
                except Exception as exc:  # this channel's messages fail; the others go out
                    failed[channel] = exc
        js = self.js
        pid = self.publisher_id

        async def fail(exc: BaseException) -> Any:
            raise exc

        # Same connection, issued in order: the server stores them in this order.
        acks = await asyncio.gather(*(
            fail(failed[p.channel]) if p.channel in failed else
            js.publish(nats_names(p.channel)[1], p.data,
                       headers={"Nats-Msg-Id": f"{pid}-{p.n}", "Mws-T0": repr(p.t_wall)})
            for p in batch), return_exceptions=True)
        results: list[int | BaseException] = []
        for pending, ack in zip(batch, acks, strict=True):
            if isinstance(ack, BaseException):
                if isinstance(ack, NoStreamResponseError):  # the stream was deleted: create it again
                    self.streams.discard(nats_names(pending.channel)[0])
                results.append(ack)
            else:
                results.append(_int_of(getattr(ack, "seq", None), 0) or 0)
        return results


REDIS_FUNCTION = """#!lua name=millionws
local function publish(keys, args)
  local ch = keys[1]
  local base = 'mws:{' .. ch .. '}:'
  local t = args[2]
  local tn = t and tonumber(t)
  if tn == nil or tn ~= tn or tn == math.huge or tn == -math.huge then
    local now = redis.call('TIME')
    t = now[1] .. '.' .. string.format('%%06d', now[2])
  else
    t = string.format('%%.6f', tn)
  end
  local acks = nil
  if args[3] ~= nil and args[4] ~= nil then
    acks = base .. 'acks:' .. args[3]
    local seen = redis.call('ZRANGEBYSCORE', acks, args[4], args[4])
    if seen[1] ~= nil then return tonumber(seen[1]) end
    if args[5] ~= nil then redis.call('ZREMRANGEBYSCORE', acks, '-inf', '(' .. args[5]) end
  end
  local seq = redis.call('INCR', base .. 'seq')
  redis.call('XADD', base .. 'log', 'MAXLEN', %(maxlen)d, '0-' .. seq, 'd', args[1], 't', t)
  redis.call('EXPIRE', base .. 'log', %(ttl)d)
  redis.call('PUBLISH', 'mws:live:' .. ch, seq .. ' ' .. t .. ' ' .. args[1])
  if acks ~= nil then
    redis.call('ZADD', acks, args[4], seq)
    redis.call('EXPIRE', acks, %(ttl)d)
  end
  return seq
end
redis.register_function('mws_publish', publish)
"""


class RedisBackend(Backend):
    """Redis: a function sequences (INCR + XADD + PUBLISH), pub/sub carries live traffic."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(bridge)
        self.r: Any = None
        self.ps: Any = None
        self._reader: asyncio.Task | None = None
        self._heard = 0.0  # monotonic time of the last thing read on the pub/sub connection
        self._hello = f"mws:hello:{self.publisher_id}"

    async def _load_function(self, r: Any) -> None:
        from redis.exceptions import ResponseError

        code = REDIS_FUNCTION % {"ttl": max(1, int(self.bridge.replay_seconds + 1)),
                                 "maxlen": self.bridge.replay_max_messages}
        try:
            await r.function_load(code, replace=True)
        except ResponseError as exc:
            if "unknown command" in str(exc).lower():
                raise BusConfigError(REDIS_TOO_OLD) from None
            raise

    async def connect(self) -> None:
        r = await redis_connect(self.bridge.url, CONNECT_TIMEOUT)
        try:
            await self._load_function(r)
            ps = r.pubsub()
            await ps.subscribe(self._hello)  # opens the pub/sub connection; the heartbeat comes back on it
        except BaseException:
            await _quietly(r.aclose())
            raise
        self.r, self.ps = r, ps
        self._heard = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        on_live = self.on_live
        async for msg in self.ps.listen():
            self._heard = time.monotonic()
            try:
                if msg.get("type") != "message":
                    continue
                name = msg.get("channel")
                if not isinstance(name, bytes) or not name.startswith(b"mws:live:"):
                    continue  # the heartbeat
                try:
                    channel = name[9:].decode()
                except UnicodeDecodeError:
                    continue  # not a channel this worker subscribed to
                data = msg.get("data")
                parts = data.split(b" ", 2) if isinstance(data, bytes) else []
                if len(parts) == 3:
                    on_live(channel, parts[0], parts[1], parts[2])
                else:
                    on_live(channel, None, None, None)  # counted as malformed if the channel is ours
            except Exception as exc:
                self._bug("live message handler", exc)

    async def wait_closed(self) -> str:
        reader = self._reader
        assert reader is not None
        while True:
            done, _ = await asyncio.wait((reader,), timeout=HEARTBEAT)
            if done:
                if reader.cancelled():
                    return "the pub/sub reader stopped"
                exc = reader.exception()
                return describe(exc) if exc is not None else "the pub/sub connection closed"
            silent = time.monotonic() - self._heard
            if silent > 3 * HEARTBEAT:
                return f"no answer from Redis for {silent:.0f} s"
            try:
                await asyncio.wait_for(self.r.publish(self._hello, b"."), HEARTBEAT)
            except TimeoutError:
                return f"no answer from Redis within {HEARTBEAT:g} s"
            except Exception as exc:
                return describe(exc)

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        for thing in (self.ps, self.r):
            if thing is not None:
                await _quietly(thing.aclose())

    def refused(self, exc: BaseException) -> bool:
        from redis.exceptions import ResponseError

        return isinstance(exc, ResponseError)

    async def subscribe_live(self, channel: str) -> Any:
        await self.ps.subscribe("mws:live:" + channel)
        return True

    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        await self.ps.unsubscribe("mws:live:" + channel)

    async def last_seq(self, channel: str) -> int:
        raw = await self.r.get(f"mws:{{{channel}}}:seq")
        if raw is None:
            return 0
        last = _int_of(raw, 0)
        if last is None:
            raise BrokerDataError(f"mws:{{{channel}}}:seq holds {raw[:40]!r}, not a sequence number")
        return last

    async def fetch(self, channel: str, first: int, last: int) -> list[tuple[int, float, bytes | None]]:
        rows = await self.r.xrange(f"mws:{{{channel}}}:log", f"0-{first}", f"0-{last}")
        horizon = time.time() - self.bridge.replay_seconds
        entries: dict[int, tuple[int, float, bytes | None]] = {}
        bad = 0
        for row in rows:
            try:
                entry_id, fields = row
                raw_seq = entry_id[2:] if isinstance(entry_id, bytes) and entry_id.startswith(b"0-") else None
                raw_t, data = fields.get(b"t"), fields.get(b"d")
            except (TypeError, ValueError, AttributeError):
                bad += 1
                continue
            t_wall = _time_of(raw_t)
            if t_wall is not None and t_wall < horizon:
                continue  # expired: the stream is trimmed by count, age is checked here
            if not self._keep(entries, raw_seq, raw_t if raw_t is not None else b"", data, first, last):
                bad += 1
        return self._fetched(channel, entries, bad)

    async def publish_batch(self, batch: list[Pending]) -> list[int | BaseException]:
        from redis.exceptions import ResponseError

        pipe = self.r.pipeline(transaction=False)
        pid = self.publisher_id
        floor = batch[0].n  # everything older is answered: the function may forget it
        for p in batch:
            pipe.fcall("mws_publish", 1, p.channel, p.data, repr(p.t_wall), pid, p.n, floor)
        replies = await pipe.execute(raise_on_error=False)
        if any(isinstance(reply, ResponseError) and "function not found" in str(reply).lower() for reply in replies):
            await self._load_function(self.r)  # flushed by someone: the retry will find it
        return [reply if isinstance(reply, BaseException) else (_int_of(reply, 0) or 0) for reply in replies]
