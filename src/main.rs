//! `rainmaker`: the headless agent. It parses flags and drives the engine: `serve` receives
//! mirrors on a backup server, `push` mirrors a folder to targets, `demo` shows both on one
//! machine. Everything that is not a flag lives in `rainmaker-engine`.

mod cli;
mod demo;
mod logfile;
mod progress;
mod push;
mod remote;
mod serve;
mod service;
mod setup;
mod status;
mod target;
#[cfg(windows)]
mod winservice;

use push::{Configured, push, push_configured, refusal_hint};
use serve::{pair, serve};

use anyhow::{Context, Result, bail};
use clap::Parser;
use cli::{Cli, Command, ServeArgs};
use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit status when every target is identical but some source files could not be read.
const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    rainmaker_engine::memory::few_arenas();
    let cli = Cli::parse();
    init_logging(&cli);
    if let Command::Service(cli::ServiceCommand::Run) = cli.command {
        // The service control manager talks to this thread; the agent runs on its own.
        return match service::run_as_service(cli.config.clone()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::Layer;
    let default = match (&cli.command, cli.verbose) {
        (_, v) if v >= 2 => "debug",
        (_, 1) => "info",
        (Command::Serve(_) | Command::Run, _) => "info",
        (Command::Push(push), _) if !push.once => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let json = cli.log_format == cli::LogFormat::Json;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let stderr = if json {
        stderr.json().boxed()
    } else {
        stderr.boxed()
    };
    let file =
        cli.log_dir
            .as_ref()
            .and_then(|dir| match logfile::CappedLog::new(dir, logfile::DAY_CAP) {
                Ok(appender) => Some(
                    tracing_subscriber::fmt::layer()
                        .with_writer(appender)
                        .with_ansi(false)
                        .with_target(false)
                        .json()
                        .boxed(),
                ),
                Err(e) => {
                    eprintln!(
                        "warning: cannot log to {}: {e}; logging to stderr only",
                        dir.display()
                    );
                    None
                }
            });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config.clone();
    let config = config.as_deref();
    match cli.command {
        Command::Serve(args) => serve(args, config).await.map(|()| ExitCode::SUCCESS),
        Command::Pair(args) => pair(args, config).map(|()| ExitCode::SUCCESS),
        Command::Push(args) => match args.source.is_some() {
            true => push(args).await,
            false => push_configured(Configured::from_flags(&args), config).await,
        },
        Command::Init(args) => setup::init(config, args.force).map(|()| ExitCode::SUCCESS),
        Command::Run => run_configured(config).await,
        Command::Trash(command) => trash(command).map(|()| ExitCode::SUCCESS),
        Command::Service(command) => {
            let path = setup::path(config);
            match command {
                cli::ServiceCommand::Install { user } => {
                    service::install(&service::Service::new(&path, user)?)
                }
                cli::ServiceCommand::Uninstall => service::uninstall(),
                cli::ServiceCommand::Run => unreachable!("handled in main before the runtime"),
                cli::ServiceCommand::Status => service::status(),
                cli::ServiceCommand::Unit { user, exe } => {
                    let mut unit = service::Service::new(&path, user)?;
                    if let Some(exe) = exe {
                        unit.exe = exe;
                    }
                    print!("{}", unit.systemd_unit());
                    Ok(())
                }
            }
            .map(|()| ExitCode::SUCCESS)
        }
        Command::Config(cli::ConfigCommand::Check) => {
            setup::check(config).map(|()| ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Status(args) => status::show(&args).map(|()| ExitCode::SUCCESS),
        Command::Remote(args) => remote::run(args).await,
    }
}

/// Reads a pairing token: the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String> {
    Ok(rainmaker_engine::config::read_token(path)?)
}

/// The process's shutdown token: it fires on the first Ctrl-C or SIGTERM (the block in flight
/// finishes, indexes are flushed, the process exits 0); a second signal exits at once.
fn shutdown_signal() -> CancellationToken {
    static LISTENING: std::sync::Once = std::sync::Once::new();
    let cancel = stop_token();
    LISTENING.call_once(|| {
        let fire = cancel.clone();
        tokio::spawn(async move {
            next_signal().await;
            // Stop first: a closed stderr must not keep the agent from stopping.
            fire.cancel();
            say("rainmaker: stopping; a second Ctrl-C or SIGTERM stops at once");
            next_signal().await;
            say("rainmaker: stopped at once");
            std::process::exit(130);
        });
    });
    cancel
}

/// Writes a line to stderr, ignoring a stderr that is closed (eprintln! would panic).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The token that stops the agent cleanly: fired by a signal, or by the Windows service
/// manager's Stop.
pub fn stop_token() -> CancellationToken {
    static TOKEN: std::sync::OnceLock<CancellationToken> = std::sync::OnceLock::new();
    TOKEN.get_or_init(CancellationToken::new).clone()
}

/// `rainmaker run` on a runtime of its own (the Windows service's thread).
pub fn run_blocking(config: Option<std::path::PathBuf>) -> Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(run_configured(config.as_deref()))
}

/// Waits for Ctrl-C, or SIGTERM on Unix.
async fn next_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `rainmaker trash list|restore`.
fn trash(command: cli::TrashCommand) -> Result<()> {
    use rainmaker_engine::trash;
    let dir = |root: &Path| root.join(".rainmaker").join("trash");
    match command {
        cli::TrashCommand::List { root } => {
            let batches = trash::list(&dir(&root));
            if batches.is_empty() {
                println!("The trash of {} is empty.", root.display());
            }
            for batch in batches {
                println!("{} ({} files)", batch.name, batch.files.len());
                for file in &batch.files {
                    println!("  {file}");
                }
            }
        }
        cli::TrashCommand::Restore { root, batch, to } => {
            let restored = trash::restore(&dir(&root), &batch, &to)?;
            println!("restored {restored} files into {}", to.display());
        }
    }
    Ok(())
}

/// `rainmaker run`: the `[serve]` section and every `[[folder]]` of the configuration file,
/// together, until stopped.
async fn run_configured(config: Option<&Path>) -> Result<ExitCode> {
    let (loaded, path) = setup::load(config)?;
    if loaded.serve.is_none() && loaded.folders.is_empty() {
        bail!(
            "{} neither serves nor mirrors anything; add [serve] or [[folder]] (`rainmaker init` writes a commented file)",
            path.display()
        );
    }
    let config = Some(path.as_path());
    let serving = async {
        match loaded.serve {
            Some(_) => {
                let args = ServeArgs {
                    root: None,
                    listen: None,
                    token_file: None,
                    insecure: false,
                    name: None,
                    trash_days: None,
                    admin_token_file: None,
                    push_to: Vec::new(),
                    subscribe_token_file: None,
                    subscribe: None,
                };
                serve(args, config).await.map(|()| ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::SUCCESS),
        }
    };
    let pushing = async {
        if loaded.folders.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        push_configured(Configured::default(), config).await
    };
    let (served, pushed) = tokio::join!(serving, pushing);
    let served = served?;
    let pushed = pushed?;
    Ok(if served != ExitCode::SUCCESS {
        served
    } else {
        pushed
    })
}
