//! End to end: the limits that keep failover possible. A source frozen with SIGSTOP (as a
//! machine that died with its connection half-open looks to the agent) lets go of the folder
//! after the idle limit, and a forced promotion ends its session at once; a source that is
//! merely quiet keeps its session, because it answers the agent's pings; strangers holding
//! hundreds of idle connections do not keep an honest source out; wrong tokens are slowed
//! down; secrets that others can read, or that are short, are warned about.

// On Windows the helpers of the tests that freeze a process with SIGSTOP go unused with those tests.
#![cfg_attr(windows, allow(dead_code, unused_imports))]

mod common;

use common::{Agent, Sandbox, staged_bytes, wait_identical, write_random};
use std::path::Path;
use std::time::{Duration, Instant};

/// The idle limit the agents of these tests run with (`RAINMAKER_TEST_IDLE_MS`).
const IDLE_MS: &str = "1500";

/// A second source's push into the agent's folder, with its own state folder.
fn push_from_another_source(sandbox: &Sandbox, agent: &Agent) -> common::PushResult {
    let other = sandbox.dir("other-source");
    std::fs::write(other.join("settings.xml"), b"<other/>").unwrap();
    sandbox
        .push(&other)
        .to(&agent.url)
        .fingerprint(agent.fp())
        .state_dir(&sandbox.dir("other-state"))
        .run()
}

/// `push --watch` of `source` to the admin agent `agent`, once it is in sync.
fn watch_until_in_sync(sandbox: &Sandbox, source: &Path, agent: &Agent) -> Agent {
    let watching = sandbox
        .push(source)
        .to(&agent.url)
        .fingerprint(agent.fp())
        .arg("--watch")
        .spawn_continuous();
    assert!(
        watching.wait_for_log("in sync", Duration::from_secs(20)),
        "{}",
        watching.log()
    );
    watching
}

// Not on Windows: freezes a process with SIGSTOP and SIGCONT, which Windows does not have.
#[cfg(unix)]
#[test]
fn a_frozen_source_lets_go_of_the_folder_after_the_idle_limit() {
    let sandbox = Sandbox::new();
    let (source, target) = (sandbox.dir("source"), sandbox.dir("target"));
    write_random(&source.join("db/tick/ES.ncd"), 1, 24 << 20);
    let agent = sandbox.serve_admin(&target, &[], &[("RAINMAKER_TEST_IDLE_MS", IDLE_MS)]);
    // Slow enough that the freeze lands mid-transfer.
    let watching = sandbox
        .push(&source)
        .to(&agent.url)
        .fingerprint(agent.fp())
        .arg("--bwlimit=2MB")
        .arg("--watch")
        .spawn_continuous();
    let started = Instant::now();
    while staged_bytes(&target) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the transfer never started:\n{}\n{}",
            watching.log(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    common::signal(watching.pid(), "STOP");
    let frozen = Instant::now();

    assert!(
        agent.wait_for_log("sent nothing for", Duration::from_secs(15)),
        "a source that answers nothing, not even pings, must lose its session:\n{}",
        agent.log()
    );
    let result = push_from_another_source(&sandbox, &agent);
    assert_eq!(
        result.code,
        0,
        "the folder is free again once the frozen source's session ended:\n{}\nagent:\n{}",
        result.describe(),
        agent.log()
    );
    eprintln!(
        "frozen source let go and another source mirrored {:.1} s after SIGSTOP (idle limit {IDLE_MS} ms)",
        frozen.elapsed().as_secs_f64()
    );
    common::signal(watching.pid(), "CONT");
    watching.sigkill();
}

// Not on Windows: freezes a process with SIGSTOP and SIGCONT, which Windows does not have.
#[cfg(unix)]
#[test]
fn promote_force_ends_the_session_of_a_frozen_source() {
    let sandbox = Sandbox::new();
    let (home, cloud) = (sandbox.dir("home"), sandbox.dir("cloud"));
    write_random(&home.join("db/tick/ES.ncd"), 2, 1 << 20);
    // The agent's own idle limit (30 s) is longer than this test waits: the promotion must
    // end the session itself.
    let agent = sandbox.serve_admin(&cloud, &[], &[]);
    let watching = watch_until_in_sync(&sandbox, &home, &agent);
    common::signal(watching.pid(), "STOP");

    let (code, _, stderr) = sandbox.remote(&agent, &sandbox.admin_token_file(), &["promote"]);
    assert_ne!(
        code, 0,
        "without force, a connected source stays the source"
    );
    assert!(
        stderr.contains("right now"),
        "the refusal says a source is connected: {stderr}"
    );

    let asked = Instant::now();
    let (code, _, stderr) =
        sandbox.remote(&agent, &sandbox.admin_token_file(), &["promote", "--force"]);
    assert_eq!(
        code,
        0,
        "promote --force is what a failover needs, frozen source or not: {stderr}\nagent:\n{}",
        agent.log()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the promotion took {:?}",
        asked.elapsed()
    );
    let (_, status, _) = sandbox.remote(&agent, &sandbox.admin_token_file(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["role"], "source", "{status}");
    assert_eq!(
        status["receiving"], false,
        "no session holds the folder: {status}"
    );
    eprintln!(
        "promote --force with a frozen source took {:.2} s",
        asked.elapsed().as_secs_f64()
    );

    // The old source wakes up and finds a new source in its place.
    common::signal(watching.pid(), "CONT");
    std::fs::write(home.join("late.txt"), b"written after the failover").unwrap();
    assert!(
        watching.wait_for_log("promoted", Duration::from_secs(20)),
        "the old source is refused and told why:\n{}",
        watching.log()
    );
    assert!(
        !cloud.join("late.txt").exists(),
        "nothing of it reached the new source"
    );
    watching.sigkill();
}

#[test]
fn a_quiet_source_keeps_its_session_by_answering_pings() {
    let sandbox = Sandbox::new();
    let (source, target) = (sandbox.dir("source"), sandbox.dir("target"));
    std::fs::write(source.join("workspace.xml"), b"<w/>").unwrap();
    // An idle limit short enough for several to pass, long enough that a busy machine (two
    // cores, Wine) still answers the pings in time.
    let agent = sandbox.serve_admin(&target, &[], &[("RAINMAKER_TEST_IDLE_MS", "1500")]);
    let watching = watch_until_in_sync(&sandbox, &source, &agent);
    // Several idle limits with nothing to send.
    std::thread::sleep(Duration::from_secs(6));
    write_random(&source.join("db/tick/NQ.ncd"), 3, 200_000);
    wait_identical(&source, &target, Duration::from_secs(20), &|| {
        watching.log()
    });
    let (agent_log, push_log) = (agent.log(), watching.log());
    assert!(
        !agent_log.contains("sent nothing for"),
        "a source with nothing to send is alive, not idle: it answers pings:\n{agent_log}"
    );
    assert!(
        !push_log.contains("offline"),
        "the kept connection survived the quiet time:\n{push_log}"
    );
    assert_eq!(
        agent_log.matches("source connected").count(),
        1,
        "one session all along:\n{agent_log}"
    );
}

/// Holds `count` idle TCP connections to `addr` open from the loopback addresses `sources`
/// (spread evenly), opening a new one a second after any the agent closes, until dropped.
struct IdleCrowd {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl IdleCrowd {
    fn start(addr: std::net::SocketAddr, sources: &[[u8; 4]], count: usize) -> IdleCrowd {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let sources = sources.to_vec();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let connects = std::sync::Arc::new(AtomicU64::new(0));
                let mut tasks = Vec::new();
                for i in 0..count {
                    let source = std::net::Ipv4Addr::from(sources[i % sources.len()]);
                    let (flag, connects) = (flag.clone(), connects.clone());
                    tasks.push(tokio::spawn(async move {
                        while !flag.load(Ordering::Relaxed) {
                            let socket = tokio::net::TcpSocket::new_v4().unwrap();
                            socket.bind((source, 0).into()).unwrap();
                            if let Ok(mut tcp) = socket.connect(addr).await {
                                connects.fetch_add(1, Ordering::Relaxed);
                                // Idle: read until the agent closes it, sending nothing.
                                let mut buf = [0u8; 64];
                                while !flag.load(Ordering::Relaxed) {
                                    use tokio::io::AsyncReadExt;
                                    let read = tokio::time::timeout(
                                        Duration::from_millis(100),
                                        tcp.read(&mut buf),
                                    );
                                    if let Ok(Ok(0) | Err(_)) = read.await {
                                        break;
                                    }
                                }
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
                connects.load(Ordering::Relaxed)
            })
        });
        IdleCrowd {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the crowd; returns how many connections it opened in all.
    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for IdleCrowd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn an_honest_push_gets_through_200_idle_connections() {
    let sandbox = Sandbox::new();
    let (source, target) = (sandbox.dir("source"), sandbox.dir("target"));
    write_random(&source.join("db/tick/ES.ncd"), 4, 2 << 20);
    std::fs::write(source.join("workspace.xml"), b"<w/>").unwrap();
    let agent = sandbox.serve(&target);
    // Strangers on five other addresses open 200 connections and say nothing.
    let strangers = [
        [127, 0, 0, 2],
        [127, 0, 0, 3],
        [127, 0, 0, 4],
        [127, 0, 0, 5],
        [127, 0, 0, 6],
    ];
    let crowd = IdleCrowd::start(agent.addr, &strangers, 200);
    std::thread::sleep(Duration::from_millis(1500));

    let started = Instant::now();
    let result = sandbox
        .push(&source)
        .to(&agent.url)
        .fingerprint(agent.fp())
        .run();
    let took = started.elapsed();
    let connects = crowd.stop();
    assert_eq!(
        result.code,
        0,
        "an honest source gets in while strangers hold 200 idle connections:\n{}\nagent:\n{}",
        result.describe(),
        agent.log()
    );
    common::assert_same_tree(&source, &target);
    let log = agent.log();
    let about_strangers = log
        .lines()
        .filter(|l| {
            strangers
                .iter()
                .any(|s| l.contains(&format!("127.0.0.{}:", s[3])))
        })
        .count();
    assert!(
        about_strangers <= 25,
        "turned-away strangers fill a few log lines, not one each ({connects} connects, \
         {about_strangers} lines):\n{log}"
    );
    eprintln!(
        "push through 200 idle connections: {:.2} s; the crowd opened {connects} connections; \
         {about_strangers} log lines about them",
        took.as_secs_f64()
    );
}

#[test]
fn short_or_readable_secrets_are_warned_about() {
    let sandbox = Sandbox::new();
    let root = sandbox.dir("target");
    let start = |token: &Path| {
        let mut command = sandbox.command();
        command
            .arg("serve")
            .arg("--root")
            .arg(&root)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--token-file")
            .arg(token);
        sandbox.start_agent(command)
    };

    let weak = sandbox.path("weak.token");
    std::fs::write(&weak, "hunter2\n").unwrap();
    common::chmod(&weak, 0o644);
    let agent = start(&weak);
    let log = agent.log();
    assert!(
        log.contains("7 characters") && log.contains("urandom"),
        "a short token is warned about, with how to make a good one:\n{log}"
    );
    // Not on Windows: who may read a file is its ACL there, which the agent does not inspect
    // (it limits its own state folder with one, fs::restrict_to_owner); chmod does nothing.
    #[cfg(unix)]
    assert!(
        log.contains("can be read by other users") && log.contains("chmod 600"),
        "a token file others can read is warned about:\n{log}"
    );
    drop(agent);

    // The sandbox's token is long and readable by its owner only; the key was made 0600.
    let agent = start(&sandbox.token_file());
    let log = agent.log();
    assert!(
        !log.contains("characters") && !log.contains("can be read"),
        "good secrets get no warning:\n{log}"
    );
    drop(agent);

    // Not on Windows, as above.
    #[cfg(unix)]
    {
        let key = root.join(".rainmaker/tls/key.der");
        common::chmod(&key, 0o644);
        let agent = start(&sandbox.token_file());
        let log = agent.log();
        assert!(
            log.contains("TLS key") && log.contains("can be read by other users"),
            "a TLS key others can read is warned about:\n{log}"
        );
    }
}
