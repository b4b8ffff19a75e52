// millionws-client: a dependency-free client for millionws's /pubsub protocol (docs/protocol.md),
// for browsers and Node.  Guide: docs/clients/js.md in the millionws repository.
//
// What it does for the application:
// * keeps the last `seq` seen per channel and drops a message at or below it, so each message
//   reaches its handler once, in order; a `gap` is handed to the handler and delivery goes on
//   from its `first`;
// * reconnects after a drop with exponential backoff and full jitter, then subscribes again with
//   `since` = the last seq of each channel (the server replays what was missed);
// * calls `getToken()` before every connection attempt and, before the token's `exp`, sends the
//   in-band `refresh` op with a new one; the token travels in the WebSocket subprotocol
//   (`millionws.bearer.<jwt>`), which works where headers cannot be set (browsers).

export const MIN_DELAY = 100; // ms: bound of the first reconnect delay
export const MAX_DELAY = 10000; // ms: largest reconnect delay
export const MAX_FAILURES_BEFORE_OPEN = 5;
export const REQUEST_TIMEOUT = 10000; // ms
const STABLE_AFTER = 5000; // ms: a connection open this long resets the backoff
const PROBE_TIMEOUT = 3000; // ms
const MAX_TIMER = 2 ** 31 - 1; // setTimeout's largest delay
const SUBPROTOCOL = "millionws";
const TOKEN_PREFIX = "millionws.bearer.";

/** Full jitter: a uniform draw in [0, min(maxDelay, minDelay * 2^attempt)] milliseconds. */
export function backoffDelay(attempt, minDelay = MIN_DELAY, maxDelay = MAX_DELAY, random = Math.random) {
  return random() * Math.min(maxDelay, minDelay * 2 ** Math.min(Math.max(attempt, 0), 64));
}

/** The claims of a JWT, decoded without verification (the server verifies); null if unreadable. */
export function tokenClaims(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Milliseconds from `now` until a token expiring at `exp` (seconds) should be refreshed: its
 * remaining life less a margin of min(30 s, 10 % of that life). */
export function refreshDelay(exp, now = Date.now()) {
  const remaining = exp * 1000 - now;
  if (!(remaining > 0)) return 0;
  return remaining - Math.min(30000, remaining * 0.1);
}

// Closes that refuse what this client sent: a reconnect would meet the same refusal.
const REFUSAL_CODES = new Set([1002, 1003, 1007, 1009, 1010]);

/** What a close after an open connection leads to (the same rules as the Python client's):
 * "stop" (4500-4999: the backend ended this user's session; 1008 other than "token expired", e.g. a
 * rate limit, and the refusals 1002, 1003, 1007, 1009, 1010), "fresh" (reconnect at once: a drain, a
 * restart, an expired token), or "reconnect" (with backoff: no Close frame 1006, 1000, 1011, 1013,
 * 1014, 4000-4499, anything else). A close the application asked for never reaches this. */
export function closeAction(code, reason = "") {
  if (code >= 4500 && code <= 4999) return "stop";
  if (code === 1008) return reason === "token expired" ? "fresh" : "stop";
  if (REFUSAL_CODES.has(code)) return "stop";
  if (code === 1001 || code === 1012) return "fresh";
  return "reconnect";
}

/** A refusal by the server (`code` from docs/protocol.md) or by the client ("not_connected",
 * "disconnected", "timeout", "closed", "connect_failed", "unsubscribed"). */
export class MillionwsError extends Error {
  constructor(code, message, reply = null) {
    super(message ? `${code}: ${message}` : code);
    this.name = "MillionwsError";
    this.code = code;
    this.reply = reply;
  }
}

function report(err) {
  // An exception from an application handler: reported like a DOM event listener's, without
  // unwinding the client (its state was updated before the call).
  setTimeout(() => {
    throw err;
  }, 0);
}

export class Client {
  constructor(url, options = {}) {
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("millionws-client: no WebSocket here; pass { WebSocket } (e.g. the ws package on Node 20)");
    }
    this.url = String(url);
    this.WebSocket = WS;
    this.getToken = options.getToken ?? null;
    this.minDelay = options.minDelay ?? MIN_DELAY;
    this.maxDelay = options.maxDelay ?? MAX_DELAY;
    this.requestTimeout = options.requestTimeout ?? REQUEST_TIMEOUT;
    this.maxFailuresBeforeOpen = options.maxFailuresBeforeOpen ?? MAX_FAILURES_BEFORE_OPEN;
    this.probe = options.probe ?? true;
    this.refresh = options.refresh ?? true;
    this.onUserMessage = options.onUserMessage ?? null;
    /** channel -> last seq delivered (or announced by `since` / a gap) */
    this.last = new Map();
    /** connections opened after the first one */
    this.reconnects = 0;
    /** messages dropped because their seq was at or below the last one delivered */
    this.duplicates = 0;
    this._subs = new Map(); // channel -> {channel, handler, onPresence, presence, subscribed, waiters}
    this._pending = new Map(); // request id -> {settle, timer}
    this._nextId = 1;
    this._listeners = new Map();
    this._connectWaiters = [];
    this._ws = null;
    this._state = "idle"; // idle | connecting | open | reconnecting | closed
    this._gen = 0; // bumped by close() and connect(): async steps of an older run stop
    this._attempt = 0;
    this._failures = 0;
    this._everOpened = false;
    this._openedAt = 0;
    this._timer = null;
    this._refreshTimer = null;
    this._token = null;
    this._claims = null;
    this._userChannel = null;
    this._userResuming = false; // a subscribe with since for the user channel is in flight
  }

  /** idle, connecting, open, reconnecting or closed */
  get state() {
    return this._state;
  }

  /** The connection's own user channel (`@user:<sub>`), once known from the token or a message. */
  get userChannel() {
    return this._userChannel;
  }

  // -- events --------------------------------------------------------------------------------
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  _emit(type, event) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(event);
      } catch (err) {
        report(err);
      }
    }
  }

  _call(fn, event) {
    if (typeof fn !== "function") return;
    try {
      fn(event);
    } catch (err) {
      report(err);
    }
  }

  // -- the connection ------------------------------------------------------------------------
  /** Start connecting (again, after close() or a terminal close); resolves once open. */
  connect() {
    if (this._state === "open") return Promise.resolve();
    const promise = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._state === "idle" || this._state === "closed") {
      this._gen++;
      this._failures = 0;
      this._attempt = 0;
      this._state = "connecting";
      this._open(this._gen);
    }
    return promise;
  }

  /** Close for good (no reconnect); resolves once the socket is closed. Pending requests reject with
   * "closed"; subscriptions are kept, so connect() resumes them. */
  close(code = 1000, reason = "") {
    this._gen++;
    const wasOpen = this._state === "open";
    this._state = "closed";
    clearTimeout(this._timer);
    this._timer = null;
    this._clearRefresh();
    const ws = this._ws;
    this._ws = null;
    const err = new MillionwsError("closed", "the client was closed");
    this._failPending(err);
    this._rejectWaiters(err);
    for (const sub of this._subs.values()) sub.subscribed = false;
    if (ws === null) return Promise.resolve();
    const closed = new Promise((resolve) => {
      const timer = setTimeout(resolve, 5000);
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    try {
      ws.close(code, reason);
    } catch {
      ws.close();
    }
    if (wasOpen) this._emit("close", { code, reason, opened: true, reconnectIn: null });
    return closed;
  }

  async _open(gen) {
    let token = null;
    try {
      token = this.getToken ? await this.getToken() : null;
    } catch (err) {
      // Most often the application's token endpoint is out of reach (a browser offline): retried with
      // backoff like a server that is down, and reported each time; not a refusal, so not counted.
      if (gen !== this._gen) return;
      this._emit("error", new MillionwsError("token_failed", `getToken() failed: ${err?.message ?? err}`));
      this._failedBeforeOpen(gen, 1006, "getToken() failed", false, false);
      return;
    }
    if (gen !== this._gen) return;
    this._setToken(token ?? null);
    const protocols = token ? [SUBPROTOCOL, TOKEN_PREFIX + token] : [SUBPROTOCOL];
    let ws;
    try {
      ws = new this.WebSocket(this.url, protocols);
    } catch (err) {
      // A malformed URL or token: no retry fixes the URL, a new token might.
      this._emit("error", new MillionwsError("bad_socket", String(err?.message ?? err)));
      this._failedBeforeOpen(gen, 1006, "WebSocket constructor failed", false, true);
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      opened = true;
      this._onOpen();
    };
    ws.onmessage = (event) => {
      if (ws === this._ws && typeof event.data === "string") this._onFrame(event.data);
    };
    ws.onerror = () => {}; // the close event follows with the code
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      if (opened) this._closedAfterOpen(event.code, event.reason ?? "", false);
      else this._failedBeforeOpen(this._gen, event.code, event.reason ?? "", true, true);
    };
  }

  _onOpen() {
    this._state = "open";
    this._failures = 0;
    this._openedAt = Date.now();
    const reconnect = this._everOpened;
    this._everOpened = true;
    if (reconnect) this.reconnects++;
    this._resubscribe();
    this._scheduleRefresh();
    this._emit("open", { reconnect });
    const waiters = this._connectWaiters.splice(0);
    for (const waiter of waiters) waiter.resolve();
  }

  async _failedBeforeOpen(gen, code, reason, probe, counts) {
    // In a browser a refused handshake (401, 403, 503) and a server that is down look the same: a close
    // 1006 before open. The probe tells them apart where it can (a server that answers HTTP refused us):
    // only those count towards maxFailuresBeforeOpen; an outage is retried with backoff for as long as
    // it lasts.
    const reachable = probe ? await this._probeServer() : null;
    if (gen !== this._gen) return;
    if (counts && reachable !== false) this._failures++;
    if (this._failures >= this.maxFailuresBeforeOpen) {
      this._state = "closed";
      this._emit("close", { code, reason, opened: false, reconnectIn: null, failures: this._failures });
      const err = new MillionwsError(
        "connect_failed",
        `${this._failures} consecutive connection attempts refused before open (last close ${code})`,
      );
      this._emit("error", err);
      this._rejectWaiters(err);
      return;
    }
    const delay = backoffDelay(this._attempt++, this.minDelay, this.maxDelay);
    this._emit("close", { code, reason, opened: false, reconnectIn: delay, failures: this._failures });
    this._schedule(delay);
  }

  _closedAfterOpen(code, reason, fresh) {
    this._clearRefresh();
    this._failPending(new MillionwsError("disconnected", "the connection closed before the answer: outcome unknown"));
    this._userResuming = false;
    for (const sub of this._subs.values()) sub.subscribed = false;
    const action = fresh ? "fresh" : closeAction(code, reason);
    if (action === "stop") {
      this._state = "closed";
      this._emit("close", { code, reason, opened: true, reconnectIn: null });
      this._emit("disconnected", { code, reason });
      this._rejectWaiters(new MillionwsError("disconnected", `closed by the server: ${code} ${reason}`));
      return;
    }
    if (action === "fresh" || Date.now() - this._openedAt >= STABLE_AFTER) this._attempt = 0;
    const delay = backoffDelay(this._attempt++, this.minDelay, this.maxDelay);
    this._emit("close", { code, reason, opened: true, reconnectIn: delay });
    this._schedule(delay);
  }

  _schedule(delay) {
    this._state = "reconnecting";
    const gen = this._gen;
    this._timer = setTimeout(() => {
      this._timer = null;
      if (gen !== this._gen) return;
      this._open(gen);
    }, delay);
  }

  /** Drop the current connection and connect again at once (fresh token, resume with since): e.g. after
   * the device changed networks. Nothing is lost; a connection being set up is left alone. */
  reconnect() {
    this._restart("reconnect");
  }

  /** End the current connection from our side and reconnect at once with a fresh token. */
  _restart(reason) {
    const ws = this._ws;
    if (ws === null || this._state !== "open") return;
    this._ws = null;
    try {
      ws.close(1000, reason);
    } catch {
      // already closing
    }
    this._closedAfterOpen(1000, reason, true);
  }

  async _probeServer() {
    if (!this.probe || typeof globalThis.fetch !== "function") return null;
    let url;
    try {
      if (typeof this.probe === "string") {
        url = new URL(this.probe);
      } else {
        url = new URL(this.url);
        url.protocol = url.protocol === "wss:" ? "https:" : "http:";
        url.pathname = "/health";
        url.search = "";
        url.hash = "";
      }
    } catch {
      return null;
    }
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    const timer = setTimeout(() => controller?.abort(), PROBE_TIMEOUT);
    try {
      const response = await fetch(url.href, {
        mode: "no-cors",
        cache: "no-store",
        credentials: "omit",
        signal: controller?.signal,
      });
      try {
        await response.body?.cancel();
      } catch {
        // opaque or already consumed
      }
      return true;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  _rejectWaiters(err) {
    // Subscriptions stay registered: connect() subscribes them again.
    for (const waiter of this._connectWaiters.splice(0)) waiter.reject(err);
    for (const sub of this._subs.values()) {
      for (const waiter of sub.waiters.splice(0)) waiter.reject(err);
    }
  }

  _failPending(err) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const request of pending) {
      clearTimeout(request.timer);
      request.settle(err);
    }
  }

  // -- tokens --------------------------------------------------------------------------------
  _setToken(token) {
    this._token = token;
    this._claims = token ? tokenClaims(token) : null;
    const sub = this._claims?.sub;
    if (typeof sub === "string") {
      const channel = `@user:${sub}`;
      if (channel !== this._userChannel && this._userChannel !== null) this.last.delete(this._userChannel);
      this._userChannel = channel;
    }
  }

  _clearRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  _scheduleRefresh() {
    this._clearRefresh();
    const exp = this._claims?.exp;
    if (!this.refresh || !this.getToken || typeof exp !== "number") return;
    const ws = this._ws;
    this._refreshTimer = setTimeout(() => this._refresh(ws, exp), Math.min(refreshDelay(exp), MAX_TIMER));
  }

  _retryRefresh(ws, exp) {
    // getToken() gave the token in use (a cache not renewed yet): ask again halfway to exp.
    const remaining = exp * 1000 - Date.now();
    if (remaining <= 2000) return; // at exp the server closes 1008 and the reconnect asks getToken()
    this._refreshTimer = setTimeout(() => this._refresh(ws, exp), Math.min(remaining / 2, MAX_TIMER));
  }

  async _refresh(ws, exp) {
    this._refreshTimer = null;
    let token;
    try {
      token = await this.getToken();
    } catch (err) {
      // At exp the server closes 1008 "token expired" and the reconnect asks getToken() again.
      this._emit("error", new MillionwsError("token_failed", `getToken() failed: ${err?.message ?? err}`));
      return;
    }
    if (ws !== this._ws || this._state !== "open" || !token) return;
    if (token === this._token) {
      this._retryRefresh(ws, exp);
      return;
    }
    const claims = tokenClaims(token);
    let reply;
    try {
      reply = await this._request({ op: "refresh", token });
    } catch (err) {
      if (ws !== this._ws || err.code === "disconnected" || err.code === "timeout" || err.code === "closed") return;
      this._emit("error", err);
      // bad_token, forbidden: the server does not take this token on this connection; a new connection
      // with a fresh one instead. Anything else (unknown_op from a server without the op, bad_request):
      // the connection stays until the server closes it 1008 at exp, and the reconnect asks getToken().
      if (err.code === "bad_token" || err.code === "forbidden") this._restart("token refresh failed");
      return;
    }
    if (ws !== this._ws) return;
    this._token = token;
    this._claims = claims;
    const expires = typeof reply.expires === "number" ? reply.expires : null;
    this._emit("refreshed", { expires });
    if (expires !== null && expires > exp) {
      this._claims = { ...(claims ?? {}), exp: expires };
      this._scheduleRefresh();
    } else if (expires === null) {
      this._claims = { ...(claims ?? {}), exp: undefined };
    }
    // Not later than the old one: no new refresh is due; at exp the server closes 1008 and the
    // reconnect asks getToken() again.
  }

  // -- requests ------------------------------------------------------------------------------
  /** Send a request; `settle(err, reply)` is called once, synchronously with the answer's frame (so
   * that what the answer changes holds for the frames right behind it), or with the client's error. */
  _send(doc, settle) {
    const ws = this._ws;
    if (ws === null || this._state !== "open") {
      settle(new MillionwsError("not_connected", "not connected: nothing was sent"));
      return;
    }
    const id = this._nextId++;
    let text;
    try {
      text = JSON.stringify({ ...doc, id });
    } catch (err) {
      settle(err);
      return;
    }
    const timer = setTimeout(() => {
      if (!this._pending.delete(id)) return;
      settle(new MillionwsError("timeout", `no answer within ${this.requestTimeout} ms`));
      // An open socket that answers nothing is dead (a half-open TCP connection): start again.
      if (ws === this._ws) this._restart("request timeout");
    }, this.requestTimeout);
    this._pending.set(id, { settle, timer });
    try {
      ws.send(text);
    } catch (err) {
      clearTimeout(timer);
      this._pending.delete(id);
      settle(new MillionwsError("disconnected", String(err?.message ?? err)));
    }
  }

  _request(doc) {
    return new Promise((resolve, reject) => this._send(doc, (err, reply) => (err ? reject(err) : resolve(reply))));
  }

  /** Subscribe to `channel`; `handler` gets {type: "message" | "gap" | "unsubscribed", ...}.
   * options: since (last seq already seen, 0 = from the start of the replay window), presence (ask
   * for presence events), onPresence. Resolves once subscribed (on the next connection if there is
   * none now); rejects with the server's code (forbidden, bad_channel, ...). */
  subscribe(channel, handler = null, options = {}) {
    if (typeof channel !== "string") return Promise.reject(new TypeError("channel must be a string"));
    let sub = this._subs.get(channel);
    const fresh = sub === undefined;
    if (fresh) {
      sub = { channel, handler: null, onPresence: null, presence: false, subscribed: false, waiters: [] };
      this._subs.set(channel, sub);
    }
    sub.handler = handler;
    if (options.onPresence !== undefined) sub.onPresence = options.onPresence;
    if (fresh) sub.presence = Boolean(options.presence ?? options.onPresence);
    if (fresh && typeof options.since === "number") {
      this.last.set(channel, Math.max(this.last.get(channel) ?? options.since, options.since));
    }
    const subscription = { channel, unsubscribe: () => this.unsubscribe(channel) };
    if (sub.subscribed) return Promise.resolve(subscription);
    const promise = new Promise((resolve, reject) => {
      sub.waiters.push({ resolve: () => resolve(subscription), reject });
    });
    if (fresh && this._state === "open") this._sendSubscribe([sub]);
    return promise;
  }

  /** Stop a subscription; its seq is forgotten. */
  unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (sub === undefined) return Promise.resolve();
    this._subs.delete(channel);
    this.last.delete(channel);
    for (const waiter of sub.waiters.splice(0)) waiter.reject(new MillionwsError("unsubscribed", channel));
    if (this._state !== "open") return Promise.resolve();
    return this._request({ op: "unsubscribe", channels: [channel] }).then(
      () => undefined,
      (err) => {
        if (err.code === "disconnected" || err.code === "not_connected" || err.code === "closed") return;
        throw err;
      },
    );
  }

  /** Publish `data` (any JSON value) on `channel`; resolves to its seq once the sequencer numbered it.
   * Rejects at once with "not_connected" while there is no connection (nothing is queued), with
   * "disconnected" if the connection ended before the answer (the outcome is unknown), or with the
   * server's code (unavailable, publish_timeout, forbidden, rate_limited, ...). */
  publish(channel, data) {
    return this._request({ op: "publish", channel, data }).then((reply) => reply.seq);
  }

  _sendSubscribe(subs) {
    for (const presence of [false, true]) {
      const group = subs.filter((sub) => sub.presence === presence);
      if (group.length) this._subscribeGroup(group, presence);
    }
  }

  _subscribeGroup(group, presence, extra = []) {
    const channels = [...group.map((sub) => sub.channel), ...extra];
    const since = {};
    for (const channel of channels) {
      if (this.last.has(channel)) since[channel] = this.last.get(channel);
    }
    const doc = { op: "subscribe", channels };
    if (Object.keys(since).length) doc.since = since;
    if (presence) doc.presence = true;
    const ws = this._ws;
    const user = this._userChannel;
    const resumesUser = user !== null && since[user] !== undefined;
    if (resumesUser) this._userResuming = true;
    this._send(doc, (err) => {
      if (err === null) {
        if (resumesUser && ws === this._ws) this._userResuming = false;
        for (const sub of group) {
          if (this._subs.get(sub.channel) !== sub) continue;
          sub.subscribed = true;
          for (const waiter of sub.waiters.splice(0)) waiter.resolve();
        }
        return;
      }
      if (!err.reply || ws !== this._ws) return; // no answer: the next connection subscribes again
      if (channels.length > 1) {
        // One refused name refuses the whole request: try each alone, so the others still resume.
        for (const sub of group) {
          if (this._subs.get(sub.channel) === sub) this._subscribeGroup([sub], presence);
        }
        for (const channel of extra) this._subscribeGroup([], false, [channel]);
        return;
      }
      for (const sub of group) this._refused(sub, err);
      if (resumesUser) this._userResuming = false;
      for (const channel of extra) this._forget(channel, err.code);
    });
  }

  _refused(sub, err) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    this.last.delete(sub.channel);
    const waiters = sub.waiters.splice(0);
    for (const waiter of waiters) waiter.reject(err);
    if (!waiters.length) {
      // A resubscription after a reconnect (nobody awaits it): tell the channel's handler.
      this._call(sub.handler, { type: "unsubscribed", channel: sub.channel, reason: err.code });
    }
  }

  _forget(channel, reason) {
    this.last.delete(channel);
    this._call(this.onUserMessage, { type: "unsubscribed", channel, reason });
  }

  _resubscribe() {
    const subs = [...this._subs.values()];
    const user = this._userChannel;
    // The server subscribes the user channel on connect; naming it with since makes it replay what
    // this client missed (docs/protocol.md "Users"). Until that request's answer, the user channel's
    // messages are the early subscription's, ahead of the replay: they are ignored (the replay, which
    // follows the answer, brings them again in order).
    const extra = user !== null && !this._subs.has(user) && this.last.has(user) ? [user] : [];
    const plain = subs.filter((sub) => !sub.presence);
    const withPresence = subs.filter((sub) => sub.presence);
    if (plain.length || extra.length) this._subscribeGroup(plain, false, extra);
    if (withPresence.length) this._subscribeGroup(withPresence, true);
  }

  // -- what the server sends -----------------------------------------------------------------
  _onFrame(text) {
    let doc;
    try {
      doc = JSON.parse(text);
    } catch {
      return;
    }
    if (doc === null || typeof doc !== "object") return;
    const request = doc.id !== undefined && doc.id !== null ? this._pending.get(doc.id) : undefined;
    if (request !== undefined) {
      this._pending.delete(doc.id);
      clearTimeout(request.timer);
      request.settle(doc.op === "error" ? new MillionwsError(doc.code, doc.message, doc) : null, doc);
      return;
    }
    switch (doc.op) {
      case "message":
        this._message(doc);
        break;
      case "gap":
        this._gap(doc);
        break;
      case "presence":
        this._presence(doc);
        break;
      case "unsubscribed":
        this._unsubscribed(doc);
        break;
      case "error":
        this._emit("error", new MillionwsError(doc.code, doc.message, doc));
        break;
      default:
        break; // an op this version does not know: ignored
    }
  }

  /** The subscription of `channel`, or null for the user channel; undefined if neither. */
  _target(channel) {
    const sub = this._subs.get(channel);
    if (sub !== undefined) return sub;
    if (typeof channel !== "string" || !channel.startsWith("@user:")) return undefined;
    if (this._userChannel === null) this._userChannel = channel;
    return channel === this._userChannel ? null : undefined;
  }

  _handlerOf(sub) {
    return sub === null ? this.onUserMessage : sub.handler;
  }

  _message(doc) {
    const { channel, seq } = doc;
    if (typeof seq !== "number") return;
    const sub = this._target(channel);
    if (sub === undefined) return; // a channel given up meanwhile
    if (this._userResuming && channel === this._userChannel) return; // ahead of its replay, which repeats it
    const last = this.last.get(channel);
    if (last !== undefined && seq <= last) {
      this.duplicates++; // seen already (a replay after a reconnect, the user channel's first moments)
      return;
    }
    this.last.set(channel, seq);
    this._call(this._handlerOf(sub), { type: "message", channel, seq, data: doc.data });
  }

  _gap(doc) {
    const { channel, first } = doc;
    if (typeof first !== "number") return;
    const sub = this._target(channel);
    if (sub === undefined) return;
    this.last.set(channel, first - 1);
    this._call(this._handlerOf(sub), { type: "gap", channel, since: doc.since, first, reason: doc.reason });
  }

  _presence(doc) {
    const event = {
      type: "presence",
      channel: doc.channel,
      count: doc.count,
      // null: a "count alone" frame; the members changed in ways it does not list
      joins: Array.isArray(doc.joins) ? doc.joins : null,
      leaves: Array.isArray(doc.leaves) ? doc.leaves : null,
    };
    this._call(this._subs.get(doc.channel)?.onPresence, event);
    this._emit("presence", event);
  }

  _unsubscribed(doc) {
    // Server-initiated (e.g. after a token refresh no longer grants the channel): forget the channel.
    if (!Array.isArray(doc.channels)) return;
    const reason = doc.reason ?? "server";
    for (const channel of doc.channels) {
      const sub = this._subs.get(channel);
      if (sub !== undefined) {
        this._subs.delete(channel);
        this.last.delete(channel);
        for (const waiter of sub.waiters.splice(0)) waiter.reject(new MillionwsError(reason, channel, doc));
        this._call(sub.handler, { type: "unsubscribed", channel, reason });
      } else if (channel === this._userChannel) {
        this._forget(channel, reason);
      }
    }
  }
}

export default Client;
