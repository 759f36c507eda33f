/**
 * Presence: against a scripted peer (the frames sent as kinds 11..13 by field
 * number, replies and events read, refusals, replay after a reconnect), and
 * against the real server when it has the presence frames (a probe query;
 * skipped otherwise, a failure with ARQONBUS_REQUIRE_PRESENCE=1).
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  ClientKind,
  ErrorCode,
  ErrorSchema,
  MessageSchema,
  PongSchema,
  PresenceAction,
  PresenceEventSchema,
  type PresenceMember as WireMember,
  PresenceMemberSchema,
  PresenceQuerySchema,
  PresenceReplySchema,
  PresenceTrackSchema,
  PresenceWatchSchema,
} from "../src/gen/arqonbus/v1/client_pb.js";
import { InvalidHeadersError, InvalidSubjectError, ServerError, checkMetadata } from "../src/index.js";
import { connect } from "../src/node.js";
import { decodeField, encodeField, EVENT, QUERY, REPLY, TRACK, WATCH } from "../src/presence.js";
import { collector, type Peer, resolvers, scripted } from "./peer.js";
import { LIMIT_MS, Node, within } from "./server.js";

async function recvField(p: Peer): Promise<[number, Uint8Array]> {
  const raw = decodeField(await p.recvBody());
  expect(raw).toBeDefined();
  return raw!;
}

const member = (id: bigint, name: string, metadata: Record<string, string> = {}): WireMember =>
  create(PresenceMemberSchema, { clientId: id, clientKind: ClientKind.HUMAN, clientName: name, metadata });

describe("presence against a scripted peer", () => {
  it("round-trips the field codec and checks metadata", () => {
    const body = toBinary(PresenceQuerySchema, create(PresenceQuerySchema, { requestId: 300n, subject: new Uint8Array([97]) }));
    expect(decodeField(encodeField(QUERY, body))).toEqual([QUERY, body]);
    expect(decodeField(new Uint8Array([8, 1]))).toBeUndefined();
    expect(() => checkMetadata(Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`k${i}`, "v"])))).toThrow(InvalidHeadersError);
    expect(() => checkMetadata({ "bad key": "v" })).toThrow(InvalidHeadersError);
    expect(() => checkMetadata({ k: "v".repeat(129) })).toThrow(InvalidHeadersError);
  });

  it("tracks, watches, queries, reads events, and re-sends after a reconnect", async () => {
    const mayClose = resolvers<void>();
    const replayed = resolvers<Array<[string, unknown]>>();
    const ev = collector();
    await scripted(
      [
        async (p) => {
          await p.welcome();
          expect(await p.kind()).toBe("subscribe");
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          let [field, body] = await recvField(p);
          expect(field).toBe(TRACK);
          expect(fromBinary(PresenceTrackSchema, body).metadata).toEqual({ role: "reviewer" });
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          [field, body] = await recvField(p);
          expect(field).toBe(WATCH);
          const watch = fromBinary(PresenceWatchSchema, body);
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          [field, body] = await recvField(p);
          expect(field).toBe(QUERY);
          const query = fromBinary(PresenceQuerySchema, body);
          p.sendRaw(
            encodeField(
              REPLY,
              toBinary(
                PresenceReplySchema,
                create(PresenceReplySchema, {
                  requestId: query.requestId,
                  subject: new TextEncoder().encode("room.1"),
                  members: [member(7n, "me", { role: "reviewer" }), member(9n, "ann")],
                }),
              ),
            ),
          );
          p.sendRaw(
            encodeField(
              EVENT,
              toBinary(
                PresenceEventSchema,
                create(PresenceEventSchema, {
                  watchId: watch.watchId,
                  subject: new TextEncoder().encode("room.1"),
                  action: PresenceAction.LEAVE,
                  member: member(9n, "ann"),
                }),
              ),
            ),
          );
          await mayClose.promise;
          p.socket.destroy();
        },
        async (p) => {
          await p.welcome();
          expect(await p.kind()).toBe("subscribe");
          const got: Array<[string, unknown]> = [];
          let [, body] = await recvField(p);
          got.push(["track", fromBinary(PresenceTrackSchema, body).metadata]);
          [, body] = await recvField(p);
          got.push(["watch", new TextDecoder().decode(fromBinary(PresenceWatchSchema, body).subject)]);
          replayed.resolve(got);
        },
      ],
      async (url) => {
        const c = await within(connect({ url, credential: "abt_x", onEvent: ev.on, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } }));
        const sub = await within(c.subscribe("room.1"));
        await within(sub.track({ role: "reviewer" }));
        const watch = await within(c.watchPresence("room.1"));
        const snap = await within(c.presence("room.1"));
        expect(snap.members.map((m) => [m.clientId, m.name, m.kind, m.metadata])).toEqual([
          [7n, "me", "human", { role: "reviewer" }],
          [9n, "ann", "human", {}],
        ]);
        const e = (await watch.next(LIMIT_MS))!;
        expect([e.action, e.member.clientId, e.subject]).toEqual(["leave", 9n, "room.1"]);
        mayClose.resolve();
        expect((await ev.next(0)).type).toBe("disconnected");
        expect(await within(replayed.promise)).toEqual([
          ["track", { role: "reviewer" }],
          ["watch", "room.1"],
        ]);
        await c.close();
        expect(await watch.next(LIMIT_MS)).toBeUndefined();
      },
    );
  });

  it("types refusals, and a refused listing keeps the subscription", async () => {
    await scripted(
      [
        async (p) => {
          await p.welcome();
          expect(await p.kind()).toBe("subscribe");
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          let [, body] = await recvField(p);
          const sid = fromBinary(PresenceTrackSchema, body).sid;
          p.send({ case: "error", value: create(ErrorSchema, { code: ErrorCode.PRESENCE_LIMIT_EXCEEDED, message: "full", sid }) });
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          [, body] = await recvField(p);
          const wid = fromBinary(PresenceWatchSchema, body).watchId;
          p.send({ case: "error", value: create(ErrorSchema, { code: ErrorCode.PERMISSION_DENIED, message: "no", sid: wid }) });
          expect(await p.kind()).toBe("ping");
          p.send({ case: "pong", value: create(PongSchema) });
          [, body] = await recvField(p);
          const qid = fromBinary(PresenceQuerySchema, body).requestId;
          p.sendRaw(encodeField(REPLY, toBinary(PresenceReplySchema, create(PresenceReplySchema, { requestId: qid, error: ErrorCode.PERMISSION_DENIED }))));
          p.send({ case: "message", value: create(MessageSchema, { sid, subject: new TextEncoder().encode("room.2"), payload: new TextEncoder().encode("still") }) });
        },
      ],
      async (url) => {
        const c = await within(connect({ url, credential: "abt_x" }));
        const sub = await within(c.subscribe("room.2"));
        const full = await sub.track().catch((e: unknown) => e);
        expect((full as ServerError).codeName).toBe("PRESENCE_LIMIT_EXCEEDED");
        expect(sub.active).toBe(true);
        const denied = await c.watchPresence("room.2").catch((e: unknown) => e);
        expect((denied as ServerError).codeName).toBe("PERMISSION_DENIED");
        const q = await c.presence("room.2").catch((e: unknown) => e);
        expect(q).toBeInstanceOf(ServerError);
        expect([(q as ServerError).codeName, (q as ServerError).fatal]).toEqual(["PERMISSION_DENIED", false]);
        expect((await sub.next(LIMIT_MS))!.text()).toBe("still");
        await expect(c.watchPresence("room.*")).rejects.toBeInstanceOf(InvalidSubjectError);
        await c.close();
      },
    );
  });
});

describe("presence against the real server", () => {
  let node: Node;
  let supported = false;
  beforeAll(async () => {
    node = await Node.start();
    const c = await connect({ url: node.url, caFile: node.caFile, credentialFile: node.bootstrapTokenFile, reconnect: { maxAttempts: 0 } });
    try {
      await c.presence("probe.subject", { timeoutMs: LIMIT_MS });
      supported = true;
    } catch (e) {
      supported = e instanceof ServerError && !e.fatal;
    } finally {
      await c.close();
    }
    if (!supported && process.env.ARQONBUS_REQUIRE_PRESENCE === "1") throw new Error("the server under test has no presence frames");
  });
  afterAll(async () => {
    await node?.stop();
  });

  it("lists members, sends join and leave, and forgets a closed connection", async (ctx) => {
    if (!supported) {
      ctx.skip(); // the server under test has no presence frames yet
      return;
    }
    const t = await node.tenant("presence");
    const open = (name: string) => within(connect({ url: node.url, caFile: node.caFile, credentialFile: t.tokenFile, name, kind: "agent" }));
    const [a, watcher, b] = [await open("agent-a"), await open("watcher"), await open("agent-b")];
    const subA = await a.subscribe("room.1");
    await subA.track({ role: "reviewer" });
    const watch = await watcher.watchPresence("room.1");
    const snap = await watcher.presence("room.1", { timeoutMs: LIMIT_MS });
    expect(snap.members.map((m) => [m.name, m.metadata, m.kind])).toEqual([["agent-a", { role: "reviewer" }, "agent"]]);
    const subB = await b.subscribe("room.1");
    await subB.track();
    const joined = (await watch.next(LIMIT_MS))!;
    expect([joined.action, joined.member.name, joined.member.clientId]).toEqual(["join", "agent-b", b.serverInfo!.sessionId]);
    await b.close();
    const left = (await watch.next(LIMIT_MS))!;
    expect([left.action, left.member.name]).toEqual(["leave", "agent-b"]);
    watch.stop();
    await a.close();
    await watcher.close();
  });
});
