//! The mirror as the tray app runs it: the configured folder pushed to its targets by the
//! engine (once on Sync, or continuously or on a schedule), the resource guard, the servers'
//! online checks, and the dashboard's state folded from the engine's events.
//!
//! Nothing here knows Tauri: the shell asks for [`Runner::dashboard`] snapshots when
//! [`Runner::subscribe`] says something changed, and shows [`Notice`]s as desktop
//! notifications. Nothing here mirrors either: every sync is an engine call.

use crate::error::{UiCode, UiError};
use crate::settings;
use crate::view::{
    ActivityView, Dashboard, FolderView, GuardView, PauseView, ProgressView, ResourcesView,
    ServerView,
};
use rainmaker_engine::app::{self, Mirror, Overrides};
use rainmaker_engine::config::{Config, Folder, Mode, Server, Target};
use rainmaker_engine::engine::Remote;
use rainmaker_engine::engine::{self, ServeOptions, TargetSpec};
use rainmaker_engine::event::{self, Event, PushReport};
use rainmaker_engine::exclude::Exclude;
use rainmaker_engine::guard::Gate;
use rainmaker_engine::pairing::Pairing;
use rainmaker_engine::protocol::{AgentStatus, JobState, JobStatus, Refusal, RemoteTarget};
use rainmaker_engine::status::{self, Board};
use rainmaker_engine::transport::{self, Address, ConnectOptions, Role, TransportError, Trust};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Lines kept in the recent-activity log.
const ACTIVITY: usize = 200;
/// How often every server is checked for being online.
const PROBE_EVERY: Duration = Duration::from_secs(20);

/// Something to tell the user outside the window (a desktop notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// The running mirror of the tray app.
#[derive(Debug)]
pub struct Runner {
    config_path: PathBuf,
    /// RainMaker's data folder: the source's index, known peers.
    data_dir: PathBuf,
    this_pc: String,
    total_memory: u64,
    rt: Handle,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    changed: watch::Sender<u64>,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    board: Board,
    progress: HashMap<String, Track>,
    online: HashMap<String, Online>,
    user_paused: bool,
    resources: Option<ResourcesView>,
    job: Option<Job>,
    jobs_started: u64,
    guard_cancel: CancellationToken,
    gate: Gate,
    sync_now: Arc<Notify>,
    activity: VecDeque<ActivityView>,
    mass_delete: Option<String>,
    /// Targets (by URL) that are failing, so a notification goes out once per failure.
    failing: HashSet<String>,
    /// Targets (by URL) a server is pushing to on this PC's command.
    remote_targets: HashSet<String>,
    /// The newest change in this PC's folder, as of the last check.
    local_newest: Option<f64>,
    /// This PC is receiving its folder back from this server (failback): nothing is pushed.
    receiving_from: Option<String>,
}

#[derive(Debug)]
struct Job {
    id: u64,
    cancel: CancellationToken,
    once: bool,
}

#[derive(Debug)]
struct Track {
    at: Instant,
    view: ProgressView,
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
    /// Reads the configuration at `config_path` and starts the guard, the online checks and,
    /// for a continuous or scheduled folder, the mirror. The index lives under `data_dir`;
    /// tasks run on `rt`.
    pub fn start(
        config_path: PathBuf,
        data_dir: PathBuf,
        rt: Handle,
    ) -> Result<(Arc<Runner>, mpsc::Receiver<Notice>), UiError> {
        let config = settings::load(&config_path)?;
        let (events, _) = event::channel();
        let (notices, notices_rx) = mpsc::channel(32);
        let board = new_board(&config);
        let runner = Arc::new(Runner {
            config_path,
            data_dir,
            this_pc: app::mirror::machine_name(),
            total_memory: rainmaker_engine::schedule::total_memory(),
            rt,
            inner: Mutex::new(Inner {
                config,
                board,
                progress: HashMap::new(),
                online: HashMap::new(),
                user_paused: false,
                resources: None,
                job: None,
                jobs_started: 0,
                guard_cancel: CancellationToken::new(),
                gate: Gate::open(),
                sync_now: Arc::new(Notify::new()),
                activity: VecDeque::new(),
                mass_delete: None,
                failing: HashSet::new(),
                remote_targets: HashSet::new(),
                local_newest: None,
                receiving_from: None,
            }),
            events,
            changed: watch::channel(0).0,
            notices,
            shutdown: CancellationToken::new(),
        });
        runner.rt.spawn(runner.clone().fold_events());
        runner.rt.spawn(runner.clone().probe_loop());
        runner.restart_guard();
        runner.restart();
        runner.log("info", "RainMaker started".into());
        Ok((runner, notices_rx))
    }

    /// Stops every task (the app quits).
    pub fn stop(&self) {
        let inner = self.lock();
        if let Some(job) = &inner.job {
            job.cancel.cancel();
        }
        inner.guard_cancel.cancel();
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

    fn log(&self, level: &str, text: String) {
        match level {
            "error" => tracing::error!("{text}"),
            "warn" => tracing::warn!("{text}"),
            _ => tracing::info!("{text}"),
        }
        let mut inner = self.lock();
        inner.activity.push_front(ActivityView {
            at: status::now(),
            level: level.into(),
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

    /// Everything the dashboard shows, now.
    pub fn dashboard(&self) -> Dashboard {
        let inner = self.lock();
        let now = status::now();
        let folder = inner.config.folders.first();
        let targets: Vec<&Target> = folder
            .map(|f| f.targets.iter().collect())
            .unwrap_or_default();
        let servers: Vec<ServerView> = inner
            .config
            .servers
            .iter()
            .map(|server| {
                let online = inner.online.get(&server.name);
                let target = targets.iter().find(|t| t.url == server.url);
                let status = inner
                    .board
                    .status()
                    .targets
                    .iter()
                    .find(|t| t.url == server.url && target.is_some());
                ServerView {
                    name: server.name.clone(),
                    url: server.url.clone(),
                    fingerprint: server.fingerprint.clone(),
                    role: if target.is_some() { "target" } else { "spare" }.into(),
                    online: online.map(|o| o.ok),
                    remote_name: online.and_then(|o| o.remote_name.clone()),
                    state: status.map_or("idle".into(), |s| s.state.clone()),
                    reason: status
                        .and_then(|s| s.reason.clone())
                        .or_else(|| online.and_then(|o| o.reason.clone())),
                    last_sync: status.and_then(|s| s.last_sync),
                    lag_seconds: status.map_or(0.0, |s| status::Status::lag(s, now)),
                    progress: (status.is_some_and(|s| s.state == "syncing")
                        || inner.remote_targets.contains(&server.url))
                    .then(|| inner.progress.get(&server.url).map(|t| t.view.clone()))
                    .flatten(),
                    admin: server.admin_token_file.is_some(),
                    remote_role: online.and_then(|o| o.status.as_ref()).map(|s| s.role),
                    fed_by: online
                        .and_then(|o| o.status.as_ref())
                        .and_then(|s| s.last_source.as_ref())
                        .map(|(who, _)| who.clone()),
                    remote_files: online.and_then(|o| o.status.as_ref()).map(|s| s.files),
                    newest_change: online
                        .and_then(|o| o.status.as_ref())
                        .map(|s| s.newest_mtime_ns as f64 / 1e9),
                    pushes: online
                        .and_then(|o| o.status.as_ref())
                        .map(|s| {
                            s.jobs
                                .iter()
                                .map(|j| {
                                    format!(
                                        "push {} to {}: {}",
                                        j.id,
                                        j.targets.join(", "),
                                        j.state
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        let paused = if inner.user_paused {
            Some(PauseView {
                by: "you".into(),
                reason: "Paused from the dashboard or the tray menu".into(),
            })
        } else {
            inner.board.status().paused.clone().map(|reason| PauseView {
                by: "guard".into(),
                reason,
            })
        };
        let running = inner.job.as_ref().is_some_and(|j| j.once)
            || servers.iter().any(|s| s.state == "syncing");
        let overall = overall(&servers, paused.is_some(), running, folder.is_some());
        let summary = summary(&overall, &servers, paused.as_ref());
        let interval_warning = folder.and_then(|f| match f.mode {
            Mode::Every(every) => {
                rainmaker_engine::schedule::interval_warning(every, self.total_memory, &[])
            }
            _ => None,
        });
        Dashboard {
            this_pc: self.this_pc.clone(),
            this_pc_newest: inner.local_newest,
            config_path: self.config_path.display().to_string(),
            overall,
            summary,
            servers,
            folder: folder.map(|f| folder_view(f, &inner.config.servers)),
            guard: guard_view(&inner.config),
            resources: inner.resources.clone(),
            paused,
            running,
            mass_delete: inner.mass_delete.clone(),
            interval_warning,
            activity: inner.activity.iter().cloned().collect(),
        }
    }

    /// Connects to `url` (an address, or a pairing code) only as far as TLS and returns its
    /// certificate's fingerprint, for the user to confirm before trusting it. A pairing code's
    /// server must present the certificate the code pins.
    pub async fn peek(&self, url: &str) -> Result<String, UiError> {
        let (url, pinned) = match paired(url)? {
            Some(code) => (code.url(), Some(code.fingerprint)),
            None => (check_url(url)?, None),
        };
        let presented = transport::peek_fingerprint(&url).await?;
        match pinned {
            Some(pinned) if pinned != presented => Err(TransportError::FingerprintChanged {
                peer: url.trim_start_matches("wss://").to_owned(),
                expected: pinned,
                got: presented,
                known_peers: None,
            }
            .into()),
            _ => Ok(presented),
        }
    }

    /// Adds a server once it answered with the confirmed certificate and accepted the token.
    pub async fn add_server(
        self: &Arc<Self>,
        name: &str,
        url: &str,
        token: &str,
        fingerprint: &str,
        admin_token: Option<&str>,
    ) -> Result<(), UiError> {
        let name = check_name(name)?;
        // A pairing code brings the address, the pin and the token; the confirmed fingerprint
        // must be the pinned one.
        let code = paired(url)?;
        let (url, token) = match &code {
            Some(code) => {
                if !token.trim().is_empty() && token.trim() != code.token {
                    return Err(UiError::bad_input(
                        "The pairing token differs from the one in the pairing code; leave it empty.",
                    ));
                }
                if transport::parse_fingerprint(fingerprint).as_ref() != Some(&code.fingerprint) {
                    return Err(UiError::new(
                        UiCode::Fingerprint,
                        "The confirmed certificate is not the one the pairing code pins; check the server again.",
                    ));
                }
                (code.url(), code.token.as_str())
            }
            None => (check_url(url)?, token),
        };
        if token.trim().is_empty() {
            return Err(UiError::bad_input(
                "The pairing token is empty. Copy it from the server's token file.",
            ));
        }
        let fingerprint = transport::parse_fingerprint(fingerprint).ok_or_else(|| {
            UiError::bad_input(
                "The certificate fingerprint is missing or garbled; check the server again.",
            )
        })?;
        {
            let inner = self.lock();
            if inner.config.servers.iter().any(|s| s.name == name) {
                return Err(UiError::bad_input(format!(
                    "A server is already named {name:?}."
                )));
            }
            if inner.config.servers.iter().any(|s| s.url == url) {
                return Err(UiError::bad_input(format!("{url} is already in the list.")));
            }
        }
        let spec = TargetSpec {
            url: url.clone(),
            trust: Trust::Pinned(fingerprint.clone()),
            token: token.trim().to_owned(),
        };
        let remote = engine::probe(&spec, &self.this_pc).await?;
        let admin_token = admin_token.map(str::trim).filter(|t| !t.is_empty());
        let status = match admin_token {
            Some(admin) => Some(self.remote_status(&spec, admin).await.map_err(|e| {
                if e.code == UiCode::WrongToken {
                    UiError::refused(
                        Refusal::WrongToken,
                        "The server refused the admin token. Copy it again from the server (`rainmaker pair --admin` shows its admin code).",
                    )
                } else {
                    e
                }
            })?),
            None => None,
        };
        let settings::TokenFiles {
            token: token_file,
            admin: admin_token_file,
        } = settings::write_tokens(&self.config_path, &name, token, admin_token)?;
        self.change_config(|config| {
            config.servers.push(Server {
                name: name.clone(),
                url: url.clone(),
                token_file,
                fingerprint: Some(fingerprint),
                admin_token_file,
            });
            Ok(())
        })?;
        self.lock().online.insert(
            name.clone(),
            Online {
                ok: true,
                remote_name: Some(remote.clone()),
                reason: None,
                status,
            },
        );
        self.log(
            "info",
            format!("Added server {name} ({url}, calls itself {remote})"),
        );
        Ok(())
    }

    /// Renames a server (its targets follow).
    pub fn rename_server(self: &Arc<Self>, old: &str, new: &str) -> Result<(), UiError> {
        let new = check_name(new)?;
        self.change_config(|config| {
            if config.servers.iter().any(|s| s.name == new) {
                return Err(UiError::bad_input(format!(
                    "A server is already named {new:?}."
                )));
            }
            let server = config
                .servers
                .iter_mut()
                .find(|s| s.name == old)
                .ok_or_else(|| UiError::bad_input(format!("There is no server named {old:?}.")))?;
            server.name = new.clone();
            for folder in &mut config.folders {
                for target in &mut folder.targets {
                    if target.name.as_deref() == Some(old) {
                        target.name = Some(new.clone());
                    }
                }
            }
            Ok(())
        })?;
        let mut inner = self.lock();
        if let Some(online) = inner.online.remove(old) {
            inner.online.insert(new.clone(), online);
        }
        drop(inner);
        self.log("info", format!("Renamed server {old} to {new}"));
        Ok(())
    }

    /// Removes a server and stops mirroring to it; nothing on it is touched.
    pub fn remove_server(self: &Arc<Self>, name: &str) -> Result<(), UiError> {
        let mut unused = Vec::new();
        self.change_config(|config| {
            let at = config
                .servers
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| UiError::bad_input(format!("There is no server named {name:?}.")))?;
            let server = config.servers.remove(at);
            for folder in &mut config.folders {
                folder.targets.retain(|t| t.name.as_deref() != Some(name));
            }
            // Only the dashboard's own token files, and only those no other server uses (an
            // older version could give two servers one file).
            let in_use = |path: &PathBuf| {
                config
                    .servers
                    .iter()
                    .any(|s| &s.token_file == path || s.admin_token_file.as_ref() == Some(path))
                    || config
                        .folders
                        .iter()
                        .any(|f| f.targets.iter().any(|t| &t.token_file == path))
            };
            let dir = settings::token_dir(&self.config_path);
            unused = [Some(server.token_file), server.admin_token_file]
                .into_iter()
                .flatten()
                .filter(|p| p.starts_with(&dir) && !in_use(p))
                .collect();
            Ok(())
        })?;
        for file in unused {
            let _ = std::fs::remove_file(file);
        }
        self.lock().online.remove(name);
        self.restart();
        self.log(
            "info",
            format!("Removed server {name}; its files were left as they are"),
        );
        Ok(())
    }

    /// Sets the folder to mirror, its targets, schedule, exclusions and bandwidth cap.
    pub fn save_folder(self: &Arc<Self>, form: &FolderView) -> Result<(), UiError> {
        let source = PathBuf::from(form.source.trim());
        if form.source.trim().is_empty() {
            return Err(UiError::bad_input("Pick the folder to mirror."));
        }
        match std::fs::metadata(&source) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(UiError::bad_input(format!(
                    "{} is a file, not a folder.",
                    source.display()
                )));
            }
            Err(e) => {
                return Err(UiError::bad_input(format!(
                    "Cannot open the folder {}: {e}",
                    source.display()
                )));
            }
        }
        let exclude: Vec<String> = form
            .exclude
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Exclude::new(&exclude).map_err(|e| UiError::bad_input(format!("Excluded paths: {e}")))?;
        let mode = match form.mode.as_str() {
            "manual" => Mode::Manual,
            "watch" => Mode::Watch,
            "every" => {
                let minutes = form.every_minutes.unwrap_or(5.0);
                if !(minutes.is_finite() && (0.25..=24.0 * 60.0).contains(&minutes)) {
                    return Err(UiError::bad_input(
                        "The interval must be between 15 seconds and 24 hours.",
                    ));
                }
                Mode::Every(Duration::from_secs_f64(minutes * 60.0))
            }
            other => return Err(UiError::bad_input(format!("Unknown schedule {other:?}."))),
        };
        let bwlimit = match form.bwlimit_mbit {
            Some(mbit) if mbit.is_finite() && mbit > 0.0 => Some(mbit * 1e6 / 8.0),
            Some(_) => {
                return Err(UiError::bad_input(
                    "The bandwidth cap must be above 0 Mbit/s (or empty for none).",
                ));
            }
            None => None,
        };
        self.change_config(|config| {
            let mut targets = Vec::new();
            for name in &form.targets {
                let server = config
                    .servers
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| {
                        UiError::bad_input(format!("There is no server named {name:?}."))
                    })?;
                targets.push(Target {
                    name: Some(server.name.clone()),
                    url: server.url.clone(),
                    token_file: server.token_file.clone(),
                    fingerprint: server.fingerprint.clone(),
                });
            }
            let folder = Folder {
                source: source.clone(),
                mode,
                bwlimit,
                exclude: exclude.clone(),
                preset: form.preset.clone().filter(|p| !p.is_empty()),
                targets,
            };
            match config.folders.first_mut() {
                Some(first) => *first = folder,
                None => config.folders.push(folder),
            }
            Ok(())
        })?;
        {
            let mut inner = self.lock();
            inner.board = new_board(&inner.config);
            inner.progress.clear();
            inner.mass_delete = None;
        }
        self.restart();
        self.log(
            "info",
            format!("Settings saved: {} ({})", source.display(), form.mode),
        );
        Ok(())
    }

    /// Sets the guard's thresholds.
    pub fn save_guard(self: &Arc<Self>, form: &GuardView) -> Result<(), UiError> {
        if !(1.0..=100.0).contains(&form.cpu_above) {
            return Err(UiError::bad_input(
                "The CPU threshold must be between 1% and 100%.",
            ));
        }
        let seconds = |value: f64, what: &str| {
            if value.is_finite() && (0.0..=3600.0).contains(&value) {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(UiError::bad_input(format!(
                    "{what} must be between 0 and 3600 seconds."
                )))
            }
        };
        let cpu_for = seconds(form.cpu_for_seconds, "The CPU window")?;
        let resume_after = seconds(form.resume_after_seconds, "The resume delay")?;
        let net = match form.net_above_mbit {
            Some(mbit) if mbit.is_finite() && mbit > 0.0 => Some(mbit * 1e6 / 8.0),
            Some(_) => {
                return Err(UiError::bad_input(
                    "The network threshold must be above 0 Mbit/s (or empty for none).",
                ));
            }
            None => None,
        };
        self.change_config(|config| {
            config.guard.pause_cpu_above = form.cpu_above;
            config.guard.pause_cpu_for = cpu_for;
            config.guard.resume_after = resume_after;
            config.guard.pause_memory_below = form.memory_below_mb.map(|mb| mb << 20);
            config.guard.pause_net_above = net;
            Ok(())
        })?;
        self.restart_guard();
        self.restart();
        self.log("info", "Guard thresholds saved".into());
        Ok(())
    }

    /// Refuses while this PC receives its folder back (a push now would send a half-restored
    /// folder, with its deletions, to the other targets).
    fn check_not_receiving(inner: &Inner) -> Result<(), UiError> {
        match &inner.receiving_from {
            Some(from) => Err(UiError::new(
                UiCode::Busy,
                format!(
                    "This PC is receiving its folder back from {from}; syncing from it can start when that has finished."
                ),
            )),
            None => Ok(()),
        }
    }

    /// The Sync button: mirror now (and lift a pause made from the dashboard).
    pub fn sync_now(self: &Arc<Self>) -> Result<(), UiError> {
        let mut inner = self.lock();
        Self::check_not_receiving(&inner)?;
        let folder = inner.config.folders.first().ok_or_else(|| {
            UiError::bad_input("Pick a folder to mirror and at least one target first.")
        })?;
        if folder.targets.is_empty() {
            return Err(UiError::bad_input("Pick at least one target server first."));
        }
        let continuous = folder.mode != Mode::Manual;
        inner.mass_delete = None;
        let was_paused = std::mem::replace(&mut inner.user_paused, false);
        let running = inner.job.is_some();
        let notify = inner.sync_now.clone();
        drop(inner);
        self.log("info", "Sync started".into());
        if !continuous {
            self.start_once(false)
        } else if was_paused || !running {
            self.restart();
            Ok(())
        } else {
            notify.notify_one();
            Ok(())
        }
    }

    /// Confirms a sync that stopped because it would delete many files on a target.
    pub fn allow_mass_delete(self: &Arc<Self>) -> Result<(), UiError> {
        let text = self.lock().mass_delete.take();
        let Some(text) = text else {
            return Err(UiError::bad_input("No sync is waiting for a confirmation."));
        };
        self.log(
            "warn",
            format!("Deletion confirmed from the dashboard: {text}"),
        );
        self.start_once(true)
    }

    /// Holds every sync until [`Runner::resume`].
    pub fn pause(self: &Arc<Self>) {
        let mut inner = self.lock();
        inner.user_paused = true;
        if let Some(job) = inner.job.take() {
            job.cancel.cancel();
        }
        drop(inner);
        self.log("info", "Paused from the dashboard".into());
    }

    pub fn resume(self: &Arc<Self>) {
        if let Err(e) = Self::check_not_receiving(&self.lock()) {
            self.log("warn", e.message);
            return;
        }
        self.lock().user_paused = false;
        self.log("info", "Resumed".into());
        self.restart();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().user_paused
    }

    /// Changes the configuration and saves it; nothing changes when it cannot be saved.
    fn change_config(
        &self,
        change: impl FnOnce(&mut Config) -> Result<(), UiError>,
    ) -> Result<(), UiError> {
        let mut inner = self.lock();
        let mut config = inner.config.clone();
        change(&mut config)?;
        settings::save(&self.config_path, &config)?;
        inner.config = config;
        drop(inner);
        self.touch();
        Ok(())
    }

    /// The mirror of the configured folder.
    fn mirror(&self, inner: &Inner, allow_mass_delete: bool) -> Result<Option<Mirror>, UiError> {
        let Some(folder) = inner.config.folders.first() else {
            return Ok(None);
        };
        if folder.targets.is_empty() {
            return Ok(None);
        }
        // Never trusted on first use: a server is added with its fingerprint confirmed (or
        // its pairing code); a hand-written one without a fingerprint must be in the
        // known-peers file.
        let known_peers = app::mirror::known_peers_in(&self.data_dir);
        let targets = folder
            .targets
            .iter()
            .map(|t| app::mirror::target_spec(t, &known_peers, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UiError::new(UiCode::Config, e.to_string()))?;
        let overrides = Overrides {
            gate: Some(inner.gate.clone()),
            max_delete_share: if allow_mass_delete {
                None
            } else {
                Overrides::default().max_delete_share
            },
            ..Overrides::default()
        };
        Mirror::new(
            folder,
            targets,
            &self.data_dir,
            self.this_pc.clone(),
            overrides,
        )
        .map(Some)
        .map_err(|e| UiError::new(UiCode::Config, e.to_string()))
    }

    /// Stops what runs and starts what the configuration says (continuous or scheduled
    /// folders run until stopped; a manual folder waits for the Sync button).
    fn restart(self: &Arc<Self>) {
        let mut inner = self.lock();
        if let Some(job) = inner.job.take() {
            job.cancel.cancel();
        }
        if inner.user_paused || inner.receiving_from.is_some() {
            return;
        }
        let mirror = match self.mirror(&inner, false) {
            Ok(Some(mirror)) => mirror,
            Ok(None) => return,
            Err(e) => {
                drop(inner);
                self.log("error", e.message);
                return;
            }
        };
        // The guard runs beside every job here (restart_guard), so the schedule has none.
        let Some(schedule) = mirror.schedule(None, Some(inner.sync_now.clone())) else {
            return;
        };
        let options = mirror.options;
        let job = self.new_job(&mut inner, false);
        drop(inner);
        let (runner, events) = (self.clone(), self.events.clone());
        self.rt.spawn(async move {
            let result = engine::push_continuous(&options, &schedule, &events, &job.cancel).await;
            if let Err(e) = result {
                runner.log("error", UiError::from(e).message);
            }
            runner.job_ended(job.id);
        });
        self.touch();
    }

    fn new_job(&self, inner: &mut Inner, once: bool) -> Job {
        inner.jobs_started += 1;
        let job = Job {
            id: inner.jobs_started,
            cancel: self.shutdown.child_token(),
            once,
        };
        inner.job = Some(Job {
            id: job.id,
            cancel: job.cancel.clone(),
            once,
        });
        job
    }

    fn job_ended(&self, id: u64) {
        let mut inner = self.lock();
        if inner.job.as_ref().is_some_and(|j| j.id == id) {
            inner.job = None;
        }
        drop(inner);
        self.touch();
    }

    /// One push of the folder to every target, then back to what the configuration says.
    fn start_once(self: &Arc<Self>, allow_mass_delete: bool) -> Result<(), UiError> {
        let mut inner = self.lock();
        Self::check_not_receiving(&inner)?;
        if inner.job.as_ref().is_some_and(|j| j.once) {
            return Ok(());
        }
        if let Some(job) = inner.job.take() {
            job.cancel.cancel();
        }
        inner.user_paused = false;
        let options = self
            .mirror(&inner, allow_mass_delete)?
            .map(|mirror| mirror.options)
            .ok_or_else(|| {
                UiError::bad_input("Pick a folder to mirror and at least one target first.")
            })?;
        let continuous = inner
            .config
            .folders
            .first()
            .is_some_and(|f| f.mode != Mode::Manual);
        let job = self.new_job(&mut inner, true);
        drop(inner);
        let (runner, events) = (self.clone(), self.events.clone());
        self.rt.spawn(async move {
            let result = engine::push_once(&options, &events, &job.cancel).await;
            let cancelled = job.cancel.is_cancelled();
            runner.job_ended(job.id);
            match result {
                Ok(report) if !cancelled => runner.report(&report),
                Ok(_) => {}
                Err(e) => runner.log("error", UiError::from(e).message),
            }
            if continuous && !cancelled {
                runner.restart();
            }
        });
        self.touch();
        Ok(())
    }

    fn report(&self, report: &PushReport) {
        let names = self.names();
        for t in &report.targets {
            let name = names.get(&t.url).cloned().unwrap_or_else(|| t.url.clone());
            if t.ok {
                self.log(
                    "info",
                    format!(
                        "{name} is in sync: {} files, {} sent in {}",
                        t.files_sent,
                        human_bytes(t.bytes_changed),
                        human_seconds(t.seconds)
                    ),
                );
            }
        }
        for skipped in &report.skipped {
            self.log(
                "warn",
                format!("Not mirrored: {}: {}", skipped.path, skipped.reason),
            );
        }
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

    fn restart_guard(&self) {
        let mut inner = self.lock();
        inner.guard_cancel.cancel();
        inner.guard_cancel = self.shutdown.child_token();
        let _enter = self.rt.enter();
        inner.gate = engine::start_guard(
            inner.config.guard.thresholds(),
            self.events.clone(),
            inner.guard_cancel.clone(),
        );
    }

    /// Folds the engine's events into the dashboard.
    async fn fold_events(self: Arc<Self>) {
        let mut events = self.events.subscribe();
        loop {
            let event = tokio::select! {
                () = self.shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            let event = match event {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            self.fold(&event);
        }
    }

    fn fold(&self, event: &Event) {
        let names = self.names();
        let name = |url: &str| names.get(url).cloned().unwrap_or_else(|| url.to_owned());
        let mut inner = self.lock();
        let changed = inner.board.apply(event, status::now());
        match event {
            Event::Resources {
                cpu_percent,
                available_memory,
                other_traffic,
            } => {
                inner.resources = Some(ResourcesView {
                    cpu_percent: *cpu_percent,
                    available_memory_mb: available_memory >> 20,
                    total_memory_mb: self.total_memory >> 20,
                    other_traffic_mbit: other_traffic * 8.0 / 1e6,
                });
                drop(inner);
                self.touch();
                return;
            }
            Event::Planned {
                target,
                files,
                bytes,
            } => {
                inner.progress.insert(
                    target.clone(),
                    Track {
                        at: Instant::now(),
                        view: ProgressView {
                            files_total: *files,
                            bytes_total: *bytes,
                            ..ProgressView::default()
                        },
                    },
                );
                self.mark_online(&mut inner, target, true, None);
            }
            Event::Progress {
                target,
                files_done,
                files_total,
                bytes_done,
                bytes_total,
            } => {
                if let Some(track) = inner.progress.get_mut(target) {
                    let now = Instant::now();
                    let dt = now.duration_since(track.at).as_secs_f64();
                    if dt >= 0.2 {
                        let moved = bytes_done.saturating_sub(track.view.bytes_done) as f64;
                        let rate = moved / dt;
                        track.view.rate = if track.view.rate == 0.0 {
                            rate
                        } else {
                            0.7 * track.view.rate + 0.3 * rate
                        };
                        track.at = now;
                        track.view.bytes_done = *bytes_done;
                    }
                    track.view.files_done = *files_done;
                    track.view.files_total = *files_total;
                    track.view.bytes_total = *bytes_total;
                    let left = bytes_total.saturating_sub(*bytes_done) as f64;
                    track.view.eta_seconds =
                        (track.view.rate > 0.0).then(|| left / track.view.rate);
                }
            }
            Event::InSync { target } => {
                inner.progress.remove(target);
                self.mark_online(&mut inner, target, true, None);
                if inner.failing.remove(target) {
                    drop(inner);
                    self.notify(
                        "Back in sync",
                        format!("{} is in sync again.", name(target)),
                    );
                    self.log("info", format!("{} is back in sync", name(target)));
                    return;
                }
            }
            Event::TargetFailed {
                target,
                reason,
                refusal,
            } => {
                inner.progress.remove(target);
                if *refusal == Refusal::MassDelete {
                    inner.mass_delete = Some(format!("{}: {reason}", name(target)));
                }
                self.mark_online(&mut inner, target, false, Some(reason.clone()));
                let first = inner.failing.insert(target.clone());
                drop(inner);
                if first {
                    self.notify("Sync failed", format!("{}: {reason}", name(target)));
                }
                self.log("error", format!("{}: {reason}", name(target)));
                return;
            }
            Event::Paused { reason } => {
                drop(inner);
                self.log("warn", format!("Paused: {reason}"));
                return;
            }
            Event::Resumed { after } => {
                drop(inner);
                self.log("info", format!("Resumed: clear of {after}"));
                return;
            }
            Event::Skipped { path, reason } => {
                drop(inner);
                self.log("warn", format!("Not mirrored: {path}: {reason}"));
                return;
            }
            Event::FileFailed {
                target,
                path,
                reason,
            } => {
                drop(inner);
                self.log("warn", format!("{}: {path}: {reason}", name(target)));
                return;
            }
            Event::Synced {
                target,
                files_sent,
                bytes_changed,
                seconds,
                ..
            } if *files_sent > 0 => {
                drop(inner);
                self.log(
                    "info",
                    format!(
                        "{}: {files_sent} files, {} in {}",
                        name(target),
                        human_bytes(*bytes_changed),
                        human_seconds(*seconds)
                    ),
                );
                return;
            }
            Event::Synced { .. } | Event::Scanned { .. } | Event::Verifying { .. } => {}
        }
        drop(inner);
        if changed || matches!(event, Event::Progress { .. }) {
            self.touch();
        }
    }

    fn mark_online(&self, inner: &mut Inner, url: &str, ok: bool, reason: Option<String>) {
        let Some(server) = inner.config.servers.iter().find(|s| s.url == url) else {
            return;
        };
        let name = server.name.clone();
        let entry = inner.online.entry(name).or_insert(Online {
            ok,
            remote_name: None,
            reason: None,
            status: None,
        });
        entry.ok = ok;
        entry.reason = reason;
    }

    fn connect_options(&self, spec: &TargetSpec) -> ConnectOptions {
        ConnectOptions {
            url: spec.url.clone(),
            trust: spec.trust.clone(),
            token: spec.token.clone(),
            source_name: self.this_pc.clone(),
        }
    }

    /// How this PC checks the server at `url`.
    fn trust(&self, url: &str, fingerprint: Option<&str>) -> Trust {
        // Never on first use: a server is added with its fingerprint confirmed (or its pairing
        // code); a hand-written one without a fingerprint must be in the known-peers file.
        Trust::for_url(
            url,
            fingerprint,
            &app::mirror::known_peers_in(&self.data_dir),
            false,
        )
    }

    /// The trust and pairing token of a configured server.
    fn spec_of(&self, server: &Server) -> Result<TargetSpec, UiError> {
        Ok(TargetSpec {
            url: server.url.clone(),
            trust: self.trust(&server.url, server.fingerprint.as_deref()),
            token: settings::read_token(&server.token_file)?,
        })
    }

    /// A control connection to a server whose admin token this PC holds.
    async fn control(&self, name: &str) -> Result<Remote, UiError> {
        let server = self
            .lock()
            .config
            .servers
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| UiError::bad_input(format!("There is no server named {name:?}.")))?;
        let Some(admin) = &server.admin_token_file else {
            return Err(UiError::bad_input(format!(
                "{name} was added without its admin token, so this PC cannot command it. Remove it and add it again with the admin token."
            )));
        };
        let spec = self.spec_of(&server)?;
        Ok(Remote::connect(&ConnectOptions {
            token: settings::read_token(admin)?,
            ..self.connect_options(&spec)
        })
        .await?)
    }

    /// What the server at `spec` says of its folder, asked with its admin token.
    async fn remote_status(
        &self,
        spec: &TargetSpec,
        admin_token: &str,
    ) -> Result<AgentStatus, UiError> {
        let mut control = Remote::connect(&ConnectOptions {
            token: admin_token.to_owned(),
            ..self.connect_options(spec)
        })
        .await?;
        let status = control.status().await;
        control.close().await;
        Ok(status?)
    }

    /// Tells server `from` to push its folder to servers `to`, and follows the push.
    pub async fn remote_push(self: &Arc<Self>, from: &str, to: &[String]) -> Result<(), UiError> {
        if to.is_empty() {
            return Err(UiError::bad_input("Pick at least one server to push to."));
        }
        if to.iter().any(|t| t == from) {
            return Err(UiError::bad_input(format!("{from} cannot push to itself.")));
        }
        let servers = self.lock().config.servers.clone();
        let mut targets = Vec::new();
        for name in to {
            let server = servers
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| UiError::bad_input(format!("There is no server named {name:?}.")))?;
            targets.push(RemoteTarget {
                url: server.url.clone(),
                token: settings::read_token(&server.token_file)?,
                fingerprint: server.fingerprint.clone(),
            });
        }
        self.start_remote_push(from, targets, &to.join(", "), None)
            .await
    }

    /// Starts a push from server `from` to `targets` and follows it; `then` is cancelled when
    /// it ends.
    async fn start_remote_push(
        self: &Arc<Self>,
        from: &str,
        targets: Vec<RemoteTarget>,
        to: &str,
        then: Option<CancellationToken>,
    ) -> Result<(), UiError> {
        let urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
        let mut control = self.control(from).await?;
        control.subscribe().await?;
        let job = control.push(targets, false).await?;
        self.lock().remote_targets.extend(urls.iter().cloned());
        self.log(
            "info",
            format!("{from} is pushing its folder to {to} (push {job})"),
        );
        let (runner, from) = (self.clone(), from.to_owned());
        self.rt.spawn(async move {
            let ended = runner.follow(&mut control, job).await;
            control.close().await;
            if let Some(then) = then {
                then.cancel();
            }
            {
                let mut inner = runner.lock();
                for url in &urls {
                    inner.remote_targets.remove(url);
                }
            }
            match ended {
                Ok(ended) if ended.state == JobState::Done => runner.log(
                    "info",
                    format!("{from} finished its push: every target is in sync"),
                ),
                Ok(ended) => runner.log(
                    "error",
                    format!(
                        "{from}'s push {job} ended: {}{}",
                        ended.state,
                        ended.error.map_or(String::new(), |e| format!(": {e}"))
                    ),
                ),
                Err(e) => runner.log("error", format!("{from}'s push {job}: {}", e.message)),
            }
            runner.probe_all().await;
        });
        Ok(())
    }

    /// Folds a remote push's events into the dashboard until it ends; returns how it ended.
    async fn follow(&self, control: &mut Remote, job: u64) -> Result<JobStatus, UiError> {
        Ok(control.follow(job, |event| self.fold(&event)).await?)
    }

    /// Failback: this PC receives its folder back from server `from` (the source since a
    /// failover). Local pushes pause; an agent serves the folder on `address` (HOST:PORT, as
    /// the server reaches this PC, and only there) with a one-time token that opens sessions
    /// for [`FAILBACK_TOKEN_LIFETIME`] and ends with the push; what it replaces goes to the
    /// folder's trash.
    pub async fn receive_from(self: &Arc<Self>, from: &str, address: &str) -> Result<(), UiError> {
        let source = self
            .lock()
            .config
            .folders
            .first()
            .map(|f| f.source.clone())
            .ok_or_else(|| {
                UiError::bad_input("Pick this PC's folder first: it is what receives.")
            })?;
        let (listen, url) = failback_address(from, address)?;
        Self::check_not_receiving(&self.lock())?;
        let token = hex_token();
        let server = engine::Server::bind(ServeOptions {
            root: source.clone(),
            listen,
            token: token.clone(),
            admin_token: None,
            insecure: false,
            name: self.this_pc.clone(),
            trash_retention: Some(rainmaker_engine::trash::DEFAULT_RETENTION),
            push_to: None,
        })
        .await
        .map_err(|e| {
            UiError::bad_input(format!(
                "{e}. Give an address of this PC's own network connection as {from} reaches \
                 it (behind a router, this PC's LAN address with the port forwarded to it)."
            ))
        })?
        .expire_token_after(FAILBACK_TOKEN_LIFETIME);
        let fingerprint = server.fingerprint().map(str::to_owned);
        let stop = self.shutdown.child_token();
        self.pause();
        self.lock().receiving_from = Some(from.to_owned());
        self.rt.spawn(server.run(stop.clone()));
        let (runner, done) = (self.clone(), stop.clone());
        self.rt.spawn(async move {
            done.cancelled().await;
            runner.lock().receiving_from = None;
            runner.log(
                "info",
                "This PC has stopped receiving; press Resume to mirror from it again".into(),
            );
        });
        let target = RemoteTarget {
            url,
            token,
            fingerprint,
        };
        let started = self
            .start_remote_push(
                from,
                vec![target],
                &format!("{} (this PC)", self.this_pc),
                Some(stop.clone()),
            )
            .await;
        if started.is_err() {
            stop.cancel();
        }
        started
    }

    /// Makes a server the source of its folder (failover) or a target again (failback).
    pub async fn set_role(
        self: &Arc<Self>,
        name: &str,
        source: bool,
        force: bool,
    ) -> Result<(), UiError> {
        let mut control = self.control(name).await?;
        let done = if source {
            control.promote(force).await
        } else {
            control.demote().await
        };
        control.close().await;
        done?;
        self.log(
            "warn",
            if source {
                format!("{name} is now the source of its folder; it no longer receives mirrors")
            } else {
                format!("{name} receives mirrors again")
            },
        );
        self.probe_all().await;
        Ok(())
    }

    /// Checks every server now and then: online, and still the server that was confirmed.
    async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.probe_all().await;
        }
    }

    /// Checks every server once (and asks those whose admin token this PC holds for the
    /// state of their folder).
    pub async fn probe_all(&self) {
        let source = self.lock().config.folders.first().map(|f| f.source.clone());
        if let Some(source) = source {
            let newest = tokio::task::spawn_blocking(move || {
                let totals = rainmaker_engine::fs::totals(&source);
                (totals.files > 0).then(|| totals.newest_mtime_ns as f64 / 1e9)
            })
            .await
            .ok()
            .flatten();
            self.lock().local_newest = newest;
        }
        let servers = self.lock().config.servers.clone();
        for server in servers {
            let spec = match self.spec_of(&server) {
                Ok(spec) => spec,
                Err(e) => {
                    self.set_online(&server.name, false, None, Some(e.message));
                    continue;
                }
            };
            let checked = match &server.admin_token_file {
                Some(file) => match settings::read_token(file) {
                    Ok(admin) => self
                        .remote_status(&spec, &admin)
                        .await
                        .map(|s| (s.name.clone(), Some(s))),
                    Err(e) => Err(e),
                },
                None => engine::probe(&spec, &self.this_pc)
                    .await
                    .map(|name| (name, None))
                    .map_err(UiError::from),
            };
            match checked {
                Ok((remote, status)) => {
                    self.set_online(&server.name, true, Some(remote), None);
                    if let Some(online) = self.lock().online.get_mut(&server.name) {
                        online.status = status;
                    }
                    self.touch();
                }
                Err(e) => self.set_online(&server.name, false, None, Some(e.message)),
            }
        }
    }

    fn set_online(
        &self,
        name: &str,
        ok: bool,
        remote_name: Option<String>,
        reason: Option<String>,
    ) {
        let mut inner = self.lock();
        let was = inner.online.get(name).map(|o| o.ok);
        let remote_name =
            remote_name.or_else(|| inner.online.get(name).and_then(|o| o.remote_name.clone()));
        let status = inner.online.get(name).and_then(|o| o.status.clone());
        inner.online.insert(
            name.to_owned(),
            Online {
                ok,
                remote_name,
                reason: reason.clone(),
                status,
            },
        );
        drop(inner);
        match (was, ok) {
            (Some(true), false) => {
                self.notify(
                    "Server offline",
                    format!("{name}: {}", reason.clone().unwrap_or_default()),
                );
                self.log(
                    "warn",
                    format!("{name} went offline: {}", reason.unwrap_or_default()),
                );
            }
            (Some(false), true) => {
                self.notify("Server back online", format!("{name} answers again."));
                self.log("info", format!("{name} is back online"));
            }
            _ => self.touch(),
        }
    }
}

/// A one-time pairing token.
fn hex_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_board(config: &Config) -> Board {
    let folder = config.folders.first();
    let urls: Vec<String> = folder
        .map(|f| f.targets.iter().map(|t| t.url.clone()).collect())
        .unwrap_or_default();
    let mode = match folder.map(|f| f.mode) {
        Some(Mode::Manual) | None => "once",
        Some(Mode::Watch) => "watch",
        Some(Mode::Every(_)) => "every",
    };
    let source = folder
        .map(|f| f.source.display().to_string())
        .unwrap_or_default();
    Board::new(std::process::id(), &source, mode, &urls)
}

fn folder_view(folder: &Folder, servers: &[Server]) -> FolderView {
    FolderView {
        source: folder.source.display().to_string(),
        preset: folder.preset.clone(),
        exclude: folder.exclude.clone(),
        targets: folder
            .targets
            .iter()
            .filter_map(|t| {
                t.name.clone().or_else(|| {
                    servers
                        .iter()
                        .find(|s| s.url == t.url)
                        .map(|s| s.name.clone())
                })
            })
            .collect(),
        mode: match folder.mode {
            Mode::Manual => "manual",
            Mode::Watch => "watch",
            Mode::Every(_) => "every",
        }
        .into(),
        every_minutes: match folder.mode {
            Mode::Every(every) => Some(every.as_secs_f64() / 60.0),
            _ => None,
        },
        bwlimit_mbit: folder.bwlimit.map(|rate| rate * 8.0 / 1e6),
    }
}

fn guard_view(config: &Config) -> GuardView {
    let g = &config.guard;
    GuardView {
        cpu_above: g.pause_cpu_above,
        cpu_for_seconds: g.pause_cpu_for.as_secs_f64(),
        memory_below_mb: g.pause_memory_below.map(|b| b >> 20),
        net_above_mbit: g.pause_net_above.map(|rate| rate * 8.0 / 1e6),
        resume_after_seconds: g.resume_after.as_secs_f64(),
    }
}

/// The tray icon's state.
fn overall(servers: &[ServerView], paused: bool, running: bool, configured: bool) -> String {
    let targets: Vec<&ServerView> = servers.iter().filter(|s| s.role == "target").collect();
    if paused {
        "paused"
    } else if targets
        .iter()
        .any(|s| matches!(s.state.as_str(), "error" | "offline"))
    {
        "error"
    } else if running {
        "syncing"
    } else if configured && !targets.is_empty() && targets.iter().all(|s| s.state == "in sync") {
        "in_sync"
    } else {
        "idle"
    }
    .into()
}

fn summary(overall: &str, servers: &[ServerView], paused: Option<&PauseView>) -> String {
    let targets: Vec<&ServerView> = servers.iter().filter(|s| s.role == "target").collect();
    let in_sync = targets.iter().filter(|s| s.state == "in sync").count();
    match overall {
        "paused" => format!(
            "RainMaker: paused — {}",
            paused.map_or("", |p| p.reason.as_str())
        ),
        "error" => {
            let bad: Vec<&str> = targets
                .iter()
                .filter(|s| matches!(s.state.as_str(), "error" | "offline"))
                .map(|s| s.name.as_str())
                .collect();
            format!("RainMaker: {} not in sync", bad.join(", "))
        }
        "syncing" => format!(
            "RainMaker: syncing ({in_sync} of {} in sync)",
            targets.len()
        ),
        "in_sync" if targets.len() == 1 => format!("RainMaker: {} is in sync", targets[0].name),
        "in_sync" => format!("RainMaker: all {} targets in sync", targets.len()),
        _ if targets.is_empty() => "RainMaker: pick a folder and targets".into(),
        _ => format!("RainMaker: {in_sync} of {} targets in sync", targets.len()),
    }
}

/// How long the failback receiver's one-time token opens sessions: the push it was made for
/// starts at once; a session already open goes on to its end.
pub const FAILBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Where the failback receiver listens and the address `from` pushes to, from the HOST:PORT
/// the user gave: the listener binds that address only, never every interface.
fn failback_address(from: &str, address: &str) -> Result<(String, String), UiError> {
    let (host, port) = address
        .trim()
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| {
            UiError::bad_input(format!(
                "{address:?} is not HOST:PORT; give this PC's address as {from} reaches it, e.g. 192.168.1.20:7878"
            ))
        })?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok((format!("{host}:{port}"), format!("wss://{host}:{port}")))
}

fn check_name(name: &str) -> Result<String, UiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(UiError::bad_input(
            "Give the server a name of 1 to 64 characters.",
        ));
    }
    Ok(name.to_owned())
}

/// Accepts `HOST:PORT` or a wss:// address; returns the wss:// address.
/// The pairing code the user pasted as the address, if it is one.
fn paired(address: &str) -> Result<Option<Pairing>, UiError> {
    if !Pairing::is_code(address) {
        return Ok(None);
    }
    let code = Pairing::parse(address).map_err(|e| UiError::bad_input(e.to_string()))?;
    if code.role != Role::Source {
        return Err(UiError::bad_input(
            "That is the server's admin code: paste its pairing code (`rainmaker pair`) as the address, and the admin token below.",
        ));
    }
    Ok(Some(code))
}

fn check_url(url: &str) -> Result<String, UiError> {
    let url = url.trim().trim_end_matches('/');
    let address = Address::parse_host_port(url).map_err(|e| {
        let why = match e {
            TransportError::BadUrl { reason, .. } => reason,
            other => other.to_string(),
        };
        UiError::bad_input(format!(
            "{url:?} is not a server address ({why}); write HOST:PORT, e.g. 203.0.113.5:7878 \
             (the port `rainmaker serve` listens on)."
        ))
    })?;
    if !address.tls {
        return Err(UiError::bad_input(format!(
            "{url:?} is not encrypted (ws://); write HOST:PORT, e.g. 203.0.113.5:7878."
        )));
    }
    Ok(address.url())
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
        runner.fold(&failed);
        runner.fold(&failed);
        runner.fold(&Event::InSync {
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

    #[tokio::test]
    async fn the_tray_state_and_tooltip_follow_the_targets() {
        let view = |name: &str, state: &str| ServerView {
            name: name.into(),
            role: "target".into(),
            state: state.into(),
            ..ServerView::default()
        };
        let servers = [view("a", "in sync"), view("b", "in sync")];
        assert_eq!(overall(&servers, false, false, true), "in_sync");
        assert_eq!(
            summary("in_sync", &servers, None),
            "RainMaker: all 2 targets in sync"
        );
        let servers = [view("a", "in sync"), view("b", "offline")];
        assert_eq!(
            overall(&servers, false, true, true),
            "error",
            "an offline target outranks syncing"
        );
        assert_eq!(summary("error", &servers, None), "RainMaker: b not in sync");
        let pause = PauseView {
            by: "guard".into(),
            reason: "CPU 93% above 85% for 10 s".into(),
        };
        assert_eq!(overall(&servers, true, true, true), "paused");
        assert_eq!(
            summary("paused", &servers, Some(&pause)),
            "RainMaker: paused — CPU 93% above 85% for 10 s"
        );
        assert_eq!(overall(&[], false, false, false), "idle");
    }

    #[tokio::test]
    async fn a_guard_pause_reaches_the_dashboard_with_its_reason() {
        let (_dir, runner, _notices) = runner();
        runner.fold(&Event::Paused {
            reason: "CPU 93% above 85% for 10 s".into(),
        });
        let d = runner.dashboard();
        let pause = d.paused.expect("a pause is shown");
        assert_eq!(
            (pause.by.as_str(), pause.reason.as_str()),
            ("guard", "CPU 93% above 85% for 10 s")
        );
        assert_eq!(d.overall, "paused");
        assert!(
            d.activity
                .iter()
                .any(|a| a.text == "Paused: CPU 93% above 85% for 10 s")
        );
        runner.fold(&Event::Resumed {
            after: "CPU 93% above 85% for 10 s".into(),
        });
        assert!(runner.dashboard().paused.is_none(), "and lifted on resume");
        runner.stop();
    }

    #[test]
    fn the_failback_receiver_listens_only_on_the_address_given() {
        for (given, listen, url) in [
            (
                "192.168.1.20:7878",
                "192.168.1.20:7878",
                "wss://192.168.1.20:7878",
            ),
            ("[fd00::5]:7878", "[fd00::5]:7878", "wss://[fd00::5]:7878"),
            ("127.0.0.1:9000", "127.0.0.1:9000", "wss://127.0.0.1:9000"),
            ("home-pc:7878", "home-pc:7878", "wss://home-pc:7878"),
        ] {
            assert_eq!(
                failback_address("cloud-a", given).unwrap(),
                (listen.to_owned(), url.to_owned()),
                "{given}: never every interface"
            );
        }
        assert!(failback_address("cloud-a", "no-port").is_err());
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
            .receive_from("no-such-server", &format!("{lan}:{port}"))
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

    #[test]
    fn addresses_are_checked_before_any_connection() {
        assert_eq!(
            check_url("203.0.113.5:7878").unwrap(),
            "wss://203.0.113.5:7878"
        );
        assert_eq!(check_url("wss://[::1]:7878/").unwrap(), "wss://[::1]:7878");
        assert_eq!(
            check_url("WSS://Cloud.Example:7878").unwrap(),
            "wss://cloud.example:7878",
            "one parser: the scheme and host in any case"
        );
        for bad in [
            "cloud.example.com",
            "http://x:1",
            "x:0",
            ":7878",
            "x:99999",
            "ws://x:1",
        ] {
            assert_eq!(check_url(bad).unwrap_err().code, UiCode::BadInput, "{bad}");
        }
        assert!(check_name("  ").is_err() && check_name(&"n".repeat(65)).is_err());
    }
}
