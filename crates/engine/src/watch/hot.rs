//! Files that changed lately, looked at every [`POLL`] while they stay hot.
//!
//! Windows' change feed hears of a file's new size or write time only once the cache has
//! written the file out: Microsoft's documentation of the change filters
//! (`FILE_NOTIFY_CHANGE_SIZE`, `FILE_NOTIFY_CHANGE_LAST_WRITE`) says so, and a file a platform
//! keeps open and appends to is written out lazily, seconds later. A stat there opens the file
//! and asks its handle, which knows the new size at once. So on Windows the files the last
//! scans found changed are stat'ed every [`POLL`] for as long as they keep changing, and what
//! changed is noted as the feed notes a change.
//!
//! Linux's inotify reports every write as it happens, and there the feed alone is heard
//! ([`POLLS`]). macOS's FSEvents is not known to hold writes back; it was not tried here.

use super::{Changes, note_relative};
use crate::fs::{Stamp, same_stamp, stamp_of_meta};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Whether this system's change feed needs the hot files polled.
pub const POLLS: bool = cfg!(windows);

/// How often a hot file is stat'ed: an append is seen this long after it at most.
pub const POLL: Duration = Duration::from_millis(50);

/// A file that stayed the same this long is no longer hot.
pub const HOT_FOR: Duration = Duration::from_secs(60);

/// At most this many files are hot at once (a platform records a few dozen instruments); one
/// more is heard by the feed and the safety rescan alone.
pub const MOST_HOT: usize = 256;

/// The hot files of a folder, by relative path: the stamp last seen and when it last changed.
#[derive(Debug, Default)]
pub struct Hot {
    files: Mutex<HashMap<String, (Stamp, Instant)>>,
    /// Wakes the poller when files become hot.
    marked: Condvar,
}

impl Hot {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Stamp, Instant)>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// These files changed in a scan, which saw them with these stamps.
    pub fn mark(&self, changed: impl IntoIterator<Item = (String, Stamp)>) {
        let mut files = self.files();
        let now = Instant::now();
        for (path, stamp) in changed {
            if files.len() < MOST_HOT || files.contains_key(&path) {
                files.insert(path, (stamp, now));
            }
        }
        if !files.is_empty() {
            self.marked.notify_one();
        }
    }

    /// How many files are hot.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.files().len()
    }

    /// Stats every hot file under `root` once; returns the paths whose stamps changed (and
    /// keeps their new stamps). A file that stayed the same for [`HOT_FOR`] cools; one that is
    /// gone or no longer a file is returned once and forgotten; one that cannot be stat'ed for
    /// another reason (a scanner holding it a moment) is kept and asked again. The files are
    /// stat'ed with the list unlocked: on Windows a stat opens the file, and this thread, at the
    /// lowest priority, may wait long on a busy machine while [`Hot::mark`] must not.
    fn poll(&self, root: &Path) -> Vec<String> {
        let hot: Vec<(String, Stamp)> = self
            .files()
            .iter()
            .map(|(path, (stamp, _))| (path.clone(), *stamp))
            .collect();
        let mut seen = Vec::with_capacity(hot.len());
        for (path, stamp) in hot {
            let now = match std::fs::symlink_metadata(crate::scan::full_path(root, &path)) {
                Ok(meta) if meta.is_file() => Some(stamp_of_meta(&meta)),
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(_) => continue,
            };
            seen.push((path, stamp, now));
        }
        let now = Instant::now();
        let mut changed = Vec::new();
        let mut files = self.files();
        for (path, polled, stamp) in seen {
            let Some((held, at)) = files.get_mut(&path) else {
                continue;
            };
            // Marked again meanwhile: the scan's stamp is newer than this poll's.
            if *held != polled {
                continue;
            }
            match stamp {
                Some(stamp) if same_stamp(held, &stamp) => {
                    if now.duration_since(*at) >= HOT_FOR {
                        files.remove(&path);
                    }
                }
                Some(stamp) => {
                    (*held, *at) = (stamp, now);
                    changed.push(path);
                }
                None => {
                    files.remove(&path);
                    changed.push(path);
                }
            }
        }
        changed
    }
}

/// Polls `hot` every [`POLL`] on a thread of its own while any file is hot, until `hot` is
/// dropped: each change found goes into `changes` as the feed's do, and pulls `triggers`.
pub fn start(
    root: PathBuf,
    hot: &Arc<Hot>,
    changes: Arc<Mutex<Changes>>,
    triggers: mpsc::Sender<()>,
) -> std::io::Result<()> {
    let hot: Weak<Hot> = Arc::downgrade(hot);
    std::thread::Builder::new()
        .name("rainmaker-hot".into())
        .spawn(move || {
            // The trading platform comes first: a busy machine polls late, never it.
            if let Err(e) =
                thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
            {
                tracing::debug!("cannot lower the priority of the poll of growing files: {e:?}");
            }
            loop {
                let Some(held) = hot.upgrade() else {
                    return;
                };
                let files = held.files();
                if files.is_empty() {
                    // Asleep until a file is marked; a second at most, to see `hot` dropped.
                    drop(
                        held.marked
                            .wait_timeout(files, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                    continue;
                }
                drop(files);
                drop(held);
                std::thread::sleep(POLL);
                let Some(held) = hot.upgrade() else {
                    return;
                };
                let changed = held.poll(&root);
                if changed.is_empty() {
                    continue;
                }
                tracing::trace!(?changed, "hot files changed");
                note_relative(
                    &mut changes.lock().unwrap_or_else(|e| e.into_inner()),
                    changed,
                );
                // Full means a scan is pending already, and it takes these paths too.
                let _ = triggers.try_send(());
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn stamp(path: &Path) -> Stamp {
        stamp_of_meta(&std::fs::symlink_metadata(path).unwrap())
    }

    /// A file that grows with no change feed at all is heard within a few polls, and only it.
    #[tokio::test]
    async fn a_hot_file_that_grows_is_noted_and_triggers_without_a_feed() {
        let dir = tempfile::tempdir().unwrap();
        let (tick, quiet) = (dir.path().join("tick.ncd"), dir.path().join("quiet.ncd"));
        std::fs::write(&tick, b"first").unwrap();
        std::fs::write(&quiet, b"quiet").unwrap();
        let hot = Arc::new(Hot::default());
        let changes = Arc::new(Mutex::new(Changes::Paths(Default::default())));
        let (tx, mut triggers) = mpsc::channel(1);
        start(dir.path().to_path_buf(), &hot, changes.clone(), tx).unwrap();
        hot.mark([
            ("tick.ncd".to_string(), stamp(&tick)),
            ("quiet.ncd".to_string(), stamp(&quiet)),
        ]);
        // Kept open and appended to, as a platform records ticks.
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&tick)
            .unwrap();
        writer.write_all(b" and more").unwrap();
        tokio::time::timeout(Duration::from_secs(10), triggers.recv())
            .await
            .expect("the append triggers a scan")
            .unwrap();
        let noted = std::mem::replace(
            &mut *changes.lock().unwrap(),
            Changes::Paths(Default::default()),
        );
        assert_eq!(noted, Changes::Paths(["tick.ncd".to_string()].into()));
        // Nothing more while nothing changes.
        assert!(
            tokio::time::timeout(POLL * 10, triggers.recv())
                .await
                .is_err()
        );
        drop(writer);
        std::fs::remove_file(&quiet).unwrap();
        tokio::time::timeout(Duration::from_secs(10), triggers.recv())
            .await
            .expect("a hot file removed is noted too")
            .unwrap();
        assert_eq!(
            *changes.lock().unwrap(),
            Changes::Paths(["quiet.ncd".to_string()].into())
        );
        assert_eq!(hot.len(), 1, "the removed file is no longer polled");
    }

    #[test]
    fn at_most_so_many_files_are_hot_and_those_already_hot_are_kept_up_to_date() {
        let hot = Hot::default();
        let at = |size| Stamp {
            size,
            mtime_ns: 0,
            file_id: 0,
            executable: false,
        };
        hot.mark((0..MOST_HOT + 10).map(|i| (format!("f{i}"), at(1))));
        assert_eq!(hot.len(), MOST_HOT);
        hot.mark([("f0".to_string(), at(2))]);
        assert_eq!(hot.files()["f0"].0, at(2));
        assert_eq!(hot.len(), MOST_HOT);
    }

    #[test]
    fn the_poller_ends_with_its_watch() {
        let dir = tempfile::tempdir().unwrap();
        let hot = Arc::new(Hot::default());
        let (tx, _triggers) = mpsc::channel(1);
        let changes = Arc::new(Mutex::new(Changes::Everything));
        start(dir.path().to_path_buf(), &hot, changes, tx.clone()).unwrap();
        drop(hot);
        // The thread held a clone of the sender: once it ends, this is the only one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tx.strong_count() > 1 {
            assert!(Instant::now() < deadline, "the poller still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
