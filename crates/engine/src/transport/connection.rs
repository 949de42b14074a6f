//! An authenticated connection carrying protocol messages, one WebSocket binary message each.
//!
//! The same [`Connection`] type serves `wss://` and plain `ws://`: the byte stream under the
//! WebSocket is boxed. Every received binary message goes through [`protocol::decode`], so what
//! comes out of [`Connection::recv`] respects the protocol's limits; pings are answered by the
//! WebSocket layer; a close from the peer ends the stream with `Ok(None)`, while a connection
//! cut without a close is [`TransportError::Closed`].
//!
//! Keepalive: a side that waits on a quiet peer reads with [`Connection::recv_within`] (any
//! frame, a pong too, restarts the clock; a peer silent for longer is
//! [`TransportError::Idle`]) and pings it with [`ConnectionSender::ping`]; a side with nothing
//! to say for a while waits in [`Connection::idle_until`], which answers the peer's pings.
//! A connection that lay idle speaks again with [`Connection::send_probing`]: a peer that
//! died without a word (its power cut) is found out within a bound, not after a stall.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;

use super::tcp_info::{SendTimes, SocketProbe};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{
    self, Bytes, Error as WsError, Message as WsMessage, error::CapacityError,
};

use super::identity::Fingerprint;
use super::{CLOSE_TIMEOUT, TransportError};
use crate::protocol::{self, MAX_MESSAGE_BYTES, Message, ProtocolError};

/// A byte stream a WebSocket can run on: TCP, or TLS over TCP.
pub(super) trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

pub(super) type Ws = WebSocketStream<Box<dyn ByteStream>>;

/// Limits for both ends: no message or frame over the protocol's maximum is read, and the
/// write buffer holds at most a couple of messages when the peer stops reading.
pub(super) fn ws_config() -> WebSocketConfig {
    const WRITE_BUFFER: usize = 128 * 1024;
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * (MAX_MESSAGE_BYTES + 64))
}

/// Reads `bytes` as a server reads a client's WebSocket stream, with the same limits, and
/// decodes every binary message; stops at the first error. What the frame fuzz target runs.
pub fn read_frames(bytes: &[u8]) -> (Vec<crate::protocol::Message>, Option<String>) {
    use tokio_tungstenite::tungstenite::{self, protocol::Role};
    /// Reads the input; what the WebSocket writes back (pongs, closes) goes nowhere.
    struct Input<'a>(std::io::Cursor<&'a [u8]>);
    impl std::io::Read for Input<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Write for Input<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut ws = tungstenite::WebSocket::from_raw_socket(
        Input(std::io::Cursor::new(bytes)),
        Role::Server,
        Some(ws_config()),
    );
    let mut messages = Vec::new();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(data)) => match crate::protocol::decode(&data) {
                Ok(message) => messages.push(message),
                Err(e) => return (messages, Some(e.to_string())),
            },
            Ok(_) => {}
            Err(e) => return (messages, Some(e.to_string())),
        }
    }
}

/// Bytes of messages this process sent and received on every connection, so the resource
/// guard can tell RainMaker's own traffic from the trading platform's.
pub static WIRE_TOTAL: AtomicU64 = AtomicU64::new(0);

/// An authenticated, message-framed connection to a peer.
pub struct Connection {
    pub(super) ws: Ws,
    pub(super) peer: String,
    pub(super) remote_name: String,
    pub(super) fingerprint: Option<Fingerprint>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// While waiting ([`Connection::idle_until`]), a peer silent for this long is taken for
    /// gone (`None`: never).
    quiet_limit: Option<Duration>,
    /// Set by [`Connection::expect_answer_within`]: the next read fails unless the peer sends
    /// some frame by then.
    answer_by: Asked,
    probe: SocketProbe,
    /// On a client that did not wait for its target's welcome: what the first message read
    /// must be.
    welcome: Option<Unwelcomed>,
}

/// A client's connection whose target has not answered the hello yet
/// ([`super::connect_eager`]): its first message must be `Welcome` (or `Refused`, which
/// fails the read as [`TransportError::Refused`]), within `within` of the read that waits for
/// it (the source may plan a while before it reads; the welcome waits in the socket meanwhile).
#[derive(Debug, Clone)]
pub(super) struct Unwelcomed {
    pub(super) within: Duration,
}

impl Unwelcomed {
    /// Takes `message`, the first the target sent: `None` for its welcome, which is taken
    /// off; its refusal, or anything else, as the error it is.
    fn welcomed(self, message: Message, peer: &str) -> Result<Option<Message>, TransportError> {
        match message {
            Message::Welcome { .. } => Ok(None),
            Message::Refused { reason, refusal } => Err(TransportError::Refused {
                peer: peer.to_owned(),
                reason,
                refusal,
            }),
            other => Err(TransportError::Protocol {
                peer: peer.to_owned(),
                source: ProtocolError::Malformed(format!(
                    "expected Welcome or Refused, got {}",
                    other.name()
                )),
            }),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("remote_name", &self.remote_name)
            .field("fingerprint", &self.fingerprint)
            .field("wire_bytes_sent", &self.wire_bytes_sent())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(super) fn new(ws: Ws, peer: String) -> Connection {
        Connection {
            ws,
            peer,
            remote_name: String::new(),
            fingerprint: None,
            sent: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
            quiet_limit: None,
            answer_by: None,
            probe: SocketProbe::default(),
            welcome: None,
        }
    }

    /// This connection, its target's welcome still to come (see [`Unwelcomed`]).
    pub(super) fn unwelcomed(mut self, welcome: Unwelcomed) -> Connection {
        self.welcome = Some(welcome);
        self
    }

    /// This connection over the socket `probe` asks about.
    pub(super) fn with_probe(mut self, probe: SocketProbe) -> Connection {
        self.probe = probe;
        self
    }

    /// Makes [`Connection::idle_until`] fail with [`TransportError::Idle`] when the peer sends
    /// no frame at all (not even a ping) for `limit`: for a peer that pings, whose connection
    /// may die without a word (a link cut behind a router).
    pub fn expect_pings_within(&mut self, limit: Duration) {
        self.quiet_limit = Some(limit);
    }

    /// Encodes and sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), TransportError> {
        self.send_encoded(Bytes::from(protocol::encode(message)))
            .await
    }

    /// Sends `message` behind a ping, on a connection that lay idle and may have died without
    /// a word (a target whose power was cut, a link cut behind a router: no reset ever comes,
    /// and what is sent waits in the socket's buffer). The next read then fails with
    /// [`TransportError::Idle`] unless the peer sends some frame, its pong included, within
    /// `within`; how long the answer itself takes (a big folder to list) does not count.
    pub async fn send_probing(
        &mut self,
        message: &Message,
        within: Duration,
    ) -> Result<(), TransportError> {
        self.expect_answer_within(within);
        // Fed, not flushed: the ping and the message go out in one write.
        self.ws
            .feed(WsMessage::Ping(Bytes::new()))
            .await
            .map_err(|e| ws_error(&self.peer, e))?;
        self.send(message).await
    }

    /// Makes the next read fail with [`TransportError::Idle`] unless the peer sends some frame
    /// (a message, a ping, the pong to a ping sent) within `within` from now. Kept by
    /// [`Connection::split`] for the receiving half.
    pub fn expect_answer_within(&mut self, within: Duration) {
        answer_within(&mut self.answer_by, within);
    }

    /// Counts `bytes` of messages sent before the connection was made (a pipelined hello).
    pub(super) fn count_sent(&self, bytes: usize) {
        count(&self.sent, bytes as u64);
    }

    /// Sends a message already encoded with [`protocol::encode`] (encode once, send to many
    /// targets: cloning `Bytes` does not copy).
    pub async fn send_encoded(&mut self, bytes: Bytes) -> Result<(), TransportError> {
        send_on(&mut self.ws, &self.peer, &self.sent, bytes).await
    }

    /// The next message, or `None` once the peer closed the connection cleanly.
    pub async fn recv(&mut self) -> Result<Option<Message>, TransportError> {
        recv_from(
            &mut self.ws,
            &self.peer,
            &self.received,
            &mut self.answer_by,
            &mut self.welcome,
            None,
        )
        .await
    }

    /// [`Connection::recv`], failing with [`TransportError::Idle`] when the peer sends no
    /// frame at all (no message, ping or pong) for `idle`.
    pub async fn recv_within(&mut self, idle: Duration) -> Result<Option<Message>, TransportError> {
        recv_from(
            &mut self.ws,
            &self.peer,
            &self.received,
            &mut self.answer_by,
            &mut self.welcome,
            Some(idle),
        )
        .await
    }

    /// Waits for `until` while the connection has nothing to carry, reading meanwhile so the
    /// peer's pings are answered and it does not take this side for frozen. A peer that closes
    /// or cuts the connection, or sends a message nobody asked for, ends the wait with an
    /// error; `until` is then left unfinished.
    pub async fn idle_until<T>(
        &mut self,
        until: impl Future<Output = T>,
    ) -> Result<T, TransportError> {
        tokio::pin!(until);
        let quiet = self.quiet_limit.unwrap_or(Duration::MAX);
        let welcome_by = tokio::time::Instant::now()
            + self.welcome.as_ref().map_or(Duration::ZERO, |w| w.within);
        loop {
            tokio::select! {
                out = &mut until => return Ok(out),
                () = tokio::time::sleep(quiet), if self.quiet_limit.is_some() => {
                    return Err(TransportError::Idle { peer: self.peer.clone(), after: quiet });
                }
                () = tokio::time::sleep_until(welcome_by), if self.welcome.is_some() => {
                    return Err(TransportError::Timeout {
                        peer: self.peer.clone(),
                        stage: "connection and handshake",
                    });
                }
                frame = self.ws.next() => match frame {
                    // Any frame is the answer [`Connection::send_probing`] waits for.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                        self.answer_by = None;
                    }
                    Some(Ok(WsMessage::Close(_))) | None => {
                        return Err(TransportError::Closed { peer: self.peer.clone() });
                    }
                    // A refusal (this agent was promoted, say) says why.
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        let mut message = protocol::decode(&bytes).ok();
                        if let Some(message) = &mut message {
                            message.escape_text();
                        }
                        // The welcome of a target that was not waited for is taken off.
                        if let Some(unwelcomed) = self.welcome.take()
                            && let Some(first) = message.take()
                        {
                            match unwelcomed.welcomed(first, &self.peer)? {
                                None => continue,
                                Some(first) => message = Some(first),
                            }
                        }
                        let peer = self.peer.clone();
                        return Err(match message {
                            Some(Message::Refused { reason, refusal }) => {
                                TransportError::Refused { peer, reason, refusal }
                            }
                            _ => TransportError::Protocol {
                                peer,
                                source: ProtocolError::Malformed(format!(
                                    "a message of {} bytes while nothing was asked",
                                    bytes.len()
                                )),
                            },
                        });
                    }
                    Some(Ok(other)) => {
                        return Err(TransportError::Protocol {
                            peer: self.peer.clone(),
                            source: ProtocolError::Malformed(format!(
                                "a message of {} bytes while nothing was asked",
                                other.len()
                            )),
                        });
                    }
                    Some(Err(e)) => return Err(ws_error(&self.peer, e)),
                },
            }
        }
    }

    /// Splits the connection so one task can send while another receives.
    pub fn split(self) -> (ConnectionSender, ConnectionReceiver) {
        let (sink, stream) = self.ws.split();
        (
            ConnectionSender {
                sink,
                peer: self.peer.clone(),
                sent: self.sent,
                quiet_limit: self.quiet_limit,
                probe: self.probe,
            },
            ConnectionReceiver {
                stream,
                received: self.received,
                peer: self.peer,
                answer_by: self.answer_by,
                welcome: self.welcome,
            },
        )
    }

    /// The counter of payload bytes of binary messages received, shared with the receiving
    /// half after a split.
    pub fn received_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.received)
    }

    /// Payload bytes of the binary messages sent so far (the hello included).
    pub fn wire_bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The counter behind [`Connection::wire_bytes_sent`], shared with the halves of
    /// [`Connection::split`], for progress reporting from another task.
    pub fn wire_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.sent)
    }

    /// The peer as `host:port`, for messages: the address from the URL on a client, the
    /// socket address on a server.
    pub fn peer(&self) -> String {
        self.peer.clone()
    }

    /// The name the peer gave in its hello (the source's name on a server, the target's name
    /// on a client).
    pub fn remote_name(&self) -> &str {
        &self.remote_name
    }

    /// On a client over TLS, the fingerprint of the certificate the server presented.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// Closes cleanly: sends a WebSocket close, waits briefly ([`CLOSE_TIMEOUT`]) for the peer's
    /// answer, and shuts the stream down (TLS `close_notify`). Best effort: a peer that is
    /// already gone or does not answer is simply dropped.
    pub async fn close(mut self) {
        self.shutdown().await;
    }

    /// Closes without waiting for the peer's answer: sends a WebSocket close and shuts the
    /// stream down (TLS `close_notify`, then TCP's end of stream). For a session that is over
    /// when nothing waits on the connection's end: a `push --once` about to exit saves the
    /// round trip the peer's answer takes. The peer reads the close as a clean one.
    pub async fn close_now(mut self) {
        let ws = &mut self.ws;
        let closing = async {
            let _ = ws.close(None).await;
            let _ = ws.get_mut().shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }

    pub(super) async fn shutdown(&mut self) {
        let ws = &mut self.ws;
        let closing = async {
            if ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
            let _ = ws.get_mut().shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// The sending half of a [`Connection`].
pub struct ConnectionSender {
    sink: SplitSink<Ws, WsMessage>,
    peer: String,
    sent: Arc<AtomicU64>,
    /// The whole connection's, kept for [`ConnectionSender::reunite`].
    quiet_limit: Option<Duration>,
    probe: SocketProbe,
}

impl fmt::Debug for ConnectionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSender")
            .field("peer", &self.peer)
            .field("wire_bytes_sent", &self.wire_bytes_sent())
            .finish_non_exhaustive()
    }
}

impl ConnectionSender {
    /// How long the socket had data to send, and how much of it the peer's window held it
    /// back, if the system tells ([`SocketProbe`]).
    pub fn send_times(&self) -> Option<SendTimes> {
        self.probe.send_times()
    }

    /// Encodes and sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), TransportError> {
        self.send_encoded(Bytes::from(protocol::encode(message)))
            .await
    }

    /// Sends a message already encoded with [`protocol::encode`].
    pub async fn send_encoded(&mut self, bytes: Bytes) -> Result<(), TransportError> {
        send_on(&mut self.sink, &self.peer, &self.sent, bytes).await
    }

    /// Sends `messages` in order with one flush at the end, so replies that were waiting
    /// together leave in as few segments as they fit. Sent one flush each, a burst of small
    /// replies (a session's acknowledgements, then its `Finished`) is a burst of small
    /// segments: past TCP's congestion window, which counts segments, the last of them
    /// waits a round trip for the peer's acknowledgements.
    pub async fn send_many(&mut self, messages: &[Message]) -> Result<(), TransportError> {
        for message in messages {
            let bytes = Bytes::from(protocol::encode(message));
            let len = checked_len(&self.peer, &bytes)?;
            self.sink
                .feed(WsMessage::Binary(bytes))
                .await
                .map_err(|e| ws_error(&self.peer, e))?;
            count(&self.sent, len);
        }
        self.sink.flush().await.map_err(|e| ws_error(&self.peer, e))
    }

    /// Payload bytes of the binary messages sent on this connection so far.
    pub fn wire_bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends a WebSocket ping; the peer's WebSocket answers it as it reads.
    pub async fn ping(&mut self) -> Result<(), TransportError> {
        self.sink
            .send(WsMessage::Ping(Bytes::new()))
            .await
            .map_err(|e| ws_error(&self.peer, e))
    }

    /// The counter behind [`ConnectionSender::wire_bytes_sent`].
    pub fn wire_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.sent)
    }

    /// The peer as `host:port`.
    pub fn peer(&self) -> String {
        self.peer.clone()
    }

    /// Sends a WebSocket close (best effort, bounded by [`CLOSE_TIMEOUT`]); the receiving half
    /// then sees the peer's answer as `Ok(None)`.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.close()).await;
    }

    /// Puts the two halves of a connection back together, so it can serve another round.
    pub fn reunite(self, receiver: ConnectionReceiver) -> Result<Connection, TransportError> {
        let peer = self.peer.clone();
        let ws = self
            .sink
            .reunite(receiver.stream)
            .map_err(|_| TransportError::Closed { peer: peer.clone() })?;
        Ok(Connection {
            ws,
            peer,
            remote_name: String::new(),
            fingerprint: None,
            sent: self.sent,
            received: receiver.received,
            quiet_limit: self.quiet_limit,
            answer_by: receiver.answer_by,
            probe: self.probe,
            welcome: receiver.welcome,
        })
    }
}

/// The receiving half of a [`Connection`].
pub struct ConnectionReceiver {
    stream: SplitStream<Ws>,
    received: Arc<AtomicU64>,
    peer: String,
    /// As [`Connection`]'s: the next read fails unless some frame comes by then.
    answer_by: Asked,
    /// As [`Connection`]'s.
    welcome: Option<Unwelcomed>,
}

impl fmt::Debug for ConnectionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionReceiver")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl ConnectionReceiver {
    /// The next message, or `None` once the peer closed the connection cleanly.
    pub async fn recv(&mut self) -> Result<Option<Message>, TransportError> {
        recv_from(
            &mut self.stream,
            &self.peer,
            &self.received,
            &mut self.answer_by,
            &mut self.welcome,
            None,
        )
        .await
    }

    /// [`ConnectionReceiver::recv`], failing with [`TransportError::Idle`] when the peer
    /// sends no frame at all for `idle`.
    pub async fn recv_within(&mut self, idle: Duration) -> Result<Option<Message>, TransportError> {
        recv_from(
            &mut self.stream,
            &self.peer,
            &self.received,
            &mut self.answer_by,
            &mut self.welcome,
            Some(idle),
        )
        .await
    }

    /// [`Connection::expect_answer_within`], for this half.
    pub fn expect_answer_within(&mut self, within: Duration) {
        answer_within(&mut self.answer_by, within);
    }

    /// The peer as `host:port`.
    pub fn peer(&self) -> String {
        self.peer.clone()
    }
}

async fn send_on<S>(
    sink: &mut S,
    peer: &str,
    sent: &AtomicU64,
    bytes: Bytes,
) -> Result<(), TransportError>
where
    S: futures_util::Sink<WsMessage, Error = WsError> + Unpin,
{
    let len = checked_len(peer, &bytes)?;
    sink.send(WsMessage::Binary(bytes))
        .await
        .map_err(|e| ws_error(peer, e))?;
    count(sent, len);
    Ok(())
}

/// Counts `len` bytes of messages sent, on the connection's counter and the process's.
fn count(sent: &AtomicU64, len: u64) {
    sent.fetch_add(len, Ordering::Relaxed);
    WIRE_TOTAL.fetch_add(len, Ordering::Relaxed);
}

/// The length of an encoded message, which must not be larger than the peer accepts.
fn checked_len(peer: &str, bytes: &[u8]) -> Result<u64, TransportError> {
    let len = bytes.len();
    if len > MAX_MESSAGE_BYTES {
        // The peer would refuse it; fail here, where the bug is.
        return Err(TransportError::Protocol {
            peer: peer.to_owned(),
            source: ProtocolError::TooLarge(len),
        });
    }
    Ok(len as u64)
}

/// An answer asked for: the deadline, and the time it was asked within (what a peer that
/// misses it is reported silent for).
type Asked = Option<(tokio::time::Instant, Duration)>;

/// Asks for an answer within `within` from now, or by the deadline already pending if that is
/// sooner (a second request does not give a silent peer more time).
fn answer_within(answer_by: &mut Asked, within: Duration) {
    let asked = (tokio::time::Instant::now() + within, within);
    *answer_by = Some(answer_by.map_or(asked, |pending| pending.min(asked)));
}

/// The next message on `stream`. While an answer is asked for (`answer_by`), some frame must
/// come by then, and the first that does clears it; each frame within `idle` of the one before.
async fn recv_from<S>(
    stream: &mut S,
    peer: &str,
    received: &AtomicU64,
    answer_by: &mut Asked,
    welcome: &mut Option<Unwelcomed>,
    idle: Option<Duration>,
) -> Result<Option<Message>, TransportError>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    loop {
        // A target that does not answer the hello in time is a handshake that timed out.
        let frame = match welcome.as_ref().map(|w| w.within) {
            Some(within) => {
                match tokio::time::timeout(within, next_frame(stream, peer, answer_by, idle)).await
                {
                    Ok(frame) => frame?,
                    Err(_) => {
                        return Err(TransportError::Timeout {
                            peer: peer.to_owned(),
                            stage: "connection and handshake",
                        });
                    }
                }
            }
            None => next_frame(stream, peer, answer_by, idle).await?,
        };
        match frame {
            None => return Ok(None),
            Some(Ok(WsMessage::Binary(bytes))) => {
                received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                WIRE_TOTAL.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let mut message =
                    protocol::decode(&bytes).map_err(|source| TransportError::Protocol {
                        peer: peer.to_owned(),
                        source,
                    })?;
                // What the peer wrote for people to read is shown, never obeyed.
                message.escape_text();
                match welcome.take() {
                    Some(unwelcomed) => match unwelcomed.welcomed(message, peer)? {
                        Some(message) => return Ok(Some(message)),
                        None => continue,
                    },
                    None => return Ok(Some(message)),
                }
            }
            Some(Ok(WsMessage::Text(_))) => {
                return Err(TransportError::Protocol {
                    peer: peer.to_owned(),
                    source: ProtocolError::Malformed(
                        "a text message; RainMaker sends binary messages only".to_owned(),
                    ),
                });
            }
            Some(Ok(WsMessage::Close(_))) => {
                // Reading on sends our answer to the close and waits for the end of the stream.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
                return Ok(None);
            }
            // Pings are answered by tungstenite on the next read or write.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
            Some(Err(e)) => return Err(ws_error(peer, e)),
        }
    }
}

/// The next frame on `stream`, within the bounds [`recv_from`] reads by.
async fn next_frame<S>(
    stream: &mut S,
    peer: &str,
    answer_by: &mut Asked,
    idle: Option<Duration>,
) -> Result<Option<Result<WsMessage, WsError>>, TransportError>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    // How long to wait for the next frame, and how long the peer was silent if none comes.
    let first = answer_by.map(|(by, asked)| {
        let left = by.saturating_duration_since(tokio::time::Instant::now());
        (left, asked)
    });
    let limit = match (first, idle) {
        (Some((left, asked)), Some(idle)) if left < idle => Some((left, asked)),
        (Some(first), None) => Some(first),
        (_, Some(idle)) => Some((idle, idle)),
        (None, None) => None,
    };
    let frame = match limit {
        None => stream.next().await,
        Some((wait, silent)) => tokio::time::timeout(wait, stream.next())
            .await
            .map_err(|_| TransportError::Idle {
                peer: peer.to_owned(),
                after: silent,
            })?,
    };
    *answer_by = None;
    Ok(frame)
}

/// Sorts WebSocket errors: a cut connection is [`TransportError::Closed`], an oversize message
/// is a protocol error, the rest stays a WebSocket error.
pub(super) fn ws_error(peer: &str, error: WsError) -> TransportError {
    use std::io::ErrorKind;
    let peer = peer.to_owned();
    match error {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            TransportError::Closed { peer }
        }
        WsError::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ) =>
        {
            TransportError::Closed { peer }
        }
        WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => TransportError::Protocol {
            peer,
            source: ProtocolError::TooLarge(size),
        },
        other => TransportError::WebSocket {
            peer,
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, encode};
    use tokio_tungstenite::tungstenite::{self, protocol::Role};

    /// The bytes a client writes for `messages`.
    fn client_bytes(messages: &[Message]) -> Vec<u8> {
        let mut ws = tungstenite::WebSocket::from_raw_socket(
            std::io::Cursor::new(Vec::new()),
            Role::Client,
            Some(ws_config()),
        );
        for m in messages {
            ws.send(tungstenite::Message::Binary(encode(m).into()))
                .unwrap();
        }
        ws.get_ref().get_ref().clone()
    }

    #[test]
    fn frames_read_back_and_garbage_stops_with_an_error() {
        let sent = [Message::Finish, Message::Delete { path: "a/b".into() }];
        let bytes = client_bytes(&sent);
        let (read, error) = read_frames(&bytes);
        assert_eq!(read, sent, "what a client sent is what the server reads");
        assert!(error.is_some(), "the end of the input ends the read");
        let (read, error) = read_frames(&bytes[..bytes.len() - 1]);
        assert_eq!(read.len(), 1, "a truncated frame is not read");
        assert!(error.is_some());
        let (read, error) = read_frames(b"\x82\xff\xff\xff\xff\xff\xff\xff\xff\xff");
        assert!(
            read.is_empty() && error.is_some(),
            "an absurd length is refused"
        );
    }

    #[test]
    fn a_second_request_for_an_answer_gives_a_silent_peer_no_more_time() {
        let mut by = None;
        answer_within(&mut by, Duration::from_secs(3));
        let first = by.expect("asked");
        answer_within(&mut by, Duration::from_secs(30));
        assert_eq!(by, Some(first), "the pending deadline stands");
        answer_within(&mut by, Duration::ZERO);
        let sooner = by.expect("asked");
        assert!(sooner.0 < first.0, "a sooner one replaces it");
        assert_eq!(
            sooner.1,
            Duration::ZERO,
            "with the bound it was asked within"
        );
    }
}
