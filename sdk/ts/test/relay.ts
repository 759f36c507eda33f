/**
 * A test-only stand-in for the server's WebSocket edge, in the edge's shape
 * (specs: one protobuf Frame per binary WebSocket message, no length prefix,
 * subprotocol `arqonbus.v1`): each WebSocket connection is relayed to the
 * node's native TLS port, adding and stripping the 4-byte length prefix. It
 * lets the WebSocket transport and the browser page run before the edge
 * exists; with the edge, tests connect to it directly instead.
 * Optionally serves static files over the same HTTP server.
 */
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:https";
import * as tls from "node:tls";

import { WebSocketServer, type WebSocket } from "ws";

export interface Relay {
  url: string;
  httpUrl: string;
  close(): Promise<void>;
}

/**
 * `target`: the node's native port and CA. With `tls` (a certificate and key,
 * e.g. the node's own `tls/server.pem` and `tls/server.key`), the relay is
 * `wss://` like the edge; otherwise `ws://`.
 */
export async function startRelay(
  target: { port: number; caFile: string },
  handler?: (req: IncomingMessage, res: ServerResponse) => void,
  tlsFiles?: { certFile: string; keyFile: string },
): Promise<Relay> {
  const ca = readFileSync(target.caFile);
  const serve = (req: IncomingMessage, res: ServerResponse) => {
    if (handler) handler(req, res);
    else {
      res.statusCode = 404;
      res.end();
    }
  };
  const http: Server = tlsFiles
    ? createTlsServer({ cert: readFileSync(tlsFiles.certFile), key: readFileSync(tlsFiles.keyFile) }, serve)
    : createServer(serve);
  const wss = new WebSocketServer({
    server: http,
    handleProtocols: (protocols) => (protocols.has("arqonbus.v1") ? "arqonbus.v1" : false),
  });
  const sockets = new Set<tls.TLSSocket>();
  wss.on("connection", (ws: WebSocket) => {
    const tcp = tls.connect({ host: "127.0.0.1", port: target.port, ca, ALPNProtocols: ["arqonbus/1"] });
    sockets.add(tcp);
    const pending: Buffer[] = [];
    let open = false;
    tcp.once("secureConnect", () => {
      open = true;
      for (const p of pending.splice(0)) tcp.write(p);
    });
    let buf: Buffer = Buffer.alloc(0);
    tcp.on("data", (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 4) {
        const n = buf.readUInt32BE(0);
        if (buf.length < 4 + n) break;
        ws.send(buf.subarray(4, 4 + n), { binary: true });
        buf = buf.subarray(4 + n);
      }
    });
    const end = () => {
      sockets.delete(tcp);
      tcp.destroy();
      if (ws.readyState === ws.OPEN) ws.close(1001, "upstream closed");
    };
    tcp.on("close", end);
    tcp.on("error", end);
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        ws.close(1003, "binary frames only");
        return;
      }
      const head = Buffer.allocUnsafe(4);
      head.writeUInt32BE(data.length, 0);
      const framed = Buffer.concat([head, data]);
      if (open) tcp.write(framed);
      else pending.push(framed);
    });
    ws.on("close", () => tcp.end());
  });
  await new Promise<void>((res) => http.listen(0, "127.0.0.1", () => res()));
  const addr = http.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `${tlsFiles ? "wss" : "ws"}://127.0.0.1:${port}/`,
    httpUrl: `${tlsFiles ? "https" : "http"}://127.0.0.1:${port}/`,
    close: async () => {
      for (const s of sockets) s.destroy();
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((res) => wss.close(() => res()));
      await new Promise<void>((res) => http.close(() => res()));
    },
  };
}
