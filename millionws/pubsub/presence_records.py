"""Presence records between workers and nodes: their layout, and the check of every one received.

Theory of operation: :mod:`presence` says what the records mean, the links carry them (the mesh between the
workers of a node, or a broker subject between nodes: the same bytes either way); this module is the wire
format in between, as :mod:`records` is for messages.  One function builds each record, :func:`decode` either
returns its fields, every one checked, or raises ``ValueError`` / ``struct.error``.  A record from another
worker or from the broker is untrusted input: a malformed one costs the receiver a counter, never a crash and
never a half-applied change.

Every record starts with its type and its *source*: the id of the worker that sent it, unique across the
deployment (:func:`presence.new_source`), so a receiver keeps one count per source whatever carried it.

Layouts (numbers big-endian; ``str8`` is a length byte then ASCII; ``chan`` a 2-byte length then ASCII):

* BATCH ``source flags count njoins nleaves chan (user client)*``: a worker's members of a channel (``count``)
  and, unless ``flags`` has OVERFLOW, who joined and left it since its previous batch.
* SYNC ``source chan``: "I have just started following this channel: tell me your count".
* ALIVE ``source``: the heartbeat that keeps a source's counts in the sums.
* LIST_REQ ``source req limit chan``: up to ``limit`` members of the channel, please.
* LIST_ANS ``source req count flags nsources nmembers chan source* (user client)*``: the answer, with the
  sources the answerer knows to have members (so a requester over a bus knows whom to wait for).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import Any

from .records import USER_RE, valid_internal

T_BATCH, T_SYNC, T_ALIVE, T_LIST_REQ, T_LIST_ANS = range(16, 21)  # after records.T_*: one type space per link
T_FIRST, T_LAST = T_BATCH, T_LIST_ANS
OVERFLOW = 1  # BATCH: more changes than --presence-max-events: the count alone
TRUNCATED = 1  # LIST_ANS: the answerer holds more members than it listed

MAX_COUNT = (1 << 32) - 1
MAX_MEMBERS = (1 << 16) - 1  # names in one record (joins, leaves, a list answer): a 16-bit count
SOURCE_RE = re.compile(r"[0-9a-f]{1,32}\Z")
CLIENT_RE = re.compile(r"[0-9a-f]{1,32}-[0-9a-f]{1,16}\Z")  # a source, "-", a counter (presence.Presence)

_HEAD = struct.Struct("!BB")  # type, source length
_BATCH = struct.Struct("!BIHHH")  # flags, count, njoins, nleaves, channel length
_CHAN = struct.Struct("!H")
_LIST_REQ = struct.Struct("!IIH")  # req, limit, channel length
_LIST_ANS = struct.Struct("!IIBHHH")  # req, count, flags, nsources, nmembers, channel length

Member = tuple[str, str]  # (user, client): user "" for a connection without one


# -- building --------------------------------------------------------------------------------
def _head(kind: int, source: str) -> bytes:
    return _HEAD.pack(kind, len(source)) + source.encode()


def _members(members: Iterable[Member]) -> bytes:
    parts = []
    for user, client in members:
        parts.append(b"%c%s%c%s" % (len(user), user.encode(), len(client), client.encode()))
    return b"".join(parts)


def batch(source: str, channel: str, count: int, joins: dict[str, str] | None, leaves: dict[str, str] | None,
          overflow: bool) -> bytes:
    """``joins`` and ``leaves``: client -> user (None or ignored with ``overflow``: the count alone)."""
    if overflow or joins is None or leaves is None:
        joins = leaves = {}
    name = channel.encode()
    return b"".join((_head(T_BATCH, source),
                     _BATCH.pack(OVERFLOW if overflow else 0, min(count, MAX_COUNT), len(joins), len(leaves),
                                 len(name)), name,
                     _members((user, client) for client, user in joins.items()),
                     _members((user, client) for client, user in leaves.items())))


def sync(source: str, channel: str) -> bytes:
    name = channel.encode()
    return _head(T_SYNC, source) + _CHAN.pack(len(name)) + name


def alive(source: str) -> bytes:
    return _head(T_ALIVE, source)


def list_req(source: str, req: int, limit: int, channel: str) -> bytes:
    name = channel.encode()
    return _head(T_LIST_REQ, source) + _LIST_REQ.pack(req, limit, len(name)) + name


def list_ans(source: str, req: int, count: int, truncated: bool, channel: str, sources: list[str],
             members: list[Member]) -> bytes:
    name = channel.encode()
    return b"".join((_head(T_LIST_ANS, source),
                     _LIST_ANS.pack(req, min(count, MAX_COUNT), TRUNCATED if truncated else 0, len(sources),
                                    len(members), len(name)), name,
                     b"".join(b"%c%s" % (len(s), s.encode()) for s in sources), _members(members)))


# -- checking what arrives ---------------------------------------------------------------------
def decode(record: memoryview | bytes) -> tuple[Any, ...]:
    """The fields of one record, checked, its type and source first.  Raises ValueError or struct.error.

    BATCH ``(T_BATCH, source, channel, count, overflow, joins, leaves)`` (lists of ``(user, client)``) ·
    SYNC ``(T_SYNC, source, channel)`` · ALIVE ``(T_ALIVE, source)`` ·
    LIST_REQ ``(T_LIST_REQ, source, channel, req, limit)`` ·
    LIST_ANS ``(T_LIST_ANS, source, channel, req, count, truncated, sources, members)``.
    """
    record = memoryview(record)
    kind, n = _HEAD.unpack_from(record)
    pos = _HEAD.size + n
    source = _text(record, _HEAD.size, pos, SOURCE_RE, "source")
    if kind == T_BATCH:
        flags, count, njoins, nleaves, n = _BATCH.unpack_from(record, pos)
        pos += _BATCH.size
        channel = _channel(record, pos, pos + n)
        pos, joins = _read_members(record, pos + n, njoins)
        pos, leaves = _read_members(record, pos, nleaves)
        _end(record, pos)
        if flags & ~OVERFLOW:
            raise ValueError(f"batch flags {flags}")
        return T_BATCH, source, channel, count, bool(flags & OVERFLOW), joins, leaves
    if kind == T_SYNC:
        (n,) = _CHAN.unpack_from(record, pos)
        pos += _CHAN.size
        channel = _channel(record, pos, pos + n)
        _end(record, pos + n)
        return T_SYNC, source, channel
    if kind == T_ALIVE:
        _end(record, pos)
        return T_ALIVE, source
    if kind == T_LIST_REQ:
        req, limit, n = _LIST_REQ.unpack_from(record, pos)
        pos += _LIST_REQ.size
        channel = _channel(record, pos, pos + n)
        _end(record, pos + n)
        return T_LIST_REQ, source, channel, req, limit
    if kind == T_LIST_ANS:
        req, count, flags, nsources, nmembers, n = _LIST_ANS.unpack_from(record, pos)
        pos += _LIST_ANS.size
        channel = _channel(record, pos, pos + n)
        pos += n
        sources = []
        for _ in range(nsources):
            end = pos + 1 + record[pos]
            sources.append(_text(record, pos + 1, end, SOURCE_RE, "source"))
            pos = end
        pos, members = _read_members(record, pos, nmembers)
        _end(record, pos)
        if flags & ~TRUNCATED or nmembers > count:
            raise ValueError(f"list answer flags {flags}, {nmembers} members of {count}")
        return T_LIST_ANS, source, channel, req, count, bool(flags & TRUNCATED), sources, members
    raise ValueError(f"unknown presence record type {kind}")


def _read_members(record: memoryview, pos: int, count: int) -> tuple[int, list[Member]]:
    """``count`` (user, client) pairs from ``pos``: the hot part of a batch, so inline rather than _text."""
    size = len(record)
    if count > (size - pos) // 4:  # each takes at least 4 bytes: a bogus count allocates nothing
        raise ValueError(f"{count} members in {size - pos} bytes")
    data = record.tobytes()
    user_ok, client_ok = USER_RE.match, CLIENT_RE.match
    members = []
    for _ in range(count):
        end = pos + 1 + data[pos]
        user = data[pos + 1:end].decode("ascii")
        pos = end + 1 + data[end]
        client = data[end + 1:pos].decode("ascii")
        if pos > size or (user and user_ok(user) is None) or client_ok(client) is None:
            raise ValueError(f"invalid member {user[:40]!r} {client[:40]!r}")
        members.append((user, client))
    return pos, members


def _text(record: memoryview, start: int, end: int, pattern: re.Pattern[str], what: str,
          empty: bool = False) -> str:
    if end > len(record):
        raise ValueError(f"a {what} runs past the record")
    text = str(record[start:end], "ascii")
    if not (empty and not text) and pattern.match(text) is None:
        raise ValueError(f"invalid {what} {text[:40]!r}")
    return text


def _channel(record: memoryview, start: int, end: int) -> str:
    if end > len(record):
        raise ValueError("a name runs past the record")
    name = str(record[start:end], "ascii")
    if not valid_internal(name):
        raise ValueError(f"invalid channel name {name[:40]!r}")
    return name


def _end(record: memoryview, pos: int) -> None:
    if pos != len(record):
        raise ValueError(f"presence record of {len(record)} bytes ends at {pos}")
