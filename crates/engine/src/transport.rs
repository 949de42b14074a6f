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
//! Parts: `client` ([`connect`], [`Trust`]), `listener` ([`Listener`], [`Incoming`] and the
//! handshake), `address` ([`Address`], the one parser of `wss://HOST:PORT`), `error`
//! ([`TransportError`]), [`identity`](Identity) (certificate, key, fingerprint),
//! `known_peers` (the trust-on-first-use file), `pin` (the certificate verifier),
//! `connection` (framing), `admission` (the [`Limits`] a listener keeps before and after
//! authentication) and `budget` (the byte budget of an unauthenticated peer).

mod address;
mod admission;
mod budget;
mod client;
mod connection;
mod error;
mod identity;
mod known_peers;
mod listener;
mod pin;
mod pipeline;
mod tcp_info;

pub use address::{Address, authority_of};
pub use client::{
    ConnectOptions, Trust, connect, connect_asking, connect_eager, connect_within, peek_fingerprint,
};
pub use error::TransportError;
pub use listener::{Incoming, Listener, Role, Tokens};
pub use tcp_info::SendTimes;

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
use connection::{ByteStream, Unwelcomed, ws_config, ws_error};
use pin::PinVerifier;

/// How long connecting, TLS, the WebSocket upgrade and the hello may take together, on a
/// client (a listener has its own [`Limits::handshake`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean close waits for the peer's answer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// A reason from the peer, made safe to print on a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
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
    use super::listener::tokens_match;
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
            err.to_string().contains("pairing code") && err.to_string().contains("pin the"),
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
        assert!(err.to_string().contains("pin that fingerprint"), "{err}");
        assert_eq!(err.refusal(), Refusal::FingerprintChanged);
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
    async fn a_request_sent_with_the_hello_waits_for_it_and_a_refusal_still_arrives() {
        let identity = Identity::generate().unwrap();
        let pin = Trust::Pinned(identity.fingerprint());
        let ask = Message::GetManifest { cached: None };
        // Accepted: the request is the first message the target reads after the hello.
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );
        let server = echo_one(&listener);
        let mut client = connect_asking(&options(wss(&listener), pin.clone(), TOKEN), &ask)
            .await
            .unwrap();
        assert_eq!(client.remote_name(), "backup-1");
        assert_eq!(client.recv().await.unwrap(), Some(ask.clone()));
        client.close().await;
        assert_eq!(server.await.unwrap().unwrap(), "source-pc");
        // Refused, with the request unread behind the hello: the target reads it while it
        // closes, so the source gets the refusal rather than a reset (which would drop it).
        for _ in 0..10 {
            let listener = Arc::new(
                Listener::bind("127.0.0.1:0", Some(identity.clone()))
                    .await
                    .unwrap(),
            );
            let server = serve_one(&listener);
            let wrong = options(wss(&listener), pin.clone(), "not the token");
            match connect_asking(&wrong, &ask).await {
                Err(TransportError::Refused { refusal, .. }) => {
                    assert_eq!(refusal, Refusal::WrongToken)
                }
                other => panic!("expected the refusal, got {other:?}"),
            }
            let err = server.await.unwrap().unwrap_err();
            assert!(matches!(err, TransportError::WrongToken { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn the_hello_and_the_request_ride_behind_the_upgrade_request() {
        use tokio::io::AsyncReadExt;
        let ask = Message::GetManifest { cached: None };
        let opts = |port: u16| options(format!("ws://127.0.0.1:{port}/"), Trust::Insecure, TOKEN);
        // A server that reads and never answers the upgrade: whatever it got came without
        // waiting for it.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let client = tokio::spawn(async move { connect_asking(&opts(port), &ask).await });
        let (mut socket, _) = tcp.accept().await.unwrap();
        let ours: usize = [
            hello_of(TOKEN),
            protocol::encode(&Message::GetManifest { cached: None }),
        ]
        .iter()
        .map(|payload| payload.len() + 2 + 4) // a short frame's header and its mask
        .sum();
        let mut got = Vec::new();
        let whole = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut buf = [0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed early");
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                    && got.len() >= end + 4 + ours
                {
                    return got.len() - end - 4;
                }
            }
        })
        .await
        .expect("the hello comes before the upgrade is answered");
        assert_eq!(whole, ours, "the hello and the request, and nothing else");
        client.abort();

        // An agent from before pipelining drops the connection on bytes behind the upgrade
        // request; the source connects again and says hello after the upgrade.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let old_agent = tokio::spawn(async move {
            let mut dropped = 0;
            loop {
                let (socket, _) = tcp.accept().await.unwrap();
                let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                    dropped += 1;
                    continue;
                };
                let Some(Ok(WsMessage::Binary(first))) = ws.next().await else {
                    panic!("the hello comes first");
                };
                assert!(matches!(
                    protocol::decode(&first),
                    Ok(Message::Hello { .. })
                ));
                let welcome = Message::Welcome {
                    target_name: "old".into(),
                };
                ws.send(WsMessage::Binary(protocol::encode(&welcome).into()))
                    .await
                    .unwrap();
                let Some(Ok(WsMessage::Binary(asked))) = ws.next().await else {
                    panic!("then the request");
                };
                return (dropped, protocol::decode(&asked).unwrap());
            }
        });
        let ask = Message::GetManifest { cached: None };
        let connected = connect_asking(&opts(port), &ask).await.unwrap();
        assert_eq!(connected.remote_name(), "old");
        let (dropped, asked) = old_agent.await.unwrap();
        assert_eq!(
            dropped, 1,
            "the first attempt was dropped, the second went through"
        );
        assert_eq!(asked, ask);
    }

    #[tokio::test]
    async fn an_eager_connection_sends_before_the_welcome_and_takes_it_off_the_first_read() {
        let identity = Identity::generate().unwrap();
        let pin = Trust::Pinned(identity.fingerprint());
        let ask = Message::GetManifest { cached: None };
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );
        let server = echo_one(&listener);
        let mut client = connect_eager(&options(wss(&listener), pin.clone(), TOKEN), &ask)
            .await
            .unwrap();
        // Sent before anything was read: the upgrade's answer and the welcome are still to come.
        let more = Message::Delete { path: "a".into() };
        client.send(&more).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Some(ask.clone()));
        assert_eq!(client.recv().await.unwrap(), Some(more));
        client.close().await;
        assert_eq!(server.await.unwrap().unwrap(), "source-pc");

        // A wrong token: the first read is the refusal, after whatever was sent.
        let server = serve_one(&listener);
        let wrong = options(wss(&listener), pin.clone(), "not the token");
        let mut client = connect_eager(&wrong, &ask).await.unwrap();
        client.send(&Message::Finish).await.unwrap();
        match client.recv().await {
            Err(TransportError::Refused { refusal, .. }) => {
                assert_eq!(refusal, Refusal::WrongToken)
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, TransportError::WrongToken { .. }), "{err:?}");

        // The same, split: the receiving half takes the welcome off.
        let server = echo_one(&listener);
        let client = connect_eager(&options(wss(&listener), pin, TOKEN), &ask)
            .await
            .unwrap();
        let (_sender, mut receiver) = client.split();
        assert_eq!(receiver.recv().await.unwrap(), Some(ask));
        drop((_sender, receiver));
        let _ = server.await;
    }

    /// A peer that refuses while this side waits (an agent promoted, say) is heard with its
    /// reason, on a connection that waited for its welcome and on one that did not.
    #[tokio::test]
    async fn a_refusal_while_idle_says_why() {
        let identity = Identity::generate().unwrap();
        let pin = Trust::Pinned(identity.fingerprint());
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );
        for eager in [false, true] {
            let accepting = Arc::clone(&listener);
            let server = tokio::spawn(async move {
                let (mut conn, _) = accepting
                    .accept()
                    .await?
                    .handshake(TOKEN, "backup-1")
                    .await?;
                conn.send(&Message::Refused {
                    reason: "this agent was promoted".into(),
                    refusal: Refusal::Promoted,
                })
                .await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, TransportError>(())
            });
            let opts = options(wss(&listener), pin.clone(), TOKEN);
            let mut client = match eager {
                true => connect_eager(&opts, &Message::Finish).await.unwrap(),
                false => connect(&opts).await.unwrap(),
            };
            let waited = client
                .idle_until(tokio::time::sleep(Duration::from_secs(10)))
                .await;
            match waited {
                Err(TransportError::Refused {
                    refusal, reason, ..
                }) => {
                    assert_eq!(refusal, Refusal::Promoted);
                    assert!(reason.contains("promoted"), "{reason}");
                }
                other => panic!("expected the refusal (eager: {eager}), got {other:?}"),
            }
            server.abort();
        }
    }

    /// What an eager connection sends before its welcome (a guessed session's data) is no
    /// stranger's first message: the target's budget before authentication covers the hello,
    /// and what follows it is read once the token was accepted.
    #[tokio::test]
    async fn an_eager_connection_may_send_megabytes_before_the_welcome() {
        let identity = Identity::generate().unwrap();
        let pin = Trust::Pinned(identity.fingerprint());
        let listener = Arc::new(
            Listener::bind("127.0.0.1:0", Some(identity.clone()))
                .await
                .unwrap(),
        );
        let budget = listener.limits().pre_auth_bytes;
        let block = Message::Data {
            id: 0,
            offset: 0,
            payload: crate::protocol::Payload::Raw(vec![7; 128 * 1024]),
        };
        let blocks = 8 * budget / (128 * 1024) + 1;
        let ask = Message::GetManifest { cached: None };
        let (accepting, expected) = (Arc::clone(&listener), block.clone());
        let server = tokio::spawn(async move {
            let (mut conn, _) = accepting
                .accept()
                .await?
                .handshake(TOKEN, "backup-1")
                .await?;
            let first = conn.recv().await?;
            for _ in 0..blocks {
                assert_eq!(conn.recv().await?.as_ref(), Some(&expected));
            }
            conn.send(&Message::Finished { digest: [1; 32] }).await?;
            Ok::<_, TransportError>((conn, first))
        });
        let mut client = connect_eager(&options(wss(&listener), pin, TOKEN), &ask)
            .await
            .unwrap();
        for _ in 0..blocks {
            client.send(&block).await.unwrap();
        }
        let (_conn, first) = server.await.unwrap().unwrap();
        assert_eq!(first, Some(ask));
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::Finished { digest: [1; 32] }),
            "the welcome was taken off"
        );
    }

    #[tokio::test]
    async fn an_eager_connection_fails_its_first_read_on_an_answer_that_is_not_an_upgrade() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ask = Message::GetManifest { cached: None };
        let opts = |port: u16| options(format!("ws://127.0.0.1:{port}/"), Trust::Insecure, TOKEN);
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: c29tZXRoaW5nIGVsc2U=\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        ];
        for (answer, expected) in answers.into_iter().zip(["HTTP 404", "key", "not HTTP"]) {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = tcp.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                let (mut socket, _) = tcp.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(answer).await.unwrap();
                // Held open: the client's read must fail on the answer, not on an end.
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
            let mut client = connect_eager(&opts(port), &ask).await.unwrap();
            let err = tokio::time::timeout(Duration::from_secs(3), client.recv())
                .await
                .expect("the answer alone fails the read")
                .unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{expected:?} named in: {err}"
            );
            server.abort();
        }
    }

    fn hello_of(token: &str) -> Vec<u8> {
        protocol::encode(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            token: token.to_owned(),
            source_name: "source-pc".to_owned(),
        })
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
    async fn a_probed_request_needs_a_sign_of_life_in_time_not_a_quick_answer() {
        let listener = Arc::new(Listener::bind("127.0.0.1:0", None).await.unwrap());
        let url = format!("ws://{}", listener.local_addr());
        let within = Duration::from_secs(1);
        // A peer that reads (so its pong goes back at once) and answers after twice the
        // bound: the answer is waited for.
        let server = serve_one(&listener);
        let mut client = connect(&options(url.clone(), Trust::Insecure, TOKEN))
            .await
            .unwrap();
        let (mut conn, _) = server.await.unwrap().unwrap();
        let answering = tokio::spawn(async move {
            let asked = conn.recv().await.unwrap();
            tokio::time::sleep(within * 2).await;
            conn.send(&Message::Finish).await.unwrap();
            (conn, asked)
        });
        client
            .send_probing(&Message::GetManifest { cached: None }, within)
            .await
            .unwrap();
        assert_eq!(client.recv().await.unwrap(), Some(Message::Finish));
        let (conn, asked) = answering.await.unwrap();
        assert_eq!(asked, Some(Message::GetManifest { cached: None }));
        drop((conn, client));

        // A peer that reads nothing, as one whose link is gone: no pong, and the wait ends at
        // the bound, not at some later timeout.
        let server = serve_one(&listener);
        let mut client = connect(&options(url, Trust::Insecure, TOKEN))
            .await
            .unwrap();
        let (silent, _) = server.await.unwrap().unwrap();
        client
            .send_probing(&Message::GetManifest { cached: None }, within)
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .expect("the bound ends the wait")
            .unwrap_err();
        assert_eq!(err.code(), "idle", "{err:?}");
        drop(silent);
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
        let mut sender = sending.await.unwrap();
        // Replies that waited together go out in one flush, in order, each counted.
        let batch: Vec<Message> = (10..50)
            .map(|id| Message::FileDone { id })
            .chain([Message::Finished { digest: [7; 32] }])
            .collect();
        sender.send_many(&batch).await.unwrap();
        for expected in &batch {
            assert_eq!(receiver.recv().await.unwrap().as_ref(), Some(expected));
        }
        let payload: usize = messages
            .iter()
            .chain(&batch)
            .map(|m| protocol::encode(m).len())
            .sum();
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
