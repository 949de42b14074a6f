// The first-run guide: the platform's folder (as found where each platform keeps it, or picked
// by hand), a backup server added from its pairing code, and when to sync; then what happens
// next. Everything it does goes through the same backend calls as the forms.

import { useEffect, useState } from "preact/hooks";
import type { Backend } from "./backend";
import { AddServer } from "./servers";
import type { Dashboard, FolderMode, Preset } from "./types";

type Run = (action: () => Promise<unknown>) => Promise<boolean>;

/** A folder to mirror, with the platform it belongs to (if known) and which installation. */
type Choice = { path: string; preset: Preset | null; label?: string };

export function Guide({
  dash,
  backend,
  run,
  onManual,
  onStarted,
}: {
  dash: Dashboard;
  backend: Backend;
  run: Run;
  /** The user would rather fill in the forms. */
  onManual: () => void;
  /** The folder was saved: what happens next, in words. */
  onStarted: (next: string) => void;
}) {
  // Null while the platforms are still being looked for.
  const [presets, setPresets] = useState<Preset[] | null>(null);
  useEffect(() => {
    backend.presets().then(setPresets, () => setPresets([]));
  }, [backend]);
  const found: Choice[] = (presets ?? []).flatMap((p) => p.found.map((f) => ({ path: f.path, preset: p, label: f.label })));
  const [choice, setChoice] = useState<Choice | null>(null);
  const [adding, setAdding] = useState(false);
  const [targets, setTargets] = useState<string[] | null>(null);
  const [mode, setMode] = useState<FolderMode>("watch");
  const picked = choice ?? (found.length === 1 ? found[0] : null);
  // Every server by default; one added later is ticked as it comes, one unticked stays so.
  const [seen, setSeen] = useState<string[]>(dash.servers.map((s) => s.name));
  useEffect(() => {
    const added = dash.servers.map((s) => s.name).filter((n) => !seen.includes(n));
    if (added.length === 0) return;
    setSeen([...seen, ...added]);
    if (targets !== null) setTargets([...targets, ...added]);
  }, [dash.servers]);
  const ticked = targets ?? dash.servers.map((s) => s.name);
  const serversReady = dash.servers.length > 0 && ticked.length > 0;

  const start = async () => {
    if (!picked) return;
    const folder = {
      source: picked.path,
      preset: picked.preset?.id ?? null,
      exclude: picked.preset?.exclude ?? [],
      targets: ticked,
      mode,
      every_minutes: mode === "every" ? 5 : null,
      bwlimit_mbit: null,
    };
    if (!(await run(() => backend.saveFolder(null, folder)))) return;
    if (mode === "manual" && !(await run(() => backend.syncNow()))) return;
    const to = ticked.join(" and ");
    const when = {
      watch: "From then on, every change reaches them within a second or so.",
      every: "From then on, they get the changes every 5 minutes.",
      manual: "From then on, they get the changes when you press Sync.",
    }[mode];
    onStarted(
      `The first sync copies ${picked.path} to ${to}: all of it, once. ${when} A server is ready to trade from when its row says In sync.`,
    );
  };

  return (
    <section class="card guide" data-test="guide">
      <header>
        <h2>Set up RainMaker</h2>
        <button class="link" data-test="guide-manual" onClick={onManual}>
          Set it up by hand
        </button>
      </header>
      <ol class="steps">
        <li>
          <h3>Your trading platform's folder</h3>
          {presets === null && <p class="muted">Looking for your trading platforms…</p>}
          {presets !== null && found.length === 0 && (
            <p class="muted" data-test="guide-none-found">
              No platform was found where they keep their data (NinjaTrader 8 in Documents, MetaTrader's data folders, Sierra
              Chart in C:\SierraChart): pick its folder.
            </p>
          )}
          {found.map((f, i) => (
            <label class="check" key={f.path}>
              <input
                type="radio"
                name="guide-folder"
                data-test={`guide-found-${i}`}
                checked={picked?.path === f.path}
                onChange={() => setChoice(f)}
              />
              <span>
                <strong>{f.preset?.name}</strong> <span class="muted">{f.label}</span>
              </span>
            </label>
          ))}
          {picked && !found.some((f) => f.path === picked.path) && (
            <p data-test="guide-picked">
              <code>{picked.path}</code>
            </p>
          )}
          <button
            data-test="guide-pick"
            onClick={async () => {
              const path = await backend.pickFolder(picked?.path);
              if (path) setChoice({ path, preset: null });
            }}
          >
            {found.length ? "Another folder…" : "Pick the folder…"}
          </button>
        </li>
        <li>
          <h3>Your backup server</h3>
          {dash.servers.map((s) => (
            <label class="check" key={s.name}>
              <input
                type="checkbox"
                data-test={`guide-server-${s.name}`}
                checked={ticked.includes(s.name)}
                onChange={(e) =>
                  setTargets(e.currentTarget.checked ? [...ticked, s.name] : ticked.filter((t) => t !== s.name))
                }
              />
              {s.name} <span class="muted">{s.url.replace(/^wss:\/\//, "")}</span>
            </label>
          ))}
          {dash.servers.length === 0 && !adding && (
            <p class="muted">
              On the server, install RainMaker, start it (<code>rainmaker serve</code>), and run <code>rainmaker pair</code>: it
              prints a pairing code to paste here.
            </p>
          )}
          {adding ? (
            <AddServer
              backend={backend}
              run={run}
              onDone={() => setAdding(false)}
            />
          ) : (
            <button data-test="guide-add-server" onClick={() => setAdding(true)}>
              {dash.servers.length ? "Add another server" : "Add a server"}
            </button>
          )}
        </li>
        <li>
          <h3>When to sync</h3>
          {(
            [
              ["watch", "As soon as something changes (recommended: the backup is always current)"],
              ["every", "Every 5 minutes"],
              ["manual", "Only when I press Sync"],
            ] as const
          ).map(([value, text]) => (
            <label class="check" key={value}>
              <input
                type="radio"
                name="guide-mode"
                data-test={`guide-mode-${value}`}
                checked={mode === value}
                onChange={() => setMode(value)}
              />
              {text}
            </label>
          ))}
        </li>
      </ol>
      <div class="buttons">
        <button class="primary big" data-test="guide-start" disabled={!picked || !serversReady} onClick={start}>
          Start mirroring
        </button>
        {!picked && <span class="muted">Pick the folder first.</span>}
        {picked && !serversReady && <span class="muted">Add a backup server first.</span>}
      </div>
    </section>
  );
}
