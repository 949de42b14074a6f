//! The source's end of a mirror session: asks a target for its manifest, and streams the
//! operations of its plan, reading each block through a [`BlockSource`] (`blocks`) shared by
//! every target of the push, at the target's own pace with a bounded read-ahead, under the
//! bandwidth cap and the resource guard's gate.

mod adapt;
mod blocks;

use crate::event::Event;
use crate::guard::Gate;
use crate::index::FileRecord;
use crate::mirror::listing::Spool;
use crate::mirror::plan::{Op, Plan, Planned};
use crate::mirror::receive::{STAGE_BYTES, STAGE_STEPS};
use crate::protocol::{
    Append, BLOCK_SIZE, FileBegin, Hash, MAX_BLOCKS_PER_MESSAGE, Message, Partial, Refusal,
};
use crate::rate::RateLimit;
use crate::transport::{Connection, ConnectionReceiver, ConnectionSender, TransportError};
pub use adapt::{Adapt, Level};
pub use blocks::BlockSource;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::broadcast;

/// The most a session writes before the target answered whether it holds the manifest the
/// session was planned against ([`Pace::guess`]): what a guess saves is a round trip, worth it
/// for a small session, and a wrong guess is sent for nothing. A larger one waits.
const GUESS_MOST_BYTES: u64 = 16 << 20;
/// Blocks each target reads ahead of what it sends.
const READ_AHEAD: usize = 8;
/// A wait at the guard's gate longer than this was a pause.
const PAUSED: Duration = Duration::from_millis(20);
/// No report of the target's load since the last one was taken.
const NO_LOAD: u32 = u32::MAX;
/// Most entries a target's manifest may have (files and folders).
const MAX_MANIFEST_ENTRIES: usize = 10_000_000;

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
        "this would delete {doomed} of the target's {held} files, with what syncs of the last hour \
         deleted (more than {percent:.0}%): is the source folder on a drive that is not mounted, or \
         was it emptied by mistake? Nothing was changed"
    )]
    MassDelete {
        doomed: usize,
        held: usize,
        percent: f64,
    },
    #[error("stopped before the mirror finished; the next run resumes where it stopped")]
    Stopped,
    /// A bug on this side ended the session (a panic in its task): the next pass or run starts
    /// it again from what the target verified.
    #[error("the session with this target stopped on an internal error ({0}); please report it")]
    Internal(String),
    /// The target's listing could not be held here (the state folder's disk is full), or was
    /// out of order.
    #[error("cannot take the target's listing: {0}")]
    Listing(String),
    /// The blocks the source's scan took on trust failed their proof: the session ended
    /// without its `Finish`, and the target committed nothing of it.
    #[error("nothing of this session was committed: {0}")]
    Unproven(String),
    /// The session was planned against the manifest the source kept from the last sync, and
    /// sent before the target answered whether it still holds it; it did not: the session
    /// ended without its `Finish`, and the target committed nothing of it.
    #[error("{0}; nothing of this session was committed")]
    Guessed(String),
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

    /// Whether the connection was up and then cut, or went silent (its link lost without a
    /// word), or a bug on this side ended the session: worth another pass, which resumes what
    /// was verified. A target that cannot be reached, refuses or stalls is not.
    pub fn is_cut(&self) -> bool {
        match self {
            SendError::Closed | SendError::Internal(_) => true,
            SendError::Transport(e) => matches!(
                e,
                TransportError::Io { .. }
                    | TransportError::WebSocket { .. }
                    | TransportError::Closed { .. }
                    | TransportError::Timeout { .. }
                    | TransportError::Idle { .. }
            ),
            _ => false,
        }
    }
}

/// A target's manifest, as [`fetch_manifest`] found it.
#[derive(Debug, PartialEq, Eq)]
pub enum Theirs {
    /// Listed in full, into the [`Spool`] given.
    Listed,
    /// The one whose digest the source offered: unchanged since the source kept it.
    Same(Hash),
}

/// What the target answered to a manifest request the source did not wait for
/// ([`Pace::guess`]): whether it still holds the manifest the session was planned against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// It does.
    Same,
    /// It listed another one: why the guess was wrong.
    Changed(String),
}

/// One message of a target's answer to a manifest request.
enum Step {
    Part(Vec<crate::protocol::Entry>),
    Same(Vec<Partial>),
    End(Vec<Partial>),
}

/// What a target answered so far to a manifest request: [`read_manifest`]'s and
/// [`read_answer`]'s checks of each message.
#[derive(Default)]
struct Answering {
    entries: usize,
    listed: bool,
}

impl Answering {
    /// The next message of the answer, checked: a listing is bounded, and not followed by
    /// "the same"; a refusal, anything else or the end of the connection ends the answer.
    fn step(&mut self, message: Option<Message>) -> Result<Step, SendError> {
        match message {
            Some(Message::ManifestSame { .. }) if self.listed => {
                Err(SendError::Protocol(LISTED_THEN_SAME.into()))
            }
            Some(Message::ManifestSame { partials }) => Ok(Step::Same(partials)),
            Some(Message::ManifestPart { entries }) => {
                self.listed = true;
                self.entries += entries.len();
                if self.entries > MAX_MANIFEST_ENTRIES {
                    return Err(SendError::Protocol(format!(
                        "the manifest has more than {MAX_MANIFEST_ENTRIES} entries"
                    )));
                }
                Ok(Step::Part(entries))
            }
            Some(Message::ManifestEnd { partials }) => Ok(Step::End(partials)),
            Some(Message::Refused { reason, refusal }) => {
                Err(SendError::Refused { reason, refusal })
            }
            Some(other) => Err(SendError::Protocol(format!(
                "expected the manifest, got {}",
                other.name()
            ))),
            None => Err(SendError::Closed),
        }
    }
}

/// Reads the target's answer to a manifest request the session did not wait for, which comes
/// before any reply to what the session sent; a listing is read to its end and dropped (the
/// session ends without its `Finish`, and the next one asks again).
async fn read_answer(receiver: &mut ConnectionReceiver) -> Result<Answer, SendError> {
    let mut answering = Answering::default();
    loop {
        match answering.step(receiver.recv_within(SILENCE).await?)? {
            Step::Part(_) => {}
            // Partial files to resume: a plan made with them would send less.
            Step::Same(partials) if !partials.is_empty() => {
                return Ok(Answer::Changed(format!(
                    "the target holds {} partial files to resume, which the session was not \
                     planned with",
                    partials.len()
                )));
            }
            Step::Same(_) => return Ok(Answer::Same),
            Step::End(_) => {
                return Ok(Answer::Changed(format!(
                    "the target's folder changed since the last sync: it listed {} entries, \
                     not the manifest kept",
                    answering.entries
                )));
            }
        }
    }
}

/// Asks the target for its manifest. With `cached`, the digest of the manifest this source
/// kept from its last session with the target, the target answers in a few bytes when nothing
/// changed on its side since; otherwise its entries go to `into`.
pub async fn fetch_manifest(
    conn: &mut Connection,
    cached: Option<Hash>,
    stall: Duration,
    into: &mut Spool,
) -> Result<(Theirs, Vec<Partial>), SendError> {
    conn.send(&ask_manifest(cached)).await?;
    manifest_asked(conn, cached, stall, into).await
}

/// The request [`fetch_manifest`] sends; sent with the hello instead
/// ([`crate::transport::connect_asking`]), the answer is read with [`manifest_asked`].
pub fn ask_manifest(cached: Option<Hash>) -> Message {
    Message::GetManifest { cached }
}

/// The target's answer to [`ask_manifest`]`(cached)`, already sent.
pub async fn manifest_asked(
    conn: &mut Connection,
    cached: Option<Hash>,
    stall: Duration,
    into: &mut Spool,
) -> Result<(Theirs, Vec<Partial>), SendError> {
    tokio::time::timeout(stall, read_manifest(conn, cached, into))
        .await
        .map_err(|_| SendError::Stalled(stall))?
}

/// Asks the target for its whole manifest, offering none; its entries go to `into`.
pub async fn list_manifest(
    conn: &mut Connection,
    stall: Duration,
    into: &mut Spool,
) -> Result<Vec<Partial>, SendError> {
    match fetch_manifest(conn, None, stall, into).await? {
        (Theirs::Listed, partials) => Ok(partials),
        (Theirs::Same(_), _) => Err(SendError::Protocol(UNOFFERED.into())),
    }
}

/// A target that listed part of its manifest, then answered "unchanged".
const LISTED_THEN_SAME: &str = "the target listed its manifest, then said it was the same";

/// A target that answered "unchanged" when the source offered no manifest.
const UNOFFERED: &str = "the target said its manifest was unchanged, but none was offered";

async fn read_manifest(
    conn: &mut Connection,
    cached: Option<Hash>,
    into: &mut Spool,
) -> Result<(Theirs, Vec<Partial>), SendError> {
    let mut answering = Answering::default();
    loop {
        match answering.step(conn.recv_within(SILENCE).await?)? {
            Step::Same(partials) => match cached {
                Some(digest) => return Ok((Theirs::Same(digest), partials)),
                None => return Err(SendError::Protocol(UNOFFERED.into())),
            },
            Step::Part(part) => into
                .add(&part)
                .map_err(|e| SendError::Listing(e.to_string()))?,
            Step::End(partials) => return Ok((Theirs::Listed, partials)),
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
    /// Sent before the target answered the manifest request, against the manifest kept
    /// ([`Pace::guess`]), and the target then answered that it held it.
    pub guessed: bool,
}

/// A block read for the stream: its file's id and its length before compression.
struct Block {
    id: u64,
    raw: u64,
}

/// The message of one unit of the stream: a block is read and packed at the level the
/// session is at (`level_now`, a place on [`adapt::LADDER`]).
async fn read_item(
    item: Item,
    open: &Open<'_>,
    blocks: &Arc<BlockSource>,
    level_now: &std::sync::atomic::AtomicUsize,
) -> (Option<Block>, Result<Message, String>) {
    match item {
        Item::Message(m) => (None, Ok(m)),
        Item::Block { id, offset } => {
            let Some((path, record)) = open.file(id) else {
                // Given up (a read of one of its blocks failed): it is not sent.
                return (Some(Block { id, raw: 0 }), Err("given up".into()));
            };
            let level = adapt::LADDER[level_now.load(Ordering::Relaxed)];
            let payload = blocks.get(path, record, offset, level).await;
            let block_end = ((offset / BLOCK_SIZE) + 1) * BLOCK_SIZE;
            let raw = block_end.min(record.stamp.size) - offset;
            let message = payload.map(|payload| Message::Data {
                id,
                offset,
                payload,
            });
            (Some(Block { id, raw }), message)
        }
    }
}

/// One unit of the outgoing stream. A block names its file by id: its path and record are in
/// the session's [`Open`] files.
enum Item {
    Message(Message),
    Block { id: u64, offset: u64 },
}

/// The files of a session from their first message until both their last message went out
/// and the target's verdict came in (a failure can come before the last block): their paths
/// and records in the source's tree, by id. It holds what is in flight, not every file sent
/// (300,000 at a first mirror).
#[derive(Default)]
struct Open<'a>(std::sync::Mutex<HashMap<u64, OpenFile<'a>>>);

struct OpenFile<'a> {
    path: &'a str,
    record: &'a FileRecord,
    /// Its last message went out (or it was given up).
    sent: bool,
    /// The target's verdict came.
    judged: bool,
    /// A read of one of its blocks failed: nothing more of it is read or sent. The target
    /// gives no verdict on a file given up, unless it failed the file before.
    given_up: bool,
}

impl<'a> Open<'a> {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenFile<'a>>> {
        self.0.lock().expect("the open files are never poisoned")
    }

    fn add(&self, id: u64, path: &'a str, record: &'a FileRecord) {
        let file = OpenFile {
            path,
            record,
            sent: false,
            judged: false,
            given_up: false,
        };
        self.files().insert(id, file);
    }

    /// The file's path and record, unless it was given up.
    fn file(&self, id: u64) -> Option<(&'a str, &'a FileRecord)> {
        self.files()
            .get(&id)
            .filter(|f| !f.given_up)
            .map(|f| (f.path, f.record))
    }

    /// A read of the file failed: its path, the first time. It stays until a verdict the
    /// target may have sent before it heard of the give-up, so that verdict names it.
    fn give_up(&self, id: u64) -> Option<&'a str> {
        self.settle(id, |f| {
            let first = !f.given_up;
            (f.given_up, f.sent) = (true, true);
            first
        })
    }

    /// The file's last message went out.
    fn sent(&self, id: u64) {
        self.settle(id, |f| {
            f.sent = true;
            true
        });
    }

    /// The target's verdict on the file came: its path.
    fn judged(&self, id: u64) -> Option<&'a str> {
        self.settle(id, |f| {
            f.judged = true;
            true
        })
    }

    /// Marks the file `id` with `mark` and lets it go once both sent and judged; its path if
    /// it is open and `mark` says so.
    fn settle(&self, id: u64, mark: impl FnOnce(&mut OpenFile<'a>) -> bool) -> Option<&'a str> {
        let mut files = self.files();
        let file = files.get_mut(&id)?;
        let named = mark(file).then_some(file.path);
        if file.sent && file.judged {
            files.remove(&id);
        }
        named
    }
}

/// The outgoing stream of a plan, made one operation at a time, then `Finish`.
struct Items<'a> {
    /// Boxed: the plan's iterator is made of closures, and a session's future holding them
    /// across an await is not proven `Send` for every lifetime (rust-lang/rust#102211).
    ops: Box<dyn Iterator<Item = Planned<'a>> + Send + 'a>,
    next_id: u64,
    pending: std::vec::IntoIter<Item>,
    finished: bool,
    open: &'a Open<'a>,
}

impl<'a> Iterator for Items<'a> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.next() {
                return Some(item);
            }
            match self.ops.next() {
                Some(Planned { op, file }) => {
                    self.pending = op_items(&op, self.next_id, file.map(|f| f.1)).into_iter();
                    if let Some((path, record)) = file {
                        self.open.add(self.next_id, path, record);
                        self.next_id += 1;
                    }
                }
                None if self.finished => return None,
                None => {
                    self.finished = true;
                    return Some(Item::Message(Message::Finish));
                }
            }
        }
    }
}

/// The messages and blocks of one operation of a plan; `id` and `record` are the file's, for
/// a send or an append.
fn op_items(op: &Op, id: u64, record: Option<&FileRecord>) -> Vec<Item> {
    let mut items = Vec::new();
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
            let Some(r) = record else { return items };
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
            for index in send.send.iter() {
                items.push(Item::Block {
                    id,
                    offset: index * BLOCK_SIZE,
                });
            }
            items.push(Item::Message(Message::FileEnd { id }));
        }
        Op::Append(append) => {
            let Some(r) = record else { return items };
            items.push(Item::Message(Message::Append(Append {
                id,
                path: append.path.clone(),
                from_len: append.from_len,
                from_hash: append.from_hash,
                size: r.stamp.size,
                mtime_ns: r.stamp.mtime_ns,
                executable: r.stamp.executable,
                hash: r.hash,
                tail_blocks: append.tail_blocks(r).to_vec(),
            })));
            let mut offset = append.from_len;
            while offset < r.stamp.size {
                items.push(Item::Block { id, offset });
                offset = (offset / BLOCK_SIZE + 1) * BLOCK_SIZE;
            }
            items.push(Item::Message(Message::FileEnd { id }));
        }
    }
    items
}

/// How long a target that is still there can be silent in a session: whatever else it does
/// (listing a large folder, committing), it pings the source every
/// [`Limits::ping_every`](crate::transport::Limits) (10 s). A session that hears nothing at all
/// for two and a half times that lost its link without a word (an address that changed, a
/// router that restarted): it ends there, as a cut another pass may get past, not at the stall
/// timeout. Not shortened by a short stall timeout, which bounds what the source waits on
/// (a write, the verdict), not how often a target has something to say.
pub const SILENCE: Duration = Duration::from_secs(25);

/// Collects the target's replies until it reports its digest; a target silent for
/// [`SILENCE`] is taken for gone.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one distinct input of the replies; a struct would only rename them"
)]
async fn collect_replies(
    receiver: &mut ConnectionReceiver,
    answer: Option<&tokio::sync::watch::Sender<ProofVerdict>>,
    stall: Duration,
    done: &AtomicU64,
    load: &std::sync::atomic::AtomicU32,
    events: &broadcast::Sender<Event>,
    target: &str,
    open: &Open<'_>,
) -> Result<(Hash, Vec<(String, String)>), SendError> {
    let mut failed = Vec::new();
    // A manifest request the session did not wait for is answered first.
    if let Some(verdict) = answer {
        let answered = tokio::time::timeout(stall, read_answer(receiver))
            .await
            .map_err(|_| SendError::Stalled(stall))??;
        let answered = match answered {
            Answer::Same => Ok(()),
            Answer::Changed(why) => Err(why),
        };
        verdict.send_replace(Some(answered));
    }
    loop {
        match receiver.recv_within(SILENCE).await? {
            Some(Message::FileDone { id }) => {
                open.judged(id);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Some(Message::Load { busy_permille }) => {
                load.store(u32::from(busy_permille), Ordering::Relaxed);
            }
            Some(Message::FileFailed { id, reason }) => {
                let path = open
                    .judged(id)
                    .map_or_else(|| "(a folder or a delete)".into(), str::to_string);
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

/// What a session is told of the proof of the blocks its tree took on trust (a grown file's
/// old blocks, not read by the scan): nothing yet, proven, or why not.
pub type ProofVerdict = Option<Result<(), String>>;

/// Where a session waits for the [`ProofVerdict`] before it sends `Finish`.
pub type Proof = tokio::sync::watch::Receiver<ProofVerdict>;

/// How fast a session may go: when a stalled target is given up, the bandwidth cap, and the
/// resource guard's gate.
#[derive(Debug, Clone)]
pub struct Pace<'a> {
    pub stall: Duration,
    pub limit: Option<&'a RateLimit>,
    pub gate: Gate,
    /// Once cancelled, the message in flight finishes, nothing more is sent, and the
    /// connection is closed cleanly: the target commits every file that arrived whole and
    /// keeps the verified blocks of the others for the next run. (While the tree waits for
    /// its [`Proof`], the target is told to commit nothing instead.)
    pub stop: tokio_util::sync::CancellationToken,
    /// How hard blocks are compressed for this target.
    pub adapt: Adapt,
    /// The proof `Finish` waits for, when the tree rests on blocks not read: the target commits
    /// the session at its `Finish`, and must commit nothing unproven. A failed proof ends the
    /// session with [`SendError::Unproven`] and `Refused`, so the target drops what it staged.
    pub proof: Option<Proof>,
    /// The digest of the manifest the plan was made against, when the target was asked for its
    /// manifest and the plan sent without waiting for the answer (a guess from the manifest
    /// kept since the last sync). The answer comes first among the replies, within the stall
    /// timeout, and `Finish` waits for it as for the proof: any other answer than "the same"
    /// (with no partial files to resume) ends the session with [`SendError::Guessed`] and
    /// `Refused`, before the next message would have gone out. A session that writes more than
    /// [`GUESS_MOST_BYTES`] waits for the answer before it sends.
    pub guess: Option<Hash>,
}

/// The verdict of `proof`, once there is one.
pub async fn verdict(proof: &mut Proof) -> Result<(), String> {
    proof
        .wait_for(Option::is_some)
        .await
        .map(|v| v.clone().expect("waited for a verdict"))
        .unwrap_or_else(|_| Err("the proof ended without a verdict".into()))
}

/// Waits for `proof`. A failed one ends the session as `ended` says: the target is told why
/// (`Refused`), and drops what it staged of it.
async fn proven(
    proof: &mut Proof,
    stop: &tokio_util::sync::CancellationToken,
    sender: &mut ConnectionSender,
    stall: Duration,
    ended: fn(String) -> SendError,
) -> Result<(), SendError> {
    let verdict = tokio::select! {
        biased;
        () = stop.cancelled() => return Err(SendError::Stopped),
        verdict = verdict(proof) => verdict,
    };
    let Err(why) = verdict else { return Ok(()) };
    let refused = Message::Refused {
        reason: format!("the source ends this session: {why}"),
        refusal: Refusal::Other,
    };
    tokio::time::timeout(stall, sender.send(&refused))
        .await
        .map_err(|_| SendError::Stalled(stall))??;
    Err(ended(why))
}

/// Waits for the target's answer to a manifest request the session did not wait for, then
/// for the proof: what `Finish` (or anything past one batch) needs.
async fn confirmed(
    answer: &mut Option<Proof>,
    proof: &mut Option<Proof>,
    stop: &tokio_util::sync::CancellationToken,
    sender: &mut ConnectionSender,
    stall: Duration,
) -> Result<(), SendError> {
    if let Some(answer) = answer {
        proven(answer, stop, sender, stall, SendError::Guessed).await?;
    }
    if let Some(proof) = proof {
        proven(proof, stop, sender, stall, SendError::Unproven).await?;
    }
    Ok(())
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
        mut adapt,
        mut proof,
        guess,
    } = pace;
    // The target's answer to the manifest request, when the plan did not wait for it.
    let (answer_tx, mut answer) = match guess {
        Some(_) => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    // The messages are made from the plan as the stream reaches them, not all at once: with a
    // large folder they would be a second copy of every path and block hash.
    let open = Open::default();
    let items = Items {
        ops: Box::new(plan.ops()),
        next_id: 0,
        pending: Vec::new().into_iter(),
        finished: false,
        open: &open,
    };

    let (mut sender, mut receiver) = conn.split();

    let files_total = plan.files;
    let bytes_total = plan.data_bytes;
    let done = Arc::new(AtomicU64::new(0));
    let mut aborted: HashSet<u64> = HashSet::new();
    let mut abandoned = Vec::new();
    let mut data_bytes = 0u64;
    // The target's last word on how busy it is (thousandths; none yet: `NO_LOAD`).
    let load = std::sync::atomic::AtomicU32::new(NO_LOAD);
    // `Err`: stopped, or a failed proof; the connection is closed below, once the replies let
    // go of it.
    let verdict = {
        let replies = collect_replies(
            &mut receiver,
            answer_tx.as_ref(),
            stall,
            &done,
            &load,
            events,
            target,
            &open,
        );
        // The level of the blocks read from now on (a place on the ladder), as `adapt` moves.
        let level_now = std::sync::atomic::AtomicUsize::new(adapt.rung());
        // Blocks compressed at once for this target: its read-ahead, on as many cores as the
        // targets sending at the same time leave it (three targets on two cores: two thirds).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _sending = blocks.sending();
        let threads = || (cores.min(READ_AHEAD) as f64).min(cores as f64 / blocks.senders() as f64);
        let sending = async {
            // A target applies a session larger than one batch in several, each at its bound,
            // before the `Finish`: such a session waits for the answer and the proof before it
            // sends anything.
            if plan.operations() >= STAGE_STEPS || plan.written_bytes >= STAGE_BYTES {
                confirmed(&mut answer, &mut proof, &stop, &mut sender, stall).await?;
            } else if plan.written_bytes > GUESS_MOST_BYTES {
                let mut no_proof = None;
                confirmed(&mut answer, &mut no_proof, &stop, &mut sender, stall).await?;
            }
            let mut stream = futures_util::stream::iter(items)
                .map(|item| read_item(item, &open, blocks, &level_now))
                .buffered(READ_AHEAD);
            let mut last_event = Instant::now();
            // The socket's times at the last write: what of a write's wait the target's window
            // caused (its disk or CPU not keeping up) is not the link's.
            let mut times = sender.send_times();
            loop {
                let asked = Instant::now();
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => return Err(SendError::Stopped),
                    next = stream.next() => next,
                };
                let waited_blocks = asked.elapsed();
                let Some((block_of, message)) = next else {
                    break;
                };
                let id = match &message {
                    Ok(Message::FileEnd { id }) => {
                        open.sent(*id);
                        Some(*id)
                    }
                    _ => block_of.as_ref().map(|b| b.id),
                };
                if let Some(id) = id
                    && aborted.contains(&id)
                {
                    continue;
                }
                // The target commits at `Finish`: nothing resting on blocks not read yet, nor
                // on a guess of what it holds. A wrong guess ends the session as soon as it is
                // known.
                let wrong = answer
                    .as_ref()
                    .is_some_and(|a| matches!(*a.borrow(), Some(Err(_))));
                if matches!(message, Ok(Message::Finish)) || wrong {
                    confirmed(&mut answer, &mut proof, &stop, &mut sender, stall).await?;
                }
                match message {
                    Ok(message) => {
                        let raw = block_of.as_ref().map_or(0, |b| b.raw);
                        data_bytes += raw;
                        // The block in flight finishes; nothing else starts while paused.
                        let gated = Instant::now();
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => return Err(SendError::Stopped),
                            () = gate.pass() => {}
                        }
                        if gated.elapsed() > PAUSED {
                            // A pause is not the link's speed, nor the compressor's.
                            adapt.restart_window();
                        }
                        if let Some(limit) = limit {
                            let bytes = match &message {
                                Message::Data { payload, .. } => payload.wire_len() + 32,
                                _ => 64,
                            };
                            limit.take(bytes).await;
                        }
                        let writing = Instant::now();
                        tokio::time::timeout(stall, sender.send(&message))
                            .await
                            .map_err(|_| SendError::Stalled(stall))??;
                        let mut link = writing.elapsed();
                        let now = sender.send_times();
                        if let (Some(now), Some(before)) = (now, times)
                            && let Some(share) = now.receiver_share_since(before)
                        {
                            link = link.mul_f64(1.0 - share);
                        }
                        times = now;
                        adapt.waited(link, waited_blocks);
                        if let busy @ 0..=1000 = load.swap(NO_LOAD, Ordering::Relaxed) {
                            adapt.target_busy(f64::from(busy) / 1000.0);
                        }
                        if raw > 0 {
                            // Read for data only: a file's begin and end messages, one each
                            // of 300,000 small files, need no reading of the machine.
                            if let Some(share) = crate::guard::machine_cpu_share() {
                                adapt.machine_busy(share);
                            }
                            adapt.compressors(
                                blocks
                                    .packing_speeds()
                                    .map(|speed| speed.map(|s| s * threads())),
                            );
                            adapt.sent(raw, Instant::now());
                            level_now.store(adapt.rung(), Ordering::Relaxed);
                        }
                    }
                    Err(reason) => {
                        let Block { id, .. } = block_of.expect("only blocks fail");
                        aborted.insert(id);
                        if let Some(path) = open.give_up(id) {
                            abandoned.push((path.to_string(), reason.clone()));
                        }
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
        // The sending side first: a target's answer to the `Refused` of a failed proof must
        // not stand for the reason the session ended.
        tokio::select! {
            biased;
            sent = sending => match sent {
                Err(ended @ (SendError::Stopped | SendError::Unproven(_) | SendError::Guessed(_))) => Err(ended),
                Err(error) => {
                    return Err(match tokio::time::timeout(Duration::from_secs(2), replies).await {
                        Ok(Err(
                            refusal @ (SendError::Refused { .. }
                            | SendError::Transport(TransportError::Refused { .. })),
                        )) => refusal,
                        _ => error,
                    });
                }
                Ok(()) => Ok(tokio::time::timeout(stall, replies)
                    .await
                    .map_err(|_| SendError::Stalled(stall))??),
            },
            reply = &mut replies => Ok(reply?),
        }
    };
    let (digest, failed) = match verdict {
        Ok(verdict) => verdict,
        Err(ended) => {
            // A clean close. After a stop, the target commits what arrived whole and keeps the
            // rest; after `Refused` (a failed proof), it commits nothing. So does a stop before
            // the proof: what arrived may rest on blocks that were not read. The close waits
            // for the target's answer and reads what it sent meanwhile: a socket closed with
            // replies unread is reset by the kernel, which drops what was still queued to
            // send, the close itself included, and the target would see a cut.
            let unproven = [proof, answer]
                .into_iter()
                .flatten()
                .any(|p| !matches!(*p.borrow(), Some(Ok(()))));
            if matches!(ended, SendError::Stopped) && unproven {
                let refused = Message::Refused {
                    reason: "the source stopped before it proved what this session rests on".into(),
                    refusal: Refusal::Other,
                };
                let told = tokio::time::timeout(stall, sender.send(&refused)).await;
                if !matches!(told, Ok(Ok(()))) {
                    // Not told: no clean close either. Dropped, the connection is a cut to the
                    // target, which commits nothing of a cut session.
                    return Err(ended);
                }
            }
            if let Ok(conn) = sender.reunite(receiver) {
                conn.close().await;
            }
            return Err(ended);
        }
    };
    let conn = sender.reunite(receiver)?;
    if data_bytes > 0 {
        tracing::info!(target, "sent {}", adapt.summary());
    }
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
            guessed: guess.is_some(),
        },
        conn,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size: u64) -> FileRecord {
        FileRecord {
            stamp: crate::fs::Stamp {
                size,
                mtime_ns: 0,
                file_id: 0,
                executable: false,
            },
            hash: [1; 32],
            blocks: crate::index::blocks(vec![[2; 32]]),
            racy: false,
        }
    }

    #[test]
    fn an_open_file_stays_readable_until_both_its_last_message_and_its_verdict() {
        let (a, b) = (record(10), record(20));
        let open = Open::default();
        open.add(0, "a", &a);
        open.add(1, "b", &b);

        // A target can fail a file at its first message, while its blocks are still read.
        assert_eq!(open.judged(0), Some("a"));
        assert_eq!(
            open.file(0).map(|f| f.0),
            Some("a"),
            "its blocks are still read"
        );
        open.sent(0);
        assert_eq!(open.file(0), None, "gone once sent and judged");

        // The usual order: sent, then judged.
        open.sent(1);
        assert_eq!(open.file(1).map(|f| f.1.stamp.size), Some(20));
        assert_eq!(open.judged(1), Some("b"));
        assert_eq!(open.file(1), None);
        assert!(
            open.files().is_empty(),
            "nothing is held after the verdicts"
        );

        // A file given up is read no more; a verdict the target sent before it heard of the
        // give-up still names it.
        let c = record(30);
        open.add(2, "c", &c);
        assert_eq!(open.give_up(2), Some("c"));
        assert_eq!(open.file(2), None, "nothing more of it is read");
        assert_eq!(open.give_up(2), None, "given up once");
        assert_eq!(open.judged(2), Some("c"));
        assert!(open.files().is_empty());

        // A verdict on an id the session never opened names nothing.
        assert_eq!(open.judged(7), None);
        open.sent(7);
        assert!(open.files().is_empty());
    }
}
