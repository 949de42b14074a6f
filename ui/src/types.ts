// The dashboard's data, as the tray app's `view.rs` sends it.

export type Overall = "idle" | "in_sync" | "syncing" | "paused" | "error";

export interface Dashboard {
  this_pc: string;
  config_path: string;
  overall: Overall;
  summary: string;
  servers: ServerView[];
  /** Every folder this PC mirrors, in the configuration's order. */
  folders: FolderView[];
  guard: GuardView;
  resources: ResourcesView | null;
  paused: PauseView | null;
  running: boolean;
  activity: ActivityView[];
}

export interface ServerView {
  name: string;
  url: string;
  fingerprint: string | null;
  role: "target" | "spare";
  /** The folder of this PC it receives, if it does. */
  folder: string | null;
  online: boolean | null;
  remote_name: string | null;
  state: string;
  reason: string | null;
  last_sync: number | null;
  lag_seconds: number;
  progress: ProgressView | null;
  /** This PC holds the server's admin token: it can push from it, promote and demote it. */
  admin: boolean;
  /** What the server says of its folder: `source` (promoted) or `target`. */
  remote_role: "target" | "source" | null;
  /** The last machine that mirrored into it (the chain). */
  fed_by: string | null;
  remote_files: number | null;
  newest_change: number | null;
  /** The newest change in this PC's folder that it receives. */
  this_pc_newest: number | null;
  /** The pushes it runs on this PC's command. */
  pushes: PushView[];
}

export type JobState = "running" | "paused" | "done" | "failed" | "stopped";

/** A push a server runs. */
export interface PushView {
  id: number;
  to: string[];
  state: JobState;
  error: string | null;
}

export type PushAction = "pause" | "resume" | "stop";

export interface ProgressView {
  files_done: number;
  files_total: number;
  bytes_done: number;
  bytes_total: number;
  rate: number;
  eta_seconds: number | null;
}

export type Mode = "manual" | "watch" | "every";

/** A folder this PC mirrors: its settings and how its mirror stands. */
export interface FolderView {
  form: FolderForm;
  state: Overall;
  pushing: boolean;
  problem: string | null;
  mass_delete: string | null;
  interval_warning: string | null;
}

/** A folder's settings; also what the dashboard sends back to change them. */
export interface FolderForm {
  source: string;
  preset: string | null;
  exclude: string[];
  targets: string[];
  mode: Mode;
  every_minutes: number | null;
  bwlimit_mbit: number | null;
}

export interface GuardView {
  cpu_above: number;
  cpu_for_seconds: number;
  memory_below_mb: number | null;
  net_above_mbit: number | null;
  resume_after_seconds: number;
}

export interface ResourcesView {
  cpu_percent: number;
  available_memory_mb: number;
  total_memory_mb: number;
  other_traffic_mbit: number;
}

export interface PauseView {
  by: "you" | "guard";
  reason: string;
}

export interface ActivityView {
  at: number;
  level: "info" | "warn" | "error";
  text: string;
}

export interface Preset {
  id: string;
  name: string;
  hint: string;
  exclude: string[];
  folder: string | null;
}

/** `UiCode` in src-tauri/src/error.rs. */
export type UiCode =
  | "bad_input" | "config" | "source" | "io" | "autostart" | "unreachable" | "tls" | "timeout"
  | "network" | "engine" | "protocol" | "refused" | "wrong_token" | "version" | "fingerprint"
  | "not_pinned" | "insecure" | "promoted" | "busy" | "recent_source" | "mass_delete";

/** An error from the backend: a stable code and a message in plain words. */
export interface UiError {
  code: UiCode;
  message: string;
}
