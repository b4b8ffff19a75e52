"""Certificate rotation for ``wss://``: a new pair for new connections, the open ones untouched.

Theory of operation: the pair is reloaded on SIGHUP (the supervisor passes it on to every worker, see
:mod:`drain`) and when either file changes on disk, checked every ``--tls-reload-interval`` seconds (a
Kubernetes secret is updated in place, and nobody sends a signal then).  Reloading builds a new
``SSLContext`` (``core/tls.Certificates``); connections opened before keep theirs.  A pair that does not
load (half-written, a key that does not match) keeps the old one: counted in
``millionws_tls_reloads_total{result="failed"}`` and logged, by the first worker only, once per change,
so a rotation of a node with many workers is one line.
"""

from __future__ import annotations

import logging

from ..core.reactor import Reactor
from ..core.tls import Certificates
from ..metrics import F

log = logging.getLogger("millionws.server.rotation")

_OK, _FAILED = F["tls_reload_ok"], F["tls_reload_failed"]


class Rotation:
    __slots__ = ("certs", "c", "index", "interval", "reactor")

    def __init__(self, certs: Certificates, reactor: Reactor, counters: list[int], index: int,
                 interval: float) -> None:
        self.certs = certs
        self.reactor = reactor
        self.c = counters
        self.index = index
        self.interval = interval

    def start(self) -> None:
        if self.interval > 0:
            self._watch()

    # A periodic timer schedules its next turn first: one that raises is skipped once, not forever.
    def _watch(self) -> None:
        self.reactor.call_later(self.interval, self._watch)
        if self.certs.changed():
            self.reload("the certificate files changed")

    def reload(self, why: str = "SIGHUP") -> None:
        error = self.certs.reload()
        if error is None:
            self.c[_OK] += 1
            if self.index == 0:
                log.info("TLS certificate reloaded (%s): new connections use %s", why, self.certs.cert)
        else:
            self.c[_FAILED] += 1
            if self.index == 0:
                log.error("TLS certificate reload failed (%s), the previous pair stays in use: %s", why, error)
