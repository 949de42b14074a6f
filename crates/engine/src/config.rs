//! The configuration file, `rainmaker.toml`: what this machine serves and what it mirrors, so
//! a trader sets RainMaker up once and the agent can start at boot with no command line.
//!
//! Every error names the file, the line and column, the key, and what was expected; unknown
//! keys are errors (a misspelt `bwlimt` must not be silently ignored). Values that have their
//! own syntax (durations, rates, sizes, addresses) are checked here too, with their location.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

/// A configuration file, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub serve: Option<Serve>,
    /// `[[server]]`: the backup servers this machine knows, by name (the dashboard's list).
    pub servers: Vec<KnownServer>,
    pub folders: Vec<Folder>,
    pub guard: GuardSettings,
}

/// `[[server]]`: a known server that folders name in `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownServer {
    pub name: String,
    pub url: String,
    pub token_file: PathBuf,
    pub fingerprint: Option<String>,
    /// The server's admin token, which lets this machine command it (push from it, promote).
    pub admin_token_file: Option<PathBuf>,
}

/// `[serve]`: this machine receives mirrors.
#[derive(Debug, Clone, PartialEq)]
pub struct Serve {
    pub root: PathBuf,
    pub listen: String,
    pub token_file: PathBuf,
    pub insecure: bool,
    pub name: Option<String>,
    /// Days deleted and replaced files stay in the trash.
    pub trash_days: Option<u32>,
    /// The admin token that lets a client command this agent.
    pub admin_token_file: Option<PathBuf>,
    /// The only agents (`host:port`) an admin client may tell this one to push to; `None`:
    /// any agent it gives a pinned fingerprint for.
    pub push_to: Option<Vec<String>>,
    /// The subscribe token, which lets a peer receive this agent's folder over a connection it
    /// opens (a server behind NAT subscribing to this one).
    pub subscribe_token_file: Option<PathBuf>,
    /// The subscribe (or admin) code of the agent this one dials to receive its folder into
    /// `root` (this machine is behind NAT); checked to be such a code.
    pub subscribe: Option<String>,
}

/// `[[folder]]`: a folder this machine mirrors to targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Folder {
    pub source: PathBuf,
    pub mode: Mode,
    pub bwlimit: Option<f64>,
    /// Paths left out (see [`crate::exclude`]).
    pub exclude: Vec<String>,
    /// The trading platform preset the folder was set up from, if any (for the dashboard).
    pub preset: Option<String>,
    /// Every target: the servers named in `to`, then the `[[folder.target]]` tables.
    pub targets: Vec<Target>,
}

/// When a folder is mirrored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Only when asked (`rainmaker push --once`, the Sync button).
    Manual,
    /// On every change.
    Watch,
    /// On a schedule.
    Every(Duration),
}

/// `[[folder.target]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The `[[server]]` this target came from.
    pub name: Option<String>,
    pub url: String,
    pub token_file: PathBuf,
    pub fingerprint: Option<String>,
}

/// `[guard]`: when sync pauses.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSettings {
    pub pause_cpu_above: f32,
    pub pause_cpu_for: Duration,
    pub pause_memory_below: Option<u64>,
    pub pause_net_above: Option<f64>,
    pub resume_after: Duration,
}

impl Default for GuardSettings {
    fn default() -> GuardSettings {
        let t = crate::guard::Thresholds::default();
        GuardSettings {
            pause_cpu_above: t.cpu_above,
            pause_cpu_for: t.cpu_window,
            pause_memory_below: t.memory_below,
            pause_net_above: t.traffic_above,
            resume_after: t.hold,
        }
    }
}

impl GuardSettings {
    /// The resource guard's thresholds this section sets.
    pub fn thresholds(&self) -> crate::guard::Thresholds {
        crate::guard::Thresholds {
            cpu_above: self.pause_cpu_above,
            cpu_window: self.pause_cpu_for,
            memory_below: self.pause_memory_below,
            traffic_above: self.pause_net_above,
            hold: self.resume_after,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A pairing or admin token file that cannot be used.
#[derive(Debug, Error)]
#[error("{}", .message)]
pub struct TokenError {
    pub path: PathBuf,
    pub message: String,
}

/// Reads a token file: its content without surrounding whitespace, which must not be empty.
/// A short token, or a file other users can read, is logged as a warning
/// ([`crate::secret::token_warnings`]).
/// The pairing code a token file holds, when it holds one instead of a bare token.
fn code_in(token_file: &Path) -> Option<crate::pairing::Pairing> {
    let text = std::fs::read_to_string(token_file).ok()?;
    crate::pairing::Pairing::is_code(&text)
        .then(|| crate::pairing::Pairing::parse(&text).ok())
        .flatten()
}

/// Reads a token file: the bare token, or the pairing code `rainmaker pair` printed, whose
/// token it takes.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let fail = |message: String| TokenError {
        path: path.to_path_buf(),
        message,
    };
    let token = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let mut token = token.trim().to_owned();
    if crate::pairing::Pairing::is_code(&token) {
        token = crate::pairing::Pairing::parse(&token)
            .map_err(|e| {
                fail(format!(
                    "the token file {} holds a pairing code that cannot be read: {}",
                    path.display(),
                    e.reason
                ))
            })?
            .token;
    }
    let token = token.as_str();
    if token.is_empty() {
        return Err(fail(format!(
            "the token file {} is empty; put the pairing secret in it",
            path.display()
        )));
    }
    for warning in crate::secret::token_warnings(path, token) {
        tracing::warn!("{warning}");
    }
    Ok(token.to_owned())
}

/// The default location: `rainmaker.toml` in the OS's configuration folder
/// (`%APPDATA%\rainmaker` on Windows, `~/.config/rainmaker` on Linux), or
/// `RAINMAKER_CONFIG` when set.
pub fn default_path() -> PathBuf {
    match std::env::var_os("RAINMAKER_CONFIG") {
        Some(path) => PathBuf::from(path),
        None => dirs::config_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("rainmaker")
            .join("rainmaker.toml"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    serve: Option<RawServe>,
    #[serde(default)]
    server: Vec<RawServer>,
    #[serde(default)]
    folder: Vec<RawFolder>,
    guard: Option<RawGuard>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    root: PathBuf,
    listen: Spanned<String>,
    token_file: PathBuf,
    #[serde(default)]
    insecure: bool,
    name: Option<String>,
    trash_days: Option<u32>,
    admin_token_file: Option<PathBuf>,
    push_to: Option<Vec<Spanned<String>>>,
    subscribe_token_file: Option<PathBuf>,
    subscribe: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    /// May be left out when `token_file` holds the server's pairing code.
    url: Option<Spanned<String>>,
    token_file: PathBuf,
    fingerprint: Option<Spanned<String>>,
    admin_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFolder {
    source: PathBuf,
    preset: Option<String>,
    exclude: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    to: Vec<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
    bwlimit: Option<Spanned<String>>,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    url: Spanned<String>,
    token_file: PathBuf,
    fingerprint: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    pause_cpu_above: Option<Spanned<f64>>,
    pause_cpu_for: Option<Spanned<String>>,
    pause_memory_below: Option<Spanned<String>>,
    pause_net_above: Option<Spanned<String>>,
    resume_after: Option<Spanned<String>>,
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(&text, path)
}

/// Checks the text of a configuration file; `path` is only for messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| {
        let (line, column) = line_column(text, span.start);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        at(span, e.message().trim().to_string())
    })?;
    let serve = match raw.serve {
        Some(s) => {
            let listen = s.listen.get_ref();
            if listen.parse::<std::net::SocketAddr>().is_err() && !listen.contains(':') {
                return Err(at(
                    s.listen.span(),
                    format!(
                        "serve.listen: {listen:?} is not an address; expected HOST:PORT such as \"0.0.0.0:7878\""
                    ),
                ));
            }
            let push_to = match s.push_to {
                Some(list) => Some(
                    list.iter()
                        .enumerate()
                        .map(|(i, entry)| {
                            crate::transport::authority_of(entry.get_ref()).map_err(|e| {
                                at(
                                    entry.span(),
                                    format!(
                                        "serve.push_to[{i}]: {:?} is not an agent's address ({}); expected HOST:PORT such as \"backup2.example.com:7878\"",
                                        entry.get_ref(),
                                        match e {
                                            crate::transport::TransportError::BadUrl { reason, .. } => reason,
                                            other => other.to_string(),
                                        }
                                    ),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => None,
            };
            let subscribe = match s.subscribe {
                Some(code) => {
                    let parsed = crate::pairing::Pairing::parse(code.get_ref())
                        .map_err(|e| at(code.span(), format!("serve.subscribe: {e}")))?;
                    if !parsed.role.may_read() {
                        return Err(at(
                            code.span(),
                            "serve.subscribe: that is a pairing code, which lets its holder mirror into the agent; give the agent's subscribe code (`rainmaker pair --subscribe` on it)".into(),
                        ));
                    }
                    Some(code.into_inner().trim().to_owned())
                }
                None => None,
            };
            Some(Serve {
                push_to,
                subscribe,
                subscribe_token_file: s.subscribe_token_file,
                root: s.root,
                listen: s.listen.into_inner(),
                token_file: s.token_file,
                insecure: s.insecure,
                name: s.name,
                trash_days: s.trash_days,
                admin_token_file: s.admin_token_file,
            })
        }
        None => None,
    };
    let target_url = |url: &Spanned<String>, key: &str| {
        let value = url.get_ref();
        match crate::transport::Address::parse(value) {
            Ok(_) => Ok(value.clone()),
            Err(e) => Err(at(
                url.span(),
                format!(
                    "{key}: {value:?} is not a target address ({}); expected wss://HOST:PORT",
                    match e {
                        crate::transport::TransportError::BadUrl { reason, .. } => reason,
                        other => other.to_string(),
                    }
                ),
            )),
        }
    };
    let fingerprint = |fp: Option<Spanned<String>>, key: &str| {
        match fp {
        Some(fp) => crate::transport::parse_fingerprint(fp.get_ref())
            .map(Some)
            .ok_or_else(|| {
                at(
                    fp.span(),
                    format!(
                        "{key}: {:?} is not a certificate fingerprint; expected SHA256: and 64 hex digits, as the agent prints it",
                        fp.get_ref()
                    ),
                )
            }),
        None => Ok(None),
    }
    };
    let mut servers: Vec<KnownServer> = Vec::new();
    for (i, s) in raw.server.into_iter().enumerate() {
        let name = s.name.get_ref().trim();
        if name.is_empty() || servers.iter().any(|known| known.name == name) {
            return Err(at(
                s.name.span(),
                format!(
                    "server[{i}].name: {name:?} is empty or used twice; every server needs its own name"
                ),
            ));
        }
        let mut url = match &s.url {
            Some(url) => Some(target_url(url, &format!("server[{i}].url"))?),
            None => None,
        };
        let fp_span = s.fingerprint.as_ref().map(|f| f.span());
        let mut pin = fingerprint(s.fingerprint, &format!("server[{i}].fingerprint"))?;
        // A token file may hold the server's pairing code: its address and pin come with it.
        if let Some(code) = code_in(&s.token_file) {
            let same = |u: &str| u.trim_end_matches('/').eq_ignore_ascii_case(&code.url());
            if let Some(given) = url.as_deref().filter(|u| !same(u)) {
                return Err(at(
                    s.url.as_ref().map_or(s.name.span(), |u| u.span()),
                    format!(
                        "server[{i}].url: {given} is not the agent the pairing code in {} names ({}); correct one of them",
                        s.token_file.display(),
                        code.url()
                    ),
                ));
            }
            if pin.as_ref().is_some_and(|p| *p != code.fingerprint) {
                return Err(at(
                    fp_span.unwrap_or(s.name.span()),
                    format!(
                        "server[{i}].fingerprint is not the certificate the pairing code in {} pins; remove it or correct it",
                        s.token_file.display()
                    ),
                ));
            }
            url = Some(code.url());
            pin = Some(code.fingerprint.clone());
        }
        let Some(url) = url else {
            return Err(at(
                s.name.span(),
                format!(
                    "server[{i}].url is missing: give url = \"wss://HOST:PORT\", or put the server's pairing code (`rainmaker pair` on it) in its token_file"
                ),
            ));
        };
        servers.push(KnownServer {
            name: name.to_string(),
            url,
            token_file: s.token_file,
            fingerprint: pin,
            admin_token_file: s.admin_token_file,
        });
    }
    let mut folders = Vec::new();
    for (i, f) in raw.folder.into_iter().enumerate() {
        let key = |name: &str| format!("folder[{i}].{name}");
        let every = match &f.every {
            Some(every) => Some(humantime::parse_duration(every.get_ref()).map_err(|e| {
                at(
                    every.span(),
                    format!(
                        "{}: {:?} is not a duration ({e}); expected e.g. \"5m\" or \"30s\"",
                        key("every"),
                        every.get_ref()
                    ),
                )
            })?),
            None => None,
        };
        let mode = match f.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("watch", _)) if every.is_none() => Mode::Watch,
            Some(("manual", _)) => Mode::Manual,
            None | Some(("every", _)) => {
                Mode::Every(every.unwrap_or(crate::schedule::DEFAULT_INTERVAL))
            }
            Some(("watch", span)) => {
                return Err(at(
                    span,
                    format!(
                        "{}: \"watch\" does not take an interval; remove `every` or set mode = \"every\"",
                        key("mode")
                    ),
                ));
            }
            Some((other, span)) => {
                return Err(at(
                    span,
                    format!(
                        "{}: {other:?} is not a mode; expected \"watch\", \"every\" or \"manual\"",
                        key("mode")
                    ),
                ));
            }
        };
        let bwlimit = match &f.bwlimit {
            Some(rate) => Some(
                crate::rate::parse_rate(rate.get_ref())
                    .map_err(|e| at(rate.span(), format!("{}: {e}", key("bwlimit"))))?,
            ),
            None => None,
        };
        let exclude = match f.exclude {
            Some(list) => match crate::exclude::Exclude::new(list.get_ref()) {
                Ok(_) => list.into_inner(),
                Err(e) => return Err(at(list.span(), format!("{}: {e}", key("exclude")))),
            },
            None => Vec::new(),
        };
        let mut targets = Vec::new();
        for name in &f.to {
            let Some(server) = servers.iter().find(|s| &s.name == name.get_ref()) else {
                return Err(at(
                    name.span(),
                    format!(
                        "{}: no [[server]] is named {:?}; add one or correct the name",
                        key("to"),
                        name.get_ref()
                    ),
                ));
            };
            targets.push(Target {
                name: Some(server.name.clone()),
                url: server.url.clone(),
                token_file: server.token_file.clone(),
                fingerprint: server.fingerprint.clone(),
            });
        }
        for (j, t) in f.target.into_iter().enumerate() {
            targets.push(Target {
                name: None,
                url: target_url(&t.url, &format!("folder[{i}].target[{j}].url"))?,
                token_file: t.token_file,
                fingerprint: fingerprint(
                    t.fingerprint,
                    &format!("folder[{i}].target[{j}].fingerprint"),
                )?,
            });
        }
        folders.push(Folder {
            source: f.source,
            mode,
            bwlimit,
            exclude,
            preset: f.preset,
            targets,
        });
    }
    let mut guard = GuardSettings::default();
    if let Some(g) = raw.guard {
        let duration = |value: &Spanned<String>, name: &str| {
            humantime::parse_duration(value.get_ref()).map_err(|e| {
                at(
                    value.span(),
                    format!(
                        "guard.{name}: {:?} is not a duration ({e}); expected e.g. \"10s\"",
                        value.get_ref()
                    ),
                )
            })
        };
        if let Some(cpu) = g.pause_cpu_above {
            let value = *cpu.get_ref();
            if !(0.0..=100.0).contains(&value) {
                return Err(at(
                    cpu.span(),
                    format!(
                        "guard.pause_cpu_above: {value} is not a percentage; expected 0 to 100"
                    ),
                ));
            }
            guard.pause_cpu_above = value as f32;
        }
        if let Some(v) = &g.pause_cpu_for {
            guard.pause_cpu_for = duration(v, "pause_cpu_for")?;
        }
        if let Some(v) = &g.resume_after {
            guard.resume_after = duration(v, "resume_after")?;
        }
        if let Some(v) = &g.pause_memory_below {
            let bytes = crate::rate::parse_rate(v.get_ref()).map_err(|e| {
                at(
                    v.span(),
                    format!("guard.pause_memory_below: {e}; expected a size such as \"1GiB\""),
                )
            })?;
            guard.pause_memory_below = Some(bytes as u64);
        }
        if let Some(v) = &g.pause_net_above {
            let rate = crate::rate::parse_rate(v.get_ref())
                .map_err(|e| at(v.span(), format!("guard.pause_net_above: {e}")))?;
            guard.pause_net_above = Some(rate);
        }
    }
    Ok(Config {
        serve,
        servers,
        folders,
        guard,
    })
}

/// Writes `config` as a configuration file that [`parse`] reads back to the same value; what
/// the tray app saves. Comments of a hand-written file are not kept, so the file says so.
pub fn render(config: &Config) -> String {
    use toml::{Table, Value};
    fn text(value: impl ToString) -> Value {
        Value::String(value.to_string())
    }
    fn path(value: &Path) -> Value {
        text(value.to_string_lossy())
    }
    let duration = |d: Duration| text(humantime::format_duration(d));
    let mut root = Table::new();
    if let Some(serve) = &config.serve {
        let mut t = Table::new();
        t.insert("root".into(), path(&serve.root));
        t.insert("listen".into(), text(&serve.listen));
        t.insert("token_file".into(), path(&serve.token_file));
        if serve.insecure {
            t.insert("insecure".into(), Value::Boolean(true));
        }
        if let Some(name) = &serve.name {
            t.insert("name".into(), text(name));
        }
        if let Some(days) = serve.trash_days {
            t.insert("trash_days".into(), Value::Integer(i64::from(days)));
        }
        if let Some(admin) = &serve.admin_token_file {
            t.insert("admin_token_file".into(), path(admin));
        }
        if let Some(list) = &serve.push_to {
            t.insert(
                "push_to".into(),
                Value::Array(list.iter().map(text).collect()),
            );
        }
        if let Some(file) = &serve.subscribe_token_file {
            t.insert("subscribe_token_file".into(), path(file));
        }
        if let Some(code) = &serve.subscribe {
            t.insert("subscribe".into(), text(code));
        }
        root.insert("serve".into(), Value::Table(t));
    }
    let servers: Vec<Value> = config
        .servers
        .iter()
        .map(|s| {
            let mut t = Table::new();
            t.insert("name".into(), text(&s.name));
            t.insert("url".into(), text(&s.url));
            t.insert("token_file".into(), path(&s.token_file));
            if let Some(fp) = &s.fingerprint {
                t.insert("fingerprint".into(), text(fp));
            }
            if let Some(admin) = &s.admin_token_file {
                t.insert("admin_token_file".into(), path(admin));
            }
            Value::Table(t)
        })
        .collect();
    if !servers.is_empty() {
        root.insert("server".into(), Value::Array(servers));
    }
    let folders: Vec<Value> = config
        .folders
        .iter()
        .map(|f| {
            let mut t = Table::new();
            t.insert("source".into(), path(&f.source));
            if let Some(preset) = &f.preset {
                t.insert("preset".into(), text(preset));
            }
            match f.mode {
                Mode::Manual => {
                    t.insert("mode".into(), text("manual"));
                }
                Mode::Watch => {
                    t.insert("mode".into(), text("watch"));
                }
                Mode::Every(every) => {
                    t.insert("mode".into(), text("every"));
                    t.insert("every".into(), duration(every));
                }
            }
            if let Some(rate) = f.bwlimit {
                t.insert("bwlimit".into(), text(format_rate(rate)));
            }
            if !f.exclude.is_empty() {
                t.insert(
                    "exclude".into(),
                    Value::Array(f.exclude.iter().map(text).collect()),
                );
            }
            let named: Vec<Value> = f
                .targets
                .iter()
                .filter_map(|t| t.name.as_ref().map(text))
                .collect();
            t.insert("to".into(), Value::Array(named));
            let inline: Vec<Value> = f
                .targets
                .iter()
                .filter(|t| t.name.is_none())
                .map(|target| {
                    let mut t = Table::new();
                    t.insert("url".into(), text(&target.url));
                    t.insert("token_file".into(), path(&target.token_file));
                    if let Some(fp) = &target.fingerprint {
                        t.insert("fingerprint".into(), text(fp));
                    }
                    Value::Table(t)
                })
                .collect();
            if !inline.is_empty() {
                t.insert("target".into(), Value::Array(inline));
            }
            Value::Table(t)
        })
        .collect();
    if !folders.is_empty() {
        root.insert("folder".into(), Value::Array(folders));
    }
    let g = &config.guard;
    let mut guard = Table::new();
    guard.insert(
        "pause_cpu_above".into(),
        Value::Float(f64::from(g.pause_cpu_above)),
    );
    guard.insert("pause_cpu_for".into(), duration(g.pause_cpu_for));
    if let Some(bytes) = g.pause_memory_below {
        guard.insert("pause_memory_below".into(), text(format!("{bytes}B")));
    }
    if let Some(rate) = g.pause_net_above {
        guard.insert("pause_net_above".into(), text(format_rate(rate)));
    }
    guard.insert("resume_after".into(), duration(g.resume_after));
    root.insert("guard".into(), Value::Table(guard));
    format!(
        "# RainMaker configuration, saved by the RainMaker tray app (comments are not kept).\n\
         # Check it with `rainmaker config check`.\n\n{}",
        toml::to_string(&root).unwrap_or_default()
    )
}

/// A rate as people write it, exact enough to read back: `20Mbit`, `512kbit`, or bytes.
fn format_rate(bytes_per_second: f64) -> String {
    let bits = bytes_per_second * 8.0;
    if bits >= 1e6 && (bits / 1e6).fract() == 0.0 {
        format!("{}Mbit", bits / 1e6)
    } else if bits >= 1e3 && (bits / 1e3).fract() == 0.0 {
        format!("{}kbit", bits / 1e3)
    } else {
        format!("{bytes_per_second}B")
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The commented starting file `rainmaker init` writes.
pub const TEMPLATE: &str = r#"# RainMaker configuration. Check it with `rainmaker config check`.
# Command-line flags override what is set here.

# This machine receives mirrors (a backup server). Remove this section on the trading PC.
[serve]
root = "/srv/rainmaker/NinjaTrader 8"   # the folder that receives the mirror; it must exist
listen = "0.0.0.0:7878"                  # address and port to listen on
token_file = "/etc/rainmaker/token"      # the pairing secret sources present
# name = "backup-1"                      # shown to sources (default: the host name)
# trash_days = 7                         # days deleted and replaced files are kept (0: not kept)
# admin_token_file = "/etc/rainmaker/admin-token"  # lets the dashboard command this agent
# push_to = ["backup2.example.com:7878"]  # the only agents the admin token may push this folder to
# subscribe_token_file = "/etc/rainmaker/subscribe-token"  # lets servers behind NAT receive this folder
# subscribe = "rainmaker-subscribe://cloud-a.example.com:7878#SHA256:.../..."  # this machine is
#                                        # behind NAT: it dials that agent and receives its folder

# A folder this machine mirrors to others (the trading PC). Repeat [[folder]] for more.
# [[folder]]
# source = "C:/Users/me/Documents/NinjaTrader 8"
# mode = "watch"            # "watch" (every change), "every" (schedule) or "manual"
# every = "5m"              # with mode = "every"; 5 minutes is the recommended minimum
# bwlimit = "20Mbit"        # cap on RainMaker's own traffic, all targets together
#
# [[folder.target]]
# url = "wss://backup1.example.com:7878"
# token_file = "C:/Users/me/rainmaker.token"
# fingerprint = "SHA256:..." # as the agent printed it; without it the first connection is trusted

# When sync pauses to stay out of the trading platform's way.
[guard]
pause_cpu_above = 85        # percent of all cores
pause_cpu_for = "10s"       # ... for this long
# pause_memory_below = "1GiB"
# pause_net_above = "50Mbit" # traffic that is not RainMaker's
resume_after = "15s"        # every condition clear this long before sync resumes
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(windows)]
    #[test]
    fn the_configuration_file_is_under_appdata() {
        if std::env::var_os("RAINMAKER_CONFIG").is_some() {
            return;
        }
        let roaming = std::env::var_os("APPDATA").expect("Windows sets %APPDATA%");
        assert_eq!(
            default_path(),
            Path::new(&roaming).join("rainmaker").join("rainmaker.toml"),
            "the configuration follows the user: %APPDATA%\\rainmaker\\rainmaker.toml"
        );
    }

    fn error(text: &str) -> (usize, usize, String) {
        match parse(text, Path::new("rainmaker.toml")) {
            Err(ConfigError::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn the_template_is_valid() {
        let config = parse(TEMPLATE, Path::new("t")).unwrap();
        assert_eq!(config.serve.unwrap().listen, "0.0.0.0:7878");
        assert_eq!(config.guard, GuardSettings::default());
    }

    #[test]
    fn a_full_file_reads_back() {
        let config = parse(
            r#"
[[folder]]
source = "/data/NT8"
mode = "every"
every = "2m"
bwlimit = "20Mbit"
[[folder.target]]
url = "wss://b1:7878"
token_file = "/t"
fingerprint = "SHA256:0000000000000000000000000000000000000000000000000000000000000000"
[guard]
pause_memory_below = "1GiB"
"#,
            Path::new("t"),
        )
        .unwrap();
        let folder = &config.folders[0];
        assert_eq!(folder.mode, Mode::Every(Duration::from_secs(120)));
        assert_eq!(folder.bwlimit, Some(2.5e6));
        assert_eq!(config.guard.pause_memory_below, Some(1 << 30));
    }

    const SERVERS: &str = r#"
[[server]]
name = "cloud-a"
url = "wss://10.0.0.1:7878"
token_file = "/tokens/a"
fingerprint = "SHA256:1111111111111111111111111111111111111111111111111111111111111111"
[[server]]
name = "office"
url = "wss://office:7878"
token_file = "/tokens/o"
admin_token_file = "/tokens/o.admin"
"#;

    #[test]
    fn folders_name_their_targets_among_the_servers() {
        let text = format!(
            "{SERVERS}[[folder]]\nsource = \"/nt8\"\npreset = \"ninjatrader8\"\nexclude = [\"cache\", \"*.log\"]\nto = [\"office\"]\n[[folder.target]]\nurl = \"wss://x:1\"\ntoken_file = \"/t\"\n"
        );
        let config = parse(&text, Path::new("t")).unwrap();
        assert_eq!(config.servers.len(), 2);
        let folder = &config.folders[0];
        assert_eq!(folder.exclude, ["cache", "*.log"]);
        assert_eq!(folder.preset.as_deref(), Some("ninjatrader8"));
        let urls: Vec<_> = folder.targets.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            ["wss://office:7878", "wss://x:1"],
            "named servers, then inline targets"
        );
        assert_eq!(folder.targets[0].name.as_deref(), Some("office"));

        let (line, _, message) = error(&format!(
            "{SERVERS}[[folder]]\nsource = \"/s\"\nto = [\"ofice\"]\n"
        ));
        assert_eq!(line, 14, "{message}");
        assert!(
            message.contains("folder[0].to") && message.contains("\"ofice\""),
            "{message}"
        );
        let (_, _, message) = error(&format!(
            "{SERVERS}[[server]]\nname = \"office\"\nurl = \"wss://b:1\"\ntoken_file = \"/t\"\n"
        ));
        assert!(
            message.contains("server[2].name") && message.contains("twice"),
            "{message}"
        );
        let (line, _, message) = error("[[folder]]\nsource = \"/s\"\nexclude = [\"../up\"]\n");
        assert_eq!(line, 3);
        assert!(
            message.contains("folder[0].exclude") && message.contains("inside the folder"),
            "{message}"
        );
    }

    #[test]
    fn a_server_may_be_given_by_the_pairing_code_in_its_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let fp = format!("SHA256:{}", "ab".repeat(32));
        let code = format!("rainmaker://backup1:7878#{fp}/s3cret-token-of-enough-length\n");
        let file = dir.path().join("backup1.code");
        std::fs::write(&file, &code).unwrap();
        let text = format!(
            "[[server]]\nname = \"backup1\"\ntoken_file = {:?}\n",
            file.display().to_string()
        );
        let config = parse(&text, Path::new("t")).unwrap();
        let server = &config.servers[0];
        assert_eq!(
            server.url, "wss://backup1:7878",
            "the address comes from the code"
        );
        assert_eq!(
            server.fingerprint.as_deref(),
            Some(fp.as_str()),
            "and the pin, before any token is sent"
        );
        assert_eq!(read_token(&file).unwrap(), "s3cret-token-of-enough-length");

        let other = format!("{text}url = \"wss://elsewhere:7878\"\n");
        let message = parse(&other, Path::new("t")).unwrap_err().to_string();
        assert!(
            message.contains("server[0].url") && message.contains("pairing code"),
            "an address that is not the code's is refused: {message}"
        );
        let pinned_elsewhere = format!("{text}fingerprint = \"SHA256:{}\"\n", "cd".repeat(32));
        let message = parse(&pinned_elsewhere, Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("server[0].fingerprint"), "{message}");

        std::fs::write(&file, "plain-token-without-a-code-here").unwrap();
        let message = parse(&text, Path::new("t")).unwrap_err().to_string();
        assert!(
            message.contains("server[0].url is missing") && message.contains("pairing code"),
            "{message}"
        );
    }

    #[test]
    fn what_render_writes_parses_back_to_the_same_configuration() {
        let text = format!(
            "[serve]\nroot = \"/srv\"\nlisten = \"0.0.0.0:7878\"\ntoken_file = \"/t\"\ntrash_days = 3\npush_to = [\"b2:7878\", \"wss://[::1]:9\"]\n{SERVERS}\
             [[folder]]\nsource = \"/nt8\"\nmode = \"every\"\nevery = \"7m 30s\"\nbwlimit = \"20Mbit\"\nexclude = [\"cache\"]\nto = [\"cloud-a\", \"office\"]\n\
             [[folder]]\nsource = \"/mt5\"\nmode = \"manual\"\nbwlimit = \"1234B\"\n[[folder.target]]\nurl = \"wss://x:1\"\ntoken_file = \"/t\"\n\
             [guard]\npause_cpu_above = 70.5\npause_memory_below = \"1GiB\"\npause_net_above = \"8Mbit\"\nresume_after = \"1m\"\n"
        );
        let config = parse(&text, Path::new("t")).unwrap();
        let written = render(&config);
        let again =
            parse(&written, Path::new("written")).unwrap_or_else(|e| panic!("{e}\n{written}"));
        assert_eq!(
            again, config,
            "render then parse is the identity:\n{written}"
        );
        assert_eq!(
            parse(&render(&Config::default()), Path::new("d")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn every_error_names_the_place_the_key_and_what_was_expected() {
        let (line, column, message) = error(
            "[serve]\nroot = \"/r\"\nlisten = \"0.0.0.0:1\"\ntoken_file = \"/t\"\nbwlimt = 3\n",
        );
        assert_eq!((line, column), (5, 1), "{message}");
        assert!(
            message.contains("bwlimt") && message.contains("expected"),
            "{message}"
        );

        let (line, _, message) = error(
            "[[folder]]\nsource = \"/s\"\nevery = \"soon\"\n[[folder.target]]\nurl = \"wss://a:1\"\ntoken_file = \"/t\"\n",
        );
        assert_eq!(line, 3);
        assert!(
            message.contains("folder[0].every") && message.contains("\"5m\""),
            "{message}"
        );

        let (line, _, message) = error(
            "[[folder]]\nsource = \"/s\"\n[[folder.target]]\nurl = \"http://a\"\ntoken_file = \"/t\"\n",
        );
        assert_eq!(line, 4);
        assert!(
            message.contains("folder[0].target[0].url") && message.contains("wss://"),
            "{message}"
        );

        let (line, column, message) = error(
            "[serve]\nroot = \"/r\"\nlisten = \"0.0.0.0:1\"\ntoken_file = \"/t\"\npush_to = [\"b2:7878\", \"b3\"]\n",
        );
        assert_eq!((line, column), (5, 23), "{message}");
        assert!(
            message.contains("serve.push_to[1]") && message.contains("HOST:PORT"),
            "{message}"
        );

        let (line, _, message) = error("[guard]\npause_cpu_above = 120\n");
        assert_eq!(line, 2);
        assert!(message.contains("0 to 100"), "{message}");

        let (line, _, message) = error("[serve]\nroot = 5\n");
        assert_eq!(line, 2);
        assert!(
            message.contains("string") || message.contains("path"),
            "{message}"
        );

        let (_, _, message) = error(
            "[[folder]]\nsource = \"/s\"\nmode = \"sometimes\"\n[[folder.target]]\nurl = \"wss://a:1\"\ntoken_file = \"/t\"\n",
        );
        assert!(
            message.contains("\"watch\", \"every\" or \"manual\""),
            "{message}"
        );
    }
}
