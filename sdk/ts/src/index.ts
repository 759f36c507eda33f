/**
 * @arqonbus/client: the ArqonBus SDK for browsers (WebSocket) and Node.js
 * (TLS TCP, from `@arqonbus/client/node`).
 */
export {
  Client,
  Msg,
  Subscription,
  VERSION,
  backoffDelay,
  type ClientEvent,
  type ClientKind,
  type ConnectOptions,
  type CredentialSource,
  type ReconnectPolicy,
  type ServerInfo,
} from "./client.js";
export * from "./errors.js";
export {
  PresenceWatch,
  checkMetadata,
  type PresenceEvent,
  type PresenceMember,
  type PresenceSnapshot,
} from "./presence.js";
export { checkHeaders, checkQueueGroup, checkSubject, type HeadersInit } from "./subjects.js";
export type { Transport, TransportFactory, TransportHandlers } from "./transport.js";
export {
  WS_SUBPROTOCOL,
  webSocket,
  type WebSocketConstructor,
  type WebSocketLike,
  type WebSocketOptions,
} from "./ws.js";

import { Client, type ConnectOptions } from "./client.js";

/** Connects with any transport (`webSocket(url)` in a browser). */
export function connect(options: ConnectOptions): Promise<Client> {
  return Client.connect(options);
}
