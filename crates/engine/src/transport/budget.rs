//! A byte budget on what a peer may send before it authenticated. A new connection's stream
//! (under TLS and the WebSocket) fails once the peer sent more than the budget, so a stranger
//! cannot make the agent read and buffer a large first message; once the token was accepted
//! the budget is lifted and the stream reads as any other.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a lifted budget holds.
const LIFTED: usize = usize::MAX;

/// A stream that reads at most a budget until [`Lift::lift`] is called.
#[derive(Debug)]
pub(super) struct Budgeted<S> {
    inner: S,
    left: Arc<AtomicUsize>,
    budget: usize,
}

/// Lifts the budget of its [`Budgeted`] stream.
#[derive(Debug, Clone)]
pub(super) struct Lift(Arc<AtomicUsize>);

impl Lift {
    pub(super) fn lift(&self) {
        self.0.store(LIFTED, Ordering::Relaxed);
    }
}

/// Wraps `inner` with a budget of `budget` bytes.
pub(super) fn budgeted<S>(inner: S, budget: usize) -> (Budgeted<S>, Lift) {
    let left = Arc::new(AtomicUsize::new(budget));
    (
        Budgeted {
            inner,
            left: Arc::clone(&left),
            budget,
        },
        Lift(left),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.left.load(Ordering::Relaxed);
        if left == LIFTED {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let budget = self.budget;
        let over = move || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the peer sent more than {} bytes before it authenticated; a RainMaker hello \
                     is far smaller",
                    budget
                ),
            )
        };
        if left == 0 {
            return Poll::Ready(Err(over()));
        }
        // Never read past the budget: a large first message is seen by its header, not read.
        let read = if buf.remaining() <= left {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if !matches!(polled, Poll::Ready(Ok(()))) {
                return polled;
            }
            buf.filled().len() - before
        } else {
            let mut bounded = vec![0u8; left];
            let mut part = ReadBuf::new(&mut bounded);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut part);
            if !matches!(polled, Poll::Ready(Ok(()))) {
                return polled;
            }
            buf.put_slice(part.filled());
            part.filled().len()
        };
        // Only this stream's reader counts down, and only a lift raises it.
        let _ = self
            .left
            .compare_exchange(left, left - read, Ordering::Relaxed, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_past_the_budget_fail_until_it_is_lifted() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let (mut stream, lift) = budgeted(ours, 100);
        peer.write_all(&[1; 60]).await.unwrap();
        let mut buf = [0u8; 1024];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 60);
        peer.write_all(&[2; 60]).await.unwrap();
        assert_eq!(
            stream.read(&mut buf).await.unwrap(),
            40,
            "what is left of the budget is read, not more"
        );
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("100 bytes"), "{err}");

        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let (mut stream, lift2) = budgeted(ours, 100);
        drop(lift);
        lift2.lift();
        peer.write_all(&[3; 4000]).await.unwrap();
        let mut got = vec![0u8; 4000];
        stream.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 3), "a lifted budget reads all");
    }
}
