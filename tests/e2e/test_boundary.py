"""The exception boundary, end to end: a bug in the code of one unit of work (a message, a request,
a record between workers) ends that unit only.  Faults are injected into a real server through a
sitecustomize module, so the production code carries no test hook."""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ROOT, http_get, wait_for
from tests.e2e.test_pubsub import channel_owned_by
from tests.e2e.test_routes import metrics, total

FAULTS = '''
from millionws.apps import echo, routes
from millionws.pubsub import routes as pubsub_routes

_on_message = echo.Echo.on_message
def on_message(self, conn, is_text, payload):
    if payload == b"boom":
        raise RuntimeError("injected fault in a message handler")
    return _on_message(self, conn, is_text, payload)
echo.Echo.on_message = on_message

_health = routes.App.health
def health(self, head, keep_alive, query=b""):
    if b"boom" in query:
        raise RuntimeError("injected fault in an HTTP handler")
    return _health(self, head, keep_alive, query)
routes.App.health = health

_sequence = pubsub_routes.MeshRoute.sequence
def sequence(self, channel, data, t0):
    if channel.startswith("boom"):
        raise RuntimeError("injected fault in the sequencer")
    return _sequence(self, channel, data, t0)
pubsub_routes.MeshRoute.sequence = sequence
'''


@pytest.fixture
def faulty(start_server, tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(FAULTS)
    return start_server("--publish-timeout", "0.5", env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})


def restarts(port: int) -> float:
    return total(metrics(port), "millionws_worker_restarts_total")


def test_a_message_handler_that_raises_closes_that_connection_with_1011_only(faulty):
    pids = faulty.worker_pids()

    async def main():
        neighbours = [await connect(faulty.url(), compression=None) for _ in range(8)]
        for _ in range(20):
            victim = await connect(faulty.url(), compression=None)
            await victim.send(b"boom")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(victim.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        for ws in neighbours:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 10) == "still here"

    asyncio.run(main())
    assert faulty.worker_pids() == pids and restarts(faulty.port) == 0
    wait_for(lambda: total(metrics(faulty.port), "millionws_internal_errors_total", where="connection") == 20, 5)
    assert total(metrics(faulty.port), "millionws_disconnections_total", reason="error") >= 20
    # Logged with its traceback, but rate-limited: 20 faults within seconds make one line per worker at most.
    logged = faulty.output().count("internal error in connection")
    assert 1 <= logged <= 2, faulty.output()
    assert "injected fault in a message handler" in faulty.output()


def test_an_http_handler_that_raises_answers_500_and_the_worker_goes_on(faulty):
    pids = faulty.worker_pids()
    for _ in range(10):
        status, body = http_get(faulty.port, "/health?boom")
        assert status == 500 and json.loads(body) == {"error": "internal error"}
        assert http_get(faulty.port, "/health")[0] == 200
    assert faulty.worker_pids() == pids and restarts(faulty.port) == 0
    wait_for(lambda: total(metrics(faulty.port), "millionws_internal_errors_total", where="http") == 10, 5)


def test_a_record_that_breaks_the_owner_is_dropped_and_the_publisher_still_gets_an_answer(faulty):
    pids = faulty.worker_pids()
    channel = channel_owned_by(1, "boom")
    statuses = []
    for _ in range(12):  # new connections: some land on the owner (500), some on the other worker (503)
        conn = http.client.HTTPConnection("127.0.0.1", faulty.port, timeout=10)
        conn.request("POST", f"/publish/{channel}", b"1")
        response = conn.getresponse()
        statuses.append(response.status)
        if response.status == 503:
            doc = json.loads(response.read())
            assert doc["code"] == "publish_timeout" and response.getheader("Retry-After") == "1"
        conn.close()
    assert set(statuses) <= {500, 503}

    def counted() -> bool:  # another worker's counters reach a scrape within 0.25 s
        samples = metrics(faulty.port)
        return (total(samples, "millionws_internal_errors_total", where="mesh") == statuses.count(503)
                and total(samples, "millionws_internal_errors_total", where="http") == statuses.count(500))
    wait_for(counted, 5, what="each fault counted where it happened")
    wait_for(lambda: faulty.worker_pids() == pids and restarts(faulty.port) == 0, 5, what="no restart")
    # The mesh link still works for everyone else.
    conn = http.client.HTTPConnection("127.0.0.1", faulty.port, timeout=10)
    conn.request("POST", f"/publish/{channel_owned_by(1, 'fine')}", b"2")
    assert conn.getresponse().status == 200


LOST_ANSWERS = '''
from millionws.pubsub import pending

pending.Pending.acked = lambda self, req, seq, error, reach: None  # a PUBACK that is lost on the way back
pending.Pending.expire = lambda self, now: None  # ... and a hub that forgets to time it out
'''


def test_a_deferred_answer_that_never_comes_is_answered_by_the_backstop(start_server, tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(LOST_ANSWERS)
    server = start_server("--publish-timeout", "0.3", env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    channel = channel_owned_by(1, "lost")
    statuses = set()
    for _ in range(16):  # some land on worker 0, whose publish to the owner waits for a PUBACK that never comes
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", f"/publish/{channel}", b"1")
        response = conn.getresponse()
        statuses.add(response.status)
        if response.status == 503:
            assert json.loads(response.read())["code"] == "publish_timeout"
        conn.close()
    assert statuses <= {200, 503} and 503 in statuses
