//! The wire format between a source (`push`) and a target (`serve`): message types, the
//! protocol version, the limits every decoded value must respect, and encode/decode.
//!
//! Each message is one WebSocket binary message holding one [`Message`] encoded with postcard.
//! Nothing here touches a file or a socket. Every length and count that arrives from the wire
//! is checked by [`decode`] against the limits below before any other module sees it, so the
//! rest of the engine can trust the shapes (not the contents: paths are checked by
//! [`crate::path`], block data by its hash).
//!
//! A session, source on the left:
//! ```text
//! Hello{version, token}        ->
//!                              <- Welcome{..} | Refused{reason, refusal}
//! GetManifest{cached}          ->
//!                              <- ManifestSame{partials}
//!                                 | ManifestPart{entries}* ManifestEnd{partials}
//! Mkdir / FileBegin, Data*, FileEnd / Append, Data*, FileEnd / Delete / SetMeta ...
//!                              <- FileDone{id} | FileFailed{id, reason}   (as files finish)
//!                              <- Load{busy_permille}   (now and then, while data arrives)
//! Finish                       ->
//!                              <- Finished{digest, failed}
//! ```
//!
//! A source need not wait for an answer before it sends on: the hello and `GetManifest` ride
//! behind the WebSocket upgrade request, and a source that kept the target's manifest (and
//! offers its digest) may send the session's operations right behind them, planned against
//! it. Its `Finish` then waits for `ManifestSame`; after any other answer it sends `Refused`
//! instead, and the target drops what it staged. A target handles the messages in the order
//! they came, so it answers `GetManifest` before it reads what follows.
//!
//! The side that dials is not always the source: a peer with the agent's subscribe (or admin)
//! token asks for the agent's folder with `Pull`, and the agent then runs the source's side of
//! the same session over that connection (so a target behind NAT dials out and still receives):
//! ```text
//! Hello{version, token}        ->
//!                              <- Welcome{..} | Refused{reason, refusal}
//! Pull{once}                   ->
//!                              <- GetManifest{cached} ... Finish   (the agent is the source)
//! ManifestPart ... Finished    ->
//!                              <- Pulled{digest, reason}           (once only, last)
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The version this build speaks. A peer that speaks another one is refused with both numbers.
pub const PROTOCOL_VERSION: u32 = 5;
/// The first bytes of every `Hello`, so a stray client is told apart from an old RainMaker.
pub const MAGIC: [u8; 8] = *b"RAINMKR\0";
/// A block is the unit of hashing, transfer and resume; a hash is BLAKE3's (both are the
/// hashing's, which knows nothing of the wire).
pub use crate::hash::{BLOCK_SIZE, Hash};
/// Largest message accepted on the wire (a manifest part, or a block plus headers).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Longest relative path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component, in bytes (what NTFS, ext4 and APFS allow).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Most entries in one manifest part.
pub const MAX_ENTRIES_PER_PART: usize = 4096;
/// Largest file the protocol describes (32 GiB): its block list must fit in one manifest
/// entry of one message.
pub const MAX_FILE_SIZE: u64 = 32 << 30;
/// Most block hashes in one `FileBegin`; bigger files send their list in `BlockList` parts.
pub const MAX_BLOCKS_PER_MESSAGE: usize = 16_384;
/// Longest free-text field (reasons, names).
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most targets one control request may name.
pub const MAX_PUSH_TARGETS: usize = 64;

/// Every message of the protocol, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Source → target, first message: who we are and the pairing token.
    Hello {
        magic: [u8; 8],
        version: u32,
        token: String,
        /// A name for the source, for the target's log.
        source_name: String,
    },
    /// Target → source: the token and version were accepted.
    Welcome { target_name: String },
    /// Either side: the session is refused or aborted; the reason is for a human, the
    /// refusal for a program deciding what to offer (a button, a hint).
    Refused { reason: String, refusal: Refusal },
    /// Source → target: send your manifest, unless its digest is `cached` (the source then
    /// already holds it from the last session).
    GetManifest { cached: Option<Hash> },
    /// Target → source: the manifest is the one whose digest the source gave.
    ManifestSame { partials: Vec<Partial> },
    /// Target → source: a slice of the target's current tree.
    ManifestPart { entries: Vec<Entry> },
    /// Target → source: the manifest is complete.
    ManifestEnd {
        /// Temporary files of interrupted transfers that can be resumed.
        partials: Vec<Partial>,
    },
    /// Source → target: create a folder (and its parents).
    Mkdir { path: String },
    /// Source → target: start a new version of a file, built in a temporary file.
    FileBegin(FileBegin),
    /// Source → target: more block hashes of the file `id` (for files over
    /// [`MAX_BLOCKS_PER_MESSAGE`] blocks).
    BlockList { id: u64, blocks: Vec<Hash> },
    /// Source → target: grow the file in place from `from_len`, which must match the target's
    /// current length and hash.
    Append(Append),
    /// Source → target: bytes of the file `id` at `offset`.
    Data {
        id: u64,
        offset: u64,
        payload: Payload,
    },
    /// Source → target: all data of `id` was sent; verify and commit it.
    FileEnd { id: u64 },
    /// Source → target: the source gave up on `id` (it changed while being read).
    FileAbort { id: u64, reason: String },
    /// Target → source: `id` was verified and is in place.
    FileDone { id: u64 },
    /// Target → source: `id` could not be written; nothing of it is visible.
    FileFailed { id: u64, reason: String },
    /// Source → target: remove a file or an empty folder.
    Delete { path: String },
    /// Source → target: set a file's modification time and executable bit (never a folder's).
    SetMeta {
        path: String,
        mtime_ns: i128,
        executable: bool,
    },
    /// Source → target: everything was sent; report the state you ended in.
    Finish,
    /// Target → source: the digest of the target's tree after the session.
    Finished { digest: Hash },
    /// Admin client → agent: a command (only with the agent's admin token).
    Control { id: u64, request: ControlRequest },
    /// Agent → admin client: the answer to command `id`.
    ControlReply { id: u64, reply: ControlReply },
    /// Agent → subscribed admin client: an engine event as JSON (`event::Event`).
    ControlEvent { json: String },
    /// Dialer → agent, first message after `Welcome` (subscribe or admin token only): mirror
    /// your folder to me over this connection; once (`once`), or until the connection ends.
    Pull { once: bool },
    /// Agent → puller, after the last `Finished` of a one-off pull: the puller now holds
    /// exactly the tree whose digest is `digest` (what the agent's folder held), or, with
    /// none, it does not, and why. The connection then closes.
    Pulled {
        digest: Option<Hash>,
        reason: String,
    },
    /// Dialer → agent, first message after `Welcome` (admin token only): mirror the trash
    /// batch `batch` (what one session deleted or replaced in the folder) to me over this
    /// connection, once, as `Pull{once}` does the folder.
    PullTrash { batch: String },
    /// Target → source, now and then while data arrives: the share of the time since the last
    /// one (in thousandths) the target spent working on what arrived rather than waiting for
    /// more. A target that is the bottleneck (its CPU or disk) gains nothing from stronger
    /// compression, which only costs it decompression.
    Load { busy_permille: u16 },
}

/// What an admin client can ask an agent (see `engine::control`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The folder this agent serves: its role, contents and pushes.
    Status,
    /// Push the served folder to these targets, once or continuously.
    Push {
        targets: Vec<RemoteTarget>,
        watch: bool,
    },
    /// Stop a push cleanly; it can be resumed and goes on from what arrived.
    Pause {
        job: u64,
    },
    Resume {
        job: u64,
    },
    /// Stop a push for good.
    Stop {
        job: u64,
    },
    /// Send every event of this agent's pushes until the connection closes.
    Subscribe,
    /// Make this agent the source of its folder: it stops receiving mirrors into it.
    Promote {
        force: bool,
    },
    /// Receive mirrors into the folder again.
    Demote,
    /// The batches in the folder's trash (what each session deleted or replaced).
    Trash,
}

/// One batch of an agent's trash, as an admin client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TrashBatch {
    /// Its name (what `PullTrash` names).
    pub name: String,
    /// When its session started (Unix seconds).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub when: u64,
    /// How many files it holds.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub files: u64,
    /// The first of them.
    pub paths: Vec<String>,
}

/// A target an agent is told to push to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteTarget {
    pub url: String,
    pub token: String,
    pub fingerprint: Option<String>,
}

/// An agent's answer to a control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    Status(Box<AgentStatus>),
    Started { job: u64 },
    Done,
    Refused { reason: String, refusal: Refusal },
    Trash(Vec<TrashBatch>),
}

/// What a refusal is about, when it is something a user can act on: shells decide what to
/// offer from this, never from a refusal's text. A new variant changes the wire format (an
/// older build cannot decode it): it comes with a new [`PROTOCOL_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Nothing a user can do but read the reason.
    #[default]
    Other,
    /// The pairing or admin token was wrong (or was not the one this needs).
    WrongToken,
    /// The two ends speak different protocol versions.
    Version,
    /// The target's certificate is not the one this machine trusts for it.
    FingerprintChanged,
    /// The agent was promoted to be the source of its folder: it takes no mirror.
    Promoted,
    /// Another source is mirroring into the folder right now.
    Busy,
    /// A source mirrored into the folder within the last minute: promoting needs force.
    RecentSource,
    /// The mirror would delete more than the allowed share of the target's files.
    MassDelete,
    /// Nothing says which certificate the target must have: pair it, or pin its fingerprint.
    NotPinned,
    /// Plain `ws://` where only a test on one machine may use it.
    Insecure,
    /// The token was right, but its role does not allow this (a subscriber mirroring in, a
    /// source asking for the folder, either one commanding): use the code for that role.
    NotAllowed,
}

/// A folder's role on its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum FolderRole {
    /// Receives mirrors.
    Target,
    /// Promoted after a failover: pushes, receives nothing.
    Source,
}

/// Where a push an agent runs stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Paused,
    Done,
    Failed,
    Stopped,
}

impl std::fmt::Display for FolderRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FolderRole::Target => "target",
            FolderRole::Source => "source",
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
        })
    }
}

/// An agent's folder, as an admin client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub root: String,
    pub role: FolderRole,
    pub files: u64,
    pub bytes: u64,
    /// The newest modification time in the folder (ns since the epoch): which side is newer.
    pub newest_mtime_ns: i128,
    /// A source holds a mirror session open into the folder right now.
    pub receiving: bool,
    /// The last source that mirrored into it, and when (Unix seconds).
    pub last_source: Option<(String, u64)>,
    pub jobs: Vec<JobStatus>,
    /// The peers that receive this folder over connections they opened (subscribers, and a
    /// failback in progress).
    pub feeds: Vec<FeedStatus>,
    /// The agent this one receives its folder from by dialing it, if it subscribes to one.
    pub subscription: Option<SubscriptionStatus>,
}

/// A peer that receives an agent's folder over a connection it opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FeedStatus {
    /// The name the peer gave.
    pub name: String,
    /// The address its connection came from (a NAT router's, for a peer behind one).
    pub address: String,
    /// A one-off pull (a failback), not a subscription.
    pub once: bool,
    /// Its connection is open now.
    pub connected: bool,
    /// When it last held exactly what the folder holds (Unix seconds).
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub in_sync_at: Option<u64>,
    /// Why its last session failed, if it did.
    pub error: Option<String>,
}

/// An agent's subscription to another agent's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SubscriptionStatus {
    /// The agent it dials, `host:port`.
    pub from: String,
    /// Its connection is open now.
    pub connected: bool,
    /// When its last session ended (Unix seconds).
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub last_session_at: Option<u64>,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
}

/// A push an agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub targets: Vec<String>,
    pub watch: bool,
    pub state: JobState,
    pub error: Option<String>,
}

impl Message {
    /// Escapes the control characters of every free-text field (names, reasons, a status's
    /// texts, an event's JSON; never a path or a token), as the transport does to every
    /// message it receives: see `text`.
    pub fn escape_text(&mut self) {
        use crate::text::escape_in_place as escape;
        match self {
            Message::Hello { source_name, .. } => escape(source_name),
            Message::Welcome { target_name } => escape(target_name),
            Message::Refused { reason, .. }
            | Message::FileAbort { reason, .. }
            | Message::FileFailed { reason, .. }
            | Message::Pulled { reason, .. } => escape(reason),
            Message::ControlEvent { json } => escape(json),
            Message::ControlReply { reply, .. } => match reply {
                ControlReply::Refused { reason, .. } => escape(reason),
                ControlReply::Status(status) => {
                    escape(&mut status.name);
                    escape(&mut status.root);
                    if let Some((source, _)) = &mut status.last_source {
                        escape(source);
                    }
                    for job in &mut status.jobs {
                        job.targets.iter_mut().for_each(escape);
                        if let Some(error) = &mut job.error {
                            escape(error);
                        }
                    }
                    for feed in &mut status.feeds {
                        escape(&mut feed.name);
                        escape(&mut feed.address);
                        feed.error.iter_mut().for_each(escape);
                    }
                    if let Some(subscription) = &mut status.subscription {
                        escape(&mut subscription.from);
                        subscription.error.iter_mut().for_each(escape);
                    }
                }
                ControlReply::Trash(batches) => {
                    for batch in batches {
                        escape(&mut batch.name);
                        batch.paths.iter_mut().for_each(escape);
                    }
                }
                ControlReply::Started { .. } | ControlReply::Done => {}
            },
            _ => {}
        }
    }

    /// The message's name, for errors and logs (never its content, which may be large).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::GetManifest { .. } => "GetManifest",
            Message::ManifestSame { .. } => "ManifestSame",
            Message::ManifestPart { .. } => "ManifestPart",
            Message::ManifestEnd { .. } => "ManifestEnd",
            Message::Mkdir { .. } => "Mkdir",
            Message::FileBegin(_) => "FileBegin",
            Message::BlockList { .. } => "BlockList",
            Message::Append(_) => "Append",
            Message::Data { .. } => "Data",
            Message::FileEnd { .. } => "FileEnd",
            Message::FileAbort { .. } => "FileAbort",
            Message::FileDone { .. } => "FileDone",
            Message::FileFailed { .. } => "FileFailed",
            Message::Delete { .. } => "Delete",
            Message::SetMeta { .. } => "SetMeta",
            Message::Finish => "Finish",
            Message::Finished { .. } => "Finished",
            Message::Control { .. } => "Control",
            Message::ControlReply { .. } => "ControlReply",
            Message::ControlEvent { .. } => "ControlEvent",
            Message::Pull { .. } => "Pull",
            Message::Pulled { .. } => "Pulled",
            Message::PullTrash { .. } => "PullTrash",
            Message::Load { .. } => "Load",
        }
    }
}

/// One file or folder in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
}

/// What an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File(FileMeta),
}

/// What both sides know about a file's content and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub mtime_ns: i128,
    pub executable: bool,
    /// Whole-file hash, see [`crate::hash::file_hash`].
    pub hash: Hash,
    /// One hash per [`BLOCK_SIZE`] block; the last may cover a shorter block.
    pub blocks: Vec<Hash>,
}

/// An interrupted transfer the target can resume: a temporary file holding the first
/// `verified_blocks` blocks of the version whose hash is `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    pub path: String,
    pub hash: Hash,
    pub verified_blocks: u64,
}

/// Start of a new file version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBegin {
    pub id: u64,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub executable: bool,
    pub hash: Hash,
    /// Block hashes; for large files the rest follows in `BlockList` messages.
    pub blocks: Vec<Hash>,
    /// Blocks the target already has, by index into the new version: where to copy them from.
    pub reuse: Vec<Reuse>,
    /// Resume a partial temporary file: its first `n` blocks are kept.
    pub resume_blocks: u64,
}

/// Take block `index` of the new version from block `from_index` of the target's `from_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reuse {
    pub index: u64,
    pub from_path: String,
    pub from_index: u64,
}

/// Grow a file in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub id: u64,
    pub path: String,
    /// The target's current length and hash, which must still hold.
    pub from_len: u64,
    pub from_hash: Hash,
    pub size: u64,
    pub mtime_ns: i128,
    pub executable: bool,
    pub hash: Hash,
    /// Hashes of blocks from the one holding `from_len` to the end.
    pub tail_blocks: Vec<Hash>,
}

/// Bytes of a block, compressed when that made them smaller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    // serde_bytes: a block is copied in one go, not deserialized byte by byte.
    Raw(#[serde(with = "serde_bytes")] Vec<u8>),
    Zstd(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Payload {
    /// Bytes this payload occupies on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Payload::Raw(b) | Payload::Zstd(b) => b.len(),
        }
    }
}

/// A message that broke the protocol's rules.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{what} is {got}, over the limit of {max}")]
    OverLimit {
        what: &'static str,
        got: u64,
        max: u64,
    },
}

/// Encodes a message for the wire.
pub fn encode(message: &Message) -> Vec<u8> {
    postcard::to_stdvec(message).expect("every message is serializable")
}

/// Decodes a message from the wire and checks every length and count in it.
pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge(bytes.len()));
    }
    let message: Message = match postcard::from_bytes(bytes) {
        Ok(message) => message,
        Err(e) => older_refused(bytes).ok_or_else(|| ProtocolError::Malformed(e.to_string()))?,
    };
    check_limits(&message)?;
    Ok(message)
}

/// The first byte of an encoded `Refused` (its variant's index).
const REFUSED_TAG: u8 = 2;

/// A `Refused` as version 2 wrote it (its reason alone). It is the one message a peer of
/// another version must still be understood in: it is how that peer says the versions differ.
/// Only a version-2 peer sends that shape, so it is a [`Refusal::Version`].
fn older_refused(bytes: &[u8]) -> Option<Message> {
    let rest = bytes.strip_prefix(&[REFUSED_TAG])?;
    let (reason, rest): (String, &[u8]) = postcard::take_from_bytes(rest).ok()?;
    rest.is_empty().then_some(Message::Refused {
        reason,
        refusal: Refusal::Version,
    })
}

fn limit(what: &'static str, got: usize, max: usize) -> Result<(), ProtocolError> {
    if got > max {
        return Err(ProtocolError::OverLimit {
            what,
            got: got as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ProtocolError> {
    limit("path length", path.len(), MAX_PATH_BYTES)
}

fn check_size(size: u64, blocks: usize, all_blocks_here: bool) -> Result<(), ProtocolError> {
    if size > MAX_FILE_SIZE {
        return Err(ProtocolError::OverLimit {
            what: "file size",
            got: size,
            max: MAX_FILE_SIZE,
        });
    }
    let expected = crate::hash::block_count(size);
    if (all_blocks_here && blocks as u64 != expected) || blocks as u64 > expected {
        return Err(ProtocolError::Malformed(format!(
            "a file of {size} bytes has {expected} blocks, not {blocks}"
        )));
    }
    Ok(())
}

fn check_limits(message: &Message) -> Result<(), ProtocolError> {
    match message {
        Message::Hello {
            token, source_name, ..
        } => {
            limit("token length", token.len(), MAX_TEXT_BYTES)?;
            limit("source name length", source_name.len(), MAX_TEXT_BYTES)
        }
        Message::Welcome { target_name } => {
            limit("target name length", target_name.len(), MAX_TEXT_BYTES)
        }
        Message::Refused { reason, .. }
        | Message::FileAbort { reason, .. }
        | Message::FileFailed { reason, .. } => {
            limit("reason length", reason.len(), MAX_TEXT_BYTES)
        }
        Message::ManifestPart { entries } => {
            limit("manifest part entries", entries.len(), MAX_ENTRIES_PER_PART)?;
            for entry in entries {
                check_path(&entry.path)?;
                if let EntryKind::File(meta) = &entry.kind {
                    check_size(meta.size, meta.blocks.len(), true)?;
                }
            }
            Ok(())
        }
        Message::ManifestEnd { partials } | Message::ManifestSame { partials } => {
            limit("partial files", partials.len(), MAX_ENTRIES_PER_PART)?;
            partials.iter().try_for_each(|p| check_path(&p.path))
        }
        Message::Mkdir { path } | Message::Delete { path } | Message::SetMeta { path, .. } => {
            check_path(path)
        }
        Message::FileBegin(begin) => {
            check_path(&begin.path)?;
            check_size(begin.size, begin.blocks.len(), false)?;
            limit(
                "blocks in FileBegin",
                begin.blocks.len(),
                MAX_BLOCKS_PER_MESSAGE,
            )?;
            limit("reused blocks", begin.reuse.len(), MAX_BLOCKS_PER_MESSAGE)?;
            let count = crate::hash::block_count(begin.size);
            if begin.resume_blocks > count {
                return Err(ProtocolError::Malformed(format!(
                    "resume from block {} of a file with {count} blocks",
                    begin.resume_blocks
                )));
            }
            for reuse in &begin.reuse {
                check_path(&reuse.from_path)?;
                if reuse.index >= count || reuse.from_index >= MAX_FILE_SIZE / BLOCK_SIZE {
                    return Err(ProtocolError::Malformed(format!(
                        "reused block {} out of range",
                        reuse.index
                    )));
                }
            }
            Ok(())
        }
        Message::BlockList { blocks, .. } => {
            limit("blocks in BlockList", blocks.len(), MAX_BLOCKS_PER_MESSAGE)
        }
        Message::Append(append) => {
            check_path(&append.path)?;
            if append.from_len > append.size {
                return Err(ProtocolError::Malformed(format!(
                    "append from {} to a smaller size {}",
                    append.from_len, append.size
                )));
            }
            check_size(append.size, 0, false)?;
            let first = append.from_len / BLOCK_SIZE;
            let tail = crate::hash::block_count(append.size).saturating_sub(first);
            if append.tail_blocks.len() as u64 != tail {
                return Err(ProtocolError::Malformed(format!(
                    "append needs {tail} tail block hashes, got {}",
                    append.tail_blocks.len()
                )));
            }
            limit(
                "tail blocks",
                append.tail_blocks.len(),
                MAX_BLOCKS_PER_MESSAGE,
            )
        }
        Message::Data {
            offset, payload, ..
        } => {
            limit(
                "payload length",
                payload.wire_len(),
                BLOCK_SIZE as usize + 1024,
            )?;
            if *offset > MAX_FILE_SIZE {
                return Err(ProtocolError::Malformed(format!(
                    "offset {offset} out of range"
                )));
            }
            Ok(())
        }
        Message::Control { request, .. } => match request {
            ControlRequest::Push { targets, .. } => {
                limit("push targets", targets.len(), MAX_PUSH_TARGETS)?;
                for t in targets {
                    limit("target address length", t.url.len(), MAX_TEXT_BYTES)?;
                    limit("token length", t.token.len(), MAX_TEXT_BYTES)?;
                    limit(
                        "fingerprint length",
                        t.fingerprint.as_ref().map_or(0, String::len),
                        MAX_TEXT_BYTES,
                    )?;
                }
                Ok(())
            }
            _ => Ok(()),
        },
        Message::ControlReply { reply, .. } => match reply {
            ControlReply::Refused { reason, .. } => {
                limit("reason length", reason.len(), MAX_TEXT_BYTES)
            }
            ControlReply::Trash(batches) => {
                limit("trash batches", batches.len(), MAX_PUSH_TARGETS * 16)?;
                for batch in batches {
                    limit("batch name length", batch.name.len(), MAX_TEXT_BYTES)?;
                    limit("batch paths", batch.paths.len(), 64)?;
                    for path in &batch.paths {
                        limit("path length", path.len(), MAX_PATH_BYTES)?;
                    }
                }
                Ok(())
            }
            ControlReply::Status(status) => {
                limit("pushes", status.jobs.len(), MAX_PUSH_TARGETS * 16)?;
                limit("feeds", status.feeds.len(), MAX_PUSH_TARGETS * 16)?;
                limit(
                    "name length",
                    status.name.len() + status.root.len(),
                    2 * MAX_TEXT_BYTES,
                )
            }
            _ => Ok(()),
        },
        Message::ControlEvent { json } => limit("event length", json.len(), 16 * MAX_TEXT_BYTES),
        Message::GetManifest { .. }
        | Message::FileEnd { .. }
        | Message::FileDone { .. }
        | Message::Finish
        | Message::Finished { .. }
        | Message::Pull { .. } => Ok(()),
        Message::Pulled { reason, .. } => limit("reason length", reason.len(), MAX_TEXT_BYTES),
        Message::PullTrash { batch } => {
            limit("batch name length", batch.len(), MAX_COMPONENT_BYTES)
        }
        Message::Load { busy_permille } => limit("busy share", usize::from(*busy_permille), 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>()
    }

    fn path() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ._-]{1,20}(/[a-zA-Z0-9 ._-]{1,20}){0,3}"
    }

    fn file_meta() -> impl Strategy<Value = FileMeta> {
        (0u64..BLOCK_SIZE * 4, any::<i64>(), any::<bool>(), hash()).prop_flat_map(
            |(size, mtime, executable, hash)| {
                let n = crate::hash::block_count(size) as usize;
                prop::collection::vec(super::tests::hash(), n).prop_map(move |blocks| FileMeta {
                    size,
                    mtime_ns: mtime as i128,
                    executable,
                    hash,
                    blocks,
                })
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            ("[ -~]{0,40}", "[ -~]{0,20}", any::<u32>()).prop_map(|(token, name, version)| {
                Message::Hello {
                    magic: MAGIC,
                    version,
                    token,
                    source_name: name,
                }
            }),
            "[ -~]{0,40}".prop_map(|reason| Message::Refused {
                reason,
                refusal: Refusal::Promoted
            }),
            prop::option::of(hash()).prop_map(|cached| Message::GetManifest { cached }),
            prop::collection::vec(
                (path(), prop::option::of(file_meta())).prop_map(|(path, meta)| Entry {
                    path,
                    kind: meta.map_or(EntryKind::Dir, EntryKind::File),
                }),
                0..5
            )
            .prop_map(|entries| Message::ManifestPart { entries }),
            (path(), hash(), 0u64..3).prop_map(|(path, hash, verified_blocks)| {
                Message::ManifestEnd {
                    partials: vec![Partial {
                        path,
                        hash,
                        verified_blocks,
                    }],
                }
            }),
            (path(), file_meta(), any::<u64>()).prop_map(|(path, meta, id)| {
                Message::FileBegin(FileBegin {
                    id,
                    reuse: meta
                        .blocks
                        .iter()
                        .enumerate()
                        .map(|(i, _)| Reuse {
                            index: i as u64,
                            from_path: path.clone(),
                            from_index: 0,
                        })
                        .collect(),
                    resume_blocks: 0,
                    path,
                    size: meta.size,
                    mtime_ns: meta.mtime_ns,
                    executable: meta.executable,
                    hash: meta.hash,
                    blocks: meta.blocks,
                })
            }),
            (
                any::<u64>(),
                0u64..1 << 30,
                prop::collection::vec(any::<u8>(), 0..64),
                any::<bool>()
            )
                .prop_map(|(id, offset, bytes, z)| Message::Data {
                    id,
                    offset,
                    payload: if z {
                        Payload::Zstd(bytes)
                    } else {
                        Payload::Raw(bytes)
                    },
                }),
            any::<u64>().prop_map(|id| Message::FileEnd { id }),
            (path(), any::<i64>(), any::<bool>()).prop_map(|(path, m, executable)| {
                Message::SetMeta {
                    path,
                    mtime_ns: m as i128,
                    executable,
                }
            }),
            path().prop_map(|path| Message::Delete { path }),
            hash().prop_map(|digest| Message::Finished { digest }),
            any::<bool>().prop_map(|once| Message::Pull { once }),
            (prop::option::of(hash()), "[a-z ]{0,40}")
                .prop_map(|(digest, reason)| Message::Pulled { digest, reason }),
            (0u16..=1000).prop_map(|busy_permille| Message::Load { busy_permille }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_decodes_back_to_itself(message in message()) {
            let bytes = encode(&message);
            prop_assert_eq!(decode(&bytes), Ok(message), "a message must survive the wire");
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn text_from_a_peer_is_escaped_and_paths_and_tokens_are_not() {
        let raw = "evil\u{1b}[2J";
        let mut hello = Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            token: raw.into(),
            source_name: raw.into(),
        };
        hello.escape_text();
        assert_eq!(
            hello,
            Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                token: raw.into(),
                source_name: "evil\\u{1b}[2J".into(),
            },
            "the name a source gives goes into logs and statuses escaped; its token is compared as it is"
        );
        let mut reply = Message::ControlReply {
            id: 1,
            reply: ControlReply::Status(Box::new(AgentStatus {
                name: raw.into(),
                root: raw.into(),
                role: FolderRole::Target,
                files: 0,
                bytes: 0,
                newest_mtime_ns: 0,
                receiving: false,
                last_source: Some((raw.into(), 0)),
                jobs: vec![JobStatus {
                    id: 1,
                    targets: vec![raw.into()],
                    watch: false,
                    state: JobState::Failed,
                    error: Some(raw.into()),
                }],
                feeds: vec![FeedStatus {
                    name: raw.into(),
                    address: raw.into(),
                    once: false,
                    connected: true,
                    in_sync_at: None,
                    error: Some(raw.into()),
                }],
                subscription: Some(SubscriptionStatus {
                    from: raw.into(),
                    connected: false,
                    last_session_at: None,
                    error: Some(raw.into()),
                }),
            })),
        };
        reply.escape_text();
        let Message::ControlReply {
            reply: ControlReply::Status(status),
            ..
        } = &reply
        else {
            unreachable!()
        };
        let texts = [
            &status.name,
            &status.root,
            &status.last_source.as_ref().unwrap().0,
            &status.jobs[0].targets[0],
            status.jobs[0].error.as_ref().unwrap(),
            &status.feeds[0].name,
            &status.feeds[0].address,
            status.feeds[0].error.as_ref().unwrap(),
            &status.subscription.as_ref().unwrap().from,
            status
                .subscription
                .as_ref()
                .unwrap()
                .error
                .as_ref()
                .unwrap(),
        ];
        for text in texts {
            assert!(!text.contains('\u{1b}'), "{text:?} is escaped");
        }
        let mut delete = Message::Delete { path: raw.into() };
        delete.escape_text();
        assert_eq!(
            delete,
            Message::Delete { path: raw.into() },
            "a path is checked (and refused) by the receiver, never rewritten"
        );
    }

    #[test]
    fn a_refusal_from_the_version_before_is_still_read() {
        let now = encode(&Message::Refused {
            reason: "why".into(),
            refusal: Refusal::Version,
        });
        assert_eq!(now[0], REFUSED_TAG);
        // Version 2: the tag, then the reason, and nothing after it.
        let older = postcard::to_stdvec(&(REFUSED_TAG, "protocol version mismatch")).unwrap();
        assert_eq!(
            decode(&older).unwrap(),
            Message::Refused {
                reason: "protocol version mismatch".into(),
                refusal: Refusal::Version,
            }
        );
        assert!(
            decode(&[REFUSED_TAG]).is_err(),
            "a truncated one is still malformed"
        );
    }

    #[test]
    fn oversize_message_is_refused_before_decoding() {
        let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode(&bytes),
            Err(ProtocolError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }

    #[test]
    fn a_file_with_a_wrong_block_count_is_malformed() {
        let message = Message::ManifestPart {
            entries: vec![Entry {
                path: "a".into(),
                kind: EntryKind::File(FileMeta {
                    size: BLOCK_SIZE * 3,
                    mtime_ns: 0,
                    executable: false,
                    hash: [0; 32],
                    blocks: vec![[0; 32]],
                }),
            }],
        };
        assert!(matches!(
            decode(&encode(&message)),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn a_long_path_is_over_the_limit() {
        let message = Message::Mkdir {
            path: "a".repeat(MAX_PATH_BYTES + 1),
        };
        assert!(matches!(
            decode(&encode(&message)),
            Err(ProtocolError::OverLimit { .. })
        ));
    }
}
