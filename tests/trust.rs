//! End to end: who a source trusts and who a target lets in. A pinned fingerprint that does
//! not match, a target whose certificate changed after it was first trusted, and a source
//! with the wrong pairing token. In each case nothing may be written on the target.

mod common;

use common::{Sandbox, assert_same_tree, list, write_random};
use std::time::Duration;

/// Asserts the target root holds nothing but RainMaker's own state folder.
#[track_caller]
fn assert_untouched(root: &std::path::Path, why: &str) {
    let names = list(root);
    assert!(
        names.iter().all(|n| n == ".rainmaker"),
        "{why}: nothing may be written in the target root, found {names:?}"
    );
}

#[test]
fn a_wrong_pinned_fingerprint_is_refused() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("a.bin"), 1, 10_000);
    let agent = sandbox.serve(&dst);
    let wrong = format!("SHA256:{}", "0".repeat(64));

    let result = sandbox.push(&src).to(&agent.url).fingerprint(&wrong).run();
    let why = result.describe();
    assert_eq!(
        result.code, 1,
        "a target whose certificate is not the pinned one must fail the push\n{why}"
    );
    let stderr = result.stderr.to_lowercase();
    assert!(
        stderr.contains("fingerprint") || stderr.contains("certificate"),
        "the error must say the certificate/fingerprint did not match\n{why}"
    );
    assert!(
        result.stderr.contains(&agent.url),
        "the error must name the target\n{why}"
    );
    assert_untouched(&dst, "the source did not trust the target");
}

#[test]
fn a_changed_certificate_is_refused_with_what_to_check() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("a.bin"), 1, 10_000);
    let agent = sandbox.serve(&dst);
    let (port, old_fp) = (agent.port(), agent.fp().to_string());
    sandbox.push(&src).to(&agent.url).run().assert_ok();
    assert_same_tree(&src, &dst);

    assert_eq!(
        agent.terminate(),
        0,
        "an agent stopped with SIGTERM must exit cleanly"
    );
    std::fs::remove_dir_all(dst.join(".rainmaker/tls")).expect("delete the agent's identity");
    let agent = sandbox.serve_on(&dst, port);
    let new_fp = agent.fp().to_string();
    assert_ne!(
        old_fp, new_fp,
        "an agent whose identity was deleted must make a new certificate"
    );

    // A new source file must not reach a target we no longer trust.
    write_random(&src.join("b.bin"), 2, 10_000);
    let result = sandbox.push(&src).to(&agent.url).run();
    let why = result.describe();
    assert_eq!(
        result.code, 1,
        "a target whose certificate changed since first use must fail the push\n{why}"
    );
    let stderr = result.stderr.to_lowercase();
    assert!(
        stderr.contains("certificate") && stderr.contains("changed"),
        "the error must say the target's certificate changed\n{why}"
    );
    assert!(
        stderr.contains(&new_fp.to_lowercase()),
        "the error must show the fingerprint the target now presents ({new_fp}), so the user \
         can compare it with what the agent printed\n{why}"
    );
    assert!(
        result
            .stderr
            .contains(&sandbox.known_peers().display().to_string())
            || stderr.contains("--fingerprint"),
        "the error must say what to do: fix the known-peers file or pin the new fingerprint\n{why}"
    );
    assert!(
        !dst.join("b.bin").exists(),
        "nothing may be sent to a target whose certificate changed"
    );

    // The remedy the message names works: pin the new fingerprint.
    let pinned = sandbox.push(&src).to(&agent.url).fingerprint(&new_fp).run();
    pinned.assert_ok();
    assert_same_tree(&src, &dst);
}

#[test]
fn a_wrong_token_is_refused_on_both_sides() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("a.bin"), 1, 10_000);
    let agent = sandbox.serve(&dst);
    let other = sandbox.path("other-token");
    std::fs::write(&other, "not-the-pairing-token\n").unwrap();

    let result = sandbox.push(&src).to(&agent.url).token_file(&other).run();
    let why = result.describe();
    assert_eq!(
        result.code, 1,
        "a target that refuses our token fails the push\n{why}"
    );
    assert!(
        result.stderr.to_lowercase().contains("token"),
        "the error must say the token was refused\n{why}"
    );
    assert!(
        agent.wait_for_log("token", Duration::from_secs(5)),
        "the agent must log that it refused a wrong token; its log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("refused"),
        "the agent's log must say it refused the session; its log:\n{}",
        agent.log()
    );
    let known = std::fs::read_to_string(sandbox.known_peers()).unwrap_or_default();
    assert!(
        !known.contains(&format!("127.0.0.1:{}", agent.port())),
        "a target that refused us is not remembered as trusted:\n{known}"
    );
    assert_untouched(&dst, "the target refused the source");
}
