"""millionws check-config and gen-token: the command line an operator runs, as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import Server, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "tools-test-secret-long-enough-32b"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MILLIONWS_")}
    return subprocess.run([sys.executable, "-m", "millionws", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**clean, **(env or {})})


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


# -- check-config ---------------------------------------------------------------------------------------------

def test_check_config_prints_ok_and_the_non_defaults_with_secrets_redacted(tmp_path):
    path = toml(tmp_path, 'port = 9000\nbackend_token = "backend-token-long-enough"\n'
                          '[channel_options."chat:*"]\npresence = true\n')
    r = run("check-config", "--config", path, "--max-connections", "77", "--bus", "redis://user:pw@127.0.0.1:1",
            env={"MILLIONWS_AUTH_JWT_SECRET": SECRET})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "ok"
    assert set(lines[1:]) == {"port = 9000", "max_connections = 77", 'auth_jwt_secret = "<redacted>"',
                              "auth_required = true", 'backend_token = "<redacted>"',
                              'channel_options = "chat:* presence=on"', 'bus = "redis://user:***@127.0.0.1:1"'}
    assert SECRET not in r.stdout + r.stderr and "pw" not in r.stdout


def test_check_config_of_nothing_is_ok_and_empty():
    r = run("check-config")
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")


@pytest.mark.parametrize(("args", "env", "reason"), [
    (["--compression-level", "12"], {}, "compression_level must be within 1..9"),
    ([], {"MILLIONWS_PORT": "http"}, "MILLIONWS_PORT/--port: 'http' is not a valid int"),
    (["--auth-jwks", "/nonexistent/jwks.json"], {}, "auth_jwks: cannot read /nonexistent/jwks.json"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], {},
     "--tls-cert/--tls-key: cannot load /nonexistent/c.pem"),
    (["--bus", "amqp://x:1"], {}, "bus must be nats://host:port[,...], redis://host:port or redis+sentinel://"),
])  # fmt: skip
def test_check_config_refuses_what_serve_refuses(args, env, reason):
    checked = run("check-config", *args, env=env)
    assert checked.returncode == 2 and checked.stdout == "", checked
    assert reason in checked.stderr, checked.stderr
    # serve says the same, before it binds anything (port 0 unless the case sets it: never a clash)
    served = run("serve", *args, env={"MILLIONWS_HOST": "127.0.0.1", "MILLIONWS_PORT": "0", **env})
    assert served.returncode == 2 and reason in served.stderr, served.stderr


def test_check_config_lists_every_reason(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    r = run("check-config", "--auth-jwks", str(jwks), "--tls-cert", "/nonexistent/c.pem",
            "--tls-key", "/nonexistent/k.pem")
    assert r.returncode == 2
    reasons = r.stderr.splitlines()
    assert len(reasons) == 2 and "holds no usable key" in reasons[0] and "cannot load" in reasons[1], reasons


def test_check_config_accepts_real_tls_files(test_ca):
    cert, key, _ = test_ca.issue()
    r = run("check-config", "--tls-cert", str(cert), "--tls-key", str(key))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "ok", r.stderr


def test_check_config_contacts_the_broker_only_with_probe():
    closed = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    assert run("check-config", "--bus", closed).returncode == 0
    r = run("check-config", "--probe", "--bus", closed, "--bus-connect-timeout", "0.5")
    assert r.returncode == 2 and ("unreachable" in r.stderr or "no answer" in r.stderr), r.stderr


def test_check_config_probes_a_real_broker(nats_broker):
    r = run("check-config", "--probe", "--bus", nats_broker.url)
    assert r.returncode == 0, r.stderr


def test_check_config_and_serve_report_a_bad_file():
    line = "millionws: --config /nonexistent/millionws.toml: cannot read it: No such file or directory\n"
    r = run("check-config", "--config", "/nonexistent/millionws.toml")
    assert (r.returncode, r.stderr) == (2, line)
    r = run("serve", env={"MILLIONWS_CONFIG": "/nonexistent/millionws.toml", "MILLIONWS_PORT": "0"})
    assert (r.returncode, r.stderr) == (2, line)


def test_the_example_file_passes_check_config():
    r = run("check-config", "--config", "deploy/millionws.example.toml")
    assert r.returncode == 0, r.stderr
    assert "admin_port = 9090" in r.stdout.splitlines()


# -- gen-token ------------------------------------------------------------------------------------------------

def claims_of(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})


def test_gen_token_prints_the_claims_asked_for():
    before = time.time()
    r = run("gen-token", "--secret", SECRET, "--sub", "alice", "--channels", "news.*, chat", "--ttl", "120",
            "--aud", "app", "--iss", "me")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert r.stdout == token + "\n"
    claims = claims_of(token)
    assert (claims["sub"], claims["channels"], claims["aud"], claims["iss"]) == ("alice", ["news.*", "chat"],
                                                                                 "app", "me")
    assert before + 120 <= claims["exp"] <= time.time() + 122
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_gen_token_takes_secret_audience_and_issuer_from_the_configuration(tmp_path):
    path = toml(tmp_path, 'auth_audience = "aud-from-file"\nauth_issuer = "iss-from-file"\n')
    r = run("gen-token", "--config", path, "--sub", "bob", env={"MILLIONWS_AUTH_JWT_SECRET": SECRET})
    assert r.returncode == 0, r.stderr
    claims = claims_of(r.stdout.strip())
    assert (claims["aud"], claims["iss"], claims["channels"]) == ("aud-from-file", "iss-from-file", [])


@pytest.mark.parametrize(("args", "reason"), [
    (["--sub", "alice"], "no secret"),
    (["--secret", "short", "--sub", "alice"], "at least 16 characters"),
    (["--secret", SECRET, "--sub", "al ice"], "sub must be 1 to 128 characters"),
    (["--secret", SECRET, "--sub", "a" * 129], "sub must be 1 to 128 characters"),
    (["--secret", SECRET, "--channels", "news/*"], "channels must be a list"),
    (["--secret", SECRET, "--channels", ",".join(f"c{i}" for i in range(257))], "at most 256 channel patterns"),
    (["--secret", SECRET, "--ttl", "0"], "--ttl must be more than 0"),
    (["--secret", SECRET, "--ttl", "1e12"], "--ttl must be more than 0"),
])  # fmt: skip
def test_gen_token_refuses_what_the_server_refuses(args, reason):
    r = run("gen-token", *args)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.splitlines()[-1].startswith("millionws: gen-token: ") and reason in r.stderr, r.stderr


@pytest.fixture(scope="module")
def secured():
    server = Server(free_port(), 2, ["--auth-jwt-secret", SECRET, "--auth-audience", "app"])
    yield server
    server.stop()


def test_a_generated_token_opens_pubsub_and_its_grants_hold(secured):
    r = run("gen-token", "--secret", SECRET, "--sub", "carol", "--channels", "news.*,chat", "--ttl", "60",
            "--aud", "app")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()

    async def main() -> None:
        url = secured.url("/pubsub")
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channels": ["news.sport", "chat"], "id": 1}))
            assert json.loads(await ws.recv()) == {"op": "subscribed", "channels": ["news.sport", "chat"], "id": 1}
            await ws.send(json.dumps({"op": "subscribe", "channels": ["admin"], "id": 2}))
            reply = json.loads(await ws.recv())
            assert (reply["op"], reply["code"], reply["channel"]) == ("error", "forbidden", "admin")
            await ws.send(json.dumps({"op": "publish", "channel": "chat", "data": "hi", "id": 3}))
            frames = [json.loads(await ws.recv()) for _ in range(2)]
            assert {f["op"] for f in frames} == {"published", "message"}, frames
        # without the audience the server requires, the same tool's token is refused at the upgrade
        other = run("gen-token", "--secret", SECRET, "--sub", "carol", "--ttl", "60").stdout.strip()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers={"Authorization": f"Bearer {other}"}):
                pass
        assert refused.value.response.status_code == 401

    asyncio.run(main())


# -- serve --config ----------------------------------------------------------------------------------------------

def test_serve_runs_with_the_file_and_the_flags_over_it(tmp_path):
    """A real server takes its limits from --config; the environment overrides the file, the flag both."""
    path = toml(tmp_path, 'max_channels_per_connection = 1\n'
                          '[channel_options."room:*"]\npublish = "backend"\n')
    server = Server(free_port(), 1, ["--config", path, "--max-message-size", "4096"],
                    env={"MILLIONWS_MAX_CHANNELS_PER_CONNECTION": "2"})
    try:
        async def main() -> None:
            async with connect(server.url("/pubsub")) as ws:
                await ws.send(json.dumps({"op": "subscribe", "channels": ["a", "b"], "id": 1}))
                assert json.loads(await ws.recv())["op"] == "subscribed"  # 2 from the environment, not 1
                await ws.send(json.dumps({"op": "subscribe", "channels": ["c"], "id": 2}))
                assert json.loads(await ws.recv())["code"] == "too_many_channels"
                await ws.send(json.dumps({"op": "publish", "channel": "room:1", "data": 1, "id": 3}))
                assert json.loads(await ws.recv())["code"] == "publish_forbidden"  # the file's table of rules
                await ws.send("x" * 5000)  # over the flag's --max-message-size
                await ws.wait_closed()
                assert ws.close_code == 1009

        asyncio.run(main())
    finally:
        server.stop()
