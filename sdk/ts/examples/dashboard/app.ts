/**
 * The live dashboard: connects over WebSocket with a short-lived signed token
 * fetched from the page's own backend (`/token`, minted per connection
 * attempt, never stored in the page), shows every message on `<subject>.>`,
 * and publishes what you type to `<subject>.chat`.
 */
import {
  type Client,
  type ClientEvent,
  type Msg,
  type PresenceMember,
  connect,
  webSocket,
} from "../../src/index.js";

interface Config {
  /** The WebSocket endpoint, e.g. wss://127.0.0.1:7423/ */
  wsUrl: string;
  /** The subject root, e.g. "demo". */
  subject: string;
  /** Whether the server has presence (protocol 1.2): list who is in `<subject>.lobby`. */
  presence?: boolean;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $("status");
const info = $("info");
const list = $("messages");

function setStatus(state: string, text = state): void {
  status.dataset.state = state;
  status.textContent = text;
}

function show(m: Msg): void {
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString();
  const subject = document.createElement("span");
  subject.className = "subject";
  subject.textContent = m.subject;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text(); // textContent: a message can never inject markup
  li.append(time, subject, text);
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

const members = new Map<bigint, PresenceMember>();

function renderPresence(): void {
  const ul = $("presence");
  ul.replaceChildren(
    ...[...members.values()].map((m) => {
      const li = document.createElement("li");
      li.textContent = `${m.name || `client ${m.clientId}`} (${m.kind ?? "?"})${m.metadata.role ? ` · ${m.metadata.role}` : ""}`;
      return li;
    }),
  );
  $("presence-note").textContent = members.size === 0 ? "Nobody here yet." : "";
}

async function showPresence(client: Client, room: string): Promise<void> {
  const mine = await client.subscribe(room);
  await mine.track({ role: "viewer" });
  void (async () => {
    for await (const _ of mine) {
      // Messages on the room are shown by the `<subject>.>` subscription.
    }
  })();
  const watch = await client.watchPresence(room);
  const refresh = async () => {
    const snap = await client.presence(room);
    members.clear();
    for (const m of snap.members) members.set(m.clientId, m);
    renderPresence();
  };
  await refresh();
  for await (const e of watch) {
    if (e.action === "join") members.set(e.member.clientId, e.member);
    else members.delete(e.member.clientId);
    renderPresence();
  }
}

function onEvent(e: ClientEvent): void {
  if (e.type === "disconnected") setStatus("reconnecting", `reconnecting (${e.reason.message})`);
  else if (e.type === "reconnected") setStatus("connected"); // the watch and listing are re-sent
  else if (e.type === "serverDraining") setStatus("reconnecting", "server draining, moving");
  else if (e.type === "closed") setStatus("closed", e.reason ? `closed: ${e.reason.message}` : "closed");
}

async function main(): Promise<void> {
  const config = (await (await fetch("config.json", { cache: "no-store" })).json()) as Config;
  $("pattern").textContent = `${config.subject}.>`;
  $("presence-note").textContent = config.presence
    ? "Loading…"
    : "Presence appears here once the server supports it (serve.mjs --presence).";
  const client = await connect({
    transport: webSocket(config.wsUrl),
    credential: async () => {
      const r = await fetch("token", { cache: "no-store" });
      if (!r.ok) throw new Error(`token endpoint answered ${r.status}`);
      return r.text();
    },
    name: "dashboard",
    kind: "human",
    onEvent,
  });
  const si = client.serverInfo;
  info.textContent = si ? `tenant ${si.tenant} · shard ${si.shard}` : "";
  const sub = await client.subscribe(`${config.subject}.>`);
  setStatus("connected");
  if (config.presence) {
    showPresence(client, `${config.subject}.lobby`).catch((e: unknown) => {
      $("presence-note").textContent = `presence: ${e instanceof Error ? e.message : String(e)}`;
    });
  }
  $<HTMLFormElement>("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("text");
    if (!input.value) return;
    client.publish(`${config.subject}.chat`, input.value, { headers: { from: "dashboard" } });
    input.value = "";
  });
  for await (const m of sub) show(m);
}

main().catch((e: unknown) => setStatus("error", `error: ${e instanceof Error ? e.message : String(e)}`));
