//! Errors as the dashboard receives them: `{code, message}`, so the front end decides what to
//! show by the code and never matches on text, and the message is in a trader's words.

use rainmaker_engine::config::ConfigError;
use rainmaker_engine::engine::{EngineError, RemoteError};
use rainmaker_engine::protocol::Refusal;
use rainmaker_engine::transport::TransportError;
use serde::Serialize;
use ts_rs::TS;

/// An error for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct UiError {
    /// What kind of error, stable and machine-readable: what the dashboard decides on.
    pub code: UiCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// The kinds of error the dashboard tells apart (in JSON: `bad_input`, `wrong_token`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum UiCode {
    /// Something typed or picked that cannot be used.
    BadInput,
    /// The configuration file or a token file.
    Config,
    /// The folder to mirror cannot be read.
    Source,
    Io,
    /// Start at login could not be changed.
    Autostart,
    /// The server cannot be reached.
    Unreachable,
    /// TLS failed.
    Tls,
    /// The server did not answer in time.
    Timeout,
    /// The connection failed some other way (it was cut, it broke the protocol).
    Network,
    /// The engine could not start a mirror.
    Engine,
    /// A server answered something unexpected.
    Protocol,
    /// A server refused, for a reason there is nothing to offer for but reading it.
    Refused,
    WrongToken,
    Version,
    /// The server's certificate is not the one confirmed.
    Fingerprint,
    NotPinned,
    Insecure,
    /// The server was promoted to be the source of its folder.
    Promoted,
    /// Something else holds the folder right now.
    Busy,
    RecentSource,
    MassDelete,
}

impl UiCode {
    /// The code of a refusal: [`UiCode::Refused`] when there is nothing to offer but the
    /// reason.
    pub fn of_refusal(refusal: Refusal) -> UiCode {
        match refusal {
            Refusal::Other => UiCode::Refused,
            // A token of another role is, to the user, the wrong token for this.
            Refusal::WrongToken | Refusal::NotAllowed => UiCode::WrongToken,
            Refusal::Version => UiCode::Version,
            Refusal::FingerprintChanged => UiCode::Fingerprint,
            Refusal::Promoted => UiCode::Promoted,
            Refusal::Busy => UiCode::Busy,
            Refusal::RecentSource => UiCode::RecentSource,
            Refusal::MassDelete => UiCode::MassDelete,
            Refusal::NotPinned => UiCode::NotPinned,
            Refusal::Insecure => UiCode::Insecure,
        }
    }

    /// The code of a transport error that is not a refusal.
    fn of_transport(e: &TransportError) -> UiCode {
        match e {
            TransportError::Connect { .. } => UiCode::Unreachable,
            TransportError::Tls { .. } => UiCode::Tls,
            TransportError::Timeout { .. } => UiCode::Timeout,
            TransportError::Refused { .. } => UiCode::Refused,
            TransportError::BadUrl { .. } | TransportError::BadFingerprint { .. } => {
                UiCode::BadInput
            }
            TransportError::KnownPeers { .. } | TransportError::Identity { .. } => UiCode::Config,
            _ => UiCode::Network,
        }
    }
}

impl UiError {
    pub fn new(code: UiCode, message: impl Into<String>) -> UiError {
        UiError {
            code,
            message: message.into(),
        }
    }

    /// Input the user typed that cannot be used.
    pub fn bad_input(message: impl Into<String>) -> UiError {
        UiError::new(UiCode::BadInput, message)
    }

    /// A server's refusal, coded by what the user can do about it (never by its text).
    pub fn refused(refusal: Refusal, reason: impl Into<String>) -> UiError {
        UiError::new(UiCode::of_refusal(refusal), reason)
    }
}

impl std::fmt::Display for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

impl std::error::Error for UiError {}

impl From<TransportError> for UiError {
    fn from(e: TransportError) -> UiError {
        let code = match e.refusal() {
            Refusal::Other => UiCode::of_transport(&e),
            refusal => UiCode::of_refusal(refusal),
        };
        let message = match &e {
            TransportError::Connect { peer, .. } => format!(
                "Cannot reach {peer}. Check the address, that RainMaker runs on that server, and that its firewall lets the port through."
            ),
            _ if e.refusal() == Refusal::WrongToken => {
                "The server refused the pairing token. Copy the token again from the server's token file.".to_owned()
            }
            TransportError::FingerprintChanged { peer, expected, got, .. } => format!(
                "The certificate of {peer} is not the one you confirmed (expected {expected}, got {got}). If the server was reinstalled, remove it and add it again; otherwise someone may be intercepting the connection."
            ),
            other => other.to_string(),
        };
        UiError::new(code, message)
    }
}

impl From<RemoteError> for UiError {
    fn from(e: RemoteError) -> UiError {
        match e {
            RemoteError::Transport(e) => e.into(),
            RemoteError::Refused {
                reason, refusal, ..
            } => UiError::refused(refusal, reason),
            other => UiError::new(UiCode::Protocol, other.to_string()),
        }
    }
}

impl From<ConfigError> for UiError {
    fn from(e: ConfigError) -> UiError {
        UiError::new(UiCode::Config, e.to_string())
    }
}

impl From<EngineError> for UiError {
    fn from(e: EngineError) -> UiError {
        match e {
            EngineError::Transport(t) => t.into(),
            EngineError::Source { path, reason } => UiError::new(
                UiCode::Source,
                format!(
                    "The source folder {} cannot be read: {reason}",
                    path.display()
                ),
            ),
            other => UiError::new(UiCode::Engine, other.to_string()),
        }
    }
}

impl From<std::io::Error> for UiError {
    fn from(e: std::io::Error) -> UiError {
        UiError::new(UiCode::Io, e.to_string())
    }
}
