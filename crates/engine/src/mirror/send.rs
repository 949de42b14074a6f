//! The source's end of a mirror session: asks a target for its manifest, and streams the
//! operations of its plan, reading each block through a [`BlockSource`] shared by every
//! target of the push.
//!
//! The block source reads a block once (a file truncated since the scan is abandoned for this
//! pass; a block that changed is caught by the target, which checks every block against the
//! hash the scan recorded, so no mix of two versions ever takes a final name), compresses it
//! once when that makes it smaller, and keeps it in a bounded cache so every
//! other target that needs it gets the same bytes without reading the disk again. Each target
//! pulls from the cache at its own pace with a bounded read-ahead: a slow target falls out of
//! the cache window and reads for itself, it never holds the others back.

use crate::event::Event;
use crate::fs;
use crate::guard::Gate;
use crate::hash;
use crate::index::FileRecord;
use crate::mirror::plan::{Op, Plan};
use crate::protocol::{
    Append, BLOCK_SIZE, FileBegin, Hash, MAX_BLOCKS_PER_MESSAGE, Message, Partial, Payload, Refusal,
};
use crate::rate::RateLimit;
use crate::scan::Tree;
use crate::transport::{Connection, ConnectionReceiver, TransportError};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{OnceCell, broadcast};

/// Blocks kept for other targets (128 KiB each: 64 MiB).
const CACHE_BLOCKS: usize = 512;
/// Blocks each target reads ahead of what it sends.
const READ_AHEAD: usize = 8;
/// After this many blocks of a file that did not compress, stop trying for that file.
const GIVE_UP_COMPRESSING: u32 = 3;
/// Most entries a target's manifest may have (files and folders).
const MAX_MANIFEST_ENTRIES: usize = 10_000_000;
/// zstd level: fast, because the link is rarely slower than this on a trading PC's CPU.
const ZSTD_LEVEL: i32 = 1;

/// Why a session with a target ended before it finished.
#[derive(Debug, Error)]
pub enum SendError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the target refused: {reason}")]
    Refused { reason: String, refusal: Refusal },
    #[error("the target broke the protocol: {0}")]
    Protocol(String),
    #[error("the target closed the connection")]
    Closed,
    #[error("the target made no progress for {0:?} (stalled or overloaded); the others went on")]
    Stalled(Duration),
    #[error(
        "this would delete {doomed} of the target's {held} files (more than {percent:.0}%): is the \
         source folder on a drive that is not mounted, or was it emptied by mistake? Nothing was \
         changed"
    )]
    MassDelete {
        doomed: usize,
        held: usize,
        percent: f64,
    },
    #[error("stopped before the mirror finished; the next run resumes where it stopped")]
    Stopped,
}

impl SendError {
    /// What a user can do about it, as a type.
    pub fn refusal(&self) -> Refusal {
        match self {
            SendError::Transport(e) => e.refusal(),
            SendError::Refused { refusal, .. } => *refusal,
            SendError::MassDelete { .. } => Refusal::MassDelete,
            _ => Refusal::Other,
        }
    }

    /// Whether the connection was up and then cut: worth another pass, which resumes what was
    /// verified. A target that cannot be reached, refuses or stalls is not.
    pub fn is_cut(&self) -> bool {
        match self {
            SendError::Closed => true,
            SendError::Transport(e) => matches!(
                e,
                TransportError::Io { .. }
                    | TransportError::WebSocket { .. }
                    | TransportError::Closed { .. }
                    | TransportError::Timeout { .. }
            ),
            _ => false,
        }
    }
}

type Key = (String, Hash, u64);
type Slot = Arc<OnceCell<Arc<Payload>>>;

/// Reads, verifies and compresses source blocks once for every target.
#[derive(Debug)]
pub struct BlockSource {
    root: PathBuf,
    /// Files read from a consistent copy instead of the live file (databases).
    copies: Mutex<BTreeMap<String, Arc<crate::snapshot::Copy>>>,
    cache: Mutex<(HashMap<Key, Slot>, VecDeque<Key>)>,
    incompressible: Mutex<HashMap<(String, Hash), u32>>,
    bytes_read: AtomicU64,
    compress: bool,
}

impl BlockSource {
    /// A block source for the folder `root`; `compress` says whether zstd is tried.
    pub fn new(root: PathBuf, compress: bool) -> BlockSource {
        BlockSource {
            root,
            copies: Mutex::new(BTreeMap::new()),
            compress,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            incompressible: Mutex::new(HashMap::new()),
            bytes_read: AtomicU64::new(0),
        }
    }

    /// This block source, reading the files of `copies` from their copies.
    pub fn reading_copies(self, copies: BTreeMap<String, Arc<crate::snapshot::Copy>>) -> Self {
        self.read_copies(copies);
        self
    }

    /// From now on, reads the files of `copies` from their copies (the scan's databases).
    pub fn read_copies(&self, copies: BTreeMap<String, Arc<crate::snapshot::Copy>>) {
        *self.copies.lock().expect("copies lock") = copies;
    }

    /// Where the bytes of `path` are read from.
    fn location(&self, path: &str) -> PathBuf {
        match self.copies.lock().expect("copies lock").get(path) {
            Some(copy) => copy.path.clone(),
            None => self.root.join(path),
        }
    }

    /// Bytes read from source files to be sent (each block counts once per read).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The hash of the source file's bytes from the start of the block holding `len` to
    /// `len`; what the plan needs to recognise an append.
    pub fn tail_hash(&self, path: &str, len: u64) -> Option<Hash> {
        let start = len - len % BLOCK_SIZE;
        let file = fs::open_shared(&self.location(path)).ok()?;
        let mut buffer = vec![0u8; (len - start) as usize];
        let n = fs::read_at(&file, start, &mut buffer).ok()?;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        (n == buffer.len()).then(|| hash::block_hash(&buffer))
    }

    /// The payload of `record`'s bytes from `offset` to the end of their block.
    pub async fn get(
        self: &Arc<Self>,
        path: &str,
        record: &FileRecord,
        offset: u64,
    ) -> Result<Arc<Payload>, String> {
        let key = (path.to_string(), record.hash, offset);
        let slot = {
            let mut guard = self.cache.lock().expect("cache lock");
            let (map, order) = &mut *guard;
            match map.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot: Slot = Arc::default();
                    map.insert(key.clone(), slot.clone());
                    order.push_back(key.clone());
                    while order.len() > CACHE_BLOCKS {
                        if let Some(old) = order.pop_front() {
                            map.remove(&old);
                        }
                    }
                    slot
                }
            }
        };
        let this = self.clone();
        let path = path.to_string();
        let record = record.clone();
        // Errors are not kept: the next pass, or the next target, tries the disk again.
        slot.get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || this.read(&path, &record, offset))
                .await
                .unwrap_or_else(|e| Err(format!("reader failed: {e}")))
        })
        .await
        .cloned()
    }

    fn read(&self, path: &str, record: &FileRecord, offset: u64) -> Result<Arc<Payload>, String> {
        let index = offset / BLOCK_SIZE;
        let start = index * BLOCK_SIZE;
        let len = hash::block_len(record.stamp.size, index) as usize;
        if index >= record.blocks.len() as u64 {
            return Err(format!("block {index} is past the end of {path}"));
        }
        let file =
            fs::open_shared(&self.location(path)).map_err(|e| format!("cannot read it: {e}"))?;
        let mut buffer = vec![0u8; len];
        let n =
            fs::read_at(&file, start, &mut buffer).map_err(|e| format!("cannot read it: {e}"))?;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        if n != len {
            return Err(
                "it was truncated while being sent; the next pass sends the new version".into(),
            );
        }
        let bytes = buffer.split_off((offset - start) as usize);
        Ok(Arc::new(self.compress(path, record.hash, bytes)))
    }

    fn compress(&self, path: &str, hash: Hash, bytes: Vec<u8>) -> Payload {
        let key = (path.to_string(), hash);
        let failures = *self
            .incompressible
            .lock()
            .expect("lock")
            .get(&key)
            .unwrap_or(&0);
        if !self.compress || failures >= GIVE_UP_COMPRESSING || bytes.len() < 64 {
            return Payload::Raw(bytes);
        }
        match zstd::bulk::compress(&bytes, ZSTD_LEVEL) {
            Ok(packed) if packed.len() < bytes.len() - bytes.len() / 16 => Payload::Zstd(packed),
            _ => {
                *self
                    .incompressible
                    .lock()
                    .expect("lock")
                    .entry(key)
                    .or_default() += 1;
                Payload::Raw(bytes)
            }
        }
    }
}

/// Asks the target for its manifest. With `cached`, the manifest this source saw at the end
/// of its last session with the target, the target answers in a few bytes when nothing
/// changed on its side since.
pub async fn fetch_manifest(
    conn: &mut Connection,
    cached: Option<(Hash, Tree)>,
    stall: Duration,
) -> Result<(Tree, Vec<Partial>), SendError> {
    tokio::time::timeout(stall, fetch(conn, cached))
        .await
        .map_err(|_| SendError::Stalled(stall))?
}

async fn fetch(
    conn: &mut Connection,
    cached: Option<(Hash, Tree)>,
) -> Result<(Tree, Vec<Partial>), SendError> {
    let digest = cached.as_ref().map(|(d, _)| *d);
    conn.send(&Message::GetManifest { cached: digest }).await?;
    let mut tree = Tree::default();
    let mut entries = 0usize;
    loop {
        match conn.recv().await? {
            Some(Message::ManifestSame { partials }) => match cached {
                Some((_, tree)) => return Ok((tree, partials)),
                None => {
                    return Err(SendError::Protocol(
                        "the target said its manifest was unchanged, but none was offered".into(),
                    ));
                }
            },
            Some(Message::ManifestPart { entries: part }) => {
                entries += part.len();
                if entries > MAX_MANIFEST_ENTRIES {
                    return Err(SendError::Protocol(format!(
                        "the manifest has more than {MAX_MANIFEST_ENTRIES} entries"
                    )));
                }
                crate::mirror::plan::add_entries(&mut tree, part)
            }
            Some(Message::ManifestEnd { partials }) => return Ok((tree, partials)),
            Some(Message::Refused { reason, refusal }) => {
                return Err(SendError::Refused { reason, refusal });
            }
            Some(other) => {
                return Err(SendError::Protocol(format!(
                    "expected the manifest, got {other:?}"
                )));
            }
            None => return Err(SendError::Closed),
        }
    }
}

/// What one session achieved.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The target's digest after the session.
    pub digest: Hash,
    pub files_done: u64,
    /// Files the target could not write, or the source abandoned: (path, reason).
    pub failed: Vec<(String, String)>,
    /// Bytes of file data sent (before compression).
    pub data_bytes: u64,
}

/// One unit of the outgoing stream.
enum Item {
    Message(Message),
    Block { id: u64, file: usize, offset: u64 },
}

/// Collects the target's replies until it reports its digest.
async fn collect_replies(
    receiver: &mut ConnectionReceiver,
    done: &AtomicU64,
    events: &broadcast::Sender<Event>,
    target: &str,
    paths: &HashMap<u64, String>,
) -> Result<(Hash, Vec<(String, String)>), SendError> {
    let mut failed = Vec::new();
    loop {
        match receiver.recv().await? {
            Some(Message::FileDone { .. }) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Some(Message::FileFailed { id, reason }) => {
                let path = paths
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| "(a folder or a delete)".into());
                let _ = events.send(Event::FileFailed {
                    target: target.to_string(),
                    path: path.clone(),
                    reason: reason.clone(),
                });
                failed.push((path, reason));
            }
            Some(Message::Finished { digest }) => return Ok((digest, failed)),
            Some(Message::Refused { reason, refusal }) => {
                return Err(SendError::Refused { reason, refusal });
            }
            Some(other) => {
                return Err(SendError::Protocol(format!(
                    "unexpected reply {}",
                    other.name()
                )));
            }
            None => return Err(SendError::Closed),
        }
    }
}

/// How fast a session may go: when a stalled target is given up, the bandwidth cap, and the
/// resource guard's gate.
#[derive(Debug, Clone)]
pub struct Pace<'a> {
    pub stall: Duration,
    pub limit: Option<&'a RateLimit>,
    pub gate: Gate,
    /// Once cancelled, the message in flight finishes, nothing more is sent, and the
    /// connection is closed cleanly: the target commits every file that arrived whole and
    /// keeps the verified blocks of the others for the next run.
    pub stop: tokio_util::sync::CancellationToken,
}

/// Streams `plan` to the target and waits for its verdict.
pub async fn send_plan(
    conn: Connection,
    target: &str,
    plan: &Plan,
    pace: Pace<'_>,
    blocks: &Arc<BlockSource>,
    events: &broadcast::Sender<Event>,
) -> Result<(Outcome, Connection), SendError> {
    let Pace {
        stall,
        limit,
        mut gate,
        stop,
    } = pace;
    let mut files: Vec<(&str, &FileRecord)> = Vec::new();
    let mut paths: HashMap<u64, String> = HashMap::new();
    let mut items = Vec::new();
    for op in &plan.ops {
        match op {
            Op::Delete(path) => items.push(Item::Message(Message::Delete { path: path.clone() })),
            Op::Mkdir(path) => items.push(Item::Message(Message::Mkdir { path: path.clone() })),
            Op::SetMeta {
                path,
                mtime_ns,
                executable,
            } => items.push(Item::Message(Message::SetMeta {
                path: path.clone(),
                mtime_ns: *mtime_ns,
                executable: *executable,
            })),
            Op::Send(send) => {
                let id = files.len() as u64;
                files.push((&send.path, &send.record));
                paths.insert(id, send.path.clone());
                let r = &send.record;
                let mut chunks = r.blocks.chunks(MAX_BLOCKS_PER_MESSAGE);
                items.push(Item::Message(Message::FileBegin(FileBegin {
                    id,
                    path: send.path.clone(),
                    size: r.stamp.size,
                    mtime_ns: r.stamp.mtime_ns,
                    executable: r.stamp.executable,
                    hash: r.hash,
                    blocks: chunks.next().unwrap_or_default().to_vec(),
                    reuse: send.reuse.clone(),
                    resume_blocks: send.resume_blocks,
                })));
                for chunk in chunks {
                    items.push(Item::Message(Message::BlockList {
                        id,
                        blocks: chunk.to_vec(),
                    }));
                }
                for index in &send.send {
                    items.push(Item::Block {
                        id,
                        file: id as usize,
                        offset: index * BLOCK_SIZE,
                    });
                }
                items.push(Item::Message(Message::FileEnd { id }));
            }
            Op::Append(append) => {
                let id = files.len() as u64;
                files.push((&append.path, &append.record));
                paths.insert(id, append.path.clone());
                let r = &append.record;
                items.push(Item::Message(Message::Append(Append {
                    id,
                    path: append.path.clone(),
                    from_len: append.from_len,
                    from_hash: append.from_hash,
                    size: r.stamp.size,
                    mtime_ns: r.stamp.mtime_ns,
                    executable: r.stamp.executable,
                    hash: r.hash,
                    tail_blocks: append.tail_blocks().to_vec(),
                })));
                let mut offset = append.from_len;
                while offset < r.stamp.size {
                    items.push(Item::Block {
                        id,
                        file: id as usize,
                        offset,
                    });
                    offset = (offset / BLOCK_SIZE + 1) * BLOCK_SIZE;
                }
                items.push(Item::Message(Message::FileEnd { id }));
            }
        }
    }
    items.push(Item::Message(Message::Finish));

    let (mut sender, mut receiver) = conn.split();
    let files_total = plan.files;
    let bytes_total = plan.data_bytes;
    let done = Arc::new(AtomicU64::new(0));
    let mut aborted: HashSet<u64> = HashSet::new();
    let mut abandoned = Vec::new();
    let mut data_bytes = 0u64;
    let (digest, failed) = {
        let replies = collect_replies(&mut receiver, &done, events, target, &paths);
        let sending = async {
            let mut stream = futures_util::stream::iter(items)
                .map(|item| async {
                    match item {
                        Item::Message(m) => (None, Ok(m)),
                        Item::Block { id, file, offset } => {
                            let (path, record) = files[file];
                            let payload = blocks.get(path, record, offset).await;
                            (
                                Some(id),
                                payload
                                    .map(|p| (offset, p))
                                    .map(|(offset, p)| Message::Data {
                                        id,
                                        offset,
                                        payload: (*p).clone(),
                                    }),
                            )
                        }
                    }
                })
                .buffered(READ_AHEAD);
            let mut last_event = Instant::now();
            loop {
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => return Err(SendError::Stopped),
                    next = stream.next() => next,
                };
                let Some((block_of, message)) = next else {
                    break;
                };
                let id = match &message {
                    Ok(Message::FileEnd { id }) => Some(*id),
                    _ => block_of,
                };
                if let Some(id) = id
                    && aborted.contains(&id)
                {
                    continue;
                }
                match message {
                    Ok(message) => {
                        if let Message::Data { id, offset, .. } = &message {
                            let (_, record) = files[*id as usize];
                            let block_end = ((offset / BLOCK_SIZE) + 1) * BLOCK_SIZE;
                            data_bytes += block_end.min(record.stamp.size) - offset;
                        }
                        // The block in flight finishes; nothing else starts while paused.
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => return Err(SendError::Stopped),
                            () = gate.pass() => {}
                        }
                        if let Some(limit) = limit {
                            let bytes = match &message {
                                Message::Data { payload, .. } => payload.wire_len() + 32,
                                _ => 64,
                            };
                            limit.take(bytes).await;
                        }
                        tokio::time::timeout(stall, sender.send(&message))
                            .await
                            .map_err(|_| SendError::Stalled(stall))??;
                    }
                    Err(reason) => {
                        let id = block_of.expect("only blocks fail");
                        aborted.insert(id);
                        let path = paths[&id].clone();
                        abandoned.push((path.clone(), reason.clone()));
                        sender
                            .send(&Message::FileAbort {
                                id,
                                reason: reason.clone(),
                            })
                            .await?;
                    }
                }
                if last_event.elapsed() > Duration::from_millis(100) {
                    last_event = Instant::now();
                    let _ = events.send(Event::Progress {
                        target: target.to_string(),
                        files_done: done.load(Ordering::Relaxed),
                        files_total,
                        bytes_done: data_bytes,
                        bytes_total,
                    });
                }
            }
            Ok::<(), SendError>(())
        };
        tokio::pin!(replies);
        // The replies decide: a target that refuses mid-stream explains why the stream broke.
        tokio::select! {
            reply = &mut replies => reply?,
            sent = sending => {
                if let Err(SendError::Stopped) = sent {
                    // A clean close: the target commits what arrived whole, keeps the rest.
                    sender.close().await;
                    return Err(SendError::Stopped);
                }
                if let Err(error) = sent {
                    return Err(match tokio::time::timeout(Duration::from_secs(2), replies).await {
                        Ok(Err(refusal @ SendError::Refused { .. })) => refusal,
                        _ => error,
                    });
                }
                tokio::time::timeout(stall, replies)
                    .await
                    .map_err(|_| SendError::Stalled(stall))??
            }
        }
    };
    let conn = sender.reunite(receiver)?;
    let files_done = done.load(Ordering::Relaxed);
    let _ = events.send(Event::Progress {
        target: target.to_string(),
        files_done,
        files_total,
        bytes_done: data_bytes,
        bytes_total,
    });
    let mut failed = failed;
    failed.extend(abandoned);
    Ok((
        Outcome {
            digest,
            files_done,
            failed,
            data_bytes,
        },
        conn,
    ))
}
