/** A scripted peer for wire-contract tests: plays the server frame by frame over plaintext TCP. */
import { type AddressInfo, createServer, type Socket } from "node:net";

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { expect } from "vitest";

import { type Frame, FrameSchema, LimitsSchema, WelcomeSchema } from "../src/gen/arqonbus/v1/client_pb.js";
import { type ClientEvent } from "../src/index.js";
import { within } from "./server.js";

export class Peer {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  ended = false;
  constructor(readonly socket: Socket) {
    socket.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on("close", () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w();
    });
  }
  async recv(): Promise<Frame> {
    return fromBinary(FrameSchema, await this.recvBody());
  }
  async recvBody(): Promise<Uint8Array> {
    return within(
      (async () => {
        for (;;) {
          if (this.buf.length >= 4) {
            const n = this.buf.readUInt32BE(0);
            if (this.buf.length >= 4 + n) {
              const body = this.buf.subarray(4, 4 + n);
              this.buf = this.buf.subarray(4 + n);
              return new Uint8Array(body);
            }
          }
          if (this.ended) throw new Error("peer closed");
          await new Promise<void>((r) => this.waiters.push(r));
        }
      })(),
      "a frame from the client",
    );
  }
  async kind(): Promise<string | undefined> {
    return (await this.recv()).kind.case;
  }
  sendRaw(body: Uint8Array): void {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length, 0);
    this.socket.write(Buffer.concat([head, body]));
  }
  send(kind: Frame["kind"]): void {
    this.sendRaw(toBinary(FrameSchema, create(FrameSchema, { kind })));
  }
  async welcome(): Promise<Frame> {
    const first = await this.recv();
    expect(first.kind.case).toBe("connect");
    this.send({
      case: "welcome",
      value: create(WelcomeSchema, {
        protocolVersion: 1,
        serverId: "scripted",
        sessionId: 7n,
        tenant: "t",
        limits: create(LimitsSchema, { maxPayload: 1024, maxFrame: 4096, maxHeaders: 4, maxSubjectLen: 64 }),
      }),
    });
    return first;
  }
}

export type Script = (p: Peer) => Promise<void>;

/** Promise.withResolvers, which Node 20 lacks. */
export function resolvers<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

export async function scripted<T>(scripts: Script[], body: (url: string) => Promise<T>): Promise<T> {
  const queue = [...scripts];
  const sockets: Socket[] = [];
  const server = createServer((socket) => {
    sockets.push(socket);
    const script = queue.shift();
    if (!script) {
      socket.destroy();
      return;
    }
    void script(new Peer(socket)).catch(() => socket.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  try {
    return await body(`tcp://127.0.0.1:${(server.address() as AddressInfo).port}`);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }
}

export function collector() {
  const seen: ClientEvent[] = [];
  let wake: () => void = () => undefined;
  return {
    on: (e: ClientEvent) => {
      seen.push(e);
      wake();
    },
    next: async (i: number) =>
      within(
        (async () => {
          while (seen.length <= i) await new Promise<void>((r) => (wake = r));
          return seen[i]!;
        })(),
        `event #${i}`,
      ),
  };
}

