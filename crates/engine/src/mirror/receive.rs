//! The target's end of a mirror session: verifies and applies what the source sends.
//!
//! Nothing unverified ever takes a final name. A new version of a file is built in a
//! temporary file under `ROOT/.rainmaker/tmp`; every block is checked against its BLAKE3 hash
//! as it arrives, the whole file against the source's file hash at the end. An append is
//! received into a side file and checked against the target's old tail. Nothing of a session
//! is visible under the root until its end: then its changes (renames, appends, deletes into
//! the trash, new folders, times) are applied as one batch recorded in the index, which a
//! crash in the middle completes at the next start ([`super::commit`]).
//!
//! Interrupted transfers are resumable: a large file's temporary file and its block list are
//! recorded, and when the target opens again the temporary file is re-verified block by block;
//! the verified prefix is offered to the next session so those blocks are not sent again.
//!
//! Every path is checked by [`crate::path`] before it touches the disk; a bad path, an
//! unexpected message or a broken limit aborts the whole session ([`ReceiveError::Refused`]),
//! while a problem with one file (a block that does not match, a full disk) fails only that
//! file and is reported to the source.

use super::commit::{APPLY_LOCK, Committer, Ready, ReadyKind, Sealed, Staged, StagedAppend};
use super::fold::{Folding, Names};
use crate::fs;
use crate::hash;
use crate::index::{Change, Durability, FileRecord, Index, IndexError, PartialRecord};
use crate::mirror::plan;
use crate::path::{self, STATE_DIR};
use crate::protocol::{Append, BLOCK_SIZE, Entry, FileBegin, Hash, Message, Partial, Payload};
use crate::scan::{self, Tree};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Files one session may have open at once (a source sends them one after the other).
const MAX_IN_FLIGHT: usize = 64;
/// The file id of a `FileFailed` about a step that is not a file (a folder, a delete).
pub const STEP_FAILED: u64 = u64::MAX;
/// Large files keep a resumable record; smaller ones are simply sent again.
const RESUMABLE_BLOCKS: u64 = 4;
/// Finished files are committed to the index in batches of this size.
const BATCH: usize = 256;
/// Verified files are synced in groups of at most this many files or bytes.
const READY_FILES: usize = 256;
const READY_BYTES: u64 = 64 << 20;
/// A session is applied as one batch up to this many changes or bytes; a larger one is applied
/// in several batches of this size, each whole. The bound keeps the record, the memory the
/// staged changes take and the data held back in `tmp` small (a session of 300,000 files).
const STAGE_STEPS: usize = 10_000;
const STAGE_BYTES: u64 = 1 << 30;

/// Why a target cannot receive, or why a session was aborted.
#[derive(Debug, Error)]
pub enum ReceiveError {
    #[error("target folder {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {}", crate::fs::describe(source))]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReceiveError {
    let what = what.into();
    move |source| ReceiveError::Io { what, source }
}

/// A file being received.
#[derive(Debug)]
enum InFlight {
    New {
        begin: FileBegin,
        temp: File,
        temp_path: PathBuf,
        have: Vec<bool>,
        reused: bool,
        resumable: bool,
    },
    /// An append staged in a side file until its group commit writes it in place.
    Append {
        staged: StagedAppend,
        next_offset: u64,
    },
    /// The file failed; its remaining messages are dropped.
    Failed,
}

/// A target folder, open for receiving.
#[derive(Debug)]
pub struct Receiver {
    root: PathBuf,
    tmp: PathBuf,
    index: Arc<Index>,
    committer: Committer,
    /// The group being synced in the background, if any.
    sealing: Option<std::thread::JoinHandle<Sealed>>,
    /// Changes of this session waiting for its batch, with their place in its order.
    staged: Vec<(u64, Staged)>,
    /// The next change's place in the session's order.
    seq: u64,
    /// Changes and bytes of this session not yet applied (staged, ready or being synced).
    staged_steps: usize,
    staged_bytes: u64,
    tree: Tree,
    pending: Vec<Change>,
    flight: HashMap<u64, InFlight>,
    /// Verified files waiting for the next group sync.
    ready: Vec<Ready>,
    ready_bytes: u64,
    /// Whether this session changed anything on disk (else its finish needs no rescan).
    changed: bool,
    /// Bytes of file data written (after decompression), for reports and tests.
    pub bytes_written: u64,
    /// The names here, as this file system compares them (case, normalization).
    names: Names,
}

impl Receiver {
    /// Opens a target folder: it must exist and be writable. Rolls back appends and
    /// re-verifies temporary files that a crash interrupted.
    pub fn open(
        root: &Path,
        retention: Option<std::time::Duration>,
    ) -> Result<Receiver, ReceiveError> {
        let fail = |reason: String| ReceiveError::Root {
            path: root.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(root)
            .map_err(|e| fail(format!("{e}; create it first or pass the right --root")))?;
        if !meta.is_dir() {
            return Err(fail("it is not a folder".into()));
        }
        let state = root.join(STATE_DIR);
        let tmp = state.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| {
            fail(format!(
                "cannot create {}: {e}; is it writable?",
                tmp.display()
            ))
        })?;
        let probe = tmp.join(".write-probe");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| fail(format!("it is not writable: {e}")))?;
        let index = Arc::new(Index::open(&state.join("index.redb"))?);
        let lock_path = state.join(APPLY_LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
        let committer = Committer {
            root: root.to_path_buf(),
            tmp: tmp.clone(),
            index: index.clone(),
            trash: crate::trash::Trash::new(&state, retention),
            lock: Arc::new(lock),
        };
        committer.trash.purge(std::time::SystemTime::now());
        let mut receiver = Receiver {
            root: root.to_path_buf(),
            tmp,
            index,
            committer,
            sealing: None,
            staged: Vec::new(),
            seq: 0,
            staged_steps: 0,
            staged_bytes: 0,
            tree: Tree::default(),
            pending: Vec::new(),
            flight: HashMap::new(),
            ready: Vec::new(),
            ready_bytes: 0,
            changed: false,
            bytes_written: 0,
            names: Names::new(Folding::default()),
        };
        let folding = Folding::probe(&receiver.tmp);
        if folding.any() {
            tracing::info!(
                "this file system {}; names that would merge are refused",
                folding.describe()
            );
        }
        receiver.names = Names::new(folding);
        receiver.roll_back_appends()?;
        let completed = receiver.committer.complete()?;
        if completed > 0 {
            tracing::warn!(
                steps = completed,
                "completed the batch of a session that a crash interrupted while it was applied"
            );
        }
        Ok(receiver)
    }

    /// The folder this receiver writes into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Truncates each file an interrupted append grew back to its recorded length, but only
    /// the very file the record is about: no symlink is followed, and a file that is not the
    /// recorded one (another identity, or a hard link shared with a name elsewhere) is left
    /// as it is for the next sync to replace.
    fn roll_back_appends(&mut self) -> Result<(), ReceiveError> {
        for (rel, record) in self.index.appends()? {
            let opened = path::resolve(&self.root, &rel, false)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|full| fs::open_in_root(&full, true));
            match opened {
                Ok(file)
                    if file.metadata().is_ok_and(|m| {
                        fs::same_file_id(&fs::stamp(&file, &m), &record.before.stamp)
                    }) =>
                {
                    super::commit::roll_back(&file, record.from_len, record.before.stamp.mtime_ns);
                    tracing::warn!(path = %rel, len = record.from_len, "rolled an interrupted append back to its last verified length");
                }
                Ok(_) => {
                    tracing::warn!(path = %rel, "an interrupted append is not rolled back: another file took its place; the next sync replaces it");
                }
                Err(e) => {
                    tracing::warn!(path = %rel, "an interrupted append is not rolled back: {e}; the next sync replaces it");
                }
            }
            self.index
                .apply(&[Change::RemoveAppend(rel)], Durability::Immediate)?;
        }
        Ok(())
    }

    /// Starts a session: what it removes or replaces goes into a trash batch of its own,
    /// whether or not it asks for the manifest.
    pub fn begin_session(&mut self) {
        self.discard_staged();
        self.committer.trash.start_batch();
        self.committer.trash.purge(std::time::SystemTime::now());
    }

    /// Quick-checks the folder and lists it, with the resumable temporary files.
    pub fn manifest(&mut self) -> Result<(Vec<Entry>, Vec<Partial>), ReceiveError> {
        self.changed = false;
        // Only a session's end applies what it staged; its temporary files must stay until
        // then, and the stray ones are removed below.
        self.discard_staged();
        self.flush(Durability::Immediate)?;
        let previous = self.index.files()?;
        let scanned = scan::scan(&self.root, &previous).map_err(|e| ReceiveError::Root {
            path: self.root.clone(),
            reason: e.reason,
        })?;
        for problem in &scanned.problems {
            tracing::warn!(path = %problem.path, "{}", problem.reason);
        }
        self.index.apply(&scanned.changes, Durability::Immediate)?;
        self.tree = scanned.tree;
        self.names
            .reset(self.tree.files.keys().chain(self.tree.dirs.iter()));
        let partials = self.verify_partials()?;
        Ok((plan::to_entries(&self.tree), partials))
    }

    /// The digest of the folder as the last manifest or finish saw it.
    pub fn digest(&self) -> Hash {
        plan::digest(&self.tree)
    }

    /// Re-verifies every resumable temporary file and removes stray ones.
    fn verify_partials(&mut self) -> Result<Vec<Partial>, ReceiveError> {
        let records = self.index.partials()?;
        let mut keep = Vec::new();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (rel, record) in records {
            let temp_path = self.tmp.join(&record.temp_name);
            match verified_prefix(&temp_path, &record.begin) {
                Some(verified) if verified > 0 => {
                    keep.push(record.temp_name.clone());
                    out.push(Partial {
                        path: rel,
                        hash: record.begin.hash,
                        verified_blocks: verified,
                    });
                }
                _ => stale.push(Change::RemovePartial(rel)),
            }
        }
        self.index.apply(&stale, Durability::Immediate)?;
        if let Ok(entries) = std::fs::read_dir(&self.tmp) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(out)
    }

    /// Handles one message from the source; returns the replies. An error aborts the session.
    pub fn handle(&mut self, message: Message) -> Result<Vec<Message>, ReceiveError> {
        if !matches!(message, Message::Finish) {
            self.changed = true;
        }
        match self.apply(message) {
            // A folder that cannot be made or a file that cannot be deleted fails that step
            // only; the source hears of it and the rest of the mirror goes on.
            Err(ReceiveError::Io { what, source }) => {
                let reason = format!("{what}: {source}");
                tracing::warn!("{reason}");
                Ok(vec![Message::FileFailed {
                    id: STEP_FAILED,
                    reason,
                }])
            }
            other => other,
        }
    }

    fn apply(&mut self, message: Message) -> Result<Vec<Message>, ReceiveError> {
        match message {
            Message::Mkdir { path } => {
                path::resolve(&self.root, &path, false).map_err(refused)?;
                if let Some(why) = self.clash(&path) {
                    return Err(ReceiveError::Io {
                        what: format!("cannot create folder {path}"),
                        source: std::io::Error::other(why),
                    });
                }
                let mut dir = path.as_str();
                loop {
                    self.names.insert(dir);
                    self.tree.dirs.insert(dir.to_string());
                    match dir.rfind('/') {
                        Some(i) => dir = &dir[..i],
                        None => break,
                    }
                }
                self.stage(Staged::Mkdir { path });
                self.apply_if_big()
            }
            Message::Delete { path } => {
                self.delete(&path)?;
                self.apply_if_big()
            }
            Message::SetMeta {
                path,
                mtime_ns,
                executable,
            } => {
                let full = path::resolve(&self.root, &path, false).map_err(refused)?;
                if std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                    // Clearing a folder's execute bit would lock the agent out of it.
                    return Err(ReceiveError::Refused(format!(
                        "SetMeta names the folder {path}: a source sets the time and mode of \
                         files only"
                    )));
                }
                self.stage(Staged::SetMeta {
                    path,
                    mtime_ns,
                    executable,
                });
                self.apply_if_big()
            }
            Message::FileBegin(begin) => self.begin(begin),
            Message::BlockList { id, blocks } => self.block_list(id, blocks),
            Message::Append(append) => self.begin_append(append),
            Message::Data {
                id,
                offset,
                payload,
            } => self.data(id, offset, payload),
            Message::FileEnd { id } => self.end(id),
            Message::FileAbort { id, reason } => {
                tracing::info!(id, %reason, "source abandoned a file");
                self.discard(id, false);
                Ok(vec![])
            }
            Message::Finish => {
                let mut replies = self.apply_staged();
                replies.push(Message::Finished {
                    digest: self.finish()?,
                });
                Ok(replies)
            }
            other => Err(ReceiveError::Refused(format!(
                "unexpected message from the source: {}",
                other.name()
            ))),
        }
    }

    /// Notes a delete; it is applied with the session's batch.
    fn delete(&mut self, rel: &str) -> Result<(), ReceiveError> {
        path::resolve(&self.root, rel, true).map_err(refused)?;
        self.stage(Staged::Remove {
            path: rel.to_string(),
        });
        let prefix = format!("{rel}/");
        let gone: Vec<String> = self
            .tree
            .files
            .keys()
            .filter(|p| *p == rel || p.starts_with(&prefix))
            .cloned()
            .collect();
        for path in gone {
            self.names.remove(&path);
            self.tree.files.remove(&path);
            self.pending.push(Change::RemoveFile(path));
        }
        let names = &mut self.names;
        self.tree.dirs.retain(|d| {
            let gone = d == rel || d.starts_with(&prefix);
            if gone {
                names.remove(d);
            }
            !gone
        });
        Ok(())
    }

    fn begin(&mut self, begin: FileBegin) -> Result<Vec<Message>, ReceiveError> {
        let id = begin.id;
        if self.flight.len() >= MAX_IN_FLIGHT {
            return Err(ReceiveError::Refused(format!(
                "more than {MAX_IN_FLIGHT} files open at once"
            )));
        }
        if self.flight.contains_key(&id) {
            return Err(ReceiveError::Refused(format!(
                "file id {id} is already in use"
            )));
        }
        path::resolve(&self.root, &begin.path, true).map_err(refused)?;
        if let Some(why) = self.clash(&begin.path) {
            let path = begin.path.clone();
            return Ok(self.fail(id, &path, why));
        }
        self.names.insert(&begin.path);
        let temp_name = temp_name(&begin.path, "part");
        let temp_path = self.tmp.join(&temp_name);
        let count = hash::block_count(begin.size);
        let mut have = vec![false; count as usize];
        let opened = if begin.resume_blocks > 0 {
            match self.index.partials()?.get(&begin.path) {
                Some(record)
                    if record.begin.hash == begin.hash && record.temp_name == temp_name =>
                {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&temp_path)
                        .and_then(|f| {
                            f.set_len(begin.resume_blocks * BLOCK_SIZE)?;
                            Ok(f)
                        })
                }
                _ => Err(std::io::Error::other(
                    "the interrupted transfer it resumes is gone",
                )),
            }
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp_path)
        };
        let temp = match opened {
            Ok(temp) => temp,
            Err(e) => {
                return Ok(self.fail(
                    id,
                    &begin.path,
                    format!("cannot create its temporary file: {e}"),
                ));
            }
        };
        for h in have.iter_mut().take(begin.resume_blocks as usize) {
            *h = true;
        }
        let resumable = count > RESUMABLE_BLOCKS;
        self.flight.insert(
            id,
            InFlight::New {
                begin,
                temp,
                temp_path,
                have,
                reused: false,
                resumable,
            },
        );
        self.blocks_complete(id)
    }

    fn block_list(&mut self, id: u64, blocks: Vec<Hash>) -> Result<Vec<Message>, ReceiveError> {
        match self.flight.get_mut(&id) {
            Some(InFlight::New { begin, .. }) => {
                if begin.blocks.len() + blocks.len() > hash::block_count(begin.size) as usize {
                    return Err(ReceiveError::Refused(format!(
                        "more block hashes than {} has blocks",
                        begin.path
                    )));
                }
                begin.blocks.extend(blocks);
                self.blocks_complete(id)
            }
            Some(InFlight::Failed) => Ok(vec![]),
            _ => Err(ReceiveError::Refused(format!(
                "block list for unknown file id {id}"
            ))),
        }
    }

    /// Once the block list is whole: record a resumable transfer and copy reused blocks.
    fn blocks_complete(&mut self, id: u64) -> Result<Vec<Message>, ReceiveError> {
        let Some(InFlight::New {
            begin,
            temp,
            temp_path,
            have,
            reused,
            resumable,
        }) = self.flight.get_mut(&id)
        else {
            return Ok(vec![]);
        };
        if *reused || (begin.blocks.len() as u64) < hash::block_count(begin.size) {
            return Ok(vec![]);
        }
        *reused = true;
        if *resumable {
            let mut kept = begin.clone();
            kept.reuse.clear();
            let record = PartialRecord {
                begin: kept,
                temp_name: temp_path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            };
            self.index.apply(
                &[Change::PutPartial(begin.path.clone(), record)],
                Durability::Immediate,
            )?;
        }
        let mut buffer = vec![0u8; BLOCK_SIZE as usize];
        let mut problem = None;
        for reuse in &begin.reuse {
            let index = reuse.index as usize;
            if have[index] {
                continue;
            }
            let from = path::resolve(&self.root, &reuse.from_path, false).map_err(refused)?;
            let len = hash::block_len(begin.size, reuse.index) as usize;
            let got = fs::open_shared(&from)
                .and_then(|f| fs::read_at(&f, reuse.from_index * BLOCK_SIZE, &mut buffer[..len]));
            match got {
                Ok(n) if n == len && hash::block_hash(&buffer[..len]) == begin.blocks[index] => {
                    fs::write_at(temp, reuse.index * BLOCK_SIZE, &buffer[..len]).map_err(io(
                        format!("cannot write the temporary file of {}", begin.path),
                    ))?;
                    have[index] = true;
                }
                _ => {
                    problem = Some(format!(
                        "block {} to be copied from {} on the target no longer matches",
                        reuse.index, reuse.from_path
                    ));
                    break;
                }
            }
        }
        match problem {
            Some(reason) => {
                let path = begin.path.clone();
                Ok(self.fail(id, &path, reason))
            }
            None => Ok(vec![]),
        }
    }

    fn begin_append(&mut self, append: Append) -> Result<Vec<Message>, ReceiveError> {
        let id = append.id;
        if self.flight.len() >= MAX_IN_FLIGHT {
            return Err(ReceiveError::Refused(format!(
                "more than {MAX_IN_FLIGHT} files open at once"
            )));
        }
        if self.flight.contains_key(&id) {
            return Err(ReceiveError::Refused(format!(
                "file id {id} is already in use"
            )));
        }
        let full = path::resolve(&self.root, &append.path, false).map_err(refused)?;
        let Some(before) = self.tree.files.get(&append.path).cloned() else {
            return Ok(self.fail(
                id,
                &append.path,
                "the target has no such file to append to".into(),
            ));
        };
        let current = std::fs::symlink_metadata(&full).map(|m| fs::stamp_of_meta(&m));
        let unchanged = matches!(&current, Ok(s) if fs::same_stamp(s, &before.stamp));
        if before.stamp.size != append.from_len || before.hash != append.from_hash || !unchanged {
            return Ok(self.fail(
                id,
                &append.path,
                "the target's copy changed since the manifest".into(),
            ));
        }
        let side_path = self.tmp.join(temp_name(&append.path, "append"));
        let side = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&side_path)
        {
            Ok(side) => side,
            Err(e) => {
                return Ok(self.fail(id, &append.path, format!("cannot stage the append: {e}")));
            }
        };
        let next_offset = append.from_len;
        let staged = StagedAppend {
            append,
            side,
            side_path,
            full,
            before,
        };
        self.flight.insert(
            id,
            InFlight::Append {
                staged,
                next_offset,
            },
        );
        Ok(vec![])
    }

    fn data(
        &mut self,
        id: u64,
        offset: u64,
        payload: Payload,
    ) -> Result<Vec<Message>, ReceiveError> {
        let outcome = match self.flight.get_mut(&id) {
            None => {
                return Err(ReceiveError::Refused(format!(
                    "data for unknown file id {id}"
                )));
            }
            Some(InFlight::Failed) => return Ok(vec![]),
            Some(InFlight::New {
                begin, temp, have, ..
            }) => {
                let count = hash::block_count(begin.size);
                if offset % BLOCK_SIZE != 0 || offset / BLOCK_SIZE >= count {
                    return Err(ReceiveError::Refused(format!(
                        "data at offset {offset} does not start a block of {}",
                        begin.path
                    )));
                }
                if (begin.blocks.len() as u64) < count {
                    return Err(ReceiveError::Refused(format!(
                        "data for {} before its block list",
                        begin.path
                    )));
                }
                let index = offset / BLOCK_SIZE;
                let len = hash::block_len(begin.size, index);
                match unpack(payload, len) {
                    Ok(bytes)
                        if bytes.len() as u64 == len
                            && hash::block_hash(&bytes) == begin.blocks[index as usize] =>
                    {
                        match fs::write_at(temp, offset, &bytes) {
                            Ok(()) => {
                                have[index as usize] = true;
                                self.bytes_written += len;
                                Ok(())
                            }
                            Err(e) => Err((
                                begin.path.clone(),
                                format!("cannot write: {}", crate::fs::describe(&e)),
                            )),
                        }
                    }
                    Ok(_) => Err((
                        begin.path.clone(),
                        format!("block {index} does not match its hash"),
                    )),
                    Err(reason) => Err((begin.path.clone(), reason)),
                }
            }
            Some(InFlight::Append {
                staged: StagedAppend { append, side, .. },
                next_offset,
            }) => match unpack(payload, BLOCK_SIZE) {
                Err(reason) => Err((append.path.clone(), reason)),
                Ok(bytes) => {
                    if offset != *next_offset || offset + bytes.len() as u64 > append.size {
                        return Err(ReceiveError::Refused(format!(
                            "appended data for {} at offset {offset}, expected {next_offset}",
                            append.path
                        )));
                    }
                    match fs::write_at(side, offset - append.from_len, &bytes) {
                        Ok(()) => {
                            *next_offset += bytes.len() as u64;
                            self.bytes_written += bytes.len() as u64;
                            Ok(())
                        }
                        Err(e) => Err((
                            append.path.clone(),
                            format!("cannot write: {}", crate::fs::describe(&e)),
                        )),
                    }
                }
            },
        };
        match outcome {
            Ok(()) => Ok(vec![]),
            Err((path, reason)) => Ok(self.fail(id, &path, reason)),
        }
    }

    fn end(&mut self, id: u64) -> Result<Vec<Message>, ReceiveError> {
        let Some(flight) = self.flight.remove(&id) else {
            return Err(ReceiveError::Refused(format!(
                "end of unknown file id {id}"
            )));
        };
        let verified = match flight {
            InFlight::Failed => return Ok(vec![]),
            InFlight::New {
                begin,
                temp,
                temp_path,
                have,
                resumable,
                ..
            } => self.verify_new(id, begin, temp, temp_path, &have, resumable),
            InFlight::Append {
                staged,
                next_offset,
            } => match verify_append(
                &staged.append,
                &staged.side,
                &staged.full,
                &staged.before,
                next_offset,
            ) {
                Ok(()) => Ok(Ready {
                    id,
                    seq: 0,
                    kind: ReadyKind::Append(staged),
                }),
                Err(reason) => {
                    let _ = std::fs::remove_file(&staged.side_path);
                    Err(reason)
                }
            },
        };
        let mut ready = match verified {
            Ok(ready) => ready,
            Err(reason) => {
                tracing::warn!(%reason, "file failed");
                return Ok(vec![Message::FileFailed { id, reason }]);
            }
        };
        ready.seq = self.next_seq();
        self.staged_steps += 1;
        self.staged_bytes += ready.bytes();
        self.ready_bytes += ready.bytes();
        self.ready.push(ready);
        let mut replies = vec![];
        if self.ready.len() >= READY_FILES || self.ready_bytes >= READY_BYTES {
            replies = self.start_seal();
        }
        replies.extend(self.apply_if_big()?);
        self.flush_if_big()?;
        Ok(replies)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Notes a change that is not a file, in the session's order.
    fn stage(&mut self, change: Staged) {
        let seq = self.next_seq();
        self.staged.push((seq, change));
        self.staged_steps += 1;
    }

    /// Waits for the group being synced, if any, and stages its files.
    fn join_seal(&mut self) -> Vec<Message> {
        let Some(handle) = self.sealing.take() else {
            return vec![];
        };
        match handle.join() {
            Ok(sealed) => {
                self.staged.extend(sealed.staged);
                sealed.replies
            }
            Err(_) => {
                // Its files are unaccounted for; the digest at the finish says so to the source.
                tracing::error!("a group sync failed unexpectedly");
                vec![]
            }
        }
    }

    /// Starts syncing the ready files on a background thread, after the previous group.
    fn start_seal(&mut self) -> Vec<Message> {
        let replies = self.join_seal();
        let ready = std::mem::take(&mut self.ready);
        self.ready_bytes = 0;
        if !ready.is_empty() {
            let committer = self.committer.clone();
            self.sealing = Some(std::thread::spawn(move || committer.seal(ready)));
        }
        replies
    }

    /// Applies the session's batch now when it reached the bound (a session larger than the
    /// bound is applied in several batches, each whole).
    fn apply_if_big(&mut self) -> Result<Vec<Message>, ReceiveError> {
        if self.staged_steps >= STAGE_STEPS || self.staged_bytes >= STAGE_BYTES {
            tracing::info!(
                changes = self.staged_steps,
                bytes = self.staged_bytes,
                "the session is larger than one batch; applying what arrived so far"
            );
            return Ok(self.apply_staged());
        }
        Ok(vec![])
    }

    /// Syncs what is still waiting and applies every staged change as one recorded batch.
    fn apply_staged(&mut self) -> Vec<Message> {
        let mut replies = self.start_seal();
        replies.extend(self.join_seal());
        let mut staged = std::mem::take(&mut self.staged);
        self.staged_steps = 0;
        self.staged_bytes = 0;
        if staged.is_empty() {
            return replies;
        }
        staged.sort_by_key(|(seq, _)| *seq);
        let applied = self
            .committer
            .apply(staged.into_iter().map(|(_, s)| s).collect());
        self.tree.files.extend(applied.files);
        for (path, stamp) in applied.stamps {
            if let Some(record) = self.tree.files.get_mut(&path) {
                record.stamp = fs::stamp_with_exec(stamp, record.stamp.executable);
                self.pending.push(Change::PutFile(path, record.clone()));
            }
        }
        replies.extend(applied.replies);
        replies
    }

    /// Drops every staged change: nothing of it is applied. Resumable temporary files stay.
    fn discard_staged(&mut self) {
        self.join_seal();
        for ready in std::mem::take(&mut self.ready) {
            match ready.kind {
                ReadyKind::New {
                    temp_path,
                    resumable: false,
                    ..
                } => {
                    let _ = std::fs::remove_file(temp_path);
                }
                ReadyKind::New { .. } => {}
                ReadyKind::Append(staged) => {
                    let _ = std::fs::remove_file(staged.side_path);
                }
            }
        }
        for (_, staged) in std::mem::take(&mut self.staged) {
            staged.discard();
        }
        self.ready_bytes = 0;
        self.staged_steps = 0;
        self.staged_bytes = 0;
    }

    fn flush_if_big(&mut self) -> Result<(), ReceiveError> {
        if self.pending.len() >= BATCH {
            self.flush(Durability::None)?;
        }
        Ok(())
    }

    /// Checks a new version's blocks and whole hash and gives the temporary file its final
    /// size, mode and time; it takes its final name in the group commit ([`super::commit`]).
    fn verify_new(
        &mut self,
        id: u64,
        begin: FileBegin,
        temp: File,
        temp_path: PathBuf,
        have: &[bool],
        resumable: bool,
    ) -> Result<Ready, String> {
        let path = begin.path.clone();
        let prepared = (|| {
            if let Some(missing) = have.iter().position(|h| !h) {
                return Err(format!("block {missing} never arrived"));
            }
            if hash::file_hash(begin.size, &begin.blocks) != begin.hash {
                return Err("it does not match the source's file hash".into());
            }
            let prepare = || -> std::io::Result<()> {
                temp.set_len(begin.size)?;
                fs::set_executable(&temp_path, begin.executable)?;
                fs::set_mtime(&temp_path, begin.mtime_ns)
            };
            prepare().map_err(|e| format!("cannot finish its temporary file: {e}"))
        })();
        match prepared {
            Ok(()) => Ok(Ready {
                id,
                seq: 0,
                kind: ReadyKind::New {
                    begin,
                    temp,
                    temp_path,
                    resumable,
                },
            }),
            Err(reason) => {
                self.drop_temp(&path, &temp_path, resumable);
                Err(format!("{path}: {reason}"))
            }
        }
    }

    fn drop_temp(&mut self, path: &str, temp_path: &Path, resumable: bool) {
        let _ = std::fs::remove_file(temp_path);
        if resumable {
            self.pending.push(Change::RemovePartial(path.to_string()));
        }
    }

    /// Marks a file failed, undoes what it wrote, and returns the reply for the source.
    /// Why `path` (or a folder on its way) cannot be written here: a name this file system
    /// would take for another one already here.
    fn clash(&self, path: &str) -> Option<String> {
        let mut end = 0;
        while end < path.len() {
            end = path[end..].find('/').map_or(path.len(), |i| end + i);
            if let Some(why) = self.names.clash(&path[..end]) {
                return Some(why);
            }
            end += 1;
        }
        None
    }

    /// Compares names as a file system that ignores what `folding` says would (tests).
    #[cfg(test)]
    pub(crate) fn set_folding(&mut self, folding: Folding) {
        self.names = Names::new(folding);
    }

    fn fail(&mut self, id: u64, path: &str, reason: String) -> Vec<Message> {
        tracing::warn!(%path, %reason, "file failed");
        self.discard(id, true);
        self.flight.insert(id, InFlight::Failed);
        vec![Message::FileFailed {
            id,
            reason: format!("{path}: {reason}"),
        }]
    }

    /// Drops an in-flight file: a new version's temporary file goes (unless `keep_partial`
    /// and it is resumable), an append is rolled back.
    fn discard(&mut self, id: u64, keep_partial: bool) {
        match self.flight.remove(&id) {
            Some(InFlight::New {
                temp_path,
                resumable,
                begin,
                ..
            }) => {
                if !(keep_partial && resumable) {
                    let _ = std::fs::remove_file(&temp_path);
                    if resumable {
                        let _ = self
                            .index
                            .apply(&[Change::RemovePartial(begin.path)], Durability::None);
                    }
                }
            }
            // Nothing of a staged append touched its file yet.
            Some(InFlight::Append { staged, .. }) => {
                let _ = std::fs::remove_file(&staged.side_path);
            }
            Some(InFlight::Failed) | None => {}
        }
    }

    /// Ends a session. Files still arriving are dropped (temporary files stay resumable).
    /// With `clean` (the source closed the session itself, as a user stopping a push does),
    /// what arrived whole is applied as one batch; after a cut connection, an abort or a stop
    /// of this agent nothing is applied, so the target keeps the last whole batch.
    pub fn close(&mut self, clean: bool) {
        let ids: Vec<u64> = self.flight.keys().copied().collect();
        for id in ids {
            self.discard(id, true);
        }
        if clean {
            self.apply_staged();
        } else {
            self.discard_staged();
        }
        if let Err(e) = self.flush(Durability::Immediate) {
            tracing::warn!("{e}");
        }
    }

    fn flush(&mut self, durability: Durability) -> Result<(), ReceiveError> {
        let changes = std::mem::take(&mut self.pending);
        self.index.apply(&changes, durability)?;
        Ok(())
    }

    /// Commits everything and returns the digest of the folder as it now is on disk.
    pub fn finish(&mut self) -> Result<Hash, ReceiveError> {
        if let Some(id) = self.flight.keys().next() {
            return Err(ReceiveError::Refused(format!(
                "finish while file id {id} is still open"
            )));
        }
        self.flight.clear();
        self.flush(Durability::Immediate)?;
        if std::mem::take(&mut self.changed) {
            // Verify against the disk, not against what we believe we wrote.
            self.manifest()?;
        }
        Ok(plan::digest(&self.tree))
    }
}

/// Checks a staged append: all of it arrived, and the target's partial last block followed by
/// the new bytes matches the source's block hashes and file hash. Reads only the tail.
fn verify_append(
    append: &Append,
    side: &File,
    full: &Path,
    before: &FileRecord,
    next_offset: u64,
) -> Result<(), String> {
    let fail = |reason: String| format!("{}: {reason}", append.path);
    if next_offset != append.size {
        return Err(fail(format!(
            "only {next_offset} of {} bytes arrived",
            append.size
        )));
    }
    let first = append.from_len / BLOCK_SIZE;
    let start = first * BLOCK_SIZE;
    let mut head = vec![0u8; (append.from_len - start) as usize];
    let target = fs::open_shared(full).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let n = fs::read_at(&target, start, &mut head).map_err(|e| fail(e.to_string()))?;
    if n != head.len() {
        return Err(fail("the target's copy is shorter than it was".into()));
    }
    let mut blocks = before.blocks[..first as usize].to_vec();
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    for (i, expected) in append.tail_blocks.iter().enumerate() {
        let index = first + i as u64;
        let len = hash::block_len(append.size, index) as usize;
        let block_start = index * BLOCK_SIZE;
        // Bytes of this block from the target's old tail, then from the side file.
        let from_old = if i == 0 { head.len() } else { 0 };
        buffer[..from_old].copy_from_slice(&head[..from_old]);
        let side_offset = block_start + from_old as u64 - append.from_len;
        let n = fs::read_at(side, side_offset, &mut buffer[from_old..len])
            .map_err(|e| fail(e.to_string()))?;
        if from_old + n != len || hash::block_hash(&buffer[..len]) != *expected {
            return Err(fail(format!(
                "appended block {index} does not match its hash"
            )));
        }
        blocks.push(*expected);
    }
    if hash::file_hash(append.size, &blocks) != append.hash {
        return Err(fail("it does not match the source's file hash".into()));
    }
    Ok(())
}

/// The name of a path's temporary file of the given kind in the `tmp` folder.
fn temp_name(path: &str, kind: &str) -> String {
    format!(
        "{}.{kind}",
        &hex::encode(hash::block_hash(path.as_bytes()))[..24]
    )
}

/// Number of leading blocks of a temporary file that match the version it is building.
fn verified_prefix(temp_path: &Path, begin: &FileBegin) -> Option<u64> {
    let file = File::open(temp_path).ok()?;
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    let mut verified = 0;
    for (index, expected) in begin.blocks.iter().enumerate() {
        let len = hash::block_len(begin.size, index as u64) as usize;
        let n = fs::read_at(&file, index as u64 * BLOCK_SIZE, &mut buffer[..len]).ok()?;
        if n != len || hash::block_hash(&buffer[..len]) != *expected {
            break;
        }
        verified += 1;
    }
    let _ = OpenOptions::new()
        .write(true)
        .open(temp_path)
        .and_then(|f| f.set_len((verified * BLOCK_SIZE).min(begin.size)));
    Some(verified)
}

/// The bytes of a payload, decompressed into at most `max` bytes.
fn unpack(payload: Payload, max: u64) -> Result<Vec<u8>, String> {
    match payload {
        Payload::Raw(bytes) if bytes.len() as u64 <= max => Ok(bytes),
        Payload::Raw(bytes) => Err(format!("a block of {} bytes is over {max}", bytes.len())),
        Payload::Zstd(bytes) => zstd::bulk::decompress(&bytes, max as usize)
            .map_err(|e| format!("a compressed block does not decompress within {max} bytes: {e}")),
    }
}

fn refused(e: path::PathError) -> ReceiveError {
    ReceiveError::Refused(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_file(id: u64, path: &str) -> Message {
        Message::FileBegin(FileBegin {
            id,
            path: path.into(),
            size: 0,
            mtime_ns: 1_700_000_000_000_000_000,
            executable: false,
            hash: hash::file_hash(0, &[]),
            blocks: Vec::new(),
            reuse: Vec::new(),
            resume_blocks: 0,
        })
    }

    fn failure(replies: &[Message]) -> Option<&str> {
        replies.iter().find_map(|m| match m {
            Message::FileFailed { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
    }

    #[test]
    fn a_name_the_file_system_would_merge_is_refused_and_the_first_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut receiver = Receiver::open(dir.path(), None).unwrap();
        receiver.set_folding(Folding {
            case: true,
            unicode: true,
        });
        receiver.manifest().unwrap();
        assert!(
            failure(
                &receiver
                    .handle(Message::Mkdir {
                        path: "Data".into()
                    })
                    .unwrap()
            )
            .is_none()
        );
        let replies = receiver
            .handle(Message::Mkdir {
                path: "data".into(),
            })
            .unwrap();
        let why = failure(&replies).expect("a folder differing only in case is refused");
        assert!(
            why.contains("Data") && why.contains("ignores case"),
            "{why}"
        );

        let replies = receiver.handle(empty_file(1, "Data/Notes.txt")).unwrap();
        assert!(failure(&replies).is_none(), "{replies:?}");
        receiver.handle(Message::FileEnd { id: 1 }).unwrap();
        let replies = receiver.handle(empty_file(2, "Data/notes.TXT")).unwrap();
        let why = failure(&replies).expect("a file differing only in case is refused");
        assert!(
            why.starts_with("Data/notes.TXT: Data/Notes.txt is already"),
            "{why}"
        );
        receiver.handle(Message::FileEnd { id: 2 }).unwrap();
        let replies = receiver.handle(empty_file(3, "data/other.txt")).unwrap();
        assert!(
            failure(&replies).is_some(),
            "a file below a merged folder name is refused too"
        );
        receiver.handle(Message::FileEnd { id: 3 }).unwrap();
        let replies = receiver.handle(empty_file(4, "caf\u{e9}.xml")).unwrap();
        assert!(failure(&replies).is_none());
        receiver.handle(Message::FileEnd { id: 4 }).unwrap();
        let replies = receiver.handle(empty_file(5, "cafe\u{301}.xml")).unwrap();
        assert!(
            failure(&replies).is_some_and(|w| w.contains("normalization")),
            "the decomposed spelling is refused: {replies:?}"
        );
        receiver.handle(Message::FileEnd { id: 5 }).unwrap();
        receiver.handle(Message::Finish).unwrap();
        assert!(
            dir.path().join("Data/Notes.txt").exists(),
            "the first name is kept"
        );
        // By the names a listing shows: on a file system that ignores case (Windows), `data`
        // opens `Data`, so asking whether it exists tells nothing.
        let names = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != crate::path::STATE_DIR)
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(dir.path()),
            ["Data", "caf\u{e9}.xml"],
            "the refused folder name was not made"
        );
        assert_eq!(
            names(&dir.path().join("Data")),
            ["Notes.txt"],
            "the refused file name was not made"
        );

        // A case-only rename on the source: the old name is deleted, then the new one fits.
        receiver.manifest().unwrap();
        receiver
            .handle(Message::Delete {
                path: "Data/Notes.txt".into(),
            })
            .unwrap();
        let replies = receiver.handle(empty_file(6, "Data/notes.TXT")).unwrap();
        assert!(failure(&replies).is_none(), "{replies:?}");
    }
}
