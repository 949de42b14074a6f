//! End to end: a target agent facing a hostile or broken client. A raw WebSocket client sends
//! what no RainMaker source would: bad hellos, garbage, oversize messages, paths that try to
//! leave the root, writes through a symlink planted on the target, data for files it never
//! began. Each case runs on a fresh connection; the agent must refuse it (a `Refused` naming
//! the cause, or a closed connection for transport-level garbage), stay up, and write nothing
//! outside its root. The command line's own refusals close the file.

mod common;

use common::{Agent, Sandbox, list, run_bounded};
use futures_util::{SinkExt, StreamExt};
use rainmaker_engine::hash::{block_hash, file_hash};
use rainmaker_engine::protocol::{
    self, FileBegin, MAGIC, MAX_MESSAGE_BYTES, Message, PROTOCOL_VERSION, Payload, Reuse,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;

/// Longest the agent may take to answer one message.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A target agent (`serve --insecure`) with a root and, next to it, a folder that must stay
/// empty.
struct Target {
    sandbox: Sandbox,
    agent: Agent,
    root: PathBuf,
    outside: PathBuf,
}

impl Target {
    fn start() -> Target {
        let sandbox = Sandbox::new();
        let root = sandbox.dir("root");
        let outside = sandbox.dir("outside");
        let agent = sandbox.serve_insecure(&root);
        Target {
            sandbox,
            agent,
            root,
            outside,
        }
    }

    /// The agent is still running and still answers a correct hello, nothing is outside the
    /// root, and the root holds nothing but the state folder and `allowed`.
    async fn assert_intact(&mut self, case: &str, allowed: &[&str]) {
        assert!(
            self.agent.is_alive(),
            "the agent must survive {case}; its log:\n{}",
            self.agent.log()
        );
        let mut ws = connect(self.agent.addr).await;
        send(&mut ws, &hello(PROTOCOL_VERSION, &self.sandbox.token())).await;
        match reply(&mut ws).await {
            Reply::Message(Message::Welcome { .. }) => {}
            other => panic!(
                "after {case} the agent must still welcome a correct source, got {other:?}; \
                 its log:\n{}",
                self.agent.log()
            ),
        }
        let _ = ws.close(None).await;
        assert_eq!(
            list(&self.outside),
            Vec::<String>::new(),
            "{case}: nothing may be written outside the root"
        );
        for escaped in ["escape", "x", "b"] {
            assert!(
                !self.sandbox.path(escaped).exists(),
                "{case}: {escaped} appeared next to the root"
            );
        }
        let unexpected: Vec<String> = list(&self.root)
            .into_iter()
            .filter(|n| n != ".rainmaker" && !allowed.contains(&n.as_str()))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{case}: nothing may be written in the root, found {unexpected:?}"
        );
    }

    /// A connection past the hello and the manifest, ready for mirror messages. Retries while
    /// the agent still winds down the previous (refused) session.
    async fn session(&self) -> Ws {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let mut ws = connect(self.agent.addr).await;
            send(&mut ws, &hello(PROTOCOL_VERSION, &self.sandbox.token())).await;
            match reply(&mut ws).await {
                Reply::Message(Message::Welcome { .. }) => {}
                other => panic!("a correct hello must be welcomed, got {other:?}"),
            }
            send(&mut ws, &Message::GetManifest { cached: None }).await;
            loop {
                match reply(&mut ws).await {
                    Reply::Message(Message::ManifestPart { .. }) => continue,
                    Reply::Message(Message::ManifestEnd { .. } | Message::ManifestSame { .. }) => {
                        return ws;
                    }
                    Reply::Message(Message::Refused { reason, .. })
                        if reason.contains("another source") && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        break;
                    }
                    other => {
                        panic!("GetManifest must be answered with the manifest, got {other:?}")
                    }
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the agent");
    let config = WebSocketConfig::default()
        .max_message_size(Some(4 * MAX_MESSAGE_BYTES))
        .max_frame_size(Some(4 * MAX_MESSAGE_BYTES));
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(config))
            .await
            .expect("WebSocket upgrade with the agent");
    ws
}

fn hello(version: u32, token: &str) -> Message {
    Message::Hello {
        magic: MAGIC,
        version,
        token: token.to_string(),
        source_name: "hostile-test".into(),
    }
}

/// Sends a message; the agent may already have closed the connection, which is fine.
async fn send(ws: &mut Ws, message: &Message) {
    send_raw(ws, WsMessage::Binary(protocol::encode(message).into())).await;
}

async fn send_raw(ws: &mut Ws, message: WsMessage) {
    let _ = tokio::time::timeout(REPLY_TIMEOUT, ws.send(message)).await;
}

/// What the agent answered.
#[derive(Debug)]
enum Reply {
    Message(Message),
    /// The connection ended, with how.
    Closed(String),
}

async fn reply(ws: &mut Ws) -> Reply {
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the agent must answer (or close) within 10 s");
        match next {
            Some(Ok(WsMessage::Binary(bytes))) => {
                let message = protocol::decode(&bytes).unwrap_or_else(|e| {
                    panic!("the agent sent a message that does not decode: {e}")
                });
                return Reply::Message(message);
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(frame))) => return Reply::Closed(format!("close {frame:?}")),
            Some(Ok(other)) => panic!("the agent sent a non-binary message: {other:?}"),
            Some(Err(e)) => return Reply::Closed(format!("error {e}")),
            None => return Reply::Closed("end of stream".into()),
        }
    }
}

/// Reads replies until the agent refuses; returns the reason. Fails on anything that shows
/// the agent accepted the message (a welcome, a file done).
async fn expect_refused(ws: &mut Ws, case: &str) -> String {
    loop {
        match reply(ws).await {
            Reply::Message(Message::Refused { reason, .. }) => {
                println!("{case}: refused: {reason}");
                return reason;
            }
            Reply::Message(Message::FileFailed { .. } | Message::Load { .. }) => continue,
            Reply::Message(other) => panic!("{case} must be refused, the agent answered {other:?}"),
            Reply::Closed(how) => {
                panic!("{case} must be refused with a reason, the connection just ended: {how}")
            }
        }
    }
}

/// Reads replies until the agent refuses or closes; fails if it accepts.
async fn expect_refused_or_closed(ws: &mut Ws, case: &str) -> String {
    loop {
        match reply(ws).await {
            Reply::Message(Message::Refused { reason, .. }) => {
                println!("{case}: refused: {reason}");
                return reason;
            }
            Reply::Message(Message::FileFailed { .. } | Message::Load { .. }) => continue,
            Reply::Message(other) => panic!("{case} must be refused, the agent answered {other:?}"),
            Reply::Closed(how) => {
                println!("{case}: closed: {how}");
                return how;
            }
        }
    }
}

/// A complete small file: its `FileBegin`, one `Data` and the `FileEnd`.
fn file_messages(id: u64, path: &str, content: &[u8]) -> Vec<Message> {
    let blocks = vec![block_hash(content)];
    vec![
        Message::FileBegin(FileBegin {
            id,
            path: path.to_string(),
            size: content.len() as u64,
            mtime_ns: 1_600_000_000_000_000_000,
            executable: false,
            hash: file_hash(content.len() as u64, &blocks),
            blocks,
            reuse: Vec::new(),
            resume_blocks: 0,
        }),
        Message::Data {
            id,
            offset: 0,
            payload: Payload::Raw(content.to_vec()),
        },
        Message::FileEnd { id },
    ]
}

/// The whole numbers in a text.
fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_and_garbage_are_refused() {
    let mut target = Target::start();
    let token = target.sandbox.token();

    let case = "a wrong token";
    let mut ws = connect(target.agent.addr).await;
    send(&mut ws, &hello(PROTOCOL_VERSION, "wrong-token")).await;
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.to_lowercase().contains("token"),
        "{case}: the reason must name the token, got {reason:?}"
    );
    assert!(
        target.agent.wait_for_log("token", Duration::from_secs(5)),
        "{case}: the agent must log the refusal; its log:\n{}",
        target.agent.log()
    );
    target.assert_intact(case, &[]).await;

    let case = "a hello of the next protocol version";
    let mut ws = connect(target.agent.addr).await;
    send(&mut ws, &hello(PROTOCOL_VERSION + 1, &token)).await;
    let reason = expect_refused(&mut ws, case).await;
    let found = numbers(&reason);
    assert!(
        found.contains(&(PROTOCOL_VERSION as u64))
            && found.contains(&(PROTOCOL_VERSION as u64 + 1)),
        "{case}: the reason must name both versions ({PROTOCOL_VERSION} and {}), got {reason:?}",
        PROTOCOL_VERSION + 1
    );
    target.assert_intact(case, &[]).await;

    let case = "a hello with a wrong magic";
    let mut ws = connect(target.agent.addr).await;
    send(
        &mut ws,
        &Message::Hello {
            magic: *b"NOTRAIN\0",
            version: PROTOCOL_VERSION,
            token: token.clone(),
            source_name: "x".into(),
        },
    )
    .await;
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.to_lowercase().contains("hello") || reason.contains("RainMaker"),
        "{case}: the reason must say this is not a RainMaker hello, got {reason:?}"
    );
    target.assert_intact(case, &[]).await;

    let case = "garbage bytes as the first message";
    let mut ws = connect(target.agent.addr).await;
    send_raw(&mut ws, WsMessage::Binary(vec![0xff; 64].into())).await;
    expect_refused_or_closed(&mut ws, case).await;
    target.assert_intact(case, &[]).await;

    let case = "a text message";
    let mut ws = connect(target.agent.addr).await;
    send_raw(&mut ws, WsMessage::Text("GET /etc/passwd".into())).await;
    expect_refused_or_closed(&mut ws, case).await;
    target.assert_intact(case, &[]).await;

    let case = "an oversize first message";
    let mut ws = connect(target.agent.addr).await;
    send_raw(
        &mut ws,
        WsMessage::Binary(vec![0u8; MAX_MESSAGE_BYTES + 1].into()),
    )
    .await;
    expect_refused_or_closed(&mut ws, case).await;
    target.assert_intact(case, &[]).await;

    let case = "an oversize message in a session";
    let mut ws = target.session().await;
    send_raw(
        &mut ws,
        WsMessage::Binary(vec![0u8; MAX_MESSAGE_BYTES + 1].into()),
    )
    .await;
    expect_refused_or_closed(&mut ws, case).await;
    target.assert_intact(case, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_leave_the_root_are_refused() {
    let mut target = Target::start();

    let case = "Mkdir ../escape";
    let mut ws = target.session().await;
    send(
        &mut ws,
        &Message::Mkdir {
            path: "../escape".into(),
        },
    )
    .await;
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.contains(".."),
        "{case}: the reason must name the `..`, got {reason:?}"
    );
    target.assert_intact(case, &[]).await;

    // Each path with what the refusal must name.
    let cases: [(&str, &[&str]); 7] = [
        ("/etc/rainmaker-test", &["absolute"]),
        ("C:/x", &[":", "drive"]),
        ("a\\..\\b", &["\\", "backslash"]),
        ("CON", &["reserved", "device"]),
        ("sub/../../x", &[".."]),
        ("a\0b", &["control", "NUL", "0x00"]),
        (".rainmaker/index.redb", &["state", ".rainmaker"]),
    ];
    for (i, (path, causes)) in cases.iter().enumerate() {
        let case = format!("FileBegin {path:?}");
        let mut ws = target.session().await;
        for message in file_messages(i as u64 + 1, path, b"evil\n") {
            send(&mut ws, &message).await;
        }
        let reason = expect_refused(&mut ws, &case).await;
        assert!(
            causes.iter().any(|c| reason.contains(c)),
            "{case}: the reason must name the cause (one of {causes:?}), got {reason:?}"
        );
        target.assert_intact(&case, &[]).await;
    }
    assert!(
        !Path::new("/etc/rainmaker-test").exists(),
        "an absolute path from the wire must never be written"
    );

    let case = "a reused block from ../outside";
    std::fs::write(target.sandbox.path("secret"), b"secret!").unwrap();
    let mut ws = target.session().await;
    let mut messages = file_messages(9, "stolen", b"secret!");
    if let Message::FileBegin(begin) = &mut messages[0] {
        begin.reuse.push(Reuse {
            index: 0,
            from_path: "../secret".into(),
            from_index: 0,
        });
    }
    send(&mut ws, &messages[0]).await;
    send(&mut ws, &messages[2]).await;
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.contains(".."),
        "{case}: the reason must name the `..`, got {reason:?}"
    );
    target.assert_intact(case, &[]).await;
}

// Not on Windows: makes a Unix symlink; a Windows symlink needs a privilege a test does not have.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_on_the_target_is_never_followed() {
    let mut target = Target::start();
    std::os::unix::fs::symlink(&target.outside, target.root.join("link")).unwrap();
    // A folder outside with a file in it, reachable through a second link.
    let victim = target.sandbox.dir("victim");
    std::fs::write(victim.join("keep.txt"), b"precious").unwrap();
    common::set_mtime(&victim.join("keep.txt"), 1_500_000_000, 0);
    std::os::unix::fs::symlink(&victim, target.root.join("vlink")).unwrap();
    let links = ["link", "vlink"];
    let victim_before = common::tree(&victim);

    let case = "a file written through a symlink";
    let mut ws = target.session().await;
    for message in file_messages(1, "link/evil", b"evil\n") {
        send(&mut ws, &message).await;
    }
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.contains("symlink") || reason.contains("link"),
        "{case}: the reason must name the symlink, got {reason:?}"
    );
    target.assert_intact(case, &links).await;

    let single = [
        (
            "a folder made through a symlink",
            Message::Mkdir {
                path: "link/sub".into(),
            },
        ),
        (
            "a delete through a symlink",
            Message::Delete {
                path: "vlink/keep.txt".into(),
            },
        ),
        (
            "a time and mode change through a symlink",
            Message::SetMeta {
                path: "vlink/keep.txt".into(),
                mtime_ns: 0,
                executable: true,
            },
        ),
    ];
    for (case, message) in single {
        let mut ws = target.session().await;
        send(&mut ws, &message).await;
        expect_refused(&mut ws, case).await;
        target.assert_intact(case, &links).await;
    }

    let case = "a block copied from a file through a symlink";
    let mut ws = target.session().await;
    let mut messages = file_messages(2, "stolen", b"precious");
    if let Message::FileBegin(begin) = &mut messages[0] {
        begin.reuse.push(Reuse {
            index: 0,
            from_path: "vlink/keep.txt".into(),
            from_index: 0,
        });
    }
    send(&mut ws, &messages[0]).await;
    send(&mut ws, &messages[2]).await;
    expect_refused(&mut ws, case).await;
    target.assert_intact(case, &links).await;

    assert_eq!(
        common::tree(&victim),
        victim_before,
        "a file outside the root, behind a symlink in it, must stay untouched"
    );
}

// Not on Windows: sets Unix permission bits.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_meta_on_a_folder_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut target = Target::start();
    std::fs::create_dir(target.root.join("d")).unwrap();
    std::fs::write(target.root.join("d/f"), b"kept\n").unwrap();
    let case = "SetMeta clearing a folder's execute bit";
    let mut ws = target.session().await;
    send(
        &mut ws,
        &Message::SetMeta {
            path: "d".into(),
            mtime_ns: 0,
            executable: false,
        },
    )
    .await;
    send(&mut ws, &Message::Finish).await;
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.contains("folder") && reason.contains('d'),
        "{case}: the reason must say a folder's mode is not set, got {reason:?}"
    );
    let mode = std::fs::metadata(target.root.join("d"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o100,
        0o100,
        "{case}: the agent must still be able to enter the folder (mode {mode:o})"
    );
    target.assert_intact(case, &["d"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_for_an_unknown_file_is_refused() {
    let mut target = Target::start();
    let case = "Data for a file id never begun";
    let mut ws = target.session().await;
    send(
        &mut ws,
        &Message::Data {
            id: 77,
            offset: 0,
            payload: Payload::Raw(b"orphan".to_vec()),
        },
    )
    .await;
    let reason = expect_refused(&mut ws, case).await;
    assert!(
        reason.contains("77") || reason.contains("unknown"),
        "{case}: the reason must name the unknown file id, got {reason:?}"
    );
    target.assert_intact(case, &[]).await;

    let case = "FileEnd for a file id never begun";
    let mut ws = target.session().await;
    send(&mut ws, &Message::FileEnd { id: 78 }).await;
    expect_refused(&mut ws, case).await;
    target.assert_intact(case, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_went_silent_gives_the_folder_up_to_one_that_waits() {
    let mut target = Target::start();
    let case = "a session whose source answers nothing while another waits";
    // The first source stops reading and sending, as one whose link was cut without a reset.
    let mut first = target.session().await;
    send(
        &mut first,
        &Message::Mkdir {
            path: "half".into(),
        },
    )
    .await;
    let waited = Instant::now();
    let mut second = target.session().await;
    println!(
        "{case}: the second source had the folder after {:.1} s",
        waited.elapsed().as_secs_f64()
    );
    send(&mut second, &Message::Mkdir { path: "ok".into() }).await;
    send(&mut second, &Message::Finish).await;
    match reply(&mut second).await {
        Reply::Message(Message::Finished { .. }) => {}
        other => panic!("{case}: the second session must finish, got {other:?}"),
    }
    // The first one was ended: what it says now changes nothing.
    send(
        &mut first,
        &Message::Mkdir {
            path: "late".into(),
        },
    )
    .await;
    match reply(&mut first).await {
        Reply::Message(Message::Refused { .. }) | Reply::Closed(_) => {}
        other => panic!("{case}: the silent session must have been ended, got {other:?}"),
    }
    drop((first, second));
    assert!(
        !target.root.join("late").exists(),
        "{case}: nothing from the ended session"
    );
    target.assert_intact(case, &["ok", "half"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_source_is_refused_while_one_mirrors() {
    let mut target = Target::start();
    let mut first = target.session().await;
    let case = "a second session while one is open";
    let mut second = connect(target.agent.addr).await;
    send(
        &mut second,
        &hello(PROTOCOL_VERSION, &target.sandbox.token()),
    )
    .await;
    send(&mut second, &Message::GetManifest { cached: None }).await;
    let refused = async {
        loop {
            match reply(&mut second).await {
                Reply::Message(Message::Welcome { .. }) => continue,
                Reply::Message(Message::Refused { reason, .. }) => break reason,
                other => panic!(
                    "{case}: two sources must never write into one root at once, got {other:?}"
                ),
            }
        }
    };
    // The first source is alive: it reads meanwhile, so it answers the ping the agent sends it
    // when the second one waits for the folder.
    let reason = tokio::select! {
        reason = refused => reason,
        other = reply(&mut first) => {
            panic!("{case}: a live first session must keep the folder, got {other:?}")
        }
    };
    println!("{case}: refused: {reason}");
    assert!(
        reason.contains("another source"),
        "{case}: the reason must say another source is mirroring, got {reason:?}"
    );
    // The first session is not disturbed by the refused second one.
    send(&mut first, &Message::Mkdir { path: "ok".into() }).await;
    send(&mut first, &Message::Finish).await;
    match reply(&mut first).await {
        Reply::Message(Message::Finished { .. }) => {}
        other => panic!("{case}: the first session must go on and finish, got {other:?}"),
    }
    assert!(
        target.root.join("ok").is_dir(),
        "{case}: the first session's folder must be made"
    );
    drop(first);
    target.assert_intact(case, &["ok"]).await;
}

#[test]
fn insecure_serve_refuses_a_non_loopback_address() {
    let sandbox = Sandbox::new();
    let root = sandbox.dir("root");
    let mut command = sandbox.command();
    command
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure", "--root"])
        .arg(&root)
        .arg("--token-file")
        .arg(sandbox.token_file());
    let (code, _, stderr) = run_bounded(command, Duration::from_secs(10));
    assert_ne!(
        code, 0,
        "plain ws:// on every interface must be refused:\n{stderr}"
    );
    assert!(
        stderr.contains("loopback"),
        "the error must say plain ws:// is for loopback only:\n{stderr}"
    );
}

#[test]
fn serve_refuses_a_missing_root() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path("no-such-root");
    let mut command = sandbox.command();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(&missing)
        .arg("--token-file")
        .arg(sandbox.token_file());
    let (code, _, stderr) = run_bounded(command, Duration::from_secs(10));
    assert_ne!(code, 0, "a missing root must stop the agent:\n{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the error must name the missing folder {}:\n{stderr}",
        missing.display()
    );
    assert!(
        !missing.exists(),
        "the agent must not create a root it was not given"
    );
}

#[test]
fn push_refuses_a_missing_source() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path("no-such-source");
    let result = sandbox
        .push(&missing)
        .to("ws://127.0.0.1:9")
        .insecure()
        .run();
    assert!(
        result.code != 0 && result.code != 3,
        "a missing source must fail the push\n{}",
        result.describe()
    );
    assert!(
        result.stderr.contains(&missing.display().to_string()),
        "the error must name the missing source {}\n{}",
        missing.display(),
        result.describe()
    );
}

/// Every file under the target's trash, by batch, with its content.
fn trash_contents(root: &Path) -> Vec<(String, String, String)> {
    let trash = root.join(".rainmaker/trash");
    let mut out = Vec::new();
    for batch in list(&trash) {
        let dir = trash.join(&batch);
        let mut stack = vec![dir.clone()];
        while let Some(folder) = stack.pop() {
            for entry in std::fs::read_dir(&folder).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(&dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    let body = std::fs::read_to_string(&path).unwrap();
                    out.push((batch.clone(), rel, body));
                }
            }
        }
    }
    out.sort();
    out
}

/// Sends `messages` then `Finish`, and waits for `Finished`.
async fn send_and_finish(ws: &mut Ws, messages: Vec<Message>, case: &str) {
    for message in messages {
        send(ws, &message).await;
    }
    send(ws, &Message::Finish).await;
    loop {
        match reply(ws).await {
            Reply::Message(Message::Finished { .. }) => return,
            Reply::Message(
                Message::FileDone { .. } | Message::FileFailed { .. } | Message::Load { .. },
            ) => continue,
            other => panic!("{case}: the session must finish, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_files_a_source_sent_before_its_clean_close_are_kept_though_no_reply_got_out() {
    let mut target = Target::start();
    let case = "a batch of files and a few more in one burst, then a clean close, no reply read";
    let mut ws = target.session().await;
    // The agent applies a batch of changes behind its reader, then tells the source each file
    // done; the few files after the batch and the close are read meanwhile, and once the close
    // is read, those replies can no longer go out.
    let files = rainmaker_engine::mirror::receive::STAGE_STEPS + 8;
    let names: Vec<String> = (0..files).map(|i| format!("f{i:05}")).collect();
    let content = |name: &str| name.as_bytes().to_vec();
    for (id, name) in names.iter().enumerate() {
        for message in file_messages(id as u64, name, &content(name)) {
            send(&mut ws, &message).await;
        }
    }
    ws.close(None).await.unwrap();
    // Read on, as a source that closes does, until the agent answers the close.
    let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    // Applying a batch of 4,096 files takes a while (under Wine, tens of seconds).
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| std::fs::read(target.root.join(n)).ok() != Some(content(n)))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        missing,
        0,
        "{case}: every file that arrived whole before the clean close is applied; agent log:\n{}",
        target.agent.log()
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    target.assert_intact(case, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trash_keeps_every_version_whatever_order_a_source_sends() {
    let target = Target::start();
    std::fs::create_dir_all(target.root.join("a")).unwrap();
    for (path, body) in [
        ("doc.txt", "original doc"),
        ("a/f", "f body"),
        ("a/g", "g body"),
    ] {
        std::fs::write(target.root.join(path), body).unwrap();
    }
    let case = "overwrite then delete, and a file then its folder";
    let mut ws = target.session().await;
    let mut messages = file_messages(1, "doc.txt", b"second doc");
    for path in ["doc.txt", "a/f", "a"] {
        messages.push(Message::Delete { path: path.into() });
    }
    send_and_finish(&mut ws, messages, case).await;
    let kept = trash_contents(&target.root);
    let bodies: Vec<&str> = kept.iter().map(|(_, _, body)| body.as_str()).collect();
    for wanted in ["original doc", "second doc", "f body", "g body"] {
        assert!(
            bodies.contains(&wanted),
            "{case}: every version the session replaced or deleted is in the trash; \
             {wanted:?} is missing from {kept:?}\nagent log:\n{}",
            target.agent.log()
        );
    }
    assert!(
        !target.agent.log().contains("deleting it"),
        "nothing falls back to a permanent delete:\n{}",
        target.agent.log()
    );
    assert_eq!(
        list(&target.root),
        [".rainmaker"],
        "{case}: the deletes happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_asks_for_the_manifest_has_a_batch_of_its_own() {
    let target = Target::start();
    for (path, body) in [("x.txt", "x body"), ("y.txt", "y body")] {
        std::fs::write(target.root.join(path), body).unwrap();
    }
    let mut ws = target.session().await;
    let first = vec![Message::Delete {
        path: "x.txt".into(),
    }];
    send_and_finish(&mut ws, first, "a first session").await;
    let _ = ws.close(None).await;

    let case = "a session straight from the hello to a delete";
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut ws = loop {
        let mut ws = connect(target.agent.addr).await;
        send(&mut ws, &hello(PROTOCOL_VERSION, &target.sandbox.token())).await;
        match reply(&mut ws).await {
            Reply::Message(Message::Welcome { .. }) => break ws,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("{case}: a correct hello must be welcomed, got {other:?}"),
        }
    };
    let second = vec![Message::Delete {
        path: "y.txt".into(),
    }];
    send_and_finish(&mut ws, second, case).await;
    let kept = trash_contents(&target.root);
    let batch_of = |name: &str| {
        kept.iter()
            .find(|(_, rel, _)| rel == name)
            .map(|(batch, _, _)| batch.clone())
            .unwrap_or_else(|| panic!("{name} must be in the trash: {kept:?}"))
    };
    assert_ne!(
        batch_of("x.txt"),
        batch_of("y.txt"),
        "{case}: each session's deletes go into a batch of its own: {kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_tells_how_busy_it_is_while_data_arrives_and_only_then() {
    let target = Target::start();
    let mut ws = connect(target.agent.addr).await;
    send(&mut ws, &hello(PROTOCOL_VERSION, &target.sandbox.token())).await;
    assert!(matches!(
        reply(&mut ws).await,
        Reply::Message(Message::Welcome { .. })
    ));
    // Twelve small files, 50 ms apart: the agent waits for data most of the time.
    let mut loads = Vec::new();
    let mut replies = Vec::new();
    for id in 0..12u64 {
        for message in file_messages(id, &format!("f{id}.bin"), &[id as u8; 1000]) {
            send(&mut ws, &message).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(&mut ws, &Message::Finish).await;
    loop {
        match reply(&mut ws).await {
            Reply::Message(Message::Load { busy_permille }) => loads.push(busy_permille),
            Reply::Message(Message::Finished { .. }) => break,
            Reply::Message(other) => replies.push(other),
            Reply::Closed(how) => panic!("the session must finish, it ended: {how}"),
        }
    }
    assert_eq!(
        replies
            .iter()
            .filter(|r| matches!(r, Message::FileDone { .. }))
            .count(),
        12,
        "{replies:?}"
    );
    assert!(
        !loads.is_empty(),
        "a target tells how busy it is while data arrives"
    );
    assert!(
        loads.iter().all(|busy| *busy < 700),
        "a target that waited for data most of the time is not busy: {loads:?}"
    );
    // Nothing follows the session's Finished until the source speaks again: a source that
    // reads the manifest next must not find a Load in it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut ws, &Message::GetManifest { cached: None }).await;
    match reply(&mut ws).await {
        Reply::Message(Message::ManifestPart { .. } | Message::ManifestEnd { .. }) => {}
        other => panic!("the manifest comes first, got {other:?}"),
    }
}
