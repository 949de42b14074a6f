//! `rainmaker push`: once, continuously or on a schedule, from flags or from every configured
//! folder; its terminal output and exit code.

use crate::cli::{self, PushArgs};
use crate::{EXIT_PARTIAL, progress, setup, shutdown_signal, status, target};
use anyhow::{Context, Result, bail};
use rainmaker_engine::app::{self, Ended, Mirror, Overrides};
use rainmaker_engine::config::Mode;
use rainmaker_engine::engine::{self, TargetSpec};
use rainmaker_engine::event::{self, PushReport, Refusal};
use rainmaker_engine::guard::Thresholds;
use rainmaker_engine::schedule::{SyncTiming, interval_warning, total_memory};
use rainmaker_engine::transport::{Address, Trust};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Turns the command line's targets (pairing codes, or addresses with --fingerprint and
/// --token-file) into engine targets, checking schemes and pins.
pub(crate) fn targets(args: &PushArgs) -> Result<Vec<TargetSpec>> {
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
            dialed_in: None,
        })
    })
    .collect()
}

/// How to check a target: plain ws:// only when `insecure` allows it, a pinned fingerprint
/// when one is given, else the known-peers file (which records a new peer only when
/// `first_use` allows it).
pub(crate) fn trust(
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

pub(crate) async fn push(args: PushArgs) -> Result<ExitCode> {
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
    let output = Output {
        bars: args.once && (!args.json || progress::stderr_is_terminal()),
        json: args.json,
    };
    run_mirror(&mirror, Some(thresholds(&args)), output, &shutdown_signal()).await
}

/// What a mirror prints besides its summary.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Output {
    /// Progress bars on stderr (else a line per target).
    bars: bool,
    /// The report as JSON on stdout; with continuous mirroring, a JSON line per event.
    json: bool,
}

/// Runs one mirror as its mode says (one push, or until Ctrl-C or SIGTERM), with its
/// progress on the terminal and its status file for `rainmaker status`; returns its exit code.
pub(crate) async fn run_mirror(
    mirror: &Mirror,
    guard: Option<Thresholds>,
    output: Output,
    cancel: &CancellationToken,
) -> Result<ExitCode> {
    let options = &mirror.options;
    let label = match mirror.mode {
        Mode::Manual => "once".to_string(),
        Mode::Watch => "watch".to_string(),
        Mode::Every(every) => format!("every {}", humantime::format_duration(every)),
    };
    let (events, listener) = event::channel();
    let printer = progress::spawn(listener, output.bars);
    let board = status::spawn_writer(events.subscribe(), options, &label);
    if mirror.mode != Mode::Manual {
        if output.json {
            tokio::spawn(print_json_lines(events.subscribe()));
        }
        if let Mode::Every(every) = mirror.mode {
            tokio::spawn(warn_when_behind(events.subscribe(), every));
        }
        let how = if mirror.mode == Mode::Watch {
            "continuously"
        } else {
            &label
        };
        eprintln!(
            "rainmaker: mirroring {} to {} target(s) {how}; Ctrl-C to stop",
            options.source.display(),
            options.targets.len()
        );
    }
    let ended = mirror.run(guard, None, &events, cancel).await;
    drop(events);
    let _ = printer.await;
    let _ = board.await;
    match ended? {
        Ended::Pushed(report) => {
            if output.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            print_summary(&report);
            Ok(exit_code(&report))
        }
        Ended::Stopped => {
            eprintln!("rainmaker: stopped mirroring {}", options.source.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The resource guard's thresholds from the command line.
pub(crate) fn thresholds(args: &PushArgs) -> Thresholds {
    Thresholds {
        cpu_above: args.pause_cpu_above,
        cpu_window: args.pause_cpu_for,
        memory_below: args.pause_memory_below,
        traffic_above: args.pause_net_above,
        hold: args.resume_after,
    }
}

/// With `--json` in a continuous mode: one JSON line per event on stdout, for scripts.
pub(crate) async fn print_json_lines(mut events: tokio::sync::broadcast::Receiver<event::Event>) {
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
pub(crate) async fn warn_when_behind(
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

/// The share of a target's files a sync may delete without `--allow-mass-delete`.
pub(crate) fn delete_share(args: &PushArgs) -> Option<f64> {
    (!args.allow_mass_delete).then_some(f64::from(args.max_delete) / 100.0)
}

/// What the command line's flags change of a folder's settings.
pub(crate) fn overrides(args: &PushArgs) -> Overrides {
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

/// What the command line changes of the configured folders (`rainmaker run`: nothing).
#[derive(Default)]
pub(crate) struct Configured {
    known_peers: Option<std::path::PathBuf>,
    first_use: bool,
    /// In place of each folder's mode.
    mode: Option<Mode>,
    overrides: Overrides,
}

impl Configured {
    pub(crate) fn from_flags(args: &PushArgs) -> Configured {
        let mode = if args.once {
            Some(Mode::Manual)
        } else if args.watch {
            Some(Mode::Watch)
        } else {
            args.every.map(Mode::Every)
        };
        Configured {
            known_peers: args.known_peers.clone(),
            first_use: args.trust_first_use,
            mode,
            overrides: Overrides {
                // Each configured folder keeps its own index: --state-dir names one folder's.
                state_dir: None,
                ..overrides(args)
            },
        }
    }
}

/// `rainmaker push` with no source: every [[folder]] of the configuration file, each in its
/// own mode (or the one the command line gives), all at once.
pub(crate) async fn push_configured(args: Configured, config: Option<&Path>) -> Result<ExitCode> {
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
            .map(|t| app::mirror::target_spec(t, &known_peers, args.first_use))
            .collect::<Result<Vec<_>, _>>()?;
        let mode = args.mode.unwrap_or(folder.mode);
        let mirror = Mirror::new(
            folder,
            targets,
            &engine::data_dir(),
            app::mirror::machine_name(),
            Overrides {
                mode: Some(mode),
                ..args.overrides.clone()
            },
        )?;
        let (thresholds, cancel) = (thresholds.clone(), cancel.clone());
        runs.spawn(async move {
            let code = run_mirror(&mirror, Some(thresholds), Output::default(), &cancel).await;
            (mirror.options.source.clone(), code)
        });
    }
    let mut worst = ExitCode::SUCCESS;
    while let Some(joined) = runs.join_next().await {
        let (source, result) = joined?;
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
        Some(Refusal::FingerprintChanged) => {
            ". If the agent was reinstalled, pass --fingerprint with the one it printed at start"
        }
        Some(Refusal::NotPinned) => {
            ". Give --to its pairing code, or --fingerprint with the fingerprint it printed at \
             start (or --trust-first-use, on a network you trust)"
        }
        Some(Refusal::Insecure) => ". Plain ws:// needs --insecure, for tests on one machine",
        Some(Refusal::WrongToken) => {
            ". Give --token-file the target's token file (or its pairing code)"
        }
        _ => "",
    }
}

pub(crate) fn exit_code(report: &PushReport) -> ExitCode {
    if report.ok || report.stopped {
        // Stopped on request: a clean stop, every target resumes from what it kept.
        ExitCode::SUCCESS
    } else if report.partial {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::FAILURE
    }
}

pub(crate) fn print_summary(report: &PushReport) {
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
