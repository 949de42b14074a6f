// The machine's health as the guard sees it: CPU, memory and network gauges with their
// thresholds, the thresholds themselves, and the banners for a pause.

import { useEffect, useState } from "preact/hooks";
import type { Backend } from "./backend";
import type { Dashboard, GuardView } from "./types";

type Run = (action: () => Promise<unknown>) => Promise<boolean>;

function Gauge(props: { label: string; value: string; share: number; limit: number | null; test: string; over: boolean }) {
  return (
    <div class={`gauge ${props.over ? "over" : ""}`} data-test={props.test}>
      <div class="gauge-label">
        <span>{props.label}</span>
        <strong>{props.value}</strong>
      </div>
      <div class="bar">
        <div class="fill" style={{ width: `${Math.min(100, Math.max(0, props.share))}%` }} />
        {props.limit !== null && <div class="limit" style={{ left: `${Math.min(100, props.limit)}%` }} />}
      </div>
    </div>
  );
}

export function Gauges({ dash }: { dash: Dashboard }) {
  const r = dash.resources;
  const g = dash.guard;
  if (!r) return <p class="muted">Measuring…</p>;
  const memUsed = r.total_memory_mb ? 100 - (100 * r.available_memory_mb) / r.total_memory_mb : 0;
  const memLimit = g.memory_below_mb !== null && r.total_memory_mb ? 100 - (100 * g.memory_below_mb) / r.total_memory_mb : null;
  const netScale = Math.max(g.net_above_mbit ?? 0, r.other_traffic_mbit, 10) * 1.25;
  return (
    <div class="gauges">
      <Gauge
        label="CPU"
        test="gauge-cpu"
        value={`${r.cpu_percent.toFixed(0)}% (pause above ${g.cpu_above}%)`}
        share={r.cpu_percent}
        limit={g.cpu_above}
        over={r.cpu_percent > g.cpu_above}
      />
      <Gauge
        label="Memory"
        test="gauge-memory"
        value={`${(r.available_memory_mb / 1024).toFixed(1)} GB free${g.memory_below_mb !== null ? ` (pause below ${(g.memory_below_mb / 1024).toFixed(1)} GB)` : ""}`}
        share={memUsed}
        limit={memLimit}
        over={g.memory_below_mb !== null && r.available_memory_mb < g.memory_below_mb}
      />
      <Gauge
        label="Other network traffic"
        test="gauge-network"
        value={`${r.other_traffic_mbit.toFixed(1)} Mbit/s${g.net_above_mbit !== null ? ` (pause above ${g.net_above_mbit} Mbit/s)` : ""}`}
        share={(100 * r.other_traffic_mbit) / netScale}
        limit={g.net_above_mbit !== null ? (100 * g.net_above_mbit) / netScale : null}
        over={g.net_above_mbit !== null && r.other_traffic_mbit > g.net_above_mbit}
      />
    </div>
  );
}

export function GuardForm({ dash, backend, run }: { dash: Dashboard; backend: Backend; run: Run }) {
  const [form, setForm] = useState<GuardView>(dash.guard);
  const saved = JSON.stringify(dash.guard);
  useEffect(() => setForm(dash.guard), [saved]);
  const num = (v: string) => (v === "" ? null : Number(v));
  return (
    <details class="guard-form">
      <summary>Pause thresholds</summary>
      <div class="row">
        <label>
          CPU above (%)
          <input type="number" name="cpu-above" value={form.cpu_above} onInput={(e) => setForm({ ...form, cpu_above: Number(e.currentTarget.value) })} />
        </label>
        <label>
          for (s)
          <input type="number" name="cpu-for" value={form.cpu_for_seconds} onInput={(e) => setForm({ ...form, cpu_for_seconds: Number(e.currentTarget.value) })} />
        </label>
        <label>
          Memory below (MB)
          <input type="number" name="memory-below" placeholder="off" value={form.memory_below_mb ?? ""} onInput={(e) => setForm({ ...form, memory_below_mb: num(e.currentTarget.value) })} />
        </label>
        <label>
          Other traffic above (Mbit/s)
          <input type="number" name="net-above" placeholder="off" value={form.net_above_mbit ?? ""} onInput={(e) => setForm({ ...form, net_above_mbit: num(e.currentTarget.value) })} />
        </label>
        <label>
          Resume after (s)
          <input type="number" name="resume-after" value={form.resume_after_seconds} onInput={(e) => setForm({ ...form, resume_after_seconds: Number(e.currentTarget.value) })} />
        </label>
      </div>
      <button data-test="save-guard" onClick={() => run(() => backend.saveGuard(form))}>
        Save thresholds
      </button>
    </details>
  );
}
