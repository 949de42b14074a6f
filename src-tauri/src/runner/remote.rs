//! What this PC commands servers to do, with their admin tokens: push their folder to
//! others (and follow the push), become the source of their folder or a target again, and
//! give this PC its folder back (failback): over a connection this PC opens, so nothing needs
//! to reach it behind its router; or, on a LAN, pushed to an agent started here for it.

use super::Runner;
use crate::error::{UiCode, UiError};
use crate::settings;
use crate::view::{Level, PushAction};
use rainmaker_engine::engine::{self, Remote, ServeOptions};
use rainmaker_engine::event::Event;
use rainmaker_engine::protocol::{JobState, JobStatus, RemoteTarget, TrashBatch};
use rainmaker_engine::transport::ConnectOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

impl Runner {
    /// A control connection to a server whose admin token this PC holds.
    async fn control(&self, name: &str) -> Result<Remote, UiError> {
        Ok(Remote::connect(&self.admin_options(name)?).await?)
    }

    /// How this PC reaches a server with its admin token.
    fn admin_options(&self, name: &str) -> Result<ConnectOptions, UiError> {
        let server = self.server(name)?;
        let Some(admin) = &server.admin_token_file else {
            return Err(UiError::bad_input(format!(
                "{name} was added without its admin token, so this PC cannot command it. Remove it and add it again with the admin token."
            )));
        };
        let spec = self.spec_of(&server)?;
        Ok(ConnectOptions {
            token: settings::read_token(admin)?,
            ..self.connect_options(&spec)
        })
    }

    /// Tells server `from` to push its folder to servers `to`, and follows the push.
    pub async fn remote_push(self: &Arc<Self>, from: &str, to: &[String]) -> Result<(), UiError> {
        if to.is_empty() {
            return Err(UiError::bad_input("Pick at least one server to push to."));
        }
        if to.iter().any(|t| t == from) {
            return Err(UiError::bad_input(format!("{from} cannot push to itself.")));
        }
        let servers = self.lock().config.servers.clone();
        let mut targets = Vec::new();
        for name in to {
            let server = servers
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| UiError::bad_input(format!("There is no server named {name:?}.")))?;
            targets.push(RemoteTarget {
                url: server.url.clone(),
                token: settings::read_token(&server.token_file)?,
                fingerprint: server.fingerprint.clone(),
            });
        }
        self.start_remote_push(from, targets, &to.join(", "), None)
            .await
    }

    /// Starts a push from server `from` to `targets` and follows it; `then` is cancelled when
    /// it ends.
    async fn start_remote_push(
        self: &Arc<Self>,
        from: &str,
        targets: Vec<RemoteTarget>,
        to: &str,
        then: Option<CancellationToken>,
    ) -> Result<(), UiError> {
        let urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
        let mut control = self.control(from).await?;
        control.subscribe().await?;
        let job = control.push(targets, false).await?;
        self.lock().remote_targets.extend(urls.iter().cloned());
        self.log(
            Level::Info,
            format!("{from} is pushing its folder to {to} (push {job})"),
        );
        let (runner, from) = (self.clone(), from.to_owned());
        self.rt.spawn(async move {
            let ended = runner.follow(&mut control, job).await;
            control.close().await;
            let whole = matches!(&ended, Ok(status) if status.state == JobState::Done);
            if let Some(then) = then {
                // A failback: sync from this PC stays paused either way; what Resume will send
                // depends on whether the folder came back whole.
                runner.log(
                    if whole { Level::Info } else { Level::Warn },
                    if whole {
                        "This PC's folder is back whole; press Resume to mirror it from here again"
                            .into()
                    } else {
                        "The push back did not finish, so this PC's folder may be incomplete: sync \
                         stays paused. Bring it back again, or press Resume to mirror it as it is"
                            .into()
                    },
                );
                then.cancel();
            }
            {
                let mut inner = runner.lock();
                for url in &urls {
                    inner.remote_targets.remove(url);
                }
            }
            match ended {
                Ok(ended) if ended.state == JobState::Done => runner.log(
                    Level::Info,
                    format!("{from} finished its push: every target is in sync"),
                ),
                Ok(ended) => runner.log(
                    Level::Error,
                    format!(
                        "{from}'s push {job} ended: {}{}",
                        ended.state,
                        ended.error.map_or(String::new(), |e| format!(": {e}"))
                    ),
                ),
                Err(e) => runner.log(Level::Error, format!("{from}'s push {job}: {}", e.message)),
            }
            runner.probe_all().await;
        });
        Ok(())
    }

    /// Follows a remote push's events until it ends; returns how it ended.
    async fn follow(&self, control: &mut Remote, job: u64) -> Result<JobStatus, UiError> {
        Ok(control
            .follow(job, |event| self.on_remote_event(&event))
            .await?)
    }

    /// A remote push's event as this PC follows it: its transfer's progress, then the log.
    fn on_remote_event(&self, event: &Event) {
        if self.lock().remote_progress.apply(event, Instant::now()) {
            self.touch();
        }
        self.on_event(event);
    }

    /// Failback: this PC receives its folder back from server `from` (the source since a
    /// failover), into the folder that server holds of this PC; local pushes pause meanwhile,
    /// and what the failback replaces goes to the folder's trash. Without `address`, this PC
    /// dials `from` and receives over that connection: nothing needs to reach this PC. With
    /// `address` (HOST:PORT, as the server reaches this PC on a LAN, and only there), an agent
    /// serves the folder there with a one-time token that opens sessions for
    /// [`FAILBACK_TOKEN_LIFETIME`], and `from` pushes to it.
    pub async fn receive_from(
        self: &Arc<Self>,
        from: &str,
        address: Option<&str>,
    ) -> Result<(), UiError> {
        let source = self.folder_of(from).ok_or_else(|| {
            UiError::bad_input(format!(
                "Pick this PC's folder that {from} holds first (a folder mirrored to it): it is what receives."
            ))
        })?;
        let lan = match address.map(str::trim).filter(|a| !a.is_empty()) {
            Some(address) => Some(failback_address(from, address)?),
            None => None,
        };
        let dial = match lan {
            Some(_) => None,
            None => Some(self.admin_options(from)?),
        };
        {
            // Taken at once, in the same lock as the check: a second Bring back waits its turn.
            let mut inner = self.lock();
            if let Some(other) = &inner.receiving_from {
                return Err(UiError::new(
                    UiCode::Busy,
                    format!("This PC is already receiving a folder back from {other}."),
                ));
            }
            inner.receiving_from = Some(from.to_owned());
        }
        if let Some(options) = dial {
            self.pull_back(from, source, options);
            return Ok(());
        }
        let (listen, url) = lan.expect("an address was given");
        let token = hex_token();
        let bound = engine::Server::bind(ServeOptions {
            root: source.clone(),
            listen,
            token: token.clone(),
            admin_token: None,
            subscribe_token: None,
            subscribe: None,
            insecure: false,
            name: self.this_pc.clone(),
            trash_retention: Some(rainmaker_engine::trash::DEFAULT_RETENTION),
            push_to: None,
        })
        .await;
        let server = match bound {
            Ok(server) => server.expire_token_after(FAILBACK_TOKEN_LIFETIME),
            Err(e) => {
                self.lock().receiving_from = None;
                return Err(UiError::bad_input(format!(
                    "{e}. Give an address of this PC's own network connection as {from} reaches \
                     it (behind a router, this PC's LAN address with the port forwarded to it)."
                )));
            }
        };
        let fingerprint = server.fingerprint().map(str::to_owned);
        let stop = self.shutdown.child_token();
        // A push now would send a half-restored folder, with its deletions, to the others.
        self.supervisor.hold(Some(format!(
            "This PC is receiving {} back from {from}; syncing from it can start when that has finished.",
            source.display()
        )));
        self.supervisor.pause();
        self.rt.spawn(server.run(stop.clone()));
        let (runner, done) = (self.clone(), stop.clone());
        self.rt.spawn(async move {
            done.cancelled().await;
            runner.lock().receiving_from = None;
            runner.supervisor.hold(None);
            runner.log(Level::Info, "This PC has stopped receiving".into());
        });
        let target = RemoteTarget {
            url,
            token,
            fingerprint,
        };
        let started = self
            .start_remote_push(
                from,
                vec![target],
                &format!("{} (this PC)", self.this_pc),
                Some(stop.clone()),
            )
            .await;
        if started.is_err() {
            stop.cancel();
        }
        started
    }

    /// Failback over a connection this PC opens to `from` (with its admin token): syncing
    /// from this PC is held until the folder is back, and the outcome goes to the activity.
    fn pull_back(
        self: &Arc<Self>,
        from: &str,
        source: std::path::PathBuf,
        options: ConnectOptions,
    ) {
        // A push now would send a half-restored folder, with its deletions, to the others.
        self.supervisor.hold(Some(format!(
            "This PC is receiving {} back from {from}; syncing from it can start when that has finished.",
            source.display()
        )));
        self.supervisor.pause();
        self.log(
            Level::Info,
            format!(
                "Bringing {}'s folder back into {} (this PC dials {from}; nothing needs to reach this PC)",
                from,
                source.display()
            ),
        );
        let (runner, from) = (self.clone(), from.to_owned());
        let stop = self.shutdown.child_token();
        // The server sends the folder: its events (as it reports them to an admin client)
        // are the progress this PC shows.
        let following = stop.child_token();
        self.rt.spawn(async move {
            // Following first, so that the transfer's first event (its plan) is seen.
            if let Ok(mut control) = runner.control(&from).await
                && control.subscribe().await.is_ok()
            {
                let follower = runner.clone().follow_pull(control, following.clone());
                runner.rt.spawn(follower);
            }
            let _follows = following.drop_guard();
            let pull = engine::PullOptions {
                root: source,
                trash_retention: Some(rainmaker_engine::trash::DEFAULT_RETENTION),
                from: options,
                trash_batch: None,
            };
            let (level, line) = match engine::pull_once(&pull, &stop).await {
                Ok(pulled) if pulled.in_sync => (
                    Level::Info,
                    format!(
                        "This PC's folder is back whole from {from}; press Resume to mirror it from here again"
                    ),
                ),
                Ok(pulled) => (
                    Level::Warn,
                    format!(
                        "The folder from {from} did not come back whole ({}), so this PC's folder may be incomplete: sync stays paused. Bring it back again, or press Resume to mirror it as it is",
                        pulled.reason
                    ),
                ),
                Err(e) => (
                    Level::Error,
                    format!(
                        "Bringing the folder back from {from} failed: {e}. Sync stays paused: bring it back again, or press Resume to mirror this PC's folder as it is"
                    ),
                ),
            };
            runner.log(level, line);
            {
                let mut inner = runner.lock();
                inner.receiving_from = None;
                inner.remote_progress.forget(&runner.this_pc);
            }
            runner.supervisor.hold(None);
            runner.probe_all().await;
        });
    }

    /// Follows a server's events (on `control`, subscribed) while it sends this PC its
    /// folder, until `until`: the progress of its feed to this PC (by this PC's name) is the
    /// failback's.
    async fn follow_pull(self: Arc<Self>, mut control: Remote, until: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = until.cancelled() => break,
                event = control.next_event() => match event {
                    Ok(Some(event)) => event,
                    Ok(None) | Err(_) => break,
                },
            };
            let mine = matches!(
                &event,
                Event::Planned { target, .. } | Event::Progress { target, .. } if *target == self.this_pc
            );
            if mine && self.lock().remote_progress.apply(&event, Instant::now()) {
                self.touch();
            }
        }
        control.close().await;
    }

    /// The batches of server `name`'s trash (what sessions deleted or replaced there), newest
    /// first.
    pub async fn trash_of(&self, name: &str) -> Result<Vec<TrashBatch>, UiError> {
        let mut control = self.control(name).await?;
        let batches = control.trash().await;
        control.close().await;
        Ok(batches?)
    }

    /// Takes trash batch `batch` of server `name` back to this PC, into a new folder beside
    /// the folder the server holds (never over a file of this PC): this PC connects to the
    /// server and receives it. Returns the folder; the activity says how it ended.
    pub async fn restore_from(
        self: &Arc<Self>,
        name: &str,
        batch: &str,
    ) -> Result<String, UiError> {
        let source = self.folder_of(name).ok_or_else(|| {
            UiError::bad_input(format!(
                "{name} holds none of this PC's folders, so there is nowhere beside one to restore to."
            ))
        })?;
        let options = self.admin_options(name)?;
        if !self.trash_of(name).await?.iter().any(|b| b.name == batch) {
            return Err(UiError::bad_input(format!(
                "{name}'s trash holds no batch {batch:?} any more (batches are kept for a week)."
            )));
        }
        let base = format!(
            "{} (restored from {name}, {})",
            source
                .file_name()
                .map_or_else(|| "folder".into(), |n| n.to_string_lossy().into_owned()),
            folder_stamp()
        )
        .replace([':', '/', '\\'], "-");
        // A folder of its own, never one that exists (two restores in a second get two).
        let mut into = None;
        for n in 1..100 {
            let candidate = match n {
                1 => source.with_file_name(&base),
                n => source.with_file_name(format!("{base} {n}")),
            };
            match std::fs::create_dir(&candidate) {
                Ok(()) => {
                    into = Some(candidate);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(UiError::bad_input(format!(
                        "Cannot create {}: {e}",
                        candidate.display()
                    )));
                }
            }
        }
        let into = into.ok_or_else(|| {
            UiError::bad_input(format!(
                "Cannot find a free folder name beside {}.",
                source.display()
            ))
        })?;
        let shown = into.display().to_string();
        self.log(
            Level::Info,
            format!("Restoring {name}'s trash batch {batch} into {shown}"),
        );
        let (runner, name, batch, done) = (
            self.clone(),
            name.to_owned(),
            batch.to_owned(),
            shown.clone(),
        );
        let stop = self.shutdown.child_token();
        self.rt.spawn(async move {
            let pull = engine::PullOptions {
                root: into,
                trash_retention: None,
                from: options,
                trash_batch: Some(batch.clone()),
            };
            let (level, line) = match engine::pull_once(&pull, &stop).await {
                Ok(pulled) if pulled.in_sync => (
                    Level::Info,
                    format!(
                        "Restored {name}'s trash batch {batch} into {done}: move what you need back into the platform's folder"
                    ),
                ),
                Ok(pulled) => (
                    Level::Warn,
                    format!(
                        "The restore of {name}'s trash batch {batch} did not finish ({}); what arrived is in {done}",
                        pulled.reason
                    ),
                ),
                Err(e) => (
                    Level::Error,
                    format!("Restoring {name}'s trash batch {batch} failed: {e}"),
                ),
            };
            runner.log(level, line);
        });
        Ok(shown)
    }

    /// Pauses, resumes or stops push `job` of server `name`.
    pub async fn control_push(
        &self,
        name: &str,
        job: u64,
        action: PushAction,
    ) -> Result<(), UiError> {
        let mut control = self.control(name).await?;
        let done = match action {
            PushAction::Pause => control.pause(job).await,
            PushAction::Resume => control.resume(job).await,
            PushAction::Stop => control.stop(job).await,
        };
        control.close().await;
        done?;
        let verb = match action {
            PushAction::Pause => "paused",
            PushAction::Resume => "resumed",
            PushAction::Stop => "stopped",
        };
        self.log(
            Level::Info,
            format!("{name}'s push {job} {verb} from the dashboard"),
        );
        self.probe_named(name).await;
        Ok(())
    }

    /// Makes a server the source of its folder (failover) or a target again (failback).
    pub async fn set_role(
        self: &Arc<Self>,
        name: &str,
        source: bool,
        force: bool,
    ) -> Result<(), UiError> {
        let mut control = self.control(name).await?;
        let done = if source {
            control.promote(force).await
        } else {
            control.demote().await
        };
        control.close().await;
        done?;
        self.log(
            Level::Warn,
            if source {
                format!("{name} is now the source of its folder; it no longer receives mirrors")
            } else {
                format!("{name} receives mirrors again")
            },
        );
        self.probe_all().await;
        Ok(())
    }
}

/// Now, as a folder's name can hold it (`2026-12-02T06.50.00Z`).
fn folder_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', ".")
}

/// A one-time pairing token.
fn hex_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long the failback receiver's one-time token opens sessions: the push it was made for
/// starts at once; a session already open goes on to its end.
pub const FAILBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Where the failback receiver listens and the address `from` pushes to, from the HOST:PORT
/// the user gave: the listener binds that address only, never every interface.
fn failback_address(from: &str, address: &str) -> Result<(String, String), UiError> {
    let (host, port) = address
        .trim()
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| {
            UiError::bad_input(format!(
                "{address:?} is not HOST:PORT; give this PC's address as {from} reaches it, e.g. 192.168.1.20:7878"
            ))
        })?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok((format!("{host}:{port}"), format!("wss://{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failback_receiver_listens_only_on_the_address_given() {
        for (given, listen, url) in [
            (
                "192.168.1.20:7878",
                "192.168.1.20:7878",
                "wss://192.168.1.20:7878",
            ),
            ("[fd00::5]:7878", "[fd00::5]:7878", "wss://[fd00::5]:7878"),
            ("127.0.0.1:9000", "127.0.0.1:9000", "wss://127.0.0.1:9000"),
            ("home-pc:7878", "home-pc:7878", "wss://home-pc:7878"),
        ] {
            assert_eq!(
                failback_address("cloud-a", given).unwrap(),
                (listen.to_owned(), url.to_owned()),
                "{given}: never every interface"
            );
        }
        assert!(failback_address("cloud-a", "no-port").is_err());
    }
}
