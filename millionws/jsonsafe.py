"""Untrusted JSON, checked once where it enters.

Theory of operation: every JSON document that enters a process (a ``/pubsub`` frame, the
body of ``POST /publish``, a message read from the broker) is parsed by :func:`parse`,
which either returns a document the rest of the server can trust or raises
:class:`JsonError` carrying the error code the client gets (docs/protocol.md):

* ``bad_json``: not one JSON document in UTF-8;
* ``bad_number``: ``NaN``, ``Infinity``, a number beyond a double (``1e400``) or an
  integer literal too long for Python to read: a subscriber's parser would refuse what
  we would re-encode;
* ``too_deep``: arrays and objects nested deeper than ``max_depth``; the decoder's own
  recursion limit is a crash guard, not a policy, and a subscriber's parser may have a
  lower one;
* ``bad_unicode``: a string (or key) holding a lone surrogate escape (``"\\ud800"``):
  valid JSON text, yet no valid Unicode, so it could not be re-encoded as UTF-8.

The checks cost nothing for the common message: the depth walk runs only when the text
holds more brackets than ``max_depth`` (an upper bound of the depth), the Unicode check
only when it holds a ``\\u`` escape.  Integers that name things (``since``, ``seq``, ``id``)
are checked by :func:`safe_int`: 0 … 2^53-1, what every JSON client can represent.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_SAFE_INTEGER = (1 << 53) - 1


class JsonError(ValueError):
    """A refused document: ``code`` is the error code of docs/protocol.md."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> None:
    raise JsonError("bad_number", f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonError("bad_number", f"{text[:32]} is beyond the range of a double")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_decode = _decoder.decode


def parse(raw: bytes | str, max_depth: int) -> Any:
    """The document in ``raw`` (UTF-8 when bytes), or :class:`JsonError`."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError("bad_json", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        document = _decode(text)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError("too_deep", f"arrays and objects nest deeper than {max_depth}") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a literal of thousands of digits
        code = "bad_json" if isinstance(exc, json.JSONDecodeError) else "bad_number"
        raise JsonError(code, f"not a JSON document: {exc}") from None
    check(document, text, max_depth)
    return document


def check(document: Any, text: str, max_depth: int) -> None:
    """Depth and Unicode of a parsed ``document`` whose source text is ``text``."""
    if text.count("[") + text.count("{") > max_depth and _deeper_than(document, max_depth):
        raise JsonError("too_deep", f"arrays and objects nest deeper than {max_depth}")
    if "\\u" in text:
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonError("bad_unicode", "a string holds a lone surrogate (\\ud800-\\udfff)") from None


def _deeper_than(document: Any, max_depth: int) -> bool:
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if type(node) is dict else node if type(node) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


def safe_int(value: object) -> bool:
    """An integer (not a bool) within 0 … 2^53-1."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER


def dump(document: Any) -> bytes:
    """Compact UTF-8 JSON of a document :func:`parse` accepted (or that we built)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
