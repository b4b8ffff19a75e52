"""Records between the workers of one node: their layout, and the check of every one received.

Theory of operation: :mod:`bus` moves opaque records; :mod:`channels` says what they mean;
this module is the wire format in between, one function per record to build it and one
:func:`decode` that either returns a record's fields, every one checked, or raises
``ValueError`` / ``struct.error``: a record is untrusted input like any other, so a worker
that sent garbage (a bug, a restart mid-record) costs the receiver a counter, never a crash
and never a half-applied change.  What only the receiving hub can judge (the sender's index,
whether it owns the channel) stays in the hub.

Layouts (first byte = type; numbers big-endian; ``chan`` is the name's length then its ASCII):
PUB ``t0 req chan data`` · PUBACK ``req seq reach`` · MSG ``t0 seq chan data`` ·
INTEREST/UNINTEREST ``chan`` · REPLAY_REQ ``req since chan`` ·
REPLAY ``req reason first last chan n (seq t0 len data)*`` · HELLO · CTL ``json``.
``t0`` is the publisher's monotonic time (CLOCK_MONOTONIC is one clock for the whole machine).

**Control messages** (:mod:`control`) are one JSON object, the same bytes whether a ``CTL`` record carries
them to a worker of this node or the broker to a worker of another node: ``op`` (``req``, ``ans``, ``note``,
``hello``), the sender as ``node`` (its node's id, hex) and ``w`` (its worker index), then per op
``id`` (a request number), ``kind`` and ``args`` (an object), ``ok`` with ``answer`` or ``error``, ``ask``.
:func:`decode_control` checks every field the receiver uses (size, depth, types, ranges, alphabets);
other keys are ignored, so that a node of a later version may add some.
"""

from __future__ import annotations

import math
import re
import struct
import time
from typing import Any

from .. import jsonsafe
from ..jsonsafe import MAX_SAFE_INTEGER

T_PUB, T_MSG, T_INTEREST, T_UNINTEREST, T_REPLAY_REQ, T_REPLAY, T_HELLO, T_PUBACK, T_CTL = range(1, 10)
_PUB = struct.Struct("!BdIH")
_PUBACK = struct.Struct("!BIQB")
_MSG = struct.Struct("!BdQH")
_CHAN = struct.Struct("!BH")
_REQ = struct.Struct("!BIQH")
_REPLAY = struct.Struct("!BIBQQHI")
_ENTRY = struct.Struct("!QdI")
HELLO = bytes((T_HELLO,))
REFUSED_CHANNEL_LIMIT = 255  # PUBACK's reach byte when the owner could not take the channel

# Why a replay could not be exact: index sent between workers, name sent to the client.
GAP_NONE, GAP_EXPIRED, GAP_UNKNOWN = 0, 1, 2
GAP_REASONS = ("", "expired", "unknown")

# The names a record may carry: a client's channel, or a user's reserved one (channels.py says why).
CHANNEL_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
USER_RE = re.compile(r"[A-Za-z0-9._:@+=|-]{1,128}\Z")
USER_PREFIX = "@user:"


def valid_internal(name: str) -> bool:
    """A channel name as it may travel between workers: a client's, or a user's reserved one."""
    if name.startswith(USER_PREFIX):
        return USER_RE.match(name, len(USER_PREFIX)) is not None
    return CHANNEL_RE.match(name) is not None


# -- building --------------------------------------------------------------------------------
def pub(t0: float, req: int, channel: str, data: bytes) -> bytes:
    name = channel.encode()
    return _PUB.pack(T_PUB, t0, req, len(name)) + name + data


def puback(req: int, seq: int, reach: int) -> bytes:
    return _PUBACK.pack(T_PUBACK, req, seq, reach)


def msg(t0: float, seq: int, channel: str, data: bytes) -> bytes:
    name = channel.encode()
    return _MSG.pack(T_MSG, t0, seq, len(name)) + name + data


def interest(channel: str, on: bool) -> bytes:
    name = channel.encode()
    return _CHAN.pack(T_INTEREST if on else T_UNINTEREST, len(name)) + name


def replay_req(req: int, since: int, channel: str) -> bytes:
    name = channel.encode()
    return _REQ.pack(T_REPLAY_REQ, req, since, len(name)) + name


def replay(req: int, reason: int, first: int, last: int, channel: str,
           entries: list[tuple[int, float, bytes]]) -> bytes:
    name = channel.encode()
    parts = [_REPLAY.pack(T_REPLAY, req, reason, first, last, len(name), len(entries)), name]
    for seq, t, data in entries:
        parts.append(_ENTRY.pack(seq, t, len(data)))
        parts.append(data)
    return b"".join(parts)


def control(body: bytes) -> bytes:
    """A control message (:func:`control_message`) as a record to a worker of this node."""
    return bytes((T_CTL,)) + body


# -- control messages ----------------------------------------------------------------------------
CTL_REQ, CTL_ANS, CTL_NOTE, CTL_HELLO = "req", "ans", "note", "hello"
NODE_RE = re.compile(r"[0-9a-f]{1,32}\Z")  # a node's id: random hex, made by the supervisor (mesh.Mesh)
KIND_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,31}\Z")  # what a handler is registered under
MAX_WORKER = 0xFFFF
MAX_REQ = 0xFFFFFFFF
MAX_ERROR = 200  # characters of an answer's error text


def control_message(op: str, node: str, worker: int, **fields: Any) -> bytes:
    """One control message, as :func:`decode_control` reads it (``fields``: the op's own, see there)."""
    return jsonsafe.dump({"op": op, "node": node, "w": worker, **fields})


def decode_control(body: bytes | memoryview, max_bytes: int, max_depth: int) -> tuple[Any, ...]:
    """The fields of one control message, checked; raises ValueError (a JsonError is one).

    ``("req", node, w, id, kind, args)`` · ``("ans", node, w, id, ok, answer or error text)`` ·
    ``("note", node, w, kind, args)`` · ``("hello", node, w, ask)``.
    """
    if len(body) > max_bytes:
        raise ValueError(f"control message of {len(body)} bytes (at most {max_bytes})")
    msg = jsonsafe.parse(bytes(body), max_depth)
    if type(msg) is not dict:
        raise ValueError("a control message is a JSON object")
    op, node, worker = msg.get("op"), msg.get("node"), msg.get("w")
    if type(node) is not str or not NODE_RE.match(node) or type(worker) is not int or not 0 <= worker <= MAX_WORKER:
        raise ValueError("control message without a valid sender")
    if op == CTL_REQ or op == CTL_NOTE:
        kind, args = msg.get("kind"), msg.get("args")
        if type(kind) is not str or not KIND_RE.match(kind) or type(args) is not dict:
            raise ValueError("control request without a valid kind and args")
        if op == CTL_NOTE:
            return op, node, worker, kind, args
        return op, node, worker, _req(msg), kind, args
    if op == CTL_ANS:
        req, ok = _req(msg), msg.get("ok")
        if ok is True and "answer" in msg:
            return op, node, worker, req, True, msg["answer"]
        error = msg.get("error")
        if ok is False and type(error) is str and len(error) <= MAX_ERROR:
            return op, node, worker, req, False, error
        raise ValueError("control answer without ok and answer, or a short error")
    if op == CTL_HELLO:
        ask = msg.get("ask")
        if type(ask) is not bool:
            raise ValueError("hello without ask")
        return op, node, worker, ask
    raise ValueError("unknown control op")


def _req(msg: dict[str, Any]) -> int:
    req = msg.get("id")
    if type(req) is not int or not 1 <= req <= MAX_REQ:
        raise ValueError("control message without a valid request number")
    return req


# -- checking what arrives ---------------------------------------------------------------------
def decode(record: memoryview) -> tuple[Any, ...]:
    """The fields of one record, checked; its type first.  Raises ValueError or struct.error.

    MSG ``(T_MSG, channel, seq, data, t0)`` · PUB ``(T_PUB, channel, req, data, t0)`` ·
    PUBACK ``(T_PUBACK, req, seq, reach)`` (seq 0 and reach ``REFUSED_CHANNEL_LIMIT`` when refused) ·
    INTEREST/UNINTEREST ``(kind, channel)`` · REPLAY_REQ ``(kind, req, since, channel)`` ·
    REPLAY ``(kind, req, reason, first, last, channel, entries)`` · HELLO ``(T_HELLO,)``.
    CTL records never get here: :mod:`control` takes them (:func:`decode_control`) before the channels do.
    """
    kind = record[0]
    if kind == T_MSG:
        _, t0, seq, n = _MSG.unpack_from(record)
        end = _MSG.size + n
        channel = _name(record, _MSG.size, end)
        _check_seq(seq, t0)
        return T_MSG, channel, seq, bytes(record[end:]), t0
    if kind == T_PUB:
        _, t0, req, n = _PUB.unpack_from(record)
        end = _PUB.size + n
        channel = _name(record, _PUB.size, end)
        _check_seq(1, t0)
        return T_PUB, channel, req, bytes(record[end:]), t0
    if kind == T_PUBACK:
        _, req, seq, reach = _PUBACK.unpack(record)
        if reach != REFUSED_CHANNEL_LIMIT:
            _check_seq(seq, 0.0)
        return T_PUBACK, req, seq, reach
    if kind == T_INTEREST or kind == T_UNINTEREST:
        n = _CHAN.unpack_from(record)[1]
        return kind, _name(record, _CHAN.size, _CHAN.size + n, exact=True)
    if kind == T_REPLAY_REQ:
        _, req, since, n = _REQ.unpack_from(record)
        channel = _name(record, _REQ.size, _REQ.size + n, exact=True)
        _check_range("since", since, 0, MAX_SAFE_INTEGER)
        return T_REPLAY_REQ, req, since, channel
    if kind == T_REPLAY:
        return _decode_replay(record)
    if kind == T_HELLO and len(record) == 1:
        return (T_HELLO,)
    raise ValueError(f"unknown record type {kind} or size {len(record)}")


def _decode_replay(record: memoryview) -> tuple[Any, ...]:
    _, req, reason, first, last, n, count = _REPLAY.unpack_from(record)
    pos = _REPLAY.size + n
    channel = _name(record, _REPLAY.size, pos)
    if reason >= len(GAP_REASONS) or count > (len(record) - pos) // _ENTRY.size:
        raise ValueError(f"replay record: reason {reason}, {count} entries")
    _check_range("first", first, 1, MAX_SAFE_INTEGER)
    _check_range("last", last, 0, MAX_SAFE_INTEGER)
    entries = []
    previous = 0
    for _ in range(count):
        seq, t, size = _ENTRY.unpack_from(record, pos)
        pos += _ENTRY.size
        _check_seq(seq, t)
        if seq <= previous or pos + size > len(record):
            raise ValueError("replay entries out of order or cut short")
        previous = seq
        entries.append((seq, t, bytes(record[pos:pos + size])))
        pos += size
    if pos != len(record):
        raise ValueError("replay record longer than its entries")
    return T_REPLAY, req, reason, first, last, channel, entries


def _name(record: memoryview, start: int, end: int, exact: bool = False) -> str:
    """The channel name at ``record[start:end]``, checked: ASCII, a valid internal name."""
    if end > len(record) or (exact and end != len(record)):
        raise ValueError("a name runs past the record")
    name = str(record[start:end], "ascii")
    if not valid_internal(name):
        raise ValueError(f"invalid channel name {name[:40]!r}")
    return name


def _check_seq(seq: int, t: float) -> None:
    """A seq and a monotonic time from another worker."""
    if not 1 <= seq <= MAX_SAFE_INTEGER or not (math.isfinite(t) and -1.0 <= t <= time.monotonic() + 60.0):
        raise ValueError(f"seq {seq} or time {t} out of range")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} out of range")
