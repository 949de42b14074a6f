//! The tray app's entry point; everything else is in the library so tests can reach it.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    rainmaker_engine::memory::few_arenas();
    rainmaker_tray::run();
}
