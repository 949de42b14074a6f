//! `rainmaker status`, and the writer that keeps a running push's status file up to date.

use crate::cli::StatusArgs;
use crate::progress::size;
use anyhow::Result;
use rainmaker_engine::engine::{self, PushOptions};
use rainmaker_engine::event::Event;
use rainmaker_engine::status::{self as board, Board, Status};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Keeps this push's status file up to date from its events until the events end; then removes it.
pub fn spawn_writer(
    mut events: broadcast::Receiver<Event>,
    options: &PushOptions,
    mode: &str,
) -> JoinHandle<()> {
    let urls: Vec<String> = options.targets.iter().map(|t| t.url.clone()).collect();
    // Each mirror this process runs (one per configured folder) keeps its own file.
    static SLOTS: AtomicU32 = AtomicU32::new(0);
    let slot = SLOTS.fetch_add(1, Ordering::Relaxed);
    let source = options.source.display().to_string();
    let mut board = Board::new(std::process::id(), slot, &source, mode, &urls);
    let dir = board::running_dir(&engine::data_dir());
    tokio::spawn(async move {
        let write = |board: &Board| {
            if let Err(e) = board::write(&dir, board.status()) {
                tracing::debug!("cannot write the status file: {e}");
            }
        };
        write(&board);
        let mut last = tokio::time::Instant::now();
        let mut dirty = false;
        loop {
            let event = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
            match event {
                Ok(Ok(event)) => dirty |= board.apply(&event, board::now()),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => break,
                Err(_) => {}
            }
            if dirty && last.elapsed() >= Duration::from_millis(200) {
                write(&board);
                last = tokio::time::Instant::now();
                dirty = false;
            }
        }
        board::remove(&dir, board.status());
    })
}

/// Prints the running pushes.
pub fn show(args: &StatusArgs) -> Result<()> {
    let running = board::read_running(&board::running_dir(&engine::data_dir()));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&running)?);
        return Ok(());
    }
    if running.is_empty() {
        println!("No push is running on this machine.");
        return Ok(());
    }
    let now = board::now();
    for status in &running {
        println!("{} ({}, pid {})", status.source, status.mode, status.pid);
        if let Some(reason) = &status.paused {
            println!("  paused: {reason}");
        }
        for t in &status.targets {
            let last = t
                .last_sync
                .map_or("never".to_string(), |at| format!("{} ago", ago(now - at)));
            println!(
                "  {:<32} {:<9} lag {:>8}  last sync {:>10}  pending {:>9}{}",
                t.url,
                t.state,
                ago(Status::lag(t, now)),
                last,
                size(t.bytes_pending),
                t.reason
                    .as_ref()
                    .map_or(String::new(), |r| format!("  ({r})"))
            );
        }
    }
    Ok(())
}

/// Seconds as people read them.
fn ago(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}
