//! End to end across platforms: the Linux `rainmaker` and a Windows `rainmaker.exe` running
//! under Wine mirror to each other over wss on loopback, as a Linux cloud server and a Windows
//! trading PC or server do.
//!
//! A Linux source can hold names a Windows target cannot: two names that differ only in case,
//! reserved device names (`CON`, `aux.txt`), names ending in a dot or a space. The Windows
//! target keeps the first of a case pair and refuses the second with the reason; the source
//! never sends the others, and lists them as skipped.
//!
//! These tests need the Windows agent and Wine: `scripts/test-windows` builds it and runs them
//! with `RAINMAKER_WINDOWS_EXE` naming it (and `RAINMAKER_WINE` the Wine runner). Elsewhere
//! they are ignored, so a plain `cargo test` on Linux does not need Wine.
#![cfg(unix)]

mod common;

use common::{Sandbox, assert_same_tree, list, random_bytes, tree, tree_diff, write_random};
use std::path::Path;
use std::process::Command;

/// Sets every file's time below `root` to a whole second: Windows keeps times in 100 ns
/// units, so a time with finer nanoseconds would arrive rounded, which the engine allows for
/// (plan::coarse_mtime) but an exact tree comparison would not.
fn whole_second_times(root: &Path) {
    for (i, (path, node)) in tree(root).into_iter().enumerate() {
        if matches!(node, common::Node::File { .. }) {
            common::set_mtime(&root.join(path), 1_700_000_000 + i as i64, 0);
        }
    }
}

/// `rainmaker.exe` under Wine, with the sandbox's data folder.
fn windows_command(sandbox: &Sandbox) -> Command {
    let exe = std::env::var_os("RAINMAKER_WINDOWS_EXE")
        .expect("RAINMAKER_WINDOWS_EXE names rainmaker.exe (scripts/test-windows sets it)");
    let wine = std::env::var_os("RAINMAKER_WINE")
        .expect("RAINMAKER_WINE names the Wine runner (scripts/test-windows sets it)");
    let mut command = Command::new(wine);
    command
        .arg(exe)
        .env("RAINMAKER_DATA_DIR", sandbox.path("data-windows"))
        .env_remove("RUST_LOG")
        // Wine's own errors, should it fail to start the program (scripts/wine/run's default
        // silences every channel).
        .env("WINEDEBUG", "-all,err+all")
        .stdin(std::process::Stdio::null());
    command
}

/// Runs the command `command` makes (a `windows_command`) to its end. In one CI run a push under Wine exited 1
/// having printed nothing, which `rainmaker` never does (every failure says why on stderr, and
/// `--json` prints its report on stdout): Wine had not started it, as it once failed to start
/// a process with ERROR_INTERNAL_ERROR (see `common::spawn`). Only then it is run once more,
/// with what Wine said shown.
fn run_under_wine(command: impl Fn() -> Command) -> (i32, String, String) {
    let (code, stdout, stderr) = common::run_bounded(command(), common::PUSH_TIMEOUT);
    if code != 1 || !stdout.is_empty() || stderr.contains("error:") {
        return (code, stdout, stderr);
    }
    eprintln!("Wine exited 1 before rainmaker.exe said anything; once more. Wine said:\n{stderr}");
    common::run_bounded(command(), common::PUSH_TIMEOUT)
}

/// `rainmaker.exe serve` under Wine on a free loopback port, paired by the Linux side.
fn serve_on_windows(sandbox: &Sandbox, root: &Path) -> common::Agent {
    let mut command = windows_command(sandbox);
    command
        .arg("serve")
        .arg("--root")
        .arg(root)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--token-file")
        .arg(sandbox.token_file())
        .arg("--name")
        .arg("windows-target");
    sandbox.start_agent(command)
}

#[test]
#[ignore = "needs the Windows agent under Wine; scripts/test-windows runs it"]
fn a_linux_source_mirrors_to_a_windows_target_which_refuses_what_windows_cannot_hold() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("db/NinjaTrader.sqlite"), 1, 700_000);
    write_random(&src.join("templates/Chart.xml"), 2, 5_000);
    std::fs::write(src.join("Data.txt"), b"first").unwrap();
    std::fs::write(src.join("data.txt"), b"second").unwrap();
    for name in ["CON", "aux.txt", "name.", "name "] {
        std::fs::write(src.join(name), name.as_bytes()).unwrap();
    }
    whole_second_times(&src);
    let agent = serve_on_windows(&sandbox, &dst);
    let result = sandbox
        .push(&src)
        .to(&agent.url)
        .fingerprint(agent.fp())
        .run();
    let why = format!("{}\nagent log:\n{}", result.describe(), agent.log());

    for name in ["CON", "aux.txt", "name.", "name "] {
        assert!(
            result.json["skipped"]
                .as_array()
                .is_some_and(|s| s.iter().any(|e| e["path"] == name)),
            "a name Windows cannot hold ({name:?}) is skipped by the source, with a reason\n{why}"
        );
    }
    let on_target = list(&dst);
    assert!(
        on_target.iter().any(|n| n == "Data.txt") && !on_target.iter().any(|n| n == "data.txt"),
        "the first of a case pair is kept and the second refused: {on_target:?}\n{why}"
    );
    assert_eq!(
        std::fs::read(dst.join("Data.txt")).unwrap(),
        b"first",
        "the second of a case pair does not overwrite the first\n{why}"
    );
    assert!(
        result.stderr.contains("ignores case") || result.stdout.contains("ignores case"),
        "the source hears why the second name was refused\n{why}"
    );
    let mut expected = tree(&src);
    for name in ["CON", "aux.txt", "name.", "name ", "data.txt"] {
        expected.remove(name);
    }
    let diffs = tree_diff(&expected, &tree(&dst));
    assert!(diffs.is_empty(), "{}\n{why}", diffs.join("\n"));
}

#[test]
#[ignore = "needs the Windows agent under Wine; scripts/test-windows runs it"]
fn a_windows_source_mirrors_to_a_linux_target_and_its_appends() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("db/tick.ncd"), 3, 3 << 20);
    write_random(&src.join("workspaces/Default.xml"), 4, 12_000);
    whole_second_times(&src);
    let agent = sandbox.serve(&dst);
    let push = |sandbox: &Sandbox| {
        run_under_wine(|| {
            let mut command = windows_command(sandbox);
            command
                .arg("push")
                .arg(&src)
                .arg("--once")
                .arg("--json")
                .arg("--to")
                .arg(&agent.url)
                .arg("--fingerprint")
                .arg(agent.fp())
                .arg("--token-file")
                .arg(sandbox.token_file())
                .arg("--state-dir")
                .arg(sandbox.path("state-windows"))
                .arg("--known-peers")
                .arg(sandbox.path("known-peers-windows"));
            command
        })
    };
    let (code, stdout, stderr) = push(&sandbox);
    assert_eq!(code, 0, "the Windows push succeeds:\n{stdout}\n{stderr}");
    assert_same_tree(&src, &dst);

    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("db/tick.ncd"))
        .unwrap();
    std::io::Write::write_all(&mut file, &random_bytes(5, 40_000)).unwrap();
    drop(file);
    whole_second_times(&src);
    let (code, stdout, stderr) = push(&sandbox);
    assert_eq!(
        code, 0,
        "the second Windows push succeeds:\n{stdout}\n{stderr}"
    );
    assert_same_tree(&src, &dst);
}
