//! The secure channel between a source and its targets: a WebSocket over TLS (`wss://`), with
//! the target's certificate pinned by fingerprint and a pairing token checked before anything
//! else happens.
//!
//! A target runs a [`Listener`] with its [`Identity`] (a self-signed certificate kept on disk);
//! each accepted [`Incoming`] connection goes through [`Incoming::handshake`], which checks the
//! source's hello (magic, protocol version, token in constant time) and answers `Welcome` or
//! `Refused`. A source calls [`connect`], which trusts the target only if its certificate has
//! the expected fingerprint ([`Trust::Pinned`], from `--fingerprint` or a
//! [pairing code](crate::pairing)) or one recorded in a known-peers file ([`Trust::KnownPeers`]);
//! trusting whoever answers a first connection ([`Trust::FirstUse`]) is only ever done when a
//! person asked for it, because the token goes to that peer. Both end with a [`Connection`] that carries
//! [`Message`]s, each decoded and checked by [`protocol::decode`]. Plain `ws://`
//! ([`Trust::Insecure`], a listener without identity) exists for tests and tools on one machine:
//! a listener refuses it on any address but loopback, and a client refuses to send a token over
//! it to any address but loopback.
//!
//! ```text
//! source                                   target
//! connect(url, trust, token) --TCP, TLS--> Listener::accept -> Incoming
//!   (pin check + signature check)          Incoming::handshake(token)
//! Hello{magic, version, token}  ---------> magic? version? token?
//!                               <--------- Welcome{name} | Refused{reason}
//! Connection  <====== Message per WebSocket binary message ======>  Connection
//! ```
//!
//! Parts: [`identity`](Identity) (certificate, key, fingerprint), `known_peers` (the
//! trust-on-first-use file), `pin` (the certificate verifier), `connection` (framing),
//! `admission` (the [`Limits`] a listener keeps before and after authentication) and `budget`
//! (the byte budget of an unauthenticated peer).

mod admission;
mod budget;
mod connection;
mod identity;
mod known_peers;
mod pin;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

pub use connection::{Connection, ConnectionReceiver, ConnectionSender, WIRE_TOTAL, read_frames};
pub use identity::{Fingerprint, Identity, fingerprint_in, fingerprint_of, parse_fingerprint};
pub use known_peers::KnownPeers;

pub use admission::Limits;
use admission::{Admission, Permit};

use crate::protocol::{
    self, MAGIC, MAX_TEXT_BYTES, Message, PROTOCOL_VERSION, ProtocolError, Refusal,
};
use connection::{ByteStream, ws_config, ws_error};
use pin::PinVerifier;

/// How long connecting, TLS, the WebSocket upgrade and the hello may take together, on a
/// client (a listener has its own [`Limits::handshake`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean close waits for the peer's answer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything that can go wrong in the transport. Each variant names the peer, address or file
/// it concerns, and its message says what to do.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot reach {peer}: {source}; check the address, that `rainmaker serve` runs there \
         and that its port is open"
    )]
    Connect {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "TLS with {peer} failed: {reason}; check that both sides run RainMaker over wss:// \
         (plain ws:// needs --insecure on both)"
    )]
    Tls { peer: String, reason: String },
    #[error("WebSocket error with {peer}: {source}")]
    WebSocket {
        peer: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
    #[error(
        "{peer} did not finish the {stage} in time; check that it is a RainMaker agent and \
         that the network between us works"
    )]
    Timeout { peer: String, stage: &'static str },
    #[error("{peer} refused the session: {reason}")]
    Refused {
        peer: String,
        reason: String,
        refusal: Refusal,
    },
    #[error(
        "{peer} sent nothing for {} s, not even the answer to a ping; the session was ended so \
         it does not hold the folder (a frozen or cut-off source reconnects when it is back)",
        after.as_secs_f64()
    )]
    Idle { peer: String, after: Duration },
    #[error(
        "{peer} sent wrong tokens; its next token is compared in {} s (each wrong token \
         doubles the wait); check the token file of the source",
        wait.as_secs_f64().ceil()
    )]
    Backoff { peer: String, wait: Duration },
    #[error(
        "{peer} sent a wrong pairing token; if it is one of your sources, give it this \
         target's token file"
    )]
    WrongToken { peer: String },
    #[error(
        "{peer} speaks RainMaker protocol version {theirs}, this build speaks version {ours}; \
         install the same RainMaker version on both machines"
    )]
    VersionMismatch {
        peer: String,
        ours: u32,
        theirs: u32,
    },
    #[error(
        "{peer} is not a RainMaker source: its first message was not a RainMaker hello; check \
         what connects to this port"
    )]
    NotRainMaker { peer: String },
    #[error("{peer} broke the protocol: {source}")]
    Protocol {
        peer: String,
        #[source]
        source: ProtocolError,
    },
    #[error("{}", fingerprint_changed_message(peer, expected, got, known_peers.as_ref()))]
    FingerprintChanged {
        peer: String,
        expected: Fingerprint,
        got: Fingerprint,
        known_peers: Option<PathBuf>,
    },
    #[error(
        "refusing to listen on {addr} without TLS: plain ws:// is only allowed on a loopback \
         address (127.0.0.1, ::1, localhost); listen on loopback or drop --insecure"
    )]
    InsecureNonLoopback { addr: String },
    #[error(
        "refusing to send a token to {peer} over plain ws://: it is not a loopback address \
         (127.0.0.1, ::1, localhost), so anyone on the way could read it; use wss:// with the \
         agent's pairing code or --fingerprint"
    )]
    InsecureRemote { peer: String },
    #[error(
        "{peer} is not pinned: nothing says which certificate it must have, so its token would \
         go to whoever answers; use its pairing code (`rainmaker pair` on it) or pass \
         --fingerprint with the fingerprint it printed at start (or --trust-first-use to trust \
         the first answer, on a network you trust)"
    )]
    NotPinned { peer: String },
    #[error("bad address {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "bad fingerprint {value:?}: expected SHA256: and 64 hex digits, as the target prints \
         when it starts"
    )]
    BadFingerprint { value: String },
    #[error(
        "the connection to {peer} was cut before it was closed; it is retried on the next sync"
    )]
    Closed { peer: String },
    #[error("TLS identity {}: {reason}", path.display())]
    Identity { path: PathBuf, reason: String },
    #[error("known-peers file {}, line {line}: {reason}; fix or delete that line", path.display())]
    KnownPeers {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn fingerprint_changed_message(
    peer: &str,
    expected: &str,
    got: &str,
    known_peers: Option<&PathBuf>,
) -> String {
    let remedy = match known_peers {
        Some(file) => format!(
            "remove its line from {} (or pass --fingerprint)",
            file.display()
        ),
        None => "pass that fingerprint with --fingerprint".to_owned(),
    };
    format!(
        "the certificate of {peer} changed: expected {expected} got {got}. If the agent was \
         reinstalled or its state folder deleted, check the fingerprint it printed at start and \
         {remedy}; otherwise someone may be intercepting the connection"
    )
}

impl TransportError {
    /// A stable, short name of the kind of error, for the UI's `{code, message}`.
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::Io { .. } => "io",
            TransportError::Connect { .. } => "unreachable",
            TransportError::Tls { .. } => "tls",
            TransportError::WebSocket { .. } => "websocket",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Refused { .. } => "refused",
            TransportError::Idle { .. } => "idle",
            TransportError::Backoff { .. } => "backoff",
            TransportError::WrongToken { .. } => "wrong_token",
            TransportError::VersionMismatch { .. } => "version_mismatch",
            TransportError::NotRainMaker { .. } => "not_rainmaker",
            TransportError::Protocol { .. } => "protocol",
            TransportError::FingerprintChanged { .. } => "fingerprint_changed",
            TransportError::InsecureNonLoopback { .. } => "insecure_non_loopback",
            TransportError::InsecureRemote { .. } => "insecure_remote",
            TransportError::NotPinned { .. } => "not_pinned",
            TransportError::BadUrl { .. } => "bad_url",
            TransportError::BadFingerprint { .. } => "bad_fingerprint",
            TransportError::Closed { .. } => "closed",
            TransportError::Identity { .. } => "identity",
            TransportError::KnownPeers { .. } => "known_peers",
        }
    }

    /// What a user can do about this error, as a type ([`Refusal::Other`]: read it).
    pub fn refusal(&self) -> Refusal {
        match self {
            TransportError::Refused { refusal, .. } => *refusal,
            TransportError::WrongToken { .. } => Refusal::WrongToken,
            TransportError::VersionMismatch { .. } => Refusal::Version,
            TransportError::FingerprintChanged { .. } => Refusal::FingerprintChanged,
            _ => Refusal::Other,
        }
    }

    /// Whether trying again later may succeed without anyone changing anything (the network
    /// or the peer was down), as opposed to a refusal or a configuration error that repeats
    /// until a person acts.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Io { .. }
                | TransportError::Connect { .. }
                | TransportError::Tls { .. }
                | TransportError::WebSocket { .. }
                | TransportError::Timeout { .. }
                | TransportError::Idle { .. }
                | TransportError::Closed { .. }
        )
    }
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Exactly this fingerprint (from `--fingerprint` or a pairing code); see
    /// [`parse_fingerprint`] for the accepted spellings.
    Pinned(Fingerprint),
    /// A fingerprint recorded in this known-peers file for `host:port`; a peer the file does
    /// not name is refused ([`TransportError::NotPinned`]) before anything is sent.
    KnownPeers(PathBuf),
    /// Trust on first use (only when a person asked for it, `--trust-first-use`): as
    /// [`Trust::KnownPeers`], but a peer the file does not name is accepted and its fingerprint
    /// recorded once it accepted our token. That token goes to whoever answered.
    FirstUse(PathBuf),
    /// Plain `ws://` (only with `--insecure`): no TLS at all.
    Insecure,
}

impl Trust {
    /// How to check the target at `url`: plain `ws://` is taken as meant (the caller decides
    /// whether to allow it; the transport allows it on loopback only), else its pinned
    /// `fingerprint`, else the `known_peers` file, recording a new peer there only when
    /// `first_use` was asked for.
    pub fn for_url(
        url: &str,
        fingerprint: Option<&str>,
        known_peers: &Path,
        first_use: bool,
    ) -> Trust {
        match fingerprint {
            _ if Address::parse(url).is_ok_and(|a| !a.tls) => Trust::Insecure,
            Some(fp) => Trust::Pinned(fp.to_owned()),
            None if first_use => Trust::FirstUse(known_peers.to_path_buf()),
            None => Trust::KnownPeers(known_peers.to_path_buf()),
        }
    }
}

/// What [`connect`] needs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `wss://host:port` (or `ws://host:port` with [`Trust::Insecure`]); a trailing path is
    /// ignored; IPv6 addresses go in brackets.
    pub url: String,
    pub trust: Trust,
    /// The target's pairing token.
    pub token: String,
    /// Our name, for the target's log.
    pub source_name: String,
}

/// Connects to a target: TCP, TLS with the certificate checked against `opts.trust`, the
/// WebSocket upgrade, then `Hello` and the target's `Welcome` (or `Refused`, returned as
/// [`TransportError::Refused`]). Everything together is bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, TransportError> {
    connect_within(opts, HANDSHAKE_TIMEOUT).await
}

/// [`connect`] with another bound than [`HANDSHAKE_TIMEOUT`].
pub async fn connect_within(
    opts: &ConnectOptions,
    limit: Duration,
) -> Result<Connection, TransportError> {
    let target = Address::parse(&opts.url)?;
    match tokio::time::timeout(limit, connect_to(opts, &target)).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout {
            peer: target.key,
            stage: "connection and handshake",
        }),
    }
}

async fn connect_to(opts: &ConnectOptions, target: &Address) -> Result<Connection, TransportError> {
    let peer = target.key.clone();
    let bad_url = |reason: &str| TransportError::BadUrl {
        url: opts.url.clone(),
        reason: reason.to_owned(),
    };
    // Decide what to trust before touching the network.
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let (accepted, known_peers) = match (&opts.trust, target.tls) {
        (Trust::Insecure, false) => {
            // The token crosses in clear: only to this machine, checked on the addresses
            // actually connected to (a name cannot resolve to loopback here and elsewhere
            // there).
            addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|source| TransportError::Connect {
                    peer: peer.clone(),
                    source,
                })?
                .collect();
            if addrs.is_empty() || addrs.iter().any(|a| !is_loopback(a.ip())) {
                return Err(TransportError::InsecureRemote { peer });
            }
            (None, None)
        }
        (Trust::Insecure, true) => {
            return Err(bad_url(
                "--insecure goes with a ws:// address; a wss:// target is checked with \
                 --fingerprint or the known-peers file",
            ));
        }
        (_, false) => {
            return Err(bad_url(
                "ws:// is neither encrypted nor authenticated; use wss:// (or pass --insecure \
                 on a network you trust)",
            ));
        }
        (Trust::Pinned(value), true) => {
            let pin = parse_fingerprint(value).ok_or_else(|| TransportError::BadFingerprint {
                value: value.clone(),
            })?;
            (Some(vec![pin]), None)
        }
        (Trust::KnownPeers(path), true) => {
            let known = KnownPeers::load(path)?;
            let pins = known.fingerprints(&peer);
            if pins.is_empty() {
                return Err(TransportError::NotPinned { peer });
            }
            (Some(pins), Some(path.clone()))
        }
        (Trust::FirstUse(path), true) => {
            let known = KnownPeers::load(path)?;
            (Some(known.fingerprints(&peer)), Some(path.clone()))
        }
    };

    let connected = if addrs.is_empty() {
        TcpStream::connect((target.host.as_str(), target.port)).await
    } else {
        TcpStream::connect(&addrs[..]).await
    };
    let tcp = connected.map_err(|source| TransportError::Connect {
        peer: peer.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);

    let (stream, fingerprint): (Box<dyn ByteStream>, Option<Fingerprint>) = match accepted {
        None => (Box::new(tcp), None),
        Some(accepted) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = PinVerifier::new(accepted.clone(), &provider);
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error(&peer, e))?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            let connector = TlsConnector::from(Arc::new(config));
            match connector.connect(server_name(&target.host), tcp).await {
                Ok(tls) => (Box::new(tls), verifier.seen()),
                Err(e) => {
                    if let (true, Some(got)) = (verifier.rejected(), verifier.seen()) {
                        return Err(TransportError::FingerprintChanged {
                            peer,
                            expected: accepted[0].clone(),
                            got,
                            known_peers,
                        });
                    }
                    return Err(tls_error(&peer, e));
                }
            }
        }
    };

    let request = format!(
        "{}://{}/",
        if target.tls { "wss" } else { "ws" },
        target.key
    );
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(|e| ws_error(&peer, e))?;
    let mut connection = Connection::new(ws, peer.clone());
    connection
        .send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            token: opts.token.clone(),
            source_name: opts.source_name.clone(),
        })
        .await?;
    match connection.recv().await? {
        Some(Message::Welcome { target_name }) => connection.remote_name = target_name,
        Some(Message::Refused { reason, refusal }) => {
            return Err(TransportError::Refused {
                peer,
                reason: printable(&reason),
                refusal,
            });
        }
        Some(other) => {
            return Err(TransportError::Protocol {
                peer,
                source: ProtocolError::Malformed(format!(
                    "expected Welcome or Refused, got {}",
                    Message::name(&other)
                )),
            });
        }
        None => return Err(TransportError::Closed { peer }),
    }

    // First use: the target proved it holds the key and accepted our token; remember it.
    if let (Trust::FirstUse(path), Some(seen)) = (&opts.trust, &fingerprint) {
        let known = KnownPeers::load(path)?;
        if known.fingerprints(&peer).is_empty() {
            known.append(path, &peer, seen)?;
        }
    }
    connection.fingerprint = fingerprint;
    Ok(connection)
}

/// Connects to `url` only as far as the TLS handshake and returns the fingerprint of the
/// certificate the server presented (after checking that it holds the certificate's key).
/// No token is sent and nothing is recorded: this is what a person is shown to confirm
/// before a server is trusted.
pub async fn peek_fingerprint(url: &str) -> Result<Fingerprint, TransportError> {
    let target = Address::parse(url)?;
    if !target.tls {
        return Err(TransportError::BadUrl {
            url: url.to_owned(),
            reason: "a ws:// address has no certificate to check; use wss://".into(),
        });
    }
    let peer = target.key.clone();
    let handshake = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| TransportError::Connect {
                peer: peer.clone(),
                source,
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinVerifier::new(Vec::new(), &provider);
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&peer, e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
            .connect(server_name(&target.host), tcp)
            .await
            .map_err(|e| tls_error(&peer, e))?;
        verifier
            .seen()
            .ok_or_else(|| tls_error(&peer, "the server presented no certificate"))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::Timeout {
                peer: peer.clone(),
                stage: "TLS handshake",
            })
        })
}

/// A target's listening socket.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
    admission: Arc<Admission>,
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

    /// [`Incoming::handshake`] accepting the receive token or the admin token; returns what
    /// the peer may do.
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
        let (tcp, lift) = budget::budgeted(self.tcp, admission.limits.pre_auth_bytes);
        let upgraded = tokio::time::timeout_at(deadline, upgrade(tcp, self.tls, &peer)).await;
        let mut connection = match upgraded {
            Ok(Ok(connection)) => connection,
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
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
        .await
        .map_err(|e| ws_error(peer, e))?;
    Ok(Connection::new(ws, peer.to_owned()))
}

/// What a peer may do, by the token it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Mirror into the folder (the pairing token).
    Source,
    /// Mirror, and command the agent (the admin token).
    Admin,
}

/// The tokens an agent accepts.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Lets a source mirror into the folder, nothing else.
    pub receive: String,
    /// Also lets a client command the agent (`engine::control`).
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
    // Both are compared, so the time taken does not tell which one was tried.
    let admin = tokens
        .admin
        .as_deref()
        .is_some_and(|admin| tokens_match(&their_token, admin));
    let receive = tokens_match(&their_token, &tokens.receive);
    let role = match (admin, receive) {
        (true, _) => Role::Admin,
        (false, true) => Role::Source,
        (false, false) => {
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
fn tokens_match(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = blake3::hash(given.as_bytes());
    let expected = blake3::hash(expected.as_bytes());
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// What the refused source is told, for a person reading its log.
fn refusal_reason(error: &TransportError) -> Option<String> {
    Some(match error {
        TransportError::WrongToken { .. } => "wrong pairing token: the token the source sent is \
                                              not this target's; give the source the target's \
                                              token file (--token-file)"
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
             give the source the target's token file (--token-file)",
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

fn tls_error(peer: &str, error: impl std::fmt::Display) -> TransportError {
    TransportError::Tls {
        peer: peer.to_owned(),
        reason: error.to_string(),
    }
}

/// The name rustls needs; we pin the certificate, so it is only sent as SNI.
fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("rainmaker.invalid").expect("a valid DNS name"))
}

pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `host:port` (lower case, IPv6 in brackets) of an address written `host:port` or
/// `wss://host:port`: how the known-peers file and an agent's `push_to` name a peer.
pub fn authority_of(address: &str) -> Result<String, TransportError> {
    Address::parse_host_port(address.trim()).map(|a| a.key)
}

/// An agent's address, parsed from `wss://HOST:PORT` (or `ws://` for loopback tests): the one
/// parser every caller uses. The scheme and host are case-insensitive; a trailing path, query
/// or fragment is ignored; IPv6 addresses go in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// `wss://` (TLS) rather than `ws://`.
    pub tls: bool,
    /// Host name or IP address, lower case, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host:port` (IPv6 in brackets, lower case): the key in the known-peers file.
    pub key: String,
}

impl Address {
    /// Whether the host is a loopback address by its text alone (`localhost`, `127.x`, `::1`).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(is_loopback)
    }

    /// The address as a URL: `wss://host:port` (or `ws://`), lower case.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "wss" } else { "ws" }, self.key)
    }

    /// Parses `wss://HOST:PORT`; `HOST:PORT` alone is taken as `wss://`.
    pub fn parse_host_port(address: &str) -> Result<Address, TransportError> {
        if address.contains("://") {
            return Address::parse(address);
        }
        Address::parse(&format!("wss://{address}")).map_err(|e| match e {
            TransportError::BadUrl { reason, .. } => TransportError::BadUrl {
                url: address.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses `wss://HOST:PORT` or `ws://HOST:PORT`.
    pub fn parse(url: &str) -> Result<Address, TransportError> {
        let bad = |reason: &str| TransportError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .trim()
            .split_once("://")
            .ok_or_else(|| bad("expected wss://host:port"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "wss" => true,
            "ws" => false,
            _ => return Err(bad("the scheme must be wss:// (or ws:// with --insecure)")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("user names in the address are not supported"));
        }
        let (host, port, ipv6) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, tail) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address must end with ]"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between [ and ]"));
            }
            let port = tail
                .strip_prefix(':')
                .ok_or_else(|| bad("the port is missing, as in wss://[::1]:7878"))?;
            (host, port, true)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| bad("the port is missing, as in wss://host:7878"))?;
            if host.contains(':') {
                return Err(bad(
                    "write an IPv6 address in brackets, as in wss://[::1]:7878",
                ));
            }
            (host, port, false)
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        let host = host.to_ascii_lowercase();
        let key = if ipv6 {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Address {
            tls,
            host,
            port,
            key,
        })
    }
}

/// A reason from the peer, made safe to print on a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::net::Ipv4Addr;
    use std::path::Path;
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::Bytes;

    const TOKEN: &str = "correct horse battery staple";

    fn options(url: String, trust: Trust, token: &str) -> ConnectOptions {
        ConnectOptions {
            url,
            trust,
            token: token.to_owned(),
            source_name: "source-pc".to_owned(),
        }
    }

    fn wss(listener: &Listener) -> String {
        format!("wss://{}", listener.local_addr())
    }

    /// Accepts one connection and runs the handshake in a task.
    fn serve_one(
        listener: &Arc<Listener>,
    ) -> JoinHandle<Result<(Connection, String), TransportError>> {
        let listener = Arc::clone(listener);
        tokio::spawn(async move { listener.accept().await?.handshake(TOKEN, "backup-1").await })
    }

    /// Accepts one connection, then echoes every message back until the client closes.
    fn echo_one(listener: &Arc<Listener>) -> JoinHandle<Result<String, TransportError>> {
        let listener = Arc::clone(listener);
        tokio::spawn(async move {
            let (mut connection, source_name) = listener
                .accept()
                .await?
                .handshake(TOKEN, "backup-1")
                .await?;
            while let Some(message) = connection.recv().await? {
                connection.send(&message).await?;
            }
            Ok(source_name)
        })
    }

    async fn raw_ws_client(listener: &Listener) -> tokio_tungstenite::WebSocketStream<TcpStream> {
        let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
        let url = format!("ws://{}/", listener.local_addr());
        tokio_tungstenite::client_async(url, tcp).await.unwrap().0
    }

    /// Reads what a raw client gets back until the server closes: the reason of a `Refused`,
    /// if any came.
    async fn refusal(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Option<String> {
        let mut refused = None;
        while let Some(Ok(message)) = ws.next().await {
            if let WsMessage::Binary(bytes) = message {
                if let Ok(Message::Refused { reason, .. }) = protocol::decode(&bytes) {
                    refused = Some(reason);
                }
            }
        }
        refused
    }

    fn hello(version: u32, token: &str) -> Vec<u8> {
        protocol::encode(&Message::Hello {
            magic: MAGIC,
            version,
            token: token.to_owned(),
            source_name: "raw".to_owned(),
        })
    }

    fn known_peers_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn trust_on_first_use_records_then_requires_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let known = dir.path().join("config/known_peers");
        let identity = Identity::generate().unwrap();
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );
        let addr = listener.local_addr();
        let opts = options(wss(&listener), Trust::KnownPeers(known.clone()), TOKEN);

        // Not pinned and first use not asked for: refused before even connecting, so the
        // token goes nowhere.
        let err = connect(&opts).await.unwrap_err();
        assert!(
            matches!(&err, TransportError::NotPinned { peer } if *peer == addr.to_string()),
            "an unknown peer without --trust-first-use is refused: {err:?}"
        );
        assert!(
            err.to_string().contains("pairing code") && err.to_string().contains("--fingerprint"),
            "the refusal says what to do: {err}"
        );
        assert!(!err.is_transient(), "only a person can pin a peer");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err(),
            "nothing may connect to a peer that is not pinned"
        );

        // First use, asked for: accepted and recorded.
        let first_use = options(wss(&listener), Trust::FirstUse(known.clone()), TOKEN);
        let server = echo_one(&listener);
        let mut client = connect(&first_use).await.unwrap();
        assert_eq!(client.remote_name(), "backup-1");
        assert_eq!(client.fingerprint(), Some(&identity.fingerprint()));
        client
            .send(&Message::GetManifest { cached: None })
            .await
            .unwrap();
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::GetManifest { cached: None })
        );
        let ours = protocol::encode(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            token: TOKEN.to_owned(),
            source_name: "source-pc".to_owned(),
        })
        .len()
            + protocol::encode(&Message::GetManifest { cached: None }).len();
        assert_eq!(
            client.wire_bytes_sent(),
            ours as u64,
            "hello and one message"
        );
        client.close().await;
        assert_eq!(server.await.unwrap().unwrap(), "source-pc");
        assert_eq!(
            known_peers_lines(&known),
            vec![format!("{addr} {}", identity.fingerprint())],
            "the first connection records the target"
        );

        // Second connection, without first use: the recorded fingerprint matches.
        let server = echo_one(&listener);
        connect(&opts).await.unwrap().close().await;
        server.await.unwrap().unwrap();
        assert_eq!(known_peers_lines(&known).len(), 1, "nothing new to record");

        // The target comes back with a new identity on the same port.
        drop(listener);
        let other = Identity::generate().unwrap();
        let listener = Arc::new(
            Listener::bind(&addr.to_string(), Some(other.clone()))
                .await
                .unwrap(),
        );
        let server = serve_one(&listener);
        let err = connect(&opts).await.unwrap_err();
        match &err {
            TransportError::FingerprintChanged {
                peer,
                expected,
                got,
                known_peers,
            } => {
                assert_eq!(peer, &addr.to_string());
                assert_eq!(expected, &identity.fingerprint());
                assert_eq!(got, &other.fingerprint());
                assert_eq!(known_peers.as_deref(), Some(known.as_path()));
            }
            other => panic!("expected FingerprintChanged, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&known.display().to_string())
                && message.contains(&identity.fingerprint())
                && message.contains(&other.fingerprint()),
            "the user needs the file and both fingerprints: {message}"
        );
        assert!(!err.is_transient(), "a changed certificate needs a person");
        let server_err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(server_err, TransportError::Tls { .. }),
            "the target sees the aborted TLS handshake: {server_err:?}"
        );
        assert_eq!(
            known_peers_lines(&known).len(),
            1,
            "a mismatch records nothing"
        );
    }

    #[test]
    fn trust_follows_the_scheme_then_the_pin_then_the_known_peers() {
        let known = Path::new("/k");
        assert_eq!(
            Trust::for_url("ws://a:1", Some("SHA256:x"), known, true),
            Trust::Insecure
        );
        assert_eq!(
            Trust::for_url("wss://a:1", Some("SHA256:x"), known, true),
            Trust::Pinned("SHA256:x".into())
        );
        assert_eq!(
            Trust::for_url("wss://a:1", None, known, false),
            Trust::KnownPeers(known.to_path_buf())
        );
        assert_eq!(
            Trust::for_url("wss://a:1", None, known, true),
            Trust::FirstUse(known.to_path_buf()),
            "first use only when asked for"
        );
    }

    #[tokio::test]
    async fn peeking_shows_the_fingerprint_without_sending_the_token() {
        let identity = Identity::generate().unwrap();
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );
        let server = serve_one(&listener);
        let seen = peek_fingerprint(&wss(&listener)).await.unwrap();
        assert_eq!(
            seen,
            identity.fingerprint(),
            "the certificate the server holds"
        );
        let after = server.await.unwrap();
        assert!(
            after.is_err(),
            "the server saw no Hello, so no token: {after:?}"
        );
        let plain = peek_fingerprint("ws://127.0.0.1:1").await.unwrap_err();
        assert!(plain.to_string().contains("wss://"), "{plain}");
    }

    #[tokio::test]
    async fn a_pinned_fingerprint_must_match() {
        let identity = Identity::generate().unwrap();
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );

        let server = echo_one(&listener);
        // Pasted in upper case: still the same fingerprint.
        let pin = identity.fingerprint().to_uppercase();
        let client = connect(&options(wss(&listener), Trust::Pinned(pin), TOKEN))
            .await
            .unwrap();
        client.close().await;
        server.await.unwrap().unwrap();

        let server = serve_one(&listener);
        let wrong = Identity::generate().unwrap().fingerprint();
        let err = connect(&options(
            wss(&listener),
            Trust::Pinned(wrong.clone()),
            TOKEN,
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(&err, TransportError::FingerprintChanged { expected, got, known_peers: None, .. }
                if *expected == wrong && *got == identity.fingerprint()),
            "{err:?}"
        );
        assert!(err.to_string().contains("--fingerprint"), "{err}");
        assert!(
            server.await.unwrap().is_err(),
            "the target sees the failure"
        );

        let err = connect(&options(
            wss(&listener),
            Trust::Pinned("SHA256:12".into()),
            TOKEN,
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(err, TransportError::BadFingerprint { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_stolen_certificate_without_its_key_is_refused() {
        // A server presents the real target's certificate but signs with another key.
        let real = Identity::generate().unwrap();
        let impostor_key = Identity::generate().unwrap().key_der();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(impostor_key)
            .unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![real.cert_der()], signing_key);
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = tcp.accept().await.unwrap();
            acceptor.accept(stream).await.map(|_| ())
        });

        let err = connect(&options(
            format!("wss://{addr}"),
            Trust::Pinned(real.fingerprint()),
            TOKEN,
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(err, TransportError::Tls { .. }),
            "the handshake signature must be checked, not only the pin: {err:?}"
        );
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_on_both_sides() {
        let identity = Identity::generate().unwrap();
        let pin = Trust::Pinned(identity.fingerprint());
        let listener = Arc::new(Listener::bind("127.0.0.1:0", Some(identity)).await.unwrap());
        let server = serve_one(&listener);
        let err = connect(&options(wss(&listener), pin, "not the token"))
            .await
            .unwrap_err();
        match &err {
            TransportError::Refused {
                reason, refusal, ..
            } => {
                assert_eq!(*refusal, Refusal::WrongToken, "and what it can do about it");
                assert!(
                    reason.contains("token"),
                    "the source must learn why: {reason}"
                )
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert!(
            !err.is_transient(),
            "retrying with the same token cannot help"
        );
        let server_err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(server_err, TransportError::WrongToken { .. }),
            "{server_err:?}"
        );
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused_with_both_numbers() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let theirs = PROTOCOL_VERSION + 1;
        // A newer hello that decodes, and one whose tail this version cannot decode.
        let full = hello(theirs, TOKEN);
        let mut undecodable = full.clone();
        undecodable.truncate(full.len() - 3);
        for bytes in [full, undecodable] {
            let server = serve_one(&listener);
            let mut ws = raw_ws_client(&listener).await;
            ws.send(WsMessage::Binary(Bytes::from(bytes)))
                .await
                .unwrap();
            let reason = refusal(&mut ws).await.expect("a Refused message");
            assert!(
                reason.contains(&format!("version {PROTOCOL_VERSION}"))
                    && reason.contains(&format!("version {theirs}")),
                "the reason must name both versions: {reason}"
            );
            let err = server.await.unwrap().unwrap_err();
            assert!(
                matches!(err, TransportError::VersionMismatch { ours, theirs: t, .. }
                    if ours == PROTOCOL_VERSION && t == theirs),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn garbage_and_strangers_are_refused() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let cases: Vec<(WsMessage, &str)> = vec![
            (
                WsMessage::Binary(Bytes::from_static(&[0xff; 16])),
                "protocol",
            ),
            (WsMessage::Text("GET / HTTP/1.1".into()), "not_rainmaker"),
            (
                WsMessage::Binary(Bytes::from(protocol::encode(&Message::GetManifest {
                    cached: None,
                }))),
                "not_rainmaker",
            ),
            (
                WsMessage::Binary(Bytes::from(protocol::encode(&Message::Hello {
                    magic: *b"NOTRAINM",
                    version: PROTOCOL_VERSION,
                    token: TOKEN.to_owned(),
                    source_name: String::new(),
                }))),
                "not_rainmaker",
            ),
        ];
        for (first, code) in cases {
            let server = serve_one(&listener);
            let mut ws = raw_ws_client(&listener).await;
            ws.send(first).await.unwrap();
            assert!(
                refusal(&mut ws).await.is_some(),
                "a stranger is told it was refused"
            );
            let err = server.await.unwrap().unwrap_err();
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[tokio::test]
    async fn an_oversize_message_is_refused_without_panic() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let oversize = Bytes::from(vec![0u8; protocol::MAX_MESSAGE_BYTES + 1]);

        // As the first message.
        let server = serve_one(&listener);
        let mut ws = raw_ws_client(&listener).await;
        let _ = ws.send(WsMessage::Binary(oversize.clone())).await;
        let err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Protocol { source: ProtocolError::TooLarge(n), .. }
                    if n > protocol::MAX_MESSAGE_BYTES
            ),
            "{err:?}"
        );
        drop(ws);

        // After a successful handshake.
        let server = serve_one(&listener);
        let mut ws = raw_ws_client(&listener).await;
        ws.send(WsMessage::Binary(Bytes::from(hello(
            PROTOCOL_VERSION,
            TOKEN,
        ))))
        .await
        .unwrap();
        let (mut connection, _) = server.await.unwrap().unwrap();
        let sending = tokio::spawn(async move {
            let _ = ws.send(WsMessage::Binary(oversize)).await;
            ws
        });
        let err = connection.recv().await.unwrap_err();
        assert_eq!(err.code(), "protocol", "{err:?}");
        // Dropping the connection lets the raw client's blocked write fail.
        drop(connection);
        drop(sending.await.unwrap());

        // And we never send one.
        let client_side = Listener::bind("127.0.0.1:0", None).await.unwrap();
        let listener = Arc::new(client_side);
        let server = echo_one(&listener);
        let mut client = connect(&options(
            format!("ws://{}", listener.local_addr()),
            Trust::Insecure,
            TOKEN,
        ))
        .await
        .unwrap();
        let before = client.wire_bytes_sent();
        let err = client
            .send_encoded(Bytes::from(vec![0u8; protocol::MAX_MESSAGE_BYTES + 1]))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Protocol { .. }), "{err:?}");
        assert_eq!(client.wire_bytes_sent(), before, "nothing was sent");
        client.close().await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_large_first_message_is_not_read_before_authentication() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let budget = listener.limits().pre_auth_bytes;
        let server = serve_one(&listener);
        let mut ws = raw_ws_client(&listener).await;
        // Well under the protocol's maximum, far over what a hello needs.
        let _ = ws
            .send(WsMessage::Binary(Bytes::from(vec![7u8; 1 << 20])))
            .await;
        let err = server.await.unwrap().unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("more than {budget} bytes before it authenticated")),
            "a stranger's first message is cut at the pre-auth budget, not read whole: {err}"
        );
    }

    #[tokio::test]
    async fn wrong_tokens_from_one_address_are_slowed_down() {
        // Under Wine a connection's TLS and hello took longer than the 350 ms of slack this
        // test leaves before a wait runs out, so there every time is four times as long.
        let k = if crate::win32::under_wine() { 4 } else { 1 };
        let listener = Listener::bind("127.0.0.1:0", None).await.unwrap();
        let listener = Arc::new(listener.with_limits(Limits {
            free_failures: 0,
            backoff_first: Duration::from_millis(400) * k,
            backoff_max: Duration::from_millis(800) * k,
            ..Limits::default()
        }));
        let url = format!("ws://{}", listener.local_addr());
        let attempt = |token: &'static str| {
            let (listener, url) = (Arc::clone(&listener), url.clone());
            async move {
                let server = serve_one(&listener);
                let client = connect(&options(url, Trust::Insecure, token)).await;
                let served = server.await.unwrap();
                (client.map(|_| ()), served.map(|_| ()))
            }
        };
        let (client, server) = attempt("a guess").await;
        assert!(
            matches!(server, Err(TransportError::WrongToken { .. })),
            "{server:?}"
        );
        assert!(client.is_err());
        // Right after a wrong token, even the right one is not compared.
        let (client, server) = attempt(TOKEN).await;
        assert!(
            matches!(server, Err(TransportError::Backoff { .. })),
            "an address that just guessed wrong waits: {server:?}"
        );
        match client {
            Err(TransportError::Refused { reason, .. }) => assert!(
                reason.contains("wrong tokens") && reason.contains("compared in"),
                "the source is told why and for how long: {reason}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // A second wrong token after the wait doubles it.
        tokio::time::sleep(Duration::from_millis(450) * k).await;
        let (_, server) = attempt("another guess").await;
        assert!(
            matches!(server, Err(TransportError::WrongToken { .. })),
            "{server:?}"
        );
        tokio::time::sleep(Duration::from_millis(450) * k).await;
        let (_, server) = attempt(TOKEN).await;
        assert!(
            matches!(server, Err(TransportError::Backoff { .. })),
            "the second wait is longer than the first: {server:?}"
        );
        tokio::time::sleep(Duration::from_millis(400) * k).await;
        let (client, server) = attempt(TOKEN).await;
        assert!(
            client.is_ok() && server.is_ok(),
            "once the wait ran out the right token is accepted: {client:?} {server:?}"
        );
        let (_, server) = attempt("a third guess").await;
        assert_eq!(
            listener
                .admission
                .backoff(Ipv4Addr::LOCALHOST.into(), Instant::now())
                .map(|_| ()),
            Some(()),
            "{server:?}"
        );
        let wait = listener
            .admission
            .failed(Ipv4Addr::LOCALHOST.into(), Instant::now());
        assert_eq!(
            wait,
            Duration::from_millis(800) * k,
            "the right token reset the count: this is the second wrong one since"
        );
    }

    #[tokio::test]
    async fn a_silent_peer_is_idle_and_one_waiting_in_idle_until_is_not() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let url = format!("ws://{}", listener.local_addr());
        // A client that reads nothing: the server's reader sees no frame and gives up.
        let server = serve_one(&listener);
        let client = connect(&options(url.clone(), Trust::Insecure, TOKEN))
            .await
            .unwrap();
        let (mut conn, _) = server.await.unwrap().unwrap();
        let err = conn
            .recv_within(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "idle", "{err:?}");
        assert!(err.is_transient());
        drop((conn, client));

        // A client that waits in idle_until answers the server's pings, so it stays alive.
        let server = serve_one(&listener);
        let mut client = connect(&options(url, Trust::Insecure, TOKEN))
            .await
            .unwrap();
        let (conn, _) = server.await.unwrap().unwrap();
        let (mut sender, mut receiver) = conn.split();
        let pinging = tokio::spawn(async move {
            for _ in 0..12 {
                sender.ping().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sender
        });
        let waiting = tokio::spawn(async move {
            client
                .idle_until(tokio::time::sleep(Duration::from_millis(1200)))
                .await
                .unwrap();
            client.send(&Message::Finish).await.unwrap();
            client
        });
        assert_eq!(
            receiver
                .recv_within(Duration::from_millis(300))
                .await
                .unwrap(),
            Some(Message::Finish),
            "pongs kept a quiet peer alive for four idle limits"
        );
        drop((pinging.await.unwrap(), waiting.await.unwrap()));
    }

    #[tokio::test]
    async fn plain_ws_works_on_loopback_and_split_halves_share_the_counter() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        assert!(!listener.is_tls());
        let server = echo_one(&listener);
        let client = connect(&options(
            format!("ws://{}/some/path", listener.local_addr()),
            Trust::Insecure,
            TOKEN,
        ))
        .await
        .unwrap();
        assert_eq!(client.fingerprint(), None);
        let counter = client.wire_counter();
        let after_hello = client.wire_bytes_sent();
        let (mut sender, mut receiver) = client.split();
        let messages: Vec<Message> = (0..3)
            .map(|id| Message::FileDone { id })
            .chain([Message::Finish])
            .collect();
        let encoded = Bytes::from(protocol::encode(&messages[0]));
        let sending = {
            let messages = messages.clone();
            tokio::spawn(async move {
                sender.send_encoded(encoded).await.unwrap();
                for message in &messages[1..] {
                    sender.send(message).await.unwrap();
                }
                sender
            })
        };
        for expected in &messages {
            assert_eq!(receiver.recv().await.unwrap().as_ref(), Some(expected));
        }
        let sender = sending.await.unwrap();
        let payload: usize = messages.iter().map(|m| protocol::encode(m).len()).sum();
        assert_eq!(sender.wire_bytes_sent(), after_hello + payload as u64);
        assert_eq!(
            counter.load(std::sync::atomic::Ordering::Relaxed),
            sender.wire_bytes_sent(),
            "the counter is shared by the halves"
        );
        sender.close().await;
        assert_eq!(
            receiver.recv().await.unwrap(),
            None,
            "a clean close ends the stream"
        );
        assert_eq!(server.await.unwrap().unwrap(), "source-pc");
    }

    #[tokio::test]
    async fn pings_are_answered_and_text_is_an_error() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let server = serve_one(&listener);
        let mut ws = raw_ws_client(&listener).await;
        ws.send(WsMessage::Binary(Bytes::from(hello(
            PROTOCOL_VERSION,
            TOKEN,
        ))))
        .await
        .unwrap();
        let (mut connection, name) = server.await.unwrap().unwrap();
        assert_eq!(name, "raw");
        ws.send(WsMessage::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        ws.send(WsMessage::Binary(Bytes::from(protocol::encode(
            &Message::Finish,
        ))))
        .await
        .unwrap();
        assert_eq!(connection.recv().await.unwrap(), Some(Message::Finish));
        connection
            .send(&Message::GetManifest { cached: None })
            .await
            .unwrap();
        let mut saw_pong = false;
        loop {
            match ws.next().await.unwrap().unwrap() {
                WsMessage::Pong(payload) => {
                    assert_eq!(&payload[..], b"hi");
                    saw_pong = true;
                }
                // The Welcome came before the ping; the GetManifest after it.
                WsMessage::Binary(bytes)
                    if protocol::decode(&bytes).unwrap()
                        == Message::GetManifest { cached: None } =>
                {
                    break;
                }
                _ => {}
            }
        }
        assert!(saw_pong, "a ping must be answered before later messages");
        ws.send(WsMessage::Text("hello".into())).await.unwrap();
        let err = connection.recv().await.unwrap_err();
        assert_eq!(err.code(), "protocol", "{err:?}");
    }

    #[tokio::test]
    async fn a_cut_connection_is_not_a_clean_close() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let server = serve_one(&listener);
        let mut ws = raw_ws_client(&listener).await;
        ws.send(WsMessage::Binary(Bytes::from(hello(
            PROTOCOL_VERSION,
            TOKEN,
        ))))
        .await
        .unwrap();
        let (mut connection, _) = server.await.unwrap().unwrap();
        drop(ws);
        let err = connection.recv().await.unwrap_err();
        assert!(matches!(err, TransportError::Closed { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn plain_ws_is_refused_off_loopback_and_trust_must_fit_the_scheme() {
        let err = Listener::bind("0.0.0.0:0", None).await.unwrap_err();
        assert!(
            matches!(err, TransportError::InsecureNonLoopback { .. }),
            "{err:?}"
        );
        Listener::bind("localhost:0", None)
            .await
            .expect("localhost is loopback");

        let identity = Identity::generate().unwrap();
        let pinned = Trust::Pinned(identity.fingerprint());
        let err = connect(&options("ws://127.0.0.1:9".into(), pinned, TOKEN))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            "bad_url",
            "ws:// with a pin is a mistake: {err:?}"
        );
        let err = connect(&options("wss://127.0.0.1:9".into(), Trust::Insecure, TOKEN))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            "bad_url",
            "--insecure with wss:// is a mistake: {err:?}"
        );
        // A token in clear goes to this machine only, whatever the caller allowed.
        for url in ["ws://192.0.2.1:7878", "ws://[2001:db8::1]:7878"] {
            let err = connect(&options(url.into(), Trust::Insecure, TOKEN))
                .await
                .unwrap_err();
            assert!(
                matches!(err, TransportError::InsecureRemote { .. }),
                "plain ws:// off loopback must be refused before connecting: {url}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_on_both_sides() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let accepting = {
            let listener = Arc::clone(&listener);
            tokio::spawn(async move {
                let incoming = listener.accept().await.unwrap();
                incoming
                    .handshake_within(TOKEN, "t", Duration::from_millis(100))
                    .await
            })
        };
        let silent = TcpStream::connect(listener.local_addr()).await.unwrap();
        let err = accepting.await.unwrap().unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
        drop(silent);

        // A server that accepts TCP and never answers.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", tcp.local_addr().unwrap());
        let err = connect_within(
            &options(url, Trust::Insecure, TOKEN),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreachable_target_says_so() {
        // Bind then drop to get a port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = connect(&options(
            format!("ws://127.0.0.1:{port}"),
            Trust::Insecure,
            TOKEN,
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code(), "unreachable", "{err:?}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[test]
    fn urls_are_parsed_into_host_port_keys() {
        let t = Address::parse("wss://Backup.Example:7878/ignored?x#y").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.key.as_str()),
            (true, "backup.example", 7878, "backup.example:7878")
        );
        let t = Address::parse("ws://[::1]:80").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.key.as_str()),
            (false, "::1", 80, "[::1]:80")
        );
        for bad in [
            "backup:7878",
            "https://backup:7878",
            "wss://backup",
            "wss://backup:0",
            "wss://backup:99999",
            "wss://::1:7878",
            "wss://[::1]",
            "wss://user@backup:7878",
            "wss://:7878",
        ] {
            let err = Address::parse(bad).unwrap_err();
            assert_eq!(err.code(), "bad_url", "{bad} must be refused");
            assert!(
                err.to_string().contains(bad),
                "the message names the address"
            );
        }
    }

    #[test]
    fn tokens_are_compared_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "abcd"));
        assert!(!tokens_match("", "abc"));
    }

    #[test]
    fn refusal_reasons_fit_the_protocol() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        assert!(truncate(&long, MAX_TEXT_BYTES).len() <= MAX_TEXT_BYTES);
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a [2Jb ");
    }
}
