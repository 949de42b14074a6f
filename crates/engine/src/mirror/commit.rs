//! The batch that applies a session on a target: what a session changes becomes visible in
//! one recorded step, never file by file as it arrives.
//!
//! While a session runs, nothing under the root changes. A new version waits, verified, in its
//! temporary file; an append waits in a side file; deletes, new folders and times are noted.
//! Verified files are synced in groups on a background thread while the next ones arrive
//! ([`Committer::seal`]), so a folder of small files costs a few syncs in all, not a few per
//! file. At the session's end ([`Committer::apply`]) the steps are recorded in the index in
//! one durable commit, then performed in the session's order (moves into the trash, folders,
//! renames, appends written in place, times), the appended files and the folders of renamed
//! files synced, and the record cleared. A crash anywhere after the record leaves it in the
//! index, and the next start performs the batch again ([`Committer::complete`]); each step
//! ends where it would have ended the first time (a rename whose temporary file is gone is
//! done, an append rewrites the same bytes at the same offset of the same file, a removal
//! only takes the very file or folder it recorded). A crash before the record leaves the
//! target as the last batch left it; the verified temporary files stay, resumable.
//!
//! What a reader of the target sees: the state after one batch or after the next, plus the
//! time the steps themselves take (renames: microseconds a file), during which it holds the
//! exclusive lock on `ROOT/.rainmaker/apply.lock` ([`APPLY_LOCK`]: `flock` on Unix,
//! `LockFileEx` on Windows). A reader that takes a shared lock on that file while it reads
//! (a failover script, a copy of the backup) sees whole batches only. A batch is a whole session, up to a bound (the receiver applies a
//! session larger than the bound in several batches, each whole); a session cut before its
//! end applies what arrived whole only when the source closed it cleanly (a user stopping the
//! push), never after a cut connection or an abort.

mod perform;

use super::receive::STEP_FAILED;
use crate::fs::{self, Stamp};
use crate::index::{AppendBytes, Change, Durability, FileRecord, Index, Step};
use crate::path;
use crate::protocol::{Append, BLOCK_SIZE, FileBegin, Hash, Message};
pub use perform::roll_back;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file in the state folder that a batch holds locked (exclusively) while its steps run.
pub const APPLY_LOCK: &str = "apply.lock";
/// An append at most this long is kept in the batch's record itself: the index commit is its
/// only sync, where a side file would need one of its own.
const INLINE_APPEND: u64 = 256 << 10;
/// At most this many appended bytes of one batch are kept in its record.
const INLINE_BATCH: u64 = 8 << 20;

/// A verified file waiting for its group sync.
#[derive(Debug)]
pub struct Ready {
    pub id: u64,
    /// Its place in the session's order of changes.
    pub seq: u64,
    pub kind: ReadyKind,
}

#[derive(Debug)]
pub enum ReadyKind {
    /// A new version in a temporary file, to be renamed into place.
    New {
        begin: FileBegin,
        temp: File,
        temp_path: PathBuf,
        resumable: bool,
    },
    /// Appended bytes in a side file, to be written in place.
    Append(StagedAppend),
}

/// An append received into a side file, for the file `full` that held `before`.
#[derive(Debug)]
pub struct StagedAppend {
    pub append: Append,
    pub side: File,
    pub side_path: PathBuf,
    pub full: PathBuf,
    pub before: FileRecord,
}

impl Ready {
    pub fn bytes(&self) -> u64 {
        match &self.kind {
            ReadyKind::New { begin, .. } => begin.size,
            ReadyKind::Append(staged) => staged.append.size - staged.append.from_len,
        }
    }

    pub fn path(&self) -> &str {
        match &self.kind {
            ReadyKind::New { begin, .. } => &begin.path,
            ReadyKind::Append(staged) => &staged.append.path,
        }
    }
}

/// A change of the session waiting for the batch that applies it.
#[derive(Debug)]
pub enum Staged {
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
    },
    SetMeta {
        path: String,
        mtime_ns: i128,
        executable: bool,
    },
    /// A verified new version whose temporary file is synced.
    New {
        id: u64,
        begin: FileBegin,
        temp_path: PathBuf,
        resumable: bool,
    },
    /// A verified append; its side file is synced when `synced`.
    Append {
        id: u64,
        append: Append,
        side_path: PathBuf,
        before: FileRecord,
        synced: bool,
    },
}

impl Staged {
    /// Drops a change that will not be applied: a new version's temporary file stays when it
    /// is resumable (its partial record offers it to the next session), anything else goes.
    pub fn discard(self) {
        match self {
            Staged::New {
                temp_path,
                resumable: false,
                ..
            } => {
                let _ = std::fs::remove_file(temp_path);
            }
            Staged::Append { side_path, .. } => {
                let _ = std::fs::remove_file(side_path);
            }
            _ => {}
        }
    }
}

/// What a group sync did: the files now staged (with their place in the session's order) and
/// the replies for the files that failed.
#[derive(Debug, Default)]
pub struct Sealed {
    pub staged: Vec<(u64, Staged)>,
    pub replies: Vec<Message>,
}

/// What a batch did: the replies for the source, the files now in place, and the new stamps
/// of files whose time and mode were set.
#[derive(Debug, Default)]
pub struct Applied {
    pub replies: Vec<Message>,
    pub files: Vec<(String, FileRecord)>,
    pub stamps: Vec<(String, Stamp)>,
}

/// What the source is told about a file step, and what the index learns when it is done.
#[derive(Debug)]
struct Outcome {
    id: u64,
    hash: Hash,
    blocks: Vec<Hash>,
    executable: bool,
    resumable: bool,
}

/// What performing one step left for the end of the batch.
#[derive(Debug)]
enum Performed {
    Nothing,
    /// A file renamed to this full path.
    Placed(PathBuf),
    /// A file appended to, to be synced.
    Appended(PathBuf, File),
    /// A file whose time and mode were set.
    Meta(File),
}

/// Applies batches of staged changes to one target folder.
#[derive(Debug, Clone)]
pub struct Committer {
    pub root: PathBuf,
    /// The target's `tmp` folder, where temporary and side files wait.
    pub tmp: PathBuf,
    pub index: Arc<Index>,
    /// Where replaced versions are kept.
    pub trash: crate::trash::Trash,
    /// [`APPLY_LOCK`], open.
    pub lock: Arc<File>,
}

impl Committer {
    /// Syncs a group of verified files: every new version's temporary file, and the side file
    /// of every append too long to be kept in the batch record (of every append, with
    /// `appends`: then the record need not hold their bytes). A file that cannot be synced
    /// fails (its temporary file goes); the others are staged.
    pub fn seal(&self, ready: Vec<Ready>, appends: bool) -> Sealed {
        let side_synced = |append: &Append| appends || inline_len(append) > INLINE_APPEND;
        let files: Vec<&File> = ready
            .iter()
            .filter_map(|r| match &r.kind {
                ReadyKind::New { temp, .. } => Some(temp),
                ReadyKind::Append(staged) if side_synced(&staged.append) => Some(&staged.side),
                ReadyKind::Append(_) => None,
            })
            .collect();
        // The record names these files by their names in `tmp`: the names are made durable
        // with them.
        let synced = fs::sync_batch(&files)
            .and_then(|()| match files.is_empty() {
                true => Ok(()),
                false => fs::sync_dirs(&[&self.tmp]),
            })
            .map_err(|e| format!("cannot sync: {e}"));
        drop(files);
        let mut sealed = Sealed::default();
        let mut changes = Vec::new();
        for r in ready {
            let staged = match r.kind {
                ReadyKind::New {
                    begin,
                    temp_path,
                    resumable,
                    ..
                } => Staged::New {
                    id: r.id,
                    begin,
                    temp_path,
                    resumable,
                },
                ReadyKind::Append(StagedAppend {
                    append,
                    side_path,
                    before,
                    ..
                }) => {
                    let synced = side_synced(&append);
                    Staged::Append {
                        id: r.id,
                        append,
                        side_path,
                        before,
                        synced,
                    }
                }
            };
            match (&synced, &staged) {
                (Err(reason), Staged::New { .. } | Staged::Append { synced: true, .. }) => {
                    sealed
                        .replies
                        .extend(fail(&mut changes, staged, reason.clone()));
                }
                _ => sealed.staged.push((r.seq, staged)),
            }
        }
        if let Err(e) = self.index.apply(&changes, Durability::None) {
            tracing::warn!("{e}");
        }
        sealed
    }

    /// Applies a session's staged changes, in order, as one recorded batch: the record first
    /// (one durable commit), then the steps, one sync for the appended files and one for the
    /// folders of renamed files, then the index with the record cleared. Only then are the
    /// files reported done.
    pub fn apply(&self, staged: Vec<Staged>) -> Applied {
        let started = std::time::Instant::now();
        let mut applied = Applied::default();
        let mut changes: Vec<Change> = Vec::new();
        let mut steps: Vec<Step> = Vec::with_capacity(staged.len());
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(staged.len());
        // The staged change of each step; `None` once it failed before the record.
        let mut temps: Vec<Option<Staged>> = Vec::with_capacity(staged.len());
        let mut sides: Vec<PathBuf> = Vec::new();
        let mut inline_left = INLINE_BATCH;
        // Appends kept in side files that were not synced yet.
        let mut unsynced: Vec<(usize, PathBuf)> = Vec::new();
        // What an earlier step of the batch puts at a path: the file id a removal must find
        // there (a renamed file keeps its temporary file's id; 0 for a folder made here).
        let mut made: HashMap<String, u128> = HashMap::new();
        let on_disk = |rel: &str| {
            path::resolve(&self.root, rel, true)
                .ok()
                .and_then(|full| std::fs::symlink_metadata(full).ok())
                .map(|meta| fs::stamp_of_meta(&meta).file_id)
        };
        let make_folders = |made: &mut HashMap<String, u128>, rel: &str| {
            let mut end = 0;
            while let Some(i) = rel[end..].find('/') {
                end += i;
                let dir = &rel[..end];
                if !made.contains_key(dir) && on_disk(dir).is_none() {
                    made.insert(dir.to_string(), 0);
                }
                end += 1;
            }
        };
        for item in staged {
            let (step, outcome) = match &item {
                Staged::Remove { path } => {
                    let Some(file_id) = made.get(path).copied().or_else(|| on_disk(path)) else {
                        continue; // nothing there: nothing to remove
                    };
                    let below = format!("{path}/");
                    made.retain(|p, _| p != path && !p.starts_with(&below));
                    let step = Step::Remove {
                        path: path.clone(),
                        file_id,
                    };
                    (step, None)
                }
                Staged::Mkdir { path } => {
                    make_folders(&mut made, &format!("{path}/"));
                    (Step::Mkdir { path: path.clone() }, None)
                }
                Staged::SetMeta {
                    path,
                    mtime_ns,
                    executable,
                } => (
                    Step::SetMeta {
                        path: path.clone(),
                        mtime_ns: *mtime_ns,
                        executable: *executable,
                    },
                    None,
                ),
                Staged::New {
                    id,
                    begin,
                    temp_path,
                    resumable,
                } => {
                    make_folders(&mut made, &begin.path);
                    let temp_id = std::fs::symlink_metadata(temp_path)
                        .map(|m| fs::stamp_of_meta(&m).file_id)
                        .unwrap_or(0);
                    made.insert(begin.path.clone(), temp_id);
                    (
                        Step::Place {
                            path: begin.path.clone(),
                            temp_name: file_name(temp_path),
                        },
                        Some(Outcome {
                            id: *id,
                            hash: begin.hash,
                            blocks: begin.blocks.clone(),
                            executable: begin.executable,
                            resumable: *resumable,
                        }),
                    )
                }
                Staged::Append {
                    id,
                    append,
                    side_path,
                    before,
                    synced,
                } => {
                    let len = inline_len(append);
                    let bytes = if !synced && len <= inline_left {
                        match read_side(side_path, len) {
                            Ok(bytes) => {
                                inline_left -= len;
                                AppendBytes::Inline(bytes)
                            }
                            Err(reason) => {
                                applied.replies.extend(fail(&mut changes, item, reason));
                                continue;
                            }
                        }
                    } else {
                        if !synced {
                            unsynced.push((steps.len(), side_path.clone()));
                        }
                        AppendBytes::Side(file_name(side_path))
                    };
                    sides.push(side_path.clone());
                    let first = (append.from_len / BLOCK_SIZE) as usize;
                    let blocks = [&before.blocks[..first], &append.tail_blocks[..]].concat();
                    (
                        Step::Append {
                            path: append.path.clone(),
                            before: before.stamp,
                            from_len: append.from_len,
                            size: append.size,
                            mtime_ns: append.mtime_ns,
                            executable: append.executable,
                            bytes,
                        },
                        Some(Outcome {
                            id: *id,
                            hash: append.hash,
                            blocks,
                            executable: append.executable,
                            resumable: false,
                        }),
                    )
                }
            };
            steps.push(step);
            outcomes.push(outcome);
            temps.push(Some(item));
        }
        // The side files the record names must be durable before it is.
        if !unsynced.is_empty() {
            let opened: Vec<(usize, std::io::Result<File>)> =
                unsynced.iter().map(|(i, p)| (*i, File::open(p))).collect();
            let files: Vec<&File> = opened.iter().filter_map(|(_, f)| f.as_ref().ok()).collect();
            let synced = fs::sync_batch(&files);
            for (i, file) in &opened {
                if let Some(reason) = match (file, &synced) {
                    (Err(e), _) => Some(format!("cannot open its side file: {e}")),
                    (_, Err(e)) => Some(format!("cannot sync: {e}")),
                    _ => None,
                } && let Some(item) = temps[*i].take()
                {
                    applied.replies.extend(fail(&mut changes, item, reason));
                }
            }
        }
        // What failed before the record is not in it.
        let (steps, outcomes, items) = {
            let mut kept = (Vec::new(), Vec::new(), Vec::new());
            for ((step, outcome), item) in steps.into_iter().zip(outcomes).zip(temps) {
                if let Some(item) = item {
                    kept.0.push(step);
                    kept.1.push(outcome);
                    kept.2.push(item);
                }
            }
            kept
        };
        if steps.is_empty() {
            if let Err(e) = self.index.apply(&changes, Durability::None) {
                tracing::warn!("{e}");
            }
            return applied;
        }
        if let Err(e) = self
            .index
            .apply(&[Change::PutBatch(steps.clone())], Durability::Immediate)
        {
            // Without the record no step may run: the session is applied by a later one.
            let reason = format!("cannot record the batch that applies it: {e}");
            for item in items {
                let id = item_id(&item);
                item.discard();
                if let Some(id) = id {
                    applied.replies.push(failed(id, reason.clone()));
                }
            }
            return applied;
        }
        let recorded = started.elapsed();
        let guard = Locked::new(&self.lock);
        let mut appended: Vec<File> = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut placed: Vec<(String, PathBuf, Outcome)> = Vec::new();
        for ((step, outcome), item) in steps.iter().zip(outcomes).zip(items) {
            match (self.perform(step, false), outcome) {
                (Ok(Performed::Placed(full)), Some(outcome)) => {
                    if let Some(parent) = full.parent()
                        && !dirs.iter().any(|d| d == parent)
                    {
                        dirs.push(parent.to_path_buf());
                    }
                    placed.push((step_path(step).to_string(), full, outcome));
                }
                (Ok(Performed::Appended(full, file)), Some(outcome)) => {
                    appended.push(file);
                    placed.push((step_path(step).to_string(), full, outcome));
                }
                (Ok(Performed::Meta(file)), _) => {
                    if let Ok(meta) = file.metadata() {
                        applied
                            .stamps
                            .push((step_path(step).to_string(), fs::stamp_of_meta(&meta)));
                    }
                }
                (Ok(_), _) => {}
                (Err(reason), _) => applied.replies.extend(fail(&mut changes, item, reason)),
            }
        }
        let performed = started.elapsed();
        let files: Vec<&File> = appended.iter().collect();
        if let Err(e) = fs::sync_batch(&files) {
            tracing::warn!("cannot sync appended files: {e}");
        }
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        if let Err(e) = fs::sync_dirs(&dirs) {
            tracing::warn!("cannot sync renamed files: {e}");
        }
        drop(guard);
        let synced = started.elapsed();
        for (rel, full, outcome) in placed {
            if let Ok(meta) = std::fs::metadata(&full) {
                let record = FileRecord {
                    stamp: fs::stamp_with_exec(fs::stamp_of_meta(&meta), outcome.executable),
                    hash: outcome.hash,
                    blocks: crate::index::blocks(outcome.blocks),
                    racy: false,
                };
                applied.files.push((rel.clone(), record.clone()));
                changes.push(Change::PutFile(rel.clone(), record));
            }
            if outcome.resumable {
                changes.push(Change::RemovePartial(rel.clone()));
            }
            // A new version ends any append record an earlier version of RainMaker left.
            changes.push(Change::RemoveAppend(rel));
            applied.replies.push(Message::FileDone { id: outcome.id });
        }
        // Performing the batch again would end where it is now: the clear may be lazy.
        changes.push(Change::ClearBatch);
        if let Err(e) = self.index.apply(&changes, Durability::None) {
            tracing::warn!("{e}");
        }
        tracing::debug!(steps = steps.len(), ?recorded, ?performed, ?synced, took = ?started.elapsed(), "batch committed");
        for side in sides {
            let _ = std::fs::remove_file(side);
        }
        applied
    }

    /// Completes the batch a crash interrupted, if the index holds one: performs every step
    /// again (each ends where it would have ended the first time), syncs, and clears the
    /// record. Returns how many steps it held.
    pub fn complete(&self) -> Result<usize, crate::index::IndexError> {
        let Some(steps) = self.index.batch()? else {
            return Ok(0);
        };
        let guard = Locked::new(&self.lock);
        let mut appended = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for step in &steps {
            match self.perform(step, true) {
                Ok(Performed::Appended(_, file)) => appended.push(file),
                Ok(Performed::Placed(full)) => {
                    if let Some(parent) = full.parent() {
                        dirs.push(parent.to_path_buf());
                    }
                }
                Ok(_) => {}
                Err(reason) => tracing::warn!(
                    path = step_path(step),
                    "a step of the interrupted batch could not be completed: {reason}; the \
                     next sync replaces the file"
                ),
            }
        }
        let files: Vec<&File> = appended.iter().collect();
        let _ = fs::sync_batch(&files);
        dirs.dedup();
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let _ = fs::sync_dirs(&dirs);
        drop(guard);
        self.index
            .apply(&[Change::ClearBatch], Durability::Immediate)?;
        for step in &steps {
            if let Step::Append {
                bytes: AppendBytes::Side(name),
                ..
            } = step
            {
                let _ = std::fs::remove_file(self.tmp.join(name));
            }
        }
        Ok(steps.len())
    }
}

/// The apply lock, held while it lives.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(file: &'a File) -> Locked<'a> {
        if let Err(e) = fs::lock(file, true) {
            tracing::warn!("cannot take the apply lock: {e}");
        }
        Locked(file)
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = fs::unlock(self.0);
    }
}

/// Fails a staged file that will not be applied: its temporary or side file goes (a failed
/// version is not resumed), and the reply tells the source.
fn fail(changes: &mut Vec<Change>, item: Staged, reason: String) -> Vec<Message> {
    let id = item_id(&item);
    let path = match &item {
        Staged::New { begin, .. } => begin.path.clone(),
        Staged::Append { append, .. } => append.path.clone(),
        Staged::Remove { path } | Staged::Mkdir { path } | Staged::SetMeta { path, .. } => {
            path.clone()
        }
    };
    match item {
        Staged::New {
            temp_path,
            resumable,
            ..
        } => {
            let _ = std::fs::remove_file(temp_path);
            if resumable {
                changes.push(Change::RemovePartial(path.clone()));
            }
        }
        other => other.discard(),
    }
    tracing::warn!(%path, %reason, "step failed");
    vec![failed(id.unwrap_or(STEP_FAILED), reason)]
}

fn failed(id: u64, reason: String) -> Message {
    Message::FileFailed { id, reason }
}

fn item_id(item: &Staged) -> Option<u64> {
    match item {
        Staged::New { id, .. } | Staged::Append { id, .. } => Some(*id),
        _ => None,
    }
}

fn step_path(step: &Step) -> &str {
    match step {
        Step::Remove { path, .. }
        | Step::Mkdir { path }
        | Step::Place { path, .. }
        | Step::Append { path, .. }
        | Step::SetMeta { path, .. } => path,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How many bytes an append adds.
fn inline_len(append: &Append) -> u64 {
    append.size - append.from_len
}

/// The whole content of a side file of `len` bytes.
fn read_side(side_path: &Path, len: u64) -> Result<Vec<u8>, String> {
    let side = File::open(side_path).map_err(|e| format!("cannot open its side file: {e}"))?;
    let mut bytes = vec![0u8; len as usize];
    let n = fs::read_at(&side, 0, &mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
    if n != bytes.len() {
        return Err("the staged append is short".into());
    }
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::hash;
    use crate::index::AppendRecord;
    use crate::mirror::receive::Receiver;
    use crate::mirror::test_messages::send_file;
    use crate::path::STATE_DIR;
    use std::io::Write;

    /// Every file under `root` but the state folder, with its content.
    fn visible(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_entry(|e| e.file_name() != STATE_DIR)
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).unwrap();
                (
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// A session of `n` files `s/<i>` holding "session <session>", and the delete of `gone`.
    fn session(receiver: &mut Receiver, session: u32, n: u64, gone: &str) {
        receiver.manifest().unwrap();
        receiver
            .handle(Message::Delete { path: gone.into() })
            .unwrap();
        receiver
            .handle(Message::Mkdir { path: "s".into() })
            .unwrap();
        for i in 0..n {
            let body = format!("session {session}");
            for m in send_file(i, &format!("s/{i}"), body.as_bytes()) {
                let replies = receiver.handle(m).unwrap();
                assert!(
                    !replies
                        .iter()
                        .any(|r| matches!(r, Message::FileFailed { .. })),
                    "{replies:?}"
                );
            }
        }
    }

    #[test]
    fn a_session_is_invisible_until_its_end_and_then_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("old"), b"old").unwrap();
        let mut receiver = Receiver::open(root, None).unwrap();
        let before = visible(root);
        session(&mut receiver, 1, 300, "old");
        assert_eq!(
            visible(root),
            before,
            "nothing of a session may be visible before its end: 300 files arrived, more than one \
             group sync"
        );
        let replies = receiver.handle(Message::Finish).unwrap();
        let done = replies
            .iter()
            .filter(|r| matches!(r, Message::FileDone { .. }))
            .count();
        assert_eq!(done, 300, "every file is reported done once applied");
        let after = visible(root);
        assert_eq!(
            after.len(),
            300,
            "the delete and all 300 files are applied: {after:?}"
        );
        assert!(after.values().all(|v| v == b"session 1"));

        // A session cut before its end applies nothing; a source closing it cleanly applies
        // what arrived whole.
        session(&mut receiver, 2, 10, "s/299");
        receiver.close(false);
        assert_eq!(
            visible(root),
            after,
            "a cut session leaves the last whole batch"
        );
        session(&mut receiver, 3, 10, "s/299");
        receiver.close(true);
        let closed = visible(root);
        assert_eq!(closed.len(), 299);
        assert_eq!(
            closed["s/0"], b"session 3",
            "a clean close applies what arrived whole"
        );
        assert_eq!(closed["s/10"], b"session 1");
    }

    #[test]
    fn a_batch_a_crash_interrupted_is_completed_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("gone"), b"old").unwrap();
        std::fs::write(root.join("log"), b"0123").unwrap();
        std::fs::create_dir(root.join("s")).unwrap();
        for i in 0..20 {
            std::fs::write(root.join(format!("s/{i}")), b"session 1").unwrap();
        }
        let log_before = fs::stamp_of_meta(&std::fs::metadata(root.join("log")).unwrap());
        let gone_id = fs::stamp_of_meta(&std::fs::metadata(root.join("gone")).unwrap()).file_id;
        let tmp = root.join(STATE_DIR).join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut steps = vec![Step::Remove {
            path: "gone".into(),
            file_id: gone_id,
        }];
        for i in 0..20 {
            let name = format!("{i}.part");
            std::fs::write(tmp.join(&name), b"session 2").unwrap();
            steps.push(Step::Place {
                path: format!("s/{i}"),
                temp_name: name,
            });
        }
        steps.push(Step::Append {
            path: "log".into(),
            before: log_before,
            from_len: 4,
            size: 8,
            mtime_ns: 1_700_000_000_000_000_000,
            executable: false,
            bytes: AppendBytes::Inline(b"4567".to_vec()),
        });
        {
            let index = Index::open(&root.join(STATE_DIR).join("index.redb")).unwrap();
            index
                .apply(&[Change::PutBatch(steps)], Durability::Immediate)
                .unwrap();
        }
        // A later step's verified temporary file exists before the batch runs (so it never
        // takes the inode number the deleted file frees).
        std::fs::write(tmp.join("late.part"), b"new").unwrap();
        // The crash came after the delete, half of the renames and part of the append.
        std::fs::remove_file(root.join("gone")).unwrap();
        for i in 0..10 {
            std::fs::rename(tmp.join(format!("{i}.part")), root.join(format!("s/{i}"))).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("log"))
            .unwrap()
            .write_all(b"45")
            .unwrap();
        // A file where the deleted one was, put there by a later step, must stay.
        std::fs::rename(tmp.join("late.part"), root.join("gone")).unwrap();

        let receiver = Receiver::open(root, None).unwrap();
        let seen = visible(root);
        for i in 0..20 {
            assert_eq!(
                seen[&format!("s/{i}")],
                b"session 2",
                "s/{i}: the whole recorded batch is visible after the restart"
            );
        }
        assert_eq!(
            seen["log"], b"01234567",
            "the append is completed, not doubled"
        );
        assert_eq!(
            seen["gone"], b"new",
            "a removal takes only the very file it recorded"
        );
        drop(receiver);
        let index = Index::open(&root.join(STATE_DIR).join("index.redb")).unwrap();
        assert!(
            index.batch().unwrap().is_none(),
            "a completed batch is cleared"
        );
    }

    const PRECIOUS: &[u8] = b"precious data outside the root";

    /// A root and, next to it, a file the agent must never change.
    fn root_and_victim() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, PRECIOUS).unwrap();
        (dir, root, victim)
    }

    fn record_of(path: &Path) -> FileRecord {
        let content = std::fs::read(path).unwrap();
        let blocks = vec![hash::block_hash(&content)];
        FileRecord {
            stamp: fs::stamp_of_meta(&std::fs::metadata(path).unwrap()),
            hash: hash::file_hash(content.len() as u64, &blocks),
            blocks: crate::index::blocks(blocks),
            racy: false,
        }
    }

    /// Records an interrupted append of `rel` from 3 bytes, as a crash mid-commit leaves it.
    fn record_interrupted_append(root: &Path, rel: &str, before: FileRecord) {
        std::fs::create_dir_all(root.join(STATE_DIR)).unwrap();
        let index = Index::open(&root.join(STATE_DIR).join("index.redb")).unwrap();
        let record = AppendRecord {
            from_len: 3,
            before,
        };
        index
            .apply(
                &[Change::PutAppend(rel.into(), record)],
                Durability::Immediate,
            )
            .unwrap();
    }

    #[test]
    fn an_append_is_never_written_into_a_hard_link_to_a_file_outside_the_root() {
        let (dir, root, victim) = root_and_victim();
        let full = root.join("f");
        std::fs::hard_link(&victim, &full).unwrap();
        // The scan recorded it as it is: the stamp matches, only the link count tells.
        let before = record_of(&full);
        let state = root.join(STATE_DIR);
        let tmp = state.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("side"), b"more").unwrap();
        let committer = Committer {
            root: root.clone(),
            tmp,
            index: Arc::new(Index::open(&state.join("index.redb")).unwrap()),
            trash: crate::trash::Trash::new(&state, None),
            lock: Arc::new(File::create(dir.path().join("lock")).unwrap()),
        };
        let size = PRECIOUS.len() as u64;
        let step = Step::Append {
            path: "f".into(),
            before: before.stamp,
            from_len: size,
            size: size + 4,
            mtime_ns: 0,
            executable: false,
            bytes: AppendBytes::Side("side".into()),
        };
        let result = committer.perform(&step, false).map(drop);
        let reason = result.expect_err("a file with a second name outside the root is refused");
        assert!(reason.contains("hard links"), "{reason}");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            PRECIOUS,
            "a file outside the root must never grow through a hard link in it"
        );
    }

    #[test]
    fn a_rollback_follows_no_symlink_and_no_hard_link_swapped_in() {
        for swap in ["symlink", "hard link"] {
            let (_dir, root, victim) = root_and_victim();
            let full = root.join("f");
            match swap {
                "symlink" => std::os::unix::fs::symlink(&victim, &full).unwrap(),
                _ => std::fs::hard_link(&victim, &full).unwrap(),
            }
            record_interrupted_append(&root, "f", record_of(&victim));
            Receiver::open(&root, None).unwrap();
            assert_eq!(
                std::fs::read(&victim).unwrap(),
                PRECIOUS,
                "rolling back an append must not truncate a file outside the root through a {swap}"
            );
        }
    }

    #[test]
    fn a_rollback_truncates_the_recorded_file() {
        let (_dir, root, _victim) = root_and_victim();
        let full = root.join("f");
        std::fs::write(&full, b"abc").unwrap();
        let before = record_of(&full);
        std::fs::write(&full, b"abc and a torn append").unwrap();
        record_interrupted_append(&root, "f", before);
        Receiver::open(&root, None).unwrap();
        assert_eq!(
            std::fs::read(&full).unwrap(),
            b"abc",
            "an interrupted append goes back to its last verified length"
        );
    }
}
