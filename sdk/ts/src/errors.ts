/**
 * Typed errors. Every error the SDK throws or reports is an `ArqonBusError`;
 * `retryable` says whether the same call can succeed later (or after the
 * client reconnects) without changing the configuration or the arguments.
 * No message ever holds a credential or a payload.
 */
import { ErrorCode } from "./gen/arqonbus/v1/client_pb.js";

/** The name of an error code without its `ERROR_CODE_` prefix. */
export function codeName(code: number): string {
  const name = (ErrorCode as unknown as Record<number, string | undefined>)[code];
  return name === undefined ? `UNKNOWN(${code})` : name;
}

export class ArqonBusError extends Error {
  readonly retryable: boolean = false;
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Invalid options (URL, CA, credential, ...). Fix the configuration. */
export class OptionsError extends ArqonBusError {}

/** A subject or pattern breaks the subject rules; nothing was sent. */
export class InvalidSubjectError extends ArqonBusError {
  constructor(readonly subject: string, readonly reason: string) {
    super(`invalid subject ${JSON.stringify(subject)}: ${reason}`);
  }
}

/** A queue group name breaks the naming rules; nothing was sent. */
export class InvalidQueueGroupError extends ArqonBusError {
  constructor(readonly group: string, readonly reason: string) {
    super(`invalid queue group ${JSON.stringify(group)}: ${reason}`);
  }
}

/** Headers break the header rules or the server's limits; nothing was sent. */
export class InvalidHeadersError extends ArqonBusError {}

/** The payload exceeds the server's `max_payload`; nothing was sent. */
export class PayloadTooLargeError extends ArqonBusError {
  constructor(readonly length: number, readonly maximum: number) {
    super(`payload of ${length} bytes exceeds the server maximum of ${maximum}`);
  }
}

/** A network error (refused, reset, DNS, a WebSocket that failed). */
export class TransportError extends ArqonBusError {
  override readonly retryable = true;
}

/** The TLS handshake failed (untrusted certificate, wrong name, no TLS 1.3). */
export class TlsError extends ArqonBusError {}

/** Connecting (transport, TLS and the Welcome) took longer than the connect timeout. */
export class ConnectTimeoutError extends ArqonBusError {
  override readonly retryable = true;
  constructor() {
    super("timed out connecting to the server");
  }
}

/** The server rejected the credential. Not retryable. */
export class AuthenticationFailedError extends ArqonBusError {
  constructor(readonly serverMessage: string) {
    super(`authentication failed: ${serverMessage}`);
  }
}

/** The server does not speak protocol version 1. */
export class UnsupportedVersionError extends ArqonBusError {
  constructor(readonly serverMessage: string) {
    super(`the server does not support protocol version 1: ${serverMessage}`);
  }
}

/**
 * An `Error` frame from the server. Fatal ones closed the connection and are
 * retryable (the client reconnects); non-fatal ones (a refused subscription)
 * are not.
 */
export class ServerError extends ArqonBusError {
  readonly codeName: string;
  override readonly retryable: boolean;
  constructor(
    readonly code: number,
    readonly serverMessage: string,
    readonly fatal: boolean,
    readonly sid: number | undefined,
  ) {
    super(`server error ${codeName(code)}: ${serverMessage}`);
    this.codeName = codeName(code);
    this.retryable = fatal;
  }
}

/** The server sent bytes that are not valid protocol v1. */
export class ProtocolError extends ArqonBusError {
  override readonly retryable = true;
}

/** The connection closed without an `Error` frame. */
export class ConnectionLostError extends ArqonBusError {
  override readonly retryable = true;
  constructor(detail = "the server closed the connection") {
    super(detail);
  }
}

/** The server answered no client pings for two ping intervals. */
export class StaleConnectionError extends ArqonBusError {
  override readonly retryable = true;
  constructor() {
    super("the server stopped answering pings");
  }
}

/** Disconnected and the reconnect buffer is full: the publish was not queued. */
export class ReconnectBufferFullError extends ArqonBusError {
  override readonly retryable = true;
  constructor(readonly limit: number) {
    super(`disconnected and the reconnect buffer (${limit} bytes) is full`);
  }
}

/** A request found no subscriber for its subject. */
export class NoRespondersError extends ArqonBusError {
  override readonly retryable = true;
  constructor(readonly subject: string) {
    super(`no responders on ${JSON.stringify(subject)}`);
  }
}

/** A request got no reply in time (or a flush no Pong, or `next` no message). */
export class RequestTimeoutError extends ArqonBusError {
  override readonly retryable = true;
}

/** The client is closed (`close`/`drain`) or gave up reconnecting. */
export class ClosedError extends ArqonBusError {
  constructor(readonly reason?: ArqonBusError) {
    super(reason ? `the client is closed: ${reason.message}` : "the client is closed");
  }
}
