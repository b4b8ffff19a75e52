"""Records between the workers of one node: a mesh of Unix datagram socketpairs.

Theory of operation (this module moves opaque records; :mod:`channels` says what they mean):

* The supervisor builds a :class:`Mesh` before it forks: one ``socketpair(AF_UNIX,
  SOCK_DGRAM)`` per pair of workers.  Each worker keeps its own ends and closes the
  others; the supervisor keeps every end open, so a restarted worker inherits the same
  sockets and its peers never have to reconnect.
* Datagram rather than stream sockets: a datagram is delivered whole or not at all, so
  a worker that dies halfway through a write (or a read) cannot leave its peer out of
  step with the framing.  Pairs are connected, so EPOLLOUT means "the peer's queue has
  room", which an unconnected datagram socket cannot tell.
* Batching: :meth:`LocalBus.send` only appends a length-prefixed record to the outbox
  of its destination.  A zero-delay reactor call flushes every outbox once at the end
  of the loop turn: one ``sendmsg`` per destination per turn (more only when a batch
  exceeds ``--mesh-max-datagram``), whatever the number of records or subscribers.
* A datagram starts with one flag byte.  ``START``: it begins at a record boundary and
  holds whole records, or the first fragment of one record too large for a datagram;
  otherwise it continues that record.  The receiver reassembles fragments per peer and
  drops a continuation whose start it never saw (the peer restarted mid-record).
* EAGAIN (the peer's queue is full): the outbox keeps what was not sent, EPOLLOUT is
  asked for on that socket, and the next flush resumes there.  The reactor never waits.
  Order per destination is preserved because nothing overtakes a non-empty outbox.
* A peer that stays away long enough for its outbox to pass ``--mesh-max-outbox`` loses the
  records sent to it meanwhile: counted (``millionws_records_dropped_total{kind=
  "mesh_outbox_full"}``) and logged once per episode, never silent.
* The mesh also names the node: :attr:`Mesh.node`, random hex made once by the supervisor, inherited by
  every worker it forks (restarted ones too), so the workers of one node share an id that no other node
  has.  The control plane (:mod:`control`) names a worker on the bus by it and its index.
* What arrives is untrusted like any other input: each record is handed to ``on_record``
  inside an exception boundary (:mod:`boundary`), so a record that breaks the handler is
  dropped and counted, and the next one is read.
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct
from collections.abc import Callable

from .. import boundary
from ..config import DEFAULTS
from ..core.reactor import EPOLLIN, EPOLLOUT, Reactor
from ..metrics import F

log = logging.getLogger("millionws.pubsub.mesh")

START = 1
_LEN = struct.Struct("!I")
_FLAG_START = b"\x01"
_FLAG_CONT = b"\x00"

RecordHandler = Callable[[int, memoryview], None]
_DROPPED_OUTBOX = F["dropped_mesh_outbox_full"]


def _grow_buffers(sock: socket.socket, size: int) -> None:
    for force, plain in ((getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
                         (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: beyond wmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def new_node_id() -> str:
    """A node's id: 16 hex digits, random (a clash between two nodes of a deployment is a 2^-64 event)."""
    return secrets.token_hex(8)


class Mesh:
    """One datagram socketpair per pair of workers, made before the fork.

    ``socket_buffer``: bytes in flight per direction before EAGAIN (``--mesh-socket-buffer``;
    without privileges the kernel caps it at ``net.core.wmem_max`` and ``rmem_max``)."""

    def __init__(self, workers: int, socket_buffer: int = DEFAULTS.mesh_socket_buffer) -> None:
        self.workers = workers
        self.node = new_node_id()
        self.ends: dict[tuple[int, int], socket.socket] = {}  # (holder, peer) -> socket
        for i in range(workers):
            for j in range(i + 1, workers):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for sock in (a, b):
                    _grow_buffers(sock, socket_buffer)
                self.ends[(i, j)] = a
                self.ends[(j, i)] = b

    def take(self, index: int) -> dict[int, socket.socket]:
        """In worker ``index`` after the fork: its ends by peer; the other ends are closed here."""
        mine = {}
        for (holder, peer), sock in self.ends.items():
            if holder == index:
                mine[peer] = sock
            else:
                sock.close()  # the child's copy only; the supervisor keeps its own
        self.ends = {}
        return mine


class LocalBus:
    """Worker ``index``'s side of the mesh.  ``on_record(peer, record)`` gets every record
    received; the memoryview is valid only during the call.

    Bounds (``--mesh-*``): ``max_datagram`` bytes per datagram (less if the socket's buffer
    is smaller), ``max_outbox`` bytes queued per peer before its records are dropped,
    ``datagrams_per_wake`` datagrams read from one peer per readiness.  ``node``: the node's id
    (:attr:`Mesh.node`; a fresh one when this worker has no supervisor's mesh)."""

    def __init__(self, index: int, peers: dict[int, socket.socket], reactor: Reactor,
                 counters: list[int] | None = None, on_record: RecordHandler | None = None,
                 max_datagram: int = DEFAULTS.mesh_max_datagram, max_outbox: int = DEFAULTS.mesh_max_outbox,
                 datagrams_per_wake: int = DEFAULTS.mesh_datagrams_per_wake, node: str | None = None) -> None:
        self.index = index
        self.node = node or new_node_id()
        self.c = counters if counters is not None else [0] * len(F)
        self.reactor = reactor
        self.on_record = on_record
        self.peers = peers
        self._fds = {peer: sock.fileno() for peer, sock in peers.items()}
        self._out: dict[int, bytearray] = {peer: bytearray() for peer in peers}
        self._rec_left = dict.fromkeys(peers, 0)  # bytes of a fragmented record still to send
        self._in: dict[int, bytearray] = {peer: bytearray() for peer in peers}  # fragments received
        self._blocked: set[int] = set()
        self._scheduled = False
        self._dropped_logged = False
        self.max_outbox = max_outbox
        self.datagrams_per_wake = datagrams_per_wake
        self.max_datagram = max_datagram
        for sock in peers.values():
            sock.setblocking(False)
            self.max_datagram = min(self.max_datagram,
                                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 64)
        self._rbuf = bytearray(self.max_datagram + 1)
        self._rview = memoryview(self._rbuf)
        self.datagrams_sent = 0
        self.records_sent = 0
        for peer, sock in peers.items():
            reactor.add_handler(sock.fileno(), EPOLLIN, self._handler(peer))

    def _handler(self, peer: int) -> Callable[[int], None]:
        def on_ready(events: int) -> None:
            if events & EPOLLOUT:
                self._blocked.discard(peer)
                self.reactor.modify(self._fds[peer], EPOLLIN)
                self._flush_one(peer)
            if events & EPOLLIN:
                self._receive(peer)
        return on_ready

    # -- sending ---------------------------------------------------------------------
    def send(self, dest: int, record: bytes) -> None:
        """Queue ``record`` for worker ``dest``; it leaves at the end of this loop turn."""
        out = self._out[dest]
        if len(out) > self.max_outbox:
            self.c[_DROPPED_OUTBOX] += 1
            if not self._dropped_logged:
                self._dropped_logged = True
                log.warning("worker %d: outbox to worker %d over %d bytes: dropping records (counted in "
                            "millionws_records_dropped_total; --mesh-max-outbox)", self.index, dest,
                            self.max_outbox)
            return
        self._dropped_logged = False
        out += _LEN.pack(len(record))
        out += record
        self.records_sent += 1
        if not self._scheduled:
            self._scheduled = True
            self.reactor.call_later(0, self.flush)

    def broadcast(self, record: bytes) -> None:
        for peer in self._out:
            self.send(peer, record)

    def flush(self) -> None:
        self._scheduled = False
        for peer, out in self._out.items():
            if out and peer not in self._blocked:
                self._flush_one(peer)

    def _flush_one(self, peer: int) -> None:
        out = self._out[peer]
        sock = self.peers[peer]
        view = memoryview(out)
        maxd = self.max_datagram
        n = len(out)
        pos = 0
        rec_left = self._rec_left[peer]
        try:
            while pos < n:
                if rec_left:  # continue a record too big for one datagram
                    end = pos + min(rec_left, maxd)
                    sock.sendmsg([_FLAG_CONT, view[pos:end]])
                    rec_left -= end - pos
                else:
                    end = pos
                    while end < n:
                        size = 4 + _LEN.unpack_from(out, end)[0]
                        if end + size - pos > maxd:
                            if end == pos:  # a lone record larger than a datagram: its first fragment
                                end = pos + maxd
                                rec_left = size - maxd
                            break
                        end += size
                    sock.sendmsg([_FLAG_START, view[pos:end]])
                self.datagrams_sent += 1
                pos = end
        except BlockingIOError:
            self._blocked.add(peer)
            self.reactor.modify(self._fds[peer], EPOLLIN | EPOLLOUT)
        except OSError as exc:  # never expected on a socketpair; losing records beats crashing
            log.warning("worker %d: send to worker %d failed: %s", self.index, peer, exc)
            pos = n
            rec_left = 0
        finally:
            view.release()
            self._rec_left[peer] = rec_left
            del out[:pos]

    # -- receiving -------------------------------------------------------------------
    def _receive(self, peer: int) -> None:
        sock = self.peers[peer]
        rview = self._rview
        on_record = self.on_record
        partial = self._in[peer]
        for _ in range(self.datagrams_per_wake):  # bounded: client sockets get their turn too
            try:
                n = sock.recv_into(self._rbuf)
            except BlockingIOError:
                return
            if n == 0:
                continue
            if rview[0] & START:
                partial.clear()  # a partial record here means its sender died mid-record
                pos = 1
                while pos + 4 <= n:
                    size = _LEN.unpack_from(rview, pos)[0]
                    end = pos + 4 + size
                    if end > n:  # first fragment of a large record
                        partial += rview[pos:n]
                        break
                    if on_record is not None:
                        self._deliver(on_record, peer, rview[pos + 4:end])
                    pos = end
            elif partial:
                partial += rview[1:n]
                size = 4 + _LEN.unpack_from(partial, 0)[0]
                if len(partial) >= size:
                    record = bytes(partial[4:size])
                    partial.clear()
                    if on_record is not None:
                        self._deliver(on_record, peer, memoryview(record))
            # else: the continuation of a record whose start we never saw: dropped

    def _deliver(self, on_record: RecordHandler, peer: int, record: memoryview) -> None:
        try:
            on_record(peer, record)
        except Exception as exc:  # the boundary of one record: drop it, keep the link
            boundary.report(self.c, "mesh", exc, f"record from worker {peer}")
