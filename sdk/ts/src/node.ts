/**
 * The native transport for Node.js: TLS 1.3 over TCP with ALPN `arqonbus/1`,
 * verified against the node's CA, and the protocol's 4-byte big-endian length
 * prefix. Import from `@arqonbus/client/node`.
 */
import { readFileSync } from "node:fs";
import * as net from "node:net";
import * as tls from "node:tls";

import { type ConnectOptions, Client } from "./client.js";
import {
  type ArqonBusError,
  ConnectionLostError,
  OptionsError,
  ProtocolError,
  TlsError,
  TransportError,
} from "./errors.js";
import type { Transport, TransportFactory, TransportHandlers } from "./transport.js";

export const DEFAULT_PORT = 7420;
export const ALPN = "arqonbus/1";
/** The largest frame accepted (the server's default max frame is 1 MiB + 16 KiB). */
const MAX_FRAME = 64 * 1024 * 1024;

export interface ServerUrl {
  tls: boolean;
  host: string;
  port: number;
}

/** Parses `tls://host[:port]` (default), `tcp://host[:port]` or `host[:port]`. */
export function parseServerUrl(raw: string): ServerUrl {
  const bad = (reason: string) => new OptionsError(`invalid server URL ${JSON.stringify(raw)}: ${reason}`);
  let s = raw.trim();
  let secure = true;
  const at = s.indexOf("://");
  if (at >= 0) {
    const scheme = s.slice(0, at).toLowerCase();
    if (scheme !== "tls" && scheme !== "tcp") throw bad("the scheme must be tls:// or tcp://");
    secure = scheme === "tls";
    s = s.slice(at + 3);
  }
  if (s.endsWith("/")) s = s.slice(0, -1);
  if (/[/?#]/.test(s)) throw bad("a server URL has no path, query or fragment");
  if (s.includes("@")) throw bad("credentials do not belong in the URL");
  if (!s) throw bad("the host is missing");
  let host = s;
  let port: string | undefined;
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0) throw bad("an IPv6 address needs a closing ']'");
    host = s.slice(1, end);
    const after = s.slice(end + 1);
    if (after) {
      if (!after.startsWith(":")) throw bad("expected ':' after ']'");
      port = after.slice(1);
    }
  } else if (!net.isIPv6(s)) {
    const colon = s.lastIndexOf(":");
    if (colon >= 0) {
      host = s.slice(0, colon);
      port = s.slice(colon + 1);
    }
  }
  if (!host) throw bad("the host is missing");
  let p = DEFAULT_PORT;
  if (port !== undefined) {
    if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      throw bad("the port must be a number from 1 to 65535");
    }
    p = Number(port);
  }
  return { tls: secure, host, port: p };
}

export interface TcpOptions {
  /** `tls://host[:port]` (default scheme) or `tcp://host[:port]` (plaintext). */
  url: string;
  /** PEM text of the CA that signed the server's certificate (needed for tls://). */
  ca?: string | Buffer;
  /** A PEM file with that CA (e.g. `arqonbus-data/tls/ca.pem`). */
  caFile?: string;
}

const TLS_CODES = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO|HOSTNAME|ALTNAME|ALPN|PROTOCOL|HANDSHAKE/;

/** A transport factory for the native protocol over TLS (or plaintext) TCP. */
export function tcp(options: TcpOptions): TransportFactory {
  const url = parseServerUrl(options.url);
  let ca: string | Buffer | undefined = options.ca;
  if (url.tls && ca === undefined) {
    if (options.caFile === undefined) {
      throw new OptionsError("a tls:// server needs a CA certificate (ca or caFile)");
    }
    try {
      ca = readFileSync(options.caFile);
    } catch (e) {
      throw new OptionsError(`cannot read CA file ${options.caFile}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  }
  const label = `${url.tls ? "tls" : "tcp"}://${url.host.includes(":") ? `[${url.host}]` : url.host}:${url.port}`;
  return (handlers: TransportHandlers) =>
    new Promise<Transport>((resolve, reject) => {
      let open = false;
      let closed = false;
      const chunks: Buffer[] = [];
      let buffered = 0;
      const socket: net.Socket = url.tls
        ? tls.connect({
            host: url.host,
            port: url.port,
            ca,
            servername: net.isIP(url.host) ? undefined : url.host,
            ALPNProtocols: [ALPN],
            minVersion: "TLSv1.3",
          })
        : net.connect({ host: url.host, port: url.port });
      socket.setNoDelay(true);
      const finish = (err: ArqonBusError) => {
        if (closed) return;
        closed = true;
        socket.destroy();
        if (open) handlers.onClose(err);
        else reject(err);
      };
      socket.once(url.tls ? "secureConnect" : "connect", () => {
        open = true;
        resolve({
          label,
          send: (body) => {
            if (closed) return;
            const head = Buffer.allocUnsafe(4);
            head.writeUInt32BE(body.length, 0);
            socket.cork();
            socket.write(head);
            socket.write(body);
            socket.uncork();
          },
          close: (graceful) => {
            if (closed) return;
            closed = true;
            if (graceful) socket.end();
            else socket.destroy();
          },
        });
      });
      socket.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        buffered += chunk.length;
        while (!closed && buffered >= 4) {
          let head = chunks[0]!;
          if (head.length < 4) {
            head = Buffer.concat(chunks);
            chunks.splice(0, chunks.length, head);
          }
          const n = head.readUInt32BE(0);
          if (n > MAX_FRAME) {
            finish(new ProtocolError(`frame of ${n} bytes exceeds the limit of ${MAX_FRAME}`));
            return;
          }
          if (buffered < 4 + n) return;
          const all = chunks.length === 1 ? head : Buffer.concat(chunks);
          const body = all.subarray(4, 4 + n);
          const rest = all.subarray(4 + n);
          chunks.splice(0, chunks.length);
          if (rest.length) chunks.push(rest);
          buffered = rest.length;
          handlers.onFrame(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
        }
      });
      socket.on("error", (err: NodeJS.ErrnoException) => {
        const code = err.code ?? "";
        if (url.tls && !open && (TLS_CODES.test(code) || /certificate|tls|ssl/i.test(err.message))) {
          finish(new TlsError(`tls: ${err.message}`));
        } else {
          finish(new TransportError(`${open ? "i/o" : `cannot connect to ${label}`}: ${code || err.message}`));
        }
      });
      socket.on("close", () => finish(new ConnectionLostError()));
    });
}

export interface NodeConnectOptions extends Omit<ConnectOptions, "transport" | "credential"> {
  /** `tls://host[:port]` (default scheme) or `tcp://host[:port]`. */
  url: string;
  /** The CA PEM text, or `caFile`. */
  ca?: string | Buffer;
  caFile?: string;
  /** A token, or `credentialFile`, or a function returning a token. */
  credential?: ConnectOptions["credential"];
  credentialFile?: string;
}

/** Connects over TLS TCP, reading the CA and credential files. */
export async function connect(options: NodeConnectOptions): Promise<Client> {
  const { url, ca, caFile, credentialFile, credential, ...rest } = options;
  let cred = credential;
  if (credentialFile !== undefined) {
    if (credential !== undefined) throw new OptionsError("give credential or credentialFile, not both");
    try {
      cred = readFileSync(credentialFile, "utf8");
    } catch (e) {
      throw new OptionsError(
        `cannot read credential file ${credentialFile}: ${(e as NodeJS.ErrnoException).code ?? e}`,
      );
    }
  }
  if (cred === undefined) throw new OptionsError("no credential configured");
  return Client.connect({ ...rest, credential: cred, transport: tcp({ url, ca, caFile }) });
}

export * from "./index.js";
