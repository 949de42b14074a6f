//! The tray icon: its picture and tooltip follow the mirror's state; its menu has Sync now,
//! Pause/Resume, Open dashboard and Quit; a left click opens the dashboard.

use crate::runner::Runner;
use crate::view::Overall;
use std::sync::Arc;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem};
use tauri::tray::{MouseButton, MouseButtonState, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Runtime};

const ID: &str = "main";

/// The picture for a state of [`crate::view::Dashboard::overall`].
fn icon(state: Overall) -> Image<'static> {
    let bytes: &'static [u8] = match state {
        Overall::InSync => include_bytes!("../../icons/tray-in_sync.png"),
        Overall::Syncing => include_bytes!("../../icons/tray-syncing.png"),
        Overall::Paused => include_bytes!("../../icons/tray-paused.png"),
        Overall::Error => include_bytes!("../../icons/tray-error.png"),
        Overall::Idle => include_bytes!("../../icons/tray-idle.png"),
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
        .icon(icon(first.overall))
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
        // What the icon shows: its picture, its tooltip, and the menu's Pause or Resume.
        let mut shown = (first.overall, first.summary, false);
        loop {
            let now = runner.dashboard();
            let paused = runner.is_paused();
            let showing = (now.overall, now.summary, paused);
            if showing != shown {
                if let Some(tray) = app.tray_by_id(ID) {
                    if showing.0 != shown.0 {
                        let _ = tray.set_icon(Some(icon(showing.0)));
                    }
                    let _ = tray.set_tooltip(Some(&showing.1));
                }
                let _ = pause.set_text(if paused { "Resume" } else { "Pause" });
                shown = showing;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
