//! `rainmaker`: the headless agent. It parses flags and drives the engine: `serve` receives
//! mirrors on a backup server, `push` mirrors a folder to targets, `demo` shows both on one
//! machine. Everything that is not a flag lives in `rainmaker-engine`.

mod cli;
mod demo;
mod logfile;
mod progress;
mod remote;
mod service;
mod setup;
mod status;
mod target;
#[cfg(windows)]
mod winservice;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cli::{Cli, Command, PairArgs, PushArgs, ServeArgs};
use rainmaker_engine::app::{self, Mirror, Overrides};
use rainmaker_engine::config::Mode;
use rainmaker_engine::engine::{self, ServeOptions, Server, TargetSpec};
use rainmaker_engine::event::{self, PushReport, Refusal};
use rainmaker_engine::guard::Thresholds;
use rainmaker_engine::pairing::{self, Pairing};
use rainmaker_engine::schedule::{SyncTiming, interval_warning, total_memory};
use rainmaker_engine::transport::{Address, Limits, Role, Trust};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exit status when every target is identical but some source files could not be read.
const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
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
            false => push_configured(args, config).await,
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

/// What `serve` and `pair` take from the flags, else from `[serve]` in the configuration file.
#[derive(Debug)]
struct ServeSettings {
    root: std::path::PathBuf,
    listen: String,
    token_file: std::path::PathBuf,
    admin_token_file: Option<std::path::PathBuf>,
    insecure: bool,
    name: Option<String>,
    trash_days: Option<u32>,
    push_to: Option<Vec<String>>,
}

impl ServeSettings {
    fn resolve(args: &ServeArgs, config: Option<&Path>) -> Result<ServeSettings> {
        let needs_config =
            args.root.is_none() || args.listen.is_none() || args.token_file.is_none();
        let (from_file, config_path) = match needs_config {
            true => {
                let (config, path) = setup::load(config)?;
                (config.serve, path)
            }
            false => (None, setup::path(config)),
        };
        let missing = |flag: &str, key: &str| {
            anyhow::anyhow!(
                "{flag} is missing: give it, or set [serve] {key} in {} (`rainmaker init` writes one)",
                config_path.display()
            )
        };
        let file = from_file.as_ref();
        Ok(ServeSettings {
            root: args
                .root
                .clone()
                .or_else(|| file.map(|s| s.root.clone()))
                .ok_or_else(|| missing("--root", "root"))?,
            listen: args
                .listen
                .clone()
                .or_else(|| file.map(|s| s.listen.clone()))
                .ok_or_else(|| missing("--listen", "listen"))?,
            token_file: args
                .token_file
                .clone()
                .or_else(|| file.map(|s| s.token_file.clone()))
                .ok_or_else(|| missing("--token-file", "token_file"))?,
            admin_token_file: args
                .admin_token_file
                .clone()
                .or_else(|| file.and_then(|s| s.admin_token_file.clone())),
            insecure: args.insecure || file.is_some_and(|s| s.insecure),
            name: args
                .name
                .clone()
                .or_else(|| file.and_then(|s| s.name.clone())),
            trash_days: args.trash_days.or_else(|| file.and_then(|s| s.trash_days)),
            push_to: if args.push_to.is_empty() {
                file.and_then(|s| s.push_to.clone())
            } else {
                Some(args.push_to.clone())
            },
        })
    }
}

async fn serve(args: ServeArgs, config: Option<&Path>) -> Result<()> {
    let settings = ServeSettings::resolve(&args, config)?;
    let token = read_token(&settings.token_file)?;
    let admin_token = settings
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let days = settings.trash_days.unwrap_or(7);
    let server = Server::bind(ServeOptions {
        admin_token,
        root: settings.root.clone(),
        listen: settings.listen.clone(),
        token: token.clone(),
        insecure: settings.insecure,
        name: settings
            .name
            .clone()
            .unwrap_or_else(app::mirror::machine_name),
        trash_retention: (days > 0).then(|| Duration::from_secs(u64::from(days) * 24 * 3600)),
        push_to: settings.push_to.clone(),
    })
    .await
    .context("cannot start the agent")?;
    let server = match test_idle_limit() {
        Some(idle) => server.with_limits(Limits::default().with_idle(idle)),
        None => server,
    };
    let scheme = if settings.insecure { "ws" } else { "wss" };
    eprintln!(
        "rainmaker: receiving mirrors into {} on {scheme}://{}",
        settings.root.display(),
        server.local_addr()
    );
    match server.fingerprint() {
        Some(fp) => {
            eprintln!("rainmaker: certificate fingerprint {fp}");
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                let code = Pairing {
                    role: Role::Source,
                    host: pairing::advertised_host(&settings.listen, &app::mirror::machine_name()),
                    port: server.local_addr().port(),
                    fingerprint: fp.to_owned(),
                    token,
                };
                eprintln!(
                    "rainmaker: pairing code {code}\n           (give it to a source: `rainmaker push FOLDER --to CODE --once`; it holds the pairing token, keep it secret)"
                );
            } else {
                // Not a person's terminal: this output may be a log others can read.
                eprintln!(
                    "rainmaker: pairing code: run `rainmaker pair` on this machine to show it (not written to this log: it holds the pairing token)"
                );
            }
        }
        None => {
            eprintln!("rainmaker: WARNING: --insecure: plain ws://, no encryption (loopback only)")
        }
    }
    server.run(shutdown_signal()).await?;
    eprintln!("rainmaker: stopped");
    Ok(())
}

/// `rainmaker pair`: the agent's pairing code (or admin code) from its configuration, its
/// certificate and its token file, on stdout.
fn pair(args: PairArgs, config: Option<&Path>) -> Result<()> {
    let serve_args = ServeArgs {
        root: args.root.clone(),
        listen: args.listen.clone(),
        token_file: args.token_file.clone(),
        insecure: false,
        name: None,
        trash_days: None,
        admin_token_file: args.admin_token_file.clone(),
        push_to: Vec::new(),
    };
    let settings = ServeSettings::resolve(&serve_args, config)?;
    if settings.insecure {
        bail!(
            "this agent serves plain ws:// (insecure = true): it has no certificate, so no pairing code; serve over wss:// to pair"
        );
    }
    let port = settings
        .listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port != 0)
        .with_context(|| {
            format!(
                "the listen address {} has no fixed port; give --listen with the port the agent printed",
                settings.listen
            )
        })?;
    let fingerprint =
        rainmaker_engine::transport::fingerprint_in(&engine::identity_dir(&settings.root))?;
    let (role, token) = if args.admin {
        let file = settings.admin_token_file.as_deref().context(
            "this agent has no admin token: give --admin-token-file, or set [serve] admin_token_file",
        )?;
        (Role::Admin, read_token(file)?)
    } else {
        (Role::Source, read_token(&settings.token_file)?)
    };
    let host = match &args.host {
        Some(host) => host.trim().trim_matches(['[', ']']).to_ascii_lowercase(),
        None => pairing::advertised_host(&settings.listen, &app::mirror::machine_name()),
    };
    let code = Pairing {
        role,
        host,
        port,
        fingerprint,
        token,
    };
    // What this prints must read back: a host name with characters a code cannot hold is
    // refused here, not on the source.
    Pairing::parse(&code.to_string()).context("give another --host")?;
    println!("{code}");
    eprintln!(
        "{}; keep it secret",
        match role {
            Role::Source =>
                "give it to a source (`rainmaker push FOLDER --to CODE`, or Add server in the tray): it lets its holder mirror into this folder",
            Role::Admin =>
                "give it to whoever commands this agent (`rainmaker remote --agent CODE ...`): it lets its holder push this folder, promote and demote this agent",
        }
    );
    Ok(())
}

/// The idle limit the end-to-end tests set (`RAINMAKER_TEST_IDLE_MS`, milliseconds), so a
/// frozen source is noticed in a moment instead of the 30 s an agent allows. For tests only.
fn test_idle_limit() -> Option<Duration> {
    let ms: u64 = std::env::var("RAINMAKER_TEST_IDLE_MS").ok()?.parse().ok()?;
    Some(Duration::from_millis(ms.max(100)))
}

/// Turns the command line's targets (pairing codes, or addresses with --fingerprint and
/// --token-file) into engine targets, checking schemes and pins.
fn targets(args: &PushArgs) -> Result<Vec<TargetSpec>> {
    let known_peers = args
        .known_peers
        .clone()
        .unwrap_or_else(engine::default_known_peers);
    let token_files: Vec<_> = args.token_file.iter().cloned().collect();
    target::read(
        &args.to,
        &args.fingerprint,
        &token_files,
        ("--fingerprint", "--token-file"),
    )?
    .into_iter()
    .map(|given| {
        Ok(TargetSpec {
            trust: trust(
                &given.url,
                given.fingerprint.as_ref(),
                &known_peers,
                args.insecure,
                args.trust_first_use,
            )?,
            url: given.url,
            token: given.token,
        })
    })
    .collect()
}

/// How to check a target: plain ws:// only when `insecure` allows it, a pinned fingerprint
/// when one is given, else the known-peers file (which records a new peer only when
/// `first_use` allows it).
fn trust(
    url: &str,
    fingerprint: Option<&String>,
    known_peers: &Path,
    insecure: bool,
    first_use: bool,
) -> Result<Trust> {
    let address = Address::parse(url)
        .map_err(|e| anyhow::anyhow!("{e}; write a target as wss://HOST:PORT"))?;
    if !address.tls && !insecure {
        bail!(
            "{url} is plain ws://, which is not encrypted; use wss:// or pass --insecure (for loopback tests only)"
        );
    }
    Ok(Trust::for_url(
        url,
        fingerprint.map(String::as_str),
        known_peers,
        first_use,
    ))
}

async fn push(args: PushArgs) -> Result<ExitCode> {
    if args.to.is_empty() {
        bail!("give at least one --to: a target's pairing code, or wss://HOST:PORT");
    }
    if !(args.once || args.watch || args.every.is_some()) {
        bail!("say how to mirror: --once, --watch or --every [INTERVAL]");
    }
    let targets = targets(&args)?;
    let source = args
        .source
        .clone()
        .context("the source folder is missing")?;
    let meta = std::fs::metadata(&source)
        .with_context(|| format!("cannot read the source folder {}", source.display()))?;
    if !meta.is_dir() {
        bail!("the source {} is not a folder", source.display());
    }
    let mode = if args.watch {
        Mode::Watch
    } else {
        args.every.map_or(Mode::Manual, Mode::Every)
    };
    let mirror = Mirror::new(
        &Mirror::folder(source, mode),
        targets,
        &engine::data_dir(),
        app::mirror::machine_name(),
        overrides(&args),
    )?;
    if !args.once {
        return continuous(&args, &mirror).await;
    }
    let options = mirror.options;
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
async fn continuous(args: &PushArgs, mirror: &Mirror) -> Result<ExitCode> {
    if let Some(every) = args.every {
        if every < Duration::from_secs(1) {
            bail!(
                "--every {} is too short; give at least 1s",
                humantime::format_duration(every)
            );
        }
        if let Some(warning) = interval_warning(every, total_memory(), &[]) {
            eprintln!("warning: {warning}");
        }
    }
    let options = &mirror.options;
    let schedule = mirror
        .schedule(Some(thresholds(args)), None)
        .context("continuous mirroring needs --watch or --every")?;
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
            Ok(
                event @ (event::Event::Progress { .. }
                | event::Event::Planned { .. }
                | event::Event::Resources { .. }),
            ) => drop(event),
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

/// The share of a target's files a sync may delete without `--allow-mass-delete`.
fn delete_share(args: &PushArgs) -> Option<f64> {
    (!args.allow_mass_delete).then_some(f64::from(args.max_delete) / 100.0)
}

/// What the command line's flags change of a folder's settings.
fn overrides(args: &PushArgs) -> Overrides {
    Overrides {
        bwlimit: args.bwlimit,
        exclude: args.exclude.clone(),
        compress: match args.compress {
            cli::CompressArg::Auto => engine::Compress::Auto,
            cli::CompressArg::Always => engine::Compress::Always,
            cli::CompressArg::Never => engine::Compress::Never,
        },
        stall_timeout: Duration::from_secs(args.stall_timeout),
        max_delete_share: delete_share(args),
        watch_rescan: args.rescan_every.max(Duration::from_secs(1)),
        state_dir: args.state_dir.clone(),
        ..Overrides::default()
    }
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
        let cli::Command::Push(args) = Cli::parse_from(["rainmaker", "push"]).command else {
            unreachable!("`push` parses as a push");
        };
        push_configured(args, config).await
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

/// `rainmaker push` with no source: every [[folder]] of the configuration file, each in its
/// own mode (or the one the command line gives), all at once.
async fn push_configured(args: PushArgs, config: Option<&Path>) -> Result<ExitCode> {
    let (config, path) = setup::load(config)?;
    if config.folders.is_empty() {
        bail!(
            "nothing to mirror: give a source folder and --to, or add a [[folder]] to {} (`rainmaker init` writes a commented one)",
            path.display()
        );
    }
    let known_peers = args
        .known_peers
        .clone()
        .unwrap_or_else(engine::default_known_peers);
    let thresholds = setup::thresholds(&config);
    let cancel = shutdown_signal();
    let mut runs = tokio::task::JoinSet::new();
    for folder in &config.folders {
        if folder.targets.is_empty() {
            eprintln!(
                "rainmaker: {} has no targets in {}; skipped",
                folder.source.display(),
                path.display()
            );
            continue;
        }
        // A ws:// target written in the configuration file is taken as meant (the file's
        // checker only accepts ws:// and wss://; agents refuse plain ws:// off loopback).
        let targets = folder
            .targets
            .iter()
            .map(|t| app::mirror::target_spec(t, &known_peers, args.trust_first_use))
            .collect::<Result<Vec<_>, _>>()?;
        let mode = if args.once {
            Mode::Manual
        } else if args.watch {
            Mode::Watch
        } else {
            args.every.map_or(folder.mode, Mode::Every)
        };
        let mirror = Mirror::new(
            folder,
            targets,
            &engine::data_dir(),
            app::mirror::machine_name(),
            Overrides {
                mode: Some(mode),
                ..overrides(&args)
            },
        )?;
        let (thresholds, cancel) = (thresholds.clone(), cancel.clone());
        runs.spawn(async move {
            let (events, listener) = event::channel();
            let printer = progress::spawn(listener, false);
            let options = &mirror.options;
            let (label, result) = match mirror.schedule(Some(thresholds), None) {
                None => {
                    let board = status::spawn_writer(events.subscribe(), options, "once");
                    let report = engine::push_once(options, &events, &cancel).await;
                    drop(events);
                    let _ = board.await;
                    let code = report.map(|r| {
                        print_summary(&r);
                        exit_code(&r)
                    });
                    ("once", code)
                }
                Some(schedule) => {
                    let label = if schedule.watch { "watch" } else { "every" };
                    let board = status::spawn_writer(events.subscribe(), options, label);
                    eprintln!(
                        "rainmaker: mirroring {} ({label})",
                        options.source.display()
                    );
                    let done = engine::push_continuous(options, &schedule, &events, &cancel).await;
                    drop(events);
                    let _ = board.await;
                    (label, done.map(|()| ExitCode::SUCCESS))
                }
            };
            let _ = printer.await;
            (label, options.source.clone(), result)
        });
    }
    let mut worst = ExitCode::SUCCESS;
    while let Some(joined) = runs.join_next().await {
        let (_, source, result) = joined?;
        match result {
            Ok(code) if code != ExitCode::SUCCESS => worst = code,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {}: {e:#}", source.display());
                worst = ExitCode::FAILURE;
            }
        }
    }
    Ok(worst)
}

/// What the command line adds to a refusal a user can act on: the flag that does it.
pub(crate) fn refusal_hint(refusal: Option<Refusal>) -> &'static str {
    match refusal {
        Some(Refusal::MassDelete) => {
            ". If the deletions are wanted, run again with --allow-mass-delete"
        }
        Some(Refusal::FingerprintChanged) => "",
        Some(Refusal::WrongToken) => {
            ". Give --token-file the target's token file (or its pairing code)"
        }
        _ => "",
    }
}

fn exit_code(report: &PushReport) -> ExitCode {
    if report.ok || report.stopped {
        // Stopped on request: a clean stop, every target resumes from what it kept.
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
        } else if report.stopped {
            eprintln!(
                "stopped  {}: {} files written before the stop; the next run resumes",
                t.url, t.files_sent
            );
        } else {
            eprintln!(
                "FAILED   {}: {}{}",
                t.url,
                t.error.as_deref().unwrap_or("unknown error"),
                refusal_hint(t.refusal)
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
