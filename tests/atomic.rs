//! A session's files appear on the target together. The target stages everything a session
//! changes and applies it at the session's end as one batch recorded in its index, so:
//! - a target killed (SIGKILL) while it applies a session of 200 files, each holding the
//!   session's number, holds all old or all new versions right after its restart, never a
//!   mix, and the next push makes it identical;
//! - a reader that takes hard links of all the files together, at many instants during a run
//!   of sessions, holding a shared lock on `.rainmaker/apply.lock` as the batch's contract
//!   says, never sees two sessions at once. The same reader without the lock is counted too,
//!   to show how long the window of the renames themselves is.

mod common;

use common::{Sandbox, assert_same_tree};
use rainmaker_engine::mirror::commit::APPLY_LOCK;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Files in a session: each holds the session's number, so a mix is seen at once.
const FILES: usize = 200;

/// Writes session `n` into `src`: every file `s/NNN` holds "session n" and some padding.
fn write_session(src: &Path, n: u32) {
    std::fs::create_dir_all(src.join("s")).unwrap();
    for i in 0..FILES {
        let body = format!("session {n:06}\n{}", "x".repeat(900 + i));
        std::fs::write(src.join(format!("s/{i:03}")), body).unwrap();
    }
}

/// The session number of each file of the target's `s` folder (or of a sample of it).
fn sessions(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(14)]).into_owned();
        let n = text
            .strip_prefix("session ")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u32::MAX);
        out.insert(entry.file_name().to_string_lossy().into_owned(), n);
    }
    out
}

/// The distinct session numbers of a folder's files.
fn distinct(seen: &BTreeMap<String, u32>) -> Vec<u32> {
    let mut all: Vec<u32> = seen.values().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Files in the target's temporary folder (how far a transfer got).
fn staged_files(root: &Path) -> usize {
    std::fs::read_dir(root.join(".rainmaker/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_target_killed_while_it_applies_a_session_shows_no_half_session_after_restart() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_session(&src, 1);
    let mut agent = sandbox.serve(&dst);
    let port = agent.port();
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);

    let first = dst.join("s/000");
    let mut mid_apply = 0;
    let mut mid_transfer = 0;
    let trials = 6;
    for trial in 0..trials {
        let n = 2 + trial as u32;
        write_session(&src, n);
        let mut push = sandbox.push(&src).target(&agent).spawn();
        // Even trials: kill as soon as the first file of the session is in place (the batch is
        // recorded and being applied). Odd trials: kill while the files still arrive.
        let apply = trial % 2 == 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hit = if apply {
                std::fs::read(&first)
                    .is_ok_and(|b| b.starts_with(format!("session {n:06}").as_bytes()))
            } else {
                staged_files(&dst) >= FILES / 2
            };
            if hit {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial}: the session never reached the point to kill at; agent log:\n{}",
                agent.log()
            );
            if cfg!(windows) {
                // Each read holds the file open; on Windows that keeps it from being replaced
                // (a moment apart, the agent's rename gets its turn).
                std::thread::sleep(Duration::from_millis(1));
            } else {
                std::thread::yield_now();
            }
        }
        agent.sigkill();
        let at_kill = distinct(&sessions(&dst.join("s")));
        let _ = common::wait_bounded(&mut push, Duration::from_secs(30));
        if at_kill.len() > 1 {
            mid_apply += 1;
        } else if !apply {
            mid_transfer += 1;
        }
        agent = sandbox.serve_on(&dst, port);
        let seen = sessions(&dst.join("s"));
        let after = distinct(&seen);
        println!(
            "trial {trial}: killed {} with sessions {at_kill:?} on disk; after the restart: {after:?}",
            if apply {
                "while applying"
            } else {
                "while receiving"
            }
        );
        assert_eq!(seen.len(), FILES, "every file is still there: {seen:?}");
        assert_eq!(
            after.len(),
            1,
            "trial {trial}: right after a restart the target must hold one session, all old or \
             all new, never a mix (it had {at_kill:?} at the kill); agent log:\n{}",
            agent.log()
        );
        if apply {
            assert_eq!(
                after,
                [n],
                "a batch that was being applied at the kill is completed at the restart"
            );
        }
        sandbox.push(&src).target(&agent).run().assert_ok();
        assert_same_tree(&src, &dst);
    }
    println!(
        "{mid_apply} of {} kills landed in the middle of the renames, {mid_transfer} of {} \
         while the files arrived",
        trials / 2,
        trials / 2
    );
    assert!(
        mid_apply > 0,
        "no kill landed in the middle of a batch's renames, so the completion at restart was \
         not tested; make the session larger"
    );
}

#[test]
fn a_reader_sampling_the_target_during_sessions_never_sees_a_mix() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_session(&src, 1);
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (dst, stop) = (dst.clone(), stop.clone());
        let samples = sandbox.dir("samples");
        std::thread::spawn(move || {
            let lock = std::fs::File::open(dst.join(".rainmaker").join(APPLY_LOCK))
                .expect("the target has its apply lock");
            let (mut locked, mut unlocked) = (Vec::new(), Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let with_lock = i % 2 == 0;
                let dir = samples.join(i.to_string());
                std::fs::create_dir(&dir).unwrap();
                if with_lock {
                    rainmaker_engine::fs::lock(&lock, false).unwrap();
                }
                // Hard links of all the files, taken together.
                for entry in std::fs::read_dir(dst.join("s")).unwrap().flatten() {
                    let _ = std::fs::hard_link(entry.path(), dir.join(entry.file_name()));
                }
                if with_lock {
                    rainmaker_engine::fs::unlock(&lock).unwrap();
                }
                let seen = distinct(&sessions(&dir));
                let _ = std::fs::remove_dir_all(&dir);
                if with_lock {
                    locked.push(seen);
                } else {
                    unlocked.push(seen);
                }
            }
            (locked, unlocked)
        })
    };
    let sessions_run = 12;
    for n in 2..2 + sessions_run {
        write_session(&src, n);
        sandbox.push(&src).target(&agent).run().assert_ok();
    }
    stop.store(true, Ordering::SeqCst);
    let (locked, unlocked) = sampler.join().unwrap();
    assert_same_tree(&src, &dst);
    let mixed = |samples: &[Vec<u32>]| samples.iter().filter(|s| s.len() > 1).count();
    let changed = locked.windows(2).filter(|w| w[0] != w[1]).count();
    println!(
        "{} samples under the shared lock over {sessions_run} sessions: {} mixed, {changed} \
         changes of session seen; {} samples without the lock: {} mixed",
        locked.len(),
        mixed(&locked),
        unlocked.len(),
        mixed(&unlocked)
    );
    assert!(
        locked.len() >= 50 && changed >= 3,
        "the reader sampled too rarely to see sessions change: {} samples, {changed} changes",
        locked.len()
    );
    let bad: Vec<&Vec<u32>> = locked.iter().filter(|s| s.len() != 1).collect();
    assert!(
        bad.is_empty(),
        "a reader holding the apply lock must see one whole session at every instant; it saw \
         {bad:?}"
    );
}
