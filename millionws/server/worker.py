"""One worker process: a listening socket, a reactor, and the life of every connection.

Theory of operation:

* New connections come from the :mod:`acceptor` (listening sockets, admission, EMFILE);
  the worker shares nothing with its siblings but the metrics region.
* Bytes move through the worker's :mod:`transport` (plain: ``os.readv``/``os.write``
  themselves).  Reads go into the worker's one receive buffer, and the filled bytes go
  to the protocol of the connection's state: h11 for HTTP, :mod:`websocket` after the
  upgrade.  What the protocol returns goes to the :mod:`output` (written at once, only
  the refused rest kept; backpressure; fan-out and slow consumers).
* Every deadline of a connection (handshake, ping, pong, closing handshake) is the one
  ``deadline`` slot of its record in the reactor's timer wheel; :meth:`on_timer` decides
  what the deadline meant from the connection's state (an open WebSocket's: :mod:`keepalive`).
* State changes only through ``connection.advance`` (the one transition table); what
  the WebSocket layer reports is applied by ``connection.apply`` in :meth:`ws_in`.
* Closing (linger, FIN, the one way to CLOSED) is :mod:`closing`; pings, token expiry and the
  1001 of a drain are :mod:`keepalive`; per-connection message limits are :mod:`limits`.
* Drain (SIGTERM/SIGINT): keep accepting so probes see 503 ``draining``, refuse upgrades,
  send 1001 to every WebSocket, exit once none is left or the grace period is over.
  A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import h11

from .. import boundary
from ..apps.app import App, Response
from ..config import Config
from ..core.buffers import BufferPool, ReceiveBuffer
from ..core.reactor import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Reactor, monotonic
from ..core.transport import PLAIN, Transport
from ..metrics import HANDSHAKE0, F, SharedStats, WorkerStats
from ..protocol import http, websocket
from ..protocol.lifecycle import (
    CLOSED,
    CLOSING,
    GOODBYE,
    HTTP,
    LAST_ANSWER,
    LINGER,
    NO_EVENT,
    OPEN,
    R_ERROR,
    R_SHUTDOWN,
    UPGRADED,
    advance,
)
from ..protocol.websocket import FramePool
from ..pubsub.mesh import LocalBus, Mesh
from .acceptor import Acceptor
from .admission import Admission
from .closing import Closer
from .connection import (
    F_ADMIN,
    F_PAUSED,
    F_WAITING,
    Connection,
    apply,
)
from .expiry import Expiries
from .keepalive import Keepalive
from .limits import MessageLimits
from .output import Output

log = logging.getLogger("millionws.server.worker")

_CONNECTIONS, _BYTES_IN = F["connections"], F["bytes_in"]



class Worker:
    """See the module docstring.  ``run()`` returns the process exit status."""

    def __init__(self, config: Config, index: int, shared: SharedStats, mesh: Mesh | None = None) -> None:
        self.config = config
        self.index = index
        self.stats = WorkerStats(shared, index)
        self.c = self.stats.c
        self.reactor = Reactor(self.on_event, self.on_timer, config.timer_resolution)
        self.reactor.on_error = self.on_error
        # Every byte of a client connection goes through the transport (core/transport.py): reads here,
        # writes in the output, FIN and close in the closing part.
        self.transport: Transport = PLAIN
        self._readv = PLAIN.readv  # bound once, not per read
        self.reactor.observe_turn = self.stats.observe_turn
        self.rbuf = ReceiveBuffer(config.receive_buffer)
        self.pool = BufferPool(config.buffer_pool_size)
        self.frames = FramePool(config.frame_pool_size)
        self.bus = LocalBus(index, mesh.take(index) if mesh is not None else {}, self.reactor, self.c,
                            max_datagram=config.mesh_max_datagram, max_outbox=config.mesh_max_outbox,
                            datagrams_per_wake=config.mesh_datagrams_per_wake)
        self._pipeline_budget = config.pipeline_budget  # pipelined HTTP requests per connection per loop turn
        self.draining = False
        self._signal_r = -1
        # Abuse limits (SECURITY.md); each is None when off, so an unused limit costs nothing.
        cfg = config
        self.admission = Admission(self.c, cfg.max_connect_rate_per_ip, cfg.max_connections_per_ip)
        self.expiries = Expiries()
        self.closer = closer = Closer(self.reactor, self.transport, self.pool, self.frames, self.admission,
                                      self.expiries, self.c, cfg.close_timeout)
        self.output = output = Output(self.transport, self.reactor, self.pool, self.c, cfg.max_pending_bytes, closer)
        # The application's view (apps.app.WorkerView): the output's bound methods, assigned before the
        # application is made because it hands write and fanout on at construction.
        self.write = output.write
        self.fanout = output.fanout
        self.keepalive = Keepalive(self.reactor, closer, output.write, self.expiries, self.c, cfg.ping_interval,
                                   cfg.ping_timeout)
        self.limits = (MessageLimits(cfg.rate_limit_messages, cfg.rate_limit_bytes, cfg.max_message_size, self.c,
                                     closer) if cfg.rate_limit_messages or cfg.rate_limit_bytes else None)
        self._limited = self.limits.on_message if self.limits is not None else None
        self.app = App(self, cfg.max_connections)
        self.acceptor = Acceptor(self.reactor, self.c, self.admission, cfg.accept_batch, cfg.handshake_timeout,
                                 cfg.max_request_head)

    # -- the application's view --------------------------------------------------------
    def websocket_count(self) -> int:
        return self.c[_CONNECTIONS]

    # -- setup -------------------------------------------------------------------------
    def install_signals(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signal_r = r
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the news
        self.reactor.add_handler(r, EPOLLIN, self.on_signal)

    def run(self) -> int:
        cfg = self.config
        self.acceptor.listen(cfg.host, cfg.port, cfg.backlog, cfg.admin_port)
        self.install_signals()
        self._flush_periodically()
        self.acceptor.sweep(cfg.sweep_interval)
        self.keepalive.check_expiries()
        self.app.start()
        log.info("worker %d (pid %d) listening on %s:%d", self.index, os.getpid(), self.config.host,
                 self.config.port)
        try:
            self.reactor.run()
        finally:
            self.close_all()
        return 0

    # Periodic timers schedule their next turn first: one that raises is skipped once, not forever.
    def _flush_periodically(self) -> None:
        self.reactor.call_later(self.config.stats_interval, self._flush_periodically)
        self.stats.flush()

    # -- readiness ---------------------------------------------------------------------
    def on_event(self, conn: Connection, events: int) -> None:
        if events & EPOLLOUT and conn.pending is not None and self.output.flush(conn):
            self._http_resume(conn)  # the backlog halved: requests read before the pause
        if events & (EPOLLIN | EPOLLERR | EPOLLHUP) and conn.state != CLOSED and not conn.flags & F_PAUSED:
            if conn.flags & F_WAITING:  # not reading while an answer is deferred: only a hang-up gets here
                self.closer.abort(conn, R_ERROR)
                return
            self.on_readable(conn)

    def on_error(self, where: str, conn: Connection | None, exc: Exception) -> None:
        """The reactor's exception boundary: end the unit of work that raised, keep the worker.

        A connection gets HTTP 500 (before the upgrade) or Close 1011 (after), written as
        raw bytes because the protocol state that raised may not be trusted to write them.
        """
        if conn is None:
            boundary.report(self.c, where, exc)
            return
        boundary.report(self.c, "http" if conn.state == HTTP else where, exc, repr(conn))
        try:
            if conn.state == HTTP and not conn.flags & F_WAITING:
                self.refuse(conn, http.HttpError(500, "internal error", http.HS_INTERNAL))
            elif conn.state == OPEN:
                conn.reason = R_ERROR
                conn.ws = None
                advance(conn, GOODBYE)
                self.output.write(conn, websocket.INTERNAL_ERROR_CLOSE)
                self.closer.state_changed(conn)
            else:
                self.closer.abort(conn, R_ERROR)
        except Exception:  # the record itself is broken: drop the descriptor without ceremony
            log.exception("worker %d: could not close %r after an internal error", self.index, conn)
            self.reactor.conns.pop(conn.fd, None)
            conn.state = CLOSED
            try:
                self.transport.close(conn.fd)
            except OSError:
                pass

    def on_readable(self, conn: Connection) -> None:
        try:
            n = self._readv(conn.fd, self.rbuf.iov)
        except BlockingIOError:
            return
        except OSError:
            self.closer.abort(conn, R_ERROR)
            return
        if n == 0:
            self.on_eof(conn)
            return
        self.c[_BYTES_IN] += n
        data = bytes(self.rbuf.view[:n])
        state = conn.state
        if state == OPEN or state == CLOSING:
            self.ws_in(conn, data)
        elif state == HTTP:
            self.http_in(conn, data)
        # LINGER: input after our goodbye is read and dropped.

    def ws_in(self, conn: Connection, data: bytes) -> None:
        state = conn.state
        limited = self._limited
        handler = conn.app.on_message if limited is None else limited
        out, event = websocket.receive(conn, data, handler, self.config.max_message_size, self.frames)
        if out:
            self.output.write(conn, out)
        if event != NO_EVENT:
            apply(conn, event)
        if conn.state != state:
            self.closer.state_changed(conn)

    def on_eof(self, conn: Connection) -> None:
        if conn.state == OPEN or conn.state == CLOSING:
            self.closer.abort(conn, R_ERROR)  # TCP closed without a closing handshake (1006)
        else:
            self.closer.close(conn)

    # -- HTTP --------------------------------------------------------------------------
    def http_in(self, conn: Connection, data: bytes | None) -> None:
        """Parse and answer requests; ``data`` None resumes what the parser already holds."""
        parser = conn.http
        if data is not None:
            parser.receive_data(data)
        budget = self._pipeline_budget
        while conn.state == HTTP:
            if conn.flags & (F_PAUSED | F_WAITING):
                return  # answers are piling up unread, or one is deferred: resumed when that ends
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = http.HS_TOO_LARGE if status == 431 else http.HS_BAD_REQUEST
                self.refuse(conn, http.HttpError(status, str(exc) or "malformed request", reason))
                return
            kind = type(event)
            if kind is h11.Request:
                # h11 bounds a head that is still incomplete; one that arrived whole is measured here.
                if http.head_size(event) > self.config.max_request_head:
                    self.refuse(conn, http.HttpError(431, "request head too large", http.HS_TOO_LARGE))
                    return
                try:  # before the body: h11 would otherwise wait for a chunked body the client never meant
                    http.check_framing(event)
                except http.HttpError as error:
                    self.refuse(conn, error, event.method == b"HEAD")
                    return
                conn.msg = [event]
                conn.msg_size = 0
            elif kind is h11.Data:
                conn.msg.append(event.data)
                conn.msg_size += len(event.data)
                if conn.msg_size > self.config.max_request_body:
                    self.refuse(conn, http.HttpError(413, "request body too large"))
                    return
            elif kind is h11.EndOfMessage:
                self.dispatch(conn)
                parser = conn.http
                budget -= 1
                if budget == 0 and conn.state == HTTP:
                    # A deep pipeline: give the other connections this turn, continue in the next.
                    self.reactor.call_later(0, lambda: self._http_resume(conn))
                    return
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            elif kind is h11.ConnectionClosed:
                self.closer.close(conn)
                return

    def _http_resume(self, conn: Connection) -> None:
        if conn.state == HTTP and conn.http is not None and not conn.flags & F_WAITING:
            self.http_in(conn, None)

    def refuse(self, conn: Connection, error: http.HttpError, head: bool = False) -> None:
        """Answer an error (no body to a HEAD request) and end the connection."""
        self.c[HANDSHAKE0 + error.reason] += 1
        self.stats.http_status(error.status)
        conn.msg = None
        conn.http = None
        advance(conn, LAST_ANSWER)
        self.output.write(conn, http.render_error(error, head=head))
        self.closer.state_changed(conn)

    def dispatch(self, conn: Connection) -> None:
        request, *body = conn.msg
        conn.msg = None
        try:
            response = self.app.handle(request, b"".join(body), bool(conn.flags & F_ADMIN), conn)
        except http.HttpError as error:
            self.refuse(conn, error, request.method == b"HEAD")
            return
        if response is None:
            # Deferred (a publish waiting for its seq): stop reading; answer() resumes.  The app
            # answers within --publish-timeout; the deadline a second later is the backstop, so a
            # bug on the way back can never leave the client waiting on a descriptor forever.
            conn.flags |= F_WAITING
            self.reactor.wheel.schedule(conn, monotonic() + self.config.publish_timeout + 1.0)
            self.reactor.modify(conn.fd, EPOLLOUT if conn.pending is not None else 0)
            return
        self._respond(conn, response)

    def answer(self, conn: Connection, response: Response | http.HttpError) -> None:
        """The deferred answer of ``conn``'s request; ignored if the connection ended meanwhile."""
        if conn.state != HTTP or not conn.flags & F_WAITING:
            return
        conn.flags &= ~F_WAITING
        self.reactor.modify(conn.fd, EPOLLIN | EPOLLOUT if conn.pending is not None else EPOLLIN)
        if isinstance(response, http.HttpError):
            self.refuse(conn, response)
            return
        self._respond(conn, response)
        if conn.state == HTTP:
            self._http_resume(conn)  # requests pipelined behind it

    def _respond(self, conn: Connection, response: Response) -> None:
        self.stats.http_status(response.status)
        trailing = conn.http.trailing_data[0]
        if response.websocket is not None:
            self.upgraded(conn, response.data, response.websocket, trailing)
            expires = response.identity.expires if response.identity is not None else None
            if expires is not None and conn.state == OPEN:
                self.expiries.add(conn, expires)
            return
        self.output.write(conn, response.data)
        if not response.keep_alive:
            conn.http = None
            advance(conn, LAST_ANSWER)
            self.closer.state_changed(conn)
            return
        conn.http = parser = http.new_parser(self.config.max_request_head)
        if trailing:
            parser.receive_data(trailing)
        self.reactor.wheel.schedule(conn, monotonic() + self.config.handshake_timeout)

    def upgraded(self, conn: Connection, response: bytes, ws_app: Any, trailing: bytes) -> None:
        conn.http = None
        advance(conn, UPGRADED)
        conn.app = ws_app
        self.c[_CONNECTIONS] += 1
        if self.config.ping_interval > 0:
            self.reactor.wheel.schedule(conn, monotonic() + self.config.ping_interval)
        else:
            self.reactor.wheel.cancel(conn)
        self.output.write(conn, response)
        on_open = getattr(ws_app, "on_open", None)
        if on_open is not None and conn.state == OPEN:
            on_open(conn)
        if trailing and conn.state == OPEN:
            self.ws_in(conn, trailing)

    # -- deadlines ---------------------------------------------------------------------
    def on_timer(self, conn: Connection) -> None:
        state = conn.state
        if state == OPEN:
            self.keepalive.on_timer(conn)
        elif state == HTTP:
            if conn.flags & F_WAITING:  # the deferred answer never came (see dispatch)
                conn.flags &= ~F_WAITING
                self.refuse(conn, http.HttpError(503, "the publish was not confirmed in time", http.HS_UNAVAILABLE,
                                                 (("Retry-After", "1"),), "publish_timeout"))
                return
            parser = conn.http
            if parser.their_state is h11.IDLE and not parser.trailing_data[0]:
                self.closer.close(conn)  # an idle keep-alive connection: nothing to report
            else:
                self.refuse(conn, http.HttpError(408, "request not completed in time", http.HS_TIMEOUT))
        elif state == CLOSING or state == LINGER:
            self.closer.close(conn)  # the reason was set when the closing began

    # -- signals and drain ---------------------------------------------------------------
    def on_signal(self, _events: int) -> None:
        try:
            signals = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.draining:
                    log.warning("worker %d: second signal, exiting now", self.index)
                    self.finish()
                else:
                    self.start_drain()

    def start_drain(self) -> None:
        self.draining = True
        self.c[F["draining"]] = 1
        self.stats.flush()
        log.info("worker %d draining: %d WebSockets", self.index, self.c[_CONNECTIONS])
        self.keepalive.drain(self.finish, self.config.grace)

    def finish(self) -> None:
        self.reactor.stop()

    def close_all(self) -> None:
        for conn in list(self.reactor.conns.values()):
            if conn.state in (OPEN, CLOSING):
                conn.reason = R_SHUTDOWN
            self.closer.close(conn)
        self.acceptor.close()
        self.stats.flush()


def run_worker(config: Config, index: int, shared: SharedStats, mesh: Mesh | None = None) -> int:
    """Entry point in the forked child."""
    started = time.monotonic()
    worker = Worker(config, index, shared, mesh)
    try:
        return worker.run()
    except Exception:
        log.exception("worker %d crashed after %.1f s", index, time.monotonic() - started)
        return 1
