//! Errors as the dashboard receives them: `{code, message}`, so the front end decides what to
//! show by the code and never matches on text, and the message is in a trader's words.

use rainmaker_engine::config::ConfigError;
use rainmaker_engine::engine::{EngineError, RemoteError};
use rainmaker_engine::protocol::Refusal;
use rainmaker_engine::transport::TransportError;
use serde::Serialize;

/// An error for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UiError {
    /// Stable and machine-readable: `bad_input`, `unreachable`, `config`, `io`, a refusal's
    /// code ([`refusal_code`]: `refused`, `wrong_token`, `fingerprint`, `promoted`, `busy`,
    /// `recent_source`, ...), or a transport code.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl UiError {
    pub fn new(code: &str, message: impl Into<String>) -> UiError {
        UiError {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// Input the user typed that cannot be used.
    pub fn bad_input(message: impl Into<String>) -> UiError {
        UiError::new("bad_input", message)
    }

    /// A server's refusal, coded by what the user can do about it (never by its text).
    pub fn refused(refusal: Refusal, reason: impl Into<String>) -> UiError {
        UiError::new(refusal_code(refusal), reason)
    }
}

/// The dashboard's code of a refusal: `refused` when there is nothing to offer but the reason.
pub fn refusal_code(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Other => "refused",
        Refusal::WrongToken => "wrong_token",
        Refusal::Version => "version",
        Refusal::FingerprintChanged => "fingerprint",
        Refusal::Promoted => "promoted",
        Refusal::Busy => "busy",
        Refusal::RecentSource => "recent_source",
        Refusal::MassDelete => "mass_delete",
        Refusal::NotPinned => "not_pinned",
        Refusal::Insecure => "insecure",
    }
}

impl std::fmt::Display for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for UiError {}

impl From<TransportError> for UiError {
    fn from(e: TransportError) -> UiError {
        let code = match e.refusal() {
            Refusal::Other => match &e {
                TransportError::Refused { .. } => "refused",
                other => other.code(),
            },
            refusal => refusal_code(refusal),
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
            other => UiError::new("protocol", other.to_string()),
        }
    }
}

impl From<ConfigError> for UiError {
    fn from(e: ConfigError) -> UiError {
        UiError::new("config", e.to_string())
    }
}

impl From<EngineError> for UiError {
    fn from(e: EngineError) -> UiError {
        match e {
            EngineError::Transport(t) => t.into(),
            EngineError::Source { path, reason } => UiError::new(
                "source",
                format!(
                    "The source folder {} cannot be read: {reason}",
                    path.display()
                ),
            ),
            other => UiError::new("engine", other.to_string()),
        }
    }
}

impl From<std::io::Error> for UiError {
    fn from(e: std::io::Error) -> UiError {
        UiError::new("io", e.to_string())
    }
}
