//! Pairing codes: one string that tells a source everything it needs to trust an agent before
//! it sends it a secret, so nobody has to trust whoever answers a first connection.
//!
//! ```text
//! rainmaker://backup1:7878#SHA256:<64 hex digits>/<pairing token>
//! rainmaker-subscribe://backup1:7878#SHA256:<64 hex digits>/<subscribe token>
//! rainmaker-admin://backup1:7878#SHA256:<64 hex digits>/<admin token>
//! └─ scheme: role ─┘└ host:port ┘ └── certificate fingerprint ──┘ └ token, %-encoded ┘
//! ```
//!
//! The scheme says which token, so which role, the code carries: `rainmaker://` holds the
//! pairing token (it lets its holder mirror into the agent's folder), `rainmaker-subscribe://`
//! the subscribe token (it lets its holder receive the agent's folder over a connection it
//! opens), `rainmaker-admin://` the admin token (it lets its holder do both and command the
//! agent). The host is a host name, an IPv4 address or an IPv6
//! address in brackets, written in lower case; the port is required. The fingerprint is the one
//! the agent's certificate must have, so a source pins it before the token leaves; the token is
//! written with every byte outside `A-Z a-z 0-9 - . _ ~` as `%XX`, so no token can be confused
//! with the separators. Surrounding whitespace (from a copy and paste) is ignored; nothing else
//! is. [`Pairing::parse`] is the one parser; [`Pairing`]'s `Display` writes what it reads back.
//!
//! A code holds a secret: errors about a code never repeat it.

use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

use crate::transport::{Fingerprint, Role, parse_fingerprint};

const SOURCE_SCHEME: &str = "rainmaker://";
const SUBSCRIBE_SCHEME: &str = "rainmaker-subscribe://";
const ADMIN_SCHEME: &str = "rainmaker-admin://";

/// What a pairing code holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    /// Which token this is: [`Role::Source`] (the pairing token), [`Role::Subscriber`] or
    /// [`Role::Admin`].
    pub role: Role,
    /// Host name or IP address, lower case, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `SHA256:` and 64 lowercase hex digits.
    pub fingerprint: Fingerprint,
    /// The token, as in the agent's token file (without surrounding whitespace).
    pub token: String,
}

/// Why a text is not a pairing code. The text itself is never part of the message: it may hold
/// a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "that is not a whole RainMaker pairing code: {reason}. Copy the whole line `rainmaker pair` \
     prints on the agent (rainmaker://HOST:PORT#SHA256:.../TOKEN)"
)]
pub struct PairingError {
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> PairingError {
    PairingError { reason }
}

impl Pairing {
    /// Whether `text` is meant as a pairing code (it starts with one of the two schemes), as
    /// opposed to a `wss://` address: whoever takes either asks this first, then parses.
    pub fn is_code(text: &str) -> bool {
        scheme_role(text.trim()).is_some()
    }

    /// Reads a pairing code (see the module documentation for the format).
    pub fn parse(text: &str) -> Result<Pairing, PairingError> {
        let text = text.trim();
        let (role, rest) = scheme_role(text).ok_or(bad(
            "it must start with rainmaker:// (rainmaker-subscribe:// for the subscribe code, rainmaker-admin:// for the admin code)",
        ))?;
        let (authority, fragment) = rest
            .split_once('#')
            .ok_or(bad("the # and the certificate fingerprint are missing"))?;
        let (host, port) = parse_authority(authority)?;
        let (fingerprint, token) = fragment
            .split_once('/')
            .ok_or(bad("the / and the token after the fingerprint are missing"))?;
        if !fingerprint
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("SHA256:"))
        {
            return Err(bad("the fingerprint must start with SHA256:"));
        }
        let fingerprint = parse_fingerprint(fingerprint)
            .filter(|_| !fingerprint[7..].contains(':'))
            .ok_or(bad("the fingerprint must be SHA256: and 64 hex digits"))?;
        let token = decode_token(token)?;
        Ok(Pairing {
            role,
            host,
            port,
            fingerprint,
            token,
        })
    }

    /// The agent's address, `wss://host:port`.
    pub fn url(&self) -> String {
        format!("wss://{}", self.authority())
    }

    /// `host:port`, IPv6 in brackets: the key of the known-peers file and of `push_to`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.role {
            Role::Source => SOURCE_SCHEME,
            Role::Subscriber => SUBSCRIBE_SCHEME,
            Role::Admin => ADMIN_SCHEME,
        };
        write!(
            f,
            "{scheme}{}#{}/{}",
            self.authority(),
            self.fingerprint,
            encode_token(&self.token)
        )
    }
}

/// The host a pairing code names for an agent that listens on `listen` (`HOST:PORT` as
/// configured): that host, unless it is the unspecified address (`0.0.0.0`, `[::]`: every
/// interface), which no source can connect to; then `host_name`, this machine's name (a source
/// must be able to resolve it; `rainmaker pair --host` names another, e.g. a public address).
pub fn advertised_host(listen: &str, host_name: &str) -> String {
    let host = match listen.trim().rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => listen.trim(),
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => host_name.trim().to_ascii_lowercase(),
        Ok(IpAddr::V6(v6)) => v6.to_canonical().to_string(),
        Ok(ip) => ip.to_string(),
        Err(_) if host.is_empty() => host_name.trim().to_ascii_lowercase(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// This machine's host name, as the operating system knows it.
pub fn host_name() -> Option<String> {
    sysinfo::System::host_name().filter(|name| !name.trim().is_empty())
}

fn scheme_role(text: &str) -> Option<(Role, &str)> {
    [
        (ADMIN_SCHEME, Role::Admin),
        (SUBSCRIBE_SCHEME, Role::Subscriber),
        (SOURCE_SCHEME, Role::Source),
    ]
    .into_iter()
    .find_map(|(scheme, role)| {
        text.get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| (role, &text[scheme.len()..]))
    })
}

fn parse_authority(authority: &str) -> Result<(String, u16), PairingError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, tail) = bracketed
            .split_once(']')
            .ok_or(bad("an IPv6 address must end with ]"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address between [ and ]"));
        }
        let port = tail
            .strip_prefix(':')
            .ok_or(bad("the port is missing after the host"))?;
        (host, port)
    } else {
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or(bad("the port is missing after the host"))?;
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(bad(
                "the host must be a host name, an IPv4 address or an IPv6 address in brackets",
            ));
        }
        (host, port)
    };
    let port = (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .filter(|p| *p != 0)
        .ok_or(bad("the port must be a number from 1 to 65535"))?;
    Ok((host.to_ascii_lowercase(), port))
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn encode_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_token(text: &str) -> Result<String, PairingError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(bad("a % in the token must be followed by two hex digits"))?;
                out.push(byte);
                i += 3;
            }
            b if unreserved(b) => {
                out.push(b);
                i += 1;
            }
            _ => {
                return Err(bad(
                    "the token holds a character a pairing code never has (was it cut or \
                     joined with other text?)",
                ));
            }
        }
    }
    let token = String::from_utf8(out).map_err(|_| bad("the token is not valid UTF-8"))?;
    if token.is_empty() {
        return Err(bad("the token is empty"));
    }
    if token.trim() != token {
        return Err(bad("the token starts or ends with white space"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn code(role: Role, host: &str, token: &str) -> Pairing {
        Pairing {
            role,
            host: host.into(),
            port: 7878,
            fingerprint: format!("SHA256:{HEX}"),
            token: token.into(),
        }
    }

    #[test]
    fn a_code_reads_back_and_names_the_address_the_pin_and_the_token() {
        let text = format!("rainmaker://backup1:7878#SHA256:{HEX}/s3cr3t-token");
        let pairing = Pairing::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(pairing, code(Role::Source, "backup1", "s3cr3t-token"));
        assert_eq!(pairing.url(), "wss://backup1:7878");
        assert_eq!(pairing.to_string(), text, "display writes what parse reads");

        let admin = Pairing::parse(&format!(
            "RAINMAKER-ADMIN://[::1]:7878#sha256:{}/a%2Fb%20c",
            HEX.to_uppercase()
        ))
        .unwrap();
        assert_eq!(admin, code(Role::Admin, "::1", "a/b c"));
        assert_eq!(admin.url(), "wss://[::1]:7878");
        assert_eq!(
            admin.to_string(),
            format!("rainmaker-admin://[::1]:7878#SHA256:{HEX}/a%2Fb%20c")
        );
        let subscribe = Pairing::parse(&format!(
            "rainmaker-subscribe://cloud-a:7878#SHA256:{HEX}/r"
        ))
        .unwrap();
        assert_eq!(subscribe, code(Role::Subscriber, "cloud-a", "r"));
        assert!(Pairing::is_code(" rainmaker://x"));
        assert!(!Pairing::is_code("wss://backup1:7878"));
    }

    #[test]
    fn a_cut_or_garbled_code_is_refused_without_repeating_it() {
        let fp = format!("SHA256:{HEX}");
        for text in [
            "wss://backup1:7878".to_owned(),
            format!("rainmaker://backup1:7878/{fp}/t"),
            format!("rainmaker://backup1#{fp}/t"),
            format!("rainmaker://backup1:0#{fp}/t"),
            format!("rainmaker://backup1:+78#{fp}/t"),
            format!("rainmaker://:7878#{fp}/t"),
            format!("rainmaker://user@backup1:7878#{fp}/t"),
            format!("rainmaker://::1:7878#{fp}/t"),
            format!("rainmaker://[nope]:7878#{fp}/t"),
            format!("rainmaker://backup1:7878#{fp}"),
            format!("rainmaker://backup1:7878#{fp}/"),
            format!("rainmaker://backup1:7878#{}/t", &fp[..60]),
            format!("rainmaker://backup1:7878#{HEX}/t"),
            format!("rainmaker://backup1:7878#SHA256:01:23{}/t", &HEX[4..]),
            format!("rainmaker://backup1:7878#{fp}/tok en"),
            format!("rainmaker://backup1:7878#{fp}/tok/en"),
            format!("rainmaker://backup1:7878#{fp}/tok%2"),
            format!("rainmaker://backup1:7878#{fp}/%20tok"),
            format!("rainmaker://backup1:7878#{fp}/%FF"),
        ] {
            let err = Pairing::parse(&text).expect_err(&text);
            let message = err.to_string();
            assert!(
                !message.contains("backup1") && !message.contains(HEX),
                "an error must not repeat the code, which holds a secret: {message}"
            );
            assert!(
                message.contains("rainmaker pair"),
                "the error says where a whole code comes from: {message}"
            );
        }
    }

    #[test]
    fn the_unspecified_address_is_advertised_by_host_name() {
        assert_eq!(advertised_host("0.0.0.0:7878", "Backup1\n"), "backup1");
        assert_eq!(advertised_host("[::]:7878", "backup1"), "backup1");
        assert_eq!(advertised_host(":7878", "backup1"), "backup1");
        assert_eq!(advertised_host("10.0.0.5:7878", "backup1"), "10.0.0.5");
        assert_eq!(advertised_host("[::ffff:10.0.0.5]:7878", "b"), "10.0.0.5");
        assert_eq!(advertised_host("[::1]:7878", "b"), "::1");
        assert_eq!(
            advertised_host("Backup.Example:7878", "b"),
            "backup.example"
        );
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9][a-z0-9._-]{0,30}",
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        ]
    }

    fn pairing() -> impl Strategy<Value = Pairing> {
        (
            prop_oneof![
                Just(Role::Source),
                Just(Role::Subscriber),
                Just(Role::Admin)
            ],
            host(),
            1..=u16::MAX,
            "[0-9a-f]{64}",
            "\\PC{1,40}",
        )
            .prop_filter_map(
                "tokens have no surrounding space",
                |(role, host, port, hex, token)| {
                    (token.trim() == token).then(|| Pairing {
                        role,
                        host,
                        port,
                        fingerprint: format!("SHA256:{hex}"),
                        token,
                    })
                },
            )
    }

    proptest! {
        #[test]
        fn every_code_reads_back_to_itself(pairing in pairing()) {
            let text = pairing.to_string();
            prop_assert!(!text.chars().any(char::is_whitespace), "a code is one word: {}", text);
            prop_assert_eq!(Pairing::parse(&text), Ok(pairing.clone()), "{}", text);
        }

        #[test]
        fn an_edited_code_is_refused_or_writes_back_to_the_same_code(
            pairing in pairing(),
            at in any::<prop::sample::Index>(),
            cut in 0..3usize,
            insert in "\\PC{0,3}",
        ) {
            // Whatever a paste or a typo makes of a code, the parser never panics, and what it
            // accepts it writes back unchanged: one meaning per code.
            let text = pairing.to_string();
            let i = at.index(text.len() + 1);
            let end = (i + cut).min(text.len());
            let edited = format!("{}{}{}", &text[..i], insert, &text[end..]);
            if let Ok(read) = Pairing::parse(&edited) {
                prop_assert_eq!(Pairing::parse(&read.to_string()), Ok(read));
            }
        }
    }
}
