"""Exception boundaries: an unexpected exception ends its unit of work, never the worker.

Theory of operation (websockets' rule, h11's "anything but RemoteProtocolError is a bug"):
code that runs for one connection, one HTTP request, one record from another worker,
one broker event or one timer runs inside a ``try`` whose ``except Exception`` calls
:func:`report` and then ends just that unit: the connection is closed (1011 / HTTP 500),
the record dropped, the timer skipped.  :func:`report` counts the error in
``millionws_internal_errors_total{where}`` and logs it with its traceback, at most one
line per site per ``LOG_INTERVAL`` seconds (a flood of one bug must not fill the disk);
the next line says how many were left unlogged.  What may still end a worker is an
error in the reactor's own loop (``reactor.Reactor.run``), where no unit of work is left
to blame.
"""

from __future__ import annotations

import logging
import time

from .metrics import F

log = logging.getLogger("millionws.boundary")

LOG_INTERVAL = 10.0
_last_logged: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def report(counters: list[int], where: str, exc: BaseException, what: str = "") -> None:
    """Count ``exc`` under ``where`` (one of metrics.INTERNAL_ERROR_SITES); log it, rate-limited."""
    counters[F["internal_error_" + where]] += 1
    now = time.monotonic()
    if now - _last_logged.get(where, -LOG_INTERVAL) < LOG_INTERVAL:
        _suppressed[where] = _suppressed.get(where, 0) + 1
        return
    _last_logged[where] = now
    skipped = _suppressed.pop(where, 0)
    log.error("internal error in %s%s (ended that unit of work; %d more since the last line)", where,
              f" ({what})" if what else "", skipped, exc_info=(type(exc), exc, exc.__traceback__))
