"""HTTP routes of a 2-worker server: /health, /stats, /metrics, errors, keep-alive."""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.conftest import http_get, wait_for
from tests.wsraw import RawClient


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_health(server):
    status, body = http_get(server.port, "/health")
    assert status == 200
    doc = json.loads(body)
    assert doc["status"] == "ok" and doc["worker"] in (0, 1) and doc["connections"] >= 0


def test_stats_covers_every_worker(server):
    doc = server.stats()
    assert [w["worker"] for w in doc["workers"]] == [0, 1]
    for w in doc["workers"]:
        assert w["pid"] > 0 and w["rss"] > 1_000_000 and w["fds"] > 3
        for key in ("connections", "accepted", "messages_in", "messages_out", "bytes_in", "bytes_out"):
            assert w[key] >= 0
    assert doc["total"]["rss"] == sum(w["rss"] for w in doc["workers"])


def test_metrics_move_and_cover_both_workers(server):
    before = metrics(server.port)
    for name in ("millionws_connections_accepted_total", "millionws_connections_active",
                 "millionws_messages_received_total", "millionws_bytes_sent_total",
                 "millionws_process_resident_memory_bytes", "millionws_process_open_fds",
                 "millionws_loop_turn_seconds_count"):
        workers = {dict(lab).get("worker") for (n, lab) in before if n == name}
        assert workers == {"0", "1"}, (name, workers)
    assert total(before, "millionws_workers") == 2

    async def main():
        clients = [await connect(server.url(), compression=None) for _ in range(40)]
        for ws in clients:
            await ws.send("ping-me")
            assert await ws.recv() == "ping-me"
        def active():
            return total(metrics(server.port), "millionws_connections_active") >= 40
        await asyncio.to_thread(wait_for, active, 10)
        for ws in clients:
            await ws.close()
    asyncio.run(main())

    def moved():
        after = metrics(server.port)
        return (total(after, "millionws_messages_received_total")
                >= total(before, "millionws_messages_received_total") + 40
                and total(after, "millionws_disconnections_total", reason="normal")
                >= total(before, "millionws_disconnections_total", reason="normal") + 40
                and total(after, "millionws_connections_active") == 0
                # SO_REUSEPORT spread 40 connections over both workers.
                and all(after[("millionws_connections_accepted_total", (("worker", w),))]
                        > before[("millionws_connections_accepted_total", (("worker", w),))] for w in "01"))
    wait_for(moved, 10, what="counters to move on both workers")
    after = metrics(server.port)
    assert total(after, "millionws_loop_turn_seconds_count") > total(before, "millionws_loop_turn_seconds_count")
    assert total(after, "millionws_http_requests_total", status="101") >= 40


def test_errors_and_keep_alive(server):
    c = RawClient(server.port)
    c.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_http_response()[0] == 404
    c.close()
    c = RawClient(server.port)
    # Three pipelined requests on one connection, answered in order.
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nHEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
           b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = c.read_http_response()
    assert status == 200 and headers["connection"] == "keep-alive" and json.loads(body)["status"] == "ok"
    # HEAD: same headers, no body (the next response starts right after the head).
    c2 = c.buf
    assert c2.startswith(b"HTTP/1.1 200") or c._fill()
    head_end = c.buf.index(b"\r\n\r\n") + 4
    assert b"Content-Length" in c.buf[:head_end]
    c.buf = c.buf[head_end:]
    status, headers, _ = c.read_http_response()
    assert status == 405 and headers["allow"] == "GET, HEAD"
    c.close()
    c = RawClient(server.port)
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = c.read_http_response()
    assert status == 200 and headers["connection"] == "close"
    assert c.sock.recv(10) == b""  # the server closed after answering
    c.close()
