//! A change feed from the file system (notify): every change under the source folder becomes
//! a trigger for a scan.
//!
//! The feed only says *that* something changed; the scan that follows quick-checks the whole
//! folder, so an event that is lost, merged or overflowed can never make a change go unseen.
//! Triggers go into a channel of capacity one: a burst of events while a scan is pending
//! coalesces into that one scan. The watcher's own errors (a watch that was lost, a folder
//! that was unmounted) are logged and also trigger a scan; the continuous loop adds a
//! periodic rescan for watches that fail silently.

use notify::{RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::sync::mpsc;

/// The source folder cannot be watched.
#[derive(Debug, Error)]
#[error("cannot watch {path} for changes: {reason}")]
pub struct WatchError {
    pub path: PathBuf,
    pub reason: String,
}

/// A running watch; dropping it stops it.
#[derive(Debug)]
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `root` recursively; sends a trigger into `triggers` on every change.
pub fn start(root: &Path, triggers: mpsc::Sender<()>) -> Result<Watch, WatchError> {
    let fail = |e: notify::Error| WatchError {
        path: root.to_path_buf(),
        reason: e.to_string(),
    };
    let state = root.join(crate::path::STATE_DIR);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if event.kind.is_access() => return,
            Ok(event)
                if !event.paths.is_empty() && event.paths.iter().all(|p| p.starts_with(&state)) =>
            {
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("file watch: {e}; rescanning"),
        }
        // Full means a scan is already pending, and it will see this change too.
        let _ = triggers.try_send(());
    })
    .map_err(fail)?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(fail)?;
    Ok(Watch { _watcher: watcher })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_triggers_and_a_burst_coalesces() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watch = start(dir.path(), tx).unwrap();
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a write must trigger a scan")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut pending = 0;
        while rx.try_recv().is_ok() {
            pending += 1;
        }
        assert!(
            pending <= 1,
            "fifty writes coalesce into at most one more scan"
        );
    }
}
