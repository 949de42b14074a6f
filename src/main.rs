//! `rainmaker`: the headless agent. It parses flags and drives the engine: `serve` receives
//! mirrors on a backup server, `push` mirrors a folder to targets, `demo` shows both on one
//! machine. Everything that is not a flag lives in `rainmaker-engine`.

mod cli;
mod demo;
mod progress;
mod status;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cli::{Cli, Command, PushArgs, ServeArgs};
use rainmaker_engine::engine::{self, PushOptions, Schedule, ServeOptions, Server, TargetSpec};
use rainmaker_engine::event::{self, PushReport};
use rainmaker_engine::guard::Thresholds;
use rainmaker_engine::schedule::{SyncTiming, interval_warning, total_memory};
use rainmaker_engine::transport::Trust;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exit status when every target is identical but some source files could not be read.
const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
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
    let default = match (&cli.command, cli.verbose) {
        (_, v) if v >= 2 => "debug",
        (_, 1) => "info",
        (Command::Serve(_), _) => "info",
        (Command::Push(push), _) if !push.once => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Push(args) => push(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Status(args) => status::show(&args).map(|()| ExitCode::SUCCESS),
    }
}

/// Reads a pairing token: the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!(
            "the token file {} is empty; put the pairing secret in it",
            path.display()
        );
    }
    Ok(token)
}

/// A token that fires on Ctrl-C or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let fire = cancel.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        fire.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        fire.cancel();
    });
    cancel
}

async fn serve(args: ServeArgs) -> Result<()> {
    let token = read_token(&args.token_file)?;
    let name = args.name.clone().unwrap_or_else(host_name);
    let server = Server::bind(ServeOptions {
        root: args.root.clone(),
        listen: args.listen.clone(),
        token,
        insecure: args.insecure,
        name,
    })
    .await
    .context("cannot start the agent")?;
    let scheme = if args.insecure { "ws" } else { "wss" };
    eprintln!(
        "rainmaker: receiving mirrors into {} on {scheme}://{}",
        args.root.display(),
        server.local_addr()
    );
    match server.fingerprint() {
        Some(fp) => eprintln!("rainmaker: certificate fingerprint {fp}"),
        None => {
            eprintln!("rainmaker: WARNING: --insecure: plain ws://, no encryption (loopback only)")
        }
    }
    server.run(shutdown_signal()).await?;
    eprintln!("rainmaker: stopped");
    Ok(())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_else(|_| "rainmaker".into())
}

/// Turns the command line's targets into engine targets, checking schemes and pins.
fn targets(args: &PushArgs, token: &str) -> Result<Vec<TargetSpec>> {
    if !args.fingerprint.is_empty() && args.fingerprint.len() != args.to.len() {
        bail!(
            "give one --fingerprint per --to, in the same order ({} targets, {} fingerprints)",
            args.to.len(),
            args.fingerprint.len()
        );
    }
    let known_peers = args
        .known_peers
        .clone()
        .unwrap_or_else(engine::default_known_peers);
    args.to
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let trust = if url.starts_with("ws://") {
                if !args.insecure {
                    bail!("{url} is plain ws://, which is not encrypted; use wss:// or pass --insecure (for loopback tests only)");
                }
                Trust::Insecure
            } else if url.starts_with("wss://") {
                match args.fingerprint.get(i) {
                    Some(fp) => Trust::Pinned(fp.clone()),
                    None => Trust::KnownPeers(known_peers.clone()),
                }
            } else {
                bail!("{url} is not a target address; write it as wss://HOST:PORT");
            };
            Ok(TargetSpec {
                url: url.clone(),
                trust,
                token: token.to_string(),
            })
        })
        .collect()
}

async fn push(args: PushArgs) -> Result<ExitCode> {
    let token = read_token(&args.token_file)?;
    let targets = targets(&args, &token)?;
    let source = args.source.clone();
    let meta = std::fs::metadata(&source)
        .with_context(|| format!("cannot read the source folder {}", source.display()))?;
    if !meta.is_dir() {
        bail!("the source {} is not a folder", source.display());
    }
    let options = PushOptions {
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(|| engine::default_state_dir(&source)),
        source,
        targets,
        source_name: host_name(),
        passes: 3,
        compress: match args.compress {
            cli::CompressArg::Auto => engine::Compress::Auto,
            cli::CompressArg::Always => engine::Compress::Always,
            cli::CompressArg::Never => engine::Compress::Never,
        },
        stall_timeout: std::time::Duration::from_secs(args.stall_timeout),
        bwlimit: args
            .bwlimit
            .map(|rate| std::sync::Arc::new(rainmaker_engine::rate::RateLimit::new(rate))),
        gate: rainmaker_engine::guard::Gate::open(),
    };
    if !args.once {
        return continuous(&args, &options).await;
    }
    let (events, listener) = event::channel();
    let bars = progress::spawn(listener, !args.json || progress::stderr_is_terminal());
    let board = status::spawn_writer(events.subscribe(), &options, "once");
    let report = engine::push_once(&options, &events, &shutdown_signal()).await?;
    drop(events);
    let _ = bars.await;
    let _ = board.await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    print_summary(&report);
    Ok(exit_code(&report))
}

/// The resource guard's thresholds from the command line.
fn thresholds(args: &PushArgs) -> Thresholds {
    Thresholds {
        cpu_above: args.pause_cpu_above,
        cpu_window: args.pause_cpu_for,
        memory_below: args.pause_memory_below,
        traffic_above: args.pause_net_above,
        hold: args.resume_after,
    }
}

/// `push --watch` and `push --every`: runs until Ctrl-C or SIGTERM.
async fn continuous(args: &PushArgs, options: &PushOptions) -> Result<ExitCode> {
    let schedule = match args.every {
        Some(every) => {
            if every < Duration::from_secs(1) {
                bail!(
                    "--every {} is too short; give at least 1s",
                    humantime::format_duration(every)
                );
            }
            if let Some(warning) = interval_warning(every, total_memory(), &[]) {
                eprintln!("warning: {warning}");
            }
            Schedule {
                watch: false,
                every,
                guard: Some(thresholds(args)),
            }
        }
        None => Schedule {
            watch: true,
            every: args.rescan_every.max(Duration::from_secs(1)),
            guard: Some(thresholds(args)),
        },
    };
    let (events, listener) = event::channel();
    let watcher = progress::spawn(listener, false);
    if args.json {
        tokio::spawn(print_json_lines(events.subscribe()));
    }
    if let Some(every) = args.every {
        tokio::spawn(warn_when_behind(events.subscribe(), every));
    }
    let mode = match args.every {
        Some(every) => format!("every {}", humantime::format_duration(every)),
        None => "watch".to_string(),
    };
    let board = status::spawn_writer(events.subscribe(), options, &mode);
    let what = if schedule.watch {
        "continuously".to_string()
    } else {
        format!("every {}", humantime::format_duration(schedule.every))
    };
    eprintln!(
        "rainmaker: mirroring {} to {} target(s) {what}; Ctrl-C to stop",
        options.source.display(),
        options.targets.len()
    );
    engine::push_continuous(options, &schedule, &events, &shutdown_signal()).await?;
    drop(events);
    let _ = watcher.await;
    let _ = board.await;
    eprintln!("rainmaker: stopped");
    Ok(ExitCode::SUCCESS)
}

/// With `--json` in a continuous mode: one JSON line per event on stdout, for scripts.
async fn print_json_lines(mut events: tokio::sync::broadcast::Receiver<event::Event>) {
    use std::io::Write;
    loop {
        match events.recv().await {
            Ok(event @ (event::Event::Progress { .. } | event::Event::Planned { .. })) => {
                drop(event)
            }
            Ok(event) => {
                if let Ok(line) = serde_json::to_string(&event) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Warns once when scheduled syncs stop keeping up with their interval.
async fn warn_when_behind(
    mut events: tokio::sync::broadcast::Receiver<event::Event>,
    every: Duration,
) {
    let memory = total_memory();
    while let Ok(event) = events.recv().await {
        if let event::Event::Synced { seconds, .. } = event {
            let took = SyncTiming {
                took: Duration::from_secs_f64(seconds),
            };
            if let Some(warning) = interval_warning(every, memory, &[took]) {
                eprintln!("warning: {warning}");
                return;
            }
        }
    }
}

fn exit_code(report: &PushReport) -> ExitCode {
    if report.ok {
        ExitCode::SUCCESS
    } else if report.partial {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::FAILURE
    }
}

fn print_summary(report: &PushReport) {
    for skipped in &report.skipped {
        eprintln!("skipped {}: {}", skipped.path, skipped.reason);
    }
    for t in &report.targets {
        if t.ok {
            eprintln!(
                "in sync  {}: {} files written, {} changed, {} on the wire, {:.2} s",
                t.url,
                t.files_sent,
                progress::size(t.bytes_changed),
                progress::size(t.wire_bytes),
                t.seconds
            );
        } else {
            eprintln!(
                "FAILED   {}: {}",
                t.url,
                t.error.as_deref().unwrap_or("unknown error")
            );
        }
    }
    if report.partial {
        eprintln!(
            "partial: {} source paths could not be read (listed above); the targets hold everything else",
            report.skipped.len()
        );
    }
}
