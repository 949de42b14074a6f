//! Crash trials: a source or a target killed with SIGKILL at a random moment of an initial
//! mirror and of an incremental one. After every kill, no file on the target may hold content
//! the source never had (each is its old version, the source's version, or the old version
//! with part of an append that a restart rolls back); after a restart the next push makes the
//! target identical, and the bytes it sent again are reported.
//!
//! A handful of trials run in CI; `RAINMAKER_CRASH_TRIALS=20` runs more.

mod common;

use common::{Sandbox, assert_same_tree, random_bytes, wait_bounded};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The contents of every file below `root` (outside `.rainmaker`).
fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walkdir(root) {
        out.insert(entry.0, entry.1);
    }
    out
}

fn walkdir(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".rainmaker" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((rel, bytes));
            }
        }
    }
    out
}

/// Checks that every file on the target is a version the source really had.
fn only_real_versions(
    target: &BTreeMap<String, Vec<u8>>,
    before: &BTreeMap<String, Vec<u8>>,
    source: &BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    for (path, bytes) in target {
        let old = before.get(path);
        let new = source.get(path);
        let is_old = old == Some(bytes);
        let is_new = new == Some(bytes);
        // An append in progress: the old version, then a prefix of what was appended.
        let is_growing = matches!((old, new), (Some(o), Some(n))
            if n.starts_with(o) && n.starts_with(bytes) && bytes.starts_with(o));
        if !(is_old || is_new || is_growing) {
            return Err(format!(
                "{path} ({} bytes) is neither its old version nor the source's",
                bytes.len()
            ));
        }
    }
    Ok(())
}

/// Writes a source tree: a few large files, some small ones.
fn fill(src: &Path, rng: &mut SmallRng) {
    for i in 0..3 {
        let len = rng.random_range(16..40) << 20;
        std::fs::create_dir_all(src.join("db")).unwrap();
        std::fs::write(
            src.join(format!("db/tick{i}.ncd")),
            random_bytes(rng.random(), len),
        )
        .unwrap();
    }
    for i in 0..30 {
        std::fs::create_dir_all(src.join("workspaces")).unwrap();
        let len = rng.random_range(100..5_000);
        std::fs::write(
            src.join(format!("workspaces/w{i}.xml")),
            random_bytes(rng.random(), len),
        )
        .unwrap();
    }
}

/// A session's worth of changes: appends, rewrites, new files, deletes.
fn change(src: &Path, rng: &mut SmallRng) {
    use std::io::Write;
    for i in 0..3 {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join(format!("db/tick{i}.ncd")))
            .unwrap();
        file.write_all(&random_bytes(rng.random(), rng.random_range(1..3) << 20))
            .unwrap();
    }
    for i in 0..5 {
        let len = rng.random_range(100..5_000);
        std::fs::write(
            src.join(format!("workspaces/w{i}.xml")),
            random_bytes(rng.random(), len),
        )
        .unwrap();
        std::fs::write(
            src.join(format!("workspaces/new{i}.xml")),
            random_bytes(rng.random(), len),
        )
        .unwrap();
    }
    std::fs::write(
        src.join("db/rewritten.ncd"),
        random_bytes(rng.random(), 6 << 20),
    )
    .unwrap();
    for i in 25..30 {
        let _ = std::fs::remove_file(src.join(format!("workspaces/w{i}.xml")));
    }
}

fn trial(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    fill(&src, &mut rng);
    let incremental = rng.random_bool(0.5);
    let kill_target = rng.random_bool(0.5);
    let agent = sandbox.serve(&dst);
    let port = agent.port();
    if incremental {
        sandbox.push(&src).target(&agent).run().assert_ok();
        change(&src, &mut rng);
    }
    let before = contents(&dst);
    let source = contents(&src);
    // Kill once the target's temporary files hold a random amount, so the cut falls inside
    // the transfer (or at a random moment for a transfer too quick to catch).
    let threshold: u64 = rng.random_range(0..16 << 20);
    let limit = Duration::from_millis(rng.random_range(20..400));
    let mut push = sandbox.push(&src).target(&agent).spawn();
    let started = std::time::Instant::now();
    loop {
        let staged = common::staged_bytes(&dst);
        let running = matches!(push.try_wait(), Ok(None));
        if staged > threshold || started.elapsed() > limit || !running {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let delay = started.elapsed();
    let agent = if kill_target {
        agent.sigkill();
        let _ = wait_bounded(&mut push, Duration::from_secs(30)).expect("the push ends");
        let after = contents(&dst);
        if let Err(e) = only_real_versions(&after, &before, &source) {
            panic!("seed {seed}: after killing the target at {delay:?}: {e}");
        }
        sandbox.serve_on(&dst, port)
    } else {
        let _ = push.kill();
        let _ = push.wait();
        let after = contents(&dst);
        if let Err(e) = only_real_versions(&after, &before, &source) {
            panic!("seed {seed}: after killing the source at {delay:?}: {e}");
        }
        agent
    };
    // The agent that stayed up may still be closing the cut session; the push retries.
    let mut result = sandbox.push(&src).target(&agent).run();
    for _ in 0..20 {
        if result.code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        result = sandbox.push(&src).target(&agent).run();
    }
    result.assert_ok();
    assert_same_tree(&src, &dst);
    println!(
        "seed {seed}: {} mirror, killed the {} after {delay:?}, then {} bytes sent to finish",
        if incremental {
            "incremental"
        } else {
            "initial"
        },
        if kill_target { "target" } else { "source" },
        result.target_u64(&agent.url, "bytes_changed")
    );
}

#[test]
fn sigkill_at_random_points_never_leaves_a_version_the_source_never_had() {
    let trials: u64 = std::env::var("RAINMAKER_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(4);
    let base: u64 = std::env::var("RAINMAKER_CRASH_SEED")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    for i in 0..trials {
        trial(base + i);
    }
}
