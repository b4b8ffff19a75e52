"""The Redis broker (``--bus redis://host:port`` or ``redis+sentinel://``, Redis >= 7): a function numbers,
pub/sub carries.

This module is named ``redis`` inside the package; the client library is imported by its
absolute name (``import redis.asyncio``, always the top-level ``redis`` package in Python 3:
imports are never implicitly relative), lazily, so that the server runs without the
``redis`` extra until a ``redis://`` bus is configured.

Theory of operation.

**Who numbers the messages.**  A function ``mws_publish`` (:data:`REDIS_FUNCTION`,
``FUNCTION LOAD``, Redis >= 7) runs atomically: ``INCR mws:{C}:seq``, ``XADD mws:{C}:log``
with the explicit id ``0-<seq>`` (trimmed to ``MAXLEN`` and expired after the replay
window), and ``PUBLISH mws:live:C "<seq> <unix time> <data>"``; it returns the seq.  A
per-publisher sorted set ``mws:{C}:acks:<publisher>`` (score: the publisher's message
number, member: the seq) makes a retried publish a no-op that returns the original seq.
The publisher passes the number of its oldest unacknowledged message, and the function
forgets everything older, so the set holds at most the messages in flight and expires
with the window.  Replay reads the stream with ``XRANGE`` (age checked here, with the
channel's own window: the stream is trimmed by count only).  The ``{C}`` hash tag keeps a
channel's keys in one cluster slot, the slot of the key ``C`` the function declares.  The
function is loaded at every connect (``REPLACE``) and again when a publish finds it gone
(``FUNCTION FLUSH``).

**Limits per channel.**  A node passes the channel's ``MAXLEN`` and time to live with every
call (its namespace's rule, ``--channel-options``), so one function serves every rule.  The
function records the last limits a node gave in ``mws:{C}:limits`` (and a node records them
when it subscribes to the channel), so a backend's ``FCALL`` without them gets the channel's
rule too; the record lasts a day past its last use (:data:`LIMITS_TTL`).  A channel no node
has touched gets the defaults of the node that loaded the function last (its global flags).

**Idle channels cost nothing.**  Every key of a channel expires: the log and the de-duplication sets
with the replay window, the sequence, the epoch and the limits :data:`LIMITS_TTL` (a day) after the
channel's last publish (each publish sets their time to live again).  A channel unused for that long
starts its sequence again at 1 with a new epoch (what a subscriber and the history API see of that:
docs/protocol.md, "Across nodes: cost by active channels").

**Epoch.**  When ``INCR`` starts a channel's sequence (it returns 1) the function also sets
``mws:{C}:epoch`` (the time and the publisher), so a sequence that starts again (its keys lost) has
another epoch; a channel sequenced before the function set it gets one at its first history read
(``SET NX``).  A history read (:meth:`RedisBackend.history_head`) creates nothing for a channel never
sequenced.

**Control plane.**  Pub/sub channels ``mws:ctl`` (every worker of every node) and
``mws:ctl:r:<node>.<worker>`` (one worker's answers), on the pub/sub connection of the live channels.

**Backends publish without a WebSocket.**  ``FCALL mws_publish 1 news '{"x":1}'``.  Only
the broker may publish on ``mws:live:*`` (Redis ACLs): a well-formed message forged there
is indistinguishable from a real one.

**Signals.**  Presence records travel on pub/sub channels ``mws:sig:<name>``: at most once, like the
live channels; only nodes should publish there (Redis ACLs).

**Sentinel.**  ``--bus redis+sentinel://[user:password@]s1:26379,s2:26379,s3:26379/<service>[/db]``
names the Sentinels of a primary (:func:`sentinel_of`); the password is the primary's (the Sentinels
are asked without one).  Each connect asks them for the current primary (redis-py's Sentinel, which
skips a primary they see down), so after a failover the thread's next connect follows the promoted
replica.  Functions are replicated (and kept in the RDB) since Redis 7, so the promoted replica
already has ``mws_publish``; the connect loads it again anyway.  Replication is asynchronous: a publish
is acknowledged only once ``--bus-replicas`` - 1 replicas hold it too (``WAIT``, bounded by
``--bus-connect-timeout``; with Sentinel the default is 2 copies, the primary and one replica), else it
is sent again (stored once) until they do or the publish times out: an acknowledged publish survives
the loss of the primary.  Until they confirm, the message is not published live either (``mws_publish``
with *hold*; ``mws_release`` publishes it from the log afterwards, :meth:`RedisBackend._release`): no
subscriber sees a message that a dying primary could lose unreplicated and the promoted replica would
number again.  A backend's own ``FCALL mws_publish`` (no *hold*) is live at once, as on a lone Redis.

**Liveness.**  The client does not retry or reconnect by itself (the thread's own loop
does, :mod:`backend`).  A black-holed Redis is noticed by a heartbeat: every ``--bus-heartbeat``
seconds the thread publishes on its own channel ``mws:hello:<publisher>`` and expects
something back on its pub/sub connection within three heartbeats.  A Redis older than 7
(no functions; before 6 not even ``HELLO``) is a configuration error (:data:`REDIS_TOO_OLD`),
not an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ...config import DEFAULTS
from ...namespaces import ChannelOptions
from .backend import Backend
from .base import (
    BridgeSide,
    BrokerDataError,
    BusConfigError,
    Entry,
    Pending,
    describe,
    epoch_of,
    host_ports,
    int_of,
    quietly,
    redact,
    require_libraries,
    time_of,
)

EXTRA = "redis"  # pip install 'millionws[redis]'
LIBRARIES = ("redis", "redis.asyncio")
REDIS_TOO_OLD = "Redis >= 7 is needed (millionws sequences with a Redis function, FUNCTION LOAD)"
CONTROL = "mws:ctl"  # every worker's questions and notices; "mws:ctl:r:<id>" one worker's answers
_CONTROL = CONTROL.encode()
POOL = 64  # connections to Redis per worker (commands; the pub/sub connection is one more)
OLDEST_BATCH = 64  # log entries read at once looking for the oldest one within the replay window


def control_channel(to: str | None) -> str:
    """The pub/sub channel of a control message: everyone's, or worker ``to``'s own (``<node>.<index>``)."""
    return CONTROL if to is None else f"{CONTROL}:r:{to}"


SENTINEL = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelUrl:
    """What ``redis+sentinel://[user:password@]host:port,.../<service>[/db]`` says."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def sentinel_of(url: str) -> SentinelUrl | None:
    """The Sentinels and service of a ``redis+sentinel://`` URL, None for ``redis://``, BusConfigError if
    malformed (no service name, a host without a valid port, a db that is not a number)."""
    if not url.startswith(SENTINEL):
        return None
    netloc, _, path = url[len(SENTINEL):].partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise BusConfigError(f"--bus {redact(url)}: must be {SENTINEL}host:port[,host:port...]/<service>[/db]")
    user, colon, password = userinfo.partition(":") if at else ("", "", "")
    return SentinelUrl(host_ports(hosts, url, 26379), unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0,
                       unquote(user) or None, unquote(password) if colon else None)


async def aclose(r: Any) -> None:
    """Close a client of :func:`redis_connect`, and the Sentinel clients it asked for the primary."""
    await quietly(r.aclose())
    sentinel = getattr(r, "mws_sentinel", None)
    if sentinel is not None:
        await quietly(sentinel.aclose())


def _client(url: str, timeout: float, heartbeat: float) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
    from redis.backoff import NoBackoff

    # No retry inside the library: a lost connection must reach Backend.main, which
    # resubscribes and catches up.
    # A worker that gets a thousand subscribers of new channels at once brings each up to date in a task of its
    # own: a blocking pool makes them wait for one of POOL connections (redis-py's default pool refuses the
    # 101st with MaxConnectionsError, and each refused channel was retried after half a second).
    options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_keepalive": True,
                               "retry": Retry(NoBackoff(), 0), "health_check_interval": heartbeat,
                               "max_connections": POOL}
    where = sentinel_of(url)
    if where is None:
        return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, **options))

    class SentinelBlockingPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
        """The primary's address from the Sentinels, and waiting for a free connection as above."""

    sentinel = Sentinel(where.sentinels, sentinel_kwargs={"socket_timeout": timeout,
                                                          "socket_connect_timeout": timeout})
    r = sentinel.master_for(where.service, connection_pool_class=SentinelBlockingPool, db=where.db,
                            username=where.username, password=where.password, **options)
    r.mws_sentinel = sentinel  # closed with it (aclose)
    return r


async def redis_connect(url: str, timeout: float, heartbeat: float = DEFAULTS.bus_heartbeat) -> Any:
    """A redis-py client that answered PING from a Redis >= 7 (when INFO tells), or an exception.

    With ``redis+sentinel://``, a client of the primary the Sentinels name now."""
    require_libraries(url, EXTRA, LIBRARIES)
    from redis.exceptions import ResponseError

    r = _client(url, timeout, heartbeat)
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
        await aclose(r)
        raise
    return r


async def probe(url: str, timeout: float, shards: int) -> None:
    """What :func:`schemes.preflight` checks of a Redis: it answers, is >= 7 and knows FUNCTION (``shards``: a
    NATS layout, Redis has one)."""
    from redis.exceptions import ResponseError

    r = await redis_connect(url, timeout)
    try:
        await r.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "millionws")
    except ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise BusConfigError(REDIS_TOO_OLD) from None
    finally:
        await aclose(r)


# How long a channel's sequence, epoch and recorded limits outlive its last publish (seconds): long enough
# for a channel whose subscribers wait quietly, short enough that channels of the past do not keep keys.
LIMITS_TTL = 86_400

# mws_publish args: data, [time, publisher, message number, oldest unanswered number, maxlen, ttl, hold]
#   hold '1': stored, not published live (a node behind replicas releases it once WAIT confirms)
# mws_release args: seq (publishes live what the log holds under it; 0 when the log no longer does)
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
  local maxlen, ttl
  if args[6] ~= nil and args[6] ~= '' then
    maxlen, ttl = string.match(args[6] .. ' ' .. (args[7] or ''), '^(%%d+) (%%d+)$')
    if maxlen == nil or tonumber(ttl) < 1 then
      return redis.error_reply('mws_publish: maxlen is an integer >= 0 and ttl an integer >= 1')
    end
    redis.call('SET', base .. 'limits', maxlen .. ' ' .. ttl, 'EX', math.max(tonumber(ttl), %(keep)d))
  else
    local kept = redis.call('GET', base .. 'limits')
    if kept then
      maxlen, ttl = string.match(kept, '^(%%d+) (%%d+)$')
      redis.call('EXPIRE', base .. 'limits', math.max(tonumber(ttl or 1), %(keep)d))
    end
    if maxlen == nil then
      maxlen, ttl = '%(maxlen)d', '%(ttl)d'
    end
  end
  local acks = nil
  if args[3] ~= nil and args[3] ~= '' and args[4] ~= nil then
    acks = base .. 'acks:' .. args[3]
    local seen = redis.call('ZRANGEBYSCORE', acks, args[4], args[4])
    if seen[1] ~= nil then return tonumber(seen[1]) end
    if args[5] ~= nil then redis.call('ZREMRANGEBYSCORE', acks, '-inf', '(' .. args[5]) end
  end
  local seq = redis.call('INCR', base .. 'seq')
  local idle = math.max(tonumber(ttl), %(keep)d)
  redis.call('EXPIRE', base .. 'seq', idle)
  if seq == 1 then
    redis.call('SET', base .. 'epoch', t .. ' ' .. (args[3] or ''), 'EX', idle)
  else
    redis.call('EXPIRE', base .. 'epoch', idle)
  end
  redis.call('XADD', base .. 'log', 'MAXLEN', maxlen, '0-' .. seq, 'd', args[1], 't', t)
  redis.call('EXPIRE', base .. 'log', ttl)
  if args[8] ~= '1' then
    redis.call('PUBLISH', 'mws:live:' .. ch, seq .. ' ' .. t .. ' ' .. args[1])
  end
  if acks ~= nil then
    redis.call('ZADD', acks, args[4], seq)
    redis.call('EXPIRE', acks, ttl)
  end
  return seq
end
redis.register_function('mws_publish', publish)

local function release(keys, args)
  local ch, seq = keys[1], args[1]
  if seq == nil or not string.match(seq, '^%%d+$') then
    return redis.error_reply('mws_release: seq is an integer')
  end
  local entry = redis.call('XRANGE', 'mws:{' .. ch .. '}:log', '0-' .. seq, '0-' .. seq)[1]
  if entry == nil then return 0 end
  local d, t
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'd' then d = entry[2][i + 1] elseif entry[2][i] == 't' then t = entry[2][i + 1] end
  end
  if d == nil or t == nil then return 0 end
  redis.call('PUBLISH', 'mws:live:' .. ch, seq .. ' ' .. t .. ' ' .. d)
  return 1
end
redis.register_function('mws_release', release)
"""


class NotReplicated(ConnectionError):
    """A publish the primary stored that too few replicas confirmed: not acknowledged, not refused."""


def stream_limits(options: ChannelOptions) -> tuple[int, int]:
    """``(MAXLEN, time to live in seconds)`` of a channel's stream under its rule."""
    return options.replay_max_messages, max(1, int(options.replay_seconds + 1))


class RedisBackend(Backend):
    """Redis: a function sequences (INCR + XADD + PUBLISH), pub/sub carries live traffic."""

    def __init__(self, bridge: BridgeSide) -> None:
        super().__init__(bridge)
        self.r: Any = None
        self.ps: Any = None
        self._reader: asyncio.Task | None = None
        # SUBSCRIBEs sent and not yet confirmed: pub/sub channel -> the future subscribe_live waits on.
        self._confirming: dict[bytes, asyncio.Future] = {}
        self._heard = 0.0  # monotonic time of the last thing read on the pub/sub connection
        self._hello = f"mws:hello:{self.publisher_id}"
        # Replicas that must hold a publish before it is acknowledged (WAIT): --bus-replicas copies, less the
        # primary; 0 means 2 copies behind Sentinel (there is a replica to fail over to), 1 on a lone Redis.
        copies = bridge.replicas or (2 if sentinel_of(bridge.url) is not None else 1)
        self.wait_replicas = copies - 1

    async def _load_function(self, r: Any) -> None:
        from redis.exceptions import ResponseError

        maxlen, ttl = stream_limits(self.bridge.namespaces.default)  # for a call that brings no limits
        code = REDIS_FUNCTION % {"ttl": ttl, "maxlen": maxlen, "keep": LIMITS_TTL}
        try:
            await r.function_load(code, replace=True)
        except ResponseError as exc:
            if "unknown command" in str(exc).lower():
                raise BusConfigError(REDIS_TOO_OLD) from None
            raise

    async def connect(self) -> None:
        r = await redis_connect(self.bridge.url, self.bridge.connect_timeout, self.bridge.heartbeat)
        try:
            await self._load_function(r)
            ps = r.pubsub()
            await ps.subscribe(self._hello)  # opens the pub/sub connection; the heartbeat comes back on it
        except BaseException:
            await aclose(r)
            raise
        self.r, self.ps = r, ps
        self._heard = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        on_live = self.on_live
        on_signal = self.on_signal
        async for msg in self.ps.listen():
            self._heard = time.monotonic()
            try:
                if msg.get("type") != "message":
                    if msg.get("type") == "subscribe":
                        confirmed = self._confirming.pop(msg.get("channel"), None)
                        if confirmed is not None and not confirmed.done():
                            confirmed.set_result(None)
                    continue
                name = msg.get("channel")
                if isinstance(name, bytes) and name.startswith(_CONTROL):
                    self.on_control_message(msg.get("data"))
                    continue
                if isinstance(name, bytes) and name.startswith(b"mws:sig:"):
                    on_signal(name[8:].decode("ascii", "replace"), msg.get("data"))
                    continue
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
            done, _ = await asyncio.wait((reader,), timeout=self.bridge.heartbeat)
            if done:
                if reader.cancelled():
                    return "the pub/sub reader stopped"
                exc = reader.exception()
                return describe(exc) if exc is not None else "the pub/sub connection closed"
            silent = time.monotonic() - self._heard
            if silent > 3 * self.bridge.heartbeat:
                return f"no answer from Redis for {silent:.0f} s"
            try:
                await asyncio.wait_for(self.r.publish(self._hello, b"."), self.bridge.heartbeat)
            except TimeoutError:
                return f"no answer from Redis within {self.bridge.heartbeat:g} s"
            except Exception as exc:
                return describe(exc)

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        if self.ps is not None:
            await quietly(self.ps.aclose())
        if self.r is not None:
            await aclose(self.r)

    def refused(self, exc: BaseException) -> bool:
        from redis.exceptions import ResponseError

        return isinstance(exc, ResponseError)

    async def subscribe_live(self, channel: str) -> Any:
        # Recorded first, for the backends that publish with FCALL alone (the module docstring).
        maxlen, ttl = stream_limits(self.bridge.namespaces.of(channel))
        await self.r.set(f"mws:{{{channel}}}:limits", f"{maxlen} {ttl}", ex=max(ttl, LIMITS_TTL))
        # Wait until Redis confirms the SUBSCRIBE: the channel's last seq is read next on another connection,
        # and a message published between that read and a SUBSCRIBE still in flight would be neither live nor
        # behind the cursor (lost until the channel's next message; seen under load in CI).
        name = ("mws:live:" + channel).encode()
        confirmed = asyncio.get_running_loop().create_future()
        self._confirming[name] = confirmed
        try:
            await self.ps.subscribe(name)
            await asyncio.wait_for(confirmed, self.bridge.connect_timeout)
        finally:
            self._confirming.pop(name, None)
        return True

    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        await self.ps.unsubscribe("mws:live:" + channel)

    async def subscribe_signal(self, name: str) -> Any:
        await self.ps.subscribe("mws:sig:" + name)
        return True

    async def unsubscribe_signal(self, name: str, sub: Any) -> None:
        await self.ps.unsubscribe("mws:sig:" + name)

    async def publish_signals(self, batch: list[tuple[str, bytes]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for name, data in batch:
            pipe.publish("mws:sig:" + name, data)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, BaseException):  # at most once: lost (a batch later repairs it)
                self.log("signal", describe(reply), logging.WARNING, "bus %s: a signal not sent: %s", self.name,
                         describe(reply))

    async def last_seq(self, channel: str) -> int:
        raw = await self.r.get(f"mws:{{{channel}}}:seq")
        if raw is None:
            return 0
        last = int_of(raw, 0)
        if last is None:
            raise BrokerDataError(f"mws:{{{channel}}}:seq holds {raw[:40]!r}, not a sequence number")
        return last

    async def fetch(self, channel: str, first: int, last: int) -> list[Entry]:
        rows = await self.r.xrange(f"mws:{{{channel}}}:log", f"0-{first}", f"0-{last}")
        horizon = time.time() - self.bridge.namespaces.of(channel).replay_seconds  # once per read
        entries: dict[int, Entry] = {}
        bad = 0
        for row in rows:
            try:
                entry_id, fields = row
                raw_seq = entry_id[2:] if isinstance(entry_id, bytes) and entry_id.startswith(b"0-") else None
                raw_t, data = fields.get(b"t"), fields.get(b"d")
            except (TypeError, ValueError, AttributeError):
                bad += 1
                continue
            t_wall = time_of(raw_t)
            if t_wall is not None and t_wall < horizon:
                continue  # expired: the stream is trimmed by count, age is checked here
            if not self._keep(entries, raw_seq, raw_t if raw_t is not None else b"", data, first, last):
                bad += 1
        return self._fetched(channel, entries, bad)

    async def subscribe_control(self, me: str) -> None:
        await self.ps.subscribe(control_channel(None), control_channel(me))

    async def publish_control(self, to: str | None, body: bytes) -> None:
        await self.r.publish(control_channel(to), body)

    async def history_head(self, channel: str) -> tuple[int, int, str | None]:
        base = f"mws:{{{channel}}}:"
        raw_seq, raw_epoch = await self.r.mget(base + "seq", base + "epoch")
        if raw_seq is None:
            return 0, 1, None  # never sequenced: reading creates nothing
        last = int_of(raw_seq, 0)
        if last is None:
            raise BrokerDataError(f"{base}seq holds {raw_seq[:40]!r}, not a sequence number")
        if raw_epoch is None:  # sequenced by a function that did not set it yet: from now on
            await self.r.set(base + "epoch", repr(time.time()), nx=True)
            raw_epoch = await self.r.get(base + "epoch")
        return last, await self._oldest(channel, last), epoch_of(channel, raw_epoch or b"")

    async def _oldest(self, channel: str, last: int) -> int:
        """The oldest seq of the log still within the replay window (it is trimmed by count), else last + 1."""
        log = f"mws:{{{channel}}}:log"
        options = self.bridge.namespaces.of(channel)
        horizon = time.time() - options.replay_seconds
        start = "-"
        for _ in range(options.replay_max_messages // OLDEST_BATCH + 2):  # the log holds at most that many
            rows = await self.r.xrange(log, start, "+", count=OLDEST_BATCH)
            for entry_id, fields in rows:
                seq = int_of(entry_id[2:] if isinstance(entry_id, bytes) and entry_id.startswith(b"0-") else None, 1)
                t_wall = time_of(fields.get(b"t")) if isinstance(fields, dict) else None
                if seq is not None and seq <= last and t_wall is not None and t_wall >= horizon:
                    return seq
            if len(rows) < OLDEST_BATCH:
                break
            start = "(" + rows[-1][0].decode("ascii", "replace")
        return last + 1

    async def publish_batch(self, batch: list[Pending]) -> list[int | BaseException]:
        from redis.exceptions import ResponseError

        pipe = self.r.pipeline(transaction=False)
        pid = self.publisher_id
        floor = batch[0].n  # everything older is answered: the function may forget it
        of = self.bridge.namespaces.of
        hold = ("1",) if self.wait_replicas else ()  # behind replicas: live only once they hold it
        for p in batch:
            maxlen, ttl = stream_limits(of(p.channel))
            pipe.fcall("mws_publish", 1, p.channel, p.data, repr(p.t_wall), pid, p.n, floor, maxlen, ttl, *hold)
        if self.wait_replicas:
            pipe.execute_command("WAIT", self.wait_replicas, max(1, int(self.bridge.connect_timeout * 1000)))
        replies = await pipe.execute(raise_on_error=False)
        if self.wait_replicas:
            copied = replies.pop()
            if not isinstance(copied, int) or copied < self.wait_replicas:
                # Stored on the primary only: not acknowledged, sent again (the retry is answered with the same
                # seq, and waits for the replicas again) until they hold it or the publish times out.
                lost = NotReplicated(f"{copied!r} of {self.wait_replicas} replicas confirmed within "
                                     f"{self.bridge.connect_timeout:g} s")
                replies = [lost if isinstance(reply, int) else reply for reply in replies]
            else:
                await self._release(batch, replies)
        if any(isinstance(reply, ResponseError) and "function not found" in str(reply).lower() for reply in replies):
            await self._load_function(self.r)  # flushed by someone: the retry will find it
        return [reply if isinstance(reply, BaseException) else (int_of(reply, 0) or 0) for reply in replies]

    async def _release(self, batch: list[Pending], replies: list[Any]) -> None:
        """Publish live what the replicas now hold (``mws_release``), in the batch's order.

        Held until then so that no subscriber sees a message the primary could lose with itself and a
        promoted replica would number again.  A release that fails leaves its publish unacknowledged: the
        retry finds it stored (same seq), waits for the replicas and releases it again; a subscriber that got
        both drops the second (same seq).  Two nodes' releases of one channel may cross: the later seq first
        is a gap to the subscriber's worker, which reads the log (the earlier one is then a duplicate)."""
        stored = [i for i, reply in enumerate(replies) if isinstance(reply, int) and reply > 0]
        if not stored:
            return
        pipe = self.r.pipeline(transaction=False)
        for i in stored:
            pipe.fcall("mws_release", 1, batch[i].channel, replies[i])
        for i, answer in zip(stored, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(answer, BaseException):
                replies[i] = answer
