// Types of millionws-client (src/index.js). Guide: docs/clients/js.md in the millionws repository.

/** Any JSON value: what `publish` sends and a message's `data` holds. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A message of a channel, delivered once, in `seq` order. */
export interface MessageEvent<T = Json> {
  type: "message";
  channel: string;
  seq: number;
  data: T;
}

/** Messages `since + 1 … first - 1` cannot be delivered; delivery goes on from `first`.
 * `expired`: older than the replay window; `unknown`: the channel's sequence restarted (a node without a
 * bus restarted) or the replay did not come in time. */
export interface GapEvent {
  type: "gap";
  channel: string;
  since: number;
  first: number;
  reason: "expired" | "unknown" | string;
}

/** The server ended the subscription (`forbidden`: a refreshed token no longer grants it), or a
 * resubscription after a reconnect was refused (`reason` is the error code). The channel is forgotten. */
export interface UnsubscribedEvent {
  type: "unsubscribed";
  channel: string;
  reason: string;
}

export type ChannelEvent<T = Json> = MessageEvent<T> | GapEvent | UnsubscribedEvent;

export interface PresenceMember {
  user: string;
  client: string;
  [key: string]: Json;
}

/** Joins and leaves since the channel's previous presence frame, and its member count. `joins` and
 * `leaves` are null in a "count alone" frame (too many changes, or changes the server cannot list): the
 * member list changed in ways not listed. */
export interface PresenceEvent {
  type: "presence";
  channel: string;
  count: number;
  joins: PresenceMember[] | null;
  leaves: PresenceMember[] | null;
}

export interface OpenEvent {
  /** false for the first connection, true for every reconnect */
  reconnect: boolean;
}

export interface CloseEvent {
  code: number;
  reason: string;
  /** whether the connection had opened (false: a failed attempt, e.g. a refused handshake) */
  opened: boolean;
  /** milliseconds until the next attempt, or null when the client stops */
  reconnectIn: number | null;
  /** consecutive failed attempts before open so far (attempts before open only) */
  failures?: number;
}

export interface DisconnectedEvent {
  /** 4500-4999: the backend ended this user's session (logout, ban); 1008 (a policy such as a rate limit),
   * 1002, 1003, 1007, 1009, 1010: the server refused what this client sent */
  code: number;
  reason: string;
}

export interface RefreshedEvent {
  /** the new token's exp (seconds since the epoch), or null if it has none */
  expires: number | null;
}

export interface ClientEvents {
  open: OpenEvent;
  close: CloseEvent;
  disconnected: DisconnectedEvent;
  error: MillionwsError;
  refreshed: RefreshedEvent;
  presence: PresenceEvent;
}

/** What `getToken()` returns: a JWT, or null to connect without one. */
export type TokenResult = string | null | undefined;

export interface WebSocketLike {
  readonly protocol?: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "close", listener: (event: unknown) => void): void;
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

export interface ClientOptions {
  /** Called before every connection attempt and before the token's exp; may be async. */
  getToken?: () => TokenResult | Promise<TokenResult>;
  /** The WebSocket class; default globalThis.WebSocket (browsers, Node ≥ 22). On Node 20: the ws package's. */
  WebSocket?: WebSocketConstructor | (new (...args: any[]) => any);
  /** ms; bound of the first reconnect delay (default 100) */
  minDelay?: number;
  /** ms; largest reconnect delay (default 10000) */
  maxDelay?: number;
  /** ms to wait for the answer to a request before giving it up and reconnecting (default 10000) */
  requestTimeout?: number;
  /** consecutive refused attempts before open after which the client stops with an error (default 5) */
  maxFailuresBeforeOpen?: number;
  /** After a failed attempt, fetch the server's /health (or this URL): a server that answers refused us (the
   * attempt counts towards maxFailuresBeforeOpen), one that does not is down (retried, not counted).
   * Default true; false counts every failed attempt. */
  probe?: boolean | string;
  /** send the in-band refresh op before the token's exp (default true); false: reconnect at the server's 1008 */
  refresh?: boolean;
  /** messages and gaps of the connection's own user channel (@user:<sub>) */
  onUserMessage?: (event: ChannelEvent) => void;
}

export interface SubscribeOptions {
  /** the last seq already seen (0: from the start of the replay window); later reconnects use the client's own */
  since?: number;
  /** ask the server for presence events of the channel */
  presence?: boolean;
  onPresence?: (event: PresenceEvent) => void;
}

export interface Subscription {
  channel: string;
  unsubscribe(): Promise<void>;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A refusal: a server error code (docs/protocol.md: forbidden, bad_channel, unavailable,
 * publish_timeout, rate_limited, bad_token, ...) or the client's own: not_connected, disconnected,
 * timeout, closed, connect_failed, token_failed, bad_socket, unsubscribed. */
export class MillionwsError extends Error {
  constructor(code: string, message?: string, reply?: Record<string, Json> | null);
  readonly code: string;
  /** the server's error reply, when it came from the server */
  readonly reply: Record<string, Json> | null;
}

export class Client {
  constructor(url: string | URL, options?: ClientOptions);
  readonly url: string;
  /** channel -> last seq delivered (or announced by since or a gap) */
  readonly last: Map<string, number>;
  /** connections opened after the first */
  readonly reconnects: number;
  /** messages dropped as already delivered */
  readonly duplicates: number;
  readonly state: ClientState;
  /** `@user:<sub>` once known from the token or a message */
  readonly userChannel: string | null;
  getToken: ClientOptions["getToken"] | null;
  onUserMessage: ClientOptions["onUserMessage"] | null;

  /** Start (or restart after close() or a stop); resolves once open, rejects with connect_failed. */
  connect(): Promise<void>;
  /** Close for good; subscriptions are kept for a later connect(). */
  close(code?: number, reason?: string): Promise<void>;
  /** Drop the connection and connect again at once (resume with since, fresh token). */
  reconnect(): void;

  subscribe<T = Json>(
    channel: string,
    handler?: ((event: ChannelEvent<T>) => void) | null,
    options?: SubscribeOptions,
  ): Promise<Subscription>;
  unsubscribe(channel: string): Promise<void>;
  /** Resolves to the message's seq (null in the rare case the broker stored a retried publish under a
   * seq it does not repeat); rejects with not_connected at once while disconnected. */
  publish(channel: string, data: Json): Promise<number | null>;

  on<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
}

export const MIN_DELAY: number;
export const MAX_DELAY: number;
export const MAX_FAILURES_BEFORE_OPEN: number;
export const REQUEST_TIMEOUT: number;

/** Full jitter: uniform in [0, min(maxDelay, minDelay * 2^attempt)] ms. */
export function backoffDelay(attempt: number, minDelay?: number, maxDelay?: number, random?: () => number): number;
/** A JWT's claims, decoded without verification; null if unreadable. */
export function tokenClaims(token: string | null | undefined): Record<string, Json> | null;
/** ms until a token expiring at `exp` (s) should be refreshed: remaining life less min(30 s, 10 %). */
export function refreshDelay(exp: number, now?: number): number;
/** What a close after an open connection leads to: "stop" (4500-4999; 1008 other than "token expired";
 * 1002, 1003, 1007, 1009, 1010), "fresh" (1001, 1012, 1008 "token expired": at once), or "reconnect"
 * (with backoff: 1006, 1000, 1011, 1013, 1014, 4000-4499, anything else). */
export function closeAction(code: number, reason?: string): "stop" | "fresh" | "reconnect";

export default Client;
