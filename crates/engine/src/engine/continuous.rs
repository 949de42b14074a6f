//! Continuous and interval mirroring: one scanner and one loop per target.
//!
//! The scanner rescans the source when something asks for it (a file change from
//! [`crate::watch`], the interval of `--every`, the periodic safety rescan, a machine that
//! woke from sleep, a target that came back) and publishes each scan as a snapshot. Every
//! target runs its own loop: it waits for a snapshot that differs from what it last verified,
//! mirrors it, and on failure retries with capped, jittered backoff. So a target that is down
//! or slow never holds back the others, bursts of changes coalesce into the newest snapshot,
//! and a target that returns is caught up as soon as it answers, not at the next tick.
//!
//! With a change feed, a change is a scan of the paths the feed named, and the safety rescan
//! is a walk in the background ([`crate::scan::audit`]) whose findings are scanned as the feed's
//! are: a large folder's walk never holds back the changes that arrive during it.
//!
//! Scans read only the grown end of a file that grew, so an append reaches the targets at
//! once; the [`super::proof`] task proves the rest in the background, and a target is said
//! to be in sync only once the snapshot it holds is proven ("verifying" until then).

use super::manifest_cache::Kept;
use super::proof::Prover;
use super::trigger::{Triggers, Why};
use super::{
    EngineError, PushOptions, announce_scan, cached_manifest_path, keep_alive_while, low_priority,
    rescan_source, scan_source, session,
};
use crate::event::Event;
use crate::guard::{Gate, GateState, Guard, Sampler, Thresholds, Transition};
use crate::index::Index;
use crate::mirror::send::{BlockSource, SendError};
use crate::protocol::Hash;
use crate::scan::{Growth, Region, Tree, Unproven};
use crate::schedule::Backoff;
use crate::transport::WIRE_TOTAL;
use crate::watch;
use rand::SeedableRng;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch as latest};
use tokio_util::sync::CancellationToken;

/// A target's kept manifest is written at most this often in continuous mode (the target
/// loop holds the last one in memory; the file serves the next run).
const KEEP_MANIFEST_EVERY: Duration = Duration::from_secs(60);

/// A live database is copied at most this often; its targets lag it by about this much.
const COPY_EVERY: Duration = Duration::from_secs(1);

/// When the continuous loop scans.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Scan on every change the file system reports.
    pub watch: bool,
    /// Scan at this interval (`--every`); with `watch`, the safety rescan for lost events.
    pub every: Duration,
    /// Pause sync while the machine is busy (the resource guard), with these thresholds.
    pub guard: Option<Thresholds>,
    /// Scan at once when notified (the Sync now button).
    pub sync_now: Option<Arc<tokio::sync::Notify>>,
}

/// One scan of the source, as every target loop sees it.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub generation: u64,
    pub tree: Arc<Tree>,
    pub digest: Hash,
    pub blocks: Arc<BlockSource>,
    /// Records that rest on blocks the scan did not read, until the prover proves them.
    pub unproven: Vec<Unproven>,
}

/// What one scan of the continuous loop gave.
enum Scanned {
    /// The whole folder.
    Whole(crate::scan::Scan),
    /// The region named (as scanned), merged into the tree of the snapshot given.
    Region(crate::scan::Scan, Region, Arc<Snapshot>),
    /// Nothing to look at: this snapshot stands.
    Same(Arc<Snapshot>),
}

/// Mirrors the source to every target until `cancel` fires.
pub async fn push_continuous(
    options: &PushOptions,
    schedule: &Schedule,
    events: &broadcast::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let index = Arc::new(Index::open(&options.state_dir.join("index.redb"))?);
    let databases = Arc::new(super::snapshots(&options.state_dir)?.every(COPY_EVERY));
    let (trigger_tx, triggers) = mpsc::channel::<()>(1);
    let watch = match schedule.watch {
        true => Some(
            watch::start(&options.source, trigger_tx.clone())
                .map_err(|e| EngineError::Setup(e.to_string()))?,
        ),
        false => None,
    };
    let mut options = options.clone();
    if let Some(thresholds) = &schedule.guard {
        options.gate = start_guard(thresholds.clone(), events.clone(), cancel.child_token());
    }
    let options = &options;
    let (snapshot_tx, snapshots) = latest::channel(None::<Arc<Snapshot>>);
    let (proven_tx, proven) = latest::channel(0u64);
    let distrust = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(
        Prover {
            source: options.source.clone(),
            snapshots: snapshots.clone(),
            proven: proven_tx,
            distrust: distrust.clone(),
            rescan: trigger_tx.clone(),
            cancel: cancel.clone(),
        }
        .run(),
    );
    for target in &options.targets {
        let job = TargetLoop {
            target: target.clone(),
            options: options.clone(),
            snapshots: snapshots.clone(),
            proven: proven.clone(),
            rescan: trigger_tx.clone(),
            events: events.clone(),
            cancel: cancel.clone(),
            databases: databases.clone(),
        };
        loops.spawn(job.run());
    }
    let mut triggers = Triggers::new(triggers, schedule.every, schedule.sync_now.clone());
    let mut generation = 0;
    // A scan failed after it took the feed's changes: the next scan is whole.
    let mut whole_next = false;
    // The safety rescan with a change feed: a walk in the background.
    let mut auditing: Option<crate::scan::Background> = None;
    while let Some(why) = triggers.next(cancel).await {
        match why {
            Why::Asked => tracing::info!("sync asked for; scanning now"),
            Why::Woke => tracing::info!("the machine woke from sleep; syncing now"),
            Why::Change | Why::Tick | Why::CopyDue => {}
        }
        let distrusted = std::mem::take(
            &mut *distrust
                .lock()
                .expect("the distrust list is never poisoned"),
        );
        // What the safety rescan found, once it is done; a rescan that failed makes the next
        // scan whole.
        let found = match crate::scan::Background::take_done(&mut auditing) {
            Some(Ok(paths)) => paths,
            Some(Err(e)) => {
                tracing::warn!("the safety rescan failed ({e}); scanning the whole folder");
                whole_next = true;
                Vec::new()
            }
            None => Vec::new(),
        };
        // A change is a scan of the paths the feed named, merged into the last tree; a safety
        // rescan starts a walk in the background whose findings are scanned the same way.
        // The first scan, a feed that lost track, a failed scan and a distrusted record are
        // whole scans.
        let changes = watch.as_ref().map(watch::Watch::take);
        let last = snapshot_tx.borrow().clone();
        let region = match (why, changes, &last) {
            (
                Why::Change | Why::CopyDue | Why::Tick,
                Some(watch::Changes::Paths(mut paths)),
                Some(last),
            ) if distrusted.is_empty() && !whole_next => {
                if why == Why::CopyDue {
                    paths.extend(databases.paths());
                }
                if why == Why::Tick && auditing.is_none() {
                    // A scan of what it found is due when it ends (a full channel has one
                    // due already). Tried again at the next tick if it cannot start.
                    let done = trigger_tx.clone();
                    auditing = crate::scan::Background::start(
                        options.source.clone(),
                        (*last.tree).clone(),
                        options.exclude.clone(),
                        move || {
                            let _ = done.try_send(());
                        },
                    );
                }
                paths.extend(found);
                Some((last.clone(), Region::new(paths)))
            }
            _ => None,
        };
        let started = Instant::now();
        let (source, exclude, idx, dbs) = (
            options.source.clone(),
            options.exclude.clone(),
            index.clone(),
            databases.clone(),
        );
        let scanned = match &region {
            // Nothing named (a target asked for a rescan, or the named paths were
            // RainMaker's own): the last tree stands, as a new generation.
            Some((last, region)) if region.is_empty() => Ok(Ok(Scanned::Same(last.clone()))),
            Some((last, region)) => {
                let (last, region) = (last.clone(), region.clone());
                low_priority(move || {
                    rescan_source(
                        &source,
                        &exclude,
                        &idx,
                        Growth::Defer,
                        &dbs,
                        &last.tree,
                        &region,
                    )
                    .map(|(scan, region)| Scanned::Region(scan, region, last))
                })
                .await
            }
            None => {
                low_priority(move || {
                    scan_source(&source, &exclude, &idx, Growth::Defer, &distrusted, &dbs)
                        .map(Scanned::Whole)
                })
                .await
            }
        };
        let scanned = match scanned {
            Ok(Ok(scanned)) => scanned,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!("{e}; retrying at the next change or tick");
                // What this scan took from the feed is not lost: the next one is whole.
                whole_next = true;
                continue;
            }
        };
        generation += 1;
        whole_next = false;
        let snapshot = match scanned {
            Scanned::Same(last) => Snapshot {
                generation,
                digest: last.digest,
                tree: last.tree.clone(),
                blocks: last.blocks.clone(),
                unproven: last.unproven.clone(),
            },
            Scanned::Whole(scanned) => {
                tracing::debug!(generation, elapsed = ?started.elapsed(), hashed = scanned.bytes_hashed, "scanned");
                if let Some(wait) = scanned.copy_again_in {
                    triggers.copy_again_in(wait);
                }
                let digest = announce_scan(&scanned, events);
                Snapshot {
                    generation,
                    digest,
                    // Held for the whole run; a whole scan fills its tree's leaves.
                    tree: Arc::new(scanned.tree),
                    blocks: Arc::new(
                        BlockSource::new(options.source.clone()).reading_copies(scanned.copies),
                    ),
                    unproven: scanned.unproven,
                }
            }
            Scanned::Region(mut scanned, region, last) => {
                tracing::debug!(generation, elapsed = ?started.elapsed(), hashed = scanned.bytes_hashed, paths = region.paths().count(), "scanned the changed paths");
                if let Some(wait) = scanned.copy_again_in {
                    triggers.copy_again_in(wait);
                }
                let digest = announce_scan(&scanned, events);
                // The files that changed are the ones likely to change again (a platform's
                // tick files): where the feed hears writes late they are polled.
                if let Some(watch) = &watch {
                    watch.changed_files(region.paths().filter_map(|path| {
                        let now = scanned.tree.files.get(path)?;
                        (last.tree.files.get(path) != Some(now))
                            .then(|| (path.to_string(), now.stamp))
                    }));
                }
                // What lies outside the region is as the last scan left it: its copies, and
                // its records that still wait for their proof.
                let mut copies = last.blocks.copies();
                copies.retain(|path, _| !region.covers(path));
                copies.append(&mut scanned.copies);
                let mut unproven = Vec::new();
                if !last.proven(*proven.borrow()) {
                    unproven.extend(
                        last.unproven
                            .iter()
                            .filter(|u| !region.covers(&u.path))
                            .cloned(),
                    );
                }
                unproven.append(&mut scanned.unproven);
                Snapshot {
                    generation,
                    digest,
                    tree: Arc::new(scanned.tree),
                    blocks: Arc::new(
                        BlockSource::new(options.source.clone()).reading_copies(copies),
                    ),
                    unproven,
                }
            }
        };
        let _ = snapshot_tx.send(Some(Arc::new(snapshot)));
    }
    loops.shutdown().await;
    Ok(())
}

/// Starts the resource guard: a task that samples the machine every second until `cancel`
/// fires, publishes each sample as [`Event::Resources`], and opens or closes the returned
/// gate; every pause and resume is logged and published with its reason and figure.
pub fn start_guard(
    thresholds: Thresholds,
    events: broadcast::Sender<Event>,
    cancel: CancellationToken,
) -> Gate {
    let (gate_tx, gate) = Gate::channel();
    tokio::spawn(run_guard(thresholds, gate_tx, events, cancel));
    gate
}

async fn run_guard(
    thresholds: Thresholds,
    gate: latest::Sender<GateState>,
    events: broadcast::Sender<Event>,
    cancel: CancellationToken,
) {
    let mut sampler = Sampler::new();
    let mut guard = Guard::new(thresholds);
    let mut tick =
        tokio::time::interval(Duration::from_secs(1).max(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL));
    tick.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = sampler.sample(WIRE_TOTAL.load(Ordering::Relaxed));
        let _ = events.send(Event::Resources {
            cpu_percent: sample.cpu_percent,
            available_memory: sample.available_memory,
            other_traffic: sample.other_traffic,
        });
        match guard.observe(&sample) {
            Some(Transition::Paused(reason)) => {
                tracing::warn!("paused: {reason}");
                let _ = events.send(Event::Paused {
                    reason: reason.to_string(),
                });
                let _ = gate.send(GateState::Paused(reason));
            }
            Some(Transition::Resumed(reason)) => {
                tracing::warn!("resumed: clear of {reason} for the hold time");
                let _ = events.send(Event::Resumed {
                    after: reason.to_string(),
                });
                let _ = gate.send(GateState::Open);
            }
            None if guard.paused().is_none() => {
                gate.send_if_modified(|state| {
                    let changed = *state != GateState::Open;
                    *state = GateState::Open;
                    changed
                });
            }
            None => {}
        }
    }
}

/// The loop that keeps one target in sync.
struct TargetLoop {
    target: super::TargetSpec,
    options: PushOptions,
    snapshots: latest::Receiver<Option<Arc<Snapshot>>>,
    /// The newest generation the prover proved.
    proven: latest::Receiver<u64>,
    rescan: mpsc::Sender<()>,
    events: broadcast::Sender<Event>,
    cancel: CancellationToken,
    /// The source's copies: files that failed on the target are read through one next time.
    databases: Arc<crate::snapshot::Snapshots>,
}

impl Snapshot {
    /// Whether every record of this snapshot is proven, given the newest proven generation.
    fn proven(&self, proven: u64) -> bool {
        self.unproven.is_empty() || proven >= self.generation
    }
}

impl TargetLoop {
    /// Whether this target dialed in and its connection, which it alone can renew, is lost
    /// (`conn` is its connection kept between syncs): it is then gone for this push.
    fn lost_dialed_in(&self, conn: &Option<crate::transport::Connection>) -> bool {
        if self.target.dialed_in.is_none() || conn.is_some() {
            return false;
        }
        self.dialed_in_gone(
            "its connection went silent or closed; it dials again".into(),
            crate::protocol::Refusal::Other,
        );
        true
    }

    /// A target that dialed in is gone (why, and what a user can do): said, and its push told
    /// to end; it is never dialed, it comes back on a connection of its own.
    fn dialed_in_gone(&self, reason: String, refusal: crate::protocol::Refusal) {
        let _ = self.events.send(Event::TargetFailed {
            target: self.target.url.clone(),
            reason,
            refusal,
        });
        if let Some(dialed) = &self.target.dialed_in {
            dialed.gone.cancel();
        }
    }

    async fn run(mut self) {
        let url = self.target.url.clone();
        let mut kept = Kept::continuous(
            cached_manifest_path(&self.options.state_dir, &url),
            KEEP_MANIFEST_EVERY,
        );
        let mut verified: Option<Hash> = None;
        let mut online: Option<bool> = None;
        let mut backoff = Backoff::for_targets();
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut at_least: u64 = 0;
        // The connection to the target, kept open between syncs (a target that dialed in
        // hands over its own, which answers its pings from the start).
        let mut conn = self.target.dialed_in.as_ref().and_then(|d| d.take());
        // The target holds the `verified` tree, whose records still wait for their proof.
        let mut awaiting_proof = false;
        loop {
            let snapshot = loop {
                let current = self.snapshots.borrow_and_update().clone();
                if let Some(s) = current.filter(|s| s.generation >= at_least) {
                    if Some(s.digest) != verified {
                        break s;
                    }
                    if awaiting_proof && s.proven(*self.proven.borrow_and_update()) {
                        // What the target verified is now proven to be what the source holds.
                        awaiting_proof = false;
                        let _ = self.events.send(Event::InSync {
                            target: url.clone(),
                        });
                    }
                }
                // The kept connection answers the agent's pings while nothing is to be sent.
                let dialed_in = self.target.dialed_in.is_some();
                let (snapshots, proven, cancel) =
                    (&mut self.snapshots, &mut self.proven, &self.cancel);
                let woke = keep_alive_while(
                    &mut conn,
                    async {
                        tokio::select! {
                            () = cancel.cancelled() => false,
                            changed = snapshots.changed() => changed.is_ok(),
                            changed = proven.changed(), if awaiting_proof => changed.is_ok(),
                        }
                    },
                    dialed_in,
                )
                .await;
                if self.lost_dialed_in(&conn) || woke != Some(true) {
                    return;
                }
            };
            awaiting_proof = false;
            let mut gate = self.options.gate.clone();
            let dialed_in = self.target.dialed_in.is_some();
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = keep_alive_while(&mut conn, gate.pass(), dialed_in) => {}
            }
            if self.lost_dialed_in(&conn) {
                return;
            }
            let started = Instant::now();
            let (_ready, tree) =
                latest::channel(Some((snapshot.tree.clone(), snapshot.digest, None)));
            // On a stop, a session that is sending finishes its block and closes cleanly; one
            // still connecting or listing is given a moment, then dropped.
            let grace = async {
                self.cancel.cancelled().await;
                tokio::time::sleep(super::STOP_GRACE).await;
            };
            let result = tokio::select! {
                () = grace => return,
                r = session(&self.target, &self.options, &self.cancel, &mut conn, tree, &snapshot.blocks, &self.events, &mut kept) => r,
            };
            match result {
                Err(SendError::Stopped) => return,
                Ok((outcome, _files, wire)) if outcome.digest == snapshot.digest => {
                    verified = Some(snapshot.digest);
                    backoff.reset();
                    if online != Some(true) {
                        tracing::info!(target = %url, "online");
                    }
                    online = Some(true);
                    let _ = self.events.send(Event::Synced {
                        target: url.clone(),
                        files_sent: outcome.files_done,
                        bytes_changed: outcome.data_bytes,
                        wire_bytes: wire,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                    if snapshot.proven(*self.proven.borrow()) {
                        let _ = self.events.send(Event::InSync {
                            target: url.clone(),
                        });
                    } else {
                        awaiting_proof = true;
                        let _ = self.events.send(Event::Verifying {
                            target: url.clone(),
                        });
                    }
                }
                Ok((outcome, _, _)) => {
                    // The source or the target changed under the mirror: scan again.
                    let first = outcome.failed.first().map(|(p, r)| format!("{p}: {r}"));
                    tracing::info!(target = %url, reason = ?first, "not identical yet; rescanning");
                    super::read_failed_through_copies(&self.databases, &snapshot.tree, &outcome);
                    at_least = snapshot.generation + 1;
                    let _ = self.rescan.try_send(());
                }
                Err(error) if self.target.dialed_in.is_some() => {
                    self.dialed_in_gone(error.to_string(), error.refusal());
                    return;
                }
                Err(error) => {
                    let reason = error.to_string();
                    if online != Some(false) {
                        tracing::warn!(target = %url, "offline: {reason}; retrying");
                        let _ = self.events.send(Event::TargetFailed {
                            target: url.clone(),
                            reason,
                            refusal: error.refusal(),
                        });
                    }
                    online = Some(false);
                    let delay = backoff.next_delay(&mut rng);
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    // Back with the newest state of the source, not the one that failed.
                    at_least = snapshot.generation + 1;
                    let _ = self.rescan.try_send(());
                }
            }
        }
    }
}
