"""Every limit: flag, environment variable, and the behaviour past it."""

from __future__ import annotations

import asyncio
import json
import select
import threading
import time

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.conftest import http_get, wait_for
from tests.test_metrics_helpers import metric_total
from tests.wsraw import RawClient, close_payload, frame


def echo_once(server, message="still here"):
    async def main():
        async with connect(server.url(), compression=None, open_timeout=5) as ws:
            await ws.send(message)
            return await ws.recv()
    assert asyncio.run(main()) == message


@pytest.mark.parametrize("how", ["flag", "env"])
def test_max_message_size(start_server, how):
    if how == "flag":
        server = start_server("--max-message-size", "1000")
    else:
        server = start_server(env={"MILLIONWS_MAX_MESSAGE_SIZE": "1000"})

    async def main():
        async with connect(server.url(), compression=None, max_size=None) as ws:
            await ws.send("a" * 1000)
            assert await ws.recv() == "a" * 1000
            await ws.send(["b" * 600, "c" * 400])  # fragments adding up to exactly the limit
            assert len(await ws.recv()) == 1000
        async with connect(server.url(), compression=None, max_size=None) as ws:
            await ws.send(b"x" * 1001)
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1009
        async with connect(server.url(), compression=None, max_size=None) as ws:
            await ws.send(["d" * 600, "e" * 401])
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1009
    asyncio.run(main())
    wait_for(lambda: metric_total(server.port, "millionws_disconnections_total", reason="too_big") == 2)
    echo_once(server)


def test_handshake_timeout(start_server):
    server = start_server("--handshake-timeout", "0.5", workers=1)
    # Half a request: answered 408 and closed.
    c = RawClient(server.port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    status, headers, _ = c.read_http_response()
    assert status == 408 and headers["connection"] == "close"
    assert 0.3 < time.monotonic() - started < 3
    assert c.sock.recv(10) == b""
    # A connection that says nothing is closed quietly.
    c = RawClient(server.port)
    assert c.sock.recv(10) == b""
    wait_for(lambda: metric_total(server.port, "millionws_handshake_failures_total", reason="timeout") == 1)
    echo_once(server)


def test_ping_interval_keeps_answering_peer_and_drops_silent_one(start_server):
    server = start_server("--ping-interval", "0.3", "--ping-timeout", "0.3", workers=1)
    alive = RawClient(server.port)
    alive.handshake()
    silent = RawClient(server.port)
    silent.handshake()
    pings = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        opcode, fin, payload = alive.read_frame()
        assert opcode == 0x9 and fin
        pings += 1
        alive.send(frame(0xA, payload))
    assert pings >= 2
    # The silent client never answered: closed with 1011 and TCP closed.
    code, eof = silent.read_close()
    assert code == 1011 and eof
    alive.send(frame(0x1, b"after pings"))
    while True:
        opcode, _, payload = alive.read_frame()
        if opcode == 0x1:
            assert payload == b"after pings"
            break
    alive.send(frame(0x8, close_payload(1000)))
    assert alive.read_close() == (1000, True)
    wait_for(lambda: metric_total(server.port, "millionws_disconnections_total", reason="timeout") == 1)


def test_ping_interval_off_by_default(server):
    c = RawClient(server.port, timeout=0.8)
    c.handshake()
    with pytest.raises(TimeoutError):
        c.read_frame()
    c.close()


def test_max_pending_bytes_stops_reading_a_peer_that_does_not_read(start_server):
    server = start_server("--max-pending-bytes", "65536", workers=1)
    worker = psutil.Process(server.worker_pids()[0])
    rss_before = worker.memory_info().rss
    hog = RawClient(server.port)
    hog.handshake()
    hog.sock.setblocking(False)
    chunk = frame(0x2, b"z" * 60000)
    view, sent = memoryview(chunk), 0
    frames_started = 0
    while sent < 200_000_000:  # the server echoes into a peer that never reads
        if not select.select([], [hog.sock], [], 0.5)[1]:
            break  # half a second without room: the server stopped reading us
        if not view:
            view, frames_started = memoryview(chunk), frames_started + 1
        n = hog.sock.send(view)
        view, sent = view[n:], sent + n
    # The server stopped reading long before 200 MB: our own sends blocked.
    assert sent < 50_000_000, sent
    # Its memory for this peer stays bounded (pending cap + one message + kernel buffers).
    assert worker.memory_info().rss - rss_before < 30_000_000
    echo_once(server)  # a neighbour is served meanwhile
    # Once the peer reads, the server resumes and everything echoed comes back.
    hog.sock.setblocking(True)
    hog.sock.settimeout(10)
    received = []

    def reader():
        while True:
            fr = hog.read_frame()
            if fr is None or fr[0] == 0x1:
                received.append(fr)
                return
            received.append(len(fr[2]))

    thread = threading.Thread(target=reader)
    thread.start()
    hog.sock.sendall(view)  # finish the frame we were in the middle of
    hog.sock.sendall(frame(0x1, b"last"))
    thread.join(30)
    assert received[-1] == (0x1, True, b"last")
    assert received[:-1] == [60000] * (frames_started + 1)


def test_max_connections_per_worker(start_server):
    server = start_server("--max-connections", "3", workers=1)

    async def main():
        held = [await connect(server.url(), compression=None) for _ in range(3)]
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url(), compression=None)
        assert info.value.response.status_code == 503
        status, body = await asyncio.to_thread(http_get, server.port, "/health")
        assert status == 200 and json.loads(body)["connections"] == 3
        await held[0].close()
        await asyncio.to_thread(wait_for, lambda: metric_total(server.port, "millionws_connections_active") == 2)
        again = await connect(server.url(), compression=None)
        await again.send("ok")
        assert await again.recv() == "ok"
        for ws in [*held[1:], again]:
            await ws.close()
    asyncio.run(main())
    assert metric_total(server.port, "millionws_handshake_failures_total", reason="over_capacity") == 1


def test_max_request_head(start_server):
    server = start_server("--max-request-head", "1024", workers=1)
    c = RawClient(server.port)
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert c.read_http_response()[0] == 431
    c = RawClient(server.port)
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Small: " + b"a" * 500 + b"\r\n\r\n")
    assert c.read_http_response()[0] == 200


def test_close_timeout_when_peer_never_answers_our_close(start_server):
    server = start_server("--close-timeout", "0.5", "--grace", "5", workers=1)
    c = RawClient(server.port)
    c.handshake()
    server.signal(15)  # drain sends 1001; we never answer
    code, eof = c.read_close()
    assert code == 1001 and eof
    server.proc.wait(5)
    assert server.proc.returncode == 0
