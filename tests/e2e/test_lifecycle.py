"""Process model: drain on SIGTERM, restart of a killed worker, second signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from tests.conftest import http_get, wait_for
from tests.test_metrics_helpers import metric_total
from tests.wsraw import RawClient, upgrade_request


def test_sigterm_drains_clients_with_1001_and_exits_zero(start_server):
    server = start_server("--grace", "6", "--close-timeout", "2", workers=2)

    async def main():
        clients = [await connect(server.url(), compression=None) for _ in range(20)]
        for ws in clients:
            await ws.send("x")
            assert await ws.recv() == "x"
        # A raw client that never answers the Close keeps its worker draining for close-timeout,
        # which lets us observe /health during the drain.
        stubborn = RawClient(server.port)
        stubborn.handshake()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        codes = []
        for ws in clients:
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosedOK:
                pass
            codes.append(ws.close_code)
        assert codes == [1001] * 20

        def draining():
            status, body = http_get(server.port, "/health")
            return status == 503 and json.loads(body)["status"] == "draining"
        await asyncio.to_thread(wait_for, draining, 3, 0.02, "health 503 while draining")
        # New WebSockets are refused while draining.
        c = RawClient(server.port)
        c.send(upgrade_request())
        status, _, _ = c.read_http_response()
        assert status == 503
        code, eof = stubborn.read_close()
        assert code == 1001 and eof
        return started

    started = asyncio.run(main())
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 6 + 1


def test_killed_worker_is_replaced(start_server):
    server = start_server(workers=2)
    old = server.worker_pids()
    os.kill(old[0], signal.SIGKILL)

    def replaced():
        pids = server.worker_pids()
        return pids[0] not in (0, old[0]) and pids[1] == old[1] and pids
    new = wait_for(replaced, 10, what="worker 0 restarted")
    assert psutil.pid_exists(new[0])
    assert metric_total(server.port, "millionws_worker_restarts_total") == 1

    async def main():
        for _ in range(20):  # whatever worker the kernel picks, it answers
            async with connect(server.url(), compression=None) as ws:
                await ws.send("alive")
                assert await ws.recv() == "alive"
    asyncio.run(main())


def test_second_signal_exits_at_once(start_server):
    server = start_server("--grace", "30", "--close-timeout", "30", workers=2)
    workers = [psutil.Process(p) for p in server.worker_pids()]
    c = RawClient(server.port)
    c.handshake()  # never answers the Close: the drain would take 30 s
    server.signal(signal.SIGTERM)
    wait_for(lambda: c.read_frame()[0] == 0x8, 5, what="close frame")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(5) == 1
    assert time.monotonic() - started < 3
    gone = psutil.wait_procs(workers, timeout=5)[1]
    assert not gone, "workers outlived the supervisor"


def test_supervisor_killed_takes_workers_down(start_server):
    server = start_server(workers=2)
    workers = [psutil.Process(p) for p in server.worker_pids()]
    server.proc.kill()
    server.proc.wait(5)
    alive = psutil.wait_procs(workers, timeout=8)[1]
    assert not alive, "orphaned workers"
