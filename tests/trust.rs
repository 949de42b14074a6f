//! End to end: who a source trusts and who a target lets in. A pinned fingerprint that does
//! not match, a target whose certificate changed after it was first trusted, a source with the
//! wrong pairing token, a target neither pinned nor known, and a pairing code that points at an
//! impostor. In each case nothing may be written on the target, and no token reaches a peer
//! that is not trusted.

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

// Not on Windows: it stops the agent with SIGTERM, which Windows does not have (the
// service stop is in tests/windows.rs).
#[cfg(unix)]
#[test]
fn a_changed_certificate_is_refused_with_what_to_check() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("a.bin"), 1, 10_000);
    let agent = sandbox.serve(&dst);
    let (port, old_fp) = (agent.port(), agent.fp().to_string());
    sandbox
        .push(&src)
        .to(&agent.url)
        .trust_first_use()
        .run()
        .assert_ok();
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

    let result = sandbox
        .push(&src)
        .to(&agent.url)
        .token_file(&other)
        .trust_first_use()
        .run();
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

/// A listener that accepts nothing: whether anything connected to it.
struct Silent(std::net::TcpListener);

impl Silent {
    fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Silent(listener)
    }

    fn url(&self) -> String {
        format!("wss://{}", self.0.local_addr().unwrap())
    }

    fn was_contacted(&self) -> bool {
        self.0.accept().is_ok()
    }
}

#[test]
fn a_target_neither_pinned_nor_known_is_not_contacted() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    write_random(&src.join("a.bin"), 1, 1_000);
    let stranger = Silent::start();
    let result = sandbox.push(&src).to(&stranger.url()).run();
    let why = result.describe();
    assert_eq!(result.code, 1, "an unpinned target fails the push\n{why}");
    assert!(
        result.stderr.contains("pairing code") && result.stderr.contains("--fingerprint"),
        "the error says how to pin the target\n{why}"
    );
    assert!(
        !stranger.was_contacted(),
        "without a pin and without --trust-first-use nothing may connect: the token would go \
         to whoever answers\n{why}"
    );
    assert!(
        !sandbox.known_peers().exists(),
        "nothing is recorded for a target that was not trusted"
    );
}

#[test]
fn a_pairing_code_pins_the_certificate_before_the_token_leaves() {
    let sandbox = Sandbox::new();
    let (src, dst, fake) = (sandbox.dir("src"), sandbox.dir("dst"), sandbox.dir("fake"));
    write_random(&src.join("a.bin"), 1, 10_000);
    let agent = sandbox.serve(&dst);
    let code = agent
        .code
        .clone()
        .expect("the helpers pair every wss agent");
    assert!(
        code.starts_with(&format!(
            "rainmaker://127.0.0.1:{}#{}/",
            agent.port(),
            agent.fp()
        )),
        "the code names the address the agent listens on and its fingerprint: {code}"
    );

    // An impostor answers where the code points (a hijacked name or address): another
    // certificate, and a token file of its own, so it would log any token it was sent.
    let impostor_token = sandbox.path("impostor-token");
    std::fs::write(&impostor_token, "the-impostor-does-not-know-the-token\n").unwrap();
    let mut command = sandbox.command();
    command
        .arg("serve")
        .arg("--root")
        .arg(&fake)
        .args(["--listen", "127.0.0.1:0", "--token-file"])
        .arg(&impostor_token);
    let impostor = sandbox.start_agent(command);
    let hijacked = code.replacen(
        &format!(":{}#", agent.port()),
        &format!(":{}#", impostor.port()),
        1,
    );
    let result = sandbox.push(&src).to(&hijacked).run();
    let why = result.describe();
    assert_eq!(
        result.code, 1,
        "a certificate other than the pinned one fails\n{why}"
    );
    assert!(
        result.stderr.contains(impostor.fp()),
        "the error shows the certificate that answered\n{why}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !impostor.log().contains("wrong pairing token")
            && !impostor.log().contains("refused a session"),
        "the token must not reach a certificate the code does not pin:\n{}",
        impostor.log()
    );
    assert_untouched(&fake, "the impostor received nothing");

    // The real code works without a token file, a fingerprint or the known-peers file.
    let mut command = sandbox.command();
    command
        .arg("push")
        .arg(&src)
        .args(["--to", &code, "--once", "--state-dir"])
        .arg(sandbox.state_dir());
    let (exit, stdout, stderr) = common::run_bounded(command, Duration::from_secs(40));
    assert_eq!(
        exit, 0,
        "a pairing code is all a push needs:\n{stdout}\n{stderr}"
    );
    assert_same_tree(&src, &dst);
    assert!(
        !sandbox.known_peers().exists(),
        "a pinned target needs no known-peers entry"
    );
}

#[test]
fn serve_keeps_the_token_out_of_its_log_and_pair_prints_the_codes() {
    let sandbox = Sandbox::new();
    let dst = sandbox.dir("dst");
    let admin = sandbox.path("admin-token");
    std::fs::write(&admin, "admin-secret-for-the-tests-0123456789\n").unwrap();
    let agent = sandbox.serve(&dst);
    assert!(
        !agent.log().contains(&sandbox.token()),
        "stderr that is not a terminal may be a log: no token in it\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("rainmaker pair"),
        "serve says how to show the pairing code\n{}",
        agent.log()
    );

    let pair = |args: &[&str]| {
        let mut command = sandbox.command();
        command
            .arg("pair")
            .arg("--root")
            .arg(&dst)
            .arg("--token-file")
            .arg(sandbox.token_file())
            .arg("--admin-token-file")
            .arg(&admin)
            .args(args);
        common::run_bounded(command, Duration::from_secs(10))
    };
    let (code, stdout, stderr) = pair(&["--listen", "0.0.0.0:7878"]);
    assert_eq!(code, 0, "{stderr}");
    #[cfg(unix)]
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    #[cfg(windows)]
    let host = std::env::var("COMPUTERNAME").unwrap();
    let host = host.trim().to_ascii_lowercase();
    assert_eq!(
        stdout.trim(),
        format!("rainmaker://{host}:7878#{}/{}", agent.fp(), sandbox.token()),
        "an agent on every interface is named by the machine's host name"
    );
    let (code, stdout, stderr) = pair(&["--listen", "0.0.0.0:7878", "--host", "backup1.example"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("rainmaker://backup1.example:7878#"),
        "{stdout}"
    );
    let (code, stdout, stderr) = pair(&["--listen", "127.0.0.1:7878", "--admin"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "rainmaker-admin://127.0.0.1:7878#{}/admin-secret-for-the-tests-0123456789",
            agent.fp()
        )
    );
    assert!(
        stderr.contains("commands this agent"),
        "pair says what the code allows: {stderr}"
    );
    let (code, _, stderr) = pair(&["--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0, "a code with port 0 reaches nothing");
    assert!(stderr.contains("--listen"), "{stderr}");
}
