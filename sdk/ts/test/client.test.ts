/**
 * The SDK over its native TLS-TCP transport against a real `arqonbus serve`
 * (two shards, the generated CA). Every wait is bounded; nothing asserts on time.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  AuthenticationFailedError,
  ClosedError,
  type ClientEvent,
  Client,
  InvalidHeadersError,
  InvalidQueueGroupError,
  InvalidSubjectError,
  NoRespondersError,
  OptionsError,
  PayloadTooLargeError,
  ReconnectBufferFullError,
  RequestTimeoutError,
  ServerError,
  TlsError,
  backoffDelay,
  checkSubject,
  connect,
  parseServerUrl,
} from "../src/node.js";
import { LIMIT_MS, Node, type Tenant, within } from "./server.js";

class Events {
  seen: ClientEvent[] = [];
  private waiters: Array<() => void> = [];
  readonly on = (e: ClientEvent) => {
    this.seen.push(e);
    for (const w of this.waiters.splice(0)) w();
  };
  async wait<T extends ClientEvent["type"]>(type: T, count = 1): Promise<Extract<ClientEvent, { type: T }>> {
    return within(
      (async () => {
        for (;;) {
          const found = this.seen.filter((e) => e.type === type);
          if (found.length >= count) return found[count - 1] as Extract<ClientEvent, { type: T }>;
          await new Promise<void>((r) => this.waiters.push(r));
        }
      })(),
      `event ${type}`,
    );
  }
}

let node: Node;
let names = 0;
const fresh = () => node.tenant(`ts${++names}`);

function open(n: Node, t?: Tenant, extra: Partial<Parameters<typeof connect>[0]> = {}): Promise<Client> {
  return within(
    connect({ url: n.url, caFile: n.caFile, credentialFile: t ? t.tokenFile : n.bootstrapTokenFile, ...extra }),
    "connect",
  );
}

beforeAll(async () => {
  node = await Node.start();
});
afterAll(async () => {
  await node?.stop();
});

describe("units", () => {
  it("parses URLs and checks subjects", () => {
    expect(parseServerUrl("127.0.0.1:9")).toEqual({ tls: true, host: "127.0.0.1", port: 9 });
    expect(parseServerUrl("tcp://h")).toEqual({ tls: false, host: "h", port: 7420 });
    expect(parseServerUrl("tls://[::1]:5/")).toEqual({ tls: true, host: "::1", port: 5 });
    for (const bad of ["http://h", "tls://h/x", "tls://u@h", "tls://h:0"]) {
      expect(() => parseServerUrl(bad)).toThrow(OptionsError);
    }
    expect(() => checkSubject("a..b", 256, false)).toThrow(InvalidSubjectError);
    expect(() => checkSubject("a.>.b", 256, true)).toThrow(InvalidSubjectError);
    expect(() => checkSubject("$SYS.x", 256, true)).toThrow(InvalidSubjectError);
    expect(checkSubject("a.*.>", 256, true)).toEqual(new TextEncoder().encode("a.*.>"));
  });

  it("backs off with equal jitter, capped", () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const base = Math.min(50 * 2 ** attempt, 5000);
      for (const r of [0, 0.5, 1]) {
        const d = backoffDelay({}, attempt, r);
        expect(d).toBeGreaterThanOrEqual(base / 2);
        expect(d).toBeLessThanOrEqual(base);
      }
    }
  });
});

describe("against the server over TLS TCP", () => {
  it("connects, shows the Welcome, and closes idempotently", async () => {
    const t = await fresh();
    const c = await open(node, t, { name: "ts-test", kind: "agent" });
    expect(c.serverInfo?.tenant).toBe(t.name);
    expect(c.serverInfo?.protocolVersion).toBe(1);
    expect(c.serverInfo?.protocolMinor).toBeGreaterThanOrEqual(3);
    expect(c.status).toBe("connected");
    // The listing is gathered from the shards; poll (bounded) until it shows the session.
    let mine: Record<string, unknown> | undefined;
    for (let i = 0; i < 100 && !mine; i++) {
      const conns = (await node.ctl("connections", "list")).connections as Array<Record<string, unknown>>;
      mine = conns.find((x) => Number(x.tenant_id) === t.tenantId);
      if (!mine) await new Promise((r) => setTimeout(r, 50));
    }
    expect(mine?.client_name).toBe("ts-test");
    expect(mine?.client_kind).toBe("agent");
    await c.close();
    await c.close();
    expect(c.status).toBe("closed");
    expect(() => c.publish("x", "y")).toThrow(ClosedError);
  });

  it("refuses a bad credential and the wrong CA with typed errors", async () => {
    const err = await connect({ url: node.url, caFile: node.caFile, credential: "abt_not-a-real-token" }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AuthenticationFailedError);
    expect((err as AuthenticationFailedError).retryable).toBe(false);
    expect(String(err)).not.toContain("abt_not");
    const other = await Node.start();
    try {
      const tls = await connect({ url: node.url, caFile: other.caFile, credentialFile: node.bootstrapTokenFile }).catch(
        (e: unknown) => e,
      );
      expect(tls).toBeInstanceOf(TlsError);
    } finally {
      await other.stop();
    }
    await expect(connect({ url: node.url, credential: "abt_x" })).rejects.toBeInstanceOf(OptionsError);
  });

  it("authenticates with a signed token from a credential function", async () => {
    const t = await fresh();
    const signed = await node.credential(t.name, t.tenantId, t.principalId, { signedTtl: "1h" });
    const token = await node.token(signed);
    expect(token.startsWith("abs_")).toBe(true);
    let calls = 0;
    const c = await open(node, undefined, {
      credentialFile: undefined,
      credential: async () => {
        calls++;
        return token;
      },
    });
    expect(calls).toBe(1);
    expect(c.serverInfo?.tenant).toBe(t.name);
    await c.close();
  });

  it("publishes and subscribes across shards with wildcards, headers and order", async () => {
    const t = await fresh();
    const subs = await open(node, t);
    const pub = await open(node, t);
    const wild = await within(subs.subscribe("orders.*.created"));
    const full = await within(subs.subscribe("orders.>"));
    for (let i = 0; i < 100; i++) {
      pub.publish("orders.eu.created", String(i), { headers: [["seq", String(i)], ["k", "v"]] });
    }
    pub.publish("orders.us.shipped", new Uint8Array([0, 255]));
    await within(pub.flush());
    for (let i = 0; i < 100; i++) {
      const m = (await wild.next(LIMIT_MS))!;
      expect([m.subject, m.text(), m.header("seq"), m.header("k")]).toEqual(["orders.eu.created", String(i), String(i), "v"]);
    }
    const got: Uint8Array[] = [];
    for (let i = 0; i < 101; i++) got.push((await full.next(LIMIT_MS))!.data);
    expect(Array.from(got[100]!)).toEqual([0, 255]);
    await subs.close();
    await pub.close();
  });

  it("gives each message of a queue group to exactly one member", async () => {
    const t = await fresh();
    const members = await Promise.all([0, 1, 2].map(() => open(node, t)));
    const subs = await Promise.all(members.map((m) => within(m.subscribe("jobs.run", { queue: "workers" }))));
    const plain = await within(members[0]!.subscribe("jobs.run"));
    const pub = await open(node, t);
    for (let i = 0; i < 60; i++) pub.publish("jobs.run", String(i));
    await within(pub.flush());
    for (let i = 0; i < 60; i++) await plain.next(LIMIT_MS);
    const seen: string[] = [];
    let arrived: () => void = () => undefined;
    const all = new Promise<void>((r) => (arrived = r));
    for (const s of subs) {
      void (async () => {
        for await (const m of s) {
          seen.push(m.text());
          if (seen.length >= 60) arrived();
        }
      })();
    }
    await within(all, "60 queue-group deliveries");
    await Promise.all(members.map((m) => within(m.flush()))); // anything extra would be here by now
    expect([...seen].sort()).toEqual(Array.from({ length: 60 }, (_, i) => String(i)).sort());
    for (const m of [...members, pub]) await m.close();
  });

  it("does request/reply, no responders and timeouts", async () => {
    const t = await fresh();
    const responder = await open(node, t);
    const requester = await open(node, t);
    const sub = await within(responder.subscribe("svc.echo", { queue: "echo" }));
    void (async () => {
      for await (const m of sub) m.respond(`echo:${m.text()}`, { headers: { "served-by": "ts" } });
    })();
    const reply = await within(requester.request("svc.echo", "hi", { timeoutMs: LIMIT_MS }));
    expect(reply.text()).toBe("echo:hi");
    expect(reply.header("served-by")).toBe("ts");
    const many = await within(
      Promise.all(Array.from({ length: 20 }, (_, i) => requester.request("svc.echo", String(i), { timeoutMs: LIMIT_MS }))),
    );
    expect(many.map((m) => m.text())).toEqual(Array.from({ length: 20 }, (_, i) => `echo:${i}`));
    await expect(requester.request("svc.nobody", "x", { timeoutMs: LIMIT_MS })).rejects.toBeInstanceOf(NoRespondersError);
    const silent = await within(responder.subscribe("svc.silent"));
    await expect(requester.request("svc.silent", "x", { timeoutMs: 300 })).rejects.toBeInstanceOf(RequestTimeoutError);
    expect((await silent.next(LIMIT_MS))!.reply).toBeDefined();
    await responder.close();
    await requester.close();
  });

  it("keeps tenants with identical subjects apart", async () => {
    const [a, b] = [await fresh(), await fresh()];
    const [ca, cb] = [await open(node, a), await open(node, b)];
    const sa = await within(ca.subscribe("shared.>"));
    const sb = await within(cb.subscribe("shared.>"));
    ca.publish("shared.x", "from a");
    cb.publish("shared.x", "from b");
    expect((await sa.next(LIMIT_MS))!.text()).toBe("from a");
    expect((await sb.next(LIMIT_MS))!.text()).toBe("from b");
    await within(ca.flush());
    await within(cb.flush());
    expect([sa.pending, sb.pending]).toEqual([0, 0]);
    await ca.close();
    await cb.close();
  });

  it("refuses invalid input locally and carries the server's refusals", async () => {
    const t = await fresh();
    await node.ctl(
      "policies", "put", "--tenant", String(t.tenantId), "--principal", String(t.principalId),
      "--pub-allow", "orders.>", "--sub-allow", "orders.>", "--sub-allow", "_INBOX.>",
    );
    const events = new Events();
    const c = await open(node, t, { onEvent: events.on });
    expect(() => c.publish("a.*", "")).toThrow(InvalidSubjectError);
    await expect(c.subscribe("$SYS.>")).rejects.toBeInstanceOf(InvalidSubjectError);
    await expect(c.subscribe("a", { queue: "bad group" })).rejects.toBeInstanceOf(InvalidQueueGroupError);
    expect(() => c.publish("a", "", { headers: { "bad key": "v" } })).toThrow(InvalidHeadersError);
    expect(() => c.publish("a", new Uint8Array(c.serverInfo!.limits.maxPayload + 1))).toThrow(PayloadTooLargeError);
    const refused = await c.subscribe("billing.>").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ServerError);
    expect((refused as ServerError).codeName).toBe("PERMISSION_DENIED");
    expect((refused as ServerError).fatal).toBe(false);
    c.publish("billing.x", "refused");
    const second = await events.wait("serverError", 2);
    expect(second.error.codeName).toBe("PERMISSION_DENIED");
    const ok = await within(c.subscribe("orders.>"));
    c.publish("orders.1", "ok");
    expect((await ok.next(LIMIT_MS))!.text()).toBe("ok");
    await c.close();
  });

  it("ends a subscription after unsubscribeAfter(n)", async () => {
    const t = await fresh();
    const c = await open(node, t);
    const other = await open(node, t);
    const sub = await within(c.subscribe("count.>"));
    sub.unsubscribeAfter(3);
    for (let i = 0; i < 10; i++) other.publish("count.x", String(i));
    await within(other.flush());
    const got: string[] = [];
    for await (const m of sub) got.push(m.text());
    expect(got).toEqual(["0", "1", "2"]);
    expect(sub.active).toBe(false);
    await c.close();
    await other.close();
  });

  it("reconnects after a kick and restores subscriptions", async () => {
    const t = await fresh();
    const events = new Events();
    const c = await open(node, t, { onEvent: events.on });
    const sub = await within(c.subscribe("kick.>"));
    const pub = await open(node, t);
    pub.publish("kick.before", "1");
    expect((await sub.next(LIMIT_MS))!.text()).toBe("1");
    await node.ctl("connections", "kick", String(c.serverInfo!.sessionId));
    const lost = await events.wait("disconnected");
    expect((lost.reason as ServerError).codeName).toBe("DISCONNECTED_BY_OPERATOR");
    await events.wait("reconnected");
    await within(c.flush());
    pub.publish("kick.after", "2");
    expect((await sub.next(LIMIT_MS))!.text()).toBe("2");
    await c.close();
    await pub.close();
  });

  it("closes for good when its credential is revoked", async () => {
    const t = await fresh();
    const events = new Events();
    const c = await open(node, t, { onEvent: events.on, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } });
    const sub = await within(c.subscribe("rev.>"));
    await node.ctl("credentials", "revoke", String(t.credentialId));
    const closed = await events.wait("closed");
    expect(closed.reason).toBeInstanceOf(AuthenticationFailedError);
    await expect(sub.next(LIMIT_MS)).rejects.toBeInstanceOf(AuthenticationFailedError);
    await expect(c.flush()).rejects.toBeInstanceOf(ClosedError);
  });

  it("replaces an expired signed token through the credential function on reconnect", async () => {
    const t = await fresh();
    const minted: number[] = [];
    const mint = async () => {
      // The first token lives 2 s; its replacements an hour (no second expiry mid-test).
      const signed = await node.credential(t.name, t.tenantId, t.principalId, { signedTtl: minted.length ? "1h" : "2s" });
      minted.push(signed.credentialId);
      return node.token(signed);
    };
    const events = new Events();
    const c = await within(
      connect({
        url: node.url,
        caFile: node.caFile,
        credential: mint,
        onEvent: events.on,
        reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
      }),
    );
    const sub = await within(c.subscribe("expiry.>"));
    const lost = await events.wait("disconnected");
    expect((lost.reason as ServerError).codeName).toBe("CREDENTIAL_REVOKED");
    await events.wait("reconnected");
    expect(minted.length).toBeGreaterThanOrEqual(2);
    expect(new Set(minted).size).toBe(minted.length);
    const other = await open(node, t);
    other.publish("expiry.after", "still here");
    expect((await sub.next(LIMIT_MS))!.text()).toBe("still here");
    await c.close();
    await other.close();
  });

  it("drops and counts when a subscription is full, without blocking the reader", async () => {
    const t = await fresh();
    const events = new Events();
    const c = await open(node, t, { onEvent: events.on });
    const other = await open(node, t);
    const sub = await within(c.subscribe("flood.>", { capacity: 5 }));
    for (let i = 0; i < 50; i++) other.publish("flood.x", String(i));
    await within(other.flush());
    await within(c.flush()); // pongs still arrive
    const slow = await events.wait("slowConsumer");
    expect(slow.sid).toBe(sub.sid);
    expect(sub.dropped).toBe(45);
    const got: string[] = [];
    for (let i = 0; i < 5; i++) got.push((await sub.next(LIMIT_MS))!.text());
    expect(got).toEqual(["0", "1", "2", "3", "4"]);
    await c.close();
    await other.close();
  });

  it("never shows the token or a payload when inspected or serialised", async () => {
    const t = await fresh();
    const token = await node.token(t);
    const { inspect } = await import("node:util");
    const c = await open(node, undefined, { credentialFile: undefined, credential: token });
    const sub = await within(c.subscribe("secret.>"));
    c.publish("secret.x", "payload-s3cr3t", { headers: { authorization: "h3ad3r" } });
    const m = (await sub.next(LIMIT_MS))!;
    for (const shown of [inspect(c, { depth: 10 }), inspect(m, { depth: 10 }), String(m), JSON.stringify(m)]) {
      for (const secret of [token, "payload-s3cr3t", "h3ad3r"]) expect(shown).not.toContain(secret);
    }
    await c.close();
  });

  it("drain delivers what was sent, then closes", async () => {
    const t = await fresh();
    const c = await open(node, t);
    const pub = await open(node, t);
    const sub = await within(c.subscribe("drain.>"));
    for (let i = 0; i < 50; i++) pub.publish("drain.x", String(i));
    await within(pub.flush());
    await within(c.drain());
    expect(c.status).toBe("closed");
    const got: string[] = [];
    for await (const m of sub) got.push(m.text());
    expect(got).toEqual(Array.from({ length: 50 }, (_, i) => String(i)));
    await pub.close();
  });
});

describe("against a server that goes away", () => {
  it("handles a Drain notice, reconnects after the restart and resubscribes", async () => {
    const n = await Node.start();
    try {
      const events = new Events();
      const c = await open(n, undefined, { onEvent: events.on, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } });
      const sub = await within(c.subscribe("restart.>"));
      n.signal("SIGTERM");
      const drain = await events.wait("serverDraining");
      expect(drain.deadlineMs).toBeGreaterThan(0);
      await events.wait("disconnected");
      await within(n.waitExit());
      c.publish("restart.buffered", "kept");
      const flushed = c.flush();
      await n.start();
      await events.wait("reconnected");
      await within(flushed, "a flush pending across the reconnect");
      expect((await sub.next(LIMIT_MS))!.text()).toBe("kept");
      const other = await open(n);
      other.publish("restart.after", "again");
      expect((await sub.next(LIMIT_MS))!.text()).toBe("again");
      await other.close();
      await c.close();
    } finally {
      await n.stop();
    }
  });

  it("fails publishes fast when the reconnect buffer is full", async () => {
    const n = await Node.start();
    try {
      const events = new Events();
      const c = await open(n, undefined, {
        onEvent: events.on,
        reconnectBufferSize: 1024,
        reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
      });
      await n.kill();
      await events.wait("disconnected");
      c.publish("x", new Uint8Array(500));
      expect(() => c.publish("x", new Uint8Array(600))).toThrow(ReconnectBufferFullError);
      await c.close();
      expect(events.seen.at(-1)?.type).toBe("closed");
    } finally {
      await n.stop();
    }
  });
});
