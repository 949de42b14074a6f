//! A push: every pass over every target ([`push_once`]), and one session with one target.

use super::*;
use crate::mirror::listing::Spool;

/// How many of the files a stopped mass delete would remove are named in its event.
const WOULD_DELETE_SHOWN: usize = 50;

/// Mirrors the source to every target once; returns when every target is identical or has
/// failed. Errors only when nothing could start (no source folder, no index).
pub async fn push_once(
    options: &PushOptions,
    events: &broadcast::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<PushReport, EngineError> {
    let started = Instant::now();
    let index = Arc::new(Index::open(&options.state_dir.join("index.redb"))?);
    let databases = Arc::new(snapshots(&options.state_dir)?);
    let blocks = Arc::new(BlockSource::new(options.source.clone()));
    let mut reports: Vec<TargetReport> = options
        .targets
        .iter()
        .map(|t| TargetReport {
            url: t.url.clone(),
            ..TargetReport::default()
        })
        .collect();
    let mut skipped = Vec::new();
    let mut files = 0;
    let mut last_digest = None;
    let mut done = vec![false; options.targets.len()];
    let mut stopped = false;
    for pass in 1..=options.passes.max(1) {
        if cancel.is_cancelled() {
            stopped = true;
            break;
        }
        // Targets connect and scan their side while the source scans its own.
        let (tree_tx, tree_rx) = tokio::sync::watch::channel(None::<(Arc<Tree>, Hash)>);
        let mut sessions = tokio::task::JoinSet::new();
        // Which target each session's task is for: a task that panicked returns no index.
        let mut task_of = std::collections::HashMap::new();
        for (i, target) in options.targets.iter().enumerate() {
            if done[i] {
                continue;
            }
            let (target, tree_rx, blocks, events) = (
                target.clone(),
                tree_rx.clone(),
                blocks.clone(),
                events.clone(),
            );
            let options = options.clone();
            let mut kept = Kept::file(cached_manifest_path(&options.state_dir, &target.url));
            let stop = cancel.clone();
            let task = sessions.spawn(async move {
                let started = Instant::now();
                let mut conn = None;
                let result = session(
                    &target, &options, &stop, &mut conn, tree_rx, &blocks, &events, &mut kept,
                )
                .await;
                match (conn, &target.dialed_in) {
                    // The target's own connection stays open for the next pass, and for the
                    // last word of whoever handed it over.
                    (Some(conn), Some(dialed)) => dialed.give_back(conn),
                    // A connection is handed back only by a session that ended with the
                    // target's `Finished`: nothing more is coming, so its answer to the close
                    // is not waited for.
                    (Some(conn), None) => conn.close_now().await,
                    (None, _) => {}
                }
                (i, result, started.elapsed().as_secs_f64())
            });
            task_of.insert(task.id(), i);
        }
        let (source, exclude, idx, dbs) = (
            options.source.clone(),
            options.exclude.clone(),
            index.clone(),
            databases.clone(),
        );
        // Every record is proven: a push that exits 0 has read every block it says is there.
        let scanned = low_priority(move || {
            scan_source(&source, &exclude, &idx, scan::Growth::Prove, &[], &dbs)
        })
        .await??;
        blocks.read_copies(scanned.copies.clone());
        tracing::debug!(elapsed = ?started.elapsed(), hashed = scanned.bytes_hashed, "source scanned");
        let digest = announce_scan(&scanned, events);
        last_digest = Some(digest);
        files = scanned.tree.files.len() as u64;
        skipped = scanned
            .problems
            .iter()
            .map(|p| Skipped {
                path: p.path.clone(),
                reason: p.reason.clone(),
            })
            .collect();
        let tree = Arc::new(scanned.tree);
        let _ = tree_tx.send(Some((tree.clone(), digest)));
        let mut joined = Vec::new();
        {
            let all = async {
                while let Some(result) = sessions.join_next_with_id().await {
                    match result {
                        Ok((_, result)) => joined.push(result),
                        Err(e) if e.is_panic() => {
                            let i = task_of[&e.id()];
                            let panic = e.into_panic();
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".into());
                            joined.push((i, Err(SendError::Internal(what)), 0.0));
                        }
                        Err(_) => {}
                    }
                }
            };
            tokio::pin!(all);
            tokio::select! {
                () = &mut all => {}
                () = cancel.cancelled() => {
                    // Sessions that are sending finish the block in flight and close cleanly;
                    // one still connecting or listing is given a moment, then dropped.
                    let _ = tokio::time::timeout(STOP_GRACE, &mut all).await;
                }
            }
        }
        if cancel.is_cancelled() {
            stopped = true;
        }
        for (i, result, seconds) in joined {
            let report = &mut reports[i];
            report.passes = pass;
            report.seconds += seconds;
            match result {
                Ok((outcome, planned_files, wire)) => {
                    report.files_sent += outcome.files_done;
                    report.bytes_changed += outcome.data_bytes;
                    report.wire_bytes += wire;
                    if outcome.digest == digest {
                        done[i] = true;
                        report.ok = true;
                        report.error = None;
                        report.refusal = None;
                        let _ = events.send(Event::InSync {
                            target: report.url.clone(),
                        });
                    } else {
                        read_failed_through_copies(&databases, &tree, &outcome);
                        let why = outcome
                            .failed
                            .first()
                            .map(|(p, r)| {
                                if r.starts_with(p.as_str()) {
                                    r.clone()
                                } else {
                                    format!("{p}: {r}")
                                }
                            })
                            .unwrap_or_else(|| "the target changed during the mirror".into());
                        report.error = Some(format!(
                            "not identical after pass {pass} ({} of {} files failed; first: {why})",
                            outcome.failed.len(),
                            planned_files
                        ));
                        report.refusal = Some(Refusal::Other);
                    }
                }
                Err(error) => {
                    // A cut connection gets another pass, which resumes what was verified; a
                    // target that is down or refuses will not be better on a second pass.
                    if !error.is_cut() || pass == options.passes.max(1) {
                        done[i] = true;
                    }
                    report.error = Some(error.to_string());
                    report.refusal = Some(error.refusal());
                }
            }
        }
        if stopped || done.iter().all(|d| *d) {
            break;
        }
    }
    for report in &mut reports {
        if stopped && !report.ok {
            report.error = Some(SendError::Stopped.to_string());
            report.refusal = Some(Refusal::Other);
            continue;
        }
        if let (false, Some(reason)) = (report.ok, &report.error) {
            let _ = events.send(Event::TargetFailed {
                target: report.url.clone(),
                reason: reason.clone(),
                refusal: report.refusal.unwrap_or_default(),
            });
        }
    }
    let all_ok = reports.iter().all(|r| r.ok);
    Ok(PushReport {
        ok: all_ok && skipped.is_empty(),
        partial: all_ok && !skipped.is_empty(),
        stopped: stopped && !all_ok,
        seconds: started.elapsed().as_secs_f64(),
        files,
        bytes_read: blocks.bytes_read(),
        skipped,
        targets: reports,
        digest: last_digest,
    })
}

/// Waits for `until`; meanwhile a connection kept for the next sync answers the target's
/// pings, so the target does not take this source for frozen. A kept connection that breaks
/// while idle is dropped (the next sync connects anew); with `end_on_loss` (a target that
/// dialed in, which this side cannot dial again) the wait then ends, with `None`.
pub(super) async fn keep_alive_while<T>(
    conn: &mut Option<transport::Connection>,
    until: impl std::future::Future<Output = T>,
    end_on_loss: bool,
) -> Option<T> {
    tokio::pin!(until);
    if let Some(kept) = conn.as_mut() {
        match kept.idle_until(&mut until).await {
            Ok(out) => return Some(out),
            Err(e) => {
                tracing::debug!("the connection kept for the next sync ended: {e}");
                *conn = None;
                if end_on_loss {
                    return None;
                }
            }
        }
    }
    Some(until.await)
}

/// What a session does with the target's record of recent deletions ([`Deletions`]).
enum Window {
    /// Nothing was planned (the target holds the source's tree).
    Keep,
    /// The sync deleted this many of the files the target held, under the guard.
    Record(usize, usize),
    /// The deletions were allowed: the user confirmed them or the guard is off.
    Clear,
}

/// Tells the tray (which files) and the target (why) that a sync stopped before deleting most
/// of the target's files, and closes the connection.
async fn refuse_mass_delete(
    target: &TargetSpec,
    tree: &Tree,
    theirs: &Tree,
    events: &broadcast::Sender<Event>,
    mut conn: transport::Connection,
    error: &SendError,
) {
    if let SendError::MassDelete { doomed, held, .. } = error {
        let _ = events.send(Event::WouldDelete {
            target: target.url.clone(),
            doomed: *doomed as u64,
            held: *held as u64,
            paths: theirs
                .files
                .keys()
                .filter(|p| !tree.files.contains_key(*p))
                .take(WOULD_DELETE_SHOWN)
                .cloned()
                .collect(),
        });
    }
    // The target hears why (a subscriber waits for a person instead of asking again).
    let refused = Message::Refused {
        reason: format!("the source stopped: {error}"),
        refusal: Refusal::MassDelete,
    };
    let _ = tokio::time::timeout(transport::CLOSE_TIMEOUT, conn.send(&refused)).await;
    conn.close().await;
}

/// How soon a connection kept between syncs must answer the ping sent with the next request
/// (its pong comes back within a round trip on a live connection). One that does not was cut
/// without a word (a target whose power went off): it is dropped and the target dialed again,
/// where waiting for its answer would take the stall timeout.
const KEPT_ANSWER: Duration = Duration::from_secs(3);

/// A connection and the target's answer to the manifest asked over it.
type Asked = (
    transport::Connection,
    (send::Theirs, Vec<crate::protocol::Partial>),
);

/// Asks for the target's manifest over the connection kept from the last sync. A cut before
/// the answer (no pong within [`KEPT_ANSWER`], a reset, a close) means the connection died
/// between syncs; a refusal or a stall is the target's own answer.
async fn ask_kept(
    mut conn: transport::Connection,
    ask: &Message,
    cached: Option<Hash>,
    stall: Duration,
    into: &mut Spool,
) -> Result<Asked, SendError> {
    conn.send_probing(ask, KEPT_ANSWER).await?;
    tracing::debug!(peer = %conn.peer(), "asked over the kept connection");
    let listed = send::manifest_asked(&mut conn, cached, stall, into).await?;
    Ok((conn, listed))
}

/// Dials `target`, asking with the hello ([`transport::connect_asking`]); the answer's entries,
/// if it lists them, go to `into`.
async fn dial(
    target: &TargetSpec,
    source_name: &str,
    ask: &Message,
    cached: Option<Hash>,
    stall: Duration,
    into: &mut Spool,
) -> Result<Asked, SendError> {
    let options = ConnectOptions {
        url: target.url.clone(),
        trust: target.trust.clone(),
        token: target.token.clone(),
        source_name: source_name.to_string(),
    };
    let mut conn = transport::connect_asking(&options, ask).await?;
    tracing::debug!(target = %target.url, "connected");
    let listed = send::manifest_asked(&mut conn, cached, stall, into).await?;
    Ok((conn, listed))
}

/// The target's listing laid over the source's `tree`, read on a blocking thread (about a
/// second at 300,000 files) while the connection answers the target's pings.
async fn lay_over(
    conn: &mut transport::Connection,
    spool: Spool,
    tree: &Arc<Tree>,
) -> Result<Arc<Tree>, SendError> {
    let (on_disk, entries) = (spool.on_disk(), spool.len());
    let tree = tree.clone();
    let reading = tokio::task::spawn_blocking(move || spool.read_over(&tree));
    let theirs = conn
        .idle_until(reading)
        .await?
        .map_err(|e| SendError::Internal(format!("reading the target's listing: {e}")))?
        .map_err(|e| SendError::Listing(e.to_string()))?;
    tracing::debug!(
        entries,
        on_disk,
        "the target's listing is laid over the source's tree"
    );
    Ok(Arc::new(theirs))
}

/// One session with one target: connect, fetch its manifest, plan, send.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one distinct input of a session; a struct would only rename them"
)]
pub(super) async fn session(
    target: &TargetSpec,
    options: &PushOptions,
    stop: &CancellationToken,
    open: &mut Option<transport::Connection>,
    mut tree_rx: tokio::sync::watch::Receiver<Option<(Arc<Tree>, Hash)>>,
    blocks: &Arc<BlockSource>,
    events: &broadcast::Sender<Event>,
    kept: &mut Kept,
) -> Result<(send::Outcome, u64, u64), SendError> {
    let (source_name, stall, limit) = (
        &options.source_name,
        options.stall_timeout,
        &options.bwlimit,
    );
    // Bytes of this round only: a kept connection's counters run on from earlier rounds.
    let counted = |c: &transport::Connection| {
        c.wire_counter().load(std::sync::atomic::Ordering::Relaxed)
            + c.received_counter()
                .load(std::sync::atomic::Ordering::Relaxed)
    };
    let kept_base = open.as_ref().map_or(0, counted);
    let cached = kept.digest();
    let ask = send::ask_manifest(cached);
    // A listing arrives while the source scans: it is held encoded until there is a tree to
    // lay it over (a second tree built as it came would double the memory of a large folder).
    let mut spool = Spool::new(&options.state_dir);
    let started = Instant::now();
    // A connection kept from the last round is used again: no new TLS handshake per sync. A
    // new one asks for the manifest with its hello.
    let (mut conn, base, (listed, mut partials)) = match (open.take(), &target.dialed_in) {
        (Some(kept), dialed_in) => match ask_kept(kept, &ask, cached, stall, &mut spool).await {
            Ok((conn, listed)) => (conn, kept_base, listed),
            // One that dialed in is reached over its connection only.
            Err(error) if dialed_in.is_some() || !error.is_cut() => return Err(error),
            Err(error) => {
                tracing::info!(target = %target.url, "the connection kept from the last sync failed ({error}); dialing again");
                spool = Spool::new(&options.state_dir);
                let (conn, listed) =
                    dial(target, source_name, &ask, cached, stall, &mut spool).await?;
                (conn, 0, listed)
            }
        },
        (None, Some(dialed)) => {
            let mut conn = dialed.take().ok_or(SendError::Closed)?;
            conn.send(&ask).await?;
            let listed = send::manifest_asked(&mut conn, cached, stall, &mut spool).await?;
            (conn, 0, listed)
        }
        (None, None) => {
            let (conn, listed) = dial(target, source_name, &ask, cached, stall, &mut spool).await?;
            (conn, 0, listed)
        }
    };
    // While the source still scans, the connection answers the target's pings.
    let scanned = conn
        .idle_until(async { tree_rx.wait_for(Option::is_some).await.map(|t| t.clone()) })
        .await?;
    let (tree, digest): (Arc<Tree>, Hash) = scanned
        .map_err(|_| SendError::Protocol("the source could not be scanned".into()))?
        .expect("waited for a tree");
    let tree = &tree;
    // The target's tree; none when it is the source's own (both unchanged since the target's
    // kept manifest: the digests say every path, size, time and hash is the same).
    let theirs = match listed {
        send::Theirs::Listed => Some(lay_over(&mut conn, spool, tree).await?),
        send::Theirs::Same(same) if same == digest => None,
        send::Theirs::Same(same) => match conn.idle_until(kept.tree(same, tree)).await? {
            Ok(Some(theirs)) => Some(theirs),
            loaded => {
                match loaded {
                    // The reading itself failed (a bug): the file may be sound, and is kept.
                    Err(e) => {
                        tracing::warn!("cannot read the kept manifest ({e}); listing the target")
                    }
                    // The kept entries are damaged: list the target after all.
                    Ok(_) => kept.forget(),
                }
                let mut listing = Spool::new(&options.state_dir);
                partials = send::list_manifest(&mut conn, stall, &mut listing).await?;
                Some(lay_over(&mut conn, listing, tree).await?)
            }
        },
    };
    let confirmed = |doomed: usize| {
        options
            .confirmed_delete
            .as_ref()
            .is_some_and(|(url, most)| *url == target.url && doomed <= *most)
    };
    // Deletions count over the guard's window: what this sync deletes is recorded once it is
    // sent; one the user allowed (or that ran without the guard) clears the earlier ones.
    let deletions = Deletions::beside(&kept.path);
    let mut window = Window::Keep;
    if let Some(theirs) = &theirs {
        window = Window::Clear;
        if let Some(share) = options.max_delete_share {
            let (now, held) = (plan::doomed(tree, theirs), theirs.files.len());
            match plan::mass_delete(now, held, share, deletions.earlier()) {
                Some((doomed, _)) if confirmed(doomed) => {}
                Some((doomed, held)) => {
                    let error = SendError::MassDelete {
                        doomed,
                        held,
                        percent: share * 100.0,
                    };
                    refuse_mass_delete(target, tree, theirs, events, conn, &error).await;
                    return Err(error);
                }
                None => window = Window::Record(now, held),
            }
        }
    }
    let plan = match theirs {
        None => Plan::default(),
        Some(theirs) => {
            let (tree2, blocks2) = (tree.clone(), blocks.clone());
            // The target's pings are answered meanwhile: a big plan takes a while, and a
            // session that waits for the folder asks this one to show it is there.
            let planning = tokio::task::spawn_blocking(move || {
                plan::plan(&tree2, &theirs, &partials, &mut |path, len| {
                    blocks2.tail_hash(path, len)
                })
            });
            conn.idle_until(planning)
                .await?
                .map_err(|e| SendError::Protocol(format!("planning failed: {e}")))?
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), target = %target.url, "manifest and plan ready");
    let _ = events.send(Event::Planned {
        target: target.url.clone(),
        files: plan.files,
        bytes: plan.data_bytes,
    });
    // Bytes on the wire both ways: what the source sent and what the target answered.
    let (sent, received) = (conn.wire_counter(), conn.received_counter());
    let outcome = send::send_plan(
        conn,
        &target.url,
        &plan,
        send::Pace {
            stall,
            limit: limit.as_deref(),
            gate: options.gate.clone(),
            stop: stop.clone(),
            adapt: options.compress.adapt_for(target),
        },
        blocks,
        events,
    )
    .await?;
    let wire = sent.load(std::sync::atomic::Ordering::Relaxed)
        + received.load(std::sync::atomic::Ordering::Relaxed)
        - base;
    tracing::debug!(elapsed = ?started.elapsed(), target = %target.url, "plan sent and verified");
    let (outcome, conn) = outcome;
    *open = Some(conn);
    if outcome.digest == digest {
        keep_alive_while(open, kept.verified(digest, tree), false).await;
    } else {
        kept.forget();
    }
    match window {
        Window::Record(deleted, held) => deletions.record(deleted, held),
        Window::Clear => deletions.clear(),
        Window::Keep => {}
    }
    // The count alone: the plan holds both trees, which would wait for the other targets.
    Ok((outcome, plan.files, wire))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Entry, EntryKind, FileMeta};

    const TOKEN: &str = "a token long enough for the test";

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File(FileMeta {
                size: 1,
                mtime_ns: 1_700_000_000_000_000_000,
                executable: false,
                hash: crate::hash::file_hash(1, &[[1; 32]]),
                blocks: vec![[1; 32]],
            }),
        }
    }

    /// A target that lists its files in an order no target sends is told apart from one whose
    /// listing is the tree it holds: the push names it and sends nothing.
    #[tokio::test]
    async fn a_target_that_lists_out_of_order_is_named_and_sent_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("a"), b"the source's own").unwrap();
        let listener = Listener::bind("127.0.0.1:0", None).await.unwrap();
        let url = format!("ws://{}", listener.local_addr());
        let target = tokio::spawn(async move {
            let (mut conn, _) = listener
                .accept()
                .await
                .unwrap()
                .handshake(TOKEN, "disordered")
                .await
                .unwrap();
            assert_eq!(
                conn.recv().await.unwrap(),
                Some(Message::GetManifest { cached: None })
            );
            conn.send(&Message::ManifestPart {
                entries: vec![file("b"), file("a")],
            })
            .await
            .unwrap();
            conn.send(&Message::ManifestEnd { partials: vec![] })
                .await
                .unwrap();
            // Whatever comes next: nothing may.
            let mut after = Vec::new();
            while let Ok(Some(message)) = conn.recv().await {
                after.push(message);
            }
            after
        });
        let mut options = PushOptions::new(
            source,
            vec![TargetSpec::dial(&url, Trust::Insecure, TOKEN)],
            dir.path().join("state"),
        );
        options.passes = 1;
        let (events, _) = broadcast::channel(64);
        let report = push_once(&options, &events, &CancellationToken::new())
            .await
            .unwrap();
        assert!(!report.ok);
        let error = report.targets[0].error.clone().unwrap_or_default();
        assert!(error.contains("out of order"), "{error}");
        let after = target.await.unwrap();
        let writes = |m: &Message| {
            matches!(
                m,
                Message::Mkdir { .. }
                    | Message::FileBegin(_)
                    | Message::Append(_)
                    | Message::Data { .. }
                    | Message::Delete { .. }
                    | Message::SetMeta { .. }
                    | Message::Finish
            )
        };
        assert!(
            !after.iter().any(writes),
            "nothing is sent to such a target: {after:?}"
        );
    }
}
