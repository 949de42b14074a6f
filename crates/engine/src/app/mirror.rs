//! A folder's mirror as every shell starts it.
//!
//! [`Mirror::new`] turns a [`config::Folder`] and what a shell changes of it ([`Overrides`]:
//! the command line's flags, the tray's "delete them anyway") into the engine's
//! [`PushOptions`] and, unless the folder is mirrored only when asked, its [`Schedule`].
//! [`target_spec`] turns a configured target into the address, trust and token the engine
//! connects with. The command line's `push` with a source and `--to` builds a folder from its
//! flags ([`Mirror::folder`]) and goes through the same door; so do `rainmaker run`, the
//! agent's commanded pushes and the tray app.
//!
//! Every default a mirror has is one constant here or in the module that owns it
//! ([`crate::engine::STALL_TIMEOUT`], [`crate::trash::DEFAULT_RETENTION`],
//! [`crate::schedule::DEFAULT_INTERVAL`]).

use crate::config::{self, Mode};
use crate::engine::{
    Compress, EngineError, PushOptions, STALL_TIMEOUT, Schedule, TargetSpec, push_continuous,
    push_once,
};
use crate::event::{Event, PushReport};
use crate::exclude::{Exclude, ExcludeError};
use crate::guard::{Gate, Thresholds};
use crate::transport::Trust;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Passes over a target before one that is still not identical is reported failed.
pub const PASSES: u32 = 3;
/// With continuous mirroring, the rescan that catches a change the file system's feed
/// dropped.
pub const WATCH_RESCAN: Duration = Duration::from_secs(30);
/// A sync that would delete more than this share of a target's files stops and asks first.
pub const MASS_DELETE_SHARE: f64 = 0.5;

/// This machine's name, as a source gives it to its targets and a dashboard shows it: the
/// operating system's host name, else the one the environment gives (`COMPUTERNAME`,
/// `HOSTNAME`), else "this PC".
pub fn machine_name() -> String {
    crate::pairing::host_name()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "this PC".into())
}

/// The known-peers file of the data folder `data_dir` (the fingerprints of the targets this
/// machine trusts).
pub fn known_peers_in(data_dir: &Path) -> PathBuf {
    data_dir.join("known_peers")
}

/// How a configured target is reached: its address, the certificate it must present (its
/// pinned fingerprint, else the one in `known_peers`, recorded there on first use only when
/// `first_use` allows it) and its pairing token, read from its token file.
pub fn target_spec(
    target: &config::Target,
    known_peers: &Path,
    first_use: bool,
) -> Result<TargetSpec, MirrorError> {
    Ok(TargetSpec {
        url: target.url.clone(),
        trust: Trust::for_url(
            &target.url,
            target.fingerprint.as_deref(),
            known_peers,
            first_use,
        ),
        token: config::read_token(&target.token_file)?,
        dialed_in: None,
    })
}

/// What a shell changes of a folder's own settings.
#[derive(Debug, Clone)]
pub struct Overrides {
    /// In place of the folder's mode.
    pub mode: Option<Mode>,
    /// In place of the folder's bandwidth cap (bytes per second).
    pub bwlimit: Option<f64>,
    /// In place of the folder's exclude list, when not empty.
    pub exclude: Vec<String>,
    pub compress: Compress,
    pub stall_timeout: Duration,
    /// `None` allows a sync to delete any share of a target's files.
    pub max_delete_share: Option<f64>,
    /// A deletion a person confirmed: on this target, up to this many files (see
    /// [`PushOptions::confirmed_delete`]).
    pub confirmed_delete: Option<(String, usize)>,
    /// With continuous mirroring, how often to rescan anyway.
    pub watch_rescan: Duration,
    /// In place of the index folder under the data folder.
    pub state_dir: Option<PathBuf>,
    /// Where sync waits while the resource guard has it paused (open when not given).
    pub gate: Option<Gate>,
}

impl Default for Overrides {
    fn default() -> Overrides {
        Overrides {
            mode: None,
            bwlimit: None,
            exclude: Vec::new(),
            compress: Compress::Auto,
            stall_timeout: STALL_TIMEOUT,
            max_delete_share: Some(MASS_DELETE_SHARE),
            confirmed_delete: None,
            watch_rescan: WATCH_RESCAN,
            state_dir: None,
            gate: None,
        }
    }
}

/// A folder's mirror cannot be set up.
#[derive(Debug, Error)]
pub enum MirrorError {
    #[error(transparent)]
    Exclude(#[from] ExcludeError),
    #[error("{}: {}", .0.path.display(), .0.message)]
    Token(#[from] config::TokenError),
}

/// What a folder's mirror needs to run.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub options: PushOptions,
    pub mode: Mode,
    /// With continuous mirroring, how often to rescan anyway.
    pub watch_rescan: Duration,
}

impl Mirror {
    /// A folder with no settings of its own beyond its source and mode: what the command
    /// line's flags fill in.
    pub fn folder(source: PathBuf, mode: Mode) -> config::Folder {
        config::Folder {
            source,
            mode,
            bwlimit: None,
            exclude: Vec::new(),
            preset: None,
            targets: Vec::new(),
        }
    }

    /// The mirror of `folder` to `targets`, as `source_name`, with its index in `data_dir`
    /// (unless `overrides` gives another folder for it).
    pub fn new(
        folder: &config::Folder,
        targets: Vec<TargetSpec>,
        data_dir: &Path,
        source_name: String,
        overrides: Overrides,
    ) -> Result<Mirror, MirrorError> {
        let state_dir = overrides
            .state_dir
            .unwrap_or_else(|| crate::engine::state_dir_in(data_dir, &folder.source));
        let exclude = if overrides.exclude.is_empty() {
            &folder.exclude
        } else {
            &overrides.exclude
        };
        let mut options = PushOptions::new(folder.source.clone(), targets, state_dir);
        options.source_name = source_name;
        options.compress = overrides.compress;
        options.stall_timeout = overrides.stall_timeout;
        options.bwlimit = overrides
            .bwlimit
            .or(folder.bwlimit)
            .map(|rate| Arc::new(crate::rate::RateLimit::new(rate)));
        options.max_delete_share = overrides.max_delete_share;
        options.confirmed_delete = overrides.confirmed_delete;
        options.exclude = Exclude::new(exclude)?;
        if let Some(gate) = overrides.gate {
            options.gate = gate;
        }
        Ok(Mirror {
            options,
            mode: overrides.mode.unwrap_or(folder.mode),
            watch_rescan: overrides.watch_rescan,
        })
    }

    /// When the mirror runs by itself: on every change (with a rescan every
    /// [`Mirror::watch_rescan`]) or on its interval, paused by the resource guard with
    /// `guard`'s thresholds, and at once when `sync_now` is notified. `None` for a folder
    /// mirrored only when asked.
    pub fn schedule(
        &self,
        guard: Option<Thresholds>,
        sync_now: Option<Arc<tokio::sync::Notify>>,
    ) -> Option<Schedule> {
        let (watch, every) = match self.mode {
            Mode::Manual => return None,
            Mode::Watch => (true, self.watch_rescan),
            Mode::Every(every) => (false, every),
        };
        Some(Schedule {
            watch,
            every,
            guard,
            sync_now,
        })
    }

    /// Runs the mirror as its mode says: one push for a folder mirrored only when asked, else
    /// continuously or on its interval until `cancel` (see [`Mirror::schedule`] for `guard`
    /// and `sync_now`). Every shell runs a mirror through here.
    pub async fn run(
        &self,
        guard: Option<Thresholds>,
        sync_now: Option<Arc<tokio::sync::Notify>>,
        events: &broadcast::Sender<Event>,
        cancel: &CancellationToken,
    ) -> Result<Ended, EngineError> {
        match self.schedule(guard, sync_now) {
            Some(schedule) => push_continuous(&self.options, &schedule, events, cancel)
                .await
                .map(|()| Ended::Stopped),
            None => push_once(&self.options, events, cancel)
                .await
                .map(Ended::Pushed),
        }
    }
}

/// How a mirror's run ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// A one-off push finished (or was stopped): what it did.
    Pushed(PushReport),
    /// Continuous or scheduled mirroring stopped when asked.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path) -> config::Folder {
        config::Folder {
            bwlimit: Some(1000.0),
            exclude: vec!["cache/**".into()],
            ..Mirror::folder(dir.join("src"), Mode::Watch)
        }
    }

    #[test]
    fn a_folder_s_own_settings_hold_unless_a_shell_overrides_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let folder = folder(dir.path());
        let mirror = Mirror::new(
            &folder,
            Vec::new(),
            dir.path(),
            "pc".into(),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(mirror.mode, Mode::Watch);
        assert_eq!(mirror.options.passes, PASSES);
        assert_eq!(mirror.options.stall_timeout, STALL_TIMEOUT);
        assert_eq!(mirror.options.max_delete_share, Some(MASS_DELETE_SHARE));
        assert_eq!(mirror.options.source_name, "pc");
        assert!(mirror.options.bwlimit.is_some(), "the folder's cap");
        assert!(mirror.options.exclude.matches("cache/a"));
        assert_eq!(
            mirror.options.state_dir,
            crate::engine::state_dir_in(dir.path(), &folder.source)
        );
        let schedule = mirror.schedule(None, None).unwrap();
        assert!(schedule.watch);
        assert_eq!(schedule.every, WATCH_RESCAN);

        let overridden = Mirror::new(
            &folder,
            Vec::new(),
            dir.path(),
            "pc".into(),
            Overrides {
                mode: Some(Mode::Manual),
                exclude: vec!["logs/**".into()],
                max_delete_share: None,
                state_dir: Some(dir.path().join("state")),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(overridden.mode, Mode::Manual);
        assert!(overridden.schedule(None, None).is_none(), "only when asked");
        assert!(overridden.options.exclude.matches("logs/a"));
        assert!(!overridden.options.exclude.matches("cache/a"));
        assert_eq!(overridden.options.max_delete_share, None);
        assert_eq!(overridden.options.state_dir, dir.path().join("state"));
    }

    #[test]
    fn a_bad_exclude_pattern_or_token_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = config::Folder {
            exclude: vec!["a[".into()],
            ..Mirror::folder(dir.path().into(), Mode::Manual)
        };
        let err = Mirror::new(
            &bad,
            Vec::new(),
            dir.path(),
            "pc".into(),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
        let target = config::Target {
            name: None,
            url: "wss://127.0.0.1:7878".into(),
            token_file: dir.path().join("missing.token"),
            fingerprint: None,
        };
        let err = target_spec(&target, &known_peers_in(dir.path()), false).unwrap_err();
        assert!(err.to_string().contains("missing.token"), "{err}");
    }

    #[test]
    fn this_machine_has_a_name() {
        assert!(!machine_name().trim().is_empty());
    }
}
