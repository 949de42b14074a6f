//! A change feed from the file system (notify): every change under the source folder becomes
//! a trigger for a scan, and the paths it names are kept for that scan.
//!
//! Triggers go into a channel of capacity one: a burst of events while a scan is pending
//! coalesces into that one scan. The paths since the last scan are [`Watch::take`]n by it, as
//! [`Changes::Paths`], so the scan looks at them alone ([`crate::scan::scan_region`]). When
//! the feed may have lost something, it says [`Changes::Everything`] and the scan walks the
//! whole folder: at the start, after one of the watcher's own errors (a watch that was lost,
//! a folder that was unmounted, an overflowed kernel queue), for a name that is not Unicode,
//! and past [`MOST_PATHS`] paths. The continuous loop adds a periodic whole rescan for watches
//! that fail silently.
//!
//! This is the interface a change journal serves as well: on Windows, NTFS's USN journal
//! names the changed files of a volume since a position, and says when that position is gone
//! from the journal (everything, then). How it would be built is in docs/ARCHITECTURE.md,
//! "Windows' change journal".

mod hot;

use hot::POLLS;

use notify::event::{CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::mpsc;

/// Past this many changed paths between two scans, the next scan walks the whole folder
/// (which costs less than looking at so many one by one, and holds no list).
pub const MOST_PATHS: usize = 10_000;

/// The source folder cannot be watched.
#[derive(Debug, Error)]
#[error("cannot watch {path} for changes: {reason}")]
pub struct WatchError {
    pub path: PathBuf,
    pub reason: String,
}

/// What changed since the last [`Watch::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Anything may have: scan the whole folder.
    Everything,
    /// These paths (relative, `/`-separated) and what is below them; nothing else.
    Paths(BTreeSet<String>),
}

/// A running watch; dropping it stops it.
#[derive(Debug)]
pub struct Watch {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    changes: Arc<Mutex<Changes>>,
    /// Files stat'ed every [`hot::POLL`] where the feed hears writes late ([`POLLS`]).
    hot: Arc<hot::Hot>,
}

impl Watch {
    /// What changed since the last call (since the start, the first time: everything).
    pub fn take(&self) -> Changes {
        std::mem::replace(
            &mut *self
                .changes
                .lock()
                .expect("the change list is never poisoned"),
            Changes::Paths(BTreeSet::new()),
        )
    }

    /// These files changed in a scan, with the stamps it saw. Where the feed hears writes late
    /// ([`POLLS`]: Windows), they are stat'ed every [`hot::POLL`] until they stay the same for
    /// [`hot::HOT_FOR`], and a change is noted as the feed's are; elsewhere this does nothing.
    pub fn changed_files(&self, files: impl IntoIterator<Item = (String, crate::fs::Stamp)>) {
        if POLLS {
            self.hot.mark(files);
        }
    }
}

/// Watches `root` recursively; on every change, notes its paths and sends a trigger into
/// `triggers`.
pub fn start(root: &Path, triggers: mpsc::Sender<()>) -> Result<Watch, WatchError> {
    let fail = |e: notify::Error| WatchError {
        path: root.to_path_buf(),
        reason: e.to_string(),
    };
    let changes = Arc::new(Mutex::new(Changes::Everything));
    let noted = changes.clone();
    let hot = Arc::new(hot::Hot::default());
    if POLLS {
        hot::start(root.to_path_buf(), &hot, changes.clone(), triggers.clone()).map_err(|e| {
            WatchError {
                path: root.to_path_buf(),
                reason: format!("cannot start the thread that polls growing files: {e}"),
            }
        })?;
    }
    let state = root.join(crate::path::STATE_DIR);
    // Some feeds name paths through the folder's canonical path (FSEvents: /private/var for
    // /var); either prefix is the root.
    let bases = [
        root.to_path_buf(),
        std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
    ];
    // Folders that came into the tree, for the watch of each folder (Linux) to take in: made,
    // or moved in (inotify's "moved to" is a `To` event, then a `Both` event of the same path
    // when the move was within the tree; the `To` alone is taken).
    let (new_folders, folders) = std::sync::mpsc::channel::<PathBuf>();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = &event
            && cfg!(target_os = "linux")
            && matches!(
                event.kind,
                EventKind::Create(CreateKind::Folder)
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To))
            )
        {
            for path in &event.paths {
                if !path.starts_with(&state)
                    && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
                {
                    let _ = new_folders.send(path.clone());
                }
            }
        }
        let paths = match event {
            Ok(event) if event.kind.is_access() => return,
            Ok(event)
                if !event.paths.is_empty() && event.paths.iter().all(|p| p.starts_with(&state)) =>
            {
                return;
            }
            Ok(event) if event.need_rescan() || event.paths.is_empty() => None,
            Ok(event) => Some(event.paths),
            Err(e) => {
                tracing::warn!("file watch: {e}; rescanning");
                None
            }
        };
        note(
            &mut noted.lock().expect("the change list is never poisoned"),
            &bases,
            &state,
            paths,
        );
        // Full means a scan is already pending, and it will see this change too.
        let _ = triggers.try_send(());
    };
    // Links are not mirrored, so not followed: a link to a folder elsewhere is not watched.
    let config = notify::Config::default().with_follow_symlinks(false);
    let watcher = Arc::new(Mutex::new(
        notify::RecommendedWatcher::new(handler, config).map_err(fail)?,
    ));
    arm(&watcher, root, folders).map_err(fail)?;
    Ok(Watch {
        _watcher: watcher,
        changes,
        hot,
    })
}

/// Watches `root` and everything below it: one recursive watch where the system watches a
/// tree at once (Windows, macOS).
#[cfg(not(target_os = "linux"))]
fn arm(
    watcher: &Arc<Mutex<notify::RecommendedWatcher>>,
    root: &Path,
    _folders: std::sync::mpsc::Receiver<PathBuf>,
) -> notify::Result<()> {
    watcher
        .lock()
        .expect("the watcher is never poisoned")
        .watch(root, RecursiveMode::Recursive)
}

/// Watches `root` and everything below it. inotify watches one folder at a time, and notify's
/// recursive watch finds the folders with a stat of every entry (0.9 s for 300,000 files in
/// 11,000 folders); here they are found by the listings' own file types, each watched before
/// it is read, so nothing created in it after it was read goes unheard. A folder that comes in
/// later (`folders`, from the feed itself) is watched with all below it, and so is a folder
/// renamed within the tree, whose watches then name it by its new path.
#[cfg(target_os = "linux")]
fn arm(
    watcher: &Arc<Mutex<notify::RecommendedWatcher>>,
    root: &Path,
    folders: std::sync::mpsc::Receiver<PathBuf>,
) -> notify::Result<()> {
    let weak = Arc::downgrade(watcher);
    std::thread::Builder::new()
        .name("rainmaker-watch".into())
        .spawn(move || {
            // Ends when the watch is dropped (and with it the feed that sends here).
            while let Ok(folder) = folders.recv() {
                let Some(watcher) = weak.upgrade() else {
                    return;
                };
                let watched = watcher
                    .lock()
                    .expect("the watcher is never poisoned")
                    .watch(&folder, RecursiveMode::Recursive);
                if let Err(e) = watched {
                    // Gone again: its removal was an event of its own.
                    tracing::debug!("cannot watch {}: {e}", folder.display());
                }
            }
        })
        .map_err(notify::Error::io)?;
    let state = root.join(crate::path::STATE_DIR);
    let mut pending = vec![root.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let watched = watcher
            .lock()
            .expect("the watcher is never poisoned")
            .watch(&folder, RecursiveMode::NonRecursive);
        let entries =
            match watched.and_then(|()| std::fs::read_dir(&folder).map_err(notify::Error::io)) {
                Ok(entries) => entries,
                Err(e) if folder == root => return Err(e),
                // Removed since its parent was read: its removal is an event of the parent's.
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(e),
            };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) && entry.path() != state {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Whether a watch failed because its folder is no longer there.
#[cfg(target_os = "linux")]
fn is_gone(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Adds an event's `paths` (under one of `roots`, the folder's two names) to `changes`; `None` is an event that names no
/// path it can be trusted for.
fn note(changes: &mut Changes, roots: &[PathBuf], state: &Path, paths: Option<Vec<PathBuf>>) {
    let Some(paths) = paths else {
        *changes = Changes::Everything;
        return;
    };
    let mut noted = Vec::with_capacity(paths.len());
    for path in paths {
        if path.starts_with(state) {
            continue;
        }
        let relative = roots
            .iter()
            .find_map(|root| path.strip_prefix(root).ok())
            .and_then(Path::to_str)
            .map(|p| p.replace(std::path::MAIN_SEPARATOR, "/"));
        match relative {
            Some(rel) if !rel.is_empty() => noted.push(rel),
            // The root itself, a path outside it, a name that is not Unicode.
            _ => {
                *changes = Changes::Everything;
                return;
            }
        }
    }
    note_relative(changes, noted);
}

/// Adds `paths` (relative, `/`-separated) to `changes`; past [`MOST_PATHS`] it says everything.
fn note_relative(changes: &mut Changes, paths: impl IntoIterator<Item = String>) {
    let Changes::Paths(noted) = changes else {
        return;
    };
    noted.extend(paths);
    if noted.len() > MOST_PATHS {
        *changes = Changes::Everything;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_triggers_and_a_burst_coalesces() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watch = start(dir.path(), tx).unwrap();
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a write must trigger a scan")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut pending = 0;
        while rx.try_recv().is_ok() {
            pending += 1;
        }
        assert!(
            pending <= 1,
            "fifty writes coalesce into at most one more scan"
        );
    }

    #[tokio::test]
    async fn the_feed_names_what_changed_after_a_first_everything() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let watch = start(dir.path(), tx).unwrap();
        assert_eq!(watch.take(), Changes::Everything, "the first scan is whole");
        assert_eq!(watch.take(), Changes::Paths(BTreeSet::new()));
        // Wine 8 reports no change below a subfolder of a watched folder to a program that
        // watches it recursively (Windows does): there the file is written at the root.
        let name = match crate::win32::under_wine() {
            true => "tick.ncd",
            false => "db/tick.ncd",
        };
        // Some feeds are armed a moment after `start` returns (ReadDirectoryChangesW on its
        // thread; what came before is the first scan's, which is whole): write until heard.
        let mut heard = false;
        for i in 0..25u8 {
            std::fs::write(dir.path().join(name), [i]).unwrap();
            if tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_ok()
            {
                heard = true;
                break;
            }
        }
        assert!(heard, "a write must trigger a scan");
        let Changes::Paths(paths) = watch.take() else {
            panic!("one write is not everything");
        };
        assert!(paths.contains(name), "{paths:?}");
        assert!(paths.iter().all(|p| p.starts_with(name)), "{paths:?}");
    }

    /// Writes `rel` under `root` until a take of `watch` names exactly it.
    async fn heard(watch: &Watch, rx: &mut mpsc::Receiver<()>, root: &Path, rel: &str) -> bool {
        for i in 0..25u8 {
            std::fs::write(root.join(rel), [i]).unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
            if let Changes::Paths(paths) = watch.take()
                && paths.contains(rel)
            {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn folders_made_or_renamed_after_the_start_are_heard_by_their_names() {
        if crate::win32::under_wine() {
            // Wine 8's feed drops changes below subfolders (see the test above); Windows
            // watches the tree at once, and the safety rescan covers what Wine misses.
            eprintln!("skipped under Wine");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("old/deep")).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let watch = start(root, tx).unwrap();
        assert_eq!(watch.take(), Changes::Everything);
        std::fs::create_dir_all(root.join("new/inner")).unwrap();
        assert!(
            heard(&watch, &mut rx, root, "new/inner/f").await,
            "a write in a folder made after the start is named"
        );
        std::fs::rename(root.join("old"), root.join("renamed")).unwrap();
        assert!(
            heard(&watch, &mut rx, root, "renamed/deep/g").await,
            "a write in a renamed folder is named by its new path"
        );
    }

    #[test]
    fn a_feed_that_loses_track_says_everything() {
        let root = PathBuf::from("/data/src");
        let roots = [root.clone(), root.clone()];
        let state = root.join(crate::path::STATE_DIR);
        let fresh = || Changes::Paths(BTreeSet::new());
        let mut changes = fresh();
        note(&mut changes, &roots, &state, Some(vec![root.join("a/b")]));
        note(
            &mut changes,
            &roots,
            &state,
            Some(vec![state.join("index.redb")]),
        );
        assert_eq!(changes, Changes::Paths(["a/b".to_string()].into()));
        note(&mut changes, &roots, &state, None);
        assert_eq!(changes, Changes::Everything, "an error or an overflow");
        for outside in [PathBuf::from("/elsewhere/x"), root.clone()] {
            let mut changes = fresh();
            note(&mut changes, &roots, &state, Some(vec![outside]));
            assert_eq!(changes, Changes::Everything);
        }
        let mut changes = fresh();
        let many: Vec<PathBuf> = (0..=MOST_PATHS)
            .map(|i| root.join(format!("f{i}")))
            .collect();
        note(&mut changes, &roots, &state, Some(many));
        assert_eq!(changes, Changes::Everything, "past MOST_PATHS");
    }
}
