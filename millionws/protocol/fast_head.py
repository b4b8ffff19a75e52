"""The request head of a reconnect storm, parsed without h11 (sans-IO, bytes in, a request out).

Theory of operation: a WebSocket client opens with one plain ``GET <target> HTTP/1.1`` head that arrives in
the connection's first read.  Building an h11 connection and its events for it costs more than the rest of
the handshake; :func:`parse` reads such a head with one compiled regular expression and a split, and gives
the application the same information h11 would (a :class:`Head` with ``method``, ``target``, ``headers``:
``(lower-cased name, value without surrounding whitespace)`` in order, ``http_version``).

The rule that keeps it safe: it accepts a strict **subset** of what h11 accepts, and answers ``None`` for
everything else, which then goes to h11 unchanged (h11 stays the parser of record: it decides every refusal
and every unusual-but-legal request).  So: CRLF line ends only, no obs-fold, token header names, field
values of visible ASCII or obs-text with inner spaces and tabs only, exactly one Host (valid per
``http.valid_host``, so the framing check passes), no Content-Length nor Transfer-Encoding (no body), a head
no longer than the limit.  ``tests/protocol/test_fast_head.py`` holds it to that against h11 itself.
"""

from __future__ import annotations

import re

from .http import valid_host

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"  # h11 also lets control characters through: those go to h11
_FIELD = _TOKEN + rb":[ \t]*(?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?[ \t]*\r\n"
_HEAD = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1\r\n((?:" + _FIELD + rb")*)\r\n")


class Head:
    """A request head, read as h11 would read it: what ``App.handle`` and ``protocol.http`` use of an
    ``h11.Request`` (no validation: :func:`parse` makes it only from bytes it has already checked)."""

    __slots__ = ("method", "target", "headers", "http_version")

    def __init__(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = b"GET"
        self.target = target
        self.headers = headers
        self.http_version = b"1.1"

    def __repr__(self) -> str:
        return f"<Head GET {self.target!r} {self.headers!r}>"


def parse(data: bytes, max_head: int) -> tuple[Head, bytes] | None:
    """``(head, bytes after it)`` for a plain body-less GET head at the start of ``data``; None: ask h11."""
    match = _HEAD.match(data)
    if match is None:
        return None
    end = match.end()
    if end > max_head:
        return None  # h11 and the pipeline's own measure decide what a long head gets
    headers = []
    host = None
    hosts = 0
    for line in match.group(2).split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"host":
            host = value
            hosts += 1
        elif name == b"content-length" or name == b"transfer-encoding":
            return None  # a body, or a refusal h11 and check_framing phrase
        headers.append((name, value))
    if hosts != 1 or not valid_host(host):
        return None  # missing, repeated or malformed: h11 or check_framing refuses it
    return Head(match.group(1), headers), data[end:]
