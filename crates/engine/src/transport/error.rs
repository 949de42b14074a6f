//! Everything that can go wrong in the transport, each with what to do about it.

use super::*;

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
         (plain ws:// is for tests on one machine, on both sides)"
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
        "{peer} sent nothing for {:.1} s (no message, no ping, no answer to one): the \
         connection was taken for lost (cut without a word, or the peer froze) and ended; a new \
         one is made once the peer is back",
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
         address (127.0.0.1, ::1, localhost); listen on loopback, or with TLS"
    )]
    InsecureNonLoopback { addr: String },
    #[error(
        "refusing to send a token to {peer} over plain ws://: it is not a loopback address \
         (127.0.0.1, ::1, localhost), so anyone on the way could read it; use wss:// with the \
         agent's pairing code or its fingerprint"
    )]
    InsecureRemote { peer: String },
    #[error(
        "{peer} is not pinned: nothing says which certificate it must have, so its token would \
         go to whoever answers; use its pairing code (`rainmaker pair` on it), or pin the \
         fingerprint it printed at start (or trust the first answer, on a network you trust)"
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
            "remove its line from {} (or pin the new fingerprint)",
            file.display()
        ),
        None => "pin that fingerprint".to_owned(),
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
            TransportError::NotPinned { .. } => Refusal::NotPinned,
            TransportError::InsecureRemote { .. } | TransportError::InsecureNonLoopback { .. } => {
                Refusal::Insecure
            }
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
