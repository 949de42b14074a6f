//! Mirrors supervised: every configured folder of a machine kept running as its mode says;
//! started, stopped, synced now, paused and resumed on command; held by the resource guard;
//! and what each reports taken into one status per folder and per target (state, lag,
//! progress with rate and time left, the pause and its reason, a deletion waiting for a yes).
//!
//! The tray app drives it and knows nothing of the engine's jobs; it knows nothing of a
//! window. Each folder's mirror has its own event channel, so two folders that share nothing
//! never mix their targets' states; the resource guard is one for all of them.

use super::mirror::{self, Ended, Mirror, Overrides};
use super::progress::{Progress, Tracker};
use crate::config::{Folder, Mode};
use crate::engine::start_guard;
use crate::event::{self, Event, PushReport, Refusal};
use crate::guard::{Gate, Thresholds};
use crate::status::{self, Board, TargetState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Something a supervised mirror reported, for a shell to log or notify.
#[derive(Debug, Clone)]
pub enum Report {
    /// An event of the mirror of the folder `source` (`None`: the resource guard's, for all).
    Event {
        source: Option<PathBuf>,
        event: Event,
    },
    /// A one-off push of `source` ended (not when it was stopped).
    Pushed { source: PathBuf, report: PushReport },
    /// The mirror of `source` stopped with an error, or could not be set up.
    Failed { source: PathBuf, error: String },
}

/// What cannot be done now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SuperviseError {
    #[error("there is no folder to mirror with a target yet")]
    NothingToMirror,
    #[error("{0}")]
    Held(String),
    #[error("no sync of {0} is waiting for a confirmation")]
    NothingToConfirm(String),
    #[error("{0} is not a configured folder")]
    UnknownFolder(String),
    #[error("sync is paused; resume it first")]
    Paused,
    #[error("{0} is not mirrored until the next Sync: its backups were kept as they were")]
    Kept(String),
}

/// Why a folder's sync is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    /// The user paused every sync (the Pause button, the tray menu).
    ByUser,
    /// The resource guard holds every sync; the reason carries the figure it measured.
    ByGuard(String),
}

/// One target of a folder, now.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetNow {
    pub url: String,
    pub state: TargetState,
    /// The last error or offline reason.
    pub reason: Option<String>,
    /// Unix seconds.
    pub last_sync: Option<f64>,
    /// Seconds it lacks a change of the source.
    pub lag_seconds: f64,
    /// The transfer under way.
    pub progress: Option<Progress>,
}

/// A sync that stopped because it would delete many files on a target, waiting for a yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassDelete {
    /// The target's URL.
    pub target: String,
    /// What would be deleted, in words.
    pub reason: String,
    /// How many files would be deleted, when the target said (0: not said).
    pub doomed: u64,
    /// The first of them.
    pub paths: Vec<String>,
}

/// One folder's mirror, now.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderNow {
    pub source: PathBuf,
    pub mode: Mode,
    /// A one-off push runs now.
    pub pushing: bool,
    pub paused: Option<Pause>,
    pub targets: Vec<TargetNow>,
    /// A sync stopped because it would delete many files on a target.
    pub mass_delete: Option<MassDelete>,
    /// The user chose to keep the backups as they are after such a stop: the folder is not
    /// mirrored until the next Sync now.
    pub kept: bool,
    /// Why the mirror cannot run as configured (a token file missing, a bad exclusion).
    pub problem: Option<String>,
}

/// Every configured folder, mirrored.
#[derive(Debug)]
pub struct Supervisor {
    data_dir: PathBuf,
    source_name: String,
    rt: Handle,
    shutdown: CancellationToken,
    state: Mutex<State>,
    reports: broadcast::Sender<Report>,
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    folders: Vec<Supervised>,
    paused_by_user: bool,
    /// Why nothing may run now (a shell's reason, e.g. the folder is being received back).
    held: Option<String>,
    gate: Gate,
    guard_cancel: CancellationToken,
    /// Why the resource guard holds every sync, while it does.
    guard_paused: Option<String>,
    /// The last mirror task of each source folder (by path), which the next one waits for.
    tasks: HashMap<PathBuf, JoinHandle<()>>,
    next_id: u64,
}

/// One folder and its mirror.
#[derive(Debug)]
struct Supervised {
    id: u64,
    folder: Folder,
    board: Board,
    progress: Tracker,
    run: Option<Run>,
    sync_now: Arc<Notify>,
    mass_delete: Option<MassDelete>,
    /// Not mirrored until the next Sync now: the user kept the backups as they were.
    kept: bool,
    /// The deletion the user confirmed (the target, how many files), for the push it starts.
    confirmed: Option<(String, u64)>,
    problem: Option<String>,
    events: broadcast::Sender<Event>,
}

/// The folder of `source` and its question about a mass deletion, taken as answered; refused
/// when there is no such folder, or no question.
fn answered<'a>(
    state: &'a mut State,
    source: &Path,
) -> Result<(&'a mut Supervised, MassDelete), SuperviseError> {
    let shown = || source.display().to_string();
    let s = state
        .folders
        .iter_mut()
        .find(|s| s.folder.source == source)
        .ok_or_else(|| SuperviseError::UnknownFolder(shown()))?;
    match s.mass_delete.take() {
        Some(question) => Ok((s, question)),
        None => Err(SuperviseError::NothingToConfirm(shown())),
    }
}

/// Stops the mirror of each of `folders` (its task lets go of the index on its own).
fn stop_runs(folders: &mut [Supervised]) {
    for s in folders {
        if let Some(run) = s.run.take() {
            run.cancel.cancel();
        }
    }
}

/// Whose events a `take_in` task takes in.
#[derive(Debug)]
enum Source {
    /// The resource guard that runs until this token is cancelled.
    Guard(CancellationToken),
    /// The mirror of the folder with this id.
    Folder(u64),
}

/// How a folder's mirror starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// As its mode says (nothing for a folder mirrored when asked).
    ByMode,
    /// One push now (Sync now).
    Once,
    /// One push that may delete any share of a target's files (a confirmed deletion).
    OnceDeleting,
    /// One push now, past the resource guard's pause (Sync anyway).
    OnceAnyway,
}

/// A mirror's task.
#[derive(Debug)]
struct Run {
    id: u64,
    cancel: CancellationToken,
    once: bool,
}

impl Supervisor {
    /// A supervisor of no folder yet, mirroring as `source_name` with its indexes under
    /// `data_dir`, the resource guard at `thresholds`; tasks run on `rt`.
    pub fn new(
        data_dir: PathBuf,
        source_name: String,
        thresholds: Thresholds,
        rt: Handle,
    ) -> Arc<Supervisor> {
        let shutdown = CancellationToken::new();
        let supervisor = Arc::new(Supervisor {
            data_dir,
            source_name,
            rt,
            state: Mutex::new(State {
                folders: Vec::new(),
                paused_by_user: false,
                held: None,
                gate: Gate::open(),
                guard_cancel: shutdown.child_token(),
                guard_paused: None,
                tasks: HashMap::new(),
                next_id: 0,
            }),
            shutdown,
            reports: broadcast::channel(event::EVENT_CAPACITY).0,
            changed: watch::channel(0).0,
        });
        let mut state = supervisor.lock();
        supervisor.install_guard(&mut state, thresholds);
        drop(state);
        supervisor
    }

    /// Starts a resource guard at `thresholds` in place of the one running: its gate holds
    /// every mirror started from now on, and its events are taken in until it is replaced (an
    /// event the old guard sent late is dropped, so its pause cannot outlive it).
    fn install_guard(self: &Arc<Self>, state: &mut State, thresholds: Thresholds) {
        state.guard_cancel.cancel();
        state.guard_cancel = self.shutdown.child_token();
        let (events, rx) = event::channel();
        state.gate = {
            let _enter = self.rt.enter();
            start_guard(thresholds, events, state.guard_cancel.clone())
        };
        let guard = state.guard_cancel.clone();
        self.rt
            .spawn(self.clone().take_in(Source::Guard(guard), rx));
    }

    /// What the mirrors report, as it happens.
    pub fn reports(&self) -> broadcast::Receiver<Report> {
        self.reports.subscribe()
    }

    /// A counter that moves whenever a status changed.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless a shell holds every sync (then why).
    fn unheld(&self) -> Result<MutexGuard<'_, State>, SuperviseError> {
        let state = self.lock();
        match &state.held {
            Some(why) => Err(SuperviseError::Held(why.clone())),
            None => Ok(state),
        }
    }

    fn touch(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Mirrors `folders` from now on. A folder whose settings did not change keeps running
    /// (adding a second folder does not interrupt the first); a changed one starts again; a
    /// removed one stops.
    pub fn set_folders(self: &Arc<Self>, folders: &[Folder]) {
        let mut state = self.lock();
        let mut kept = Vec::new();
        for folder in folders {
            let same = state.folders.iter().position(|s| &s.folder == folder);
            match same {
                Some(i) => kept.push(state.folders.remove(i)),
                None => {
                    state.next_id += 1;
                    let supervised = self.supervised(state.next_id, folder.clone());
                    kept.push(supervised);
                }
            }
        }
        stop_runs(&mut std::mem::replace(&mut state.folders, kept));
        let idle: Vec<u64> = state
            .folders
            .iter()
            .filter(|s| s.run.is_none())
            .map(|s| s.id)
            .collect();
        for id in idle {
            self.start(&mut state, id, How::ByMode);
        }
        drop(state);
        self.touch();
    }

    fn supervised(self: &Arc<Self>, id: u64, folder: Folder) -> Supervised {
        let urls: Vec<String> = folder.targets.iter().map(|t| t.url.clone()).collect();
        let mode = match folder.mode {
            Mode::Manual => "once".to_owned(),
            Mode::Watch => "watch".to_owned(),
            Mode::Every(every) => format!("every {}", humantime::format_duration(every)),
        };
        let source = folder.source.display().to_string();
        let (events, rx) = event::channel();
        self.rt.spawn(self.clone().take_in(Source::Folder(id), rx));
        Supervised {
            id,
            board: Board::new(std::process::id(), id as u32, &source, &mode, &urls),
            folder,
            progress: Tracker::default(),
            run: None,
            sync_now: Arc::new(Notify::new()),
            mass_delete: None,
            kept: false,
            confirmed: None,
            problem: None,
            events,
        }
    }

    /// Sets the resource guard's thresholds; the mirrors start again behind the new guard.
    pub fn set_guard(self: &Arc<Self>, thresholds: Thresholds) {
        let mut state = self.lock();
        self.install_guard(&mut state, thresholds);
        // The old guard's pause went with it: the new gate is open until the new guard says.
        if state.guard_paused.take().is_some() {
            let resumed = Event::Resumed {
                after: "the guard's new thresholds".into(),
            };
            for s in &mut state.folders {
                s.board.apply(&resumed, status::now());
            }
        }
        self.restart_all(&mut state);
        drop(state);
        self.touch();
    }

    /// Syncs every folder now: a one-off push of a folder mirrored when asked, an immediate
    /// pass of a continuous or scheduled one. Lifts a pause made by the user.
    pub fn sync_now(self: &Arc<Self>) -> Result<(), SuperviseError> {
        self.sync(How::Once)
    }

    /// Syncs every folder now, once, past the resource guard's pause (the guard goes on
    /// deciding for the syncs after it). Lifts a pause made by the user.
    pub fn sync_anyway(self: &Arc<Self>) -> Result<(), SuperviseError> {
        self.sync(How::OnceAnyway)
    }

    fn sync(self: &Arc<Self>, how: How) -> Result<(), SuperviseError> {
        let mut state = self.unheld()?;
        let ids: Vec<u64> = state
            .folders
            .iter()
            .filter(|s| !s.folder.targets.is_empty())
            .map(|s| s.id)
            .collect();
        if ids.is_empty() {
            return Err(SuperviseError::NothingToMirror);
        }
        let was_paused = std::mem::replace(&mut state.paused_by_user, false);
        for id in ids {
            let Some(s) = state.folders.iter_mut().find(|s| s.id == id) else {
                continue;
            };
            let once = s.folder.mode == Mode::Manual;
            let kept = std::mem::replace(&mut s.kept, false);
            match &s.run {
                Some(run) if run.once && how == How::Once => {}
                // A running mirror rescans now; a deletion it waits on stays asked (it is
                // refused again on the next pass, and the question must not vanish).
                Some(_) if !was_paused && !once && !kept && how == How::Once => {
                    s.sync_now.notify_one();
                }
                _ => {
                    s.mass_delete = None;
                    let how = match (how, once) {
                        (How::Once, false) => How::ByMode,
                        _ => how,
                    };
                    self.start(&mut state, id, how);
                }
            }
        }
        drop(state);
        self.touch();
        Ok(())
    }

    /// Confirms the sync of `source` that stopped because it would delete many files on a
    /// target: one push that deletes them, then the folder's own mode again.
    pub fn allow_mass_delete(self: &Arc<Self>, source: &Path) -> Result<(), SuperviseError> {
        let mut state = self.unheld()?;
        let (s, question) = answered(&mut state, source)?;
        // What the question counted; when it did not say, what stopped is at least the floor.
        let doomed = match question.doomed {
            0 => crate::mirror::plan::MASS_DELETE_MIN as u64,
            n => n,
        };
        s.confirmed = Some((question.target, doomed));
        let id = s.id;
        // The yes lifts a pause made by the user for every folder, as Sync does.
        let was_paused = std::mem::replace(&mut state.paused_by_user, false);
        self.start(&mut state, id, How::OnceDeleting);
        if was_paused {
            let others: Vec<u64> = state
                .folders
                .iter()
                .filter(|s| s.id != id)
                .map(|s| s.id)
                .collect();
            for other in others {
                self.start(&mut state, other, How::ByMode);
            }
        }
        drop(state);
        self.touch();
        Ok(())
    }

    /// Syncs the folder `source` now, as Retry does for one server that failed: never past a
    /// pause the user made, a hold, or the user's choice to keep its backups as they were (each
    /// is refused with its reason), and a deletion waiting for a yes stays asked.
    pub fn retry(self: &Arc<Self>, source: &Path) -> Result<(), SuperviseError> {
        let mut state = self.unheld()?;
        if state.paused_by_user {
            return Err(SuperviseError::Paused);
        }
        let shown = source.display().to_string();
        let s = state
            .folders
            .iter_mut()
            .find(|s| s.folder.source == source)
            .ok_or_else(|| SuperviseError::UnknownFolder(shown.clone()))?;
        if s.kept {
            return Err(SuperviseError::Kept(shown));
        }
        if s.mass_delete.is_some() {
            return Ok(());
        }
        let id = s.id;
        match &s.run {
            Some(run) if !run.once => s.sync_now.notify_one(),
            Some(_) => {}
            None => self.start(&mut state, id, How::Once),
        }
        drop(state);
        self.touch();
        Ok(())
    }

    /// Answers the stop of a sync of `source` that would delete many files on a target with
    /// "keep the backups as they are": nothing is deleted, and the folder is not mirrored
    /// until the next [`Supervisor::sync_now`] (the source is likely unmounted or emptied: fix
    /// it first).
    pub fn keep_backup(self: &Arc<Self>, source: &Path) -> Result<(), SuperviseError> {
        let mut state = self.lock();
        let (s, _) = answered(&mut state, source)?;
        s.kept = true;
        if let Some(run) = s.run.take() {
            run.cancel.cancel();
        }
        drop(state);
        self.touch();
        Ok(())
    }

    /// Stops the one-off pushes under way (Sync now, Sync anyway, a confirmed deletion): each
    /// target keeps what arrived whole (the next sync resumes from it), and each folder goes
    /// on as its mode says (nothing more for a folder mirrored when asked; Pause stops the
    /// others).
    pub fn stop_syncs(self: &Arc<Self>) {
        let mut state = self.lock();
        let ids: Vec<u64> = state
            .folders
            .iter()
            .filter(|s| s.run.as_ref().is_some_and(|r| r.once))
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.start(&mut state, id, How::ByMode);
        }
        drop(state);
        self.touch();
    }

    /// Holds every sync until [`Supervisor::resume`].
    pub fn pause(&self) {
        let mut state = self.lock();
        state.paused_by_user = true;
        stop_runs(&mut state.folders);
        drop(state);
        self.touch();
    }

    /// Lifts [`Supervisor::pause`]: every folder runs as its mode says again.
    pub fn resume(self: &Arc<Self>) -> Result<(), SuperviseError> {
        let mut state = self.unheld()?;
        state.paused_by_user = false;
        self.restart_all(&mut state);
        drop(state);
        self.touch();
        Ok(())
    }

    /// Whether the user paused every sync.
    pub fn is_paused(&self) -> bool {
        self.lock().paused_by_user
    }

    /// Why every sync is held, if it is: the user's pause first, else the guard's.
    pub fn paused(&self) -> Option<Pause> {
        let state = self.lock();
        if state.paused_by_user {
            Some(Pause::ByUser)
        } else {
            state.guard_paused.clone().map(Pause::ByGuard)
        }
    }

    /// Stops every mirror and refuses to start one while `why` holds (`None` lifts it and
    /// every folder runs as its mode says again).
    pub fn hold(self: &Arc<Self>, why: Option<String>) {
        let mut state = self.lock();
        state.held = why;
        self.restart_all(&mut state);
        drop(state);
        self.touch();
    }

    /// Stops every task (the app quits).
    pub fn stop(&self) {
        let mut state = self.lock();
        stop_runs(&mut state.folders);
        self.shutdown.cancel();
    }

    /// Every folder, now (`now`: Unix seconds, for the lag).
    pub fn status(&self, now: f64) -> Vec<FolderNow> {
        let paused = self.paused();
        let state = self.lock();
        state
            .folders
            .iter()
            .map(|s| {
                let board = s.board.status();
                FolderNow {
                    source: s.folder.source.clone(),
                    mode: s.folder.mode,
                    pushing: s.run.as_ref().is_some_and(|r| r.once),
                    paused: paused.clone(),
                    targets: board
                        .targets
                        .iter()
                        .map(|t| TargetNow {
                            url: t.url.clone(),
                            state: t.state,
                            reason: t.reason.clone(),
                            last_sync: t.last_sync,
                            lag_seconds: status::Status::lag(t, now),
                            progress: s.progress.get(&t.url).cloned(),
                        })
                        .collect(),
                    mass_delete: s.mass_delete.clone(),
                    kept: s.kept,
                    problem: s.problem.clone(),
                }
            })
            .collect()
    }

    /// Stops every mirror and starts each as its mode says (unless paused or held).
    /// A one-off push under way (Sync now, a confirmed deletion) is left to finish and hand
    /// back to its folder's mode, unless everything stops (paused or held).
    fn restart_all(self: &Arc<Self>, state: &mut State) {
        let stopping = state.paused_by_user || state.held.is_some();
        let ids: Vec<u64> = state
            .folders
            .iter()
            .filter(|s| stopping || !s.run.as_ref().is_some_and(|r| r.once))
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.start(state, id, How::ByMode);
        }
    }

    /// Starts the mirror of folder `id` (stopping what runs of it) as `how` says. Nothing
    /// starts while paused or held, or for a folder with no target.
    fn start(self: &Arc<Self>, state: &mut State, id: u64, how: How) {
        let once = how != How::ByMode;
        let gate = match how {
            How::OnceAnyway => Gate::open(),
            _ => state.gate.clone(),
        };
        let stopped = state.paused_by_user || state.held.is_some();
        state.next_id += 1;
        let run_id = state.next_id;
        let Some(s) = state.folders.iter_mut().find(|s| s.id == id) else {
            return;
        };
        if let Some(run) = s.run.take() {
            run.cancel.cancel();
        }
        if stopped || s.folder.targets.is_empty() || (s.kept && !once) {
            return;
        }
        let overrides = Overrides {
            gate: Some(gate),
            mode: once.then_some(Mode::Manual),
            // The yes is for the server and the deletion the user was shown, no more.
            confirmed_delete: match how {
                How::OnceDeleting => s
                    .confirmed
                    .take()
                    .map(|(target, doomed)| (target, doomed as usize)),
                _ => None,
            },
            ..Overrides::default()
        };
        let mirror = match self.mirror(&s.folder, overrides) {
            Ok(mirror) => {
                s.problem = None;
                mirror
            }
            Err(error) => {
                s.problem = Some(error.clone());
                let source = s.folder.source.clone();
                let _ = self.reports.send(Report::Failed { source, error });
                return;
            }
        };
        if !once && s.folder.mode == Mode::Manual {
            return;
        }
        let cancel = self.shutdown.child_token();
        s.run = Some(Run {
            id: run_id,
            cancel: cancel.clone(),
            once,
        });
        let (events, sync_now) = (s.events.clone(), s.sync_now.clone());
        let source = s.folder.source.clone();
        // The folder's last task (stopped above, or by a pause, or an edit of the folder) may
        // still hold its index open until its scan ends: this one starts after it.
        let previous = state.tasks.remove(&source);
        let supervisor = self.clone();
        let task = self.rt.spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            // The guard runs beside every mirror here (set_guard), so the schedule has none.
            let ended = mirror.run(None, Some(sync_now), &events, &cancel).await;
            supervisor.ended(id, run_id, once, ended, cancel.is_cancelled());
        });
        state.tasks.insert(source, task);
    }

    /// The mirror of `folder` as this machine runs it, or what is wrong with it.
    fn mirror(&self, folder: &Folder, overrides: Overrides) -> Result<Mirror, String> {
        // Never trusted on first use: a target's fingerprint is pinned in the configuration
        // or recorded in the known-peers file.
        let known_peers = mirror::known_peers_in(&self.data_dir);
        let targets = folder
            .targets
            .iter()
            .map(|t| mirror::target_spec(t, &known_peers, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Mirror::new(
            folder,
            targets,
            &self.data_dir,
            self.source_name.clone(),
            overrides,
        )
        .map_err(|e| e.to_string())
    }

    /// A mirror's task ended.
    fn ended(
        self: &Arc<Self>,
        id: u64,
        run_id: u64,
        once: bool,
        ended: Result<Ended, crate::engine::EngineError>,
        cancelled: bool,
    ) {
        let mut state = self.lock();
        let Some(s) = state.folders.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let current = s.run.as_ref().is_some_and(|r| r.id == run_id);
        if current {
            s.run = None;
        }
        let source = s.folder.source.clone();
        let continuous = s.folder.mode != Mode::Manual;
        match ended {
            Ok(Ended::Pushed(report)) if !cancelled => {
                let _ = self.reports.send(Report::Pushed { source, report });
            }
            Ok(_) => {}
            Err(e) => {
                let error = e.to_string();
                let _ = self.reports.send(Report::Failed { source, error });
            }
        }
        // A one-off push of a continuous folder (Sync now, a confirmed deletion) hands back
        // to its mode.
        if current && once && continuous && !cancelled {
            self.start(&mut state, id, How::ByMode);
        }
        drop(state);
        self.touch();
    }

    /// Takes in the events of a folder's mirror, or of a resource guard (which concern every
    /// folder) until it is replaced, and passes them on as reports.
    async fn take_in(self: Arc<Self>, from: Source, mut events: broadcast::Receiver<Event>) {
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
            let (at, now) = (Instant::now(), status::now());
            let mut state = self.lock();
            let mut changed = matches!(event, Event::Resources { .. });
            let source = match &from {
                // A replaced guard's late event is not this guard's to say.
                Source::Guard(replaced) if replaced.is_cancelled() => return,
                Source::Guard(_) => {
                    match &event {
                        Event::Paused { reason } => state.guard_paused = Some(reason.clone()),
                        Event::Resumed { .. } => state.guard_paused = None,
                        _ => {}
                    }
                    for s in &mut state.folders {
                        changed |= s.board.apply(&event, now);
                    }
                    None
                }
                Source::Folder(id) => {
                    let Some(s) = state.folders.iter_mut().find(|s| s.id == *id) else {
                        return;
                    };
                    changed |= s.board.apply(&event, now);
                    changed |= s.progress.apply(&event, at);
                    match &event {
                        Event::WouldDelete {
                            target,
                            doomed,
                            paths,
                            ..
                        } => {
                            let reason = s
                                .mass_delete
                                .as_ref()
                                .filter(|m| &m.target == target)
                                .map(|m| m.reason.clone())
                                .unwrap_or_default();
                            s.mass_delete = Some(MassDelete {
                                target: target.clone(),
                                reason,
                                doomed: *doomed,
                                paths: paths.clone(),
                            });
                        }
                        Event::TargetFailed {
                            target,
                            reason,
                            refusal: Refusal::MassDelete,
                        } => {
                            // The list came just before, with the same target.
                            let (doomed, paths) = s
                                .mass_delete
                                .take()
                                .filter(|m| &m.target == target)
                                .map(|m| (m.doomed, m.paths))
                                .unwrap_or_default();
                            s.mass_delete = Some(MassDelete {
                                target: target.clone(),
                                reason: reason.clone(),
                                doomed,
                                paths,
                            });
                        }
                        _ => {}
                    }
                    Some(s.folder.source.clone())
                }
            };
            drop(state);
            let _ = self.reports.send(Report::Event { source, event });
            if changed {
                self.touch();
            }
        }
    }
}
