#!/usr/bin/env node
// The dashboard's tiny backend: serves the page, its configuration, and a
// short-lived signed token per request (what a tenant's real backend does
// after its own login), minted with `arqonctl credentials issue --signed`.
//
//   node examples/dashboard/serve.mjs --data-dir arqonbus-data --principal 2 \
//        --ws wss://127.0.0.1:7423/ [--subject demo] [--port 8080] [--ttl 10m] [--presence]
//
// `arqonctl` is found on PATH or in $ARQONCTL. Tokens are sent to the page
// only, never logged.
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".map": "application/json" };

/**
 * Starts the dashboard server. `mintToken()` returns a fresh token string.
 * Resolves with { url, close() }.
 */
export async function startDashboard({ wsUrl, subject = "demo", presence = false, mintToken, port = 0, host = "127.0.0.1" }) {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    try {
      if (path === "/config.json") {
        res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
        res.end(JSON.stringify({ wsUrl, subject, presence }));
      } else if (path === "/token") {
        const token = await mintToken();
        res.writeHead(200, { "content-type": "text/plain", "cache-control": "no-store" });
        res.end(token);
      } else if (path === "/" || path === "/index.html" || path.startsWith("/dist/")) {
        const file = path === "/" ? "index.html" : path.slice(1);
        if (file.includes("..")) throw Object.assign(new Error("no"), { code: "ENOENT" });
        const body = await readFile(join(here, file));
        res.writeHead(200, { "content-type": TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream" });
        res.end(body);
      } else {
        res.writeHead(404).end();
      }
    } catch (e) {
      res.writeHead(e?.code === "ENOENT" ? 404 : 500).end();
      if (e?.code !== "ENOENT") console.error(`dashboard: ${path}: ${e?.message ?? e}`);
    }
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  const addr = server.address();
  return {
    url: `http://${host}:${addr.port}/`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** A token minter that runs arqonctl (signed token, `ttl`, for `principal`). */
export function arqonctlMinter({ dataDir, principal, ttl = "10m", server, bin = process.env.ARQONCTL ?? "arqonctl" }) {
  const args = [...(server ? ["--server", server] : []), "--data-dir", dataDir, "--json",
    "credentials", "issue", "--principal", String(principal), "--signed", "--ttl", ttl];
  return () =>
    new Promise((resolve, reject) =>
      execFile(bin, args, { timeout: 10_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`arqonctl failed: ${stderr.trim().split("\n")[0]}`));
        else resolve(JSON.parse(stdout).token);
      }),
    );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const principal = arg("principal");
  if (!principal) {
    console.error("usage: serve.mjs --data-dir DIR --principal ID [--ws URL] [--subject demo] [--port 8080] [--ttl 10m] [--control URL] [--presence]");
    process.exit(2);
  }
  const dash = await startDashboard({
    wsUrl: arg("ws", "wss://127.0.0.1:7423/"),
    subject: arg("subject", "demo"),
    presence: process.argv.includes("--presence"),
    port: Number(arg("port", "8080")),
    mintToken: arqonctlMinter({ dataDir: arg("data-dir", "arqonbus-data"), principal, ttl: arg("ttl", "10m"), server: arg("control") }),
  });
  console.log(`ArqonBus dashboard on ${dash.url}`);
}
