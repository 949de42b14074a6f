//! The proof of what a scan took on trust.
//!
//! To reach the targets within milliseconds, a continuous scan reads only the grown end of a
//! file that grew ([`crate::scan::Growth::Defer`]); the blocks before it are taken from the
//! index, unread. The prover reads them afterwards, at the lowest priority and paced so it
//! uses a small share of one core, and publishes the generation of each snapshot it proved.
//! A target that received an unproven snapshot is "verifying" until then. A block that no
//! longer matches (a file edited in its middle and grown between two scans) sends the file
//! back to the scanner, to be hashed in full, and the difference goes out with the next sync.
//!
//! A one-off push takes the same shortcut and proves while it sends ([`prove_while_sending`]):
//! its sessions hold their `Finish` until the proof, so a target commits nothing resting on
//! blocks that were not read, and a failed proof ends them for another pass.

use super::continuous::Snapshot;
use super::low_priority;
use crate::index::{Change, Durability, Index};
use crate::scan::{self, Tree, Unproven};
use std::path::{Path, PathBuf};
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
            let stop = self.cancel.clone();
            let proving = move || failures(&source, &checked.tree, &checked.unproven, 1, &stop);
            let failed = match low_priority(proving).await {
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

/// The files of `unproven` whose blocks in `tree` no longer match the disk (or cannot be read),
/// proved on up to `workers` threads. Once `stop` fires, the files not yet read count as failed.
fn failures(
    source: &Path,
    tree: &Tree,
    unproven: &[Unproven],
    workers: usize,
    stop: &CancellationToken,
) -> Vec<String> {
    let proven = scan::in_parallel(unproven, workers, |unproven| {
        !stop.is_cancelled()
            && tree.files.get(&unproven.path).is_none_or(|record| {
                let proof = scan::prove(&source.join(&unproven.path), record, unproven.blocks);
                matches!(proof, Ok(true))
            })
    });
    unproven
        .iter()
        .zip(proven)
        .filter(|(_, proven)| !proven)
        .map(|(unproven, _)| unproven.path.clone())
        .collect()
}

/// Threads a one-off push proves on: a push waits for its proof before it reports.
const PUSH_PROOF_WORKERS: usize = 2;

/// Proves the `unproven` files of a one-off push's `tree` while its sessions send, and tells
/// them on `verdict` (they hold their `Finish` until then). Returns the files whose proof
/// failed, to be read whole in another pass. The records proven lose the mark that kept them
/// out of the quick check, in `index` too: the next push trusts them without reading them.
/// Once `stop` fires, it ends after the files it is reading, and lets go of the index.
pub(super) async fn prove_while_sending(
    source: PathBuf,
    tree: Arc<Tree>,
    unproven: Vec<Unproven>,
    index: Arc<Index>,
    verdict: latest::Sender<crate::mirror::send::ProofVerdict>,
    stop: CancellationToken,
) -> Vec<String> {
    let started = Instant::now();
    let paths: Vec<String> = unproven.iter().map(|u| u.path.clone()).collect();
    let proving = move || {
        let failed = failures(&source, &tree, &unproven, PUSH_PROOF_WORKERS, &stop);
        if !stop.is_cancelled() {
            settle(&index, &tree, &unproven, &failed);
        }
        failed
    };
    let failed = low_priority(proving).await.unwrap_or_else(|e| {
        tracing::warn!("cannot prove the grown files: {e}");
        paths.clone()
    });
    tracing::debug!(files = paths.len(), took = ?started.elapsed(), failed = failed.len(), "grown files proved");
    let _ = verdict.send(Some(match failed.first() {
        None => Ok(()),
        Some(first) => {
            tracing::info!(files = ?failed, "changed before their grown end as well; hashing them in full");
            Err(format!(
                "{} of the {} grown files changed before their grown end, or could not be read \
                 again to prove it (first: {first}); they are read whole in another pass",
                failed.len(),
                paths.len()
            ))
        }
    }));
    failed
}

/// Clears the `racy` mark of the proven records of `unproven` in `index` (those written in
/// the racy window before they were read keep it).
fn settle(index: &Index, tree: &Tree, unproven: &[Unproven], failed: &[String]) {
    let changes: Vec<Change> = unproven
        .iter()
        .filter(|u| !u.recent && !failed.contains(&u.path))
        .filter_map(|u| {
            let record = tree.files.get(&u.path).filter(|r| r.hash == u.hash)?;
            let mut record = record.clone();
            record.racy = false;
            Some(Change::PutFile(u.path.clone(), record))
        })
        .collect();
    if changes.is_empty() {
        return;
    }
    if let Err(e) = index.apply(&changes, Durability::None) {
        tracing::warn!("cannot record the proven files in the index: {e}");
    }
}
