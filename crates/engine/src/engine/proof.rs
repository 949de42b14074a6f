//! The proof of what continuous mode took on trust.
//!
//! To reach the targets within milliseconds, a continuous scan reads only the grown end of a
//! file that grew ([`crate::scan::Growth::Defer`]); the blocks before it are taken from the
//! index, unread. The prover reads them afterwards, at the lowest priority and paced so it
//! uses a small share of one core, and publishes the generation of each snapshot it proved.
//! A target that received an unproven snapshot is "verifying" until then. A block that no
//! longer matches (a file edited in its middle and grown between two scans) sends the file
//! back to the scanner, to be hashed in full, and the difference goes out with the next sync.

use super::continuous::Snapshot;
use super::low_priority;
use crate::scan;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch as latest};
use tokio_util::sync::CancellationToken;

/// The least time between two proofs.
const MIN_GAP: Duration = Duration::from_millis(500);
/// After a proof that took `t`, the prover rests `REST * t`, so it uses at most about a tenth
/// of a core while a file keeps growing.
const REST: u32 = 9;

/// Proves the unproven blocks of each newest snapshot until `cancel` fires.
#[derive(Debug)]
pub(super) struct Prover {
    pub source: PathBuf,
    pub snapshots: latest::Receiver<Option<Arc<Snapshot>>>,
    /// The newest generation whose every record is proven.
    pub proven: latest::Sender<u64>,
    /// Files whose proof failed, for the scanner to read whole.
    pub distrust: Arc<Mutex<Vec<String>>>,
    pub rescan: mpsc::Sender<()>,
    pub cancel: CancellationToken,
}

impl Prover {
    pub async fn run(mut self) {
        let mut tried = 0;
        loop {
            let wanted = self.snapshots.wait_for(|s| {
                s.as_ref()
                    .is_some_and(|s| !s.unproven.is_empty() && s.generation > tried)
            });
            let snapshot = tokio::select! {
                () = self.cancel.cancelled() => return,
                s = wanted => match s {
                    Ok(s) => s.clone().expect("waited for a snapshot"),
                    Err(_) => return,
                },
            };
            tried = snapshot.generation;
            let started = Instant::now();
            let (source, checked) = (self.source.clone(), snapshot.clone());
            let failed = match low_priority(move || failures(&source, &checked)).await {
                Ok(failed) => failed,
                Err(e) => {
                    tracing::warn!("cannot prove the grown files: {e}");
                    continue;
                }
            };
            let took = started.elapsed();
            if failed.is_empty() {
                tracing::debug!(
                    generation = snapshot.generation,
                    ?took,
                    "grown files proven"
                );
                self.proven.send_if_modified(|proven| {
                    let newer = *proven < snapshot.generation;
                    *proven = (*proven).max(snapshot.generation);
                    newer
                });
            } else {
                tracing::info!(
                    files = ?failed,
                    "changed before their grown end as well; hashing them in full"
                );
                self.distrust
                    .lock()
                    .expect("the distrust list is never poisoned")
                    .extend(failed);
                let _ = self.rescan.try_send(());
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(MIN_GAP.max(took * REST)) => {}
            }
        }
    }
}

/// The unproven files of `snapshot` whose blocks no longer match (or cannot be read).
fn failures(source: &std::path::Path, snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .unproven
        .iter()
        .filter(|unproven| {
            let Some(record) = snapshot.tree.files.get(&unproven.path) else {
                return false;
            };
            let proven = scan::prove(&source.join(&unproven.path), record, unproven.blocks);
            !matches!(proven, Ok(true))
        })
        .map(|unproven| unproven.path.clone())
        .collect()
}
