"""Configuration that cannot work stops `millionws serve` before it accepts a connection:
one line on stderr that says what is wrong, exit status 2 (issue: fail fast, never silently)."""

from __future__ import annotations

import json
import os
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
