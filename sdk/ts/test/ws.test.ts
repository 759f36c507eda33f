/**
 * The WebSocket transport (the `ws` package's WebSocket in Node, the same
 * code a browser runs with its own): through a test relay in the edge's shape
 * (always), and against the server's own WebSocket edge when the server has
 * one (`Node.wsUrl`, else that test is skipped and says so).
 */
import { readFileSync } from "node:fs";

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";

import { type Client, ConnectionLostError, type ClientEvent, connect, webSocket } from "../src/index.js";
import { connect as connectTcp } from "../src/node.js";
import { startRelay, type Relay } from "./relay.js";
import { LIMIT_MS, Node, within } from "./server.js";

let node: Node;
let relay: Relay;

beforeAll(async () => {
  node = await Node.start();
  relay = await startRelay({ port: node.port, caFile: node.caFile });
});
afterAll(async () => {
  await relay?.close();
  await node?.stop();
});

async function exercise(ws: Client, tcp: Client): Promise<void> {
  const sub = await within(ws.subscribe("browser.>"));
  tcp.publish("browser.hello", "from tcp", { headers: { k: "v" } });
  const m = (await sub.next(LIMIT_MS))!;
  expect([m.subject, m.text(), m.header("k")]).toEqual(["browser.hello", "from tcp", "v"]);

  const tcpSub = await within(tcp.subscribe("server.>"));
  ws.publish("server.hi", new Uint8Array([1, 2, 3]));
  expect(Array.from((await tcpSub.next(LIMIT_MS))!.data)).toEqual([1, 2, 3]);

  const rsub = await within(tcp.subscribe("svc.upper"));
  void (async () => {
    for await (const r of rsub) r.respond(r.text().toUpperCase());
  })();
  expect((await within(ws.request("svc.upper", "shout", { timeoutMs: LIMIT_MS }))).text()).toBe("SHOUT");
  await within(ws.flush());
}

describe("WebSocket transport", () => {
  it("speaks the protocol through a relay in the edge's shape", async () => {
    const token = await node.token();
    const ws = await within(
      connect({ transport: webSocket(relay.url, { WebSocket: WebSocket as never }), credential: token, name: "ws-test" }),
    );
    expect(ws.serverInfo?.protocolVersion).toBe(1);
    const tcp = await within(connectTcp({ url: node.url, caFile: node.caFile, credentialFile: node.bootstrapTokenFile }));
    await exercise(ws, tcp);
    await ws.close();
    await tcp.close();
  });

  it("reconnects when the WebSocket drops and restores subscriptions", async () => {
    const token = await node.token();
    const events: ClientEvent[] = [];
    let wake: () => void = () => undefined;
    const ws = await within(
      connect({
        transport: webSocket(relay.url, { WebSocket: WebSocket as never }),
        credential: token,
        reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
        onEvent: (e) => {
          events.push(e);
          wake();
        },
      }),
    );
    const sub = await within(ws.subscribe("drop.>"));
    const seen = (t: ClientEvent["type"]) =>
      within(
        (async () => {
          while (!events.some((e) => e.type === t)) await new Promise<void>((r) => (wake = r));
        })(),
        t,
      );
    // Kick the session: the server closes it, the relay closes the WebSocket.
    await node.ctl("connections", "kick", String(ws.serverInfo!.sessionId));
    await seen("disconnected");
    const lost = events.find((e) => e.type === "disconnected");
    expect(lost && "reason" in lost ? lost.reason : undefined).toBeDefined();
    await seen("reconnected");
    const tcp = await within(connectTcp({ url: node.url, caFile: node.caFile, credentialFile: node.bootstrapTokenFile }));
    tcp.publish("drop.again", "back");
    expect((await sub.next(LIMIT_MS))!.text()).toBe("back");
    await ws.close();
    await tcp.close();
  });

  it("refuses a server that does not accept the subprotocol", async () => {
    const bad = await startRelay({ port: node.port, caFile: node.caFile });
    try {
      const err = await connect({
        transport: webSocket(bad.url, { WebSocket: WebSocket as never, protocol: "other.v9" }),
        credential: await node.token(),
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(err).not.toBeInstanceOf(ConnectionLostError);
    } finally {
      await bad.close();
    }
  });

  it("speaks the protocol to the server's own WebSocket edge", async (ctx) => {
    if (!node.wsUrl) {
      if (process.env.ARQONBUS_REQUIRE_WS === "1") throw new Error("the server under test has no WebSocket edge");
      ctx.skip(); // the server under test has no WebSocket edge
      return;
    }
    const ca = readFileSync(node.caFile);
    class WithCa extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols, { ca });
      }
    }
    const ws = await within(
      connect({ transport: webSocket(node.wsUrl, { WebSocket: WithCa as never }), credential: await node.token() }),
    );
    const tcp = await within(connectTcp({ url: node.url, caFile: node.caFile, credentialFile: node.bootstrapTokenFile }));
    await exercise(ws, tcp);
    await ws.close();
    await tcp.close();
  });
});
