/**
 * The client: one connection at a time over a pluggable transport, with
 * reconnect (backoff with equal jitter), subscriptions restored in sid order,
 * then pending flushes, then publishes buffered while disconnected.
 * Delivery is at most once: frames written to a connection that is then lost
 * are lost.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";

import {
  ArqonBusError,
  AuthenticationFailedError,
  ClosedError,
  ConnectionLostError,
  ConnectTimeoutError,
  NoRespondersError,
  OptionsError,
  PayloadTooLargeError,
  ProtocolError,
  ReconnectBufferFullError,
  RequestTimeoutError,
  ServerError,
  StaleConnectionError,
  TlsError,
  UnsupportedVersionError,
} from "./errors.js";
import {
  ClientKind as WireClientKind,
  ConnectSchema,
  ErrorCode,
  type Frame,
  FrameSchema,
  HeaderSchema,
  MessageStatus,
  type Message as WireMessage,
  PingSchema,
  PongSchema,
  PresenceAction,
  type PresenceEvent as WirePresenceEvent,
  PresenceQuerySchema,
  type PresenceReply,
  PresenceTrackSchema,
  PresenceWatchSchema,
  PublishSchema,
  SubscribeSchema,
  UnsubscribeSchema,
  type Welcome,
} from "./gen/arqonbus/v1/client_pb.js";
import * as presence from "./presence.js";
import { type PresenceSnapshot, PresenceWatch } from "./presence.js";
import { checkHeaders, checkQueueGroup, checkSubject, type HeadersInit } from "./subjects.js";
import type { Transport, TransportFactory } from "./transport.js";

export const VERSION = "0.1.0";
const PROTOCOL_VERSION = 1;
const MAX_PINGS_OUTSTANDING = 2;
/** After a Drain notice, how long past its deadline the client waits for the server's close. */
const DRAIN_MARGIN_MS = 1000;
const MAX_CLIENT_NAME = 128;

export type ClientKind = "human" | "device" | "agent";

/** Exponential backoff with equal jitter: attempt n waits in [d/2, d], d = min(initial * 2^n, max). */
export interface ReconnectPolicy {
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** `undefined`: forever; 0: never reconnect. */
  maxAttempts?: number;
}

/** The delay before reconnect attempt `attempt` (0-based), in ms; `random` in [0, 1]. */
export function backoffDelay(policy: ReconnectPolicy, attempt: number, random = Math.random()): number {
  const initial = Math.max(policy.initialDelayMs ?? 50, 1);
  const max = Math.max(policy.maxDelayMs ?? 5000, 1);
  const base = Math.min(initial * 2 ** Math.min(attempt, 32), max);
  return base / 2 + (base / 2) * Math.min(Math.max(random, 0), 1);
}

/** A token, or a function returning one (called before every connection attempt). */
export type CredentialSource = string | (() => string | Promise<string>);

export interface ServerInfo {
  serverId: string;
  sessionId: bigint;
  shard: number;
  tenant: string;
  serverVersion: string;
  protocolVersion: number;
  /** The revision of version 1 the server speaks (0: older than 1.3; 2 has presence). */
  protocolMinor: number;
  limits: {
    maxPayload: number;
    maxFrame: number;
    maxSubscriptions: number;
    maxHeaders: number;
    maxSubjectLen: number;
    pingIntervalMs: number;
    maxPendingBytes: bigint;
  };
}

export type ClientEvent =
  | { type: "disconnected"; reason: ArqonBusError }
  | { type: "reconnected"; info: ServerInfo }
  | { type: "serverError"; error: ServerError }
  | { type: "serverDraining"; deadlineMs: number; reason: string }
  | { type: "slowConsumer"; sid: number; dropped: number }
  | { type: "closed"; reason?: ArqonBusError };

export interface ConnectOptions {
  /** How to reach the server: `tcp({...})` from `@arqonbus/client/node`, or `webSocket(url)`. */
  transport: TransportFactory;
  /** A bearer (`abt_`) or signed (`abs_`) token, or a function returning one. */
  credential: CredentialSource;
  /** A name for operators (at most 128 bytes). */
  name?: string;
  /** Default `human` (browsers); agents should say `agent`. */
  kind?: ClientKind;
  /** Do not receive this connection's own publishes. */
  noEcho?: boolean;
  reconnect?: ReconnectPolicy;
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  pingIntervalMs?: number;
  /** Bytes of publishes held while disconnected (default 8 MiB). */
  reconnectBufferSize?: number;
  /** Messages a subscription buffers before dropping (default 8192). */
  subscriberCapacity?: number;
  onEvent?: (event: ClientEvent) => void;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const ascii = (b: Uint8Array) => decoder.decode(b);

/** A delivered message. `toString()`/`inspect` never show the payload. */
export class Msg {
  constructor(
    readonly subject: string,
    readonly reply: string | undefined,
    readonly headers: ReadonlyArray<readonly [string, string]>,
    readonly data: Uint8Array,
    readonly sid: number,
    readonly noResponders: boolean,
    private readonly client: Client | undefined,
  ) {}

  /** The first value of header `key`. */
  header(key: string): string | undefined {
    return this.headers.find(([k]) => k === key)?.[1];
  }

  /** The payload as UTF-8 text. */
  text(): string {
    return decoder.decode(this.data);
  }

  /** The payload parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T;
  }

  /** Publishes `data` to this message's reply subject. */
  respond(data: Uint8Array | string = new Uint8Array(), options: { headers?: HeadersInit } = {}): void {
    if (this.reply === undefined || this.client === undefined) {
      throw new ArqonBusError("this message has no reply subject");
    }
    this.client.publish(this.reply, data, options);
  }

  toString(): string {
    return `Msg(subject=${this.subject}, sid=${this.sid}, payload=<${this.data.length} bytes>)`;
  }

  /** Node's util.inspect (console.log) shows no payload or header value. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  toJSON(): object {
    return { subject: this.subject, reply: this.reply, sid: this.sid, bytes: this.data.length };
  }
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
  done: boolean;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const d: Deferred<T> = {
    promise: new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    }),
    resolve: (v) => {
      if (!d.done) {
        d.done = true;
        resolve(v);
      }
    },
    reject: (e) => {
      if (!d.done) {
        d.done = true;
        reject(e);
      }
    },
    done: false,
  };
  // A rejection nobody awaits is not an unhandled rejection.
  d.promise.catch(() => undefined);
  return d;
}

/** Awaits `p`, rejecting with `onTimeout()` after `ms` (no timer when `ms` is undefined). */
function withTimeout<T>(p: Promise<T>, ms: number | undefined, onTimeout: () => Error): Promise<T> {
  if (ms === undefined) return p;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** What the server sends: a `Frame`, or the presence reply or event it carries. */
type Incoming = Frame | PresenceReply | WirePresenceEvent;

function decodeIncoming(body: Uint8Array): Incoming {
  const frame = fromBinary(FrameSchema, body);
  if (frame.kind.case === "presenceReply" || frame.kind.case === "presenceEvent") return frame.kind.value;
  return frame;
}

function encodeFrame(kind: Frame["kind"]): Uint8Array {
  return toBinary(FrameSchema, create(FrameSchema, { kind }));
}

const PING = encodeFrame({ case: "ping", value: create(PingSchema) });
const PONG = encodeFrame({ case: "pong", value: create(PongSchema) });

function serverFailure(err: ServerError): ArqonBusError {
  if (err.code === ErrorCode.AUTHENTICATION_FAILED) return new AuthenticationFailedError(err.serverMessage);
  if (err.code === ErrorCode.UNSUPPORTED_VERSION) return new UnsupportedVersionError(err.serverMessage);
  return err;
}

function allowsReconnect(err: ArqonBusError): boolean {
  return err.retryable || err instanceof TlsError;
}

function infoFrom(w: Welcome): ServerInfo {
  const l = w.limits;
  return {
    serverId: w.serverId,
    sessionId: w.sessionId,
    shard: w.shard,
    tenant: w.tenant,
    serverVersion: w.serverVersion,
    protocolVersion: w.protocolVersion,
    protocolMinor: w.protocolMinor,
    limits: {
      maxPayload: l?.maxPayload || 1024 * 1024,
      maxFrame: l?.maxFrame || 1024 * 1024 + 16 * 1024,
      maxSubscriptions: l?.maxSubscriptions || 10_000,
      maxHeaders: l?.maxHeaders || 32,
      maxSubjectLen: l?.maxSubjectLen || 256,
      pingIntervalMs: l?.pingIntervalMs ?? 0,
      maxPendingBytes: l?.maxPendingBytes ?? 0n,
    },
  };
}

class Conn {
  info!: ServerInfo;
  attached = false;
  done = false;
  /** One entry per Ping sent: null for a keepalive, a waiter for a flush. */
  pongs: Array<Deferred<void> | null> = [];
  early: Incoming[] = [];
  keepalive: ReturnType<typeof setInterval> | undefined;
  drainTimer: ReturnType<typeof setTimeout> | undefined;
  /** The server announced this connection's close (Drain): reconnect at once after it. */
  announced = false;
  constructor(readonly transport: Transport) {}
  send(body: Uint8Array): void {
    if (!this.done) this.transport.send(body);
  }
}

/**
 * A live subscription: an async iterable of `Msg`. Iteration yields buffered
 * messages, then ends when the subscription is unsubscribed or the client
 * closes; if the server refused it (or the client closed on a fatal error),
 * iteration throws that error after the buffered messages.
 */
export class Subscription implements AsyncIterable<Msg> {
  /** Messages dropped because the buffer was full. */
  dropped = 0;
  /** Why the subscription ended, when it was not asked to. */
  error: ArqonBusError | undefined;
  /** @internal */ remaining: number | undefined;
  /** @internal presence metadata while listed */ presence: Record<string, string> | undefined;
  /** @internal */ trackError: ArqonBusError | undefined;
  /** @internal */ overflowing = false;
  private buf: Msg[] = [];
  private waiter: Deferred<void> | undefined;
  private ended = false;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly sid: number,
    readonly subject: string,
    readonly queue: string | undefined,
    private readonly capacity: number,
    /** @internal */ readonly callback?: (m: Msg) => void,
  ) {}

  /** @internal */
  push(m: Msg): boolean {
    if (this.callback) {
      this.callback(m);
      return true;
    }
    if (this.buf.length >= this.capacity) {
      this.dropped++;
      return false;
    }
    this.buf.push(m);
    this.waiter?.resolve();
    return true;
  }

  /** @internal */
  end(error?: ArqonBusError): void {
    if (this.ended) return;
    this.ended = true;
    if (error && !this.error) this.error = error;
    this.waiter?.resolve();
  }

  get active(): boolean {
    return !this.ended;
  }

  /** Messages buffered and not read yet. */
  get pending(): number {
    return this.buf.length;
  }

  /**
   * The next message, or `undefined` when the subscription ended. Throws
   * `RequestTimeoutError` after `timeoutMs`, or the error that ended it.
   */
  async next(timeoutMs?: number): Promise<Msg | undefined> {
    while (this.buf.length === 0) {
      if (this.ended) {
        if (this.error) throw this.error;
        return undefined;
      }
      const w = deferred<void>();
      this.waiter = w;
      try {
        await withTimeout(
          w.promise,
          timeoutMs,
          () => new RequestTimeoutError(`no message on ${JSON.stringify(this.subject)} within ${timeoutMs} ms`),
        );
      } finally {
        this.waiter = undefined;
      }
    }
    return this.buf.shift();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Msg> {
    for (;;) {
      const m = await this.next();
      if (m === undefined) return;
      yield m;
    }
  }

  /**
   * Lists this subscription (its subject must be literal) in the subject's
   * presence with `metadata` until it ends; listed again after a reconnect.
   * Rejects with `PRESENCE_LIMIT_EXCEEDED` or `INVALID_HEADERS` (the
   * subscription itself stays).
   */
  track(metadata?: Record<string, string>): Promise<void> {
    return this.client.trackSid(this, metadata);
  }

  /** Stops now; buffered messages can still be read. */
  unsubscribe(): void {
    this.client.unsubscribeSid(this, 0);
  }

  /** Stops after `n` more messages. */
  unsubscribeAfter(n: number): void {
    if (!(n > 0)) throw new RangeError("n must be positive");
    this.client.unsubscribeSid(this, n);
  }
}

type Queued = Uint8Array | Deferred<void>;

export class Client {
  private conn: Conn | undefined;
  private info: ServerInfo | undefined;
  private state: "connected" | "reconnecting" | "closed" = "reconnecting";
  private closing = false;
  private closedReason: ArqonBusError | undefined;
  private readonly closedWaiter = deferred<ArqonBusError | undefined>();
  private wake: (() => void) | undefined;
  private nextSid = 1;
  private readonly subs = new Map<number, Subscription>();
  private queued: Queued[] = [];
  private queuedBytes = 0;
  private readonly inboxPrefix: string;
  private inbox: Promise<void> | undefined;
  private nextToken = 1;
  private readonly requests = new Map<number, { subject: string; d: Deferred<Msg> }>();
  private readonly watches = new Map<number, PresenceWatch>();
  private readonly queries = new Map<number, { subject: string; d: Deferred<PresenceSnapshot> }>();
  private nextQuery = 1;
  /** The credential source, in a private field so no inspection or JSON shows it. */
  readonly #credential: CredentialSource;
  private readonly opts: Required<Omit<ConnectOptions, "onEvent" | "reconnect" | "credential">> & {
    onEvent?: (e: ClientEvent) => void;
    reconnect: ReconnectPolicy;
  };

  private constructor(options: ConnectOptions) {
    const { credential, ...rest } = options;
    this.#credential = credential;
    this.opts = {
      name: "",
      kind: "human",
      noEcho: false,
      requestTimeoutMs: 5000,
      connectTimeoutMs: 5000,
      pingIntervalMs: 30_000,
      reconnectBufferSize: 8 * 1024 * 1024,
      subscriberCapacity: 8192,
      ...rest,
      reconnect: options.reconnect ?? {},
    };
    if (typeof credential === "string") checkCredential(credential);
    if (encoder.encode(this.opts.name).length > MAX_CLIENT_NAME) {
      throw new OptionsError("client name is longer than 128 bytes");
    }
    for (const key of [
      "requestTimeoutMs",
      "connectTimeoutMs",
      "pingIntervalMs",
      "reconnectBufferSize",
      "subscriberCapacity",
    ] as const) {
      if (!(this.opts[key] > 0)) throw new OptionsError(`option ${key} must be greater than zero`);
    }
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const bytes = new Uint8Array(64);
    globalThis.crypto.getRandomValues(bytes);
    let id = "";
    for (const b of bytes) if (b < 248 && id.length < 22) id += alphabet[b % 62];
    this.inboxPrefix = `_INBOX.${id}`;
  }

  /** Connects and resolves once the server's `Welcome` arrived (one attempt, bounded). */
  static async connect(options: ConnectOptions): Promise<Client> {
    const client = new Client(options);
    const conn = await client.open();
    client.attach(conn);
    return client;
  }

  // ------------------------------------------------------------ connection
  private async credentialText(): Promise<string> {
    const src = this.#credential;
    const token = typeof src === "string" ? src : await src();
    return checkCredential(token);
  }

  private async open(): Promise<Conn> {
    const token = await this.credentialText();
    let conn: Conn | undefined;
    const welcomed = deferred<Conn>();
    const attempt = this.opts.transport({
      onFrame: (body) => {
        let incoming: Incoming;
        try {
          incoming = decodeIncoming(body);
        } catch {
          return this.failConn(conn, welcomed, new ProtocolError("a frame that does not decode"));
        }
        if (conn === undefined) return;
        if (conn.attached) return this.onFrame(conn, incoming);
        if (conn.info !== undefined) {
          conn.early.push(incoming); // after the Welcome, before attach
          return;
        }
        if (incoming.$typeName !== "arqonbus.v1.Frame") {
          return this.failConn(conn, welcomed, new ProtocolError("a presence frame before Welcome"));
        }
        const frame = incoming;
        if (frame.kind.case === "welcome") {
          conn.info = infoFrom(frame.kind.value);
          welcomed.resolve(conn);
        } else if (frame.kind.case === "error") {
          const e = frame.kind.value;
          this.failConn(conn, welcomed, serverFailure(new ServerError(e.code, e.message, true, undefined)));
        } else {
          this.failConn(conn, welcomed, new ProtocolError(`unexpected ${frame.kind.case ?? "unknown"} frame before Welcome`));
        }
      },
      onClose: (err) => this.failConn(conn, welcomed, err),
    });
    const opened = attempt.then((t) => {
      conn = new Conn(t);
      t.send(
        encodeFrame({
          case: "connect",
          value: create(ConnectSchema, {
            protocolVersion: PROTOCOL_VERSION,
            credential: token,
            clientName: this.opts.name,
            clientKind:
              this.opts.kind === "agent"
                ? WireClientKind.AGENT
                : this.opts.kind === "device"
                  ? WireClientKind.DEVICE
                  : WireClientKind.HUMAN,
            clientVersion: `arqonbus-ts/${VERSION}`,
            noEcho: this.opts.noEcho,
          }),
        }),
      );
      return welcomed.promise;
    });
    try {
      return await withTimeout(opened, this.opts.connectTimeoutMs, () => new ConnectTimeoutError());
    } catch (e) {
      conn?.transport.close();
      attempt.then((t) => t.close(), () => undefined);
      throw e instanceof ArqonBusError ? e : new ConnectionLostError(String(e));
    }
  }

  /** Ends `conn` (first reason wins): before Welcome it fails the attempt. */
  private failConn(conn: Conn | undefined, welcomed: Deferred<Conn>, err: ArqonBusError): void {
    if (!welcomed.done) {
      welcomed.reject(err);
      conn?.transport.close();
      if (conn) conn.done = true;
      return;
    }
    if (conn) this.lose(conn, err);
  }

  private attach(conn: Conn): void {
    this.conn = conn;
    this.info = conn.info;
    conn.attached = true;
    for (const sid of [...this.subs.keys()].sort((a, b) => a - b)) {
      const sub = this.subs.get(sid)!;
      conn.send(this.subscribeFrame(sid, sub.subject, sub.queue));
      if (sub.remaining !== undefined) {
        conn.send(
          encodeFrame({
            case: "unsubscribe",
            value: create(UnsubscribeSchema, { sid: BigInt(sid), afterMessages: BigInt(sub.remaining) }),
          }),
        );
      }
      if (sub.presence !== undefined) conn.send(trackFrame(sid, sub.presence));
    }
    for (const [id, w] of [...this.watches.entries()].sort((a, b) => a[0] - b[0])) {
      conn.send(watchFrame(id, w.subject, false));
    }
    for (const [id, q] of this.queries) if (!q.d.done) conn.send(queryFrame(id, q.subject));
    for (const item of this.queued) {
      if (item instanceof Uint8Array) conn.send(item);
      else if (!item.done) {
        conn.pongs.push(item);
        conn.send(PING);
      }
    }
    this.queued = [];
    this.queuedBytes = 0;
    this.state = "connected";
    conn.keepalive = setInterval(() => {
      if (conn.pongs.filter((p) => p === null).length >= MAX_PINGS_OUTSTANDING) {
        this.lose(conn, new StaleConnectionError());
        return;
      }
      conn.pongs.push(null);
      conn.send(PING);
    }, this.opts.pingIntervalMs);
    const early = conn.early;
    conn.early = [];
    for (const f of early) if (!conn.done) this.onFrame(conn, f);
  }

  /** The connection is over: stop its timers and decide what comes next. */
  private lose(conn: Conn, err: ArqonBusError): void {
    if (conn.done) return;
    conn.done = true;
    clearInterval(conn.keepalive);
    clearTimeout(conn.drainTimer);
    conn.transport.close(this.closing);
    if (this.conn === conn) this.conn = undefined;
    // Flushes pending on the lost connection are re-sent after the resubscription.
    const waiting = conn.pongs.filter((p): p is Deferred<void> => p !== null && !p.done);
    this.queued.unshift(...waiting);
    if (this.closing) return;
    const can = allowsReconnect(err) && allows(this.opts.reconnect, 0);
    if (can) this.state = "reconnecting";
    this.emit({ type: "disconnected", reason: err });
    if (!can) {
      this.shutdown(err);
      return;
    }
    void this.reconnect(err, conn.announced);
  }

  /** `atOnce`: the server announced the close (Drain) and chose its moment, so the first attempt does not wait. */
  private async reconnect(last: ArqonBusError, atOnce = false): Promise<void> {
    for (let attempt = 0; ; ) {
      if (!allows(this.opts.reconnect, attempt)) {
        this.shutdown(last);
        return;
      }
      const delay = atOnce && attempt === 0 ? 0 : backoffDelay(this.opts.reconnect, attempt);
      attempt++;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
      if (this.closing) return;
      try {
        const conn = await this.open();
        if (this.closing) {
          conn.transport.close();
          return;
        }
        this.attach(conn);
        this.emit({ type: "reconnected", info: conn.info });
        return;
      } catch (e) {
        const err = e instanceof ArqonBusError ? e : new ConnectionLostError(String(e));
        if (this.closing) return;
        if (!allowsReconnect(err)) {
          this.shutdown(err);
          return;
        }
        // Login throttling: retrying soon prolongs it; wait the longest.
        if (err instanceof ServerError && err.code === ErrorCode.AUTH_THROTTLED) attempt = Math.max(attempt, 32);
        last = err;
      }
    }
  }

  private onFrame(conn: Conn, incoming: Incoming): void {
    if (incoming.$typeName !== "arqonbus.v1.Frame") return this.onPresence(incoming);
    const k = incoming.kind;
    switch (k.case) {
      case "message":
        return this.deliver(k.value);
      case "ping":
        return conn.send(PONG);
      case "pong": {
        const w = conn.pongs.shift();
        w?.resolve();
        return;
      }
      case "drain": {
        const deadline = k.value.deadlineMs;
        this.emit({ type: "serverDraining", deadlineMs: deadline, reason: k.value.reason });
        conn.announced = true;
        if (conn.drainTimer === undefined) {
          // The server closes within the window, spread as it chose (a
          // tenant's clients together on an upgrade); only if it has not
          // by the deadline does the client leave by itself.
          conn.drainTimer = setTimeout(
            () => this.lose(conn, new ConnectionLostError("reconnecting after the server's Drain notice")),
            deadline + DRAIN_MARGIN_MS,
          );
        }
        return;
      }
      case "error": {
        const e = k.value;
        const err = new ServerError(e.code, e.message, e.close, e.sid ? Number(e.sid) : undefined);
        if (err.fatal) return this.lose(conn, serverFailure(err));
        if (err.sid !== undefined) {
          const watch = this.watches.get(err.sid);
          const sub = this.subs.get(err.sid);
          if (watch) {
            this.watches.delete(err.sid);
            watch.end(err);
          } else if (
            sub &&
            (err.code === ErrorCode.PRESENCE_LIMIT_EXCEEDED || err.code === ErrorCode.INVALID_HEADERS)
          ) {
            // A refused listing: the subscription stays, unlisted.
            sub.presence = undefined;
            sub.trackError = err;
          } else if (sub) {
            this.subs.delete(err.sid);
            sub.end(err);
          }
        }
        this.emit({ type: "serverError", error: err });
        return;
      }
      default:
        return this.lose(conn, new ProtocolError(`unexpected ${k.case ?? "unknown"} frame`));
    }
  }

  private deliver(m: WireMessage): void {
    const sid = Number(m.sid);
    const sub = this.subs.get(sid);
    if (!sub) return;
    const msg = new Msg(
      ascii(m.subject),
      m.reply.length ? ascii(m.reply) : undefined,
      m.headers.map((h) => [ascii(h.key), ascii(h.value)] as const),
      m.payload,
      sid,
      m.status === MessageStatus.NO_RESPONDERS,
      this,
    );
    if (sub.push(msg)) sub.overflowing = false;
    else if (!sub.overflowing) {
      sub.overflowing = true;
      this.emit({ type: "slowConsumer", sid, dropped: sub.dropped });
    }
    if (sub.remaining !== undefined && --sub.remaining <= 0) {
      this.subs.delete(sid);
      sub.end();
    }
  }

  private emit(event: ClientEvent): void {
    try {
      this.opts.onEvent?.(event);
    } catch {
      // A listener's failure is not the client's.
    }
  }

  private shutdown(reason: ArqonBusError | undefined): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.closedReason = reason;
    for (const sub of this.subs.values()) sub.end(reason);
    this.subs.clear();
    for (const { d } of this.requests.values()) d.reject(new ClosedError(reason));
    this.requests.clear();
    for (const w of this.watches.values()) w.end(reason);
    this.watches.clear();
    for (const { d } of this.queries.values()) d.reject(new ClosedError(reason));
    this.queries.clear();
    for (const item of this.queued) if (!(item instanceof Uint8Array)) item.reject(new ClosedError(reason));
    this.queued = [];
    this.queuedBytes = 0;
    this.closedWaiter.resolve(reason);
    this.emit({ type: "closed", reason });
  }

  // ------------------------------------------------------------ public API
  /** The last `Welcome`: shard, tenant, session, limits. */
  get serverInfo(): ServerInfo | undefined {
    return this.info;
  }

  /** `connected`, `reconnecting` or `closed`. */
  get status(): "connected" | "reconnecting" | "closed" {
    return this.state;
  }

  /** Why the client closed by itself (undefined after close()/drain()). */
  get closedError(): ArqonBusError | undefined {
    return this.closedReason;
  }

  /** Resolves when the client is closed, with the reason (undefined after close()). */
  closed(): Promise<ArqonBusError | undefined> {
    return this.closedWaiter.promise;
  }

  private checkOpen(): void {
    if (this.state === "closed" || this.closing) throw new ClosedError(this.closedReason);
  }

  private get limits() {
    return (
      this.info?.limits ?? { maxSubjectLen: 256, maxHeaders: 32, maxPayload: 1024 * 1024 }
    );
  }

  private live(): Conn | undefined {
    const c = this.conn;
    return c && this.state === "connected" && !c.done ? c : undefined;
  }

  private sendOrdered(frame: Uint8Array): void {
    const c = this.live();
    if (c) {
      c.send(frame);
      return;
    }
    if (this.queuedBytes + frame.length > this.opts.reconnectBufferSize) {
      throw new ReconnectBufferFullError(this.opts.reconnectBufferSize);
    }
    this.queued.push(frame);
    this.queuedBytes += frame.length;
  }

  private subscribeFrame(sid: number, subject: string, queue: string | undefined): Uint8Array {
    return encodeFrame({
      case: "subscribe",
      value: create(SubscribeSchema, {
        sid: BigInt(sid),
        pattern: encoder.encode(subject),
        queueGroup: queue === undefined ? new Uint8Array() : encoder.encode(queue),
      }),
    });
  }

  private publishFrame(
    subject: string,
    data: Uint8Array | string,
    reply: string | undefined,
    headers: HeadersInit | undefined,
  ): Uint8Array {
    const lim = this.limits;
    const subj = checkSubject(subject, lim.maxSubjectLen, false);
    const rep = reply === undefined ? new Uint8Array() : checkSubject(reply, lim.maxSubjectLen, false);
    const hdrs = checkHeaders(headers, lim.maxHeaders);
    const payload = typeof data === "string" ? encoder.encode(data) : data;
    if (payload.length > lim.maxPayload) throw new PayloadTooLargeError(payload.length, lim.maxPayload);
    return encodeFrame({
      case: "publish",
      value: create(PublishSchema, {
        subject: subj,
        reply: rep,
        headers: hdrs.map(([key, value]) => create(HeaderSchema, { key, value })),
        payload,
      }),
    });
  }

  /**
   * Publishes `data` on `subject`. Checks subject, headers and size first
   * (nothing invalid is sent). Queued at once; while disconnected, held in
   * the reconnect buffer (or `ReconnectBufferFullError`).
   */
  publish(
    subject: string,
    data: Uint8Array | string = new Uint8Array(),
    options: { reply?: string; headers?: HeadersInit } = {},
  ): void {
    this.checkOpen();
    this.sendOrdered(this.publishFrame(subject, data, options.reply, options.headers));
  }

  /**
   * The Ping/Pong barrier: resolves when everything sent before, and every
   * subscription change, is in effect on every shard. Repeated after a reconnect.
   */
  async flush(timeoutMs?: number): Promise<void> {
    this.checkOpen();
    const d = deferred<void>();
    const c = this.live();
    if (c) {
      c.pongs.push(d);
      c.send(PING);
    } else {
      this.queued.push(d);
    }
    await withTimeout(d.promise, timeoutMs, () => new RequestTimeoutError(`no Pong within ${timeoutMs} ms`));
  }

  /**
   * Subscribes to `subject` (a subject or a pattern with `*` and `>`),
   * optionally in queue group `queue`. Resolves after a flush, so the
   * subscription is live on every shard; rejects with the server's error if it
   * refused it.
   */
  async subscribe(
    subject: string,
    options: { queue?: string; capacity?: number } = {},
  ): Promise<Subscription> {
    return this.subscribeWith(subject, options.queue, options.capacity, undefined);
  }

  private async subscribeWith(
    subject: string,
    queue: string | undefined,
    capacity: number | undefined,
    callback: ((m: Msg) => void) | undefined,
  ): Promise<Subscription> {
    this.checkOpen();
    checkSubject(subject, this.limits.maxSubjectLen, true);
    if (queue !== undefined) checkQueueGroup(queue);
    const sid = this.nextSid++;
    const sub = new Subscription(this, sid, subject, queue, capacity ?? this.opts.subscriberCapacity, callback);
    this.subs.set(sid, sub);
    this.live()?.send(this.subscribeFrame(sid, subject, queue));
    await this.flush();
    if (sub.error) throw sub.error;
    return sub;
  }

  /** @internal */
  unsubscribeSid(sub: Subscription, after: number): void {
    if (!this.subs.has(sub.sid)) return;
    if (after === 0) {
      this.subs.delete(sub.sid);
      sub.end();
    } else {
      sub.remaining = after;
    }
    this.live()?.send(
      encodeFrame({
        case: "unsubscribe",
        value: create(UnsubscribeSchema, { sid: BigInt(sub.sid), afterMessages: BigInt(after) }),
      }),
    );
  }

  private onReply(m: Msg): void {
    const tail = m.subject.slice(m.subject.lastIndexOf(".") + 1);
    const entry = this.requests.get(Number(tail));
    if (!entry) return; // late or second reply
    this.requests.delete(Number(tail));
    if (m.noResponders) entry.d.reject(new NoRespondersError(entry.subject));
    else entry.d.resolve(m);
  }

  private ensureInbox(): Promise<void> {
    if (!this.inbox) {
      this.inbox = this.subscribeWith(`${this.inboxPrefix}.*`, undefined, 1, (m) => this.onReply(m)).then(
        () => undefined,
        (e: unknown) => {
          this.inbox = undefined;
          throw e;
        },
      );
    }
    return this.inbox;
  }

  /**
   * Sends a request and resolves with the first reply. Rejects with
   * `NoRespondersError` at once when nobody subscribes to `subject`, and with
   * `RequestTimeoutError` after `timeoutMs` (default `requestTimeoutMs`).
   */
  async request(
    subject: string,
    data: Uint8Array | string = new Uint8Array(),
    options: { timeoutMs?: number; headers?: HeadersInit } = {},
  ): Promise<Msg> {
    this.checkOpen();
    const token = this.nextToken++;
    const frame = this.publishFrame(subject, data, `${this.inboxPrefix}.${token}`, options.headers);
    const limit = options.timeoutMs ?? this.opts.requestTimeoutMs;
    const d = deferred<Msg>();
    const run = async () => {
      await this.ensureInbox();
      this.requests.set(token, { subject, d });
      this.sendOrdered(frame);
      return d.promise;
    };
    try {
      return await withTimeout(
        run(),
        limit,
        () => new RequestTimeoutError(`no reply on ${JSON.stringify(subject)} within ${limit} ms`),
      );
    } finally {
      this.requests.delete(token);
    }
  }

  /** @internal */
  async trackSid(sub: Subscription, metadata: Record<string, string> | undefined): Promise<void> {
    this.checkOpen();
    checkSubject(sub.subject, this.limits.maxSubjectLen, false);
    const md = presence.checkMetadata(metadata);
    if (!this.subs.has(sub.sid)) throw new ClosedError(sub.error);
    sub.presence = md;
    sub.trackError = undefined;
    this.live()?.send(trackFrame(sub.sid, md));
    await this.flush();
    if (sub.trackError) throw sub.trackError;
    if (sub.error) throw sub.error;
  }

  /**
   * Join and leave events of `subject` (literal) from now on. Watch, then
   * query: every change after the answer arrives as an event. Rejects with
   * `PERMISSION_DENIED` or `PRESENCE_LIMIT_EXCEEDED`.
   */
  async watchPresence(subject: string): Promise<PresenceWatch> {
    this.checkOpen();
    checkSubject(subject, this.limits.maxSubjectLen, false);
    const id = this.nextSid++;
    const watch = new PresenceWatch((w) => this.stopWatch(w), id, subject);
    this.watches.set(id, watch);
    this.live()?.send(watchFrame(id, subject, false));
    await this.flush();
    if (watch.error) throw watch.error;
    return watch;
  }

  private stopWatch(w: PresenceWatch): void {
    if (!this.watches.delete(w.watchId)) return;
    w.end();
    this.live()?.send(watchFrame(w.watchId, w.subject, true));
  }

  /**
   * Who is on `subject` now (at most 1,000 members, `truncated` when more).
   * Rejects with `ServerError` (`PERMISSION_DENIED`, `INVALID_SUBJECT`) or
   * `RequestTimeoutError` after `timeoutMs` (default `requestTimeoutMs`).
   */
  async presence(subject: string, options: { timeoutMs?: number } = {}): Promise<PresenceSnapshot> {
    this.checkOpen();
    checkSubject(subject, this.limits.maxSubjectLen, false);
    const id = this.nextQuery++;
    const d = deferred<PresenceSnapshot>();
    this.queries.set(id, { subject, d });
    this.live()?.send(queryFrame(id, subject));
    const limit = options.timeoutMs ?? this.opts.requestTimeoutMs;
    try {
      return await withTimeout(
        d.promise,
        limit,
        () => new RequestTimeoutError(`no presence answer on ${JSON.stringify(subject)} within ${limit} ms`),
      );
    } finally {
      this.queries.delete(id);
    }
  }

  private onPresence(p: PresenceReply | WirePresenceEvent): void {
    if (p.$typeName === "arqonbus.v1.PresenceReply") {
      const id = Number(p.requestId);
      const q = this.queries.get(id);
      if (!q) return;
      this.queries.delete(id);
      if (p.error) q.d.reject(new ServerError(p.error, "presence query refused", false, undefined));
      else q.d.resolve({ subject: q.subject, members: p.members.map(presence.memberFromWire), truncated: p.truncated });
      return;
    }
    const watch = this.watches.get(Number(p.watchId));
    if (!watch) return;
    const action =
      p.action === PresenceAction.JOIN ? "join" : p.action === PresenceAction.LEAVE ? "leave" : undefined;
    if (!action) return;
    watch.push({ subject: ascii(p.subject), action, member: presence.memberFromWire(p.member) });
  }

  /** Unsubscribes everything, waits for the barrier (subscribers get what was sent), then closes. */
  async drain(): Promise<void> {
    if (this.state === "closed" || this.closing) return;
    const c = this.live();
    if (c) {
      for (const sid of [...this.subs.keys()].sort((a, b) => a - b)) {
        c.send(
          encodeFrame({ case: "unsubscribe", value: create(UnsubscribeSchema, { sid: BigInt(sid) }) }),
        );
      }
      try {
        await this.flush(5000);
      } catch {
        // closing anyway
      }
    }
    await this.close();
  }

  /** Closes now (what is buffered is written, best effort). Idempotent. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    this.closing = true;
    this.wake?.();
    const c = this.conn;
    if (c) this.lose(c, new ClosedError());
    this.shutdown(undefined);
  }
}

function allows(policy: ReconnectPolicy, attempt: number): boolean {
  return policy.maxAttempts === undefined || attempt < policy.maxAttempts;
}

function checkCredential(token: string): string {
  const t = token.trim();
  if (!t) throw new OptionsError("invalid credential: it is empty");
  if (/[\s\x00-\x1f\x7f]/.test(t)) {
    throw new OptionsError("invalid credential: it contains whitespace or control characters");
  }
  return t;
}

function trackFrame(sid: number, metadata: Record<string, string>): Uint8Array {
  return encodeFrame({ case: "presenceTrack", value: create(PresenceTrackSchema, { sid: BigInt(sid), metadata }) });
}

function watchFrame(id: number, subject: string, stop: boolean): Uint8Array {
  return encodeFrame({
    case: "presenceWatch",
    value: create(PresenceWatchSchema, { watchId: BigInt(id), subject: encoder.encode(subject), stop }),
  });
}

function queryFrame(id: number, subject: string): Uint8Array {
  return encodeFrame({
    case: "presenceQuery",
    value: create(PresenceQuerySchema, { requestId: BigInt(id), subject: encoder.encode(subject) }),
  });
}
