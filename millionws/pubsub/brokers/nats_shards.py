"""NATS with a fixed number of streams (``--bus nats://… --bus-shards N``): cost by active channels, not by channels.

Theory of operation (docs/protocol.md, "Across nodes: the sharded layout", has the cost model).

**Shards.**  ``N`` JetStream streams ``MWS_S<k>`` (k = 0 … N-1), each capturing ``mws.s.<k>.>``.  A channel
lives on shard ``blake2b(name) mod N``, on its own subject ``mws.s.<k>.<token>`` (:func:`shard_names`).  The
broker holds N streams whatever the number of channels; a channel costs it only the messages it still stores
(at most ``max_msgs_per_subject`` each, for at most ``max_age``) and one subject entry in the stream's index
while it has any.  An idle channel past its replay window costs the broker nothing.  Every stream republishes
on ``mws.l.<k>.<token>`` (RePublish; headers ``Nats-Sequence`` and ``Nats-Last-Sequence``, the stream sequence
of the channel's previous stored message), so live traffic is core pub/sub as in the per-channel layout.
Every node must use the same N: the streams say ``millionws shard k of N`` in their description and a node
with another N refuses to start (:data:`WRONG_SHARDS`) rather than split the channels silently.

**Per-channel seq without a counter in the broker.**  A stored message carries its channel ``seq`` in the
header ``Mws-Seq``.  The publishing node reads the channel's last stored message (direct get
``last_by_subj``: its stream sequence L and seq s) and publishes seq s+1 with
``Nats-Expected-Last-Subject-Sequence: L``: JetStream stores it only if nothing was stored on the subject
since, so two nodes cannot give out the same seq; the loser reads the head again and retries
(:data:`CONFLICT`).  The head is cached per channel (:data:`HEADS`, least recently used out), so a node
publishing a channel in a row reads nothing.  Publishes of one channel go one at a time (each waits for the
previous one's ack); channels go in parallel.

**Runs.**  A message stored without ``Mws-Seq`` (the first of a channel, the first after its messages all
expired, or one published straight on the shard subject) has seq = its stream sequence.  Every seq of a
channel is at most the stream sequence of its message (by induction: a run starts there and goes up by one
per message, the stream sequence by at least one), so a new run starts above every earlier seq: seq is strictly
increasing per channel for the life of the shard stream, consecutive within a run, and it jumps forward (never
back) when a run starts.  A subscriber that was live across the jump sees no ``gap`` when the stream proves
that nothing was stored in between (:meth:`ShardedNatsBackend._live`: the message's ``Nats-Last-Sequence`` is
the stream sequence of the last message this thread passed on, or 0 while the subject was empty when the
cursor was read, with no reconnect and no slow-consumer loss in between); otherwise the jump is a ``gap``
``expired``.

**Backends publish on ``mws.in.<channel>``, through a node.**  A message stored straight on a shard subject
would start a run (its seq jumps), so backends publish as before on ``mws.in.<channel>``, but now as a request
(``nats req``, or a JetStream publish, whose PubAck this answer imitates: ``{"stream": "MWS_S<k>", "seq": n}``):
every worker of every node listens in one queue group (``mws-in``), so exactly one numbers and stores it like
its own publishes and answers with its seq, or ``{"error": …}`` for what is not one JSON document or names no channel
(:meth:`ShardedNatsBackend._inbound`).  A request nobody answers (no node up) is not stored.

**Limits.**  One stream holds many namespaces' channels: its ``max_msgs_per_subject`` and ``max_age`` are the
largest of the rules (``--channel-options``), and a node cuts what it reads of a channel to the channel's own
rule (age and count) before replaying it.  ``replay-bytes`` is not kept per channel by the broker: the stream
has no byte bound of its own (:meth:`ShardedNatsBackend._config`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from ..records import valid_internal
from .base import (
    BridgeSide,
    BrokerDataError,
    BusConfigError,
    Entry,
    Pending,
    _is_document,
    describe,
    epoch_of,
    int_of,
)
from .nats import WRONG_SHARDS, NatsBackend, shards_of, subject_token

HEADS = 65_536  # channels whose head (stream seq, seq) a publishing thread remembers
CONFLICT = 10071  # JetStream: wrong last sequence (someone stored on the subject since we read it)
RETRIES = 32  # conflicts in a row on one channel before the publish is answered with the error
INBOUND, INBOUND_QUEUE = "mws.in", "mws-in"  # backends' publishes, answered by one worker of one node


def shard_of(channel: str, shards: int) -> int:
    return int.from_bytes(hashlib.blake2b(channel.encode(), digest_size=8).digest(), "big") % shards


def shard_names(channel: str, shards: int) -> tuple[str, str, str]:
    """``(stream, subject, live subject)`` of a channel in the sharded layout."""
    k = shard_of(channel, shards)
    token = subject_token(channel)
    return f"MWS_S{k}", f"mws.s.{k}.{token}", f"mws.l.{k}.{token}"


def _seq_of(headers: dict, stream_seq: Any) -> Any:
    """A stored message's channel seq: its ``Mws-Seq``, else (the start of a run) its stream sequence."""
    return headers.get("Mws-Seq", stream_seq)


class ShardedNatsBackend(NatsBackend):
    """A fixed number of JetStream streams; per-channel subjects; seq assigned by the publishing node."""

    def __init__(self, bridge: BridgeSide) -> None:
        super().__init__(bridge)
        self.shards = bridge.shards
        self.heads: OrderedDict[str, tuple[int, int]] = OrderedDict()  # channel -> (stream seq, seq) last stored
        self.epochs: dict[str, str] = {}
        # Proof of continuity for the live path: channel -> (seq passed on, its stream seq, generation).
        self.tails: dict[str, tuple[int, int, int]] = {}
        self.generation = 0  # bumped by every connect and every slow-consumer loss
        self.batched = True  # the connected server answers batched direct gets (connect)

    # -- the streams ---------------------------------------------------------------------------
    def _config(self, channel: str) -> Any:
        return self._shard_config(shard_of(channel, self.shards))

    def _shard_config(self, k: int) -> Any:
        from nats.js.api import RePublish, StorageType, StreamConfig

        ns = self.bridge.namespaces
        rules = [ns.default, *ns.rules]
        age = max(1.0, *(r.replay_seconds for r in rules))
        count = max(1, *(r.replay_max_messages for r in rules))
        return StreamConfig(name=f"MWS_S{k}", subjects=[f"mws.s.{k}.>"], storage=StorageType.FILE,
                            max_msgs_per_subject=count, max_age=age, duplicate_window=min(age, 120.0),
                            allow_direct=True, num_replicas=self.replicas,
                            republish=RePublish(src=f"mws.s.{k}.>", dest=f"mws.l.{k}.>"),
                            description=f"millionws shard {k} of {self.shards}")

    async def connect(self) -> None:
        await super().connect()
        # A batched direct get needs nats-server 2.11; 2.10 (nats:2.10-alpine, the local stack) ignores
        # "batch" and answers one message with no end marker.
        version = self.nc.connected_server_version
        self.batched = (version.major, version.minor) >= (2, 11)
        self.generation += 1
        self.heads.clear()
        self.tails.clear()  # the cursors are read again (every channel catches up after a connect)
        from nats.js.errors import BadRequestError, Error

        for k in range(self.shards):
            config = self._shard_config(k)
            try:
                info = await self.js.add_stream(config)
            except BadRequestError:
                info = await self.js.stream_info(config.name)
                if shards_of(info.config.description) != str(self.shards):
                    raise BusConfigError(WRONG_SHARDS.format(mine=self.shards,
                                                             theirs=shards_of(info.config.description))) from None
                try:
                    info = await self.js.update_stream(config)
                except Error as exc:
                    self.log("stream-update", describe(exc), logging.WARNING,
                             "bus %s: shard stream %s keeps its limits: %s", self.name, config.name, describe(exc))
            created = getattr(info, "created", None)
            self.epochs[config.name] = epoch_of(config.name, created.isoformat() if created else "")
            self.streams.add(config.name)

        async def on_error(exc: Exception) -> None:
            from nats.errors import SlowConsumerError

            if isinstance(exc, SlowConsumerError):
                self.generation += 1  # a live message was dropped: no continuity proof from here on
            self.bridge.error = describe(exc)

        self.nc._error_cb = on_error  # nats-py keeps the callback there; the connect's own one is done with
        await self.nc.subscribe(INBOUND + ".>", queue=INBOUND_QUEUE, cb=self._inbound,
                                pending_msgs_limit=self.bridge.live_pending_messages,
                                pending_bytes_limit=self.bridge.live_pending_bytes)

    async def _inbound(self, msg: Any) -> None:
        """A backend's publish on ``mws.in.<channel>``: numbered and stored here, answered with its seq."""
        try:
            token = msg.subject[len(INBOUND) + 1:]
            channel = _channel_of(token)
            refusal = ("not a channel name" if channel is None
                       else None if _is_document(msg.data, self.max_depth) else "not one JSON document")
            if refusal is not None:
                self._malformed(1, f"a publish on {msg.subject[:80]!r}: {refusal}")
                answer: dict[str, Any] = {"error": {"code": 400, "description": refusal}}
            else:
                self.counter += 1
                msg_id = (msg.headers or {}).get("Nats-Msg-Id")
                pending = Pending(channel, msg.data, time.time(), self.counter, 0)
                seq = await self._publish_one(pending, f"in-{msg_id}" if msg_id else None)
                answer = {"stream": shard_names(channel, self.shards)[0], "seq": seq}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer = {"error": {"code": 503, "description": describe(exc)}}
        if msg.reply:
            try:
                await self.nc.publish(msg.reply, json.dumps(answer).encode())
            except Exception as exc:
                self.log("inbound", describe(exc), logging.WARNING, "bus %s: a backend's answer not sent: %s",
                         self.name, describe(exc))

    async def ensure_stream(self, channel: str) -> Any:
        return await self.js.stream_info(shard_names(channel, self.shards)[0])

    # -- reading -------------------------------------------------------------------------------
    async def _last(self, channel: str, direct: bool = True) -> Any:
        """The channel's last stored message, or None.  ``direct``: answered by any replica, which may lag
        (cheap, spreads the reads); else by the stream's leader."""
        from nats.js.errors import NotFoundError

        stream, subject, _ = shard_names(channel, self.shards)
        try:
            return await self.js.get_msg(stream, subject=subject, direct=direct)
        except NotFoundError:
            return None

    async def _head(self, channel: str, direct: bool = True) -> tuple[int, int] | None:
        """(stream seq, seq) of the channel's last stored message, or None; checked."""
        msg = await self._last(channel, direct)
        if msg is None:
            return None
        sseq, seq = int_of(msg.seq, 1), int_of(_seq_of(msg.headers or {}, msg.seq), 1)
        if sseq is None or seq is None:
            raise BrokerDataError(f"the last message of {channel!r} has no valid sequence")
        return sseq, seq

    async def last_seq(self, channel: str) -> int:
        head = await self._head(channel)
        if head is not None:
            self.tails[channel] = (head[1], head[0], self.generation)
            return head[1]
        # Nothing stored: every earlier seq of the channel is at most the shard's last stream seq, every
        # later one above it (module docstring), so that is where the cursor stands.
        info = await self.js.stream_info(shard_names(channel, self.shards)[0])
        floor = int_of(getattr(getattr(info, "state", None), "last_seq", None), 0)
        if floor is None:
            raise BrokerDataError(f"stream info of the shard of {channel!r} has no valid last_seq")
        self.tails[channel] = (floor, 0, self.generation)
        return floor

    def nothing_stored(self, channel: str, cursor: int) -> bool:
        return self.tails.get(channel) == (cursor, 0, self.generation)

    async def _read(self, channel: str, start: int, count: int) -> list[Any]:
        """Up to ``count`` stored messages of the channel from stream sequence ``start``."""
        stream, subject, _ = shard_names(channel, self.shards)
        if self.batched:
            return await direct_get_batch(self.nc, stream, subject, start, count)
        return await direct_get_each(self.js, stream, subject, start, count)

    async def fetch(self, channel: str, first: int, last: int) -> list[Entry]:
        # A seq is at most its stream sequence: reading from stream sequence ``first`` misses nothing.
        entries: dict[int, Entry] = {}
        bad = 0
        start = first
        batch = self.bridge.fetch_batch
        options = self.bridge.namespaces.of(channel)
        horizon = time.time() - options.replay_seconds
        while True:
            msgs = await self._read(channel, start, batch)
            before = start
            top = 0
            for msg in msgs:
                headers = msg.headers or {}
                sseq = int_of(headers.get("Nats-Sequence"), 1)
                if sseq is None:
                    bad += 1
                    continue
                start = max(start, sseq + 1)
                raw_seq = _seq_of(headers, sseq)
                raw_t = headers.get("Mws-T0") or _stamp(headers.get("Nats-Time-Stamp"))
                seq = int_of(raw_seq, 1)
                top = max(top, seq or 0)
                t_wall = _float(raw_t)
                if t_wall is not None and t_wall < horizon:
                    continue  # beyond this channel's own window (the stream keeps the largest rule's)
                if not self._keep(entries, raw_seq, raw_t, msg.data or b"", first, last):
                    if seq is None or first <= seq <= last:
                        bad += 1
            if len(msgs) < batch or top >= last or start == before:  # the end, or no valid stream seq: no progress
                break
        kept = self._fetched(channel, entries, bad)
        keep = options.replay_max_messages
        if len(kept) > keep:  # this channel's own count (the stream keeps the largest rule's)
            kept = kept[len(kept) - keep:] if keep else []
        return kept

    async def history_head(self, channel: str) -> tuple[int, int, str | None]:
        head = await self._head(channel)
        if head is None:
            return 0, 1, None  # nothing stored (never used, or idle past its window): reading creates nothing
        oldest = await self._read(channel, 1, 1)
        first = head[1]
        if oldest:
            headers = oldest[0].headers or {}
            first = int_of(_seq_of(headers, headers.get("Nats-Sequence")), 1) or first
        stream = shard_names(channel, self.shards)[0]
        return head[1], max(1, min(first, head[1])), self.epochs.get(stream) or epoch_of(stream)

    # -- the live path -------------------------------------------------------------------------
    async def subscribe_live(self, channel: str) -> Any:
        live = self._live

        async def cb(msg: Any) -> None:
            try:
                live(channel, msg.headers or {}, msg.data)
            except Exception as exc:
                self._bug("live message handler", exc)

        return await self.nc.subscribe(shard_names(channel, self.shards)[2], cb=cb,
                                       pending_msgs_limit=self.bridge.live_pending_messages,
                                       pending_bytes_limit=self.bridge.live_pending_bytes)

    async def unsubscribe_live(self, channel: str, sub: Any) -> None:
        self.tails.pop(channel, None)
        await sub.unsubscribe()

    def _live(self, channel: str, headers: dict, data: Any) -> None:
        sseq = int_of(headers.get("Nats-Sequence"), 1)
        raw_seq = _seq_of(headers, headers.get("Nats-Sequence"))
        seq = int_of(raw_seq, 1)
        state = self.channels.get(channel)
        if state is not None and sseq is not None and seq is not None:
            tail = self.tails.get(channel)
            prev = int_of(headers.get("Nats-Last-Sequence"), 0)
            if (tail is not None and tail[2] == self.generation and prev == tail[1] and not state.busy
                    and state.cursor == tail[0] and seq > tail[0]):
                # The stream says this is the channel's next message after the one passed on: a new run
                # (its seq jumped) is not a loss.
                state.cursor = seq - 1
            self.tails[channel] = (seq, sseq, self.generation)
        self.on_live(channel, raw_seq, headers.get("Mws-T0"), data)

    # -- publishing ----------------------------------------------------------------------------
    async def publish_batch(self, batch: list[Pending]) -> list[int | BaseException]:
        by_channel: dict[str, list[int]] = {}
        for i, pending in enumerate(batch):
            by_channel.setdefault(pending.channel, []).append(i)
        results: list[int | BaseException] = [0] * len(batch)

        async def one_channel(indexes: list[int]) -> None:
            for n, i in enumerate(indexes):
                try:
                    results[i] = await self._publish_one(batch[i])
                except Exception as exc:
                    for j in indexes[n:]:  # the rest of this channel waits: its order must hold
                        results[j] = exc
                    return

        await asyncio.gather(*(one_channel(indexes) for indexes in by_channel.values()))
        return results

    async def _publish_one(self, p: Pending, msg_id: str | None = None) -> int:
        from nats.js.errors import BadRequestError

        _, subject, _ = shard_names(p.channel, self.shards)
        leader = False
        for _attempt in range(RETRIES):
            head = self.heads.get(p.channel)
            if head is None:
                # After a conflict, from the leader: a lagging replica (one catching up after a failover)
                # would give the same stale head again and again.
                head = await self._head(p.channel, direct=not leader) or (0, 0)
            headers = {"Nats-Msg-Id": msg_id or f"{self.publisher_id}-{p.n}", "Mws-T0": repr(p.t_wall),
                       "Nats-Expected-Last-Subject-Sequence": str(head[0])}
            if head[0]:
                headers["Mws-Seq"] = str(head[1] + 1)
            try:
                ack = await self.js.publish(subject, p.data, headers=headers)
            except BadRequestError as exc:
                self.heads.pop(p.channel, None)
                if exc.err_code == CONFLICT:
                    leader = True
                    continue  # another node stored on the channel since: read the head again
                raise
            sseq = int_of(getattr(ack, "seq", None), 1)
            if sseq is None:
                raise BrokerDataError("a PubAck without a valid sequence")
            if getattr(ack, "duplicate", False):  # stored before (a retry after an outage): its own seq
                self.heads.pop(p.channel, None)
                from nats.js.errors import NotFoundError

                try:
                    msg = await self.js.get_msg(shard_names(p.channel, self.shards)[0], seq=sseq, direct=True)
                except NotFoundError:
                    return 0  # stored, seq unknown (it expired meanwhile)
                return int_of(_seq_of(msg.headers or {}, msg.seq), 1) or 0
            seq = head[1] + 1 if head[0] else sseq
            self.heads[p.channel] = (sseq, seq)
            self.heads.move_to_end(p.channel)
            if len(self.heads) > HEADS:
                self.heads.popitem(last=False)
            return seq
        raise BadRequestError(code=409, err_code=CONFLICT,
                              description=f"{RETRIES} conflicting publishes in a row on {p.channel!r}")


async def direct_get_each(js: Any, stream: str, subject: str, start: int, count: int) -> list[Any]:
    """As :func:`direct_get_batch`, one direct get per message (servers before 2.11)."""
    from nats.js.errors import NotFoundError

    got: list[Any] = []
    while len(got) < count:
        try:
            msg = await js.get_msg(stream, seq=start, subject=subject, next=True, direct=True)
        except NotFoundError:
            break
        if not isinstance(msg.seq, int) or msg.seq < start:  # no progress: what a server must never answer
            raise BrokerDataError(f"direct get on {subject!r} answered sequence {msg.seq!r} from {start}")
        got.append(msg)
        start = msg.seq + 1
    return got


async def direct_get_batch(nc: Any, stream: str, subject: str, start: int, count: int) -> list[Any]:
    """Up to ``count`` messages of ``subject`` in ``stream`` from stream sequence ``start``: one batched direct
    get (JetStream answers with the messages, then a status; nats-py has no call for it)."""
    inbox = nc.new_inbox()
    got: list[Any] = []
    done = asyncio.get_running_loop().create_future()

    async def cb(msg: Any) -> None:
        status = (msg.headers or {}).get("Status")
        if status is None:
            got.append(msg)
            if len(got) < count:
                return
        if not done.done():
            done.set_result(status)

    sub = await nc.subscribe(inbox, cb=cb)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(
            {"seq": start, "next_by_subj": subject, "batch": count}).encode(), reply=inbox)
        status = await asyncio.wait_for(done, 5.0)
    finally:
        await sub.unsubscribe()
    if status not in (None, "204", "404"):
        raise BrokerDataError(f"direct get on {subject!r} answered status {status}")
    return got


def _channel_of(token: str) -> str | None:
    """The channel of a subject's tail (:func:`nats.subject_token` undone), or None when it names none a
    node could subscribe to (a client's channel or a user's, :func:`records.valid_internal`)."""
    if token.startswith("~"):
        try:
            token = bytes.fromhex(token[1:]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    return token if 0 < len(token) <= 256 and valid_internal(token) else None


def _stamp(raw: Any) -> float | None:
    """A ``Nats-Time-Stamp`` (RFC 3339, nanoseconds) as a unix time."""
    if not isinstance(raw, str) or not raw.endswith("Z"):
        return None
    from datetime import datetime

    whole, _, frac = raw[:-1].partition(".")
    try:
        base = datetime.fromisoformat(whole + "+00:00").timestamp()
    except ValueError:
        return None
    return base + (float("0." + frac) if frac.isdigit() else 0.0)


def _float(raw: Any) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
