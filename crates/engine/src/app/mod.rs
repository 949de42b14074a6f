//! The application layer: what the command line, the agent's commanded pushes and the tray
//! app all drive, so that each shell keeps only what belongs to it (arguments and terminal
//! output for the CLI, the wire for control, Tauri commands and notifications for the tray).
//!
//! - [`mirror`]: a configured folder (or the command line's flags, as a folder) turned into
//!   what a mirror needs: the engine's options, its schedule, its targets. The defaults live
//!   there and nowhere else.
//! - [`supervisor`]: every configured folder kept mirroring as its mode says, started,
//!   stopped, synced now, paused and resumed, and what each reports taken into one status
//!   per folder and target ([`progress`]: rate and time left). The tray app drives it.
//! - [`ready`]: whether this machine can do what its configuration says (the folders, token
//!   files and listen address the agent will need), each problem with its fix.

pub mod mirror;
pub mod progress;
pub mod ready;
pub mod supervisor;

pub use mirror::{Ended, Mirror, MirrorError, Overrides};
pub use supervisor::Supervisor;
