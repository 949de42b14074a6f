// A backend in memory with the same behaviour the tray app shows, for running the dashboard
// in a plain browser (`npm run dev`) and for the front end's tests. It never talks to Tauri.

import type { Backend } from "./backend";
import type { Dashboard, FolderForm, GuardView, Preset, ServerView, UiCode, UiError } from "./types";

export interface FakeBackend extends Backend {
  state: Dashboard;
  calls: string[];
  /** Changes the state and tells the watcher, as the tray app does on an engine event. */
  update(change: (d: Dashboard) => void): void;
}

const PRESETS: Preset[] = [
  {
    id: "ninjatrader8",
    name: "NinjaTrader 8",
    hint: "Documents\\NinjaTrader 8: historical data (db), workspaces, templates and custom code",
    exclude: ["cache", "log", "trace", "tmp", "*.lock"],
    folder: "C:\\Users\\trader\\Documents\\NinjaTrader 8",
    found: [{ path: "C:\\Users\\trader\\Documents\\NinjaTrader 8", label: "C:\\Users\\trader\\Documents\\NinjaTrader 8" }],
  },
  {
    id: "metatrader5",
    name: "MetaTrader 5",
    hint: "the terminal's data folder (File > Open Data Folder)",
    exclude: ["logs", "MQL5/Logs", "Tester", "*.lock"],
    folder: null,
    found: [],
  },
  {
    id: "metatrader4",
    name: "MetaTrader 4",
    hint: "the terminal's data folder (File > Open Data Folder)",
    exclude: ["logs", "MQL4/Logs", "tester", "*.lock"],
    folder: "C:\\Users\\trader\\AppData\\Roaming\\MetaQuotes\\Terminal\\2E8DC23981084565FA3E19C061F586B2",
    found: [
      { path: "C:\\Users\\trader\\AppData\\Roaming\\MetaQuotes\\Terminal\\2E8DC23981084565FA3E19C061F586B2", label: "installed at C:\\Program Files (x86)\\IC Markets MT4" },
      { path: "C:\\Users\\trader\\AppData\\Roaming\\MetaQuotes\\Terminal\\9D15457EC01AD10E06A932AAC616DC32", label: "installed at C:\\Program Files (x86)\\FXCM MT4" },
    ],
  },
];

export function emptyDashboard(): Dashboard {
  return {
    this_pc: "TRADING-PC",
    config_path: "C:\\Users\\trader\\AppData\\Roaming\\rainmaker\\rainmaker.toml",
    overall: "idle",
    summary: "RainMaker: pick a folder and targets",
    servers: [],
    folders: [],
    guard: {
      cpu_above: 85,
      cpu_for_seconds: 10,
      memory_below_mb: null,
      net_above_mbit: null,
      resume_after_seconds: 15,
    },
    resources: { cpu_percent: 12, available_memory_mb: 9000, total_memory_mb: 16000, other_traffic_mbit: 0.4 },
    paused: null,
    running: false,
    bringing_back: null,
    activity: [],
  };
}

/** The states the dashboard can be in, by name: `npm run dev` shows one with `?state=NAME`,
 * and the tests render every one. */
export const SCENARIOS = ["fresh", "synced", "guard-pause", "offline", "mass-delete", "failover", "bringing-back"] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** A dashboard in state `name`: one folder of NinjaTrader 8 mirrored to cloud-1 (with its
 * admin code), as the real app would show it in that state. */
export function scenario(name: Scenario): Dashboard {
  const d = emptyDashboard();
  if (name === "fresh") return d;
  const now = Date.now() / 1000;
  const source = "C:\\Users\\trader\\Documents\\NinjaTrader 8";
  const server: ServerView = {
    name: "cloud-1",
    url: "wss://203.0.113.5:7878",
    fingerprint: "SHA256:" + "ab".repeat(32),
    role: "target",
    folder: source,
    online: true,
    remote_name: "cloud-1",
    state: "in sync",
    reason: null,
    last_sync: now - 40,
    lag_seconds: 0,
    progress: null,
    admin: true,
    remote_role: "target",
    fed_by: "TRADING-PC",
    remote_files: 2043,
    newest_change: now - 40,
    this_pc_newest: now - 40,
    pushes: [],
    feeds: [],
    subscription: null,
  };
  d.servers = [server];
  d.folders = [
    {
      form: { source, preset: "ninjatrader8", exclude: PRESETS[0].exclude, targets: ["cloud-1"], mode: "watch", every_minutes: null, bwlimit_mbit: null },
      state: "in_sync",
      pushing: false,
      problem: null,
      mass_delete: null,
      kept: false,
      interval_warning: null,
    },
  ];
  d.overall = "in_sync";
  d.summary = "RainMaker: all 1 targets in sync";
  d.activity = [{ at: now - 40, level: "info", text: "cloud-1 is in sync: 12 files, 3.4 MB sent in 0.6 s" }];
  switch (name) {
    case "guard-pause":
      d.paused = { by: "guard", reason: "CPU 93% above 85% for 10 s" };
      d.overall = "paused";
      break;
    case "offline":
      d.servers[0] = { ...server, online: false, state: "offline", reason: "Cannot reach 203.0.113.5:7878: connection refused.", lag_seconds: 300 };
      d.overall = "error";
      break;
    case "mass-delete":
      d.folders[0].mass_delete = {
        server: "cloud-1",
        reason: "this sync would delete 1900 of 2043 files on it",
        doomed: 1900,
        paths: Array.from({ length: 50 }, (_, i) => `db/tick/ES 12-26/202611${String(i % 30).padStart(2, "0")}.Last.ncd`),
      };
      d.overall = "error";
      break;
    case "failover":
      d.servers[0] = { ...server, remote_role: "source", newest_change: now - 5 };
      break;
    case "bringing-back":
      d.servers[0] = { ...server, remote_role: "source", newest_change: now - 5 };
      d.bringing_back = {
        from: "cloud-1",
        progress: { files_done: 800, files_total: 2043, bytes_done: 400_000_000, bytes_total: 1_000_000_000, rate: 25_000_000, eta_seconds: 24 },
      };
      break;
  }
  return d;
}

function fail(code: UiCode, message: string): never {
  throw { code, message } satisfies UiError;
}

export function fakeBackend(initial: Dashboard = emptyDashboard()): FakeBackend {
  let watcher: ((d: Dashboard) => void) | null = null;
  const tokens = new Map<string, string>();
  const fake: FakeBackend = {
    state: initial,
    calls: [],
    update(change) {
      change(fake.state);
      fake.state = { ...fake.state };
      watcher?.(fake.state);
    },
    async watch(onUpdate) {
      watcher = onUpdate;
      onUpdate(fake.state);
    },
    async presets() {
      return PRESETS;
    },
    async peekServer(url) {
      fake.calls.push(`peek ${url}`);
      const code = /^rainmaker:\/\/([^#]+)#(SHA256:[0-9a-f]{64})\/(.+)$/.exec(url.trim());
      if (code) return code[2];
      if (!/:\d+$/.test(url)) fail("bad_input", `"${url}" has no port; write HOST:PORT.`);
      if (url.includes("offline")) fail("unreachable", `Cannot reach ${url}.`);
      return "SHA256:" + "ab".repeat(32);
    },
    async addServer(name, url, token, fingerprint, adminToken) {
      fake.calls.push(`add ${name} ${url} ${fingerprint}${adminToken ? " admin" : ""}`);
      const code = /^rainmaker:\/\/([^#]+)#(SHA256:[0-9a-f]{64})\/(.+)$/.exec(url.trim());
      if (code) {
        if (code[2] !== fingerprint) fail("fingerprint", "The confirmed certificate is not the one the pairing code pins.");
        [url, token] = [code[1], code[3]];
      }
      if (!token.trim()) fail("bad_input", "The pairing token is empty. Copy it from the server's token file.");
      if (token === "wrong") fail("wrong_token", "The server refused the pairing token.");
      // No name given: the name the agent gives itself.
      if (!name.trim()) name = `backup-${url.replace(/[^0-9]/g, "").slice(-4)}`;
      if (fake.state.servers.some((s) => s.name === name)) fail("bad_input", `A server is already named "${name}".`);
      tokens.set(name, token);
      fake.update((d) => {
        const server: ServerView = {
          name,
          url: url.includes("://") ? url : `wss://${url}`,
          fingerprint,
          role: "spare",
          folder: null,
          online: true,
          remote_name: name,
          state: null,
          reason: null,
          last_sync: null,
          lag_seconds: 0,
          progress: null,
          admin: !!adminToken,
          remote_role: adminToken ? "target" : null,
          fed_by: null,
          remote_files: adminToken ? 2043 : null,
          newest_change: adminToken ? 1_795_000_000 : null,
          this_pc_newest: 1_794_990_000,
          pushes: [],
          feeds: [],
          subscription: null,
        };
        d.servers = [...d.servers, server];
      });
    },
    async renameServer(old, name) {
      fake.calls.push(`rename ${old} ${name}`);
      fake.update((d) => {
        d.servers = d.servers.map((s) => (s.name === old ? { ...s, name } : s));
        d.folders = d.folders.map((f) => ({ ...f, form: { ...f.form, targets: f.form.targets.map((t) => (t === old ? name : t)) } }));
      });
    },
    async repairServer(name, url, token, fingerprint) {
      fake.calls.push(`repair ${name} ${url} ${fingerprint}`);
      const code = /^rainmaker:\/\/([^#]+)#(SHA256:[0-9a-f]{64})\/(.+)$/.exec(url.trim());
      if (code) [url, token] = [code[1], code[3]];
      if (token === "wrong") fail("wrong_token", "The server refused the pairing token.");
      fake.update((d) => {
        d.servers = d.servers.map((s) =>
          s.name === name
            ? { ...s, url: url.includes("://") ? url : `wss://${url}`, fingerprint, online: true, reason: null, state: s.state === null ? null : "in sync" }
            : s,
        );
      });
    },
    async trashOf(name) {
      fake.calls.push(`trash of ${name}`);
      return [
        { name: "1796191200-5", when: 1796191200, files: 1900, paths: ["db/tick/ES/20261201.Last.ncd", "db/tick/ES/20261202.Last.ncd"] },
        { name: "1796100000-1", when: 1796100000, files: 1, paths: ["workspaces/Default.xml"] },
      ];
    },
    async restoreFrom(name, batch) {
      fake.calls.push(`restore ${batch} from ${name}`);
      return `C:\\Users\\trader\\Documents\\NinjaTrader 8 (restored from ${name})`;
    },
    async retryServer(name) {
      fake.calls.push(`retry ${name}`);
      const server = fake.state.servers.find((s) => s.name === name);
      if (server?.url.includes("offline")) fail("unreachable", `${name} still does not answer: connection refused`);
    },
    async removeServer(name) {
      fake.calls.push(`remove ${name}`);
      fake.update((d) => {
        d.servers = d.servers.filter((s) => s.name !== name);
        d.folders = d.folders.map((f) => ({ ...f, form: { ...f.form, targets: f.form.targets.filter((t) => t !== name) } }));
      });
    },
    async saveFolder(index: number | null, folder: FolderForm) {
      fake.calls.push(`save folder ${index ?? "new"} ${folder.source} -> ${folder.targets.join(",")} (${folder.mode})`);
      if (!folder.source.trim()) fail("bad_input", "Pick the folder to mirror.");
      const others = fake.state.folders.filter((_, i) => i !== index);
      const taken = folder.targets.find((t) => others.some((f) => f.form.targets.includes(t)));
      if (taken) fail("bad_input", `${taken} already receives another folder. A server receives one folder.`);
      if (others.some((f) => f.form.source === folder.source)) fail("bad_input", `${folder.source} is already mirrored.`);
      fake.update((d) => {
        const view = {
          form: folder,
          state: "idle" as const,
          pushing: false,
          problem: null,
          mass_delete: null,
          kept: false,
          interval_warning:
            folder.mode === "every" && (folder.every_minutes ?? 5) < 5
              ? "syncing every 1m is below the recommended 5 minutes"
              : null,
        };
        d.folders = index === null ? [...d.folders, view] : d.folders.map((f, i) => (i === index ? view : f));
        d.servers = d.servers.map((s) => {
          const owner = d.folders.find((f) => f.form.targets.includes(s.name));
          return { ...s, role: owner ? "target" : "spare", folder: owner?.form.source ?? null, state: owner ? ("waiting" as const) : null };
        });
      });
    },
    async removeFolder(index) {
      fake.calls.push(`remove folder ${index}`);
      fake.update((d) => {
        d.folders = d.folders.filter((_, i) => i !== index);
      });
    },
    async saveGuard(guard: GuardView) {
      fake.calls.push(`save guard ${guard.cpu_above}`);
      fake.update((d) => {
        d.guard = guard;
      });
    },
    async syncNow() {
      fake.calls.push("sync");
      if (!fake.state.folders.some((f) => f.form.targets.length > 0))
        fail("bad_input", "Pick a folder to mirror and at least one target first.");
      fake.update((d) => {
        d.running = true;
        d.paused = null;
        d.overall = "syncing";
        d.servers = d.servers.map((s) =>
          s.role === "target"
            ? {
                ...s,
                state: "syncing",
                progress: { files_done: 1, files_total: 4, bytes_done: 2e6, bytes_total: 8e6, rate: 4e6, eta_seconds: 1.5 },
              }
            : s,
        );
      });
    },
    async remotePush(from, to) {
      fake.calls.push(`push from ${from} to ${to.join(",")}`);
      if (!fake.state.servers.find((s) => s.name === from)?.admin)
        fail("bad_input", `${from} was added without its admin token, so this PC cannot command it.`);
      fake.update((d) => {
        d.servers = d.servers.map((s) =>
          to.includes(s.name)
            ? { ...s, fed_by: from }
            : s.name === from
              ? { ...s, pushes: [{ id: 1, to, state: "running" as const, error: null }] }
              : s,
        );
      });
    },
    async controlPush(name, job, action) {
      fake.calls.push(`${action} push ${job} of ${name}`);
      const push = fake.state.servers.find((s) => s.name === name)?.pushes.find((p) => p.id === job);
      if (!push) fail("refused", `there is no push ${job} on ${name}`);
      const next = { pause: "paused", resume: "running", stop: "stopped" } as const;
      fake.update((d) => {
        d.servers = d.servers.map((s) =>
          s.name === name ? { ...s, pushes: s.pushes.map((p) => (p.id === job ? { ...p, state: next[action] } : p)) } : s,
        );
      });
    },
    async setRole(name, source, force) {
      fake.calls.push(`role ${name} ${source ? "source" : "target"}${force ? " force" : ""}`);
      const server = fake.state.servers.find((s) => s.name === name);
      if (source && server?.fed_by && !force)
        fail("recent_source", `${server.fed_by} mirrored into this folder 5 s ago and may still be the source; stop it, or promote with force if it is gone`);
      fake.update((d) => {
        d.servers = d.servers.map((s) => (s.name === name ? { ...s, remote_role: source ? "source" : "target" } : s));
      });
    },
    async receiveFrom(from, address) {
      fake.calls.push(address === null ? `receive from ${from}` : `receive from ${from} at ${address}`);
      if (address !== null && !/:\d+$/.test(address)) fail("bad_input", `"${address}" is not HOST:PORT.`);
      fake.update((d) => {
        const newest = d.servers.find((s) => s.name === from)?.newest_change ?? null;
        d.servers = d.servers.map((s) => ({ ...s, this_pc_newest: newest ?? s.this_pc_newest }));
      });
    },
    async syncAnyway() {
      fake.calls.push("sync anyway");
      fake.update((d) => {
        d.running = true;
        d.folders = d.folders.map((f) => ({ ...f, pushing: true }));
      });
    },
    async stopSyncs() {
      fake.calls.push("stop syncs");
      fake.update((d) => {
        d.running = false;
        d.folders = d.folders.map((f) => ({ ...f, pushing: false }));
      });
    },
    async allowMassDelete(index) {
      fake.calls.push(`allow mass delete ${index}`);
      fake.update((d) => {
        d.folders = d.folders.map((f, i) => (i === index ? { ...f, mass_delete: null } : f));
      });
    },
    async keepBackup(index) {
      fake.calls.push(`keep backup ${index}`);
      fake.update((d) => {
        d.folders = d.folders.map((f, i) => (i === index ? { ...f, mass_delete: null, kept: true } : f));
      });
    },
    async pause() {
      fake.calls.push("pause");
      fake.update((d) => {
        d.paused = { by: "you", reason: "Paused from the dashboard or the tray menu" };
        d.overall = "paused";
      });
    },
    async resume() {
      fake.calls.push("resume");
      fake.update((d) => {
        d.paused = null;
        d.overall = "idle";
      });
    },
    async getAutostart() {
      return false;
    },
    async setAutostart(enabled) {
      fake.calls.push(`autostart ${enabled}`);
    },
    async pickFolder() {
      return null;
    },
  };
  return fake;
}
