//! When the continuous loop scans: a change the file system reported (after a short debounce,
//! so a burst of writes is one scan), the interval (at once on start, then every `every`), the
//! Sync now button, a live database due to be copied again, or a machine that woke from
//! sleep. Kept apart from the scan so that its timing is tested with tokio's paused clock.

use crate::schedule::SleepDetector;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Wait after a change before scanning, so a burst of writes is one scan.
pub(super) const DEBOUNCE: Duration = Duration::from_millis(5);

/// Why a scan is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The file system reported a change (a burst counts once).
    Change,
    /// The interval came round (the first is at once).
    Tick,
    /// The Sync now button.
    Asked,
    /// A live database changed too soon after its last copy, and its next copy is due.
    CopyDue,
    /// The machine woke from sleep.
    Woke,
}

/// The reasons to scan, merged.
pub(super) struct Triggers {
    changes: mpsc::Receiver<()>,
    sync_now: Option<Arc<Notify>>,
    ticker: Interval,
    clock: Interval,
    sleep: SleepDetector,
    copy_due: Option<Instant>,
}

impl Triggers {
    /// Scans on `changes`, every `every`, and when `sync_now` is notified.
    pub(super) fn new(
        changes: mpsc::Receiver<()>,
        every: Duration,
        sync_now: Option<Arc<Notify>>,
    ) -> Triggers {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Triggers {
            changes,
            sync_now,
            ticker,
            clock: tokio::time::interval(Duration::from_secs(1)),
            sleep: SleepDetector::new(Duration::from_secs(5)),
            copy_due: None,
        }
    }

    /// Asks for a scan `wait` from now (the earliest of such asks wins).
    pub(super) fn copy_again_in(&mut self, wait: Duration) {
        let due = Instant::now() + wait;
        self.copy_due = Some(self.copy_due.map_or(due, |d| d.min(due)));
    }

    /// Waits for the next reason to scan; `None` once `cancel` fires.
    pub(super) async fn next(&mut self, cancel: &CancellationToken) -> Option<Why> {
        loop {
            let asked = async {
                match &self.sync_now {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            let copy_due = self.copy_due;
            let due = async move {
                match copy_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = asked => return Some(Why::Asked),
                _ = self.changes.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while self.changes.try_recv().is_ok() {}
                    return Some(Why::Change);
                }
                _ = self.ticker.tick() => return Some(Why::Tick),
                () = due => {
                    self.copy_due = None;
                    return Some(Why::CopyDue);
                }
                _ = self.clock.tick() => {
                    if self.sleep.check() {
                        return Some(Why::Woke);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triggers(every: Duration) -> (mpsc::Sender<()>, Arc<Notify>, Triggers) {
        let (tx, rx) = mpsc::channel(1);
        let notify = Arc::new(Notify::new());
        (tx, notify.clone(), Triggers::new(rx, every, Some(notify)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_scan_is_at_once_then_one_every_interval() {
        let (_tx, _notify, mut t) = triggers(Duration::from_secs(300));
        let cancel = CancellationToken::new();
        let start = Instant::now();
        assert_eq!(t.next(&cancel).await, Some(Why::Tick));
        assert_eq!(start.elapsed(), Duration::ZERO, "the first scan is at once");
        assert_eq!(t.next(&cancel).await, Some(Why::Tick));
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        assert_eq!(t.next(&cancel).await, Some(Why::Tick));
        assert_eq!(start.elapsed(), Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_scan_after_the_debounce() {
        let (tx, _notify, mut t) = triggers(Duration::from_secs(300));
        let cancel = CancellationToken::new();
        assert_eq!(t.next(&cancel).await, Some(Why::Tick));
        let start = Instant::now();
        // Four writes 1 ms apart: all within the debounce after the first.
        let burst = tokio::spawn(async move {
            for _ in 0..4 {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx
        });
        assert_eq!(t.next(&cancel).await, Some(Why::Change));
        assert!(start.elapsed() >= DEBOUNCE, "{:?}", start.elapsed());
        let tx = burst.await.unwrap();
        // The burst's writes during the debounce were taken with it: the next reason is the
        // interval, not another scan for the same burst.
        assert_eq!(t.next(&cancel).await, Some(Why::Tick));
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        // A change after the debounce is a scan of its own.
        tx.try_send(()).unwrap();
        assert_eq!(t.next(&cancel).await, Some(Why::Change));
    }

    #[tokio::test(start_paused = true)]
    async fn sync_now_and_a_due_copy_scan_without_waiting_for_the_interval() {
        let (_tx, notify, mut t) = triggers(Duration::from_secs(300));
        let cancel = CancellationToken::new();
        assert_eq!(t.next(&cancel).await, Some(Why::Tick));
        let start = Instant::now();
        notify.notify_one();
        assert_eq!(t.next(&cancel).await, Some(Why::Asked));
        assert_eq!(start.elapsed(), Duration::ZERO);
        t.copy_again_in(Duration::from_secs(2));
        t.copy_again_in(Duration::from_secs(1));
        assert_eq!(t.next(&cancel).await, Some(Why::CopyDue));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "the earliest ask wins"
        );
        assert_eq!(
            t.next(&cancel).await,
            Some(Why::Tick),
            "asked once, scanned once"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        cancel.cancel();
        assert_eq!(t.next(&cancel).await, None);
    }
}
