/** Local checks so an invalid message never reaches the wire (specs/protocol.md#subjects). */
import { InvalidHeadersError, InvalidQueueGroupError, InvalidSubjectError } from "./errors.js";

const MAX_TOKENS = 32;
const MAX_QUEUE_GROUP = 64;
const MAX_HEADER_KEY = 64;
const MAX_HEADER_VALUE = 1024;
const MAX_HEADER_BYTES = 8 * 1024;

/** Headers: a record, or [key, value] pairs (keys may repeat). */
export type HeadersInit = Record<string, string> | ReadonlyArray<readonly [string, string]>;

const encoder = new TextEncoder();

function isTokenByte(b: number): boolean {
  return b >= 0x21 && b <= 0x7e && b !== 0x2e && b !== 0x2a && b !== 0x3e;
}

function ascii(text: string): Uint8Array | undefined {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return undefined;
  return encoder.encode(text);
}

/** The wire bytes of a subject (or pattern when `wildcards`), or throws. */
export function checkSubject(subject: string, maxLen: number, wildcards: boolean): Uint8Array {
  const raw = ascii(subject);
  const bad = (reason: string) => new InvalidSubjectError(subject, reason);
  if (raw === undefined) throw bad("it holds non-ASCII characters");
  if (raw.length === 0) throw bad("it is empty");
  if (raw.length > maxLen) throw bad(`it is ${raw.length} bytes, the maximum is ${maxLen}`);
  if (raw[0] === 0x24) throw bad("subjects starting with '$' are reserved for the server");
  const tokens = subject.split(".");
  if (tokens.length > MAX_TOKENS) throw bad(`more than ${MAX_TOKENS} tokens`);
  tokens.forEach((token, i) => {
    if (token.length === 0) throw bad("empty token (leading, trailing or double '.')");
    if (token === "*" || token === ">") {
      if (!wildcards) throw bad("wildcards are not allowed here");
      if (token === ">" && i !== tokens.length - 1) throw bad("'>' must be the last token");
      return;
    }
    for (let j = 0; j < token.length; j++) {
      const b = token.charCodeAt(j);
      if (!isTokenByte(b)) {
        if (b === 0x2a || b === 0x3e) throw bad("a wildcard must be a whole token");
        throw bad(`invalid byte 0x${b.toString(16).padStart(2, "0")}`);
      }
    }
  });
  return raw;
}

/** The wire bytes of a queue group name, or throws. */
export function checkQueueGroup(group: string): Uint8Array {
  const raw = ascii(group);
  const bad = (reason: string) => new InvalidQueueGroupError(group, reason);
  if (raw === undefined) throw bad("it holds non-ASCII characters");
  if (raw.length === 0) throw bad("it is empty");
  if (raw.length > MAX_QUEUE_GROUP) throw bad(`it is longer than ${MAX_QUEUE_GROUP} bytes`);
  for (const b of raw) {
    if (b < 0x21 || b > 0x7e || b === 0x2a || b === 0x3e) {
      throw bad(`invalid byte 0x${b.toString(16).padStart(2, "0")}`);
    }
  }
  return raw;
}

/** Headers as wire pairs, or throws InvalidHeadersError. */
export function checkHeaders(
  headers: HeadersInit | undefined,
  maxHeaders: number,
): Array<[Uint8Array, Uint8Array]> {
  if (headers === undefined) return [];
  const items: ReadonlyArray<readonly [string, string]> = Array.isArray(headers)
    ? (headers as ReadonlyArray<readonly [string, string]>)
    : Object.entries(headers as Record<string, string>);
  if (items.length > maxHeaders) {
    throw new InvalidHeadersError(`${items.length} headers, the maximum is ${maxHeaders}`);
  }
  let total = 0;
  return items.map(([key, value]) => {
    const k = ascii(key);
    if (k === undefined || k.length === 0 || k.length > MAX_HEADER_KEY || !k.every(isTokenByte)) {
      throw new InvalidHeadersError(`header key ${JSON.stringify(key)} is invalid`);
    }
    const v = ascii(value);
    if (v === undefined || v.length > MAX_HEADER_VALUE || !v.every((b) => b >= 0x20 && b <= 0x7e)) {
      throw new InvalidHeadersError(`the value of header ${JSON.stringify(key)} is invalid`);
    }
    total += k.length + v.length;
    if (total > MAX_HEADER_BYTES) {
      throw new InvalidHeadersError(`headers hold more than ${MAX_HEADER_BYTES} bytes`);
    }
    return [k, v];
  });
}
