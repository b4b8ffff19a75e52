// Test helpers: a real millionws (python -m millionws serve, 2 workers) on a free port, a real
// nats-server with JetStream for --bus, tokens minted here (HS256), the backend's HTTP publish.
//
// Environment: MILLIONWS_PYTHON (the Python with millionws's dependencies; default python3),
// NATS_SERVER (default: nats-server on PATH or beside MILLIONWS_PYTHON), MILLIONWS_REQUIRE_ALL=1
// (tests/clients/test_js.py sets it: what is missing fails instead of skipping), MILLIONWS_SERVER_ROOT
// (the checkout whose server runs; default: this repository's).

import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

export { WebSocket };
export const ROOT = path.resolve(process.env.MILLIONWS_SERVER_ROOT || fileURLToPath(new URL("../../..", import.meta.url)));
export const PYTHON = process.env.MILLIONWS_PYTHON || "python3";
export const REQUIRE_ALL = process.env.MILLIONWS_REQUIRE_ALL === "1";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Skip the test saying why, or fail when MILLIONWS_REQUIRE_ALL=1 (under the Python suite). */
export function skipOrFail(t, reason) {
  if (REQUIRE_ALL) throw new Error(`required but missing: ${reason}`);
  t.skip(reason);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function waitFor(predicate, { timeout = 10000, interval = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const value = await predicate();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    await sleep(interval);
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${lastError.message}` : ""}`);
}

function exited(proc, timeout) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process ${proc.pid} did not exit within ${timeout} ms`)), timeout);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** A running `millionws serve`; drain() sends SIGTERM and waits for the exit, start() runs it again on the
 * same port. */
export class Server {
  constructor(args = [], { port, workers = 2 } = {}) {
    this.args = args;
    this.port = port;
    this.workers = workers;
    this.proc = null;
    this.logPath = null;
  }

  static async start(args = [], options = {}) {
    const server = new Server(args, { ...options, port: options.port ?? (await freePort()) });
    await server.start();
    return server;
  }

  url(path = "/pubsub") {
    return `ws://127.0.0.1:${this.port}${path}`;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.logPath = path.join(os.tmpdir(), `millionws-js-${this.port}-${Date.now()}.log`);
    const log = fs.openSync(this.logPath, "w");
    const argv = ["-m", "millionws", "serve", "--host", "127.0.0.1", "--port", String(this.port),
      "--workers", String(this.workers), ...this.args];
    this.proc = spawn(PYTHON, argv, {
      cwd: ROOT,
      env: { ...process.env, PYTHONPATH: ROOT },
      stdio: ["ignore", log, log],
      detached: true, // its own process group: stop() ends the workers too
    });
    fs.closeSync(log);
    const proc = this.proc;
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`server exited: ${this.output()}`);
      const response = await fetch(`${this.http}/stats`);
      const stats = await response.json();
      return stats.workers.length === this.workers && stats.workers.every((w) => w.pid);
    }, { timeout: 20000, what: `millionws on ${this.port}` });
    if (this.args.includes("--bus")) {
      // A worker refuses publishes (503 unavailable) until its broker connection is up.
      await waitFor(async () => {
        const text = await (await fetch(`${this.http}/metrics`)).text();
        const up = text.split("\n").filter((line) => line.startsWith("millionws_bus_up{"));
        return up.length === this.workers && up.every((line) => line.trim().endsWith(" 1.0") || line.trim().endsWith(" 1"));
      }, { timeout: 20000, what: `every worker of ${this.port} connected to the bus` });
    }
  }

  output() {
    try {
      return fs.readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /** SIGTERM: every WebSocket gets Close 1001, the server exits once none is left. */
  async drain() {
    const proc = this.proc;
    proc.kill("SIGTERM");
    const code = await exited(proc, 20000);
    if (code !== 0) throw new Error(`drain ended with ${code}: ${this.output()}`);
  }

  async restart() {
    await this.drain();
    await this.start();
  }

  async stop() {
    const proc = this.proc;
    if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return;
    try {
      process.kill(-proc.pid, "SIGKILL");
    } catch {
      // gone already
    }
    await exited(proc, 10000).catch(() => {});
  }
}

function which(binary) {
  for (const dir of (process.env.PATH || "").split(path.delimiter)) {
    const candidate = path.join(dir, binary);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

export function natsServerPath() {
  if (process.env.NATS_SERVER) return process.env.NATS_SERVER;
  const found = which("nats-server");
  if (found) return found;
  if (PYTHON.includes(path.sep)) {
    const beside = path.join(path.dirname(PYTHON), "nats-server");
    if (fs.existsSync(beside)) return beside;
  }
  return null;
}

/** A nats-server with JetStream (file storage in a temporary directory), or null if there is none. */
export async function startNats() {
  const binary = natsServerPath();
  if (binary === null) return null;
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "millionws-js-nats-"));
  const proc = spawn(binary, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], { stdio: "ignore" });
  await waitFor(() => new Promise((resolve) => {
    if (proc.exitCode !== null) throw new Error("nats-server exited");
    const socket = net.connect(port, "127.0.0.1", () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  }), { timeout: 15000, what: "nats-server accepting" });
  return {
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      proc.kill("SIGKILL");
      await exited(proc, 10000).catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function chromiumPath() {
  return process.env.CHROMIUM || which("chromium") || which("chromium-browser");
}

const b64url = (buffer) => Buffer.from(buffer).toString("base64url");

/** An HS256 JWT with `claims`; `ttl` seconds sets exp (and iat) unless the claims have one. */
export function mintToken(secret, claims = {}, ttl = 60) {
  const now = Math.floor(Date.now() / 1000);
  const body = { iat: now, exp: now + ttl, ...claims };
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" })) + "." + b64url(JSON.stringify(body));
  return head + "." + b64url(crypto.createHmac("sha256", secret).update(head).digest());
}

/** POST the backend's HTTP API (path: /publish/<channel>, /users/<id>/messages); the parsed answer. */
export async function backendPost(server, urlPath, data, backendToken = null) {
  const headers = { "content-type": "application/json" };
  if (backendToken) headers.authorization = `Bearer ${backendToken}`;
  const response = await fetch(server.http + urlPath, { method: "POST", headers, body: JSON.stringify(data) });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

/** A channel handler that records what it is given, with a wait for a count. */
export function recorder() {
  const events = [];
  const handler = (event) => events.push(event);
  handler.events = events;
  handler.messages = () => events.filter((e) => e.type === "message");
  handler.waitMessages = (count, timeout = 15000) =>
    waitFor(() => handler.messages().length >= count, { timeout, what: `${count} messages` });
  handler.waitFor = (predicate, timeout = 15000, what = "an event") =>
    waitFor(() => events.find(predicate), { timeout, what });
  return handler;
}

export function haveSpawnable(binary) {
  return spawnSync(binary, ["--version"], { stdio: "ignore" }).status === 0;
}
