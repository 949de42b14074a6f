//! The safety rescan of continuous mode: a walk that compares the folder with the tree of the
//! last scan and names the paths where the two differ, for a scan of those paths
//! ([`super::scan_region`]) to bring in.
//!
//! A change feed can drop a change without a word (an overflow it did not report, a file
//! system that reports less than it should), so a feed-driven mirror walks its whole folder now
//! and then. The walk only looks: it stats each entry, hashes nothing and changes nothing
//! (not the index, not a database's copy), so it can run in the background while changes keep
//! arriving by the feed. A path it names is scanned again like a path the feed named, so what
//! the walk found rests on a scan made after it, never on the walk's own view of the file.
//!
//! A path is named when its file's stamp is not its record's (or the record is not trusted by
//! the quick check), when the tree lacks it, and when the tree holds it and the walk did not
//! find it. Entries a scan never lists (RainMaker's state folder, excluded paths, links, names
//! that cannot be mirrored) are passed over as a scan passes over them.

use super::{
    ScanError, Tree, below, check_root, dirs_below, relative, unchanged, unicode_relative,
};
use crate::exclude::Exclude;
use crate::path::STATE_DIR;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a safety rescan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The paths where the folder and the tree differ (each to be scanned with what is below).
    pub paths: Vec<String>,
    /// Entries looked at.
    pub entries: usize,
}

/// Walks `root` and names where it differs from `tree` (see the module's doc). Returns `None`
/// when `stop` was set before the walk ended.
pub fn audit(
    root: &Path,
    tree: &Tree,
    exclude: &Exclude,
    stop: &AtomicBool,
) -> Result<Option<Audit>, ScanError> {
    check_root(root)?;
    let mut out = Audit::default();
    // Entries of the tree the walk found (or could not look into): fewer than the tree holds
    // means some are gone.
    let (mut files_seen, mut dirs_seen) = (0usize, 0usize);
    let mut walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 1 && e.file_name() == STATE_DIR {
                return false;
            }
            e.depth() == 0 || exclude.is_empty() || !exclude.matches(&relative(root, e.path()))
        });
    while let Some(entry) = walker.next() {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                if e.depth() == 0 {
                    return Err(ScanError {
                        path: root.to_path_buf(),
                        reason: e.to_string(),
                    });
                }
                // A scan keeps what it knew below what it cannot read; so does this walk.
                let path = e.path().map(|p| relative(root, p)).unwrap_or_default();
                files_seen += below(&tree.files, &path).count();
                dirs_seen += dirs_below(&tree.dirs, &path).count();
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        out.entries += 1;
        // A name that is not Unicode is never listed (a scan says why).
        let Some(rel) = unicode_relative(root, entry.path()) else {
            continue;
        };
        if crate::path::check(&rel).is_err() {
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        let file_type = entry.file_type();
        if file_type.is_dir() {
            if tree.dirs.contains(&rel) {
                dirs_seen += 1;
            } else {
                // New: scanned with all below it, so the walk need not go in.
                out.paths.push(rel);
                walker.skip_current_dir();
            }
        } else if file_type.is_file() {
            match tree.files.get(&rel) {
                Some(record) => {
                    files_seen += 1;
                    if !unchanged(entry.path(), record) {
                        out.paths.push(rel);
                    }
                }
                // A database's companion file is never listed: its database (whose record the
                // quick check never trusts) is named already.
                None if crate::snapshot::companion_of(&rel)
                    .is_some_and(|db| tree.files.contains_key(db)) => {}
                None => out.paths.push(rel),
            }
        }
    }
    if files_seen < tree.files.len() || dirs_seen < tree.dirs.len() {
        // Rare (the feed reports deletions): the tree's entries the folder no longer holds as
        // such, by a look at each.
        for (path, _) in tree.files.iter() {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if !std::fs::symlink_metadata(root.join(path)).is_ok_and(|m| m.is_file()) {
                out.paths.push(path.clone());
            }
        }
        for path in tree.dirs.iter() {
            if !std::fs::symlink_metadata(root.join(path)).is_ok_and(|m| m.is_dir()) {
                out.paths.push(path.clone());
            }
        }
    }
    out.paths.sort();
    out.paths.dedup();
    Ok(Some(out))
}

/// A safety rescan walking on a thread of its own, at the lowest priority (the trading
/// platform comes first); dropping it stops the walk.
#[derive(Debug)]
pub struct Background {
    found: std::sync::mpsc::Receiver<Result<Audit, ScanError>>,
    stop: Arc<AtomicBool>,
}

impl Background {
    /// Starts [`audit`] of `root` against `tree`; `then` runs when the walk ends. `None`
    /// (said in the log) when no thread could be started: the caller tries again later.
    pub fn start(
        root: PathBuf,
        tree: Tree,
        exclude: Exclude,
        then: impl FnOnce() + Send + 'static,
    ) -> Option<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, found) = std::sync::mpsc::sync_channel(1);
        let halt = stop.clone();
        std::thread::Builder::new()
            .name("rainmaker-rescan".into())
            .spawn(move || {
                if let Err(e) = thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Min,
                ) {
                    tracing::debug!("cannot lower the safety rescan's priority: {e:?}");
                }
                let started = std::time::Instant::now();
                match audit(&root, &tree, &exclude, &halt) {
                    Ok(Some(found)) => {
                        tracing::debug!(elapsed = ?started.elapsed(), entries = found.entries, paths = found.paths.len(), "safety rescan");
                        let _ = tx.send(Ok(found));
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
                then();
            })
            .inspect_err(|e| tracing::warn!("the safety rescan could not start: {e}"))
            .ok()?;
        Some(Background { found, stop })
    }

    /// What the walk in `slot` found, once it ended (the slot is then emptied for the next
    /// one): the paths to scan again, or why it failed.
    pub fn take_done(slot: &mut Option<Background>) -> Option<Result<Vec<String>, ScanError>> {
        let found = match slot.as_ref()?.found.try_recv() {
            Ok(found) => found.map(|a| a.paths),
            Err(std::sync::mpsc::TryRecvError::Empty) => return None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(ScanError {
                path: PathBuf::new(),
                reason: "the safety rescan stopped unexpectedly".into(),
            }),
        };
        *slot = None;
        Some(found)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Growth, Region, scan, scan_region};

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    fn older(root: &Path, rel: &str) {
        // Out of the racy window, so the quick check trusts the record.
        crate::fs::set_mtime(&root.join(rel), 1_600_000_000_000_000_000).unwrap();
    }

    fn look(root: &Path, tree: &Tree) -> Vec<String> {
        audit(root, tree, &Exclude::none(), &AtomicBool::new(false))
            .unwrap()
            .unwrap()
            .paths
    }

    #[test]
    fn an_unchanged_folder_names_nothing_and_each_kind_of_change_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "a.txt",
            "db/ES/01.ncd",
            "db/ES 12-26/01.ncd",
            "db/NQ/01.ncd",
            "old/x",
        ] {
            write(root, rel, rel.as_bytes());
            older(root, rel);
        }
        let tree = scan(root, std::collections::BTreeMap::new()).unwrap().tree;
        assert_eq!(look(root, &tree), Vec::<String>::new());

        write(root, "a.txt", b"edited, longer");
        older(root, "a.txt");
        write(root, "db/ES/02.ncd", b"new");
        write(root, "db/CL/01.ncd", b"new folder");
        std::fs::remove_file(root.join("db/NQ/01.ncd")).unwrap();
        std::fs::remove_dir_all(root.join("old")).unwrap();
        std::fs::create_dir_all(root.join(".rainmaker")).unwrap();
        write(root, ".rainmaker/state", b"never mirrored");
        assert_eq!(
            look(root, &tree),
            [
                "a.txt",
                "db/CL",
                "db/ES/02.ncd",
                "db/NQ/01.ncd",
                "old",
                "old/x"
            ]
        );

        // What it names, scanned, gives the tree a whole scan gives.
        let region = Region::new(look(root, &tree));
        let (merged, _) =
            scan_region(root, tree, &region, &Exclude::none(), Growth::Prove, None).unwrap();
        let whole = scan(root, std::collections::BTreeMap::new()).unwrap().tree;
        assert_eq!(merged.tree, whole);
        assert_eq!(look(root, &whole), ["db/CL/01.ncd", "db/ES/02.ncd"]);
    }

    #[test]
    fn a_file_become_a_folder_and_a_stop_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "x", b"file");
        older(root, "x");
        let tree = scan(root, std::collections::BTreeMap::new()).unwrap().tree;
        std::fs::remove_file(root.join("x")).unwrap();
        write(root, "x/inner", b"now a folder");
        assert_eq!(look(root, &tree), ["x"]);
        let stopped = audit(root, &tree, &Exclude::none(), &AtomicBool::new(true)).unwrap();
        assert_eq!(stopped, None);
    }
}
