"""The bridge thread's main loop, broker-independent: connect, reconnect, run the worker's
commands.  A broker subclasses :class:`Backend` (:mod:`nats`, :mod:`redis`) and implements
the abstract methods of :class:`base.BackendBase`.

Theory of operation.

**One asyncio loop per worker thread.**  :meth:`Backend.main` is the whole life of the
thread (``asyncio.run`` in :class:`bridge.Bridge`): a publisher task that drains the outbox
(:mod:`outbox`) and the connection loop below.  The reactor's commands (interest, publish,
replay) arrive in one batch per reactor turn through :meth:`Backend.commands_ready`; each
runs on its own, so one that raises is logged and the rest of the batch still runs.

**Outage.**  The thread reconnects with exponential backoff and full jitter
(``--bus-backoff-min``, 0.1 s, doubling to ``--bus-backoff-max``, 5 s; back to the minimum
only after a connection that stayed up ``STABLE`` seconds, so a broker that accepts and
drops at once is not hammered), resubscribes every channel of interest and catches up
from each cursor (:mod:`delivery`).  Work blocked on the dead connection (a catch-up, the
batch in flight) is cancelled rather than left to time out; the next connect resyncs.
Meanwhile the node serves everything local (WebSockets, subscriptions, HTTP, /health 200
with ``bus.up: false``) and answers publishes as :mod:`outbox` says.
``millionws_bus_up`` and ``millionws_bus_reconnects_total`` show it.

**The control plane.**  With a ``control_id`` (:mod:`..control`) every connect also subscribes the
control subjects (:meth:`BackendBase.subscribe_control`); control messages go out as the reactor
hands them (``control`` commands: at most once, dropped while disconnected) and come in as ``E_CTL``
events, larger than ``--control-max-bytes`` dropped here and counted as malformed.  A ``query``
command is a read of the broker for the reactor (:meth:`Backend.query`: the history of a channel),
answered once with ``E_ANSWER``.

**Signals (presence).**  The worker follows signal subjects (``signal_sub``: a channel's presence
subject while it has members of it, its inbox, the heartbeat) and publishes on them (``signal_pub``:
gathered per batch of commands into one ``publish_signals``).  They are at most once: while the broker is
away a publish is dropped, and after a reconnect every followed subject is subscribed again *before* the
worker hears ``E_STATE`` up, so the resync it then sends (:meth:`presence.Presence.resync`) finds them.

**Loud.**  The connect checks what :func:`schemes.preflight` checks (a JetStream-less NATS
counts as a failed connect, so ``bus.up`` stays false with the reason in ``/health``).  From
the first failed connect and on every lost connection the thread logs a WARNING with the
reason (rate-limited: :class:`base.Limiter`), and one line when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...metrics import F
from .base import (
    E_ACK,
    E_ANSWER,
    E_CTL,
    E_REPLAY,
    E_STATE,
    GAP_NONE,
    STABLE,
    Channel,
    Pending,
    describe,
    log,
    quietly,
)
from .delivery import Delivery
from .outbox import Outbox

_UP, _RECONNECTS = F["bus_up"], F["bus_reconnects"]
_DROPPED, _OUTBOX = F["bus_dropped"], F["bus_outbox"]


class Backend(Delivery, Outbox):
    """The broker-independent part of the thread, whole: delivery and the outbox (the mixins), and here
    the loop and the commands.  A broker subclasses it and implements :class:`base.BackendBase`'s
    abstract methods."""

    # -- the loop ----------------------------------------------------------------------------
    async def main(self) -> None:
        self._main = asyncio.current_task()
        self._outbox_ready = asyncio.Event()
        self.bridge.loop = asyncio.get_running_loop()
        if self.bridge.closing:
            return
        self.commands_ready()
        publisher = asyncio.get_running_loop().create_task(self._publisher())
        try:
            await self._connection_loop()
        finally:
            publisher.cancel()
            self._drop_connection_tasks()
            self.connected = False
            await quietly(self.close())

    def stop(self) -> None:
        if self._main is not None:
            self._main.cancel()

    async def _connection_loop(self) -> None:
        bridge = self.bridge
        delays = self._backoff()
        down_since = time.monotonic()
        ever_up = False
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self._connect(), self.bridge.connect_timeout * 4)
            except TimeoutError:
                failures += 1
                self._down(f"no answer within {self.bridge.connect_timeout * 4:g} s", "cannot connect")
                await asyncio.sleep(next(delays))
                continue
            except Exception as exc:
                failures += 1
                self._down(describe(exc), "cannot connect")
                await asyncio.sleep(next(delays))
                continue
            connected_at = time.monotonic()
            self.connected = True
            self.c[_UP] = 1
            more = f" ({failures} failed attempts)" if failures else ""
            if ever_up:
                self.c[_RECONNECTS] += 1
                bridge.reconnects += 1
                self.log("recovered", "", logging.WARNING, "bus %s: reconnected after %.1f s%s", self.name,
                         connected_at - down_since, more)
            elif failures:
                log.warning("bus %s: connected after %.1f s%s", self.name, connected_at - down_since, more)
            else:
                log.info("bus %s: connected", self.name)
            ever_up = True
            failures = 0
            await self._resubscribe_signals()
            bridge.emit((E_STATE, True))
            for channel, state in self.channels.items():
                state.live = None
                state.catchup = state.cursor is not None
                self._spawn(self.sync(channel))
            assert self._outbox_ready is not None
            self._outbox_ready.set()  # sent-but-unanswered messages go out again first
            try:
                reason = await self.wait_closed()
            except Exception as exc:
                reason = describe(exc)
            down_since = time.monotonic()
            self.connected = False
            self.c[_UP] = 0
            self._drop_connection_tasks()
            self._refuse_unsent("unavailable: broker connection lost")
            bridge.emit((E_STATE, False))
            self._down(reason or "connection closed", "connection lost")
            await quietly(self.close())
            if down_since - connected_at >= STABLE:  # a connection that drops at once must not spin
                delays = self._backoff()
            await asyncio.sleep(next(delays))

    async def _connect(self) -> None:
        await self.connect()
        if self.bridge.control_id is not None:
            await self.subscribe_control(self.bridge.control_id)

    def _down(self, reason: str, what: str) -> None:
        # Logged first: whoever sees the error (the worker, /health, a test in another thread) finds the line.
        self.log("connection", reason, logging.WARNING, "bus %s: %s: %s (publishes are refused until connected)",
                 self.name, what, reason)
        self.bridge.error = reason

    def _drop_connection_tasks(self) -> None:
        """Work blocked on a dead connection would never end: cancel it; the next connect resyncs."""
        if self._sending is not None:
            self._sending.cancel()
        for task in list(self._tasks):
            task.cancel()

    # -- the worker's commands -----------------------------------------------------------------
    def commands_ready(self) -> None:
        added = False
        signals: list[tuple[str, bytes]] = []
        for cmd in self.bridge.take_commands():
            if cmd[0] == "signal_pub":
                signals.append((cmd[1], cmd[2]))
                continue
            try:
                added = self._command(cmd) or added
            except Exception as exc:  # one bad command must not lose the others
                self._bug("command " + str(cmd[0]), exc)
        if signals and self.connected:  # else dropped: at most once, and the worker resyncs after a reconnect
            self._spawn(self.publish_signals(signals))
        if added:
            self.c[_OUTBOX] = len(self.outbox)
            if self._outbox_ready is not None:
                self._outbox_ready.set()

    def _command(self, cmd: tuple) -> bool:
        kind = cmd[0]
        emit = self.bridge.emit
        if kind == "publish":
            _, channel, data, t_wall, req = cmd
            if not self.connected:
                emit((E_ACK, req, 0, "unavailable: broker not connected"))
            elif len(self.outbox) >= self.bridge.outbox_messages:
                self.c[_DROPPED] += 1
                emit((E_ACK, req, 0, "unavailable: outbox full"))
            else:
                self.counter += 1
                self.outbox.append(Pending(channel, data, t_wall, self.counter, req))
                return True
        elif kind == "interest":
            _, channel, on = cmd
            if on:
                if channel not in self.channels:
                    self.channels[channel] = Channel()
                    self._spawn(self.sync(channel))
            else:
                state = self.channels.pop(channel, None)
                if state is not None:
                    for req, _since in state.replays:  # nobody waits for them any more
                        emit((E_REPLAY, req, GAP_NONE, 0, []))
                    if state.live is not None and self.connected:
                        self._spawn(self._unsubscribe(channel, state.live))
        elif kind == "control":
            _, to, body = cmd
            if self.connected:  # else dropped: control messages are at most once, their askers have deadlines
                self._spawn(self._send_control(to, body))
        elif kind == "query":
            _, req, what, args = cmd
            if not self.connected:
                emit((E_ANSWER, req, "unavailable: broker not connected", None))
            else:
                self._spawn(self.query(req, what, args))
        elif kind == "replay":
            _, channel, req, since = cmd
            state = self.channels.get(channel)
            if state is None:
                emit((E_REPLAY, req, GAP_NONE, 0, []))
            else:
                state.replays.append((req, since))
                self._spawn(self.sync(channel))
        elif kind == "signal_sub":
            self._signal_command(*cmd[1:])
        return False

    # -- the control plane ---------------------------------------------------------------------
    def on_control_message(self, data: object) -> None:
        """A message of a control subject, for the reactor (checked there, field by field)."""
        if type(data) is not bytes or len(data) > self.bridge.control_max_bytes:
            self._malformed(1, "a control message that is not bytes or is over --control-max-bytes")
            return
        self.bridge.emit((E_CTL, data))

    async def _send_control(self, to: str | None, body: bytes) -> None:
        try:
            await self.publish_control(to, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. over NATS's max_payload: lost, like any at-most-once message; said once
            self.log("control", describe(exc), logging.WARNING, "bus %s: a control message of %d bytes was not "
                     "sent: %s (the question it belongs to ends partial)", self.name, len(body), describe(exc))

    async def query(self, req: int, what: str, args: tuple) -> None:
        """Answer the reactor's read ``what`` once: ``(E_ANSWER, req, "", result)`` or ``(E_ANSWER, req, error,
        None)``.  ``"history"``: :meth:`history`."""
        emit = self.bridge.emit
        try:
            if what != "history":
                raise ValueError(f"no query {what!r}")
            result = await self.history(*args)
        except asyncio.CancelledError:
            emit((E_ANSWER, req, "unavailable: broker connection lost", None))
            raise
        except Exception as exc:
            emit((E_ANSWER, req, "unavailable: " + describe(exc), None))
            return
        emit((E_ANSWER, req, "", result))

    async def history(self, channel: str, since: int, limit: int) -> tuple:
        """What the broker holds of ``channel`` after ``since``, at most ``limit`` messages:
        ``(last, epoch, first, reset, [(seq, data), ...])`` (docs/api.md).  ``since`` beyond ``last`` is a
        sequence from before a restart: answered from the oldest message held, ``reset`` True."""
        last, first, epoch = await self.history_head(channel)
        reset = since > last
        if reset:
            since = 0
        lo = max(since + 1, first)
        hi = min(last, lo + limit - 1)
        entries = await self.fetch(channel, lo, hi) if lo <= hi else []
        kept = [(seq, data) for seq, _t, data in entries if data is not None]
        if len(kept) < len(entries):
            self._malformed(len(entries) - len(kept), f"stored record(s) of {channel!r} left out of a history")
        return last, epoch, first, reset, kept

    # -- signal subjects (presence) ----------------------------------------------------------------
    def _signal_command(self, name: str, on: bool, first: bytes) -> None:
        signals = self.signals
        if not on:
            sub = signals.pop(name, None)
            if sub is not None and self.connected:
                self._spawn(self.unsubscribe_signal(name, sub))
        elif name not in signals:
            signals[name] = None
            if self.connected:
                self._spawn(self._follow(name, first))
        elif first and self.connected:
            self._spawn(self.publish_signals([(name, first)]))

    async def _follow(self, name: str, first: bytes) -> None:
        sub = await self.subscribe_signal(name)
        if name not in self.signals or self.signals[name] is not None:  # dropped, or another made it meanwhile
            await self.unsubscribe_signal(name, sub)
            return
        self.signals[name] = sub
        if first:
            await self.publish_signals([(name, first)])

    async def _resubscribe_signals(self) -> None:
        for name in list(self.signals):
            self.signals[name] = None
            try:
                self.signals[name] = await self.subscribe_signal(name)
            except Exception as exc:  # left None: tried again at the next connect
                self.log("signal", describe(exc), logging.WARNING, "bus %s: cannot follow %r: %s", self.name, name,
                         describe(exc))
