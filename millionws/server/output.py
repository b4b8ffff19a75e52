"""Every byte toward a peer: write now, keep only what the kernel refused, and the slow-consumer rule.

Theory of operation:

* This module is the only caller of the transport's ``write`` (``core/transport.py``: ``os.write`` itself).
  With TLS, the transport's ``seal`` turns what is written into records first, so a backlog is kept as
  ciphertext, in order, and a broadcast is encrypted once per connection; plain connections skip it.
* What the protocol or the application returns is written at once; only what the kernel refuses is
  kept (``conn.pending``), in a buffer borrowed from a pool, and only then is EPOLLOUT asked for.  An
  idle connection, and a busy one whose peer keeps up, holds no output buffer at all.
* Backpressure: over ``max_pending_bytes`` the connection is paused (``F_PAUSED``: epoll stops
  reporting its input) until its backlog halves, so one slow reader costs its own memory and never
  anyone else's time.  :meth:`Output.flush` says when a pause ends, and the worker resumes what the
  pause held back (pipelined HTTP requests): output does not know the HTTP pipeline.
* Fan-out (:meth:`Output.fanout`): one frame, the same bytes written to every subscriber (with
  permessage-deflate: compressed once per window size, on first need, for the subscribers that
  negotiated it; the same compressed bytes to each of them).  A
  subscriber whose backlog would pass ``max_pending_bytes`` is a slow consumer: it gets Close 1013
  queued behind what it has not read, leaves the fan-out at once and is closed by the close timeout if
  it never catches up.  Nobody else waits for it.
* A write that fails (the peer reset) aborts the connection through the closing part; a connection
  whose backlog drained while it lingers gets its FIN.  Closing never writes through here in return:
  it hands the Close frame back to the caller (``closing.Closer.begin_close``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.buffers import BufferPool
from ..core.reactor import EPOLLIN, EPOLLOUT, Reactor
from ..core.transport import Transport
from ..metrics import F
from ..protocol.deflate import Deflater
from ..protocol.lifecycle import CLOSED, HTTP, LINGER, OPEN, R_ERROR, R_SLOW
from .closing import Closer
from .connection import DEFLATE_KEY, F_DEFLATE, F_PAUSED, Connection, window_bits

_BYTES_OUT, _SLOW_CONSUMERS = F["bytes_out"], F["slow_consumers"]


class Output:
    """Writes, backlogs and fan-out of one worker; see the module docstring.

    ``write``, ``flush`` and ``fanout`` are handed out as bound methods (to the worker's dispatch, the
    HTTP pipeline, the application), so the hot path pays one call per write and no lookup of this part.
    """

    __slots__ = ("_write", "_seal", "_modify", "pool", "c", "limit", "closer", "deflater")

    def __init__(self, transport: Transport, reactor: Reactor, pool: BufferPool, counters: list[int],
                 max_pending_bytes: int, closer: Closer, deflater: Deflater | None = None) -> None:
        self._write = transport.write  # bound once: os.write itself
        self._seal = transport.seal  # None unless TLS
        self._modify = reactor.modify
        self.pool = pool
        self.c = counters
        self.limit = max_pending_bytes
        self.closer = closer
        self.deflater = deflater  # --compression deflate: a fan-out compresses once per window size

    def write(self, conn: Connection, data: bytes) -> None:
        """Send now; keep only what the kernel refused."""
        if self._seal is not None and conn.state != CLOSED:
            data = self._seal(conn.fd, data)
        pending = conn.pending
        if pending is not None:
            pending += data
            if len(pending) > self.limit and not conn.flags & F_PAUSED:
                conn.flags |= F_PAUSED
                self._modify(conn.fd, EPOLLOUT)
            return
        if conn.state == CLOSED:
            return
        write = self._write  # see Worker.on_event: a local is cheaper than a call through self
        try:
            sent = write(conn.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.closer.abort(conn, R_ERROR)
            return
        self.c[_BYTES_OUT] += sent
        if sent < len(data):
            conn.pending = pending = self.pool.acquire()
            pending += memoryview(data)[sent:]
            if len(pending) > self.limit:
                conn.flags |= F_PAUSED
                self._modify(conn.fd, EPOLLOUT)
            else:
                self._modify(conn.fd, EPOLLIN | EPOLLOUT)

    def flush(self, conn: Connection) -> bool:
        """Write what ``conn`` has pending (it has some).  True when this ended a pause of an HTTP
        connection: the caller resumes the requests read before the pause."""
        pending = conn.pending
        assert pending is not None
        try:
            sent = self._write(conn.fd, pending)
        except BlockingIOError:
            return False
        except OSError:
            self.closer.abort(conn, R_ERROR)
            return False
        self.c[_BYTES_OUT] += sent
        del pending[:sent]
        paused = conn.flags & F_PAUSED
        if pending:
            if paused and len(pending) <= self.limit // 2:
                conn.flags &= ~F_PAUSED
                self._modify(conn.fd, EPOLLIN | EPOLLOUT)
                return conn.state == HTTP
            return False
        conn.pending = None
        self.pool.release(pending)
        conn.flags &= ~F_PAUSED
        self._modify(conn.fd, EPOLLIN)
        if conn.state == LINGER:
            self.closer.shutdown(conn)
            return False
        return bool(paused) and conn.state == HTTP

    def fanout(self, conns: Iterable[Connection], frame: bytes) -> int:
        """Write ``frame`` to each open connection of ``conns``; return how many got it.  Subscribers that
        negotiated permessage-deflate get it compressed, once per window size, the same bytes to each."""
        if self.deflater is not None or self._seal is not None:
            return self._fanout_each(conns, frame)
        # Plain: the same bytes for everyone, so the loop holds only what a subscriber without a backlog
        # needs (the floor is the kernel's send; every instruction here is paid 10 000 times per message).
        # Those with a backlog go through the general loop after this one: each connection still gets
        # its bytes in order, since the frame is only appended behind what it has not read.
        write = self._write
        n = len(frame)
        sent_total = delivered = 0
        backlogged: list[Connection] | None = None
        trouble: list[tuple[Connection, bool]] | None = None
        for conn in conns:
            if conn.state != OPEN:
                continue
            if conn.pending is not None:
                if backlogged is None:
                    backlogged = []
                backlogged.append(conn)
                continue
            try:
                sent = write(conn.fd, frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                if trouble is None:
                    trouble = []
                trouble.append((conn, False))
                continue
            sent_total += sent
            delivered += 1
            if sent < n:
                self._keep(conn, frame, sent)
        self.c[_BYTES_OUT] += sent_total
        if backlogged is not None:
            delivered += self._fanout_each(backlogged, frame)
        if trouble is not None:
            self._settle(trouble)
        return delivered

    def _fanout_each(self, conns: Iterable[Connection], frame: bytes) -> int:
        """:meth:`fanout` with what a subscriber may need of its own: a compressed variant, TLS records."""
        limit = self.limit
        seal = self._seal
        deflate = F_DEFLATE
        message = frame  # what this subscriber gets: ``frame``, or its compressed variant
        variants: dict[int, bytes] | None = None
        sent_total = delivered = 0
        trouble: list[tuple[Connection, bool]] | None = None
        for conn in conns:
            if conn.state != OPEN:
                continue
            if conn.flags & deflate:
                key = conn.flags & DEFLATE_KEY
                if variants is None:
                    variants = {}
                message = variants.get(key) or variants.setdefault(key, self.deflater.frames(frame, window_bits(key)))
            elif message is not frame:
                message = frame
            pending = conn.pending
            if pending is not None:  # EPOLLOUT is already asked for
                if len(pending) + len(message) > limit:  # decided before sealing: a record not sent breaks TLS
                    if trouble is None:
                        trouble = []
                    trouble.append((conn, True))
                    continue
                pending += message if seal is None else seal(conn.fd, message)
                delivered += 1
                continue
            # TLS: the same frame, encrypted for each connection
            data = message if seal is None else seal(conn.fd, message)
            try:
                sent = self._write(conn.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                if trouble is None:
                    trouble = []
                trouble.append((conn, False))
                continue
            sent_total += sent
            delivered += 1
            if sent < len(data):
                self._keep(conn, data, sent)
        self.c[_BYTES_OUT] += sent_total
        if trouble is not None:
            self._settle(trouble)
        return delivered

    def _keep(self, conn: Connection, data: bytes, sent: int) -> None:
        """A fan-out write the kernel took only ``sent`` bytes of: the rest waits for EPOLLOUT."""
        conn.pending = pending = self.pool.acquire()
        pending += memoryview(data)[sent:]
        self._modify(conn.fd, EPOLLIN | EPOLLOUT)

    def _settle(self, trouble: list[tuple[Connection, bool]]) -> None:
        """After a fan-out loop (closing changes the subscriber sets): slow consumers and failed writes."""
        for conn, slow in trouble:
            if slow:
                self.slow_consumer(conn)
            else:
                self.closer.abort(conn, R_ERROR)

    def slow_consumer(self, conn: Connection) -> None:
        """Close 1013 behind the unread backlog; the close timeout ends it if it never reads."""
        self.c[_SLOW_CONSUMERS] += 1
        closer = self.closer
        self.write(conn, closer.begin_close(conn, 1013, "slow consumer", R_SLOW, wait_for_peer=False))
        closer.state_changed(conn)
