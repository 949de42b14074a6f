//! The supervisor over real agents on loopback: two folders, each to its own agent, synced
//! now together, each with its own targets' states; a pause and a hold stop everything; a
//! sync that would delete most of a target waits for a yes on its own folder.

use rainmaker_engine::app::Supervisor;
use rainmaker_engine::app::supervisor::{Pause, Report, SuperviseError};
use rainmaker_engine::config::{Folder, Mode, Target};
use rainmaker_engine::engine::{ServeOptions, Server};
use rainmaker_engine::guard::Thresholds;
use rainmaker_engine::status::{TargetState, now};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "supervisor-test-token";

/// A guard that never pauses (a busy test machine must not hold the sync).
fn calm() -> Thresholds {
    Thresholds {
        cpu_above: 101.0,
        ..Thresholds::default()
    }
}

/// An agent on a free loopback port, receiving into `root`; stopped by `stop`.
async fn agent(root: &Path, stop: &CancellationToken) -> (String, String) {
    std::fs::create_dir_all(root).unwrap();
    let server = Server::bind(ServeOptions::new(
        root.to_path_buf(),
        "127.0.0.1:0",
        TOKEN,
        "backup",
    ))
    .await
    .unwrap();
    let url = format!("wss://127.0.0.1:{}", server.local_addr().port());
    let fingerprint = server.fingerprint().unwrap().to_owned();
    tokio::spawn(server.run(stop.clone()));
    (url, fingerprint)
}

fn folder(source: PathBuf, mode: Mode, target: (String, String), token_file: &Path) -> Folder {
    Folder {
        source,
        mode,
        bwlimit: None,
        exclude: Vec::new(),
        preset: None,
        targets: vec![Target {
            name: None,
            url: target.0,
            token_file: token_file.to_path_buf(),
            fingerprint: Some(target.1),
        }],
    }
}

fn write_tree(root: &Path, files: &[(&str, usize)]) {
    for (rel, len) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..*len).map(|i| (i * 31 + rel.len()) as u8).collect();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Waits until every target of every folder is in sync; panics with the status if not.
async fn all_in_sync(supervisor: &Supervisor) {
    let start = Instant::now();
    loop {
        let folders = supervisor.status(now());
        if folders
            .iter()
            .all(|f| f.targets.iter().all(|t| t.state == TargetState::InSync))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "not in sync after 40 s: {folders:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 30 s for `done`; `what` says what did not happen.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same(a: &Path, b: &Path, rel: &str) -> bool {
    std::fs::read(a.join(rel)).ok() == std::fs::read(b.join(rel)).ok()
}

struct Setup {
    dir: tempfile::TempDir,
    stop: CancellationToken,
    supervisor: Arc<Supervisor>,
    folders: Vec<Folder>,
}

impl Setup {
    /// Two sources, each mirrored to its own agent in `mode`.
    async fn new(mode: Mode) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let mut folders = Vec::new();
        for name in ["nt8", "mt5"] {
            let source = dir.path().join(name);
            write_tree(
                &source,
                &[
                    ("db/a.bin", 300_000),
                    ("db/b.bin", 5_000),
                    ("settings.xml", 100),
                ],
            );
            // Enough files that losing the db folder is a mass deletion (plan's floor).
            for i in 0..12 {
                write_tree(&source, &[(&format!("db/tick/{i}.ncd"), 1_000 + i)]);
            }
            let target = agent(&dir.path().join(format!("backup-{name}")), &stop).await;
            folders.push(folder(source, mode, target, &token_file));
        }
        let supervisor = Supervisor::new(
            dir.path().join("data"),
            "trading-pc".into(),
            calm(),
            tokio::runtime::Handle::current(),
        );
        Setup {
            dir,
            stop,
            supervisor,
            folders,
        }
    }

    fn backup(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("backup-{name}"))
    }

    fn source(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.supervisor.stop();
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_folders_are_synced_now_each_to_its_own_agent() {
    let setup = Setup::new(Mode::Manual).await;
    let mut reports = setup.supervisor.reports();
    assert_eq!(
        setup.supervisor.sync_now(),
        Err(SuperviseError::NothingToMirror),
        "nothing is configured yet"
    );
    setup.supervisor.set_folders(&setup.folders);
    let status = setup.supervisor.status(now());
    assert_eq!(status.len(), 2);
    assert!(
        status
            .iter()
            .all(|f| f.targets[0].state == TargetState::Waiting && !f.pushing),
        "a manual folder waits for Sync: {status:#?}"
    );
    assert!(!setup.backup("nt8").join("db").exists());

    setup.supervisor.sync_now().unwrap();
    all_in_sync(&setup.supervisor).await;
    for name in ["nt8", "mt5"] {
        for rel in ["db/a.bin", "db/b.bin", "settings.xml"] {
            assert!(
                same(&setup.source(name), &setup.backup(name), rel),
                "{name}/{rel} arrived whole"
            );
        }
    }
    // Each folder reported its own push.
    let mut pushed = Vec::new();
    let start = Instant::now();
    while pushed.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        if let Ok(Ok(Report::Pushed { source, report })) =
            tokio::time::timeout(Duration::from_secs(1), reports.recv()).await
        {
            assert!(report.ok, "{source:?}: {report:?}");
            pushed.push(source);
        }
    }
    pushed.sort();
    assert_eq!(pushed, vec![setup.source("mt5"), setup.source("nt8")]);

    // A change in one folder reaches only its own agent.
    write_tree(&setup.source("mt5"), &[("settings.xml", 200)]);
    setup.supervisor.sync_now().unwrap();
    eventually("mt5 never synced", || {
        same(&setup.source("mt5"), &setup.backup("mt5"), "settings.xml")
    })
    .await;
    assert!(!same(
        &setup.source("mt5"),
        &setup.backup("nt8"),
        "settings.xml"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_and_a_hold_stop_every_folder_until_lifted() {
    let setup = Setup::new(Mode::Watch).await;
    setup.supervisor.pause();
    setup.supervisor.set_folders(&setup.folders);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !setup.backup("nt8").join("db").exists() && !setup.backup("mt5").join("db").exists(),
        "nothing runs while paused"
    );
    assert!(
        setup
            .supervisor
            .status(now())
            .iter()
            .all(|f| f.paused == Some(Pause::ByUser))
    );
    // Retry (one server's) never lifts the user's pause.
    assert_eq!(
        setup.supervisor.retry(&setup.source("nt8")),
        Err(SuperviseError::Paused)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!setup.backup("nt8").join("db").exists(), "still paused");
    setup.supervisor.resume().unwrap();
    all_in_sync(&setup.supervisor).await;

    setup
        .supervisor
        .hold(Some("receiving the folder back".into()));
    assert_eq!(
        setup.supervisor.sync_now(),
        Err(SuperviseError::Held("receiving the folder back".into()))
    );
    write_tree(&setup.source("nt8"), &[("new.bin", 1_000)]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !setup.backup("nt8").join("new.bin").exists(),
        "a held supervisor sends nothing"
    );
    setup.supervisor.hold(None);
    eventually("the change never arrived after the hold was lifted", || {
        same(&setup.source("nt8"), &setup.backup("nt8"), "new.bin")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_deletion_waits_for_a_yes_on_its_own_folder() {
    let setup = Setup::new(Mode::Manual).await;
    setup.supervisor.set_folders(&setup.folders);
    setup.supervisor.sync_now().unwrap();
    all_in_sync(&setup.supervisor).await;
    let nt8 = setup.source("nt8");
    assert_eq!(
        setup.supervisor.allow_mass_delete(&nt8),
        Err(SuperviseError::NothingToConfirm(nt8.display().to_string()))
    );
    std::fs::remove_dir_all(nt8.join("db")).unwrap();
    setup.supervisor.sync_now().unwrap();
    let start = Instant::now();
    let waiting = loop {
        let status = setup.supervisor.status(now());
        if let Some(waiting) = status[0].mass_delete.clone() {
            assert!(status[1].mass_delete.is_none(), "only nt8 deletes");
            break waiting;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(waiting.target, setup.folders[0].targets[0].url);
    assert_eq!(waiting.doomed, 14, "the stop counts what it would delete");
    assert_eq!(
        waiting.paths.first().map(String::as_str),
        Some("db/a.bin"),
        "and names the files, in order: {waiting:?}"
    );
    assert_eq!(waiting.paths.len(), 14);
    assert!(
        setup.backup("nt8").join("db/a.bin").exists(),
        "nothing is deleted before the yes"
    );
    // "Keep the backup as it is": nothing is deleted, and the folder waits for a Sync.
    setup.supervisor.keep_backup(&nt8).unwrap();
    let status = setup.supervisor.status(now());
    assert!(
        status[0].kept && status[0].mass_delete.is_none(),
        "{status:#?}"
    );
    assert_eq!(
        setup.supervisor.allow_mass_delete(&nt8),
        Err(SuperviseError::NothingToConfirm(nt8.display().to_string())),
        "the question was answered"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(setup.backup("nt8").join("db/a.bin").exists());
    assert_eq!(
        setup.supervisor.retry(&nt8),
        Err(SuperviseError::Kept(nt8.display().to_string())),
        "Retry does not undo the choice to keep the backups"
    );
    // The next Sync asks again.
    setup.supervisor.sync_now().unwrap();
    assert!(!setup.supervisor.status(now())[0].kept);
    let start = Instant::now();
    while setup.supervisor.status(now())[0].mass_delete.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the stop is not asked again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The yes is for what was shown: one more file gone since, and it asks again.
    std::fs::remove_file(nt8.join("settings.xml")).unwrap();
    setup.supervisor.allow_mass_delete(&nt8).unwrap();
    let start = Instant::now();
    let again = loop {
        if let Some(asked) = setup.supervisor.status(now())[0].mass_delete.clone() {
            break asked;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a bigger deletion went ahead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.doomed, 15, "{again:?}");
    assert!(setup.backup("nt8").join("db/a.bin").exists());
    setup.supervisor.allow_mass_delete(&nt8).unwrap();
    eventually("never deleted", || {
        !setup.backup("nt8").join("db/a.bin").exists()
    })
    .await;
    all_in_sync(&setup.supervisor).await;
    assert!(setup.backup("mt5").join("db/a.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_restarted_mid_scan_starts_again_once_its_last_run_let_go() {
    let setup = Setup::new(Mode::Watch).await;
    // A file big enough that the first scan is still hashing when the restarts come.
    write_tree(&setup.source("nt8"), &[("db/big.ncd", 64 << 20)]);
    let mut reports = setup.supervisor.reports();
    setup.supervisor.set_folders(&setup.folders);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // New guard thresholds restart every continuous folder.
        setup.supervisor.set_guard(calm());
    }
    all_in_sync(&setup.supervisor).await;
    assert!(same(
        &setup.source("nt8"),
        &setup.backup("nt8"),
        "db/big.ncd"
    ));
    while let Ok(report) = reports.try_recv() {
        assert!(
            !matches!(report, Report::Failed { .. }),
            "a restart must not fail on the index its last run still held: {report:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_anyway_passes_the_guard_s_pause_once() {
    let setup = Setup::new(Mode::Manual).await;
    // A guard that pauses at once and does not resume: no machine has that much memory free.
    let busy = Thresholds {
        memory_below: Some(u64::MAX),
        hold: Duration::from_secs(3600),
        ..calm()
    };
    setup.supervisor.set_guard(busy);
    setup.supervisor.set_folders(&setup.folders);
    let start = Instant::now();
    while !matches!(setup.supervisor.paused(), Some(Pause::ByGuard(_))) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the guard never paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.supervisor.sync_now().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !setup.backup("nt8").join("settings.xml").exists(),
        "Sync waits while the guard pauses"
    );
    setup.supervisor.sync_anyway().unwrap();
    eventually("Sync anyway never got past the guard", || {
        same(&setup.source("nt8"), &setup.backup("nt8"), "db/a.bin")
            && same(&setup.source("mt5"), &setup.backup("mt5"), "db/a.bin")
    })
    .await;
    assert!(
        matches!(setup.supervisor.paused(), Some(Pause::ByGuard(_))),
        "the guard still decides for the syncs after it"
    );
}
