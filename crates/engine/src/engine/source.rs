//! Reading the source: the low-priority hashing pool, the scan recorded in the index, the
//! consistent copies of its databases, and what a scan tells listeners.

use super::*;

/// Threads that may hash at once: the trading platform keeps the other cores.
const HASH_THREADS: usize = 2;
static HASHING: Semaphore = Semaphore::const_new(HASH_THREADS);

/// Runs `work` (scanning, hashing) on a thread of the lowest priority (nice 19 on Unix, the
/// lowest thread priority on Windows), at most [`HASH_THREADS`] at once, so the trading
/// platform on the same machine always comes first.
pub(super) async fn low_priority<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| EngineError::Setup(e.to_string()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rainmaker-hash".into())
        .spawn(move || {
            if let Err(e) =
                thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
            {
                tracing::debug!("cannot lower the hashing thread's priority: {e:?}");
            }
            let _ = tx.send(work());
        })
        .map_err(|e| EngineError::Setup(format!("cannot start a hashing thread: {e}")))?;
    rx.await
        .map_err(|_| EngineError::Setup("the hashing thread failed".into()))
}

/// Scans the source and records what changed in its index. `distrust` names files whose
/// records failed a proof: they are read whole, whatever `growth` says.
pub(super) fn scan_source(
    source: &Path,
    exclude: &crate::exclude::Exclude,
    index: &Index,
    growth: scan::Growth,
    distrust: &[String],
    databases: &Snapshots,
) -> Result<scan::Scan, EngineError> {
    let previous = scan::Previous::index(index.file_cursor()?, distrust);
    let mut scanned = scan::scan_excluding(source, previous, exclude, growth, Some(databases))
        .map_err(|e| EngineError::Source {
            path: e.path,
            reason: e.reason,
        })?;
    // Lazily durable: after a crash the index falls back to an older state, whose records
    // still hold wherever the quick check accepts them; the rest is hashed again. An fsync
    // here would wait for every dirty page of the file system (ext4 orders data before
    // metadata), which is what a push of an unchanged folder must not do.
    scanned.apply_to(index, Durability::None)?;
    databases.retain(|path| scanned.databases.contains(path));
    if let Some(copied) = &scanned.copied {
        tracing::debug!(
            longest_step = ?copied.longest_step,
            steps = copied.steps,
            restarts = copied.restarts,
            bytes = copied.bytes,
            "databases copied"
        );
    }
    Ok(scanned)
}

/// Scans only `region` of the source (the paths a change feed named) against `tree`, the
/// whole tree of the last scan, and records what changed in the index; the scan's tree is
/// whole. Returns the region as scanned ([`scan::scan_region`] widens it).
pub(super) fn rescan_source(
    source: &Path,
    exclude: &crate::exclude::Exclude,
    index: &Index,
    growth: scan::Growth,
    databases: &Snapshots,
    tree: &Tree,
    region: &scan::Region,
) -> Result<(scan::Scan, scan::Region), EngineError> {
    let (mut scanned, region) = scan::scan_region(
        source,
        tree.clone(),
        region,
        exclude,
        growth,
        Some(databases),
    )
    .map_err(|e| EngineError::Source {
        path: e.path,
        reason: e.reason,
    })?;
    scanned.apply_to(index, Durability::None)?;
    databases.retain(|path| !region.covers(path) || scanned.databases.contains(path));
    Ok((scanned, region))
}

/// Files no larger than this that failed on a target are read through a stable copy from
/// then on: a file that keeps changing fails its check on every target otherwise.
const COPY_FAILED_UP_TO: u64 = 64 << 20;

/// Marks the files that failed on a target in `outcome` to be read through stable copies.
pub(super) fn read_failed_through_copies(
    databases: &Snapshots,
    tree: &Tree,
    outcome: &send::Outcome,
) {
    databases.mark_unstable(outcome.failed.iter().filter_map(|(path, _)| {
        tree.files
            .get(path)
            .filter(|r| r.stamp.size <= COPY_FAILED_UP_TO)
            .map(|_| path.clone())
    }));
}

/// The consistent copies of a source's databases, kept in its state folder.
pub(super) fn snapshots(state_dir: &Path) -> Result<Snapshots, EngineError> {
    let dir = state_dir.join("snapshots");
    Snapshots::new(dir.clone()).map_err(|e| {
        EngineError::Setup(format!(
            "cannot create {} for the copies of live databases: {e}",
            dir.display()
        ))
    })
}

/// Tells listeners what a scan of the source found (the tree's digest, skipped paths);
/// returns the digest.
pub(super) fn announce_scan(scanned: &scan::Scan, events: &broadcast::Sender<Event>) -> Hash {
    let digest = plan::digest(&scanned.tree);
    let _ = events.send(Event::Scanned {
        files: scanned.tree.files.len() as u64,
        files_hashed: scanned.files_hashed,
        bytes_hashed: scanned.bytes_hashed,
        digest: hex::encode(digest),
    });
    for problem in &scanned.problems {
        let _ = events.send(Event::Skipped {
            path: problem.path.clone(),
            reason: problem.reason.clone(),
        });
    }
    digest
}
