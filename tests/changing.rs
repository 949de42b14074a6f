//! A source file that changes while it is being sent: appended to, truncated, or replaced.
//! The target must only ever hold a version the source really had (for a file that only grows,
//! a prefix of it), and the mirror converges once the file is quiet.

mod common;

use common::{Sandbox, assert_same_tree, random_bytes, write_random};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn a_file_appended_to_while_it_is_sent_arrives_as_a_prefix_then_whole() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    let path = src.join("db/tick.ncd");
    write_random(&path, 90, 32 << 20);
    let agent = sandbox.serve(&dst);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            let mut seed = 1000;
            while !stop.load(Ordering::SeqCst) {
                file.write_all(&random_bytes(seed, 64 * 1024)).unwrap();
                seed += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let first = sandbox.push(&src).target(&agent).run();
    let mirrored = std::fs::read(dst.join("db/tick.ncd")).unwrap_or_default();
    let source_now = std::fs::read(&path).unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        !mirrored.is_empty() && source_now.starts_with(&mirrored),
        "while the file grows the target holds a prefix the source really had ({} of {} bytes); first push: {}",
        mirrored.len(),
        source_now.len(),
        first.describe()
    );
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);
}

#[test]
fn a_file_truncated_or_replaced_while_it_is_sent_converges_to_a_real_version() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    let path = src.join("data.bin");
    let original = random_bytes(91, 24 << 20);
    std::fs::write(&path, &original).unwrap();
    let agent = sandbox.serve(&dst);
    let mut push = sandbox.push(&src).target(&agent).spawn();
    // Change the file under the push: first cut it in half in place (one truncate, so the
    // file is never anything but the original or its half), then replace it entirely the way
    // programs save files (written aside, renamed over it). A plain rewrite in place would
    // pass through every partial state, each of which the source then really had.
    std::thread::sleep(Duration::from_millis(30));
    let half = &original[..original.len() / 2];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(half.len() as u64)
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let replaced = random_bytes(92, 20 << 20);
    let aside = sandbox.path("data.bin.new");
    std::fs::write(&aside, &replaced).unwrap();
    replace_file(&aside, &path);
    let _ = common::wait_bounded(&mut push, Duration::from_secs(60)).expect("the push ends");
    if let Ok(mirrored) = std::fs::read(dst.join("data.bin")) {
        assert!(
            mirrored == original || mirrored == half || mirrored == replaced,
            "the target holds one of the versions the source had, never a mix ({} bytes)",
            mirrored.len()
        );
    }
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);
}

/// Renames `from` over `to` the way a program saves a file. The source reads with delete
/// sharing, so Windows' POSIX rename replaces the file even while RainMaker holds it open. Wine 8
/// has no such rename: a file with any handle open cannot be replaced ("Access denied"), so under
/// Wine the save is retried until the source has let go of the file, as a saving program would.
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match std::fs::rename(from, to) {
            Ok(()) => return,
            Err(error)
                if error.kind() == std::io::ErrorKind::PermissionDenied
                    && rainmaker_engine::win32::under_wine()
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("renaming {} over {}: {error}", from.display(), to.display()),
        }
    }
}
