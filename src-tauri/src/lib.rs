//! RainMaker's tray app: the dashboard on the trading PC. A Tauri shell around the engine: it
//! holds no sync logic. Every configured folder is mirrored by the engine's application layer
//! (`rainmaker_engine::app::Supervisor`), which runs, pauses and reports on them; the runner
//! edits the configuration, turns reports into the log and notifications, and builds the
//! dashboard's snapshot.
//!
//! # Layout
//! - [`runner`]: the configuration, the supervisor's reports, servers and their commands.
//! - [`view`]: the dashboard's data as the front end receives it.
//! - [`command`]: the commands the front end calls (thin).
//! - [`tray`]: the tray icon and its menu.
//! - [`settings`]: the configuration file and the pairing tokens beside it.
//! - [`error`]: errors as `{code, message}`.
//! - [`bindings`]: the dashboard's TypeScript types, generated from these.

pub mod bindings;
pub mod command;
pub mod error;
pub mod runner;
pub mod settings;
pub mod tray;
pub mod view;

use runner::Runner;
use tauri::{AppHandle, Manager, Runtime, WebviewUrl, WebviewWindowBuilder};
use tauri_plugin_notification::NotificationExt;

/// The dashboard window's label.
pub const WINDOW: &str = "main";

/// Registers the commands on a builder (the real app and the tests share this).
pub fn commands<R: Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder.invoke_handler(tauri::generate_handler![
        command::dashboard,
        command::watch,
        command::presets,
        command::peek_server,
        command::add_server,
        command::remote_push,
        command::control_push,
        command::set_role,
        command::receive_from,
        command::rename_server,
        command::remove_server,
        command::save_folder,
        command::remove_folder,
        command::save_guard,
        command::sync_now,
        command::allow_mass_delete,
        command::keep_backup,
        command::repair_server,
        command::retry_server,
        command::trash_of,
        command::restore_from,
        command::sync_anyway,
        command::stop_syncs,
        command::pause,
        command::resume,
        command::get_autostart,
        command::set_autostart,
    ])
}

/// Shows the dashboard, creating its window if it was never opened.
pub fn show_dashboard<R: Runtime>(app: &AppHandle<R>) {
    if let Some(window) = app.get_webview_window(WINDOW) {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
        return;
    }
    let built = WebviewWindowBuilder::new(app, WINDOW, WebviewUrl::App("index.html".into()))
        .title("RainMaker")
        .inner_size(1180.0, 800.0)
        .min_inner_size(760.0, 560.0)
        .build();
    if let Err(e) = built {
        tracing::error!("cannot open the dashboard: {e}");
    }
}

/// Runs the tray app until Quit.
pub fn run() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rainmaker_engine=info".into()),
        )
        .try_init();
    let hidden = std::env::args().any(|a| a == "--hidden");
    let builder = tauri::Builder::default()
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            show_dashboard(app);
        }))
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            Some(vec!["--hidden"]),
        ))
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_dialog::init())
        .setup(move |app| {
            let config = rainmaker_engine::config::default_path();
            let rt = tauri::async_runtime::handle().inner().clone();
            let data = rainmaker_engine::engine::data_dir();
            let (runner, mut notices) = Runner::start(config, data, rt)?;
            app.manage(runner.clone());
            tray::install(app.handle(), runner)?;
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(async move {
                while let Some(notice) = notices.recv().await {
                    let shown = handle
                        .notification()
                        .builder()
                        .title(&notice.title)
                        .body(&notice.body)
                        .show();
                    if let Err(e) = shown {
                        tracing::debug!("no desktop notification ({e}): {}", notice.body);
                    }
                }
            });
            if !hidden {
                show_dashboard(app.handle());
            }
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the dashboard keeps the app in the tray; Quit is in the tray menu.
            if let tauri::WindowEvent::CloseRequested { api, .. } = event {
                let _ = window.hide();
                api.prevent_close();
            }
        });
    let app = commands(builder)
        .build(tauri::generate_context!())
        .expect("the tray app's configuration is valid");
    app.run(|_app, event| {
        // Keep running in the tray when the last window is hidden.
        if let tauri::RunEvent::ExitRequested { api, code, .. } = event
            && code.is_none()
        {
            api.prevent_exit();
        }
    });
}
