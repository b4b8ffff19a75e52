// The Node `ws` client of tests/interop/test_node_ws.py: `node client.mjs SCENARIO URL [CA_PATH]`.
// Runs one scenario against the server and prints one JSON line: what the client saw. With CA_PATH
// (wss://) the server's certificate is verified against that CA only, hostname included.
import { readFileSync } from "node:fs";
import WebSocket from "ws";

const [scenario, url, caPath] = process.argv.slice(2);
const SIZES = [0, 125, 126, 65535, 65536, (1 << 20) - 1];

// The same messages as tests/interop/conftest.py: text_of / blob_of.
const textOf = (n) => "é".repeat(Math.floor(n / 2)) + "a".repeat(n % 2);
const blobOf = (n) => Uint8Array.from({ length: n }, (_, i) => i % 256);

function open(path = "/echo") {
  const options = { maxPayload: 4 << 20 };
  if (caPath) options.ca = readFileSync(caPath);
  const ws = new WebSocket(url + path, options);
  const inbox = [];
  let waiting = null;
  ws.on("message", (data, isBinary) => {
    inbox.push({ data, isBinary });
    if (waiting) { const w = waiting; waiting = null; w(); }
  });
  ws.next = async () => {
    while (inbox.length === 0) await new Promise((resolve) => { waiting = resolve; });
    return inbox.shift();
  };
  ws.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  return new Promise((resolve, reject) => {
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
}

function tlsFacts(ws) {
  const socket = ws._socket;
  return socket.encrypted ? { tls: socket.getProtocol(), authorized: socket.authorized } : { tls: null };
}

const scenarios = {
  async echo() {
    const ws = await open();
    const results = [];
    for (const n of SIZES) {
      ws.send(textOf(n));
      const t = await ws.next();
      results.push({ size: n, kind: "text", ok: !t.isBinary && t.data.toString("utf8") === textOf(n) });
      ws.send(blobOf(n));
      const b = await ws.next();
      results.push({ size: n, kind: "binary", ok: b.isBinary && Buffer.compare(b.data, Buffer.from(blobOf(n))) === 0 });
    }
    const facts = { ...tlsFacts(ws), extensions: ws.extensions, results };
    ws.close(1000);
    facts.close = await ws.closed;
    return facts;
  },
  async fragments() {
    const ws = await open();
    ws.send("fr", { fin: false });
    ws.ping("between");
    ws.send("agmé", { fin: false });
    ws.send("nt", { fin: true });
    const text = (await ws.next()).data.toString("utf8");
    const chunk = blobOf(65536);
    for (let i = 0; i < 16; i++) ws.send(i < 15 ? chunk : chunk.subarray(1), { binary: true, fin: i === 15 });
    const big = (await ws.next()).data;
    ws.close(1000);
    return { text, bigLength: big.length, bigHead: Array.from(big.subarray(0, 4)), close: await ws.closed };
  },
  async ping() {
    const ws = await open();
    const pong = new Promise((resolve) => ws.on("pong", (data) => resolve(data.toString())));
    ws.ping("are you there");
    const data = await pong;
    ws.close(1000, "bye");
    return { pong: data, close: await ws.closed };
  },
  async pubsub() {
    const channel = "interop.node." + (caPath ? "wss" : "ws");
    const [sub, pub] = [await open("/pubsub"), await open("/pubsub")];
    sub.send(JSON.stringify({ op: "subscribe", channels: [channel], id: 1 }));
    const subscribed = JSON.parse((await sub.next()).data);
    pub.send(JSON.stringify({ op: "publish", channel, data: { from: "node" }, id: "n" }));
    const published = JSON.parse((await pub.next()).data);
    const message = JSON.parse((await sub.next()).data);
    sub.close(1000);
    pub.close(1000);
    return { subscribed, published, message, closes: [await sub.closed, await pub.closed] };
  },
};

try {
  const result = await scenarios[scenario]();
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + "\n");
  process.exitCode = 1;
}
