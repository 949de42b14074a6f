//! Progress towards each target as a dashboard shows it: the files and bytes done of the plan,
//! the rate (smoothed) and the time left at that rate. Taken in from the engine's `Planned`,
//! `Progress`, `InSync` and `TargetFailed` events; pure, tested with scripted events and times.

use crate::event::Event;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The rate is measured over at least this long (shorter steps are noise).
const RATE_STEP: Duration = Duration::from_millis(200);
/// The weight of the newest measurement in the smoothed rate.
const RATE_WEIGHT: f64 = 0.3;

/// A transfer to one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Progress {
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub files_done: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub files_total: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes_done: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes_total: u64,
    /// Bytes per second, smoothed.
    pub rate: f64,
    /// Seconds left at that rate, once there is one.
    pub eta_seconds: Option<f64>,
}

/// The transfers under way, by target URL.
#[derive(Debug, Default)]
pub struct Tracker {
    targets: HashMap<String, (Instant, Progress)>,
}

impl Tracker {
    /// Takes in one event seen at `at`; returns whether a transfer's progress changed.
    pub fn apply(&mut self, event: &Event, at: Instant) -> bool {
        match event {
            Event::Planned {
                target,
                files,
                bytes,
            } => {
                let progress = Progress {
                    files_total: *files,
                    bytes_total: *bytes,
                    ..Progress::default()
                };
                self.targets.insert(target.clone(), (at, progress));
                true
            }
            Event::Progress {
                target,
                files_done,
                files_total,
                bytes_done,
                bytes_total,
            } => {
                let Some((since, p)) = self.targets.get_mut(target) else {
                    return false;
                };
                let step = at.saturating_duration_since(*since);
                if step >= RATE_STEP {
                    let rate = bytes_done.saturating_sub(p.bytes_done) as f64 / step.as_secs_f64();
                    p.rate = if p.rate == 0.0 {
                        rate
                    } else {
                        (1.0 - RATE_WEIGHT) * p.rate + RATE_WEIGHT * rate
                    };
                    *since = at;
                    p.bytes_done = *bytes_done;
                }
                p.files_done = *files_done;
                p.files_total = *files_total;
                p.bytes_total = *bytes_total;
                let left = bytes_total.saturating_sub(*bytes_done) as f64;
                p.eta_seconds = (p.rate > 0.0).then(|| left / p.rate);
                true
            }
            Event::InSync { target }
            | Event::Verifying { target }
            | Event::TargetFailed { target, .. } => self.targets.remove(target).is_some(),
            _ => false,
        }
    }

    /// Forgets the transfer to `url` (it ended without a last event).
    pub fn forget(&mut self, url: &str) {
        self.targets.remove(url);
    }

    /// The transfer to `url`, while one is under way.
    pub fn get(&self, url: &str) -> Option<&Progress> {
        self.targets.get(url).map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(done: u64) -> Event {
        Event::Progress {
            target: "wss://a".into(),
            files_done: 1,
            files_total: 4,
            bytes_done: done,
            bytes_total: 10_000,
        }
    }

    #[test]
    fn the_rate_and_time_left_follow_the_bytes_done() {
        let start = Instant::now();
        let mut tracker = Tracker::default();
        tracker.apply(
            &Event::Planned {
                target: "wss://a".into(),
                files: 4,
                bytes: 10_000,
            },
            start,
        );
        assert_eq!(tracker.get("wss://a").unwrap().eta_seconds, None);
        tracker.apply(&progress(1_000), start + Duration::from_secs(1));
        let p = tracker.get("wss://a").unwrap();
        assert_eq!(p.rate, 1_000.0);
        assert_eq!(p.eta_seconds, Some(9.0));
        // A step shorter than RATE_STEP counts the files but leaves the rate.
        tracker.apply(&progress(1_050), start + Duration::from_millis(1_050));
        assert_eq!(tracker.get("wss://a").unwrap().rate, 1_000.0);
        tracker.apply(&progress(4_000), start + Duration::from_secs(2));
        let p = tracker.get("wss://a").unwrap();
        assert!(p.rate > 1_000.0 && p.rate < 3_000.0, "smoothed: {}", p.rate);
        assert_eq!(p.bytes_done, 4_000);
        tracker.apply(
            &Event::InSync {
                target: "wss://a".into(),
            },
            start + Duration::from_secs(3),
        );
        assert!(tracker.get("wss://a").is_none(), "done: no transfer");
    }

    #[test]
    fn progress_of_an_unplanned_target_is_ignored() {
        let mut tracker = Tracker::default();
        assert!(!tracker.apply(&progress(10), Instant::now()));
        assert!(tracker.get("wss://a").is_none());
    }
}
