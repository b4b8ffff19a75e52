"""deploy/Dockerfile built from the checkout with rootful podman and run: health, echo, /pubsub through the
published port, the unprivileged user, the broker extras, the HEALTHCHECK, SIGTERM draining to exit 0.

Runs in ``just test-containers`` (scripts/test-containers, which scripts/test runs after the rest of the
suite), in a pytest run of its own: it installs system packages, builds a base image once (~1.5 min, cached) and
the image itself (pip from PyPI). Skipped only where podman cannot be installed, with the installer's reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from opshelpers import free_port, http_get, wait_until
from podmanhelpers import build_image, descendants, host_uids, podman, pubsub_round_trip, require_podman, ws_echo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

UID = 10001  # the Dockerfile's USER
GRACE = 3  # MILLIONWS_GRACE: the server's drain
STOP_TIMEOUT = 15  # podman stop -t: SIGKILL after this, so a clean exit must come before it


class Container:
    def __init__(self, name: str, image: str, port: int) -> None:
        self.name, self.image, self.port = name, image, port

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def inspect(self, fmt: str) -> str:
        return podman("inspect", "--format", fmt, self.name).stdout.strip()


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    require_podman()
    tag = f"localhost/millionws:test-{uuid.uuid4().hex[:8]}"
    name = f"millionws-test-{os.getpid()}"
    t0 = time.monotonic()
    build_image(tag)
    print(f"image built in {time.monotonic() - t0:.1f} s")
    port = free_port()
    try:
        podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
               "-e", "MILLIONWS_WORKERS=2", "-e", f"MILLIONWS_GRACE={GRACE}",
               tag, "serve", timeout=120)
        c = Container(name, tag, port)

        def healthy() -> bool:
            if c.inspect("{{.State.Running}}") != "true":
                logs = podman("logs", name, check=False)
                raise AssertionError(f"container exited:\n{logs.stdout}{logs.stderr}")
            return http_get(f"http://{c.base}/health")[0] == 200

        wait_until(healthy, 60, "/health through the published port")
        yield c
    finally:
        logs = podman("logs", name, check=False)
        print(logs.stdout[-4000:], logs.stderr[-4000:])
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("rmi", "-f", tag, check=False, timeout=120)


def test_health_through_the_published_port(container: Container) -> None:
    status, body = http_get(f"http://{container.base}/health")
    assert status == 200, body


def test_websocket_echo_through_the_published_port(container: Container) -> None:
    assert asyncio.run(ws_echo(f"ws://{container.base}/echo", "héllo container")) == "héllo container"


def test_pubsub_round_trip_through_the_published_port(container: Container) -> None:
    url = f"ws://{container.base}/pubsub"
    # Two connections, maybe two workers: without since, a publish right after "subscribed" may be handled
    # by the channel's owner worker before it learnt of the subscriber (docs/protocol.md); since 0 is exact.
    published, message = asyncio.run(pubsub_round_trip(url, url, "container.test", since=0))
    assert published == {"op": "published", "channel": "container.test", "seq": 1, "id": "p"}
    assert message == {"op": "message", "channel": "container.test", "seq": 1, "data": {"n": 1}}


def test_the_server_runs_as_the_unprivileged_user(container: Container) -> None:
    assert podman("exec", container.name, "id", "-u").stdout.strip() == str(UID)
    assert container.inspect("{{.Config.User}}") == f"{UID}:{UID}"
    # every process of the container, seen from the host (rootful podman: no user namespace, uids are host uids)
    pid = int(container.inspect("{{.State.Pid}}"))
    procs = descendants(pid)
    assert len(procs) >= 3, f"supervisor + 2 workers expected, found {procs}"  # MILLIONWS_WORKERS=2
    for p in procs:
        assert host_uids(p) == [UID] * 4, (p, host_uids(p))


def test_the_image_carries_the_broker_extras(container: Container) -> None:
    r = podman("exec", container.name, "python", "-c",
               "import nats, redis, sys; print(nats.__name__, redis.__version__, sys.version_info[:2])")
    assert r.stdout.startswith("nats "), r.stdout
    # and nothing of the test extras
    r = podman("exec", container.name, "python", "-c", "import pytest", check=False)
    assert r.returncode != 0


def test_healthcheck_is_kept_and_passes(container: Container) -> None:
    """--format docker keeps HEALTHCHECK (the OCI format drops it), and podman's own check of it passes."""
    health = json.loads(container.inspect("{{json .Config.Healthcheck}}"))
    assert health and health["Test"][0] in ("CMD", "CMD-SHELL") and "/health" in " ".join(health["Test"])
    podman("healthcheck", "run", container.name)


def test_sigterm_drains_and_exits_0_within_the_grace_period(container: Container) -> None:
    """Last in this module: podman stop sends the image's STOPSIGNAL (SIGTERM); the server closes its open
    WebSocket (1001, going away) and exits 0 before podman would SIGKILL."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    assert container.inspect("{{.Config.StopSignal}}") in ("SIGTERM", "15")

    async def main() -> tuple[int | None, float]:
        async with connect(f"ws://{container.base}/echo") as ws:
            await ws.send("before stop")
            assert await ws.recv() == "before stop"
            t0 = time.monotonic()
            stop = asyncio.create_task(asyncio.to_thread(
                podman, "stop", "-t", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), STOP_TIMEOUT)
            code = ws.close_code
            await stop
            return code, time.monotonic() - t0

    close_code, elapsed = asyncio.run(main())
    assert close_code == 1001, close_code
    assert container.inspect("{{.State.ExitCode}}") == "0", podman("logs", container.name, check=False).stderr
    assert elapsed < GRACE + 5 < STOP_TIMEOUT, f"stopped in {elapsed:.1f} s: killed, not drained"
