/**
 * A real `arqonbus serve` for the SDK tests (two shards, TLS, a fixed free
 * loopback port so a restart keeps the address) and `arqonctl` against it.
 * Binaries: $ARQONBUS_BIN / $ARQONCTL_BIN or the workspace's target/debug.
 * Tokens go to 0600 files and are never printed.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { access, constants, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect as connectTcp, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const LIMIT_MS = 20_000;
const REPO = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");

async function binary(env: string, name: string): Promise<string> {
  const path = process.env[env] || join(REPO, "target", "debug", name);
  try {
    await access(path, constants.X_OK);
  } catch {
    throw new Error(`${path} not found: run cargo build -p arqonbus -p arqonbus-cli --locked (or sdk/test.sh), or set ${env}`);
  }
  return path;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => res(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function listening(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connectTcp({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

export interface Tenant {
  name: string;
  tenantId: number;
  principalId: number;
  credentialId: number;
  tokenFile: string;
}

export class Node {
  dir = "";
  port = 0;
  control = "";
  /** The WebSocket edge's URL, when the binary has the edge. */
  wsUrl: string | undefined;
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly extra = "") {}

  /**
   * A node on fresh free ports. A port found free can be taken by another
   * test file's node before this server binds it (vitest runs files in
   * parallel), so a first start that finds its address in use picks new
   * ports and tries again.
   */
  static async start(extra = ""): Promise<Node> {
    const n = new Node(extra);
    n.dir = await mkdtemp(join(tmpdir(), "arqonbus-ts-test-"));
    for (let attempt = 1; ; attempt++) {
      n.port = await freePort();
      n.wsPort = 0;
      try {
        await n.start();
        return n;
      } catch (e) {
        if (attempt >= 5 || !/address already in use/i.test(String(e))) throw e;
      }
    }
  }

  get url(): string {
    return `tls://127.0.0.1:${this.port}`;
  }
  get dataDir(): string {
    return join(this.dir, "data");
  }
  get caFile(): string {
    return join(this.dataDir, "tls", "ca.pem");
  }
  get bootstrapTokenFile(): string {
    return join(this.dataDir, "credentials", "bootstrap.token");
  }

  /** Whether the binary knows `[websocket]` (learnt at the first start). */
  private wsSupported: boolean | undefined;
  private wsPort = 0;

  /**
   * Starts the binary. The configuration asks for the WebSocket edge on a
   * free port; a binary without the edge refuses the `[websocket]` section,
   * and the node then starts without it (`wsUrl` stays undefined).
   */
  async start(): Promise<void> {
    if (this.wsSupported !== false) {
      if (!this.wsPort) this.wsPort = await freePort();
      try {
        await this.startOnce(true);
        this.wsSupported = true;
        // A binary may know the section before it serves the edge.
        this.wsUrl = (await listening(this.wsPort)) ? `wss://127.0.0.1:${this.wsPort}/` : undefined;
        return;
      } catch (e) {
        if (this.wsSupported === true || !/websocket/i.test(String(e))) throw e;
        this.wsSupported = false;
      }
    }
    await this.startOnce(false);
  }

  private async startOnce(ws: boolean): Promise<void> {
    const config = join(this.dir, "arqonbus.toml");
    const wsSection = ws ? `[websocket]\nenabled = true\nlisten = "127.0.0.1:${this.wsPort}"\n\n` : "";
    await writeFile(
      config,
      `data_dir = "${this.dataDir}"\n\n[server]\nlisten = "127.0.0.1:${this.port}"\nshards = 2\ntick_ms = 20\nlame_duck_window_ms = 1000\n\n` +
        `[control]\nlisten = "127.0.0.1:0"\n\n[metrics]\nlisten = "127.0.0.1:0"\n\n[log]\nformat = "text"\nlevel = "warn"\n\n` +
        `[steering]\ndefault_placement = "spread"\n\n${wsSection}${this.extra}`,
    );
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("ARQONBUS_") && k !== "RUST_LOG"),
    );
    const proc = spawn(await binary("ARQONBUS_BIN", "arqonbus"), ["serve", "--config", config], {
      stdio: ["ignore", "ignore", "pipe"],
      env,
    });
    this.proc = proc;
    this.exited = new Promise((res) => proc.once("exit", () => res()));
    const lines = createInterface({ input: proc.stderr! });
    const last: string[] = [];
    await new Promise<void>((res, rej) => {
      let data = false;
      const timer = setTimeout(() => rej(new Error(`no banner: ${last.join(" | ")}`)), LIMIT_MS);
      proc.once("exit", () => rej(new Error(`the server exited: ${last.join(" | ")}`)));
      lines.on("line", (raw) => {
        const line = raw.trim();
        last.push(line);
        if (last.length > 20) last.shift();
        if (line.startsWith("ArqonBus listening on ")) data = true;
        if (line.startsWith("control API:")) this.control = line.slice("control API:".length).trim().split(" ")[0]!;
        if (data && this.control) {
          clearTimeout(timer);
          res();
        }
      });
    });
  }

  signal(sig: NodeJS.Signals): void {
    this.proc?.kill(sig);
  }

  async waitExit(): Promise<void> {
    await this.exited;
  }

  async kill(): Promise<void> {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGKILL");
      await this.exited;
    }
  }

  async stop(): Promise<void> {
    await this.kill();
    await rm(this.dir, { recursive: true, force: true });
  }

  /** `arqonctl --json ARGS`. */
  async ctl(...args: string[]): Promise<any> {
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("ARQONBUS_") && !k.startsWith("ARQONCTL_")),
    );
    const bin = await binary("ARQONCTL_BIN", "arqonctl");
    return new Promise((res, rej) => {
      execFile(
        bin,
        ["--server", this.control, "--data-dir", this.dataDir, "--json", ...args],
        { env, timeout: LIMIT_MS },
        (err, stdout, stderr) => {
          if (err) rej(new Error(`arqonctl ${args.slice(0, 2).join(" ")} failed: ${stderr.trim()}`));
          else res(JSON.parse(stdout));
        },
      );
    });
  }

  async tenant(name: string, opts: { signedTtl?: string } = {}): Promise<Tenant> {
    const t = await this.ctl("tenants", "create", name);
    const p = await this.ctl("principals", "create", "--tenant", String(t.id), `${name}-app`);
    return this.credential(name, Number(t.id), Number(p.id), opts);
  }

  async credential(name: string, tenantId: number, principalId: number, opts: { signedTtl?: string } = {}): Promise<Tenant> {
    const args = ["credentials", "issue", "--principal", String(principalId)];
    if (opts.signedTtl) args.push("--signed", "--ttl", opts.signedTtl);
    const c = await this.ctl(...args);
    const id = Number(c.credential.id);
    const tokenFile = join(this.dir, `${name}-${id}.token`);
    await writeFile(tokenFile, `${c.token}\n`, { mode: 0o600 });
    return { name, tenantId, principalId, credentialId: id, tokenFile };
  }

  async token(t?: Tenant): Promise<string> {
    return (await readFile(t ? t.tokenFile : this.bootstrapTokenFile, "utf8")).trim();
  }
}

/** `p`, or an error naming `what` after LIMIT_MS. */
export function within<T>(p: Promise<T>, what = "the operation"): Promise<T> {
  return new Promise<T>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${what} did not finish within ${LIMIT_MS} ms`)), LIMIT_MS);
    p.then(
      (v) => {
        clearTimeout(timer);
        res(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        rej(e);
      },
    );
  });
}
