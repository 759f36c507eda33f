/**
 * Presence (protocol 1.2, specs/presence.md): who is on a subject. A
 * subscription to a literal subject is listed when the client asks
 * (`Subscription.track`), a watch receives join and leave events, a query
 * lists the members now. Seeing presence is its own permission.
 *
 * The presence frames are the `Frame` kinds 11..15 (`presenceTrack`,
 * `presenceWatch`, `presenceQuery`, `presenceReply`, `presenceEvent`).
 * `encodeField`/`decodeField` write and read a frame by field number (the
 * same bytes), for tests that play the server.
 */
import { InvalidHeadersError, RequestTimeoutError, type ArqonBusError } from "./errors.js";
import {
  ClientKind as WireClientKind,
  type PresenceMember as WireMember,
} from "./gen/arqonbus/v1/client_pb.js";
import type { ClientKind } from "./client.js";

export const TRACK = 11;
export const WATCH = 12;
export const QUERY = 13;
export const REPLY = 14;
export const EVENT = 15;

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** A frame body holding `body` as `Frame` field `field`. */
export function encodeField(field: number, body: Uint8Array): Uint8Array {
  const head = [...varint((field << 3) | 2), ...varint(body.length)];
  const out = new Uint8Array(head.length + body.length);
  out.set(head, 0);
  out.set(body, head.length);
  return out;
}

/** `[field, bytes]` of a frame body holding one length-delimited field. */
export function decodeField(body: Uint8Array): [number, Uint8Array] | undefined {
  let pos = 0;
  const read = (): number | undefined => {
    let result = 0;
    let mul = 1;
    while (pos < body.length) {
      const b = body[pos++]!;
      result += (b & 0x7f) * mul;
      if (!(b & 0x80)) return result;
      mul *= 128;
      if (mul > 2 ** 49) return undefined;
    }
    return undefined;
  };
  const tag = read();
  if (tag === undefined || (tag & 7) !== 2) return undefined;
  const n = read();
  if (n === undefined || pos + n !== body.length) return undefined;
  return [Math.floor(tag / 8), body.subarray(pos)];
}

const encoder = new TextEncoder();

/** At most 8 entries, keys 1..=32 printable ASCII bytes, values ≤ 128 bytes, 1 KiB in all. */
export function checkMetadata(metadata: Record<string, string> | undefined): Record<string, string> {
  if (!metadata) return {};
  const entries = Object.entries(metadata);
  if (entries.length > 8) throw new InvalidHeadersError(`${entries.length} metadata entries, the maximum is 8`);
  let total = 0;
  for (const [k, v] of entries) {
    const kb = encoder.encode(k);
    const vb = encoder.encode(v);
    if (kb.length === 0 || kb.length > 32 || !kb.every((b) => b >= 0x21 && b <= 0x7e)) {
      throw new InvalidHeadersError(`metadata key ${JSON.stringify(k)} is invalid`);
    }
    if (vb.length > 128) throw new InvalidHeadersError(`the value of metadata key ${JSON.stringify(k)} is longer than 128 bytes`);
    total += kb.length + vb.length;
  }
  if (total > 1024) throw new InvalidHeadersError(`metadata holds ${total} bytes, the maximum is 1024`);
  return { ...metadata };
}

/** One member: a connection's tracked subscription. */
export interface PresenceMember {
  /** The member connection's `Welcome.session_id`. */
  clientId: bigint;
  kind: ClientKind | undefined;
  name: string;
  metadata: Record<string, string>;
}

export interface PresenceEvent {
  subject: string;
  action: "join" | "leave";
  member: PresenceMember;
}

export interface PresenceSnapshot {
  subject: string;
  /** Ordered by client id. */
  members: PresenceMember[];
  /** More members exist than one answer lists (1,000). */
  truncated: boolean;
}

export function memberFromWire(m: WireMember | undefined): PresenceMember {
  const kind =
    m?.clientKind === WireClientKind.HUMAN
      ? "human"
      : m?.clientKind === WireClientKind.DEVICE
        ? "device"
        : m?.clientKind === WireClientKind.AGENT
          ? "agent"
          : undefined;
  return { clientId: m?.clientId ?? 0n, kind, name: m?.clientName ?? "", metadata: { ...(m?.metadata ?? {}) } };
}

/**
 * Join and leave events of one subject: an async iterable. Re-sent after a
 * reconnect; events while disconnected are not replayed (query again on
 * `reconnected`).
 */
export class PresenceWatch implements AsyncIterable<PresenceEvent> {
  error: ArqonBusError | undefined;
  private buf: PresenceEvent[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  /** @internal */
  constructor(
    private readonly stopper: (w: PresenceWatch) => void,
    readonly watchId: number,
    readonly subject: string,
  ) {}

  /** @internal */
  push(e: PresenceEvent): void {
    this.buf.push(e);
    this.wake?.();
  }

  /** @internal */
  end(error?: ArqonBusError): void {
    if (this.ended) return;
    this.ended = true;
    if (error && !this.error) this.error = error;
    this.wake?.();
  }

  get active(): boolean {
    return !this.ended;
  }

  /** The next event, `undefined` once stopped, or the error that ended the watch. */
  async next(timeoutMs?: number): Promise<PresenceEvent | undefined> {
    while (this.buf.length === 0) {
      if (this.ended) {
        if (this.error) throw this.error;
        return undefined;
      }
      await new Promise<void>((resolve, reject) => {
        const timer =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => reject(new RequestTimeoutError(`no presence event on ${this.subject}`)), timeoutMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      }).finally(() => {
        this.wake = undefined;
      });
    }
    return this.buf.shift();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<PresenceEvent> {
    for (;;) {
      const e = await this.next();
      if (e === undefined) return;
      yield e;
    }
  }

  /** Ends the watch. */
  stop(): void {
    this.stopper(this);
  }
}
