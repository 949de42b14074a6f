//! What a target lacks, given the source's tree and the target's: a pure function from two
//! trees to a list of operations, tested without disk or network.
//!
//! For each source file the plan picks the cheapest way to make the target's copy identical:
//! nothing; only its time or executable bit; an append from the target's current length when
//! the target holds a prefix of the source's file; or a new version built from blocks the
//! target already has anywhere in its tree (renames and copies cost no data), from a partial
//! temporary file left by an interrupted transfer, and from data for the rest.
//!
//! Modification times are compared at 100 ns, the resolution of NTFS, so a mirror between
//! file systems of different resolutions does not flap.

use crate::hash;
use crate::index::FileRecord;
use crate::protocol::{BLOCK_SIZE, Hash, MAX_BLOCKS_PER_MESSAGE, Partial, Reuse};

/// Bytes of reuse entries one `FileBegin` may carry (well inside the message limit).
const REUSE_BYTES: usize = 2 << 20;
use crate::scan::Tree;
use std::collections::{HashMap, HashSet};

mod delta;
pub use delta::{Delta, alike, changed_files};

/// One step of a plan, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove a file or a folder with everything in it.
    Delete(String),
    Mkdir(String),
    Send(SendFile),
    Append(AppendFile),
    SetMeta {
        path: String,
        mtime_ns: i128,
        executable: bool,
    },
}

/// A new version of a file, built in a temporary file on the target. Its record is the
/// source tree's (not copied into the plan: with a first mirror of a large folder, that would
/// be a second copy of every record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFile {
    pub path: String,
    pub reuse: Vec<Reuse>,
    pub resume_blocks: u64,
    /// Indexes of the blocks whose data must be sent, in order.
    pub send: BlockIndexes,
}

/// Indexes of blocks of a file in ascending order: a run (every block of a new file, those after
/// a resumed prefix) is held without a list (a first mirror of 300,000 files would hold one
/// list a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockIndexes {
    Run(std::ops::Range<u64>),
    List(Vec<u64>),
}

impl BlockIndexes {
    /// The blocks of `sorted`, a list in ascending order.
    pub fn from_sorted(sorted: Vec<u64>) -> BlockIndexes {
        match (sorted.first(), sorted.last()) {
            (Some(&first), Some(&last)) if last - first + 1 == sorted.len() as u64 => {
                BlockIndexes::Run(first..last + 1)
            }
            (None, _) | (_, None) => BlockIndexes::Run(0..0),
            _ => BlockIndexes::List(sorted),
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            BlockIndexes::Run(run) => run.end - run.start,
            BlockIndexes::List(list) => list.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (run, list) = match self {
            BlockIndexes::Run(run) => (run.clone(), &[][..]),
            BlockIndexes::List(list) => (0..0, &list[..]),
        };
        run.chain(list.iter().copied())
    }
}

/// Growth of a file the target holds a prefix of (to its size in the source tree's record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendFile {
    pub path: String,
    pub from_len: u64,
    pub from_hash: Hash,
    /// The size it grows to.
    pub size: u64,
}

impl AppendFile {
    /// Block hashes of `record` (the file's in the source tree) from the block holding
    /// `from_len` to the end.
    pub fn tail_blocks<'a>(&self, record: &'a FileRecord) -> &'a [Hash] {
        record
            .blocks
            .get((self.from_len / BLOCK_SIZE) as usize..)
            .unwrap_or_default()
    }
}

/// A plan and what it will cost.
///
/// Its operations are made again as they are sent ([`Plan::ops`]), not held: a first mirror of
/// 300,000 files would hold 300,000 operations and a copy of every path (36 MB). What the plan
/// keeps is a step of one byte for each of the source's changed files ([`changed_files`]), and
/// the operations of the few that are more than a whole send or a new time.
#[derive(Clone, Default)]
pub struct Plan {
    /// The trees it was made from (a clone shares every node of the original).
    source: Tree,
    target: Tree,
    /// The deletes that must come first, then the new folders.
    head: Vec<Op>,
    /// How each of the source's changed files goes, in the order of [`changed_files`].
    steps: Vec<Step>,
    /// The operations of the steps [`Step::Kept`], in order.
    kept: Vec<Op>,
    /// The deletes that come last.
    tail: Vec<Op>,
    /// Bytes of file data that must cross (before compression).
    pub data_bytes: u64,
    /// Files whose content will be written.
    pub files: u64,
    /// Bytes the target writes for them: a new version whole, an append by its end.
    pub written_bytes: u64,
}

/// Without the trees: a plan's debug output is its operations and counts, not every record.
impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("head", &self.head)
            .field("steps", &self.steps.len())
            .field("kept", &self.kept)
            .field("tail", &self.tail)
            .field("data_bytes", &self.data_bytes)
            .field("files", &self.files)
            .field("written_bytes", &self.written_bytes)
            .finish_non_exhaustive()
    }
}

/// What becomes of one of the source's changed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing: the target's copy is the same to 100 ns.
    Nothing,
    /// Its time or executable bit, from the source's record ([`Op::SetMeta`]).
    Meta,
    /// Its every block, as data ([`Op::Send`] with nothing reused or resumed).
    Whole,
    /// The next of [`Plan::kept`].
    Kept,
}

/// One operation of a plan, as [`Plan::ops`] makes it.
#[derive(Debug)]
pub struct Planned<'a> {
    pub op: std::borrow::Cow<'a, Op>,
    /// For a send or an append, the file's path and record in the source's tree.
    pub file: Option<(&'a str, &'a FileRecord)>,
}

impl Plan {
    /// Operations it holds: about the steps of the target's batch.
    pub fn operations(&self) -> usize {
        self.head.len() + self.steps.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_empty()
            && self.tail.is_empty()
            && self.steps.iter().all(|s| *s == Step::Nothing)
    }

    /// The operations, in the order they must be applied, made from the steps as they are
    /// asked for.
    pub fn ops(&self) -> impl Iterator<Item = Planned<'_>> + '_ {
        use std::borrow::Cow;
        fn unfiled(op: &Op) -> Planned<'_> {
            Planned {
                op: Cow::Borrowed(op),
                file: None,
            }
        }
        let mut kept = self.kept.iter();
        // With no step, the trees are not walked (a plan against an unchanged target).
        let changed = (!self.steps.is_empty())
            .then(|| changed_files(&self.source, &self.target))
            .into_iter()
            .flatten();
        let files = self
            .steps
            .iter()
            .zip(changed)
            .filter_map(move |(step, (path, record))| {
                let op = match step {
                    Step::Nothing => return None,
                    Step::Meta => Cow::Owned(Op::SetMeta {
                        path: path.to_string(),
                        mtime_ns: record.stamp.mtime_ns,
                        executable: record.stamp.executable,
                    }),
                    Step::Whole => Cow::Owned(Op::Send(SendFile {
                        path: path.to_string(),
                        reuse: Vec::new(),
                        resume_blocks: 0,
                        send: BlockIndexes::Run(0..record.blocks.len() as u64),
                    })),
                    Step::Kept => Cow::Borrowed(kept.next().expect("a kept operation a step")),
                };
                let file = matches!(&*op, Op::Send(_) | Op::Append(_)).then_some((path, record));
                Some(Planned { op, file })
            });
        self.head
            .iter()
            .map(unfiled)
            .chain(files)
            .chain(self.tail.iter().map(unfiled))
    }

    /// Every operation, made whole.
    #[cfg(test)]
    pub fn op_list(&self) -> Vec<Op> {
        self.ops().map(|p| p.op.into_owned()).collect()
    }

    /// Adds the operation of the next changed file (`None`: nothing to do).
    fn step(&mut self, op: Option<Op>, record: &FileRecord) {
        let step = match &op {
            None => Step::Nothing,
            Some(Op::SetMeta {
                mtime_ns,
                executable,
                ..
            }) if *mtime_ns == record.stamp.mtime_ns && *executable == record.stamp.executable => {
                Step::Meta
            }
            Some(Op::Send(send))
                if send.reuse.is_empty()
                    && send.resume_blocks == 0
                    && send.send == BlockIndexes::Run(0..record.blocks.len() as u64) =>
            {
                Step::Whole
            }
            Some(_) => Step::Kept,
        };
        if step == Step::Kept {
            self.kept.extend(op);
        }
        self.steps.push(step);
    }
}

/// Modification time at the resolution every supported file system keeps.
pub fn coarse_mtime(mtime_ns: i128) -> i128 {
    mtime_ns.div_euclid(100)
}

/// Plans what `target` lacks to be identical to `source`.
///
/// `tail_hash(path, len)` returns the hash of the source file's bytes from the start of the
/// block holding `len` up to `len` (one partial-block read), or `None` if it cannot be read;
/// it is asked only when `len` is not a block boundary.
///
/// The plan walks only the entries in which the trees differ ([`Delta`]): an entry both hold
/// alike gives no operation. What it must know of the rest (whether a path exists, where a
/// block can be found), it asks the whole trees.
pub fn plan(
    source: &Tree,
    target: &Tree,
    partials: &[Partial],
    tail_hash: &mut dyn FnMut(&str, u64) -> Option<Hash>,
) -> Plan {
    let delta = Delta::between(source, target);
    let mut plan = Plan {
        source: source.clone(),
        target: target.clone(),
        ..Plan::default()
    };
    let mut deletes_first = Vec::new();
    let mut deletes_last = Vec::new();

    // Type conflicts must go before anything is created in their place, and so must a
    // journal or WAL beside a database the source sends whole: SQLite would apply it to the new
    // copy, which it does not belong to.
    for &(path, _) in &delta.target.files {
        let stale_companion = crate::snapshot::companion_of(path)
            .is_some_and(|db| source.files.contains_key(db) && !source.files.contains_key(path));
        if source.dirs.contains(path) || stale_companion {
            deletes_first.push(path.to_string());
        } else if !source.files.contains_key(path) && !under_deleted(&deletes_first, path) {
            deletes_last.push(path.to_string());
        }
    }
    for &dir in delta.target.dirs.iter().rev() {
        if source.files.contains_key(dir) {
            deletes_first.push(dir.to_string());
        } else if !source.dirs.contains(dir) {
            deletes_last.push(dir.to_string());
        }
    }
    // A name that differs from a new name of the source only in case or Unicode form is the
    // same file on a Windows or macOS target: the old name must go first (deleted last, it
    // would take the new file with it there), and nothing is copied from it.
    let fold = |p: &str| {
        super::fold::Folding {
            case: true,
            unicode: true,
        }
        .key(p)
    };
    // The names deleted are folded and looked for among the new ones, not the other way: a
    // first mirror of 300,000 files deletes nothing, and a folded copy of every new name would
    // be 25 MB.
    let mut renamed = Vec::new();
    if !deletes_last.is_empty() {
        let deleted: std::collections::HashSet<String> =
            deletes_last.iter().map(|p| fold(p)).collect();
        let taken: std::collections::HashSet<String> = delta
            .source_files()
            .map(|f| f.0)
            .filter(|p| !target.files.contains_key(*p))
            .chain(delta.source_dirs.iter().copied())
            .map(fold)
            .filter(|folded| deleted.contains(folded))
            .collect();
        let (early, late): (Vec<String>, Vec<String>) = deletes_last
            .into_iter()
            .partition(|p| taken.contains(&fold(p)));
        deletes_last = late;
        renamed = early;
        deletes_first.extend(renamed.iter().cloned());
    }
    deletes_first.sort();
    deletes_first.dedup();
    plan.head
        .reserve_exact(deletes_first.len() + delta.source_dirs.len());
    plan.head
        .extend(deletes_first.iter().cloned().map(Op::Delete));
    for &dir in &delta.source_dirs {
        plan.head.push(Op::Mkdir(dir.to_string()));
    }

    let without_renamed;
    let reusable = if renamed.is_empty() {
        target
    } else {
        let mut t = target.clone();
        let gone: Vec<String> = t
            .files
            .keys()
            .filter(|p| {
                renamed.iter().any(|r| {
                    *p == r
                        || p.strip_prefix(r.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                })
            })
            .cloned()
            .collect();
        for path in gone {
            t.files.remove(&path);
        }
        without_renamed = t;
        &without_renamed
    };
    // Where each block lies on the target, found when a file first needs it (an append or a
    // change of time needs none), for the blocks the changed files might take from elsewhere.
    let mut located = None;
    let wanted = || wanted_blocks(&delta, target);
    let partials: HashMap<&str, &Partial> = partials.iter().map(|p| (p.path.as_str(), p)).collect();
    for (path, record) in delta.source_files() {
        let theirs = their_file(target, path);
        if let Some(theirs) = theirs
            && theirs.hash == record.hash
            && theirs.stamp.size == record.stamp.size
        {
            let op = (coarse_mtime(theirs.stamp.mtime_ns) != coarse_mtime(record.stamp.mtime_ns)
                || theirs.stamp.executable != record.stamp.executable)
                .then(|| Op::SetMeta {
                    path: path.to_string(),
                    mtime_ns: record.stamp.mtime_ns,
                    executable: record.stamp.executable,
                });
            plan.step(op, record);
            continue;
        }
        plan.files += 1;
        let tail_blocks = theirs.map_or(0, |t| {
            (record.blocks.len() as u64).saturating_sub(t.stamp.size / BLOCK_SIZE)
        });
        if let Some(theirs) = theirs
            && tail_blocks <= MAX_BLOCKS_PER_MESSAGE as u64
            && is_prefix(path, record, theirs, tail_hash)
        {
            plan.data_bytes += record.stamp.size - theirs.stamp.size;
            plan.written_bytes += record.stamp.size - theirs.stamp.size;
            let op = Op::Append(AppendFile {
                path: path.to_string(),
                from_len: theirs.stamp.size,
                from_hash: theirs.hash,
                size: record.stamp.size,
            });
            plan.step(Some(op), record);
            continue;
        }
        plan.written_bytes += record.stamp.size;
        let resume_blocks = partials
            .get(path)
            .filter(|p| p.hash == record.hash)
            .map_or(0, |p| p.verified_blocks.min(record.blocks.len() as u64));
        let mut reuse = Vec::new();
        let mut send = Vec::new();
        for (i, block) in record
            .blocks
            .iter()
            .enumerate()
            .skip(resume_blocks as usize)
        {
            let i = i as u64;
            let same_place = theirs.and_then(|t| t.blocks.get(i as usize)) == Some(block);
            if same_place {
                reuse.push(Reuse {
                    index: i,
                    from_path: path.to_string(),
                    from_index: i,
                });
            } else if let Some((from_path, from_index)) = located
                .get_or_insert_with(|| locate_blocks(reusable, source, &wanted()))
                .get(block)
            {
                reuse.push(Reuse {
                    index: i,
                    from_path: (*from_path).to_string(),
                    from_index: *from_index,
                });
            } else {
                plan.data_bytes += hash::block_len(record.stamp.size, i);
                send.push(i);
            }
        }
        // The reuse list travels in the FileBegin message: what does not fit is sent as data.
        let mut budget = REUSE_BYTES;
        let fits = reuse
            .iter()
            .take_while(|r| {
                let cost = r.from_path.len() + 24;
                budget = budget.saturating_sub(cost);
                budget > 0
            })
            .count()
            .min(MAX_BLOCKS_PER_MESSAGE);
        for extra in reuse.drain(fits..) {
            plan.data_bytes += hash::block_len(record.stamp.size, extra.index);
            send.push(extra.index);
        }
        send.sort_unstable();
        let op = Op::Send(SendFile {
            path: path.to_string(),
            reuse,
            resume_blocks,
            send: BlockIndexes::from_sorted(send),
        });
        plan.step(Some(op), record);
    }
    plan.tail = deletes_last.into_iter().map(Op::Delete).collect();
    plan
}

/// The target's file at `path`, if it holds a file there (not a folder).
fn their_file<'t>(target: &'t Tree, path: &str) -> Option<&'t FileRecord> {
    target
        .files
        .get(path)
        .filter(|_| !target.dirs.contains(path))
}

fn under_deleted(deleted: &[String], path: &str) -> bool {
    deleted.iter().any(|d| {
        path.len() > d.len() && path.starts_with(d.as_str()) && path.as_bytes()[d.len()] == b'/'
    })
}

/// The blocks of the source's changed files that are not at the same place in the target's
/// file of the same path: those a plan may look for elsewhere on the target. A map of every
/// block the target holds would be 26 MB at 300,000 files, for a change of one.
fn wanted_blocks<'a>(delta: &Delta<'a>, target: &Tree) -> HashSet<&'a Hash> {
    if target.files.is_empty() {
        return HashSet::new();
    }
    let mut wanted = HashSet::new();
    for (path, record) in delta.source_files() {
        let theirs = their_file(target, path);
        if theirs.is_some_and(|t| t.hash == record.hash && t.stamp.size == record.stamp.size) {
            continue;
        }
        for (i, block) in record.blocks.iter().enumerate() {
            if theirs.and_then(|t| t.blocks.get(i)) != Some(block) {
                wanted.insert(block);
            }
        }
    }
    wanted
}

/// Where on the target each block hash of `wanted` can be found (first occurrence wins).
/// Files the session rewrites are left out: they may be replaced before a later file copies
/// from them (a rotated log: `app.log` becomes `app.log.1` and a new `app.log` starts).
/// Files it deletes stay in: deletes come last.
fn locate_blocks<'a>(
    target: &'a Tree,
    source: &Tree,
    wanted: &HashSet<&Hash>,
) -> HashMap<&'a Hash, (&'a str, u64)> {
    let mut located = HashMap::new();
    if wanted.is_empty() {
        return located;
    }
    for (path, record) in &target.files {
        if source
            .files
            .get(path)
            .is_some_and(|ours| ours.hash != record.hash || ours.stamp.size != record.stamp.size)
        {
            continue;
        }
        for (i, block) in record.blocks.iter().enumerate() {
            if wanted.contains(block) {
                located.entry(block).or_insert((path.as_str(), i as u64));
            }
        }
    }
    located
}

/// Whether the target's file is the first `theirs.size` bytes of the source's.
fn is_prefix(
    path: &str,
    ours: &FileRecord,
    theirs: &FileRecord,
    tail_hash: &mut dyn FnMut(&str, u64) -> Option<Hash>,
) -> bool {
    let len = theirs.stamp.size;
    if len == 0 || len >= ours.stamp.size {
        return false;
    }
    let whole = (len / BLOCK_SIZE) as usize;
    if ours.blocks[..whole] != theirs.blocks[..whole.min(theirs.blocks.len())] {
        return false;
    }
    let mut blocks = ours.blocks[..whole].to_vec();
    if len % BLOCK_SIZE != 0 {
        match tail_hash(path, len) {
            Some(tail) => blocks.push(tail),
            None => return false,
        }
    }
    hash::file_hash(len, &blocks) == theirs.hash
}

/// Deleting fewer files than this never needs a confirmation, whatever their share.
pub const MASS_DELETE_MIN: usize = 10;

/// What earlier syncs within the guard's window deleted on a target (see
/// `engine::deletions`): the files they deleted, and the most the target held before any of
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Earlier {
    pub deleted: usize,
    pub held: usize,
}

/// The files of `target` that mirroring `source` deletes.
pub fn doomed(source: &Tree, target: &Tree) -> usize {
    Delta::between(source, target)
        .target
        .files
        .iter()
        .filter(|(p, _)| !source.files.contains_key(*p))
        .count()
}

/// Whether a sync that deletes `now` of the `held` files a target holds ([`doomed`]) would
/// bring the files deleted on it, with what `earlier` syncs of the window deleted, to more than
/// `share` of the files it held (and at least [`MASS_DELETE_MIN`]): the sign of a wiped or
/// unmounted source, which must not wipe every backup, at once or a few files per sync.
/// Returns (files deleted within the window with this sync's, files the target held before
/// them).
pub fn mass_delete(
    now: usize,
    held: usize,
    share: f64,
    earlier: Earlier,
) -> Option<(usize, usize)> {
    let held = held.max(earlier.held);
    let doomed = now + earlier.deleted;
    (now > 0 && doomed >= MASS_DELETE_MIN && doomed as f64 > share * held as f64)
        .then_some((doomed, held))
}

/// A digest of a tree: folders, and files with size, time (at 100 ns), executable bit and hash.
/// Two trees with the same digest are identical for the mirror.
///
/// The entries are laid out in a buffer and hashed a large piece at a time (the same bytes as
/// one update per field, which costs more than the hashing with a few hundred thousand files).
pub fn digest(tree: &Tree) -> Hash {
    const PIECE: usize = 64 << 10;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = Vec::with_capacity(PIECE + 4096);
    let mut flush = |buffer: &mut Vec<u8>, force: bool| {
        if force || buffer.len() >= PIECE {
            hasher.update(buffer);
            buffer.clear();
        }
    };
    for dir in &tree.dirs {
        buffer.push(b'D');
        buffer.extend_from_slice(&(dir.len() as u64).to_le_bytes());
        buffer.extend_from_slice(dir.as_bytes());
        flush(&mut buffer, false);
    }
    for (path, record) in &tree.files {
        buffer.push(b'F');
        buffer.extend_from_slice(&(path.len() as u64).to_le_bytes());
        buffer.extend_from_slice(path.as_bytes());
        buffer.extend_from_slice(&record.stamp.size.to_le_bytes());
        buffer.extend_from_slice(&coarse_mtime(record.stamp.mtime_ns).to_le_bytes());
        buffer.push(record.stamp.executable as u8);
        buffer.extend_from_slice(&record.hash);
        flush(&mut buffer, false);
    }
    flush(&mut buffer, true);
    *hasher.finalize().as_bytes()
}

/// The entries of a tree's manifest, made one at a time as they are sent.
pub fn entries(tree: &Tree) -> impl Iterator<Item = crate::protocol::Entry> + '_ {
    use crate::protocol::{Entry, EntryKind, FileMeta};
    let dirs = tree.dirs.iter().map(|d| Entry {
        path: d.clone(),
        kind: EntryKind::Dir,
    });
    let files = tree.files.iter().map(|(path, r)| Entry {
        path: path.clone(),
        kind: EntryKind::File(FileMeta {
            size: r.stamp.size,
            mtime_ns: r.stamp.mtime_ns,
            executable: r.stamp.executable,
            hash: r.hash,
            blocks: r.blocks.to_vec(),
        }),
    });
    dirs.chain(files)
}

/// Adds manifest entries to a tree (the source's view of a target).
pub fn add_entries(tree: &mut impl crate::scan::Sink, entries: Vec<crate::protocol::Entry>) {
    for entry in entries {
        add_entry(tree, entry);
    }
}

/// Adds one manifest entry to a tree.
pub fn add_entry(tree: &mut impl crate::scan::Sink, entry: crate::protocol::Entry) {
    use crate::protocol::EntryKind;
    match entry.kind {
        EntryKind::Dir => tree.dir(entry.path),
        EntryKind::File(meta) => tree.file(
            entry.path,
            FileRecord {
                stamp: crate::fs::Stamp {
                    size: meta.size,
                    mtime_ns: meta.mtime_ns,
                    file_id: 0,
                    executable: meta.executable,
                },
                hash: meta.hash,
                blocks: crate::index::blocks(meta.blocks),
                racy: false,
            },
        ),
    }
}

/// What each file the plan sends costs: the blocks of a new version, the bytes of an append.
#[cfg(test)]
fn sent_paths(plan: &Plan) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for op in plan.op_list() {
        match op {
            Op::Send(s) => {
                out.insert(s.path.clone(), s.send.len());
            }
            Op::Append(a) => {
                out.insert(a.path.clone(), a.size - a.from_len);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Stamp;

    fn record(bytes: &[u8], mtime_ns: i128) -> FileRecord {
        let (blocks, n) = hash::hash_blocks(&mut &bytes[..], bytes.len() as u64).unwrap();
        FileRecord {
            stamp: Stamp {
                size: n,
                mtime_ns,
                file_id: 0,
                executable: false,
            },
            hash: hash::file_hash(n, &blocks),
            blocks: crate::index::blocks(blocks),
            racy: false,
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn tree(files: &[(&str, &[u8])], dirs: &[&str]) -> Tree {
        Tree {
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            files: files
                .iter()
                .map(|(p, b)| (p.to_string(), record(b, 1000)))
                .collect(),
        }
    }

    fn no_tail(_: &str, _: u64) -> Option<Hash> {
        None
    }

    #[test]
    fn blocks_of_a_file_rewritten_in_the_same_session_are_not_copied() {
        let old = data((BLOCK_SIZE * 2) as usize, 6);
        let new = data((BLOCK_SIZE * 2) as usize, 7);
        // Log rotation: app.log moved to app.log.1, and app.log starts again.
        let source = tree(&[("app.log", &new), ("app.log.1", &old)], &[]);
        let target = tree(&[("app.log", &old)], &[]);
        let p = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(
            sent_paths(&p)["app.log.1"],
            2,
            "app.log is replaced in this session; copying from it could read the new version"
        );
    }

    #[test]
    fn a_source_that_lost_most_files_needs_confirmation() {
        let files: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| (format!("f{i}"), data(10, i as u8)))
            .collect();
        let all: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let target = tree(&all, &[]);
        // The guard as a session asks it, at the default share.
        let guard = |source: &Tree, target: &Tree, earlier: Earlier| {
            mass_delete(doomed(source, target), target.files.len(), 0.5, earlier)
        };
        assert_eq!(
            guard(&Tree::default(), &target, Earlier::default()),
            Some((40, 40)),
            "an empty source"
        );
        assert_eq!(
            guard(&tree(&all[..25], &[]), &target, Earlier::default()),
            None,
            "15 of 40 go: fine"
        );
        assert_eq!(
            guard(&tree(&all[..15], &[]), &target, Earlier::default()),
            Some((25, 40))
        );
        let few = tree(&all[..3], &[]);
        assert_eq!(
            guard(&Tree::default(), &few, Earlier::default()),
            None,
            "a tiny folder may be emptied"
        );
        // Emptied a few files per sync: the deletions of the window add up.
        let earlier = Earlier {
            deleted: 12,
            held: 40,
        };
        let left = tree(&all[..28], &[]);
        assert_eq!(
            guard(&tree(&all[..20], &[]), &left, earlier),
            None,
            "20 of 40 within the window: not more than half"
        );
        assert_eq!(
            guard(&tree(&all[..19], &[]), &left, earlier),
            Some((21, 40))
        );
        assert_eq!(
            guard(
                &left,
                &left,
                Earlier {
                    deleted: 39,
                    held: 40
                }
            ),
            None,
            "a sync that deletes nothing is never held back"
        );
        assert_eq!(
            guard(
                &tree(&all[..1], &[]),
                &few,
                Earlier {
                    deleted: 8,
                    held: 11
                }
            ),
            Some((10, 11)),
            "a folder emptied to its last files: the minimum counts the window too"
        );
    }

    #[test]
    fn the_digest_is_the_hash_of_every_entry_in_order() {
        // The definition both sides share (protocol version 4), field by field.
        let reference = |tree: &Tree| {
            let mut hasher = blake3::Hasher::new();
            for dir in &tree.dirs {
                hasher.update(b"D");
                hasher.update(&(dir.len() as u64).to_le_bytes());
                hasher.update(dir.as_bytes());
            }
            for (path, record) in &tree.files {
                hasher.update(b"F");
                hasher.update(&(path.len() as u64).to_le_bytes());
                hasher.update(path.as_bytes());
                hasher.update(&record.stamp.size.to_le_bytes());
                hasher.update(&coarse_mtime(record.stamp.mtime_ns).to_le_bytes());
                hasher.update(&[record.stamp.executable as u8]);
                hasher.update(&record.hash);
            }
            *hasher.finalize().as_bytes()
        };
        let mut big = Tree::default();
        for i in 0..5_000u32 {
            big.dirs.insert(format!("db/{}", i % 97));
            big.files.insert(
                format!("db/{}/{i}.ncd", i % 97),
                FileRecord {
                    stamp: crate::fs::Stamp {
                        size: u64::from(i) * 7,
                        mtime_ns: 1_700_000_000_123_456_789 + i128::from(i),
                        file_id: 0,
                        executable: i % 5 == 0,
                    },
                    hash: [(i % 251) as u8; 32],
                    blocks: Default::default(),
                    racy: false,
                },
            );
        }
        for tree in [Tree::default(), big] {
            assert_eq!(digest(&tree), reference(&tree));
        }
    }

    #[test]
    fn identical_trees_need_nothing() {
        let a = data(300_000, 1);
        let t = tree(&[("x", &a)], &["d"]);
        assert!(plan(&t, &t.clone(), &[], &mut no_tail).is_empty());
        assert_eq!(digest(&t), digest(&t.clone()));
    }

    #[test]
    fn an_append_sends_only_the_new_bytes() {
        let full = data((BLOCK_SIZE * 3 + 500) as usize, 2);
        let old_len = (BLOCK_SIZE * 2 + 100) as usize;
        let source = tree(&[("tick", &full)], &[]);
        let target = tree(&[("tick", &full[..old_len])], &[]);
        let mut tail = |_: &str, len: u64| {
            let start = (len - len % BLOCK_SIZE) as usize;
            Some(hash::block_hash(&full[start..len as usize]))
        };
        let plan = plan(&source, &target, &[], &mut tail);
        assert_eq!(
            plan.data_bytes,
            (full.len() - old_len) as u64,
            "append costs what was appended"
        );
        assert!(matches!(&plan.op_list()[..], [Op::Append(a)] if a.from_len == old_len as u64));
    }

    #[test]
    fn a_plan_keeps_one_step_a_file_and_makes_its_operations_again_in_order() {
        // A first mirror: every file is a whole send, kept as a step, not as an operation.
        let contents: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| (format!("d{}/f{i:02}", i % 3), data(10 + i, i as u8)))
            .collect();
        let files: Vec<(&str, &[u8])> = contents
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let source = tree(&files, &["d0", "d1", "d2"]);
        let first = plan(&source, &Tree::default(), &[], &mut no_tail);
        assert!(first.kept.is_empty(), "nothing but whole sends: {first:?}");
        assert_eq!(first.steps, vec![Step::Whole; 40]);
        assert_eq!(first.files, 40);
        let ops = first.op_list();
        assert_eq!(ops[..3], ["d0", "d1", "d2"].map(|d| Op::Mkdir(d.into())));
        let mut sent: Vec<&str> = files.iter().map(|f| f.0).collect();
        sent.sort();
        for (op, path) in ops[3..].iter().zip(&sent) {
            assert_eq!(
                op,
                &Op::Send(SendFile {
                    path: path.to_string(),
                    reuse: vec![],
                    resume_blocks: 0,
                    send: BlockIndexes::Run(0..1),
                })
            );
        }
        assert_eq!(ops.len(), 3 + 40);

        // Every kind at once, the kept operations among the steps in the order of the paths.
        let grown = data((BLOCK_SIZE * 2 + 300) as usize, 9);
        let old_len = (BLOCK_SIZE + 50) as usize;
        let moved = data((BLOCK_SIZE * 2) as usize, 4);
        let mut source = tree(
            &[
                ("a-new", b"new"),
                ("b-grown", &grown),
                ("c-same", b"same"),
                ("d-moved", &moved),
                ("e-touched", b"touched"),
                ("f-new", b"new too"),
            ],
            &[],
        );
        source.files.get_mut("e-touched").unwrap().stamp.mtime_ns = 5_000;
        let target = tree(
            &[
                ("b-grown", &grown[..old_len]),
                ("c-same", b"same"),
                ("e-touched", b"touched"),
                ("old-name", &moved),
                ("z-gone", b"gone"),
            ],
            &[],
        );
        let mut tail = |_: &str, len: u64| {
            let start = (len - len % BLOCK_SIZE) as usize;
            Some(hash::block_hash(&grown[start..len as usize]))
        };
        let p = plan(&source, &target, &[], &mut tail);
        assert_eq!(
            p.steps,
            [Step::Whole, Step::Kept, Step::Kept, Step::Meta, Step::Whole]
        );
        let planned: Vec<(Op, Option<&str>)> = p
            .ops()
            .map(|planned| (planned.op.into_owned(), planned.file.map(|f| f.0)))
            .collect();
        let names: Vec<(&str, Option<&str>)> = planned
            .iter()
            .map(|(op, file)| {
                let kind = match op {
                    Op::Send(s) if s.reuse.is_empty() => "send",
                    Op::Send(_) => "copy",
                    Op::Append(_) => "append",
                    Op::SetMeta { .. } => "time",
                    Op::Delete(_) => "delete",
                    Op::Mkdir(_) => "mkdir",
                };
                (kind, *file)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("send", Some("a-new")),
                ("append", Some("b-grown")),
                ("copy", Some("d-moved")),
                ("time", None),
                ("send", Some("f-new")),
                ("delete", None),
                ("delete", None),
            ]
        );
        assert!(
            matches!(&planned[3].0, Op::SetMeta { path, mtime_ns: 5_000, .. } if path == "e-touched")
        );
        assert!(matches!(&planned[5].0, Op::Delete(p) if p == "old-name"));
        assert!(matches!(&planned[6].0, Op::Delete(p) if p == "z-gone"));
        // Made again, the operations are the same.
        assert_eq!(p.op_list(), p.op_list());
    }

    #[test]
    fn a_rename_reuses_the_target_blocks() {
        let a = data((BLOCK_SIZE * 2) as usize, 3);
        let source = tree(&[("new/name", &a)], &["new"]);
        let target = tree(&[("old", &a)], &[]);
        let plan = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(plan.data_bytes, 0, "a renamed file costs no data");
        assert_eq!(
            plan.op_list().last(),
            Some(&Op::Delete("old".into())),
            "deletes come last"
        );
        assert_eq!(plan.op_list()[0], Op::Mkdir("new".into()));
    }

    #[test]
    fn a_copy_and_a_moved_block_are_found_anywhere_on_the_target() {
        let (a, b) = (data(BLOCK_SIZE as usize, 1), data(BLOCK_SIZE as usize, 2));
        let ab = [&a[..], &b[..]].concat();
        let ba = [&b[..], &a[..]].concat();
        // `kept` is the same on both sides: its blocks are found all the same.
        let source = tree(&[("copy", &a), ("kept", &ab), ("swapped", &ba)], &[]);
        let target = tree(&[("kept", &ab), ("swapped", &ab)], &[]);
        let plan = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(plan.data_bytes, 0, "every block is on the target already");
        let Some(Op::Send(copy)) = plan
            .op_list()
            .into_iter()
            .find(|op| matches!(op, Op::Send(s) if s.path == "copy"))
        else {
            panic!("the copy is made on the target: {plan:?}");
        };
        assert_eq!(copy.reuse[0].from_path, "kept");
    }

    #[test]
    fn a_case_only_rename_deletes_the_old_name_first_and_copies_nothing_from_it() {
        let a = data((BLOCK_SIZE * 2) as usize, 7);
        let source = tree(
            &[("Data/report.docx", &a), ("Data/notes.txt", &a)],
            &["Data"],
        );
        let target = tree(
            &[("Data/Report.docx", &a), ("Data/notes.txt", &a)],
            &["Data"],
        );
        let p = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(
            p.op_list()[0],
            Op::Delete("Data/Report.docx".into()),
            "{p:?}"
        );
        assert!(
            p.op_list().iter().all(|op| !matches!(op, Op::Send(s) if s.reuse.iter().any(|r| r.from_path == "Data/Report.docx"))),
            "nothing is copied from the old name: {p:?}"
        );
        assert_eq!(
            p.data_bytes, 0,
            "the blocks still come from the unchanged twin"
        );

        let source = tree(&[("data/x", &a)], &["data"]);
        let target = tree(&[("Data/x", &a)], &["Data"]);
        let p = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(
            p.op_list()[0],
            Op::Delete("Data".into()),
            "a renamed folder goes first: {p:?}"
        );

        let both = tree(&[("Data.txt", &a), ("data.txt", &a)], &[]);
        let p = plan(&both, &tree(&[("Data.txt", &a)], &[]), &[], &mut no_tail);
        assert!(
            !p.op_list().contains(&Op::Delete("Data.txt".into())),
            "a name the source still has is never deleted: {p:?}"
        );
    }

    #[test]
    fn a_stale_journal_beside_a_database_goes_before_the_database_comes() {
        let old = data(5000, 1);
        let new = data(5000, 2);
        let source = tree(&[("db/nt.sqlite", &new)], &["db"]);
        let target = tree(
            &[
                ("db/nt.sqlite", &old),
                ("db/nt.sqlite-wal", &old),
                ("db/nt.sqlite-journal", &old),
            ],
            &["db"],
        );
        let p = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(
            &p.op_list()[..2],
            [
                Op::Delete("db/nt.sqlite-journal".into()),
                Op::Delete("db/nt.sqlite-wal".into())
            ],
            "SQLite would replay them into the new copy: {p:?}"
        );
    }

    #[test]
    fn an_edit_in_the_middle_sends_one_block_and_a_partial_resumes() {
        let a = data((BLOCK_SIZE * 4) as usize, 4);
        let mut b = a.clone();
        b[(BLOCK_SIZE + 5) as usize] ^= 0xff;
        let source = tree(&[("f", &b)], &[]);
        let target = tree(&[("f", &a)], &[]);
        let p = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(sent_paths(&p)["f"], 1, "only the edited block crosses");

        let partial = Partial {
            path: "f".into(),
            hash: source.files["f"].hash,
            verified_blocks: 3,
        };
        let p = plan(&source, &Tree::default(), &[partial], &mut no_tail);
        assert!(
            matches!(&p.op_list()[..], [Op::Send(s)] if s.resume_blocks == 3 && s.send == BlockIndexes::Run(3..4))
        );
    }

    #[test]
    fn blocks_in_a_run_are_held_as_one_and_others_as_a_list() {
        let run = BlockIndexes::from_sorted(vec![2, 3, 4]);
        assert_eq!(run, BlockIndexes::Run(2..5));
        assert_eq!(
            (run.len(), run.iter().collect::<Vec<_>>()),
            (3, vec![2, 3, 4])
        );
        let list = BlockIndexes::from_sorted(vec![0, 2, 3]);
        assert_eq!(list, BlockIndexes::List(vec![0, 2, 3]));
        assert_eq!(
            (list.len(), list.iter().collect::<Vec<_>>()),
            (3, vec![0, 2, 3])
        );
        let none = BlockIndexes::from_sorted(Vec::new());
        assert!(none.is_empty() && none.iter().next().is_none());
    }

    #[test]
    fn type_conflicts_are_deleted_first_and_times_only_set_meta() {
        let a = data(10, 5);
        let source = tree(&[("x", &a)], &["y"]);
        let mut target = tree(&[("y", &a)], &["x"]);
        target.files.get_mut("y").unwrap().stamp.mtime_ns = 5;
        let p = plan(&source, &target, &[], &mut no_tail);
        assert_eq!(p.op_list()[0], Op::Delete("x".into()));
        assert_eq!(p.op_list()[1], Op::Delete("y".into()));
        assert_eq!(p.op_list()[2], Op::Mkdir("y".into()));

        let mut target = source.clone();
        target.files.get_mut("x").unwrap().stamp.mtime_ns = 99_999;
        let p = plan(&source, &target, &[], &mut no_tail);
        assert!(matches!(&p.op_list()[..], [Op::SetMeta { .. }]), "{p:?}");
    }
}
