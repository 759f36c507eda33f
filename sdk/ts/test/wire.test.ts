/**
 * Wire-contract tests: a scripted peer plays the server frame by frame over
 * plaintext TCP on 127.0.0.1 and checks what the SDK sends and how it reacts
 * to what the real server cannot easily be made to do.
 */
import { type AddressInfo, createServer, type Socket } from "node:net";

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";

import {
  ClientKind,
  type Frame,
  FrameSchema,
  LimitsSchema,
  PingSchema,
  PongSchema,
  WelcomeSchema,
} from "../src/gen/arqonbus/v1/client_pb.js";
import {
  type ClientEvent,
  PayloadTooLargeError,
  ProtocolError,
  StaleConnectionError,
  connect,
} from "../src/node.js";
import { within } from "./server.js";

class Peer {
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
    return within(
      (async () => {
        for (;;) {
          if (this.buf.length >= 4) {
            const n = this.buf.readUInt32BE(0);
            if (this.buf.length >= 4 + n) {
              const body = this.buf.subarray(4, 4 + n);
              this.buf = this.buf.subarray(4 + n);
              return fromBinary(FrameSchema, body);
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

type Script = (p: Peer) => Promise<void>;

/** Promise.withResolvers, which Node 20 lacks. */
function resolvers<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

async function scripted<T>(scripts: Script[], body: (url: string) => Promise<T>): Promise<T> {
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

function collector() {
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

describe("wire contract against a scripted peer", () => {
  it("sends the options in Connect, answers server pings, applies the Welcome's limits", async () => {
    let connect0: Frame | undefined;
    let answer: string | undefined;
    const done = resolvers<void>();
    await scripted(
      [
        async (p) => {
          connect0 = await p.welcome();
          p.send({ case: "ping", value: create(PingSchema) });
          answer = await p.kind();
          done.resolve();
        },
      ],
      async (url) => {
        const c = await within(connect({ url, credential: "abt_x", name: "n", kind: "device", noEcho: true }));
        await within(done.promise);
        const k = connect0!.kind;
        expect(k.case).toBe("connect");
        if (k.case === "connect") {
          expect([k.value.clientName, k.value.clientKind, k.value.noEcho, k.value.protocolVersion, k.value.credential]).toEqual([
            "n",
            ClientKind.DEVICE,
            true,
            1,
            "abt_x",
          ]);
        }
        expect(answer).toBe("pong");
        expect(() => c.publish("a", new Uint8Array(1025))).toThrow(PayloadTooLargeError);
        await c.close();
      },
    );
  });

  it("counts a server that answers no pings as stale", async () => {
    const ev = collector();
    await scripted(
      [
        async (p) => {
          await p.welcome();
        },
      ],
      async (url) => {
        const c = await within(
          connect({ url, credential: "abt_x", pingIntervalMs: 50, onEvent: ev.on, reconnect: { maxAttempts: 0 } }),
        );
        const lost = await ev.next(0);
        expect(lost.type === "disconnected" && lost.reason).toBeInstanceOf(StaleConnectionError);
        expect((await ev.next(1)).type).toBe("closed");
        expect(c.status).toBe("closed");
      },
    );
  });

  it("treats an unknown frame kind as a protocol error", async () => {
    const ev = collector();
    await scripted(
      [
        async (p) => {
          await p.welcome();
          p.sendRaw(new Uint8Array([0xfa, 0x06, 0x00])); // field 111: no kind this client knows
        },
      ],
      async (url) => {
        await within(connect({ url, credential: "abt_x", onEvent: ev.on, reconnect: { maxAttempts: 0 } }));
        const lost = await ev.next(0);
        expect(lost.type === "disconnected" && lost.reason).toBeInstanceOf(ProtocolError);
      },
    );
  });

  it("re-sends subscriptions, then lost flushes, then buffered publishes after a reconnect", async () => {
    const firstDone = resolvers<void>();
    const replayed = resolvers<Frame[]>();
    const ev = collector();
    await scripted(
      [
        async (p) => {
          await p.welcome();
          expect(await p.kind()).toBe("subscribe");
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          expect(await p.kind()).toBe("unsubscribe");
          expect(await p.kind()).toBe("ping"); // never answered
          firstDone.resolve();
          p.socket.destroy();
        },
        async (p) => {
          await p.welcome();
          const frames: Frame[] = [];
          for (let i = 0; i < 4; i++) {
            const f = await p.recv();
            frames.push(f);
            if (f.kind.case === "ping") p.send({ case: "pong", value: create(PongSchema) });
          }
          replayed.resolve(frames);
        },
      ],
      async (url) => {
        const c = await within(
          connect({ url, credential: "abt_x", onEvent: ev.on, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } }),
        );
        const sub = await within(c.subscribe("a.>", { queue: "q" }));
        sub.unsubscribeAfter(2);
        const flushed = c.flush();
        await within(firstDone.promise);
        expect((await ev.next(0)).type).toBe("disconnected");
        c.publish("a.b", "buffered");
        const frames = await within(replayed.promise);
        await within(flushed);
        expect(frames.map((f) => f.kind.case)).toEqual(["subscribe", "unsubscribe", "ping", "publish"]);
        const [s, u] = frames;
        if (s?.kind.case === "subscribe") {
          expect([s.kind.value.sid, new TextDecoder().decode(s.kind.value.pattern), new TextDecoder().decode(s.kind.value.queueGroup)]).toEqual([
            BigInt(sub.sid),
            "a.>",
            "q",
          ]);
        }
        if (u?.kind.case === "unsubscribe") expect(u.kind.value.afterMessages).toBe(2n);
        await c.close();
      },
    );
  });
});
