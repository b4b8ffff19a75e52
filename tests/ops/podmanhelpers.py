"""Rootful podman for the container tests (test_container.py, test_compose_stack.py).

``require_podman()`` runs tests/ops/install-podman.sh (idempotent: packages, containers.conf, the cached base
image) and skips, with the installer's own words, only where podman cannot be installed (not root and no sudo,
no apt); any later failure (the base image, a build, a run) is a test failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from opshelpers import ROOT

INSTALLER = ROOT / "tests" / "ops" / "install-podman.sh"
_ready: dict[str, str] = {}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def unavailable(reason: str) -> None:
    """Skip with ``reason`` where the machine cannot run this; in CI (``CI`` set: root, apt) fail instead,
    as the interop tests do, so that a broken installer is never a green run."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def require_podman() -> str:
    """The podman executable, installed and configured; skip (with the reason) where it cannot be installed."""
    if "podman" in _ready:
        return _ready["podman"]
    if os.geteuid() != 0 and not shutil.which("sudo"):
        unavailable("podman cannot be installed: rootful podman needs root (or sudo), and this user has neither")
    if not shutil.which("apt-get") and not shutil.which("podman"):
        unavailable("podman cannot be installed: no podman on PATH and no apt-get to install Debian's")
    r = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=900)
    podman = shutil.which("podman")
    if podman is None:
        unavailable(f"podman cannot be installed here: install-podman.sh exited {r.returncode}:\n"
                    f"{_tail(r.stdout + r.stderr)}")
    assert r.returncode == 0, f"install-podman.sh failed after installing podman:\n{_tail(r.stdout + r.stderr)}"
    _ready["podman"] = podman
    return podman


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([require_podman(), *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args)} -> {r.returncode}\n{_tail(r.stdout + r.stderr, 40)}"
    return r


def build_image(tag: str, timeout: float = 900) -> None:
    """deploy/Dockerfile from the checkout, as `docker build` would (docker format keeps HEALTHCHECK)."""
    podman("build", "--format", "docker", "-f", str(ROOT / "deploy" / "Dockerfile"),
           "--ignorefile", str(ROOT / "deploy" / "Dockerfile.dockerignore"),
           "-t", tag, str(ROOT), timeout=timeout)


def host_uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a host process (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/*/stat (no psutil needed in the test process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


async def ws_echo(url: str, text: str) -> str:
    from websockets.asyncio.client import connect

    async with connect(url) as ws:
        await ws.send(text)
        return await asyncio.wait_for(ws.recv(), 10)


async def pubsub_round_trip(sub_url: str, pub_url: str, channel: str, since: int | None = None) -> tuple[dict, dict]:
    """Subscribe on one connection, publish on another (possibly another node); the ack and the message.

    On two workers or two nodes, pass ``since=0``: "subscribed" does not promise that the channel's owner
    worker (or the node's broker subscription) knows of the subscriber yet, and a message published on
    another connection in between would only come by replay (docs/protocol.md)."""
    from websockets.asyncio.client import connect

    async with connect(sub_url) as sub, connect(pub_url) as pub:
        async def recv(ws, what: str) -> dict:
            try:
                return json.loads(await asyncio.wait_for(ws.recv(), 15))
            except TimeoutError:
                raise AssertionError(f"no {what} within 15 s") from None

        doc = {"op": "subscribe", "channels": [channel], "id": 1}
        if since is not None:
            doc["since"] = {channel: since}
        await sub.send(json.dumps(doc))
        assert await recv(sub, "subscribe answer") == {"op": "subscribed", "channels": [channel], "id": 1}
        await pub.send(json.dumps({"op": "publish", "channel": channel, "data": {"n": 1}, "id": "p"}))
        published = await recv(pub, "publish answer")
        message = await recv(sub, f"message after {published}")
        return published, message
