"""The PROXY protocol (HAProxy's, v1 text and v2 binary), sans-IO: the client's address a balancer puts
before the first byte of a connection.

Theory of operation: behind a TCP balancer (an AWS NLB with ``proxy_protocol_v2.enabled``) every
connection comes from the balancer's address; the balancer says who the client is in a header sent before
anything else.  :func:`parse` takes what has arrived so far and answers one of three ways:

* ``None``: not enough bytes yet to decide (the caller keeps them and waits, under its handshake timeout);
* ``(consumed, address)``: a valid header of ``consumed`` bytes; ``address`` is the client's (a ``str``), or
  None when the header says LOCAL / UNKNOWN (the balancer's own health check: the socket's peer stands);
* :class:`ProxyError` with a reason, for anything else: a missing or broken header, a family this server does
  not take (UDP, UNIX), a v2 header longer than the caller allows.

Nothing is trusted that is not checked: addresses go through :mod:`ipaddress`, ports must be 0..65535, a v1
header must end within 107 bytes as the specification bounds it, a v2 length must cover its address block.
Whether a header may be believed at all (``--proxy-protocol-from``) is the server's decision, not this one's.
"""

from __future__ import annotations

import ipaddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the specification's bound, CRLF included
_V2_HEAD = 16
_FAMILIES = {0x11: (12, 4), 0x21: (36, 16)}  # TCP over IPv4, IPv6: (address block size, address size)

REASONS = ("missing", "bad_v1", "bad_v2", "unsupported", "too_long", "untrusted")


class ProxyError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of REASONS: the label of millionws_proxy_refused_total


def parse(data: bytes, max_size: int) -> tuple[int, str | None] | None:
    """See the module docstring.  ``max_size`` bounds a v2 header (a v1 header is bounded by the spec)."""
    if not data:
        return None
    if data[0] == 0x50:  # "P"
        return _parse_v1(data)
    if data[0] == 0x0D:  # "\r"
        return _parse_v2(data, max_size)
    raise ProxyError("missing", "the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[int, str | None] | None:
    if not data.startswith(V1_PREFIX):
        if V1_PREFIX.startswith(data[:6]):
            return None
        raise ProxyError("missing", "the connection does not start with a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("bad_v1", f"a PROXY v1 header ends within {V1_MAX} bytes")
        return None
    fields = data[len(V1_PREFIX):end].split(b" ")
    if fields[0] == b"UNKNOWN":
        return end + 2, None
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyError("bad_v1", "PROXY v1: TCP4|TCP6 source destination source-port destination-port")
    family, source, destination, source_port, destination_port = fields
    try:
        src = ipaddress.ip_address(source.decode("ascii"))
        dst = ipaddress.ip_address(destination.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyError("bad_v1", "PROXY v1: an address does not parse") from None
    want = 4 if family == b"TCP4" else 6
    if src.version != want or dst.version != want:
        raise ProxyError("bad_v1", "PROXY v1: the addresses are not of the family named")
    for port in (source_port, destination_port):
        if not port.isdigit() or len(port) > 5 or int(port) > 65535 or (len(port) > 1 and port[0] == 0x30):
            raise ProxyError("bad_v1", "PROXY v1: a port is a decimal 0..65535")
    return end + 2, str(src)


def _parse_v2(data: bytes, max_size: int) -> tuple[int, str | None] | None:
    if len(data) < len(V2_SIGNATURE):
        if V2_SIGNATURE.startswith(data):
            return None
        raise ProxyError("missing", "the connection does not start with a PROXY protocol header")
    if not data.startswith(V2_SIGNATURE):
        raise ProxyError("missing", "the connection does not start with a PROXY protocol header")
    if len(data) < _V2_HEAD:
        return None
    version_command, family, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyError("bad_v2", "PROXY v2: version 2, command LOCAL or PROXY")
    total = _V2_HEAD + length
    if total > max_size:
        raise ProxyError("too_long", f"PROXY v2: a header of {total} bytes (at most {max_size}, --max-proxy-header)")
    if len(data) < total:
        return None
    if version_command & 0x0F == 0:  # LOCAL: the balancer speaking for itself (health checks)
        return total, None
    shape = _FAMILIES.get(family)
    if shape is None:
        if family == 0x00:  # UNSPEC with PROXY: the balancer does not know either
            return total, None
        raise ProxyError("unsupported", "PROXY v2: only TCP over IPv4 or IPv6 is served here")
    block, size = shape
    if length < block:
        raise ProxyError("bad_v2", "PROXY v2: the length does not cover the address block")
    source = data[_V2_HEAD:_V2_HEAD + size]
    return total, str(ipaddress.ip_address(source))
