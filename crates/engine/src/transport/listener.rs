//! The target's side: the [`Listener`], its [`Incoming`] connections and their handshake
//! (magic, protocol version, token in constant time, then `Welcome` or `Refused`).

use super::*;

/// A target's listening socket.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
    pub(super) admission: Arc<Admission>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    /// Binds `addr` (`host:port`). With an identity, connections speak TLS; `None` means plain
    /// `ws://`, which is refused ([`TransportError::InsecureNonLoopback`]) unless every address
    /// `addr` resolves to is a loopback address.
    pub async fn bind(addr: &str, identity: Option<Identity>) -> Result<Listener, TransportError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| TransportError::Io {
                context: format!("cannot resolve the listen address {addr}"),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(TransportError::BadUrl {
                url: addr.to_owned(),
                reason: "it resolves to no address".to_owned(),
            });
        }
        if identity.is_none() && addrs.iter().any(|a| !is_loopback(a.ip())) {
            return Err(TransportError::InsecureNonLoopback {
                addr: addr.to_owned(),
            });
        }
        let tls = match identity {
            Some(identity) => Some(acceptor(&identity, addr)?),
            None => None,
        };
        let tcp = TcpListener::bind(&addrs[..])
            .await
            .map_err(|source| TransportError::Io {
                context: format!(
                    "cannot listen on {addr} (is another agent already running on that port?)"
                ),
                source,
            })?;
        let local = tcp.local_addr().map_err(|source| TransportError::Io {
            context: format!("cannot read the address bound for {addr}"),
            source,
        })?;
        Ok(Listener {
            tcp,
            tls,
            local,
            admission: Admission::new(Limits::default()),
        })
    }

    /// This listener with other limits than [`Limits::default`].
    pub fn with_limits(self, limits: Limits) -> Listener {
        Listener {
            admission: Admission::new(limits),
            ..self
        }
    }

    /// The limits this listener keeps.
    pub fn limits(&self) -> &Limits {
        &self.admission.limits
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether connections speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts the next TCP connection that gets a handshake slot (see [`Limits`]); one from
    /// an address that has its share of the slots, or while every slot is taken, is closed at
    /// once (and logged, a few lines a minute at most). The handshake is left to
    /// [`Incoming::handshake`], so a slow peer does not hold up the accept loop.
    pub async fn accept(&self) -> Result<Incoming, TransportError> {
        loop {
            let (tcp, peer) = self
                .tcp
                .accept()
                .await
                .map_err(|source| TransportError::Io {
                    context: format!("cannot accept a connection on {}", self.local),
                    source,
                })?;
            let permit = match self.admission.admit(peer.ip()) {
                Ok(permit) => permit,
                Err(turned) => {
                    if let Some(left_out) = self.admission.may_log(Instant::now()) {
                        tracing::warn!(%peer, "closed a new connection: {turned}{}", left_out_note(left_out));
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            return Ok(Incoming {
                tcp,
                peer,
                tls: self.tls.clone(),
                admission: Arc::clone(&self.admission),
                _permit: permit,
            });
        }
    }
}

/// A TCP connection accepted by a [`Listener`], not yet authenticated.
pub struct Incoming {
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    admission: Arc<Admission>,
    /// The handshake slot, given back when the handshake ends either way.
    _permit: Permit,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("peer", &self.peer)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Incoming {
    /// The address the connection comes from.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// TLS, the WebSocket upgrade and the source's hello, bounded by the listener's
    /// [`Limits::handshake`] and [`Limits::pre_auth_bytes`].
    ///
    /// The first message must be a `Hello` with RainMaker's magic (else
    /// [`TransportError::NotRainMaker`], or [`TransportError::Protocol`] when it does not
    /// decode), speak [`PROTOCOL_VERSION`] (else [`TransportError::VersionMismatch`]) and carry
    /// `token` (compared in constant time; else [`TransportError::WrongToken`]). A refused
    /// source is sent `Refused` with the reason, once the WebSocket is up, and logged. On
    /// success the source is sent `Welcome{target_name}`; returns the connection and the
    /// source's name.
    pub async fn handshake(
        self,
        token: &str,
        target_name: &str,
    ) -> Result<(Connection, String), TransportError> {
        let limit = self.admission.limits.handshake;
        self.handshake_within(token, target_name, limit).await
    }

    /// [`Incoming::handshake`] accepting any of the agent's [`Tokens`]; returns what the peer
    /// may do (its [`Role`]).
    pub async fn handshake_as(
        self,
        tokens: &Tokens,
        target_name: &str,
    ) -> Result<(Connection, String, Role), TransportError> {
        let limit = self.admission.limits.handshake;
        self.greet(tokens, target_name, limit).await
    }

    /// [`Incoming::handshake`] with another time bound than the listener's.
    pub async fn handshake_within(
        self,
        token: &str,
        target_name: &str,
        limit: Duration,
    ) -> Result<(Connection, String), TransportError> {
        let tokens = Tokens {
            receive: token.to_owned(),
            subscribe: None,
            admin: None,
        };
        let (connection, name, _) = self.greet(&tokens, target_name, limit).await?;
        Ok((connection, name))
    }

    async fn greet(
        self,
        tokens: &Tokens,
        target_name: &str,
        limit: Duration,
    ) -> Result<(Connection, String, Role), TransportError> {
        let peer = self.peer.to_string();
        let admission = Arc::clone(&self.admission);
        // A stranger can knock many times: its refusals are logged a few lines a minute.
        let at = self.peer;
        let log_refusal = |what: &str, e: &TransportError| {
            if let Some(left_out) = admission.may_log(Instant::now()) {
                tracing::warn!(peer = %at, "refused a {what}: {e}{}", left_out_note(left_out));
            }
        };
        let deadline = Instant::now() + limit;
        let probe = super::tcp_info::SocketProbe::of(&self.tcp);
        let (tcp, lift) = budget::budgeted(self.tcp, admission.limits.pre_auth_bytes);
        let upgraded = tokio::time::timeout_at(deadline, upgrade(tcp, self.tls, &peer)).await;
        let mut connection = match upgraded {
            Ok(Ok(connection)) => connection.with_probe(probe),
            Ok(Err(e)) => {
                log_refusal("connection", &e);
                return Err(e);
            }
            Err(_) => {
                let e = TransportError::Timeout {
                    peer,
                    stage: "TLS and WebSocket handshake",
                };
                log_refusal("connection", &e);
                return Err(e);
            }
        };
        let ip = self.peer.ip();
        let greeted = tokio::time::timeout_at(deadline, async {
            let greeted = read_hello(&mut connection, tokens, &admission, ip).await?;
            lift.lift();
            let welcome = Message::Welcome {
                target_name: truncate(target_name, MAX_TEXT_BYTES).to_owned(),
            };
            connection.send(&welcome).await?;
            Ok(greeted)
        })
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::Timeout {
                peer: peer.clone(),
                stage: "hello",
            })
        });
        match greeted {
            Ok((source_name, role)) => {
                connection.remote_name = source_name.clone();
                Ok((connection, source_name, role))
            }
            Err(e) => {
                log_refusal("session", &e);
                if let Some(reason) = refusal_reason(&e) {
                    let refused = Message::Refused {
                        reason: truncate(&reason, MAX_TEXT_BYTES).to_owned(),
                        refusal: e.refusal(),
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.send(&refused)).await;
                }
                connection.shutdown().await;
                Err(e)
            }
        }
    }
}

async fn upgrade(
    tcp: budget::Budgeted<TcpStream>,
    tls: Option<TlsAcceptor>,
    peer: &str,
) -> Result<Connection, TransportError> {
    let stream: Box<dyn ByteStream> = match tls {
        Some(acceptor) => Box::new(acceptor.accept(tcp).await.map_err(|e| tls_error(peer, e))?),
        None => Box::new(tcp),
    };
    // A pipelining source's hello may come in the same read as its upgrade request.
    let stream: Box<dyn ByteStream> = Box::new(super::pipeline::HeadersFirst::new(stream));
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
        .await
        .map_err(|e| ws_error(peer, e))?;
    Ok(Connection::new(ws, peer.to_owned()))
}

/// What a peer may do, by the token it presented. Each role has a secret of its own; an agent
/// refuses, with the reason, whatever the role does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Mirror into the folder (the pairing token): write, never read.
    Source,
    /// Receive the folder, mirrored from the agent over the connection the peer opened (the
    /// subscribe token): read, never write, never command.
    Subscriber,
    /// Everything: mirror into the folder, receive it, and command the agent (the admin token).
    Admin,
}

impl Role {
    /// Whether this role may mirror into the agent's folder.
    pub fn may_write(self) -> bool {
        matches!(self, Role::Source | Role::Admin)
    }

    /// Whether this role may receive the agent's folder.
    pub fn may_read(self) -> bool {
        matches!(self, Role::Subscriber | Role::Admin)
    }
}

/// The tokens an agent accepts.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Lets a source mirror into the folder, nothing else.
    pub receive: String,
    /// Lets a peer receive the folder over a connection it opened (`None`: nobody may).
    pub subscribe: Option<String>,
    /// Lets a client do all of that and command the agent (`engine::control`).
    pub admin: Option<String>,
}

/// Reads the source's first message and checks it; returns the source's name and role. An
/// address that sent wrong tokens is refused without a comparison until its backoff ran out.
async fn read_hello(
    connection: &mut Connection,
    tokens: &Tokens,
    admission: &Admission,
    ip: IpAddr,
) -> Result<(String, Role), TransportError> {
    use futures_util::StreamExt;
    let peer = connection.peer.clone();
    let bytes = loop {
        match connection.ws.next().await {
            Some(Ok(WsMessage::Binary(bytes))) => break bytes,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Text(_) | WsMessage::Frame(_))) => {
                return Err(TransportError::NotRainMaker { peer });
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err(TransportError::Closed { peer }),
            Some(Err(e)) => return Err(ws_error(&peer, e)),
        }
    };
    let hello = match protocol::decode(&bytes) {
        // The source's name goes into logs and statuses: shown, never obeyed.
        Ok(mut message) => {
            message.escape_text();
            message
        }
        Err(source) => {
            // A hello from another version may not decode; its first fields still tell.
            if let Some(theirs) = hello_version(&bytes).filter(|v| *v != PROTOCOL_VERSION) {
                return Err(TransportError::VersionMismatch {
                    peer,
                    ours: PROTOCOL_VERSION,
                    theirs,
                });
            }
            return Err(TransportError::Protocol { peer, source });
        }
    };
    let Message::Hello {
        magic,
        version,
        token: their_token,
        source_name,
    } = hello
    else {
        return Err(TransportError::NotRainMaker { peer });
    };
    if magic != MAGIC {
        return Err(TransportError::NotRainMaker { peer });
    }
    if version != PROTOCOL_VERSION {
        return Err(TransportError::VersionMismatch {
            peer,
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    if let Some(wait) = admission.backoff(ip, Instant::now()) {
        return Err(TransportError::Backoff { peer, wait });
    }
    // Every one is compared, so the time taken does not tell which one was tried.
    let matches = |token: Option<&str>| token.is_some_and(|t| tokens_match(&their_token, t));
    let admin = matches(tokens.admin.as_deref());
    let subscribe = matches(tokens.subscribe.as_deref());
    let receive = matches(Some(&tokens.receive));
    let role = match (admin, subscribe, receive) {
        (true, _, _) => Role::Admin,
        (false, true, _) => Role::Subscriber,
        (false, false, true) => Role::Source,
        (false, false, false) => {
            admission.failed(ip, Instant::now());
            return Err(TransportError::WrongToken { peer });
        }
    };
    admission.succeeded(ip);
    Ok((source_name, role))
}

/// What a log line adds when lines before it were left out.
fn left_out_note(left_out: u64) -> String {
    match left_out {
        0 => String::new(),
        n => format!(" ({n} more such lines were left out of the log)"),
    }
}

/// The version of a hello that does not decode as this version's `Hello`: its first fields
/// (variant 0, the magic, the version) are the same in every version.
fn hello_version(bytes: &[u8]) -> Option<u32> {
    let ((variant, magic, version), _rest) =
        postcard::take_from_bytes::<(u32, [u8; 8], u32)>(bytes).ok()?;
    (variant == 0 && magic == MAGIC).then_some(version)
}

/// Compares tokens in constant time; hashing first hides their lengths too.
pub(super) fn tokens_match(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = blake3::hash(given.as_bytes());
    let expected = blake3::hash(expected.as_bytes());
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// What the refused source is told, for a person reading its log.
fn refusal_reason(error: &TransportError) -> Option<String> {
    Some(match error {
        TransportError::WrongToken { .. } => "wrong pairing token: the token sent is none of \
                                              this agent's (pairing, subscribe or admin); use a \
                                              code that `rainmaker pair` prints on the agent"
            .to_owned(),
        TransportError::VersionMismatch { ours, theirs, .. } => format!(
            "protocol version mismatch: this target speaks version {ours}, the source speaks \
             version {theirs}; install the same RainMaker version on both machines"
        ),
        TransportError::NotRainMaker { .. } => {
            "the first message was not a RainMaker hello".to_owned()
        }
        TransportError::Protocol { source, .. } => {
            format!("the first message broke the protocol: {source}")
        }
        TransportError::WebSocket { source, .. } => format!("bad WebSocket message: {source}"),
        TransportError::Timeout { .. } => "no hello in time".to_owned(),
        TransportError::Backoff { wait, .. } => format!(
            "too many wrong tokens from your address: the next token is compared in {} s; \
             give the source the target's token file or pairing code",
            wait.as_secs_f64().ceil()
        ),
        _ => return None,
    })
}

fn acceptor(identity: &Identity, addr: &str) -> Result<TlsAcceptor, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(vec![identity.cert_der()], identity.key_der())
        })
        .map_err(|e| TransportError::Tls {
            peer: addr.to_owned(),
            reason: format!("cannot use the TLS identity: {e}"),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
