//! RainMaker's mirror engine: everything that is not a screen or a flag.
//!
//! A source folder is mirrored one way to many targets. Each side keeps an index of its
//! folder; the source asks each target for its manifest, plans what the target lacks, and
//! streams only those blocks over an authenticated WebSocket; the target verifies every
//! block and every file before it takes its final name.
//!
//! # Layout
//!
//! `index`, `scan`, `snapshot`, `shadow`, `watch`, `secret` and `text` are the engine's own
//! (`pub(crate)`): no shell needs them; the rest is what the command line, the agent, the tray
//! app and the tests use.
//! - [`protocol`]: message types, version, limits, encode/decode (no I/O).
//! - [`hash`]: block and file hashing with BLAKE3 (pure over readers and hash lists).
//! - [`path`]: the check every path from the wire passes before it touches the disk.
//! - [`preset`]: the folders and excludes of the common trading platforms.
//! - [`fs`]: the one door to the disk: shared-mode reads, temp files, fsync, rename, metadata.
//! - `index`: the persistent, crash-safe index of a folder (redb).
//! - `scan`: walk a folder, quick-check against the index, hash what changed.
//! - `snapshot`: consistent copies of live SQLite databases, read through SQLite itself.
//! - [`exclude`]: the paths of a source that are not mirrored (caches, logs, locks).
//! - [`trash`]: what a target deletes or overwrites, kept for a retention period.
//! - [`transport`]: wss client and server, TLS identity, pinning, token handshake, framing,
//!   and the limits a listener keeps before and after authentication.
//! - [`pairing`]: the pairing code that carries an agent's address, fingerprint and token.
//! - `secret`: warnings about short tokens and secret files other users can read.
//! - `memory`: freed memory given back to the system when a session ends.
//! - [`mirror`]: the plan (pure), the sender and the receiver of a session.
//! - `watch`: the change feed from the file system (notify), with rescan as the fallback.
//! - [`schedule`]: backoff, interval advice, sleep detection: when to sync.
//! - [`guard`]: resource samples in, pause and resume decisions out (sysinfo sampler).
//! - [`rate`]: the bandwidth cap, a token bucket shared by every target.
//! - [`status`]: the state of a running push (per target: state, lag, last sync, pending).
//! - [`event`]: typed events and reports for the agent and the tray.
//! - `text`: text from a peer (names, reasons) with its control characters escaped.
//! - [`config`]: the configuration file `rainmaker.toml`, checked with locations.
//! - [`win32`]: CPU times and Wine detection, asked of Windows itself.
//! - [`app`]: the application layer every shell drives: a configured folder turned into a
//!   mirror, with the defaults in one place; every folder supervised, with its status.
//! - `shadow`: shadow copies of a volume, for files held with no read sharing (Windows).
//! - [`engine`]: wires the above into `push` (once, continuous, on an interval) and `serve`,
//!   the API the agent and tray call.

pub mod app;
pub mod config;
pub mod engine;
pub mod event;
pub mod exclude;
pub mod fs;
pub mod guard;
pub mod hash;
pub(crate) mod index;
pub mod memory;
pub mod mirror;
pub mod pairing;
pub mod path;
pub mod preset;
pub mod protocol;
pub mod rate;
pub(crate) mod scan;
pub mod schedule;
pub(crate) mod secret;
pub(crate) mod shadow;
pub(crate) mod snapshot;
pub mod status;
pub(crate) mod text;
pub mod transport;
pub mod trash;
pub(crate) mod watch;
pub mod win32;
