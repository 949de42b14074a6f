//! The WebSocket upgrade and a client's first messages in one flight.
//!
//! A client writes its hello (and the request that goes with it) right behind the upgrade
//! request instead of waiting a round trip for the server's answer ([`Preface`]). The
//! server's WebSocket library refuses bytes that arrive behind a request it has not answered
//! yet, so the server hands it the request alone and keeps what came behind it for the
//! connection ([`HeadersFirst`]).
//!
//! A client that has more to send before the server's answers (a push that guesses what its
//! target holds) writes the upgrade request itself ([`upgrade_request`]) and reads the
//! server's answer to it lazily, in front of the first frames ([`Answered`]).

use super::connection::ws_config;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{self, protocol::Role};

/// Where an HTTP request's head ends.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// The bytes a client's WebSocket writes for `payloads`, each one binary message (masked, as
/// a client's frames must be). `None` if the library would not encode them.
pub(super) fn client_frames(payloads: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut ws = tungstenite::WebSocket::from_raw_socket(
        io::Cursor::new(Vec::new()),
        Role::Client,
        Some(ws_config()),
    );
    for payload in payloads {
        ws.write(tungstenite::Message::Binary(payload.clone().into()))
            .ok()?;
    }
    ws.flush().ok()?;
    Some(ws.get_ref().get_ref().clone())
}

/// A client's stream that writes `preface` at the first flush, that is, right behind the
/// upgrade request the WebSocket handshake wrote and flushes; then it only passes through.
pub(super) struct Preface<S> {
    inner: S,
    preface: Vec<u8>,
    written: usize,
}

impl<S> Preface<S> {
    pub(super) fn new(inner: S, preface: Vec<u8>) -> Preface<S> {
        Preface {
            inner,
            preface,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Preface<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Preface<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.written < this.preface.len() {
            let n =
                ready!(Pin::new(&mut this.inner).poll_write(cx, &this.preface[this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
        }
        if !this.preface.is_empty() {
            this.preface = Vec::new();
            this.written = 0;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A server's stream that yields the HTTP request's head alone (up to and with its blank
/// line) and keeps the bytes read past it for the reads after: the WebSocket handshake sees
/// nothing behind the request, and the connection reads a pipelining client's first frames.
pub(super) struct HeadersFirst<S> {
    inner: S,
    /// Read from `inner`, not yet given out.
    held: Vec<u8>,
    /// Given out from the start of `held`.
    given: usize,
    /// How much of [`HEAD_END`] the bytes given out so far end with; `None` once the head
    /// was given out whole.
    matched: Option<usize>,
}

impl<S> HeadersFirst<S> {
    pub(super) fn new(inner: S) -> HeadersFirst<S> {
        HeadersFirst {
            inner,
            held: Vec::new(),
            given: 0,
            matched: Some(0),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadersFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.given == this.held.len() {
            this.held.clear();
            this.given = 0;
            if this.matched.is_none() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.held.extend_from_slice(read.filled());
        }
        let waiting = &this.held[this.given..];
        let mut n = waiting.len().min(buf.remaining());
        if let Some(mut matched) = this.matched {
            for (i, byte) in waiting[..n].iter().enumerate() {
                matched = match (*byte == HEAD_END[matched], *byte == HEAD_END[0]) {
                    (true, _) => matched + 1,
                    (false, true) => 1,
                    (false, false) => 0,
                };
                if matched == HEAD_END.len() {
                    n = i + 1;
                    break;
                }
            }
            this.matched = (matched < HEAD_END.len()).then_some(matched);
        }
        buf.put_slice(&waiting[..n]);
        this.given += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadersFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Most bytes a server's answer to the upgrade may take, up to its blank line.
const MAX_ANSWER_HEAD: usize = 16 * 1024;

/// The upgrade request a client writes for `url` (`ws://host:port/` or `wss://…`), and the
/// `Sec-WebSocket-Accept` the server's answer must carry.
pub(super) fn upgrade_request(url: &str) -> Result<(Vec<u8>, String), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::handshake::{client::generate_request, derive_accept_key};
    let (request, key) = generate_request(url.into_client_request()?)?;
    Ok((request, derive_accept_key(key.as_bytes())))
}

/// A client's stream whose first bytes read are the server's answer to an upgrade request
/// written earlier: the answer is checked (status 101, the accept key) and taken off, and
/// only what follows it is given out. An answer that is not an upgrade fails the read.
pub(super) struct Answered<S> {
    inner: S,
    /// The `Sec-WebSocket-Accept` expected; `None` once the answer was checked.
    accept: Option<String>,
    /// Read from `inner`: the answer so far, then what came behind it.
    held: Vec<u8>,
    /// Given out from the start of `held` (once the answer was taken off).
    given: usize,
}

impl<S> Answered<S> {
    pub(super) fn new(inner: S, accept: String) -> Answered<S> {
        Answered {
            inner,
            accept: Some(accept),
            held: Vec::new(),
            given: 0,
        }
    }
}

/// Checks a server's answer to the upgrade: its head's length if `head` holds a whole one,
/// `None` if more is needed.
fn check_answer(head: &[u8], accept: &str) -> io::Result<Option<usize>> {
    let refused = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if head.len() > MAX_ANSWER_HEAD => {
            return Err(refused(format!(
                "the answer to the WebSocket upgrade is over {MAX_ANSWER_HEAD} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(refused(format!(
                "the answer to the WebSocket upgrade is not HTTP ({e})"
            )));
        }
    };
    if answer.code != Some(101) {
        return Err(refused(format!(
            "the WebSocket upgrade was answered with HTTP {} {}",
            answer.code.unwrap_or(0),
            answer.reason.unwrap_or("")
        )));
    }
    let accepted = answer.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes()
    });
    if !accepted {
        return Err(refused(
            "the answer to the WebSocket upgrade does not carry the key asked for".into(),
        ));
    }
    Ok(Some(len))
}

impl<S: AsyncRead + Unpin> AsyncRead for Answered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while let Some(accept) = &this.accept {
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // Not the end of a stream that was up (a cut): the reason is kept. An agent
                // from before pipelining drops the connection here.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the target closed the connection before it answered the WebSocket upgrade \
                     (an agent older than this source?)",
                )));
            }
            this.held.extend_from_slice(read.filled());
            if let Some(len) = check_answer(&this.held, accept)? {
                this.accept = None;
                this.given = len;
            }
        }
        if this.given == this.held.len() {
            if !this.held.is_empty() {
                this.held = Vec::new();
                this.given = 0;
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = (this.held.len() - this.given).min(buf.remaining());
        buf.put_slice(&this.held[this.given..this.given + n]);
        this.given += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Answered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads everything through `HeadersFirst`, `size` bytes at most per read; returns the
    /// reads.
    async fn reads(input: &[u8], size: usize) -> Vec<Vec<u8>> {
        let (mut writer, reader) = tokio::io::duplex(64);
        let input = input.to_vec();
        let feeding = tokio::spawn(async move {
            // In small pieces, so the head's end falls across them.
            for piece in input.chunks(7) {
                writer.write_all(piece).await.unwrap();
            }
        });
        let mut stream = HeadersFirst::new(reader);
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; size];
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.push(buf[..n].to_vec());
        }
        feeding.await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_head_is_given_out_alone_and_what_follows_after_it() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n".to_vec();
        let frames = b"\x82\x85\r\n\r\n\r\n\r\n\x01".to_vec();
        let input = [head.clone(), frames.clone()].concat();
        for size in [1, 3, 5, 4096] {
            let got = reads(&input, size).await;
            let mut given = 0;
            let end = got
                .iter()
                .position(|read| {
                    given += read.len();
                    given >= head.len()
                })
                .expect("the head is given out");
            assert_eq!(
                given,
                head.len(),
                "no read goes past the head (reads of {size})"
            );
            assert_eq!(got[..=end].concat(), head);
            assert_eq!(
                got[end + 1..].concat(),
                frames,
                "and then the rest, unchanged"
            );
        }
    }

    #[tokio::test]
    async fn a_stream_without_a_head_is_passed_on_whole() {
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(reads(&input, 16).await.concat(), input);
    }

    #[tokio::test]
    async fn the_preface_follows_what_was_written_at_the_first_flush() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut stream = Preface::new(client, b"[frames]".to_vec());
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        stream.flush().await.unwrap();
        stream.write_all(b"later").await.unwrap();
        stream.flush().await.unwrap();
        drop(stream);
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n[frames]later");
    }
}
