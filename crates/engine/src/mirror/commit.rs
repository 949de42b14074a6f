//! The group commit of verified files on a target, run on its own thread so the next batch is
//! received while this one is synced.
//!
//! A batch goes: a durable record of every append's starting length; the appends written in
//! place; one sync for all their data and all new versions; the new versions renamed into
//! place; one more sync for the renames; then the index. Only then are the files reported
//! done. A folder of small files or a batch of tick appends costs a few syncs in all instead
//! of a few per file, and a crash anywhere leaves each file at a verified version: a new
//! version is either still in its temporary file or in place, an append is rolled back to its
//! recorded length when the agent starts again.

use crate::fs;
use crate::index::{AppendRecord, Change, Durability, FileRecord, Index};
use crate::path;
use crate::protocol::{Append, BLOCK_SIZE, FileBegin, Hash, Message};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A verified file waiting for its group commit.
#[derive(Debug)]
pub struct Ready {
    pub id: u64,
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

/// What a commit did: the replies for the source and the files now in place.
#[derive(Debug, Default)]
pub struct Committed {
    pub replies: Vec<Message>,
    pub files: Vec<(String, FileRecord)>,
}

/// Commits batches of verified files into one target folder.
#[derive(Debug, Clone)]
pub struct Committer {
    pub root: PathBuf,
    pub index: Arc<Index>,
    /// Where replaced versions are kept.
    pub trash: crate::trash::Trash,
}

impl Committer {
    /// Commits a batch of verified files as a group: a durable record of every append's starting
    /// length, the appends written in place, one sync for all data, the new versions renamed
    /// into place, one more sync for the renames, then the index; only then are the files
    /// reported done. A folder of small files or a batch of tick appends costs a few syncs in
    /// all instead of a few per file, and a crash anywhere rolls each file back or forward to
    /// a verified version.
    pub fn commit(&self, mut ready: Vec<Ready>) -> Committed {
        let mut changes: Vec<Change> = Vec::new();
        let mut in_place: Vec<(String, FileRecord)> = Vec::new();
        let mut failed: Vec<(u64, String, String)> = Vec::new();
        let records: Vec<Change> = ready
            .iter()
            .filter_map(|r| match &r.kind {
                ReadyKind::Append(StagedAppend { append, before, .. }) => Some(Change::PutAppend(
                    append.path.clone(),
                    AppendRecord {
                        from_len: append.from_len,
                        before: before.clone(),
                    },
                )),
                ReadyKind::New { .. } => None,
            })
            .collect();
        let has_appends = !records.is_empty();
        if let Err(e) = self.index.apply(&records, Durability::Immediate) {
            // Without the rollback record no append may touch its file.
            let reason = format!("cannot record the append: {e}");
            ready.retain(|r| match &r.kind {
                ReadyKind::Append(StagedAppend { side_path, .. }) => {
                    let _ = std::fs::remove_file(side_path);
                    failed.push((r.id, r.path().to_string(), reason.clone()));
                    false
                }
                ReadyKind::New { .. } => true,
            });
        }
        let mut targets: Vec<Option<File>> = Vec::with_capacity(ready.len());
        for r in &ready {
            targets.push(match &r.kind {
                ReadyKind::Append(StagedAppend {
                    append,
                    side,
                    full,
                    before,
                    ..
                }) => match write_in_place(append, side, full, before) {
                    Ok(file) => Some(file),
                    Err(reason) => {
                        failed.push((r.id, append.path.clone(), reason));
                        None
                    }
                },
                ReadyKind::New { .. } => None,
            });
        }
        let mut files: Vec<&File> = Vec::new();
        for (r, target) in ready.iter().zip(&targets) {
            match (&r.kind, target) {
                (ReadyKind::New { temp, .. }, _) => files.push(temp),
                (ReadyKind::Append(_), Some(file)) => files.push(file),
                (ReadyKind::Append(_), None) => {}
            }
        }
        let synced = fs::sync_batch(&files).map_err(|e| format!("cannot sync: {e}"));
        drop(files);
        let mut replies = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (r, target) in ready.into_iter().zip(targets) {
            let id = r.id;
            match r.kind {
                ReadyKind::New {
                    begin,
                    temp_path,
                    resumable,
                    ..
                } => {
                    let placed = synced.clone().and_then(|()| {
                        self.place(&begin.path, &temp_path)
                            .map_err(|e| format!("cannot put it in place: {e}"))
                    });
                    match placed {
                        Ok(full) => {
                            if let Some(parent) = full.parent()
                                && !dirs.iter().any(|d| d == parent)
                            {
                                dirs.push(parent.to_path_buf());
                            }
                            record(
                                &mut in_place,
                                &mut changes,
                                &begin.path,
                                &full,
                                begin.hash,
                                begin.blocks.clone(),
                                begin.executable,
                            );
                            if resumable {
                                changes.push(Change::RemovePartial(begin.path.clone()));
                            }
                            // A new version ends any append record an earlier failure left.
                            changes.push(Change::RemoveAppend(begin.path.clone()));
                            replies.push(Message::FileDone { id });
                        }
                        Err(reason) => {
                            let _ = std::fs::remove_file(&temp_path);
                            if resumable {
                                changes.push(Change::RemovePartial(begin.path.clone()));
                            }
                            failed.push((id, begin.path, reason));
                        }
                    }
                }
                ReadyKind::Append(StagedAppend {
                    append,
                    side_path,
                    full,
                    before,
                    ..
                }) => {
                    let _ = std::fs::remove_file(&side_path);
                    let Some(file) = target else {
                        changes.push(Change::RemoveAppend(append.path.clone()));
                        continue;
                    };
                    let done = synced.clone().and_then(|()| {
                        fs::set_executable_of(&file, append.executable)
                            .and_then(|()| fs::set_mtime_of(&file, append.mtime_ns))
                            .map_err(|e| e.to_string())
                    });
                    match done {
                        Ok(()) => {
                            let first = (append.from_len / BLOCK_SIZE) as usize;
                            let blocks =
                                [&before.blocks[..first], &append.tail_blocks[..]].concat();
                            record(
                                &mut in_place,
                                &mut changes,
                                &append.path,
                                &full,
                                append.hash,
                                blocks,
                                append.executable,
                            );
                            changes.push(Change::RemoveAppend(append.path.clone()));
                            replies.push(Message::FileDone { id });
                        }
                        Err(reason) => {
                            roll_back(&file, append.from_len, &before);
                            changes.push(Change::RemoveAppend(append.path.clone()));
                            failed.push((id, append.path, reason));
                        }
                    }
                }
            }
        }
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        if let Err(e) = fs::sync_dirs(&dirs) {
            tracing::warn!("cannot sync renamed files: {e}");
        }
        // The rollback records go only with the new records, durably, in one commit.
        let durability = if has_appends {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(e) = self.index.apply(&changes, durability) {
            tracing::warn!("{e}");
        }
        for (id, path, reason) in failed {
            tracing::warn!(%path, %reason, "file failed");
            replies.push(Message::FileFailed {
                id,
                reason: format!("{path}: {reason}"),
            });
        }
        Committed {
            replies,
            files: in_place,
        }
    }

    /// Renames a verified temporary file to its final path.
    fn place(&self, rel: &str, temp_path: &Path) -> std::io::Result<PathBuf> {
        let full = path::resolve(&self.root, rel, true).map_err(std::io::Error::other)?;
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => return Err(std::io::Error::other("a folder is in the way")),
            Ok(m) if m.is_file() => self.trash.keep_before_replace(&full, rel)?,
            _ => {}
        }
        std::fs::rename(temp_path, &full)?;
        Ok(full)
    }
}

/// Notes a file that now holds a verified version.
fn record(
    files: &mut Vec<(String, FileRecord)>,
    changes: &mut Vec<Change>,
    rel: &str,
    full: &Path,
    hash: Hash,
    blocks: Vec<Hash>,
    executable: bool,
) {
    if let Ok(meta) = std::fs::metadata(full) {
        let record = FileRecord {
            stamp: fs::stamp_with_exec(fs::stamp_of_meta(&meta), executable),
            hash,
            blocks,
            racy: false,
        };
        files.push((rel.to_string(), record.clone()));
        changes.push(Change::PutFile(rel.to_string(), record));
    }
}

/// Copies a verified append from its side file to the end of the target's file, if the file
/// is still as it was verified. The file is opened without following a symlink and checked
/// through the open handle, so nothing swapped in under the root since is written. Returns
/// the file, for the group's sync.
pub fn write_in_place(
    append: &Append,
    side: &File,
    full: &Path,
    before: &FileRecord,
) -> Result<File, String> {
    let file = fs::open_in_root(full, true).map_err(|e| format!("cannot open it: {e}"))?;
    let current = file.metadata().map(|m| fs::stamp(&file, &m));
    if !matches!(&current, Ok(s) if fs::same_stamp(s, &before.stamp)) {
        return Err("the target's copy changed during the mirror".into());
    }
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    let mut offset = append.from_len;
    while offset < append.size {
        let len = ((append.size - offset).min(BLOCK_SIZE)) as usize;
        let n = fs::read_at(side, offset - append.from_len, &mut buffer[..len])
            .map_err(|e| e.to_string())?;
        if n != len {
            roll_back(&file, append.from_len, before);
            return Err("the staged append is short".into());
        }
        if let Err(e) = fs::write_at(&file, offset, &buffer[..len]) {
            roll_back(&file, append.from_len, before);
            return Err(format!("cannot write: {}", crate::fs::describe(&e)));
        }
        offset += len as u64;
    }
    Ok(file)
}

/// Truncates an open file back to its last verified length and time.
pub fn roll_back(file: &File, from_len: u64, before: &FileRecord) {
    let _ = file.set_len(from_len);
    let _ = file.sync_data();
    let _ = fs::set_mtime_of(file, before.stamp.mtime_ns);
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::hash;
    use crate::mirror::receive::Receiver;
    use crate::path::STATE_DIR;

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
            blocks,
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
        let side_path = dir.path().join("side");
        std::fs::write(&side_path, b"more").unwrap();
        let side = File::open(&side_path).unwrap();
        let size = PRECIOUS.len() as u64;
        let append = Append {
            id: 1,
            path: "f".into(),
            from_len: size,
            from_hash: before.hash,
            size: size + 4,
            mtime_ns: 0,
            executable: false,
            hash: [0; 32],
            tail_blocks: Vec::new(),
        };
        let result = write_in_place(&append, &side, &full, &before);
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
