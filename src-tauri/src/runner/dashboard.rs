//! The dashboard's snapshot: the supervisor's status of every folder and target, the servers
//! with what their online checks found, the tray icon's state and tooltip.

use super::Runner;
use crate::view::{
    BringingBack, Dashboard, FolderForm, FolderMode, FolderView, GuardView, MassDeleteView,
    Overall, PauseView, PausedBy, PushView, ServerRole, ServerView,
};
use rainmaker_engine::app::supervisor::{FolderNow, Pause, TargetNow};
use rainmaker_engine::config::{Config, Folder, Mode};
use rainmaker_engine::schedule::interval_warning;
use rainmaker_engine::status::{self, TargetState};
use std::path::PathBuf;

impl Runner {
    /// Everything the dashboard shows, now.
    pub fn dashboard(&self) -> Dashboard {
        let now = status::now();
        // The supervisor first: its lock is never taken while holding the runner's.
        let mirrors = self.supervisor.status(now);
        let paused = self.supervisor.paused().map(|p| match p {
            Pause::ByUser => PauseView {
                by: PausedBy::You,
                reason: "Paused from the dashboard or the tray menu".into(),
            },
            Pause::ByGuard(reason) => PauseView {
                by: PausedBy::Guard,
                reason,
            },
        });
        let inner = self.lock();
        let config = &inner.config;
        // Each target's state in the folder that mirrors to it.
        let target_of = |url: &str| {
            mirrors.iter().find_map(|m| {
                m.targets
                    .iter()
                    .find(|t| t.url == url)
                    .map(|t| (&m.source, t))
            })
        };
        let servers: Vec<ServerView> = config
            .servers
            .iter()
            .map(|server| {
                let online = inner.online.get(&server.name);
                let remote = online.and_then(|o| o.status.as_ref());
                let target: Option<(&PathBuf, &TargetNow)> = target_of(&server.url);
                let progress = target.and_then(|(_, t)| t.progress.clone()).or_else(|| {
                    inner
                        .remote_targets
                        .contains(&server.url)
                        .then(|| inner.remote_progress.get(&server.url).cloned())
                        .flatten()
                });
                ServerView {
                    name: server.name.clone(),
                    url: server.url.clone(),
                    fingerprint: server.fingerprint.clone(),
                    role: if target.is_some() {
                        ServerRole::Target
                    } else {
                        ServerRole::Spare
                    },
                    folder: target.map(|(source, _)| source.display().to_string()),
                    online: online.map(|o| o.ok),
                    remote_name: online.and_then(|o| o.remote_name.clone()),
                    state: target.map(|(_, t)| t.state),
                    reason: target
                        .and_then(|(_, t)| t.reason.clone())
                        .or_else(|| online.and_then(|o| o.reason.clone())),
                    last_sync: target.and_then(|(_, t)| t.last_sync),
                    lag_seconds: target.map_or(0.0, |(_, t)| t.lag_seconds),
                    progress,
                    admin: server.admin_token_file.is_some(),
                    remote_role: remote.map(|s| s.role),
                    fed_by: remote
                        .and_then(|s| s.last_source.as_ref())
                        .map(|(who, _)| who.clone()),
                    remote_files: remote.map(|s| s.files),
                    newest_change: remote.map(|s| s.newest_mtime_ns as f64 / 1e9),
                    this_pc_newest: target
                        .and_then(|(source, _)| inner.local_newest.get(source).copied())
                        .or_else(|| {
                            // A spare: the only folder, if there is one.
                            (inner.local_newest.len() == 1)
                                .then(|| inner.local_newest.values().next().copied())
                                .flatten()
                        }),
                    pushes: remote
                        .map(|s| {
                            s.jobs
                                .iter()
                                .map(|j| PushView {
                                    id: j.id,
                                    to: j
                                        .targets
                                        .iter()
                                        .map(|url| {
                                            config
                                                .servers
                                                .iter()
                                                .find(|s| &s.url == url)
                                                .map_or(url.clone(), |s| s.name.clone())
                                        })
                                        .collect(),
                                    state: j.state,
                                    error: j.error.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    feeds: remote.map(|s| s.feeds.clone()).unwrap_or_default(),
                    subscription: remote.and_then(|s| s.subscription.clone()),
                }
            })
            .collect();
        let folders: Vec<FolderView> = config
            .folders
            .iter()
            .map(|folder| {
                let mirror = mirrors.iter().find(|m| m.source == folder.source);
                self.folder_view(folder, mirror, &servers, paused.is_some())
            })
            .collect();
        let running = mirrors.iter().any(|m| m.pushing)
            || servers
                .iter()
                .any(|s| s.state == Some(TargetState::Syncing));
        let configured = config.folders.iter().any(|f| !f.targets.is_empty());
        let problem = folders.iter().any(|f| f.problem.is_some());
        let overall = overall(&servers, paused.is_some(), running, configured, problem);
        let summary = summary(overall, &servers, paused.as_ref());
        Dashboard {
            this_pc: self.this_pc.clone(),
            config_path: self.config_path.display().to_string(),
            overall,
            summary,
            servers,
            folders,
            guard: guard_view(config),
            resources: inner.resources.clone(),
            paused,
            running,
            bringing_back: inner.receiving_from.clone().map(|from| BringingBack {
                progress: inner.remote_progress.get(&self.this_pc).cloned(),
                from,
            }),
            activity: inner.activity.iter().cloned().collect(),
        }
    }

    fn folder_view(
        &self,
        folder: &Folder,
        mirror: Option<&FolderNow>,
        servers: &[ServerView],
        paused: bool,
    ) -> FolderView {
        let form = folder_form(folder, |url| {
            servers
                .iter()
                .find(|s| s.url == url)
                .map(|s| s.name.clone())
        });
        let mine: Vec<ServerView> = servers
            .iter()
            .filter(|s| form.targets.contains(&s.name))
            .cloned()
            .collect();
        let pushing = mirror.is_some_and(|m| m.pushing);
        let running = pushing || mine.iter().any(|s| s.state == Some(TargetState::Syncing));
        let problem = mirror.and_then(|m| m.problem.clone());
        let name_of = |url: &str| {
            servers
                .iter()
                .find(|s| s.url == url)
                .map_or(url.to_owned(), |s| s.name.clone())
        };
        FolderView {
            state: overall(
                &mine,
                paused,
                running,
                !folder.targets.is_empty(),
                problem.is_some(),
            ),
            pushing,
            problem,
            mass_delete: mirror
                .and_then(|m| m.mass_delete.as_ref())
                .map(|m| MassDeleteView {
                    server: name_of(&m.target),
                    reason: m.reason.clone(),
                    doomed: m.doomed,
                    paths: m.paths.clone(),
                }),
            kept: mirror.is_some_and(|m| m.kept),
            interval_warning: match folder.mode {
                Mode::Every(every) => interval_warning(every, self.total_memory, &[]),
                _ => None,
            },
            form,
        }
    }
}

/// A folder's settings as the form shows them (targets by server name).
pub(super) fn folder_form(folder: &Folder, name_of: impl Fn(&str) -> Option<String>) -> FolderForm {
    FolderForm {
        source: folder.source.display().to_string(),
        preset: folder.preset.clone(),
        exclude: folder.exclude.clone(),
        targets: folder
            .targets
            .iter()
            .filter_map(|t| t.name.clone().or_else(|| name_of(&t.url)))
            .collect(),
        mode: match folder.mode {
            Mode::Manual => FolderMode::Manual,
            Mode::Watch => FolderMode::Watch,
            Mode::Every(_) => FolderMode::Every,
        },
        every_minutes: match folder.mode {
            Mode::Every(every) => Some(every.as_secs_f64() / 60.0),
            _ => None,
        },
        bwlimit_mbit: folder.bwlimit.map(|rate| rate * 8.0 / 1e6),
    }
}

pub(super) fn guard_view(config: &Config) -> GuardView {
    let g = &config.guard;
    GuardView {
        cpu_above: g.pause_cpu_above,
        cpu_for_seconds: g.pause_cpu_for.as_secs_f64(),
        memory_below_mb: g.pause_memory_below.map(|b| b >> 20),
        net_above_mbit: g.pause_net_above.map(|rate| rate * 8.0 / 1e6),
        resume_after_seconds: g.resume_after.as_secs_f64(),
    }
}

fn failing(s: &ServerView) -> bool {
    s.state.is_some_and(TargetState::failing)
}

/// The tray icon's state (and a folder's), from its targets.
fn overall(
    servers: &[ServerView],
    paused: bool,
    running: bool,
    configured: bool,
    problem: bool,
) -> Overall {
    let targets: Vec<&ServerView> = servers
        .iter()
        .filter(|s| s.role == ServerRole::Target)
        .collect();
    if paused {
        Overall::Paused
    } else if problem || targets.iter().any(|s| failing(s)) {
        Overall::Error
    } else if running {
        Overall::Syncing
    } else if configured
        && !targets.is_empty()
        && targets.iter().all(|s| s.state == Some(TargetState::InSync))
    {
        Overall::InSync
    } else {
        Overall::Idle
    }
}

fn summary(overall: Overall, servers: &[ServerView], paused: Option<&PauseView>) -> String {
    let targets: Vec<&ServerView> = servers
        .iter()
        .filter(|s| s.role == ServerRole::Target)
        .collect();
    let in_sync = targets
        .iter()
        .filter(|s| s.state == Some(TargetState::InSync))
        .count();
    match overall {
        Overall::Paused => format!(
            "RainMaker: paused — {}",
            paused.map_or("", |p| p.reason.as_str())
        ),
        Overall::Error => {
            let bad: Vec<&str> = targets
                .iter()
                .filter(|s| failing(s))
                .map(|s| s.name.as_str())
                .collect();
            if bad.is_empty() {
                "RainMaker: a folder cannot be mirrored as set".into()
            } else {
                format!("RainMaker: {} not in sync", bad.join(", "))
            }
        }
        Overall::Syncing => format!(
            "RainMaker: syncing ({in_sync} of {} in sync)",
            targets.len()
        ),
        Overall::InSync if targets.len() == 1 => {
            format!("RainMaker: {} is in sync", targets[0].name)
        }
        Overall::InSync => format!("RainMaker: all {} targets in sync", targets.len()),
        _ if targets.is_empty() => "RainMaker: pick a folder and targets".into(),
        _ => format!("RainMaker: {in_sync} of {} targets in sync", targets.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tray_state_and_tooltip_follow_the_targets() {
        let view = |name: &str, state: TargetState| ServerView {
            name: name.into(),
            role: ServerRole::Target,
            state: Some(state),
            ..ServerView::default()
        };
        let servers = [
            view("a", TargetState::InSync),
            view("b", TargetState::InSync),
        ];
        assert_eq!(
            overall(&servers, false, false, true, false),
            Overall::InSync
        );
        assert_eq!(
            summary(Overall::InSync, &servers, None),
            "RainMaker: all 2 targets in sync"
        );
        let servers = [
            view("a", TargetState::InSync),
            view("b", TargetState::Offline),
        ];
        assert_eq!(
            overall(&servers, false, true, true, false),
            Overall::Error,
            "an offline target outranks syncing"
        );
        assert_eq!(
            summary(Overall::Error, &servers, None),
            "RainMaker: b not in sync"
        );
        let pause = PauseView {
            by: PausedBy::Guard,
            reason: "CPU 93% above 85% for 10 s".into(),
        };
        assert_eq!(overall(&servers, true, true, true, false), Overall::Paused);
        assert_eq!(
            summary(Overall::Paused, &servers, Some(&pause)),
            "RainMaker: paused — CPU 93% above 85% for 10 s"
        );
        assert_eq!(overall(&[], false, false, false, false), Overall::Idle);
        let fine = [view("a", TargetState::InSync)];
        assert_eq!(
            overall(&fine, false, false, true, true),
            Overall::Error,
            "a folder that cannot be mirrored is not in sync"
        );
    }
}
