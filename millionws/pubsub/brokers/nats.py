"""The NATS broker (``--bus nats://host:port[,nats://host:port...]``): JetStream numbers, core pub/sub carries.

This module is the stream-per-channel layout (``--bus-shards 0``) and the connection both layouts share;
the default layout, 16 shard streams, is :mod:`nats_shards` (a subclass).  :func:`check_layout` keeps a
deployment on one layout.

This module is named ``nats`` inside the package; the client library is imported by its
absolute name (``import nats``, always the top-level ``nats-py`` package in Python 3), lazily,
so that the server runs without the ``nats`` extra until a ``nats://`` bus is configured.

Theory of operation.

**Who numbers the messages.**  One JetStream stream per channel (name ``MWS_<blake2b of the
channel>``) captures the subject ``mws.in.<channel>``.  The stream sequence *is* the
channel's ``seq``.  The stream republishes every stored message on the core subject
``mws.live.<channel>`` with a ``Nats-Sequence`` header (JetStream RePublish): live traffic
is plain core pub/sub, sequenced by the broker, with no consumer state.  File storage,
``max_age`` = ``--replay-seconds``, ``max_msgs`` = ``--replay-max-messages``,
``allow_direct`` for replay reads: the replay window survives a restart of any node and
of the broker.  Publishes carry ``Nats-Msg-Id`` (publisher id and message number) so a
retry after an outage is stored once (JetStream de-duplication, window: the replay window
capped at 120 s); the PubAck of a duplicate carries the original's sequence.  A stream that
exists with another configuration (another node's flags) is used as it is.

**Backends publish without a WebSocket.**  Publish the JSON document on
``mws.in.<channel>`` (``nats pub mws.in.news '{"x":1}'``; JetStream publish to get an ack).
Channel names with an empty subject token (``a..b``, ``.a``) are spelt ``~<hex of the
name>`` in subjects (:func:`subject_token`).  Only the broker may publish on ``mws.live.>``
(NATS permissions): a well-formed message forged there is indistinguishable from a real one.

**Control plane.**  Core subjects, no stream: ``mws.ctl`` (every worker of every node) and
``mws.ctl.r.<node>.<worker>`` (one worker's answers); at most once, like the live subjects.  A
channel's history (:meth:`NatsBackend.history_head`) reads the stream's state without creating it;
its epoch comes from the stream's creation time, so a stream deleted and made again (its sequence
restarted) has another.

**Signals.**  Presence records travel on core subjects ``mws.sig.<name>`` (:func:`signal_subject`):
no stream, at most once, like the live subjects; only nodes should publish there (NATS permissions).

**A cluster.**  ``--bus`` may list several servers of one NATS cluster, comma-separated
(:func:`servers_of`); each connect tries them in random order until one answers, so a node whose
server died reconnects to another (through the thread's own loop, below: resubscribe, catch up,
re-send the unanswered publishes, which JetStream de-duplicates cluster-wide).  Streams are made with
``num_replicas`` = ``--bus-replicas``; 0 (the default) means 3 when the server says it belongs to a
cluster (its INFO names one) and 1 otherwise (:meth:`NatsBackend.replicas_for`).  With 3 replicas a
publish is acknowledged once a majority (2) stored it, so the loss of any one server loses no
acknowledged message and the stream keeps working; a stream that exists with other replicas is
updated to them, like its limits.

**Liveness.**  The client pings every ``--bus-heartbeat`` seconds and gives up after two
unanswered pings, so a black-holed server is noticed; it never reconnects by itself (the
thread's own loop does, :mod:`backend`, then resubscribes and catches up).  A server
without JetStream is a configuration error (:data:`NO_JETSTREAM`), not an outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from .backend import Backend
from .base import (
    BridgeSide,
    BrokerDataError,
    BusConfigError,
    Entry,
    Pending,
    describe,
    epoch_of,
    int_of,
    quietly,
    redact,
    require_libraries,
)

EXTRA = "nats"  # pip install 'millionws[nats]'
LIBRARIES = ("nats", "nats.js")
NO_JETSTREAM = "JetStream is not enabled on this NATS server (start nats-server with -js)"
CONTROL = "mws.ctl"  # every worker's questions and notices; "mws.ctl.r.<id>" one worker's answers


def control_subject(to: str | None) -> str:
    """The subject of a control message: everyone's, or worker ``to``'s own (``<node>.<index>``)."""
    return CONTROL if to is None else f"{CONTROL}.r.{to}"


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


def signal_subject(name: str) -> str:
    """The core subject of a signal (``p.<channel>``, ``alive``, ``inbox.<source>``)."""
    return "mws.sig." + subject_token(name)


def servers_of(url: str) -> list[str]:
    """The servers a ``--bus`` URL lists: ``nats://a:4222,nats://b:4222`` (or ``nats://a:4222,b:4222``).

    Raises BusConfigError for an empty item or another scheme in the list: a typo there would otherwise
    show only the day the first server dies."""
    servers: list[str] = []
    for item in url.split(","):
        item = item.strip()
        if "://" not in item and item:
            item = "nats://" + item  # nats://a:4222,b:4222: the hosts after the first inherit the scheme
        if not item.startswith(("nats://", "tls://")) or not item.split("://", 1)[1].strip("/"):
            raise BusConfigError(f"--bus {redact(url)}: {redact(item)!r} is not nats://host:port")
        servers.append(item)
    return servers


async def nats_connect(url: str, timeout: float, **options: Any) -> Any:
    """A connected nats-py client whose server has JetStream, or an exception.

    Of several servers (a cluster, :func:`servers_of`), the first that answers, tried in random order
    (spreads the nodes over the cluster)."""
    require_libraries(url, EXTRA, LIBRARIES)
    servers = servers_of(url)
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
    # caller has its own backoff, so one quick retry of each server is enough.
    try:
        nc = await nats.connect(servers=servers, allow_reconnect=False, connect_timeout=timeout,
                                max_reconnect_attempts=1, reconnect_time_wait=0, error_cb=on_error, **options)
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
        await quietly(nc.close())
        raise
    return nc


# The layouts (--bus-shards 0: a stream per channel capturing mws.in.<token>; N: shard streams capturing
# mws.s.<k>.>) share no streams: a node of one layout beside streams of the other would split the channels.
OTHER_LAYOUT = ("--bus-shards {mine}: this NATS holds {theirs} (stream {stream}), made by nodes of the other layout; "
                "every node must use one layout: set --bus-shards to theirs, or stop every node and delete those "
                "streams to switch (their sequences and replay windows are lost)")


WRONG_SHARDS = "--bus-shards {mine} but the broker's streams are laid out for {theirs} shards (every node must agree)"


def shards_of(description: str | None) -> str:
    """How many shards a shard stream says it is one of (its description ``millionws shard k of N``)."""
    return (description or "").rpartition(" of ")[2] or "?"


async def check_layout(js: Any, shards: int) -> None:
    """BusConfigError when the broker holds streams of another layout than ``shards`` asks for: the other
    one, or shard streams cut for another number of shards."""
    from nats.js.errors import NotFoundError

    subject, theirs = (("mws.in.>", "a stream per channel (--bus-shards 0)") if shards
                       else ("mws.s.>", "shard streams (--bus-shards N)"))
    try:
        stream = await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        pass
    else:
        raise BusConfigError(OTHER_LAYOUT.format(mine=shards, theirs=theirs, stream=stream))
    if shards:
        try:
            info = await js.stream_info("MWS_S0")
        except NotFoundError:
            return
        if shards_of(info.config.description) != str(shards):
            raise BusConfigError(WRONG_SHARDS.format(mine=shards, theirs=shards_of(info.config.description)))


async def probe(url: str, timeout: float, shards: int) -> None:
    """What :func:`schemes.preflight` checks of a NATS server: it answers, has JetStream and holds no
    streams of the other layout (:func:`check_layout`)."""
    nc = await nats_connect(url, timeout, error_cb=_ignore)
    try:
        await check_layout(nc.jetstream(timeout=timeout), shards)
    finally:
        await quietly(nc.close())


async def _ignore(_exc: Exception) -> None:
    pass  # nats-py logs every connect error with a traceback unless given a callback


class NatsBackend(Backend):
    """JetStream streams per channel, core subscriptions to their republished subjects."""

    def __init__(self, bridge: BridgeSide) -> None:
        super().__init__(bridge)
        self.nc: Any = None
        self.js: Any = None
        self.streams: set[str] = set()
        self.replicas = 1  # of the streams made on this connection (replicas_for)
        self._closed: asyncio.Event | None = None

    async def connect(self) -> None:
        self._closed = closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        async def on_error(exc: Exception) -> None:
            self.bridge.error = describe(exc)

        self.nc = await nats_connect(self.bridge.url, self.bridge.connect_timeout, closed_cb=on_closed,
                                     disconnected_cb=on_closed, error_cb=on_error, max_outstanding_pings=2,
                                     ping_interval=self.bridge.heartbeat)
        self.js = self.nc.jetstream(timeout=5)
        self.replicas = self.replicas_for(getattr(self.nc, "_server_info", None) or {})
        self.streams.clear()
        await check_layout(self.js, self.bridge.shards)

    def replicas_for(self, server_info: dict[str, Any]) -> int:
        """``--bus-replicas``, or with 0: 3 on a server that belongs to a cluster, else 1.

        Read from the server's INFO at each connect rather than from the servers it can see now, so
        that a node connecting while a cluster member is down does not shrink the streams."""
        if self.bridge.replicas > 0:
            return self.bridge.replicas
        return 3 if server_info.get("cluster") else 1

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
        """The stream of ``channel``, with its namespace's replay limits (``--channel-options``)."""
        from nats.js.api import RePublish, StorageType, StreamConfig

        stream, subject, live = nats_names(channel)
        options = self.bridge.namespaces.of(channel)  # once per stream made or checked, never per message
        # JetStream has no "keep nothing" (0 means no limit): replay off keeps one message for one second,
        # which no since can reach in practice; the nodes still answer such a since with a gap.
        age = max(1.0, options.replay_seconds)
        return StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE,
                            max_msgs=max(1, options.replay_max_messages), max_age=age,
                            max_bytes=options.replay_max_bytes, duplicate_window=min(age, 120.0), allow_direct=True,
                            num_replicas=self.replicas,
                            republish=RePublish(src=subject, dest=live), description=f"millionws {channel}")

    async def ensure_stream(self, channel: str) -> Any:
        """Create the channel's stream, or bring an existing one to this node's limits.

        A stream outlives the nodes, so one made under other rules (a deployment before ``--channel-options``
        changed) is updated: the rules in the configuration are the ones that hold.  Should the update be
        refused (an operator changed what cannot be changed, like the storage), the stream is used as it is
        and the reason logged.
        """
        from nats.js.errors import BadRequestError, Error

        config = self._config(channel)
        try:
            info = await self.js.add_stream(config)
        except BadRequestError:  # exists with another configuration (other rules, another version)
            try:
                info = await self.js.update_stream(config)
            except Error as exc:
                self.log("stream-update", describe(exc), logging.WARNING,
                         "bus %s: the stream of %r keeps its limits: %s", self.name, channel, describe(exc))
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

    async def subscribe_signal(self, name: str) -> Any:
        on_signal = self.on_signal

        async def cb(msg: Any) -> None:
            try:
                on_signal(name, msg.data)
            except Exception as exc:
                self._bug("signal handler", exc)

        return await self.nc.subscribe(signal_subject(name), cb=cb,
                                       pending_msgs_limit=self.bridge.live_pending_messages,
                                       pending_bytes_limit=self.bridge.live_pending_bytes)

    async def unsubscribe_signal(self, name: str, sub: Any) -> None:
        await sub.unsubscribe()

    async def publish_signals(self, batch: list[tuple[str, bytes]]) -> None:
        for name, data in batch:
            try:
                await self.nc.publish(signal_subject(name), data)
            except Exception as exc:  # at most once: this one is lost (a batch later repairs it), the rest go
                self.log("signal", describe(exc), logging.WARNING, "bus %s: a signal on %r not sent: %s", self.name,
                         name, describe(exc))

    async def last_seq(self, channel: str) -> int:
        info = await self.ensure_stream(channel)
        last = int_of(getattr(getattr(info, "state", None), "last_seq", None), 0)
        if last is None:
            raise BrokerDataError(f"stream info of {channel!r} has no valid last_seq")
        return last

    async def fetch(self, channel: str, first: int, last: int) -> list[Entry]:
        from nats.js.errors import NotFoundError

        stream = nats_names(channel)[0]
        info = await self.js.stream_info(stream)
        start = max(first, int_of(getattr(getattr(info, "state", None), "first_seq", None), 0) or 0)
        entries: dict[int, Entry] = {}
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

    async def subscribe_control(self, me: str) -> None:
        on_control = self.on_control_message

        async def cb(msg: Any) -> None:
            try:
                on_control(msg.data)
            except Exception as exc:
                self._bug("control message handler", exc)

        for subject in (control_subject(None), control_subject(me)):
            await self.nc.subscribe(subject, cb=cb, pending_msgs_limit=self.bridge.live_pending_messages,
                                    pending_bytes_limit=self.bridge.live_pending_bytes)

    async def publish_control(self, to: str | None, body: bytes) -> None:
        await self.nc.publish(control_subject(to), body)

    async def history_head(self, channel: str) -> tuple[int, int, str | None]:
        from nats.js.errors import NotFoundError

        stream = nats_names(channel)[0]
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return 0, 1, None  # never sequenced: reading creates nothing
        state = getattr(info, "state", None)
        last = int_of(getattr(state, "last_seq", None), 0)
        first = int_of(getattr(state, "first_seq", None), 0)
        if last is None or first is None:
            raise BrokerDataError(f"stream info of {channel!r} has no valid first_seq or last_seq")
        created = getattr(info, "created", None)
        epoch = epoch_of(stream, created.isoformat()) if created is not None else epoch_of(stream)
        return last, max(1, min(first, last + 1)), epoch

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
                results.append(int_of(getattr(ack, "seq", None), 0) or 0)
        return results
