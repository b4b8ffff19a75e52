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
    close_mode: str  # connect-rate: "ws" (close handshake) | "fin" | "rst"
    max_size: int
    hard_deadline: float  # absolute time.monotonic(): finish no matter what
    deflate: bool = False  # offer permessage-deflate; echo: send compressed, and require the server to accept


class Conn:
    """One client connection. Slots only: an idle one is ~100 bytes plus its socket object."""

    __slots__ = ("buf", "frag", "hs", "inflight", "out", "sock", "state", "t0")

    def __init__(self, sock: socket.socket, t0: int) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.buf: bytes | bytearray = _EMPTY  # unparsed input; shared empty bytes while idle
        self.out: bytearray | None = None  # bytes the kernel refused; None almost always
        self.hs: bytes | None = None  # expected Sec-WebSocket-Accept until OPEN
        self.t0 = t0  # connect start (ns), for the handshake latency
        self.inflight = 0  # echo: messages sent and not yet echoed; verify: 1 while the ping is out
        self.frag: tuple[int, bytearray] | None = None  # fragmented message being reassembled


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
        # --deflate echo: one compressor for every message of this process (each ends with a full flush)
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15) if plan.deflate and self.template else None
        self.deflate_negotiated = 0
        # The first byte of what the fast path of on_frames takes: final frames of the template's opcode.
        self.message_head = bytes((0x80 | (self.template.opcode if self.template else wscodec.OP_BINARY),))
        self.max_size = plan.max_size
        self.on_messages = self.on_echoes if self.template is not None else self.count_unexpected
        self.phase = OPENING
        self.phase_deadline = plan.hard_deadline
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
        conn = Conn(sock, time.perf_counter_ns())
        fd = sock.fileno()
        self.conns[fd] = conn
        self.ep.register(fd, EPOLLOUT)
        self.pending += 1
        self.live += 1
        self.hs_deadlines.append((now + plan.connect_timeout, conn))

    def on_connected(self, conn: Conn, fd: int) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(conn, errno_kind(err))
            return
        request, conn.hs = wsframe.handshake_request(self.plan.host, self.plan.port, self.plan.path,
                                                     self.plan.deflate)
        conn.state = HANDSHAKE
        self.ep.modify(fd, EPOLLIN)
        self.send(conn, request)

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
            status = wsframe.parse_handshake_response(bytes(buf[:end]), conn.hs or b"")
        except wsframe.ProtocolError:
            self.fail(conn, "handshake_invalid")
            return
        if status != 101:
            self.fail(conn, f"handshake_status_{status}")
            return
        if self.plan.deflate:
            if wsframe.accepts_deflate(bytes(buf[:end])):
                self.deflate_negotiated += 1
            elif self.template is not None:  # echo sends compressed frames: a server that declined gets none
                self.fail(conn, "handshake_deflate_declined")
                return
        conn.hs = None
        conn.buf = _EMPTY
        conn.state = OPEN
        self.pending -= 1
        self.established += 1
        self.last_established = now = time.monotonic()
        if now <= self.window_end:
            self.in_window += 1
        self.handshake_hist.record(time.perf_counter_ns() - conn.t0)
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
    def send(self, conn: Conn, data: bytes) -> None:
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

    def on_readable(self, conn: Conn) -> None:
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
        messages: list[memoryview | bytearray] = []
        for b0, payload in zip(heads, payloads, strict=True):
            opcode = b0 & 0x0F
            if opcode & 0x8:
                self.on_control(conn, opcode, payload)
                if conn.state == DEAD:
                    break
                continue
            if not b0 & 0x80 or conn.frag is not None:
                # Fragmented message: rare (our own messages are single frames), so a copy is fine.
                if conn.frag is None:
                    conn.frag = (b0 & 0x4F, bytearray(payload))  # RSV1 (compressed) is the first frame's
                    continue
                conn.frag[1].extend(payload)
                if not b0 & 0x80:
                    continue
                b0 = conn.frag[0]
                payload = memoryview(conn.frag[1])
                conn.frag = None
            if b0 & 0x40:  # permessage-deflate (--deflate)
                try:
                    payload = bytearray(wsframe.inflate(payload))
                except zlib.error:
                    self.lost(conn, "protocol_error")
                    break
            if echo:
                messages.append(payload)
            else:
                self.unexpected_messages += 1
        return messages

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
        if self.compressor is not None:
            data = self.template.deflated_frame(now_ns, self.compressor)  # type: ignore[union-attr]
        else:
            data = self.template.frame(now_ns)  # type: ignore[union-attr]
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
        conn.inflight = 0
        conn.state = DEAD
        self.live -= 1
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()  # closing the fd also removes it from the epoll set
        conn.buf = _EMPTY
        conn.out = None

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
        self.closes[how] += 1
        self.discard(conn)

    def start_close_phase(self) -> None:
        self.phase = CLOSE
        self.phase_deadline = min(self.plan.hard_deadline, time.monotonic() + self.plan.close_timeout)
        for conn in list(self.conns.values()):
            if conn.state == OPEN:
                self.close_conn(conn, "ws")
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
        if kind == "go" and self.phase in (OPENING, READY) and self.plan.mode == "echo":
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
        ping = _VERIFY_PAYLOAD
        for conn in list(self.conns.values()):
            if conn.state == OPEN:
                conn.inflight = 1
                self.verify_sent += 1
                self.send(conn, wscodec.encode(wscodec.OP_PING, ping))
            elif conn.state in (CONNECTING, HANDSHAKE):
                self.fail(conn, "aborted")

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
            self.next_progress = now + 1.0
            self.report_progress()
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
                if plan.rate > 0:
                    due = int((now - self.window_start) * plan.rate) + 1 - self.started
                    todo = min(todo, due)
                todo = min(todo, plan.max_pending - self.pending, _OPEN_BATCH)
                for _ in range(todo):
                    self.open_one(now)
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
            if self.verify_pongs >= self.verify_sent or now >= self.phase_deadline:
                self.start_close_phase()
        elif phase == CLOSE and (self.live == 0 or now >= self.phase_deadline):
            self.abort_all("timeout")
            self.phase = DONE

    def report_progress(self) -> None:
        try:
            self.ctrl.send(("progress", self.plan.index, self.established, sum(self.failures.values())))
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
            "verify_pongs": self.verify_pongs,
            "pinged_open": self.pinged_open,
            "open_at_stop": self.open_at_stop,
            "deflate_negotiated": self.deflate_negotiated,
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
