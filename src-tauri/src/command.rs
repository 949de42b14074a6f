//! The commands the dashboard calls: thin, each forwards to the [`Runner`] and returns
//! `{code, message}` on error.

use crate::error::{UiCode, UiError};
use crate::runner::Runner;
use crate::view::{Dashboard, FolderForm, GuardView, PushAction};
use rainmaker_engine::preset::PRESETS;
use rainmaker_engine::protocol::TrashBatch;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};
use tauri_plugin_autostart::ManagerExt;
use ts_rs::TS;

type Shell<'a> = State<'a, Arc<Runner>>;

/// Snapshots go to the window at most this often.
const UPDATE_EVERY: Duration = Duration::from_millis(250);

/// A platform preset as the folder picker shows it.
#[derive(Debug, Clone, Serialize, TS)]
#[ts(rename = "Preset")]
pub struct PresetView {
    pub id: &'static str,
    pub name: &'static str,
    pub hint: &'static str,
    pub exclude: Vec<&'static str>,
    /// Where the platform keeps its data on this PC, if found (the first of `found`).
    pub folder: Option<String>,
    /// Every data folder of it found on this PC (one per MetaTrader installation).
    pub found: Vec<FoundView>,
}

/// A platform's data folder found on this PC.
#[derive(Debug, Clone, Serialize, TS)]
#[ts(rename = "Found")]
pub struct FoundView {
    pub path: String,
    /// Which installation, in words.
    pub label: String,
}

#[tauri::command]
pub fn dashboard(runner: Shell<'_>) -> Dashboard {
    runner.dashboard()
}

/// Sends a fresh dashboard through `on_update` whenever it changes, until the window goes.
#[tauri::command]
pub fn watch(runner: Shell<'_>, on_update: Channel<Dashboard>) {
    let runner = Arc::clone(&runner);
    let mut changed = runner.subscribe();
    tauri::async_runtime::spawn(async move {
        loop {
            if on_update.send(runner.dashboard()).is_err() {
                return;
            }
            tokio::time::sleep(UPDATE_EVERY).await;
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
}

#[tauri::command]
pub fn presets() -> Vec<PresetView> {
    PRESETS
        .iter()
        .map(|p| {
            let found: Vec<FoundView> = p
                .found()
                .into_iter()
                .map(|f| FoundView {
                    path: f.path.display().to_string(),
                    label: f.label,
                })
                .collect();
            PresetView {
                id: p.id,
                name: p.name,
                hint: p.hint,
                exclude: p.exclude.to_vec(),
                folder: found.first().map(|f| f.path.clone()),
                found,
            }
        })
        .collect()
}

#[tauri::command]
pub async fn peek_server(runner: Shell<'_>, url: String) -> Result<String, UiError> {
    runner.peek(&url).await
}

#[tauri::command]
pub async fn add_server(
    runner: Shell<'_>,
    name: String,
    url: String,
    token: String,
    fingerprint: String,
    admin_token: Option<String>,
) -> Result<(), UiError> {
    runner
        .add_server(&name, &url, &token, &fingerprint, admin_token.as_deref())
        .await
}

/// Pairs server `name` again with its new address (or pairing code), certificate and tokens.
#[tauri::command]
pub async fn repair_server(
    runner: Shell<'_>,
    name: String,
    url: String,
    token: String,
    fingerprint: String,
    admin_token: Option<String>,
) -> Result<(), UiError> {
    runner
        .repair_server(&name, &url, &token, &fingerprint, admin_token.as_deref())
        .await
}

/// The batches of server `name`'s trash, newest first.
#[tauri::command]
pub async fn trash_of(runner: Shell<'_>, name: String) -> Result<Vec<TrashBatch>, UiError> {
    runner.trash_of(&name).await
}

/// Takes a batch of server `name`'s trash back to this PC, into a new folder; returns it.
#[tauri::command]
pub async fn restore_from(
    runner: Shell<'_>,
    name: String,
    batch: String,
) -> Result<String, UiError> {
    runner.restore_from(&name, &batch).await
}

/// Checks a failing server again now, and syncs to it if it answers.
#[tauri::command]
pub async fn retry_server(runner: Shell<'_>, name: String) -> Result<(), UiError> {
    runner.retry_server(&name).await
}

/// Tells server `from` to push its folder to the servers `to` (any server to any servers).
#[tauri::command]
pub async fn remote_push(runner: Shell<'_>, from: String, to: Vec<String>) -> Result<(), UiError> {
    runner.remote_push(&from, &to).await
}

/// Failback: this PC receives its folder back from server `from`, over a connection it opens;
/// on a LAN, `address` (this PC as that server reaches it, HOST:PORT) has the server push to
/// an agent started here instead.
#[tauri::command]
pub async fn receive_from(
    runner: Shell<'_>,
    from: String,
    address: Option<String>,
) -> Result<(), UiError> {
    runner.receive_from(&from, address.as_deref()).await
}

/// Makes a server the source of its folder (`source`), or a target again.
#[tauri::command]
pub async fn set_role(
    runner: Shell<'_>,
    name: String,
    source: bool,
    force: bool,
) -> Result<(), UiError> {
    runner.set_role(&name, source, force).await
}

/// Pauses, resumes or stops push `job` of server `name`.
#[tauri::command]
pub async fn control_push(
    runner: Shell<'_>,
    name: String,
    job: u64,
    action: PushAction,
) -> Result<(), UiError> {
    runner.control_push(&name, job, action).await
}

#[tauri::command]
pub fn rename_server(runner: Shell<'_>, old: String, new: String) -> Result<(), UiError> {
    runner.rename_server(&old, &new)
}

#[tauri::command]
pub fn remove_server(runner: Shell<'_>, name: String) -> Result<(), UiError> {
    runner.remove_server(&name)
}

/// Saves folder `index`, or adds a folder when `index` is null.
#[tauri::command]
pub fn save_folder(
    runner: Shell<'_>,
    index: Option<usize>,
    folder: FolderForm,
) -> Result<(), UiError> {
    runner.save_folder(index, &folder)
}

#[tauri::command]
pub fn remove_folder(runner: Shell<'_>, index: usize) -> Result<(), UiError> {
    runner.remove_folder(index)
}

#[tauri::command]
pub fn save_guard(runner: Shell<'_>, guard: GuardView) -> Result<(), UiError> {
    runner.save_guard(&guard)
}

#[tauri::command]
pub fn sync_now(runner: Shell<'_>) -> Result<(), UiError> {
    runner.sync_now()
}

/// Syncs every folder once now, past the resource guard's pause.
#[tauri::command]
pub fn sync_anyway(runner: Shell<'_>) -> Result<(), UiError> {
    runner.sync_anyway()
}

/// Stops the syncs Sync started.
#[tauri::command]
pub fn stop_syncs(runner: Shell<'_>) {
    runner.stop_syncs()
}

#[tauri::command]
pub fn allow_mass_delete(runner: Shell<'_>, index: usize) -> Result<(), UiError> {
    runner.allow_mass_delete(index)
}

/// Keeps the backups of folder `index` as they are after its sync stopped before deleting
/// many files on them.
#[tauri::command]
pub fn keep_backup(runner: Shell<'_>, index: usize) -> Result<(), UiError> {
    runner.keep_backup(index)
}

#[tauri::command]
pub fn pause(runner: Shell<'_>) {
    runner.pause();
}

#[tauri::command]
pub fn resume(runner: Shell<'_>) {
    runner.resume();
}

#[tauri::command]
pub fn get_autostart<R: Runtime>(app: AppHandle<R>) -> Result<bool, UiError> {
    app.autolaunch()
        .is_enabled()
        .map_err(|e| UiError::new(UiCode::Autostart, e.to_string()))
}

#[tauri::command]
pub fn set_autostart<R: Runtime>(app: AppHandle<R>, enabled: bool) -> Result<(), UiError> {
    let launcher = app.autolaunch();
    let result = if enabled {
        launcher.enable()
    } else {
        launcher.disable()
    };
    result.map_err(|e| {
        UiError::new(
            UiCode::Autostart,
            format!("Cannot change start at login: {e}"),
        )
    })
}
