/**
 * The live dashboard end to end in headless Chromium (Debian's, driven by
 * playwright-core; no browser download): the page gets a signed token from
 * its backend, connects over WebSocket, shows a message an agent publishes
 * over TCP, and what the person types reaches a TCP subscriber. A screenshot
 * goes to test-results/dashboard.png (docs/screenshots/ with UPDATE_SCREENSHOTS=1).
 *
 * The WebSocket endpoint is the server's own edge when the server under test
 * serves it; otherwise the test relay in the edge's shape (test/relay.ts),
 * unless ARQONBUS_REQUIRE_WS=1, which makes a missing edge a failure.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";

import { ServerError } from "../src/index.js";
import { connect } from "../src/node.js";
import { type Relay, startRelay } from "../test/relay.js";
import { LIMIT_MS, Node, within } from "../test/server.js";
// @ts-expect-error: a plain .mjs module without types
import { startDashboard } from "../examples/dashboard/serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
// UPDATE_SCREENSHOTS=1 refreshes the committed one under docs/.
const SCREENSHOT =
  process.env.UPDATE_SCREENSHOTS === "1"
    ? join(here, "..", "docs", "screenshots", "dashboard.png")
    : join(here, "..", "test-results", "dashboard.png");

let node: Node;
let relay: Relay | undefined;
let browser: Browser | undefined;
let dash: { url: string; close(): Promise<void> } | undefined;

beforeAll(async () => {
  node = await Node.start();
});
afterAll(async () => {
  await browser?.close();
  await dash?.close();
  await relay?.close();
  await node?.stop();
});

it("shows live messages and sends them from the browser", async () => {
  const tenant = await node.tenant("dashboard");
  let wsUrl = node.wsUrl;
  if (!wsUrl) {
    if (process.env.ARQONBUS_REQUIRE_WS === "1") throw new Error("the server under test has no WebSocket edge");
    // wss:// with the node's own certificate, as the edge would be.
    relay = await startRelay({ port: node.port, caFile: node.caFile }, undefined, {
      certFile: join(node.dataDir, "tls", "server.pem"),
      keyFile: join(node.dataDir, "tls", "server.key"),
    });
    wsUrl = relay.url;
    console.warn("no WebSocket edge in this server: the page goes through the test relay");
  }
  // Presence on the page when the server has the presence frames.
  const probe = await connect({ url: node.url, caFile: node.caFile, credentialFile: tenant.tokenFile, reconnect: { maxAttempts: 0 } });
  const presence = await probe
    .presence("demo.lobby", { timeoutMs: LIMIT_MS })
    .then(() => true, (e: unknown) => e instanceof ServerError && !e.fatal);
  await probe.close();
  if (!presence && process.env.ARQONBUS_REQUIRE_PRESENCE === "1") throw new Error("the server has no presence frames");
  let minted = 0;
  const started: { url: string; close(): Promise<void> } = await startDashboard({
    wsUrl,
    subject: "demo",
    presence,
    mintToken: async () => {
      minted++;
      const signed = await node.credential(tenant.name, tenant.tenantId, tenant.principalId, { signedTtl: "10m" });
      return node.token(signed);
    },
  });
  dash = started;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  // The edge's certificate is signed by the node's own CA.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 560 } });
  const page = await context.newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(started.url);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: LIMIT_MS });
  expect(minted).toBe(1);
  expect(await page.textContent("#info")).toContain("tenant dashboard");

  const agent = await within(
    connect({ url: node.url, caFile: node.caFile, credentialFile: tenant.tokenFile, kind: "agent", name: "agent-7" }),
  );
  if (presence) {
    await page.waitForSelector('#presence li:has-text("dashboard")', { timeout: LIMIT_MS });
    const lobby = await within(agent.subscribe("demo.lobby"));
    await within(lobby.track({ role: "reporter" }));
    await page.waitForSelector('#presence li:has-text("agent-7")', { timeout: LIMIT_MS });
  }
  const chat = await within(agent.subscribe("demo.chat"));
  agent.publish("demo.status", "agent-7 finished the nightly report");
  await page.waitForSelector('#messages li:has-text("agent-7 finished the nightly report")', { timeout: LIMIT_MS });

  await page.fill("#text", "thanks, looks good");
  await page.click("#send");
  const said = (await chat.next(LIMIT_MS))!;
  expect(said.text()).toBe("thanks, looks good");
  expect(said.header("from")).toBe("dashboard");
  await page.waitForSelector('#messages li:has-text("thanks, looks good")', { timeout: LIMIT_MS });
  agent.publish("demo.alerts", "disk 81% on node-3");
  await page.waitForSelector('#messages li:has-text("disk 81%")', { timeout: LIMIT_MS });
  await page.screenshot({ path: SCREENSHOT });
  expect(pageErrors).toEqual([]);
  await agent.close();
});
