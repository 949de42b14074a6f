//! What the dashboard shows, as plain serde data: one snapshot of everything, sent whole
//! (it is small) whenever something changed, at most a few times a second.

use rainmaker_engine::protocol::{FolderRole, JobState};
use serde::{Deserialize, Serialize};

/// The whole dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dashboard {
    /// This PC's name (the source).
    pub this_pc: String,
    pub config_path: String,
    /// `idle`, `in_sync`, `syncing`, `paused` or `error`: the tray icon's state.
    pub overall: String,
    /// One line for the tray's tooltip.
    pub summary: String,
    pub servers: Vec<ServerView>,
    /// Every folder this PC mirrors, in the configuration's order.
    pub folders: Vec<FolderView>,
    pub guard: GuardView,
    pub resources: Option<ResourcesView>,
    pub paused: Option<PauseView>,
    /// A sync is running now.
    pub running: bool,
    /// The most recent first.
    pub activity: Vec<ActivityView>,
}

/// A remote agent the user added.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerView {
    pub name: String,
    pub url: String,
    pub fingerprint: Option<String>,
    /// `target` when a folder mirrors to it, `spare` when not.
    pub role: String,
    /// The folder of this PC it receives, if it does.
    pub folder: Option<String>,
    /// `None` until it was checked.
    pub online: Option<bool>,
    /// The name the agent gives itself.
    pub remote_name: Option<String>,
    /// `in sync`, `syncing`, `paused`, `offline`, `error`, `waiting`, or `idle` (not a target).
    pub state: String,
    pub reason: Option<String>,
    /// Unix seconds.
    pub last_sync: Option<f64>,
    /// Seconds it lags behind the source.
    pub lag_seconds: f64,
    pub progress: Option<ProgressView>,
    /// This PC holds the server's admin token: it can push from it, promote and demote it.
    pub admin: bool,
    /// What the server says of its own folder (admin only): `source` (promoted) or `target`.
    pub remote_role: Option<FolderRole>,
    /// The last machine that mirrored into it: the chain, as the server reports it.
    pub fed_by: Option<String>,
    /// Files in its folder and its newest change (Unix seconds): which side is newer.
    pub remote_files: Option<u64>,
    pub newest_change: Option<f64>,
    /// The newest change in this PC's folder that it receives (Unix seconds), to compare.
    pub this_pc_newest: Option<f64>,
    /// The pushes it runs on this PC's command, with their state (admin only).
    pub pushes: Vec<PushView>,
}

/// A push a server runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PushView {
    pub id: u64,
    /// The servers it pushes to (by name where this PC knows them).
    pub to: Vec<String>,
    pub state: JobState,
    pub error: Option<String>,
}

/// What the dashboard asks of a server's push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushAction {
    Pause,
    Resume,
    Stop,
}

/// A transfer to one target: files and bytes done, the rate and the time left.
pub type ProgressView = rainmaker_engine::app::progress::Progress;

/// A folder this PC mirrors: its settings and how its mirror stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FolderView {
    pub form: FolderForm,
    /// `idle`, `in_sync`, `syncing`, `paused` or `error`, as for the tray icon.
    pub state: String,
    /// A one-off push of it runs now.
    pub pushing: bool,
    /// Why it cannot be mirrored as set (a token file missing, a bad exclusion).
    pub problem: Option<String>,
    /// A sync stopped because it would delete too much; the text says what, and the
    /// dashboard offers to allow it.
    pub mass_delete: Option<String>,
    /// Why the chosen interval is not advised, if it is not.
    pub interval_warning: Option<String>,
}

/// A folder's settings; also what the dashboard sends back to change them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FolderForm {
    pub source: String,
    pub preset: Option<String>,
    pub exclude: Vec<String>,
    /// Server names.
    pub targets: Vec<String>,
    /// `manual`, `watch` or `every`.
    pub mode: String,
    pub every_minutes: Option<f64>,
    /// The cap on RainMaker's traffic, megabits per second.
    pub bwlimit_mbit: Option<f64>,
}

/// The guard's thresholds; also what the dashboard sends back to change them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardView {
    pub cpu_above: f32,
    pub cpu_for_seconds: f64,
    pub memory_below_mb: Option<u64>,
    pub net_above_mbit: Option<f64>,
    pub resume_after_seconds: f64,
}

/// What the guard measured last.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourcesView {
    pub cpu_percent: f32,
    pub available_memory_mb: u64,
    pub total_memory_mb: u64,
    pub other_traffic_mbit: f64,
}

/// Why sync is held.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PauseView {
    /// `you` (the Pause button) or `guard`.
    pub by: String,
    pub reason: String,
}

/// One line of the recent-activity log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivityView {
    /// Unix seconds.
    pub at: f64,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub text: String,
}
