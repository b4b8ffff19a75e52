"""HTTP/1.1 on the server side: h11 parses, this module decides and renders.

Theory of operation: h11 turns bytes into request events and enforces HTTP/1.1 framing
(it answers malformed input with ``RemoteProtocolError`` carrying the status to send:
400, or 431 for a request head over the limit).  Responses are rendered here as bytes,
because every response of this server is small and complete: a fresh h11 parser is
started for the next request on a keep-alive connection, fed with whatever the client
pipelined.  The WebSocket opening handshake (RFC 6455 §4.2) is validated here as well;
a refused handshake is an :class:`HttpError` carrying its status, its extra headers and
the reason it is counted under in ``millionws_handshake_failures_total``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable

import h11

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

STATUS_TEXT = {
    101: "Switching Protocols", 200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}

# Labels of millionws_handshake_failures_total.
HANDSHAKE_REASONS = ("bad_request", "method", "version", "upgrade_required", "too_large", "timeout",
                     "over_capacity", "draining", "not_found", "unauthorized", "forbidden", "rate_limited",
                     "internal", "unavailable")
(HS_BAD_REQUEST, HS_METHOD, HS_VERSION, HS_UPGRADE_REQUIRED, HS_TOO_LARGE, HS_TIMEOUT,
 HS_OVER_CAPACITY, HS_DRAINING, HS_NOT_FOUND, HS_UNAUTHORIZED, HS_FORBIDDEN, HS_RATE_LIMITED,
 HS_INTERNAL, HS_UNAVAILABLE) = range(
    len(HANDSHAKE_REASONS))


class HttpError(Exception):
    """A request we refuse: ``status`` to answer, ``reason`` index into HANDSHAKE_REASONS,
    ``code`` the machine-readable error code of the body (docs/protocol.md), if any."""

    def __init__(self, status: int, message: str, reason: int = HS_BAD_REQUEST,
                 headers: Iterable[tuple[str, str]] = (), code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = tuple(headers)
        self.code = code


def new_parser(max_head: int) -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)


class _Unstarted:
    """``conn.http`` of a connection that has sent nothing yet: its h11 parser is made only when the first
    head is not one the fast path reads (``fast_head``); it reads as an idle parser with nothing buffered."""

    __slots__ = ()
    their_state = h11.IDLE
    trailing_data = (b"", False)


UNSTARTED = _Unstarted()


def header_values(request: h11.Request, name: bytes) -> list[bytes]:
    """Values of header ``name`` (lower case), comma-separated lists split, lower-cased."""
    values: list[bytes] = []
    for key, value in request.headers:
        if key == name:
            values.extend(v.strip().lower() for v in value.split(b","))
    return values


def header(request: h11.Request, name: bytes) -> bytes | None:
    """The single value of header ``name``, or None when absent (the last one when repeated)."""
    found = None
    for key, value in request.headers:
        if key == name:
            found = value
    return found


def head_size(request: h11.Request) -> int:
    """Bytes of the request head as sent, give or take whitespace."""
    size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def keep_alive(request: h11.Request) -> bool:
    tokens = header_values(request, b"connection")
    if request.http_version == b"1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def has_token(value: bytes, token: bytes) -> bool:
    """Whether the comma-separated list ``value`` holds ``token`` (lower case), case-insensitively."""
    lowered = value.lower()
    return lowered == token or token in [t.strip() for t in lowered.split(b",")]


def check_upgrade(request: h11.Request) -> bytes:
    """Validate a WebSocket opening handshake; return the 101 response bytes or raise HttpError."""
    if request.method != b"GET":
        raise HttpError(405, "WebSocket upgrade needs GET", HS_METHOD, (("Allow", "GET"),))
    # One pass over the headers (this runs for every connection of a reconnect storm); the checks below
    # keep their order, so the answer to a request wrong in several ways is the same as ever.
    upgrade = connection_upgrade = False
    versions: list[bytes] = []
    keys: list[bytes] = []
    for name, value in request.headers:
        if name == b"upgrade":
            upgrade = upgrade or has_token(value, b"websocket")
        elif name == b"connection":
            connection_upgrade = connection_upgrade or has_token(value, b"upgrade")
        elif name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-key":
            keys.append(value)
    if not upgrade:
        raise HttpError(426, "this endpoint speaks WebSocket", HS_UPGRADE_REQUIRED,
                        (("Upgrade", "websocket"), ("Connection", "Upgrade")))
    if request.http_version != b"1.1":
        raise HttpError(400, "WebSocket needs HTTP/1.1", HS_BAD_REQUEST)
    if not connection_upgrade:
        raise HttpError(400, "Connection header lacks the upgrade token", HS_BAD_REQUEST)
    if versions != [b"13"]:
        raise HttpError(426, "unsupported Sec-WebSocket-Version", HS_VERSION, (("Sec-WebSocket-Version", "13"),))
    if len(keys) != 1:
        raise HttpError(400, "exactly one Sec-WebSocket-Key is required", HS_BAD_REQUEST)
    key = keys[0].strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise HttpError(400, "Sec-WebSocket-Key is not 16 bytes of base64", HS_BAD_REQUEST) from None
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")


def render(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
           keep_alive: bool = True, headers: Iterable[tuple[str, str]] = (), head: bool = False) -> bytes:
    """A complete HTTP/1.1 response. ``head``: HEAD request, so the body is left out."""
    lines = [f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Unknown')}",
             "Server: millionws",
             f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}",
             "Connection: keep-alive" if keep_alive else "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def render_json(status: int, document: object, keep_alive: bool = True, head: bool = False,
                headers: Iterable[tuple[str, str]] = ()) -> bytes:
    return render(status, json.dumps(document, separators=(",", ":")).encode(), "application/json",
                  keep_alive, headers, head)


def render_error(error: HttpError, keep_alive: bool = False, head: bool = False) -> bytes:
    document = {"error": error.message}
    if error.code is not None:
        document["code"] = error.code
    return render_json(error.status, document, keep_alive, head, error.headers)


_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    """A Host header value is uri-host [":" port] (RFC 9112 §3.2, RFC 3986 §3.2.2)."""
    return _HOST.fullmatch(value) is not None


def request_path(target: bytes) -> bytes:
    """The path of a request target: origin-form, or absolute-form (RFC 9112 §3.2.2) reduced to it."""
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if sep and scheme.lower() in (b"http", b"https", b"ws", b"wss"):
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
    return target.split(b"?", 1)[0]


def check_framing(request: h11.Request) -> None:
    """Refuse what RFC 9112 says a server must not guess about, before h11 reads a body."""
    hosts = [v for k, v in request.headers if k == b"host"]
    if hosts and not valid_host(hosts[0]):
        raise HttpError(400, "invalid Host header", HS_BAD_REQUEST)
    names = {k for k, _ in request.headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        # §6.1: both present is a request-smuggling vector; answer and close.
        raise HttpError(400, "both Transfer-Encoding and Content-Length", HS_BAD_REQUEST)
