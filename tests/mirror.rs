//! End to end: `rainmaker push --once` into real `rainmaker serve` agents over wss on
//! loopback. A first mirror, an incremental one, local edits on a target, several targets
//! with one of them down, and a source with paths that cannot be mirrored.

mod common;

use common::{
    BLOCK, Sandbox, assert_same_tree, chmod, dead_port, file_count, random_bytes, set_mtime,
    total_bytes, tree, tree_diff, write_random,
};
use std::path::Path;

/// Sizes of the files of [`first_tree`] that later tests edit.
const BIG_LEN: usize = 5 * BLOCK + 777;
const MOVE_LEN: usize = 4 * BLOCK + 100;
const APPENDED: usize = 10_000;
const EDITED_LEN: usize = 3_000;

/// A source with nested folders, an empty folder, an executable, set times, an empty file,
/// a file of about three blocks, one of exactly one block, and files later tests edit.
/// Everything but the script is random, so nothing compresses.
fn first_tree(src: &Path) {
    write_random(&src.join("docs/readme.txt"), 1, 1_000);
    set_mtime(&src.join("docs/readme.txt"), 1_600_000_000, 123_456_789);
    write_random(&src.join("docs/notes/deep/a.txt"), 2, 5_000);
    set_mtime(&src.join("docs/notes/deep/a.txt"), 1_500_000_000, 1);
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho rainmaker\n").unwrap();
    chmod(&src.join("bin/run.sh"), 0o755);
    set_mtime(&src.join("bin/run.sh"), 1_650_000_000, 999_999_999);
    std::fs::write(src.join("zero.bin"), b"").unwrap();
    set_mtime(&src.join("zero.bin"), 1_234_567_890, 500);
    write_random(&src.join("data/three.bin"), 3, 3 * BLOCK - 1_234);
    write_random(&src.join("data/exact.bin"), 4, BLOCK);
    write_random(&src.join("data/big.bin"), 5, BIG_LEN);
    write_random(&src.join("data/move.bin"), 6, MOVE_LEN);
    write_random(&src.join("old/x.txt"), 7, 2_000);
    write_random(&src.join("old/sub/y.txt"), 8, 3_000);
    write_random(&src.join("small/edit.txt"), 9, 1_500);
    write_random(&src.join("gone.txt"), 10, 700);
}

#[test]
fn first_mirror_is_identical_and_reported() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    first_tree(&src);
    let agent = sandbox.serve(&dst);

    // By address, trusted on first use because the flag asks for it.
    let result = sandbox.push(&src).to(&agent.url).trust_first_use().run();
    result.assert_ok();
    assert_same_tree(&src, &dst);

    let files = file_count(&src);
    let bytes = total_bytes(&src);
    let json = &result.json;
    let why = result.describe();
    assert_eq!(json["ok"], true, "ok must be true after exit 0\n{why}");
    assert_eq!(
        json["partial"], false,
        "nothing was skipped, so partial is false\n{why}"
    );
    assert!(
        json["seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "seconds must be a non-negative number\n{why}"
    );
    assert_eq!(
        json["files"].as_u64(),
        Some(files),
        "files counts the source's regular files\n{why}"
    );
    assert!(
        json["bytes_read"].as_u64().is_some_and(|b| b >= bytes),
        "a first mirror reads every byte of the source ({bytes})\n{why}"
    );
    assert_eq!(
        json["skipped"],
        serde_json::json!([]),
        "nothing was skipped\n{why}"
    );
    let targets = json["targets"].as_array().expect("targets is an array");
    assert_eq!(targets.len(), 1, "one target, one report\n{why}");
    let target = result.target(&agent.url);
    assert_eq!(target["ok"], true, "the target is identical\n{why}");
    assert!(
        target["error"].is_null(),
        "an ok target has no error\n{why}"
    );
    assert_eq!(
        result.target_u64(&agent.url, "files_sent"),
        files,
        "an empty target receives every file\n{why}"
    );
    assert_eq!(
        result.target_u64(&agent.url, "bytes_changed"),
        bytes,
        "an empty target lacks every byte of the source\n{why}"
    );
    // Random content does not compress: the wire carries at least the random files' bytes.
    let script = std::fs::metadata(src.join("bin/run.sh")).unwrap().len();
    assert!(
        result.target_u64(&agent.url, "wire_bytes") >= bytes - script,
        "incompressible data cannot take fewer bytes on the wire than it has\n{why}"
    );
    assert_eq!(
        result.target_u64(&agent.url, "passes"),
        1,
        "nothing changed during the push, so one pass is enough\n{why}"
    );
    assert!(
        target["seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "targets[].seconds must be a non-negative number\n{why}"
    );

    // Trust on first use: the fingerprint the agent printed is now remembered.
    let known = std::fs::read_to_string(sandbox.known_peers()).unwrap_or_default();
    let line = known
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{}", agent.port())))
        .unwrap_or_else(|| {
            panic!("the first wss push must record the target in the known-peers file:\n{known}")
        });
    assert!(
        line.to_ascii_lowercase()
            .contains(&agent.fp().to_ascii_lowercase()),
        "the known-peers file must hold the fingerprint the agent printed ({}), got: {line}",
        agent.fp()
    );
}

#[test]
fn incremental_mirror_sends_only_what_changed() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    first_tree(&src);
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);

    // Append to a file of several blocks.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("data/big.bin"))
        .unwrap();
    std::io::Write::write_all(&mut file, &random_bytes(11, APPENDED)).unwrap();
    drop(file);
    // Edit a small file (new content, new size).
    std::fs::write(src.join("small/edit.txt"), random_bytes(12, EDITED_LEN)).unwrap();
    // Delete a file, rename a big file into a new folder, add an empty folder, delete a
    // folder with content, clear an executable bit.
    std::fs::remove_file(src.join("gone.txt")).unwrap();
    std::fs::create_dir_all(src.join("archive/2024")).unwrap();
    std::fs::rename(src.join("data/move.bin"), src.join("archive/2024/move.bin")).unwrap();
    std::fs::create_dir_all(src.join("new-empty")).unwrap();
    std::fs::remove_dir_all(src.join("old")).unwrap();
    chmod(&src.join("bin/run.sh"), 0o644);

    let second = sandbox.push(&src).target(&agent).run();
    second.assert_ok();
    assert_same_tree(&src, &dst);
    let changed = second.target_u64(&agent.url, "bytes_changed");
    let bound = (APPENDED + EDITED_LEN + BLOCK) as u64;
    println!("second push: {changed} bytes changed (bound {bound})");
    assert!(
        changed <= bound,
        "only the 10,000 appended bytes, the edited file ({EDITED_LEN} bytes) and at most one \
         block around the append may be sent; the renamed file ({MOVE_LEN} bytes) is already \
         on the target and must cost no data. bytes_changed = {changed}, bound = {bound}\n{}",
        second.describe()
    );

    let third = sandbox.push(&src).target(&agent).run();
    third.assert_ok();
    assert_same_tree(&src, &dst);
    assert_eq!(
        (
            third.target_u64(&agent.url, "files_sent"),
            third.target_u64(&agent.url, "bytes_changed")
        ),
        (0, 0),
        "a push with nothing changed must send no file and no data\n{}",
        third.describe()
    );
}

#[test]
fn local_edits_on_the_target_are_overwritten() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    first_tree(&src);
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    let source_before = tree(&src);

    // Someone edits the backup: same size, other bytes; another file's content replaced by a
    // shorter one; an extra file and an extra folder; an executable bit set.
    std::fs::write(dst.join("docs/readme.txt"), random_bytes(99, 1_000)).unwrap();
    std::fs::write(dst.join("data/three.bin"), b"short").unwrap();
    std::fs::write(dst.join("extra.txt"), b"not in the source").unwrap();
    std::fs::create_dir_all(dst.join("extra-dir/inner")).unwrap();
    std::fs::write(dst.join("extra-dir/inner/f"), b"x").unwrap();
    chmod(&dst.join("docs/notes/deep/a.txt"), 0o755);
    assert!(
        !tree_diff(&source_before, &tree(&dst)).is_empty(),
        "the local edits must make the target differ before the push"
    );

    let result = sandbox.push(&src).target(&agent).run();
    result.assert_ok();
    assert_same_tree(&src, &dst);
    assert_eq!(
        tree_diff(&source_before, &tree(&src)),
        Vec::<String>::new(),
        "a mirror is one way: the source must not change"
    );
}

#[test]
fn one_target_down_does_not_stop_the_others() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let (dst1, dst3) = (sandbox.dir("dst1"), sandbox.dir("dst3"));
    first_tree(&src);
    let (agent1, agent3) = (sandbox.serve(&dst1), sandbox.serve(&dst3));
    let down = format!("wss://127.0.0.1:{}", dead_port());

    let result = sandbox
        .push(&src)
        .target(&agent1)
        .to(&down)
        .fingerprint(common::SOME_FINGERPRINT)
        .target(&agent3)
        .run();
    let why = result.describe();
    assert_eq!(
        result.code, 1,
        "a target that is down makes the push fail (exit 1)\n{why}"
    );
    assert!(
        result
            .stderr
            .lines()
            .any(|l| l.contains("FAILED") && l.contains(&down)),
        "stderr must name the target that failed ({down})\n{why}"
    );
    assert_eq!(result.json["ok"], false, "one target failed\n{why}");
    assert_eq!(
        result.target(&down)["ok"],
        false,
        "the target that is down is not ok\n{why}"
    );
    assert!(
        result.target(&down)["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "a failed target says why\n{why}"
    );
    for (agent, dst) in [(&agent1, &dst1), (&agent3, &dst3)] {
        assert_eq!(
            result.target(&agent.url)["ok"],
            true,
            "{} is up and must be mirrored although another target is down\n{why}",
            agent.url
        );
        assert_same_tree(&src, dst);
    }
}

// Not on Windows: makes a Unix symlink; a Windows symlink needs a privilege a test does not have.
#[cfg(unix)]
#[test]
fn unmirrorable_paths_are_skipped_and_reported() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    first_tree(&src);
    let fifo = src.join("data/pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    std::os::unix::fs::symlink("three.bin", src.join("data/link")).unwrap();
    let agent = sandbox.serve(&dst);

    let result = sandbox.push(&src).target(&agent).run();
    let why = result.describe();
    assert_eq!(
        result.code, 3,
        "every target is identical to what could be read but paths were skipped: exit 3\n{why}"
    );
    for skipped in ["data/pipe", "data/link"] {
        assert!(
            result
                .stderr
                .lines()
                .any(|l| l.starts_with(&format!("skipped {skipped}"))),
            "stderr must list the skipped path {skipped}\n{why}"
        );
        assert!(
            result.json["skipped"]
                .as_array()
                .is_some_and(|s| s
                    .iter()
                    .any(|e| e["path"] == skipped
                        && e["reason"].as_str().is_some_and(|r| !r.is_empty()))),
            "the JSON report must list {skipped} with a reason\n{why}"
        );
    }
    assert_eq!(result.json["ok"], false, "a partial run is not ok\n{why}");
    assert_eq!(
        result.json["partial"], true,
        "a partial run is partial\n{why}"
    );
    assert_eq!(
        result.target(&agent.url)["ok"],
        true,
        "the target holds everything that could be read\n{why}"
    );

    let mut expected = tree(&src);
    expected.remove("data/pipe");
    expected.remove("data/link");
    let diffs = tree_diff(&expected, &tree(&dst));
    assert!(
        diffs.is_empty(),
        "everything but the skipped paths must be mirrored exactly:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn files_and_folders_swap_places_and_files_shrink() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("becomes-dir"), 1, 2_000);
    write_random(&src.join("becomes-file/inner/a.bin"), 2, 3_000);
    write_random(&src.join("shrinks.bin"), 3, 4 * BLOCK + 500);
    write_random(&src.join("twin-a.bin"), 4, 2 * BLOCK);
    std::fs::write(src.join("name with spaces é.txt"), "ünïcødé").unwrap();
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);

    std::fs::remove_file(src.join("becomes-dir")).unwrap();
    write_random(&src.join("becomes-dir/child.bin"), 5, 1_000);
    std::fs::remove_dir_all(src.join("becomes-file")).unwrap();
    write_random(&src.join("becomes-file"), 6, 1_500);
    let shrunk = std::fs::read(src.join("shrinks.bin")).unwrap();
    std::fs::write(src.join("shrinks.bin"), &shrunk[..2 * BLOCK + 10]).unwrap();
    std::fs::copy(src.join("twin-a.bin"), src.join("twin-b.bin")).unwrap();

    let result = sandbox.push(&src).target(&agent).run();
    result.assert_ok();
    assert_same_tree(&src, &dst);
    let changed = result.target_u64(&agent.url, "bytes_changed");
    let bound = (1_000 + 1_500 + BLOCK) as u64;
    assert!(
        changed <= bound,
        "the two new files (2,500 bytes) and at most the shrunk file's new last block may be \
         sent; the shrunk file's first blocks and the copy of twin-a are on the target \
         already. bytes_changed = {changed}, bound = {bound}\n{}",
        result.describe()
    );
}

#[test]
fn thousands_of_files_span_several_manifest_parts() {
    if rainmaker_engine::win32::under_wine() {
        // Left out under Wine: there the target wrote about 20 of these small files a second
        // (after some 45 s of scanning), every create, write, flush and rename going through
        // the Wine server, so the first push alone takes about four minutes and trips the
        // source's 60 s no-progress limit on a busy machine. What it tests, manifests in
        // several parts, is the same code on every platform.
        eprintln!("left out under Wine: 4,500 small files take minutes there");
        return;
    }
    const FILES: usize = 4_500;
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    for i in 0..FILES {
        let path = src.join(format!("d{}/f{i:05}.txt", i % 3));
        if i < 3 {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        std::fs::write(path, format!("file {i}\n")).unwrap();
    }
    let agent = sandbox.serve(&dst);
    let first = sandbox.push(&src).target(&agent).run();
    first.assert_ok();
    assert_same_tree(&src, &dst);
    assert_eq!(
        first.target_u64(&agent.url, "files_sent"),
        FILES as u64,
        "every file goes to an empty target\n{}",
        first.describe()
    );

    // The target now lists more entries than one manifest part holds.
    std::fs::write(src.join("d1/f00001.txt"), "changed, and longer\n").unwrap();
    let second = sandbox.push(&src).target(&agent).run();
    second.assert_ok();
    assert_same_tree(&src, &dst);
    assert_eq!(
        second.target_u64(&agent.url, "files_sent"),
        1,
        "one file changed among {FILES}: only it is sent\n{}",
        second.describe()
    );
}

// Signals, Unix only.

// Not on Windows: freezes a process with SIGSTOP and SIGCONT, which Windows does not have.
#[cfg(unix)]
#[test]
fn a_stalled_target_is_failed_and_the_others_finish() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    write_random(&src.join("big.dat"), 7, 48 << 20);
    first_tree(&src);
    let (dst1, dst2) = (sandbox.dir("dst1"), sandbox.dir("dst2"));
    let (agent1, agent2) = (sandbox.serve(&dst1), sandbox.serve(&dst2));
    let (url1, url2) = (agent1.url.clone(), agent2.url.clone());
    let push = sandbox
        .push(&src)
        .target(&agent1)
        .target(&agent2)
        .arg("--stall-timeout")
        .arg("3");
    let running = std::thread::spawn(move || push.run());
    // Freeze the second agent once its copy of the big file is under way.
    let started = std::time::Instant::now();
    let under_way = loop {
        if common::staged_bytes(&dst2) > 1 << 20 {
            break true;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    common::signal(agent2.pid(), "STOP");
    let result = running.join().expect("the push thread");
    common::signal(agent2.pid(), "CONT");
    assert!(under_way, "the second agent never started receiving");
    let why = result.describe();
    assert_eq!(result.code, 1, "a stalled target fails the push\n{why}");
    let error = result.target(&url2)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("no progress"),
        "the stalled target is reported as stalled, not as something else: {error}\n{why}"
    );
    assert_eq!(
        result.target(&url1)["ok"],
        true,
        "a stalled target must not stop the others\n{why}"
    );
    assert_same_tree(&src, &dst1);
}

/// The cap is a limit that must never be crossed, whatever else the machine is doing; how
/// close to it a run gets depends on the machine, so it is printed, not asserted (the
/// benchmark reports it).
#[test]
fn bwlimit_is_never_exceeded() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    write_random(&src.join("big.dat"), 9, 6 << 20);
    let (dst1, dst2) = (sandbox.dir("dst1"), sandbox.dir("dst2"));
    let (agent1, agent2) = (sandbox.serve(&dst1), sandbox.serve(&dst2));
    let cap: f64 = 4e6;
    let result = sandbox
        .push(&src)
        .target(&agent1)
        .target(&agent2)
        .arg("--bwlimit")
        .arg("4MB")
        .run();
    let why = result.describe();
    assert_eq!(result.code, 0, "{why}");
    let data = result.target_u64(&agent1.url, "bytes_changed")
        + result.target_u64(&agent2.url, "bytes_changed");
    let wire =
        result.target_u64(&agent1.url, "wire_bytes") + result.target_u64(&agent2.url, "wire_bytes");
    let seconds = result.json["seconds"].as_f64().unwrap();
    eprintln!(
        "{data} data bytes ({wire} on the wire) to two targets in {seconds:.2} s: {:.2} MB/s \
         under a 4 MB/s cap",
        data as f64 / seconds / 1e6
    );
    // The bucket starts empty and holds at most a tenth of a second of the rate (or one
    // 256 KiB message): by any instant t, at most burst + cap * t bytes of data have gone.
    let burst = (cap / 10.0).max(256.0 * 1024.0);
    assert!(
        data as f64 <= cap * seconds + burst,
        "the cap is shared by all targets and never exceeded: {data} bytes in {seconds:.2} s \
         is more than {cap} B/s allows\n{why}"
    );
    assert_eq!(
        data,
        2 * (6 << 20),
        "both targets received the whole file\n{why}"
    );
    assert_same_tree(&src, &dst1);
    assert_same_tree(&src, &dst2);
}

#[test]
fn an_emptied_source_does_not_empty_the_backup_without_confirmation() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    for i in 0..12 {
        write_random(&src.join(format!("db/tick/{i}.ncd")), 20 + i, 5_000);
    }
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    // The source's drive "is not mounted": the folder is there but empty.
    std::fs::remove_dir_all(src.join("db")).unwrap();
    let refused = sandbox.push(&src).target(&agent).run();
    let why = refused.describe();
    assert_eq!(
        refused.code, 1,
        "a sync that would delete every file must stop\n{why}"
    );
    assert!(
        refused.stderr.contains("12 of the target's 12 files")
            && refused.stderr.contains("--allow-mass-delete"),
        "it says what it would do and how to confirm it\n{why}"
    );
    assert_eq!(
        common::file_count(&dst),
        12,
        "nothing is deleted until the user confirms"
    );
    let confirmed = sandbox
        .push(&src)
        .target(&agent)
        .arg("--allow-mass-delete")
        .run();
    confirmed.assert_ok();
    assert_same_tree(&src, &dst);
}

#[test]
fn a_source_emptied_a_few_files_per_sync_is_stopped_at_the_same_share() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    for i in 0..30 {
        write_random(&src.join(format!("db/tick/{i:02}.ncd")), 40 + i, 2_000);
    }
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    // Explorer deletes one file after another and syncs run between: 5 files per sync, each
    // far under the guard's 50% and its 10 files, but 20 of 30 within the hour.
    for (deleted, allowed) in [(5, true), (10, true), (15, true), (20, false)] {
        for i in deleted - 5..deleted {
            std::fs::remove_file(src.join(format!("db/tick/{i:02}.ncd"))).unwrap();
        }
        let run = sandbox.push(&src).target(&agent).run();
        let why = run.describe();
        if allowed {
            run.assert_ok();
            assert_same_tree(&src, &dst);
        } else {
            assert_eq!(
                run.code, 1,
                "the fourth sync would bring it past half\n{why}"
            );
            assert!(
                run.stderr.contains("20 of the target's 30 files"),
                "it counts what the earlier syncs deleted\n{why}"
            );
            assert_eq!(
                common::file_count(&dst),
                15,
                "the fourth sync deletes nothing"
            );
        }
    }
    // Confirmed, it goes through, and later deletions count from there.
    sandbox
        .push(&src)
        .target(&agent)
        .arg("--allow-mass-delete")
        .run()
        .assert_ok();
    assert_same_tree(&src, &dst);
    std::fs::remove_file(src.join("db/tick/20.ncd")).unwrap();
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);
}

#[test]
fn deleted_and_rewritten_files_can_be_taken_back_from_the_trash() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    std::fs::create_dir_all(src.join("workspaces")).unwrap();
    std::fs::write(src.join("workspaces/main.xml"), b"<workspace v=1/>").unwrap();
    std::fs::write(src.join("strategy.cs"), b"// version 1").unwrap();
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    std::fs::remove_file(src.join("workspaces/main.xml")).unwrap();
    std::fs::write(src.join("strategy.cs"), b"// version 2, broken").unwrap();
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);

    let mut list = sandbox.command();
    list.arg("trash").arg("list").arg("--root").arg(&dst);
    let (code, listed, err) = common::run_bounded(list, std::time::Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(
        listed.contains("workspaces/main.xml") && listed.contains("strategy.cs"),
        "the trash lists what the mirror deleted and replaced:\n{listed}"
    );
    let batch = listed
        .lines()
        .find(|l| !l.starts_with(' ') && l.contains("files"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a batch line")
        .to_string();
    let out = sandbox.path("restored");
    let mut restore = sandbox.command();
    restore
        .args(["trash", "restore", "--root"])
        .arg(&dst)
        .arg(&batch)
        .arg("--to")
        .arg(&out);
    let (code, said, err) = common::run_bounded(restore, std::time::Duration::from_secs(10));
    assert_eq!(code, 0, "{said}{err}");
    assert_eq!(
        std::fs::read(out.join("workspaces/main.xml")).unwrap(),
        b"<workspace v=1/>"
    );
    assert_eq!(
        std::fs::read(out.join("strategy.cs")).unwrap(),
        b"// version 1",
        "the version the mirror replaced comes back"
    );
}

/// Rewrites `len` bytes at `at` in place and appends `grow` bytes, between two pushes: the
/// shape of a repaired bar or a header update in a tick file that also grew.
fn edit_middle_and_append(path: &Path, at: u64, len: usize, grow: usize, seed: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&random_bytes(seed, len)).unwrap();
    file.seek(SeekFrom::End(0)).unwrap();
    file.write_all(&random_bytes(seed + 1, grow)).unwrap();
}

#[test]
fn a_file_edited_in_its_middle_and_grown_is_never_reported_identical_until_it_is() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    // (size, where the edit goes, bytes appended): small and large files, edits near the
    // start and deep inside, appends of 17 bytes to 3 MiB.
    let shapes: [(usize, u64, usize); 4] = [
        (8 << 20, 3 << 20, 4096),
        (3 * BLOCK + 10, BLOCK as u64 + 5, 17),
        (8 << 20, BLOCK as u64 + 1, 3 << 20),
        (40 << 20, 37 << 20, 17),
    ];
    for (i, (size, _, _)) in shapes.iter().enumerate() {
        write_random(&src.join(format!("db/{i}.ncd")), 40 + i as u64, *size);
    }
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    for (i, (_, at, grow)) in shapes.iter().enumerate() {
        edit_middle_and_append(
            &src.join(format!("db/{i}.ncd")),
            *at,
            4096,
            *grow,
            50 + i as u64,
        );
    }
    let second = sandbox.push(&src).target(&agent).run();
    second.assert_ok();
    let diff = tree_diff(&tree(&src), &tree(&dst));
    assert!(
        diff.is_empty(),
        "exit 0 says every target is identical; these differ: {diff:?}\n{}",
        second.describe()
    );
    let sent = second.target_u64(&agent.url, "bytes_changed");
    let grown: usize = shapes.iter().map(|s| s.2).sum();
    let bound = (grown + shapes.len() * (4096 + 2 * BLOCK)) as u64;
    assert!(
        sent <= bound,
        "only the appended bytes and the blocks around each edit are sent: {sent} > {bound}"
    );
}
