"""New connections: the listening sockets of one worker, admission at ``accept()``, and running out of fds.

Theory of operation:

* Each worker binds its own listening socket with SO_REUSEPORT, so the kernel spreads new connections
  over the workers; a worker shares nothing with its siblings but the metrics region.  TCP_NODELAY is
  set on the listener once: accepted sockets inherit it (Linux), so no setsockopt per client.
* Accepting makes no socket object: ``listener._accept()`` gives ``(fd, address)`` and the connection
  is a :class:`connection.Connection` record around the bare descriptor, with no parser yet
  (``http.UNSTARTED``: the pipeline makes one only when the first head is not a plain upgrade) and the
  handshake deadline in the reactor's wheel.  At most ``accept_batch`` connections per readiness: the
  connections already open get their turn in the same loop turn.
* With ``--tls-cert`` each connection of the main port gets its TLS session here (``core/tls.py``); the
  handshake then runs as its bytes arrive, under the same deadline as the HTTP request that follows.
* Admission (:mod:`admission`) decides per source address before a byte is parsed; a refused
  descriptor is closed at once, the cheapest answer to a flood (no parser, no response).
* Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM): the level-triggered listener would report
  readiness forever, so the listeners leave epoll for 100 ms while the connections we have are served,
  then come back.  A connection the peer aborted before we took it (ECONNABORTED, EPROTO) is no error.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable

from ..core.reactor import EPOLLIN, Reactor, monotonic
from ..metrics import F
from ..protocol import http
from .admission import Admission
from .connection import F_ADMIN, F_PROXY, Connection
from .proxied import ProxyGate

log = logging.getLogger("millionws.server.acceptor")

_ACCEPTED, _EMFILE, _OTHER = F["accepted"], F["accept_error_emfile"], F["accept_error_other"]
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_NOT_OUR_ERROR = (errno.ECONNABORTED, errno.EPROTO, errno.EINTR)


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket that shares ``port`` with the sibling workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt, not one per client.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Acceptor:
    """The listeners of one worker and what becomes of each accepted descriptor."""

    __slots__ = ("reactor", "c", "admission", "batch", "handshake_timeout", "max_head", "listeners", "_paused",
                 "proxy", "start_tls")

    def __init__(self, reactor: Reactor, counters: list[int], admission: Admission, accept_batch: int,
                 handshake_timeout: float, max_request_head: int, proxy: ProxyGate | None = None,
                 start_tls: Callable[[int], None] | None = None) -> None:
        self.reactor = reactor
        self.proxy = proxy  # --proxy-protocol: the main port's connections owe a header (proxied.py)
        self.start_tls = start_tls  # --tls-cert: the main port's connections speak TLS (core/tls.py)
        self.c = counters
        self.admission = admission
        self.batch = accept_batch  # connections accepted per listener readiness
        self.handshake_timeout = handshake_timeout
        self.max_head = max_request_head
        self.listeners: list[tuple[socket.socket, int]] = []  # (socket, flags of its connections)
        self._paused = False

    def listen(self, host: str, port: int, backlog: int, admin_port: int = 0) -> None:
        """Bind the public port and, if any, the admin port (its connections get ``F_ADMIN``)."""
        self.listeners = [(listen_socket(host, port, backlog), 0)]
        if admin_port:
            self.listeners.append((listen_socket(host, admin_port, backlog), F_ADMIN))
        self._watch()

    def _watch(self) -> None:
        for sock, flags in self.listeners:
            self.reactor.add_handler(sock.fileno(), EPOLLIN,
                                     lambda _ev, sock=sock, flags=flags: self.accept_from(sock, flags))

    def accept_from(self, listener: socket.socket, flags: int) -> None:
        """Accept up to the batch of connections waiting on ``listener``."""
        accept = listener._accept  # (fd, addr): no socket object is made
        reactor = self.reactor
        now = monotonic()
        deadline = now + self.handshake_timeout
        c = self.c
        admission = self.admission
        proxy = self.proxy if not flags & F_ADMIN else None
        limited = admission.active and proxy is None  # behind a balancer: decided once the client is known
        keep_peer = admission.counts is not None and proxy is None
        # Behind a PROXY header, TLS starts once the header is read (proxied.py); the admin port is plain.
        start_tls = self.start_tls if proxy is None and not flags & F_ADMIN else None
        if proxy is not None:
            flags |= F_PROXY
        for _ in range(self.batch):  # bounded: the connections we have get their turn too
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._failed(exc)
                return
            if proxy is not None and not proxy.trusted(addr[0]):
                os.close(fd)  # a client speaking PROXY itself could claim any address
                continue
            peer = None
            if limited:
                peer = admission.admit(addr[0], now)
                if peer is None:
                    os.close(fd)  # the cheapest answer to a flood: no parser, no response
                    continue
            # CPython's accept4 passes SOCK_CLOEXEC but not SOCK_NONBLOCK, hence the two fcntl calls here; a ctypes
            # accept4 with both flags measured no better (0.18 us of fcntl against the cost of a ctypes call).
            os.set_blocking(fd, False)
            if start_tls is not None:
                start_tls(fd)
            conn = Connection(fd, http.UNSTARTED)  # a parser only if fast_head cannot read the head
            conn.flags = flags
            if keep_peer:
                conn.peer = peer
            reactor.add_conn(fd, conn, EPOLLIN)
            reactor.wheel.schedule(conn, deadline)
            c[_ACCEPTED] += 1

    def _failed(self, exc: OSError) -> None:
        if exc.errno in _OUT_OF_RESOURCES:
            self.c[_EMFILE] += 1
            # Stop asking for 100 ms (level-triggered epoll would spin), serve the connections we have.
            if not self._paused:
                self._paused = True
                for sock, _ in self.listeners:
                    self.reactor.remove_handler(sock.fileno())
                self.reactor.call_later(0.1, self._resume)
        elif exc.errno not in _NOT_OUR_ERROR:
            self.c[_OTHER] += 1
            log.warning("accept failed: %s", exc)

    def _resume(self) -> None:
        self._paused = False
        self._watch()

    def sweep(self, interval: float) -> None:
        """Forget source addresses whose connect-rate bucket is full again (a bounded table); runs every
        ``interval`` seconds (every refill period with a connect rate) from the first call, while any
        per-address limit is on."""
        admission = self.admission
        if not admission.active:
            return
        self.reactor.call_later(interval if admission.rate is None else admission.rate.idle,
                                lambda: self.sweep(interval))
        admission.sweep(monotonic())

    def close(self) -> None:
        """Close every listener (the worker is ending)."""
        for sock, _ in self.listeners:
            sock.close()
