// The client against a real millionws with JWT auth (--auth-jwt-secret, HS256 tokens minted here): the
// token in the subprotocol, getToken() before every connect, refused handshakes given up after N, the user
// channel resumed with since, expiry (Close 1008) and the in-band refresh across several expiries, a
// refused refresh, a refresh that takes a channel away, and a backend disconnect (4500).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Client } from "../src/index.js";
import { backendPost, mintToken, recorder, Server, sleep, waitFor, WebSocket } from "./helpers.mjs";

const SECRET = "js-client-test-secret-0123456789abcdef";
const BACKEND = "js-client-backend-credential";
let server;
const clients = [];

function client(options = {}) {
  const c = new Client(server.url(), { WebSocket, minDelay: 20, maxDelay: 500, ...options });
  clients.push(c);
  return c;
}

/** A getToken() that mints a fresh token each call and counts the calls. */
function tokens(claims, ttl = 60, secret = SECRET) {
  const getToken = () => {
    getToken.calls++;
    return mintToken(secret, claims, ttl);
  };
  getToken.calls = 0;
  return getToken;
}

/** Publish 1..count on `channel` through the backend API, one at a time, `every` ms apart. */
async function publishAll(channel, count, every = 10) {
  for (let n = 1; n <= count; n++) {
    const answer = await backendPost(server, `/publish/${channel}`, n, BACKEND);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.seq, n);
    await sleep(every);
  }
}

function assertOnceInOrder(handler, count) {
  const expected = Array.from({ length: count }, (_, i) => i + 1);
  assert.deepEqual(handler.events.map((e) => e.type), Array(count).fill("message"));
  assert.deepEqual(handler.events.map((e) => e.seq), expected);
  assert.deepEqual(handler.events.map((e) => e.data), expected);
}

before(async () => {
  server = await Server.start(["--auth-jwt-secret", SECRET, "--backend-token", BACKEND, "--close-timeout", "1"]);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test("the token travels in the subprotocol, getToken() is asked before every connect, grants hold", async () => {
  const getToken = tokens({ sub: "alice", channels: ["js.*"] });
  const c = client({ getToken });
  await c.connect();
  assert.equal(getToken.calls, 1);
  assert.equal(c.userChannel, "@user:alice");
  const h = recorder();
  await c.subscribe("js.auth", h, { since: 0 });
  await assert.rejects(c.subscribe("other.channel", () => {}), (e) => e.code === "forbidden");
  await assert.rejects(c.publish("other.channel", 1), (e) => e.code === "forbidden");
  assert.equal(await c.publish("js.auth", "hello"), 1);
  c.reconnect();
  await waitFor(() => c.state === "open" && getToken.calls === 2, { what: "a reconnect with a new token" });
  assert.equal(await c.publish("js.auth", "again"), 2);
  await h.waitMessages(2);
  assert.deepEqual(h.messages().map((e) => e.data), ["hello", "again"]);
});

test("refused handshakes ask getToken() each time and end after maxFailuresBeforeOpen with an error", async () => {
  const getToken = tokens({ sub: "alice", channels: ["js.*"] }, 60, "not-the-server-secret");
  const c = client({ getToken, maxFailuresBeforeOpen: 3 });
  const errors = [];
  const closes = [];
  c.on("error", (e) => errors.push(e));
  c.on("close", (e) => closes.push(e));
  await assert.rejects(c.connect(), (e) => e.code === "connect_failed");
  assert.equal(getToken.calls, 3);
  assert.equal(c.state, "closed");
  assert.deepEqual(errors.map((e) => e.code), ["connect_failed"]);
  assert.deepEqual(closes.map((e) => [e.opened, e.failures]), [[false, 1], [false, 2], [false, 3]]);
  await sleep(300);
  assert.equal(getToken.calls, 3); // given up: no attempt after the error

  // The application fixes its token source and connects again.
  c.getToken = tokens({ sub: "alice", channels: ["js.*"] });
  await c.connect();
  assert.equal(c.state, "open");
});

test("the user channel: messages to onUserMessage, resumed with since across reconnects, each once in order", async () => {
  const user = recorder();
  const c = client({ getToken: tokens({ sub: "bob", channels: [] }), onUserMessage: user });
  await c.connect();
  const count = 60;
  for (let n = 1; n <= count; n++) {
    const answer = await backendPost(server, "/users/bob/messages", n, BACKEND);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    if (n % 12 === 0) c.reconnect(); // the user channel is subscribed by the server on connect, then resumed
    await sleep(5);
  }
  await user.waitMessages(count).catch((err) => {
    throw new Error(`${err.message}: ${JSON.stringify(user.events.map((e) => [e.type, e.seq ?? e.first]))}`);
  });
  await sleep(100);
  assertOnceInOrder(user, count);
  assert.ok(c.reconnects >= 5);
  assert.deepEqual([...c.last], [["@user:bob", count]]);
});

test("an expired token is closed 1008 and the client reconnects with a fresh one (refresh: false)", async () => {
  const getToken = tokens({ sub: "carol", channels: ["js.*"] }, 2);
  const c = client({ getToken, refresh: false });
  const closes = [];
  c.on("close", (e) => closes.push(e));
  const h = recorder();
  await c.connect();
  await c.subscribe("js.expiry", h, { since: 0 });
  await publishAll("js.expiry", 80, 40); // about 4 s: past the first token's exp
  await h.waitMessages(80);
  assertOnceInOrder(h, 80);
  const expired = closes.filter((e) => e.code === 1008 && e.reason === "token expired");
  assert.ok(expired.length >= 1, JSON.stringify(closes));
  assert.ok(getToken.calls >= 2);
});

test("the in-band refresh keeps one connection open across several expiries", async (t) => {
  const getToken = tokens({ sub: "dave", channels: ["js.*"] }, 2);
  const c = client({ getToken });
  const refreshed = [];
  const closes = [];
  c.on("refreshed", (e) => refreshed.push(e));
  c.on("close", (e) => closes.push(e));
  const h = recorder();
  await c.connect();
  await c.subscribe("js.refresh", h, { since: 0 });
  await publishAll("js.refresh", 110, 40); // about 5 s: 3 lifetimes of a token or more
  await h.waitMessages(110);
  assertOnceInOrder(h, 110);
  assert.deepEqual(closes, []);
  assert.equal(c.reconnects, 0);
  assert.ok(refreshed.length >= 3, JSON.stringify(refreshed));
  const expires = refreshed.map((e) => e.expires);
  assert.ok(expires.every((x, i) => typeof x === "number" && (i === 0 || x >= expires[i - 1])), JSON.stringify(expires));
  assert.equal(getToken.calls, 1 + refreshed.length);
});

test("a refresh the server refuses (bad_token) is followed by a reconnect with a fresh token", async (t) => {
  const good = tokens({ sub: "erin", channels: ["js.*"] }, 2);
  const bad = tokens({ sub: "erin", channels: ["js.*"] }, 60, "not-the-server-secret");
  let calls = 0;
  const c = client({ getToken: () => (++calls === 2 ? bad() : good()) });
  const errors = [];
  const opens = [];
  c.on("error", (e) => errors.push(e.code));
  c.on("open", (e) => opens.push(e.reconnect));
  const h = recorder();
  await c.connect();
  await c.subscribe("js.badrefresh", h, { since: 0 });
  await publishAll("js.badrefresh", 50, 40);
  await h.waitMessages(50);
  assertOnceInOrder(h, 50);
  assert.equal(errors[0], "bad_token");
  assert.deepEqual(opens.slice(0, 2), [false, true]);
});

test("a refresh whose token no longer grants a channel: that channel is unsubscribed (forbidden), others go on", async (t) => {
  let calls = 0;
  const getToken = () =>
    ++calls === 1
      ? mintToken(SECRET, { sub: "frank", channels: ["js.*"] }, 2)
      : mintToken(SECRET, { sub: "frank", channels: ["js.keep"] }, 60);
  const c = client({ getToken });
  const keep = recorder();
  const drop = recorder();
  await c.connect();
  await c.subscribe("js.keep", keep, { since: 0 });
  await c.subscribe("js.drop", drop, { since: 0 });
  const lost = await drop.waitFor((e) => e.type === "unsubscribed", 5000, "the unsubscribed push");
  assert.deepEqual(lost, { type: "unsubscribed", channel: "js.drop", reason: "forbidden" });
  assert.equal(c.last.has("js.drop"), false);
  await publishAll("js.keep", 3, 0);
  await keep.waitMessages(3);
  assert.equal(c.reconnects, 0);
  await assert.rejects(c.publish("js.drop", 1), (e) => e.code === "forbidden");
});

test("a backend disconnect (4500) ends the session: a disconnected event, no reconnect", async (t) => {
  const getToken = tokens({ sub: "grace", channels: ["js.*"] });
  const c = client({ getToken });
  const disconnected = [];
  c.on("disconnected", (e) => disconnected.push(e));
  await c.connect();
  const answer = await backendPost(server, "/users/grace/disconnect", {}, BACKEND);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  await waitFor(() => disconnected.length === 1, { what: "the disconnected event" });
  assert.ok(disconnected[0].code >= 4500 && disconnected[0].code <= 4999, JSON.stringify(disconnected));
  assert.equal(c.state, "closed");
  await sleep(300);
  assert.equal(getToken.calls, 1);
});
