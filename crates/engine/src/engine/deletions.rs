//! What the syncs of the last hour deleted on one target, kept by the source beside the
//! target's manifest, so the mass-delete guard counts deletions over a time window and not per
//! sync: a folder emptied a file at a time (Explorer deleting one by one, a watcher that syncs
//! between the deletions) would otherwise pass the guard sync by sync and empty the backup.
//!
//! The file holds one line per sync that deleted files: its time (Unix seconds), the files it
//! deleted and the files the target held before it. Lines older than [`WINDOW`] are dropped
//! when it is next written. A sync the user confirmed (or ran without the guard) clears it.

use crate::fs::{Keep, write_atomic};
use crate::mirror::plan::Earlier;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a sync's deletions count toward the guard.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// The most lines kept (a watcher syncing one deletion at a time for an hour); older go first.
const MOST_LINES: usize = 4096;

/// One target's record of recent deletions.
#[derive(Debug, Clone)]
pub(super) struct Deletions {
    path: PathBuf,
}

/// One sync that deleted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line {
    at: u64,
    deleted: usize,
    held: usize,
}

impl Deletions {
    /// The record beside a target's kept manifest (`….manifest` → `….deleted`).
    pub fn beside(manifest: &Path) -> Deletions {
        Deletions {
            path: manifest.with_extension("deleted"),
        }
    }

    /// What syncs within [`WINDOW`] of now deleted. A damaged line is skipped (the guard then
    /// counts less, as it did before the record existed).
    pub fn earlier(&self) -> Earlier {
        self.recent(now())
            .into_iter()
            .fold(Earlier::default(), |sum, line| Earlier {
                deleted: sum.deleted + line.deleted,
                held: sum.held.max(line.held),
            })
    }

    /// A sync deleted `deleted` of the `held` files the target held before it.
    pub fn record(&self, deleted: usize, held: usize) {
        if deleted == 0 {
            return;
        }
        let at = now();
        let mut lines = self.recent(at);
        lines.push(Line { at, deleted, held });
        let skip = lines.len().saturating_sub(MOST_LINES);
        let text: String = lines[skip..]
            .iter()
            .map(|l| format!("{} {} {}\n", l.at, l.deleted, l.held))
            .collect();
        if let Err(e) = write_atomic(&self.path, text.as_bytes(), Keep::Durable) {
            tracing::warn!(
                "cannot record the deletions of a sync in {}: {e}",
                self.path.display()
            );
        }
    }

    /// Deletions the user allowed: earlier ones no longer count.
    pub fn clear(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot clear {}: {e}", self.path.display()),
        }
    }

    fn recent(&self, now: u64) -> Vec<Line> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split(' ').map(str::parse::<u64>);
                let (Some(Ok(at)), Some(Ok(deleted)), Some(Ok(held)), None) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                else {
                    return None;
                };
                Some(Line {
                    at,
                    deleted: usize::try_from(deleted).ok()?,
                    held: usize::try_from(held).ok()?,
                })
            })
            // A line from the future (a clock set back) counts until the window passes it.
            .filter(|line| now.saturating_sub(line.at) < WINDOW.as_secs())
            .collect()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_add_up_within_the_window_and_a_clear_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let record = Deletions::beside(&dir.path().join("targets/abc.manifest"));
        assert_eq!(record.earlier(), Earlier::default(), "nothing recorded yet");
        record.record(0, 20);
        assert!(
            !record.path.exists(),
            "a sync that deleted nothing is not recorded"
        );
        record.record(4, 20);
        record.record(5, 18);
        assert_eq!(
            record.earlier(),
            Earlier {
                deleted: 9,
                held: 20
            }
        );
        // Lines older than the window, damaged lines and lines with extra fields do not count.
        let old = now() - WINDOW.as_secs() - 1;
        let text = std::fs::read_to_string(&record.path).unwrap();
        std::fs::write(
            &record.path,
            format!("{old} 100 1000\nnot a line\n1 2 3 4\n{text}"),
        )
        .unwrap();
        assert_eq!(record.earlier().deleted, 9);
        record.record(1, 9);
        let kept = std::fs::read_to_string(&record.path).unwrap();
        assert_eq!(
            kept.lines().count(),
            3,
            "old and damaged lines are dropped:\n{kept}"
        );
        record.clear();
        assert_eq!(record.earlier(), Earlier::default());
        record.clear();
    }
}
