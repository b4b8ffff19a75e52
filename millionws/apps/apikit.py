"""What every endpoint of the backend's API shares: strict parsing of its input, and its deferred answer.

Theory of operation: an API request is input like any other, checked once where it enters, and strictly.
A query string is bounded (:data:`MAX_QUERY`), percent-decoded (``+`` is a plus), and every parameter must
be one the endpoint knows, given once, with a value its converter accepts (integers are ASCII digits in a
range: no sign, no space, no exponent).  A JSON body is one document within the limits of a publish
(:mod:`jsonsafe`), an object with only the keys the endpoint knows.  A refusal is an ``HttpError`` with
status and ``code``, counted in ``millionws_input_refused_total{code}`` (:func:`backend.refused`).

An answer that waits for other workers is a :class:`Deferred`: given at once if it is known before the
endpoint returns (one worker, no bus), else later through ``host.answer``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from .. import jsonsafe
from ..jsonsafe import JsonError
from ..metrics import REFUSED, WorkerStats
from ..protocol import http
from ..protocol.http import HttpError
from ..pubsub.records import valid_internal
from .host import Response

MAX_QUERY = 2048  # bytes of a query string: far more than the parameters of any endpoint need
PREFIX_RE = re.compile(r"[A-Za-z0-9._:@+=|-]{0,128}\Z")  # what channel names (clients' and users') are made of


def refused(stats: WorkerStats, status: int, message: str, code: str,
            headers: Iterable[tuple[str, str]] = ()) -> HttpError:
    """A refusal of client input: counted by its code, rendered by the server."""
    stats.c[REFUSED[code]] += 1
    return HttpError(status, message, _REASONS.get(status, http.HS_BAD_REQUEST), headers, code)


# The handshake-failure label (millionws_handshake_failures_total{reason}) of a refusal, by its status.
_REASONS = {403: http.HS_FORBIDDEN, 404: http.HS_NOT_FOUND, 429: http.HS_RATE_LIMITED, 503: http.HS_UNAVAILABLE}


def segment(raw: bytes) -> str:
    """A percent-decoded path segment; "" (valid as nothing) when it does not decode to ASCII."""
    try:
        return unquote_to_bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        return ""


class Deferred:
    """The answer to one HTTP request: given at once when it is known before the handler returns, else later
    through ``host.answer``."""

    __slots__ = ("answer", "conn", "outcome", "waiting")

    def __init__(self, answer: Callable[[Any, Any], None], conn: Any) -> None:
        self.answer = answer
        self.conn = conn
        self.outcome: Response | HttpError | None = None
        self.waiting = False

    def give(self, outcome: Response | HttpError) -> None:
        if self.waiting:
            self.answer(self.conn, outcome)
        else:
            self.outcome = outcome

    def returned(self) -> Response | None:
        """What :meth:`App.handle` returns: the answer if it is known already, else None (deferred)."""
        outcome = self.outcome
        if isinstance(outcome, HttpError):
            raise outcome
        self.waiting = outcome is None
        return outcome


# -- the query string --------------------------------------------------------------------------------------

def integer(low: int, high: int) -> Callable[[str], int]:
    """A parameter that is a decimal integer in ``low`` .. ``high``: ASCII digits only (no sign, no space)."""
    def convert(text: str) -> int:
        if not (0 < len(text) <= 16 and text.isascii() and text.isdigit()):
            raise ValueError(f"an integer {low}..{high}")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"an integer {low}..{high}")
        return value
    return convert


def flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("0 or 1")
    return text == "1"


def channel_name(text: str) -> str:
    """A channel's name as the API may name it: a client's, or a user's own (``@user:<id>``)."""
    if not valid_internal(text):
        raise ValueError("a channel name (1 to 128 of A-Z a-z 0-9 . _ : -, or @user:<id>)")
    return text


def prefix_of(text: str) -> str:
    if not PREFIX_RE.match(text):
        raise ValueError("at most 128 of the characters of channel names")
    return text


def parse_query(stats: WorkerStats, raw: bytes, spec: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The parameters of ``raw`` (percent-decoded; ``+`` is a plus), each converted by ``spec``; 400
    ``bad_request`` for an unknown, repeated or invalid one."""
    if len(raw) > MAX_QUERY:
        raise refused(stats, 400, f"the query string is over {MAX_QUERY} bytes", "bad_request")
    params: dict[str, Any] = {}
    for part in raw.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        try:
            name = unquote_to_bytes(key).decode("ascii")
            text = unquote_to_bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise refused(stats, 400, "query parameters are ASCII", "bad_request") from None
        convert = spec.get(name)
        if convert is None:
            known = ", ".join(spec) or "none"
            raise refused(stats, 400, f"unknown parameter {name[:40]!r} (known: {known})", "bad_request")
        if name in params:
            raise refused(stats, 400, f"parameter {name!r} given twice", "bad_request")
        try:
            params[name] = convert(text)
        except ValueError as exc:
            raise refused(stats, 400, f"parameter {name!r} must be {exc}", "bad_request") from None
    return params


def allow(request: h11.Request, *methods: bytes) -> None:
    if request.method not in methods:
        raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", ", ".join(m.decode() for m in methods)),))


def answered(document: dict[str, Any], keep_alive: bool) -> Response:
    return Response(http.render_json(200, document, keep_alive), 200, keep_alive)


def json_body(stats: WorkerStats, body: bytes, max_depth: int, known: tuple[str, ...],
              empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body: one JSON object holding only ``known`` keys; ``empty`` (when given) stands for an
    empty body.  ``max_depth`` is of the object: a value inside may be one level less deep."""
    if not body.strip() and empty is not None:
        return empty
    try:
        document = jsonsafe.parse(body, max_depth)
    except JsonError as exc:
        raise refused(stats, 400, f"the body must be one JSON document in UTF-8: {exc.message}", exc.code) from None
    if type(document) is not dict:
        raise refused(stats, 400, "the body is a JSON object", "bad_request")
    unknown = [key for key in document if key not in known]
    if unknown:
        raise refused(stats, 400, f"unknown key {unknown[0][:40]!r} (known: {', '.join(known)})", "bad_request")
    return document
