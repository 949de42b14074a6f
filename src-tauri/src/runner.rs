//! The tray app's side of the mirror: every configured folder handed to the engine's
//! [`Supervisor`] (which runs, pauses and reports on them), the configuration edited from the
//! dashboard, what the mirrors report turned into the activity log and desktop notifications,
//! the servers' online checks, and the commands this PC gives to servers.
//!
//! Nothing here knows Tauri: the shell asks for [`Runner::dashboard`] snapshots when
//! [`Runner::subscribe`] says something changed, and shows [`Notice`]s as desktop
//! notifications. Nothing here mirrors either: every sync is the supervisor's.
//!
//! - [`dashboard`]: the snapshot the dashboard shows.
//! - [`forms`]: the folder, guard and server forms, checked and saved.
//! - [`probe`]: the servers' online checks.
//! - [`remote`]: a server pushing to others, failback and promotion, on this PC's command.

mod dashboard;
mod forms;
mod probe;
mod remote;

pub use remote::FAILBACK_TOKEN_LIFETIME;

use crate::error::{UiCode, UiError};
use crate::settings;
use crate::view::{ActivityView, Level, ResourcesView};
use rainmaker_engine::app::progress::Tracker;
use rainmaker_engine::app::supervisor::{Report, SuperviseError};
use rainmaker_engine::app::{self, Supervisor};
use rainmaker_engine::config::{Config, KnownServer};
use rainmaker_engine::event::{Event, PushReport, Refusal};
use rainmaker_engine::protocol::AgentStatus;
use rainmaker_engine::status;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Lines kept in the recent-activity log.
const ACTIVITY: usize = 200;

/// Something to tell the user outside the window (a desktop notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// The tray app's mirrors and servers.
#[derive(Debug)]
pub struct Runner {
    config_path: PathBuf,
    /// RainMaker's data folder: the sources' indexes, known peers.
    data_dir: PathBuf,
    this_pc: String,
    total_memory: u64,
    rt: Handle,
    supervisor: Arc<Supervisor>,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    online: HashMap<String, Online>,
    resources: Option<ResourcesView>,
    activity: VecDeque<ActivityView>,
    /// Targets (by URL) that are failing, so a notification goes out once per failure.
    failing: HashSet<String>,
    /// Targets (by URL) a server is pushing to on this PC's command, and their transfers.
    remote_targets: HashSet<String>,
    remote_progress: Tracker,
    /// The newest change in each of this PC's folders, as of the last check.
    local_newest: HashMap<PathBuf, f64>,
    /// This PC is receiving a folder back from this server (failback): nothing is pushed.
    receiving_from: Option<String>,
}

#[derive(Debug, Clone)]
struct Online {
    ok: bool,
    remote_name: Option<String>,
    reason: Option<String>,
    /// What the server reported of its folder, when this PC holds its admin token.
    status: Option<AgentStatus>,
}

impl Runner {
    /// Reads the configuration at `config_path` and starts the guard, the online checks and
    /// the mirror of every continuous or scheduled folder. The indexes live under `data_dir`;
    /// tasks run on `rt`.
    pub fn start(
        config_path: PathBuf,
        data_dir: PathBuf,
        rt: Handle,
    ) -> Result<(Arc<Runner>, mpsc::Receiver<Notice>), UiError> {
        let config = settings::load(&config_path)?;
        let (notices, notices_rx) = mpsc::channel(32);
        let this_pc = app::mirror::machine_name();
        let supervisor = Supervisor::new(
            data_dir.clone(),
            this_pc.clone(),
            config.guard.thresholds(),
            rt.clone(),
        );
        let runner = Arc::new(Runner {
            config_path,
            data_dir,
            this_pc,
            total_memory: rainmaker_engine::schedule::total_memory(),
            rt,
            supervisor: supervisor.clone(),
            inner: Mutex::new(Inner {
                config: config.clone(),
                online: HashMap::new(),
                resources: None,
                activity: VecDeque::new(),
                failing: HashSet::new(),
                remote_targets: HashSet::new(),
                remote_progress: Tracker::default(),
                local_newest: HashMap::new(),
                receiving_from: None,
            }),
            changed: watch::channel(0).0,
            notices,
            shutdown: CancellationToken::new(),
        });
        runner
            .rt
            .spawn(runner.clone().take_reports(supervisor.reports()));
        runner.rt.spawn(runner.clone().forward_changes());
        runner.rt.spawn(runner.clone().probe_loop());
        supervisor.set_folders(&config.folders);
        runner.log(Level::Info, "RainMaker started".into());
        Ok((runner, notices_rx))
    }

    /// Stops every task (the app quits).
    pub fn stop(&self) {
        self.supervisor.stop();
        self.shutdown.cancel();
    }

    /// A counter that moves whenever the dashboard changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn log(&self, level: Level, text: String) {
        match level {
            Level::Error => tracing::error!("{text}"),
            Level::Warn => tracing::warn!("{text}"),
            Level::Info => tracing::info!("{text}"),
        }
        let mut inner = self.lock();
        inner.activity.push_front(ActivityView {
            at: status::now(),
            level,
            text,
        });
        inner.activity.truncate(ACTIVITY);
        drop(inner);
        self.touch();
    }

    fn notify(&self, title: &str, body: String) {
        let _ = self.notices.try_send(Notice {
            title: title.into(),
            body,
        });
    }

    /// The Sync button and the tray menu's Sync now: every folder now (and lifts a pause
    /// made from the dashboard).
    pub fn sync_now(&self) -> Result<(), UiError> {
        self.supervisor.sync_now().map_err(|e| self.refusal(e))?;
        self.log(Level::Info, "Sync started".into());
        Ok(())
    }

    /// Syncs every folder once now, past the resource guard's pause.
    pub fn sync_anyway(&self) -> Result<(), UiError> {
        self.supervisor.sync_anyway().map_err(|e| self.refusal(e))?;
        self.log(
            Level::Warn,
            "Sync started past the resource guard's pause (Sync anyway)".into(),
        );
        Ok(())
    }

    /// Stops the syncs started by Sync (each target keeps what arrived whole).
    pub fn stop_syncs(&self) {
        self.supervisor.stop_syncs();
        self.log(
            Level::Info,
            "Sync stopped; the next one goes on from what arrived".into(),
        );
    }

    /// Answers the stop of folder `index`'s sync, which would have deleted many files on a
    /// server, with "keep the backups as they are": nothing is deleted, and the folder is not
    /// mirrored until the next Sync.
    pub fn keep_backup(&self, index: usize) -> Result<(), UiError> {
        let source = self.folder_source(index)?;
        self.supervisor
            .keep_backup(&source)
            .map_err(|e| self.refusal(e))?;
        self.log(
            Level::Info,
            format!(
                "The backups of {} are kept as they are; it is not mirrored until the next Sync",
                source.display()
            ),
        );
        Ok(())
    }

    /// Confirms the sync of folder `index` that stopped because it would delete many files.
    pub fn allow_mass_delete(&self, index: usize) -> Result<(), UiError> {
        let source = self.folder_source(index)?;
        self.supervisor
            .allow_mass_delete(&source)
            .map_err(|e| self.refusal(e))?;
        self.log(
            Level::Warn,
            format!(
                "Deletion confirmed from the dashboard for {}",
                source.display()
            ),
        );
        Ok(())
    }

    /// Holds every sync until [`Runner::resume`].
    pub fn pause(&self) {
        self.supervisor.pause();
        self.log(Level::Info, "Paused from the dashboard".into());
    }

    pub fn resume(&self) {
        match self.supervisor.resume() {
            Ok(()) => self.log(Level::Info, "Resumed".into()),
            Err(e) => {
                let e = self.refusal(e);
                self.log(Level::Warn, e.message);
            }
        }
    }

    pub fn is_paused(&self) -> bool {
        self.supervisor.is_paused()
    }

    /// The source of folder `index`.
    fn folder_source(&self, index: usize) -> Result<PathBuf, UiError> {
        self.lock()
            .config
            .folders
            .get(index)
            .map(|f| f.source.clone())
            .ok_or_else(|| UiError::bad_input(format!("There is no folder number {}.", index + 1)))
    }

    /// What the supervisor refused, in the dashboard's words.
    fn refusal(&self, e: SuperviseError) -> UiError {
        match e {
            SuperviseError::NothingToMirror => {
                UiError::bad_input("Pick a folder to mirror and at least one target first.")
            }
            SuperviseError::Held(why) => UiError::new(UiCode::Busy, why),
            SuperviseError::NothingToConfirm(_) => {
                UiError::bad_input("No sync is waiting for a confirmation.")
            }
            SuperviseError::UnknownFolder(source) => {
                UiError::bad_input(format!("{source} is not one of the folders mirrored."))
            }
            SuperviseError::Paused => {
                UiError::new(UiCode::Busy, "Sync is paused: press Resume first.")
            }
            SuperviseError::Kept(source) => UiError::new(
                UiCode::Busy,
                format!(
                    "You kept the backups of {source} as they were: check that folder, then press Sync."
                ),
            ),
        }
    }

    /// Changes the configuration and saves it; nothing changes when it cannot be saved. The
    /// supervisor then mirrors the folders as saved.
    fn change_config(
        &self,
        change: impl FnOnce(&mut Config) -> Result<(), UiError>,
    ) -> Result<(), UiError> {
        let mut inner = self.lock();
        let mut config = inner.config.clone();
        change(&mut config)?;
        settings::save(&self.config_path, &config)?;
        let folders = config.folders.clone();
        inner.config = config;
        drop(inner);
        self.supervisor.set_folders(&folders);
        self.touch();
        Ok(())
    }

    /// Passes the supervisor's changes on to the dashboard.
    async fn forward_changes(self: Arc<Self>) {
        let mut changed = self.supervisor.changed();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                c = changed.changed() => if c.is_err() { return },
            }
            self.touch();
        }
    }

    /// Turns what the mirrors report into the activity log and notifications.
    async fn take_reports(self: Arc<Self>, mut reports: broadcast::Receiver<Report>) {
        loop {
            let report = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = reports.recv() => r,
            };
            match report {
                Ok(Report::Event { event, .. }) => self.on_event(&event),
                Ok(Report::Pushed { report, .. }) => self.on_pushed(&report),
                Ok(Report::Failed { source, error }) => {
                    self.log(Level::Error, format!("{}: {error}", source.display()));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn on_pushed(&self, report: &PushReport) {
        let names = self.names();
        for t in report.targets.iter().filter(|t| t.ok) {
            let name = names.get(&t.url).unwrap_or(&t.url);
            self.log(
                Level::Info,
                format!(
                    "{name} is in sync: {} files, {} sent in {}",
                    t.files_sent,
                    human_bytes(t.bytes_changed),
                    human_seconds(t.seconds)
                ),
            );
        }
        for skipped in &report.skipped {
            self.log(
                Level::Warn,
                format!("Not mirrored: {}: {}", skipped.path, skipped.reason),
            );
        }
    }

    /// One event of a mirror (this PC's, or a server's push this PC follows): the log, the
    /// notifications, and whether its target answers.
    fn on_event(&self, event: &Event) {
        let names = self.names();
        let name = |url: &str| names.get(url).cloned().unwrap_or_else(|| url.to_owned());
        match event {
            Event::Resources {
                cpu_percent,
                available_memory,
                other_traffic,
            } => {
                self.lock().resources = Some(ResourcesView {
                    cpu_percent: *cpu_percent,
                    available_memory_mb: available_memory >> 20,
                    total_memory_mb: self.total_memory >> 20,
                    other_traffic_mbit: other_traffic * 8.0 / 1e6,
                });
                self.touch();
            }
            Event::Planned { target, .. } => self.mark_online(target, true, None),
            Event::InSync { target } => {
                self.mark_online(target, true, None);
                if self.lock().failing.remove(target) {
                    self.notify(
                        "Back in sync",
                        format!("{} is in sync again.", name(target)),
                    );
                    self.log(Level::Info, format!("{} is back in sync", name(target)));
                }
            }
            Event::TargetFailed {
                target,
                reason,
                refusal,
            } => {
                // A server that stopped a mass deletion answered: it is online, and waits for
                // the user.
                self.mark_online(target, *refusal == Refusal::MassDelete, Some(reason.clone()));
                let first = self.lock().failing.insert(target.clone());
                if first && *refusal != Refusal::MassDelete {
                    self.notify("Sync failed", format!("{}: {reason}", name(target)));
                } else if first {
                    self.notify(
                        "Sync stopped to protect your backup",
                        format!("{}: {reason}", name(target)),
                    );
                }
                self.log(Level::Error, format!("{}: {reason}", name(target)));
            }
            Event::Paused { reason } => self.log(Level::Warn, format!("Paused: {reason}")),
            Event::Resumed { after } => self.log(Level::Info, format!("Resumed: clear of {after}")),
            Event::Skipped { path, reason } => {
                self.log(Level::Warn, format!("Not mirrored: {path}: {reason}"));
            }
            Event::FileFailed {
                target,
                path,
                reason,
            } => self.log(Level::Warn, format!("{}: {path}: {reason}", name(target))),
            Event::Synced {
                target,
                files_sent,
                bytes_changed,
                seconds,
                ..
            } if *files_sent > 0 => self.log(
                Level::Info,
                format!(
                    "{}: {files_sent} files, {} in {}",
                    name(target),
                    human_bytes(*bytes_changed),
                    human_seconds(*seconds)
                ),
            ),
            Event::Synced { .. }
            | Event::Scanned { .. }
            | Event::Verifying { .. }
            | Event::Progress { .. }
            // The folder's card shows what a stopped deletion would remove.
            | Event::WouldDelete { .. } => {}
        }
    }

    /// The configured server named `name`.
    fn server(&self, name: &str) -> Result<KnownServer, UiError> {
        self.lock()
            .config
            .servers
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| UiError::bad_input(format!("There is no server named {name:?}.")))
    }

    /// Server names by URL.
    fn names(&self) -> HashMap<String, String> {
        self.lock()
            .config
            .servers
            .iter()
            .map(|s| (s.url.clone(), s.name.clone()))
            .collect()
    }

    /// The folder that mirrors to server `name`, else the only folder there is.
    fn folder_of(&self, name: &str) -> Option<PathBuf> {
        let inner = self.lock();
        let url = inner
            .config
            .servers
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.url.clone());
        let folders = &inner.config.folders;
        folders
            .iter()
            .find(|f| f.targets.iter().any(|t| Some(&t.url) == url.as_ref()))
            .or(if folders.len() == 1 {
                folders.first()
            } else {
                None
            })
            .map(|f| f.source.clone())
    }
}

/// Whether `a` and `b` name the same folder, or one holds the other.
fn overlapping(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn human_seconds(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1} s")
    }
}

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainmaker_engine::config::{Folder, Mode};
    use std::time::{Duration, Instant};

    fn runner() -> (tempfile::TempDir, Arc<Runner>, mpsc::Receiver<Notice>) {
        let dir = tempfile::tempdir().unwrap();
        let (runner, notices) = Runner::start(
            dir.path().join("rainmaker.toml"),
            dir.path().join("data"),
            Handle::current(),
        )
        .unwrap();
        (dir, runner, notices)
    }

    #[tokio::test]
    async fn a_failing_target_is_notified_once_and_again_when_it_is_back() {
        let (_dir, runner, mut notices) = runner();
        let failed = Event::TargetFailed {
            target: "wss://b:1".into(),
            reason: "cannot reach b:1".into(),
            refusal: Refusal::Other,
        };
        runner.on_event(&failed);
        runner.on_event(&failed);
        runner.on_event(&Event::InSync {
            target: "wss://b:1".into(),
        });
        let first = notices.try_recv().unwrap();
        assert_eq!(first.title, "Sync failed");
        assert!(first.body.contains("cannot reach b:1"), "{first:?}");
        let second = notices.try_recv().unwrap();
        assert_eq!(
            second.title, "Back in sync",
            "one notice per failure, then the recovery"
        );
        assert!(notices.try_recv().is_err());
        runner.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guard_pause_reaches_the_dashboard_with_its_reason() {
        let (_dir, runner, _notices) = runner();
        // A real guard that must pause: more free memory asked for than any machine has.
        let mut guard = runner.dashboard().guard;
        guard.memory_below_mb = Some(u64::MAX >> 21);
        guard.resume_after_seconds = 0.0;
        runner.save_guard(&guard).unwrap();
        let start = Instant::now();
        let pause = loop {
            if let Some(pause) = runner.dashboard().paused {
                break pause;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no pause shown");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(pause.by, crate::view::PausedBy::Guard);
        assert!(pause.reason.contains("memory"), "{pause:?}");
        let d = runner.dashboard();
        assert_eq!(d.overall, crate::view::Overall::Paused);
        assert!(
            d.activity.iter().any(|a| a.text.starts_with("Paused: ")),
            "{:?}",
            d.activity
        );
        guard.memory_below_mb = None;
        runner.save_guard(&guard).unwrap();
        let start = Instant::now();
        while runner.dashboard().paused.is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the pause is lifted with the threshold"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        runner.stop();
    }

    #[tokio::test]
    async fn the_failback_receiver_binds_no_other_address() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("NinjaTrader 8");
        std::fs::create_dir_all(&folder).unwrap();
        let (runner, _notices) = Runner::start(
            dir.path().join("rainmaker.toml"),
            dir.path().join("data"),
            Handle::current(),
        )
        .unwrap();
        runner
            .change_config(|c| {
                c.folders.push(Folder {
                    source: folder.clone(),
                    mode: Mode::Manual,
                    bwlimit: None,
                    exclude: Vec::new(),
                    preset: None,
                    targets: Vec::new(),
                });
                Ok(())
            })
            .unwrap();
        // This machine's address on its network (no packet is sent to find it).
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let lan = probe
            .connect("203.0.113.1:9")
            .and_then(|()| probe.local_addr())
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        let Some(lan) = lan else {
            println!("skipped: this machine has no network address besides loopback");
            runner.stop();
            return;
        };
        // The port is taken on loopback: a receiver that binds every interface fails; one that
        // binds the address given only does not.
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        drop(taken);
        let elsewhere = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let e = runner
            .receive_from("no-such-server", Some(&format!("{lan}:{port}")))
            .await
            .unwrap_err();
        drop(elsewhere);
        runner.stop();
        assert!(
            e.message.contains("no-such-server") && !e.message.contains("listen"),
            "the receiver binds {lan}:{port} only, so 127.0.0.1:{port} being taken does not \
             matter; it may fail only for the unknown server: {e:?}"
        );
    }
}
