"""Configuration that cannot work stops `millionws serve` before it accepts a connection:
one line on stderr that says what is wrong, exit status 2 (issue: fail fast, never silently)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, http_get, wait_for

SECRET = "a-secret-of-at-least-16-chars"


def serve(*flags: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "millionws", "serve", "--host", "127.0.0.1", "--workers", "1", *flags]
    if "--port" not in flags:
        cmd += ["--port", str(free_port())]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def refused(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("millionws: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_missing_jwks_file(tmp_path: Path):
    refused(serve("--auth-jwks", str(tmp_path / "nope.json")), "cannot read", "nope.json")


@pytest.mark.parametrize("content", ['{"keys": []}', "not json", "[1, 2]", '{"keys": [{"kty": "nope"}]}'])
def test_jwks_without_a_usable_key(tmp_path: Path, content: str):
    path = tmp_path / "jwks.json"
    path.write_text(content)
    refused(serve("--auth-jwks", str(path)), "no usable key")


def test_unreadable_jwks_file(tmp_path: Path):
    if os.geteuid() == 0:
        path = tmp_path  # a directory: unreadable as a file, even for root
    else:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": []}))
        path.chmod(0)
    refused(serve("--auth-jwks", str(path)), "cannot read")


@pytest.mark.parametrize(("flags", "words"), [
    (["--trust-user-param", "--auth-jwt-secret", SECRET], ["trust_user_param contradicts auth"]),
    (["--auth-audience", "app"], ["auth_audience/auth_issuer need"]),
    (["--auth-jwt-secret", "short"], ["at least 16"]),
    (["--backend-token", "short"], ["backend_token must be at least 16"]),
    (["--auth-required"], ["auth_required needs"]),
    (["--max-json-depth", "0"], ["max_json_depth must be > 0"]),
    (["--max-json-depth", "100000"], ["at most 512"]),
    (["--publish-timeout", "0"], ["publish_timeout must be > 0"]),
    (["--bus", "kafka://x"], ["bus must be"]),
])
def test_contradictory_or_impossible_flags(flags: list[str], words: list[str]):
    refused(serve(*flags), *words)


def test_a_second_millionws_on_the_same_port_is_refused(start_server):
    first = start_server()
    result = serve("--port", str(first.port))
    refused(result, f"port {first.port} is already served by another millionws")
    assert http_get(first.port, "/health")[0] == 200  # the first one is untouched
    # ... and the admin port is claimed too.
    admin = free_port()
    second = start_server("--admin-port", str(admin), stats_port=admin)
    refused(serve("--admin-port", str(admin)), f"port {admin} is already served")
    assert http_get(second.port, "/health")[0] == 200


def test_the_port_is_free_again_once_the_server_is_gone(start_server):
    first = start_server(workers=1)
    port = first.port
    first.stop()  # killed: the kernel releases its claim on the port with the process
    proc = subprocess.Popen([sys.executable, "-m", "millionws", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: http_get(port, "/health")[0] == 200, 15, what="restarted server on the same port")
    finally:
        proc.terminate()
        proc.wait(15)


# -- the bus -----------------------------------------------------------------------------------


def test_bus_whose_client_library_is_missing(tmp_path: Path):
    shadow = tmp_path / "nats"  # a package that hides the real nats-py, as on a machine without the extra
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named nats')\n")
    result = serve("--bus", "nats://127.0.0.1:4222", env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    refused(result, "nats", "pip install")


def test_nats_without_jetstream(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 15,
                 what="nats-server accepting")
        refused(serve("--bus", f"nats://127.0.0.1:{port}"), "JetStream")
    finally:
        proc.kill()
        proc.wait(10)


def test_unreachable_broker_starts_alive_but_not_ready(start_server):
    closed = free_port()
    server = start_server("--bus", f"nats://127.0.0.1:{closed}")
    status, body = http_get(server.port, "/health")
    assert status == 200 and json.loads(body)["bus"]["up"] is False
    status, body = http_get(server.port, "/health?ready")
    doc = json.loads(body)
    assert status == 503 and doc["status"] == "not_ready" and doc["bus"]["error"]
    # Said at start and from the first failure, with the reason, not at debug level.
    wait_for(lambda: "WARNING" in server.output() and ("refused" in server.output().lower()
                                                       or f"127.0.0.1:{closed}" in server.output()), 10,
             what="the broker failure logged")
    # A publish is refused at once, not parked.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("POST", "/publish/x", b"1")
    response = conn.getresponse()
    assert response.status == 503 and json.loads(response.read())["code"] == "unavailable"
