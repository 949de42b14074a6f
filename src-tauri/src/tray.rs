//! The tray icon: its picture and tooltip follow the mirror's state; its menu has Sync now,
//! Pause/Resume, Open dashboard and Quit; a left click opens the dashboard.

use crate::runner::Runner;
use std::sync::Arc;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem};
use tauri::tray::{MouseButton, MouseButtonState, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Runtime};

const ID: &str = "main";

/// The picture for a state of [`crate::view::Dashboard::overall`].
fn icon(state: &str) -> Image<'static> {
    let bytes: &'static [u8] = match state {
        "in_sync" => include_bytes!("../../icons/tray-in_sync.png"),
        "syncing" => include_bytes!("../../icons/tray-syncing.png"),
        "paused" => include_bytes!("../../icons/tray-paused.png"),
        "error" => include_bytes!("../../icons/tray-error.png"),
        _ => include_bytes!("../../icons/tray-idle.png"),
    };
    Image::from_bytes(bytes).expect("the tray icons are valid PNG files")
}

/// Builds the tray icon and keeps it up to date with `runner`.
pub fn install<R: Runtime>(app: &AppHandle<R>, runner: Arc<Runner>) -> tauri::Result<()> {
    let sync = MenuItem::with_id(app, "sync", "Sync now", true, None::<&str>)?;
    let pause = MenuItem::with_id(app, "pause", "Pause", true, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open dashboard", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit RainMaker", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&sync, &pause, &open, &quit])?;
    let first = runner.dashboard();
    let on_menu = runner.clone();
    TrayIconBuilder::with_id(ID)
        .icon(icon(&first.overall))
        .tooltip(&first.summary)
        .menu(&menu)
        .show_menu_on_left_click(false)
        .on_menu_event(move |app, event| match event.id.as_ref() {
            "sync" => {
                if let Err(e) = on_menu.sync_now() {
                    tracing::warn!("sync from the tray: {e}");
                    crate::show_dashboard(app);
                }
            }
            "pause" if on_menu.is_paused() => on_menu.resume(),
            "pause" => on_menu.pause(),
            "open" => crate::show_dashboard(app),
            "quit" => {
                on_menu.stop();
                app.exit(0);
            }
            _ => {}
        })
        .on_tray_icon_event(|tray, event| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                button_state: MouseButtonState::Up,
                ..
            } = event
            {
                crate::show_dashboard(tray.app_handle());
            }
        })
        .build(app)?;
    let app = app.clone();
    let mut changed = runner.subscribe();
    tauri::async_runtime::spawn(async move {
        let mut shown = (String::new(), String::new(), false);
        loop {
            let now = runner.dashboard();
            let paused = runner.is_paused();
            if (now.overall.as_str(), now.summary.as_str(), paused)
                != (shown.0.as_str(), shown.1.as_str(), shown.2)
            {
                if let Some(tray) = app.tray_by_id(ID) {
                    if now.overall != shown.0 {
                        let _ = tray.set_icon(Some(icon(&now.overall)));
                    }
                    let _ = tray.set_tooltip(Some(&now.summary));
                }
                let _ = pause.set_text(if paused { "Resume" } else { "Pause" });
                shown = (now.overall, now.summary, paused);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
