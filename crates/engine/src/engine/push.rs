//! A push: every pass over every target ([`push_once`]), and one session with one target.

use super::guess::{Told, kept_theirs};
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
    // A grown file's old blocks are taken from the index and proved while the targets are sent
    // to; after a failed proof, the files named are read whole, and so is everything after.
    let mut growth = scan::Growth::Defer;
    let mut distrust = Vec::new();
    let mut passes = options.passes.max(1);
    let mut pass = 0;
    while pass < passes {
        pass += 1;
        if cancel.is_cancelled() {
            stopped = true;
            break;
        }
        // Targets connect and scan their side while the source scans its own.
        let (tree_tx, tree_rx) = tokio::sync::watch::channel(None::<Ready>);
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
        let (source, exclude, idx, dbs, distrusted) = (
            options.source.clone(),
            options.exclude.clone(),
            index.clone(),
            databases.clone(),
            std::mem::take(&mut distrust),
        );
        let scanned =
            low_priority(move || scan_source(&source, &exclude, &idx, growth, &distrusted, &dbs))
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
        // A push that exits 0 has read every block it says is there: what the scan took on
        // trust is proved while the sessions send, and they hold their `Finish` until then.
        let grown: Vec<String> = scanned.unproven.iter().map(|u| u.path.clone()).collect();
        let (proof, proving) = match scanned.unproven {
            unproven if unproven.is_empty() => (None, None),
            unproven => {
                let (verdict, proof) = tokio::sync::watch::channel(None);
                let proving = tokio::spawn(proof::prove_while_sending(
                    options.source.clone(),
                    tree.clone(),
                    unproven,
                    index.clone(),
                    verdict,
                    cancel.clone(),
                ));
                (Some(proof), Some(proving))
            }
        };
        let _ = tree_tx.send(Some((tree.clone(), digest, proof)));
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
        // The files whose proof failed (a session that sent its `Finish` had the proof).
        let failed_proof = match proving {
            Some(mut proving) => tokio::select! {
                biased;
                failed = &mut proving => failed.unwrap_or_else(|e| {
                    tracing::warn!("the proof of the grown files ended: {e}");
                    grown
                }),
                () = cancel.cancelled() => {
                    stopped = true;
                    // It ends after the files it is reading, and lets go of the index (the
                    // next push opens it).
                    let _ = tokio::time::timeout(STOP_GRACE, proving).await;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if !failed_proof.is_empty() {
            // Another pass reads them whole (and every grown file, so it ends), even if this was
            // meant to be the last.
            distrust = failed_proof;
            if growth == scan::Growth::Defer && pass == passes {
                passes += 1;
            }
            growth = scan::Growth::Prove;
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
                    // target that is down or refuses will not be better on a second pass. One
                    // ended by a failed proof is sent the files read whole.
                    let again = error.is_cut() || matches!(error, SendError::Unproven(_));
                    if !again || pass == passes {
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
/// if it lists them, go to `into`. With `guess` (the source's scan and the manifest kept from
/// the last sync), and a digest `cached` to offer, the session does not wait for the answer
/// when the scan is done by the time TLS is up ([`transport::connect_eager`]): it plans against
/// the kept manifest and sends at once, a round trip and the target's listing sooner.
async fn dial(
    target: &TargetSpec,
    source_name: &str,
    ask: &Message,
    cached: Option<Hash>,
    stall: Duration,
    into: &mut Spool,
    guess: Option<(&tokio::sync::watch::Receiver<Option<Ready>>, &Kept)>,
) -> Result<(transport::Connection, Told), SendError> {
    let options = ConnectOptions {
        url: target.url.clone(),
        trust: target.trust.clone(),
        token: target.token.clone(),
        source_name: source_name.to_string(),
    };
    let mut conn = match (guess, cached) {
        (Some((tree_rx, kept)), Some(offered)) => {
            let conn = transport::connect_eager(&options, ask).await?;
            tracing::debug!(target = %target.url, "connected; the answers are still to come");
            if let Some(theirs) = kept_theirs(tree_rx, kept, offered).await {
                return Ok((conn, Told::Guessed(offered, theirs)));
            }
            conn
        }
        _ => transport::connect_asking(&options, ask).await?,
    };
    tracing::debug!(target = %target.url, "connected");
    let (theirs, partials) = send::manifest_asked(&mut conn, cached, stall, into).await?;
    Ok((conn, Told::Answered(theirs, partials)))
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

/// What a session is given once the source is scanned: its tree, the tree's digest, and the
/// proof its `Finish` waits for when the tree rests on blocks the scan did not read.
pub(super) type Ready = (Arc<Tree>, Hash, Option<send::Proof>);

/// One session with one target: connect, fetch its manifest, plan, send. A session sent
/// before the target's answer ([`super::guess`]) that did not end in sync committed nothing:
/// it is made again, waiting for the answer, and from the target's listing when the guess was
/// wrong.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one distinct input of a session; a struct would only rename them"
)]
pub(super) async fn session(
    target: &TargetSpec,
    options: &PushOptions,
    stop: &CancellationToken,
    open: &mut Option<transport::Connection>,
    tree_rx: tokio::sync::watch::Receiver<Option<Ready>>,
    blocks: &Arc<BlockSource>,
    events: &broadcast::Sender<Event>,
    kept: &mut Kept,
) -> Result<(send::Outcome, u64, u64), SendError> {
    let mut guessed = false;
    let first = attempt(
        target,
        options,
        stop,
        open,
        tree_rx.clone(),
        blocks,
        events,
        kept,
        Some(&mut guessed),
    )
    .await;
    let again = |why: &dyn std::fmt::Display| {
        tracing::info!(target = %target.url, "{why}: the session is made again, waiting for the target's answer");
    };
    match first {
        Err(SendError::Guessed(why)) => {
            again(&why);
            kept.forget();
        }
        // Whatever else ended a guessed session (the target refused something planned against
        // a manifest it no longer holds, a mass delete judged on the guess, a wrong token) is
        // met again without the guess, and reported in the usual words if it is still there.
        // Not a stop, nor a stall or a failed proof, which another try would only repeat.
        Err(error)
            if guessed
                && !matches!(
                    error,
                    SendError::Stopped | SendError::Stalled(_) | SendError::Unproven(_)
                ) =>
        {
            again(&error)
        }
        other => return other,
    }
    attempt(
        target, options, stop, open, tree_rx, blocks, events, kept, None,
    )
    .await
}

/// [`session`], once; with `guessing`, the session may be sent before the target's answer to
/// the manifest request ([`dial`]), and `guessing` says whether it was.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one distinct input of a session; a struct would only rename them"
)]
async fn attempt(
    target: &TargetSpec,
    options: &PushOptions,
    stop: &CancellationToken,
    open: &mut Option<transport::Connection>,
    mut tree_rx: tokio::sync::watch::Receiver<Option<Ready>>,
    blocks: &Arc<BlockSource>,
    events: &broadcast::Sender<Event>,
    kept: &mut Kept,
    guessing: Option<&mut bool>,
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
    let guess = guessing.is_some().then_some((&tree_rx, &*kept));
    let (mut conn, base, told) = match (open.take(), &target.dialed_in) {
        (Some(kept), dialed_in) => match ask_kept(kept, &ask, cached, stall, &mut spool).await {
            Ok((conn, (listed, partials))) => (conn, kept_base, Told::Answered(listed, partials)),
            // One that dialed in is reached over its connection only.
            Err(error) if dialed_in.is_some() || !error.is_cut() => return Err(error),
            Err(error) => {
                tracing::info!(target = %target.url, "the connection kept from the last sync failed ({error}); dialing again");
                spool = Spool::new(&options.state_dir);
                let (conn, told) =
                    dial(target, source_name, &ask, cached, stall, &mut spool, guess).await?;
                (conn, 0, told)
            }
        },
        (None, Some(dialed)) => {
            let mut conn = dialed.take().ok_or(SendError::Closed)?;
            conn.send(&ask).await?;
            let (listed, partials) =
                send::manifest_asked(&mut conn, cached, stall, &mut spool).await?;
            (conn, 0, Told::Answered(listed, partials))
        }
        (None, None) => {
            let (conn, told) =
                dial(target, source_name, &ask, cached, stall, &mut spool, guess).await?;
            (conn, 0, told)
        }
    };
    if let (Told::Guessed(..), Some(flag)) = (&told, guessing) {
        *flag = true;
    }
    let (tree, digest, proof): Ready = match &told {
        // A guess is made only once the source is scanned; nothing is read meanwhile (the
        // target's answers come with the replies).
        Told::Guessed(..) => tree_rx.borrow().clone().expect("guessed with a tree"),
        // While the source still scans, the connection answers the target's pings.
        Told::Answered(..) => conn
            .idle_until(async { tree_rx.wait_for(Option::is_some).await.map(|t| t.clone()) })
            .await?
            .map_err(|_| SendError::Protocol("the source could not be scanned".into()))?
            .expect("waited for a tree"),
    };
    let tree = &tree;
    // The digest of the manifest a guess was planned against.
    let guessed = match &told {
        Told::Guessed(offered, _) => Some(*offered),
        Told::Answered(..) => None,
    };
    let mut partials = Vec::new();
    // The target's tree; none when it is the source's own (both unchanged since the target's
    // kept manifest: the digests say every path, size, time and hash is the same).
    let theirs = match told {
        Told::Guessed(_, theirs) => theirs,
        Told::Answered(send::Theirs::Listed, listed) => {
            partials = listed;
            Some(lay_over(&mut conn, spool, tree).await?)
        }
        Told::Answered(send::Theirs::Same(same), listed) if same == digest => {
            partials = listed;
            None
        }
        Told::Answered(send::Theirs::Same(same), listed) => {
            partials = listed;
            match conn.idle_until(kept.tree(same, tree)).await? {
                Ok(Some(theirs)) => Some(theirs),
                loaded => {
                    match loaded {
                        // The reading itself failed (a bug): the file may be sound, and is kept.
                        Err(e) => {
                            tracing::warn!(
                                "cannot read the kept manifest ({e}); listing the target"
                            )
                        }
                        // The kept entries are damaged: list the target after all.
                        Ok(_) => kept.forget(),
                    }
                    let mut listing = Spool::new(&options.state_dir);
                    partials = send::list_manifest(&mut conn, stall, &mut listing).await?;
                    Some(lay_over(&mut conn, listing, tree).await?)
                }
            }
        }
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
                // Deletes held back are judged on the target's answer, not on a guess: the
                // session is made again ([`session`]).
                Some((doomed, held)) if guessed.is_some() => {
                    conn.close_now().await;
                    return Err(SendError::MassDelete {
                        doomed,
                        held,
                        percent: share * 100.0,
                    });
                }
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
    // A target that dialed in is reached over its connection only, which a failed proof must
    // leave open for the next pass: nothing is sent to it before the proof.
    let proof = match (proof, &target.dialed_in) {
        (Some(mut proof), Some(_)) => {
            let waited = tokio::select! {
                () = stop.cancelled() => Err(SendError::Stopped),
                verdict = conn.idle_until(send::verdict(&mut proof)) => verdict.map_err(SendError::from),
            };
            match waited {
                Ok(Ok(())) => None,
                Ok(Err(why)) => {
                    *open = Some(conn);
                    return Err(SendError::Unproven(why));
                }
                Err(error) => return Err(error),
            }
        }
        (proof, _) => proof,
    };
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
            // A guess reads nothing until it sends (the target's answer is a reply).
            let planned = match guessed {
                Some(_) => planning.await,
                None => conn.idle_until(planning).await?,
            };
            planned.map_err(|e| SendError::Protocol(format!("planning failed: {e}")))?
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
            proof,
            guess: guessed,
        },
        blocks,
        events,
    )
    .await?;
    let wire = sent.load(std::sync::atomic::Ordering::Relaxed)
        + received.load(std::sync::atomic::Ordering::Relaxed)
        - base;
    let (outcome, conn) = outcome;
    tracing::debug!(elapsed = ?started.elapsed(), target = %target.url, guessed = outcome.guessed, "plan sent and verified");
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

    /// The names of `messages`, for a failure's message (their data would be megabytes).
    fn names(messages: &[Message]) -> Vec<&'static str> {
        messages.iter().map(Message::name).collect()
    }

    /// Bytes standing for a file's content at `len`: each block unlike the others.
    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed | 1) ^ ((i / 4099) as u8))
            .collect()
    }

    /// A time long past, so no record made of a file at it is racy.
    const LONG_AGO: i128 = 1_600_000_000_000_000_000;

    /// Lists `bytes` as a target holding them at `path`.
    fn listed(path: &str, bytes: &[u8]) -> Entry {
        let (blocks, _) = crate::hash::hash_blocks(&mut &bytes[..], bytes.len() as u64).unwrap();
        Entry {
            path: path.into(),
            kind: EntryKind::File(FileMeta {
                size: bytes.len() as u64,
                mtime_ns: LONG_AGO,
                executable: false,
                hash: crate::hash::file_hash(bytes.len() as u64, &blocks),
                blocks,
            }),
        }
    }

    /// A source whose index knows `tick.ncd` as it was, and whose `tick.ncd` was then edited in
    /// block 1 and grown: its first block and its old last one are as they were, so a scan
    /// takes it for an append. Returns the source, the state folder and the old content.
    fn edited_and_grown(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
        let (source, state) = (dir.join("source"), dir.join("state"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let block = crate::hash::BLOCK_SIZE as usize;
        let old = content(3 * block + 1000, 7);
        let file = source.join("tick.ncd");
        std::fs::write(&file, &old).unwrap();
        crate::fs::set_mtime(&file, LONG_AGO).unwrap();
        {
            let index = Index::open(&state.join("index.redb")).unwrap();
            let databases = snapshots(&state).unwrap();
            let none = crate::exclude::Exclude::none();
            scan_source(&source, &none, &index, scan::Growth::Prove, &[], &databases).unwrap();
        }
        let mut new = old.clone();
        new[block + 10..block + 20].copy_from_slice(b"EDITEDEDIT");
        new.extend(content(200_000, 9));
        std::fs::write(&file, &new).unwrap();
        crate::fs::set_mtime(&file, LONG_AGO + 10_000_000_000).unwrap();
        (source, state, old)
    }

    /// Answers a request for the manifest as a target holding `holds` and nothing else.
    async fn answer_listing(conn: &mut transport::Connection, holds: &Entry) {
        conn.send(&Message::ManifestPart {
            entries: vec![holds.clone()],
        })
        .await
        .unwrap();
        conn.send(&Message::ManifestEnd { partials: vec![] })
            .await
            .unwrap();
    }

    /// A fake target on loopback that holds `old` at `tick.ncd` and nothing else, for two
    /// sessions at most; every message of each. It answers a `Finish` with a refusal (the
    /// tests need no verdict).
    async fn holding_the_old_version(
        old: &[u8],
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<Message>>>) {
        let listener = Listener::bind("127.0.0.1:0", None).await.unwrap();
        let url = format!("ws://{}", listener.local_addr());
        let holds = listed("tick.ncd", old);
        let target = tokio::spawn(async move {
            let mut sessions = Vec::new();
            for _ in 0..2 {
                // A push that made no second pass fails the test, not by a hang.
                let waited = tokio::time::timeout(Duration::from_secs(20), listener.accept());
                let Ok(accepted) = waited.await else { break };
                let (mut conn, _) = accepted.unwrap().handshake(TOKEN, "fake").await.unwrap();
                assert!(matches!(
                    conn.recv().await.unwrap(),
                    Some(Message::GetManifest { .. })
                ));
                answer_listing(&mut conn, &holds).await;
                let mut got = Vec::new();
                while let Ok(Some(message)) = conn.recv().await {
                    let finish = message == Message::Finish;
                    got.push(message);
                    if finish {
                        let _ = conn
                            .send(&Message::Refused {
                                reason: "the test has seen the finish".into(),
                                refusal: Refusal::Other,
                            })
                            .await;
                        break;
                    }
                }
                sessions.push(got);
            }
            sessions
        });
        (url, target)
    }

    /// Pushes `source` once (one pass, as asked) to `url`.
    async fn push_one_pass(source: PathBuf, state: PathBuf, url: &str) -> PushReport {
        let mut options = PushOptions::new(
            source,
            vec![TargetSpec::dial(url, Trust::Insecure, TOKEN)],
            state,
        );
        options.passes = 1;
        let (events, _) = broadcast::channel(256);
        push_once(&options, &events, &CancellationToken::new())
            .await
            .unwrap()
    }

    /// A push whose scan took a grown file's old blocks on trust, when the file was edited
    /// there too, never sends `Finish` (at which the target commits) for that tree: the
    /// session ends with `Refused`, and the next pass reads the file whole and sends the edit.
    #[tokio::test]
    async fn a_failed_proof_ends_the_session_before_its_finish_and_the_next_pass_sends_the_edit() {
        let dir = tempfile::tempdir().unwrap();
        let (source, state, old) = edited_and_grown(dir.path());
        let (url, target) = holding_the_old_version(&old).await;
        let report = push_one_pass(source, state, &url).await;
        let sessions = target.await.unwrap();
        assert_eq!(
            report.targets[0].passes, 2,
            "a failed proof gets another pass, even past the last: {report:?}"
        );
        let [first, second] = &sessions[..] else {
            let sessions: Vec<_> = sessions.iter().map(|s| names(s)).collect();
            panic!("two sessions: {sessions:?}")
        };
        assert!(
            first.iter().any(|m| matches!(m, Message::Append(_))),
            "the first pass sends the grown end while it proves: {:?}",
            names(first)
        );
        assert!(
            !first.contains(&Message::Finish),
            "nothing resting on the failed proof is committed: {:?}",
            names(first)
        );
        assert!(
            matches!(first.last(), Some(Message::Refused { reason, .. }) if reason.contains("grown end")),
            "the session ends with the reason: {:?}",
            first.last()
        );
        let edited = second.iter().any(
            |m| matches!(m, Message::Data { offset, .. } if *offset == crate::hash::BLOCK_SIZE),
        );
        assert!(
            edited,
            "the second pass reads the file whole and sends the edited block"
        );
        assert_eq!(second.last(), Some(&Message::Finish));
    }

    /// A session larger than one of the target's batches (which it applies at their bound,
    /// before the `Finish`) sends nothing before the proof: after a failed one, only the
    /// reason.
    #[tokio::test]
    async fn a_session_larger_than_a_batch_waits_for_the_proof_before_it_sends() {
        let dir = tempfile::tempdir().unwrap();
        let (source, state, old) = edited_and_grown(dir.path());
        for i in 0..crate::mirror::receive::STAGE_STEPS {
            let folder = source.join(format!("new/{}", i / 256));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join(format!("{i}.txt")), b"x").unwrap();
        }
        let (url, target) = holding_the_old_version(&old).await;
        let report = push_one_pass(source, state, &url).await;
        let sessions = target.await.unwrap();
        assert_eq!(report.targets[0].passes, 2, "{report:?}");
        assert!(
            matches!(&sessions[0][..], [Message::Refused { .. }]),
            "nothing but the reason before the proof: {:?}",
            names(&sessions[0][..sessions[0].len().min(3)])
        );
    }

    /// A target that dialed in is reached over its one connection: after a failed proof it
    /// was sent nothing, and the next pass asks it again over the same connection.
    #[tokio::test]
    async fn a_target_that_dialed_in_is_sent_nothing_before_the_proof_and_keeps_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (source, state, old) = edited_and_grown(dir.path());
        let listener = Listener::bind("127.0.0.1:0", None).await.unwrap();
        let url = format!("ws://{}", listener.local_addr());
        let holds = listed("tick.ncd", &old);
        // The target dials, then answers each request for its manifest; what comes between
        // two requests is one session.
        let target = tokio::spawn(async move {
            let options = ConnectOptions {
                url,
                trust: Trust::Insecure,
                token: TOKEN.into(),
                source_name: "dialing".into(),
            };
            let mut conn = transport::connect(&options).await.unwrap();
            let mut sessions: Vec<Vec<Message>> = Vec::new();
            while let Ok(Some(message)) = conn.recv().await {
                match message {
                    Message::GetManifest { .. } => {
                        sessions.push(Vec::new());
                        answer_listing(&mut conn, &holds).await;
                    }
                    Message::Finish => {
                        sessions.last_mut().unwrap().push(Message::Finish);
                        break;
                    }
                    other => sessions.last_mut().unwrap().push(other),
                }
            }
            sessions
        });
        let (conn, _) = listener
            .accept()
            .await
            .unwrap()
            .handshake(TOKEN, "source")
            .await
            .unwrap();
        let dialed = DialedIn::new(
            conn,
            "127.0.0.1:1".parse().unwrap(),
            Duration::from_secs(30),
        );
        let spec = TargetSpec {
            url: "the dialing target".into(),
            trust: Trust::Insecure,
            token: TOKEN.into(),
            dialed_in: Some(dialed.clone()),
        };
        let mut options = PushOptions::new(source, vec![spec], state);
        options.passes = 1;
        let (events, _) = broadcast::channel(256);
        let never = CancellationToken::new();
        let pushing = push_once(&options, &events, &never);
        // The target ends at the second session's `Finish`, with no verdict: the push is not ok.
        let report = tokio::time::timeout(Duration::from_secs(30), pushing)
            .await
            .expect("the push ends")
            .unwrap();
        let sessions = tokio::time::timeout(Duration::from_secs(30), target)
            .await
            .expect("the target saw both sessions")
            .unwrap();
        assert_eq!(report.targets[0].passes, 2, "{report:?}");
        let [first, second] = &sessions[..] else {
            let sessions: Vec<_> = sessions.iter().map(|s| names(s)).collect();
            panic!("two sessions over the one connection: {sessions:?}")
        };
        assert!(
            first.is_empty(),
            "nothing before the proof: {:?}",
            names(first)
        );
        assert_eq!(second.last(), Some(&Message::Finish), "{:?}", names(second));
    }

    /// A real agent on loopback: a grown file's end alone is read for the push, its old blocks
    /// are proved while it sends, and the next push trusts the proven record without reading.
    #[tokio::test]
    async fn a_grown_file_is_read_by_its_end_proved_while_sent_and_then_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        let server = Server::bind(ServeOptions {
            admin_token: None,
            subscribe_token: None,
            subscribe: None,
            root: target.clone(),
            listen: "127.0.0.1:0".into(),
            token: TOKEN.into(),
            insecure: false,
            name: "grown".into(),
            trash_retention: None,
            push_to: None,
        })
        .await
        .unwrap();
        let spec = TargetSpec::dial(
            format!("wss://{}", server.local_addr()),
            Trust::Pinned(server.fingerprint().unwrap().to_string()),
            TOKEN,
        );
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        let options = PushOptions::new(source.clone(), vec![spec], dir.path().join("state"));
        // Each push; the bytes its scan hashed.
        let push = || async {
            let (events, mut heard) = broadcast::channel(256);
            let report = push_once(&options, &events, &CancellationToken::new())
                .await
                .unwrap();
            assert!(report.ok, "{report:?}");
            let mut hashed = None;
            while let Ok(event) = heard.try_recv() {
                if let Event::Scanned { bytes_hashed, .. } = event {
                    hashed = Some(bytes_hashed);
                }
            }
            hashed.expect("a push says what its scan hashed")
        };
        let file = source.join("tick.ncd");
        let block = crate::hash::BLOCK_SIZE;
        let mut bytes = content(8 * block as usize, 3);
        std::fs::write(&file, &bytes).unwrap();
        crate::fs::set_mtime(&file, LONG_AGO).unwrap();
        push().await;

        let end = content(1000, 5);
        bytes.extend(&end);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &end))
            .unwrap();
        crate::fs::set_mtime(&file, LONG_AGO + 10_000_000_000).unwrap();
        let hashed = push().await;
        assert!(
            hashed <= block + 1000,
            "the grown end is read, not the file: {hashed} bytes"
        );
        assert_eq!(std::fs::read(target.join("tick.ncd")).unwrap(), bytes);
        assert_eq!(
            push().await,
            0,
            "the proven record is trusted by the next push's quick check"
        );
        stop.cancel();
    }
}
