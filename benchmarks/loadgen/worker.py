"""One load-generator process: a single ``select.epoll`` loop over non-blocking client sockets.

Theory of operation
-------------------
A connection goes CONNECTING -> HANDSHAKE -> OPEN -> CLOSING -> DEAD. Every attempt ends in exactly one of
"established" or "failed" (with a kind: refused, timeout, reset, eof, handshake_status_NNN, ...), so
``established + failed == started`` once nothing is pending. An OPEN connection that the server closes or
resets is "dropped"; one we close ourselves ends as "clean" (the server answered our close frame and closed
TCP) or "timeout".

The worker moves through phases:

    OPENING --(every attempt settled: "ready")--> READY --("go", echo)--> RUNNING --(window over)--> DRAINING
       |                                            |                                                  |
       +----------------------("stop")--------------+--> VERIFY (idle --verify-ping) --> CLOSE <-------+
                                                                                          |
                                                                     (all closed or close timeout) --> DONE

connect-rate skips READY: it opens, handshakes and closes connections with bounded concurrency until its
window or budget ends. Nothing here waits without a deadline; the parent's "stop" or the hard deadline
(or the parent's pipe closing) always leads to CLOSING and a bounded exit.

wss:// (``Plan.tls``): each connection's TLS session is an ``ssl.SSLObject`` over two memory BIOs, driven by the same
loop. The socket stays a plain non-blocking socket: one ``recv_into`` takes everything the kernel has (many TLS
records at once), the records are decrypted into a second shared buffer and handed to the same frame code; what
we send is encrypted into the outgoing BIO and written with one ``send``. (A non-blocking ``SSLSocket`` would read
one record per call, two system calls each, and raise an exception per empty read.) The TLS handshake happens in
HANDSHAKE while ``Conn.hs`` is None; then the upgrade request goes out with the client's Finished. Plain ws://
connections never meet this code: the worker binds ``send``, ``on_readable`` and ``on_connected`` to the plain or
the TLS variant once, so the plain per-message path has not one test more.

permessage-deflate (``Plan.deflate``, RFC 7692): the offer is in the upgrade request; a server that accepts it may
send compressed messages (RSV1), which are inflated (in echo mode) with a per-connection decompressor created at
the first compressed message, so idle connections cost nothing more. Echo messages to such a connection go out
compressed too (one compressor per worker, fully flushed after each message), so the server inflates as well.

Adaptive ramp (``Plan.adaptive``, :mod:`benchmarks.loadgen.ramp`): the parent sets this worker's share of the
window of handshakes in flight (``("window", n)``) instead of a fixed ``max_pending``; the worker reports, four times
a second, the latencies of the handshakes it completed since and the age of its oldest one in flight. A ``rate``
is then a ceiling (a token bucket with a burst of 50 ms), not a schedule to catch up with. Nothing is retried.

Deadlines live in two FIFO deques (handshake, close) rather than a heap or a timer per connection: each
kind has a fixed timeout, so deadlines are appended in order and expire from the left.
"""

from __future__ import annotations

import collections
import errno
import gc
import os
import resource
import select
import signal
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection

import psutil

from benchmarks import wscodec
from benchmarks.loadgen import wsframe
from benchmarks.loadgen.stats import Histogram, errno_kind
from benchmarks.wscodec import ProtocolError, split_frames

CONNECTING, HANDSHAKE, OPEN, CLOSING, DEAD = range(5)
OPENING, READY, RUNNING, DRAINING, VERIFY, CLOSE, DONE = range(7)

# Linux: defer the port choice from bind() to connect(), so the kernel may reuse a local port for
# different destinations (4-tuple uniqueness) instead of reserving it per source address.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT

_EMPTY = b""
_RECV_SIZE = 1 << 18
_OPEN_BATCH = 256  # opens per loop turn at most, so events keep being served during a burst
_VERIFY_PAYLOAD = b"verify"


@dataclass
class Plan:
    """What one worker does; built by the parent, inherited through fork."""

    index: int
    mode: str  # "idle" | "echo" | "connect-rate"
    host: str
    port: int
    path: str
    sources: list[str]
    connections: int  # idle/echo: connections to open; connect-rate: budget (0 = window only)
    rate: float  # opens per second for this worker, 0 = unpaced
    max_pending: int  # handshakes in progress at once (keeps SYN bursts under the server's backlog)
    concurrency: int  # connect-rate: live sockets at once
    connect_timeout: float
    close_timeout: float
    verify_timeout: float
    drain_timeout: float
    duration: float  # echo / connect-rate measured window
    inflight: int
    size: int
    text: bool
    close_mode: str  # connect-rate and idle: "ws" (close handshake) | "fin" | "rst"
    max_size: int
    hard_deadline: float  # absolute time.monotonic(): finish no matter what
    tls: bool = False  # wss://
    server_name: str = ""  # TLS: the name the certificate must carry (the URL's host: an IP or localhost)
    ca: str = ""  # TLS: PEM file of the CA to trust ("" with insecure: no verification)
    insecure: bool = False  # TLS: do not verify the server's certificate
    tls_max_version: str = ""  # TLS: "1.2" caps the protocol (default: the best both sides have, 1.3 here)
    deflate: bool = False  # offer permessage-deflate
    adaptive: bool = False  # max_pending is the parent's share of the adaptive window, changed by "window"
    verify_window: int = 0  # idle --verify-ping: our pings outstanding at once (0: every connection at once)


def client_context(ca: str, insecure: bool, max_version: str = "") -> ssl.SSLContext:
    """The TLS client context of the load generator (and of its callers that check a CA file early)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # what millionws and the peers accept at least
    if max_version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca:
        ctx.load_verify_locations(cafile=ca)
    else:
        ctx.load_default_certs()
    return ctx


def tls_error_kind(exc: ssl.SSLError) -> str:
    """A failure kind from an ssl error: tls_certificate_verify_failed, tls_wrong_version_number, ..."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return "tls_" + str(reason).lower()[:60]


class Conn:
    """One client connection. Slots only: an idle one is ~100 bytes plus its socket object."""

    __slots__ = ("buf", "frag", "hs", "inflight", "out", "sock", "state", "t0", "z")

    def __init__(self, sock: socket.socket, t0: int) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.buf: bytes | bytearray = _EMPTY  # unparsed input; shared empty bytes while idle
        self.out: bytearray | None = None  # bytes the kernel refused; None almost always
        self.hs: bytes | None = None  # expected Sec-WebSocket-Accept until OPEN
        self.t0 = t0  # connect start (ns), for the handshake latency
        self.inflight = 0  # echo: messages sent and not yet echoed; verify: 1 while the ping is out
        self.frag: tuple[int, bytearray] | None = None  # fragmented message being reassembled (opcode | 0x40
        # when its first frame had RSV1: compressed)
        # permessage-deflate: None = not negotiated; False = negotiated, nothing inflated yet; else the inflater.
        self.z: zlib._Decompress | bool | None = None


class TlsConn(Conn):
    """A wss:// connection: its TLS session and the two memory BIOs between it and the socket."""

    __slots__ = ("tin", "tls", "tout")

    def __init__(self, sock: socket.socket, t0: int) -> None:
        super().__init__(sock, t0)
        self.tls: ssl.SSLObject | None = None  # created once TCP is connected, dropped at discard
        self.tin: ssl.MemoryBIO | None = None  # ciphertext from the socket, not yet decrypted
        self.tout: ssl.MemoryBIO | None = None  # ciphertext the session produced, not yet sent


def _pss_rss() -> tuple[int, int]:
    info = psutil.Process().memory_full_info()
    return int(getattr(info, "pss", 0)), int(info.rss)


class Worker:
    def __init__(self, plan: Plan, ctrl: Connection) -> None:
        self.plan = plan
        self.ctrl = ctrl
        self.ctrl_fd = ctrl.fileno()
        self.ep = select.epoll()
        self.ep.register(self.ctrl_fd, EPOLLIN)
        self.conns: dict[int, Conn] = {}
        self.addr = (plan.host, plan.port)
        self.rbuf = bytearray(_RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.hs_deadlines: collections.deque[tuple[float, Conn]] = collections.deque()
        self.close_deadlines: collections.deque[tuple[float, Conn]] = collections.deque()
        self.template = wsframe.MessageTemplate(plan.size, plan.text) if plan.mode == "echo" else None
        # The first byte of what the fast path of on_frames takes: final frames of the template's opcode.
        self.message_head = bytes((0x80 | (self.template.opcode if self.template else wscodec.OP_BINARY),))
        self.max_size = plan.max_size
        self.on_messages = self.on_echoes if self.template is not None else self.count_unexpected
        self.phase = OPENING
        self.phase_deadline = plan.hard_deadline
        self.max_pending = plan.max_pending  # adaptive: set by the parent
        self.recent: list[float] | None = [] if plan.adaptive else None  # handshake latencies (s) since the report
        self.progress_period = 0.25 if plan.adaptive else 1.0
        self.tokens = 1.0  # adaptive with a rate ceiling: opens allowed now
        self.tokens_at = 0.0
        self.burst = max(1.0, plan.rate * 0.05)
        self.src_i = plan.index
        # counters
        self.started = 0
        self.established = 0
        self.pending = 0  # CONNECTING + HANDSHAKE
        self.live = 0  # sockets we hold (any state but DEAD)
        self.failures: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.handshake_hist = Histogram()
        self.rtt_hist = Histogram()
        self.first_open = 0.0
        self.last_established = 0.0
        self.pings_answered = 0
        self.pinged: set[Conn] = set()  # idle: connections that answered at least one server ping
        self.pinged_open = -1  # ... and were still open when the hold ended (-1: not counted yet)
        self.open_at_stop = -1
        self.unexpected_messages = 0
        self.verify_sent = 0
        self.verify_pongs = 0
        self.verify_queue: collections.deque[Conn] = collections.deque()  # to ping yet (--verify-window)
        self.verify_outstanding = 0
        self.sent = 0
        self.received = 0
        self.received_late = 0
        self.mismatches = 0
        self.inflight_total = 0
        self.window_start = 0.0
        self.window_end = 0.0
        self.window_end_ns = 0
        self.window_start_unix = 0.0  # the window in wall-clock time, for drivers that sample CPU meanwhile
        self.ready_sent = False
        self.next_progress = 0.0
        self.in_window = 0  # connect-rate: handshakes completed inside the window
        self.mem_before = (0, 0)
        self.mem_ready = (0, 0)
        self.deflate_negotiated = 0
        self.deflate_declined = 0
        self.inflated = 0  # compressed messages inflated
        self.compressor: zlib._Compress | None = None  # for echo messages to deflate connections
        self.deflate_params: dict[str, int | bool] | None = None  # the first answer, for the report
        # TLS: bound once here so that the plain path pays nothing for it (see the module docstring).
        self.tls_ctx = client_context(plan.ca, plan.insecure, plan.tls_max_version) if plan.tls else None
        self.tls_hist = Histogram()  # TCP connect start -> TLS handshake done
        self.tls_info: dict[str, str | None] = {}
        if self.tls_ctx is not None:
            self.conn_class: type[Conn] = TlsConn
            # Decrypted bytes of one recv: at most what was received plus one record left over from before.
            self.pbuf = bytearray(_RECV_SIZE + (1 << 15))
            self.pview = memoryview(self.pbuf)
            self.send = self.send_tls
            self.on_readable = self.on_readable_tls
            self.on_connected = self.on_connected_tls
        else:
            self.conn_class = Conn
            self.send = self.send_plain
            self.on_readable = self.on_readable_plain
            self.on_connected = self.on_connected_plain

    # ------------------------------------------------------------------ opening
    def open_one(self, now: float) -> None:
        plan = self.plan
        self.started += 1
        if not self.first_open:
            self.first_open = now
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.failures[errno_kind(exc.errno or 0)] += 1
            return
        try:
            # Small echo messages must not wait for Nagle; one setsockopt per connection is noise.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if plan.sources:
                src = plan.sources[self.src_i % len(plan.sources)]
                self.src_i += 1
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((src, 0))
            err = sock.connect_ex(self.addr)
        except OSError as exc:
            sock.close()
            self.failures[errno_kind(exc.errno or 0)] += 1
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.failures[errno_kind(err)] += 1
            return
        conn = self.conn_class(sock, time.perf_counter_ns())
        fd = sock.fileno()
        self.conns[fd] = conn
        self.ep.register(fd, EPOLLOUT)
        self.pending += 1
        self.live += 1
        self.hs_deadlines.append((now + plan.connect_timeout, conn))

    def on_connected_plain(self, conn: Conn, fd: int) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(conn, errno_kind(err))
            return
        request, conn.hs = wsframe.handshake_request(self.plan.host, self.plan.port, self.plan.path, self.plan.deflate)
        conn.state = HANDSHAKE
        self.ep.modify(fd, EPOLLIN)
        self.send(conn, request)

    def on_connected_tls(self, conn: TlsConn, fd: int) -> None:  # type: ignore[override]
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(conn, errno_kind(err))
            return
        assert self.tls_ctx is not None
        conn.tin = ssl.MemoryBIO()
        conn.tout = ssl.MemoryBIO()
        conn.tls = self.tls_ctx.wrap_bio(conn.tin, conn.tout, server_hostname=self.plan.server_name)
        conn.state = HANDSHAKE  # with conn.hs None: the TLS part of it
        self.ep.modify(fd, EPOLLIN)
        self.tls_handshake(conn)  # sends the ClientHello

    def tls_handshake(self, conn: TlsConn) -> bool:
        """Advance the TLS handshake with what is in conn.tin. True once done and the upgrade request is out."""
        tls = conn.tls
        assert tls is not None and conn.tout is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            out = conn.tout.read()
            if out:
                self.send_plain(conn, out)
            return False
        except ssl.SSLError as exc:  # verification failed, an alert from the server, a plain-text answer...
            self.fail(conn, tls_error_kind(exc))
            return False
        self.tls_hist.record(time.perf_counter_ns() - conn.t0)
        if not self.tls_info:
            cipher = tls.cipher()
            self.tls_info = {"version": tls.version(), "cipher": cipher[0] if cipher else None}
        request, conn.hs = wsframe.handshake_request(self.plan.host, self.plan.port, self.plan.path, self.plan.deflate)
        tls.write(request)
        self.send_plain(conn, conn.tout.read())  # our Finished and the upgrade request in one segment
        return conn.state != DEAD

    def on_handshake_data(self, conn: Conn, data: memoryview) -> None:
        if conn.buf:
            conn.buf += data
            buf = conn.buf
        else:
            buf = bytes(data)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 16384:
                self.fail(conn, "handshake_invalid")
            else:
                conn.buf = bytearray(buf)
            return
        try:
            status, deflate = wsframe.parse_response(bytes(buf[:end]), conn.hs or b"", self.plan.deflate)
        except wsframe.ProtocolError:
            self.fail(conn, "handshake_invalid")
            return
        if status != 101:
            self.fail(conn, f"handshake_status_{status}")
            return
        if self.plan.deflate:
            if deflate is None:
                self.deflate_declined += 1
            else:
                self.deflate_negotiated += 1
                conn.z = False  # the inflater comes with the first compressed message
                if self.deflate_params is None:
                    self.deflate_params = deflate
        conn.hs = None
        conn.buf = _EMPTY
        conn.state = OPEN
        self.pending -= 1
        self.established += 1
        self.last_established = now = time.monotonic()
        if now <= self.window_end:
            self.in_window += 1
        latency = time.perf_counter_ns() - conn.t0
        self.handshake_hist.record(latency)
        if self.recent is not None:
            self.recent.append(latency / 1e9)
        rest = buf[end + 4 :]
        self.on_established(conn)
        if rest and conn.state == OPEN:
            self.on_frames(conn, memoryview(rest))

    def on_established(self, conn: Conn) -> None:
        mode = self.plan.mode
        if mode == "echo":
            if self.phase == RUNNING:
                self.send_messages(conn, self.plan.inflight, time.perf_counter_ns())
        elif mode == "connect-rate":
            self.close_conn(conn, self.plan.close_mode)

    # ------------------------------------------------------------------ I/O
    def send_plain(self, conn: Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.lost(conn, errno_kind(exc.errno or 0))
            return
        if sent < len(data):
            # Only what the kernel refused is kept, and only then do we ask for EPOLLOUT.
            conn.out = bytearray(data[sent:])
            self.ep.modify(conn.sock.fileno(), EPOLLIN | EPOLLOUT)

    def flush(self, conn: Conn, fd: int) -> None:
        out = conn.out
        assert out is not None
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(conn, errno_kind(exc.errno or 0))
            return
        del out[:sent]
        if not out:
            conn.out = None
            self.ep.modify(fd, EPOLLIN)

    def on_readable_plain(self, conn: Conn) -> None:
        try:
            n = conn.sock.recv_into(self.rbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(conn, errno_kind(exc.errno or 0))
            return
        if not n:
            self.on_eof(conn)
            return
        data = self.rview[:n]
        if conn.state == HANDSHAKE:
            self.on_handshake_data(conn, data)
        else:
            self.on_frames(conn, data)

    def send_tls(self, conn: TlsConn, data: bytes) -> None:  # type: ignore[override]
        tls = conn.tls
        if tls is None:  # discarded meanwhile: nothing to send on
            return
        try:
            tls.write(data)
        except ssl.SSLError as exc:
            self.lost(conn, tls_error_kind(exc))
            return
        self.send_plain(conn, conn.tout.read())  # type: ignore[union-attr]

    def on_readable_tls(self, conn: TlsConn) -> None:  # type: ignore[override]
        try:
            n = conn.sock.recv_into(self.rbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(conn, errno_kind(exc.errno or 0))
            return
        if not n:
            # TCP EOF, with a TLS close_notify before it or not: the server is gone either way.
            self.on_eof(conn)
            return
        tin = conn.tin
        assert tin is not None
        tin.write(self.rview[:n])
        if conn.hs is None and conn.state == HANDSHAKE and not self.tls_handshake(conn):
            return
        self.tls_read(conn, tin)

    def tls_read(self, conn: TlsConn, tin: ssl.MemoryBIO) -> None:
        """Decrypt every complete record in tin into the shared plaintext buffer and hand it on, as
        on_readable_plain does with what it received."""
        tls = conn.tls
        assert tls is not None
        pview = self.pview
        size = len(pview)
        total = 0
        # One read per record (OpenSSL returns one record's data per call) and every record has a 5-byte header.
        for _ in range(tin.pending // 5 + 2):
            try:
                got = tls.read(size - total, pview[total:])
            except ssl.SSLWantReadError:  # the rest is an incomplete record: the next recv completes it
                break
            except ssl.SSLError as exc:
                self.lost(conn, tls_error_kind(exc))
                return
            if not got:
                # The server's close_notify (ssl reads it as 0 bytes; an empty record raises WantRead instead).
                # Nothing may follow but its FIN, which some servers (asyncio's TLS) send only once our
                # close_notify has answered theirs.
                self.send_close_notify(conn)
                break
            total += got
            if total == size:  # cannot happen with one recv's worth, but never overwrite undelivered bytes
                self.on_plaintext(conn, pview[:total])
                total = 0
                if conn.state == DEAD:
                    return
            if not tin.pending and not tls.pending():  # all consumed: spare the exception of one more read
                break
        if total:
            self.on_plaintext(conn, pview[:total])
        # A post-handshake message may want an answer (TLS 1.3 KeyUpdate); session tickets do not.
        tout = conn.tout
        if tout is not None and tout.pending and conn.state != DEAD:
            self.send_plain(conn, tout.read())

    def send_close_notify(self, conn: TlsConn) -> None:
        """Our TLS close_notify: an answer to the server's, or before a "fin" close."""
        tls = conn.tls
        if tls is None:
            return
        try:
            tls.unwrap()
        except ssl.SSLError:  # SSLWantReadError: ours is out, the server's is still to come; or already broken
            pass
        out = conn.tout.read()  # type: ignore[union-attr]
        if out:
            self.send_plain(conn, out)

    def on_plaintext(self, conn: Conn, data: memoryview) -> None:
        if conn.state == HANDSHAKE:
            self.on_handshake_data(conn, data)
        else:
            self.on_frames(conn, data)

    def on_frames(self, conn: Conn, data: memoryview) -> None:
        """Handle every complete server frame in conn.buf + data; keep the incomplete tail."""
        if conn.buf:
            conn.buf += data  # type: ignore[operator]  # a bytearray whenever non-empty
            buf: bytearray | memoryview = conn.buf
        else:
            buf = data  # the shared receive buffer: nothing may keep a reference past this call
        heads = bytearray()
        payloads: list[memoryview | bytearray] = []
        try:
            pos = split_frames(buf, heads, payloads, 0, self.max_size)
        except ProtocolError:  # masked or over --max-size: the frames before it are answered all the same
            self.sort_frames(conn, heads, payloads)
            if conn.state != DEAD:
                self.lost(conn, "protocol_error")
            return
        if heads.strip(self.message_head) or conn.frag is not None:
            # Not only whole messages of our opcode (what strip leaves): control frames, fragments, other
            # opcodes. Rare, so handled one by one.
            payloads = self.sort_frames(conn, heads, payloads)
            if conn.state == DEAD:
                return
        if payloads:
            self.on_messages(conn, payloads)  # before the tail is kept: payloads view the shared buffer
        if pos == len(buf):
            conn.buf = _EMPTY
        elif buf is conn.buf:
            del conn.buf[:pos]  # type: ignore[union-attr]
        else:
            conn.buf = bytearray(buf[pos:])

    def sort_frames(
        self, conn: Conn, heads: bytearray, payloads: list[memoryview | bytearray]
    ) -> list[memoryview | bytearray]:
        """Answer the control frames and reassemble fragments, in order, until conn dies; return the data
        messages for on_messages (none if they are not expected: counted here)."""
        echo = self.template is not None
        messages: list[memoryview | bytearray | bytes] = []
        for b0, payload in zip(heads, payloads, strict=True):
            opcode = b0 & 0x0F
            compressed = False
            if b0 & 0x70:
                # Only RSV1, only on the first frame of a data message, only once permessage-deflate was agreed.
                if b0 & 0x70 != 0x40 or conn.z is None or opcode & 0x8 or opcode == wscodec.OP_CONT:
                    self.lost(conn, "protocol_error")
                    break
                compressed = True
            if opcode & 0x8:
                self.on_control(conn, opcode, payload)
                if conn.state == DEAD:
                    break
                continue
            if not b0 & 0x80 or conn.frag is not None:
                # Fragmented message: rare (our own messages are single frames), so a copy is fine.
                if conn.frag is None:
                    conn.frag = (opcode | (0x40 if compressed else 0), bytearray(payload))
                    continue
                conn.frag[1].extend(payload)
                if not b0 & 0x80:
                    continue
                compressed = bool(conn.frag[0] & 0x40)
                payload = memoryview(conn.frag[1])
                conn.frag = None
            if not echo:
                self.unexpected_messages += 1
            elif compressed:
                inflated = self.inflate(conn, payload)
                if inflated is None:
                    break
                messages.append(inflated)
            else:
                messages.append(payload)
        return messages

    def inflate(self, conn: Conn, payload: memoryview | bytearray) -> bytes | None:
        """One compressed message (RFC 7692 section 7.2.2), or None once conn is lost over it.

        One raw-deflate decompressor per connection, with the largest window (it reads any smaller one) and kept
        across messages (context takeover; with server_no_context_takeover the server just never refers back).
        """
        z = conn.z
        if not z:
            z = conn.z = zlib.decompressobj(-15)
        try:
            # max_length: a message that inflates beyond --max-size is refused, not inflated in full.
            out = z.decompress(bytes(payload) + b"\x00\x00\xff\xff", self.max_size + 1)  # type: ignore[union-attr]
        except zlib.error:
            self.lost(conn, "inflate_error")
            return None
        if len(out) > self.max_size:
            self.lost(conn, "protocol_error")
            return None
        if z.eof:  # type: ignore[union-attr]
            # The server ended its stream (BFINAL): the next message starts a new one. One that still refers
            # to the old window fails to inflate (inflate_error) rather than being read wrong.
            conn.z = False
        self.inflated += 1
        return out

    def count_unexpected(self, conn: Conn, messages: list[memoryview | bytearray]) -> None:
        """on_messages of idle and connect-rate: no data is expected."""
        self.unexpected_messages += len(messages)

    def on_control(self, conn: Conn, opcode: int, payload: memoryview | bytearray) -> None:
        if opcode == wscodec.OP_PING:
            self.pings_answered += 1
            if self.phase < VERIFY:
                self.pinged.add(conn)
            self.send(conn, wscodec.encode(wscodec.OP_PONG, bytes(payload)))
        elif opcode == wscodec.OP_PONG:
            if conn.inflight and self.phase == VERIFY and payload == _VERIFY_PAYLOAD:
                conn.inflight = 0
                self.verify_pongs += 1
                self.verify_outstanding -= 1
                if self.verify_queue:
                    self.verify_more()
        elif opcode == wscodec.OP_CLOSE:
            if conn.state == OPEN:
                # The server closes first: answer as RFC 6455 asks, then wait for it to drop TCP.
                self.drops["server_close"] += 1
                code = bytes(payload[:2]) if len(payload) >= 2 else wscodec.close_payload(1000)
                self.send(conn, wscodec.encode(wscodec.OP_CLOSE, code))
                self.to_closing(conn, counted=True)
            # CLOSING: the server acknowledged our close; its FIN follows.
        else:
            self.lost(conn, "protocol_error")

    def on_eof(self, conn: Conn) -> None:
        if conn.state in (CONNECTING, HANDSHAKE):
            self.fail(conn, "eof")
        elif conn.state == OPEN:
            self.drops["eof"] += 1
            self.discard(conn)
        else:
            if conn.t0 >= 0:  # t0 < 0 marks a close that the server started (counted as a drop)
                self.closes["clean"] += 1
            self.discard(conn)

    # ------------------------------------------------------------------ echo
    def send_messages(self, conn: Conn, count: int, now_ns: int) -> None:
        if self.phase != RUNNING or now_ns >= self.window_end_ns or conn.state != OPEN:
            return
        # Messages sent together carry the same send time, so they are the same bytes: build one.
        if conn.z is None:
            data = self.template.frame(now_ns)  # type: ignore[union-attr]
        else:  # negotiated permessage-deflate: the server inflates what it receives too
            if self.compressor is None:
                self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            data = self.template.compressed_frame(now_ns, self.compressor)  # type: ignore[union-attr]
        if count > 1:
            data *= count
        conn.inflight += count
        self.inflight_total += count
        self.sent += count
        self.send(conn, data)

    def on_echoes(self, conn: Conn, messages: list[memoryview | bytearray]) -> None:
        """Account the echoes read in one recv() and send as many replacements (K stays in flight).

        One clock reading serves the whole batch: the messages arrived together. Echoes of one batch share
        their send time too, so runs of equal RTTs go into the histogram in one call.
        """
        now_ns = time.perf_counter_ns()
        count = len(messages)
        done = min(count, conn.inflight)
        conn.inflight -= done
        self.inflight_total -= done
        template = self.template
        assert template is not None
        size = template.size
        ts_len = template.ts_len
        filler = template.filler
        binary = template.opcode == wscodec.OP_BINARY
        hist = self.rtt_hist
        good = 0
        last = -1
        run = 0
        for payload in messages:
            if len(payload) != size or payload[ts_len:] != filler:
                self.mismatches += 1
                continue
            if binary:
                sent_at = int.from_bytes(payload[:8], "big")
            else:
                sent_at = template.sent_at(payload)
                if sent_at < 0:
                    self.mismatches += 1
                    continue
            good += 1
            if sent_at == last:
                run += 1
            else:
                if run:
                    hist.record(now_ns - last, run)
                last = sent_at
                run = 1
        if now_ns <= self.window_end_ns:
            if run:
                hist.record(now_ns - last, run)
            self.received += good
            # A mismatched echo is still replaced, so the load stays at K in flight.
            self.send_messages(conn, count, now_ns)
        else:
            self.received_late += good

    # ------------------------------------------------------------------ closing
    def fail(self, conn: Conn, kind: str) -> None:
        """A connection attempt that never reached OPEN."""
        self.failures[kind] += 1
        self.pending -= 1
        self.discard(conn)

    def lost(self, conn: Conn, kind: str) -> None:
        state = conn.state
        if state in (CONNECTING, HANDSHAKE):
            self.fail(conn, kind)
        elif state == OPEN:
            self.drops[kind] += 1
            self.discard(conn)
        elif state == CLOSING:
            if conn.t0 >= 0:
                self.closes[kind] += 1
            self.discard(conn)

    def discard(self, conn: Conn) -> None:
        if conn.state == DEAD:
            return
        if conn.inflight and self.template is not None:
            self.inflight_total -= conn.inflight
        elif conn.inflight and self.phase == VERIFY:
            self.verify_outstanding -= 1  # its pong will never come: make room for the next
        conn.inflight = 0
        conn.state = DEAD
        self.live -= 1
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()  # closing the fd also removes it from the epoll set
        conn.buf = _EMPTY
        conn.out = None
        conn.z = None
        if self.tls_ctx is not None:
            # A dead connection can stay referenced from a deadline deque for seconds (connect-rate): its TLS
            # session and buffers are released now rather than then.
            conn.tls = conn.tin = conn.tout = None  # type: ignore[attr-defined]

    def to_closing(self, conn: Conn, counted: bool = False) -> None:
        conn.state = CLOSING
        if counted:
            conn.t0 = -1
        self.close_deadlines.append((time.monotonic() + self.plan.close_timeout, conn))

    def close_conn(self, conn: Conn, how: str) -> None:
        """Close an OPEN connection we decided to end: "ws" = close handshake, "fin", or "rst"."""
        if how == "ws":
            self.send(conn, wscodec.close_frame(1000))
            if conn.state == OPEN:
                self.to_closing(conn)
            return
        if how == "rst":
            # SO_LINGER 0: close() sends RST and skips TIME_WAIT (the cheapest close there is).
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif self.tls_ctx is not None:
            self.send_close_notify(conn)  # type: ignore[arg-type]  # a TLS client's orderly end before FIN
            if conn.state == DEAD:
                return
        self.closes[how] += 1
        self.discard(conn)

    def start_close_phase(self) -> None:
        self.phase = CLOSE
        self.phase_deadline = min(self.plan.hard_deadline, time.monotonic() + self.plan.close_timeout)
        how = self.plan.close_mode if self.plan.mode == "idle" else "ws"
        for conn in list(self.conns.values()):
            if conn.state == OPEN:
                self.close_conn(conn, how)
            elif conn.state in (CONNECTING, HANDSHAKE):
                self.fail(conn, "aborted")

    def abort_all(self, why: str) -> None:
        for conn in list(self.conns.values()):
            if conn.state in (CONNECTING, HANDSHAKE):
                self.fail(conn, "aborted")
            elif conn.state == OPEN:
                self.closes[why] += 1
                self.discard(conn)
            else:
                self.lost(conn, why)

    # ------------------------------------------------------------------ control
    def on_ctrl(self) -> None:
        try:
            msg = self.ctrl.recv()
        except (EOFError, OSError):
            # The parent is gone: nobody will read a report, so end now rather than linger.
            self.abort_all("parent_gone")
            self.phase = DONE
            return
        kind = msg[0]
        now = time.monotonic()
        if kind == "window":
            self.max_pending = int(msg[1])
        elif kind == "go" and self.phase in (OPENING, READY) and self.plan.mode == "echo":
            self.phase = RUNNING
            self.window_start = now
            self.window_start_unix = time.time()
            self.window_end = now + self.plan.duration
            self.window_end_ns = time.perf_counter_ns() + int(self.plan.duration * 1e9)
            now_ns = time.perf_counter_ns()
            for conn in list(self.conns.values()):
                if conn.state == OPEN:
                    self.send_messages(conn, self.plan.inflight, now_ns)
        elif kind == "stop" and self.phase not in (VERIFY, CLOSE, DONE):
            verify = bool(msg[1]) if len(msg) > 1 else False
            if self.plan.mode == "idle":
                self.open_at_stop = sum(1 for c in self.conns.values() if c.state == OPEN)
                self.pinged_open = sum(1 for c in self.pinged if c.state == OPEN)
                self.pinged.clear()
            if self.plan.mode == "connect-rate":
                # Stop opening; tick() finishes once the live ones have ended (bounded by timeouts).
                self.phase = CLOSE
                self.phase_deadline = min(
                    self.plan.hard_deadline, now + self.plan.connect_timeout + self.plan.close_timeout
                )
            elif verify:
                self.start_verify()
            else:
                self.start_close_phase()

    def start_verify(self) -> None:
        self.phase = VERIFY
        self.phase_deadline = min(self.plan.hard_deadline, time.monotonic() + self.plan.verify_timeout)
        for conn in list(self.conns.values()):
            if conn.state == OPEN:
                self.verify_queue.append(conn)
            elif conn.state in (CONNECTING, HANDSHAKE):
                self.fail(conn, "aborted")
        self.verify_more()

    def verify_more(self) -> None:
        """Ping the next connections, keeping at most verify_window outstanding: a million pings at once would be
        a storm of our own making, with the server's keepalive pings answered late behind it."""
        window = self.plan.verify_window or len(self.verify_queue)
        ping = wscodec.encode(wscodec.OP_PING, _VERIFY_PAYLOAD)
        queue = self.verify_queue
        while queue and self.verify_outstanding < window:
            conn = queue.popleft()
            if conn.state != OPEN:
                continue  # dropped meanwhile: counted there, and never answers
            conn.inflight = 1
            self.verify_sent += 1
            self.verify_outstanding += 1
            self.send(conn, ping)

    # ------------------------------------------------------------------ loop
    def tick(self, now: float) -> None:
        plan = self.plan
        # Expire handshakes and closes (FIFO: fixed timeouts mean appended in deadline order).
        dq = self.hs_deadlines
        while dq and dq[0][0] <= now:
            conn = dq.popleft()[1]
            if conn.state in (CONNECTING, HANDSHAKE):
                self.fail(conn, "timeout")
        dq = self.close_deadlines
        while dq and dq[0][0] <= now:
            conn = dq.popleft()[1]
            if conn.state == CLOSING:
                if conn.t0 >= 0:
                    self.closes["timeout"] += 1
                self.discard(conn)

        if now >= plan.hard_deadline and self.phase != DONE:
            self.abort_all("hard_deadline")
            self.phase = DONE
            return

        phase = self.phase
        if now >= self.next_progress and phase == OPENING:
            self.next_progress = now + self.progress_period
            self.report_progress(now)
        if plan.mode == "connect-rate":
            if phase == OPENING:
                if now >= self.window_end or (plan.connections and self.started >= plan.connections):
                    self.phase = CLOSE
                    self.phase_deadline = min(plan.hard_deadline, now + plan.connect_timeout + plan.close_timeout)
                else:
                    room = plan.concurrency - self.live
                    if plan.connections:
                        room = min(room, plan.connections - self.started)
                    for _ in range(min(room, _OPEN_BATCH)):
                        self.open_one(now)
            elif phase == CLOSE and (self.live == 0 or now >= self.phase_deadline):
                self.abort_all("timeout")
                self.phase = DONE
            return

        if phase == OPENING:
            todo = plan.connections - self.started
            if todo > 0:
                if plan.rate > 0 and plan.adaptive:
                    # a ceiling: time spent under it (window full) earns no burst later
                    self.tokens = min(self.burst, self.tokens + (now - self.tokens_at) * plan.rate)
                    self.tokens_at = now
                    todo = min(todo, int(self.tokens))
                elif plan.rate > 0:
                    due = int((now - self.window_start) * plan.rate) + 1 - self.started
                    todo = min(todo, due)
                todo = min(todo, self.max_pending - self.pending, _OPEN_BATCH)
                for _ in range(todo):
                    self.open_one(now)
                if todo > 0 and plan.adaptive:
                    self.tokens -= todo
            elif self.pending == 0 and not self.ready_sent:
                self.send_ready()
        elif phase == RUNNING:
            if now >= self.window_end:
                self.phase = DRAINING
                self.phase_deadline = min(plan.hard_deadline, now + plan.drain_timeout)
        elif phase == DRAINING:
            if self.inflight_total <= 0 or now >= self.phase_deadline:
                self.start_close_phase()
        elif phase == VERIFY:
            if self.verify_queue and self.verify_outstanding < (plan.verify_window or 1):
                self.verify_more()  # room made by connections that died with a ping out
            if (not self.verify_queue and self.verify_outstanding <= 0) or now >= self.phase_deadline:
                self.start_close_phase()
        elif phase == CLOSE and (self.live == 0 or now >= self.phase_deadline):
            self.abort_all("timeout")
            self.phase = DONE

    def oldest_pending_age(self, now: float) -> float:
        """Seconds since the oldest handshake still in flight started (0: none). Settled entries are dropped
        from the front of the deadline queue on the way: their deadline no longer matters."""
        dq = self.hs_deadlines
        while dq and dq[0][1].state not in (CONNECTING, HANDSHAKE):
            dq.popleft()
        return now - (dq[0][0] - self.plan.connect_timeout) if dq else 0.0

    def report_progress(self, now: float) -> None:
        msg: tuple = ("progress", self.plan.index, self.established, sum(self.failures.values()))
        if self.recent is not None:
            msg += (self.pending, self.oldest_pending_age(now), self.recent)
            self.recent = []
        try:
            self.ctrl.send(msg)
        except OSError:
            self.abort_all("parent_gone")
            self.phase = DONE

    def send_ready(self) -> None:
        self.ready_sent = True
        if self.phase == OPENING:
            self.phase = READY
        # Nothing is pending, so no handshake deadline matters; dropping them now keeps their tuples
        # out of the load generator's own memory figure.
        self.hs_deadlines.clear()
        gc.collect()
        self.mem_ready = _pss_rss()
        try:
            self.ctrl.send(("ready", self.plan.index, self.established, self.started - self.established))
        except OSError:
            self.abort_all("parent_gone")
            self.phase = DONE

    def wakeup_in(self, now: float) -> float:
        if self.phase == OPENING and self.started < self.plan.connections and self.plan.adaptive:
            # A full window opens again only after a handshake settles or the parent changes it, and either
            # wakes epoll: polling every 5 ms in 56 processes would cost the ramp a good share of a core.
            if self.pending >= self.max_pending:
                return max(0.0, min(0.1, self.next_progress - now))
            if self.plan.rate > 0 and self.tokens < 1:
                return min(0.1, (1 - self.tokens) / self.plan.rate)
            return 0.0
        if self.phase == OPENING and self.started < self.plan.connections:
            return 0.005
        if self.phase == OPENING and self.plan.mode == "connect-rate":
            return 0.005
        return 0.1

    def run(self) -> dict:
        plan = self.plan
        gc.collect()
        self.mem_before = _pss_rss()
        now = time.monotonic()
        self.window_start = now
        if plan.mode == "connect-rate":
            self.window_start_unix = time.time()
            self.window_end = now + plan.duration
        conns = self.conns
        ep = self.ep
        ctrl_fd = self.ctrl_fd
        while self.phase != DONE:
            now = time.monotonic()
            self.tick(now)
            if self.phase == DONE:
                break
            for fd, ev in ep.poll(self.wakeup_in(now), 4096):
                if fd == ctrl_fd:
                    self.on_ctrl()
                    continue
                conn = conns.get(fd)
                if conn is None:
                    continue
                if conn.state == CONNECTING:
                    self.on_connected(conn, fd)
                    continue
                if ev & EPOLLOUT and conn.out:
                    self.flush(conn, fd)
                    if conn.state == DEAD:
                        continue
                if ev & ~EPOLLOUT:
                    self.on_readable(conn)
        return self.result(time.monotonic())

    def result(self, now: float) -> dict:
        plan = self.plan
        connect_elapsed = (self.last_established - self.first_open) if self.established else 0.0
        out = {
            "index": plan.index,
            "started": self.started,
            "established": self.established,
            "failures": dict(self.failures),
            "drops": dict(self.drops),
            "closes": dict(self.closes),
            "first_open": self.first_open,
            "last_established": self.last_established,
            "connect_elapsed": connect_elapsed,
            "handshake": self.handshake_hist.to_wire(),
            "mem_before": self.mem_before,
            "mem_ready": self.mem_ready,
            "pings_answered": self.pings_answered,
            "unexpected_messages": self.unexpected_messages,
            "verify_sent": self.verify_sent,
            "verify_unsent": len(self.verify_queue),
            "verify_pongs": self.verify_pongs,
            "pinged_open": self.pinged_open,
            "open_at_stop": self.open_at_stop,
            "tls_handshake": self.tls_hist.to_wire(),
            "tls_info": self.tls_info,
            "deflate_negotiated": self.deflate_negotiated,
            "deflate_declined": self.deflate_declined,
            "deflate_params": self.deflate_params,
            "inflated": self.inflated,
        }
        if plan.mode == "echo":
            out.update(
                sent=self.sent,
                received=self.received,
                received_late=self.received_late,
                mismatches=self.mismatches,
                lost_inflight=max(self.inflight_total, 0),
                window=(self.window_end - self.window_start) if self.window_end else 0.0,
                window_start_unix=self.window_start_unix,
                rtt=self.rtt_hist.to_wire(),
            )
        if plan.mode == "connect-rate":
            # A budget that ran out early ends the window at the last handshake, not at --duration.
            budget_done = plan.connections and self.started >= plan.connections
            end = min(self.window_end, self.last_established if budget_done else now)
            out.update(
                window=max(end - self.window_start, 0.0),
                window_start_unix=self.window_start_unix,
                in_window=self.in_window,
            )
        return out


def run_worker(plan: Plan, ctrl: Connection, close_fds: list[int]) -> None:
    """Process entry point (forked by the parent)."""
    for fd in close_fds:
        # Pipe ends of the parent (ours and earlier workers'): closed so our pipe reads EOF if it dies.
        try:
            os.close(fd)
        except OSError:
            pass
    # Ctrl-C, and SIGTERM from `timeout` or a driver, reach the whole process group. The parent turns them
    # into "stop" so the workers still close cleanly and report; a worker never outlives its parent
    # (pipe EOF) nor its hard deadline, and SIGKILL still works.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Our objects are acyclic; automatic gen-2 passes over ~19 000 live connections would only add
    # pauses to the RTT figures. gc.collect() runs explicitly before each memory reading.
    gc.disable()
    worker = Worker(plan, ctrl)
    result = worker.run()
    try:
        ctrl.send(("result", plan.index, result))
    except (BrokenPipeError, OSError):
        pass
