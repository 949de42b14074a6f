// What to mirror and how: every folder this PC mirrors, each with its source (presets for the
// common platforms), its targets, the paths left out, its schedule and bandwidth cap, and how
// its mirror stands; a second folder (another platform) is added with its own targets.

import { useEffect, useRef, useState } from "preact/hooks";
import type { Backend } from "./backend";
import { useAsk } from "./dialog";
import { overallLabel } from "./format";
import type { Dashboard, FolderForm as Form, FolderMode, MassDeleteView, Preset } from "./types";

type Run = (action: () => Promise<unknown>) => Promise<boolean>;

const EMPTY: Form = {
  source: "",
  preset: null,
  exclude: [],
  targets: [],
  mode: "watch",
  every_minutes: 5,
  bwlimit_mbit: null,
};

/** Every folder, and a form for a new one (open at once when there is none). */
/** `onUnsaved` hears, per form, whether it holds changes not saved yet. */
export function Folders({
  dash,
  backend,
  run,
  onUnsaved,
}: {
  dash: Dashboard;
  backend: Backend;
  run: Run;
  onUnsaved?: (form: string, unsaved: boolean) => void;
}) {
  const [presets, setPresets] = useState<Preset[]>([]);
  const [adding, setAdding] = useState(false);
  useEffect(() => {
    backend.presets().then(setPresets, () => setPresets([]));
  }, [backend]);
  return (
    <>
      {dash.folders.map((f, i) => (
        <FolderForm key={`${i}:${f.form.source}`} index={i} dash={dash} presets={presets} backend={backend} run={run} onUnsaved={onUnsaved} />
      ))}
      {dash.folders.length === 0 || adding ? (
        <FolderForm
          index={null}
          dash={dash}
          presets={presets}
          backend={backend}
          run={run}
          onUnsaved={onUnsaved}
          onDone={() => setAdding(false)}
        />
      ) : (
        <button data-test="add-folder" onClick={() => setAdding(true)}>
          Add a folder (another platform)
        </button>
      )}
    </>
  );
}

function FolderForm({
  index,
  dash,
  presets,
  backend,
  run,
  onDone,
  onUnsaved,
}: {
  index: number | null;
  dash: Dashboard;
  presets: Preset[];
  backend: Backend;
  run: Run;
  onDone?: () => void;
  onUnsaved?: (form: string, unsaved: boolean) => void;
}) {
  const view = index === null ? null : dash.folders[index];
  const initial = view?.form ?? EMPTY;
  const [form, setForm] = useState<Form>(initial);
  const ask = useAsk();
  const [excludeText, setExcludeText] = useState(form.exclude.join("\n"));
  // When what is saved changes (elsewhere, or by this form), the form shows it; not on the
  // first render, which already does (a reset then would drop what was typed meanwhile).
  const saved = JSON.stringify(initial);
  const shown = useRef(saved);
  useEffect(() => {
    if (shown.current === saved) return;
    shown.current = saved;
    setForm(initial);
    setExcludeText(initial.exclude.join("\n"));
  }, [saved]);

  const set = (change: Partial<Form>) => setForm({ ...form, ...change });
  const choosePreset = (id: string) => {
    const preset = presets.find((p) => p.id === id);
    if (!preset) return set({ preset: null });
    // The folder the last platform suggested gives way to this platform's own (or to none,
    // for the user to pick); a folder picked by hand stays.
    const previous = presets.find((p) => p.id === form.preset);
    const suggested = !form.source || (previous?.folder != null && form.source === previous.folder);
    setExcludeText(preset.exclude.join("\n"));
    set({ preset: id, exclude: preset.exclude, source: suggested ? (preset.folder ?? "") : form.source });
  };
  const toggleTarget = (name: string, on: boolean) =>
    set({ targets: on ? [...form.targets, name] : form.targets.filter((t) => t !== name) });
  const entered = { ...form, exclude: excludeText.split("\n").map((l) => l.trim()).filter(Boolean) };
  // What this form saved last: saved, it is no longer a change, even before the dashboard's
  // next snapshot shows it (a Sync pressed right after Save must not be refused).
  const [savedAs, setSavedAs] = useState<string | null>(null);
  const save = async () => {
    const done = await run(() => backend.saveFolder(index, entered));
    if (done) {
      setSavedAs(JSON.stringify(entered));
      onDone?.();
    }
  };
  const preset = presets.find((p) => p.id === form.preset);
  const dirty = JSON.stringify(entered) !== saved && JSON.stringify(entered) !== savedAs;
  const formKey = index === null ? "new" : String(index);
  useEffect(() => {
    onUnsaved?.(formKey, dirty);
    return () => onUnsaved?.(formKey, false);
  }, [dirty, formKey]);
  const title = view ? (presets.find((p) => p.id === view.form.preset)?.name ?? view.form.source) : dash.folders.length ? "Another folder" : "What to mirror";
  // A server receives one folder: the others' targets are not offered.
  const taken = (name: string) => dash.folders.some((f, i) => i !== index && f.form.targets.includes(name));

  return (
    <section class="card folder" data-test={index === null ? "folder-new" : `folder-${index}`}>
      <header>
        <h2>{title}</h2>
        {view && (
          <span class={`pill ${view.state}`} data-test="folder-state" data-state={view.state}>
            {view.pushing ? "Sending" : overallLabel(view.state)}
          </span>
        )}
        {view && (
          <button
            class="link"
            data-test="remove-folder"
            onClick={async () => {
              const answer = await ask({
                title: `Stop mirroring ${view.form.source}?`,
                body: <p>Nothing is deleted: the backups keep their copy, and the folder on this PC stays as it is.</p>,
                choices: [{ key: "remove-folder", label: "Stop mirroring it", kind: "danger" }],
              });
              if (answer) run(() => backend.removeFolder(index!));
            }}
          >
            Remove
          </button>
        )}
        {index === null && dash.folders.length > 0 && (
          <button class="link" onClick={() => onDone?.()}>
            Cancel
          </button>
        )}
      </header>
      {view?.problem && (
        <p class="warning" data-test="folder-problem">
          {view.problem}
        </p>
      )}
      {view?.mass_delete && <MassDelete stop={view.mass_delete} index={index!} backend={backend} run={run} />}
      {view?.kept && (
        <p class="warning" data-test="kept">
          Not mirrored: you kept the backups as they were. Check this folder (a drive not mounted, files moved), then press
          Sync.
        </p>
      )}
      <label>
        Trading platform
        <select name="preset" value={form.preset ?? ""} onChange={(e) => choosePreset(e.currentTarget.value)}>
          <option value="">Other (any folder)</option>
          {presets.map((p) => (
            <option value={p.id} key={p.id}>
              {p.name}
            </option>
          ))}
        </select>
      </label>
      {preset && <p class="hint">Pick {preset.hint}.</p>}
      <label>
        Source folder on {dash.this_pc}
        <div class="row">
          <input
            name="source"
            value={form.source}
            placeholder="the platform's data folder"
            onInput={(e) => set({ source: e.currentTarget.value })}
          />
          <button
            type="button"
            onClick={async () => {
              const picked = await backend.pickFolder(form.source || undefined);
              if (picked) set({ source: picked });
            }}
          >
            Browse…
          </button>
        </div>
      </label>
      <fieldset>
        <legend>Targets</legend>
        {dash.servers.length === 0 && <p class="muted">Add a server first.</p>}
        {dash.servers.map((s) => (
          <label class="check" key={s.name} title={taken(s.name) ? `${s.name} receives another folder` : undefined}>
            <input
              type="checkbox"
              data-test={`target-${s.name}`}
              checked={form.targets.includes(s.name)}
              disabled={taken(s.name)}
              onChange={(e) => toggleTarget(s.name, e.currentTarget.checked)}
            />
            {s.name}
            {taken(s.name) && <span class="muted"> (another folder's)</span>}
          </label>
        ))}
      </fieldset>
      <label>
        <span>
          Left out, one pattern per line (<code>cache</code> matches that name anywhere, <code>db/cache</code> a path
          from the folder)
        </span>
        <textarea name="exclude" rows={5} value={excludeText} onInput={(e) => setExcludeText(e.currentTarget.value)} />
      </label>
      <div class="row">
        <label>
          Schedule
          <select name="mode" value={form.mode} onChange={(e) => set({ mode: e.currentTarget.value as FolderMode })}>
            <option value="watch">Continuous (every change)</option>
            <option value="every">Every few minutes</option>
            <option value="manual">Only when I press Sync</option>
          </select>
        </label>
        {form.mode === "every" && (
          <label>
            Minutes
            <input
              name="every"
              type="number"
              min="0.25"
              step="any"
              value={form.every_minutes ?? 5}
              onInput={(e) => set({ every_minutes: Number(e.currentTarget.value) })}
            />
          </label>
        )}
        <label>
          Bandwidth cap (Mbit/s)
          <input
            name="bwlimit"
            type="number"
            min="0"
            step="any"
            placeholder="no cap"
            value={form.bwlimit_mbit ?? ""}
            onInput={(e) => {
              const v = e.currentTarget.value;
              set({ bwlimit_mbit: v === "" ? null : Number(v) });
            }}
          />
        </label>
      </div>
      {form.mode === "every" && (form.every_minutes ?? 5) < 5 && (
        <p class="warning" data-test="interval-warning">
          {view?.interval_warning ??
            "Every 5 minutes is the recommended minimum; shorter intervals need at least 4 GB of memory and a fast link."}
        </p>
      )}
      <div class="buttons">
        <button class="primary" data-test="save-folder" onClick={save} disabled={!dirty}>
          Save
        </button>
        {dirty && <span class="muted" data-test="unsaved">Unsaved changes</span>}
      </div>
    </section>
  );
}

/** A sync stopped before deleting many files on a server: what it would delete, and the two
 * choices, the second one confirmed first. */
function MassDelete({
  stop,
  index,
  backend,
  run,
}: {
  stop: MassDeleteView;
  index: number;
  backend: Backend;
  run: Run;
}) {
  const ask = useAsk();
  const more = Math.max(0, stop.doomed - stop.paths.length);
  const deleteThem = async () => {
    const answer = await ask({
      title: `Delete ${stop.doomed || "these"} files on ${stop.server}?`,
      body: (
        <>
          <p>
            They are not in this PC's folder any more. If that is on purpose, the backups delete them too (each backup keeps
            them in its trash for a while).
          </p>
          <p>If this PC's folder is on a drive that is not mounted, or was emptied by mistake, keep the backups instead.</p>
        </>
      ),
      choices: [{ key: "delete", label: "Delete them on the backups", kind: "danger" }],
    });
    if (answer) await run(() => backend.allowMassDelete(index));
  };
  return (
    <div class="banner warning mass-delete" data-test="mass-delete">
      <div>
        <strong>Sync stopped to protect your backup.</strong> {stop.server}: {stop.reason}
        {stop.paths.length > 0 && (
          <>
            <ul class="doomed" data-test="doomed">
              {stop.paths.map((p) => (
                <li key={p}>
                  <code>{p}</code>
                </li>
              ))}
            </ul>
            {more > 0 && (
              <span class="muted" data-test="doomed-more">
                and {more} more
              </span>
            )}
          </>
        )}
        <div class="buttons">
          <button class="primary" data-test="keep-backup" onClick={() => run(() => backend.keepBackup(index))}>
            Keep the backup as it is
          </button>
          <button class="danger" data-test="allow-mass-delete" onClick={deleteThem}>
            Delete them on the backups…
          </button>
        </div>
      </div>
    </div>
  );
}
