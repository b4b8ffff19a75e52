"""One load-generator process of the reconnect storm: a single ``select.epoll`` loop over its subscribers.

Theory of operation
-------------------
Each subscriber is one WebSocket on ``/pubsub`` subscribed to one channel. Its life:

    WAITING --(its time comes)--> CONNECTING --> HANDSHAKE --(101)--> WAIT_SUB --(subscribed)--> SUBSCRIBED
       ^                                                                                             |
       +----- Close from the server, EOF, an error, a refused or timed-out attempt: backoff --------+

The delay before the next attempt is ``millionws.client.backoff_delay(attempt)``: the documented full jitter
of the client library, with ``attempt`` reset to 0 by every 101 and raised by one per attempt, exactly as
``millionws.client.Client`` does. A subscriber dropped by node k tries the other node until it is back (a
client given two URLs, the failed one last); during the first ramp every attempt goes to node 0.

Every subscribe carries ``since`` = the last seq seen (0 before any), so the server replays what was missed
and the process can check exactness per subscriber: a seq at or below ``last`` is a duplicate (dropped and
counted), a jump past ``last + 1`` leaves a hole (counted; a ``gap`` reply makes one too). At the end the driver
sends every acknowledged seq per channel; a subscriber lost one if it is a hole or beyond ``last``.

What the driver gets through the pipe: ("ready", counts) once the first ramp settled, ("status", counts)
every half second, and after ("finish", acked, wait_s), ("done", summary, events, moved, waits) where
``events`` are (time, code) pairs of every handshake, subscription, drop and failed attempt (code = kind * 2 +
node), ``moved`` the time each subscriber dropped by node 0 was next subscribed on node 1, and ``waits`` how
long each of those subscribes waited for its answer after the 101. Times are ``time.monotonic()``, one clock
for every process of the machine. The process exits when the pipe closes.
"""

from __future__ import annotations

import collections
import errno
import gc
import heapq
import json
import math
import resource
import select
import signal
import socket
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from benchmarks import wscodec
from benchmarks.loadgen import wsframe
from millionws.client import backoff_delay

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
WAITING, CONNECTING, HANDSHAKE, WAIT_SUB, SUBSCRIBED = range(5)
HANDSHAKE_OK, SUBSCRIBED_EV, DROPPED, FAILED = range(4)  # event kinds; the code adds the node
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


class Sub:
    __slots__ = ("index", "channel", "sock", "state", "buf", "accept", "node", "attempt", "gen", "last",
                 "holes", "received", "dups", "left_first", "moved_at", "opened_at")

    def __init__(self, index: int, channel: str) -> None:
        self.index = index
        self.channel = channel
        self.sock: socket.socket | None = None
        self.state = WAITING
        self.buf = b""
        self.accept = b""
        self.node = 0  # the node of the current (or next) attempt
        self.attempt = 0
        self.gen = 0  # one per attempt: a stale deadline in the heap names an older one
        self.last = 0  # highest seq delivered
        self.holes: list[int] = []  # seqs skipped over (below ``last``, never delivered)
        self.received = 0
        self.dups = 0
        self.left_first = False  # dropped by node 0 once
        self.moved_at = math.nan
        self.opened_at = 0.0  # when the 101 of the current connection arrived


class Fleet:
    """``indices`` subscribers (subscriber i on channel ``channels[i % len(channels)]``) against ``ports``.

    ``ramp_rate``: this process's share of the first ramp, attempts per second; ``open_timeout``: seconds from
    ``connect`` to the 101 before the attempt counts as failed (websockets' ``open_timeout``, 10 s, which
    ``millionws.client`` keeps); after the 101 the ``subscribed`` reply is awaited as long as the connection
    lasts, as ``millionws.client`` does;
    ``min_delay`` / ``max_delay``: the backoff bounds of ``millionws.client``."""

    def __init__(self, host: str, ports: list[int], indices: range, channels: list[str], sources: list[str],
                 ramp_rate: float, open_timeout: float, min_delay: float, max_delay: float) -> None:
        self.host = host
        self.ports = ports
        self.sources = sources
        self.src_i = 0
        self.open_timeout = open_timeout
        self.min_delay, self.max_delay = min_delay, max_delay
        self.ep = select.epoll()
        self.subs = [Sub(i, channels[i % len(channels)]) for i in indices]
        self.by_fd: dict[int, Sub] = {}
        now = time.monotonic()
        # the first ramp: paced by ramp_rate over the whole fleet, so this process opens its share in step
        self.wake: list[tuple[float, int]] = [(now + k / ramp_rate, k) for k in range(len(self.subs))]
        self.deadlines: list[tuple[float, int, int]] = []
        self.subscribed = [0, 0]  # per node, right now
        self.moved = 0
        self.ev_t = array("d")
        self.ev_code = array("B")
        self.subscribe_wait = array("d")  # seconds from the 101 to the subscribed reply, back on node 1
        self.failures: collections.Counter[str] = collections.Counter()
        self.close_codes: collections.Counter[str] = collections.Counter()
        self.gaps: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.rbuf = bytearray(1 << 18)
        self.rview = memoryview(self.rbuf)

    # -- one attempt ------------------------------------------------------------------------------------
    def event(self, kind: int, node: int) -> None:
        self.ev_t.append(time.monotonic())
        self.ev_code.append(kind * 2 + node)

    def open(self, s: Sub) -> None:
        s.gen += 1
        s.buf = b""
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.retry(s, errno.errorcode.get(exc.errno or 0, "oserror"))
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sources:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.sources[self.src_i % len(self.sources)], 0))
                self.src_i += 1
            err = sock.connect_ex((self.host, self.ports[s.node]))
        except OSError as exc:
            sock.close()
            self.retry(s, errno.errorcode.get(exc.errno or 0, "oserror"))
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.retry(s, errno.errorcode.get(err, "oserror"))
            return
        s.sock = sock
        s.state = CONNECTING
        self.by_fd[sock.fileno()] = s
        self.ep.register(sock.fileno(), EPOLLOUT)
        heapq.heappush(self.deadlines, (time.monotonic() + self.open_timeout, s.index, s.gen))

    def close_socket(self, s: Sub) -> None:
        sock = s.sock
        if sock is None:
            return
        fd = sock.fileno()
        self.by_fd.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        sock.close()
        s.sock = None

    def retry(self, s: Sub, why: str) -> None:
        """The attempt failed before the subscription: the same node again, after the backoff."""
        self.close_socket(s)
        self.failures[why] += 1
        self.event(FAILED, s.node)
        self.backoff(s)

    def drop(self, s: Sub, why: str) -> None:
        """An established subscription ended: reconnect to the other node after the backoff."""
        self.close_socket(s)
        self.close_codes[why] += 1
        self.subscribed[s.node] -= 1
        self.event(DROPPED, s.node)
        if s.node == 0:
            s.left_first = True
        s.node = 1 - s.node if len(self.ports) > 1 else s.node
        self.backoff(s)

    def backoff(self, s: Sub) -> None:
        s.state = WAITING
        delay = backoff_delay(s.attempt, self.min_delay, self.max_delay)
        s.attempt += 1
        heapq.heappush(self.wake, (time.monotonic() + delay, s.index - self.subs[0].index))

    def end(self, s: Sub, why: str) -> None:
        if s.state == SUBSCRIBED:
            self.drop(s, why)
        else:
            self.retry(s, why)

    # -- readiness --------------------------------------------------------------------------------------
    def on_event(self, s: Sub) -> None:
        if s.state == CONNECTING:
            assert s.sock is not None
            err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.retry(s, errno.errorcode.get(err, "oserror"))
                return
            request, s.accept = wsframe.handshake_request(self.host, self.ports[s.node], "/pubsub")
            s.state = HANDSHAKE
            self.ep.modify(s.sock.fileno(), EPOLLIN)
            self.send(s, request)
            return
        try:
            nbytes = s.sock.recv_into(self.rbuf)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self.end(s, errno.errorcode.get(exc.errno or 0, "oserror"))
            return
        if nbytes == 0:
            self.end(s, "eof")
            return
        data = s.buf + bytes(self.rview[:nbytes])
        s.buf = b""
        if s.state == HANDSHAKE:
            cut = data.find(b"\r\n\r\n")
            if cut < 0:
                s.buf = data
                return
            try:
                status = wsframe.parse_handshake_response(data[:cut], s.accept)
            except wsframe.ProtocolError:
                self.retry(s, "handshake_invalid")
                return
            if status != 101:
                self.retry(s, f"http_{status}")
                return
            self.event(HANDSHAKE_OK, s.node)
            s.opened_at = self.ev_t[-1]
            s.attempt = 0  # as millionws.client: a connection that opened resets the backoff
            s.state = WAIT_SUB
            doc = {"op": "subscribe", "channels": [s.channel], "since": {s.channel: s.last}}
            self.send(s, wscodec.encode(wscodec.OP_TEXT, json.dumps(doc).encode()))
            data = data[cut + 4:]
        if data and s.sock is not None:
            self.on_frames(s, data)

    def send(self, s: Sub, data: bytes) -> None:
        try:
            s.sock.send(data)  # type: ignore[union-attr]  # a few hundred bytes: the kernel takes them whole
        except OSError as exc:
            self.end(s, errno.errorcode.get(exc.errno or 0, "oserror"))

    def on_frames(self, s: Sub, data: bytes) -> None:
        heads = bytearray()
        payloads: list[bytes] = []
        try:
            pos = wscodec.split_frames(data, heads, payloads)
        except wscodec.ProtocolError:
            self.end(s, "protocol_error")
            return
        for b0, payload in zip(heads, payloads, strict=True):
            opcode = b0 & 0x0F
            if opcode == wscodec.OP_TEXT:
                self.on_text(s, json.loads(payload))
            elif opcode == wscodec.OP_PING:
                self.send(s, wscodec.encode(wscodec.OP_PONG, payload))
            elif opcode == wscodec.OP_CLOSE:
                code = wscodec.close_code(payload, 1005)
                if s.sock is not None:
                    try:  # answer the Close, so the server's drain counts us gone at once
                        s.sock.send(wscodec.close_frame(code if code != 1005 else 1000))
                    except OSError:
                        pass
                self.end(s, f"close_{code}")
            if s.sock is None:
                return
        if pos < len(data):
            s.buf = data[pos:]

    def on_text(self, s: Sub, doc: dict[str, Any]) -> None:
        op = doc.get("op")
        if op == "message":
            seq = doc["seq"]
            if seq <= s.last:
                s.dups += 1
                return
            if seq > s.last + 1:
                s.holes.extend(range(s.last + 1, seq))
            s.last = seq
            s.received += 1
        elif op == "subscribed" and s.state == WAIT_SUB:
            s.state = SUBSCRIBED
            self.subscribed[s.node] += 1
            self.event(SUBSCRIBED_EV, s.node)
            if s.node == 1 and s.left_first and math.isnan(s.moved_at):
                s.moved_at = self.ev_t[-1]
                self.moved += 1
                self.subscribe_wait.append(s.moved_at - s.opened_at)
        elif op == "gap":
            self.gaps[doc.get("reason", "?")] += 1
            first = doc["first"]
            if first - 1 > s.last:
                s.holes.extend(range(s.last + 1, first))
                s.last = first - 1
        elif op == "error":
            self.errors[doc.get("code", "?")] += 1
            self.end(s, f"error_{doc.get('code')}")

    # -- the loop ------------------------------------------------------------------------------------
    def turn(self, timeout: float) -> None:
        """Due attempts, expired attempts, then readiness for at most ``timeout`` seconds."""
        now = time.monotonic()
        while self.wake and self.wake[0][0] <= now:
            s = self.subs[heapq.heappop(self.wake)[1]]
            if s.state == WAITING:
                self.open(s)
        while self.deadlines and self.deadlines[0][0] <= now:
            _t, index, gen = heapq.heappop(self.deadlines)
            s = self.subs[index - self.subs[0].index]
            if s.gen == gen and s.state in (CONNECTING, HANDSHAKE):
                self.retry(s, "timeout")
        if self.wake:
            timeout = max(0.0, min(timeout, self.wake[0][0] - now))
        for fd, _ev in self.ep.poll(timeout):
            s = self.by_fd.get(fd)
            if s is not None:
                self.on_event(s)

    def counts(self) -> dict[str, int]:
        return {"on_a": self.subscribed[0], "on_b": self.subscribed[1], "moved": self.moved, "n": len(self.subs)}

    def caught_up(self, acked_max: dict[str, int]) -> bool:
        return all(s.last >= acked_max.get(s.channel, 0) for s in self.subs)

    def account(self, acked: dict[str, list[int]]) -> dict[str, Any]:
        """Each subscriber against every seq acknowledged on its channel (all of them: it subscribed with since=0)."""
        lost = unacked = lossy = 0
        examples = []
        for s in self.subs:
            seqs = acked.get(s.channel, [])
            holes = set(s.holes)
            missing = [q for q in seqs if q > s.last or q in holes]
            if missing:
                lossy += 1
                lost += len(missing)
                if len(examples) < 5:
                    examples.append({"subscriber": s.index, "channel": s.channel, "last": s.last,
                                     "missing": missing[:20]})
            unacked += s.received - (len(seqs) - len(missing))  # delivered, never acknowledged to the publisher
        return {
            "subscribers": len(self.subs),
            "expected": sum(len(acked.get(s.channel, [])) for s in self.subs),
            "delivered": sum(s.received for s in self.subs),
            "lost": lost,
            "subscribers_with_loss": lossy,
            "loss_examples": examples,
            "delivered_unacknowledged": unacked,
            "duplicates_dropped": sum(s.dups for s in self.subs),
            # Skipped seqs from the channel's first acknowledged one on: before it, numbers no message had (on
            # NATS shards, the default, a channel's first seq is its shard stream's sequence, not 1).
            "holes": sum(sum(q >= min(acked.get(s.channel) or [1]) for q in s.holes) for s in self.subs),
            "left_node_a": sum(s.left_first for s in self.subs),
            "moved_to_b": self.moved,
            "on_a": self.subscribed[0],
            "on_b": self.subscribed[1],
            "attempts": sum(s.gen for s in self.subs),
            "failures": dict(self.failures),
            "close_codes": dict(self.close_codes),
            "gaps": dict(self.gaps),
            "errors": dict(self.errors),
        }


def run(ctrl: Connection, host: str, ports: list[int], indices: range, channels: list[str], sources: list[str],
        ramp_rate: float, open_timeout: float, min_delay: float, max_delay: float) -> None:
    """The process's body (see the module docstring for the conversation with the driver)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the driver's handler, inherited through fork
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which stops us in order
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()  # no cycles among subscribers; a collection over 10^4 objects would stall the loop
    fleet = Fleet(host, ports, indices, channels, sources, ramp_rate, open_timeout, min_delay, max_delay)
    ready = False
    next_status = next_check = 0.0
    acked: dict[str, list[int]] | None = None
    acked_max: dict[str, int] = {}
    finish_by = math.inf
    while True:
        fleet.turn(0.05)
        now = time.monotonic()
        if not ready and fleet.subscribed[0] == len(fleet.subs):
            ready = True
            ctrl.send(("ready", fleet.counts()))
        if now >= next_status:
            next_status = now + 0.5
            ctrl.send(("status", fleet.counts()))
        try:
            while ctrl.poll():
                msg = ctrl.recv()
                if msg[0] == "stop":
                    return
                if msg[0] == "finish":
                    acked = msg[1]
                    acked_max = {ch: max(seqs) for ch, seqs in acked.items() if seqs}
                    finish_by = now + msg[2]
        except (EOFError, OSError):
            return
        if acked is not None and now >= next_check:
            next_check = now + 0.2
            if now >= finish_by or fleet.caught_up(acked_max):
                break
    moved = array("d", (s.moved_at for s in fleet.subs))
    ctrl.send(("done", fleet.account(acked), fleet.ev_t, fleet.ev_code, moved, fleet.subscribe_wait))
    try:  # hold the connections until the driver says stop: it reads the servers' counters first
        ctrl.recv()
    except (EOFError, OSError):
        pass
    for s in fleet.subs:
        fleet.close_socket(s)
