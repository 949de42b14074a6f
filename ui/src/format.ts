// Figures as a trader reads them: sizes, rates, durations, times ago.

import type { TargetState } from "./types";

export function bytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${Math.round(n)} B`;
}

export function rate(bytesPerSecond: number): string {
  const mbit = (bytesPerSecond * 8) / 1e6;
  if (mbit >= 10) return `${mbit.toFixed(0)} Mbit/s`;
  if (mbit >= 0.1) return `${mbit.toFixed(1)} Mbit/s`;
  return `${((bytesPerSecond * 8) / 1e3).toFixed(0)} kbit/s`;
}

export function duration(seconds: number): string {
  if (!isFinite(seconds) || seconds < 0) return "—";
  if (seconds < 1) return "under a second";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) {
    const m = Math.floor(seconds / 60);
    const s = Math.round(seconds % 60);
    return s ? `${m} min ${s} s` : `${m} min`;
  }
  const h = Math.floor(seconds / 3600);
  const m = Math.round((seconds % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}

/** "just now", "12 s ago", "5 min ago", or the date for older times. */
export function ago(unixSeconds: number | null, now: number = Date.now() / 1000): string {
  if (unixSeconds === null) return "never";
  const d = now - unixSeconds;
  if (d < 2) return "just now";
  if (d < 24 * 3600) return `${duration(d)} ago`;
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function clock(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

export function percent(done: number, total: number): number {
  if (total <= 0) return 100;
  return Math.min(100, Math.max(0, (100 * done) / total));
}

/** Words for a target's state (null: no folder mirrors to it). */
export function stateLabel(state: TargetState | null): string {
  switch (state) {
    case "in sync":
      return "In sync";
    case "verifying":
      return "Verifying";
    case "syncing":
      return "Syncing";
    case "paused":
      return "Paused";
    case "offline":
      return "Offline";
    case "error":
      return "Error";
    case "waiting":
      return "Waiting";
    default:
      return "Not a target";
  }
}

const OVERALL: Record<string, string> = {
  in_sync: "All targets in sync",
  syncing: "Syncing",
  paused: "Paused",
  error: "Needs attention",
  idle: "Ready",
};

/** Words for the state of everything (the tray icon's), or of one folder. */
export function overallLabel(state: string): string {
  return OVERALL[state] ?? state;
}
