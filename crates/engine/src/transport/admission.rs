//! Who may start a handshake, and how the agent's log hears of those turned away: the limits
//! that keep a target reachable for its sources and its admin while strangers knock.
//!
//! Before a peer has shown a token, it gets little: a slot among [`Limits::handshakes`] (at
//! most [`Limits::handshakes_per_address`] per address, an IPv6 /64 counting as one address),
//! [`Limits::handshake`] to finish TLS, the WebSocket upgrade and its hello, and
//! [`Limits::pre_auth_bytes`] of input. An address that sent more than
//! [`Limits::free_failures`] wrong tokens waits out a doubling backoff
//! ([`Limits::backoff_first`] up to [`Limits::backoff_max`]) before its next token is even
//! compared, so guessing a token costs time. After authentication a peer that
//! sends nothing, not even the answer to a ping, for [`Limits::idle`] is dropped, so a frozen
//! source never holds the folder.
//!
//! Everything here is plain bookkeeping over addresses and instants, tested with paused tokio
//! time; the listener and the handshake in [`super`] call it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// The limits of a listening agent. [`Limits::default`] is what the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections that have not authenticated yet, from everyone together.
    pub handshakes: usize,
    /// Connections that have not authenticated yet, from one address.
    pub handshakes_per_address: usize,
    /// How long TLS, the WebSocket upgrade and the hello may take together.
    pub handshake: Duration,
    /// Bytes a peer may send before its token was accepted (TLS, upgrade request, hello).
    pub pre_auth_bytes: usize,
    /// Wrong tokens an address may send before it has to wait (typos, a source set up with
    /// the wrong file); the count starts again after a right token.
    pub free_failures: u32,
    /// How long an address waits after its first wrong token past the free ones; doubled at
    /// each further one.
    pub backoff_first: Duration,
    /// The longest wait after wrong tokens.
    pub backoff_max: Duration,
    /// An authenticated peer that sends nothing for this long is dropped.
    pub idle: Duration,
    /// How often the agent pings an authenticated peer (so a live but quiet peer answers).
    pub ping_every: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshakes: 64,
            handshakes_per_address: 8,
            handshake: Duration::from_secs(5),
            pre_auth_bytes: 64 * 1024,
            free_failures: 3,
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            ping_every: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// These limits with another idle limit, pinging three times within it.
    pub fn with_idle(self, idle: Duration) -> Limits {
        Limits {
            idle,
            ping_every: idle / 3,
            ..self
        }
    }
}

/// Addresses remembered for their wrong tokens, at most; the oldest is forgotten first.
const MAX_REMEMBERED: usize = 4096;
/// An address whose last wrong token is this much older than its backoff is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Log lines about turned-away peers per [`LOG_WINDOW`], at most.
const LOG_LINES: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Why a connection was turned away before its handshake started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turned {
    /// Every handshake slot is taken.
    Busy,
    /// This address has its share of the slots already.
    PerAddress,
}

impl std::fmt::Display for Turned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Turned::Busy => "every handshake slot is taken",
            Turned::PerAddress => "this address has too many unauthenticated connections open",
        })
    }
}

/// The bookkeeping of one listener.
#[derive(Debug)]
pub(super) struct Admission {
    pub(super) limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    pending: HashMap<IpAddr, usize>,
    failures: HashMap<IpAddr, Failures>,
    log: LogLimit,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// A handshake slot; dropping it gives the slot back.
#[derive(Debug)]
pub(super) struct Permit {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.admission.state();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.pending.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.pending.remove(&self.key);
            }
        }
    }
}

/// The address a limit applies to: an IPv4 address (also when mapped into IPv6), or the /64
/// network of an IPv6 address (one machine commonly holds a whole /64).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl Admission {
    pub(super) fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake slot for a connection from `ip`, or why there is none.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Turned> {
        let key = key(ip);
        let mut state = self.state();
        if state.total >= self.limits.handshakes {
            return Err(Turned::Busy);
        }
        let pending = state.pending.entry(key).or_insert(0);
        if *pending >= self.limits.handshakes_per_address {
            return Err(Turned::PerAddress);
        }
        *pending += 1;
        state.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            key,
        })
    }

    /// How long `ip` must still wait before its token is compared, if it must.
    pub(super) fn backoff(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let state = self.state();
        let failures = state.failures.get(&key(ip))?;
        let until = failures.last + self.delay(failures.count);
        (now < until).then(|| until - now)
    }

    /// The wait after `count` wrong tokens in a row.
    fn delay(&self, count: u32) -> Duration {
        let Some(past_free) = count.checked_sub(self.limits.free_failures + 1) else {
            return Duration::ZERO;
        };
        let doublings = past_free.min(20);
        self.limits
            .backoff_first
            .saturating_mul(1 << doublings)
            .min(self.limits.backoff_max)
    }

    /// `ip` sent a wrong token at `now`; returns how long it now waits.
    pub(super) fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut state = self.state();
        if state.failures.len() >= MAX_REMEMBERED {
            let forget = self.limits.backoff_max + FORGET_AFTER;
            state
                .failures
                .retain(|_, f| now.saturating_duration_since(f.last) < forget);
            if state.failures.len() >= MAX_REMEMBERED
                && let Some(oldest) = state
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(ip, _)| *ip)
            {
                state.failures.remove(&oldest);
            }
        }
        let entry = state.failures.entry(key(ip)).or_insert(Failures {
            count: 0,
            last: now,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let count = entry.count;
        drop(state);
        self.delay(count)
    }

    /// `ip` showed a right token: its wrong ones are forgotten.
    pub(super) fn succeeded(&self, ip: IpAddr) {
        self.state().failures.remove(&key(ip));
    }

    /// Whether a line about a turned-away peer may be logged at `now`; when it may, also how
    /// many were left out since the last one logged.
    pub(super) fn may_log(&self, now: Instant) -> Option<u64> {
        self.state().log.allow(now)
    }
}

/// At most [`LOG_LINES`] lines per [`LOG_WINDOW`]; the lines left out are counted and told
/// with the next line logged.
#[derive(Debug, Default)]
struct LogLimit {
    window: Option<Instant>,
    lines: u32,
    left_out: u64,
}

impl LogLimit {
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.window {
            Some(start) if now.saturating_duration_since(start) < LOG_WINDOW => {}
            _ => {
                self.window = Some(now);
                self.lines = 0;
            }
        }
        if self.lines >= LOG_LINES {
            self.left_out += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> Arc<Admission> {
        Admission::new(Limits {
            handshakes: 3,
            handshakes_per_address: 2,
            ..Limits::default()
        })
    }

    #[test]
    fn slots_are_capped_in_all_and_per_address_and_given_back() {
        let admission = small();
        let a1 = admission.admit(ip("10.0.0.1")).unwrap();
        let _a2 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).unwrap_err(),
            Turned::PerAddress,
            "one address cannot take every slot"
        );
        let _b = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.3")).unwrap_err(),
            Turned::Busy,
            "the slots are bounded in all"
        );
        drop(a1);
        admission
            .admit(ip("10.0.0.1"))
            .expect("a slot given back can be taken again");
    }

    #[test]
    fn an_ipv6_network_counts_as_one_address() {
        let admission = small();
        let _a = admission.admit(ip("2001:db8::1")).unwrap();
        let _b = admission.admit(ip("2001:db8::ffff:2")).unwrap();
        assert_eq!(
            admission.admit(ip("2001:db8::3:4:5:6")).unwrap_err(),
            Turned::PerAddress,
            "addresses of one /64 share the per-address cap"
        );
        assert_eq!(key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_tokens_double_the_wait_up_to_the_cap_and_a_right_one_clears_it() {
        let admission = Admission::new(Limits::default());
        let guesser = ip("192.0.2.7");
        assert_eq!(admission.backoff(guesser, Instant::now()), None);
        for _ in 0..Limits::default().free_failures {
            assert_eq!(admission.failed(guesser, Instant::now()), Duration::ZERO);
            assert_eq!(
                admission.backoff(guesser, Instant::now()),
                None,
                "a typo or two costs nothing"
            );
        }
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = admission.failed(guesser, Instant::now());
            assert_eq!(
                admission.backoff(guesser, Instant::now()),
                Some(wait),
                "right after a wrong token the address waits"
            );
            assert_eq!(
                admission.backoff(ip("192.0.2.8"), Instant::now()),
                None,
                "another address does not wait"
            );
            tokio::time::advance(wait).await;
            assert_eq!(admission.backoff(guesser, Instant::now()), None);
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // 8 guesses took over three minutes instead of milliseconds.
        admission.failed(guesser, Instant::now());
        admission.succeeded(guesser);
        assert_eq!(admission.backoff(guesser, Instant::now()), None);
        assert_eq!(
            admission.failed(guesser, Instant::now()),
            Duration::ZERO,
            "a right token starts the count again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_addresses_are_bounded() {
        let admission = Admission::new(Limits::default());
        for i in 0..(MAX_REMEMBERED as u32 + 100) {
            admission.failed(IpAddr::from(i.to_be_bytes()), Instant::now());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(admission.state().failures.len() <= MAX_REMEMBERED);
        let newest = IpAddr::from((MAX_REMEMBERED as u32 + 99).to_be_bytes());
        assert!(
            admission.state().failures.contains_key(&newest),
            "the newest guesser is the one remembered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn log_lines_are_rate_limited_and_the_rest_counted() {
        let admission = Admission::new(Limits::default());
        let logged = (0..500)
            .filter(|_| admission.may_log(Instant::now()).is_some())
            .count();
        assert_eq!(logged, LOG_LINES as usize, "a flood writes a few lines");
        tokio::time::advance(LOG_WINDOW).await;
        assert_eq!(
            admission.may_log(Instant::now()),
            Some(500 - u64::from(LOG_LINES)),
            "the next line tells how many were left out"
        );
        assert_eq!(admission.may_log(Instant::now()), Some(0));
    }
}
