/**
 * The transport abstraction: something that carries whole protobuf `Frame`
 * bodies (no length prefix) in both directions. The native TLS-TCP transport
 * (`@arqonbus/client/node`) adds and strips the 4-byte length prefix; the
 * WebSocket transport sends one frame per binary WebSocket message.
 */
import type { ArqonBusError } from "./errors.js";

/** What a transport reports to the client. */
export interface TransportHandlers {
  /** One whole frame body. */
  onFrame(body: Uint8Array): void;
  /** The transport closed (by the peer or by an error); called at most once. */
  onClose(error: ArqonBusError): void;
}

/** An open transport. */
export interface Transport {
  /** Sends one frame body. Never blocks; the transport buffers. */
  send(body: Uint8Array): void;
  /** Closes. With `graceful`, what is buffered is written first. */
  close(graceful?: boolean): void;
  /** A label for logs (`tls://host:port`, `wss://...`). */
  readonly label: string;
}

/**
 * Opens a transport, resolving once it can carry frames (TCP and TLS up, or
 * the WebSocket open), rejecting with an `ArqonBusError`. The client calls it
 * for every connection attempt.
 */
export type TransportFactory = (handlers: TransportHandlers) => Promise<Transport>;
