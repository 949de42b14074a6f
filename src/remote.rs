//! `rainmaker remote`: command an agent over its authenticated connection (the admin token):
//! show its folder, push that folder to other agents (cloud to cloud, or back home after a
//! failover), pause, resume and stop pushes, follow events, promote and demote.

use crate::cli::{RemoteAction, RemoteArgs};
use crate::read_token;
use anyhow::{Context, Result, bail};
use rainmaker_engine::engine::{self, Remote};
use rainmaker_engine::protocol::{ControlReply, ControlRequest, RemoteTarget};
use rainmaker_engine::transport::{ConnectOptions, Trust};
use std::process::ExitCode;

pub async fn run(args: RemoteArgs) -> Result<ExitCode> {
    let known_peers = args
        .known_peers
        .clone()
        .unwrap_or_else(engine::default_known_peers);
    let trust = Trust::for_url(&args.agent, args.fingerprint.as_deref(), &known_peers);
    let mut remote = Remote::connect(&ConnectOptions {
        url: args.agent.clone(),
        trust,
        token: read_token(&args.admin_token_file)?,
        source_name: crate::host_name(),
    })
    .await
    .with_context(|| format!("cannot reach {}", args.agent))?;
    let agent = &args.agent;
    let request = match &args.action {
        RemoteAction::Status { .. } => ControlRequest::Status,
        RemoteAction::Push {
            to,
            target_token_file,
            target_fingerprint,
            watch,
            ..
        } => {
            if target_token_file.len() != 1 && target_token_file.len() != to.len() {
                bail!("give one --target-token-file for all targets, or one per --to");
            }
            if !target_fingerprint.is_empty() && target_fingerprint.len() != to.len() {
                bail!("give one --target-fingerprint per --to, in the same order, or none");
            }
            let mut targets = Vec::new();
            for (i, url) in to.iter().enumerate() {
                let file = &target_token_file[i.min(target_token_file.len() - 1)];
                targets.push(RemoteTarget {
                    url: url.clone(),
                    token: read_token(file)?,
                    fingerprint: target_fingerprint.get(i).cloned(),
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
        (_, ControlReply::Refused { reason }) => bail!("{agent} refused: {reason}"),
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
        ControlReply::Refused { reason } => bail!("{agent} refused: {reason}"),
        other => bail!("{agent} answered {other:?}"),
    }
}

/// Prints the events until push `job` ends; exit 0 when it ended with every target identical.
async fn follow_job(remote: &mut Remote, job: u64) -> Result<ExitCode> {
    let ended = remote
        .follow(job, |json| {
            if !json.contains("\"progress\"") {
                println!("{json}");
            }
        })
        .await?;
    if ended.state == "done" {
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
