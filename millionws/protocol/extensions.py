"""WebSocket extension negotiation (RFC 6455 §9, RFC 7692 §5 and §7.1): which ``permessage-deflate`` offer
the server accepts, and what it answers.

Theory of operation: the client lists its offers in ``Sec-WebSocket-Extensions``, most preferred first, as
``name; param; param=value, name; ...`` (values may be quoted).  :func:`negotiate` walks them in order and
accepts the first ``permessage-deflate`` offer whose parameters are all valid; an offer with an unknown or
repeated parameter, or a value out of range, is declined and the next one is considered (§7.1: the server
declines an offer it cannot accept, the connection is not failed).  No acceptable offer: no extension,
the connection works uncompressed.

The answer always carries ``server_no_context_takeover`` and ``client_no_context_takeover``.  RFC 7692
allows a server to add both even when they were not offered (§7.1.1.1, §7.1.1.2), so no client can insist
on context takeover: every message is compressed and decompressed on its own, and between messages a
connection owns no zlib object (the frame codec, :mod:`deflate`, borrows them per message).  The price is
a lower ratio on streams of similar small messages; the gain is memory per idle connection equal to an
uncompressed one.

* ``server_max_window_bits=N`` offered: answered with N, and our compressor uses a window of at most 2^N
  (N = 8, which zlib's raw deflate refuses, is served with Huffman-only coding: no back-reference at all,
  so any window decodes it).  Not offered: not answered (§7.1.2.1 forbids it), window 2^15.
* ``client_max_window_bits`` (with or without a value): accepted and not answered, which leaves the
  client free to use up to its offered value; we inflate with a 2^15 window, which decodes any smaller one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NAME = "permessage-deflate"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BITS = re.compile(r"[89]|1[0-5]")  # RFC 7692 §7.1.2: 8..15, no leading zero
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside double quotes (a quoted value may hold commas and semicolons)."""
    parts, start, quoted, escaped = [], 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _param(text: str) -> tuple[str, str | None] | None:
    """``name`` or ``name=value`` (value a token or a quoted string); None when malformed."""
    name, eq, value = (s.strip() for s in text.partition("="))
    if not _TOKEN.fullmatch(name):
        return None
    if not eq:
        return name.lower(), None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])  # RFC 6455 §9.1: unquoted, it must still be a token
    return (name.lower(), value) if _TOKEN.fullmatch(value) else None


def offers(values: Iterable[bytes]) -> list[tuple[str, list[tuple[str, str | None]] | None]]:
    """The extension offers of the ``Sec-WebSocket-Extensions`` header values, in order: (name, params), with
    params None when some parameter is malformed (that offer can only be declined)."""
    found: list[tuple[str, list[tuple[str, str | None]] | None]] = []
    for value in values:
        for element in _split(value.decode("latin-1"), ","):
            name, *rest = _split(element, ";")
            name = name.strip().lower()
            if not _TOKEN.fullmatch(name):
                continue  # an empty list element (RFC 9110 §5.6.1) or garbage: nothing to decline
            params: list[tuple[str, str | None]] | None = []
            for text in rest:
                param = _param(text)
                if param is None:
                    params = None
                    break
                params.append(param)
            found.append((name, params))
    return found


def accept(params: list[tuple[str, str | None]] | None) -> int | None:
    """The server window bits to answer a ``permessage-deflate`` offer with (0: the offer named none), or
    None when the offer must be declined."""
    if params is None:
        return None
    seen: set[str] = set()
    bits = 0
    for name, value in params:
        if name in seen:
            return None  # §7.1: a parameter given twice declines the offer
        seen.add(name)
        if name in _FLAGS:
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            if value is None or not _BITS.fullmatch(value):
                return None
            bits = int(value)
        elif name == "client_max_window_bits":
            if value is not None and not _BITS.fullmatch(value):
                return None
        else:
            return None
    return bits


def answer(bits: int) -> bytes:
    """The response header line accepting an offer (``bits``: from :func:`accept`)."""
    line = f"Sec-WebSocket-Extensions: {NAME}; server_no_context_takeover; client_no_context_takeover"
    if bits:
        line += f"; server_max_window_bits={bits}"
    return line.encode("latin-1") + b"\r\n"


_ANSWERS = {bits: answer(bits) for bits in (0, *range(8, 16))}


def negotiate(values: Iterable[bytes]) -> tuple[bytes, int] | None:
    """The first acceptable ``permessage-deflate`` offer of these header values: (the header line of the
    101, the window bits our compressor may use: 8..15); None when no offer is acceptable."""
    for name, params in offers(values):
        if name == NAME:
            bits = accept(params)
            if bits is not None:
                return _ANSWERS[bits], bits or 15
    return None
