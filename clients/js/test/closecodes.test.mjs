// Close codes after an open connection, end to end through a socket: 4500-4999 and refusals (1008 other
// than "token expired", 1003, ...) end the session (a `disconnected` event, no reconnect), the others
// reconnect, a close the application asked for does not.
// millionws sends 1001 (drain), 1008 (expiry, limits), 1011 (ping timeout) and 1013 (slow consumer) itself,
// and those are tested against it in the other files; 4000-4999 come from the backend (issue 13's
// POST /users/{id}/disconnect, 4500 by default), so this file uses a stand-in peer (the ws package's
// server) that closes every connection with the code under test once it is open.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";
import { WebSocketServer } from "ws";
import { Client } from "../src/index.js";
import { sleep, waitFor, WebSocket } from "./helpers.mjs";

let peer;
let web;
let url;
let closeWith = null; // [code, reason] for the next connections
let connections = 0;

before(async () => {
  web = http.createServer((req, res) => res.end("ok"));
  peer = new WebSocketServer({ server: web, handleProtocols: (protocols) => (protocols.has("millionws") ? "millionws" : false) });
  peer.on("connection", (socket) => {
    connections++;
    const now = closeWith;
    if (now) setTimeout(() => socket.close(...now), 20);
  });
  await new Promise((resolve) => web.listen(0, "127.0.0.1", resolve));
  url = `ws://127.0.0.1:${web.address().port}/pubsub`;
});

after(async () => {
  for (const socket of peer.clients) socket.terminate();
  await new Promise((resolve) => peer.close(resolve));
  await new Promise((resolve) => web.close(resolve));
});

async function scenario(code, reason) {
  closeWith = [code, reason];
  connections = 0;
  const client = new Client(url, { WebSocket, minDelay: 10, maxDelay: 50 });
  const events = [];
  for (const type of ["open", "close", "disconnected", "error"]) client.on(type, (e) => events.push([type, e]));
  await client.connect();
  return { client, events };
}

test("4500-4999 and refusals: disconnected with code and reason, no reconnect", async () => {
  const stops = [[4500, "disconnected by the backend"], [4999, "banned"], [1008, "rate limit exceeded"], [1003, ""]];
  for (const [code, reason] of stops) {
    const { client, events } = await scenario(code, reason);
    await waitFor(() => events.some(([type]) => type === "disconnected"), { what: `disconnected after ${code}` });
    await sleep(200);
    assert.equal(connections, 1);
    assert.equal(client.state, "closed");
    const disconnected = events.filter(([type]) => type === "disconnected").map(([, e]) => e);
    assert.deepEqual(disconnected, [{ code, reason }]);
    await assert.rejects(client.publish("x", 1), (e) => e.code === "not_connected");
  }
});

test("1011, 1012, 1013, 4000-4499 and a normal close from the peer: reconnect", async () => {
  for (const code of [1000, 1011, 1012, 1013, 4000, 4499]) {
    const { client } = await scenario(code, "");
    await waitFor(() => connections >= 3, { what: `two reconnects after ${code}` });
    assert.notEqual(client.state, "closed");
    closeWith = null;
    await client.close();
  }
});

test("a close the application asked for: no reconnect", async () => {
  closeWith = null;
  connections = 0;
  const client = new Client(url, { WebSocket, minDelay: 10, maxDelay: 50 });
  await client.connect();
  await client.close();
  await sleep(200);
  assert.equal(connections, 1);
  assert.equal(client.state, "closed");
});
