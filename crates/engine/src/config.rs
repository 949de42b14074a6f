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
    pub folders: Vec<Folder>,
    pub guard: Guard,
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
}

/// `[[folder]]`: a folder this machine mirrors to targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Folder {
    pub source: PathBuf,
    pub mode: Mode,
    pub bwlimit: Option<f64>,
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
    pub url: String,
    pub token_file: PathBuf,
    pub fingerprint: Option<String>,
}

/// `[guard]`: when sync pauses.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub pause_cpu_above: f32,
    pub pause_cpu_for: Duration,
    pub pause_memory_below: Option<u64>,
    pub pause_net_above: Option<f64>,
    pub resume_after: Duration,
}

impl Default for Guard {
    fn default() -> Guard {
        let t = crate::guard::Thresholds::default();
        Guard {
            pause_cpu_above: t.cpu_above,
            pause_cpu_for: t.cpu_window,
            pause_memory_below: t.memory_below,
            pause_net_above: t.traffic_above,
            resume_after: t.hold,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFolder {
    source: PathBuf,
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
            Some(Serve {
                root: s.root,
                listen: s.listen.into_inner(),
                token_file: s.token_file,
                insecure: s.insecure,
                name: s.name,
                trash_days: s.trash_days,
            })
        }
        None => None,
    };
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
        if f.target.is_empty() {
            return Err(at(
                0..0,
                format!(
                    "{}: a folder needs at least one [[folder.target]] with url and token_file",
                    key("target")
                ),
            ));
        }
        let mut targets = Vec::new();
        for (j, t) in f.target.into_iter().enumerate() {
            let url = t.url.get_ref();
            if !(url.starts_with("wss://") || url.starts_with("ws://")) {
                return Err(at(
                    t.url.span(),
                    format!(
                        "folder[{i}].target[{j}].url: {url:?} is not a target address; expected wss://HOST:PORT"
                    ),
                ));
            }
            let fingerprint = match t.fingerprint {
                Some(fp) => Some(crate::transport::parse_fingerprint(fp.get_ref()).ok_or_else(|| {
                    at(
                        fp.span(),
                        format!("folder[{i}].target[{j}].fingerprint: {:?} is not a certificate fingerprint; expected SHA256: and 64 hex digits, as the agent prints it", fp.get_ref()),
                    )
                })?),
                None => None,
            };
            targets.push(Target {
                url: t.url.into_inner(),
                token_file: t.token_file,
                fingerprint,
            });
        }
        folders.push(Folder {
            source: f.source,
            mode,
            bwlimit,
            targets,
        });
    }
    let mut guard = Guard::default();
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
        folders,
        guard,
    })
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
        assert_eq!(config.guard, Guard::default());
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
