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
//!
//! Parts: this file (the session: manifest, messages, deletes, closing), `transfer` (new
//! versions and appends, verified) and `staging` (the session's changes in order, synced in
//! groups, applied as a batch).

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

mod staging;
mod transfer;
use transfer::verified_prefix;

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
/// staged changes take and the data held back in `tmp` small (a session of 300,000 files). A
/// change staged takes about 1 KB until its batch is applied. A source reads them too: a session
/// that could cross them waits for the proof of what its scan took on trust before it sends
/// anything (`send::send_plan`), as nothing unproven may be applied.
pub const STAGE_STEPS: usize = 4_096;
pub const STAGE_BYTES: u64 = 1 << 30;
/// Paths a session's messages may name before the next listing walks the whole folder instead
/// of looking at each: a first mirror of 300,000 files would keep every path (26 MB), and the
/// walk costs about what looking at as many paths one by one does.
const MAX_TOUCHED: usize = 16_384;

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
    /// Whether the folder may differ from `tree`: this session changed it, or it was not listed
    /// since the receiver opened or the last session closed (else a finish needs no rescan).
    changed: bool,
    /// Bytes of file data written (after decompression), for reports and tests.
    pub bytes_written: u64,
    /// The names here, as this file system compares them (case, normalization).
    names: Names,
    /// The folder's change feed while a session is open: a listing after the first looks at
    /// the paths it names (and those this session touched) instead of walking the folder.
    watch: Option<crate::watch::Watch>,
    /// Whether `tree` is the folder as this session listed it (then kept up to date).
    listed: bool,
    /// The paths this session's messages named since the last listing; `None` once they were
    /// more than [`MAX_TOUCHED`] (the next listing walks the whole folder).
    touched: Option<std::collections::BTreeSet<String>>,
    /// The digest of `tree` while it is the last listing as it was made.
    digest: Option<Hash>,
    /// When the folder was last listed whole or its safety rescan started.
    audited: Option<std::time::Instant>,
    /// The safety rescan walking the folder in the background.
    auditing: Option<scan::Background>,
    /// How often it walks ([`AUDIT_EVERY`]; tests shorten it).
    audit_every: std::time::Duration,
    /// [`MAX_TOUCHED`], but for tests.
    max_touched: usize,
}

/// While a session is open, its folder is walked at least this often in the background,
/// whatever its feed says: a feed can drop a change without a word (the source's safety
/// rescan is as frequent by default). What the walk finds is listed at the next listing.
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

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
        let meta = std::fs::metadata(root).map_err(|e| {
            fail(format!(
                "{e}; create it first, or receive into the right folder"
            ))
        })?;
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
            changed: true,
            bytes_written: 0,
            names: Names::new(Folding::default()),
            watch: None,
            listed: false,
            touched: Some(Default::default()),
            digest: None,
            audited: None,
            auditing: None,
            audit_every: AUDIT_EVERY,
            max_touched: MAX_TOUCHED,
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
        // Without a feed (the watch could not be set up) every listing walks the folder.
        let (triggers, _) = tokio::sync::mpsc::channel(1);
        self.watch = crate::watch::start(&self.root, triggers)
            .inspect_err(|e| tracing::debug!("{e}; every listing walks the folder"))
            .ok();
    }

    /// Quick-checks the folder and lists it (see [`Receiver::entries`]); returns the resumable
    /// temporary files.
    pub fn manifest(&mut self) -> Result<Vec<Partial>, ReceiveError> {
        self.changed = false;
        // Only a session's end applies what it staged; its temporary files must stay until
        // then, and the stray ones are removed below.
        self.discard_staged();
        self.flush(Durability::Immediate)?;
        self.list()?;
        self.verify_partials()
    }

    /// Lists the folder into `tree`, checked against the disk: by a walk of the whole folder
    /// the first time in a session, when the feed lost track, and after more than
    /// [`MAX_TOUCHED`] paths were named; otherwise by the paths the feed named, those this
    /// session touched and those the safety rescan found ([`scan::scan_region`], which gives
    /// the tree a whole walk gives).
    fn list(&mut self) -> Result<(), ReceiveError> {
        let root_error = |e: scan::ScanError| ReceiveError::Root {
            path: self.root.clone(),
            reason: e.reason,
        };
        let started = std::time::Instant::now();
        let changes = self.watch.as_ref().map(crate::watch::Watch::take);
        let touched = self.touched.replace(Default::default());
        let found = match scan::Background::take_done(&mut self.auditing) {
            Some(Ok(paths)) => Some(paths),
            Some(Err(e)) => {
                tracing::warn!("the safety rescan failed ({}); listing whole", e.reason);
                None
            }
            None => Some(Vec::new()),
        };
        // Until this listing succeeds, the tree is not one (a failed one left it partial).
        let listed = std::mem::replace(&mut self.listed, false);
        let (mut scanned, whole) = match (changes, found) {
            // Nothing named, nothing touched: the last listing stands, digest and all.
            (Some(crate::watch::Changes::Paths(paths)), Some(found))
                if listed
                    && paths.is_empty()
                    && touched.as_ref().is_some_and(|t| t.is_empty())
                    && found.is_empty()
                    && self.digest.is_some() =>
            {
                self.listed = true;
                self.audit_if_due();
                return Ok(());
            }
            (Some(crate::watch::Changes::Paths(mut paths)), Some(found))
                if listed && touched.is_some() =>
            {
                paths.extend(touched.into_iter().flatten());
                paths.extend(found);
                let region = scan::Region::new(paths);
                let tree = std::mem::take(&mut self.tree);
                let scanned = scan::scan_region(
                    &self.root,
                    tree,
                    &region,
                    &crate::exclude::Exclude::none(),
                    scan::Growth::Prove,
                    None,
                )
                .map_err(root_error)?;
                (scanned.0, false)
            }
            _ => {
                // The walk takes its records from the index: the last tree (and a safety
                // rescan's share of it) would only double what the walk builds.
                self.tree = Tree::default();
                self.digest = None;
                self.auditing = None;
                (
                    scan::scan(
                        &self.root,
                        scan::Previous::index(self.index.file_cursor()?, &[]),
                    )
                    .map_err(root_error)?,
                    true,
                )
            }
        };
        for problem in &scanned.problems {
            tracing::warn!(path = %problem.path, "{}", problem.reason);
        }
        tracing::debug!(
            whole,
            elapsed = ?started.elapsed(),
            files = scanned.tree.files.len(),
            "listed the folder"
        );
        scanned.apply_to(&self.index, Durability::Immediate)?;
        if whole {
            self.audited = Some(started);
        }
        self.tree = scanned.tree;
        self.digest = Some(plan::digest(&self.tree));
        self.listed = true;
        self.names
            .reset(self.tree.files.keys().chain(self.tree.dirs.iter()));
        self.audit_if_due();
        Ok(())
    }

    /// Starts the safety rescan against the listing just made, when one is due and the folder
    /// has a feed (without one every listing walks the folder).
    fn audit_if_due(&mut self) {
        if self.watch.is_none()
            || self.auditing.is_some()
            || self
                .audited
                .is_some_and(|at| at.elapsed() < self.audit_every)
        {
            return;
        }
        self.audited = Some(std::time::Instant::now());
        self.auditing = scan::Background::start(
            self.root.clone(),
            self.tree.clone(),
            crate::exclude::Exclude::none(),
            || {},
        );
    }

    /// The entries of the folder as the last manifest or finish listed it, for the source.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        plan::entries(&self.tree)
    }

    /// The digest of the folder as the last manifest or finish saw it.
    pub fn digest(&self) -> Hash {
        self.digest.unwrap_or_else(|| plan::digest(&self.tree))
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
            self.digest = None;
        }
        let touched = match &message {
            Message::Mkdir { path } | Message::Delete { path } | Message::SetMeta { path, .. } => {
                Some(path)
            }
            Message::FileBegin(begin) => Some(&begin.path),
            Message::Append(append) => Some(&append.path),
            _ => None,
        };
        if let Some(path) = touched
            && let Some(paths) = &mut self.touched
        {
            if paths.len() < self.max_touched {
                paths.insert(path.clone());
            } else {
                self.touched = None;
            }
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
        let gone: Vec<String> = scan::below(&self.tree.files, rel)
            .map(|(path, _)| path.clone())
            .collect();
        for path in gone {
            self.names.remove(&path);
            self.tree.files.remove(&path);
            self.pending.push(Change::RemoveFile(path));
        }
        let gone: Vec<String> = scan::dirs_below(&self.tree.dirs, rel).cloned().collect();
        for dir in gone {
            self.names.remove(&dir);
            self.tree.dirs.remove(&dir);
        }
        Ok(())
    }

    fn drop_temp(&mut self, path: &str, temp_path: &Path, resumable: bool) {
        let _ = std::fs::remove_file(temp_path);
        if resumable {
            self.pending.push(Change::RemovePartial(path.to_string()));
        }
    }

    /// Why `path` (or a folder on its way) cannot be written here: a name this file system
    /// would take for another one already here.
    fn clash(&self, path: &str) -> Option<String> {
        let mut end = 0;
        while end < path.len() {
            end = path[end..].find('/').map_or(path.len(), |i| end + i);
            let name = &path[..end];
            if let Some(why) = self.names.clash(name, |key| self.twin(name, key)) {
                return Some(why);
            }
            end += 1;
        }
        None
    }

    /// The name in the tree, beside `name` (the folders on its way are the tree's own, or
    /// new), whose key is `key` and that is not `name`.
    fn twin(&self, name: &str, key: &str) -> Option<String> {
        let folding = self.names.folding();
        let twin = |held: &&String| held.as_str() != name && folding.key(held) == key;
        match name.rfind('/') {
            Some(i) => {
                let parent = &name[..i];
                let files = scan::below(&self.tree.files, parent).map(|(path, _)| path);
                scan::dirs_below(&self.tree.dirs, parent)
                    .chain(files)
                    .find(twin)
            }
            None => self
                .tree
                .dirs
                .iter()
                .chain(self.tree.files.keys())
                .find(twin),
        }
        .cloned()
    }

    /// Compares names as a file system that ignores what `folding` says would (tests).
    #[cfg(test)]
    pub(crate) fn set_folding(&mut self, folding: Folding) {
        self.names = Names::new(folding);
    }

    /// Marks a file failed, undoes what it wrote, and returns the reply for the source.
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
        // The folder's listing is not kept between sessions (it is the bulk of an idle agent's
        // memory with a large folder): the next session lists the folder again, and a finish
        // that comes before any listing lists it then.
        self.tree = Tree::default();
        self.names.reset(std::iter::empty());
        self.changed = true;
        self.listed = false;
        self.touched = Some(Default::default());
        self.watch = None;
        self.auditing = None;
        self.audited = None;
        self.digest = None;
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
        Ok(self.digest())
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

    /// An append that arrived whole while the source sends nothing (it waits for a proof) has
    /// its side file synced then, and its batch takes the bytes from there, not from its record.
    #[test]
    fn an_append_sealed_while_the_source_is_idle_is_applied_from_its_synced_side_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut receiver = Receiver::open(dir.path(), None).unwrap();
        receiver.begin_session();
        receiver.manifest().unwrap();
        let old = b"ticks of the morning;".to_vec();
        for message in crate::mirror::test_messages::send_file(0, "tick.ncd", &old) {
            receiver.handle(message).unwrap();
        }
        receiver.handle(Message::Finish).unwrap();
        let mut new = old.clone();
        new.extend(b" and of the afternoon");
        let blocks = vec![hash::block_hash(&new)];
        let append = crate::protocol::Append {
            id: 1,
            path: "tick.ncd".into(),
            from_len: old.len() as u64,
            from_hash: hash::file_hash(old.len() as u64, &[hash::block_hash(&old)]),
            size: new.len() as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            executable: false,
            hash: hash::file_hash(new.len() as u64, &blocks),
            tail_blocks: blocks,
        };
        receiver.handle(Message::Append(append)).unwrap();
        receiver
            .handle(Message::Data {
                id: 1,
                offset: old.len() as u64,
                payload: crate::protocol::Payload::Raw(new[old.len()..].to_vec()),
            })
            .unwrap();
        receiver.handle(Message::FileEnd { id: 1 }).unwrap();
        assert!(receiver.seal_while_idle().is_empty());
        assert!(receiver.join_seal().is_empty());
        assert!(
            matches!(
                &receiver.staged[..],
                [(_, Staged::Append { synced: true, .. })]
            ),
            "the side file is synced: {:?}",
            receiver.staged
        );
        assert_eq!(
            std::fs::read(dir.path().join("tick.ncd")).unwrap(),
            old,
            "nothing is applied before the finish"
        );
        let replies = receiver.handle(Message::Finish).unwrap();
        assert!(
            replies.contains(&Message::FileDone { id: 1 }),
            "{replies:?}"
        );
        assert_eq!(std::fs::read(dir.path().join("tick.ncd")).unwrap(), new);
    }

    #[test]
    fn a_change_the_feed_cannot_see_is_listed_once_the_safety_rescan_found_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (root, hidden) = (dir.path(), outside.path().join("x.dat"));
        std::fs::create_dir_all(root.join("db")).unwrap();
        std::fs::write(root.join("db/x.dat"), [1u8; 1_000]).unwrap();
        // A write through a hard link in another folder reaches no feed watching this one.
        std::fs::hard_link(root.join("db/x.dat"), &hidden).unwrap();
        let mut receiver = Receiver::open(root, None).unwrap();
        receiver.audit_every = std::time::Duration::ZERO;
        receiver.begin_session();
        let size = |receiver: &Receiver| {
            receiver.entries().find_map(|e| match e.kind {
                crate::protocol::EntryKind::File(meta) if e.path == "db/x.dat" => Some(meta.size),
                _ => None,
            })
        };
        receiver.manifest().unwrap();
        assert_eq!(size(&receiver), Some(1_000));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&hidden)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[2u8; 500]))
            .unwrap();
        // Each listing takes what the last walk found and starts the next; no listing is whole
        // after the first, so only the walk can bring the change in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size(&receiver) != Some(1_500) {
            assert!(
                std::time::Instant::now() < deadline,
                "the safety rescan never brought the change in"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
            receiver.manifest().unwrap();
        }
    }

    #[test]
    fn a_session_that_names_too_many_paths_to_keep_is_listed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut receiver = Receiver::open(dir.path(), None).unwrap();
        receiver.max_touched = 3;
        receiver.begin_session();
        receiver.manifest().unwrap();
        let folders = ["a", "b", "c", "d", "e"];
        for (i, path) in folders.iter().enumerate() {
            receiver
                .handle(Message::Mkdir {
                    path: path.to_string(),
                })
                .unwrap();
            assert_eq!(
                receiver.touched.is_some(),
                i < 3,
                "the paths are kept up to the bound, then none"
            );
        }
        receiver.handle(Message::Finish).unwrap();
        assert_eq!(
            receiver.touched.as_ref().map(|t| t.len()),
            Some(0),
            "the listing starts keeping them again"
        );
        let listed: Vec<_> = receiver.entries().map(|e| e.path).collect();
        assert_eq!(listed, folders, "the whole folder was listed");
        let walked = scan::scan(dir.path(), std::collections::BTreeMap::new())
            .unwrap()
            .tree;
        assert_eq!(receiver.digest(), crate::mirror::plan::digest(&walked));
    }

    #[test]
    fn a_twin_of_a_name_listed_before_the_session_is_named_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("db/Sub")).unwrap();
        std::fs::write(dir.path().join("Data.txt"), b"held").unwrap();
        std::fs::write(dir.path().join("db/Notes.txt"), b"held").unwrap();
        for i in 0..100 {
            std::fs::write(dir.path().join(format!("db/other-{i}.txt")), b"x").unwrap();
        }
        let mut receiver = Receiver::open(dir.path(), None).unwrap();
        receiver.set_folding(Folding {
            case: true,
            unicode: false,
        });
        receiver.manifest().unwrap();
        assert!(receiver.names.clash("db/other-1.txt", |_| None).is_none());
        for (id, twin, held) in [
            (1, "data.txt", "Data.txt"),
            (2, "db/NOTES.txt", "db/Notes.txt"),
            (3, "db/sub/new.txt", "db/Sub"),
            (4, "DB/Notes.txt", "db"),
        ] {
            let replies = receiver.handle(empty_file(id, twin)).unwrap();
            let why = failure(&replies).unwrap_or_else(|| panic!("{twin} is refused"));
            assert!(
                why.starts_with(&format!("{twin}: {held} is already on this server")),
                "{why}"
            );
            receiver.handle(Message::FileEnd { id }).unwrap();
        }
        for (id, path) in [(5, "db/Sub/new.txt"), (6, "db/notes.txt.bak")] {
            let replies = receiver.handle(empty_file(id, path)).unwrap();
            assert!(failure(&replies).is_none(), "{path}: {replies:?}");
            receiver.handle(Message::FileEnd { id }).unwrap();
        }
        receiver.handle(Message::Finish).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("Data.txt")).unwrap(),
            b"held",
            "the name held is kept"
        );
        assert!(dir.path().join("db/Sub/new.txt").exists());
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
