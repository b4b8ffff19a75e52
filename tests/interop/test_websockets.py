"""The ``websockets`` client (asyncio API) over ws:// and wss://: echo, fragments, ping, close, /pubsub."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from websockets.asyncio.client import connect

from tests.conftest import free_port, wait_for
from tests.interop.conftest import SIZES, blob_of, text_of
from tests.test_metrics_helpers import metric_samples, metric_total

pytestmark = pytest.mark.e2e


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("size", SIZES)
def test_text_and_binary_echo(target, size):
    async def main():
        async with connect(target.url(), ssl=target.ssl_context(), max_size=None) as ws:
            await ws.send(text_of(size))
            assert await ws.recv() == text_of(size)
            await ws.send(blob_of(size))
            assert await ws.recv() == blob_of(size)
    run(main())


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_handshake_and_the_certificate(target, host):
    """Verified against the test CA by DNS name and by IP address SAN; ALPN http/1.1 when offered; the
    permessage-deflate the client offers by default is declined (the server does not compress)."""
    context = target.ssl_context()
    if context is not None:
        context.set_alpn_protocols(["http/1.1"])

    async def main():
        async with connect(target.url(host=host), ssl=context) as ws:
            assert ws.response.status_code == 101
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert ws.protocol.extensions == []
            tls = ws.transport.get_extra_info("ssl_object")
            if target.tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                assert tls.selected_alpn_protocol() == "http/1.1"
                assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
            else:
                assert tls is None
            await ws.send("hello")
            assert await ws.recv() == "hello"
    run(main())


def test_fragmented_messages(target):
    async def main():
        async with connect(target.url(), ssl=target.ssl_context(), max_size=None) as ws:
            await ws.send(["fr", "ag", "mé", "nt", ""])
            assert await ws.recv() == "fragmént"
            big = [b"\x00" * 65536] * 15 + [b"\x01" * 65535]  # 1 MiB - 1 in 16 frames
            await ws.send(big)
            assert await ws.recv() == b"".join(big)

            async def with_a_ping_between():  # a control frame between two fragments
                yield "a"
                await ws.ping(b"mid")
                yield "b"
            await ws.send(with_a_ping_between())
            assert await ws.recv() == "ab"
    run(main())


def test_ping_then_a_clean_close(target):
    before = target.counters("millionws_disconnections_total", "reason")["normal"]

    async def main():
        ws = await connect(target.url(), ssl=target.ssl_context())
        pong = await ws.ping(b"are you there")
        assert await asyncio.wait_for(pong, 5) >= 0
        await ws.close(code=1000, reason="bye")
        assert ws.protocol.close_sent.code == 1000
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000  # the server's answer
        assert ws.close_code == 1000
    run(main())
    target.wait_disconnected("normal", before + 1)  # the server saw the client's Close


def test_pubsub_round_trip(target):
    channel = f"interop.websockets.{target.scheme}"

    async def main():
        context = target.ssl_context()
        async with connect(target.url("/pubsub"), ssl=context) as sub, \
                connect(target.url("/pubsub", host="127.0.0.1"), ssl=context) as pub:
            # since 0: exact on several workers (docs/protocol.md, Replay): without it a publish right after the
            # answer may precede the owner worker's news of this subscriber.
            await sub.send(json.dumps({"op": "subscribe", "channels": [channel], "since": {channel: 0}, "id": 1}))
            assert json.loads(await sub.recv()) == {"op": "subscribed", "channels": [channel], "id": 1}
            await pub.send(json.dumps({"op": "publish", "channel": channel, "data": {"n": "é" * 100}, "id": "p"}))
            published = json.loads(await pub.recv())
            assert published == {"op": "published", "channel": channel, "seq": 1, "id": "p"}
            message = json.loads(await sub.recv())
            assert message == {"op": "message", "channel": channel, "seq": 1, "data": {"n": "é" * 100}}
    run(main())


def test_a_client_that_does_not_trust_the_certificate_refuses_it(start_server, test_ca):
    """The verification above is real: with the system's CAs instead of the test CA the client refuses the
    server, and the server counts one failed handshake.  Its reason is ``eof``, not ``peer_alert``: asyncio's
    SSL protocol closes the socket without flushing the alert OpenSSL wrote (a blocking ``ssl`` socket
    does send it, and the server counts ``peer_alert`` then), a client quirk."""
    admin = free_port()
    server = start_server("--tls-cert", str(test_ca.server[0]), "--tls-key", str(test_ca.server[1]),
                          "--admin-port", str(admin), "--stats-interval", "0.05", workers=1, stats_port=admin)

    async def main():
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://localhost:{server.port}/echo", ssl=ssl.create_default_context())
    run(main())

    def failures():
        return {s.labels["reason"]: s.value for s in metric_samples(admin)
                if s.name == "millionws_tls_handshake_failures_total" and s.value}
    assert wait_for(lambda: failures() in ({"eof": 1}, {"peer_alert": 1}), what="the refusal counted"), failures()
    assert metric_total(admin, "millionws_tls_handshakes_total") == 0
