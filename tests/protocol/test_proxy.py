"""The PROXY protocol parser (millionws/protocol/proxy.py): v1 and v2, split anywhere, and what it refuses."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from millionws.protocol.proxy import V2_SIGNATURE, ProxyError, parse

MAX = 4096


def v2(command: int = 1, family: int = 0x11, src: str = "203.0.113.7", dst: str = "10.0.0.1",
       ports: tuple[int, int] = (51000, 8080), tlvs: bytes = b"", length: int | None = None) -> bytes:
    if family == 0x11:
        block = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", *ports)
    elif family == 0x21:
        block = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + struct.pack("!HH", *ports)
    else:
        block = b""
    body = block + tlvs
    return V2_SIGNATURE + bytes((0x20 | command, family)) + struct.pack("!H", len(body) if length is None
                                                                         else length) + body


V1 = b"PROXY TCP4 198.51.100.22 10.0.0.1 35646 80\r\n"


@pytest.mark.parametrize(("header", "address"), [
    (V1, "198.51.100.22"),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n", "2001:db8::1"),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff:f...f 1.2.3.4 1 2\r\n", None),
    (v2(), "203.0.113.7"),
    (v2(family=0x21, src="2001:db8::7", dst="2001:db8::1"), "2001:db8::7"),
    (v2(tlvs=b"\x01\x00\x08http/1.1" + b"\xea\x00\x05\x01vpce"), "203.0.113.7"),  # TLVs (AWS) are skipped
    (v2(command=0, family=0x00), None),  # LOCAL: the balancer's health check
    (v2(family=0x00), None),  # UNSPEC
])
def test_a_valid_header_gives_its_length_and_the_client(header: bytes, address: str | None):
    assert parse(header + b"GET / HTTP/1.1\r\n", MAX) == (len(header), address)
    for cut in range(len(header)):  # any prefix: wait for more, never a verdict
        assert parse(header[:cut], MAX) is None, cut


@pytest.mark.parametrize(("data", "reason"), [
    (b"GET / HTTP/1.1\r\n\r\n", "missing"),
    (b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "missing"),
    (b"\r\n\r\nGET / HTTP/1.1", "missing"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "bad_v1"),
    (b"PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n", "bad_v1"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "bad_v1"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad_v1"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "bad_v1"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad_v1"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1"),
    (b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n", "bad_v1"),
    (b"PROXY " + b"A" * 120, "bad_v1"),  # no CRLF within 107 bytes
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "bad_v2"),  # version 1
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "bad_v2"),  # command 2
    (v2(length=4) + bytes(8), "bad_v2"),  # shorter than its address block
    (v2(family=0x12), "unsupported"),  # UDP
    (v2(family=0x31, length=216) + bytes(216), "unsupported"),  # UNIX
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "too_long"),  # refused at the length, before 64 KiB arrive
])
def test_a_broken_or_foreign_header_is_refused_with_its_reason(data: bytes, reason: str):
    with pytest.raises(ProxyError) as refused:
        parse(data, MAX)
    assert refused.value.reason == reason


@given(st.binary(max_size=300))
def test_any_bytes_give_a_verdict_or_a_wait_never_another_exception(data: bytes):
    try:
        result = parse(data, MAX)
    except ProxyError:
        return
    if result is not None:
        consumed, address = result
        assert 0 < consumed <= len(data)
        assert address is None or ipaddress.ip_address(address)
