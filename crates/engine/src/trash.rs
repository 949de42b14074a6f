//! The target's trash: what a mirror deletes or overwrites on a target is kept in
//! `ROOT/.rainmaker/trash/<batch>/<path>` for a retention period (7 days by default), so a
//! mistake on the source (a deleted workspace, a damaged file) can still be taken back from
//! every backup.
//!
//! A batch is one mirror session, named by when it started. Deleted files and folders are
//! moved into it (a rename, nothing is copied); a file about to be replaced is hard-linked
//! into it first (copied where the file system has no hard links), so the final name never
//! goes missing. Batches older than the retention are removed when the agent starts and when
//! a session starts.
//!
//! Nothing a session replaces or deletes is lost, whatever order its messages come in: a
//! version whose place in the batch is taken (a file overwritten, then deleted; a file
//! deleted, then its folder) goes into the batch's next slot, `<batch>.2`, `<batch>.3`, ...,
//! and a version that cannot be kept is not removed: the step fails and the source hears why.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Slots one batch may have (each a later version of some path of the session).
const MAX_SLOTS: u32 = 10_000;

/// The default retention.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A target's trash.
#[derive(Debug, Clone)]
pub struct Trash {
    dir: PathBuf,
    batch: String,
    retention: Option<Duration>,
    /// Held while a slot is picked and filled, so two threads never pick the same one.
    slots: Arc<Mutex<()>>,
}

/// One batch, as `rainmaker trash list` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Batch {
    pub name: String,
    /// When its session started (Unix seconds).
    pub when: u64,
    pub files: Vec<String>,
}

impl Trash {
    /// The trash of the target whose state folder is `state_dir`; `None` keeps nothing (deleted
    /// files are removed at once).
    pub fn new(state_dir: &Path, retention: Option<Duration>) -> Trash {
        let mut trash = Trash {
            dir: state_dir.join("trash"),
            batch: String::new(),
            retention,
            slots: Arc::new(Mutex::new(())),
        };
        trash.start_batch();
        trash
    }

    /// The folder that holds the batches.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new batch (at the start of a session).
    pub fn start_batch(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.batch = format!("{}-{:09}", now.as_secs(), now.subsec_nanos());
    }

    /// The first slot of this session's batch where `rel` can be kept: nothing is at its
    /// place and no file stands where one of its folders must be.
    fn free_slot(&self, rel: &str) -> io::Result<PathBuf> {
        for n in 1..=MAX_SLOTS {
            let batch = match n {
                1 => self.dir.join(&self.batch),
                n => self.dir.join(format!("{}.{n}", self.batch)),
            };
            let kept = batch.join(rel);
            let mut blocked = std::fs::symlink_metadata(&kept).is_ok();
            let mut folder = kept.parent();
            while let Some(dir) =
                folder.filter(|d| !blocked && d.starts_with(&batch) && *d != batch)
            {
                blocked = std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir());
                folder = dir.parent();
            }
            if !blocked {
                if let Some(parent) = kept.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                return Ok(kept);
            }
        }
        Err(io::Error::other(format!(
            "{rel} was replaced or deleted {MAX_SLOTS} times in one session"
        )))
    }

    /// Removes the file or folder `full` (at `rel` under the root), keeping it in the trash.
    /// When it cannot be kept, it is not removed: the error says why.
    pub fn remove(&self, full: &Path, rel: &str, is_dir: bool) -> io::Result<()> {
        if self.retention.is_none() {
            return if is_dir {
                std::fs::remove_dir_all(full)
            } else {
                std::fs::remove_file(full)
            };
        }
        let _slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let kept = self.free_slot(rel)?;
        crate::fs::rename(full, &kept).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot move it into the trash ({e}); it was left in place"),
            )
        })
    }

    /// Keeps the file `full` (at `rel`) that is about to be replaced. A hard link costs no
    /// space until the replacement; where links are not possible the file is copied. When it
    /// cannot be kept, the caller must not replace it.
    pub fn keep_before_replace(&self, full: &Path, rel: &str) -> io::Result<()> {
        if self.retention.is_none() || !full.is_file() {
            return Ok(());
        }
        let _slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let kept = self.free_slot(rel)?;
        std::fs::hard_link(full, &kept)
            .or_else(|_| std::fs::copy(full, &kept).map(drop))
            .map_err(|e| {
                let _ = std::fs::remove_file(&kept);
                io::Error::new(
                    e.kind(),
                    format!("cannot keep the version it replaces in the trash ({e})"),
                )
            })
    }

    /// Removes batches older than the retention; returns how many.
    pub fn purge(&self, now: SystemTime) -> usize {
        let Some(retention) = self.retention else {
            return 0;
        };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut purged = 0;
        for batch in list(&self.dir) {
            if batch.when + retention.as_secs() < now
                && std::fs::remove_dir_all(self.dir.join(&batch.name)).is_ok()
            {
                purged += 1;
            }
        }
        purged
    }
}

/// The batches in a trash folder, oldest first.
pub fn list(dir: &Path) -> Vec<Batch> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut batches: Vec<Batch> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // `<seconds>-<nanoseconds>`, and `.<n>` for a batch's later slots.
            let when = name.split('-').next()?.parse().ok()?;
            let mut files = Vec::new();
            for entry in walkdir::WalkDir::new(e.path())
                .min_depth(1)
                .sort_by_file_name()
            {
                let entry = entry.ok()?;
                if entry.file_type().is_file() {
                    let rel = entry.path().strip_prefix(e.path()).ok()?;
                    files.push(
                        rel.to_string_lossy()
                            .replace(std::path::MAIN_SEPARATOR, "/"),
                    );
                }
            }
            Some(Batch { name, when, files })
        })
        .collect();
    batches.sort_by_key(|b| order(&b.name));
    batches
}

/// A batch's place in time: its seconds, nanoseconds and slot (`1` for the first).
fn order(name: &str) -> (u64, u64, u32, String) {
    let (time, slot) = name.split_once('.').unwrap_or((name, "1"));
    let (secs, nanos) = time.split_once('-').unwrap_or((time, "0"));
    (
        secs.parse().unwrap_or(0),
        nanos.parse().unwrap_or(0),
        slot.parse().unwrap_or(0),
        name.to_string(),
    )
}

/// Copies the files of a batch into `to` (never over an existing file); returns how many.
pub fn restore(dir: &Path, batch: &str, to: &Path) -> io::Result<usize> {
    let Some(found) = list(dir).into_iter().find(|b| b.name == batch) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no batch {batch:?} in {}; `rainmaker trash list` shows them",
                dir.display()
            ),
        ));
    };
    let mut restored = 0;
    for rel in &found.files {
        let target = to.join(rel);
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists; restore into an empty folder", target.display()),
            ));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(dir.join(batch).join(rel), &target)?;
        restored += 1;
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_and_replaced_files_are_kept_then_purged() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join(".rainmaker");
        let trash = Trash::new(&state, Some(DEFAULT_RETENTION));
        std::fs::create_dir_all(root.path().join("ws")).unwrap();
        std::fs::write(root.path().join("ws/a.xml"), b"old a").unwrap();
        std::fs::write(root.path().join("b.dat"), b"old b").unwrap();
        trash.remove(&root.path().join("ws"), "ws", true).unwrap();
        trash
            .keep_before_replace(&root.path().join("b.dat"), "b.dat")
            .unwrap();
        std::fs::write(root.path().join("b.dat.new"), b"new b").unwrap();
        std::fs::rename(root.path().join("b.dat.new"), root.path().join("b.dat")).unwrap();

        let batches = list(trash.dir());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].files, ["b.dat", "ws/a.xml"]);
        let out = root.path().join("restored");
        assert_eq!(restore(trash.dir(), &batches[0].name, &out).unwrap(), 2);
        assert_eq!(
            std::fs::read(out.join("b.dat")).unwrap(),
            b"old b",
            "the replaced version"
        );
        assert_eq!(std::fs::read(out.join("ws/a.xml")).unwrap(), b"old a");
        assert!(
            restore(trash.dir(), &batches[0].name, &out).is_err(),
            "never over a file"
        );

        assert_eq!(trash.purge(SystemTime::now()), 0, "a fresh batch stays");
        let later = SystemTime::now() + DEFAULT_RETENTION + Duration::from_secs(60);
        assert_eq!(trash.purge(later), 1, "a batch past the retention goes");
        assert!(list(trash.dir()).is_empty());
    }

    #[test]
    fn without_retention_nothing_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let trash = Trash::new(&root.path().join(".rainmaker"), None);
        std::fs::write(root.path().join("x"), b"x").unwrap();
        trash.remove(&root.path().join("x"), "x", false).unwrap();
        assert!(!root.path().join("x").exists());
        assert!(list(trash.dir()).is_empty());
    }

    #[test]
    fn every_version_a_session_replaces_or_deletes_is_kept_in_any_order() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let trash = Trash::new(&r.join(".rainmaker"), Some(DEFAULT_RETENTION));
        std::fs::create_dir_all(r.join("a")).unwrap();
        for (path, body) in [("doc.txt", "original"), ("a/f", "f"), ("a/g", "g")] {
            std::fs::write(r.join(path), body).unwrap();
        }
        // doc.txt replaced, then deleted; a/f deleted, then its folder.
        trash
            .keep_before_replace(&r.join("doc.txt"), "doc.txt")
            .unwrap();
        std::fs::write(r.join("doc.new"), "second").unwrap();
        std::fs::rename(r.join("doc.new"), r.join("doc.txt")).unwrap();
        trash.remove(&r.join("doc.txt"), "doc.txt", false).unwrap();
        trash.remove(&r.join("a/f"), "a/f", false).unwrap();
        trash.remove(&r.join("a"), "a", true).unwrap();

        let kept: Vec<(String, Vec<String>)> = list(trash.dir())
            .into_iter()
            .map(|b| (b.name, b.files))
            .collect();
        let all: Vec<String> = kept.iter().flat_map(|(_, f)| f.clone()).collect();
        assert_eq!(
            all,
            ["a/f", "doc.txt", "a/g", "doc.txt"],
            "every version, in slots: {kept:?}"
        );
        let first = &kept[0].0;
        let out = r.join("restored");
        restore(trash.dir(), first, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("doc.txt")).unwrap(),
            "original"
        );
        assert_eq!(std::fs::read_to_string(out.join("a/f")).unwrap(), "f");
        let second = r.join("restored2");
        restore(trash.dir(), &kept[1].0, &second).unwrap();
        assert_eq!(
            std::fs::read_to_string(second.join("doc.txt")).unwrap(),
            "second"
        );
        assert_eq!(std::fs::read_to_string(second.join("a/g")).unwrap(), "g");
    }

    #[test]
    fn a_version_that_cannot_be_kept_is_not_removed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let state = r.join(".rainmaker");
        let trash = Trash::new(&state, Some(DEFAULT_RETENTION));
        std::fs::write(r.join("x"), "keep me").unwrap();
        // A file where the trash folder must be: nothing can be moved into it.
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("trash"), "in the way").unwrap();
        assert!(trash.remove(&r.join("x"), "x", false).is_err());
        assert!(trash.keep_before_replace(&r.join("x"), "x").is_err());
        assert_eq!(
            std::fs::read_to_string(r.join("x")).unwrap(),
            "keep me",
            "a failed move into the trash never deletes for good"
        );
    }
}
