"""The TLS context every peer serves wss:// with (imported by the peer scripts, which run with this folder
first on ``sys.path``): the same policy for all, TLS 1.2 at least as millionws."""

from __future__ import annotations

import ssl


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """wss:// when --tls-cert is given: TLS 1.2 at least (as millionws), otherwise the ssl module's server defaults."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key or None)
    return ctx
