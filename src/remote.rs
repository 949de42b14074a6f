//! `rainmaker remote`: command an agent over its authenticated connection (the admin token):
//! show its folder, push that folder to other agents (cloud to cloud, or back home after a
//! failover), pause, resume and stop pushes, follow events, promote and demote.
//!
//! The agent is named by its admin code (`rainmaker pair --admin`), or by its address with
//! `--fingerprint` (or a known-peers entry) and `--admin-token-file`; the admin token is only
//! sent once its certificate is pinned.

use crate::cli::{RemoteAction, RemoteArgs};
use crate::read_token;
use anyhow::{Context, Result, bail};
use rainmaker_engine::engine::{self, Remote};
use rainmaker_engine::event::Event;
use rainmaker_engine::pairing::Pairing;
use rainmaker_engine::protocol::{ControlReply, ControlRequest, JobState, Refusal, RemoteTarget};
use rainmaker_engine::transport::{Address, ConnectOptions, Role, Trust};
use std::process::ExitCode;

/// The agent to command: its address, how to check it, and its admin token.
fn agent_of(args: &RemoteArgs) -> Result<ConnectOptions> {
    let source_name = rainmaker_engine::app::mirror::machine_name();
    if Pairing::is_code(&args.agent) {
        let code = Pairing::parse(&args.agent)?;
        if code.role != Role::Admin {
            bail!(
                "--agent is a pairing code (rainmaker://), which only lets its holder mirror;                  commanding the agent needs its admin code: run `rainmaker pair --admin` on it"
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
        "--admin-token-file is missing: give it with the agent's address, or give the agent's          admin code as --agent (`rainmaker pair --admin` on it)",
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
    let mut remote = Remote::connect(&options)
        .await
        .with_context(|| format!("cannot reach {}", options.url))?;
    let agent = &options.url;
    let request = match &args.action {
        RemoteAction::Status { .. } => ControlRequest::Status,
        RemoteAction::Push {
            to,
            target_token_file,
            target_fingerprint,
            insecure,
            watch,
            ..
        } => {
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
            ControlRequest::Push {
                targets,
                watch: *watch,
            }
        }
        RemoteAction::Pause { job } => ControlRequest::Pause { job: *job },
        RemoteAction::Resume { job } => ControlRequest::Resume { job: *job },
        RemoteAction::Stop { job } => ControlRequest::Stop { job: *job },
        RemoteAction::Events => ControlRequest::Subscribe,
        RemoteAction::Promote { force } => ControlRequest::Promote { force: *force },
        RemoteAction::Demote => ControlRequest::Demote,
    };
    let follow = matches!(&args.action, RemoteAction::Push { follow: true, .. });
    if follow {
        expect_done(remote.call(ControlRequest::Subscribe).await?, agent)?;
    }
    let reply = remote.call(request).await?;
    let code = match (&args.action, reply) {
        (_, ControlReply::Refused { reason, refusal }) => {
            bail!("{agent} refused: {reason}{}", hint(refusal))
        }
        (RemoteAction::Status { json }, ControlReply::Status(status)) => {
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
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
            ExitCode::SUCCESS
        }
        (RemoteAction::Push { .. }, ControlReply::Started { job }) => {
            eprintln!("{agent}: push {job} started");
            if follow {
                follow_job(&mut remote, job).await?
            } else {
                println!("{job}");
                ExitCode::SUCCESS
            }
        }
        (RemoteAction::Events, ControlReply::Done) => {
            while let Some(json) = remote.next_event().await? {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        (_, ControlReply::Done) => ExitCode::SUCCESS,
        (_, other) => bail!("{agent} answered {other:?}"),
    };
    remote.close().await;
    Ok(code)
}

fn expect_done(reply: ControlReply, agent: &str) -> Result<()> {
    match reply {
        ControlReply::Done => Ok(()),
        ControlReply::Refused { reason, refusal } => {
            bail!("{agent} refused: {reason}{}", hint(refusal))
        }
        other => bail!("{agent} answered {other:?}"),
    }
}

/// Prints the events until push `job` ends; exit 0 when it ended with every target identical.
async fn follow_job(remote: &mut Remote, job: u64) -> Result<ExitCode> {
    let ended = remote
        .follow(job, |json| {
            // Every event but the many progress ticks, as the agent sent it.
            let tick = serde_json::from_str::<Event>(&json)
                .is_ok_and(|event| matches!(event, Event::Progress { .. }));
            if !tick {
                println!("{json}");
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
        _ => "",
    }
}
