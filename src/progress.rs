//! Progress on the terminal: one indicatif bar per target (bytes, rate, ETA, files), fed by
//! the engine's events; nothing is drawn when stderr is not a terminal.

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rainmaker_engine::event::Event;
use std::collections::HashMap;
use std::io::IsTerminal;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Whether progress bars can be drawn.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte count for people.
pub fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// Draws bars from `events` until the channel closes.
pub fn spawn(mut events: broadcast::Receiver<Event>, draw: bool) -> JoinHandle<()> {
    tokio::spawn(async move {
        let multi = MultiProgress::with_draw_target(if draw && stderr_is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let mut bars: HashMap<String, ProgressBar> = HashMap::new();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            };
            match event {
                Event::Planned {
                    target,
                    bytes,
                    files,
                } => {
                    let bar = multi.add(ProgressBar::new(bytes));
                    bar.set_style(style.clone());
                    bar.set_prefix(target.clone());
                    bar.set_message(format!("files 0/{files}"));
                    if let Some(old) = bars.insert(target, bar) {
                        old.finish_and_clear();
                    }
                }
                Event::Progress {
                    target,
                    files_done,
                    files_total,
                    bytes_done,
                    ..
                } => {
                    if let Some(bar) = bars.get(&target) {
                        bar.set_position(bytes_done);
                        bar.set_message(format!("files {files_done}/{files_total}"));
                    }
                }
                Event::InSync { target } => {
                    if let Some(bar) = bars.get(&target) {
                        bar.finish_with_message("in sync");
                    }
                    tracing::info!("in sync  {target}");
                }
                Event::Verifying { target } => {
                    tracing::info!(
                        "verifying  {target}: the earlier part of the grown files is being read again"
                    );
                }
                Event::TargetFailed {
                    target,
                    reason,
                    refusal,
                } => match bars.get(&target) {
                    Some(bar) => bar.abandon_with_message(format!(
                        "failed: {reason}{}",
                        crate::refusal_hint(Some(refusal))
                    )),
                    None => match crate::refusal_hint(Some(refusal)) {
                        "" => tracing::debug!(%target, %reason, "target failed"),
                        // The engine logged the reason; the command line says what to do.
                        hint => tracing::warn!(%target, "{}", hint.trim_start_matches(". ")),
                    },
                },
                Event::FileFailed {
                    target,
                    path,
                    reason,
                } => {
                    tracing::warn!(%target, %path, "{reason}");
                }
                Event::Synced {
                    target,
                    files_sent,
                    bytes_changed,
                    wire_bytes,
                    seconds,
                } => tracing::info!(
                    "synced  {target}: {files_sent} files written, {} changed, {} on the wire, {seconds:.3} s",
                    size(bytes_changed),
                    size(wire_bytes)
                ),
                // The engine logs pauses and resumes itself, with their figures.
                Event::Paused { .. } | Event::Resumed { .. } => {}
                Event::Scanned { .. }
                | Event::Skipped { .. }
                | Event::Resources { .. }
                | Event::WouldDelete { .. } => {}
            }
        }
        for bar in bars.values() {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    })
}
