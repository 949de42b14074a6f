//! Who dialed does not decide who sends: a peer with an agent's subscribe or admin token pulls
//! the agent's folder over the connection it opened; each token's role allows what it says
//! and nothing else, and every refusal says why. A source that says a pull is over before it
//! finished it is not believed. Real agents and real connections on loopback.

use rainmaker_engine::engine::{PullOptions, ServeOptions, Server, pull_once};
use rainmaker_engine::protocol::{ControlRequest, Message, Refusal};
use rainmaker_engine::transport::{self, ConnectOptions, Identity, Listener, Trust};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PAIRING: &str = "the-pairing-token-of-the-cloud-agent";
const SUBSCRIBE: &str = "the-subscribe-token-of-the-cloud-agent";
const ADMIN: &str = "the-admin-token-of-the-cloud-agent";

struct Cloud {
    url: String,
    fingerprint: String,
    stop: CancellationToken,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An agent with all three tokens, serving `root` on a free loopback port.
async fn cloud(root: &Path) -> Cloud {
    std::fs::create_dir_all(root).unwrap();
    let mut options = ServeOptions::new(root.to_path_buf(), "127.0.0.1:0", PAIRING, "cloud-a");
    options.subscribe_token = Some(SUBSCRIBE.into());
    options.admin_token = Some(ADMIN.into());
    let server = Server::bind(options).await.unwrap();
    let cloud = Cloud {
        url: format!("wss://127.0.0.1:{}", server.local_addr().port()),
        fingerprint: server.fingerprint().unwrap().to_owned(),
        stop: CancellationToken::new(),
    };
    tokio::spawn(server.run(cloud.stop.clone()));
    cloud
}

fn options(cloud: &Cloud, token: &str) -> ConnectOptions {
    ConnectOptions {
        url: cloud.url.clone(),
        trust: Trust::Pinned(cloud.fingerprint.clone()),
        token: token.into(),
        source_name: "home-pc".into(),
    }
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The files under `root` (outside `.rainmaker`) and their contents.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".rainmaker" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The agent's first answer to `first`, sent after a hello with `token`.
async fn answer(cloud: &Cloud, token: &str, first: Message) -> Message {
    let mut conn = transport::connect(&options(cloud, token)).await.unwrap();
    conn.send(&first).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.recv())
        .await
        .expect("the agent answers")
        .unwrap()
        .expect("the agent answers before it closes");
    conn.close().await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_receives_the_folder_over_its_own_connection_and_each_role_only_what_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud_root, home) = (dir.path().join("cloud"), dir.path().join("home"));
    let cloud = cloud(&cloud_root).await;
    write(
        &cloud_root,
        "db/tick/ES/20261201.Last.ncd",
        &vec![7u8; 300_000],
    );
    write(&cloud_root, "workspaces/Default.xml", b"<workspace/>");
    write(&home, "workspaces/Default.xml", b"<stale/>");
    write(&home, "only-at-home.txt", b"gone after the pull");

    // The subscribe token pulls: the folder arrives whole, what it replaced is in the trash.
    let pulled = pull_once(
        &PullOptions {
            root: home.clone(),
            trash_retention: Some(Duration::from_secs(3600)),
            from: options(&cloud, SUBSCRIBE),
        },
        &CancellationToken::new(),
    )
    .await
    .expect("the pull runs");
    assert!(pulled.in_sync, "the pull ends in sync: {pulled:?}");
    assert_eq!(pulled.from, "cloud-a");
    assert_eq!(
        files(&home),
        files(&cloud_root),
        "home holds the cloud's folder"
    );
    assert!(
        home.join(".rainmaker/trash").exists(),
        "what the pull replaced or deleted is kept in the trash"
    );

    // So does the admin token, after a change on the cloud.
    write(
        &cloud_root,
        "db/tick/ES/20261201.Last.ncd",
        &vec![8u8; 310_000],
    );
    let pulled = pull_once(
        &PullOptions {
            root: home.clone(),
            trash_retention: None,
            from: options(&cloud, ADMIN),
        },
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(pulled.in_sync, "{pulled:?}");
    assert_eq!(files(&home), files(&cloud_root));

    // The pairing token may mirror in, never read the folder.
    let refused = answer(&cloud, PAIRING, Message::Pull { once: true }).await;
    assert!(
        matches!(&refused, Message::Refused { refusal: Refusal::NotAllowed, reason } if reason.contains("subscribe code")),
        "a pull with the pairing token is refused, naming the code it needs: {refused:?}"
    );
    // The subscribe token may read, never mirror in nor command.
    let refused = answer(&cloud, SUBSCRIBE, Message::GetManifest { cached: None }).await;
    assert!(
        matches!(&refused, Message::Refused { refusal: Refusal::NotAllowed, reason } if reason.contains("pairing code")),
        "a mirror session with the subscribe token is refused: {refused:?}"
    );
    let refused = answer(
        &cloud,
        SUBSCRIBE,
        Message::Control {
            id: 1,
            request: ControlRequest::Promote { force: true },
        },
    )
    .await;
    assert!(
        matches!(
            &refused,
            Message::ControlReply {
                reply: rainmaker_engine::protocol::ControlReply::Refused {
                    refusal: Refusal::NotAllowed,
                    ..
                },
                ..
            }
        ),
        "a command with the subscribe token is refused: {refused:?}"
    );
    assert!(
        !cloud_root.join(".rainmaker/role").exists(),
        "the refused promotion changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_said_to_be_over_before_its_last_session_finished_is_not_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    write(&home, "settings.xml", b"<mine/>");
    // A peer that answers a pull with `Pulled{in_sync}` at once, before any session.
    let identity = Identity::load_or_create(&dir.path().join("tls")).unwrap();
    let fingerprint = identity.fingerprint();
    let listener = Listener::bind("127.0.0.1:0", Some(identity)).await.unwrap();
    let url = format!("wss://{}", listener.local_addr());
    let liar = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap();
        let (mut conn, _) = incoming.handshake(SUBSCRIBE, "liar").await.unwrap();
        let first = conn.recv().await.unwrap();
        assert_eq!(first, Some(Message::Pull { once: true }));
        conn.send(&Message::Pulled {
            in_sync: true,
            reason: String::new(),
        })
        .await
        .unwrap();
        // Stay until the puller hangs up.
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
    });
    let pulled = pull_once(
        &PullOptions {
            root: home.clone(),
            trash_retention: None,
            from: ConnectOptions {
                url,
                trust: Trust::Pinned(fingerprint),
                token: SUBSCRIBE.into(),
                source_name: "home-pc".into(),
            },
        },
        &CancellationToken::new(),
    )
    .await;
    let Err(error) = pulled else {
        panic!("a Pulled before any Finish must not count as in sync: {pulled:?}");
    };
    assert!(
        error.to_string().contains("before it finished"),
        "the error says what the source did wrong: {error}"
    );
    assert_eq!(
        std::fs::read(home.join("settings.xml")).unwrap(),
        b"<mine/>",
        "nothing changed at home"
    );
    liar.await.unwrap();
}
