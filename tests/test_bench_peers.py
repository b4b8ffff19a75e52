"""The opt-in benchmark peers (uWebSockets through socketify, Go gorilla) start as the drivers start them and echo.

Each peer is started once for the module with ``benchmarks.servers.start_server`` (the drivers' own code), then
checked with the load generator (binary and text echo, over ws:// and wss://) and with a raw client for what the
load generator does not look at: the opcode of each echo, fragmented messages, /fanout with /fanout/publish, 404.
A peer whose runtime is not installed here is skipped with the reason (``scripts/bench-system-deps`` and
``pip install -e '.[bench]'`` install it); under CI (``CI`` set) that is a failure instead. ~10 s, plus the first
build of the Go binary (~15 s, then cached).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from benchmarks.peers import DEFAULT_PEERS, PEERS
from benchmarks.servers import start_server, stop_process
from benchmarks.tlscert import TestCert, make_test_cert
from tests.conftest import free_port
from tests.test_benchmarks import loadgen

ROOT = Path(__file__).resolve().parent.parent
OPT_IN = ("uws", "gorilla")

pytestmark = pytest.mark.e2e


def missing_runtime(name: str) -> str:
    """Why peer ``name`` cannot run on this machine ('' if it can)."""
    if name == "uws":
        if importlib.util.find_spec("socketify") is None:
            return "socketify is not installed (pip install -e '.[bench]')"
        try:
            import socketify  # noqa: F401  (loads the bundled uWS library, which links against libuv1)
        except Exception as exc:  # an OSError from cffi's dlopen, or whatever the binding raises instead
            return f"socketify does not load here ({exc}); scripts/bench-system-deps installs libuv1"
        return ""
    sys.path.insert(0, str(PEERS["gorilla"].parent))
    try:
        import gorilla_server
    finally:
        sys.path.remove(str(PEERS["gorilla"].parent))
    return gorilla_server.missing_toolchain()


def skip_or_fail(reason: str) -> None:
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


class Peer:
    def __init__(self, name: str, log: Path, cert: TestCert | None = None) -> None:
        self.name = name
        self.port = free_port()
        tls = ["--tls-cert", "{cert}", "--tls-key", "{key}"] if cert else []
        argv = [sys.executable, str(PEERS[name]), "--host", "{host}", "--port", "{port}", *tls]
        # 120 s: the first start of gorilla compiles main.go and Go's standard library (cached afterwards).
        self.proc, _ = start_server(argv, "127.0.0.1", self.port, log, startup_timeout=120, cert=cert)

    def url(self, path: str = "/echo", scheme: str = "ws", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> TestCert:
    return make_test_cert(tmp_path_factory.mktemp("peerstls"))


@pytest.fixture(scope="module", params=OPT_IN)
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    reason = missing_runtime(request.param)
    if reason:
        skip_or_fail(f"{request.param} peer: {reason}")
    started = Peer(request.param, tmp_path_factory.mktemp("logs") / f"{request.param}.log")
    yield started
    stop_process(started.proc)


def assert_echoed(report: dict, n: int) -> None:
    assert report["ok"] is True, report
    assert report["connections"]["established"] == n
    assert report["failures"] == {} and report["drops"] == {}
    assert report["echo"]["messages"] > 0
    assert report["echo"]["mismatches"] == 0


def test_registered_but_not_in_default_peers() -> None:
    # --peers (and benchmarks/run.py's tables) keep the three peers they were built for; these are --peer NAME only.
    for name in OPT_IN:
        assert PEERS[name].is_file()
        assert name not in DEFAULT_PEERS
    assert set(DEFAULT_PEERS) <= set(PEERS)


def test_loadgen_echo_binary_and_text(peer: Peer) -> None:
    report = loadgen(peer.url(), "echo", "--connections", "10", "--inflight", "4", "--size", "64", "--duration", "1")
    assert_echoed(report, 10)
    # 1 MiB, the limit every peer shares: accepted, not a close 1009
    report = loadgen(peer.url(), "echo", "--connections", "2", "--inflight", "1", "--size", str(1 << 20), "--text",
                     "--duration", "0.5")
    assert_echoed(report, 2)


def test_same_opcode_fragments_and_pings(peer: Peer) -> None:
    with connect(peer.url(), compression=None, max_size=None, open_timeout=5, close_timeout=2) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"  # str: a text frame came back
        ws.send(b"\x00\xffbin")
        assert ws.recv(timeout=5) == b"\x00\xffbin"  # bytes: a binary frame came back
        ws.send(["frag", "mented"])  # one text message in two frames
        assert ws.recv(timeout=5) == "fragmented"
        ws.ping(b"p").wait(5)  # the server answers pings itself
    # Over the 1 MiB limit: the peer closes with 1009 (gorilla closes the socket right after, so our send may see a
    # broken pipe before the close frame is read). An echo fails the test (no exception), so does silence.
    with pytest.raises((ConnectionClosed, OSError)) as refused:
        with connect(peer.url(), compression=None, max_size=None, open_timeout=5, close_timeout=2) as ws:
            ws.send(b"x" * ((1 << 20) + 1))
            ws.recv(timeout=5)
    assert not isinstance(refused.value, TimeoutError), "no close after a message over 1 MiB"
    if isinstance(refused.value, ConnectionClosed) and refused.value.rcvd is not None:
        assert refused.value.rcvd.code == 1009


def test_fanout_publish_and_404(peer: Peer) -> None:
    with (
        connect(peer.url("/fanout"), compression=None, open_timeout=5) as sub1,
        connect(peer.url("/fanout"), compression=None, open_timeout=5) as sub2,
    ):
        assert sub1.recv(timeout=5) == '{"op":"subscribed"}'
        assert sub2.recv(timeout=5) == '{"op":"subscribed"}'
        with connect(peer.url("/fanout/publish"), compression=None, open_timeout=5) as pub:
            pub.send('{"n":1}')
            assert sub1.recv(timeout=5) == '{"n":1}'
            assert sub2.recv(timeout=5) == '{"n":1}'
    with pytest.raises(InvalidStatus) as refused:
        with connect(peer.url("/nope"), open_timeout=5):
            pass
    assert refused.value.response.status_code == 404


@pytest.mark.parametrize("name", OPT_IN)
def test_wss_echo(name: str, cert: TestCert, tmp_path: Path) -> None:
    reason = missing_runtime(name)
    if reason:
        skip_or_fail(f"{name} peer: {reason}")
    peer = Peer(name, tmp_path / "wss.log", cert)
    try:
        url = peer.url(scheme="wss", host="localhost")  # localhost: the certificate's DNS name is checked
        report = loadgen(url, "echo", "--ca", str(cert.ca), "--connections", "4", "--inflight", "2",
                         "--duration", "0.5")
        assert_echoed(report, 4)
        assert report["tls"]["verified"] is True
        assert report["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    finally:
        stop_process(peer.proc)
