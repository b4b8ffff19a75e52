"""Node's ``ws`` client (tests/interop/node, pinned by package-lock.json) over ws:// and wss://:
echo, fragments with a ping between them, ping, Close 1000 both ways, /pubsub.

Each test runs one scenario of ``node/client.mjs`` and checks the JSON it prints.  Over wss:// the
client trusts the test CA only (``ca``), connects to ``127.0.0.1`` (the certificate's IP address SAN)
and refuses anything else (Node's default ``rejectUnauthorized``)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.interop.conftest import ROOT, SIZES, install

pytestmark = pytest.mark.e2e

CLIENT = ROOT / "tests" / "interop" / "node" / "client.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    install("install-node.sh", "node and the ws package")
    path = shutil.which("node")
    assert path is not None
    return path


def run(node, target, scenario: str) -> dict:
    base = target.url("", host="127.0.0.1")
    argv = [node, str(CLIENT), scenario, base, *([target.ca_path] if target.tls else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    result = json.loads(proc.stdout.splitlines()[-1]) if proc.stdout.strip() else {"error": proc.stderr}
    assert "error" not in result, result["error"]
    assert proc.returncode == 0, proc.stderr
    return result


def test_text_and_binary_echo(node, target):
    result = run(node, target, "echo")
    assert result["results"] == [{"size": size, "kind": kind, "ok": True} for size in SIZES
                                 for kind in ("text", "binary")]
    assert result["extensions"] == ""  # ws offers permessage-deflate; the server declines
    assert result["tls"] == ("TLSv1.3" if target.tls else None)
    assert result.get("authorized", True) is True
    assert result["close"] == {"code": 1000, "reason": ""}


def test_fragments_with_a_ping_between(node, target):
    result = run(node, target, "fragments")
    assert result["text"] == "fragmént"
    assert (result["bigLength"], result["bigHead"]) == ((1 << 20) - 1, [0, 1, 2, 3])
    assert result["close"]["code"] == 1000


def test_ping_then_a_clean_close(node, target):
    before = target.counters("millionws_disconnections_total", "reason")["normal"]
    result = run(node, target, "ping")
    assert result == {"pong": "are you there", "close": {"code": 1000, "reason": "bye"}}
    target.wait_disconnected("normal", before + 1)


def test_pubsub_round_trip(node, target):
    channel = f"interop.node.{target.scheme}"
    result = run(node, target, "pubsub")
    assert result["subscribed"] == {"op": "subscribed", "channels": [channel], "id": 1}
    assert result["published"] == {"op": "published", "channel": channel, "seq": 1, "id": "n"}
    assert result["message"] == {"op": "message", "channel": channel, "seq": 1, "data": {"from": "node"}}
    assert [c["code"] for c in result["closes"]] == [1000, 1000]
