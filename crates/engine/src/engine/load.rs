//! How busy a target's session worker is: the share of the time it works on what arrived
//! rather than waits for the next message, told to the source now and then (`Message::Load`)
//! so that it does not compress harder for a target that cannot take more anyway.

use std::time::{Duration, Instant};

/// How often the target tells.
pub(super) const EVERY: Duration = Duration::from_millis(100);

/// The worker's time since the last report.
#[derive(Debug)]
pub(super) struct Load {
    since: Instant,
    waited: Duration,
}

impl Load {
    pub(super) fn new(now: Instant) -> Load {
        Load {
            since: now,
            waited: Duration::ZERO,
        }
    }

    /// The worker waited `waited` for its next message.
    pub(super) fn waited(&mut self, waited: Duration) {
        self.waited += waited;
    }

    /// Starts over, without a report (between transfers: a wait for the source's next sync
    /// says nothing about this target's speed).
    pub(super) fn restart(&mut self, now: Instant) {
        *self = Load::new(now);
    }

    /// Once [`EVERY`] has passed: the share of the time the worker was busy, in thousandths,
    /// and the count starts over.
    pub(super) fn report(&mut self, now: Instant) -> Option<u16> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < EVERY {
            return None;
        }
        let busy = 1.0 - (self.waited.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
        *self = Load::new(now);
        Some((busy * 1000.0).round() as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_time_not_spent_waiting_is_reported_every_interval() {
        let start = Instant::now();
        let mut load = Load::new(start);
        load.waited(Duration::from_millis(30));
        assert_eq!(load.report(start + Duration::from_millis(50)), None);
        load.waited(Duration::from_millis(10));
        assert_eq!(
            load.report(start + Duration::from_millis(160)),
            Some(750),
            "40 ms of waiting in 160 ms"
        );
        load.waited(Duration::from_millis(500));
        assert_eq!(
            load.report(start + Duration::from_millis(300)),
            Some(0),
            "a wait that began before the interval counts as all of it"
        );
        load.restart(start + Duration::from_millis(400));
        assert_eq!(load.report(start + Duration::from_millis(450)), None);
        assert_eq!(load.report(start + Duration::from_millis(500)), Some(1000));
    }
}
