//! Typed events and reports: what the engine tells the agent's progress bar, its logs, and
//! the tray app, without knowing which of them is listening.
//!
//! Events go out on a bounded broadcast channel: a listener that falls behind loses old
//! progress events, never slows the mirror.

pub use crate::protocol::Refusal;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Something that happened in a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The source folder was scanned.
    Scanned {
        files: u64,
        files_hashed: u64,
        bytes_hashed: u64,
        /// The digest of the source's tree (hex): a new one means the source changed.
        digest: String,
    },
    /// A path could not be read or mirrored; the rest goes on.
    Skipped { path: String, reason: String },
    /// A target answered and its plan is known.
    Planned {
        target: String,
        files: u64,
        bytes: u64,
    },
    /// Progress towards one target.
    Progress {
        target: String,
        files_done: u64,
        files_total: u64,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// A file could not be written on a target.
    FileFailed {
        target: String,
        path: String,
        reason: String,
    },
    /// A target verified it is identical to the source.
    InSync { target: String },
    /// A target verified it holds the source's newest scan, but that scan took blocks of a
    /// grown file on trust; it is in sync once the source has read them again.
    Verifying { target: String },
    /// A continuous or scheduled sync of one target finished.
    Synced {
        target: String,
        files_sent: u64,
        bytes_changed: u64,
        wire_bytes: u64,
        seconds: f64,
    },
    /// The resource guard paused sync; the reason carries the measured figure.
    Paused { reason: String },
    /// The resource guard resumed sync.
    Resumed { after: String },
    /// What the resource guard measured (about once a second while it runs).
    Resources {
        cpu_percent: f32,
        /// Bytes of memory available to programs.
        available_memory: u64,
        /// Bytes per second of network traffic that is not RainMaker's.
        other_traffic: f64,
    },
    /// A sync stopped before deleting `doomed` of the `held` files of a target (more than the
    /// share a sync may delete without a yes); `paths` are the first of them, in order. A
    /// `TargetFailed` with the mass-delete refusal follows.
    WouldDelete {
        target: String,
        doomed: u64,
        held: u64,
        paths: Vec<String>,
    },
    /// A target failed (down, refused, or not identical after every pass).
    TargetFailed {
        target: String,
        reason: String,
        /// What a user can do about it.
        #[serde(default)]
        refusal: Refusal,
    },
}

/// Capacity of the event channel.
pub const EVENT_CAPACITY: usize = 1024;

/// Creates an event channel.
pub fn channel() -> (broadcast::Sender<Event>, broadcast::Receiver<Event>) {
    broadcast::channel(EVENT_CAPACITY)
}

/// What happened to one target in a push.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TargetReport {
    pub url: String,
    pub ok: bool,
    /// Files whose content was written (new, rewritten or appended).
    pub files_sent: u64,
    /// Bytes of file data the target lacked and received (before compression).
    pub bytes_changed: u64,
    /// Bytes of messages on the wire with this target, both ways (after compression, before
    /// TLS framing).
    pub wire_bytes: u64,
    pub seconds: f64,
    pub passes: u32,
    pub error: Option<String>,
    /// With an error: what a user can do about it.
    pub refusal: Option<Refusal>,
}

/// What happened in a push.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PushReport {
    /// Every target is identical to the source and every source file was read.
    pub ok: bool,
    /// Every target is identical to what could be read, but some source paths were skipped.
    pub partial: bool,
    /// Stopped (a signal, the Pause button) before every target was identical; each target
    /// kept what arrived whole and resumes from there.
    pub stopped: bool,
    pub seconds: f64,
    pub files: u64,
    pub bytes_read: u64,
    pub skipped: Vec<Skipped>,
    pub targets: Vec<TargetReport>,
    /// The digest of the source's tree as the last pass scanned it: what every target that is
    /// in sync holds (not in the JSON summary).
    #[serde(skip)]
    pub digest: Option<crate::protocol::Hash>,
}

/// A source path that was not mirrored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}
