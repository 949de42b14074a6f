//! A target agent: [`Server`] binds, accepts sources and admin clients, and runs each mirror
//! session with its receiver on a blocking worker.

use super::folder::{Folder, HOLDER_ANSWER};
use super::load::Load;
use super::*;

/// Most replies a session's writer sends in one flush (the worker's channel holds 64).
const REPLY_BATCH: usize = 64;

/// What a target agent serves.
#[derive(Debug)]
pub struct ServeOptions {
    pub root: PathBuf,
    pub listen: String,
    pub token: String,
    /// The token that also lets a client command this agent (see [`Remote`]); `None`: no
    /// remote control.
    pub admin_token: Option<String>,
    /// The token that lets a peer receive this agent's folder over a connection it opens
    /// (a subscriber behind NAT); `None`: only an admin client may.
    pub subscribe_token: Option<String>,
    /// The agent this one receives its folder from by dialing it, instead of (or as well as)
    /// being dialed: for a server nobody can reach.
    pub subscribe: Option<Subscription>,
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

impl ServeOptions {
    /// An agent named `name` receiving into `root` on `listen` (HOST:PORT) from sources that
    /// present `token`, over TLS, with no admin token, no trash and no limit on whom it may be
    /// told to push to; the fields say how to change each.
    pub fn new(
        root: PathBuf,
        listen: impl Into<String>,
        token: impl Into<String>,
        name: impl Into<String>,
    ) -> ServeOptions {
        ServeOptions {
            root,
            listen: listen.into(),
            token: token.into(),
            admin_token: None,
            subscribe_token: None,
            subscribe: None,
            insecure: false,
            name: name.into(),
            trash_retention: None,
            push_to: None,
        }
    }
}

/// Where an agent keeps its TLS identity (certificate and key) for the folder `root`.
pub fn identity_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("tls")
}

/// A target agent, bound and ready.
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    receiver: Folder,
    tokens: Arc<transport::Tokens>,
    name: Arc<str>,
    fingerprint: Option<String>,
    agent: Arc<control::Agent>,
    /// Stops the pushes this agent was told to run when the server stops.
    pushes: CancellationToken,
    /// When the pairing token stops opening sessions (a one-time token), if it does.
    token_expires: Option<tokio::time::Instant>,
    /// The agent this one dials to receive its folder, if any.
    subscription: Option<Subscription>,
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
        if let Some(subscribe) = &options.subscribe_token
            && (subscribe.trim().is_empty()
                || subscribe == &options.token
                || Some(subscribe) == options.admin_token.as_ref())
        {
            return Err(EngineError::Setup(
                "the subscribe token must be a secret of its own, not empty and neither the pairing nor the admin token"
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
            receiver: Folder::new(receiver),
            agent: control::Agent::new(&options.root, &options.name, push_to, pushes.clone()),
            tokens: Arc::new(transport::Tokens {
                receive: options.token,
                subscribe: options.subscribe_token,
                admin: options.admin_token,
            }),
            subscription: options.subscribe,
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
            subscribe: self.tokens.subscribe.clone(),
            admin: self.tokens.admin.clone(),
        });
        if let Some(subscription) = self.subscription.clone() {
            let receiving = super::subscribe::Receiving {
                receiver: self.receiver.clone(),
                agent: self.agent.clone(),
                name: self.name.to_string(),
            };
            tokio::spawn(super::subscribe::run(
                subscription,
                receiving,
                cancel.clone(),
            ));
        }
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
            let subscribed = self
                .subscription
                .as_ref()
                .map(|s| transport::authority_of(&s.url).unwrap_or_else(|_| s.url.clone()));
            tokio::spawn(async move {
                let peer = incoming.peer_addr();
                match incoming.handshake_as(&tokens, &name).await {
                    Ok((mut conn, source, role)) => {
                        let first = match conn.recv_within(limits.idle).await {
                            Ok(Some(first)) => first,
                            // A check that the agent answers (the tray's online state).
                            Ok(None) | Err(_) => return,
                        };
                        match first {
                            Message::Control { .. } => {
                                tracing::info!(%peer, %source, ?role, "control client connected");
                                agent.serve(conn, first, role).await;
                                return;
                            }
                            Message::Pull { .. } | Message::PullTrash { .. } => {
                                match agent.pull_asked(role, &first) {
                                    Ok((once, trash)) => {
                                        let pull = control::Pull {
                                            conn,
                                            peer,
                                            name: source,
                                            once,
                                            quiet: limits.idle,
                                            trash,
                                        };
                                        agent.feed(pull, cancel).await;
                                        crate::memory::release_freed();
                                    }
                                    Err(reason) => refuse(conn, &source, peer, reason).await,
                                }
                                return;
                            }
                            _ if !role.may_write() => {
                                refuse(conn, &source, peer, format!(
                                    "this token lets you receive {name}'s folder, not mirror into it; mirroring into it needs its pairing code (`rainmaker pair` on {name})"
                                )).await;
                                return;
                            }
                            // Two sources would take turns writing the folder.
                            _ if subscribed.is_some() && !agent.promoted() => {
                                let from = subscribed.unwrap_or_default();
                                refuse(conn, &source, peer, format!(
                                    "{name} receives its folder from {from} by subscription; a second source would fight it: mirror into {from} instead"
                                )).await;
                                return;
                            }
                            _ => {}
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
                        let result = serve_session(conn, session, Some(first)).await;
                        agent.session_ended(&source);
                        match result {
                            Ok(_) => tracing::info!(%peer, %source, "session ended"),
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
        let _ = self.receiver.wait_free().await;
        Ok(())
    }
}

/// Refuses what the peer's role does not allow, telling it why.
async fn refuse(mut conn: transport::Connection, source: &str, peer: SocketAddr, reason: String) {
    tracing::warn!(%peer, %source, "refused: {reason}");
    let refused = Message::Refused {
        reason,
        refusal: Refusal::NotAllowed,
    };
    let _ = conn.send(&refused).await;
    conn.close().await;
}

/// What a mirror session into the folder runs with.
pub(super) struct Session {
    pub receiver: Folder,
    /// The agent stops.
    pub cancel: CancellationToken,
    /// The agent ends this session (a forced promotion).
    pub end: CancellationToken,
    pub limits: Limits,
}

/// Why a session into the folder ended before its source closed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Aborted {
    pub reason: String,
    /// What the source's refusal was about, when the source refused ([`Refusal::Other`]
    /// for anything else: a cut, a broken message, this agent stopping).
    pub refusal: Refusal,
}

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<String> for Aborted {
    fn from(reason: String) -> Aborted {
        Aborted {
            reason,
            refusal: Refusal::Other,
        }
    }
}

impl From<&str> for Aborted {
    fn from(reason: &str) -> Aborted {
        Aborted::from(reason.to_owned())
    }
}

/// What the source of a one-off pull said at its end: whether this side now holds exactly
/// what it holds, else why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    pub in_sync: bool,
    pub reason: String,
}

/// Runs one session: the connection's messages go to a blocking worker that owns the
/// receiver; its replies go back on the connection. The source is pinged, and a source that
/// sends nothing for the idle limit (frozen, or its machine gone with the connection
/// half-open) is dropped, so the folder is free again.
pub(super) async fn serve_session(
    conn: transport::Connection,
    session: Session,
    first: Option<Message>,
) -> Result<Option<Verdict>, Aborted> {
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
        waited = receiver.take(SESSION_WAIT) => waited,
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
    // Another session that waits for the folder asks this one to show its source is there.
    let mut waiting = receiver.waiting();
    let mut waiting_to_ping = waiting.clone();
    let (in_tx, mut in_rx) = mpsc::channel::<Message>(64);
    let (out_tx, out_rx) = mpsc::channel::<Message>(64);
    if let Some(first) = first {
        let _ = in_tx.try_send(first);
    }
    // Set when the source itself closed the connection (not a cut, not this agent stopping):
    // only then is what arrived whole applied before the session's end.
    let closed_by_source = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source_closed = closed_by_source.clone();
    let worker = tokio::task::spawn_blocking(move || {
        guard.begin_session();
        let result = work(&mut guard, &mut in_rx, &out_tx);
        let clean = result.is_ok() && source_closed.load(std::sync::atomic::Ordering::SeqCst);
        guard.close(clean);
        crate::memory::release_freed();
        if let Err(aborted) = &result {
            let _ = out_tx.blocking_send(Message::Refused {
                reason: aborted.reason.clone(),
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
                // The writer pings; a source that sends nothing back, not even the pong, in
                // time is gone without a word and gives the folder up.
                Ok(()) = waiting.changed() => {
                    incoming.expect_answer_within(HOLDER_ANSWER);
                    continue;
                }
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
                    // What else is waiting goes with it, in one flush.
                    Some(message) => {
                        let mut batch = vec![message];
                        while batch.len() < REPLY_BATCH
                            && let Ok(more) = out_rx.try_recv()
                        {
                            batch.push(more);
                        }
                        tokio::time::timeout(idle, sender.send_many(&batch)).await
                    }
                    None => break,
                },
                _ = ping.tick() => tokio::time::timeout(idle, sender.ping()).await,
                Ok(()) = waiting_to_ping.changed() => tokio::time::timeout(idle, sender.ping()).await,
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
    let verdict = worked.map_err(|e| Aborted::from(e.to_string()))??;
    match read_result {
        // The source closed the connection, or it was cut after the worker's end: the worker
        // decided what the session applied.
        Ok(()) | Err(ReadEnd::Closed(_)) => Ok(verdict),
        Err(ReadEnd::Failed(e)) => Err(e.into()),
    }
}

/// How reading a session's messages ended.
enum ReadEnd {
    /// The source closed the connection, or it was cut.
    Closed(String),
    /// Anything else: the reason.
    Failed(String),
}

/// How long a session's worker waits for the next message before it syncs what arrived whole.
const SEAL_WHEN_IDLE: Duration = Duration::from_millis(10);

/// The worker's loop over the session's messages; the source's verdict, when it gave one
/// (a one-off pull).
fn work(
    receiver: &mut Receiver,
    incoming: &mut mpsc::Receiver<Message>,
    out: &mpsc::Sender<Message>,
) -> Result<Option<Verdict>, Aborted> {
    // A reply that cannot go out (the writer ended: the source closed, or stopped reading) is
    // dropped, and what already arrived is still handled: whether the session ended clean, and
    // so whether what arrived whole is applied, is the reader's to say when the messages end.
    let reply = |m: Message| {
        let _ = out.blocking_send(m);
    };
    // What a source must have done before it may say a pull left this side in sync: listed
    // this folder, and just had its last `Finish` answered with the digest it now names.
    let mut listed = false;
    let mut finished: Option<crate::protocol::Hash> = None;
    let mut load = Load::new(Instant::now());
    // None when called outside a runtime (a test): the worker then just waits.
    let runtime = tokio::runtime::Handle::try_current().ok();
    loop {
        let asked = Instant::now();
        // After a moment with nothing to read, the files that arrived whole are synced now
        // rather than at the session's end (`Receiver::seal_while_idle`).
        let next = match incoming.try_recv() {
            Ok(message) => Some(message),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                let soon = runtime
                    .as_ref()
                    .map(|r| r.block_on(tokio::time::timeout(SEAL_WHEN_IDLE, incoming.recv())));
                match soon {
                    Some(Ok(next)) => next,
                    Some(Err(_)) => {
                        receiver.seal_while_idle().into_iter().for_each(reply);
                        incoming.blocking_recv()
                    }
                    None => incoming.blocking_recv(),
                }
            }
        };
        let Some(message) = next else {
            break;
        };
        load.waited(asked.elapsed());
        let just_finished = finished.take();
        match message {
            Message::Pulled {
                digest: None,
                reason,
            } => {
                return Ok(Some(Verdict {
                    in_sync: false,
                    reason,
                }));
            }
            Message::Pulled {
                digest: Some(digest),
                reason,
            } => {
                if !listed || just_finished.is_none() {
                    return Err(
                        "the source said the pull was over before it finished its last session"
                            .into(),
                    );
                }
                if just_finished != Some(digest) {
                    return Err(
                        "the source said the pull was over, naming a tree this folder does not hold"
                            .into(),
                    );
                }
                return Ok(Some(Verdict {
                    in_sync: true,
                    reason,
                }));
            }
            Message::GetManifest { cached } => {
                listed = true;
                load.restart(Instant::now());
                let partials = receiver.manifest().map_err(|e| e.to_string())?;
                if cached == Some(receiver.digest()) {
                    reply(Message::ManifestSame { partials });
                    continue;
                }
                let mut part = Vec::new();
                let mut bytes = 0;
                for entry in receiver.entries() {
                    let size = entry_size(&entry);
                    if !part.is_empty()
                        && (part.len() == MAX_ENTRIES_PER_PART
                            || bytes + size > MANIFEST_PART_BYTES)
                    {
                        reply(Message::ManifestPart {
                            entries: std::mem::take(&mut part),
                        });
                        bytes = 0;
                    }
                    bytes += size;
                    part.push(entry);
                }
                if !part.is_empty() {
                    reply(Message::ManifestPart { entries: part });
                }
                reply(Message::ManifestEnd { partials });
            }
            Message::Refused { reason, refusal } => return Err(Aborted { reason, refusal }),
            message => {
                let finish = matches!(message, Message::Finish);
                // How busy this side is, told while data arrives; the time between two
                // transfers is the source's.
                let data = matches!(
                    message,
                    Message::Data { .. }
                        | Message::FileBegin(_)
                        | Message::Append(_)
                        | Message::BlockList { .. }
                        | Message::FileEnd { .. }
                );
                for r in receiver.handle(message).map_err(|e| e.to_string())? {
                    if let (true, Message::Finished { digest }) = (finish, &r) {
                        finished = Some(*digest);
                    }
                    reply(r);
                }
                match data {
                    true => {
                        if let Some(busy_permille) = load.report(Instant::now()) {
                            reply(Message::Load { busy_permille });
                        }
                    }
                    false => load.restart(Instant::now()),
                }
                if finish {
                    tracing::info!(root = %receiver.root().display(), "mirror finished and verified");
                    crate::memory::release_freed();
                }
            }
        }
    }
    Ok(None)
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
    use crate::mirror::test_messages::send_file;

    #[test]
    fn a_worker_whose_replies_cannot_go_out_still_handles_what_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let mut receiver = Receiver::open(dir.path(), None).unwrap();
        receiver.begin_session();
        // Past one batch of changes: the batch applied on the way has replies to give.
        let files = crate::mirror::receive::STAGE_STEPS as u64 + 8;
        let (in_tx, mut in_rx) = mpsc::channel(3 * files as usize);
        for id in 0..files {
            for message in send_file(id, &format!("f{id}"), format!("content {id}").as_bytes()) {
                in_tx.try_send(message).unwrap();
            }
        }
        drop(in_tx);
        // The writer ended (the source closed): none of the worker's replies can go out.
        let (out_tx, out_rx) = mpsc::channel(64);
        drop(out_rx);
        let worked = work(&mut receiver, &mut in_rx, &out_tx);
        assert!(
            matches!(worked, Ok(None)),
            "the reader, not a lost reply, says how the session ended: {worked:?}"
        );
        // The source closed cleanly: what arrived whole is applied.
        receiver.close(true);
        for id in 0..files {
            assert_eq!(
                std::fs::read(dir.path().join(format!("f{id}"))).unwrap(),
                format!("content {id}").as_bytes()
            );
        }
    }
}
