//! Who dialed does not decide who sends: a peer with an agent's subscribe or admin token pulls
//! the agent's folder over the connection it opened; each token's role allows what it says
//! and nothing else, and every refusal says why. A source that says a pull is over before it
//! finished it is not believed. Real agents and real connections on loopback.

#[path = "../../../tests/common/tree.rs"]
mod tree;

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
    cloud_with(root, None).await
}

/// [`cloud`], with `push_to` the only agents it may send its folder to.
async fn cloud_with(root: &Path, push_to: Option<Vec<String>>) -> Cloud {
    std::fs::create_dir_all(root).unwrap();
    let mut options = ServeOptions::new(root.to_path_buf(), "127.0.0.1:0", PAIRING, "cloud-a");
    options.subscribe_token = Some(SUBSCRIBE.into());
    options.admin_token = Some(ADMIN.into());
    options.push_to = push_to;
    options.trash_retention = Some(Duration::from_secs(3600));
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

/// Pulls `cloud`'s folder (or, with `batch`, that batch of its trash) into `root` with
/// `token`, keeping what it replaces for `trash_retention`.
async fn pull(
    cloud: &Cloud,
    token: &str,
    root: &Path,
    trash_retention: Option<Duration>,
    batch: Option<String>,
) -> Result<rainmaker_engine::engine::Pulled, rainmaker_engine::engine::EngineError> {
    let options = PullOptions {
        root: root.to_path_buf(),
        trash_retention,
        from: options(cloud, token),
        trash_batch: batch,
    };
    pull_once(&options, &CancellationToken::new()).await
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The tree under `root` (outside `.rainmaker`): paths, sizes, hashes, times.
fn files(root: &Path) -> std::collections::BTreeMap<String, tree::Node> {
    tree::tree(root)
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
    let pulled = pull(
        &cloud,
        SUBSCRIBE,
        &home,
        Some(Duration::from_secs(3600)),
        None,
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
    let pulled = pull(&cloud, ADMIN, &home, None, None).await.unwrap();
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
async fn with_push_to_the_admin_token_cannot_pull_the_folder_elsewhere_and_the_subscribe_token_can()
{
    let dir = tempfile::tempdir().unwrap();
    let (cloud_root, home) = (dir.path().join("cloud"), dir.path().join("home"));
    let cloud = cloud_with(&cloud_root, Some(vec!["cloud-b.example.com:7878".into()])).await;
    write(&cloud_root, "chart.xml", b"<chart/>");
    std::fs::create_dir_all(&home).unwrap();
    let refused = answer(&cloud, ADMIN, Message::Pull { once: true }).await;
    assert!(
        matches!(&refused, Message::Refused { refusal: Refusal::NotAllowed, reason } if reason.contains("push_to")),
        "an admin pull is refused where push_to limits where the folder goes: {refused:?}"
    );
    let pulled = pull(&cloud, SUBSCRIBE, &home, None, None).await.unwrap();
    assert!(pulled.in_sync, "{pulled:?}");
    assert_eq!(files(&home), files(&cloud_root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_takes_back_a_trash_batch_over_its_own_connection_and_nobody_else_can() {
    use rainmaker_engine::engine::{PushOptions, Remote, TargetSpec, push_once};
    let dir = tempfile::tempdir().unwrap();
    let (source, cloud_root) = (dir.path().join("pc"), dir.path().join("cloud"));
    let cloud = cloud(&cloud_root).await;
    write(&source, "workspaces/Default.xml", b"<before/>");
    write(&source, "templates/Mine.xml", b"<template/>");
    let push = || async {
        let options = PushOptions::new(
            source.clone(),
            vec![TargetSpec::dial(
                cloud.url.clone(),
                Trust::Pinned(cloud.fingerprint.clone()),
                PAIRING,
            )],
            dir.path().join("index"),
        );
        let (events, _) = rainmaker_engine::event::channel();
        let report = push_once(&options, &events, &CancellationToken::new())
            .await
            .unwrap();
        assert!(report.ok, "{report:?}");
    };
    push().await;
    // A session that replaces one file and deletes another: both go to the cloud's trash.
    write(&source, "workspaces/Default.xml", b"<after/>");
    std::fs::remove_file(source.join("templates/Mine.xml")).unwrap();
    push().await;

    let mut admin = Remote::connect(&options(&cloud, ADMIN)).await.unwrap();
    let batches = admin.trash().await.unwrap();
    admin.close().await;
    let batch = batches
        .iter()
        .find(|b| b.files == 2)
        .unwrap_or_else(|| panic!("the session's batch is listed: {batches:?}"));
    assert_eq!(
        batch.paths,
        ["templates/Mine.xml", "workspaces/Default.xml"]
    );

    let restore = |token: &'static str, name: String, into: std::path::PathBuf| {
        let cloud = &cloud;
        async move {
            std::fs::create_dir_all(&into).unwrap();
            pull(cloud, token, &into, None, Some(name)).await
        }
    };
    // Only the admin code takes the trash back.
    let refused = restore(SUBSCRIBE, batch.name.clone(), dir.path().join("r1")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("admin code")),
        "{refused:?}"
    );
    let refused = restore(ADMIN, "../../tls".into(), dir.path().join("r2")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("no batch")),
        "a name that is no batch reaches nothing: {refused:?}"
    );
    let into = dir.path().join("restored");
    let pulled = restore(ADMIN, batch.name.clone(), into.clone())
        .await
        .unwrap();
    assert!(pulled.in_sync, "{pulled:?}");
    assert_eq!(
        std::fs::read(into.join("workspaces/Default.xml")).unwrap(),
        b"<before/>",
        "the version the session replaced"
    );
    assert_eq!(
        std::fs::read(into.join("templates/Mine.xml")).unwrap(),
        b"<template/>",
        "the file the session deleted"
    );
}

/// What `pull_once` into `home` makes of a source that plays `script` after the hello and the
/// puller's `Pull`.
async fn pull_from<F, Fut>(
    home: &Path,
    script: F,
) -> Result<rainmaker_engine::engine::Pulled, String>
where
    F: FnOnce(transport::Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(&dir.path().join("tls")).unwrap();
    let fingerprint = identity.fingerprint();
    let listener = Listener::bind("127.0.0.1:0", Some(identity)).await.unwrap();
    let url = format!("wss://{}", listener.local_addr());
    let source = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap();
        let (mut conn, _) = incoming.handshake(SUBSCRIBE, "liar").await.unwrap();
        assert_eq!(
            conn.recv().await.unwrap(),
            Some(Message::Pull { once: true })
        );
        script(conn).await;
    });
    let pulled = pull_once(
        &PullOptions {
            root: home.to_path_buf(),
            trash_retention: None,
            from: ConnectOptions {
                url,
                trust: Trust::Pinned(fingerprint),
                token: SUBSCRIBE.into(),
                source_name: "home-pc".into(),
            },
            trash_batch: None,
        },
        &CancellationToken::new(),
    )
    .await
    .map_err(|e| e.to_string());
    source.await.unwrap();
    pulled
}

/// Reads until `Finished`; its digest.
async fn finished(conn: &mut transport::Connection) -> [u8; 32] {
    loop {
        match conn.recv().await.unwrap() {
            Some(Message::Finished { digest }) => return digest,
            Some(_) => continue,
            None => panic!("the puller closed before it answered Finish"),
        }
    }
}

/// Stays until the puller hangs up.
async fn linger(mut conn: transport::Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_in_sync_only_when_the_source_listed_finished_and_names_what_this_side_holds() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    write(&home, "settings.xml", b"<mine/>");
    let refused =
        |result: Result<rainmaker_engine::engine::Pulled, String>, what: &str, why: &str| {
            let Err(error) = result else {
                panic!("{what} must not count as in sync: {result:?}");
            };
            assert!(
                error.contains(why),
                "{what}: the error says what the source did wrong: {error}"
            );
        };

    // In sync at once, before any session.
    let result = pull_from(&home, |mut conn| async move {
        let pulled = Message::Pulled {
            digest: Some([1; 32]),
            reason: String::new(),
        };
        conn.send(&pulled).await.unwrap();
        linger(conn).await;
    })
    .await;
    refused(result, "Pulled before any Finish", "before it finished");

    // A Finish, answered, then in sync with the very digest the puller gave: but nothing was
    // ever compared with the source's tree.
    let result = pull_from(&home, |mut conn| async move {
        conn.send(&Message::Finish).await.unwrap();
        let digest = finished(&mut conn).await;
        conn.send(&Message::Pulled {
            digest: Some(digest),
            reason: String::new(),
        })
        .await
        .unwrap();
        linger(conn).await;
    })
    .await;
    refused(
        result,
        "Pulled after a Finish with no manifest asked",
        "before it finished",
    );

    // A whole session, then in sync with a tree this side does not hold.
    let result = pull_from(&home, |mut conn| async move {
        conn.send(&Message::GetManifest { cached: None })
            .await
            .unwrap();
        conn.send(&Message::Finish).await.unwrap();
        let _ = finished(&mut conn).await;
        conn.send(&Message::Pulled {
            digest: Some([7; 32]),
            reason: String::new(),
        })
        .await
        .unwrap();
        linger(conn).await;
    })
    .await;
    refused(result, "Pulled naming another tree", "does not hold");

    // A source that says it could not do it is believed, with its reason.
    let result = pull_from(&home, |mut conn| async move {
        let pulled = Message::Pulled {
            digest: None,
            reason: "its disk is failing".into(),
        };
        conn.send(&pulled).await.unwrap();
        linger(conn).await;
    })
    .await;
    let pulled = result.expect("an honest failure is an answer");
    assert!(
        !pulled.in_sync && pulled.reason == "its disk is failing",
        "{pulled:?}"
    );

    assert_eq!(
        std::fs::read(home.join("settings.xml")).unwrap(),
        b"<mine/>",
        "nothing changed at home"
    );
}
