//! The servers' online checks: every server now and then (and after anything that changes
//! one), whether it answers with the certificate that was confirmed, and, where this PC holds
//! its admin token, what it says of its own folder.

use super::{Online, Runner};
use crate::error::{UiCode, UiError};
use crate::settings;
use crate::view::Level;
use futures_util::future::join_all;
use rainmaker_engine::app;
use rainmaker_engine::config::KnownServer;
use rainmaker_engine::engine::{self, Remote, TargetSpec};
use rainmaker_engine::protocol::AgentStatus;
use rainmaker_engine::transport::{ConnectOptions, Trust};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often every server is checked for being online.
const PROBE_EVERY: Duration = Duration::from_secs(20);

impl Runner {
    /// Checks every server now and then: online, and still the server that was confirmed.
    pub(super) async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.probe_all().await;
        }
    }

    /// Checks every server once (and asks those whose admin token this PC holds for the
    /// state of their folder).
    pub async fn probe_all(&self) {
        let sources: Vec<PathBuf> = self
            .lock()
            .config
            .folders
            .iter()
            .map(|f| f.source.clone())
            .collect();
        let newest = tokio::task::spawn_blocking(move || {
            sources
                .into_iter()
                .filter_map(|source| {
                    let totals = rainmaker_engine::fs::totals(&source);
                    (totals.files > 0).then(|| (source, totals.newest_mtime_ns as f64 / 1e9))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        self.lock().local_newest = newest;
        let servers = self.lock().config.servers.clone();
        // All at once: a server that does not answer holds up no other's check.
        join_all(servers.iter().map(|server| self.probe(server))).await;
    }

    /// Checks the server named `name` once, if there is one.
    /// Retry now, for a server that fails: checks it again at once and, if it answers and a
    /// folder mirrors to it, syncs now.
    pub async fn retry_server(&self, name: &str) -> Result<(), UiError> {
        let server = self.server(name)?;
        self.probe(&server).await;
        let online = self
            .lock()
            .online
            .get(name)
            .map(|o| (o.ok, o.reason.clone()));
        if let Some((false, reason)) = online {
            return Err(UiError::new(
                UiCode::Unreachable,
                format!(
                    "{name} still does not answer: {}",
                    reason.unwrap_or_else(|| "no reason given".into())
                ),
            ));
        }
        // Only the folder that mirrors to it, and never past a pause, a hold or a kept backup.
        let source = self
            .lock()
            .config
            .folders
            .iter()
            .find(|f| f.targets.iter().any(|t| t.url == server.url))
            .map(|f| f.source.clone());
        if let Some(source) = source {
            self.supervisor
                .retry(&source)
                .map_err(|e| self.refusal(e))?;
        }
        Ok(())
    }

    /// Checks the server `name` now.
    pub(super) async fn probe_named(&self, name: &str) {
        if let Ok(server) = self.server(name) {
            self.probe(&server).await;
        }
    }

    /// Checks one server: online, still the certificate confirmed, and (with its admin
    /// token) what it says of its folder.
    async fn probe(&self, server: &KnownServer) {
        let spec = match self.spec_of(server) {
            Ok(spec) => spec,
            Err(e) => {
                self.set_online(&server.name, false, None, Some(e.message));
                return;
            }
        };
        let checked = match &server.admin_token_file {
            Some(file) => match settings::read_token(file) {
                Ok(admin) => self
                    .remote_status(&spec, &admin)
                    .await
                    .map(|s| (s.name.clone(), Some(s))),
                Err(e) => Err(e),
            },
            None => engine::probe(&spec, &self.this_pc)
                .await
                .map(|name| (name, None))
                .map_err(UiError::from),
        };
        match checked {
            Ok((remote, status)) => {
                self.set_online(&server.name, true, Some(remote), None);
                if let Some(online) = self.lock().online.get_mut(&server.name) {
                    online.status = status;
                }
                self.touch();
            }
            Err(e) => self.set_online(&server.name, false, None, Some(e.message)),
        }
    }

    fn set_online(
        &self,
        name: &str,
        ok: bool,
        remote_name: Option<String>,
        reason: Option<String>,
    ) {
        let mut inner = self.lock();
        let was = inner.online.get(name).map(|o| o.ok);
        let remote_name =
            remote_name.or_else(|| inner.online.get(name).and_then(|o| o.remote_name.clone()));
        let status = inner.online.get(name).and_then(|o| o.status.clone());
        inner.online.insert(
            name.to_owned(),
            Online {
                ok,
                remote_name,
                reason: reason.clone(),
                status,
            },
        );
        drop(inner);
        match (was, ok) {
            (Some(true), false) => {
                self.notify(
                    "Server offline",
                    format!("{name}: {}", reason.clone().unwrap_or_default()),
                );
                self.log(
                    Level::Warn,
                    format!("{name} went offline: {}", reason.unwrap_or_default()),
                );
            }
            (Some(false), true) => {
                self.notify("Server back online", format!("{name} answers again."));
                self.log(Level::Info, format!("{name} is back online"));
            }
            _ => self.touch(),
        }
    }

    /// A mirror's event said whether the server at `url` answers.
    pub(super) fn mark_online(&self, url: &str, ok: bool, reason: Option<String>) {
        let mut inner = self.lock();
        let Some(server) = inner.config.servers.iter().find(|s| s.url == url) else {
            return;
        };
        let name = server.name.clone();
        let entry = inner.online.entry(name).or_insert(Online {
            ok,
            remote_name: None,
            reason: None,
            status: None,
        });
        entry.ok = ok;
        entry.reason = reason;
    }

    pub(super) fn connect_options(&self, spec: &TargetSpec) -> ConnectOptions {
        ConnectOptions {
            url: spec.url.clone(),
            trust: spec.trust.clone(),
            token: spec.token.clone(),
            source_name: self.this_pc.clone(),
        }
    }

    /// How this PC checks the server at `url`.
    fn trust(&self, url: &str, fingerprint: Option<&str>) -> Trust {
        // Never on first use: a server is added with its fingerprint confirmed (or its pairing
        // code); a hand-written one without a fingerprint must be in the known-peers file.
        Trust::for_url(
            url,
            fingerprint,
            &app::mirror::known_peers_in(&self.data_dir),
            false,
        )
    }

    /// The trust and pairing token of a configured server.
    pub(super) fn spec_of(&self, server: &KnownServer) -> Result<TargetSpec, UiError> {
        Ok(TargetSpec {
            url: server.url.clone(),
            trust: self.trust(&server.url, server.fingerprint.as_deref()),
            token: settings::read_token(&server.token_file)?,
            dialed_in: None,
        })
    }

    /// What the server at `spec` says of its folder, asked with its admin token.
    pub(super) async fn remote_status(
        &self,
        spec: &TargetSpec,
        admin_token: &str,
    ) -> Result<AgentStatus, UiError> {
        let mut control = Remote::connect(&ConnectOptions {
            token: admin_token.to_owned(),
            ..self.connect_options(spec)
        })
        .await?;
        let status = control.status().await;
        control.close().await;
        Ok(status?)
    }
}
