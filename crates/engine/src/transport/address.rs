//! An agent's address, `wss://HOST:PORT`: the one parser every caller uses.

use super::*;

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
            _ => {
                return Err(bad(
                    "the scheme must be wss:// (or ws:// for tests on one machine)",
                ));
            }
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
