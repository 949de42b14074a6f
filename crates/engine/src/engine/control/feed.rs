//! The agent's side of a pull: a peer that dialed in with the subscribe (or admin) token and
//! sent `Pull` receives the agent's folder over the connection it opened. Continuously for a
//! subscriber (an off-cloud server behind NAT keeping a hot mirror of a cloud agent), once for
//! a failback (a trading PC behind NAT taking its folder back from the promoted server).
//!
//! The agent runs the source's side of an ordinary mirror for it (`app::Mirror` with the peer
//! as its one target, reached over its own connection: [`DialedIn`]), so everything a push
//! proves holds here too. A feed never dials: when the connection is lost the feed ends, and
//! the peer dials again. One feed per peer at a time (its name, the address it dials from, and
//! whether it pulls once): a newer connection from the same peer ends the older feed and waits
//! for it to let go of its index. Each peer has its own index under the agent's state folder,
//! so a reconnect does not hash the folder again. A feed's status is changed only by the feed
//! of its generation, never by one a newer connection replaced.

use super::Agent;
use crate::app::{Ended, Mirror, Overrides};
use crate::config::Mode;
use crate::engine::{DialedIn, TargetSpec};
use crate::event::Event;
use crate::path::STATE_DIR;
use crate::protocol::{FeedStatus, MAX_TEXT_BYTES, Message};
use crate::transport::{Connection, Role, Trust};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How long a newer connection waits for the feed it replaces to end.
const REPLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// Most feeds at once: each reads the folder and keeps an index; a token holder who dials in
/// under ever new names is refused beyond this.
const MAX_FEEDS: usize = 16;
/// Most peers remembered (with their index) after their feed ended; the oldest is forgotten,
/// and its index removed, first.
const MAX_REMEMBERED: usize = 64;

/// The peers that receive the agent's folder over connections they opened.
#[derive(Debug, Default)]
pub(in crate::engine) struct Feeds {
    entries: Mutex<Vec<Feed>>,
    generations: std::sync::atomic::AtomicU64,
}

/// A connection's hold on its peer's feed entry.
struct Begun {
    generation: u64,
    cancel: CancellationToken,
    turn: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Feed {
    key: String,
    /// Which connection owns this entry now: each new one takes the next number.
    generation: u64,
    status: FeedStatus,
    /// Ends this feed's push (a newer connection from the same peer, or the agent stopping).
    cancel: CancellationToken,
    /// One push per peer at a time: the next waits for the last to let go of its index.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Feeds {
    fn entries(&self) -> MutexGuard<'_, Vec<Feed>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every feed's status, newest first.
    pub(in crate::engine) fn statuses(&self) -> Vec<FeedStatus> {
        self.entries()
            .iter()
            .rev()
            .map(|f| f.status.clone())
            .collect()
    }

    /// Registers a new connection for `key`: the feed it replaces (if any) is told to end.
    /// Returns the new feed's cancel token and the turn to wait for; refused (with the reason)
    /// when [`MAX_FEEDS`] other peers are connected. Forgets the oldest ended feeds beyond
    /// [`MAX_REMEMBERED`], removing their indexes under `root`.
    fn begin(
        &self,
        root: &Path,
        key: &str,
        status: FeedStatus,
        stop: &CancellationToken,
    ) -> Result<Begun, String> {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.entries();
        let cancel = stop.child_token();
        if let Some(feed) = entries.iter_mut().find(|f| f.key == key) {
            feed.cancel.cancel();
            feed.cancel = cancel.clone();
            feed.generation = generation;
            feed.status = status;
            return Ok(Begun {
                generation,
                cancel,
                turn: feed.turn.clone(),
            });
        }
        if entries.iter().filter(|f| f.status.connected).count() >= MAX_FEEDS {
            return Err(format!(
                "{MAX_FEEDS} peers are receiving this folder already; try again when one has ended"
            ));
        }
        while entries.len() >= MAX_REMEMBERED {
            let Some(oldest) = entries.iter().position(|f| !f.status.connected) else {
                break;
            };
            let forgotten = entries.remove(oldest);
            let _ = std::fs::remove_dir_all(feed_dir(root, &forgotten.key));
        }
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        entries.push(Feed {
            key: key.to_owned(),
            generation,
            status,
            cancel: cancel.clone(),
            turn: turn.clone(),
        });
        Ok(Begun {
            generation,
            cancel,
            turn,
        })
    }

    /// Changes the status of `key`'s feed, if connection `generation` still owns it.
    fn update(&self, key: &str, generation: u64, change: impl FnOnce(&mut FeedStatus)) {
        let mut entries = self.entries();
        if let Some(feed) = entries
            .iter_mut()
            .find(|f| f.key == key && f.generation == generation)
        {
            change(&mut feed.status);
        }
    }
}

/// Where the feed `key` keeps its index of the agent's folder.
fn feed_dir(root: &Path, key: &str) -> PathBuf {
    let id = blake3::hash(key.as_bytes()).to_hex();
    root.join(STATE_DIR).join("feeds").join(&id[..16])
}

/// A peer's connection that asked for the folder.
#[derive(Debug)]
pub(in crate::engine) struct Pull {
    pub conn: Connection,
    pub peer: SocketAddr,
    /// The name the peer gave in its hello.
    pub name: String,
    pub once: bool,
    /// The peer pings; silent this long while the feed waits, it is taken for gone.
    pub quiet: std::time::Duration,
    /// A batch of the trash to send (its name and folder) instead of the folder: a restore.
    pub trash: Option<(String, PathBuf)>,
}

impl Agent {
    /// What a peer of `role` that sent `asked` (`Pull`, or `PullTrash`, the admin's way to
    /// take back what sessions deleted or replaced) is fed: once or not, and the trash batch
    /// (its name and folder) in place of the folder; else why it is refused.
    pub(in crate::engine) fn pull_asked(
        &self,
        role: Role,
        asked: &Message,
    ) -> Result<(bool, Option<(String, PathBuf)>), String> {
        match asked {
            Message::Pull { once } => self.may_pull(role).map(|()| (*once, None)),
            Message::PullTrash { batch } => {
                if role != Role::Admin {
                    return Err(format!(
                        "only {}'s admin code may take back what its trash holds",
                        self.name
                    ));
                }
                self.may_pull(role)?;
                let dir = self.trash_batch(batch).ok_or_else(|| {
                    format!(
                        "{}'s trash holds no batch {batch:?} (batches are kept for a week)",
                        self.name
                    )
                })?;
                Ok((true, Some((batch.clone(), dir))))
            }
            other => Err(format!("{} is not a pull", other.name())),
        }
    }

    /// Mirrors the folder to a peer over the connection it opened, until the mirror is done
    /// (`once`), the connection is lost, a newer connection from the same peer takes over, or
    /// `stop` fires.
    pub(in crate::engine) async fn feed(self: Arc<Self>, pull: Pull, stop: CancellationToken) {
        let Pull {
            conn,
            peer,
            name,
            once,
            quiet,
            trash,
        } = pull;
        let once = once || trash.is_some();
        // Bound to the address it dials from too: a holder of the token elsewhere, under the
        // same name, cannot end this peer's feed.
        let kind = match &trash {
            Some((batch, _)) => format!("trash {batch}"),
            None if once => "once".to_owned(),
            None => "subscriber".to_owned(),
        };
        let key = format!("{kind}:{name}@{}", peer.ip());
        let status = FeedStatus {
            name: name.clone(),
            address: peer.to_string(),
            once,
            connected: true,
            in_sync_at: None,
            error: None,
        };
        let Begun {
            generation,
            cancel,
            turn,
        } = match self.feeds.begin(&self.root, &key, status, &stop) {
            Ok(begun) => begun,
            Err(reason) => {
                tracing::warn!(%peer, %name, "refused a pull: {reason}");
                let mut conn = conn;
                let refused = Message::Refused {
                    reason,
                    refusal: crate::protocol::Refusal::Busy,
                };
                let _ = conn.send(&refused).await;
                conn.close().await;
                return;
            }
        };
        let waited = tokio::select! {
            turn = tokio::time::timeout(REPLACE_WAIT, turn.lock_owned()) => turn.ok(),
            () = cancel.cancelled() => None,
        };
        let Some(_turn) = waited else {
            let reason = "the connection before it from the same peer did not end in time, or a newer one came";
            tracing::warn!(%peer, %name, "a pull was dropped: {reason}");
            self.feeds.update(&key, generation, |status| {
                status.connected = false;
                status.error = Some(reason.to_owned());
            });
            conn.close().await;
            return;
        };
        let state_dir = feed_dir(&self.root, &key);
        // The feed this one replaced was dropped at once; a scan of its may still hold the
        // index for a moment.
        index_free(&state_dir).await;
        tracing::info!(%peer, %name, once, "a peer that dialed in receives this folder");
        let dialed = DialedIn::new(conn, peer, quiet);
        let target = TargetSpec {
            url: name.clone(),
            trust: Trust::Insecure,
            token: String::new(),
            dialed_in: Some(dialed.clone()),
        };
        let mode = if once { Mode::Manual } else { Mode::Watch };
        let source = trash.map_or_else(|| self.root.clone(), |(_, dir)| dir);
        let mirror = Mirror::new(
            &Mirror::folder(source, mode),
            vec![target],
            &self.root,
            self.name.clone(),
            Overrides {
                state_dir: Some(state_dir),
                ..Overrides::default()
            },
        );
        let run = cancel.child_token();
        // A lost connection ends the feed: the peer dials again.
        let (gone, ends) = (dialed.gone(), run.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = gone.cancelled() => ends.cancel(),
                () = ends.cancelled() => {}
            }
        });
        let (events, tracked) = broadcast::channel(256);
        let tracking = tokio::spawn(self.clone().track(key.clone(), generation, tracked));
        // A newer connection from the same peer took over (this one is dead, or the peer
        // dialed again): this push is dropped at once, not given the grace to finish a block
        // nobody will verify, so the new one starts without waiting. When the agent stops,
        // the push stops cleanly instead.
        let replaced = async {
            cancel.cancelled().await;
            if stop.is_cancelled() {
                std::future::pending::<()>().await;
            }
        };
        let ended = match mirror {
            Ok(mirror) => tokio::select! {
                ended = mirror.run(None, None, &events, &run) => ended.map_err(|e| e.to_string()),
                () = replaced => Err("a newer connection from the same peer took over".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        run.cancel();
        drop(events);
        let _ = tracking.await;
        let (digest, reason) = match &ended {
            Ok(Ended::Pushed(report)) if report.ok => (report.digest, String::new()),
            Ok(Ended::Pushed(report)) => (None, failure(report)),
            Ok(Ended::Stopped) => (None, "stopped".to_owned()),
            Err(e) => (None, e.clone()),
        };
        let in_sync = digest.is_some();
        if let Some(mut conn) = dialed.into_connection() {
            if once {
                let reason = crate::transport::truncate(&reason, MAX_TEXT_BYTES).to_owned();
                let _ = conn.send(&Message::Pulled { digest, reason }).await;
            }
            conn.close().await;
        }
        self.feeds.update(&key, generation, |status| {
            status.connected = false;
            if once && !in_sync {
                status.error = Some(reason.clone());
            }
        });
        tracing::info!(%peer, %name, once, in_sync, "the peer's feed ended{}", match reason.is_empty() {
            true => String::new(),
            false => format!(": {reason}"),
        });
    }

    /// Follows a feed's events: passes them on to the agent's followers, and keeps the feed's
    /// status.
    async fn track(
        self: Arc<Self>,
        key: String,
        generation: u64,
        mut events: broadcast::Receiver<Event>,
    ) {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match &event {
                Event::InSync { .. } => self.feeds.update(&key, generation, |s| {
                    s.in_sync_at = Some(super::unix_now());
                    s.error = None;
                }),
                Event::TargetFailed { reason, .. } => self.feeds.update(&key, generation, |s| {
                    s.error = Some(reason.clone());
                }),
                _ => {}
            }
            let _ = self.events.send(event);
        }
    }
}

/// Waits (at most [`REPLACE_WAIT`]) until the index in `state_dir` can be opened: the scan of a
/// feed that was dropped may hold it a moment longer (it runs on a thread of its own).
async fn index_free(state_dir: &Path) {
    let path = state_dir.join("index.redb");
    if !path.exists() {
        return;
    }
    let deadline = tokio::time::Instant::now() + REPLACE_WAIT;
    loop {
        let probe = path.clone();
        let opened = tokio::task::spawn_blocking(move || crate::index::Index::open(&probe).is_ok())
            .await
            .unwrap_or(false);
        if opened || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Why a one-off pull did not leave the peer identical, for its log.
fn failure(report: &crate::event::PushReport) -> String {
    if let Some(error) = report.targets.iter().find_map(|t| t.error.clone()) {
        return error;
    }
    match report.skipped.first() {
        Some(first) => format!(
            "{} files of the folder could not be read (first: {}: {})",
            report.skipped.len(),
            first.path,
            first.reason
        ),
        None => "not identical".to_owned(),
    }
}
