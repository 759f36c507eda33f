/**
 * Wire-contract tests: a scripted peer plays the server frame by frame over
 * plaintext TCP on 127.0.0.1 and checks what the SDK sends and how it reacts
 * to what the real server cannot easily be made to do.
 */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";

import { ClientKind, type Frame, PingSchema, PongSchema } from "../src/gen/arqonbus/v1/client_pb.js";
import {
  ClosedError,
  PayloadTooLargeError,
  ProtocolError,
  StaleConnectionError,
  connect,
} from "../src/node.js";
import { collector, resolvers, scripted } from "./peer.js";
import { within } from "./server.js";

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

  it("closes at once while reconnecting and fails what waited", async () => {
    const ev = collector();
    await scripted(
      [
        async (p) => {
          await p.welcome();
          p.socket.destroy();
        },
      ],
      async (url) => {
        const c = await within(connect({ url, credential: "abt_x", onEvent: ev.on, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } }));
        expect((await ev.next(0)).type).toBe("disconnected");
        expect(c.status).toBe("reconnecting");
        const flushed = c.flush().catch((e: unknown) => e);
        await within(c.close());
        expect(c.status).toBe("closed");
        expect(await within(flushed)).toBeInstanceOf(ClosedError);
      },
    );
  });
});
