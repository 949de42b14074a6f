//! The source's side: how it trusts a target's certificate, and [`connect`].

use super::*;
use tokio::io::AsyncWriteExt;

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

/// [`connect`], sending `first` right behind the hello instead of after the welcome: one
/// round trip fewer before the session's first answer (30 ms on a home uplink). A target that
/// refuses the hello reads `first` and drops it while it closes (it reads until the source's
/// close, [`Connection::close`]), so the refusal is not lost to a reset of unread data.
pub async fn connect_asking(
    opts: &ConnectOptions,
    first: &Message,
) -> Result<Connection, TransportError> {
    let target = Address::parse(&opts.url)?;
    bounded(&target, HANDSHAKE_TIMEOUT, async {
        match connect_to(opts, &target, Some(first), true).await {
            // An agent from before pipelining refuses bytes behind its upgrade request and
            // drops the connection: once more, the hello after the upgrade.
            Err(Upgrade::Refused(e)) => {
                tracing::debug!(peer = %target.key, "the upgrade with the hello behind it was dropped ({e}); connecting again without");
                connect_to(opts, &target, Some(first), false)
                    .await
                    .map_err(Upgrade::into_error)
            }
            done => done.map_err(Upgrade::into_error),
        }
    })
    .await
}

/// How a connection attempt failed.
enum Upgrade {
    /// The connection ended during a WebSocket upgrade that had the hello behind it.
    Refused(TransportError),
    /// Any other way.
    Failed(TransportError),
}

impl Upgrade {
    fn into_error(self) -> TransportError {
        match self {
            Upgrade::Refused(e) | Upgrade::Failed(e) => e,
        }
    }
}

impl From<TransportError> for Upgrade {
    fn from(e: TransportError) -> Upgrade {
        Upgrade::Failed(e)
    }
}

/// [`connect`] with another bound than [`HANDSHAKE_TIMEOUT`].
pub async fn connect_within(
    opts: &ConnectOptions,
    limit: Duration,
) -> Result<Connection, TransportError> {
    let target = Address::parse(&opts.url)?;
    bounded(&target, limit, async {
        connect_to(opts, &target, None, false)
            .await
            .map_err(Upgrade::into_error)
    })
    .await
}

/// `connecting`, given up after `limit`.
async fn bounded(
    target: &Address,
    limit: Duration,
    connecting: impl Future<Output = Result<Connection, TransportError>>,
) -> Result<Connection, TransportError> {
    match tokio::time::timeout(limit, connecting).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout {
            peer: target.key.clone(),
            stage: "connection and handshake",
        }),
    }
}

/// [`connect_asking`], returning as soon as the upgrade request, the hello and `first` are
/// written, once TCP and TLS are up (the certificate checked): what the caller sends next
/// follows them in the same flight, a round trip (and the target's answer to `first`) sooner.
/// The target's answers come in front of the first message read: the upgrade's and the
/// welcome are checked and taken off there, and a refusal (a wrong token, another version) is
/// that read's error ([`TransportError::Refused`]). TCP, TLS and those answers together are
/// bounded by [`HANDSHAKE_TIMEOUT`]. The connection's `remote_name` stays empty.
///
/// What the caller sends before the welcome goes to a target whose certificate matched a
/// fingerprint known before the connection. With trust on first use, which may be talking to
/// anyone, this waits for the welcome (the target accepted our token and was recorded), as
/// [`connect_asking`] does.
pub async fn connect_eager(
    opts: &ConnectOptions,
    first: &Message,
) -> Result<Connection, TransportError> {
    if matches!(opts.trust, Trust::FirstUse(_)) {
        return connect_asking(opts, first).await;
    }
    let target = Address::parse(&opts.url)?;
    let opening = async {
        let opened = open(opts, &target).await.map_err(Upgrade::into_error)?;
        let (request, accept) = pipeline::upgrade_request(&upgrade_url(&target))
            .map_err(|e| ws_error(&target.key, e))?;
        let hello = protocol::encode(&hello(opts));
        let asked = protocol::encode(first);
        let frames = pipeline::client_frames(&[hello.clone(), asked.clone()]).ok_or_else(|| {
            TransportError::Protocol {
                peer: target.key.clone(),
                source: ProtocolError::Malformed("the hello could not be framed".into()),
            }
        })?;
        let Opened {
            mut stream,
            fingerprint,
            probe,
        } = opened;
        let io = |e| ws_error(&target.key, tungstenite::Error::Io(e));
        stream
            .write_all(&[request, frames].concat())
            .await
            .map_err(io)?;
        stream.flush().await.map_err(io)?;
        let stream: Box<dyn ByteStream> = Box::new(pipeline::Answered::new(stream, accept));
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            stream,
            tungstenite::protocol::Role::Client,
            Some(ws_config()),
        )
        .await;
        let mut connection = Connection::new(ws, target.key.clone())
            .with_probe(probe)
            .unwelcomed(Unwelcomed {
                within: HANDSHAKE_TIMEOUT,
            });
        connection.count_sent(hello.len() + asked.len());
        connection.fingerprint = fingerprint;
        Ok(connection)
    };
    bounded(&target, HANDSHAKE_TIMEOUT, opening).await
}

/// Records `seen` as `peer`'s fingerprint in the known-peers file at `path`, unless the file
/// names one already: trust on first use, once the peer proved it holds the key and accepted
/// our token.
fn record_first_use(path: &Path, peer: &str, seen: &Fingerprint) -> Result<(), TransportError> {
    let known = KnownPeers::load(path)?;
    if known.fingerprints(peer).is_empty() {
        known.append(path, peer, seen)?;
    }
    Ok(())
}

/// The URL of the upgrade request to `target`.
fn upgrade_url(target: &Address) -> String {
    format!(
        "{}://{}/",
        if target.tls { "wss" } else { "ws" },
        target.key
    )
}

/// The hello of `opts`.
fn hello(opts: &ConnectOptions) -> Message {
    Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        token: opts.token.clone(),
        source_name: opts.source_name.clone(),
    }
}

/// A connection up to its TLS handshake: the stream to upgrade, the certificate's fingerprint
/// (over TLS) and the socket's probe.
struct Opened {
    stream: Box<dyn ByteStream>,
    fingerprint: Option<Fingerprint>,
    probe: super::tcp_info::SocketProbe,
}

/// Connects, upgrades and says hello (with `first` behind it). With `pipelined`, the hello
/// and `first` go right behind the upgrade request, a round trip sooner.
async fn connect_to(
    opts: &ConnectOptions,
    target: &Address,
    first: Option<&Message>,
    pipelined: bool,
) -> Result<Connection, Upgrade> {
    let peer = target.key.clone();
    let Opened {
        stream,
        fingerprint,
        probe,
    } = open(opts, target).await?;
    let request = upgrade_url(target);
    let hello = hello(opts);
    let payloads: Vec<Vec<u8>> = std::iter::once(&hello)
        .chain(first)
        .map(protocol::encode)
        .collect();
    // The hello is written only once the certificate was checked (the TLS handshake above).
    let preface = pipelined
        .then(|| pipeline::client_frames(&payloads))
        .flatten();
    let prefaced = preface.is_some();
    let stream: Box<dyn ByteStream> = match preface {
        Some(frames) => Box::new(pipeline::Preface::new(stream, frames)),
        None => stream,
    };
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(|e| match (prefaced, ws_error(&peer, e)) {
                (true, e @ (TransportError::Closed { .. } | TransportError::WebSocket { .. })) => {
                    Upgrade::Refused(e)
                }
                (_, e) => Upgrade::Failed(e),
            })?;
    let mut connection = Connection::new(ws, peer.clone()).with_probe(probe);
    if prefaced {
        connection.count_sent(payloads.iter().map(Vec::len).sum());
    } else {
        for payload in payloads {
            connection.send_encoded(payload.into()).await?;
        }
    }
    match connection.recv().await? {
        Some(Message::Welcome { target_name }) => connection.remote_name = target_name,
        Some(Message::Refused { reason, refusal }) => {
            return Err(Upgrade::Failed(TransportError::Refused {
                peer,
                reason: printable(&reason),
                refusal,
            }));
        }
        Some(other) => {
            return Err(Upgrade::Failed(TransportError::Protocol {
                peer,
                source: ProtocolError::Malformed(format!(
                    "expected Welcome or Refused, got {}",
                    Message::name(&other)
                )),
            }));
        }
        None => return Err(Upgrade::Failed(TransportError::Closed { peer })),
    }

    // First use: the target proved it holds the key and accepted our token; remember it.
    if let (Trust::FirstUse(path), Some(seen)) = (&opts.trust, &fingerprint) {
        record_first_use(path, &peer, seen)?;
    }
    connection.fingerprint = fingerprint;
    Ok(connection)
}

/// Checks what to trust, connects and, over `wss://`, makes the TLS handshake with the
/// certificate checked: nothing is sent before that.
async fn open(opts: &ConnectOptions, target: &Address) -> Result<Opened, Upgrade> {
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
                return Err(Upgrade::Failed(TransportError::InsecureRemote { peer }));
            }
            (None, None)
        }
        (Trust::Insecure, true) => {
            return Err(Upgrade::Failed(bad_url(
                "plain ws:// trust goes with a ws:// address; a wss:// target is checked \
                 by its pinned fingerprint or the known-peers file",
            )));
        }
        (_, false) => {
            return Err(Upgrade::Failed(bad_url(
                "ws:// is neither encrypted nor authenticated; use wss:// (plain ws:// is for \
                 tests on one machine)",
            )));
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
                return Err(Upgrade::Failed(TransportError::NotPinned { peer }));
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
    let probe = super::tcp_info::SocketProbe::of(&tcp);

    let (stream, fingerprint): (Box<dyn ByteStream>, Option<Fingerprint>) = match accepted {
        None => (Box::new(tcp), None),
        Some(accepted) => {
            let (connector, verifier) = pinning_connector(accepted.clone(), &peer)?;
            match connector.connect(server_name(&target.host), tcp).await {
                Ok(tls) => (Box::new(tls), verifier.seen()),
                Err(e) => {
                    if let (true, Some(got)) = (verifier.rejected(), verifier.seen()) {
                        return Err(Upgrade::Failed(TransportError::FingerprintChanged {
                            peer,
                            expected: accepted[0].clone(),
                            got,
                            known_peers,
                        }));
                    }
                    return Err(Upgrade::Failed(tls_error(&peer, e)));
                }
            }
        }
    };

    Ok(Opened {
        stream,
        fingerprint,
        probe,
    })
}

/// A TLS client that checks the server's certificate against `accepted` (none: it accepts
/// any, and only records what it saw) with the verifier it returns.
fn pinning_connector(
    accepted: Vec<Fingerprint>,
    peer: &str,
) -> Result<(TlsConnector, Arc<PinVerifier>), TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinVerifier::new(accepted, &provider);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(peer, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((TlsConnector::from(Arc::new(config)), verifier))
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
        let (connector, verifier) = pinning_connector(Vec::new(), &peer)?;
        connector
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
