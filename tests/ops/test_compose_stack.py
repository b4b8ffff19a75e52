"""deploy/local/compose.yml brought up for real with podman-compose: millionws + NATS + Prometheus.

With compose.podman.yml on top (stand-in NATS and Prometheus images built from deploy/local/podman/, since no
registry can be reached; the host's hard open-files limit). Prometheus, inside the stack, scrapes millionws by
its service name; a /pubsub message crosses the bus from the container to a millionws node on the host.
Grafana has no stand-in: the dashboard is tested against live metric names (test_prometheus_scrape.py).

Runs in ``just test-containers`` (see test_container.py). Skipped only where podman cannot be installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from opshelpers import LOCAL, ROOT, free_port, http_get, run_server, wait_until
from podmanhelpers import pubsub_round_trip, require_podman

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SERVICES = ["millionws", "nats", "prometheus"]


class Stack:
    def __init__(self, compose: list[str], env: dict[str, str], ports: dict[str, int]) -> None:
        self.compose, self.env, self.ports = compose, env, ports

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.compose, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"podman-compose {' '.join(args)} -> {r.returncode}\n" \
                                      f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        return r

    def prometheus(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.ports['PROMETHEUS_LOCAL_PORT']}/api/v1/query?" \
              + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url, timeout=5)
        assert status == 200, body
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_podman()
    tool = subprocess.run(["bash", str(ROOT / "tests/ops/install-podman-compose.sh")],
                          capture_output=True, text=True, timeout=600)
    assert tool.returncode == 0, tool.stderr
    project = f"millionws-test-{os.getpid()}"
    compose = [tool.stdout.strip().splitlines()[-1], "-p", project,
               "-f", str(LOCAL / "compose.yml"), "-f", str(LOCAL / "compose.podman.yml")]
    ports = {k: free_port() for k in ("MILLIONWS_LOCAL_PORT", "PROMETHEUS_LOCAL_PORT", "GRAFANA_LOCAL_PORT",
                                       "NATS_LOCAL_PORT", "NATS_MONITOR_LOCAL_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    s = Stack(compose, env, ports)
    t0 = time.monotonic()
    try:
        s.run("up", "-d", "--build", *SERVICES, timeout=600)
        print(f"stack up in {time.monotonic() - t0:.1f} s")
        wait_until(lambda: http_get(f"http://127.0.0.1:{ports['MILLIONWS_LOCAL_PORT']}/health")[0] == 200,
                   90, "millionws /health through the stack's published port")
        wait_until(lambda: http_get(f"http://127.0.0.1:{ports['PROMETHEUS_LOCAL_PORT']}/-/ready")[0] == 200,
                   90, "Prometheus /-/ready")
        yield s
    finally:
        logs = s.run("logs", check=False, timeout=60)
        print(logs.stdout[-6000:], logs.stderr[-2000:])
        s.run("down", "-v", "-t", "15", check=False, timeout=180)


def test_the_three_services_run(stack: Stack) -> None:
    r = subprocess.run([require_podman(), "ps", "--filter", f"label=io.podman.compose.project={stack.compose[2]}",
                        "--format", "{{.Labels}}"], capture_output=True, text=True, timeout=30)
    running = r.stdout
    for service in SERVICES:
        assert f"com.docker.compose.service:{service}" in running, running


def test_prometheus_scrapes_millionws_inside_the_stack(stack: Stack) -> None:
    """The target is millionws:8080, the service name on the stack's network (aardvark-dns), not the host port."""
    def up() -> list[dict]:
        return [r for r in stack.prometheus('up{job="millionws"}') if r["value"][1] == "1"]

    (series,) = wait_until(up, 60, 'up{job="millionws"} == 1', interval=1)
    assert series["metric"]["instance"] == "millionws:8080"
    assert series["metric"]["pod"] == "millionws"  # the relabelling the dashboard groups by
    workers = wait_until(lambda: stack.prometheus('millionws_workers{job="millionws"}'), 30, "millionws_workers")
    assert float(workers[0]["value"][1]) == 2  # MILLIONWS_WORKERS in compose.yml


def bus_up(base: str) -> int:
    """How many workers of the node at ``base`` have their broker connection up (millionws_bus_up)."""
    status, body = http_get(f"http://{base}/metrics")
    assert status == 200
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in body.decode().splitlines()
               if line.startswith("millionws_bus_up"))


def test_pubsub_round_trip_across_the_bus(stack: Stack, tmp_path: Path) -> None:
    """A subscriber on a second millionws node (on the host, bus = the stack's NATS through its published port)
    gets what a client publishes on the containerised node: the message crossed NATS, sequenced by JetStream."""
    nats = f"nats://127.0.0.1:{stack.ports['NATS_LOCAL_PORT']}"
    channel = f"compose.bus.{os.getpid()}"
    container = f"127.0.0.1:{stack.ports['MILLIONWS_LOCAL_PORT']}"
    with run_server(tmp_path, workers=1, extra=["--bus", nats]) as host_node:
        for base, workers in ((host_node.base.removeprefix("http://"), 1), (container, 2)):
            wait_until(lambda base=base, workers=workers: bus_up(base) == workers, 30, f"millionws_bus_up on {base}")
        published, message = asyncio.run(pubsub_round_trip(
            f"ws://127.0.0.1:{host_node.port}/pubsub", f"ws://{container}/pubsub", channel, since=0))
    # A new channel's first seq: 1, or on NATS's shard streams (the default) its shard's next sequence.
    seq = published["seq"]
    assert isinstance(seq, int) and seq >= 1
    assert published == {"op": "published", "channel": channel, "seq": seq, "id": "p"}
    assert message == {"op": "message", "channel": channel, "seq": seq, "data": {"n": 1}}
