//! A bandwidth cap for RainMaker's own traffic: one token bucket shared by every target of a
//! push, so that however many backups there are, sync never takes more than the cap from the
//! trading PC's connection.
//!
//! Rates are written as people write them: `50Mbit`, `2.5MB`, `800KiB`, `10mbps` (bits or
//! bytes per second; SI or binary prefixes).

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A rate in bytes per second.
pub type BytesPerSecond = f64;

/// Parses a rate: a number with a unit of bits (`bit`, `b`, `bps`) or bytes (`B`), with an
/// optional SI (`k`, `M`, `G`) or binary (`Ki`, `Mi`, `Gi`) prefix, per second.
pub fn parse_rate(text: &str) -> Result<BytesPerSecond, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate; write it like 50Mbit, 2MB or 800KiB"))?;
    let unit = unit.trim().trim_end_matches("/s").trim_end_matches("ps");
    let (multiplier, rest) = match unit {
        u if u.starts_with("Ki") || u.starts_with("ki") => (1024.0, &u[2..]),
        u if u.starts_with("Mi") => (1024.0 * 1024.0, &u[2..]),
        u if u.starts_with("Gi") => (1024.0 * 1024.0 * 1024.0, &u[2..]),
        u if u.starts_with('k') || u.starts_with('K') => (1e3, &u[1..]),
        u if u.starts_with('M') || u.starts_with('m') => (1e6, &u[1..]),
        u if u.starts_with('G') || u.starts_with('g') => (1e9, &u[1..]),
        u => (1.0, u),
    };
    let per_unit = match rest {
        "B" | "byte" | "bytes" | "" => 1.0,
        "b" | "bit" | "bits" => 1.0 / 8.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use bit (b) or byte (B), e.g. 50Mbit or 2MB"
            ));
        }
    };
    let rate = value * multiplier * per_unit;
    if !(rate.is_finite() && rate >= 1.0) {
        return Err(format!(
            "{text:?} is not a usable rate (at least 1 byte per second)"
        ));
    }
    Ok(rate)
}

/// A token bucket: `take(n)` waits until `n` bytes may go.
#[derive(Debug)]
pub struct RateLimit {
    rate: BytesPerSecond,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A bucket of `rate` bytes per second holding at most a tenth of a second's worth (or one
    /// message, whichever is larger), so the measured rate stays close to the cap.
    pub fn new(rate: BytesPerSecond) -> RateLimit {
        let burst = (rate / 10.0).max(256.0 * 1024.0);
        RateLimit {
            rate,
            burst,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    pub fn rate(&self) -> BytesPerSecond {
        self.rate
    }

    /// Waits until `bytes` may be sent, then takes them from the bucket.
    pub async fn take(&self, bytes: usize) {
        let mut state = self.state.lock().await;
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens < 0.0 {
            // Holding the lock while waiting keeps the targets in line behind each other.
            let wait = Duration::from_secs_f64(-*tokens / self.rate);
            tokio::time::sleep(wait).await;
            *tokens = 0.0;
            *last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_people_write_them() {
        assert_eq!(parse_rate("50Mbit").unwrap(), 50e6 / 8.0);
        assert_eq!(parse_rate("2MB").unwrap(), 2e6);
        assert_eq!(parse_rate("800KiB").unwrap(), 800.0 * 1024.0);
        assert_eq!(parse_rate("10mbps").unwrap(), 10e6 / 8.0);
        assert_eq!(parse_rate("1.5 MB/s").unwrap(), 1.5e6);
        assert_eq!(parse_rate("4096").unwrap(), 4096.0);
        for bad in ["fast", "10 furlongs", "0MB", "-5MB", ""] {
            assert!(parse_rate(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_holds_the_rate() {
        let limit = RateLimit::new(1_000_000.0);
        let started = tokio::time::Instant::now();
        for _ in 0..50 {
            limit.take(100_000).await;
        }
        let took = started.elapsed().as_secs_f64();
        // 5 MB at 1 MB/s, less the first burst of at most 256 KiB.
        assert!(took > 4.6 && took < 5.1, "5 MB at 1 MB/s took {took} s");
    }
}
