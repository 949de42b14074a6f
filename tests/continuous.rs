//! End to end: `rainmaker push --watch` and `--every` against real agents on loopback.
//! Changes reach the target by themselves, a target that was down is caught up soon after it
//! returns, and a short interval is warned about.

mod common;

use common::{Sandbox, feed_rescan, wait_identical, write_random};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn watch_mode_delivers_appends_new_files_and_deletes() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("db/tick/ES.ncd"), 1, 300_000);
    write_random(&src.join("workspaces/a.xml"), 2, 900);
    let agent = sandbox.serve(&dst);
    // Under Wine the safety rescan brings a new file its feed dropped (a CI run lost
    // workspaces/new.xml; see `feed_rescan`).
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--rescan-every")
        .arg(feed_rescan())
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);

    let mut latencies = Vec::new();
    for i in 0..20 {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("db/tick/ES.ncd"))
            .unwrap();
        file.write_all(&vec![i as u8; 2_000]).unwrap();
        drop(file);
        latencies.push(wait_identical(&src, &dst, Duration::from_secs(5), &log));
    }
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    eprintln!(
        "append on the target after p50 {:?}, p95 {p95:?}",
        latencies[latencies.len() / 2]
    );
    // Under Wine both agents' file calls go through the Wine server; there p95 was 1.4 s on
    // two busy cores, so it gets three times the bound.
    // The median is the product's promise (BENCHMARKS.md measures the latency on a quiet
    // machine); a test machine busy with other builds may delay one append in twenty, so the
    // slowest ones only have to arrive (wait_identical fails after 5 s).
    let bound = if rainmaker_engine::win32::under_wine() {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(1)
    };
    let p50 = latencies[latencies.len() / 2];
    assert!(
        p50 < bound,
        "continuous mode must deliver appends within moments, p50 was {p50:?} (p95 {p95:?})"
    );

    write_random(&src.join("workspaces/new.xml"), 3, 1_500);
    std::fs::create_dir_all(src.join("db/replay")).unwrap();
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    std::fs::remove_file(src.join("workspaces/a.xml")).unwrap();
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    assert!(
        !dst.join("workspaces/a.xml").exists(),
        "a deleted file is deleted on the target"
    );
}

/// Between safety rescans, each change is a scan of the paths the watcher named: folders
/// created whole, renamed, deleted and replaced by a file must all arrive as they are.
#[test]
fn watch_mode_follows_folders_created_renamed_deleted_and_replaced() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    for (i, rel) in [
        "db/tick/ES/01.ncd",
        "db/tick/NQ/01.ncd",
        "db/tick/NQ/deep/02.ncd",
        "keep.xml",
    ]
    .iter()
    .enumerate()
    {
        write_random(&src.join(rel), i as u64, 5_000);
    }
    let agent = sandbox.serve(&dst);
    // Under Wine the safety rescan brings what the feed missed (see `feed_rescan`), and no scan
    // by paths is asserted.
    let wine = rainmaker_engine::win32::under_wine();
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--rescan-every")
        .arg(feed_rescan())
        .env(
            "RUST_LOG",
            "info,rainmaker_engine::engine::continuous=debug",
        )
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
    // A folder made whole elsewhere and moved in: the watcher names the folder alone.
    let outside = sandbox.dir("outside");
    write_random(&outside.join("CL/01.ncd"), 10, 3_000);
    write_random(&outside.join("CL/02/03.ncd"), 11, 3_000);
    std::fs::rename(&outside, src.join("db/tick/CL")).unwrap();
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    std::fs::rename(src.join("db/tick/NQ"), src.join("db/tick/NQ2")).unwrap();
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    std::fs::remove_dir_all(src.join("db/tick/NQ2")).unwrap();
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    std::fs::remove_file(src.join("keep.xml")).unwrap();
    write_random(&src.join("keep.xml/now-a-folder"), 12, 100);
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    assert!(
        wine || log().contains("scanned the changed paths"),
        "the changes were scanned by their paths\n{}",
        log()
    );
}

/// Within a continuous push's session the agent lists its folder by the paths its own feed
/// named: an edit made on the target between two syncs is still seen, and undone, by the
/// next sync (which a change on the source starts).
#[test]
fn an_edit_on_the_target_between_syncs_is_seen_by_the_next_one() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("db/tick/ES/01.ncd"), 1, 20_000);
    write_random(&src.join("workspaces/a.xml"), 2, 900);
    let agent = sandbox.serve(&dst);
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--rescan-every")
        .arg(feed_rescan())
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
    // A second sync on the same connection, so the agent's next listing is by paths.
    write_random(&src.join("db/tick/ES/02.ncd"), 3, 5_000);
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    write_random(&dst.join("workspaces/a.xml"), 4, 700);
    write_random(&dst.join("stray/left.txt"), 5, 10);
    std::thread::sleep(Duration::from_millis(200));
    write_random(&src.join("db/tick/ES/03.ncd"), 6, 5_000);
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
}

#[test]
fn a_target_that_returns_is_caught_up_within_five_seconds() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("a.dat"), 4, 200_000);
    let agent = sandbox.serve(&dst);
    let port = agent.port();
    // The feed brings `b.dat`; under Wine, whose feed can drop it (a CI run did), the safety
    // rescan does (see `feed_rescan`). What is tested is the catch-up once the target is back.
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--rescan-every")
        .arg(feed_rescan())
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);

    agent.sigkill();
    write_random(&src.join("b.dat"), 5, 300_000);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !dst.join("b.dat").exists(),
        "the target is down: nothing can arrive"
    );
    let _agent = sandbox.serve_on(&dst, port);
    let took = wait_identical(&src, &dst, Duration::from_secs(5), &log);
    eprintln!("caught up {took:?} after the agent came back");
    // Wine 8 keeps a killed program's socket open while a read of it is pending (its server
    // holds the socket; CI's object dumps show them): the push sees no reset, only silence,
    // and finds the kept connection dead when its ping goes unanswered.
    let log = push.log();
    let noticed = log.contains("offline")
        || (rainmaker_engine::win32::under_wine()
            && log.contains("the connection kept from the last sync failed"));
    assert!(
        noticed,
        "the push reports the target offline while it is down:\n{log}"
    );
}

#[test]
fn a_short_interval_is_warned_about_and_still_syncs() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("a.dat"), 6, 10_000);
    let agent = sandbox.serve(&dst);
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--every")
        .arg("1s")
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
    write_random(&src.join("b.dat"), 7, 10_000);
    wait_identical(&src, &dst, Duration::from_secs(5), &log);
    let memory_gib = {
        let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        info.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib / (1 << 20))
    };
    if memory_gib < 4 {
        assert!(
            push.log().contains("below the recommended 5 minutes"),
            "a 1 s interval on a machine with under 4 GiB must warn:\n{}",
            push.log()
        );
    } else {
        assert!(
            !push.log().contains("warning:"),
            "a machine with {memory_gib} GiB whose syncs keep up needs no warning:\n{}",
            push.log()
        );
    }
}

#[test]
fn a_change_the_watch_cannot_see_still_arrives_by_the_rescan() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    let outside = sandbox.dir("outside");
    write_random(&src.join("x.dat"), 8, 50_000);
    // A write through a hard link in another folder changes the file without any event on
    // the watched folder: the watch is blind to it, as to a lost or overflowed event.
    std::fs::hard_link(src.join("x.dat"), outside.join("x.dat")).unwrap();
    let agent = sandbox.serve(&dst);
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--rescan-every")
        .arg("1s")
        .env(
            "RUST_LOG",
            "info,rainmaker_engine::engine::continuous=debug,rainmaker_engine::scan=debug",
        )
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(outside.join("x.dat"))
        .unwrap();
    file.write_all(&[42u8; 5_000]).unwrap();
    drop(file);
    let took = wait_identical(&src, &dst, Duration::from_secs(5), &log);
    eprintln!("an unseen change arrived after {took:?}");
    // The safety rescan walked in the background and what it found was scanned by its path:
    // the folder was scanned whole once, at the start.
    let whole = log()
        .lines()
        .filter(|l| l.contains(" scanned") && !l.contains("scanned the changed paths"))
        .count();
    assert!(
        log().contains("safety rescan") && whole == 1,
        "one whole scan, then safety rescans in the background:\n{}",
        log()
    );
}

#[test]
fn the_guard_pauses_with_its_reason_and_lifting_the_threshold_resumes() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("a.dat"), 10, 100_000);
    let agent = sandbox.serve(&dst);
    // No machine has a petabyte of memory available: the guard must pause before any sync.
    let paused = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--pause-memory-below")
        .arg("1000000GiB")
        .spawn_continuous();
    let started = Instant::now();
    while !paused.log().contains("paused:") && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let log = paused.log();
    assert!(
        log.contains("paused: available memory") && log.contains("below 1024000000 MiB"),
        "the pause is logged with its reason and the measured figure:\n{log}"
    );
    assert!(
        !dst.join("a.dat").exists(),
        "nothing is transferred while the guard holds sync:\n{log}"
    );
    drop(paused);

    let resumed = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .spawn_continuous();
    let log = || resumed.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
}

#[test]
fn status_shows_each_target_of_a_running_push() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("a.dat"), 11, 10_000);
    let agent = sandbox.serve(&dst);
    let down = format!("wss://127.0.0.1:{}", common::dead_port());
    let push = sandbox
        .push(&src)
        .target(&agent)
        .to(&down)
        .fingerprint(common::SOME_FINGERPRINT)
        .arg("--watch")
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
    let started = Instant::now();
    let targets = loop {
        let mut status = sandbox.command();
        status.arg("status").arg("--json");
        let (code, stdout, stderr) = common::run_bounded(status, Duration::from_secs(10));
        assert_eq!(code, 0, "status runs: {stderr}");
        let running: serde_json::Value =
            serde_json::from_str(&stdout).expect("status --json is JSON");
        let targets = running[0]["targets"].clone();
        let ready = targets[0]["state"] == "in sync" && targets[1]["state"] == "offline";
        if ready || started.elapsed() > Duration::from_secs(10) {
            break targets;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(targets[0]["url"], agent.url.as_str());
    assert_eq!(targets[0]["state"], "in sync", "{targets}");
    assert!(
        targets[0]["last_sync"].as_f64().is_some(),
        "a target in sync has a last sync"
    );
    assert_eq!(targets[1]["state"], "offline", "{targets}");
    assert!(
        targets[1]["behind_since"].as_f64().is_some() && targets[1]["reason"].as_str().is_some(),
        "an offline target shows since when it lags and why: {targets}"
    );
    drop(push);
}

/// In continuous mode a grown file's end is sent at once and the rest is proven afterwards: a
/// file edited in its middle and grown in one go must still end identical, soon, without the
/// periodic rescan, and the push must not say it is in sync before it is.
#[test]
fn watch_mode_proves_what_an_append_took_on_trust() {
    use std::io::{Seek, SeekFrom};
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("db/tick/NQ.ncd"), 8, 6 << 20);
    let agent = sandbox.serve(&dst);
    let push = sandbox
        .push(&src)
        .target(&agent)
        .arg("--watch")
        .arg("--rescan-every")
        .arg(feed_rescan())
        .spawn_continuous();
    let log = || push.log();
    wait_identical(&src, &dst, Duration::from_secs(20), &log);
    // Let the first scan's records age out of the racy window, so only the proof can help.
    std::thread::sleep(Duration::from_millis(700));
    let in_sync_before = push.log().matches("in sync  ").count();
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("db/tick/NQ.ncd"))
            .unwrap();
        file.seek(SeekFrom::Start(2 << 20)).unwrap();
        file.write_all(&[0xAB; 4096]).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
        file.write_all(&[0xCD; 3_000]).unwrap();
    }
    let took = wait_identical(&src, &dst, Duration::from_secs(10), &log);
    eprintln!("identical {took:?} after the edit and the append");
    // Every "in sync" after the change was said of an identical target: nothing changes the
    // source any more, so a target that is identical now was identical when it was said.
    let deadline = Instant::now() + Duration::from_secs(10);
    while push.log().matches("in sync  ").count() == in_sync_before {
        assert!(
            Instant::now() < deadline,
            "the target must be said in sync once the proof is done:\n{}",
            push.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        push.log().contains("verifying  "),
        "the tail went out before the proof, so the target was verifying first:\n{}",
        push.log()
    );
    wait_identical(&src, &dst, Duration::from_secs(1), &log);
}
