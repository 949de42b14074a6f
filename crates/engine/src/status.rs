//! The state of a running push, for `rainmaker status` and the tray: every target's state
//! (in sync, syncing, paused and why, offline, error), its lag behind the source, its last
//! successful sync and the bytes still to send.
//!
//! [`Board`] takes in the engine's events and keeps a [`Status`] (pure, tested with scripted events).
//! A running push keeps its status in a small JSON file in RainMaker's data folder, named by
//! its process id; `rainmaker status` reads those of processes that are still alive.

use crate::event::Event;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A running push, as `rainmaker status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// Which of the process's mirrors this is (a process mirrors each configured folder).
    #[serde(default)]
    pub slot: u32,
    pub source: String,
    /// `once`, `watch` or `every 5m`.
    pub mode: String,
    /// Why the resource guard holds sync, if it does.
    pub paused: Option<String>,
    pub targets: Vec<TargetStatus>,
    /// When this status was written (Unix seconds).
    pub updated: f64,
}

/// Where a target stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum TargetState {
    /// Nothing is known yet (the first scan has not reached it).
    #[default]
    #[serde(rename = "waiting")]
    Waiting,
    /// Receiving what it lacks.
    #[serde(rename = "syncing")]
    Syncing,
    /// Holds the source's newest scan, but blocks of a grown file were taken on trust; in
    /// sync once the source has read them again.
    #[serde(rename = "verifying")]
    Verifying,
    /// Verified identical to the source.
    #[serde(rename = "in sync")]
    InSync,
    /// Held by the resource guard.
    #[serde(rename = "paused")]
    Paused,
    /// Unreachable or refusing, with continuous mirroring (retried).
    #[serde(rename = "offline")]
    Offline,
    /// A one-off push to it failed.
    #[serde(rename = "error")]
    Error,
}

impl TargetState {
    /// The words `rainmaker status` and the dashboard show.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Syncing => "syncing",
            TargetState::Verifying => "verifying",
            TargetState::InSync => "in sync",
            TargetState::Paused => "paused",
            TargetState::Offline => "offline",
            TargetState::Error => "error",
        }
    }

    /// Failing: unreachable, refusing, or not identical after every pass.
    pub fn failing(self) -> bool {
        matches!(self, TargetState::Offline | TargetState::Error)
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One target of a running push.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub url: String,
    pub state: TargetState,
    /// The last error or offline reason.
    pub reason: Option<String>,
    /// Since when the target has lacked a change of the source (Unix seconds), if it does.
    pub behind_since: Option<f64>,
    /// When the target last verified it was identical (Unix seconds).
    pub last_sync: Option<f64>,
    pub bytes_pending: u64,
}

impl Status {
    /// Seconds `target` is behind the source at `now` (0 when in sync).
    pub fn lag(target: &TargetStatus, now: f64) -> f64 {
        target
            .behind_since
            .map_or(0.0, |since| (now - since).max(0.0))
    }
}

/// The current Unix time in seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A running push's status, kept up to date from its events.
#[derive(Debug, Clone)]
pub struct Board {
    status: Status,
    last_digest: Option<String>,
}

impl Board {
    /// The board of a process's mirror number `slot` (the process's first is 0).
    pub fn new(pid: u32, slot: u32, source: &str, mode: &str, targets: &[String]) -> Board {
        Board {
            status: Status {
                pid,
                slot,
                source: source.to_string(),
                mode: mode.to_string(),
                paused: None,
                targets: targets
                    .iter()
                    .map(|url| TargetStatus {
                        url: url.clone(),
                        state: TargetState::Waiting,
                        ..TargetStatus::default()
                    })
                    .collect(),
                updated: 0.0,
            },
            last_digest: None,
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    fn target(&mut self, url: &str) -> Option<&mut TargetStatus> {
        self.status.targets.iter_mut().find(|t| t.url == url)
    }

    /// Takes in one event at time `at` (Unix seconds); returns whether the status changed.
    pub fn apply(&mut self, event: &Event, at: f64) -> bool {
        self.status.updated = at;
        match event {
            Event::Scanned { digest, .. } => {
                if self.last_digest.as_ref() == Some(digest) {
                    return false;
                }
                self.last_digest = Some(digest.clone());
                for target in &mut self.status.targets {
                    target.behind_since.get_or_insert(at);
                }
            }
            Event::Planned { target, bytes, .. } => {
                let paused = self.status.paused.is_some();
                let Some(t) = self.target(target) else {
                    return false;
                };
                t.state = if paused {
                    TargetState::Paused
                } else {
                    TargetState::Syncing
                };
                t.bytes_pending = *bytes;
            }
            Event::Progress {
                target,
                bytes_done,
                bytes_total,
                ..
            } => {
                let Some(t) = self.target(target) else {
                    return false;
                };
                t.bytes_pending = bytes_total.saturating_sub(*bytes_done);
            }
            Event::InSync { target } => {
                let Some(t) = self.target(target) else {
                    return false;
                };
                t.state = TargetState::InSync;
                t.reason = None;
                t.behind_since = None;
                t.last_sync = Some(at);
                t.bytes_pending = 0;
            }
            Event::Verifying { target } => {
                let Some(t) = self.target(target) else {
                    return false;
                };
                // The data is there; only the proof of what was not re-read is missing.
                t.state = TargetState::Verifying;
                t.reason = None;
                t.behind_since = None;
                t.bytes_pending = 0;
            }
            Event::TargetFailed { target, reason, .. } => {
                let continuous = self.status.mode != "once";
                let Some(t) = self.target(target) else {
                    return false;
                };
                t.state = if continuous {
                    TargetState::Offline
                } else {
                    TargetState::Error
                };
                t.reason = Some(reason.clone());
            }
            Event::FileFailed { target, reason, .. } => {
                let Some(t) = self.target(target) else {
                    return false;
                };
                t.reason = Some(reason.clone());
            }
            Event::Paused { reason } => {
                self.status.paused = Some(reason.clone());
                for t in &mut self.status.targets {
                    if t.state != TargetState::Offline {
                        t.state = TargetState::Paused;
                    }
                }
            }
            Event::Resumed { .. } => {
                self.status.paused = None;
                for t in &mut self.status.targets {
                    if t.state == TargetState::Paused {
                        t.state = if t.behind_since.is_some() {
                            TargetState::Syncing
                        } else {
                            TargetState::InSync
                        };
                    }
                }
            }
            Event::Synced { .. }
            | Event::Skipped { .. }
            | Event::Resources { .. }
            | Event::WouldDelete { .. } => return false,
        }
        true
    }
}

/// The folder where running pushes keep their status.
pub fn running_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("running")
}

/// Writes a status file atomically (a reader never sees half of it).
pub fn write(dir: &Path, status: &Status) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    crate::fs::write_atomic(
        &dir.join(file_name(status.pid, status.slot)),
        &bytes,
        crate::fs::Keep::Volatile,
    )
}

/// Removes a push's status file (when it stops).
pub fn remove(dir: &Path, status: &Status) {
    let _ = std::fs::remove_file(dir.join(file_name(status.pid, status.slot)));
}

/// The status file of mirror `slot` of process `pid`.
fn file_name(pid: u32, slot: u32) -> String {
    format!("{pid}-{slot}.json")
}

/// The statuses of the pushes that are running; files of processes that are gone are removed.
pub fn read_running(dir: &Path) -> Vec<Status> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut system = sysinfo::System::new();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(status) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Status>(&b).ok())
        else {
            continue;
        };
        let pid = sysinfo::Pid::from_u32(status.pid);
        system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
        if system.process(pid).is_some() {
            out.push(status);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by_key(|s| (s.pid, s.slot));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(digest: &str) -> Event {
        Event::Scanned {
            files: 1,
            files_hashed: 1,
            bytes_hashed: 1,
            digest: digest.into(),
        }
    }

    #[test]
    fn lag_runs_from_the_first_unsynced_change_until_in_sync() {
        let mut board = Board::new(1, 0, "/src", "watch", &["wss://a".into(), "wss://b".into()]);
        board.apply(&scanned("d1"), 100.0);
        board.apply(
            &Event::InSync {
                target: "wss://a".into(),
            },
            100.5,
        );
        board.apply(
            &Event::TargetFailed {
                target: "wss://b".into(),
                reason: "connection refused".into(),
                refusal: crate::event::Refusal::Other,
            },
            100.6,
        );
        board.apply(&scanned("d2"), 110.0);
        let status = board.status();
        let (a, b) = (&status.targets[0], &status.targets[1]);
        assert_eq!(Status::lag(a, 115.0), 5.0, "a lacks the change made at 110");
        assert_eq!(Status::lag(b, 115.0), 15.0, "b never had the first scan");
        assert_eq!(b.state, TargetState::Offline);
        assert_eq!(a.last_sync, Some(100.5));
        assert!(
            !board.clone().apply(&scanned("d2"), 111.0),
            "an unchanged scan changes nothing"
        );
    }

    #[test]
    fn a_pause_shows_on_every_target_with_its_reason_and_lifts() {
        let mut board = Board::new(1, 0, "/src", "every 5m", &["wss://a".into()]);
        board.apply(
            &Event::InSync {
                target: "wss://a".into(),
            },
            1.0,
        );
        board.apply(
            &Event::Paused {
                reason: "CPU 93% above 85% for 10 s".into(),
            },
            2.0,
        );
        assert_eq!(board.status().targets[0].state, TargetState::Paused);
        assert_eq!(
            board.status().paused.as_deref(),
            Some("CPU 93% above 85% for 10 s")
        );
        board.apply(
            &Event::Resumed {
                after: "CPU".into(),
            },
            20.0,
        );
        assert_eq!(board.status().targets[0].state, TargetState::InSync);
    }

    #[test]
    fn progress_counts_down_the_pending_bytes() {
        let mut board = Board::new(1, 0, "/src", "once", &["wss://a".into()]);
        board.apply(
            &Event::Planned {
                target: "wss://a".into(),
                files: 2,
                bytes: 1000,
            },
            1.0,
        );
        board.apply(
            &Event::Progress {
                target: "wss://a".into(),
                files_done: 1,
                files_total: 2,
                bytes_done: 600,
                bytes_total: 1000,
            },
            1.5,
        );
        assert_eq!(board.status().targets[0].bytes_pending, 400);
        assert_eq!(board.status().targets[0].state, TargetState::Syncing);
    }

    #[test]
    fn status_files_of_dead_processes_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut alive = Board::new(std::process::id(), 0, "/src", "watch", &[])
            .status()
            .clone();
        alive.updated = 1.0;
        write(dir.path(), &alive).unwrap();
        let dead = Status {
            pid: u32::MAX - 1,
            ..alive.clone()
        };
        write(dir.path(), &dead).unwrap();
        assert_eq!(read_running(dir.path()), vec![alive.clone()]);
        assert!(!dir.path().join(file_name(u32::MAX - 1, 0)).exists());
        let second = Status {
            slot: 1,
            source: "/other".into(),
            ..alive.clone()
        };
        write(dir.path(), &second).unwrap();
        assert_eq!(
            read_running(dir.path()),
            vec![alive, second],
            "two folders of one process keep a status each"
        );
    }
}
