// Presence against a real millionws: a subscribe with `presence: true` (on a channel whose
// --channel-options rule has presence=on join-leave=on) brings `presence` frames to onPresence and to the
// client's `presence` listeners: the subscriber's own join first, then another client's join and leave.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Client } from "../src/index.js";
import { Server, waitFor, WebSocket } from "./helpers.mjs";

let server;
const clients = [];

function client(user) {
  const c = new Client(`${server.url()}?user=${user}`, { WebSocket, minDelay: 20, maxDelay: 500 });
  clients.push(c);
  return c;
}

before(async () => {
  server = await Server.start(["--trust-user-param", "--channel-options", "room:* presence=on join-leave=on",
    "--presence-interval", "0.2"]);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test("presence: own join, then another member's join and leave, to onPresence and the presence listeners", async (t) => {
  const alice = client("alice");
  const frames = [];
  const heard = [];
  alice.on("presence", (e) => heard.push(e));
  await alice.connect();
  await alice.subscribe("room:1", () => {}, { presence: true, onPresence: (e) => frames.push(e) });
  await waitFor(() => frames.some((f) => f.joins?.some((m) => m.user === "alice")), { what: "alice's own join" });
  const bob = client("bob");
  await bob.connect();
  await bob.subscribe("room:1", () => {});
  await waitFor(() => frames.some((f) => f.joins?.some((m) => m.user === "bob")), { what: "bob's join" });
  assert.equal(frames.at(-1).count, 2);
  await bob.close();
  await waitFor(() => frames.some((f) => f.leaves?.some((m) => m.user === "bob")), { what: "bob's leave" });
  assert.equal(frames.at(-1).count, 1);
  assert.deepEqual(heard, frames);
  assert.ok(frames.every((f) => f.type === "presence" && f.channel === "room:1"));
});
