//! Walk a folder, quick-check every file against the index, and hash only what changed.
//!
//! A file whose size, modification time and file id are unchanged is not opened. What a scan
//! does with a file that grew is its [`Growth`]:
//! - [`Growth::Prove`] reads the whole file again, so every record is what the disk holds. A
//!   push that exits 0 scans this way, and so does every target: nothing that says "identical"
//!   rests on a block that was not read.
//! - [`Growth::Defer`] (continuous mode) hashes only from the old last block on, when that
//!   block and the first are unchanged, so an append costs its own size and reaches the
//!   targets at once. The blocks before were not read: the file is listed in
//!   [`Scan::unproven`], its record is kept out of the quick check (`racy`), and [`prove`]
//!   reads them later. Until that proof, no target that received the file is said to be in
//!   sync; if it fails, the file is hashed again in full and the difference is sent.
//!
//! Every file is hashed as the prefix it had when it was looked at, so a file that grows while
//! it is scanned gives a consistent record.
//!
//! On the source, a SQLite database (known by its header) is read through SQLite into a
//! consistent copy ([`crate::snapshot`]); its record is the copy's, and its companion files
//! (`-wal`, `-shm`, `-journal`) are not listed.
//!
//! The same scan serves both sides: the source finds what to send, a target finds local edits
//! that the next mirror must overwrite. RainMaker's own state folder is never scanned.

use crate::exclude::Exclude;
use crate::fs::{self, Stamp};
use crate::hash;
use crate::index::FileRecord;
use crate::path::STATE_DIR;
use crate::protocol::BLOCK_SIZE;
use crate::snapshot::{self, Snapshots};
pub use path_list::PathList;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

mod audit;
mod overlay;
mod pack;
mod path_list;
mod previous;
mod region;
pub use audit::Background;
pub use overlay::Overlay;
pub(crate) use pack::Filling;
pub use previous::Previous;
pub use region::{Region, scan_region};
pub(crate) use region::{below, dirs_below};

/// A file modified less than this before it was hashed is hashed again on the next scan if its
/// stamp did not change: a write in the same tick of the file system's clock would keep its
/// time. Half a second covers the coarse clocks of ext4, XFS, NTFS and APFS (milliseconds at
/// worst); FAT (2 s) and HFS+ (1 s) keep coarser times and are not covered.
const RACY_WINDOW_NS: i128 = 500_000_000;

/// The state of a folder after a scan.
///
/// Its maps are persistent ([`imbl`]): a clone costs nothing and shares every node with the
/// original until one of them changes, so the snapshots continuous mode keeps of a large
/// folder (the one being sent, the one a target verified, the one being proven) hold what
/// differs between them, not a copy of the folder each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Every folder below the root, as a `/`-separated relative path.
    pub dirs: imbl::OrdSet<String>,
    /// Every regular file below the root, with its record.
    pub files: imbl::OrdMap<String, FileRecord>,
}

impl Tree {
    /// The files' records, as a scan takes the previous ones.
    #[cfg(test)]
    pub(crate) fn records(&self) -> BTreeMap<String, FileRecord> {
        self.files
            .iter()
            .map(|(path, record)| (path.clone(), record.clone()))
            .collect()
    }
}

/// A tree built from a listing in about ascending order (a walk's, a manifest), its leaves
/// filled as it goes ([`pack::Filling`]): never half empty, and never held twice.
#[derive(Debug, Default)]
pub struct TreeBuilder {
    tree: Tree,
    files: pack::Filling<String, FileRecord>,
}

/// What a listing's entries go into, one by one.
pub trait Sink {
    fn dir(&mut self, path: String);
    fn file(&mut self, path: String, record: FileRecord);
}

impl Sink for TreeBuilder {
    fn dir(&mut self, path: String) {
        self.tree.dirs.insert(path);
    }

    fn file(&mut self, path: String, record: FileRecord) {
        self.files.add(&mut self.tree.files, path, record);
    }
}

impl TreeBuilder {
    /// The tree of everything added.
    pub fn finish(mut self) -> Tree {
        self.files.flush(&mut self.tree.files);
        Tree {
            dirs: pack::set(self.tree.dirs),
            files: self.tree.files,
        }
    }
}

/// A path the scan skipped, and why; the rest of the scan goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

/// What a scan does with a file that is longer than the index knew it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Growth {
    /// Read the whole file, so its record is proven.
    #[default]
    Prove,
    /// Hash only the grown end; the blocks before it are listed in [`Scan::unproven`].
    Defer,
}

/// A file whose first `blocks` block hashes were taken from the index, not read from disk:
/// [`prove`] must confirm them before a target holding this version is said to be in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unproven {
    pub path: String,
    /// The whole-file hash of the version whose blocks are unproven.
    pub hash: crate::protocol::Hash,
    pub blocks: u64,
    /// The file was written so shortly before it was read that its record stays racy once
    /// proven (see [`FileRecord::racy`]).
    pub recent: bool,
}

/// What a scan found and did.
#[derive(Debug, Default)]
pub struct Scan {
    pub tree: Tree,
    /// Files whose record in `tree` is new or differs from the index's: the index takes them
    /// from the tree ([`Scan::apply_to`]), so a record is held once.
    pub changed: PathList,
    /// Files the index knew that are gone.
    pub removed: Vec<String>,
    /// Files whose records rest on blocks that were not read ([`Growth::Defer`] only).
    pub unproven: Vec<Unproven>,
    /// The consistent copies whose content the records of databases describe, by path: what
    /// is sent for them is read from here, not from the live file.
    pub copies: BTreeMap<String, Arc<snapshot::Copy>>,
    /// Paths of the databases found (whether or not a copy could be taken).
    pub databases: BTreeSet<String>,
    /// What copying the databases cost their writers, if any was copied.
    pub copied: Option<snapshot::Taken>,
    /// A database changed since its copy, too recently to be copied again: scan again after
    /// this long.
    pub copy_again_in: Option<std::time::Duration>,
    /// Paths that were skipped (unreadable, symlinks, names that are not UTF-8).
    pub problems: Vec<Problem>,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// What the walk listed, `tree` once it is over.
    building: TreeBuilder,
}

impl Scan {
    /// Lists a file; it is in `tree` once the walk is over.
    fn put_file(&mut self, rel: String, record: FileRecord) {
        self.building.file(rel, record);
    }

    /// Brings `index` in line with the tree ([`crate::index::Index::apply_files`]), then
    /// forgets the lists of what changed (at a first scan, every path again: 23 MB at 300,000
    /// files, which a push would hold while it plans and sends).
    pub fn apply_to(
        &mut self,
        index: &crate::index::Index,
        durability: crate::index::Durability,
    ) -> Result<(), crate::index::IndexError> {
        index.apply_files(
            self.changed.iter(),
            &self.tree.files,
            &self.removed,
            durability,
        )?;
        self.changed = PathList::default();
        self.removed = Vec::new();
        Ok(())
    }
}

/// The root itself could not be scanned.
#[derive(Debug, Error)]
#[error("cannot read folder {path}: {reason}")]
pub struct ScanError {
    pub path: PathBuf,
    pub reason: String,
}

/// Scans `root` against the `previous` records of its index, proving every record.
pub fn scan(root: &Path, previous: impl Into<Previous>) -> Result<Scan, ScanError> {
    scan_excluding(root, previous, &Exclude::none(), Growth::Prove, None)
}

/// [`scan`], leaving out what `exclude` matches (neither listed nor hashed), treating grown
/// files as `growth` says, and reading databases through `databases` when given (the source).
///
/// `previous` is taken, not borrowed: the record of an unchanged file moves from it into the
/// tree, so a large folder's records are held once, not twice; from the index
/// ([`Previous::index`]) they are read as the walk reaches their files, not held at all.
pub fn scan_excluding(
    root: &Path,
    previous: impl Into<Previous>,
    exclude: &Exclude,
    growth: Growth,
    databases: Option<&Snapshots>,
) -> Result<Scan, ScanError> {
    walk(root, previous.into(), exclude, growth, databases, None)
}

/// The walk of [`scan_excluding`]; with `region`, only the region's paths, what is below
/// them and the folders on the way to them are looked at (`previous` then holds the records
/// of the region alone).
fn walk(
    root: &Path,
    mut previous: Previous,
    exclude: &Exclude,
    growth: Growth,
    databases: Option<&Snapshots>,
    region: Option<&Region>,
) -> Result<Scan, ScanError> {
    check_root(root)?;
    let mut out = Scan::default();
    // Files whose quick check failed, to be hashed (by their relative paths alone: the full
    // paths are made a chunk at a time).
    let mut to_hash: Vec<String> = Vec::with_capacity(HASH_CHUNK);
    // The records of the files whose quick check failed.
    let mut olds: BTreeMap<String, FileRecord> = BTreeMap::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by(path_order)
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 1 && e.file_name() == STATE_DIR {
                return false;
            }
            // The relative path is made only when something filters by it (a path each entry).
            if e.depth() == 0 || (region.is_none() && exclude.is_empty()) {
                return true;
            }
            let rel = relative(root, e.path());
            region.is_none_or(|r| r.covers(&rel) || (e.file_type().is_dir() && r.leads_to(&rel)))
                && (exclude.is_empty() || !exclude.matches(&rel))
        });
    let mut walker = walker;
    while let Some(entry) = walker.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map(|p| relative(root, p)).unwrap_or_default();
                if e.depth() == 0 {
                    return Err(ScanError {
                        path: root.to_path_buf(),
                        reason: e.to_string(),
                    });
                }
                // What cannot be read is not gone: keep what the index knew below it, so
                // the targets keep their copies instead of deleting them.
                previous.keep_below(&path, &mut out.building);
                out.problems.push(Problem {
                    path,
                    reason: format!("cannot read it: {e}"),
                });
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let Some(rel) = unicode_relative(root, entry.path()) else {
            out.problems.push(Problem {
                path: entry.path().to_string_lossy().into_owned(),
                reason: "its name is not valid Unicode; skipped".into(),
            });
            continue;
        };
        if let Err(e) = crate::path::check(&rel) {
            out.problems.push(Problem {
                path: rel,
                reason: format!(
                    "its name cannot be mirrored to every file system ({}); rename it to mirror it",
                    e.reason
                ),
            });
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        let file_type = entry.file_type();
        if file_type.is_dir() {
            out.building.dir(rel);
        } else if file_type.is_file() {
            if databases.is_some()
                && snapshot::companion_of(&rel).is_some_and(|db| out.databases.contains(db))
            {
                // Part of a database that is sent as one consistent copy.
                continue;
            }
            // The quick check, once: one stat per unchanged file.
            if let Some(old) = previous.take(&rel) {
                if unchanged(entry.path(), &old) {
                    out.put_file(rel, old);
                    continue;
                }
                olds.insert(rel.clone(), old);
            }
            if let Some(snapshots) = databases {
                if snapshot::is_database(entry.path()) {
                    scan_database(snapshots, entry.path(), rel, &olds, &mut out);
                    continue;
                }
                if snapshots.is_unstable(&rel) {
                    let taking = snapshots.copy_stable(entry.path(), &rel, RACY_WINDOW_NS);
                    list_copy(taking, KEEPS_CHANGING, rel, &olds, &mut out);
                    continue;
                }
            }
            // Hashed on a few threads, a chunk at a time as the walk goes: the paths of a
            // first scan's every file would wait in a list (12 MB at 300,000 files).
            to_hash.push(rel);
            if to_hash.len() == HASH_CHUNK {
                hash_chunk(root, &mut to_hash, &olds, growth, databases, &mut out);
            }
        } else if file_type.is_symlink() {
            out.problems.push(Problem {
                path: rel,
                reason: "it is a symbolic link; links are not mirrored".into(),
            });
        } else {
            out.problems.push(Problem {
                path: rel,
                reason: "it is not a regular file or folder; skipped".into(),
            });
        }
    }
    hash_chunk(root, &mut to_hash, &olds, growth, databases, &mut out);
    if let Some(snapshots) = databases {
        snapshots.release_shadows();
    }
    out.tree = std::mem::take(&mut out.building).finish();
    out.removed = previous.gone(&out.tree);
    out.removed.extend(
        olds.into_keys()
            .filter(|path| !out.tree.files.contains_key(path)),
    );
    out.removed.sort();
    Ok(out)
}

/// Files hashed at once: a chunk's records are held in a list until they go into the tree.
const HASH_CHUNK: usize = 4_096;

/// Hashes the files of `to_hash` (relative paths) and lists them; leaves it empty.
fn hash_chunk(
    root: &Path,
    to_hash: &mut Vec<String>,
    previous: &BTreeMap<String, FileRecord>,
    growth: Growth,
    databases: Option<&Snapshots>,
    out: &mut Scan,
) {
    if to_hash.is_empty() {
        return;
    }
    let chunk: Vec<(PathBuf, String)> = to_hash
        .drain(..)
        .map(|rel| (full_path(root, &rel), rel))
        .collect();
    let hashed = hash_all(&chunk, previous, growth);
    list_all_hashed(chunk, hashed, previous, databases, out);
}

/// Lists the hashed files of a chunk ([`list_hashed`]); a file that changed while it was read,
/// or that another program holds, is read through a copy when `databases` can take one.
fn list_all_hashed(
    chunk: Vec<(PathBuf, String)>,
    hashed: Vec<std::io::Result<Hashed>>,
    previous: &BTreeMap<String, FileRecord>,
    databases: Option<&Snapshots>,
    out: &mut Scan,
) {
    for ((full, rel), result) in chunk.into_iter().zip(hashed) {
        let can_copy = databases.is_some();
        match (list_hashed(rel, previous, result, can_copy, out), databases) {
            (Err(ReadBy::StableCopy(rel)), Some(snapshots)) => {
                snapshots.mark_unstable([rel.clone()]);
                let taking = snapshots.copy_stable(&full, &rel, RACY_WINDOW_NS);
                list_copy(taking, KEEPS_CHANGING, rel, previous, out);
            }
            (Err(ReadBy::ShadowCopy(rel)), Some(snapshots)) => {
                let taking = snapshots.copy_from_shadow(&full, &rel, RACY_WINDOW_NS);
                list_copy(taking, HELD, rel, previous, out);
            }
            _ => {}
        }
    }
}

/// Fails unless `root` is a folder that can be looked at.
fn check_root(root: &Path) -> Result<(), ScanError> {
    let meta = std::fs::metadata(root).map_err(|e| ScanError {
        path: root.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(ScanError {
            path: root.to_path_buf(),
            reason: "it is not a folder".into(),
        });
    }
    Ok(())
}

/// The full path of `rel` (as [`unicode_relative`] made it) below `root`.
pub(crate) fn full_path(root: &Path, rel: &str) -> PathBuf {
    if std::path::MAIN_SEPARATOR == '/' {
        root.join(rel)
    } else {
        root.join(rel.replace('/', std::path::MAIN_SEPARATOR_STR))
    }
}

/// Siblings in the order their paths have as strings, a folder's name followed by `/`: the
/// walk then meets files in the index's order ([`Previous`]).
fn path_order(a: &walkdir::DirEntry, b: &walkdir::DirEntry) -> std::cmp::Ordering {
    fn key(entry: &walkdir::DirEntry) -> impl Iterator<Item = &u8> {
        let slash: &[u8] = if entry.file_type().is_dir() {
            b"/"
        } else {
            b""
        };
        entry.file_name().as_encoded_bytes().iter().chain(slash)
    }
    key(a).cmp(key(b))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace(std::path::MAIN_SEPARATOR, "/")
}

/// `path` relative to `root`, `/`-separated, if its name is Unicode.
fn unicode_relative(root: &Path, path: &Path) -> Option<String> {
    path.strip_prefix(root)
        .ok()
        .and_then(|p| p.to_str())
        .map(|p| p.replace(std::path::MAIN_SEPARATOR, "/"))
}

/// Whether a file's stamp is the one its record was made from (the quick check). On Windows
/// this opens the file and asks its handle: the walk's entry (read from the folder) would cost
/// nothing, but NTFS updates a folder's entry for a file only when the file is closed, so a
/// file a platform keeps open and appends to would look unchanged.
fn unchanged(full: &Path, old: &FileRecord) -> bool {
    !old.racy
        && std::fs::symlink_metadata(full)
            .is_ok_and(|meta| fs::same_stamp(&old.stamp, &fs::stamp_of_meta(&meta)))
}

/// Lists a database by a consistent copy of it; when no copy can be taken, keeps what the
/// index knew (the targets keep their last good copy) and says why.
fn scan_database(
    snapshots: &Snapshots,
    full: &Path,
    rel: String,
    previous: &BTreeMap<String, FileRecord>,
    out: &mut Scan,
) {
    out.databases.insert(rel.clone());
    let taking = snapshots.take(full, &rel, RACY_WINDOW_NS);
    list_copy(
        taking,
        "it is a database and no consistent copy of it could be read",
        rel,
        previous,
        out,
    );
}

/// Why a file read through a stable copy could not be listed.
const KEEPS_CHANGING: &str = "it keeps changing and no stable copy of it could be taken";
/// Why a file read through a shadow copy could not be listed (Windows).
const HELD: &str = "another program holds it open without sharing it for reading";

/// Lists a file by the copy `taking` made of it; when none could be made, keeps what the index
/// knew (the targets keep their last good copy) and says why (`failed`).
fn list_copy(
    taking: Result<snapshot::Taking, String>,
    failed: &str,
    rel: String,
    previous: &BTreeMap<String, FileRecord>,
    out: &mut Scan,
) {
    match taking {
        Ok(snapshot::Taking {
            record,
            copy,
            taken,
            again_in,
        }) => {
            if let Some(wait) = again_in {
                out.copy_again_in = Some(out.copy_again_in.map_or(wait, |w| w.min(wait)));
            }
            if taken.steps > 0 {
                out.files_hashed += 1;
                out.bytes_hashed += taken.bytes;
                let worst = out.copied.get_or_insert_with(Default::default);
                worst.longest_step = worst.longest_step.max(taken.longest_step);
                worst.steps += taken.steps;
                worst.restarts += taken.restarts;
                worst.bytes += taken.bytes;
            }
            if previous.get(&rel) != Some(&record) {
                out.changed.push(&rel);
            }
            out.copies.insert(rel.clone(), copy);
            out.put_file(rel, record);
        }
        Err(reason) => {
            out.problems.push(Problem {
                path: rel.clone(),
                reason: format!("{failed} ({reason}); the backups keep their last copy"),
            });
            if let Some(old) = previous.get(&rel) {
                out.put_file(rel, old.clone());
            }
        }
    }
}

/// Threads that hash a scan's changed files (at the lowest priority, as the scan itself).
const HASH_WORKERS: usize = 2;

/// Hashes the files of `jobs` on up to [`HASH_WORKERS`] threads; the results in `jobs`' order.
fn hash_all(
    jobs: &[(PathBuf, String)],
    previous: &BTreeMap<String, FileRecord>,
    growth: Growth,
) -> Vec<std::io::Result<Hashed>> {
    in_parallel(jobs, HASH_WORKERS, |(full, rel)| {
        hash_file(full, previous.get(rel), growth)
    })
}

/// Does `work` on each of `jobs` on up to `workers` threads of the lowest priority; the
/// results in `jobs`' order.
pub(crate) fn in_parallel<T: Sync, R: Send>(
    jobs: &[T],
    workers: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let workers = workers.min(jobs.len());
    if workers <= 1 {
        return jobs.iter().map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let _ = thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Min,
                );
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    *slots[i].lock().expect("a work slot is never poisoned") = Some(work(job));
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("a work slot is never poisoned")
                .expect("every job was done")
        })
        .collect()
}

/// A file a plain read could not list, and the copy that reads it instead.
enum ReadBy {
    /// It changed while it was read.
    StableCopy(String),
    /// Another program holds it without read sharing (Windows).
    ShadowCopy(String),
}

/// Lists one hashed file. A file that changed while it was read, or that another program
/// holds without read sharing, is left to the caller (`Err` with its path) when `can_copy`:
/// it is read through a copy instead.
fn list_hashed(
    rel: String,
    previous: &BTreeMap<String, FileRecord>,
    result: std::io::Result<Hashed>,
    can_copy: bool,
    out: &mut Scan,
) -> Result<(), ReadBy> {
    let old = previous.get(&rel);
    match result {
        Ok(Hashed {
            record,
            read: hashed,
            unproven,
            recent,
        }) => {
            out.files_hashed += 1;
            out.bytes_hashed += hashed;
            if unproven > 0 {
                out.unproven.push(Unproven {
                    path: rel.clone(),
                    hash: record.hash,
                    blocks: unproven,
                    recent,
                });
            }
            if old != Some(&record) {
                out.changed.push(&rel);
            }
            out.put_file(rel, record);
        }
        Err(e) if can_copy && e.get_ref().is_some_and(|e| e.is::<Changed>()) => {
            return Err(ReadBy::StableCopy(rel));
        }
        Err(e) if can_copy && crate::shadow::is_locked(&e) => return Err(ReadBy::ShadowCopy(rel)),
        Err(e) => {
            out.problems.push(Problem {
                path: rel.clone(),
                reason: format!("cannot read it: {e}"),
            });
            // Keep what we knew so the file is neither deleted on targets nor forgotten.
            if let Some(old) = old {
                out.put_file(rel, old.clone());
            }
        }
    }
    Ok(())
}

/// A file changed while it was read: what was read may mix two versions.
#[derive(Debug, Error)]
#[error("{0}; it will be read again on the next pass")]
pub struct Changed(&'static str);

/// A file's record as [`hash_file`] made it.
#[derive(Debug)]
pub struct Hashed {
    pub record: FileRecord,
    /// Bytes read.
    pub read: u64,
    /// Leading blocks taken from the old record without reading them (0 when proven).
    pub unproven: u64,
    /// Written within the racy window before it was read (its record is racy either way).
    pub recent: bool,
}

/// Hashes a file. With [`Growth::Defer`], a file that looks like `old` grown at its end has
/// only its end read, and the blocks before are reported unproven.
pub fn hash_file(path: &Path, old: Option<&FileRecord>, growth: Growth) -> std::io::Result<Hashed> {
    let mut file = fs::open_shared(path)?;
    let mut stamp = fs::stamp(&file, &file.metadata()?);
    if stamp.size > crate::protocol::MAX_FILE_SIZE {
        return Err(std::io::Error::other(format!(
            "it is larger than the {} GiB RainMaker mirrors",
            crate::protocol::MAX_FILE_SIZE >> 30
        )));
    }
    let grown = old.filter(|old| growth == Growth::Defer && grew_at_end(&file, old, &stamp));
    if grown.is_none() {
        // A whole read must start after a quiet moment: a write in the same tick of the file
        // system's clock as the last one keeps the file's time, and a rewrite in place during
        // the read would go unseen. (An append read from its old end is a prefix either way.)
        stamp = wait_until_quiet(&file, stamp)?;
    }
    let (kept, start) = match grown {
        Some(old) => {
            let keep = (old.stamp.size - 1) / BLOCK_SIZE;
            (&old.blocks[..keep as usize], keep * BLOCK_SIZE)
        }
        None => (&[][..], 0),
    };
    // A write in the racy window before the read began could have kept the file's time.
    let reading = fs::mtime_now();
    file.seek(SeekFrom::Start(start))?;
    let (tail, read) = hash::hash_blocks(&mut file, stamp.size - start)?;
    if read != stamp.size - start {
        return Err(std::io::Error::other(Changed(
            "it was truncated while being read",
        )));
    }
    // Sized to the file: a list grown from empty holds room for at least four hashes.
    let blocks = if kept.is_empty() {
        tail
    } else {
        let mut blocks = Vec::with_capacity(kept.len() + tail.len());
        blocks.extend_from_slice(kept);
        blocks.extend(tail);
        blocks
    };
    // Growth while reading is fine (the prefix read is what was stamped); a change that did
    // not make the file longer is a rewrite in place, and what was read may mix versions.
    let after = fs::stamp(&file, &file.metadata()?);
    if after.mtime_ns != stamp.mtime_ns && after.size <= stamp.size {
        return Err(std::io::Error::other(Changed(
            "it was rewritten while being read",
        )));
    }
    // Where the file system has no executable bit, the one the index knew stays.
    let stamp = fs::stamp_with_exec(stamp, old.is_some_and(|o| o.stamp.executable));
    let unproven = start / BLOCK_SIZE;
    let recent = stamp.mtime_ns > reading - RACY_WINDOW_NS;
    let record = FileRecord {
        hash: hash::file_hash(stamp.size, &blocks),
        // An unproven record is not trusted by the quick check either, until a proof clears
        // the mark (a one-off push proves while it sends); else the next scan that finds the
        // file unchanged reads it whole, which proves it.
        racy: unproven > 0 || recent,
        stamp,
        blocks: crate::index::blocks(blocks),
    };
    Ok(Hashed {
        record,
        read,
        unproven,
        recent,
    })
}

/// Reads the first `blocks` blocks of the file at `path` and says whether each still has the
/// hash `record` gives it: the proof an [`Unproven`] file waits for. An error (the file is gone,
/// or shorter than that now) is not a proof.
pub fn prove(path: &Path, record: &FileRecord, blocks: u64) -> std::io::Result<bool> {
    let mut file = fs::open_shared(path)?;
    let len = (blocks * BLOCK_SIZE).min(record.stamp.size);
    let (read, got) = hash::hash_blocks(&mut file, len)?;
    Ok(got == len && record.blocks.get(..read.len()) == Some(&read[..]))
}

/// Waits (a few times [`snapshot::QUIET`] at most) until the open `file` was last written at
/// least [`snapshot::QUIET`] ago; returns its stamp then. A file that is never left alone that
/// long is read anyway if it grew meanwhile (an append), else reported changed, for the caller
/// to copy it in a quiet moment or try again.
fn wait_until_quiet(file: &std::fs::File, mut stamp: Stamp) -> std::io::Result<Stamp> {
    let quiet = snapshot::QUIET.as_nanos() as i128;
    let first = stamp.size;
    for _ in 0..5 {
        let age = fs::mtime_now() - stamp.mtime_ns;
        if age >= quiet {
            return Ok(stamp);
        }
        std::thread::sleep(std::time::Duration::from_nanos((quiet - age).max(0) as u64));
        stamp = fs::stamp(file, &file.metadata()?);
    }
    if stamp.size > first {
        // Growing all the time: read as the prefix it has (a rewrite is still caught after).
        return Ok(stamp);
    }
    Err(std::io::Error::other(Changed(
        "it is being written without a pause",
    )))
}

/// Whether the file looks like `old` with bytes added at its end: it is longer, and its first
/// block and `old`'s last block are unchanged. The blocks between are not read; the caller
/// reports them unproven.
fn grew_at_end(file: &std::fs::File, old: &FileRecord, stamp: &Stamp) -> bool {
    if old.stamp.size == 0 || stamp.size <= old.stamp.size || old.blocks.is_empty() {
        return false;
    }
    let last = (old.stamp.size - 1) / BLOCK_SIZE;
    let same = |index: u64| {
        let start = index * BLOCK_SIZE;
        let len = (old.stamp.size - start).min(BLOCK_SIZE) as usize;
        let mut buffer = vec![0u8; len];
        matches!(fs::read_at(file, start, &mut buffer), Ok(n) if n == len)
            && old.blocks.get(index as usize) == Some(&hash::block_hash(&buffer))
    };
    same(last) && (last == 0 || same(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a file dated in the past, so the quick check may trust it.
    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        age(&path);
    }

    fn age(path: &Path) {
        fs::set_mtime(path, 1_600_000_000_000_000_000).unwrap();
    }

    fn apply(previous: &mut BTreeMap<String, FileRecord>, scan: &Scan) {
        *previous = scan.tree.records();
    }

    #[test]
    fn unchanged_files_are_not_read_and_appends_read_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let big: Vec<u8> = (0..(BLOCK_SIZE * 5 + 100))
            .map(|i| (i % 253) as u8)
            .collect();
        write(root, "db/tick.ncd", &big);
        write(root, "settings.xml", b"<x/>");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join(STATE_DIR)).unwrap();
        write(root, ".rainmaker/index.redb", b"state");

        let mut index = BTreeMap::new();
        let first = scan(root, index.clone()).unwrap();
        assert_eq!(first.bytes_hashed, big.len() as u64 + 4);
        assert!(first.tree.dirs.contains("empty") && first.tree.dirs.contains("db"));
        assert!(
            !first.tree.files.contains_key(".rainmaker/index.redb"),
            "state is never scanned"
        );
        apply(&mut index, &first);

        let again = scan(root, index.clone()).unwrap();
        assert_eq!(again.bytes_hashed, 0, "unchanged files must not be read");
        assert!(again.changed.is_empty() && again.removed.is_empty());

        let appended = vec![9u8; 1000];
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("db/tick.ncd"))
            .unwrap()
            .write_all(&appended)
            .unwrap();
        fs::set_mtime(&root.join("db/tick.ncd"), 1_600_000_001_000_000_000).unwrap();
        let grown =
            scan_excluding(root, index.clone(), &Exclude::none(), Growth::Defer, None).unwrap();
        assert!(
            grown.bytes_hashed <= 2 * BLOCK_SIZE + 1100,
            "an append must cost the tail, not the file: read {}",
            grown.bytes_hashed
        );
        let mut whole = big.clone();
        whole.extend(&appended);
        let (blocks, _) = hash::hash_blocks(&mut &whole[..], whole.len() as u64).unwrap();
        let record = &grown.tree.files["db/tick.ncd"];
        assert_eq!(record.hash, hash::file_hash(whole.len() as u64, &blocks));
        assert_eq!(
            grown.unproven,
            [Unproven {
                path: "db/tick.ncd".into(),
                hash: record.hash,
                blocks: 5,
                recent: false,
            }],
            "the blocks taken from the index are listed for the proof"
        );
        assert!(
            record.racy,
            "an unproven record is kept out of the quick check"
        );
        assert!(prove(&root.join("db/tick.ncd"), record, 5).unwrap());

        let proven = scan(root, index.clone()).unwrap();
        assert_eq!(
            proven.bytes_hashed,
            whole.len() as u64,
            "proving reads it all"
        );
        assert!(proven.unproven.is_empty());
        assert_eq!(proven.tree.files["db/tick.ncd"].hash, record.hash);
    }

    #[test]
    fn files_hashed_a_chunk_at_a_time_during_the_walk_are_listed_whole() {
        // More files than one chunk, with unchanged ones walked between the changed ones.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let n = HASH_CHUNK * 2 + 37;
        let name = |i: usize| format!("d{:02}/{i:05}.ncd", i % 17);
        for i in 0..n {
            write(root, &name(i), format!("v1 {i}").as_bytes());
        }
        let mut index = BTreeMap::new();
        let first = scan(root, index.clone()).unwrap();
        assert_eq!(first.tree.files.len(), n);
        assert_eq!(first.changed.len(), n, "a first scan lists every file");
        let mut listed: Vec<String> = first.changed.iter().collect();
        listed.sort();
        let mut all: Vec<String> = (0..n).map(name).collect();
        all.sort();
        assert_eq!(listed, all);
        apply(&mut index, &first);

        let rewritten: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
        for &i in &rewritten {
            write(root, &name(i), format!("version two {i}").as_bytes());
        }
        let second = scan(root, index.clone()).unwrap();
        let mut changed: Vec<String> = second.changed.iter().collect();
        changed.sort();
        let mut expected: Vec<String> = rewritten.iter().map(|&i| name(i)).collect();
        expected.sort();
        assert_eq!(changed, expected);
        assert_eq!(second.files_hashed, rewritten.len() as u64);
        for i in 0..n {
            let bytes = std::fs::read(root.join(name(i))).unwrap();
            let record = &second.tree.files[&name(i)];
            let (blocks, size) = hash::hash_blocks(&mut &bytes[..], bytes.len() as u64).unwrap();
            assert_eq!(record.hash, hash::file_hash(size, &blocks), "{}", name(i));
        }
    }

    #[test]
    fn a_middle_edit_with_an_append_is_never_taken_for_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut bytes: Vec<u8> = (0..(8u64 << 20)).map(|i| (i % 251) as u8).collect();
        write(root, "tick.ncd", &bytes);
        let first = scan(root, BTreeMap::new()).unwrap();
        // 4 KiB rewritten at 3 MiB and 17 bytes appended, between two scans.
        bytes[3 << 20..(3 << 20) + 4096].fill(0xEE);
        bytes.extend(b"seventeen bytes!!");
        write(root, "tick.ncd", &bytes);
        let (truth, _) = hash::hash_blocks(&mut &bytes[..], bytes.len() as u64).unwrap();
        let truth = hash::file_hash(bytes.len() as u64, &truth);

        let proven = scan(root, first.tree.records()).unwrap();
        assert_eq!(
            proven.tree.files["tick.ncd"].hash, truth,
            "a proving scan records what the disk holds"
        );

        let deferred = scan_excluding(
            root,
            first.tree.records(),
            &Exclude::none(),
            Growth::Defer,
            None,
        )
        .unwrap();
        let record = &deferred.tree.files["tick.ncd"];
        assert_ne!(
            record.hash, truth,
            "the deferred record trusted the old middle"
        );
        let [unproven] = &deferred.unproven[..] else {
            panic!(
                "the grown file must be listed unproven: {:?}",
                deferred.unproven
            )
        };
        assert!(
            !prove(&root.join("tick.ncd"), record, unproven.blocks).unwrap(),
            "the proof must find the edited middle"
        );
    }

    #[test]
    fn a_file_written_just_before_its_scan_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"fresh").unwrap();
        let first = scan(dir.path(), BTreeMap::new()).unwrap();
        assert!(first.tree.files["f"].racy);
        let second = scan(dir.path(), first.tree.records()).unwrap();
        assert_eq!(
            second.bytes_hashed, 5,
            "a same-tick rewrite could hide behind the same stamp"
        );
    }

    #[test]
    fn a_rewrite_in_the_last_block_is_hashed_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "f", &vec![1u8; (BLOCK_SIZE * 2) as usize]);
        let first = scan(root, BTreeMap::new()).unwrap();
        let mut changed = vec![1u8; (BLOCK_SIZE * 3) as usize];
        changed[(BLOCK_SIZE * 2 - 1) as usize] = 7;
        write(root, "f", &changed);
        let second = scan(root, first.tree.records()).unwrap();
        assert_eq!(
            second.bytes_hashed,
            BLOCK_SIZE * 3,
            "not an append: read it all"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_reported_and_deleted_files_leave_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a", b"1");
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let first = scan(root, BTreeMap::new()).unwrap();
        assert_eq!(first.problems.len(), 1);
        assert_eq!(first.problems[0].path, "link");
        std::fs::remove_file(root.join("a")).unwrap();
        let second = scan(root, first.tree.records()).unwrap();
        assert_eq!(second.removed, ["a"]);
        assert!(second.changed.is_empty());
    }

    // Not on Windows: Windows itself refuses to make these names (`?`, the device name
    // `aux`), so a Windows source never holds them; a Linux one can.
    #[cfg(not(windows))]
    #[test]
    fn names_a_target_would_refuse_are_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"1");
        write(dir.path(), "notes?.txt", b"2");
        write(dir.path(), "aux/inside.txt", b"3");
        let scanned = scan(dir.path(), BTreeMap::new()).unwrap();
        assert_eq!(scanned.tree.files.keys().collect::<Vec<_>>(), ["ok.txt"]);
        let skipped: Vec<&str> = scanned.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            skipped,
            ["aux", "notes?.txt"],
            "each is reported once, folders whole"
        );
    }

    #[test]
    fn what_cannot_be_read_is_kept_not_deleted() {
        let previous: BTreeMap<String, FileRecord> = ["data/a", "data/sub/b", "other"]
            .iter()
            .map(|p| {
                let record = FileRecord {
                    stamp: Stamp {
                        size: 1,
                        mtime_ns: 1,
                        file_id: 1,
                        executable: false,
                    },
                    hash: [0; 32],
                    blocks: smallvec::smallvec![[0; 32]],
                    racy: false,
                };
                (p.to_string(), record)
            })
            .collect();
        let mut tree = TreeBuilder::default();
        Previous::from(previous).keep_below("data", &mut tree);
        let tree = tree.finish();
        assert_eq!(
            tree.files.keys().collect::<Vec<_>>(),
            ["data/a", "data/sub/b"]
        );
        assert!(tree.dirs.contains("data") && tree.dirs.contains("data/sub"));
    }

    #[test]
    fn a_missing_root_is_a_clear_error() {
        let error = scan(Path::new("/no/such/folder"), BTreeMap::new()).unwrap_err();
        assert!(error.to_string().contains("/no/such/folder"));
    }

    #[test]
    fn excluded_paths_are_neither_listed_nor_entered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, body) in [
            ("db/ES.ncd", "ticks"),
            ("db/cache/ES.tmp", "cache"),
            ("log/trace.log", "log"),
            ("workspace.xml", "ws"),
            ("ninja.lock", "lock"),
        ] {
            write(root, path, body.as_bytes());
        }
        let exclude = Exclude::new(&["cache", "log", "*.lock"]).unwrap();
        let scanned = scan_excluding(root, BTreeMap::new(), &exclude, Growth::Prove, None).unwrap();
        assert_eq!(
            scanned.tree.files.keys().collect::<Vec<_>>(),
            ["db/ES.ncd", "workspace.xml"],
            "caches, logs and locks are left out; data and settings are kept"
        );
        assert!(!scanned.tree.dirs.contains("db/cache") && !scanned.tree.dirs.contains("log"));
    }
}
