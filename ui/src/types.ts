// The dashboard's data, generated from the tray app's Rust types (src-tauri/src/bindings.rs).
// Do not edit: `RAINMAKER_WRITE_TYPES=1 cargo test -p rainmaker-tray --test types` rewrites it.

/**
 * The whole dashboard.
 */
export type Dashboard = { 
/**
 * This PC's name (the source).
 */
this_pc: string, config_path: string, 
/**
 * The tray icon's state.
 */
overall: Overall, 
/**
 * One line for the tray's tooltip.
 */
summary: string, servers: Array<ServerView>, 
/**
 * Every folder this PC mirrors, in the configuration's order.
 */
folders: Array<FolderView>, guard: GuardView, resources: ResourcesView | null, paused: PauseView | null, 
/**
 * A sync is running now.
 */
running: boolean, 
/**
 * The failback under way: the server this PC is taking its folder back from, and how
 * far it got.
 */
bringing_back: BringingBack | null, 
/**
 * The most recent first.
 */
activity: Array<ActivityView>, };

/**
 * A failback under way.
 */
export type BringingBack = { 
/**
 * The server it comes from.
 */
from: string, 
/**
 * What arrived so far, as the server reports it (null until it planned).
 */
progress: Progress | null, };

/**
 * The state of everything (the tray icon's picture), or of one folder.
 */
export type Overall = "idle" | "in_sync" | "syncing" | "paused" | "error";

/**
 * A remote agent the user added.
 */
export type ServerView = { name: string, url: string, fingerprint: string | null, role: ServerRole, 
/**
 * The folder of this PC it receives, if it does.
 */
folder: string | null, 
/**
 * Unknown (null) until it was checked.
 */
online: boolean | null, 
/**
 * The name the agent gives itself.
 */
remote_name: string | null, 
/**
 * Null when no folder mirrors to it.
 */
state: TargetState | null, reason: string | null, 
/**
 * Unix seconds.
 */
last_sync: number | null, 
/**
 * Seconds it lags behind the source.
 */
lag_seconds: number, progress: Progress | null, 
/**
 * This PC holds the server's admin token: it can push from it, promote and demote it.
 */
admin: boolean, 
/**
 * What the server says of its own folder (admin only): `source` (promoted) or `target`.
 */
remote_role: FolderRole | null, 
/**
 * The last machine that mirrored into it: the chain, as the server reports it.
 */
fed_by: string | null, 
/**
 * Files in its folder and its newest change (Unix seconds): which side is newer.
 */
remote_files: number | null, newest_change: number | null, 
/**
 * The newest change in this PC's folder that it receives (Unix seconds), to compare.
 */
this_pc_newest: number | null, 
/**
 * The pushes it runs on this PC's command, with their state (admin only).
 */
pushes: Array<PushView>, 
/**
 * The machines that receive its folder by dialing it (servers behind NAT; a failback),
 * as it reports them (admin only).
 */
feeds: Array<FeedStatus>, 
/**
 * The server it receives its folder from by dialing it, if it does (admin only).
 */
subscription: SubscriptionStatus | null, };

/**
 * What a server is to this PC.
 */
export type ServerRole = "target" | "spare";

/**
 * Where a target stands.
 */
export type TargetState = "waiting" | "syncing" | "verifying" | "in sync" | "paused" | "offline" | "error";

/**
 * A folder's role on its agent.
 */
export type FolderRole = "target" | "source";

/**
 * A push a server runs.
 */
export type PushView = { id: number, 
/**
 * The servers it pushes to (by name where this PC knows them).
 */
to: Array<string>, state: JobState, error: string | null, };

/**
 * A peer that receives an agent's folder over a connection it opened.
 */
export type FeedStatus = { 
/**
 * The name the peer gave.
 */
name: string, 
/**
 * The address its connection came from (a NAT router's, for a peer behind one).
 */
address: string, 
/**
 * A one-off pull (a failback), not a subscription.
 */
once: boolean, 
/**
 * Its connection is open now.
 */
connected: boolean, 
/**
 * When it last held exactly what the folder holds (Unix seconds).
 */
in_sync_at: number | null, 
/**
 * Why its last session failed, if it did.
 */
error: string | null, };

/**
 * An agent's subscription to another agent's folder.
 */
export type SubscriptionStatus = { 
/**
 * The agent it dials, `host:port`.
 */
from: string, 
/**
 * Its connection is open now.
 */
connected: boolean, 
/**
 * When its last session ended (Unix seconds).
 */
last_session_at: number | null, 
/**
 * Why the last attempt failed, if it did.
 */
error: string | null, };

/**
 * One batch of an agent's trash, as an admin client sees it.
 */
export type TrashBatch = { 
/**
 * Its name (what `PullTrash` names).
 */
name: string, 
/**
 * When its session started (Unix seconds).
 */
when: number, 
/**
 * How many files it holds.
 */
files: number, 
/**
 * The first of them.
 */
paths: Array<string>, };

/**
 * Where a push an agent runs stands.
 */
export type JobState = "running" | "paused" | "done" | "failed" | "stopped";

/**
 * What the dashboard asks of a server's push.
 */
export type PushAction = "pause" | "resume" | "stop";

/**
 * A transfer to one target.
 */
export type Progress = { files_done: number, files_total: number, bytes_done: number, bytes_total: number, 
/**
 * Bytes per second, smoothed.
 */
rate: number, 
/**
 * Seconds left at that rate, once there is one.
 */
eta_seconds: number | null, };

/**
 * A folder this PC mirrors: its settings and how its mirror stands.
 */
export type FolderView = { form: FolderForm, 
/**
 * As for the tray icon.
 */
state: Overall, 
/**
 * A one-off push of it runs now.
 */
pushing: boolean, 
/**
 * Why it cannot be mirrored as set (a token file missing, a bad exclusion).
 */
problem: string | null, 
/**
 * A sync stopped because it would delete too much; the dashboard shows what, and asks
 * whether to keep the backups as they are or delete the files on them.
 */
mass_delete: MassDeleteView | null, 
/**
 * The user kept the backups as they were after such a stop: the folder is not mirrored
 * until the next Sync.
 */
kept: boolean, 
/**
 * Why the chosen interval is not advised, if it is not.
 */
interval_warning: string | null, };

/**
 * A sync that stopped before deleting many files on a server.
 */
export type MassDeleteView = { 
/**
 * The server's name.
 */
server: string, 
/**
 * What stopped, in words.
 */
reason: string, 
/**
 * How many files would be deleted (0: not known).
 */
doomed: number, 
/**
 * The first of them.
 */
paths: Array<string>, };

/**
 * A folder's settings; also what the dashboard sends back to change them.
 */
export type FolderForm = { source: string, preset: string | null, exclude: Array<string>, 
/**
 * Server names.
 */
targets: Array<string>, mode: FolderMode, every_minutes: number | null, 
/**
 * The cap on RainMaker's traffic, megabits per second.
 */
bwlimit_mbit: number | null, };

/**
 * When a folder is mirrored.
 */
export type FolderMode = "manual" | "watch" | "every";

/**
 * The guard's thresholds; also what the dashboard sends back to change them.
 */
export type GuardView = { cpu_above: number, cpu_for_seconds: number, memory_below_mb: number | null, net_above_mbit: number | null, resume_after_seconds: number, };

/**
 * What the guard measured last.
 */
export type ResourcesView = { cpu_percent: number, available_memory_mb: number, total_memory_mb: number, other_traffic_mbit: number, };

/**
 * Why sync is held.
 */
export type PauseView = { by: PausedBy, reason: string, };

/**
 * Who paused sync.
 */
export type PausedBy = "you" | "guard";

/**
 * One line of the recent-activity log.
 */
export type ActivityView = { 
/**
 * Unix seconds.
 */
at: number, level: Level, text: string, };

/**
 * How much a line of the activity log matters.
 */
export type Level = "info" | "warn" | "error";

/**
 * A platform preset as the folder picker shows it.
 */
export type Preset = { id: string, name: string, hint: string, exclude: Array<string>, 
/**
 * Where the platform keeps its data on this PC, if found (the first of `found`).
 */
folder: string | null, 
/**
 * Every data folder of it found on this PC (one per MetaTrader installation).
 */
found: Array<Found>, };

/**
 * A platform's data folder found on this PC.
 */
export type Found = { path: string, 
/**
 * Which installation, in words.
 */
label: string, };

/**
 * The kinds of error the dashboard tells apart (in JSON: `bad_input`, `wrong_token`, ...).
 */
export type UiCode = "bad_input" | "config" | "source" | "io" | "autostart" | "unreachable" | "tls" | "timeout" | "network" | "engine" | "protocol" | "refused" | "wrong_token" | "version" | "fingerprint" | "not_pinned" | "insecure" | "promoted" | "busy" | "recent_source" | "mass_delete";

/**
 * An error for the dashboard.
 */
export type UiError = { 
/**
 * What kind of error, stable and machine-readable: what the dashboard decides on.
 */
code: UiCode, 
/**
 * What went wrong and what to do about it.
 */
message: string, };
