//! `rainmaker serve` (a target agent) and `rainmaker pair` (its pairing code).

use crate::cli::{PairArgs, ServeArgs};
use crate::{read_token, setup, shutdown_signal};
use anyhow::{Context, Result, bail};
use rainmaker_engine::app;
use rainmaker_engine::engine::{self, ServeOptions, Server, Subscription};
use rainmaker_engine::event::Refusal;
use rainmaker_engine::pairing::{self, Pairing};
use rainmaker_engine::transport::{Limits, Role};
use std::path::Path;
use std::time::Duration;

/// What `serve` and `pair` take from the flags, else from `[serve]` in the configuration file.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    root: std::path::PathBuf,
    listen: String,
    token_file: std::path::PathBuf,
    admin_token_file: Option<std::path::PathBuf>,
    insecure: bool,
    name: Option<String>,
    trash_days: Option<u32>,
    push_to: Option<Vec<String>>,
    subscribe_token_file: Option<std::path::PathBuf>,
    subscribe: Option<String>,
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
            subscribe_token_file: args
                .subscribe_token_file
                .clone()
                .or_else(|| file.and_then(|s| s.subscribe_token_file.clone())),
            subscribe: args
                .subscribe
                .clone()
                .or_else(|| file.and_then(|s| s.subscribe.clone())),
        })
    }
}

pub(crate) async fn serve(args: ServeArgs, config: Option<&Path>) -> Result<()> {
    let settings = ServeSettings::resolve(&args, config)?;
    let token = read_token(&settings.token_file)?;
    let admin_token = settings
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let subscribe_token = settings
        .subscribe_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let subscribe = match &settings.subscribe {
        Some(code) => {
            let code = Pairing::parse(code).context("--subscribe")?;
            Some(Subscription::from_code(&code).context("--subscribe")?)
        }
        None => None,
    };
    let trash_retention = trash_retention(settings.trash_days);
    let subscribing = subscribe.as_ref().map(|s| s.url.clone());
    let server = Server::bind(ServeOptions {
        admin_token,
        subscribe_token,
        subscribe,
        root: settings.root.clone(),
        listen: settings.listen.clone(),
        token: token.clone(),
        insecure: settings.insecure,
        name: settings
            .name
            .clone()
            .unwrap_or_else(app::mirror::machine_name),
        trash_retention,
        push_to: settings.push_to.clone(),
    })
    .await
    .map_err(|e| {
        // The engine says what is wrong; the command line says which flag changes it.
        let hint = match &e {
            engine::EngineError::Transport(t) if t.refusal() == Refusal::Insecure => {
                " (drop --insecure to listen with TLS)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("cannot start the agent{hint}"))
    })?;
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
    if let Some(from) = subscribing {
        eprintln!(
            "rainmaker: and subscribed to {from}: receiving its folder over connections this agent opens"
        );
    }
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

/// How long the trash keeps what a session replaces or deletes, from `--trash-days` (the
/// default when not given; 0: not kept).
pub(crate) fn trash_retention(days: Option<u32>) -> Option<Duration> {
    match days {
        None => Some(rainmaker_engine::trash::DEFAULT_RETENTION),
        Some(0) => None,
        Some(days) => Some(Duration::from_secs(u64::from(days) * 24 * 3600)),
    }
}

/// `rainmaker pair`: the agent's pairing code (or admin or subscribe code) from its
/// configuration, its certificate and its token file, on stdout.
pub(crate) fn pair(args: PairArgs, config: Option<&Path>) -> Result<()> {
    let serve_args = ServeArgs {
        root: args.root.clone(),
        listen: args.listen.clone(),
        token_file: args.token_file.clone(),
        insecure: false,
        name: None,
        trash_days: None,
        admin_token_file: args.admin_token_file.clone(),
        push_to: Vec::new(),
        subscribe_token_file: args.subscribe_token_file.clone(),
        subscribe: None,
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
    } else if args.subscribe {
        let file = settings.subscribe_token_file.as_deref().context(
            "this agent has no subscribe token: give --subscribe-token-file, or set [serve] subscribe_token_file (a long random secret of its own)",
        )?;
        (Role::Subscriber, read_token(file)?)
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
            Role::Subscriber =>
                "give it to a server that receives this folder by dialing this agent (`rainmaker serve --subscribe CODE` there, for a server behind NAT): it lets its holder read this folder, not write it",
            Role::Admin =>
                "give it to whoever commands this agent (`rainmaker remote --agent CODE ...`): it lets its holder push this folder, promote and demote this agent",
        }
    );
    Ok(())
}

/// The idle limit the end-to-end tests set (`RAINMAKER_TEST_IDLE_MS`, milliseconds), so a
/// frozen source is noticed in a moment instead of the 30 s an agent allows. For tests only.
pub(crate) fn test_idle_limit() -> Option<Duration> {
    let ms: u64 = std::env::var("RAINMAKER_TEST_IDLE_MS").ok()?.parse().ok()?;
    Some(Duration::from_millis(ms.max(100)))
}
