//! End to end on Windows (built for Windows, run on Windows or under Wine by
//! `scripts/test-windows`): what a Windows trading PC or server does that Linux does not.
//!
//! - A platform keeps its files open for writing and lets others only read them
//!   (`FILE_SHARE_READ`, no `FILE_SHARE_DELETE`); a helper process built for Windows (this test
//!   program, started again as [`helper_holds_a_file_open_for_writing`]) does that while it
//!   appends, and RainMaker still mirrors the file. A file held with no read sharing at all is
//!   read through a shadow copy of its volume (not under Wine, which has none: there the push
//!   says so and keeps the backup's copy).
//! - A rename that changes only the case of a name, which a case-insensitive file system sees as
//!   the same name.
//! - Paths longer than the old 260-character limit.
//! - The agent as a Windows service: `rainmaker service install`, `status` and `uninstall`
//!   through `sc.exe` and the service manager, with the service serving a real push.
#![cfg(windows)]

mod common;

use common::{Sandbox, assert_same_tree, list, random_bytes, run_bounded, write_random};
use rainmaker_engine::win32::under_wine;
use std::io::{BufRead, BufReader, Write};
use std::os::windows::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `FILE_SHARE_READ`: others may read, but not write, rename or delete.
const FILE_SHARE_READ: u32 = 0x1;
/// `ERROR_SHARING_VIOLATION`.
const SHARING_VIOLATION: i32 = 32;
/// What the helper appends at a time.
const LINE: usize = 4096;

/// Not a test: the helper process of
/// [`a_file_held_open_for_writing_by_another_process_is_mirrored_while_it_grows`]. Started by
/// that test with `RAINMAKER_TEST_HOLD` naming a file, it opens the file for appending with
/// only `FILE_SHARE_READ`, as NinjaTrader and MetaTrader hold their databases and logs, says
/// `holding` on stdout, appends a line every few milliseconds and exits when the file named
/// by `RAINMAKER_TEST_HOLD_STOP` appears (or after a minute).
#[test]
#[ignore = "a helper process the share-mode test starts, not a test of its own"]
fn helper_holds_a_file_open_for_writing() {
    let path = std::env::var_os("RAINMAKER_TEST_HOLD").expect("RAINMAKER_TEST_HOLD names the file");
    let stop = std::env::var_os("RAINMAKER_TEST_HOLD_STOP").expect("and RAINMAKER_TEST_HOLD_STOP");
    // `RAINMAKER_TEST_HOLD_SHARE=none`: nobody else may even read it.
    let share = match std::env::var("RAINMAKER_TEST_HOLD_SHARE").as_deref() {
        Ok("none") => 0,
        _ => FILE_SHARE_READ,
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .share_mode(share)
        .open(&path)
        .expect("open the file for appending");
    println!("holding");
    std::io::stdout().flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seed = 5000;
    while !Path::new(&stop).exists() && Instant::now() < deadline {
        file.write_all(&random_bytes(seed, LINE)).unwrap();
        seed += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_file_held_open_for_writing_by_another_process_is_mirrored_while_it_grows() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    let path = src.join("db/NinjaTrader.sqlite.log");
    write_random(&path, 70, 8 << 20);
    write_random(&src.join("db/quiet.bin"), 71, 100_000);
    let stop = sandbox.path("stop-holding");
    let mut helper = hold(&path, &stop, "read");

    // The helper holds it as a platform does: nobody else may write it or delete it.
    let write = std::fs::OpenOptions::new().write(true).open(&path);
    assert_eq!(
        write.err().and_then(|e| e.raw_os_error()),
        Some(SHARING_VIOLATION),
        "with only FILE_SHARE_READ granted, opening the file for writing is a sharing violation"
    );
    assert_eq!(
        std::fs::remove_file(&path)
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(SHARING_VIOLATION),
        "without FILE_SHARE_DELETE the file cannot be deleted while it is held"
    );

    let agent = sandbox.serve(&dst);
    let first = sandbox.push(&src).target(&agent).run();
    let mirrored = std::fs::read(dst.join("db/NinjaTrader.sqlite.log")).unwrap_or_default();
    let source_now = std::fs::read(&path).expect("reading a held file with share modes works");
    std::fs::write(&stop, b"").unwrap();
    let status = common::wait_bounded(&mut helper, Duration::from_secs(20))
        .expect("the helper stops when told");
    assert!(status.success(), "the helper ran without error: {status}");
    first.assert_ok();
    assert!(
        mirrored.len() >= 8 << 20 && source_now.starts_with(&mirrored),
        "while the file is held and grows, the target holds a prefix the source really had \
         ({} of {} bytes)",
        mirrored.len(),
        source_now.len()
    );
    assert_eq!(
        std::fs::read(dst.join("db/quiet.bin")).unwrap(),
        random_bytes(71, 100_000)
    );

    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);
}

/// Starts the helper holding `path` with the share mode `share` (`read` or `none`), and waits
/// until it holds the file; it stops once `stop` exists.
fn hold(path: &Path, stop: &Path, share: &str) -> std::process::Child {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_holds_a_file_open_for_writing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAINMAKER_TEST_HOLD", path)
        .env("RAINMAKER_TEST_HOLD_STOP", stop)
        .env("RAINMAKER_TEST_HOLD_SHARE", share)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the helper process");
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("holding"))),
        "the helper opens the file"
    );
    // The rest of what it prints is read too: with its pipe closed, the helper would fail.
    std::thread::spawn(move || lines.for_each(drop));
    helper
}

/// A file held with no read sharing at all cannot be read by anyone; Windows shows it as it
/// stood at one instant in a shadow copy of its volume, which RainMaker reads it from
/// (`shadow.rs`). Wine has no shadow copies: there the push must say so, name the file, not
/// claim to be in sync, and leave the backup's last copy of it untouched.
#[test]
fn a_file_held_without_read_sharing_is_read_through_a_shadow_copy() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    let path = src.join("MQL5/Files/ticks.bin");
    write_random(&path, 80, 1 << 20);
    write_random(&src.join("MQL5/quiet.bin"), 81, 50_000);
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();

    let stop = sandbox.path("stop-holding");
    let mut helper = hold(&path, &stop, "none");
    assert_eq!(
        std::fs::read(&path).err().and_then(|e| e.raw_os_error()),
        Some(SHARING_VIOLATION),
        "held with no sharing, the file cannot be read by another process"
    );
    write_random(&src.join("MQL5/quiet.bin"), 82, 60_000);
    let run = sandbox.push(&src).target(&agent).run();
    std::fs::write(&stop, b"").unwrap();
    let status = common::wait_bounded(&mut helper, Duration::from_secs(20))
        .expect("the helper stops when told");
    assert!(status.success(), "the helper ran without error: {status}");
    let source_now = std::fs::read(&path).expect("the helper let go of it");
    let mirrored = std::fs::read(dst.join("MQL5/Files/ticks.bin")).unwrap();
    assert_eq!(
        std::fs::read(dst.join("MQL5/quiet.bin")).unwrap(),
        random_bytes(82, 60_000),
        "the rest of the folder is mirrored\n{}",
        run.describe()
    );
    if under_wine() {
        for line in run.stderr.lines().filter(|l| l.starts_with("skipped")) {
            eprintln!("under Wine: {line}");
        }
        assert_ne!(
            run.code,
            0,
            "not in sync without the held file\n{}",
            run.describe()
        );
        assert!(
            run.stderr.contains("MQL5/Files/ticks.bin")
                && run.stderr.contains("without sharing it for reading")
                && run.stderr.contains("shadow copy"),
            "the push names the file and why it could not be read\n{}",
            run.describe()
        );
        assert_eq!(
            mirrored,
            random_bytes(80, 1 << 20),
            "the backup keeps its last copy of the held file"
        );
    } else {
        run.assert_ok();
        assert!(
            mirrored.len() >= 1 << 20 && source_now.starts_with(&mirrored),
            "the backup holds the file as it stood at one instant ({} of {} bytes)",
            mirrored.len(),
            source_now.len()
        );
    }
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);
}

/// Renames `from` to `to`, which differ only in case. Windows does it in one rename; Wine 8
/// keeps the old case then (its file names are Linux names underneath), so under Wine the
/// source goes through a temporary name. The target sees a case-only rename either way.
fn rename_case(from: &Path, to: &Path) {
    if under_wine() {
        let aside = from.with_extension("case-rename");
        std::fs::rename(from, &aside).unwrap();
        std::fs::rename(&aside, to).unwrap();
    } else {
        std::fs::rename(from, to).unwrap();
    }
}

#[test]
fn a_rename_that_changes_only_case_renames_the_backup() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("Logs/Trace.txt"), 80, 50_000);
    write_random(&src.join("Data.txt"), 81, 20_000);
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);

    rename_case(&src.join("Data.txt"), &src.join("data.txt"));
    rename_case(&src.join("Logs/Trace.txt"), &src.join("Logs/TRACE.txt"));
    rename_case(&src.join("Logs"), &src.join("logs"));
    assert_eq!(
        list(&src),
        ["data.txt", "logs"],
        "Windows renames by case alone"
    );
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_eq!(
        list(&dst)
            .into_iter()
            .filter(|n| n != ".rainmaker")
            .collect::<Vec<_>>(),
        ["data.txt", "logs"],
        "the backup takes the new case of a file and of a folder"
    );
    assert_eq!(list(&dst.join("logs")), ["TRACE.txt"]);
    assert_same_tree(&src, &dst);
}

#[test]
fn paths_longer_than_260_characters_are_mirrored() {
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    let mut rel = String::new();
    for i in 0..8 {
        rel.push_str(&format!("folder-{i}-{}/", "x".repeat(30)));
    }
    rel.push_str("indicator-settings.xml");
    let deep = src.join(&rel);
    assert!(
        deep.as_os_str().len() > 300 && dst.join(&rel).as_os_str().len() > 300,
        "the path is longer than MAX_PATH (260) on both sides"
    );
    write_random(&deep, 90, 70_000);
    let agent = sandbox.serve(&dst);
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);

    // And an edit to it arrives too.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&deep)
        .unwrap()
        .write_all(b"<more/>")
        .unwrap();
    sandbox.push(&src).target(&agent).run().assert_ok();
    assert_same_tree(&src, &dst);
}

/// `sc.exe` with its output, bounded.
fn sc(args: &[&str]) -> (i32, String) {
    let mut command = Command::new("sc.exe");
    command.args(args);
    let (code, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
    (code, format!("{stdout}{stderr}"))
}

/// Waits until `sc query RainMaker` shows `state` (`RUNNING`, `STOPPED`).
fn wait_for_state(state: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, out) = sc(&["query", "RainMaker"]);
        if out.contains(state) || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_service_installs_serves_a_push_and_uninstalls() {
    let (code, out) = sc(&["query", "RainMaker"]);
    assert_ne!(
        code, 0,
        "a RainMaker service is installed already; this test installs and removes its own:\n{out}"
    );
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("a.bin"), 100, 300_000);
    let port = common::dead_port();
    let config = sandbox.path("rainmaker.toml");
    let toml_path = |p: &Path| p.display().to_string().replace('\\', "\\\\");
    std::fs::write(
        &config,
        format!(
            "[serve]\nroot = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\ninsecure = true\n",
            toml_path(&dst),
            toml_path(&sandbox.token_file()),
        ),
    )
    .unwrap();

    let mut install = sandbox.command();
    install
        .arg("--config")
        .arg(&config)
        .args(["service", "install"]);
    let (code, stdout, stderr) = run_bounded(install, Duration::from_secs(60));
    let installed = code == 0;
    let running = if installed {
        wait_for_state("RUNNING", Duration::from_secs(30))
    } else {
        String::new()
    };
    // RUNNING is what the agent reports before it listens: wait for its port.
    let listening = installed && {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let pushed = listening.then(|| {
        sandbox
            .push(&src)
            .to(&format!("ws://127.0.0.1:{port}"))
            .insecure()
            .run()
    });

    let mut status = sandbox.command();
    status.args(["service", "status"]);
    let (_, status_out, _) = run_bounded(status, Duration::from_secs(30));
    let mut uninstall = sandbox.command();
    uninstall.args(["service", "uninstall"]);
    let (uninstalled, un_out, un_err) = run_bounded(uninstall, Duration::from_secs(60));
    let (gone, after) = sc(&["query", "RainMaker"]);

    assert!(installed, "`service install` failed:\n{stdout}\n{stderr}");
    assert!(
        running.contains("RUNNING"),
        "the service manager runs the agent after install:\n{running}"
    );
    assert!(
        listening,
        "the service listens on 127.0.0.1:{port} within 30 s"
    );
    pushed.unwrap().assert_ok();
    assert_same_tree(&src, &dst);
    // Left out under Wine: Wine 8's sc.exe has no `queryex`, which `service status` runs, and
    // prints nothing for it.
    if !under_wine() {
        assert!(
            status_out.contains("RainMaker") && status_out.contains("RUNNING"),
            "`service status` shows the service manager's view:\n{status_out}"
        );
    }
    assert_eq!(
        uninstalled, 0,
        "`service uninstall` stops and removes it:\n{un_out}\n{un_err}"
    );
    assert_ne!(gone, 0, "no service is left behind:\n{after}");
}
