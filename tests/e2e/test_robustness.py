"""Robustness against a real server: hostile byte streams, slow and silent peers, a killed worker, no fds left.

* ``test_arbitrary_streams_*`` (hypothesis): mixes of upgrade requests, valid and invalid frames and random
  bytes, cut at arbitrary points and sent with small pauses, on 1-3 connections at once.  Every connection
  must end in an outcome the model allows (see :func:`check_outcome`), no worker may die, and the workers'
  descriptors must come back to where they were.
* Slowloris and half-open handshakes: the handshake deadline and the keepalive end them; memory stays flat
  and other clients keep their latency.
* A peer that never reads while it asks for 100 MB of echoes: backpressure, bounded RSS.
* A peer that pipelines HTTP requests and never reads: bounded memory, neighbours served.
* ``kill -9`` of a worker under load: the other worker's clients notice nothing; the slot is refilled.
* EMFILE on accept: existing connections are served, the failure is counted, accepting resumes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import select
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from benchmarks import wscodec
from benchmarks.wscodec import server_frames
from millionws.protocol.lifecycle import OPEN
from tests.conftest import Server, free_port, http_get, wait_for
from tests.protocol.test_websocket import ENDINGS, VALID, Reference
from tests.test_metrics_helpers import metric_total
from tests.wsraw import RawClient, close_payload, frame, upgrade_request

pytestmark = pytest.mark.e2e

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- looking at the server from outside -------------------------------------------------------------

def workers(server: Server) -> list[psutil.Process]:
    """The worker processes: the supervisor's children (no HTTP request, so no descriptor of ours)."""
    return sorted(psutil.Process(server.proc.pid).children(), key=lambda p: p.pid)


def worker_pids(server: Server) -> list[int]:
    return [p.pid for p in workers(server)]


def worker_fds(server: Server) -> int:
    return sum(p.num_fds() for p in workers(server))


def worker_rss(server: Server) -> int:
    return sum(p.memory_info().rss for p in workers(server))


def settled_fds(server: Server, hold: float = 0.3) -> int:
    """The workers' descriptor count once it held still for ``hold`` seconds."""
    seen: dict[str, float] = {}

    def still() -> int | None:
        n = worker_fds(server)
        if seen.get("n") != n:
            seen.update(n=n, since=time.monotonic())
            return None
        return n if time.monotonic() - seen["since"] >= hold else None

    return int(wait_for(still, 10, what="worker fds settled"))  # type: ignore[arg-type]


def adopt(sock: socket.socket, timeout: float) -> RawClient:
    """A RawClient around a socket that is already connected."""
    client = RawClient.__new__(RawClient)
    client.sock, client.buf, client.timeout = sock, b"", timeout
    sock.settimeout(timeout)
    return client


def echo_rtt(server: Server, message: str = "still served?") -> float:
    """A fresh client's handshake + one echo, in seconds."""
    started = time.monotonic()
    with sync_connect(server.url(), open_timeout=5, close_timeout=2, compression=None) as ws:
        ws.send(message)
        assert ws.recv(timeout=5) == message
    return time.monotonic() - started


# -- the property: arbitrary streams -------------------------------------------------------------------

MAX_SIZE = 4096
HANDSHAKE_TIMEOUT = 1.0
PING_INTERVAL = 2.0
PING_TIMEOUT = 0.5
CLOSE_TIMEOUT = 1.0
FUZZ_ARGS = ["--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--ping-interval", str(PING_INTERVAL),
             "--ping-timeout", str(PING_TIMEOUT), "--close-timeout", str(CLOSE_TIMEOUT),
             "--max-message-size", str(MAX_SIZE)]
# Close codes a server may put on the wire (RFC 6455 7.4): echoed from the peer or its own.
WIRE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, *range(3000, 5000)}
# How a failure is detected can depend on where TCP cut the stream: an oversized text frame with bad UTF-8
# is 1009 when its header arrives alone and 1007 when the payload arrives with it.  Either is right.
FAILURE_CODES = {1002, 1007, 1009}

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
REFUSED = [  # (request, status): refused before any upgrade, then the connection ends
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 426),
    (upgrade_request(version="8"), 426),
    (upgrade_request(key="c2hvcnQ="), 400),
    (upgrade_request(path="/nope"), 404),
    (b"GET /echo HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 400),  # no Host
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),  # a TLS hello
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 17000 + b"\r\n\r\n", 431),
]


@dataclass
class Script:
    """One connection: what it sends, how it is cut, and how it ends."""

    kind: str  # upgrade | refused | junk | truncated
    prefix: int  # keep-alive GET /health requests before the head
    status: int  # upgrade: 101; refused: its status; otherwise 0
    key: bytes  # Sec-WebSocket-Key of an upgrade
    ws: bytes  # upgrade: the bytes after the request
    chunks: list[bytes]
    pauses: list[float]  # before each chunk
    ending: str  # fin: shutdown(SHUT_WR); wait: say nothing more; rst: SO_LINGER 0 and close


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Valid traffic, then maybe what ends it (Close, bad frame, junk), then maybe more (must be ignored)."""
    parts = draw(st.lists(VALID, max_size=4))
    parts.append(draw(ENDINGS))
    parts += draw(st.lists(VALID | ENDINGS, max_size=2))
    return b"".join(parts)


@st.composite
def upgrade(draw: st.DrawFn) -> tuple[bytes, bytes]:
    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16)))
    path = draw(st.sampled_from([b"/echo", b"/ws"]))
    upgrade_token = draw(st.sampled_from([b"websocket", b"WebSocket"]))
    connection = draw(st.sampled_from([b"Upgrade", b"keep-alive, upgrade"]))
    extra = draw(st.sampled_from([b"", b"Origin: http://example.com\r\n", b"Sec-WebSocket-Protocol: chat\r\n",
                                  b"Sec-WebSocket-Extensions: permessage-deflate\r\n"]))
    request = (b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: " + upgrade_token + b"\r\nConnection: "
               + connection + b"\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra
               + b"\r\n")
    return request, key


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    kind = draw(st.sampled_from(["upgrade"] * 6 + ["refused", "junk", "truncated"]))
    prefix = draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0
    key, ws, status = b"", b"", 0
    if kind == "upgrade":
        head, key = draw(upgrade())
        ws = draw(frames())
        status = 101
    elif kind == "refused":
        head, status = draw(st.sampled_from(REFUSED))
    elif kind == "junk":
        head = draw(st.binary(min_size=1, max_size=200))
    else:
        request, _ = draw(upgrade())
        head = request[:draw(st.integers(1, len(request) - 1))]
    tail = ws if kind == "upgrade" else draw(st.sampled_from([b"", b"", draw(frames())]))
    if kind == "truncated" and b"\n\n" in (head + tail).replace(b"\r", b""):
        tail = b""  # the frames' bytes (a mask key of "\n\n") would complete the cut head: not truncated then
    stream = HEALTH * prefix + head + tail
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=10))))
    bounds = [0, *(c for c in cuts if c < len(stream)), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    pauses = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.02]), min_size=len(chunks),
                           max_size=len(chunks)))
    ending = draw(st.sampled_from(["fin"] * 14 + ["rst"] * 3 + ["wait"] * 2))
    return Script(kind, prefix, status, key, ws, chunks, pauses, ending)


@dataclass
class Outcome:
    out: bytes  # everything the server sent
    eof: bool  # the server closed TCP (orderly FIN)
    reset: str  # "" or the error that broke the connection (reset, broken pipe)
    elapsed: float  # connect to end


def run_script(port: int, script: Script, linger: float = 6.0) -> Outcome:
    """Send the chunks with their pauses while reading; end as the script says; read until EOF or ``linger``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    started = time.monotonic()
    out = bytearray()
    eof, reset = False, ""

    def read_some(timeout: float) -> None:
        nonlocal eof, reset
        if eof or reset:
            return
        if not poller.poll(max(0, int(timeout * 1000))):
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            reset = type(exc).__name__
            return
        if data:
            out.extend(data)
        else:
            eof = True

    try:
        for chunk, pause in zip(script.chunks, script.pauses, strict=True):
            until = time.monotonic() + pause
            read_some(pause)
            while time.monotonic() < until and not (eof or reset):
                read_some(until - time.monotonic())
            view = memoryview(chunk)
            while view and not reset:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    select.select([], [sock], [], 0.05)
                    read_some(0)
                except OSError as exc:
                    reset = type(exc).__name__
            if reset:
                break
        if script.ending == "rst" and not reset:
            read_some(0.01)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return Outcome(bytes(out), eof, reset, time.monotonic() - started)
        if script.ending == "fin" and not reset:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                reset = type(exc).__name__
        deadline = time.monotonic() + linger
        while not (eof or reset) and time.monotonic() < deadline:
            read_some(deadline - time.monotonic())
        return Outcome(bytes(out), eof, reset, time.monotonic() - started)
    finally:
        sock.close()


def parse_responses(data: bytes, complete: bool) -> tuple[list[tuple[int, dict[str, str]]], bytes]:
    """HTTP responses at the start of ``data`` (up to and including a 101) and the bytes after.

    ``complete``: the server closed TCP, so nothing may be truncated; otherwise (we reset the connection) a
    partial response at the end is dropped.
    """
    responses = []
    while data:
        assert data.startswith(b"HTTP/1.1 "[:len(data)]), f"not an HTTP response: {data[:80]!r}"
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            assert not complete, f"truncated response head: {data[:200]!r}"
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"bad header line {line!r}"
            key = name.strip().lower()  # a repeated header is one comma-separated list (RFC 9110 5.3)
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        length = int(headers.get("content-length", "0"))
        if status != 101 and len(rest) < length:
            assert not complete, "truncated response body"
            break
        responses.append((status, headers))
        if status == 101:
            return responses, rest
        data = rest[length:]
    return responses, b""


def close_code(fr: tuple[int, bool, bytes]) -> int | None:
    return wscodec.close_code(fr[2]) if fr[0] == 8 else None


def check_outcome(script: Script, result: Outcome) -> str:
    """Assert that the connection ended in an allowed way; return a label for hypothesis' statistics.

    Allowed: HTTP responses with a status (keep-alive ones 200 with ``Connection: keep-alive``, a refusal
    last with ``Connection: close``); after a 101, exactly what one dedicated wsproto connection would send
    for the same bytes (echoes, pongs, a Close with the code it picks: ``tests.protocol.test_websocket.Reference``),
    give or take keepalive pings, a 1011 from the keepalive when the peer stayed silent long enough, and
    which of 1002/1007/1009 a failure is detected as.  Then the server closes TCP: an orderly FIN, never a
    reset, unless we reset first (then what we read must be a prefix of the above).
    """
    complete = script.ending != "rst"
    if complete:
        assert not result.reset, f"{result.reset} after {result.elapsed:.2f} s"
        assert result.eof, f"no end after {result.elapsed:.2f} s: {result.out[-200:]!r}"
    responses, rest = parse_responses(result.out, complete)
    statuses = [status for status, _ in responses]
    for status, headers in responses[:-1]:
        assert status == 200 and headers["connection"] == "keep-alive", responses
    prefix = [200] * script.prefix
    if script.kind in ("junk", "truncated"):
        assert statuses[:script.prefix] == prefix[:len(statuses)], statuses
        extra = statuses[script.prefix:]
        assert len(extra) <= 1 and all(400 <= s < 500 for s in extra), statuses
        assert not rest
        return f"{script.kind}: {extra[0] if extra else 'no response'}"
    want_statuses = [*prefix, script.status]
    if statuses[-1:] == [408] and result.elapsed >= HANDSHAKE_TIMEOUT:
        return f"{script.kind}: 408 (slow)"  # the handshake deadline passed before the request was whole
    if not complete and len(statuses) < len(want_statuses):
        assert statuses == want_statuses[:len(statuses)], statuses
        return f"{script.kind}: reset by us before the response"
    assert statuses == want_statuses, statuses
    if script.kind == "refused":
        assert "close" in responses[-1][1]["connection"].lower().split(", ")
        assert not rest
        return f"refused {script.status}"
    accept = base64.b64encode(hashlib.sha1(script.key + WS_GUID).digest()).decode()
    assert responses[-1][1]["sec-websocket-accept"] == accept
    ref = Reference(MAX_SIZE)
    ref.receive(script.ws)
    # Server frames, strictly: unmasked, no RSV bit, known opcode; a truncated one only if not ``complete``.
    want = server_frames(bytes(ref.output), strict=True)
    got = [fr for fr in server_frames(rest, complete, strict=True) if fr != (9, True, b"")]  # keepalive pings: any time
    closes = [i for i, fr in enumerate(got) if fr[0] == 8]
    assert closes in ([], [len(got) - 1]), "a frame after the Close, or two Closes"
    if closes and got[-1][2]:
        assert close_code(got[-1]) in WIRE_CODES, got[-1]
    if closes and close_code(got[-1]) == 1011 and result.elapsed >= PING_TIMEOUT:
        # The keepalive ended it: what came before is what the model says, as far as it got.  Its first ping
        # comes anywhere in (0, --ping-interval] after the upgrade (keepalive.first_ping_delay spreads the
        # pings of a worker's connections), so a silent peer is closed after --ping-timeout at the earliest.
        assert got[:-1] == want[:len(got) - 1], (got, want)
        return "upgrade: keepalive 1011"
    if not complete:
        assert got == want[:len(got)] or (
            len(got) == len(want) and got[:-1] == want[:-1] and closes
            and {close_code(got[-1]), close_code(want[-1])} <= FAILURE_CODES), (got, want)
        return "upgrade: reset by us"
    if ref.state == OPEN:  # nothing in the stream ended the WebSocket
        assert script.ending == "fin", "a silent peer must be ended by the keepalive"
        assert got == want, (got, want)  # our FIN: the server closes TCP without a Close (1006)
        return "upgrade: open until our FIN"
    assert len(got) == len(want) and got[:-1] == want[:-1], (got, want)
    if got[-1] != want[-1]:
        assert {close_code(got[-1]), close_code(want[-1])} <= FAILURE_CODES, (got[-1], want[-1])
        return f"upgrade: close {close_code(got[-1])} (model {close_code(want[-1])})"
    return f"upgrade: close {close_code(got[-1])}"


@pytest.fixture(scope="module")
def fuzz_server():
    srv = Server(free_port(), 2, FUZZ_ARGS)
    srv.stats()  # the first /stats: whatever a worker opens lazily for it is open now
    srv.baseline_pids = worker_pids(srv)  # type: ignore[attr-defined]
    srv.baseline_fds = settled_fds(srv)  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.mark.timeout(600)  # ~15 s when it passes; shrinking a failure against a live server takes longer
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(st.lists(scripts(), min_size=1, max_size=3))
def test_arbitrary_streams_end_validly_and_crash_or_leak_nothing(fuzz_server: Server, conns: list[Script]) -> None:
    with ThreadPoolExecutor(len(conns)) as pool:
        results = list(pool.map(lambda s: run_script(fuzz_server.port, s), conns))
    for script, result in zip(conns, results, strict=True):
        event(f"{script.ending}: {check_outcome(script, result)}")
    assert worker_pids(fuzz_server) == fuzz_server.baseline_pids, "a worker died"  # type: ignore[attr-defined]
    wait_for(lambda: worker_fds(fuzz_server) == fuzz_server.baseline_fds,  # type: ignore[attr-defined]
             PING_INTERVAL + PING_TIMEOUT + CLOSE_TIMEOUT + 3, what="worker fds back to baseline")


def test_arbitrary_streams_left_the_workers_as_they_were(fuzz_server: Server) -> None:
    """After the property ran (same module server): same pids, no restart counted, no WebSocket counted open."""
    echo_rtt(fuzz_server)
    stats = fuzz_server.stats()
    assert stats["worker_restarts"] == 0
    assert sorted(w["pid"] for w in stats["workers"]) == fuzz_server.baseline_pids  # type: ignore[attr-defined]
    wait_for(lambda: fuzz_server.stats()["total"]["connections"] == 0, what="no WebSocket left open")


# -- slowloris and half-open handshakes ----------------------------------------------------------------

def test_slowloris_is_cut_by_the_handshake_timeout_while_others_are_served(start_server):
    server = start_server("--handshake-timeout", "1", workers=2)
    echo_rtt(server)
    rss_before = worker_rss(server)
    n, duration = 300, 4.0
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000  # never finished
    opened: dict[socket.socket, list] = {}  # sock -> [connected at, bytes sent, bytes received]
    lifetimes: list[float] = []
    statuses: list[bytes] = []
    rss_max = rss_before
    stop = threading.Event()
    rtts: list[float] = []
    errors: list[BaseException] = []

    def neighbour() -> None:
        while not stop.is_set():
            try:
                rtts.append(echo_rtt(server))
            except BaseException as exc:
                errors.append(exc)
                return

    def open_one() -> None:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.setblocking(False)
        opened[sock] = [time.monotonic(), 0, b""]

    thread = threading.Thread(target=neighbour, daemon=True)
    for _ in range(n):
        open_one()
    thread.start()
    started = time.monotonic()
    next_byte = started
    while opened and time.monotonic() - started < duration + 3:
        attacking = time.monotonic() - started < duration
        now = time.monotonic()
        if attacking and now >= next_byte:  # one more header byte from everyone every 0.2 s
            next_byte = now + 0.2
            for sock, state in opened.items():
                try:
                    sock.send(request[state[1]:state[1] + 1])
                    state[1] += 1
                except OSError:
                    pass  # the server closed it: seen below
            rss_max = max(rss_max, worker_rss(server))
        elif not attacking:
            next_byte = now + 0.2
            stop.set()
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in opened}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(max(0, int((next_byte - time.monotonic()) * 1000))):
            sock = by_fd[fd]
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            opened[sock][2] += data
            if not data:  # closed by the server: an attacker would come back at once
                connected, _, got = opened.pop(sock)
                lifetimes.append(time.monotonic() - connected)
                statuses.append(got[:12])
                sock.close()
                if attacking:
                    open_one()
    stop.set()
    thread.join(10)
    assert not opened, f"{len(opened)} slow connections still open 3 s after the attack stopped"
    assert not errors, errors
    # Every slow request was answered 408 and closed at its deadline (1 s from accept), never much later.
    assert len(lifetimes) >= n, (len(lifetimes), n)
    assert set(statuses) == {b"HTTP/1.1 408"}, set(statuses)
    assert 0.9 <= min(lifetimes) and max(lifetimes) < 2.0, (min(lifetimes), max(lifetimes))
    wait_for(lambda: metric_total(server.port, "millionws_handshake_failures_total", reason="timeout")
             == len(lifetimes), what="every 408 counted as a timeout")
    # Meanwhile the others were served, quickly; memory stayed flat.
    assert len(rtts) >= 10, len(rtts)
    assert statistics.median(rtts) < 0.1 and max(rtts) < 1.0, (statistics.median(rtts), max(rtts))
    assert rss_max - rss_before < 20_000_000, rss_max - rss_before
    print(f"slowloris: {len(lifetimes)} connections cut after {min(lifetimes):.2f}-{max(lifetimes):.2f} s; "
          f"neighbour echo median {statistics.median(rtts) * 1000:.1f} ms max {max(rtts) * 1000:.1f} ms; "
          f"worker RSS +{(rss_max - rss_before) / 1e6:.1f} MB")


def test_half_open_handshakes_are_bounded_and_ended(start_server):
    """Requests sent, responses never read; connections that send nothing or half a request."""
    server = start_server("--handshake-timeout", "1", "--ping-interval", "1", "--ping-timeout", "1",
                          "--close-timeout", "1", workers=2)
    echo_rtt(server)
    fds_before = settled_fds(server)
    rss_before = worker_rss(server)
    mute = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]  # never send
    halves = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    for sock in halves:
        sock.sendall(upgrade_request()[:40])
    deaf = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]  # never read
    for sock in deaf:
        sock.sendall(upgrade_request())
    wait_for(lambda: server.stats()["total"]["connections"] == 300, 5, what="300 upgrades")
    rss_peak = worker_rss(server)
    rtt = echo_rtt(server)
    # The keepalive ends the deaf ones (they never answer the ping: 1011), the deadline the others.
    wait_for(lambda: server.stats()["total"]["connections"] == 0, 6, what="deaf WebSockets ended")
    wait_for(lambda: worker_fds(server) == fds_before, 6, what="every descriptor closed")
    for sock in mute:
        sock.settimeout(1)
        assert sock.recv(100) == b""  # closed quietly: nothing was asked
    for sock in halves:
        sock.settimeout(1)
        assert sock.recv(100).startswith(b"HTTP/1.1 408")
    for sock in deaf:
        client = adopt(sock, 2.0)
        assert client.read_http_response()[0] == 101
        assert client.read_frame()[0] == 0x9  # the ping nobody answered
        assert client.read_close() == (1011, True)
    for sock in mute + halves + deaf:
        sock.close()
    assert metric_total(server.port, "millionws_disconnections_total", reason="timeout") == 300
    assert rtt < 1.0, rtt
    assert rss_peak - rss_before < 10_000_000, rss_peak - rss_before
    print(f"half-open: 500 connections, worker RSS +{(rss_peak - rss_before) / 1e3:.0f} kB, "
          f"neighbour {rtt * 1e3:.0f} ms")


# -- a peer that never reads ----------------------------------------------------------------------------

def test_peer_that_never_reads_100mb_of_echoes_costs_bounded_memory(start_server):
    server = start_server(workers=2)
    echo_rtt(server)
    pids = worker_pids(server)
    fds_before = settled_fds(server)
    rss_before = {p.pid: p.memory_info().rss for p in workers(server)}
    chunk = frame(0x2, b"z" * 65536)
    target = 100 << 20
    hogs = []
    for _ in range(4):  # on both workers, very likely
        hog = RawClient(server.port)
        hog.handshake()
        hog.sock.setblocking(False)
        hogs.append(hog)
    sent = [0] * len(hogs)
    rss_peak = dict(rss_before)
    views = [memoryview(b"") for _ in hogs]
    started = time.monotonic()
    stalled_since = time.monotonic()
    while time.monotonic() - started < 20 and time.monotonic() - stalled_since < 1.0:
        _, writable, _ = select.select([], [h.sock for h in hogs], [], 0.2)
        for i, hog in enumerate(hogs):
            if hog.sock not in writable or sent[i] >= target:
                continue
            if not views[i]:
                views[i] = memoryview(chunk)
            n = hog.sock.send(views[i])
            views[i], sent[i] = views[i][n:], sent[i] + n
            stalled_since = time.monotonic()
        for p in workers(server):
            rss_peak[p.pid] = max(rss_peak[p.pid], p.memory_info().rss)
    # The server stopped reading each hog long before it sent 100 MB: backpressure, not buffering.
    assert max(sent) < 60 << 20, sent
    rtts = [echo_rtt(server) for _ in range(20)]
    for p in workers(server):
        rss_peak[p.pid] = max(rss_peak[p.pid], p.memory_info().rss)
    growth = {pid: rss_peak[pid] - rss_before[pid] for pid in rss_before}
    assert max(growth.values()) < 50_000_000, growth
    assert statistics.median(rtts) < 0.1 and max(rtts) < 1.0, rtts
    assert worker_pids(server) == pids
    for hog in hogs:
        hog.close()
    wait_for(lambda: worker_fds(server) == fds_before, 10, what="hogs' descriptors closed")
    wait_for(lambda: server.stats()["total"]["connections"] == 0, what="hogs gone")
    print(f"never-reading peers: sent {[s >> 20 for s in sent]} MB of 100 each before the server stopped reading; "
          f"worker RSS growth {[g >> 10 for g in growth.values()]} kB; neighbour echo median "
          f"{statistics.median(rtts) * 1000:.1f} ms max {max(rtts) * 1000:.1f} ms")


def test_peer_that_pipelines_http_requests_and_never_reads_costs_bounded_memory(start_server):
    server = start_server(workers=1)  # the neighbour shares the worker
    echo_rtt(server)
    (worker,) = workers(server)
    rss_before = worker.memory_info().rss
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"  # ~11 kB answered per 36 bytes asked
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", server.port))
    hog.sendall(request * (256 * 1024 // len(request)))  # 256 KiB of requests; never read a byte
    rtt = echo_rtt(server)  # a neighbour on the same worker
    peak, until = rss_before, time.monotonic() + 1.0
    while time.monotonic() < until:  # sample the worker's memory for a second after the burst
        peak = max(peak, worker.memory_info().rss)
        time.sleep(0.05)
    hog.close()
    growth = peak - rss_before
    print(f"pipelined /metrics: worker RSS +{growth / 1e6:.1f} MB, neighbour echo {rtt:.2f} s")
    assert growth < 16 * (1 << 20), f"worker RSS +{growth / 1e6:.1f} MB for one peer (max-pending-bytes 1 MiB)"
    assert rtt < 1.0, f"a neighbour waited {rtt:.2f} s for its echo"


# -- kill -9 a worker under load -----------------------------------------------------------------------

def connection_owners(server: Server, local_ports: list[int]) -> list[int]:
    """For each client socket bound to one of ``local_ports``, the pid of the worker holding its server end."""
    owner_of = {}
    for proc in workers(server):
        for conn in proc.net_connections(kind="tcp"):
            if conn.raddr:
                owner_of[conn.raddr.port] = proc.pid
    missing = [port for port in local_ports if port not in owner_of]
    assert not missing, f"no worker holds the connections from ports {missing}"
    return [owner_of[port] for port in local_ports]


def test_kill_9_worker_under_load_others_see_nothing(start_server):
    server = start_server(workers=2)
    pids = worker_pids(server)

    async def main():
        clients = [await connect(server.url(), compression=None, max_queue=None) for _ in range(24)]
        owner = connection_owners(server, [ws.local_address[1] for ws in clients])
        assert set(owner) == set(pids), "all 24 clients on one worker"
        victim = owner[0]
        echoes: list[list[float]] = [[] for _ in clients]
        errors: list[BaseException | None] = [None] * len(clients)
        stop = asyncio.Event()

        async def load(i: int, ws) -> None:
            payload = f"client {i} ".encode() * 8
            try:
                while not stop.is_set():
                    await ws.send(payload)
                    assert await asyncio.wait_for(ws.recv(), 5) == payload
                    echoes[i].append(time.monotonic())
            except (ConnectionClosed, OSError) as exc:
                errors[i] = exc

        tasks = [asyncio.create_task(load(i, ws)) for i, ws in enumerate(clients)]
        await asyncio.sleep(0.5)  # load runs
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        await asyncio.to_thread(wait_for, lambda: len(set(worker_pids(server)) - set(pids)) == 1, 10, 0.02,
                                "the killed worker replaced")
        replaced_at = time.monotonic()
        await asyncio.sleep(1.0)  # load goes on with the new worker in place
        stop.set()
        await asyncio.gather(*tasks)
        ended_at = time.monotonic()
        for ws in clients:
            await ws.close()
        return owner, victim, echoes, errors, killed_at, replaced_at, ended_at, [ws.close_code for ws in clients]

    owner, victim, echoes, errors, killed_at, replaced_at, ended_at, codes = asyncio.run(main())
    survivors = [i for i, pid in enumerate(owner) if pid != victim]
    victims = [i for i, pid in enumerate(owner) if pid == victim]
    # The victim's clients lost their connection (abnormally: nobody could send a Close) ...
    for i in victims:
        assert errors[i] is not None and echoes[i][-1] < killed_at + 0.5, (i, errors[i])
    # ... the survivors noticed nothing: no error, echoes all along, no gap, a normal close at the end.
    gaps = []
    for i in survivors:
        assert errors[i] is None, (i, errors[i])
        times = [killed_at, *(t for t in echoes[i] if t > killed_at), ended_at]
        gaps.append(max(b - a for a, b in itertools.pairwise(times)))
        assert sum(t > replaced_at for t in echoes[i]) >= 10
        assert codes[i] == 1000
    assert max(gaps) < 1.0, max(gaps)
    new = worker_pids(server)
    assert victim not in new and len(new) == 2 and set(pids) - {victim} < set(new)
    assert server.stats()["worker_restarts"] == 1
    assert metric_total(server.port, "millionws_worker_restarts_total") == 1
    served = {int(json.loads(http_get(server.port, "/health")[1])["worker"]) for _ in range(40)}
    assert served == {0, 1}  # the new worker takes connections again
    print(f"kill -9: {len(victims)} clients dropped with the victim, {len(survivors)} survivors, "
          f"longest survivor gap {max(gaps) * 1000:.0f} ms, replaced in {(replaced_at - killed_at) * 1000:.0f} ms")


# -- EMFILE ---------------------------------------------------------------------------------------------

def limited_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nofile: int, *args: str) -> Server:
    """A 1-worker server started under ``prlimit --nofile=N:N`` (soft = hard: the supervisor raises its soft
    limit to the hard one).  ``Server`` runs ``sys.executable``: for its constructor that is a wrapper."""
    wrapper = tmp_path / "python-under-prlimit"
    wrapper.write_text(f'#!/bin/sh\nexec prlimit --nofile={nofile}:{nofile} -- {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    with monkeypatch.context() as patch:
        patch.setattr(sys, "executable", str(wrapper))
        return Server(free_port(), 1, list(args))


def test_emfile_on_accept_keeps_serving_counts_and_recovers(tmp_path, monkeypatch):
    server = limited_server(tmp_path, monkeypatch, 64, "--handshake-timeout", "30")
    clients: list[RawClient] = []
    try:
        (worker,) = workers(server)
        assert worker.rlimit(psutil.RLIMIT_NOFILE) == (64, 64)
        pid = worker.pid
        stalled = None
        for _ in range(80):
            c = RawClient(server.port, timeout=1.0)
            c.send(upgrade_request())
            try:
                assert c.read_http_response()[0] == 101
            except TimeoutError:  # connected (the kernel's accept queue), never accepted: out of fds
                stalled = c
                break
            clients.append(c)
        assert stalled is not None, "never ran out of descriptors"
        assert 30 < len(clients) < 64, len(clients)
        # Existing connections are served meanwhile.
        for i, c in enumerate(clients):
            c.send(frame(0x1, f"hello {i}".encode()))
        for i, c in enumerate(clients):
            assert c.read_frame() == (0x1, True, f"hello {i}".encode())
        assert worker_pids(server) == [pid]
        # Free a few descriptors: the stalled connection is accepted and upgraded without retrying.
        for c in clients[:4]:
            c.send(frame(0x8, close_payload(1000)))
            assert c.read_close() == (1000, True)
            c.close()
        del clients[:4]
        stalled.sock.settimeout(5)
        assert stalled.read_http_response()[0] == 101
        clients.append(stalled)
        emfile = metric_total(server.port, "millionws_accept_errors_total", reason="emfile")
        assert emfile >= 1
        assert metric_total(server.port, "millionws_accept_errors_total", reason="other") == 0
        fresh = RawClient(server.port, timeout=5)
        fresh.handshake()
        fresh.send(frame(0x1, b"new one"))
        assert fresh.read_frame() == (0x1, True, b"new one")
        clients.append(fresh)
        for c in clients:
            c.send(frame(0x1, b"still"))
            assert c.read_frame() == (0x1, True, b"still")
        assert worker_pids(server) == [pid]
        assert server.stats()["worker_restarts"] == 0
        print(f"EMFILE: {len(clients) - 1} connections held at nofile=64, accept errors counted {emfile:.0f}")
    finally:
        for c in clients:
            c.close()
        server.stop()


