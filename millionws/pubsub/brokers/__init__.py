"""Channels across nodes: ``--bus nats://host:port`` or ``--bus redis://host:port``.

With a bus the broker is the one sequencer of every channel, so ``seq`` is the same on
every node, strictly increasing and gap-free; each worker talks to it from a thread of its
own and the reactor never waits on it.  Each module opens with its theory of operation:

==================  ============================================================================
``bridge``          :class:`Bridge`, the worker's side: the thread, the deques and the eventfd
``schemes``         the one table from URL scheme to broker; :func:`preflight` before the fork
``backend``         the thread's main loop: connect, reconnect with backoff, the worker's commands
``delivery``        gap-free delivery: cursors, catch-up reads, replay answers, malformed records
``outbox``          publishing: batches, one answer per publish, the outage policy
``base``            the event ids, the checks of everything read from a broker, the interface
``nats``            NATS JetStream: a stream per channel, republished on core subjects
``redis``           Redis >= 7: a function sequences, pub/sub carries, a stream keeps the window
==================  ============================================================================

``nats`` and ``redis`` import their client libraries by absolute name, lazily: the module
names do not shadow the libraries (Python 3 imports are absolute), and the server runs
without either extra until a bus is configured.  Adding a broker: a :class:`backend.Backend`
subclass implementing the abstract methods of :class:`base.BackendBase`, and its row in
:data:`schemes.SCHEMES`.

Only the names below are for the rest of millionws; tests reach into the modules.
"""

from __future__ import annotations

from .base import (
    E_ACK,
    E_ANSWER,
    E_CTL,
    E_GAP,
    E_MSG,
    E_REPLAY,
    E_SIGNAL,
    E_STATE,
    GAP_EXPIRED,
    GAP_NONE,
    GAP_UNKNOWN,
    BusConfigError,
    redact,
)
from .bridge import Bridge
from .schemes import preflight, require

__all__ = [
    "E_ACK",
    "E_ANSWER",
    "E_CTL",
    "E_GAP",
    "E_MSG",
    "E_REPLAY",
    "E_SIGNAL",
    "E_STATE",
    "GAP_EXPIRED",
    "GAP_NONE",
    "GAP_UNKNOWN",
    "Bridge",
    "BusConfigError",
    "preflight",
    "redact",
    "require",
]
