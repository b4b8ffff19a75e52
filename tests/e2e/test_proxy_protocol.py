"""--proxy-protocol against a real server: the client address behind a balancer, and what is refused."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import free_port, wait_for
from tests.protocol.test_proxy import v2
from tests.test_metrics_helpers import metric_total
from tests.wsraw import RawClient, frame, upgrade_request

pytestmark = pytest.mark.e2e


def v1(address: str) -> bytes:
    return f"PROXY TCP4 {address} 127.0.0.1 40000 8080\r\n".encode()


def proxied(start_server, *args: str):
    """A server behind a (pretend) balancer; /metrics on the admin port, which takes no PROXY header."""
    admin = free_port()
    return start_server("--proxy-protocol", "--admin-port", str(admin), *args, workers=1, stats_port=admin)


def closed_without_answer(client: RawClient) -> bool:
    try:
        return client.sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_v1_and_v2_headers_then_a_websocket_and_limits_count_the_client_not_the_balancer(start_server):
    server = proxied(start_server, "--max-connections-per-ip", "1")
    first = RawClient(server.port)
    first.send(v1("198.51.100.1") + upgrade_request())  # header and request in one segment
    assert first.read_http_response()[0] == 101
    first.send(frame(1, b"hi"))
    assert first.read_frame() == (1, True, b"hi")
    second = RawClient(server.port)  # same source socket address, another client: admitted
    second.send(v2(src="203.0.113.9")[:10])  # the header split across reads
    second.send(v2(src="203.0.113.9")[10:] + upgrade_request())
    assert second.read_http_response()[0] == 101
    third = RawClient(server.port)  # the first client again: over its limit of 1
    third.send(v1("198.51.100.1") + upgrade_request())
    assert closed_without_answer(third)
    assert wait_for(lambda: metric_total(server.stats_port, "millionws_rate_limited_total", kind="connections_per_ip")
                    >= 1, what="the refusal counted against the client's address")


@pytest.mark.parametrize(("data", "reason"), [
    (upgrade_request(), "missing"),
    (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad_v1"),
    (v2(family=0x12), "unsupported"),
])
def test_a_connection_without_a_valid_header_is_closed_and_counted(start_server, data, reason):
    server = proxied(start_server)
    client = RawClient(server.port)
    client.send(data)
    assert closed_without_answer(client)
    assert wait_for(lambda: metric_total(server.stats_port, "millionws_proxy_refused_total", reason=reason) == 1)


def test_an_untrusted_source_is_closed_at_accept(start_server):
    server = proxied(start_server, "--proxy-protocol-from", "10.0.0.0/8")
    client = RawClient(server.port)
    client.send(v1("198.51.100.1") + upgrade_request())
    assert closed_without_answer(client)
    assert wait_for(lambda: metric_total(server.stats_port, "millionws_proxy_refused_total", reason="untrusted") >= 1)


def test_without_the_flag_a_proxy_header_is_bad_http(start_server):
    server = start_server(workers=1)
    client = RawClient(server.port)
    client.send(v1("198.51.100.1") + upgrade_request())
    assert client.read_http_response()[0] == 400
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(v2())
    assert sock.recv(100).startswith(b"HTTP/1.1 400")
    sock.close()
