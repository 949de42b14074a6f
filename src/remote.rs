//! `rainmaker remote`: command an agent over its authenticated connection (the admin token):
//! show its folder, push that folder to other agents (cloud to cloud, or back home after a
//! failover), pause, resume and stop pushes, follow events, promote and demote; and take the
//! agent's folder back into a folder here over the connection this machine opens (`failback`:
//! nothing needs to reach this machine, which may be behind NAT).
//!
//! The agent is named by its admin code (`rainmaker pair --admin`), or by its address with
//! `--fingerprint` (or a known-peers entry) and `--admin-token-file`; the admin token is only
//! sent once its certificate is pinned.

use crate::cli::{RemoteAction, RemoteArgs};
use crate::read_token;
use anyhow::{Context, Result, bail};
use rainmaker_engine::engine::{self, Remote, RemoteError};
use rainmaker_engine::event::Event;
use rainmaker_engine::pairing::Pairing;
use rainmaker_engine::protocol::{AgentStatus, JobState, Refusal, RemoteTarget};
use rainmaker_engine::transport::{Address, ConnectOptions, Role, Trust};
use std::process::ExitCode;

/// The agent to command: its address, how to check it, and its admin token.
fn agent_of(args: &RemoteArgs) -> Result<ConnectOptions> {
    let source_name = rainmaker_engine::app::mirror::machine_name();
    if Pairing::is_code(&args.agent) {
        let code = Pairing::parse(&args.agent)?;
        if code.role != Role::Admin {
            bail!(
                "--agent is not an admin code: commanding the agent needs its admin code (rainmaker-admin://); run `rainmaker pair --admin` on it"
            );
        }
        if args.admin_token_file.is_some() || args.fingerprint.is_some() {
            bail!(
                "an admin code carries the fingerprint and the token: drop --fingerprint and --admin-token-file"
            );
        }
        return Ok(ConnectOptions {
            url: code.url(),
            trust: Trust::Pinned(code.fingerprint),
            token: code.token,
            source_name,
        });
    }
    let known_peers = args
        .known_peers
        .clone()
        .unwrap_or_else(engine::default_known_peers);
    let file = args.admin_token_file.as_deref().context(
        "--admin-token-file is missing: give it with the agent's address, or give the agent's admin code as --agent (`rainmaker pair --admin` on it)",
    )?;
    Ok(ConnectOptions {
        url: args.agent.trim().to_owned(),
        trust: Trust::for_url(
            &args.agent,
            args.fingerprint.as_deref(),
            &known_peers,
            args.trust_first_use,
        ),
        token: read_token(file)?,
        source_name,
    })
}

pub async fn run(args: RemoteArgs) -> Result<ExitCode> {
    let options = agent_of(&args)?;
    if let RemoteAction::Failback { into, trash_days } = &args.action {
        return failback(options, into, *trash_days, None).await;
    }
    if let RemoteAction::Restore { batch, into } = &args.action {
        if std::fs::read_dir(into).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{} is not empty: restore into a new or empty folder, then move what you need",
                into.display()
            );
        }
        std::fs::create_dir_all(into)
            .with_context(|| format!("cannot create {}", into.display()))?;
        return failback(options, into, Some(0), Some(batch.clone())).await;
    }
    let mut remote = Remote::connect(&options)
        .await
        .with_context(|| format!("cannot reach {}", options.url))?;
    let targets = match &args.action {
        RemoteAction::Push {
            to,
            target_token_file,
            target_fingerprint,
            insecure,
            ..
        } => push_targets(to, target_fingerprint, target_token_file, *insecure)?,
        _ => Vec::new(),
    };
    let code = command(&mut remote, &args.action, targets, &options.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}{}", hint(e.refusal())))?;
    remote.close().await;
    Ok(code)
}

/// Runs one command on `agent` and prints its answer; `targets`: a push's, checked.
async fn command(
    remote: &mut Remote,
    action: &RemoteAction,
    targets: Vec<RemoteTarget>,
    agent: &str,
) -> Result<ExitCode, RemoteError> {
    match action {
        RemoteAction::Status { json } => {
            let status = remote.status().await?;
            print_status(&status, *json);
        }
        RemoteAction::Push { watch, follow, .. } => {
            if *follow {
                remote.subscribe().await?;
            }
            let job = remote.push(targets, *watch).await?;
            eprintln!("{agent}: push {job} started");
            if *follow {
                return follow_job(remote, job).await;
            }
            println!("{job}");
        }
        RemoteAction::Pause { job } => remote.pause(*job).await?,
        RemoteAction::Resume { job } => remote.resume(*job).await?,
        RemoteAction::Stop { job } => remote.stop(*job).await?,
        RemoteAction::Events => {
            remote.subscribe().await?;
            while let Some(event) = remote.next_event().await? {
                println!("{}", serde_json::to_string(&event).unwrap_or_default());
            }
        }
        RemoteAction::Promote { force } => remote.promote(*force).await?,
        RemoteAction::Demote => remote.demote().await?,
        RemoteAction::Trash { json } => {
            let batches = remote.trash().await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&batches).unwrap_or_default()
                );
            } else if batches.is_empty() {
                println!("the trash is empty");
            }
            for b in batches.iter().filter(|_| !*json) {
                println!(
                    "{}  {} files, session started at {} (Unix seconds): {}{}",
                    b.name,
                    b.files,
                    b.when,
                    b.paths.join(", "),
                    if b.files as usize > b.paths.len() {
                        ", ..."
                    } else {
                        ""
                    }
                );
            }
        }
        RemoteAction::Failback { .. } | RemoteAction::Restore { .. } => {
            unreachable!("a pull opens no control connection")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `remote failback`: receives the agent's folder into `into` over a connection this machine
/// opens; exit 0 only when `into` then holds exactly what the agent's folder held.
async fn failback(
    from: ConnectOptions,
    into: &std::path::Path,
    trash_days: Option<u32>,
    trash_batch: Option<String>,
) -> Result<ExitCode> {
    let options = engine::PullOptions {
        root: into.to_path_buf(),
        trash_retention: crate::serve::trash_retention(trash_days),
        from,
        trash_batch,
    };
    let what = match &options.trash_batch {
        Some(batch) => format!("trash batch {batch}"),
        None => "folder".to_owned(),
    };
    eprintln!(
        "rainmaker: receiving the {what} of {} into {}",
        options.from.url,
        into.display()
    );
    let stop = crate::shutdown_signal();
    let pulled = engine::pull_once(&options, &stop)
        .await
        .with_context(|| format!("cannot take the {what} back from {}", options.from.url))?;
    if pulled.in_sync {
        eprintln!(
            "rainmaker: {} now holds exactly what {} holds (its {what})",
            into.display(),
            pulled.from
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "rainmaker: {} is not identical to {}'s {what}: {}; run it again",
        into.display(),
        pulled.from,
        pulled.reason
    );
    Ok(ExitCode::FAILURE)
}

/// The targets of `remote push`, checked.
fn push_targets(
    to: &[String],
    target_fingerprint: &[String],
    target_token_file: &[std::path::PathBuf],
    insecure: bool,
) -> Result<Vec<RemoteTarget>> {
    let given = crate::target::read(
        to,
        target_fingerprint,
        target_token_file,
        ("--target-fingerprint", "--target-token-file"),
    )?;
    let mut targets = Vec::new();
    for target in given {
        if Address::parse(&target.url).is_ok_and(|a| !a.tls) && !insecure {
            bail!(
                "{} is plain ws://: the folder and the token would cross in clear; use \
                 the target's pairing code, or pass --insecure (the agent allows it to its \
                 own loopback only)",
                target.url
            );
        }
        targets.push(RemoteTarget {
            url: target.url,
            token: target.token,
            fingerprint: target.fingerprint,
        });
    }
    Ok(targets)
}

fn print_status(status: &AgentStatus, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(status).unwrap_or_default()
        );
        return;
    }
    let newest = status.newest_mtime_ns / 1_000_000_000;
    println!(
        "{} ({}): {} files, {} bytes, newest change at {} (Unix seconds); {}",
        status.name,
        status.role,
        status.files,
        status.bytes,
        newest,
        match (&status.receiving, &status.last_source) {
            (true, Some((who, _))) => format!("{who} is mirroring into it now"),
            (false, Some((who, at))) => format!("last mirrored into by {who} at {at}"),
            _ => "nothing mirrored into it since it started".into(),
        }
    );
    if let Some(sub) = &status.subscription {
        println!(
            "receives its folder from {} by dialing it: {}{}",
            sub.from,
            if sub.connected {
                "connected"
            } else {
                "not connected"
            },
            sub.error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
    for feed in &status.feeds {
        println!(
            "{} {} (dials in from {}): {}{}{}",
            if feed.once { "pull by" } else { "subscriber" },
            feed.name,
            feed.address,
            if feed.connected {
                "connected"
            } else {
                "not connected"
            },
            feed.in_sync_at
                .map_or(String::new(), |at| format!(", in sync at {at}")),
            feed.error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
    for job in &status.jobs {
        println!(
            "push {}: {} to {}{}",
            job.id,
            job.state,
            job.targets.join(", "),
            job.error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
}

/// Prints the events until push `job` ends; exit 0 when it ended with every target identical.
async fn follow_job(remote: &mut Remote, job: u64) -> Result<ExitCode, RemoteError> {
    let ended = remote
        .follow(job, |event| {
            // Every event but the many progress ticks.
            if !matches!(event, Event::Progress { .. }) {
                println!("{}", serde_json::to_string(&event).unwrap_or_default());
            }
        })
        .await?;
    if ended.state == JobState::Done {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "push {job} {}{}",
        ended.state,
        ended
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(": {e}"))
    );
    Ok(ExitCode::FAILURE)
}

/// What the command line adds to a refusal a user can act on: the command or flag that does it.
fn hint(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::WrongToken => "; give `--admin-token-file` the agent's admin token file",
        Refusal::Busy | Refusal::RecentSource => "; `promote --force` promotes it anyway",
        Refusal::Promoted => "; `demote` makes it a target again",
        Refusal::NotPinned | Refusal::FingerprintChanged => {
            "; give --agent its admin code (`rainmaker pair --admin` on it), or --fingerprint"
        }
        _ => "",
    }
}
