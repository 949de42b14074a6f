//! Remote control of an agent over its authenticated connection: an admin client (the tray,
//! `rainmaker remote`) asks the agent for the state of its folder, tells it to push the folder
//! to other agents (any server to any servers: cloud to cloud, or back home after a failover),
//! pauses, resumes and stops those pushes, follows their events, and promotes the agent to be
//! the source of its folder or demotes it back to a target.
//!
//! Only a client that presented the agent's admin token may command it; one with the pairing
//! token can only mirror into it, and every refusal says why. A promoted agent refuses mirror
//! sessions into its folder, so two sources never fight over one folder. A forced promotion
//! ends the mirror sessions into the folder (a source that froze or lost its machine may still
//! hold one), so failing over never waits on the old source.
//!
//! The admin token's holder can send the whole folder, and the target's token, wherever it
//! says; so a commanded push goes only to a pinned certificate over `wss://` (or plain `ws://`
//! to this machine's loopback), never on trust on first use, and only to the addresses of
//! `[serve] push_to` when the agent has that list ([`check_target`], [`PushRefusal`]).

mod feed;

pub(super) use feed::Pull;

use super::TargetSpec;
use crate::app::{Ended, Mirror, Overrides};
use crate::config::Mode;
use crate::event::Event;
use crate::path::STATE_DIR;
use crate::protocol::{
    AgentStatus, ControlReply, ControlRequest, FolderRole, JobState, JobStatus, Message, Refusal,
    RemoteTarget, SubscriptionStatus,
};
use crate::transport::{
    self, Address, ConnectOptions, Connection, Role, TransportError, Trust, parse_fingerprint,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// A source that mirrored into the folder this recently is taken to be still active: promote
/// refuses unless forced.
const RECENT_SOURCE: Duration = Duration::from_secs(60);
use crate::fs::Totals;

/// How long the folder's totals in a status answer are reused.
const TOTALS_FRESH: Duration = Duration::from_secs(3);
/// How long a forced promotion waits for the sessions it ended to let go of the folder.
const END_SESSIONS_WAIT: Duration = Duration::from_secs(15);

/// The agent's side: its folder's role, the sessions into it, and the pushes it runs.
#[derive(Debug)]
pub(super) struct Agent {
    root: PathBuf,
    name: String,
    /// `host:port` of every agent this one may push to (`[serve] push_to`); `None`: any.
    push_to: Option<Vec<String>>,
    /// The folder's role and the mirror sessions into it, changed together under one lock so
    /// a promotion and a starting session cannot pass each other.
    folder: Mutex<FolderState>,
    jobs: Mutex<Vec<Job>>,
    events: broadcast::Sender<Event>,
    cancel: CancellationToken,
    /// The folder's totals from the last walk, and when: a client following a push asks for
    /// the status often, and must not make the agent walk its folder each time.
    totals: Mutex<Option<(std::time::Instant, Totals)>>,
    /// The peers receiving the folder over connections they opened.
    feeds: feed::Feeds,
    /// This agent's subscription to another agent's folder, if it has one.
    subscription: Mutex<Option<SubscriptionStatus>>,
}

#[derive(Debug, Default)]
struct FolderState {
    promoted: bool,
    /// Mirror sessions in progress (or waiting for the folder).
    sessions: u32,
    last_source: Option<(String, u64)>,
    /// Ends the sessions in progress (a forced promotion); replaced once fired.
    end_sessions: CancellationToken,
}

#[derive(Debug)]
struct Job {
    id: u64,
    targets: Vec<RemoteTarget>,
    /// The targets as checked by [`check_target`].
    specs: Vec<TargetSpec>,
    watch: bool,
    state: JobState,
    error: Option<String>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Job {
    /// Whether its task is still going (running, or still stopping after a pause).
    fn busy(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

fn role_file(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("role")
}

/// Now, in Unix seconds.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    /// `push_to`: the `host:port` of every agent it may push to (as [`transport::authority_of`]
    /// writes them), or `None` for any.
    pub(super) fn new(
        root: &Path,
        name: &str,
        push_to: Option<Vec<String>>,
        cancel: CancellationToken,
    ) -> Arc<Agent> {
        let promoted = std::fs::read_to_string(role_file(root)).is_ok_and(|r| r.trim() == "source");
        Arc::new(Agent {
            root: root.to_path_buf(),
            name: name.to_owned(),
            push_to,
            folder: Mutex::new(FolderState {
                promoted,
                ..FolderState::default()
            }),
            jobs: Mutex::new(Vec::new()),
            events: crate::event::channel().0,
            cancel,
            totals: Mutex::new(None),
            feeds: feed::Feeds::default(),
            subscription: Mutex::new(None),
        })
    }

    /// The batches of the folder's trash, newest first (a walk of it, on a blocking thread).
    async fn trash(&self) -> Vec<crate::protocol::TrashBatch> {
        let dir = self.root.join(STATE_DIR).join("trash");
        tokio::task::spawn_blocking(move || {
            crate::trash::list(&dir)
                .into_iter()
                .rev()
                // A week of syncs every few minutes at most: the reply stays well under the
                // largest message.
                .take(200)
                .map(|b| crate::protocol::TrashBatch {
                    files: b.files.len() as u64,
                    paths: b.files.into_iter().take(20).collect(),
                    name: b.name,
                    when: b.when,
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Where trash batch `batch` of the folder is, if the trash holds one by that name (a name
    /// from the wire is only ever compared with the names listed, never joined to a path
    /// unchecked).
    pub(super) fn trash_batch(&self, batch: &str) -> Option<PathBuf> {
        let dir = self.root.join(STATE_DIR).join("trash");
        crate::trash::list(&dir)
            .into_iter()
            .find(|b| b.name == batch)
            .map(|b| dir.join(b.name))
    }

    /// Whether the folder was promoted to be a source (it then receives nothing).
    pub(super) fn promoted(&self) -> bool {
        self.folder().promoted
    }

    /// Whether a peer that presented `role`'s token may receive the folder over its own
    /// connection: a subscriber may; an admin client may too, unless `push_to` limits where
    /// the folder goes (the admin token must not carry it anywhere else by pulling it).
    pub(super) fn may_pull(&self, role: Role) -> Result<(), String> {
        match (role, &self.push_to) {
            (Role::Subscriber, _) | (Role::Admin, None) => Ok(()),
            (Role::Admin, Some(_)) => Err(format!(
                "{} sends its folder only to the agents of its push_to list: the admin token cannot take it elsewhere; receive it with its subscribe code (`rainmaker pair --subscribe` on {})",
                self.name, self.name
            )),
            (Role::Source, _) => Err(format!(
                "this token lets you mirror into {}'s folder, not receive it; receiving needs its subscribe code (`rainmaker pair --subscribe` on {})",
                self.name, self.name
            )),
        }
    }

    /// Records where this agent's subscription stands.
    pub(super) fn set_subscription(&self, status: SubscriptionStatus) {
        *self.subscription.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    fn jobs(&self) -> MutexGuard<'_, Vec<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn folder(&self) -> MutexGuard<'_, FolderState> {
        self.folder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A source wants to mirror into the folder: refused (with the reason) when the agent was
    /// promoted, else counted until [`Agent::session_ended`]. The token returned fires when the
    /// session must end (a forced promotion).
    pub(super) fn start_session(&self, source: &str) -> Result<CancellationToken, String> {
        let mut folder = self.folder();
        if folder.promoted {
            return Err(format!(
                "{} was promoted to be the source of this folder and does not receive mirrors; demote it to mirror into it again",
                self.name
            ));
        }
        folder.sessions += 1;
        folder.last_source = Some((source.to_owned(), unix_now()));
        Ok(folder.end_sessions.child_token())
    }

    /// Waits (at most `limit`) until no mirror session holds the folder; returns whether none
    /// does.
    async fn sessions_gone(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.folder().sessions == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn session_ended(&self, source: &str) {
        let mut folder = self.folder();
        folder.sessions = folder.sessions.saturating_sub(1);
        folder.last_source = Some((source.to_owned(), unix_now()));
    }

    /// Waits (at most `limit`) for the pushes this agent runs to stop after a cancel.
    pub(super) async fn wait_for_pushes(&self, limit: Duration) {
        let tasks: Vec<_> = self
            .jobs()
            .iter_mut()
            .filter_map(|j| j.task.take())
            .collect();
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(tasks)).await;
    }

    /// Serves a control connection whose first message was `first`.
    pub(super) async fn serve(self: Arc<Self>, conn: Connection, first: Message, role: Role) {
        let (mut sender, mut receiver) = conn.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sender.send(&message).await.is_err() {
                    break;
                }
            }
            sender.close().await;
        });
        let mut next = Some(first);
        let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let message = match next.take() {
                Some(message) => message,
                None => match receiver.recv().await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => break,
                },
            };
            let Message::Control { id, request } = message else {
                let _ = out_tx
                    .send(Message::Refused {
                        reason: format!("expected a control request, got {}", message.name()),
                        refusal: Refusal::Other,
                    })
                    .await;
                break;
            };
            let reply = if role != Role::Admin {
                ControlReply::Refused {
                    reason: format!(
                        "{} accepted this token for {} only; commands need its admin token (`rainmaker pair --admin` prints the admin code)",
                        self.name,
                        match role {
                            Role::Subscriber => "receiving its folder",
                            _ => "mirroring into its folder",
                        }
                    ),
                    refusal: Refusal::NotAllowed,
                }
            } else {
                if request == ControlRequest::Subscribe && forwarder.is_none() {
                    forwarder = Some(tokio::spawn(forward_events(
                        self.events.subscribe(),
                        out_tx.clone(),
                    )));
                }
                self.handle(request).await
            };
            if let ControlReply::Refused { reason, .. } = &reply {
                tracing::warn!("refused a control request: {reason}");
            }
            if out_tx
                .send(Message::ControlReply { id, reply })
                .await
                .is_err()
            {
                break;
            }
        }
        if let Some(forwarder) = forwarder {
            forwarder.abort();
        }
        drop(out_tx);
        let _ = writer.await;
    }

    async fn handle(self: &Arc<Self>, request: ControlRequest) -> ControlReply {
        let refuse = |reason: String| ControlReply::Refused {
            reason,
            refusal: Refusal::Other,
        };
        match request {
            ControlRequest::Status => ControlReply::Status(Box::new(self.status().await)),
            ControlRequest::Subscribe => ControlReply::Done,
            ControlRequest::Trash => ControlReply::Trash(self.trash().await),
            ControlRequest::Push { targets, watch } => {
                if targets.is_empty() {
                    return refuse("a push needs at least one target".into());
                }
                let specs = match targets
                    .iter()
                    .map(|t| check_target(t, self.push_to.as_deref(), &self.name))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(specs) => specs,
                    Err(refusal) => return refuse(refusal.to_string()),
                };
                let mut jobs = self.jobs();
                if let Some(busy) = jobs.iter().find(|j| j.busy()) {
                    return refuse(format!(
                        "push {} is {} on {}; stop it first (one push of a folder at a time)",
                        busy.id, busy.state, self.name
                    ));
                }
                let id = jobs.iter().map(|j| j.id).max().unwrap_or(0) + 1;
                jobs.push(Job {
                    task: None,
                    id,
                    targets,
                    specs,
                    watch,
                    state: JobState::Running,
                    error: None,
                    cancel: self.cancel.child_token(),
                });
                drop(jobs);
                self.start(id);
                ControlReply::Started { job: id }
            }
            ControlRequest::Pause { job } | ControlRequest::Stop { job } => {
                let stop = matches!(request, ControlRequest::Stop { .. });
                let mut jobs = self.jobs();
                let Some(j) = jobs.iter_mut().find(|j| j.id == job) else {
                    return refuse(format!("there is no push {job} on {}", self.name));
                };
                if !(j.state == JobState::Running || (stop && j.state == JobState::Paused)) {
                    return refuse(format!("push {job} is {}", j.state));
                }
                j.cancel.cancel();
                j.state = if stop {
                    JobState::Stopped
                } else {
                    JobState::Paused
                };
                ControlReply::Done
            }
            ControlRequest::Resume { job } => {
                let mut jobs = self.jobs();
                if let Some(busy) = jobs.iter().find(|j| j.id != job && j.busy()) {
                    return refuse(format!("push {} is {}; stop it first", busy.id, busy.state));
                }
                let Some(j) = jobs.iter_mut().find(|j| j.id == job) else {
                    return refuse(format!("there is no push {job} on {}", self.name));
                };
                if j.state != JobState::Paused {
                    return refuse(format!("push {job} is {}, not paused", j.state));
                }
                if j.busy() {
                    return refuse(format!(
                        "push {job} is still stopping; resume it in a moment"
                    ));
                }
                j.state = JobState::Running;
                j.error = None;
                j.cancel = self.cancel.child_token();
                drop(jobs);
                self.start(job);
                ControlReply::Done
            }
            ControlRequest::Promote { force } => {
                let (ended, who) = match self.promote(force) {
                    Ok(ended) => ended,
                    Err((reason, refusal)) => return ControlReply::Refused { reason, refusal },
                };
                if ended > 0 {
                    tracing::warn!(
                        "promoting with force: ended the mirror session of {}",
                        who.as_deref().unwrap_or("a source")
                    );
                    if !self.sessions_gone(END_SESSIONS_WAIT).await {
                        return refuse(format!(
                            "{} is promoted and refuses new mirror sessions, but the session it ended has not let go of the folder after {} s; ask again in a moment",
                            self.name,
                            END_SESSIONS_WAIT.as_secs()
                        ));
                    }
                }
                tracing::warn!(
                    "promoted: {} is now the source of {}",
                    self.name,
                    self.root.display()
                );
                ControlReply::Done
            }
            ControlRequest::Demote => {
                let running: Vec<u64> = self
                    .jobs()
                    .iter()
                    .filter(|j| j.busy())
                    .map(|j| j.id)
                    .collect();
                if !running.is_empty() {
                    return refuse(format!(
                        "stop its pushes first ({running:?}): a folder that receives mirrors must not also be pushed"
                    ));
                }
                let mut folder = self.folder();
                let _ = std::fs::remove_file(role_file(&self.root));
                folder.promoted = false;
                drop(folder);
                tracing::warn!("demoted: {} receives mirrors again", self.name);
                ControlReply::Done
            }
        }
    }

    /// Makes the folder's role `source`, unless a source is (or was just) mirroring into it
    /// and `force` is not given; with `force`, the sessions in progress are told to end.
    /// Returns how many were, and the name of the last source.
    fn promote(&self, force: bool) -> Result<(u32, Option<String>), (String, Refusal)> {
        let refuse = |reason: String, refusal| (reason, refusal);
        let mut folder = self.folder();
        if folder.sessions > 0 && !force {
            let who = folder
                .last_source
                .clone()
                .map_or_else(|| "a source".into(), |(name, _)| name);
            return Err(refuse(
                format!(
                    "{who} is mirroring into this folder right now: it is still the source. Stop it first, so two sources never write one folder; if it is frozen or gone, promote with force, which ends its session"
                ),
                Refusal::Busy,
            ));
        }
        if let Some((who, at)) = folder.last_source.clone()
            && !force
            && unix_now().saturating_sub(at) < RECENT_SOURCE.as_secs()
        {
            return Err(refuse(
                format!(
                    "{who} mirrored into this folder {} s ago and may still be the source; stop it, or promote with force if it is gone",
                    unix_now().saturating_sub(at)
                ),
                Refusal::RecentSource,
            ));
        }
        std::fs::write(role_file(&self.root), "source\n")
            .map_err(|e| refuse(format!("cannot record the new role: {e}"), Refusal::Other))?;
        folder.promoted = true;
        // Sessions already in are ended; new ones are refused from now on.
        let ended = folder.sessions;
        if ended > 0 {
            folder.end_sessions.cancel();
            folder.end_sessions = CancellationToken::new();
        }
        Ok((ended, folder.last_source.clone().map(|(name, _)| name)))
    }

    /// Runs push `id` until it ends or is paused or stopped.
    fn start(self: &Arc<Self>, id: u64) {
        let Some((specs, watch, cancel)) = self
            .jobs()
            .iter()
            .find(|j| j.id == id)
            .map(|j| (j.specs.clone(), j.watch, j.cancel.clone()))
        else {
            return;
        };
        let mode = if watch { Mode::Watch } else { Mode::Manual };
        let mirror = Mirror::new(
            &Mirror::folder(self.root.clone(), mode),
            specs,
            &self.root,
            self.name.clone(),
            Overrides {
                // The agent's own folder keeps its source index in its state folder.
                state_dir: Some(self.root.join(STATE_DIR).join("source")),
                ..Overrides::default()
            },
        );
        let agent = self.clone();
        let task = tokio::spawn(async move {
            let (state, error) = match mirror {
                Err(e) => (JobState::Failed, Some(e.to_string())),
                Ok(mirror) => agent.run_push(&mirror, &cancel).await,
            };
            let mut jobs = agent.jobs();
            if let Some(j) = jobs.iter_mut().find(|j| j.id == id)
                && j.state == JobState::Running
            {
                j.state = state;
                j.error = error;
            }
        });
        if let Some(j) = self.jobs().iter_mut().find(|j| j.id == id) {
            j.task = Some(task);
        }
    }

    /// Runs a commanded push until it ends or is stopped; its final state and error.
    async fn run_push(
        &self,
        mirror: &Mirror,
        cancel: &CancellationToken,
    ) -> (JobState, Option<String>) {
        match mirror.run(None, None, &self.events, cancel).await {
            Ok(Ended::Stopped) => (JobState::Stopped, None),
            Ok(Ended::Pushed(report)) if report.ok => (JobState::Done, None),
            Ok(Ended::Pushed(report)) if report.stopped => (JobState::Paused, None),
            Ok(Ended::Pushed(report)) => (
                JobState::Failed,
                report.targets.iter().find_map(|t| t.error.clone()),
            ),
            Err(e) => (JobState::Failed, Some(e.to_string())),
        }
    }

    async fn status(&self) -> AgentStatus {
        let cached = *self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let totals = match cached {
            Some((at, totals)) if at.elapsed() < TOTALS_FRESH => totals,
            _ => {
                let totals = self.walk_totals().await;
                *self.totals.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((std::time::Instant::now(), totals));
                totals
            }
        };
        self.report(totals)
    }

    /// Files, bytes and the newest change in the folder (a walk of it, on a blocking thread).
    async fn walk_totals(&self) -> Totals {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || crate::fs::totals(&root))
            .await
            .unwrap_or_default()
    }

    fn report(&self, totals: Totals) -> AgentStatus {
        let folder = {
            let f = self.folder();
            FolderState {
                promoted: f.promoted,
                sessions: f.sessions,
                last_source: f.last_source.clone(),
                end_sessions: CancellationToken::new(),
            }
        };
        AgentStatus {
            name: self.name.clone(),
            root: self.root.display().to_string(),
            role: if folder.promoted {
                FolderRole::Source
            } else {
                FolderRole::Target
            },
            files: totals.files,
            bytes: totals.bytes,
            newest_mtime_ns: totals.newest_mtime_ns,
            receiving: folder.sessions > 0,
            last_source: folder.last_source,
            jobs: self
                .jobs()
                .iter()
                .map(|j| JobStatus {
                    id: j.id,
                    targets: j.targets.iter().map(|t| t.url.clone()).collect(),
                    watch: j.watch,
                    state: j.state,
                    error: j.error.clone(),
                })
                .collect(),
            feeds: self.feeds.statuses(),
            subscription: self
                .subscription
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Why an agent refuses to push its folder where an admin client told it to. The agent sends
/// the reason in its `Refused` answer; the client shows it as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushRefusal {
    #[error(
        "{url}: a commanded push sends the whole folder and the target's token, so it goes only \
         to a pinned certificate; give the target's pairing code as --to (`rainmaker pair` on \
         it) or its fingerprint with --target-fingerprint"
    )]
    NotPinned { url: String },
    #[error(
        "{url}: plain ws:// sends the folder and the token in clear, so a commanded push uses \
         it only to this agent's own loopback (127.0.0.1, ::1, localhost); use wss:// with the \
         target's pairing code"
    )]
    InsecureRemote { url: String },
    #[error(
        "{url}: {agent} may only push to the addresses in its [serve] push_to ({allowed}); to \
         allow this target, add \"{authority}\" to push_to in {agent}'s rainmaker.toml and \
         restart it"
    )]
    NotAllowed {
        url: String,
        agent: String,
        authority: String,
        allowed: String,
    },
    #[error("{url}: {reason}")]
    BadTarget { url: String, reason: String },
}

/// Checks a target of a commanded push: `wss://` with a fingerprint that parses (or `ws://` to
/// loopback), and in `push_to` when the agent has that list. Returns how to reach it.
pub fn check_target(
    target: &RemoteTarget,
    push_to: Option<&[String]>,
    agent: &str,
) -> Result<TargetSpec, PushRefusal> {
    let url = target.url.clone();
    let address = Address::parse(&url).map_err(|e| PushRefusal::BadTarget {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    if let Some(allowed) = push_to
        && !allowed.contains(&address.key)
    {
        return Err(PushRefusal::NotAllowed {
            url,
            agent: agent.to_owned(),
            authority: address.key,
            allowed: if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            },
        });
    }
    let trust = match (&target.fingerprint, address.tls) {
        (_, false) if address.is_loopback() => Trust::Insecure,
        (_, false) => return Err(PushRefusal::InsecureRemote { url }),
        (None, true) => return Err(PushRefusal::NotPinned { url }),
        (Some(fp), true) => match parse_fingerprint(fp) {
            Some(fp) => Trust::Pinned(fp),
            None => {
                return Err(PushRefusal::BadTarget {
                    url,
                    reason: format!(
                        "{fp:?} is not a certificate fingerprint; expected SHA256: and 64 hex \
                         digits, as the target prints it"
                    ),
                });
            }
        },
    };
    Ok(TargetSpec {
        url: target.url.clone(),
        trust,
        token: target.token.clone(),
        dialed_in: None,
    })
}

/// Sends every event but resource samples to a subscribed client, as JSON.
async fn forward_events(mut events: broadcast::Receiver<Event>, out: mpsc::Sender<Message>) {
    loop {
        match events.recv().await {
            Ok(Event::Resources { .. }) => {}
            Ok(event) => {
                let Ok(json) = serde_json::to_string(&event) else {
                    continue;
                };
                if out.send(Message::ControlEvent { json }).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// What a command to an agent ended in, when not its answer.
#[derive(Debug, Error)]
pub enum RemoteError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The agent refused the command; `refusal` says what a user can do about it.
    #[error("{agent} refused: {reason}")]
    Refused {
        agent: String,
        reason: String,
        refusal: Refusal,
    },
    /// The agent answered something else than the command's answer.
    #[error("{agent} answered {answer} to {request}")]
    Unexpected {
        agent: String,
        request: &'static str,
        answer: String,
    },
}

impl RemoteError {
    /// What a user can do about it, as a type.
    pub fn refusal(&self) -> Refusal {
        match self {
            RemoteError::Transport(e) => e.refusal(),
            RemoteError::Refused { refusal, .. } => *refusal,
            RemoteError::Unexpected { .. } => Refusal::Other,
        }
    }
}

/// An admin client's connection to an agent: one typed method per command.
#[derive(Debug)]
pub struct Remote {
    conn: Connection,
    next_id: u64,
    /// Events that arrived while waiting for a reply (JSON of [`Event`]).
    pending: std::collections::VecDeque<String>,
}

impl Remote {
    /// Connects with the agent's admin token (in `options.token`).
    pub async fn connect(options: &ConnectOptions) -> Result<Remote, TransportError> {
        Ok(Remote {
            conn: transport::connect(options).await?,
            next_id: 1,
            pending: Default::default(),
        })
    }

    /// The agent's folder, its role and its pushes.
    pub async fn status(&mut self) -> Result<AgentStatus, RemoteError> {
        match self.call(ControlRequest::Status).await? {
            ControlReply::Status(status) => Ok(*status),
            other => Err(self.unexpected("status", &other)),
        }
    }

    /// Asks for the agent's events from now on ([`Remote::next_event`]).
    pub async fn subscribe(&mut self) -> Result<(), RemoteError> {
        self.expect_done(ControlRequest::Subscribe, "subscribe")
            .await
    }

    /// Starts a push of the agent's folder to `targets` (continuously with `watch`); its id.
    pub async fn push(
        &mut self,
        targets: Vec<RemoteTarget>,
        watch: bool,
    ) -> Result<u64, RemoteError> {
        match self.call(ControlRequest::Push { targets, watch }).await? {
            ControlReply::Started { job } => Ok(job),
            other => Err(self.unexpected("push", &other)),
        }
    }

    pub async fn pause(&mut self, job: u64) -> Result<(), RemoteError> {
        self.expect_done(ControlRequest::Pause { job }, "pause")
            .await
    }

    pub async fn resume(&mut self, job: u64) -> Result<(), RemoteError> {
        self.expect_done(ControlRequest::Resume { job }, "resume")
            .await
    }

    pub async fn stop(&mut self, job: u64) -> Result<(), RemoteError> {
        self.expect_done(ControlRequest::Stop { job }, "stop").await
    }

    /// Makes the agent the source of its folder (`force`: even if a source may still be
    /// mirroring into it).
    pub async fn promote(&mut self, force: bool) -> Result<(), RemoteError> {
        self.expect_done(ControlRequest::Promote { force }, "promote")
            .await
    }

    /// Makes the agent a target again.
    /// The batches of the agent's trash, newest first.
    pub async fn trash(&mut self) -> Result<Vec<crate::protocol::TrashBatch>, RemoteError> {
        match self.call(ControlRequest::Trash).await? {
            ControlReply::Trash(batches) => Ok(batches),
            other => Err(self.unexpected("trash", &other)),
        }
    }

    pub async fn demote(&mut self) -> Result<(), RemoteError> {
        self.expect_done(ControlRequest::Demote, "demote").await
    }

    async fn expect_done(
        &mut self,
        request: ControlRequest,
        name: &'static str,
    ) -> Result<(), RemoteError> {
        match self.call(request).await? {
            ControlReply::Done => Ok(()),
            other => Err(self.unexpected(name, &other)),
        }
    }

    fn unexpected(&self, request: &'static str, answer: &ControlReply) -> RemoteError {
        RemoteError::Unexpected {
            agent: self.conn.peer(),
            request,
            answer: format!("{answer:?}"),
        }
    }

    /// Sends a request and waits for its answer; a refusal is [`RemoteError::Refused`].
    async fn call(&mut self, request: ControlRequest) -> Result<ControlReply, RemoteError> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.send(&Message::Control { id, request }).await?;
        let reply = loop {
            match self.conn.recv().await? {
                Some(Message::ControlReply { id: got, reply }) if got == id => break reply,
                Some(Message::ControlEvent { json }) => self.pending.push_back(json),
                Some(Message::Refused { reason, refusal }) => {
                    break ControlReply::Refused { reason, refusal };
                }
                Some(_) => {}
                None => {
                    return Err(TransportError::Closed {
                        peer: self.conn.peer(),
                    }
                    .into());
                }
            }
        };
        match reply {
            ControlReply::Refused { reason, refusal } => Err(RemoteError::Refused {
                agent: self.conn.peer(),
                reason,
                refusal,
            }),
            reply => Ok(reply),
        }
    }

    /// The next event after [`Remote::subscribe`]; `None` when the agent closed the
    /// connection. (On the wire an event is its JSON, the form the agent's `--json` prints:
    /// an [`Event`] is tagged by a field, which the wire's compact encoding cannot carry.)
    pub async fn next_event(&mut self) -> Result<Option<Event>, RemoteError> {
        loop {
            let json = match self.pending.pop_front() {
                Some(json) => json,
                None => match self.conn.recv().await? {
                    Some(Message::ControlEvent { json }) => json,
                    Some(_) => continue,
                    None => return Ok(None),
                },
            };
            // An event this build does not know (a newer agent's) is skipped.
            if let Ok(event) = serde_json::from_str::<Event>(&json) {
                return Ok(Some(event));
            }
        }
    }

    /// Follows push `job` after [`Remote::subscribe`]: hands each event to `on_event` until
    /// the agent reports the push is no longer running; returns how it ended.
    pub async fn follow(
        &mut self,
        job: u64,
        mut on_event: impl FnMut(Event),
    ) -> Result<JobStatus, RemoteError> {
        loop {
            while let Ok(Ok(Some(event))) =
                tokio::time::timeout(Duration::from_millis(200), self.next_event()).await
            {
                on_event(event);
            }
            let status = self.status().await?;
            match status.jobs.into_iter().find(|j| j.id == job) {
                Some(j) if j.state == JobState::Running => {}
                Some(j) => return Ok(j),
                None => {
                    return Err(RemoteError::Unexpected {
                        agent: self.conn.peer(),
                        request: "status",
                        answer: format!("no push {job}"),
                    });
                }
            }
        }
    }

    pub async fn close(self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn target(url: &str, fingerprint: Option<&str>) -> RemoteTarget {
        RemoteTarget {
            url: url.into(),
            token: "t".into(),
            fingerprint: fingerprint.map(Into::into),
        }
    }

    #[test]
    fn a_commanded_push_goes_to_a_pinned_certificate_only() {
        let spec = check_target(&target("wss://b2:7878", Some(FP)), None, "a").unwrap();
        assert_eq!(spec.trust, Trust::Pinned(FP.into()));
        assert_eq!(
            check_target(&target("wss://b2:7878", None), None, "a").unwrap_err(),
            PushRefusal::NotPinned {
                url: "wss://b2:7878".into()
            },
            "no trust on first use for a push the admin token commands"
        );
        assert!(matches!(
            check_target(&target("wss://b2:7878", Some("SHA256:xyz")), None, "a"),
            Err(PushRefusal::BadTarget { .. })
        ));
    }

    #[test]
    fn plain_ws_is_for_loopback_only() {
        for url in [
            "ws://127.0.0.1:7878",
            "ws://localhost:7878",
            "ws://[::1]:7878",
        ] {
            let spec = check_target(&target(url, None), None, "a").unwrap();
            assert_eq!(spec.trust, Trust::Insecure, "{url}");
        }
        for url in [
            "ws://10.0.0.5:7878",
            "ws://evil.example:7878",
            "ws://127.0.0.1.evil.example:7878",
        ] {
            assert_eq!(
                check_target(&target(url, Some(FP)), None, "a").unwrap_err(),
                PushRefusal::InsecureRemote { url: url.into() },
                "the folder and the token must not cross in clear to {url}"
            );
        }
    }

    #[test]
    fn push_to_limits_where_an_agent_may_push() {
        let allowed = vec!["b2:7878".to_owned(), "[::1]:9000".to_owned()];
        assert!(check_target(&target("wss://B2:7878/", Some(FP)), Some(&allowed), "a").is_ok());
        assert!(check_target(&target("ws://[::1]:9000", None), Some(&allowed), "a").is_ok());
        let refusal = check_target(
            &target("wss://b3:7878", Some(FP)),
            Some(&allowed),
            "cloud-a",
        )
        .unwrap_err();
        assert_eq!(
            refusal,
            PushRefusal::NotAllowed {
                url: "wss://b3:7878".into(),
                agent: "cloud-a".into(),
                authority: "b3:7878".into(),
                allowed: "b2:7878, [::1]:9000".into(),
            }
        );
        let message = refusal.to_string();
        assert!(
            message.contains("push_to") && message.contains("\"b3:7878\""),
            "the refusal names the list and what to add to it: {message}"
        );
        assert!(matches!(
            check_target(&target("wss://b2:7879", Some(FP)), Some(&allowed), "a"),
            Err(PushRefusal::NotAllowed { .. })
        ));
        assert!(
            matches!(
                check_target(&target("wss://b2:7878", Some(FP)), Some(&[]), "a"),
                Err(PushRefusal::NotAllowed { .. })
            ),
            "an empty list allows nothing"
        );
    }
}
