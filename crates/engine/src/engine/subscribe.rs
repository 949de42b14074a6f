//! Receiving a folder over a connection this side opens: an agent's [`Subscription`] (a
//! server behind NAT, which nobody can dial, keeps a hot mirror of an agent it can reach) and
//! [`pull_once`] (a trading PC behind NAT takes its folder back from the promoted server after
//! a failover).
//!
//! Both dial the other agent with its subscribe (or admin) token, its certificate pinned, send
//! `Pull`, and then run the target's side of an ordinary mirror session into their folder: the
//! same receiver, the same checks of every path and block, the same atomic commit. So who
//! dialed does not decide who sends.
//!
//! A subscription dials again after a cut with the targets' capped backoff. It pings the other
//! agent and takes a connection that carried nothing for [`SUBSCRIBER_IDLE`] for dead, and
//! bounds each dial by [`DIAL_LIMIT`]; so once a cut link is back it is connected, and caught
//! up, within a few seconds. While this agent is promoted (the source of its folder after a
//! failover) the subscription waits: a source never receives.

use super::EngineError;
use super::control::{Agent, unix_now};
use super::server::{Aborted, Session, Verdict, serve_session};
use crate::mirror::receive::Receiver;
use crate::pairing::Pairing;
use crate::protocol::{Message, Refusal, SubscriptionStatus};
use crate::schedule::Backoff;
use crate::transport::{self, ConnectOptions, Limits, TransportError, Trust};
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A subscription's connection that carries nothing, not even an answer to a ping, for this
/// long is taken for dead and dialed again.
pub const SUBSCRIBER_IDLE: Duration = Duration::from_secs(6);
/// How long one dial of a subscription may take (connection, TLS, hello).
pub const DIAL_LIMIT: Duration = Duration::from_secs(3);
/// After a refusal (a wrong token, a role that does not allow it, a mass delete that waits for
/// a person), a subscription waits this long before it asks again.
const REFUSED_WAIT: Duration = Duration::from_secs(60);
/// A session that lasted this long was a success for the backoff, whatever ended it.
const HEALTHY: Duration = Duration::from_secs(10);

/// The agent this one dials to receive its folder.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// `wss://host:port`.
    pub url: String,
    pub trust: Trust,
    /// The other agent's subscribe token (or its admin token).
    pub token: String,
}

impl Subscription {
    /// The subscription a subscribe code (or an admin code) describes.
    pub fn from_code(code: &Pairing) -> Result<Subscription, EngineError> {
        if !code.role.may_read() {
            return Err(EngineError::Setup(
                "that is a pairing code: it lets its holder mirror into the agent, not receive from it; give the agent's subscribe code (`rainmaker pair --subscribe` on it)".into(),
            ));
        }
        Ok(Subscription {
            url: code.url(),
            trust: Trust::Pinned(code.fingerprint.clone()),
            token: code.token.clone(),
        })
    }

    fn connect_options(&self, name: &str) -> ConnectOptions {
        ConnectOptions {
            url: self.url.clone(),
            trust: self.trust.clone(),
            token: self.token.clone(),
            source_name: name.to_owned(),
        }
    }

    /// `host:port` of the other agent.
    fn authority(&self) -> String {
        transport::authority_of(&self.url).unwrap_or_else(|_| self.url.clone())
    }
}

/// What a subscription receives into: the agent's folder, shared with the sessions it serves.
pub(super) struct Receiving {
    pub receiver: super::folder::Folder,
    pub agent: Arc<Agent>,
    /// This agent's name, as the other one logs it.
    pub name: String,
}

/// Keeps the agent's folder a mirror of `subscription`'s until `cancel` fires.
pub(super) async fn run(subscription: Subscription, to: Receiving, cancel: CancellationToken) {
    let from = subscription.authority();
    let options = subscription.connect_options(&to.name);
    let limits = Limits::default().with_idle(SUBSCRIBER_IDLE);
    let mut backoff = Backoff::for_targets();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut status = SubscriptionStatus {
        from: from.clone(),
        connected: false,
        last_session_at: None,
        error: None,
    };
    let mut logged_offline = false;
    tracing::info!(%from, "subscribed: receiving this folder from {from} over connections this agent opens");
    while !cancel.is_cancelled() {
        if to.agent.promoted() {
            status.error = Some(
                "this agent was promoted to be the source of its folder: it receives nothing until it is demoted"
                    .into(),
            );
            to.agent.set_subscription(status.clone());
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let (wait, error) = match session(&options, &to, &limits, &cancel, &mut status).await {
            Ok(lasted) => {
                if lasted >= HEALTHY {
                    backoff.reset();
                }
                logged_offline = false;
                (backoff.next_delay(&mut rng), None)
            }
            Err(Failed::Refused(reason)) => (REFUSED_WAIT, Some(reason)),
            Err(Failed::Cut(reason)) => (backoff.next_delay(&mut rng), Some(reason)),
        };
        status.connected = false;
        if let Some(reason) = &error {
            if !logged_offline {
                tracing::warn!(%from, "subscription: {reason}; dialing again");
                logged_offline = true;
            }
            status.error = Some(reason.clone());
        }
        to.agent.set_subscription(status.clone());
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why a subscription's session did not happen or ended early.
enum Failed {
    /// The other agent refused: asking again at once will not help.
    Refused(String),
    /// Not reachable, or cut: dial again soon.
    Cut(String),
}

/// One session of a subscription: dial, pull, receive until the connection ends. How long it
/// lasted.
async fn session(
    options: &ConnectOptions,
    to: &Receiving,
    limits: &Limits,
    cancel: &CancellationToken,
    status: &mut SubscriptionStatus,
) -> Result<Duration, Failed> {
    let dialed = tokio::select! {
        dialed = transport::connect_within(options, DIAL_LIMIT) => dialed,
        () = cancel.cancelled() => return Ok(Duration::ZERO),
    };
    let mut conn = dialed.map_err(|e| match e.refusal() {
        crate::protocol::Refusal::Other => Failed::Cut(e.to_string()),
        _ => Failed::Refused(e.to_string()),
    })?;
    let source = conn.remote_name().to_owned();
    let end = match to.agent.start_session(&source) {
        Ok(end) => end,
        // Promoted between the check and now: the next round waits.
        Err(reason) => {
            conn.close().await;
            return Err(Failed::Refused(reason));
        }
    };
    let started = std::time::Instant::now();
    let result = async {
        conn.send(&Message::Pull { once: false })
            .await
            .map_err(|e| Aborted::from(e.to_string()))?;
        status.connected = true;
        status.error = None;
        to.agent.set_subscription(status.clone());
        let session = Session {
            receiver: to.receiver.clone(),
            cancel: cancel.clone(),
            end,
            limits: limits.clone(),
        };
        serve_session(conn, session, None).await
    }
    .await;
    to.agent.session_ended(&source);
    status.last_session_at = Some(unix_now());
    match result {
        Ok(_) => Ok(started.elapsed()),
        Err(aborted) if aborted.refusal != Refusal::Other => Err(Failed::Refused(aborted.reason)),
        Err(aborted) => Err(Failed::Cut(aborted.reason)),
    }
}

/// Where a one-off pull goes, and with what.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The folder that receives (its state, temporary files and trash go under its
    /// `.rainmaker`).
    pub root: PathBuf,
    /// How long what the pull deletes or replaces is kept in the trash (`None`: not kept).
    pub trash_retention: Option<Duration>,
    /// The agent to pull from, with its subscribe or admin token.
    pub from: ConnectOptions,
    /// A batch of the agent's trash to take back (admin token only), instead of its folder.
    pub trash_batch: Option<String>,
}

/// How a one-off pull ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The folder holds exactly what the other agent's held.
    pub in_sync: bool,
    /// Why not, when it does not.
    pub reason: String,
    /// The other agent's name.
    pub from: String,
}

/// Receives `options.from`'s folder into `options.root` once, over a connection this side
/// opens (a failback with no inbound connection). Errors when it could not start or was cut;
/// otherwise says whether the folder is now identical to the other agent's.
pub async fn pull_once(
    options: &PullOptions,
    cancel: &CancellationToken,
) -> Result<Pulled, EngineError> {
    let (root, retention) = (options.root.clone(), options.trash_retention);
    let receiver = tokio::task::spawn_blocking(move || Receiver::open(&root, retention))
        .await
        .map_err(|e| EngineError::Setup(e.to_string()))??;
    let mut conn = transport::connect(&options.from).await?;
    let from = conn.remote_name().to_owned();
    let ask = match &options.trash_batch {
        Some(batch) => Message::PullTrash {
            batch: batch.clone(),
        },
        None => Message::Pull { once: true },
    };
    conn.send(&ask).await?;
    let session = Session {
        receiver: super::folder::Folder::new(receiver),
        cancel: cancel.clone(),
        end: CancellationToken::new(),
        limits: Limits::default(),
    };
    match serve_session(conn, session, None).await {
        Ok(Some(Verdict { in_sync, reason })) => Ok(Pulled {
            in_sync,
            reason,
            from,
        }),
        Ok(None) => Err(EngineError::Transport(TransportError::Closed {
            peer: options.from.url.clone(),
        })),
        Err(aborted) => Err(EngineError::Setup(format!(
            "receiving from {from} failed: {aborted}"
        ))),
    }
}
