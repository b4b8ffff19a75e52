"""One member process of the presence benchmark: a single ``select.epoll`` loop over its WebSockets.

Theory of operation
-------------------
Each connection goes CONNECTING -> HANDSHAKE -> OPEN (an idle ``/pubsub?user=<id>`` WebSocket) -> JOINING
(its subscribe sent) -> MEMBER (``subscribed`` received). Opening is paced (``rate`` per second, at most
``max_pending`` handshakes in flight) over the source addresses given, in turn (``IP_BIND_ADDRESS_NO_PORT``).

Talks to the driver over a ``multiprocessing`` pipe:

* ("open", stats) once every connection is open (or failed);
* on ("join", rate, ask, channel): sends one subscribe per connection, paced at ``rate`` per second (the join
  storm), ``"presence": ask``; answers ("joined", stats) when every subscribe is answered;
* presence frames are read all along: per connection, the receive times (``time.monotonic()``, one clock for
  every process) and the last ``count`` seen;
* on ("report", interval, t_from, t_to): ("report", summary) of the frames received between the two times:
  frames per connection, the most any connection got within one ``interval`` (sliding), the gaps between two
  frames to one connection (min, 1st percentile, median), the last counts;
* on ("stop",) or when the pipe closes: closes everything and exits.
"""

from __future__ import annotations

import collections
import errno
import gc
import itertools
import json
import os
import resource
import select
import socket
import time
from multiprocessing.connection import Connection

from benchmarks import wscodec
from benchmarks.loadgen import wsframe

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CONNECTING, HANDSHAKE, OPEN, JOINING, MEMBER = range(5)
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


class Member:
    __slots__ = ("accept", "buf", "count", "frames", "index", "sock", "state")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.state = CONNECTING
        self.buf = b""
        self.accept = b""
        self.frames: list[float] = []  # receive times of presence frames
        self.count = -1  # the last count a presence frame said


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) that fall within any half-open window of ``window`` seconds."""
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def run(ctrl: Connection, host: str, port: int, first: int, n: int, sources: list[str], rate: float,
        max_pending: int, cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()  # no cyclic garbage here
    ep = select.epoll()
    conns: dict[int, Member] = {}
    failures: collections.Counter[str] = collections.Counter()
    rbuf = bytearray(1 << 18)
    rview = memoryview(rbuf)
    state = {"open": 0, "pending": 0, "members": 0, "joining": 0, "closed": 0}

    def fail(m: Member, kind: str) -> None:
        if m.state in (CONNECTING, HANDSHAKE):
            state["pending"] -= 1
        failures[kind] += 1
        state["closed"] += 1
        conns.pop(m.sock.fileno(), None)
        try:
            ep.unregister(m.sock.fileno())
        except OSError:
            pass
        m.sock.close()

    def on_frames(m: Member, data: bytes) -> None:
        if m.buf:
            data = m.buf + data
            m.buf = b""
        heads = bytearray()
        payloads: list = []
        try:
            pos = wscodec.split_frames(data, heads, payloads)
        except wscodec.ProtocolError:
            fail(m, "protocol")
            return
        now = time.monotonic()
        for b0, payload in zip(heads, payloads, strict=True):
            opcode = b0 & 0x0F
            if opcode == wscodec.OP_CLOSE:
                fail(m, f"close_{wscodec.close_code(payload, 0)}")
                return
            if opcode != wscodec.OP_TEXT:
                continue
            if payload[:19] == b'{"op":"presence","c':
                m.frames.append(now)
                m.count = json.loads(payload)["count"]
            elif payload.startswith(b'{"op":"subscribed"'):
                if m.state == JOINING:
                    m.state = MEMBER
                    state["members"] += 1
                    state["joining"] -= 1
            else:
                failures["unexpected:" + bytes(payload[:40]).decode("utf-8", "replace")] += 1
        if pos < len(data):
            m.buf = data[pos:]

    def on_event(m: Member, fd: int) -> None:
        if m.state == CONNECTING:
            err = m.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail(m, errno.errorcode.get(err, "oserror"))
                return
            request, m.accept = wsframe.handshake_request(host, port, f"/pubsub?user=u{m.index}")
            m.state = HANDSHAKE
            ep.modify(fd, EPOLLIN)
            m.sock.send(request)
            return
        try:
            got = m.sock.recv_into(rbuf)
        except BlockingIOError:
            return
        except OSError:
            fail(m, "reset")
            return
        if got == 0:
            fail(m, "eof")
            return
        data = bytes(rview[:got])
        if m.state == HANDSHAKE:
            buf = m.buf + data
            cut = buf.find(b"\r\n\r\n")
            if cut < 0:
                m.buf = buf
                return
            try:
                status = wsframe.parse_handshake_response(buf[:cut], m.accept)
            except wsframe.ProtocolError:
                fail(m, "handshake_invalid")
                return
            if status != 101:
                fail(m, f"status_{status}")
                return
            m.buf = b""
            m.state = OPEN
            state["pending"] -= 1
            state["open"] += 1
            data = buf[cut + 4:]
            if not data:
                return
        on_frames(m, data)

    def open_one(index: int) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sources:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[index % len(sources)], 0))
            err = sock.connect_ex((host, port))
        except OSError as exc:
            failures[errno.errorcode.get(exc.errno or 0, "oserror")] += 1
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            failures[errno.errorcode.get(err, "oserror")] += 1
            return
        conns[sock.fileno()] = Member(sock, index)
        ep.register(sock.fileno(), EPOLLOUT)
        state["pending"] += 1

    ctrl_fd = ctrl.fileno()
    ep.register(ctrl_fd, EPOLLIN)

    def poll(timeout: float) -> list | None:
        """One turn of the loop; None when the driver said stop (or went away)."""
        commands = []
        for fd, _ev in ep.poll(timeout):
            if fd == ctrl_fd:
                try:
                    commands.append(ctrl.recv())
                except EOFError:
                    return None
                continue
            m = conns.get(fd)
            if m is not None:
                on_event(m, fd)
        if any(cmd[0] == "stop" for cmd in commands):
            return None
        return commands

    # -- opening ------------------------------------------------------------------------------------
    t0 = time.monotonic()
    started = 0
    while started < n or state["pending"]:
        allowed = n if rate <= 0 else min(n, int((time.monotonic() - t0) * rate) + 1)
        while started < allowed and state["pending"] < max_pending:
            open_one(first + started)
            started += 1
        if poll(0.005) is None:
            return
    ctrl.send(("open", {"open": state["open"], "failures": dict(failures), "seconds": time.monotonic() - t0}))

    # -- joining and reporting ----------------------------------------------------------------------
    members = [m for m in conns.values() if m.state == OPEN]
    to_join: list[Member] = []
    join_rate = 0.0
    subscribe = b""
    j0 = 0.0
    sent = 0
    joined_sent = False
    while True:
        if to_join:
            allowed = len(to_join)
            if join_rate > 0:
                allowed = min(allowed, int((time.monotonic() - j0) * join_rate) + 1)
            while sent < allowed:
                m = to_join[sent]
                sent += 1
                if m.state == OPEN:
                    m.state = JOINING
                    state["joining"] += 1
                    try:
                        m.sock.send(subscribe)
                    except OSError:
                        fail(m, "send")
            if sent == len(to_join) and not state["joining"] and not joined_sent:
                joined_sent = True
                ctrl.send(("joined", {"members": state["members"], "failures": dict(failures),
                                      "seconds": time.monotonic() - j0}))
        commands = poll(0.002 if to_join and sent < len(to_join) else 0.02)
        if commands is None:
            break
        for cmd in commands:
            if cmd[0] == "join":
                _, join_rate, ask, channel = cmd
                subscribe = wscodec.encode(wscodec.OP_TEXT, json.dumps(
                    {"op": "subscribe", "channels": [channel], "presence": ask}).encode())
                to_join, sent, j0, joined_sent = members, 0, time.monotonic(), False
            elif cmd[0] == "report":
                _, interval, t_from, t_to = cmd
                frames = [[t for t in m.frames if t_from <= t <= t_to] for m in members]
                gaps = sorted(b - a for f in frames for a, b in itertools.pairwise(f))
                ctrl.send(("report", {
                    "connections": len(members),
                    "frames": sum(len(f) for f in frames),
                    "frames_per_connection": collections.Counter(len(f) for f in frames),
                    "max_in_interval": max((max_in_window(f, interval) for f in frames), default=0),
                    # seconds between two frames to one connection: coalescing makes them about one interval
                    "gaps": {"n": len(gaps), "min": gaps[0] if gaps else None,
                             "p1": gaps[len(gaps) // 100] if gaps else None,
                             "p50": gaps[len(gaps) // 2] if gaps else None},
                    "last_counts": collections.Counter(m.count for m in members),
                    "failures": dict(failures),
                }))
    for m in list(conns.values()):
        m.sock.close()
