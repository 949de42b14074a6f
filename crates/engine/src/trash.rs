//! The target's trash: what a mirror deletes or overwrites on a target is kept in
//! `ROOT/.rainmaker/trash/<batch>/<path>` for a retention period (7 days by default), so a
//! mistake on the source (a deleted workspace, a damaged file) can still be taken back from
//! every backup.
//!
//! A batch is one mirror session, named by when it started. Deleted files and folders are
//! moved into it (a rename, nothing is copied); a file about to be replaced is hard-linked
//! into it first, so the final name never goes missing. Batches older than the retention are
//! removed when the agent starts and when a session starts.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The default retention.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A target's trash.
#[derive(Debug, Clone)]
pub struct Trash {
    dir: PathBuf,
    batch: String,
    retention: Option<Duration>,
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

    fn keep_path(&self, rel: &str) -> PathBuf {
        self.dir.join(&self.batch).join(rel)
    }

    /// Removes the file or folder `full` (at `rel` under the root), keeping it in the trash.
    pub fn remove(&self, full: &Path, rel: &str, is_dir: bool) -> io::Result<()> {
        if self.retention.is_some() {
            let kept = self.keep_path(rel);
            if let Some(parent) = kept.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if std::fs::rename(full, &kept).is_ok() {
                return Ok(());
            }
            tracing::warn!(path = %rel, "cannot keep it in the trash; deleting it");
        }
        if is_dir {
            std::fs::remove_dir_all(full)
        } else {
            std::fs::remove_file(full)
        }
    }

    /// Keeps a copy of the file `full` (at `rel`) that is about to be replaced. A hard link
    /// costs no space until the replacement; where links are not possible, nothing is kept.
    pub fn keep_before_replace(&self, full: &Path, rel: &str) {
        if self.retention.is_none() || !full.is_file() {
            return;
        }
        let kept = self.keep_path(rel);
        let linked = kept
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::hard_link(full, &kept));
        if let Err(e) = linked {
            tracing::debug!(path = %rel, "cannot keep the replaced version: {e}");
        }
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
    batches.sort_by(|a, b| a.name.cmp(&b.name));
    batches
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
        trash.keep_before_replace(&root.path().join("b.dat"), "b.dat");
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
}
