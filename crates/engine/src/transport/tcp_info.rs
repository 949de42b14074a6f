//! Where a connection's TCP sender spends its time: how long it had data to send, and how
//! much of that the receiver's window held it back (the peer's program or disk not keeping
//! up, as against the network). A sender whose writes block cannot tell the two apart; the
//! kernel can (Linux `TCP_INFO`: `tcpi_busy_time`, `tcpi_rwnd_limited`, since 4.10).
//!
//! Compressing harder helps only a sender the network holds back: a target held back by its
//! own disk writes the same bytes whatever crossed the link (`mirror::send::adapt`).
//! Windows (`SIO_TCP_INFO`'s `SndLimTimeRwin`) and macOS are not read yet: there the figures
//! are unknown and the sender decides as before, from its own waits.

/// The socket of one connection, to ask the kernel about (not an owner: the connection's
/// stream owns it and outlives every use, which goes through the connection or its halves).
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketProbe {
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::RawFd>,
}

/// Microseconds the sender had data to send, and of those, held back by the receiver's
/// window; both count from the connection's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendTimes {
    pub busy_us: u64,
    pub receiver_us: u64,
}

impl SendTimes {
    /// The share of the time between `earlier` and these times the receiver held back.
    pub fn receiver_share_since(&self, earlier: SendTimes) -> Option<f64> {
        let busy = self.busy_us.checked_sub(earlier.busy_us)?;
        let receiver = self.receiver_us.checked_sub(earlier.receiver_us)?;
        (busy > 0).then(|| (receiver as f64 / busy as f64).min(1.0))
    }
}

impl SocketProbe {
    /// The probe of `tcp`'s socket.
    pub fn of(tcp: &tokio::net::TcpStream) -> SocketProbe {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            SocketProbe {
                fd: Some(tcp.as_raw_fd()),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = tcp;
            SocketProbe {}
        }
    }

    /// The sender's times so far, if this system tells them.
    #[allow(
        unsafe_code,
        reason = "getsockopt(TCP_INFO) has no safe wrapper in libc"
    )]
    pub fn send_times(&self) -> Option<SendTimes> {
        #[cfg(target_os = "linux")]
        {
            // struct tcp_info (linux/tcp.h): tcpi_busy_time at byte 168, tcpi_rwnd_limited
            // at 176, both u64; older kernels return a shorter struct.
            const BUSY: usize = 168;
            const RWND: usize = 176;
            let fd = self.fd?;
            let mut info = [0u8; 192];
            let mut len = info.len() as libc::socklen_t;
            // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes at most
            // `len` and sets `len` to what it wrote. `fd` is the connection's open socket.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    info.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if rc != 0 || (len as usize) < RWND + 8 {
                return None;
            }
            let at = |offset: usize| {
                u64::from_ne_bytes(info[offset..offset + 8].try_into().expect("8 bytes"))
            };
            Some(SendTimes {
                busy_us: at(BUSY),
                receiver_us: at(RWND),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_receiver_that_reads_slowly_is_seen_holding_the_sender_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0u8; 64 << 10];
            while socket.read(&mut buffer).await.unwrap() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let probe = SocketProbe::of(&tcp);
        let start = probe.send_times().expect("Linux tells the sender's times");
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..32 {
            tcp.write_all(&chunk).await.unwrap();
        }
        let end = probe.send_times().unwrap();
        let share = end.receiver_share_since(start).unwrap();
        assert!(
            share > 0.5,
            "a reader sleeping between reads holds the sender back most of the time: {share:.2} \
             ({start:?} -> {end:?})"
        );
        drop(tcp);
        reader.await.unwrap();
    }

    #[test]
    fn shares_are_of_the_time_between_two_readings() {
        let a = SendTimes {
            busy_us: 1_000,
            receiver_us: 100,
        };
        let b = SendTimes {
            busy_us: 3_000,
            receiver_us: 1_600,
        };
        assert_eq!(b.receiver_share_since(a), Some(0.75));
        assert_eq!(a.receiver_share_since(a), None, "no time passed");
        assert_eq!(a.receiver_share_since(b), None, "a counter that went back");
    }
}
