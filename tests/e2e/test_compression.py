"""permessage-deflate end to end: the websockets client (which offers it by default), headless Chromium, raw
sockets for bombs and odd offers, fragmentation, and a /pubsub broadcast to compressed and plain subscribers."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import zlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.extensions import PerMessageDeflate as WsprotoDeflate

from tests.conftest import free_port, wait_for
from tests.interop.browser import Browser, chromium_path
from tests.test_metrics_helpers import metric_total
from tests.wsraw import RawClient, close_payload, frame, upgrade_request

ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
MIB = 1 << 20


@pytest.fixture(scope="module")
def deflating():
    from tests.conftest import Server
    srv = Server(free_port(), 2, ["--compression", "deflate", "--max-message-size", str(MIB),
                                  "--handshake-timeout", "2", "--close-timeout", "2"])
    yield srv
    srv.stop()


def deflate_of(ws) -> PerMessageDeflate:
    [ext] = ws.protocol.extensions
    assert isinstance(ext, PerMessageDeflate)
    return ext


@pytest.mark.parametrize("size", [0, 1, 127, 128, 4096, 65536, 100_000, MIB])
def test_websockets_client_compresses_both_ways(deflating, size):
    async def main():
        async with connect(deflating.url(), max_size=None) as ws:  # the client offers deflate by default
            assert ws.response.headers["Sec-WebSocket-Extensions"] == ANSWER
            ext = deflate_of(ws)
            assert ext.remote_no_context_takeover and ext.local_no_context_takeover
            text = ("compress me, " * (size // 13 + 1))[:size]
            blob = os.urandom(size // 2) + bytes(size - size // 2)  # half incompressible
            for _ in range(3):  # several messages: nothing carries over between them
                await ws.send(text)
                assert await ws.recv() == text
                await ws.send(blob)
                assert await ws.recv() == blob
    before = metric_total(deflating.port, "millionws_uncompressed_bytes_total", direction="out")
    asyncio.run(main())
    if size >= 4096:
        def counted():
            out = metric_total(deflating.port, "millionws_uncompressed_bytes_total", direction="out")
            return out - before >= 3 * size
        wait_for(counted, what="compressed replies counted")
        assert (metric_total(deflating.port, "millionws_compressed_bytes_total", direction="out")
                < metric_total(deflating.port, "millionws_uncompressed_bytes_total", direction="out"))
        assert metric_total(deflating.port, "millionws_compressed_bytes_total", direction="in") > 0


def test_fragmented_compressed_messages_with_a_ping_between(deflating):
    async def main():
        async with connect(deflating.url(), max_size=None) as ws:
            await ws.send(["fr" * 200, "ag" * 200, "mé" * 200, "nt"])
            assert await ws.recv() == "fr" * 200 + "ag" * 200 + "mé" * 200 + "nt"

            async def fragments():
                yield b"\x00" * 70000
                await ws.ping(b"mid")
                yield b"\x01" * 3000
            await ws.send(fragments())
            assert await ws.recv() == b"\x00" * 70000 + b"\x01" * 3000
    asyncio.run(main())


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_a_client_asking_for_a_small_server_window_gets_it(deflating, bits):
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=bits, client_max_window_bits=bits)
    payload = os.urandom(2000) * 5  # repeats 2000 bytes apart: beyond a 2^9 window

    async def main():
        async with connect(deflating.url(), extensions=[factory], compression=None, max_size=None) as ws:
            assert deflate_of(ws).remote_max_window_bits == bits
            await ws.send(payload)
            assert await ws.recv() == payload  # websockets inflates with a 2^bits window: fails otherwise
    asyncio.run(main())


def test_without_the_flag_nothing_is_negotiated(start_server):
    plain = start_server(workers=1)

    async def main():
        async with connect(plain.url()) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert ws.protocol.extensions == []
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
    asyncio.run(main())


# -- raw sockets: exact offers, exact frames ------------------------------------------------------------

def raw_upgrade(port: int, offer: str | None) -> tuple[RawClient, dict[str, str]]:
    client = RawClient(port)
    client.send(upgrade_request("/echo", extra=f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""))
    status, headers, _ = client.read_http_response()
    assert status == 101
    return client, headers


def frame_end(raw: bytes) -> int:
    """Where the one server frame at the start of ``raw`` ends (7- or 16-bit length)."""
    return 2 + raw[1] if raw[1] < 126 else 4 + int.from_bytes(raw[2:4], "big")


def read_messages(client: RawClient, answer: str, count: int) -> list:
    """The next ``count`` messages (or Close), read with a client-side wsproto that accepted ``answer``."""
    ext = WsprotoDeflate()
    ext.finalize(answer.split("; server_max_window_bits")[0])  # it inflates with 2^15, which reads any window
    reader = WSConnection(ConnectionType.CLIENT, extensions=[ext])
    reader.receive_data(client.buf)
    client.buf = b""
    got: list = []
    while len(got) < count:
        got += [ev for ev in reader.events() if isinstance(ev, TextMessage | BytesMessage | CloseConnection)]
        if len(got) >= count:
            break
        data = client.sock.recv(65536)
        if not data:
            break
        reader.receive_data(data)
    return got


@pytest.mark.parametrize(("offer", "answer"), [
    ("permessage-deflate; server_max_window_bits=8", ANSWER + "; server_max_window_bits=8"),
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9", ANSWER + "; server_max_window_bits=10"),
    ('permessage-deflate; server_max_window_bits="11"', ANSWER + "; server_max_window_bits=11"),
    ("x-webkit-deflate-frame, permessage-deflate; mystery, permessage-deflate; client_max_window_bits", ANSWER),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("permessage-deflate; server_max_window_bits", None),
    ("bogus;;;==,,\"", None),
])
def test_odd_offers(deflating, offer, answer):
    client, headers = raw_upgrade(deflating.port, offer)
    assert headers.get("sec-websocket-extensions") == answer
    text = "odd parameters, still an echo " * 40
    if answer is None:  # declined: the connection works uncompressed, and RSV1 is a protocol error
        client.send(frame(1, text.encode()))
        assert client.read_frame() == (1, True, text.encode())
        client.send(frame(1, zlib.compress(b"x")[2:], rsv=4))
        op, _, payload = client.read_frame()
        assert (op, payload[:2]) == (8, (1002).to_bytes(2, "big"))
        return
    bits = int(answer.rsplit("=", 1)[1]) if "window_bits=" in answer else 15
    co = zlib.compressobj(6, zlib.DEFLATED, -9)
    client.send(frame(1, (co.compress(text.encode()) + co.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv=4))
    [message] = read_messages(client, answer, 1)
    assert message.data == text
    # What came back was compressed within the window we answered: inflate it with exactly that window.
    client.send(frame(2, bytes(3000)))
    raw = b""
    while len(raw) < 4 or len(raw) < frame_end(raw):
        raw += client.sock.recv(65536)
    assert raw[0] == 0xC2
    inflater = zlib.decompressobj(-bits)
    payload = raw[frame_end(raw) - (raw[1] if raw[1] < 126 else int.from_bytes(raw[2:4], "big")):frame_end(raw)]
    assert inflater.decompress(payload + b"\x00\x00\xff\xff") == bytes(3000)


def test_a_deflate_bomb_gets_1009_and_the_neighbours_do_not_notice(deflating):
    neighbour, _ = raw_upgrade(deflating.port, "permessage-deflate")
    rss_before = metric_total(deflating.port, "millionws_process_resident_memory_bytes")
    too_big = metric_total(deflating.port, "millionws_disconnections_total", reason="too_big")
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = co.compress(bytes(256 * MIB)) + co.flush(zlib.Z_SYNC_FLUSH)  # 256 MiB in about 256 KB
    for fragmented in (False, True):
        client, _ = raw_upgrade(deflating.port, "permessage-deflate")
        if fragmented:
            pieces = [bomb[i:i + 16384] for i in range(0, len(bomb), 16384)]
            for i, piece in enumerate(pieces):
                try:
                    client.send(frame(2 if i == 0 else 0, piece, rsv=4 if i == 0 else 0, fin=i == len(pieces) - 1))
                except OSError:
                    break  # the server closed it: the rest is not wanted
        else:
            client.send(frame(2, bomb, rsv=4))
        op, _, payload = client.read_frame()
        assert (op, payload[:2]) == (8, (1009).to_bytes(2, "big"))
    wait_for(lambda: metric_total(deflating.port, "millionws_disconnections_total", reason="too_big")
             >= too_big + 2, what="both bombs counted as too_big")
    # Inflated in full, each would have cost 256 MiB; the bound is --max-message-size (1 MiB) + 1.
    assert metric_total(deflating.port, "millionws_process_resident_memory_bytes") < rss_before + 64 * MIB
    neighbour.send(frame(1, b"still here"))
    assert read_messages(neighbour, ANSWER, 1)[0].data == "still here"
    neighbour.send(frame(8, close_payload(1000)))


# -- /pubsub: one broadcast to compressed and plain subscribers -------------------------------------------

def test_a_broadcast_reaches_compressed_and_plain_subscribers_compressed_once_per_window(start_server):
    server = start_server("--compression", "deflate", "--max-message-size", str(MIB), workers=1)
    window9 = ClientPerMessageDeflateFactory(server_max_window_bits=9)
    document = {"headline": "the same words, again and again " * 50, "n": 1}

    async def subscriber(**kw):
        ws = await connect(server.url("/pubsub"), max_size=None, **kw)
        await ws.send(json.dumps({"op": "subscribe", "channels": ["news"]}))
        assert json.loads(await ws.recv()) == {"op": "subscribed", "channels": ["news"]}
        return ws

    async def main():
        compressed = [await subscriber() for _ in range(5)]
        plain = [await subscriber(compression=None) for _ in range(3)]
        small_window = [await subscriber(extensions=[window9], compression=None) for _ in range(2)]
        before = metric_total(server.port, "millionws_uncompressed_bytes_total", direction="out")
        body = json.dumps(document).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/publish/news", data=body,
                                         headers={"Content-Type": "application/json"})
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).read())
        received = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for ws in compressed + plain + small_window]
        assert all(r["op"] == "message" and r["data"] == document for r in received)
        assert len({json.dumps(r, sort_keys=True) for r in received}) == 1
        frame_size = len(json.dumps(received[0], separators=(",", ":")))

        def compressed_twice():  # one copy per window size (15 and 9), not one per subscriber
            return metric_total(server.port, "millionws_uncompressed_bytes_total", direction="out") - before
        wait_for(lambda: compressed_twice() >= 2 * frame_size - 20, what="the compressed copies counted")
        assert compressed_twice() < 3 * frame_size
        for ws in compressed + plain + small_window:
            await ws.close()
    asyncio.run(main())


# -- a browser ----------------------------------------------------------------------------------------

PAGE_SCRIPT = """new Promise((resolve, reject) => {
  const ws = new WebSocket(%s);
  ws.binaryType = "arraybuffer";
  const text = "a browser compresses this: " + "la la la ".repeat(2000);
  const blob = new Uint8Array(50000).fill(7);
  const got = [];
  ws.onopen = () => { ws.send(text); ws.send(blob); };
  ws.onmessage = (e) => {
    got.push(e.data);
    if (got.length === 2) {
      const bytes = new Uint8Array(got[1]);
      resolve({extensions: ws.extensions, text: got[0] === text,
               binary: bytes.length === 50000 && bytes.every((b) => b === 7)});
      ws.close(1000);
    }
  };
  ws.onerror = () => reject("websocket error");
  setTimeout(() => reject("timeout"), 10000);
})
"""


@pytest.mark.skipif(chromium_path() is None, reason="chromium is installed by scripts/test-system-deps")
def test_headless_chromium_negotiates_and_echoes(deflating):
    before = metric_total(deflating.port, "millionws_compressed_bytes_total", direction="in")
    with Browser() as browser:
        value = browser.run("return await " + PAGE_SCRIPT % json.dumps(deflating.url()) + ";")
    assert value == {"extensions": ANSWER, "text": True, "binary": True}
    wait_for(lambda: metric_total(deflating.port, "millionws_compressed_bytes_total", direction="in") > before,
             what="the browser's compressed messages counted")


# -- hypothesis against the live server: random offers, random compressed frames -----------------------------

OFFER_PARTS = st.sampled_from(["permessage-deflate", "x-webkit-deflate-frame", "server_max_window_bits",
                               "client_max_window_bits", "server_no_context_takeover", "client_no_context_takeover",
                               "=", "=8", "=9", "=15", "=16", '="10"', ";", ",", " ", "mystery", '"', "\\"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(offer=st.lists(OFFER_PARTS, max_size=12).map("".join),
       payload=st.binary(max_size=3000) | st.text(max_size=1000).map(str.encode),
       mangle=st.sampled_from(["none", "truncate", "flip", "garbage", "rsv1-continuation", "rsv1-ping"]),
       cut=st.integers(0, 50), text=st.booleans())
def test_random_offers_and_compressed_frames_never_hurt_the_server(deflating, offer, payload, mangle, cut, text):
    """Any offer gets a 101 (with a valid answer or none); any frame gets its echo or a Close 1002, 1007 or
    1009, never 1011 nor an internal error (test_a_deflate_bomb_... watches a neighbour)."""
    client = RawClient(deflating.port)
    client.send(upgrade_request("/echo", extra=f"Sec-WebSocket-Extensions: {offer}\r\n" if offer.strip() else ""))
    status, headers, _ = client.read_http_response()
    assert status == 101
    answer = headers.get("sec-websocket-extensions")
    assert answer is None or answer.startswith(ANSWER)
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = (body.compress(payload) + body.flush(zlib.Z_SYNC_FLUSH))[:-4]
    if mangle == "truncate":
        packed = packed[:cut]
    elif mangle == "flip" and packed:
        packed = packed[:cut % len(packed)] + bytes([packed[cut % len(packed)] ^ 0x5A]) + packed[cut % len(packed) + 1:]
    elif mangle == "garbage":
        packed = payload[:cut + 1]
    opcode = 1 if text else 2
    if mangle == "rsv1-continuation":
        data = frame(opcode, packed[:1], rsv=4, fin=False) + frame(0, packed[1:], rsv=4)
    elif mangle == "rsv1-ping":
        data = frame(9, payload[:100], rsv=4)
    else:
        data = frame(opcode, packed, rsv=4)
    client.send(data)
    client.send(frame(8, close_payload(1000)))
    got = read_messages(client, answer or ANSWER, 2)
    closes = [ev for ev in got if isinstance(ev, CloseConnection)]
    assert closes, got
    code = closes[0].code
    if answer is None or mangle in ("rsv1-continuation", "rsv1-ping"):
        assert code == 1002
    elif code == 1000:
        [echo] = [ev for ev in got if not isinstance(ev, CloseConnection)]
        want = zlib.decompressobj(-15).decompress(packed + b"\x00\x00\xff\xff")
        assert (echo.data.encode() if isinstance(echo, TextMessage) else echo.data) == want
    else:
        assert code in (1007, 1009), code
    event(f"answer={'yes' if answer else 'no'} close={code}")
    assert metric_total(deflating.port, "millionws_internal_errors_total") == 0
