//! Wires scan, index, transport and the two ends of a mirror into the two things a user runs:
//! [`push_once`] on the source and [`Server`] on a target. This is the API the agent (and the
//! tray app) call; neither knows anything about how a mirror works inside.
//!
//! A push scans the source once per pass, then runs one session per target concurrently: each
//! target gets its own plan, all of them read blocks through one shared [`BlockSource`], and a
//! target that is down, refuses or fails is reported while the others go on. A pass ends with
//! each target's digest of what it now holds; a target whose digest differs from the source's
//! (a file changed while it was sent, a block a target could not copy) gets another pass.

use crate::event::{Event, PushReport, Skipped, TargetReport};
use crate::index::{Durability, Index, IndexError};
use crate::mirror::plan::{self, Plan};
use crate::mirror::receive::{ReceiveError, Receiver};
use crate::mirror::send::{self, BlockSource, SendError};
use crate::path::STATE_DIR;
use crate::protocol::{Hash, MAX_ENTRIES_PER_PART, Message, Refusal};
use crate::scan::{self, Tree};
use crate::snapshot::Snapshots;
use crate::transport::{self, ConnectOptions, Identity, Limits, Listener, Trust};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

mod continuous;
mod control;
mod proof;
pub use continuous::{Schedule, push_continuous, start_guard};
pub use control::{PushRefusal, Remote, RemoteError, check_target};

/// How long a session that ended reads what its source still sends, before closing.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a new session waits for the one still closing on the same folder.
const SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a stopped push waits for sessions that are not sending (connecting, listing).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// Target size of one manifest part.
const MANIFEST_PART_BYTES: usize = 4 << 20;

/// Why a push or a server could not run at all.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("source folder {path}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("{0}")]
    Setup(String),
}

/// One target of a push.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub url: String,
    pub trust: Trust,
    pub token: String,
}

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub source: PathBuf,
    pub targets: Vec<TargetSpec>,
    /// Where the source's index lives (see [`default_state_dir`]).
    pub state_dir: PathBuf,
    /// The name the targets log for this source.
    pub source_name: String,
    /// Passes before a target that is still not identical is reported as failed.
    pub passes: u32,
    pub compress: Compress,
    /// A target that makes no progress for this long is reported as failed.
    pub stall_timeout: std::time::Duration,
    /// A cap on the bytes per second sent to all targets together.
    pub bwlimit: Option<Arc<crate::rate::RateLimit>>,
    /// Where sync waits while the resource guard has it paused.
    pub gate: crate::guard::Gate,
    /// Refuse a sync that would delete more than this share of a target's files (see
    /// [`plan::mass_delete`]); `None` allows any.
    pub max_delete_share: Option<f64>,
    /// Paths of the source that are not mirrored.
    pub exclude: crate::exclude::Exclude,
}

/// The default for [`PushOptions::stall_timeout`].
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl PushOptions {
    /// Options with the defaults ([`crate::app::mirror`]): its passes, compression when it
    /// helps, the default stall timeout, no bandwidth cap, no guard, and the mass-delete
    /// guard at its share of a target's files. Shells build them through
    /// [`crate::app::Mirror`].
    pub fn new(source: PathBuf, targets: Vec<TargetSpec>, state_dir: PathBuf) -> PushOptions {
        PushOptions {
            source,
            targets,
            state_dir,
            source_name: "rainmaker".into(),
            passes: crate::app::mirror::PASSES,
            compress: Compress::Auto,
            stall_timeout: STALL_TIMEOUT,
            bwlimit: None,
            gate: crate::guard::Gate::open(),
            max_delete_share: Some(crate::app::mirror::MASS_DELETE_SHARE),
            exclude: crate::exclude::Exclude::none(),
        }
    }
}

/// Whether blocks are compressed with zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// Unless every target is on loopback, where the link is faster than the compressor.
    #[default]
    Auto,
    Always,
    Never,
}

impl Compress {
    fn wanted(self, targets: &[TargetSpec]) -> bool {
        match self {
            Compress::Always => true,
            Compress::Never => false,
            Compress::Auto => !targets.iter().all(|t| is_loopback_url(&t.url)),
        }
    }
}

/// Whether a target URL names a loopback host.
fn is_loopback_url(url: &str) -> bool {
    transport::Address::parse(url).is_ok_and(|a| a.is_loopback())
}

/// Where the source keeps the manifest a target had at the end of their last session.
fn cached_manifest_path(state_dir: &Path, url: &str) -> PathBuf {
    let key = hex::encode(crate::hash::block_hash(url.as_bytes()));
    state_dir
        .join("targets")
        .join(format!("{}.manifest", &key[..16]))
}

fn load_cached_manifest(path: &Path) -> Option<(Hash, Tree)> {
    let bytes = std::fs::read(path).ok()?;
    let (digest, entries): (Hash, Vec<crate::protocol::Entry>) =
        postcard::from_bytes(&bytes).ok()?;
    let mut tree = Tree::default();
    plan::add_entries(&mut tree, entries);
    (plan::digest(&tree) == digest).then_some((digest, tree))
}

fn save_cached_manifest(path: &Path, digest: Hash, tree: &Tree) -> std::io::Result<()> {
    let bytes =
        postcard::to_stdvec(&(digest, plan::to_entries(tree))).map_err(std::io::Error::other)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(temp, path)
}

/// RainMaker's data folder: `RAINMAKER_DATA_DIR` if set, else the OS's local data folder.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("RAINMAKER_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => dirs::data_local_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("rainmaker"),
    }
}

/// The default index folder of a source folder: one per source, under [`data_dir`].
pub fn default_state_dir(source: &Path) -> PathBuf {
    state_dir_in(&data_dir(), source)
}

/// The index folder of a source folder under the data folder `data`.
pub fn state_dir_in(data: &Path, source: &Path) -> PathBuf {
    let canonical = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    let key = crate::hash::block_hash(canonical.to_string_lossy().as_bytes());
    data.join("sources").join(&hex::encode(key)[..16])
}

/// The default known-peers file.
pub fn default_known_peers() -> PathBuf {
    data_dir().join("known_peers")
}

/// Checks that a target answers and accepts our token (a full handshake, then a clean
/// close); returns the name the target gives itself. What the dashboard's online state is.
pub async fn probe(
    target: &TargetSpec,
    source_name: &str,
) -> Result<String, transport::TransportError> {
    let conn = transport::connect(&ConnectOptions {
        url: target.url.clone(),
        trust: target.trust.clone(),
        token: target.token.clone(),
        source_name: source_name.to_owned(),
    })
    .await?;
    let name = conn.remote_name().to_owned();
    conn.close().await;
    Ok(name)
}

/// Threads that may hash at once: the trading platform keeps the other cores.
const HASH_THREADS: usize = 2;
static HASHING: Semaphore = Semaphore::const_new(HASH_THREADS);

/// Runs `work` (scanning, hashing) on a thread of the lowest priority (nice 19 on Unix, the
/// lowest thread priority on Windows), at most [`HASH_THREADS`] at once, so the trading
/// platform on the same machine always comes first.
async fn low_priority<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| EngineError::Setup(e.to_string()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rainmaker-hash".into())
        .spawn(move || {
            if let Err(e) =
                thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
            {
                tracing::debug!("cannot lower the hashing thread's priority: {e:?}");
            }
            let _ = tx.send(work());
        })
        .map_err(|e| EngineError::Setup(format!("cannot start a hashing thread: {e}")))?;
    rx.await
        .map_err(|_| EngineError::Setup("the hashing thread failed".into()))
}

/// Scans the source and records what changed in its index. `distrust` names files whose
/// records failed a proof: they are read whole, whatever `growth` says.
fn scan_source(
    source: &Path,
    exclude: &crate::exclude::Exclude,
    index: &Index,
    growth: scan::Growth,
    distrust: &[String],
    databases: &Snapshots,
) -> Result<scan::Scan, EngineError> {
    let mut previous = index.files()?;
    for path in distrust {
        if let Some(record) = previous.get_mut(path) {
            // No block to take on trust: the file is hashed in full, its stamp (and so an
            // executable bit the file system cannot show) kept.
            record.blocks.clear();
            record.racy = true;
        }
    }
    let scanned = scan::scan_excluding(source, &previous, exclude, growth, Some(databases))
        .map_err(|e| EngineError::Source {
            path: e.path,
            reason: e.reason,
        })?;
    // Lazily durable: after a crash the index falls back to an older state, whose records
    // still hold wherever the quick check accepts them; the rest is hashed again. An fsync
    // here would wait for every dirty page of the file system (ext4 orders data before
    // metadata), which is what a push of an unchanged folder must not do.
    index.apply(&scanned.changes, Durability::None)?;
    databases.retain(|path| scanned.databases.contains(path));
    if let Some(copied) = &scanned.copied {
        tracing::debug!(
            longest_step = ?copied.longest_step,
            steps = copied.steps,
            restarts = copied.restarts,
            bytes = copied.bytes,
            "databases copied"
        );
    }
    Ok(scanned)
}

/// Files no larger than this that failed on a target are read through a stable copy from
/// then on: a file that keeps changing fails its check on every target otherwise.
const COPY_FAILED_UP_TO: u64 = 64 << 20;

/// Marks the files that failed on a target in `outcome` to be read through stable copies.
fn read_failed_through_copies(databases: &Snapshots, tree: &Tree, outcome: &send::Outcome) {
    databases.mark_unstable(outcome.failed.iter().filter_map(|(path, _)| {
        tree.files
            .get(path)
            .filter(|r| r.stamp.size <= COPY_FAILED_UP_TO)
            .map(|_| path.clone())
    }));
}

/// The consistent copies of a source's databases, kept in its state folder.
fn snapshots(state_dir: &Path) -> Result<Snapshots, EngineError> {
    let dir = state_dir.join("snapshots");
    Snapshots::new(dir.clone()).map_err(|e| {
        EngineError::Setup(format!(
            "cannot create {} for the copies of live databases: {e}",
            dir.display()
        ))
    })
}

/// Tells listeners what a scan of the source found (the tree's digest, skipped paths);
/// returns the digest.
fn announce_scan(scanned: &scan::Scan, events: &broadcast::Sender<Event>) -> Hash {
    let digest = plan::digest(&scanned.tree);
    let _ = events.send(Event::Scanned {
        files: scanned.tree.files.len() as u64,
        files_hashed: scanned.files_hashed,
        bytes_hashed: scanned.bytes_hashed,
        digest: hex::encode(digest),
    });
    for problem in &scanned.problems {
        let _ = events.send(Event::Skipped {
            path: problem.path.clone(),
            reason: problem.reason.clone(),
        });
    }
    digest
}

/// Mirrors the source to every target once; returns when every target is identical or has
/// failed. Errors only when nothing could start (no source folder, no index).
pub async fn push_once(
    options: &PushOptions,
    events: &broadcast::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<PushReport, EngineError> {
    let started = Instant::now();
    let index = Arc::new(Index::open(&options.state_dir.join("index.redb"))?);
    let databases = Arc::new(snapshots(&options.state_dir)?);
    let compress = options.compress.wanted(&options.targets);
    let blocks = Arc::new(BlockSource::new(options.source.clone(), compress));
    let mut reports: Vec<TargetReport> = options
        .targets
        .iter()
        .map(|t| TargetReport {
            url: t.url.clone(),
            ..TargetReport::default()
        })
        .collect();
    let mut skipped = Vec::new();
    let mut files = 0;
    let mut done = vec![false; options.targets.len()];
    let mut stopped = false;
    for pass in 1..=options.passes.max(1) {
        if cancel.is_cancelled() {
            stopped = true;
            break;
        }
        // Targets connect and scan their side while the source scans its own.
        let (tree_tx, tree_rx) = tokio::sync::watch::channel(None::<(Arc<Tree>, Hash)>);
        let mut sessions = tokio::task::JoinSet::new();
        for (i, target) in options.targets.iter().enumerate() {
            if done[i] {
                continue;
            }
            let (target, tree_rx, blocks, events) = (
                target.clone(),
                tree_rx.clone(),
                blocks.clone(),
                events.clone(),
            );
            let options = options.clone();
            let cache = cached_manifest_path(&options.state_dir, &target.url);
            let stop = cancel.clone();
            sessions.spawn(async move {
                let started = Instant::now();
                let mut conn = None;
                let result = session(
                    &target, &options, &stop, &mut conn, tree_rx, &blocks, &events, &cache,
                )
                .await;
                if let Some(conn) = conn {
                    conn.close().await;
                }
                (i, result, started.elapsed().as_secs_f64())
            });
        }
        let (source, exclude, idx, dbs) = (
            options.source.clone(),
            options.exclude.clone(),
            index.clone(),
            databases.clone(),
        );
        // Every record is proven: a push that exits 0 has read every block it says is there.
        let scanned = low_priority(move || {
            scan_source(&source, &exclude, &idx, scan::Growth::Prove, &[], &dbs)
        })
        .await??;
        blocks.read_copies(scanned.copies.clone());
        tracing::debug!(elapsed = ?started.elapsed(), hashed = scanned.bytes_hashed, "source scanned");
        let digest = announce_scan(&scanned, events);
        files = scanned.tree.files.len() as u64;
        skipped = scanned
            .problems
            .iter()
            .map(|p| Skipped {
                path: p.path.clone(),
                reason: p.reason.clone(),
            })
            .collect();
        let tree = Arc::new(scanned.tree);
        let _ = tree_tx.send(Some((tree.clone(), digest)));
        let mut joined = Vec::new();
        {
            let all = async {
                while let Some(result) = sessions.join_next().await {
                    if let Ok(result) = result {
                        joined.push(result);
                    }
                }
            };
            tokio::pin!(all);
            tokio::select! {
                () = &mut all => {}
                () = cancel.cancelled() => {
                    // Sessions that are sending finish the block in flight and close cleanly;
                    // one still connecting or listing is given a moment, then dropped.
                    let _ = tokio::time::timeout(STOP_GRACE, &mut all).await;
                }
            }
        }
        if cancel.is_cancelled() {
            stopped = true;
        }
        for (i, result, seconds) in joined {
            let report = &mut reports[i];
            report.passes = pass;
            report.seconds += seconds;
            match result {
                Ok((outcome, plan, wire)) => {
                    report.files_sent += outcome.files_done;
                    report.bytes_changed += outcome.data_bytes;
                    report.wire_bytes += wire;
                    if outcome.digest == digest {
                        done[i] = true;
                        report.ok = true;
                        report.error = None;
                        let _ = events.send(Event::InSync {
                            target: report.url.clone(),
                        });
                    } else {
                        read_failed_through_copies(&databases, &tree, &outcome);
                        let why = outcome
                            .failed
                            .first()
                            .map(|(p, r)| {
                                if r.starts_with(p.as_str()) {
                                    r.clone()
                                } else {
                                    format!("{p}: {r}")
                                }
                            })
                            .unwrap_or_else(|| "the target changed during the mirror".into());
                        report.error = Some(format!(
                            "not identical after pass {pass} ({} of {} files failed; first: {why})",
                            outcome.failed.len(),
                            plan.files
                        ));
                    }
                }
                Err(error) => {
                    // A cut connection gets another pass, which resumes what was verified; a
                    // target that is down or refuses will not be better on a second pass.
                    if !error.is_cut() || pass == options.passes.max(1) {
                        done[i] = true;
                    }
                    report.error = Some(error.to_string());
                    report.refusal = Some(error.refusal());
                }
            }
        }
        if stopped || done.iter().all(|d| *d) {
            break;
        }
    }
    for report in &mut reports {
        if stopped && !report.ok {
            report.error = Some(SendError::Stopped.to_string());
            report.refusal = Some(Refusal::Other);
            continue;
        }
        if let (false, Some(reason)) = (report.ok, &report.error) {
            let _ = events.send(Event::TargetFailed {
                target: report.url.clone(),
                reason: reason.clone(),
                refusal: report.refusal.unwrap_or_default(),
            });
        }
    }
    let all_ok = reports.iter().all(|r| r.ok);
    Ok(PushReport {
        ok: all_ok && skipped.is_empty(),
        partial: all_ok && !skipped.is_empty(),
        stopped: stopped && !all_ok,
        seconds: started.elapsed().as_secs_f64(),
        files,
        bytes_read: blocks.bytes_read(),
        skipped,
        targets: reports,
    })
}

/// Waits for `until`; meanwhile a connection kept for the next sync answers the target's
/// pings, so the target does not take this source for frozen. A kept connection that breaks
/// while idle is dropped (the next sync connects anew).
async fn keep_alive_while<T>(
    conn: &mut Option<transport::Connection>,
    until: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(until);
    if let Some(kept) = conn.as_mut() {
        match kept.idle_until(&mut until).await {
            Ok(out) => return out,
            Err(e) => {
                tracing::debug!("the connection kept for the next sync ended: {e}");
                *conn = None;
            }
        }
    }
    until.await
}

/// One session with one target: connect, fetch its manifest, plan, send.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one distinct input of a session; a struct would only rename them"
)]
async fn session(
    target: &TargetSpec,
    options: &PushOptions,
    stop: &CancellationToken,
    open: &mut Option<transport::Connection>,
    mut tree_rx: tokio::sync::watch::Receiver<Option<(Arc<Tree>, Hash)>>,
    blocks: &Arc<BlockSource>,
    events: &broadcast::Sender<Event>,
    cache: &Path,
) -> Result<(send::Outcome, Plan, u64), SendError> {
    let (source_name, stall, limit) = (
        &options.source_name,
        options.stall_timeout,
        &options.bwlimit,
    );
    // A connection kept from the last round is used again: no new TLS handshake per sync.
    let reused = open.is_some();
    let mut conn = match open.take() {
        Some(conn) => conn,
        None => {
            transport::connect(&ConnectOptions {
                url: target.url.clone(),
                trust: target.trust.clone(),
                token: target.token.clone(),
                source_name: source_name.clone(),
            })
            .await?
        }
    };
    let started = Instant::now();
    tracing::debug!(target = %target.url, reused, "connected");
    // Bytes of this round only: a kept connection's counters run on from earlier rounds.
    let counted = |c: &transport::Connection| {
        c.wire_counter().load(std::sync::atomic::Ordering::Relaxed)
            + c.received_counter()
                .load(std::sync::atomic::Ordering::Relaxed)
    };
    let base = if reused { counted(&conn) } else { 0 };
    let cached = load_cached_manifest(cache);
    let (theirs, partials) = send::fetch_manifest(&mut conn, cached, stall).await?;
    // While the source still scans, the connection answers the target's pings.
    let scanned = conn
        .idle_until(async { tree_rx.wait_for(Option::is_some).await.map(|t| t.clone()) })
        .await?;
    let (tree, digest): (Arc<Tree>, Hash) = scanned
        .map_err(|_| SendError::Protocol("the source could not be scanned".into()))?
        .expect("waited for a tree");
    let tree = &tree;
    if let Some(share) = options.max_delete_share
        && let Some((doomed, held)) = plan::mass_delete(tree, &theirs, share)
    {
        conn.close().await;
        return Err(SendError::MassDelete {
            doomed,
            held,
            percent: share * 100.0,
        });
    }
    let (tree2, blocks2) = (tree.clone(), blocks.clone());
    let plan = tokio::task::spawn_blocking(move || {
        plan::plan(&tree2, &theirs, &partials, &mut |path, len| {
            blocks2.tail_hash(path, len)
        })
    })
    .await
    .map_err(|e| SendError::Protocol(format!("planning failed: {e}")))?;
    tracing::debug!(elapsed = ?started.elapsed(), target = %target.url, "manifest and plan ready");
    let _ = events.send(Event::Planned {
        target: target.url.clone(),
        files: plan.files,
        bytes: plan.data_bytes,
    });
    // Bytes on the wire both ways: what the source sent and what the target answered.
    let (sent, received) = (conn.wire_counter(), conn.received_counter());
    let outcome = send::send_plan(
        conn,
        &target.url,
        &plan,
        send::Pace {
            stall,
            limit: limit.as_deref(),
            gate: options.gate.clone(),
            stop: stop.clone(),
        },
        blocks,
        events,
    )
    .await?;
    let wire = sent.load(std::sync::atomic::Ordering::Relaxed)
        + received.load(std::sync::atomic::Ordering::Relaxed)
        - base;
    tracing::debug!(elapsed = ?started.elapsed(), target = %target.url, "plan sent and verified");
    let (outcome, conn) = outcome;
    *open = Some(conn);
    if outcome.digest == digest {
        if let Err(e) = save_cached_manifest(cache, digest, tree) {
            tracing::warn!("cannot keep the manifest of {}: {e}", target.url);
        }
    } else {
        let _ = std::fs::remove_file(cache);
    }
    Ok((outcome, plan, wire))
}

/// What a target agent serves.
#[derive(Debug)]
pub struct ServeOptions {
    pub root: PathBuf,
    pub listen: String,
    pub token: String,
    /// The token that also lets a client command this agent (see [`Remote`]); `None`: no
    /// remote control.
    pub admin_token: Option<String>,
    /// Plain ws:// instead of wss (loopback only).
    pub insecure: bool,
    /// The name sources see.
    pub name: String,
    /// How long deleted and replaced files are kept in the trash (`None`: not kept).
    pub trash_retention: Option<std::time::Duration>,
    /// The agents an admin client may tell this one to push to (`host:port` or
    /// `wss://host:port`); `None`: any pinned agent.
    pub push_to: Option<Vec<String>>,
}

/// Where an agent keeps its TLS identity (certificate and key) for the folder `root`.
pub fn identity_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("tls")
}

/// A target agent, bound and ready.
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    receiver: Arc<tokio::sync::Mutex<Receiver>>,
    tokens: Arc<transport::Tokens>,
    name: Arc<str>,
    fingerprint: Option<String>,
    agent: Arc<control::Agent>,
    /// Stops the pushes this agent was told to run when the server stops.
    pushes: CancellationToken,
    /// When the pairing token stops opening sessions (a one-time token), if it does.
    token_expires: Option<tokio::time::Instant>,
}

impl Server {
    /// Checks the root, opens its index, loads or creates the TLS identity, and binds.
    pub async fn bind(options: ServeOptions) -> Result<Server, EngineError> {
        if options.token.trim().is_empty() {
            return Err(EngineError::Setup(
                "the token is empty; put a long random secret in the token file".into(),
            ));
        }
        let root = options.root.clone();
        let retention = options.trash_retention;
        let receiver = tokio::task::spawn_blocking(move || Receiver::open(&root, retention))
            .await
            .map_err(|e| EngineError::Setup(e.to_string()))??;
        // The TLS key and the trash: the owner's and SYSTEM's only (Windows; Unix modes).
        let state = options.root.join(STATE_DIR);
        if let Err(e) = crate::fs::restrict_to_owner(&state) {
            tracing::warn!(
                "cannot limit {} to its owner and SYSTEM: {e}; other users of this machine may \
                 read the TLS key and the trash there (a file system without permissions, such \
                 as FAT, cannot do better: put the root on NTFS)",
                state.display()
            );
        }
        let identity = if options.insecure {
            None
        } else {
            Some(Identity::load_or_create(&identity_dir(&options.root))?)
        };
        let fingerprint = identity.as_ref().map(Identity::fingerprint);
        let listener = Listener::bind(&options.listen, identity).await?;
        if let Some(admin) = &options.admin_token
            && (admin.trim().is_empty() || admin == &options.token)
        {
            return Err(EngineError::Setup(
                "the admin token must be a secret of its own, not empty and not the pairing token"
                    .into(),
            ));
        }
        let push_to = match &options.push_to {
            Some(list) => Some(
                list.iter()
                    .map(|a| transport::authority_of(a))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let pushes = CancellationToken::new();
        Ok(Server {
            listener,
            receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
            agent: control::Agent::new(&options.root, &options.name, push_to, pushes.clone()),
            tokens: Arc::new(transport::Tokens {
                receive: options.token,
                admin: options.admin_token,
            }),
            name: options.name.into(),
            fingerprint,
            pushes,
            token_expires: None,
        })
    }

    /// Makes the pairing token a one-time token that expires `lifetime` from now: after it, a
    /// connection presenting it is refused as with a wrong token. A session opened before
    /// goes on to its end. (The tray's failback receiver: the token must not stay good for as
    /// long as the receiver happens to run.)
    pub fn expire_token_after(mut self, lifetime: std::time::Duration) -> Server {
        self.token_expires = Some(tokio::time::Instant::now() + lifetime);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The certificate fingerprint sources pin (`None` when insecure).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// This server with other limits than [`Limits::default`] (a short idle limit in tests).
    pub fn with_limits(self, limits: Limits) -> Server {
        Server {
            listener: self.listener.with_limits(limits),
            ..self
        }
    }

    /// Serves until `cancel` fires; one mirror session into the root at a time.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), EngineError> {
        let limits = self.listener.limits().clone();
        // What the tokens become once the pairing token expired: a secret nobody holds.
        let expired = Arc::new(transport::Tokens {
            receive: hex::encode(rand::random::<[u8; 32]>()),
            admin: self.tokens.admin.clone(),
        });
        loop {
            let incoming = tokio::select! {
                incoming = self.listener.accept() => incoming,
                () = cancel.cancelled() => break,
            };
            let incoming = match incoming {
                Ok(incoming) => incoming,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            let tokens = match self.token_expires {
                Some(at) if tokio::time::Instant::now() >= at => expired.clone(),
                _ => self.tokens.clone(),
            };
            let (tokens, name, receiver, cancel, agent, limits) = (
                tokens,
                self.name.clone(),
                self.receiver.clone(),
                cancel.clone(),
                self.agent.clone(),
                limits.clone(),
            );
            tokio::spawn(async move {
                let peer = incoming.peer_addr();
                match incoming.handshake_as(&tokens, &name).await {
                    Ok((mut conn, source, role)) => {
                        let first = match conn.recv_within(limits.idle).await {
                            Ok(Some(first)) => first,
                            // A check that the agent answers (the tray's online state).
                            Ok(None) | Err(_) => return,
                        };
                        if let Message::Control { .. } = first {
                            tracing::info!(%peer, %source, ?role, "control client connected");
                            agent.serve(conn, first, role).await;
                            return;
                        }
                        let end = match agent.start_session(&source) {
                            Ok(end) => end,
                            Err(reason) => {
                                tracing::warn!(%peer, %source, "refused a mirror session: {reason}");
                                let refused = Message::Refused {
                                    reason,
                                    refusal: Refusal::Promoted,
                                };
                                let _ = conn.send(&refused).await;
                                conn.close().await;
                                return;
                            }
                        };
                        tracing::info!(%peer, %source, "source connected");
                        let session = Session {
                            receiver,
                            cancel,
                            end,
                            limits,
                        };
                        let result = serve_session(conn, session, first).await;
                        agent.session_ended(&source);
                        match result {
                            Ok(()) => tracing::info!(%peer, %source, "session ended"),
                            Err(e) => tracing::warn!(%peer, %source, "session aborted: {e}"),
                        }
                    }
                    // The transport already logged the refusal with its cause.
                    Err(e) => tracing::debug!(%peer, "handshake failed: {e}"),
                }
            });
        }
        self.pushes.cancel();
        // Commanded pushes finish their block in flight and close cleanly.
        self.agent
            .wait_for_pushes(STOP_GRACE + std::time::Duration::from_secs(2))
            .await;
        // Let a session in flight close its files cleanly.
        let _ = self.receiver.lock().await;
        Ok(())
    }
}

/// What a mirror session into the folder runs with.
struct Session {
    receiver: Arc<tokio::sync::Mutex<Receiver>>,
    /// The agent stops.
    cancel: CancellationToken,
    /// The agent ends this session (a forced promotion).
    end: CancellationToken,
    limits: Limits,
}

/// Runs one session: the connection's messages go to a blocking worker that owns the
/// receiver; its replies go back on the connection. The source is pinged, and a source that
/// sends nothing for the idle limit (frozen, or its machine gone with the connection
/// half-open) is dropped, so the folder is free again.
async fn serve_session(
    conn: transport::Connection,
    session: Session,
    first: Message,
) -> Result<(), String> {
    let Session {
        receiver,
        cancel,
        end,
        limits,
    } = session;
    let (mut sender, mut incoming) = conn.split();
    // A source that reconnects after a cut may arrive while its old session is still closing:
    // wait a moment for the folder before turning anyone away.
    let waited = tokio::select! {
        waited = tokio::time::timeout(SESSION_WAIT, receiver.lock_owned()) => waited.ok(),
        () = end.cancelled() => None,
    };
    let Some(mut guard) = waited else {
        let (reason, refusal) = match end.is_cancelled() {
            true => (
                "the agent was promoted to be the source of this folder",
                Refusal::Promoted,
            ),
            false => (
                "another source is mirroring into this folder right now; try again when it ends",
                Refusal::Busy,
            ),
        };
        let _ = sender
            .send(&Message::Refused {
                reason: reason.into(),
                refusal,
            })
            .await;
        sender.close().await;
        return Err(reason.into());
    };
    let (in_tx, mut in_rx) = mpsc::channel::<Message>(64);
    let (out_tx, out_rx) = mpsc::channel::<Message>(64);
    let _ = in_tx.try_send(first);
    // Set when the source itself closed the connection (not a cut, not this agent stopping):
    // only then is what arrived whole applied before the session's end.
    let closed_by_source = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source_closed = closed_by_source.clone();
    let worker = tokio::task::spawn_blocking(move || {
        guard.begin_session();
        let result = work(&mut guard, &mut in_rx, &out_tx);
        let clean = result.is_ok() && source_closed.load(std::sync::atomic::Ordering::SeqCst);
        guard.close(clean);
        if let Err(reason) = &result {
            let _ = out_tx.blocking_send(Message::Refused {
                reason: reason.clone(),
                refusal: Refusal::Other,
            });
        }
        result
    });
    // Ends the reading side once the worker has nothing more to say.
    let finished = cancel.child_token();
    let idle = limits.idle;
    // Set once the session is over for this agent (the worker ended, or the agent stops):
    // what the source still sends is read and dropped, never given to the worker.
    let drain = std::sync::atomic::AtomicBool::new(false);
    let drain = &drain;
    let reading = async move {
        let mut draining = false;
        let result = loop {
            let next = tokio::select! {
                next = incoming.recv_within(idle) => next.map_err(|e| match e {
                    transport::TransportError::Closed { .. } => ReadEnd::Closed(e.to_string()),
                    other => ReadEnd::Failed(other.to_string()),
                }),
                () = end.cancelled() => Err(ReadEnd::Failed(
                    "the agent was promoted to be the source of this folder; its mirror session was ended".to_string(),
                )),
            };
            let reason = match next {
                Ok(Some(message)) => {
                    // Once the worker is done (it refused), what still comes is read and
                    // dropped: closing with unread data would reset the connection, and the
                    // source would lose the refusal it is about to read.
                    if !draining
                        && (drain.load(std::sync::atomic::Ordering::SeqCst)
                            || in_tx.send(message).await.is_err())
                    {
                        draining = true;
                    }
                    continue;
                }
                Ok(None) => {
                    // A clean close: the worker sees its channel end and applies what
                    // arrived whole.
                    closed_by_source.store(true, std::sync::atomic::Ordering::SeqCst);
                    break Err(ReadEnd::Closed(
                        "the source closed the connection".to_string(),
                    ));
                }
                Err(end) => end,
            };
            let (ReadEnd::Closed(text) | ReadEnd::Failed(text)) = &reason;
            let _ = in_tx
                .send(Message::Refused {
                    reason: text.clone(),
                    refusal: Refusal::Other,
                })
                .await;
            break Err(reason);
        };
        drop(in_tx);
        result
    };
    let reading = async {
        tokio::pin!(reading);
        tokio::select! {
            r = &mut reading => r,
            () = finished.cancelled() => {
                // The last reply and the close are sent (or the agent stops): read, and drop,
                // until the source closes too (a moment at most), so the connection is not reset
                // under its last reply.
                drain.store(true, std::sync::atomic::Ordering::SeqCst);
                tokio::time::timeout(CLOSE_LINGER, &mut reading).await.unwrap_or(Ok(()))
            }
        }
    };
    // A source that stopped reading must not hold the writer either: every write is bounded
    // by the idle limit, and the replies channel is dropped with the writer, so the worker
    // never waits on it.
    let writing = async {
        let mut out_rx = out_rx;
        let mut ping = tokio::time::interval(limits.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sent = tokio::select! {
                message = out_rx.recv() => match message {
                    Some(message) => tokio::time::timeout(idle, sender.send(&message)).await,
                    None => break,
                },
                _ = ping.tick() => tokio::time::timeout(idle, sender.ping()).await,
            };
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        drop(out_rx);
        sender.close().await;
        finished.cancel();
    };
    let (read_result, (), worked) = tokio::join!(reading, writing, worker);
    if cancel.is_cancelled() {
        return Err("the agent is shutting down".into());
    }
    let worked = worked.map_err(|e| e.to_string())?;
    worked.and(match read_result {
        // The source closed the connection, or it was cut after the worker's end: the worker
        // decided what the session applied.
        Ok(()) | Err(ReadEnd::Closed(_)) => Ok(()),
        Err(ReadEnd::Failed(e)) => Err(e),
    })
}

/// How reading a session's messages ended.
enum ReadEnd {
    /// The source closed the connection, or it was cut.
    Closed(String),
    /// Anything else: the reason.
    Failed(String),
}

/// The worker's loop over the session's messages.
fn work(
    receiver: &mut Receiver,
    incoming: &mut mpsc::Receiver<Message>,
    out: &mpsc::Sender<Message>,
) -> Result<(), String> {
    let reply = |m: Message| {
        out.blocking_send(m)
            .map_err(|_| "connection lost".to_string())
    };
    while let Some(message) = incoming.blocking_recv() {
        match message {
            Message::GetManifest { cached } => {
                let (entries, partials) = receiver.manifest().map_err(|e| e.to_string())?;
                if cached == Some(receiver.digest()) {
                    reply(Message::ManifestSame { partials })?;
                    continue;
                }
                let mut part = Vec::new();
                let mut bytes = 0;
                for entry in entries {
                    let size = entry_size(&entry);
                    if !part.is_empty()
                        && (part.len() == MAX_ENTRIES_PER_PART
                            || bytes + size > MANIFEST_PART_BYTES)
                    {
                        reply(Message::ManifestPart {
                            entries: std::mem::take(&mut part),
                        })?;
                        bytes = 0;
                    }
                    bytes += size;
                    part.push(entry);
                }
                if !part.is_empty() {
                    reply(Message::ManifestPart { entries: part })?;
                }
                reply(Message::ManifestEnd { partials })?;
            }
            Message::Refused { reason, .. } => return Err(reason),
            message => {
                let finished = matches!(message, Message::Finish);
                for r in receiver.handle(message).map_err(|e| e.to_string())? {
                    reply(r)?;
                }
                if finished {
                    tracing::info!(root = %receiver.root().display(), "mirror finished and verified");
                }
            }
        }
    }
    Ok(())
}

/// Bytes a manifest entry takes on the wire, roughly (for cutting the manifest in parts).
fn entry_size(entry: &crate::protocol::Entry) -> usize {
    match &entry.kind {
        crate::protocol::EntryKind::Dir => entry.path.len() + 8,
        crate::protocol::EntryKind::File(meta) => entry.path.len() + 80 + 33 * meta.blocks.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_at_the_lowest_priority() {
        let nice = low_priority(|| {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Field 19 is the nice value; fields after the command name in parentheses.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after
                .split_whitespace()
                .nth(16)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            nice > 0,
            "the hashing thread must yield to the trading platform: nice {nice}"
        );
    }

    #[cfg(windows)]
    #[tokio::test]
    async fn hashing_runs_at_the_lowest_priority() {
        use thread_priority::{ThreadPriority, WinAPIThreadPriority, get_current_thread_priority};
        let priority = low_priority(get_current_thread_priority)
            .await
            .unwrap()
            .expect("GetThreadPriority answers");
        assert_eq!(
            priority,
            ThreadPriority::Os(WinAPIThreadPriority::Lowest.into()),
            "the hashing thread must yield to the trading platform (THREAD_PRIORITY_LOWEST)"
        );
        assert_eq!(
            get_current_thread_priority().unwrap(),
            ThreadPriority::Os(WinAPIThreadPriority::Normal.into()),
            "only the hashing thread is lowered"
        );
    }

    #[cfg(windows)]
    #[test]
    fn the_data_folder_is_under_localappdata() {
        if std::env::var_os("RAINMAKER_DATA_DIR").is_some() {
            return;
        }
        let local = std::env::var_os("LOCALAPPDATA").expect("Windows sets %LOCALAPPDATA%");
        assert_eq!(
            data_dir(),
            std::path::Path::new(&local).join("rainmaker"),
            "indexes, identity and logs are this machine's: %LOCALAPPDATA%, not the roaming profile"
        );
    }

    #[tokio::test]
    async fn a_one_time_token_opens_no_session_after_it_expired() {
        let root = tempfile::tempdir().unwrap();
        let server = Server::bind(ServeOptions {
            root: root.path().to_path_buf(),
            listen: "127.0.0.1:0".into(),
            token: "one-time".into(),
            admin_token: None,
            insecure: false,
            name: "this-pc".into(),
            trash_retention: None,
            push_to: None,
        })
        .await
        .unwrap()
        .expire_token_after(std::time::Duration::from_millis(500));
        let spec = TargetSpec {
            url: format!("wss://127.0.0.1:{}", server.local_addr().port()),
            trust: Trust::Pinned(server.fingerprint().unwrap().to_owned()),
            token: "one-time".into(),
        };
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        probe(&spec, "server")
            .await
            .expect("the token opens a session before it expires");
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let refused = probe(&spec, "server").await;
        stop.cancel();
        assert!(
            matches!(refused, Err(transport::TransportError::Refused { .. })),
            "an expired one-time token must be refused, got {refused:?}"
        );
    }

    #[test]
    fn loopback_targets_are_recognised() {
        assert!(is_loopback_url("wss://127.0.0.1:7878"));
        assert!(is_loopback_url("wss://localhost:7878"));
        assert!(is_loopback_url("wss://[::1]:7878"));
        assert!(!is_loopback_url("wss://10.0.0.5:7878"));
        assert!(!is_loopback_url("wss://backup.example.com:7878"));
    }
}
