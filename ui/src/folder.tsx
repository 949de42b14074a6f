// What to mirror and how: the source folder (with presets for the common platforms), the
// targets, the paths left out, the schedule and the bandwidth cap.

import { useEffect, useState } from "preact/hooks";
import type { Backend } from "./backend";
import type { Dashboard, FolderView, Mode, Preset } from "./types";

type Run = (action: () => Promise<unknown>) => Promise<boolean>;

function initial(dash: Dashboard): FolderView {
  return (
    dash.folder ?? {
      source: "",
      preset: null,
      exclude: [],
      targets: [],
      mode: "watch",
      every_minutes: 5,
      bwlimit_mbit: null,
    }
  );
}

export function FolderForm({ dash, backend, run }: { dash: Dashboard; backend: Backend; run: Run }) {
  const [presets, setPresets] = useState<Preset[]>([]);
  const [form, setForm] = useState<FolderView>(initial(dash));
  const [excludeText, setExcludeText] = useState(form.exclude.join("\n"));
  const saved = JSON.stringify(dash.folder);
  useEffect(() => {
    const f = initial(dash);
    setForm(f);
    setExcludeText(f.exclude.join("\n"));
  }, [saved]);
  useEffect(() => {
    backend.presets().then(setPresets, () => setPresets([]));
  }, [backend]);

  const set = (change: Partial<FolderView>) => setForm({ ...form, ...change });
  const choosePreset = (id: string) => {
    const preset = presets.find((p) => p.id === id);
    if (!preset) return set({ preset: null });
    setExcludeText(preset.exclude.join("\n"));
    set({ preset: id, exclude: preset.exclude, source: form.source || preset.folder || "" });
  };
  const toggleTarget = (name: string, on: boolean) =>
    set({ targets: on ? [...form.targets, name] : form.targets.filter((t) => t !== name) });
  const save = () =>
    run(() =>
      backend.saveFolder({
        ...form,
        exclude: excludeText.split("\n").map((l) => l.trim()).filter(Boolean),
      }),
    );
  const preset = presets.find((p) => p.id === form.preset);
  const dirty = JSON.stringify({ ...form, exclude: excludeText.split("\n").map((l) => l.trim()).filter(Boolean) }) !== JSON.stringify(initial(dash));

  return (
    <section class="card folder">
      <header>
        <h2>What to mirror</h2>
      </header>
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
          <label class="check" key={s.name}>
            <input
              type="checkbox"
              data-test={`target-${s.name}`}
              checked={form.targets.includes(s.name)}
              onChange={(e) => toggleTarget(s.name, e.currentTarget.checked)}
            />
            {s.name}
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
          <select name="mode" value={form.mode} onChange={(e) => set({ mode: e.currentTarget.value as Mode })}>
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
          {dash.interval_warning ??
            "Every 5 minutes is the recommended minimum; shorter intervals need at least 4 GB of memory and a fast link."}
        </p>
      )}
      <div class="buttons">
        <button class="primary" data-test="save-folder" onClick={save} disabled={!dirty}>
          Save
        </button>
        {dirty && <span class="muted">Unsaved changes</span>}
      </div>
    </section>
  );
}
