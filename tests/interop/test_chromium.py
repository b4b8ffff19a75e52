"""Headless Chromium's ``WebSocket`` over ws:// and wss://: echo, Close 1000 both ways, server pings,
/pubsub, and no compression (Chromium offers permessage-deflate; the server declines it).

The browser (``browser.py``, one per module) trusts the server's key through
``--ignore-certificate-errors-spki-list`` with the SHA-256 of ``test_ca.server``'s public key: that key
only, no blanket ``--ignore-certificate-errors``; a server with another certificate of the same test CA
is refused (last test).  The page API cannot send a ping or choose fragments: the server's pings are
answered by the browser (``SERVER_ARGS``: a ping every 0.2 s, 2 s to answer, or Close 1011 and a
``timeout`` disconnection the module's counter check would see)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import free_port, wait_for
from tests.interop.browser import Browser, chromium_path, spki_flag
from tests.interop.conftest import SIZES, install
from tests.test_metrics_helpers import metric_samples

pytestmark = pytest.mark.e2e

SERVER_ARGS = ["--ping-interval", "0.2", "--ping-timeout", "2"]  # 2 s: a loaded machine still answers in time

# Shared by the snippets: a WebSocket opened (or the error), its messages as a queue, its close event.
PRELUDE = """
const textOf = (n) => "é".repeat(Math.floor(n / 2)) + "a".repeat(n % 2);
const blobOf = (n) => Uint8Array.from({length: n}, (_, i) => i % 256);
function open(url) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const inbox = [];
  let waiting = null;
  ws.onmessage = (e) => { inbox.push(e.data); if (waiting) { const w = waiting; waiting = null; w(); } };
  ws.next = async () => {
    while (inbox.length === 0) await new Promise((resolve) => { waiting = resolve; });
    return inbox.shift();
  };
  ws.closed = new Promise((resolve) => ws.addEventListener("close",
    (e) => resolve({code: e.code, reason: e.reason, wasClean: e.wasClean})));
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve(ws);
    ws.onerror = () => ws.closed.then((c) => reject(new Error("WebSocket failed: " + JSON.stringify(c))));
  });
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
"""


@pytest.fixture(scope="module")
def browser(test_ca) -> Iterator[Browser]:
    install("install-chromium.sh", "chromium")
    assert chromium_path() is not None
    with Browser(spki_flag(test_ca.server[0])) as browser:
        yield browser


def run(browser: Browser, body: str, network: bool = False, **names: object) -> object:
    """``body`` after the prelude, with ``names`` (and ``SIZES``) defined as JSON constants."""
    constants = "".join(f"const {name} = {json.dumps(value)};\n" for name, value in {"SIZES": SIZES, **names}.items())
    return browser.run(PRELUDE + constants + body, network=network)


def test_text_and_binary_echo_without_compression(browser, target):
    result = run(browser, """
        const ws = await open(URL);
        const results = [];
        for (const n of SIZES) {
          ws.send(textOf(n));
          results.push([n, "text", (await ws.next()) === textOf(n)]);
          ws.send(blobOf(n));
          const got = new Uint8Array(await ws.next()), want = blobOf(n);
          results.push([n, "binary", got.length === n && got.every((b, i) => b === want[i])]);
        }
        const extensions = ws.extensions;
        ws.close(1000, "bye");
        return {results, extensions, close: await ws.closed};
    """, network=True, URL=target.url())
    assert result["results"] == [[n, kind, True] for n in SIZES for kind in ("text", "binary")]
    [(request, response)] = browser.handshakes()
    assert "permessage-deflate" in request["Sec-WebSocket-Extensions"]  # offered, as by default
    assert "sec-websocket-extensions" not in {name.lower() for name in response}  # declined
    assert result["extensions"] == ""
    assert result["close"] == {"code": 1000, "reason": "bye", "wasClean": True}


def test_server_pings_are_answered_and_the_close_is_clean(browser, target):
    before = target.counters("millionws_disconnections_total", "reason")["normal"]
    result = run(browser, """
        const ws = await open(URL);
        await sleep(2400);  // silent past 0.2 s + 2 s, a browser that did not answer the ping is closed 1011
        ws.send("still here");
        const echo = await ws.next();
        ws.close(1000);
        return {echo, close: await ws.closed};
    """, URL=target.url(host="127.0.0.1"))
    assert result == {"echo": "still here", "close": {"code": 1000, "reason": "", "wasClean": True}}
    target.wait_disconnected("normal", before + 1)


def test_pubsub_round_trip(browser, target):
    channel = f"interop.chromium.{target.scheme}"
    result = run(browser, """
        const [sub, pub] = [await open(URL), await open(URL)];
        sub.send(JSON.stringify({op: "subscribe", channels: [CHANNEL], id: 1}));
        const subscribed = JSON.parse(await sub.next());
        pub.send(JSON.stringify({op: "publish", channel: CHANNEL, data: {from: "chromium"}, id: "c"}));
        const published = JSON.parse(await pub.next());
        const message = JSON.parse(await sub.next());
        sub.close(1000);
        pub.close(1000);
        return {subscribed, published, message, closes: [(await sub.closed).code, (await pub.closed).code]};
    """, URL=target.url("/pubsub"), CHANNEL=channel)
    assert result == {
        "subscribed": {"op": "subscribed", "channels": [channel], "id": 1},
        "published": {"op": "published", "channel": channel, "seq": 1, "id": "c"},
        "message": {"op": "message", "channel": channel, "seq": 1, "data": {"from": "chromium"}},
        "closes": [1000, 1000]}


def test_a_certificate_whose_key_is_not_trusted_is_refused(browser, test_ca, start_server):
    """The flag trusts one key, not every certificate: the same CA's certificate for another key fails."""
    cert, key, _ = test_ca.issue("chromium-untrusted")
    admin = free_port()
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key), "--admin-port", str(admin),
                          "--stats-interval", "0.05", workers=1, stats_port=admin)
    result = run(browser, """
        try { await open(URL); return "open"; } catch (e) { return e.message; }
    """, URL=f"wss://localhost:{server.port}/echo")
    assert result.startswith("WebSocket failed") and '"code":1006' in result, result

    def failures():
        return {s.labels["reason"]: s.value for s in metric_samples(admin)
                if s.name == "millionws_tls_handshake_failures_total" and s.value}
    assert wait_for(lambda: failures() == {"peer_alert": 1}, what="the browser's alert counted"), failures()
