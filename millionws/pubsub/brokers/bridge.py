"""The worker's side of the bus: a bridge thread per worker, and the hand-off between it and
the reactor.  Nothing here knows NATS or Redis (:mod:`schemes` picks the broker).

Theory of operation.

**Not blocking the reactor: a bridge thread per worker.**  Each worker runs one thread
with an asyncio loop and the maintained client library (``nats-py``, ``redis``).  The
reactor hands it commands (interest, publish, replay) through a deque and one
``call_soon_threadsafe`` per loop turn; the thread hands back events (messages, gaps,
replay answers, publish acks, bus state) through a deque and an ``eventfd`` registered
in the reactor, written only when the deque goes from empty to non-empty.  Chosen over a
sans-IO parser driven by the reactor because JetStream (stream management, direct get,
de-duplication) and Redis (RESP3, functions, reconnection) are large protocols whose
maintained clients are worth more than the GIL contention of one mostly idle thread; the
reactor never waits on the broker, and one eventfd read per batch of events costs less
than a message.

**Bounded turns.**  The reactor handles at most ``--bus-events-per-wake`` events per wake
and writes the eventfd again for the rest, so a burst from the broker cannot starve the
clients.  Each event runs inside an exception boundary (:mod:`boundary`): one that raises
is counted and logged, the next one runs.

**The control plane** (:mod:`..control`) rides on the same thread: control messages go out as
commands (:meth:`Bridge.control_publish`) and come back as ``E_CTL`` events, a read of the broker
itself (:meth:`Bridge.query`, the history of a channel) as ``E_ANSWER``; both, and ``E_STATE``, are
handed to ``on_control``, which the control plane sets with ``control_id`` before the thread starts.

**Who writes what.**  Commands and events cross only through the two deques (``append``
and ``popleft`` are atomic) and the eventfd with its ``_wake_pending`` flag.  Besides those
the thread writes only the ``bus_*`` counters, ``dropped_broker_malformed`` and the
bridge's ``loop``, ``error``, ``reconnects`` and ``stopped``, which the reactor only reads
(``detail``, for ``/health``).  Should the thread stop (a bug), the bridge answers
publishes itself (``unavailable``) and the node goes on serving local traffic.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ... import boundary
from ...config import DEFAULTS
from ...core.reactor import EPOLLIN, Reactor
from ...metrics import F
from ...namespaces import ChannelOptions, Namespaces
from .backend import Backend
from .base import E_ACK, E_ANSWER, E_CTL, E_STATE, log, redact
from .schemes import backend_for

_UP = F["bus_up"]


class Bridge:
    """The worker's side of the bus: commands out, events in.  See the module docstring.

    ``on_event(event)`` runs on the reactor with ``(E_MSG, channel, seq, data, t0)``,
    ``(E_GAP, channel, last, first, reason)``, ``(E_REPLAY, req, reason, first, entries)``,
    ``(E_STATE, up)``, ``(E_ACK, req, seq, error)`` or ``(E_SIGNAL, name, data)`` (a presence record,
    unchecked: the worker checks it); ``on_control(event)`` with ``(E_CTL, body)``, ``(E_ANSWER, req, error,
    result)`` and ``(E_STATE, up)`` too.

    ``namespaces`` gives each channel its replay limits (``--channel-options``), which the broker applies
    to the channel's stream (:mod:`nats`, :mod:`redis`); without it every channel gets the defaults of
    ``--replay-seconds``, ``--replay-max-messages`` and ``--replay-max-bytes``.  The other keyword
    arguments are the ``--bus-*`` bounds of the same names (``config.OPTIONS``); the thread reads them
    from here.
    """

    def __init__(self, url: str, reactor: Reactor, counters: list[int], on_event: Callable[[tuple], None], *,
                 namespaces: Namespaces | None = None,
                 outbox_messages: int = DEFAULTS.bus_outbox_messages, publish_batch: int = DEFAULTS.bus_publish_batch,
                 fetch_batch: int = DEFAULTS.bus_fetch_batch, events_per_wake: int = DEFAULTS.bus_events_per_wake,
                 backoff_min: float = DEFAULTS.bus_backoff_min, backoff_max: float = DEFAULTS.bus_backoff_max,
                 connect_timeout: float = DEFAULTS.bus_connect_timeout, heartbeat: float = DEFAULTS.bus_heartbeat,
                 live_pending_messages: int = DEFAULTS.bus_live_pending_messages,
                 live_pending_bytes: int = DEFAULTS.bus_live_pending_bytes,
                 max_json_depth: int = DEFAULTS.bus_max_json_depth,
                 control_max_bytes: int = DEFAULTS.control_max_bytes, replicas: int = DEFAULTS.bus_replicas,
                 shards: int = DEFAULTS.bus_shards) -> None:
        self.url = url
        self.name = redact(url)
        self.reactor = reactor
        self.c = counters  # the thread writes only the bus_* fields and dropped_broker_malformed
        self.on_event = on_event
        if namespaces is None:
            namespaces = Namespaces("", ChannelOptions("", DEFAULTS.replay_seconds, DEFAULTS.replay_max_messages,
                                                       DEFAULTS.replay_max_bytes, 0.0))
        self.namespaces = namespaces  # read-only: the thread looks channels up in it too
        self.outbox_messages = outbox_messages
        self.publish_batch = publish_batch
        self.fetch_batch = fetch_batch
        self.events_per_wake = events_per_wake
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.live_pending_messages = live_pending_messages
        self.live_pending_bytes = live_pending_bytes
        self.max_json_depth = max_json_depth
        self.control_max_bytes = control_max_bytes
        self.replicas = replicas
        self.shards = shards  # NATS: 0 a stream per channel, else that many shard streams (nats_shards)
        self.control_id: str | None = None  # set by the control plane before start: subscribe its subjects
        self.on_control: Callable[[tuple], None] | None = None
        self.backend: Backend = backend_for(self)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events: deque[tuple] = deque()
        self._wake_pending = False
        self._cmds: deque[tuple] = deque()
        self._kick_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.up = False
        self.reconnects = 0
        self.error = ""
        self.stopped = False  # the thread is gone: publishes are answered here
        self.closing = False

    # -- reactor side ----------------------------------------------------------------------
    def start(self) -> None:
        self.reactor.add_handler(self.efd, EPOLLIN, self._on_wake)
        self.thread = threading.Thread(target=self._thread_main, name="millionws-bus", daemon=True)
        self.thread.start()

    def interest(self, channel: str, on: bool) -> None:
        self._command(("interest", channel, on))

    def publish(self, channel: str, data: bytes, t0: float, req: int) -> None:
        """Publish; answered once with ``(E_ACK, req, seq, error)``.  ``req`` >= 1, unique per worker."""
        if self.stopped:
            self.emit((E_ACK, req, 0, "unavailable: broker thread stopped"))
            return
        self._command(("publish", channel, data, time.time() - (time.monotonic() - t0), req))

    def replay(self, req: int, channel: str, since: int) -> None:
        self._command(("replay", channel, req, since))

    def control_publish(self, to: str | None, body: bytes) -> None:
        """A control message to every worker on the bus (``to`` None) or to one; at most once, never answered."""
        if not self.stopped:
            self._command(("control", to, body))

    def query(self, req: int, what: str, args: tuple) -> None:
        """A read of the broker (:meth:`backend.Backend.query`); answered once with ``(E_ANSWER, req, error,
        result)``."""
        if self.stopped:
            self.emit((E_ANSWER, req, "unavailable: broker thread stopped", None))
            return
        self._command(("query", req, what, args))

    def signal_subscribe(self, name: str, on: bool, first: bytes = b"") -> None:
        """Follow (or stop following) the signal subject ``name``; ``first`` is published once followed."""
        self._command(("signal_sub", name, on, first))

    def signal_publish(self, name: str, data: bytes) -> None:
        """Publish ``data`` on the signal subject ``name``, at most once (dropped while the broker is away)."""
        self._command(("signal_pub", name, data))

    def detail(self) -> dict[str, Any]:
        """For /health."""
        scheme = self.url.split("://", 1)[0]
        return {"kind": scheme, "up": self.up, "reconnects": self.reconnects, "outbox": len(self.backend.outbox),
                **({"error": self.error} if self.error and not self.up else {})}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the broker connection (tests; a worker that exits)."""
        self.closing = True
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.backend.stop)
            except RuntimeError:  # the loop is already closed
                pass
        if self.thread is not None:
            self.thread.join(timeout)
        self.reactor.remove_handler(self.efd)
        if self.thread is None or not self.thread.is_alive():  # else it may still write the eventfd
            os.close(self.efd)

    def _command(self, cmd: tuple) -> None:
        self._cmds.append(cmd)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self.reactor.call_later(0, self._kick)  # one thread wake-up per loop turn

    def _kick(self) -> None:
        self._kick_scheduled = False
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.backend.commands_ready)
            except RuntimeError:  # the loop is closed: the worker is exiting
                pass

    def _on_wake(self, _events: int) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        self._wake_pending = False
        events = self._events
        on_event = self.on_event
        for _ in range(self.events_per_wake):
            if not events:
                return
            event = events.popleft()
            kind = event[0]
            try:
                if kind < E_CTL:
                    if kind == E_STATE:
                        self.up = event[1]
                    on_event(event)
                    if kind == E_STATE and self.on_control is not None:
                        self.on_control(event)
                elif self.on_control is not None:
                    self.on_control(event)
            except Exception as exc:  # one bad event must not cost the ones queued behind it
                boundary.report(self.c, "broker", exc, "bus event")
        if events:  # the clients get a turn too; come back for the rest
            self._wake_pending = True
            os.eventfd_write(self.efd, 1)

    # -- thread side -----------------------------------------------------------------------
    def emit(self, event: tuple) -> None:
        self._events.append(event)
        if not self._wake_pending:
            self._wake_pending = True
            os.eventfd_write(self.efd, 1)

    def take_commands(self) -> list[tuple]:
        cmds = []
        pop = self._cmds.popleft
        while self._cmds:
            cmds.append(pop())
        return cmds

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.backend.main())
        except asyncio.CancelledError:  # close()
            pass
        except Exception:  # never expected; the node keeps serving local traffic
            log.exception("bus %s: thread stopped", self.name)
        finally:
            self.c[_UP] = 0
            self.stopped = True
            for cmd in self.take_commands():  # nobody will send these
                if cmd[0] == "publish":
                    self.emit((E_ACK, cmd[4], 0, "unavailable: broker thread stopped"))
                elif cmd[0] == "query":
                    self.emit((E_ANSWER, cmd[1], "unavailable: broker thread stopped", None))
            # Sent ones may be stored: no answer is honest (the worker's publish timeout tells the client).
            self.backend._refuse_unsent("unavailable: broker thread stopped")
            if self.up:
                self.emit((E_STATE, False))
