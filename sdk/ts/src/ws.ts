/**
 * The WebSocket transport (browsers, and Node.js with a WebSocket class such
 * as the `ws` package's): one protobuf `Frame` per binary message, no length
 * prefix, subprotocol `arqonbus.v1`. A text message is a protocol error.
 */
import { ConnectionLostError, ProtocolError, TransportError } from "./errors.js";
import type { Transport, TransportFactory, TransportHandlers } from "./transport.js";

/** The WebSocket subprotocol of the ArqonBus edge. */
export const WS_SUBPROTOCOL = "arqonbus.v1";

/** The part of the WHATWG WebSocket the transport uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketOptions {
  /** The WebSocket class; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** The subprotocol to ask for; defaults to `arqonbus.v1`. */
  protocol?: string;
}

/** A transport factory for `ws://` or `wss://` `url` (e.g. `wss://bus.example.com:7443/v1`). */
export function webSocket(url: string, options: WebSocketOptions = {}): TransportFactory {
  const protocol = options.protocol ?? WS_SUBPROTOCOL;
  return (handlers: TransportHandlers) =>
    new Promise<Transport>((resolve, reject) => {
      const Ctor =
        options.WebSocket ??
        (globalThis as unknown as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (Ctor === undefined) {
        reject(new TransportError("no WebSocket implementation: pass options.WebSocket"));
        return;
      }
      let ws: WebSocketLike;
      try {
        ws = new Ctor(url, protocol);
      } catch (e) {
        reject(new TransportError(`cannot open ${url}: ${(e as Error).message}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      let open = false;
      let closed = false;
      const finish = (err: ConnectionLostError | ProtocolError | TransportError) => {
        if (closed) return;
        closed = true;
        if (open) handlers.onClose(err);
        else reject(err);
      };
      ws.onopen = () => {
        if (ws.protocol !== protocol) {
          finish(new ProtocolError(`the server did not accept the ${protocol} subprotocol`));
          ws.close(1002, "subprotocol");
          return;
        }
        open = true;
        resolve({
          label: url,
          send: (body) => {
            if (!closed) ws.send(body);
          },
          close: () => {
            closed = true;
            try {
              ws.close(1000, "client closed");
            } catch {
              // already closing
            }
          },
        });
      };
      ws.onmessage = (ev) => {
        if (closed) return;
        const data = ev.data;
        if (data instanceof ArrayBuffer) handlers.onFrame(new Uint8Array(data));
        else if (ArrayBuffer.isView(data)) {
          handlers.onFrame(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        } else {
          finish(new ProtocolError("a text WebSocket message where a binary frame was expected"));
          ws.close(1003, "binary frames only");
        }
      };
      ws.onerror = (ev) => {
        // Browsers give no detail (the close event that follows has the
        // code); Node's `ws` gives a message.
        const detail = (ev as { message?: unknown }).message;
        if (!open) {
          finish(new TransportError(`cannot connect to ${url}${typeof detail === "string" ? `: ${detail}` : ""}`));
        }
      };
      ws.onclose = (ev) => {
        finish(
          open
            ? new ConnectionLostError(`the WebSocket closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`)
            : new TransportError(`cannot connect to ${url} (code ${ev.code})`),
        );
      };
    });
}
