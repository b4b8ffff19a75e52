"""wss:// against a real server: echo and channels, what is refused and counted, PROXY before TLS, rotation."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import threading
import time

import pytest
from websockets.asyncio.client import connect

from tests.conftest import free_port, http_get, wait_for
from tests.e2e.test_failfast import refused, serve
from tests.test_metrics_helpers import metric_total
from tests.tlsca import TestCA, peer_serial
from tests.wsraw import RawClient, frame, upgrade_request

pytestmark = pytest.mark.e2e


def tls_server(start_server, ca: TestCA, *args: str, cert=None, workers: int = 1):
    """A wss:// server; /metrics and /stats on the plain admin port."""
    cert_path, key_path, _ = cert or ca.server
    admin = free_port()
    return start_server("--tls-cert", str(cert_path), "--tls-key", str(key_path), "--admin-port", str(admin),
                        *args, workers=workers, stats_port=admin)


def wss(server, ca: TestCA, path: str = "/echo") -> RawClient:
    """An open wss:// connection (a raw client: see serial_of_a_new_connection for why not websockets')."""
    client = RawClient(server.port, tls=ca.client_context())
    client.handshake(path)
    return client


def failures(server, reason: str) -> float:
    return metric_total(server.stats_port, "millionws_tls_handshake_failures_total", reason=reason)


def test_echo_over_wss_with_the_certificate_verified_and_the_admin_port_plain(start_server, test_ca):
    server = tls_server(start_server, test_ca)
    ws = wss(server, test_ca)
    assert ws.sock.version() == "TLSv1.3"
    assert peer_serial(ws.sock) == test_ca.server[2]
    for opcode, message in ((1, b"hello"), (2, b"\x00" * 125), (2, os.urandom(65536)), (1, "é".encode() * 300_000)):
        ws.send(frame(opcode, message))
        assert ws.read_frame() == (opcode, True, message)
    ws.send(frame(8, b"\x03\xe8"))
    assert ws.read_close() == (1000, True)
    assert http_get(server.stats_port, "/health")[0] == 200  # plain HTTP on the admin port
    assert metric_total(server.stats_port, "millionws_tls_handshakes_total") >= 1
    assert metric_total(server.stats_port, "millionws_tls_handshake_failures_total") == 0
    assert metric_total(server.stats_port, "millionws_internal_errors_total") == 0


def test_alpn_http11_and_tls12_still_accepted_older_refused(start_server, test_ca):
    server = tls_server(start_server, test_ca)
    ctx = test_ca.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() == "TLSv1.2"
        tls.sendall(upgrade_request())
        assert tls.recv(4096).startswith(b"HTTP/1.1 101 ")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="localhost")
    assert wait_for(lambda: failures(server, "protocol_version") == 1, what="the old client counted")


def test_channels_over_wss_a_broadcast_reaches_every_subscriber(start_server, test_ca):
    server = tls_server(start_server, test_ca, workers=2)
    subscribers = [wss(server, test_ca, "/pubsub") for _ in range(6)]
    for ws in subscribers:
        # since 0: exact on either worker (docs/protocol.md: without it, a subscriber on the worker that does not
        # own the channel may miss a message published right after its `subscribed`, as this one is)
        ws.send(frame(1, json.dumps({"op": "subscribe", "channels": ["news"], "since": {"news": 0}, "id": 1}).encode()))
        assert json.loads(ws.read_frame()[2])["op"] == "subscribed"
    subscribers[0].send(frame(1, json.dumps({"op": "publish", "channel": "news", "data": {"n": 1}}).encode()))
    for ws in subscribers:
        while True:
            message = json.loads(ws.read_frame()[2])
            if message.get("op") == "message":
                assert message["data"] == {"n": 1}
                break
    for ws in subscribers:
        ws.close()


def test_plain_http_to_the_tls_port_is_refused_and_counted_and_the_worker_carries_on(start_server, test_ca):
    server = tls_server(start_server, test_ca)
    client = RawClient(server.port)
    client.send(upgrade_request())
    try:
        assert client.sock.recv(4096)[:1] in (b"\x15", b"")  # an alert at most, never an HTTP answer
    except ConnectionResetError:
        pass
    assert wait_for(lambda: failures(server, "plain_http") == 1, what="plain HTTP counted")
    ws = wss(server, test_ca)
    ws.send(frame(1, b"still here"))
    assert ws.read_frame() == (1, True, b"still here")


def test_the_handshake_timeout_covers_tls(start_server, test_ca):
    server = tls_server(start_server, test_ca, "--handshake-timeout", "0.5")
    silent = RawClient(server.port)  # TCP only
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = test_ca.client_context().wrap_bio(*hello, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    half = RawClient(server.port)  # half a ClientHello
    half.send(hello[1].read()[:40])
    started = time.monotonic()
    for client in (silent, half):
        assert client.sock.recv(100) == b""
    assert time.monotonic() - started < 3
    assert wait_for(lambda: failures(server, "incomplete") == 2, what="both counted")


def tls_after(sock: socket.socket, header: bytes, ctx: ssl.SSLContext) -> ssl.SSLObject:
    """A client handshake whose ClientHello leaves in the same segment as ``header`` (a balancer's)."""
    rx, tx = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(rx, tx, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(header + tx.read())
    for _ in range(10):
        data = sock.recv(65536)
        assert data, "the server closed during the handshake"
        rx.write(data)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            sock.sendall(tx.read())
            continue
        sock.sendall(tx.read())
        obj.rx, obj.tx = rx, tx  # kept for the caller
        return obj
    raise AssertionError("no handshake")


def test_tls_after_a_proxy_header_in_the_same_segment_and_limits_see_the_client(start_server, test_ca):
    server = tls_server(start_server, test_ca, "--proxy-protocol", "--max-connections-per-ip", "1")
    first = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    obj = tls_after(first, b"PROXY TCP4 198.51.100.7 127.0.0.1 4000 443\r\n", test_ca.client_context())
    obj.write(upgrade_request())
    first.sendall(obj.tx.read())
    response = b""
    while b"\r\n\r\n" not in response:
        obj.rx.write(first.recv(65536))
        try:
            response += obj.read(4096)
        except ssl.SSLWantReadError:
            pass
    assert response.startswith(b"HTTP/1.1 101 ")
    obj.write(frame(1, b"behind a balancer"))
    first.sendall(obj.tx.read())
    # The same client address again, through another balancer connection: over its limit of 1.
    second = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with pytest.raises((AssertionError, ConnectionResetError)):
        tls_after(second, b"PROXY TCP4 198.51.100.7 127.0.0.1 4001 443\r\n", test_ca.client_context())
    assert metric_total(server.stats_port, "millionws_rate_limited_total", kind="connections_per_ip") == 1
    # Without the header, the TLS ClientHello is not a PROXY header: closed and counted.
    third = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with pytest.raises((AssertionError, ConnectionResetError)):
        tls_after(third, b"", test_ca.client_context())
    assert wait_for(lambda: metric_total(server.stats_port, "millionws_proxy_refused_total", reason="missing") == 1)
    for sock in (first, second, third):
        sock.close()


def replace(test_ca: TestCA, cert_path, key_path, name: str) -> int:
    """Swap the files in place, the way a Kubernetes secret changes (rename over); the new serial."""
    new_cert, new_key, serial = test_ca.issue(name)
    os.replace(new_key, key_path)
    os.replace(new_cert, cert_path)
    return serial


# The rotation tests use single-threaded raw clients: websockets' sync client reads in a second thread
# while the first writes, and over TLS 1.3 that occasionally loses the upgrade request (seen against the
# websockets library's own server as well: a client-side race around session tickets, not ours).
def serial_of_a_new_connection(server, test_ca: TestCA) -> int:
    client = RawClient(server.port, tls=test_ca.client_context())
    try:
        client.handshake()
        return peer_serial(client.sock)
    finally:
        client.close()


class Chatter(threading.Thread):
    """Echoes on one connection opened before a rotation, until told to stop; records any failure."""

    def __init__(self, server, test_ca: TestCA) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(server.port, tls=test_ca.client_context())
        self.client.handshake()
        self.serial = peer_serial(self.client.sock)
        self.stop = threading.Event()
        self.count = 0
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                message = f"m{self.count}".encode()
                self.client.send(frame(1, message))
                assert self.client.read_frame() == (1, True, message)
                self.count += 1
        except Exception as exc:  # reported by the test
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.client.close()
        assert self.error is None, self.error


def test_rotation_when_the_files_change_open_connections_keep_working(start_server, test_ca):
    cert_path, key_path, first = test_ca.issue("watched")
    server = tls_server(start_server, test_ca, "--tls-reload-interval", "0.2", cert=(cert_path, key_path, first),
                        workers=2)
    chatters = [Chatter(server, test_ca) for _ in range(4)]
    second = replace(test_ca, cert_path, key_path, "watched-2")
    assert wait_for(lambda: serial_of_a_new_connection(server, test_ca) == second, what="the new certificate")
    # A pair that does not load (a half-written file) keeps the one in use and says so.
    cert_path.write_text("-----BEGIN CERTIFICATE-----\nnot really\n")
    assert wait_for(lambda: metric_total(server.stats_port, "millionws_tls_reloads_total", result="failed") >= 2,
                    what="both workers refused it")
    assert serial_of_a_new_connection(server, test_ca) == second
    assert "TLS certificate reload failed" in server.output()
    for chatter in chatters:
        before = chatter.count
        assert wait_for(lambda chatter=chatter, before=before: chatter.count > before + 10)
        assert chatter.serial == first
        chatter.finish()
    assert metric_total(server.stats_port, "millionws_internal_errors_total") == 0


def test_rotation_on_sighup(start_server, test_ca):
    cert_path, key_path, first = test_ca.issue("signalled")
    server = tls_server(start_server, test_ca, "--tls-reload-interval", "0", cert=(cert_path, key_path, first),
                        workers=2)
    chatter = Chatter(server, test_ca)
    second = replace(test_ca, cert_path, key_path, "signalled-2")
    time.sleep(0.3)
    assert serial_of_a_new_connection(server, test_ca) == first  # no watching: only the signal reloads
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: metric_total(server.stats_port, "millionws_tls_reloads_total", result="ok") == 2)
    assert {serial_of_a_new_connection(server, test_ca) for _ in range(6)} == {second}
    assert server.proc.poll() is None
    chatter.finish()


def test_a_certificate_that_does_not_load_stops_the_server_at_start(tmp_path, test_ca):
    cert, key, _ = test_ca.server
    _, other_key, _ = test_ca.issue("other")
    refused(serve("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)), "--tls-cert", "missing.pem")
    refused(serve("--tls-cert", str(cert), "--tls-key", str(other_key)), "cannot load")
    refused(serve("--tls-cert", str(cert)), "tls_cert and tls_key go together")


def test_compression_over_tls_compresses_then_encrypts(start_server, test_ca):
    server = tls_server(start_server, test_ca, "--compression", "deflate", "--compression-min-size", "0")

    async def main() -> None:
        async with connect(f"wss://localhost:{server.port}/echo", ssl=test_ca.client_context()) as ws:
            assert "server_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
            for message in ("words " * 5000, os.urandom(100_000), "x"):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 5) == message

    asyncio.run(main())
    out = metric_total(server.stats_port, "millionws_compressed_bytes_total", direction="out")
    assert 0 < out < metric_total(server.stats_port, "millionws_uncompressed_bytes_total", direction="out")
    assert metric_total(server.stats_port, "millionws_internal_errors_total") == 0


def test_garbage_before_and_after_the_handshake_is_closed_counted_and_hurts_no_one(start_server, test_ca):
    server = tls_server(start_server, test_ca, "--handshake-timeout", "2")
    neighbour = wss(server, test_ca)
    rng = random.Random(11)
    for case in range(40):
        blob = rng.randbytes(rng.randrange(1, 3000))
        if case % 4 == 0:
            blob = b"\x16\x03\x01" + blob  # looks like a handshake record
        elif case % 4 == 1:
            blob = b"\x17\x03\x03" + blob  # looks like application data
        if case % 2:  # after a real handshake: records that do not authenticate
            victim = wss(server, test_ca)
            raw = victim.sock.detach()  # the same TCP connection, without its TLS
            sock = socket.socket(fileno=raw)
        else:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.settimeout(5)
        try:
            sock.sendall(blob)
            sock.shutdown(socket.SHUT_WR)  # a partial record would otherwise just wait for the rest
            while sock.recv(4096):
                pass  # an alert at most, then the server closes
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            sock.close()
        neighbour.send(frame(1, b"case %d" % case))
        assert neighbour.read_frame() == (1, True, b"case %d" % case)
    assert metric_total(server.stats_port, "millionws_internal_errors_total") == 0
    assert metric_total(server.stats_port, "millionws_tls_handshake_failures_total") >= 10
