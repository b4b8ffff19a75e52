"""Connections behind a balancer that speaks the PROXY protocol (``--proxy-protocol``).

Theory of operation: with the flag on, every connection accepted on the main port (never the admin port)
must start with a PROXY v1 or v2 header (``protocol/proxy.py``).  At ``accept()`` the source is the
balancer: it is checked against ``--proxy-protocol-from`` (a client outside those networks could otherwise
forge its address by speaking PROXY itself) and the per-address limits wait, since they are about
clients, not the balancer.  The connection is marked ``F_PROXY``; its first bytes come here
(:meth:`ProxyGate.take`) until the header is whole, kept in the record's ``msg`` slot, which HTTP does not
use before a request starts.  Then the client's address goes through admission exactly as a direct
client's would at ``accept()``, and what followed the header goes on to the HTTP pipeline.  A connection
whose header is missing, broken or refused is closed without an answer (it may not even speak HTTP),
counted in ``millionws_proxy_refused_total{reason}``.  The handshake timeout set at accept covers the
header too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ..core.reactor import monotonic
from ..metrics import F
from ..protocol.proxy import ProxyError, parse
from .admission import Admission
from .closing import Closer
from .connection import F_PROXY, Connection

_UNTRUSTED = F["proxy_refused_untrusted"]


class ProxyGate:
    __slots__ = ("admission", "c", "closer", "keep_peer", "max_header", "networks", "start_tls")

    def __init__(self, networks: tuple, max_header: int, admission: Admission, closer: Closer,
                 counters: list[int], start_tls: Callable[[int, bytes], None] | None = None) -> None:
        self.start_tls = start_tls  # TlsTransport.start, when the main port speaks TLS
        self.networks = networks  # config.trusted_networks(--proxy-protocol-from); empty: any source
        self.max_header = max_header
        self.admission = admission
        self.keep_peer = admission.counts is not None
        self.closer = closer
        self.c = counters

    def trusted(self, source: str) -> bool:
        """At ``accept()``: may this source speak for its clients?  Counted when not."""
        if not self.networks:
            return True
        address = ipaddress.ip_address(source)
        if any(address in network for network in self.networks):
            return True
        self.c[_UNTRUSTED] += 1
        return False

    def take(self, conn: Connection, data: bytes) -> bytes | None:
        """Bytes read from a connection still owing its header: what follows the header, for HTTP, or None
        (the header is incomplete, the connection was refused and closed, or what follows is TLS's)."""
        if conn.msg:
            data = conn.msg[0] + data
        try:
            parsed = parse(data, self.max_header)
        except ProxyError as exc:
            self.c[F["proxy_refused_" + exc.reason]] += 1
            conn.msg = None
            self.closer.close(conn)
            return None
        if parsed is None:
            conn.msg = [data]
            return None
        consumed, address = parsed
        conn.msg = None
        conn.flags &= ~F_PROXY
        admission = self.admission
        if address is not None and admission.active:  # None: LOCAL / UNKNOWN, the balancer's own check
            key = admission.admit(address, monotonic())
            if key is None:  # refused and counted by admission, as at accept()
                self.closer.close(conn)
                return None
            if self.keep_peer:
                conn.peer = key
        if self.start_tls is not None:
            try:
                self.start_tls(conn.fd, data[consumed:])
            except OSError:  # the handshake failed already (counted by the transport)
                self.closer.close(conn)
            return None
        return data[consumed:]
