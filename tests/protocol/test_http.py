from __future__ import annotations

import h11
import pytest

from millionws.protocol import http


def request(headers, method=b"GET", target=b"/echo", version=b"1.1"):
    return h11.Request(method=method, target=target, headers=headers, http_version=version)


GOOD = [(b"Host", b"x"), (b"Upgrade", b"websocket"), (b"Connection", b"keep-alive, Upgrade"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")]


def test_accept_key_matches_rfc6455_example():
    assert http.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_good_upgrade_renders_101():
    response = http.check_upgrade(request(GOOD))
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n")


def replace(name, value):
    return [(k, value if k == name else v) for k, v in GOOD if value is not None or k != name]


@pytest.mark.parametrize(("headers", "kwargs", "status", "reason"), [
    (GOOD, {"method": b"POST"}, 405, http.HS_METHOD),
    (replace(b"Upgrade", None), {}, 426, http.HS_UPGRADE_REQUIRED),
    (GOOD, {"version": b"1.0"}, 400, http.HS_BAD_REQUEST),
    (replace(b"Connection", b"keep-alive"), {}, 400, http.HS_BAD_REQUEST),
    (replace(b"Sec-WebSocket-Version", b"8"), {}, 426, http.HS_VERSION),
    (replace(b"Sec-WebSocket-Key", None), {}, 400, http.HS_BAD_REQUEST),
    (replace(b"Sec-WebSocket-Key", b"not base64!"), {}, 400, http.HS_BAD_REQUEST),
    (replace(b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAA"), {}, 400, http.HS_BAD_REQUEST),  # 15 bytes
    ([*GOOD, (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")], {}, 400, http.HS_BAD_REQUEST),
])
def test_bad_upgrades_carry_status_and_reason(headers, kwargs, status, reason):
    with pytest.raises(http.HttpError) as info:
        http.check_upgrade(request(headers, **kwargs))
    assert info.value.status == status and info.value.reason == reason


def test_version_mismatch_names_the_supported_version():
    with pytest.raises(http.HttpError) as info:
        http.check_upgrade(request(replace(b"Sec-WebSocket-Version", b"8")))
    assert ("Sec-WebSocket-Version", "13") in info.value.headers


def test_keep_alive_rules():
    assert http.keep_alive(request([(b"Host", b"x")]))
    assert not http.keep_alive(request([(b"Host", b"x"), (b"Connection", b"close")]))
    assert not http.keep_alive(request([], version=b"1.0"))
    assert http.keep_alive(request([(b"Connection", b"Keep-Alive")], version=b"1.0"))


def test_render_head_has_length_but_no_body():
    full = http.render(200, b"hello")
    head = http.render(200, b"hello", head=True)
    assert full == head + b"hello"
    assert b"Content-Length: 5\r\n" in head


def test_head_size_counts_headers():
    small = request([(b"Host", b"x")])
    big = request([(b"Host", b"x"), (b"X", b"a" * 5000)])
    assert http.head_size(big) - http.head_size(small) >= 5000
