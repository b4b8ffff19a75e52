// The client's rules without a network: backoff bounds, token decoding, refresh timing, close codes, and
// what it does with each server frame (fed to it as the socket would). Everything against a real server
// is in the other files.

import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay, Client, closeAction, MillionwsError, refreshDelay, tokenClaims } from "../src/index.js";
import { mintToken } from "./helpers.mjs";

class NoSocket {
  constructor() {
    throw new Error("this test opens no socket");
  }
}

test("full-jitter backoff: uniform in [0, min(max, min * 2^attempt)]", () => {
  const caps = [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000];
  caps.forEach((cap, attempt) => {
    assert.equal(backoffDelay(attempt, 100, 10000, () => 0), 0);
    assert.equal(backoffDelay(attempt, 100, 10000, () => 0.999999), cap * 0.999999);
    const d = backoffDelay(attempt);
    assert.ok(d >= 0 && d <= cap, `${attempt}: ${d}`);
  });
  assert.equal(backoffDelay(10_000, 100, 10000, () => 0.5), 5000); // no overflow to Infinity or NaN
});

test("token claims are read without verification; anything else is null", () => {
  const token = mintToken("k", { sub: "alice|é", channels: ["news.*"] }, 100);
  const claims = tokenClaims(token);
  assert.equal(claims.sub, "alice|é");
  assert.deepEqual(claims.channels, ["news.*"]);
  assert.equal(claims.exp - claims.iat, 100);
  for (const bad of ["", "x", "a.b.c", "a.!!!.c", null, 42]) assert.equal(tokenClaims(bad), null);
});

test("refresh is due before exp by min(30 s, 10 % of the remaining life)", () => {
  const now = 1_000_000_000_000;
  assert.equal(refreshDelay(now / 1000 + 100, now), 90_000);
  assert.equal(refreshDelay(now / 1000 + 3600, now), 3_570_000);
  assert.equal(refreshDelay(now / 1000 + 3, now), 2_700);
  assert.equal(refreshDelay(now / 1000 - 1, now), 0);
});

test("close codes: 4500-4999 and refusals stop, drains and expired tokens reconnect at once, the rest with backoff", () => {
  for (const code of [4500, 4999, 1002, 1003, 1007, 1009, 1010]) assert.equal(closeAction(code), "stop", code);
  assert.equal(closeAction(1008, "rate limit exceeded"), "stop");
  assert.equal(closeAction(1008, "token expired"), "fresh");
  assert.equal(closeAction(1001), "fresh");
  assert.equal(closeAction(1012), "fresh");
  for (const code of [1000, 1006, 1011, 1013, 1014, 3000, 4000, 4499]) assert.equal(closeAction(code), "reconnect", code);
});

test("without a WebSocket (Node 20 without the ws package) the constructor says what to pass", () => {
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(() => new Client("ws://x/pubsub"), /pass \{ WebSocket \}/);
  } finally {
    if (saved !== undefined) globalThis.WebSocket = saved;
  }
});

test("frames: duplicates dropped, gap surfaced then delivery from first, server unsubscribe, presence", async () => {
  const client = new Client("ws://127.0.0.1:1/pubsub", { WebSocket: NoSocket });
  const events = [];
  const presence = [];
  const pending = client.subscribe("news", (e) => events.push(e), { since: 2, onPresence: (e) => presence.push(e) });
  const frame = (doc) => client._onFrame(JSON.stringify(doc));
  for (const seq of [2, 3, 3, 4, 1]) frame({ op: "message", channel: "news", seq, data: seq });
  frame({ op: "gap", channel: "news", since: 4, first: 9, reason: "expired" });
  frame({ op: "message", channel: "news", seq: 9, data: 9 });
  frame({ op: "gap", channel: "news", since: 9, first: 1, reason: "unknown" }); // the sequence restarted
  frame({ op: "message", channel: "news", seq: 1, data: "again" });
  frame({ op: "message", channel: "other", seq: 1, data: "not subscribed" });
  frame({ op: "future-op", channel: "news" });
  frame({ op: "presence", channel: "news", count: 2, joins: [{ user: "bob", client: "c1" }], leaves: [] });
  frame({ op: "presence", channel: "news", count: 900 }); // count alone: the list changed, not listed
  assert.equal(client.duplicates, 3);
  assert.deepEqual(events, [
    { type: "message", channel: "news", seq: 3, data: 3 },
    { type: "message", channel: "news", seq: 4, data: 4 },
    { type: "gap", channel: "news", since: 4, first: 9, reason: "expired" },
    { type: "message", channel: "news", seq: 9, data: 9 },
    { type: "gap", channel: "news", since: 9, first: 1, reason: "unknown" },
    { type: "message", channel: "news", seq: 1, data: "again" },
  ]);
  assert.deepEqual(presence, [
    { type: "presence", channel: "news", count: 2, joins: [{ user: "bob", client: "c1" }], leaves: [] },
    { type: "presence", channel: "news", count: 900, joins: null, leaves: null },
  ]);
  assert.deepEqual([...client.last], [["news", 1]]);

  frame({ op: "unsubscribed", channels: ["news"], reason: "forbidden" });
  await assert.rejects(pending, (err) => err instanceof MillionwsError && err.code === "forbidden");
  assert.deepEqual(events.at(-1), { type: "unsubscribed", channel: "news", reason: "forbidden" });
  assert.equal(client.last.has("news"), false);
  frame({ op: "message", channel: "news", seq: 2, data: "after" });
  assert.equal(events.length, 7);
});

test("frames: the user channel goes to onUserMessage, deduplicated; errors without id are events", () => {
  const user = [];
  const errors = [];
  const client = new Client("ws://127.0.0.1:1/pubsub", { WebSocket: NoSocket, onUserMessage: (e) => user.push(e) });
  client.on("error", (e) => errors.push(e.code));
  const frame = (doc) => client._onFrame(typeof doc === "string" ? doc : JSON.stringify(doc));
  for (const seq of [1, 2, 2, 3]) frame({ op: "message", channel: "@user:alice", seq, data: seq });
  frame({ op: "message", channel: "@user:mallory", seq: 7, data: "not ours" });
  frame({ op: "error", code: "bad_json", message: "..." });
  frame("not json");
  frame("[1, 2]");
  assert.equal(client.userChannel, "@user:alice");
  assert.deepEqual(user.map((e) => e.seq), [1, 2, 3]);
  assert.deepEqual(errors, ["bad_json"]);
});

test("a publish without a connection is refused at once, nothing queued", async () => {
  const client = new Client("ws://127.0.0.1:1/pubsub", { WebSocket: NoSocket });
  await assert.rejects(client.publish("news", 1), (err) => err.code === "not_connected");
});

/** A socket the test drives by hand: it records what the client sends and delivers frames synchronously,
 * several in one go, as `ws` does with the frames of one TCP read. */
class HandSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    HandSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {}
  addEventListener() {}
  open() {
    this.onopen?.({});
  }
  frames(...docs) {
    for (const doc of docs) this.onmessage?.({ data: JSON.stringify(doc) });
  }
}

test("the user channel resumes with since; its early live messages before the answer are left to the replay", async () => {
  HandSocket.all = [];
  const got = [];
  const token = mintToken("k", { sub: "bob" }, 3600);
  const client = new Client("ws://127.0.0.1:1/pubsub", {
    WebSocket: HandSocket, getToken: () => token, onUserMessage: (e) => got.push(e.seq), minDelay: 0,
  });
  const connected = client.connect();
  await waitForSocket(1);
  const first = HandSocket.all[0];
  assert.deepEqual(first.protocols, ["millionws", `millionws.bearer.${token}`]);
  first.open();
  await connected;
  assert.deepEqual(first.sent, []); // nothing to resume yet: the server subscribed the user channel itself
  const message = (seq) => ({ op: "message", channel: "@user:bob", seq, data: seq });
  first.frames(message(1), message(2), message(3));

  client.reconnect();
  await waitForSocket(2);
  const second = HandSocket.all[1];
  second.open();
  assert.deepEqual(second.sent, [{ op: "subscribe", channels: ["@user:bob"], since: { "@user:bob": 3 }, id: 1 }]);
  // The early subscription's live 5 comes before the answer; the replay 4, 5 and the live 6 after it.
  second.frames(message(5), { op: "subscribed", channels: ["@user:bob"], id: 1 }, message(4), message(5), message(6));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  await client.close();
});

async function waitForSocket(count) {
  for (let i = 0; i < 100 && HandSocket.all.length < count; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(HandSocket.all.length, count);
}

test("a getToken() that throws (its endpoint out of reach) is reported and retried, not counted as a refusal", async () => {
  HandSocket.all = [];
  let calls = 0;
  const client = new Client("ws://127.0.0.1:1/pubsub", {
    WebSocket: HandSocket,
    minDelay: 1,
    maxDelay: 5,
    maxFailuresBeforeOpen: 2,
    getToken: () => {
      if (++calls <= 4) throw new Error("offline");
      return null;
    },
  });
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const connected = client.connect();
  await waitForSocket(1);
  assert.deepEqual(HandSocket.all[0].protocols, ["millionws"]); // null: no token
  HandSocket.all[0].open();
  await connected;
  assert.deepEqual(errors, ["token_failed", "token_failed", "token_failed", "token_failed"]);
  await client.close();
});
