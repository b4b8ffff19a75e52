"""One subscriber process of the fan-out benchmark: a single ``select.epoll`` loop over N client sockets.

Theory of operation
-------------------
Each connection goes CONNECTING -> HANDSHAKE -> WAIT_SUB -> SUBSCRIBED. After the 101 it sends the
subscribe frame given by the driver (millionws ``/pubsub``) or nothing (the peers' ``/fanout``); the first
text frame the server sends (``{"op":"subscribed",...}`` from both) marks it subscribed. Opening is
paced (``rate`` per second, at most ``max_pending`` handshakes in flight) and every source address of
``sources`` is used in turn with ``IP_BIND_ADDRESS_NO_PORT``.

Every socket has ``SO_TIMESTAMPNS`` on, so ``recvmsg`` returns the kernel's receive time (CLOCK_REALTIME)
of the last segment it read. A broadcast message carries the publisher's ``time.time_ns()`` taken just
before its ``send``; for each message received we keep

* ``sock``: kernel receive time - publish time (what the server and the network cost), and
* ``app``: ``time.time_ns()`` after ``json.loads`` of the payload - publish time (adds this process's own
  draining: a message waits in the socket until the loop reaches it).

When several frames arrive in one read they all get the timestamp of the last segment: a bound from
above, never flattering. Latencies are kept as raw int64 nanoseconds (``array``) and saved to a file for the
driver; delivery is counted per message index, duplicates separately.

Talks to the driver over a ``multiprocessing`` pipe: ("ready", stats) once every attempt settled, then
waits for ("finish", expected, deadline_s) and answers ("done", summary) after saving its samples, or
("stop",) to quit. The process exits when the pipe closes, so nothing outlives the driver.
"""

from __future__ import annotations

import collections
import errno
import gc
import json
import os
import resource
import select
import socket
import struct
import time
from array import array
from multiprocessing.connection import Connection

from benchmarks import wscodec
from benchmarks.loadgen import wsframe

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # SO_TIMESTAMPNS_OLD on x86-64 / arm64
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)

CONNECTING, HANDSHAKE, WAIT_SUB, SUBSCRIBED, DEAD = range(5)
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


class Sub:
    __slots__ = ("sock", "state", "buf", "accept", "t0")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.buf = b""
        self.accept = b""
        self.t0 = time.monotonic()


def run(ctrl: Connection, host: str, port: int, path: str, n: int, sources: list[str], subscribe: bytes,
        rate: float, max_pending: int, connect_timeout: float, out_path: str, cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()  # no cyclic garbage here; a collection over 10^4 objects would show as latency
    ep = select.epoll()
    subs: dict[int, Sub] = {}
    failures: collections.Counter[str] = collections.Counter()
    started = subscribed = pending = 0
    src_i = 0
    t_start = time.monotonic()
    rbuf = bytearray(1 << 18)
    rview = memoryview(rbuf)

    sock_lat = array("q")
    app_lat = array("q")
    msg_idx = array("i")
    rx_first = rx_last = 0
    counts: collections.Counter[int] = collections.Counter()
    dup = bad = drops = 0
    seen: dict[int, int] = {}  # fd -> highest message index seen (indices only grow per connection)
    recording = False

    def fail(s: Sub, kind: str) -> None:
        nonlocal pending
        fd = s.sock.fileno()
        if s.state in (CONNECTING, HANDSHAKE, WAIT_SUB):
            pending -= 1
            failures[kind] += 1
        s.state = DEAD
        subs.pop(fd, None)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        s.sock.close()

    def lost(s: Sub) -> None:
        nonlocal subscribed, drops
        if s.state == SUBSCRIBED:
            subscribed -= 1
            drops += 1
            fd = s.sock.fileno()
            subs.pop(fd, None)
            try:
                ep.unregister(fd)
            except OSError:
                pass
            s.sock.close()
            s.state = DEAD
        else:
            fail(s, "eof")

    def on_frames(s: Sub, data: bytes, ts_ns: int) -> None:
        nonlocal subscribed, pending, dup, bad, rx_first, rx_last
        if s.buf:
            data = s.buf + data
            s.buf = b""
        heads = bytearray()
        payloads: list[bytes] = []
        try:
            pos = wscodec.split_frames(data, heads, payloads)
        except wscodec.ProtocolError:  # a masked frame: the server is broken, so is this connection
            pos = -1
        for b0, payload in zip(heads, payloads, strict=True):
            opcode = b0 & 0x0F
            if opcode == 1:
                if s.state == WAIT_SUB:
                    s.state = SUBSCRIBED
                    pending -= 1
                    subscribed += 1
                    continue
                if not recording:
                    continue
                try:
                    doc = json.loads(payload)
                    data_ = doc.get("data", doc) if "op" in doc else doc
                    t = data_["t"]
                    i = data_["i"]
                except (ValueError, KeyError, TypeError, AttributeError):
                    bad += 1
                    continue
                now = time.time_ns()
                fd = s.sock.fileno()
                if i <= seen.get(fd, -1):
                    dup += 1
                    continue
                seen[fd] = i
                counts[i] += 1
                sock_lat.append(ts_ns - t if ts_ns else -1)
                app_lat.append(now - t)
                msg_idx.append(i)
                if not rx_first:
                    rx_first = now
                rx_last = now
            elif opcode == 9:  # ping -> pong
                try:
                    s.sock.send(wscodec.encode(wscodec.OP_PONG, payload))
                except OSError:
                    pass
            elif opcode == 8:
                lost(s)
                return
        if pos < 0:
            lost(s)
        elif pos < len(data):
            s.buf = data[pos:]

    def on_readable(s: Sub) -> None:
        try:
            nbytes, anc, _flags, _addr = s.sock.recvmsg_into([rbuf], _CMSG_SPACE)
        except BlockingIOError:
            return
        except OSError:
            lost(s)
            return
        if nbytes == 0:
            lost(s)
            return
        ts_ns = 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(cdata)
                ts_ns = sec * 1_000_000_000 + nsec
        data = bytes(rview[:nbytes])
        if s.state == HANDSHAKE:
            buf = s.buf + data
            cut = buf.find(b"\r\n\r\n")
            if cut < 0:
                s.buf = buf
                return
            try:
                status = wsframe.parse_handshake_response(buf[:cut], s.accept)
            except wsframe.ProtocolError:
                fail(s, "handshake_invalid")
                return
            if status != 101:
                fail(s, f"handshake_status_{status}")
                return
            s.buf = b""
            s.state = WAIT_SUB
            if subscribe:
                s.sock.send(subscribe)
            data = buf[cut + 4:]
            if not data:
                return
        on_frames(s, data, ts_ns)

    def open_one() -> None:
        nonlocal started, pending, src_i
        started += 1
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            failures[errno.errorcode.get(exc.errno or 0, "oserror")] += 1
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if sources:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[src_i % len(sources)], 0))
                src_i += 1
            err = sock.connect_ex((host, port))
        except OSError as exc:
            sock.close()
            failures[errno.errorcode.get(exc.errno or 0, "oserror")] += 1
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            failures[errno.errorcode.get(err, "oserror")] += 1
            return
        s = Sub(sock)
        subs[sock.fileno()] = s
        ep.register(sock.fileno(), EPOLLOUT)
        pending += 1

    def on_event(s: Sub, fd: int, ev: int) -> None:
        if s.state == CONNECTING:
            err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail(s, errno.errorcode.get(err, "oserror"))
                return
            request, s.accept = wsframe.handshake_request(host, port, path)
            s.state = HANDSHAKE
            ep.modify(fd, EPOLLIN)
            s.sock.send(request)
        else:
            on_readable(s)

    # -- opening --------------------------------------------------------------------------------
    ctrl_fd = ctrl.fileno()
    ep.register(ctrl_fd, EPOLLIN)
    while started < n or pending > 0:
        now = time.monotonic()
        allowed = n if rate <= 0 else min(n, int((now - t_start) * rate) + 1)
        while started < allowed and pending < max_pending:
            open_one()
        # handshake timeouts (rare): scan only while something is pending
        if pending and now - t_start > connect_timeout:
            for s in list(subs.values()):
                if s.state in (CONNECTING, HANDSHAKE, WAIT_SUB) and now - s.t0 > connect_timeout:
                    fail(s, "timeout")
        for fd, ev in ep.poll(0.01):
            if fd == ctrl_fd:
                if not ctrl.poll() or ctrl.recv()[0] == "stop":
                    return
                continue
            s = subs.get(fd)
            if s is not None:
                on_event(s, fd, ev)
    connect_s = time.monotonic() - t_start
    ctrl.send(("ready", {"subscribed": subscribed, "failed": sum(failures.values()),
                         "failures": dict(failures), "connect_s": connect_s}))

    # -- measuring ----------------------------------------------------------------------------
    recording = True
    expected = -1
    deadline = float("inf")
    cpu0 = time.process_time()
    while True:
        if expected >= 0:
            done = counts.get(expected - 1, 0) >= subscribed and sum(counts.values()) >= expected * subscribed
            if done or time.monotonic() > deadline:
                break
        for fd, _ev in ep.poll(0.05):
            if fd == ctrl_fd:
                try:
                    msg = ctrl.recv()
                except EOFError:
                    return
                if msg[0] == "stop":
                    return
                if msg[0] == "finish":
                    expected = msg[1]
                    deadline = time.monotonic() + msg[2]
                continue
            s = subs.get(fd)
            if s is not None:
                on_readable(s)
    cpu = time.process_time() - cpu0
    with open(out_path, "wb") as f:  # three raw arrays, lengths first: the driver reads them back
        f.write(array("q", [len(sock_lat), len(app_lat), len(msg_idx)]).tobytes())
        f.write(sock_lat.tobytes())
        f.write(app_lat.tobytes())
        f.write(msg_idx.tobytes())
    ctrl.send(("done", {"subscribed": subscribed, "received": sum(counts.values()), "dup": dup, "bad": bad,
                        "no_timestamp": sum(1 for x in sock_lat if x < 0),
                        "drops": drops, "cpu_s": cpu,
                        "rx_first_ns": rx_first, "rx_last_ns": rx_last}))
    # wait for "stop" (or the pipe closing), then close everything
    while True:
        try:
            if ctrl.poll(30):
                ctrl.recv()
            break
        except EOFError:
            break
    for s in list(subs.values()):
        s.sock.close()
