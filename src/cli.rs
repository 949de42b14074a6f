//! The command line: subcommands and flags, nothing else. The three core commands are
//! stable (scripts and benchmarks rely on them):
//! `serve --root --listen --token-file`, `push SRC --to URL... --token-file --once`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Keeps backup servers a hot mirror of a trading PC's platform folders.
#[derive(Debug, Parser)]
#[command(name = "rainmaker", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The configuration file (default: rainmaker.toml in the OS's configuration folder, or
    /// RAINMAKER_CONFIG). Flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How logs on stderr look: `text` for people, `json` (one object per line) for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also write logs to a file in DIR, a new one each day, the last 14 kept (the service
    /// uses the OS's log folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive mirrors into a folder (run this on each backup server).
    Serve(ServeArgs),
    /// Print this agent's pairing code: its address, certificate fingerprint and token in one
    /// string, for `push --to`, `remote --agent`, rainmaker.toml and the tray's Add server.
    Pair(PairArgs),
    /// Mirror a folder to one or more targets.
    Push(PushArgs),
    /// Show the pushes running on this machine: each target's state, lag, last sync and the
    /// bytes still to send.
    Status(StatusArgs),
    /// Command an agent over its connection: its folder's state, pushes to other agents,
    /// pause, resume, stop, events, promote and demote (needs its admin token).
    Remote(RemoteArgs),
    /// Serve and mirror what the configuration file says (what the service runs).
    Run,
    /// Run RainMaker at boot: a systemd unit on Linux, a launchd agent on macOS, a Windows
    /// service on Windows.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List or restore what mirrors deleted or replaced on this target.
    #[command(subcommand)]
    Trash(TrashCommand),
    /// Write a commented configuration file to start from.
    Init(InitArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show RainMaker on this machine: start a target on loopback, mirror a sample platform
    /// folder to it, change the folder, mirror again.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder that receives the mirror; it must exist. (Or `[serve] root` in the config.)
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:7878. (Or `[serve] listen`.)
    #[arg(long)]
    pub listen: Option<String>,
    /// File holding the pairing token sources must present. (Or `[serve] token_file`.)
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Plain ws:// without TLS; refused on any address but loopback.
    #[arg(long)]
    pub insecure: bool,
    /// Name shown to sources (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Days deleted and replaced files are kept in ROOT/.rainmaker/trash (0: not kept).
    #[arg(long, value_name = "DAYS")]
    pub trash_days: Option<u32>,
    /// File holding the admin token, which also lets a client command this agent
    /// (`rainmaker remote`); without it the agent takes no commands. (Or `[serve]
    /// admin_token_file`.)
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The only agent (HOST:PORT) an admin client may tell this one to push its folder to;
    /// repeat for several. Without it (and without `[serve] push_to`), any agent whose
    /// fingerprint the admin client gives.
    #[arg(long, value_name = "HOST:PORT")]
    pub push_to: Vec<String>,
    /// File holding the subscribe token, which lets a peer receive this agent's folder over a
    /// connection it opens (a server behind NAT); without it only an admin client may. (Or
    /// `[serve] subscribe_token_file`.)
    #[arg(long)]
    pub subscribe_token_file: Option<PathBuf>,
    /// Receive ROOT from another agent by dialing it, for a machine nobody can reach (behind
    /// NAT): that agent's subscribe code (`rainmaker pair --subscribe` on it). (Or `[serve]
    /// subscribe`.)
    #[arg(long, value_name = "CODE")]
    pub subscribe: Option<String>,
}

#[derive(Debug, Args)]
pub struct PairArgs {
    /// The folder the agent serves (where its certificate is). (Or `[serve] root`.)
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The address it listens on. (Or `[serve] listen`.)
    #[arg(long)]
    pub listen: Option<String>,
    /// Its pairing token file. (Or `[serve] token_file`.)
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the admin code instead (`rainmaker-admin://...`, for `remote --agent` and the
    /// tray): it lets its holder command this agent.
    #[arg(long)]
    pub admin: bool,
    /// The admin token file, with --admin. (Or `[serve] admin_token_file`.)
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Print the subscribe code instead (`rainmaker-subscribe://...`, for `serve --subscribe`
    /// on a server behind NAT): it lets its holder receive this agent's folder.
    #[arg(long, conflicts_with = "admin")]
    pub subscribe: bool,
    /// The subscribe token file, with --subscribe. (Or `[serve] subscribe_token_file`.)
    #[arg(long)]
    pub subscribe_token_file: Option<PathBuf>,
    /// The host sources reach this agent by (default: the listen address, or this machine's
    /// host name when it listens on every interface), e.g. a public name or address.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("mode").args(["once", "watch", "every"]))]
pub struct PushArgs {
    /// Folder to mirror. Without it, every [[folder]] of the configuration file is mirrored.
    #[arg(requires = "to")]
    pub source: Option<PathBuf>,
    /// Target agent: its pairing code (`rainmaker pair` prints it there), or wss://HOST:PORT
    /// with --fingerprint and --token-file; repeat for several targets.
    #[arg(long, value_name = "CODE|URL")]
    pub to: Vec<String>,
    /// File holding the pairing token of the targets given by address (a pairing code
    /// carries its own).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Mirror once and exit: 0 when every target verified it is identical, 1 when a target
    /// failed, 3 when every target is identical but some source files could not be read.
    #[arg(long, group = "mode")]
    pub once: bool,
    /// Mirror continuously: every change is on the targets within moments; runs until
    /// stopped (Ctrl-C, SIGTERM).
    #[arg(long, group = "mode")]
    pub watch: bool,
    /// Mirror on a schedule, every INTERVAL (5m when not given; e.g. 30s, 10m, 1h); runs
    /// until stopped. Below 5 minutes it warns unless the machine can afford it.
    #[arg(long, group = "mode", value_name = "INTERVAL", num_args = 0..=1,
          default_missing_value = "5m", value_parser = humantime::parse_duration)]
    pub every: Option<std::time::Duration>,
    /// With --watch: also rescan this often, in case the file system dropped a change.
    #[arg(long, value_name = "INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub rescan_every: std::time::Duration,
    /// Print a JSON summary on stdout (with --watch or --every: one JSON line per event,
    /// e.g. `{"event":"synced","target":...,"files_sent":1,"bytes_changed":2000,"wire_bytes":2300,...}`).
    #[arg(long)]
    pub json: bool,
    /// Pin a target's certificate fingerprint (SHA256:...), one per --to given as an address,
    /// in the same order. Without it a target must be in the known-peers file.
    #[arg(long)]
    pub fingerprint: Vec<String>,
    /// Trust a target that is neither pinned nor known on its first answer, and remember its
    /// fingerprint: its token goes to whoever answers, so only on a network you trust.
    #[arg(long)]
    pub trust_first_use: bool,
    /// Known-peers file (default: in RainMaker's data folder).
    #[arg(long)]
    pub known_peers: Option<PathBuf>,
    /// Folder for this source's index (default: in RainMaker's data folder).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Allow plain ws:// targets (loopback tests only).
    #[arg(long)]
    pub insecure: bool,
    /// Compress blocks with zstd: `auto` chooses per target, measuring as it sends (none, zstd
    /// -4, 1 or 3: whatever moves the data fastest; uncompressed on loopback to start with);
    /// `always` is zstd 1.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,
    /// Cap RainMaker's own traffic to all targets together, e.g. 20Mbit, 2MB, 500KiB (per
    /// second), so sync never crowds the trading connection.
    #[arg(long, value_name = "RATE", value_parser = rainmaker_engine::rate::parse_rate)]
    pub bwlimit: Option<f64>,
    /// With --watch or --every: pause while system-wide CPU use stays above PERCENT for
    /// --pause-cpu-for.
    #[arg(long, value_name = "PERCENT", default_value_t = 85.0)]
    pub pause_cpu_above: f32,
    /// How long the CPU must stay above --pause-cpu-above before sync pauses.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub pause_cpu_for: std::time::Duration,
    /// Pause while the memory available to programs is below SIZE (e.g. 1GiB, 512MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub pause_memory_below: Option<u64>,
    /// Pause while network traffic that is not RainMaker's is above RATE (e.g. 50Mbit).
    #[arg(long, value_name = "RATE", value_parser = rainmaker_engine::rate::parse_rate)]
    pub pause_net_above: Option<f64>,
    /// Resume only after every condition stayed clear this long.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub resume_after: std::time::Duration,
    /// A sync that would delete more than PERCENT of a target's files (and at least 10) stops
    /// and asks: a wiped or unmounted source must not wipe every backup.
    #[arg(long, value_name = "PERCENT", default_value_t = 50)]
    pub max_delete: u8,
    /// Confirm a sync that deletes more than --max-delete of a target's files.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Leave out paths that match PATTERN (repeatable): `*.log` or `cache` match a name at any
    /// depth, `db/cache` a path from the source's root.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Seconds a target may make no progress before it is reported as failed.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub stall_timeout: u64,
}

/// The format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// When blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum TrashCommand {
    /// The batches in the trash of a target folder, with their files.
    List {
        /// The target folder (the --root of its agent).
        #[arg(long)]
        root: PathBuf,
    },
    /// Copy the files of a batch into a folder (never over a file).
    Restore {
        #[arg(long)]
        root: PathBuf,
        /// The batch, as `trash list` names it.
        batch: String,
        /// Where to put the files.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install and start the service (as root on Linux).
    Install {
        /// The user the service runs as (default: the one who runs this, through sudo too).
        #[arg(long)]
        user: Option<String>,
    },
    /// Stop and remove the service.
    Uninstall,
    /// Show the service manager's view of it.
    Status,
    /// What the Windows service manager starts (`install` registers it); not for a shell.
    #[command(hide = true)]
    Run,
    /// Print the systemd unit that `install` writes (for packages and for checking).
    Unit {
        #[arg(long)]
        user: Option<String>,
        /// The binary the unit starts (default: this one), e.g. /usr/bin/rainmaker in a package.
        #[arg(long)]
        exe: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration file: every error with its line, column and key.
    Check,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (an array of running pushes) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's folders in this folder instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Parses a size such as `1GiB`, `512MB` or `4096` (bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    // A size is a rate of one second: reuse the rate parser's units, bytes only.
    if text.trim_end().ends_with("bit") || text.trim_end().ends_with('b') {
        return Err(format!(
            "{text:?}: give a size in bytes, e.g. 1GiB or 512MB"
        ));
    }
    rainmaker_engine::rate::parse_rate(text).map(|bytes| bytes as u64)
}

#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The agent to command: its admin code (`rainmaker pair --admin` prints it there), or
    /// wss://HOST:PORT with --fingerprint and --admin-token-file.
    #[arg(long, value_name = "CODE|URL")]
    pub agent: String,
    /// File holding the agent's admin token (an admin code carries it).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The agent's certificate fingerprint; without it the known-peers file is used.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Trust the agent on its first answer when it is neither pinned nor known (its admin
    /// token goes to whoever answers).
    #[arg(long)]
    pub trust_first_use: bool,
    /// Known-peers file (default: RainMaker's data folder).
    #[arg(long)]
    pub known_peers: Option<PathBuf>,
    #[command(subcommand)]
    pub action: RemoteAction,
}

#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// The agent's folder: role (target or source), files, newest change, pushes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Push the agent's folder to other agents (once, or --watch to keep mirroring). Each
    /// target must be pinned: give its pairing code, or its address with its fingerprint.
    Push {
        /// Target agent: its pairing code, or wss://HOST:PORT; repeat for several.
        #[arg(long, required = true, value_name = "CODE|URL")]
        to: Vec<String>,
        /// File holding the pairing token of the targets given by address (one for all, or
        /// one per such --to).
        #[arg(long)]
        target_token_file: Vec<PathBuf>,
        /// The certificate fingerprint of each target given by address, in order.
        #[arg(long)]
        target_fingerprint: Vec<String>,
        /// Allow plain ws:// targets, which the agent accepts on its own loopback only.
        #[arg(long)]
        insecure: bool,
        #[arg(long)]
        watch: bool,
        /// Print the push's events until it ends; exit 0 only when every target is identical.
        #[arg(long)]
        follow: bool,
    },
    /// Stop a push cleanly; `resume` goes on from what arrived.
    Pause {
        job: u64,
    },
    Resume {
        job: u64,
    },
    /// Stop a push for good.
    Stop {
        job: u64,
    },
    /// Print the agent's events (JSON lines) until interrupted.
    Events,
    /// Make the agent the source of its folder (after a failover): it stops receiving.
    Promote {
        /// Even if a source mirrored into it within the last minute.
        #[arg(long)]
        force: bool,
    },
    /// Make the agent a target again (after failback).
    Demote,
    /// The batches of the agent's trash: what each session deleted or replaced there.
    Trash {
        #[arg(long)]
        json: bool,
    },
    /// Take a batch of the agent's trash back into a folder here (a new or empty one), over
    /// the connection this machine opens. Exit 0 when it holds exactly the batch.
    Restore {
        /// The batch's name, as `trash` lists it.
        batch: String,
        #[arg(long)]
        into: PathBuf,
    },
    /// Take the agent's folder back into a folder here (after a failover, once the trading PC
    /// is back), over the connection this machine opens: nothing needs to reach this machine.
    /// Exit 0 when the folder here is then identical to the agent's.
    Failback {
        /// The folder that receives (this PC's platform folder); what it replaces or deletes is
        /// kept in its .rainmaker/trash.
        #[arg(long)]
        into: PathBuf,
        /// Days replaced and deleted files are kept in the trash (0: not kept).
        #[arg(long, value_name = "DAYS")]
        trash_days: Option<u32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_s_defaults_are_the_engine_s() {
        let Command::Push(push) = Cli::parse_from(["rainmaker", "push"]).command else {
            panic!("`push` parses as a push");
        };
        assert_eq!(
            push.rescan_every,
            rainmaker_engine::app::mirror::WATCH_RESCAN
        );
        assert_eq!(
            push.stall_timeout,
            rainmaker_engine::engine::STALL_TIMEOUT.as_secs()
        );
        assert_eq!(
            f64::from(push.max_delete) / 100.0,
            rainmaker_engine::app::mirror::MASS_DELETE_SHARE
        );
    }
}
