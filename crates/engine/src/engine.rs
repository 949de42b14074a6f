//! Wires scan, index, transport and the two ends of a mirror into the two things a user runs:
//! [`push_once`] on the source and [`Server`] on a target. This is the API the agent (and the
//! tray app) call; neither knows anything about how a mirror works inside.
//!
//! A push scans the source once per pass, then runs one session per target concurrently: each
//! target gets its own plan, all of them read blocks through one shared [`BlockSource`], and a
//! target that is down, refuses or fails is reported while the others go on. A pass ends with
//! each target's digest of what it now holds; a target whose digest differs from the source's
//! (a file changed while it was sent, a block a target could not copy) gets another pass.
//!
//! Parts: `push` ([`push_once`] and one session with one target), `continuous`
//! ([`push_continuous`]) and `trigger` (when it scans), `proof` (proving what a scan took on trust), `server` ([`Server`]),
//! `control` (commands to an agent, [`Remote`]), `source` (reading the source: the hashing
//! pool, the scan, database copies), `manifest_cache` (a target's last manifest) and `paths`
//! (the data folder).

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
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

mod continuous;
mod control;
mod deletions;
mod folder;
mod guess;
mod load;
mod manifest_cache;
mod paths;
mod proof;
mod push;
mod server;
mod source;
mod subscribe;
mod trigger;
pub use continuous::{Schedule, push_continuous, start_guard};
pub use control::{PushRefusal, Remote, RemoteError, check_target};
use deletions::Deletions;
use manifest_cache::{Kept, cached_manifest_path};
pub use paths::{data_dir, default_known_peers, default_state_dir, state_dir_in};
pub use push::push_once;
use push::{keep_alive_while, session};
pub use server::{ServeOptions, Server, identity_dir};
use source::{
    announce_scan, low_priority, read_failed_through_copies, rescan_source, scan_source, snapshots,
};
pub use subscribe::{DIAL_LIMIT, PullOptions, Pulled, SUBSCRIBER_IDLE, Subscription, pull_once};

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
    /// The target's address (for a target that dialed in, a label naming it).
    pub url: String,
    pub trust: Trust,
    pub token: String,
    /// A target that dialed this agent: the push uses its connection and never dials.
    pub dialed_in: Option<DialedIn>,
}

impl TargetSpec {
    /// A target this push dials at `url`, trusting its certificate as `trust`, with `token`.
    pub fn dial(url: impl Into<String>, trust: Trust, token: impl Into<String>) -> TargetSpec {
        TargetSpec {
            url: url.into(),
            trust,
            token: token.into(),
            dialed_in: None,
        }
    }
}

/// The connection a target opened to this agent to receive its folder (a subscriber behind
/// NAT, or a failback), handed to a push as the way to reach that target. The push takes it for
/// a session and gives it back after; once it is lost (`gone` fires) the target is gone for
/// this push, which never dials it: the target dials again and gets a push of its own.
#[derive(Clone)]
pub struct DialedIn {
    slot: Arc<std::sync::Mutex<Option<transport::Connection>>>,
    loopback: bool,
    gone: CancellationToken,
}

impl std::fmt::Debug for DialedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialedIn")
            .field("loopback", &self.loopback)
            .field("gone", &self.gone.is_cancelled())
            .finish()
    }
}

impl DialedIn {
    /// `conn`, opened by the target from `peer`. The target pings (every target does), so a
    /// connection silent for `quiet` while the push waits is taken for lost: a link cut behind
    /// a router says nothing.
    pub fn new(mut conn: transport::Connection, peer: SocketAddr, quiet: Duration) -> DialedIn {
        conn.expect_pings_within(quiet);
        DialedIn {
            slot: Arc::new(std::sync::Mutex::new(Some(conn))),
            loopback: transport::is_loopback(peer.ip()),
            gone: CancellationToken::new(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<transport::Connection>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection, for one session; `None` once it was lost (and then `gone` fires).
    fn take(&self) -> Option<transport::Connection> {
        let conn = self.slot().take();
        if conn.is_none() {
            self.gone.cancel();
        }
        conn
    }

    /// The connection back after a session that left it open.
    fn give_back(&self, conn: transport::Connection) {
        *self.slot() = Some(conn);
    }

    /// The connection, for its last message and its close, once the push is over.
    pub fn into_connection(self) -> Option<transport::Connection> {
        self.slot().take()
    }

    /// Fires once the connection is lost.
    pub fn gone(&self) -> CancellationToken {
        self.gone.clone()
    }
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
    /// A deletion a person confirmed after a mass-delete stop: on the target at this address,
    /// up to this many files may go whatever their share. More than that stops again.
    pub confirmed_delete: Option<(String, usize)>,
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
            confirmed_delete: None,
            exclude: crate::exclude::Exclude::none(),
        }
    }
}

/// Whether blocks are compressed with zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// Per target, at the level that moves data fastest to it, measured as it goes
    /// ([`send::Adapt`]): starting uncompressed on loopback, where the link is faster than the
    /// compressor, and at zstd level 1 elsewhere.
    #[default]
    Auto,
    /// Always zstd level 1.
    Always,
    Never,
}

impl Compress {
    /// How blocks are compressed for `target`.
    fn adapt_for(self, target: &TargetSpec) -> send::Adapt {
        use send::{Adapt, Level};
        match self {
            Compress::Always => Adapt::fixed(Level::Zstd(1)),
            Compress::Never => Adapt::fixed(Level::Raw),
            Compress::Auto => {
                let loopback = match &target.dialed_in {
                    Some(dialed) => dialed.loopback,
                    None => is_loopback_url(&target.url),
                };
                Adapt::adaptive(if loopback { Level::Raw } else { Level::Zstd(1) })
            }
        }
    }
}

/// Whether a target URL names a loopback host.
fn is_loopback_url(url: &str) -> bool {
    transport::Address::parse(url).is_ok_and(|a| a.is_loopback())
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
            subscribe_token: None,
            subscribe: None,
            insecure: false,
            name: "this-pc".into(),
            trash_retention: None,
            push_to: None,
        })
        .await
        .unwrap()
        .expire_token_after(std::time::Duration::from_millis(500));
        let spec = TargetSpec::dial(
            format!("wss://127.0.0.1:{}", server.local_addr().port()),
            Trust::Pinned(server.fingerprint().unwrap().to_owned()),
            "one-time",
        );
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
