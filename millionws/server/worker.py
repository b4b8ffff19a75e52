"""One worker process: builds its parts, hands each ready connection to them, and owns the signals.

Theory of operation:

* The parts and the order they are built in (each one gets only what is built before it, as
  callables or the few objects it uses, never the worker): the reactor; the closing part (how a
  connection ends, :mod:`closing`); the output (every byte out, backpressure, fan-out, :mod:`output`);
  keepalive, token expiry and drain (:mod:`keepalive`); the message limits (:mod:`limits`, only when
  on); the application; the HTTP pipeline and the upgrade (:mod:`http_pipeline`); the acceptor
  (:mod:`acceptor`).  Calls therefore run one way, from the dispatch here down to output and closing;
  the two places where a lower part has news for a higher one are return values (``Output.flush`` says
  a pause ended; ``Closer.begin_close`` returns our Close frame for the caller to write), so no part
  needs a part built after it (the pipeline gets :meth:`ws_in`, the worker's own, for the frames that
  come with an upgrade request).  The one exception is the application's deferred answer: see
  :meth:`Worker.answer`.
* The dispatch stays here because the reactor needs its callbacks before any part exists, and because
  it is the hot path: one echo message is ``Reactor.run`` -> :meth:`Worker.on_event` (the transport's
  ``readv`` into the worker's one receive buffer) -> :meth:`ws_in` -> ``websocket.receive`` -> the
  application's handler -> ``Output.write``: five Python calls, and no object made per message but the
  payload and the reply.
* State changes only through ``advance`` (``protocol/lifecycle``, the one transition table); what the
  WebSocket layer reports is applied by ``connection.apply`` in :meth:`ws_in`, and a move toward the
  end arms the close timeout (``Closer.state_changed``).
* Every deadline of a connection is the one ``deadline`` slot of its record in the reactor's timer
  wheel; :meth:`on_timer` hands it to the part that armed it, by the connection's state.
* permessage-deflate (``--compression deflate``): a connection whose 101 accepted it has ``F_DEFLATE``
  (and its window) in its flags; its input goes to ``websocket.receive`` with the worker's
  ``DeflatePool`` instead of the plain one, and the data frames bound for it are compressed by the
  worker's one ``Deflater`` where they leave (:meth:`ws_in`, :meth:`send`, :meth:`fanout` and
  ``Output.fanout``).  A plain connection pays one flag test per read.
* The exception boundary (:meth:`on_error`) ends the unit of work that raised and keeps the worker.
* Drain (SIGTERM/SIGINT) is its own part (:mod:`drain`): keep accepting so probes see 503 ``draining``,
  refuse upgrades, send 1001 to every WebSocket, exit once none is left or the grace period is over.
* The application never sees the worker: it gets a ``Host`` (apps/host.py) holding :meth:`send`,
  :meth:`fanout`, :meth:`answer`, :meth:`websocket_count`, :meth:`close_websocket`, whether the worker
  drains, the token-expiry heap's ``move`` (for a ``refresh`` on ``/pubsub``), and the few objects it needs
  (config, stats, reactor, mesh).  While a connection's input is handled, what the application sends to it
  joins that read's output (``_out``, which ``websocket.receive`` fills with the replies and pongs): every
  byte to a connection leaves in the order it was produced, and the eight replies to a read of eight
  messages leave in one write.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from .. import boundary
from ..apps.host import Host, Response
from ..apps.routes import App
from ..config import Config, trusted_networks
from ..core.buffers import BufferPool, ReceiveBuffer
from ..core.reactor import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Reactor
from ..core.tls import Certificates, TlsTransport
from ..core.transport import PLAIN, Transport
from ..metrics import TLS_FAILED0, F, SharedStats, WorkerStats
from ..protocol import http, websocket
from ..protocol.deflate import DeflatePool, Deflater
from ..protocol.lifecycle import (
    CLOSED,
    CLOSING,
    GOODBYE,
    HTTP,
    LINGER,
    NO_EVENT,
    OPEN,
    R_BACKEND,
    R_ERROR,
    R_SHUTDOWN,
    advance,
)
from ..protocol.websocket import FramePool, receive
from ..pubsub.mesh import LocalBus, Mesh
from .acceptor import Acceptor
from .admission import Admission
from .closing import Closer
from .connection import F_DEFLATE, F_PAUSED, F_PROXY, F_WAITING, Connection, apply, window_bits
from .drain import Drain
from .expiry import Expiries
from .http_pipeline import HttpPipeline
from .keepalive import Keepalive
from .limits import MessageLimits
from .output import Output
from .proxied import ProxyGate
from .rotation import Rotation

log = logging.getLogger("millionws.server.worker")

_CONNECTIONS, _BYTES_IN = F["connections"], F["bytes_in"]
_INPUT = EPOLLIN | EPOLLERR | EPOLLHUP
_NOT_READING = F_PAUSED | F_WAITING  # paused by backpressure, or an HTTP answer is deferred
_COMPRESSED_IN, _COMPRESSED_OUT = F["compressed_in"], F["compressed_out"]  # each followed by its uncompressed


class Worker:
    """See the module docstring.  ``run()`` returns the process exit status."""

    def __init__(self, config: Config, index: int, shared: SharedStats, mesh: Mesh | None = None) -> None:
        cfg = config
        self.config = config
        self.index = index
        self.stats = WorkerStats(shared, index)
        self.c = c = self.stats.c
        self.reactor = reactor = Reactor(self.on_event, self.on_timer, cfg.timer_resolution)
        reactor.on_error = self.on_error
        reactor.observe_turn = self.stats.observe_turn
        # Every byte of a client connection goes through the transport (core/transport.py): reads here,
        # writes in the output, FIN and close in the closing part.  With a certificate, TLS (core/tls.py).
        self.tls: TlsTransport | None = None
        self.transport: Transport = PLAIN
        if cfg.tls_cert is not None:
            certs = Certificates(cfg.tls_cert, cfg.tls_key)
            self.transport = self.tls = TlsTransport(certs, c, F["tls_handshakes"], TLS_FAILED0)
            self.rotation = Rotation(certs, reactor, c, index, cfg.tls_reload_interval)
        self._readv = self.transport.readv  # bound once, not per read
        self.rbuf = ReceiveBuffer(cfg.receive_buffer)
        self._iov, self._view = self.rbuf.iov, self.rbuf.view
        self.pool = BufferPool(cfg.buffer_pool_size)
        self.frames = FramePool(cfg.frame_pool_size)
        self._max_message = cfg.max_message_size
        # permessage-deflate (--compression deflate): the frame pool of the connections that negotiated it
        # (its wsproto objects inflate) and the worker's compressors; plain connections pay one flag test.
        deflating = cfg.compression == "deflate"
        self.deflater = (Deflater(cfg.compression_level, cfg.compression_min_size, c, _COMPRESSED_OUT)
                         if deflating else None)
        self.deflate_frames = (DeflatePool(cfg.frame_pool_size, cfg.max_message_size, c, _COMPRESSED_IN)
                               if deflating else self.frames)
        self.bus = LocalBus(index, mesh.take(index) if mesh is not None else {}, reactor, c,
                            max_datagram=cfg.mesh_max_datagram, max_outbox=cfg.mesh_max_outbox,
                            datagrams_per_wake=cfg.mesh_datagrams_per_wake,
                            node=mesh.node if mesh is not None else None)
        # Abuse limits (SECURITY.md); each is off unless configured, so an unused limit costs nothing.
        self.admission = Admission(c, cfg.max_connect_rate_per_ip, cfg.max_connections_per_ip)
        self.expiries = Expiries()

        self.closer = closer = Closer(reactor, self.transport, self.pool, self.frames, self.admission,
                                      self.expiries, c, cfg.close_timeout, self.deflate_frames)
        self.output = output = Output(self.transport, reactor, self.pool, c, cfg.max_pending_bytes, closer,
                                      self.deflater)
        self.keepalive = Keepalive(reactor, closer, output.write, self.expiries, c, cfg.ping_interval,
                                   cfg.ping_timeout)
        self.drain = Drain(reactor, self.stats, index, cfg.grace, self.keepalive.drain)
        if self.tls is not None:
            self.drain.on_hangup = self.rotation.reload
        self.limits = (MessageLimits(cfg.rate_limit_messages, cfg.rate_limit_bytes, cfg.max_message_size, c, closer)
                       if cfg.rate_limit_messages or cfg.rate_limit_bytes else None)
        self._limited = self.limits.on_message if self.limits is not None else None
        # What the application may use of the server (apps/host.py): the bytes it sends to the connection
        # being read join that read's output (self._out), so they leave in order and in one write.
        self._out: list[bytes] = []
        self._reading: Connection | None = None
        self.app = App(Host(index, cfg, self.stats, reactor, self.bus, self.send, self.fanout, self.answer,
                            self.websocket_count, self.drain.is_draining, self.expiries.move,
                            self.close_websocket), cfg.max_connections)
        self.pipeline = HttpPipeline(cfg, self.stats, reactor, self.app.handle, output.write, closer,
                                     self.expiries, self.ws_in)
        start_tls = self.tls.start if self.tls is not None else None
        self.proxy = (ProxyGate(trusted_networks(cfg.proxy_protocol_from), cfg.max_proxy_header, self.admission,
                                closer, c, start_tls) if cfg.proxy_protocol else None)
        self.acceptor = Acceptor(reactor, c, self.admission, cfg.accept_batch, cfg.handshake_timeout,
                                 cfg.max_request_head, self.proxy, start_tls)

    # -- what the application may use (apps/host.py) -------------------------------------
    def send(self, conn: Connection, data: bytes) -> None:
        """Bytes from the application to one connection: into the read's output while that connection's
        input is being handled (after the replies and pongs before them), else to the output now."""
        if conn is self._reading:
            self._out.append(data)
        elif conn.flags & F_DEFLATE:
            self.output.write(conn, self.deflater.frames(data, window_bits(conn.flags)))
        else:
            self.output.write(conn, data)

    def fanout(self, conns: Iterable[Connection], frame: bytes) -> int:
        """One frame to many connections; what the read's output holds leaves first, so a client that
        publishes to its own channel gets its earlier replies before the message."""
        reading = self._reading
        if reading is not None:
            out = self._out  # the same list ws_in holds: emptied, not replaced
            if out:
                data = b"".join(out)
                if reading.flags & F_DEFLATE:
                    data = self.deflater.frames(data, window_bits(reading.flags))
                self.output.write(reading, data)
                out.clear()
        return self.output.fanout(conns, frame)

    def websocket_count(self) -> int:
        return self.c[_CONNECTIONS]

    def close_websocket(self, conn: Connection, code: int, reason: str) -> bool:
        """The application ends an open WebSocket (a backend's disconnect): our Close with ``code`` and
        ``reason`` behind what the peer has not read yet, then the closing handshake as for a drain.  Not the
        connection being read: what its read produced must leave first, and its frames are still being
        parsed (False)."""
        if conn.state != OPEN or conn is self._reading:
            return False
        self.keepalive.close_with(conn, code, reason, R_BACKEND, wait_for_peer=True)
        return True

    def answer(self, conn: Connection, response: Response | http.HttpError) -> None:
        """The deferred answer of an HTTP request, to the pipeline.

        A method, not the pipeline's bound method: the pipeline hands requests to the application and the
        application hands deferred answers back, so one of the two has to find the other at call time.
        This is the rare side (a publish whose sequencer is on another worker), and the one call it adds
        lets the application be given ``answer`` before the pipeline exists.
        """
        self.pipeline.answer(conn, response)

    # -- running -----------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.config
        self.acceptor.listen(cfg.host, cfg.port, cfg.backlog, cfg.admin_port)
        self.drain.install()
        self._flush_periodically()
        self.acceptor.sweep(cfg.sweep_interval)
        self.keepalive.check_expiries()
        if self.tls is not None:
            self.rotation.start()
        self.app.start()
        log.info("worker %d (pid %d) listening on %s:%d", self.index, os.getpid(), cfg.host, cfg.port)
        try:
            self.reactor.run()
        finally:
            self.close_all()
        return 0

    # Periodic timers schedule their next turn first: one that raises is skipped once, not forever.
    def _flush_periodically(self) -> None:
        self.reactor.call_later(self.config.stats_interval, self._flush_periodically)
        self.stats.flush()

    def close_all(self) -> None:
        """The loop ended: close every connection (a WebSocket still open counts as shut down)."""
        close = self.closer.close
        for conn in list(self.reactor.conns.values()):
            if conn.state in (OPEN, CLOSING):
                conn.reason = R_SHUTDOWN
            close(conn)
        self.acceptor.close()
        self.stats.flush()

    # -- readiness: the hot path ---------------------------------------------------------
    def on_event(self, conn: Connection, events: int) -> None:
        """The reactor's one callback for every ready connection."""
        if events != EPOLLIN:  # plain input, nearly every event, skips the tests for the rest
            if events & EPOLLOUT and conn.pending is not None and self.output.flush(conn):
                self.pipeline.resume(conn)  # the backlog halved: requests read before the pause
            if not events & _INPUT:
                return
        if conn.flags & _NOT_READING or conn.state == CLOSED:
            if conn.flags & _NOT_READING == F_WAITING and conn.state != CLOSED:
                # Not reading while an answer is deferred: only a hang-up gets here.
                self.closer.abort(conn, R_ERROR)
            return
        # The read, here rather than in a method of its own: one Python call less per message.
        readv = self._readv  # a plain attribute load and a builtin call: cheaper than a call through self
        try:
            n = readv(conn.fd, self._iov)
        except BlockingIOError:
            return
        except OSError:
            self.closer.abort(conn, R_ERROR)
            return
        if n == 0:
            self.on_eof(conn)
            return
        self.c[_BYTES_IN] += n
        data = self._view[:n].tobytes()  # cheaper than bytes(view[:n]): no generic constructor
        state = conn.state
        if state == OPEN or state == CLOSING:
            self.ws_in(conn, data)
        elif state == HTTP:
            if conn.flags & F_PROXY:  # the balancer's header first (proxied.py)
                data = self.proxy.take(conn, data)
                if not data:
                    return
            self.pipeline.http_in(conn, data)
        # LINGER: input after our goodbye is read and dropped.

    def ws_in(self, conn: Connection, data: bytes) -> None:
        """WebSocket bytes of ``conn``: to the protocol, its answer to the output, its event applied."""
        state = conn.state
        limited = self._limited
        # While the application handles this read, what it sends to ``conn`` joins ``out`` (send()).  One
        # list for every read, empty between reads: emptied below, or by on_error after a read that raised,
        # so what a failed read gathered is dropped with it.
        self._reading = conn
        out = self._out
        deflate = conn.flags & F_DEFLATE  # replies, pongs and closes together: control frames stay as they are
        event = receive(conn, data, conn.app.on_message if limited is None else limited,
                        self._max_message, self.frames if not deflate else self.deflate_frames, out)
        self._reading = None
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()  # before the write: one that fails may close the connection and raise nothing more
            # self.output.write, not a bound method kept on the worker: CPython 3.11 specializes a
            # method call only for a method found on the type, and the second attribute load is cheaper.
            if deflate:
                self.output.write(conn, self.deflater.frames(data, window_bits(conn.flags)))
            else:
                self.output.write(conn, data)
        if event != NO_EVENT:
            apply(conn, event)
        if conn.state != state:
            self.closer.state_changed(conn)

    def on_eof(self, conn: Connection) -> None:
        if conn.state == OPEN or conn.state == CLOSING:
            self.closer.abort(conn, R_ERROR)  # TCP closed without a closing handshake (1006)
        else:
            self.closer.close(conn)

    def on_timer(self, conn: Connection) -> None:
        """A connection's deadline fired: to the part that armed it."""
        state = conn.state
        if state == OPEN:
            self.keepalive.on_timer(conn)
        elif state == HTTP:
            self.pipeline.on_timer(conn)
        elif state == CLOSING or state == LINGER:
            self.closer.close(conn)  # the reason was set when the closing began

    def on_error(self, where: str, conn: Connection | None, exc: Exception) -> None:
        """The reactor's exception boundary: end the unit of work that raised, keep the worker.

        A connection gets HTTP 500 (before the upgrade) or Close 1011 (after), written as
        raw bytes because the protocol state that raised may not be trusted to write them.
        """
        self._reading = None  # a read that raised: what it gathered is dropped with it (see ws_in)
        self._out.clear()
        if conn is None:
            boundary.report(self.c, where, exc)
            return
        boundary.report(self.c, "http" if conn.state == HTTP else where, exc, repr(conn))
        try:
            if conn.state == HTTP and not conn.flags & F_WAITING:
                self.pipeline.refuse(conn, http.HttpError(500, "internal error", http.HS_INTERNAL))
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


def run_worker(config: Config, index: int, shared: SharedStats, mesh: Mesh | None = None) -> int:
    """Entry point in the forked child."""
    started = time.monotonic()
    worker = Worker(config, index, shared, mesh)
    try:
        return worker.run()
    except Exception:
        log.exception("worker %d crashed after %.1f s", index, time.monotonic() - started)
        return 1
