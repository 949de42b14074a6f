//! When to sync: the policy pieces of the continuous and interval modes, kept apart from the
//! loop that runs them so they can be tested with paused time and scripted inputs.
//!
//! - [`Backoff`]: capped exponential backoff with jitter for reconnecting to a target, capped
//!   low enough that a target coming back is caught up within seconds.
//! - [`interval_warning`]: the brief's advice that a schedule below five minutes needs a
//!   machine with memory to spare and syncs that keep up.
//! - [`SleepDetector`]: notices that the machine slept (the wall clock jumped ahead of the
//!   monotonic clock), so a resumed source syncs at once.

use rand::Rng;
use std::time::{Duration, Instant, SystemTime};

/// The interval the brief recommends, and the default of `--every`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The memory a machine needs before a shorter interval is reasonable.
pub const SHORT_INTERVAL_MEMORY: u64 = 4 << 30;

/// Capped exponential backoff with jitter: each delay is drawn between half and all of
/// `base * 2^attempt`, never above `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The backoff used between attempts to reach a target: 0.25 s doubling to 2 s, so a
    /// target that comes back is caught up within about two seconds.
    pub fn for_targets() -> Backoff {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(2))
    }

    /// The next delay.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        half + full.mul_f64(rng.random_range(0.0..=0.5))
    }

    /// Starts again from the base delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How long a recent sync took, for [`interval_warning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTiming {
    pub took: Duration,
}

/// Why an interval shorter than five minutes is not advised here, or `None` when it is fine.
/// A short interval is fine on a machine with at least 4 GiB of memory whose recent syncs
/// each finished well inside the interval (in under half of it).
pub fn interval_warning(
    interval: Duration,
    total_memory: u64,
    recent: &[SyncTiming],
) -> Option<String> {
    if interval >= DEFAULT_INTERVAL {
        return None;
    }
    let shown = humanize(interval);
    if total_memory < SHORT_INTERVAL_MEMORY {
        return Some(format!(
            "syncing every {shown} is below the recommended 5 minutes, and this machine has {:.1} GiB of memory (4 GiB or more is advised for short intervals)",
            total_memory as f64 / (1u64 << 30) as f64
        ));
    }
    if let Some(slow) = recent.iter().find(|t| t.took * 2 > interval) {
        return Some(format!(
            "syncing every {shown} is below the recommended 5 minutes, and a recent sync took {:.1} s, more than half the interval",
            slow.took.as_secs_f64()
        ));
    }
    None
}

/// The machine's total memory in bytes (sysinfo).
pub fn total_memory() -> u64 {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.total_memory()
}

/// A duration as people write it: `90s`, `2m`, `1h 30m`.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{} ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Notices a sleep or hibernation of the machine: the wall clock moves on while the
/// monotonic clock stands still.
#[derive(Debug, Clone)]
pub struct SleepDetector {
    wall: SystemTime,
    mono: Instant,
    threshold: Duration,
}

impl SleepDetector {
    pub fn new(threshold: Duration) -> SleepDetector {
        SleepDetector {
            wall: SystemTime::now(),
            mono: Instant::now(),
            threshold,
        }
    }

    /// Checks the clocks now; true once after each sleep longer than the threshold.
    pub fn check(&mut self) -> bool {
        self.check_at(SystemTime::now(), Instant::now())
    }

    /// [`SleepDetector::check`] with given clock readings.
    pub fn check_at(&mut self, wall: SystemTime, mono: Instant) -> bool {
        let wall_passed = wall.duration_since(self.wall).unwrap_or_default();
        let mono_passed = mono.saturating_duration_since(self.mono);
        self.wall = wall;
        self.mono = mono;
        wall_passed > mono_passed + self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(&mut rng)).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(
            delays[3] >= Duration::from_millis(400),
            "it doubles: {delays:?}"
        );
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(1)),
            "never above the cap: {delays:?}"
        );
        assert!(
            delays[7] >= Duration::from_millis(500),
            "jitter stays in the upper half"
        );
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_reconnects() {
        let mut rng = StdRng::seed_from_u64(2);
        let delays: Vec<Duration> = (0..20)
            .map(|_| Backoff::for_targets().next_delay(&mut rng))
            .collect();
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 10,
            "many agents must not reconnect in lockstep"
        );
    }

    #[test]
    fn short_intervals_warn_with_the_failed_condition() {
        let fine = [SyncTiming {
            took: Duration::from_secs(3),
        }];
        assert_eq!(interval_warning(DEFAULT_INTERVAL, 1 << 30, &[]), None);
        let small = interval_warning(Duration::from_secs(60), 2 << 30, &fine).unwrap();
        assert!(small.contains("memory"), "{small}");
        assert_eq!(
            interval_warning(Duration::from_secs(60), 8 << 30, &fine),
            None
        );
        let slow = [SyncTiming {
            took: Duration::from_secs(40),
        }];
        let behind = interval_warning(Duration::from_secs(60), 8 << 30, &slow).unwrap();
        assert!(behind.contains("40.0 s"), "{behind}");
    }

    #[test]
    fn a_sleep_is_seen_once() {
        let mut detector = SleepDetector::new(Duration::from_secs(5));
        let (wall, mono) = (SystemTime::now(), Instant::now());
        assert!(!detector.check_at(wall + Duration::from_secs(1), mono + Duration::from_secs(1)));
        assert!(
            detector.check_at(
                wall + Duration::from_secs(600),
                mono + Duration::from_secs(2)
            ),
            "the wall clock jumped ten minutes while the monotonic clock moved a second"
        );
        assert!(!detector.check_at(
            wall + Duration::from_secs(601),
            mono + Duration::from_secs(3)
        ));
    }
}
