//! What the dashboard shows, as plain serde data: one snapshot of everything, sent whole
//! (it is small) whenever something changed, at most a few times a second. The dashboard's
//! TypeScript types are generated from these ([`crate::bindings`]).

use rainmaker_engine::protocol::{FeedStatus, FolderRole, JobState, SubscriptionStatus};
use rainmaker_engine::status::TargetState;
use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// The whole dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
pub struct Dashboard {
    /// This PC's name (the source).
    pub this_pc: String,
    pub config_path: String,
    /// The tray icon's state.
    pub overall: Overall,
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
    /// The failback under way: the server this PC is taking its folder back from, and how
    /// far it got.
    pub bringing_back: Option<BringingBack>,
    /// The most recent first.
    pub activity: Vec<ActivityView>,
}

/// A failback under way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
pub struct BringingBack {
    /// The server it comes from.
    pub from: String,
    /// What arrived so far, as the server reports it (null until it planned).
    pub progress: Option<ProgressView>,
}

/// A remote agent the user added.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
pub struct ServerView {
    pub name: String,
    pub url: String,
    pub fingerprint: Option<String>,
    pub role: ServerRole,
    /// The folder of this PC it receives, if it does.
    pub folder: Option<String>,
    /// Unknown (null) until it was checked.
    pub online: Option<bool>,
    /// The name the agent gives itself.
    pub remote_name: Option<String>,
    /// Null when no folder mirrors to it.
    pub state: Option<TargetState>,
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
    #[ts(type = "number | null")]
    pub remote_files: Option<u64>,
    pub newest_change: Option<f64>,
    /// The newest change in this PC's folder that it receives (Unix seconds), to compare.
    pub this_pc_newest: Option<f64>,
    /// The pushes it runs on this PC's command, with their state (admin only).
    pub pushes: Vec<PushView>,
    /// The machines that receive its folder by dialing it (servers behind NAT; a failback),
    /// as it reports them (admin only).
    pub feeds: Vec<FeedStatus>,
    /// The server it receives its folder from by dialing it, if it does (admin only).
    pub subscription: Option<SubscriptionStatus>,
}

/// A push a server runs.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct PushView {
    #[ts(type = "number")]
    pub id: u64,
    /// The servers it pushes to (by name where this PC knows them).
    pub to: Vec<String>,
    pub state: JobState,
    pub error: Option<String>,
}

/// What the dashboard asks of a server's push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum PushAction {
    Pause,
    Resume,
    Stop,
}

/// A transfer to one target: files and bytes done, the rate and the time left.
pub type ProgressView = rainmaker_engine::app::progress::Progress;

/// A folder this PC mirrors: its settings and how its mirror stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
pub struct FolderView {
    pub form: FolderForm,
    /// As for the tray icon.
    pub state: Overall,
    /// A one-off push of it runs now.
    pub pushing: bool,
    /// Why it cannot be mirrored as set (a token file missing, a bad exclusion).
    pub problem: Option<String>,
    /// A sync stopped because it would delete too much; the dashboard shows what, and asks
    /// whether to keep the backups as they are or delete the files on them.
    pub mass_delete: Option<MassDeleteView>,
    /// The user kept the backups as they were after such a stop: the folder is not mirrored
    /// until the next Sync.
    pub kept: bool,
    /// Why the chosen interval is not advised, if it is not.
    pub interval_warning: Option<String>,
}

/// A sync that stopped before deleting many files on a server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
pub struct MassDeleteView {
    /// The server's name.
    pub server: String,
    /// What stopped, in words.
    pub reason: String,
    /// How many files would be deleted (0: not known).
    #[ts(type = "number")]
    pub doomed: u64,
    /// The first of them.
    pub paths: Vec<String>,
}

/// A folder's settings; also what the dashboard sends back to change them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
pub struct FolderForm {
    pub source: String,
    pub preset: Option<String>,
    pub exclude: Vec<String>,
    /// Server names.
    pub targets: Vec<String>,
    pub mode: FolderMode,
    pub every_minutes: Option<f64>,
    /// The cap on RainMaker's traffic, megabits per second.
    pub bwlimit_mbit: Option<f64>,
}

/// The guard's thresholds; also what the dashboard sends back to change them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
pub struct GuardView {
    pub cpu_above: f32,
    pub cpu_for_seconds: f64,
    #[ts(type = "number | null")]
    pub memory_below_mb: Option<u64>,
    pub net_above_mbit: Option<f64>,
    pub resume_after_seconds: f64,
}

/// What the guard measured last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
pub struct ResourcesView {
    pub cpu_percent: f32,
    #[ts(type = "number")]
    pub available_memory_mb: u64,
    #[ts(type = "number")]
    pub total_memory_mb: u64,
    pub other_traffic_mbit: f64,
}

/// Why sync is held.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct PauseView {
    pub by: PausedBy,
    pub reason: String,
}

/// One line of the recent-activity log.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct ActivityView {
    /// Unix seconds.
    pub at: f64,
    pub level: Level,
    pub text: String,
}

/// The state of everything (the tray icon's picture), or of one folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    /// Nothing to say: no target yet, or not every target heard from.
    #[default]
    Idle,
    InSync,
    Syncing,
    Paused,
    /// A target fails, or a folder cannot be mirrored as set.
    Error,
}

impl Overall {
    /// As the tray icons' file names have it.
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Idle => "idle",
            Overall::InSync => "in_sync",
            Overall::Syncing => "syncing",
            Overall::Paused => "paused",
            Overall::Error => "error",
        }
    }
}

/// What a server is to this PC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum ServerRole {
    /// A folder mirrors to it.
    Target,
    /// Added, but no folder mirrors to it.
    #[default]
    Spare,
}

/// When a folder is mirrored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum FolderMode {
    /// Only when Sync is pressed.
    Manual,
    /// On every change.
    #[default]
    Watch,
    /// Every few minutes (`every_minutes`).
    Every,
}

/// Who paused sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum PausedBy {
    /// The Pause button or the tray menu.
    You,
    /// The resource guard.
    Guard,
}

/// How much a line of the activity log matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}
