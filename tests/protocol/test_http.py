from __future__ import annotations

import base64
import binascii

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def reference_check_upgrade(request) -> bytes:
    """check_upgrade as it was before its one-pass rewrite: the answers must not change."""
    if request.method != b"GET":
        raise http.HttpError(405, "", http.HS_METHOD)
    if b"websocket" not in http.header_values(request, b"upgrade"):
        raise http.HttpError(426, "", http.HS_UPGRADE_REQUIRED)
    if request.http_version != b"1.1":
        raise http.HttpError(400, "", http.HS_BAD_REQUEST)
    if b"upgrade" not in http.header_values(request, b"connection"):
        raise http.HttpError(400, "", http.HS_BAD_REQUEST)
    if [v for k, v in request.headers if k == b"sec-websocket-version"] != [b"13"]:
        raise http.HttpError(426, "", http.HS_VERSION)
    keys = [v for k, v in request.headers if k == b"sec-websocket-key"]
    if len(keys) != 1:
        raise http.HttpError(400, "", http.HS_BAD_REQUEST)
    try:
        if len(base64.b64decode(keys[0].strip(), validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise http.HttpError(400, "", http.HS_BAD_REQUEST) from None
    return b"101"


def outcome(check, request) -> tuple[int, int]:
    try:
        check(request)
    except http.HttpError as error:
        return error.status, error.reason
    return 101, -1


HEADER_CHOICES = [(b"Upgrade", b"websocket"), (b"Upgrade", b"WebSocket, h2c"), (b"Upgrade", b"h2c"),
                  (b"Upgrade", b", websocket"), (b"Connection", b"Upgrade"), (b"Connection", b"keep-alive, UPGRADE"),
                  (b"Connection", b"close"), (b"Connection", b"upgrade2"), (b"Sec-WebSocket-Version", b"13"),
                  (b"Sec-WebSocket-Version", b"8"), (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                  (b"Sec-WebSocket-Key", b"short"), (b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAAAA=")]


@settings(max_examples=400, deadline=None)
@given(headers=st.lists(st.sampled_from(HEADER_CHOICES), max_size=8), method=st.sampled_from([b"GET", b"POST"]),
       version=st.sampled_from([b"1.1", b"1.0"]))
def test_check_upgrade_answers_as_before(headers, method, version):
    headers = [*headers, (b"Host", b"x")]  # exactly one, as h11 insists
    req = request(headers, method, version=version)
    assert outcome(http.check_upgrade, req) == outcome(reference_check_upgrade, req)
