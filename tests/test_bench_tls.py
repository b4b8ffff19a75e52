"""The load generator over wss:// and with permessage-deflate, and the drivers' --tls, at tiny scale.

Servers: the websockets peer over TLS (with and without --deflate) and a real millionws over TLS, each started
once for the module; the certificates come from ``benchmarks.tlscert`` as the drivers make them. Every mode runs
for a second or less; the module takes about 15 s.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.loadgen import wsframe
from benchmarks.servers import start_server, stop_process
from benchmarks.tlscert import TestCert, make_test_cert
from benchmarks.wscodec import ProtocolError
from tests.conftest import Server, free_port
from tests.test_benchmarks import loadgen

ROOT = Path(__file__).resolve().parent.parent
SOURCES = "127.0.0.2-127.0.0.5"
PEER = ROOT / "benchmarks" / "peers" / "websockets_server.py"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> TestCert:
    return make_test_cert(tmp_path_factory.mktemp("benchtls"))


class Peer:
    def __init__(self, cert: TestCert, log: Path, *flags: str) -> None:
        self.port = free_port()
        argv = [sys.executable, str(PEER), "--host", "{host}", "--port", "{port}", *flags]
        self.proc, _ = start_server(argv, "127.0.0.1", self.port, log, cert=cert)


@pytest.fixture(scope="module")
def wss_peer(cert: TestCert, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    peer = Peer(cert, tmp_path_factory.mktemp("logs") / "wss.log", "--tls-cert", "{cert}", "--tls-key", "{key}")
    yield peer
    stop_process(peer.proc)


@pytest.fixture(scope="module")
def deflate_peer(cert: TestCert, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    peer = Peer(
        cert, tmp_path_factory.mktemp("logs") / "wssd.log", "--tls-cert", "{cert}", "--tls-key", "{key}", "--deflate"
    )
    yield peer
    stop_process(peer.proc)


def assert_clean(report: dict, n: int) -> None:
    assert report["ok"] is True, report
    assert report["connections"]["established"] == n
    assert report["failures"] == {}
    assert report["drops"] == {}


def assert_tls(report: dict, verified: bool = True) -> None:
    tls = report["tls"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["cipher"]
    assert tls["verified"] is verified
    # the TLS part ends before the WebSocket handshake does
    assert 0 < tls["handshake_ms"]["p50"] <= report["connect"]["handshake_ms"]["max"]


# ------------------------------------------------------------------ wss:// against the websockets peer
def test_wss_idle_verifies_every_connection(wss_peer: Peer, cert: TestCert) -> None:
    n = 60
    url = f"wss://127.0.0.1:{wss_peer.port}/echo"
    report = loadgen(url, "idle", "--ca", str(cert.ca), "--connections", str(n), "--procs", "2", "--hold", "0.3",
                     "--verify-ping")
    assert_clean(report, n)
    assert_tls(report)
    assert report["idle"]["verify"] == {"sent": n, "pongs": n, "missing": 0, "unsent": 0, "window": 0}
    # The peer (asyncio TLS) sends its FIN only after our close_notify answered its own.
    assert report["closes"] == {"clean": n}
    assert report["loadgen_memory"]["pss_bytes_per_conn"] is not None


def test_wss_echo_binary_and_large_text(wss_peer: Peer, cert: TestCert) -> None:
    url = f"wss://localhost:{wss_peer.port}/echo"  # localhost: the certificate's DNS name is checked
    report = loadgen(url, "echo", "--ca", str(cert.ca), "--connections", "5", "--inflight", "4", "--duration", "0.5")
    assert_clean(report, 5)
    assert_tls(report)
    assert report["echo"]["messages"] > 0 and report["echo"]["mismatches"] == 0
    # 100 KB messages span several TLS records (16 KiB each) and several reads
    report = loadgen(url, "echo", "--insecure", "--connections", "2", "--inflight", "2", "--size", "100000", "--text",
                     "--duration", "0.5")
    assert_clean(report, 2)
    assert_tls(report, verified=False)
    assert report["echo"]["messages"] > 0 and report["echo"]["mismatches"] == 0


@pytest.mark.parametrize("close", ["ws", "fin", "rst"])
def test_wss_connect_rate(wss_peer: Peer, cert: TestCert, close: str) -> None:
    url = f"wss://127.0.0.1:{wss_peer.port}/echo"
    report = loadgen(url, "connect-rate", "--ca", str(cert.ca), "--connections", "40", "--concurrency", "8",
                     "--duration", "5", "--close", close)
    assert report["ok"] is True, report
    assert report["connect_rate"]["handshakes"] == 40
    assert report["closes"] == {"clean" if close == "ws" else close: 40}
    assert report["tls"]["handshake_ms"]["count"] == 40


def test_wss_wrong_ca_fails_each_connection_by_reason(wss_peer: Peer, tmp_path: Path) -> None:
    other = make_test_cert(tmp_path)  # a CA that did not sign the server's certificate
    report = loadgen(f"wss://127.0.0.1:{wss_peer.port}/echo", "idle", "--ca", str(other.ca), "--connections", "5",
                     "--hold", "0")
    assert report["ok"] is False
    assert report["failures"] == {"tls_certificate_verify_failed": 5}


def test_wss_options_are_checked_before_anything_starts(cert: TestCert) -> None:
    for args, message in (
        (["--url", "wss://127.0.0.1:1/echo"], "needs --ca FILE"),
        (["--url", "ws://127.0.0.1:1/echo", "--insecure"], "need a wss:// URL"),
        (["--url", "wss://127.0.0.1:1/echo", "--ca", str(cert.key)], "--ca"),
    ):
        done = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", "idle", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2 and message in done.stderr, done.stderr


# ------------------------------------------------------------------ permessage-deflate
def test_deflate_echo_inflates_compressed_replies(deflate_peer: Peer, cert: TestCert) -> None:
    url = f"wss://127.0.0.1:{deflate_peer.port}/echo"
    report = loadgen(url, "echo", "--ca", str(cert.ca), "--deflate", "--connections", "4", "--inflight", "2",
                     "--size", "3000", "--text", "--duration", "0.5")
    assert_clean(report, 4)
    assert report["echo"]["mismatches"] == 0
    deflate = report["deflate"]
    assert deflate["negotiated"] == 4 and deflate["declined"] == 0
    assert deflate["params"]["server_max_window_bits"] == 12  # websockets' default answer
    # every echo came back compressed (RSV1) and was inflated to the very bytes sent
    assert deflate["inflated_messages"] >= report["echo"]["messages"] > 0


def test_deflate_idle_counts_negotiated_and_declined(deflate_peer: Peer, wss_peer: Peer, cert: TestCert) -> None:
    report = loadgen(f"wss://127.0.0.1:{deflate_peer.port}/echo", "idle", "--ca", str(cert.ca), "--deflate",
                     "--connections", "10", "--hold", "0", "--verify-ping")
    assert_clean(report, 10)
    assert report["deflate"]["negotiated"] == 10
    # a server that declines the offer: connections are fine, but they are not deflate-negotiated ones
    report = loadgen(f"wss://127.0.0.1:{wss_peer.port}/echo", "idle", "--ca", str(cert.ca), "--deflate",
                     "--connections", "10", "--hold", "0")
    assert report["ok"] is False
    assert report["failures"] == {} and report["deflate"] == {
        "offered": True, "negotiated": 0, "declined": 10, "params": None, "inflated_messages": 0
    }


def test_compressed_frame_without_negotiation_is_a_protocol_error(deflate_peer: Peer, cert: TestCert) -> None:
    """A server that compresses (RSV1) without having agreed to: the connection is dropped, not misread."""
    from benchmarks.loadgen.worker import Conn, Plan, Worker

    plan = Plan(index=0, mode="echo", host="127.0.0.1", port=1, path="/", sources=[], connections=1, rate=0,
                max_pending=1, concurrency=1, connect_timeout=1, close_timeout=1, verify_timeout=1, drain_timeout=1,
                duration=1, inflight=1, size=64, text=False, close_mode="ws", max_size=1 << 20, hard_deadline=0)
    ours, theirs = multiprocessing.Pipe()
    worker = Worker(plan, theirs)

    class FakeSock:
        def fileno(self) -> int:
            return -1

        def close(self) -> None:
            pass

    conn = Conn(FakeSock(), 0)  # type: ignore[arg-type]
    conn.state = 2  # OPEN
    worker.live = 1
    comp = zlib.compressobj(wbits=-15)
    body = comp.compress(b"x" * 64) + comp.flush(zlib.Z_SYNC_FLUSH)
    frame = bytes((0xC2, len(body) - 4)) + body[:-4]
    worker.on_frames(conn, memoryview(frame))
    assert worker.drops == {"protocol_error": 1}
    # the same frame once deflate was negotiated: inflated back to the 64 bytes
    conn2 = Conn(FakeSock(), 0)  # type: ignore[arg-type]
    conn2.state, conn2.z = 2, False
    worker.live = 1
    out = worker.sort_frames(conn2, bytearray(frame[:1]), [memoryview(frame)[2:]])
    assert out == [b"x" * 64] and worker.inflated == 1 and conn2.z
    ours.close()
    theirs.close()


def test_deflate_response_parsing() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    accept = wsframe.accept_for(key)
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + accept

    def parse(ext: bytes | None, offered: bool = True) -> tuple[int, dict | None]:
        extra = b"" if ext is None else b"\r\nSec-WebSocket-Extensions: " + ext
        return wsframe.parse_response(head + extra, accept, offered)

    assert parse(None) == (101, None)
    assert parse(b"permessage-deflate") == (101, {})
    assert parse(b'permessage-deflate; server_no_context_takeover; server_max_window_bits="10"; '
                 b"client_max_window_bits=9") == (
        101, {"server_no_context_takeover": True, "server_max_window_bits": 10, "client_max_window_bits": 9})
    for bad in (b"permessage-deflate; server_max_window_bits=16", b"permessage-deflate; server_max_window_bits",
                b"permessage-deflate; client_max_window_bits=08", b"permessage-deflate; x=1",
                b"permessage-deflate; server_no_context_takeover=1", b"x-webkit-deflate-frame",
                b"permessage-deflate, permessage-deflate",
                b"permessage-deflate; server_no_context_takeover; server_no_context_takeover"):
        with pytest.raises(ProtocolError):
            parse(bad)
    with pytest.raises(ProtocolError):  # an extension accepted without an offer (RFC 6455 section 4.1)
        parse(b"permessage-deflate", offered=False)
    with pytest.raises(ProtocolError):
        wsframe.parse_handshake_response(head + b"\r\nSec-WebSocket-Extensions: permessage-deflate", accept)
    request, _ = wsframe.handshake_request("127.0.0.1", 80, "/echo", deflate=True)
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" in request
    assert b"Extensions" not in wsframe.handshake_request("127.0.0.1", 80, "/echo")[0]


# ------------------------------------------------------------------ millionws over TLS, and the drivers
@pytest.mark.e2e
def test_millionws_wss_every_mode(cert: TestCert) -> None:
    admin = free_port()  # /stats stays plain HTTP, on the admin port
    srv = Server(free_port(), 1, ["--ping-interval", "0", "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
                                  "--admin-port", str(admin)], stats_port=admin)
    try:
        url = f"wss://127.0.0.1:{srv.port}/echo"
        report = loadgen(url, "idle", "--ca", str(cert.ca), "--connections", "50", "--hold", "0", "--verify-ping")
        assert_clean(report, 50)
        assert report["closes"] == {"clean": 50}
        report = loadgen(url, "echo", "--ca", str(cert.ca), "--connections", "4", "--inflight", "8",
                         "--duration", "0.5")
        assert_clean(report, 4)
        assert report["echo"]["mismatches"] == 0 and report["echo"]["messages"] > 0
        report = loadgen(url, "connect-rate", "--ca", str(cert.ca), "--connections", "40", "--concurrency", "8",
                         "--duration", "5")
        assert report["ok"] is True and report["connect_rate"]["handshakes"] == 40, report
    finally:
        srv.stop()


@pytest.mark.e2e
def test_throughput_driver_tls_mixes_ws_and_wss(tmp_path: Path) -> None:
    """--tls: the peer and the {cert} command over wss://, the plain command over ws://, in one run."""
    out = tmp_path / "echo.json"
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--mode", "echo", "--runs", "1", "--tls",
           "--peer", "websockets", "--port", str(free_port()), "--sources", SOURCES,
           "--server", f"plain={sys.executable} {PEER} --host {{host}} --port {{port}}",
           "--loadgen-args", "--connections 2 --inflight 2 --duration 0.5", "--json-out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["plain"]["scheme"] == "ws" and summary["plain"]["tls"] is None
    assert summary["websockets"]["scheme"] == "wss" and summary["websockets"]["tls"]["verified"] is True
    assert all(s["all_ok"] and s["median"]["messages_per_s"] > 0 for s in summary.values())
