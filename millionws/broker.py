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
  stored once (JetStream de-duplication).
* Redis: a function ``mws_publish`` (``FUNCTION LOAD``, Redis ≥ 7) runs atomically:
  ``INCR mws:{C}:seq``, ``XADD mws:{C}:log`` with the explicit id ``0-<seq>`` (trimmed to
  ``MAXLEN`` and expired after the replay window), and ``PUBLISH mws:live:C
  "<seq> <unix time> <data>"``.  A per-publisher counter in ``mws:{C}:pub`` drops a
  retried publish.  Replay reads the stream with ``XRANGE``.  The ``{C}`` hash tag keeps
  a channel's keys in one cluster slot, the slot of the key ``C`` the function declares.

**Backends publish without a WebSocket.**  NATS: publish the JSON document on
``mws.in.<channel>`` (``nats pub mws.in.news '{"x":1}'``; JetStream publish to get an
ack).  Redis: ``FCALL mws_publish 1 news '{"x":1}'``.  Channel names with an empty
subject token (``a..b``, ``.a``) are spelt ``~<hex of the name>`` in NATS subjects.

**Not blocking the reactor: a bridge thread per worker.**  Each worker runs one thread
with an asyncio loop and the maintained client library (``nats-py``, ``redis``).  The
reactor hands it commands (interest, publish, replay) through a deque and one
``call_soon_threadsafe`` per loop turn; the thread hands back events (messages, gaps,
replay answers, bus state) through a deque and an ``eventfd`` registered in the
reactor, written only when the deque goes from empty to non-empty.  Chosen over a
sans-IO parser driven by the reactor because JetStream (stream management, direct get,
de-duplication) and Redis (RESP3, functions, reconnection) are large protocols whose
maintained clients are worth more than the GIL contention of one mostly idle thread; the
reactor never waits on the broker, and one eventfd read per batch of events costs less
than a message.

**Gap-free on every node.**  The thread keeps, per channel with a local subscriber, the
last ``seq`` it handed to the worker (the cursor).  A live message is handed over only if
it is ``cursor + 1``; an older one is a duplicate and dropped; a newer one (core pub/sub
lost some, or the bus was down) triggers a catch-up read of the missing range from the
stream before it.  When the range is no longer stored, subscribers get a ``gap``
(``expired``); when the broker's sequence went backwards (its data was lost), a ``gap``
``unknown``.  A ``subscribe`` with ``since`` is answered by the thread in order with the
live events of that channel: the answer holds ``since+1 .. cursor`` and every later live
message follows it, so the worker needs no hold buffer.

**Interest.**  A worker subscribes to ``mws.live.C`` / ``mws:live:C`` only while it has a
local subscriber of C (each worker is a broker client; a node subscribes at most once
per worker), and unsubscribes with the last one.

**Outage.**  The thread reconnects with exponential backoff and full jitter (0.1 s
doubling to 5 s), resubscribes every channel of interest and catches up from each
cursor.  Meanwhile the node serves everything local (WebSockets, subscriptions, HTTP,
/health 200 with ``bus.up: false``); publishes wait in a bounded outbox
(``OUTBOX_MESSAGES``) and go out in order when the broker is back, beyond it they are
dropped and counted.  ``millionws_bus_up`` and ``millionws_bus_reconnects_total`` show it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .metrics import F
from .reactor import EPOLLIN, Reactor

log = logging.getLogger("millionws.broker")

OUTBOX_MESSAGES = 100_000
PUBLISH_BATCH = 256
FETCH_BATCH = 256
EVENTS_PER_WAKE = 20_000
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0

# Events for the worker (first item).
E_MSG, E_GAP, E_REPLAY, E_STATE = range(4)
GAP_NONE, GAP_EXPIRED, GAP_UNKNOWN = 0, 1, 2  # as in channels

_UP, _RECONNECTS = F["bus_up"], F["bus_reconnects"]
_SENT, _RECEIVED, _DROPPED, _CATCHUPS = F["bus_published"], F["bus_received"], F["bus_dropped"], F["bus_catchups"]


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


def backoff_delays(minimum: float = BACKOFF_MIN, maximum: float = BACKOFF_MAX) -> Any:
    """Exponential backoff with full jitter: uniform(0, min(maximum, minimum * 2**n))."""
    n = 0
    while True:
        yield random.uniform(0, min(maximum, minimum * 2 ** n))
        n += 1


class Channel:
    """What the thread knows of one channel with a local subscriber."""

    __slots__ = ("cursor", "buffer", "replays", "busy", "live", "catchup")

    def __init__(self) -> None:
        self.cursor: int | None = None  # last seq handed to the worker
        self.buffer: list[tuple[int, float, bytes]] = []  # live messages waiting for a catch-up
        self.replays: deque[tuple[int, int]] = deque()  # (request, since)
        self.busy = False
        self.live: Any = None  # the broker subscription on the current connection
        self.catchup = False


class Bridge:
    """The worker's side of the bus: commands out, events in.  See the module docstring.

    ``on_event(event)`` runs on the reactor with ``(E_MSG, channel, seq, data, t0)``,
    ``(E_GAP, channel, last, first, reason)``, ``(E_REPLAY, req, reason, first, entries)``
    or ``(E_STATE, up)``.
    """

    def __init__(self, url: str, reactor: Reactor, counters: list[int], on_event: Callable[[tuple], None],
                 replay_seconds: float = 120.0, replay_max_messages: int = 1000) -> None:
        self.url = url
        self.reactor = reactor
        self.c = counters  # the thread writes only the bus_* fields
        self.on_event = on_event
        self.replay_seconds = replay_seconds
        self.replay_max_messages = replay_max_messages
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

    # -- reactor side ----------------------------------------------------------------------
    def start(self) -> None:
        self.reactor.add_handler(self.efd, EPOLLIN, self._on_wake)
        self.thread = threading.Thread(target=self._thread_main, name="millionws-bus", daemon=True)
        self.thread.start()

    def interest(self, channel: str, on: bool) -> None:
        self._command(("interest", channel, on))

    def publish(self, channel: str, data: bytes, t0: float) -> None:
        self._command(("publish", channel, data, time.time() - (time.monotonic() - t0)))

    def replay(self, req: int, channel: str, since: int) -> None:
        self._command(("replay", channel, req, since))

    def detail(self) -> dict[str, Any]:
        """For /health."""
        scheme = self.url.split("://", 1)[0]
        return {"kind": scheme, "up": self.up, "reconnects": self.reconnects,
                **({"error": self.error} if self.error and not self.up else {})}

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
        for _ in range(EVENTS_PER_WAKE):
            if not events:
                return
            event = events.popleft()
            if event[0] == E_STATE:
                self.up = event[1]
            on_event(event)
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
        except Exception:  # never expected; the node keeps serving local traffic
            log.exception("bus thread stopped")
            self.c[_UP] = 0


class Backend:
    """The broker-independent part of the thread: channels, cursors, outbox, reconnection."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.c = bridge.c
        self.channels: dict[str, Channel] = {}
        self.outbox: deque[tuple[str, bytes, float, int]] = deque()
        self.publisher_id = uuid.uuid4().hex
        self.counter = 0
        self.connected = False
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- what a broker implements ----------------------------------------------------------
    async def connect(self) -> None: ...
    async def wait_closed(self) -> None: ...
    async def close(self) -> None: ...
    async def subscribe_live(self, channel: str) -> Any: ...
    async def unsubscribe_live(self, channel: str, sub: Any) -> None: ...
    async def last_seq(self, channel: str) -> int: ...
    async def fetch(self, channel: str, first: int, last: int) -> tuple[int, list[tuple[int, float, bytes]]]: ...
    async def publish_batch(self, batch: list[tuple[str, bytes, float, int]]) -> None: ...

    # -- the loop ----------------------------------------------------------------------------
    async def main(self) -> None:
        self._wake = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self.bridge.loop = asyncio.get_running_loop()
        self.commands_ready()
        self._spawn(self._publisher())
        delays = backoff_delays()
        first = True
        while True:
            try:
                await self.connect()
            except Exception as exc:
                self.bridge.error = f"{type(exc).__name__}: {exc}"
                log.debug("bus connect failed: %s", exc)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff_delays()
            self.connected = True
            self.c[_UP] = 1
            if not first:
                self.c[_RECONNECTS] += 1
                self.bridge.reconnects += 1
                log.warning("bus %s: reconnected", self.bridge.url)
            first = False
            self.bridge.emit((E_STATE, True))
            for channel, state in self.channels.items():
                state.live = None
                state.catchup = state.cursor is not None
                self._spawn(self.sync(channel))
            self._outbox_ready.set()
            try:
                await self.wait_closed()
            except Exception as exc:
                self.bridge.error = f"{type(exc).__name__}: {exc}"
            self.connected = False
            self.c[_UP] = 0
            self.bridge.emit((E_STATE, False))
            log.warning("bus %s: connection lost (%s)", self.bridge.url, self.bridge.error)
            try:
                await self.close()
            except Exception:
                pass
            await asyncio.sleep(next(delays))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def commands_ready(self) -> None:
        for cmd in self.bridge.take_commands():
            kind = cmd[0]
            if kind == "publish":
                _, channel, data, t_wall = cmd
                if len(self.outbox) >= OUTBOX_MESSAGES:
                    self.c[_DROPPED] += 1
                    continue
                self.counter += 1
                self.outbox.append((channel, data, t_wall, self.counter))
                self._outbox_ready.set()
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
                            self.bridge.emit((E_REPLAY, req, GAP_NONE, 0, []))
                        if state.live is not None and self.connected:
                            self._spawn(self._unsubscribe(channel, state.live))
            elif kind == "replay":
                _, channel, req, since = cmd
                state = self.channels.get(channel)
                if state is None:
                    self.bridge.emit((E_REPLAY, req, GAP_NONE, 0, []))
                    continue
                state.replays.append((req, since))
                self._spawn(self.sync(channel))

    async def _unsubscribe(self, channel: str, sub: Any) -> None:
        try:
            await self.unsubscribe_live(channel, sub)
        except Exception as exc:
            log.debug("unsubscribe %s: %s", channel, exc)

    # -- live messages and catch-up ----------------------------------------------------------
    def on_live(self, channel: str, seq: int, t_wall: float, data: bytes) -> None:
        state = self.channels.get(channel)
        if state is None:
            return
        self.c[_RECEIVED] += 1
        if state.busy or state.cursor is None:
            state.buffer.append((seq, t_wall, data))
            return
        if seq <= state.cursor:
            return  # already handed over (a catch-up read it first)
        if seq == state.cursor + 1:
            state.cursor = seq
            self.bridge.emit((E_MSG, channel, seq, data, _to_monotonic(t_wall)))
            return
        state.buffer.append((seq, t_wall, data))
        state.catchup = True
        self._spawn(self.sync(channel))

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
                buffered = sorted(state.buffer)
                state.buffer = []
                for i, (seq, t_wall, data) in enumerate(buffered):
                    if seq <= state.cursor:
                        continue
                    if seq != state.cursor + 1:
                        state.buffer = buffered[i:]
                        state.catchup = True
                        break
                    state.cursor = seq
                    emit((E_MSG, channel, seq, data, _to_monotonic(t_wall)))
                if state.catchup:
                    continue
                while state.replays:
                    req, since = state.replays[0]
                    emit(await self._replay(channel, req, since, state.cursor))
                    state.replays.popleft()
                if not state.buffer and not state.catchup:
                    break
        except Exception as exc:  # the connection is gone (the next connect resyncs) or the broker refused
            log.debug("bus sync %s: %s", channel, exc)
            state.catchup = state.cursor is not None
            if self.connected:  # e.g. JetStream not ready yet after a broker restart: try again
                self._spawn(self._sync_later(channel))
        finally:
            state.busy = False

    async def _sync_later(self, channel: str, delay: float = 0.5) -> None:
        await asyncio.sleep(delay)
        await self.sync(channel)

    async def _catch_up(self, channel: str, state: Channel) -> None:
        last = await self.last_seq(channel)
        cursor = state.cursor
        assert cursor is not None
        if last < cursor:  # the broker lost the channel's data and restarted its sequence
            self.bridge.emit((E_GAP, channel, cursor, last + 1, GAP_UNKNOWN))
            state.cursor = last
            state.buffer = [m for m in state.buffer if m[0] > last]
            return
        if last == cursor:
            return
        self.c[_CATCHUPS] += 1
        first, entries = await self.fetch(channel, cursor + 1, last)
        if first > cursor + 1:
            self.bridge.emit((E_GAP, channel, cursor, first, GAP_EXPIRED))
        for seq, t_wall, data in entries:
            if seq > state.cursor:
                state.cursor = seq
                self.bridge.emit((E_MSG, channel, seq, data, _to_monotonic(t_wall)))
        state.cursor = max(state.cursor, last)

    async def _replay(self, channel: str, req: int, since: int, cursor: int) -> tuple:
        if since > cursor:
            return (E_REPLAY, req, GAP_UNKNOWN, cursor + 1, [])
        if since == cursor:
            return (E_REPLAY, req, GAP_NONE, cursor + 1, [])
        first, entries = await self.fetch(channel, since + 1, cursor)
        entries = [(seq, _to_monotonic(t), data) for seq, t, data in entries]
        return (E_REPLAY, req, GAP_EXPIRED if first > since + 1 else GAP_NONE, first, entries)

    # -- publishing --------------------------------------------------------------------------
    async def _publisher(self) -> None:
        delays = backoff_delays()
        while True:
            if not self.outbox or not self.connected:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            batch = [self.outbox[i] for i in range(min(PUBLISH_BATCH, len(self.outbox)))]
            try:
                await self.publish_batch(batch)
            except Exception as exc:  # kept: retried after a delay or a reconnect (stored once)
                log.debug("bus publish: %s", exc)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff_delays()
            for _ in batch:
                self.outbox.popleft()
            self.c[_SENT] += len(batch)


def _to_monotonic(t_wall: float) -> float:
    return time.monotonic() - max(0.0, time.time() - t_wall)


class NatsBackend(Backend):
    """JetStream streams per channel, core subscriptions to their republished subjects."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(bridge)
        self.nc: Any = None
        self.js: Any = None
        self.streams: set[str] = set()
        self._closed: asyncio.Event | None = None

    async def connect(self) -> None:
        import nats

        self._closed = closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        async def on_error(exc: Exception) -> None:
            self.bridge.error = f"{type(exc).__name__}: {exc}"

        self.nc = await nats.connect(self.bridge.url, allow_reconnect=False, connect_timeout=2,
                                     closed_cb=on_closed, disconnected_cb=on_closed, error_cb=on_error,
                                     max_outstanding_pings=2, ping_interval=5)
        self.js = self.nc.jetstream(timeout=5)
        self.streams.clear()

    async def wait_closed(self) -> None:
        assert self._closed is not None
        await self._closed.wait()

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

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
            headers = msg.headers or {}
            try:
                seq = int(headers["Nats-Sequence"])
            except (KeyError, ValueError):
                return
            try:
                t_wall = float(headers.get("Mws-T0", ""))
            except ValueError:
                t_wall = time.time()
            on_live(channel, seq, t_wall, msg.data)

        return await self.nc.subscribe(nats_names(channel)[2], cb=cb, pending_msgs_limit=1_000_000,
                                       pending_bytes_limit=256 << 20)

    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        await sub.unsubscribe()

    async def last_seq(self, channel: str) -> int:
        info = await self.ensure_stream(channel)
        return int(info.state.last_seq)

    async def fetch(self, channel: str, first: int, last: int) -> tuple[int, list[tuple[int, float, bytes]]]:
        from nats.js.errors import NotFoundError

        stream = nats_names(channel)[0]
        info = await self.js.stream_info(stream)
        start = max(first, int(info.state.first_seq or 0))
        entries: list[tuple[int, float, bytes]] = []

        async def get(seq: int) -> Any:
            try:
                return await self.js.get_msg(stream, seq=seq, direct=True)
            except NotFoundError:
                return None

        for lo in range(start, last + 1, FETCH_BATCH):
            got = await asyncio.gather(*(get(s) for s in range(lo, min(last, lo + FETCH_BATCH - 1) + 1)))
            for msg in got:
                if msg is None:
                    continue
                headers = msg.headers or {}
                try:
                    t_wall = float(headers.get("Mws-T0", ""))
                except ValueError:
                    t_wall = msg.time.timestamp() if msg.time else time.time()
                entries.append((int(msg.seq), t_wall, msg.data or b""))
        first_kept = entries[0][0] if entries else last + 1
        return max(start, first_kept) if entries else max(start, last + 1), entries

    async def publish_batch(self, batch: list[tuple[str, bytes, float, int]]) -> None:
        for channel in {item[0] for item in batch}:
            if nats_names(channel)[0] not in self.streams:
                await self.ensure_stream(channel)
        js = self.js
        pid = self.publisher_id
        # Same connection, issued in order: the server stores them in this order.
        await asyncio.gather(*(js.publish(nats_names(channel)[1], data,
                                          headers={"Nats-Msg-Id": f"{pid}-{n}", "Mws-T0": repr(t_wall)})
                               for channel, data, t_wall, n in batch))


REDIS_FUNCTION = """#!lua name=millionws
local function publish(keys, args)
  local ch = keys[1]
  local base = 'mws:{' .. ch .. '}:'
  local t = args[2]
  if t == nil or t == '' then
    local now = redis.call('TIME')
    t = now[1] .. '.' .. string.format('%%06d', now[2])
  end
  if args[3] ~= nil and args[4] ~= nil then
    local last = tonumber(redis.call('HGET', base .. 'pub', args[3]) or '0')
    if tonumber(args[4]) <= last then return 0 end
    redis.call('HSET', base .. 'pub', args[3], args[4])
    redis.call('EXPIRE', base .. 'pub', %(ttl)d)
  end
  local seq = redis.call('INCR', base .. 'seq')
  redis.call('XADD', base .. 'log', 'MAXLEN', %(maxlen)d, '0-' .. seq, 'd', args[1], 't', t)
  redis.call('EXPIRE', base .. 'log', %(ttl)d)
  redis.call('PUBLISH', 'mws:live:' .. ch, seq .. ' ' .. t .. ' ' .. args[1])
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

    async def connect(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retry inside the library: a lost connection must reach main(), which resubscribes and catches up.
        r = aioredis.Redis.from_url(self.bridge.url, socket_connect_timeout=2, socket_keepalive=True,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=5)
        try:
            await r.ping()
            code = REDIS_FUNCTION % {"ttl": max(1, int(self.bridge.replay_seconds + 1)),
                                     "maxlen": self.bridge.replay_max_messages}
            await r.function_load(code, replace=True)
            ps = r.pubsub()
            await ps.subscribe("mws:hello")  # opens the pub/sub connection
        except Exception:
            await r.aclose()
            raise
        self.r, self.ps = r, ps
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        on_live = self.on_live
        async for msg in self.ps.listen():
            if msg.get("type") != "message":
                continue
            channel = msg["channel"][9:].decode()  # after "mws:live:"
            try:
                seq, t_wall, data = msg["data"].split(b" ", 2)
                on_live(channel, int(seq), float(t_wall), data)
            except ValueError:
                continue

    async def wait_closed(self) -> None:
        assert self._reader is not None
        await self._reader  # raises ConnectionError when the broker goes away

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        for thing in (self.ps, self.r):
            if thing is not None:
                try:
                    await thing.aclose()
                except Exception:
                    pass

    async def subscribe_live(self, channel: str) -> Any:
        await self.ps.subscribe("mws:live:" + channel)
        return True

    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        await self.ps.unsubscribe("mws:live:" + channel)

    async def last_seq(self, channel: str) -> int:
        return int(await self.r.get(f"mws:{{{channel}}}:seq") or 0)

    async def fetch(self, channel: str, first: int, last: int) -> tuple[int, list[tuple[int, float, bytes]]]:
        rows = await self.r.xrange(f"mws:{{{channel}}}:log", f"0-{first}", f"0-{last}")
        horizon = time.time() - self.bridge.replay_seconds
        entries = []
        for entry_id, fields in rows:
            t_wall = float(fields[b"t"])
            if t_wall < horizon:
                continue  # expired: the stream is trimmed by count, age is checked here
            entries.append((int(entry_id.split(b"-")[1]), t_wall, fields[b"d"]))
        return (entries[0][0] if entries else last + 1), entries

    async def publish_batch(self, batch: list[tuple[str, bytes, float, int]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        pid = self.publisher_id
        for channel, data, t_wall, n in batch:
            pipe.fcall("mws_publish", 1, channel, data, repr(t_wall), pid, n)
        await pipe.execute()
