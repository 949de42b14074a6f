//! What RainMaker's end-to-end tests share: a [`Sandbox`] of folders that stands in for the
//! user's home, an [`Agent`] (a real `rainmaker serve` process on loopback), a [`Push`]
//! builder that runs `rainmaker push --once --json`, and [`tree`] / [`assert_same_tree`] to
//! compare a source folder with a target root.
//!
//! Every process is started from the binary cargo built for these tests, with
//! `RAINMAKER_DATA_DIR`, `HOME` and the push's `--state-dir` / `--known-peers` inside the
//! sandbox, so a test never reads or writes the real data folder. Every wait is bounded: a
//! process that hangs is killed and the test fails with what it printed.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

mod tree;

use rand::{RngCore, SeedableRng, rngs::SmallRng};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use tree::{Node, tree, tree_diff};

/// The block size of the protocol (128 KiB).
pub const BLOCK: usize = 128 * 1024;
/// A well-formed fingerprint no agent has (for targets that are down anyway).
pub const SOME_FINGERPRINT: &str =
    "SHA256:0000000000000000000000000000000000000000000000000000000000000000";
/// Longest a `rainmaker push` may run before a test gives up on it.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest an agent may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The `rainmaker` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_rainmaker")
}

/// A temporary folder holding everything one test touches: source and target folders, the
/// token file, the push's state folder and known-peers file, and RainMaker's data folder.
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("rainmaker-e2e-")
            .tempdir()
            .expect("create the sandbox folder");
        for sub in ["data", "state", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let token: String = random_bytes(rand::random(), 24)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        // As the README makes it: readable by its owner only (the agent warns otherwise).
        chmod(&dir.path().join("token"), 0o600);
        Sandbox { dir }
    }

    /// A path inside the sandbox (not created).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A folder inside the sandbox, created.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    pub fn token_file(&self) -> PathBuf {
        self.path("token")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn known_peers(&self) -> PathBuf {
        self.path("known_peers")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// A `rainmaker` command whose data folder and home are inside the sandbox.
    pub fn command(&self) -> Command {
        let mut command = Command::new(binary());
        command
            .env("RAINMAKER_DATA_DIR", self.path("data"))
            .env("HOME", self.path("home"))
            .env("XDG_DATA_HOME", self.path("home"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Starts `rainmaker serve` over wss on a free loopback port.
    pub fn serve(&self, root: &Path) -> Agent {
        self.serve_with(root, 0, false)
    }

    /// Starts `rainmaker serve` over wss on `127.0.0.1:port`.
    pub fn serve_on(&self, root: &Path, port: u16) -> Agent {
        self.serve_with(root, port, false)
    }

    /// Starts `rainmaker serve --insecure` (plain ws://) on a free loopback port.
    pub fn serve_insecure(&self, root: &Path) -> Agent {
        self.serve_with(root, 0, true)
    }

    /// Starts an agent from a command built by the test (for flags the helpers do not set).
    pub fn start_agent(&self, command: Command) -> Agent {
        Agent::start(command, false).unwrap_or_else(|log| panic!("the agent did not start:\n{log}"))
    }

    fn serve_with(&self, root: &Path, port: u16, insecure: bool) -> Agent {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut command = self.command();
            command
                .arg("serve")
                .arg("--root")
                .arg(root)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--token-file")
                .arg(self.token_file())
                .arg("--name")
                .arg("e2e-target");
            if insecure {
                command.arg("--insecure");
            }
            match Agent::start(command, insecure) {
                Ok(mut agent) => {
                    if !insecure {
                        agent.code = Some(self.pair(root, agent.port()));
                    }
                    return agent;
                }
                // A fixed port may still be held by the agent that was just stopped.
                Err(log) if port != 0 && log.contains("cannot listen") => {
                    assert!(
                        Instant::now() < deadline,
                        "the agent could not listen on port {port} again within \
                         {START_TIMEOUT:?}:\n{log}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("`rainmaker serve` did not start:\n{log}"),
            }
        }
    }

    /// `rainmaker pair` for the agent serving `root` on `127.0.0.1:port` with this sandbox's
    /// token: its pairing code.
    pub fn pair(&self, root: &Path, port: u16) -> String {
        let mut command = self.command();
        command
            .arg("pair")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(self.token_file());
        let (code, stdout, stderr) = run_bounded(command, Duration::from_secs(10));
        assert_eq!(code, 0, "`rainmaker pair` failed:\n{stdout}\n{stderr}");
        let line = stdout.trim();
        assert!(
            line.starts_with("rainmaker://") && !line.contains(char::is_whitespace),
            "`rainmaker pair` prints one code on stdout, got {stdout:?}"
        );
        line.to_owned()
    }

    /// A secret file `name` in the sandbox holding `value`, readable by its owner only.
    pub fn secret(&self, name: &str, value: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, value).unwrap();
        chmod(&path, 0o600);
        path
    }

    /// The admin token file of this sandbox's agents, made on first use, readable by its owner
    /// only.
    pub fn admin_token_file(&self) -> PathBuf {
        let path = self.path("admin.token");
        if !path.exists() {
            std::fs::write(&path, "admin-secret-for-the-tests-0123456789").unwrap();
            chmod(&path, 0o600);
        }
        path
    }

    /// `rainmaker serve` on loopback, named `cloud`, with the pairing token, the admin token
    /// ([`Sandbox::admin_token_file`]), `extra` flags and `env`.
    pub fn serve_admin(&self, root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut command = self.command();
        command
            .arg("serve")
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--name", "cloud"])
            .arg("--token-file")
            .arg(self.token_file())
            .arg("--admin-token-file")
            .arg(self.admin_token_file())
            .args(extra)
            .envs(env.iter().copied());
        self.start_agent(command)
    }

    /// `rainmaker remote --agent AGENT --fingerprint FP --admin-token-file TOKEN ARGS`, pinned;
    /// returns the exit code, stdout and stderr.
    pub fn remote(&self, agent: &Agent, token: &Path, args: &[&str]) -> (i32, String, String) {
        let mut command = self.command();
        command
            .arg("remote")
            .args(["--agent", &agent.url, "--fingerprint", agent.fp()])
            .arg("--admin-token-file")
            .arg(token)
            .args(args);
        run_bounded(command, Duration::from_secs(60))
    }

    /// A `rainmaker push SRC --once --json` with this sandbox's token, state folder and
    /// known-peers file; add targets with [`Push::to`].
    pub fn push(&self, source: &Path) -> Push {
        Push {
            command: self.command(),
            source: source.to_path_buf(),
            targets: Vec::new(),
            fingerprints: Vec::new(),
            token_file: self.token_file(),
            known_peers: self.known_peers(),
            state_dir: self.state_dir(),
            insecure: false,
            extra: Vec::new(),
            timeout: PUSH_TIMEOUT,
        }
    }
}

/// Runs a command to its end (bounded by `timeout`); returns the exit code, stdout, stderr.
pub fn run_bounded(mut command: Command, timeout: Duration) -> (i32, String, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(&mut command).expect("start rainmaker");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, timeout);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    match status {
        Some(status) => (exit_code(status), stdout, stderr),
        None => panic!(
            "{command:?} did not finish within {timeout:?}; it was killed.\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

/// Starts `command`. Under Wine 8 starting a process failed once in a full run with
/// ERROR_INTERNAL_ERROR (1359) while other tests started theirs; there, and only for that
/// error, it is tried twice more.
pub fn spawn(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e)
                if e.raw_os_error() == Some(1359)
                    && tries < 2
                    && rainmaker_engine::win32::under_wine() =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` up to `timeout`; kills it and returns `None` when it is still running.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The exit code, or 128 + the signal for a process that was killed.
pub fn exit_code(status: ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }
    #[cfg(not(unix))]
    {
        status
            .code()
            .expect("a Windows process always has an exit code")
    }
}

/// A running `rainmaker serve`. Dropping it kills the process.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// `wss://127.0.0.1:PORT` (or `ws://` when insecure), as the agent printed it.
    pub url: String,
    pub addr: SocketAddr,
    /// `SHA256:<64 hex>`, as printed; `None` when insecure.
    pub fingerprint: Option<String>,
    /// Its pairing code, as `rainmaker pair` printed it (agents the helpers started over wss).
    pub code: Option<String>,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Wraps a running process whose stderr is piped, keeping its output for [`Agent::log`]
    /// (for processes that are not agents, such as a continuous push).
    fn from_child(mut child: Child) -> Agent {
        let (log, _lines) = capture_stderr(&mut child);
        Agent {
            child,
            url: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            fingerprint: None,
            code: None,
            log,
        }
    }

    /// Starts `command` and reads its stderr until it printed its address and its fingerprint
    /// (or the insecure warning). On failure returns everything it printed.
    fn start(mut command: Command, insecure: bool) -> Result<Agent, String> {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = spawn(&mut command).expect("start rainmaker serve");
        let (log, lines) = capture_stderr(&mut child);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut url, mut fingerprint, mut warned) = (None, None, false);
        let failed = |child: &mut Child, why: &str| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(20));
            format!("{why}; stderr:\n{}", log.lock().unwrap())
        };
        while url.is_none() || !(fingerprint.is_some() || insecure && warned) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.rfind(" on ws") {
                        if line.contains("receiving mirrors into") {
                            url = Some(line[i + 4..].trim().to_string());
                        }
                    } else if let Some(i) = line.find("certificate fingerprint ") {
                        fingerprint = Some(line[i + 24..].trim().to_string());
                    } else if line.contains("WARNING") && line.contains("insecure") {
                        warned = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(failed(
                        &mut child,
                        &format!("no address and fingerprint within {START_TIMEOUT:?}"),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(failed(&mut child, "the agent exited"));
                }
            }
        }
        let url = url.unwrap();
        let addr = url
            .split("://")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the agent printed an address that does not parse: {url}"));
        let expected_scheme = if insecure { "ws://" } else { "wss://" };
        assert!(
            url.starts_with(expected_scheme),
            "an agent {} TLS must announce {expected_scheme} addresses, it printed {url}",
            if insecure { "without" } else { "with" }
        );
        if let Some(fp) = &fingerprint {
            let hex = fp.strip_prefix("SHA256:").unwrap_or("");
            assert!(
                hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
                "the fingerprint a user pins must be SHA256: and 64 hex digits, got {fp:?}"
            );
        }
        Ok(Agent {
            child,
            url,
            addr,
            fingerprint,
            code: None,
            log,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The fingerprint (panics when the agent runs without TLS).
    pub fn fp(&self) -> &str {
        self.fingerprint
            .as_deref()
            .expect("this agent runs with TLS")
    }

    /// Everything the agent printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to `timeout`) until the agent's stderr contains `needle`; returns whether it
    /// did. Log lines about a session may come a moment after the client saw its end.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the agent with SIGTERM, as a service manager would, and waits for it to exit.
    /// (Windows has no SIGTERM: its service stop is tested in tests/windows.rs.)
    #[cfg(unix)]
    pub fn terminate(mut self) -> i32 {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        match wait_bounded(&mut self.child, Duration::from_secs(10)) {
            Some(status) => exit_code(status),
            None => panic!(
                "the agent did not stop within 10 s of SIGTERM; stderr:\n{}",
                self.log()
            ),
        }
    }

    /// Kills the agent with SIGKILL (a crash, a power cut of the process) and reaps it.
    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The safety rescan of a test that relies on the watcher's feed: an hour, so only the feed can
/// bring a change. Wine 8's ReadDirectoryChangesW drops some changes below a subfolder of a
/// recursive watch (a folder renamed into one, an edit of a file in one, each in a full run, never
/// alone), so under Wine a rescan every 2 s brings what its feed missed.
pub fn feed_rescan() -> &'static str {
    if rainmaker_engine::win32::under_wine() {
        "2s"
    } else {
        "1h"
    }
}

/// Waits until `target` mirrors `source`; returns how long it took, or fails with the
/// differences and the push's log.
pub fn wait_identical(
    source: &Path,
    target: &Path,
    within: Duration,
    log: &dyn Fn() -> String,
) -> Duration {
    // Under Wine every file call of both agents goes through the Wine server: the same sync
    // takes a few times longer, so it is given three times the time there.
    let within = if rainmaker_engine::win32::under_wine() {
        within * 3
    } else {
        within
    };
    let started = Instant::now();
    loop {
        let diff = tree_diff(&tree(source), &tree(target));
        if diff.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() > within {
            panic!(
                "the target did not follow the source within {within:?}: {}\npush log:\n{}",
                diff.join("; "),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes in a target's temporary files (`ROOT/.rainmaker/tmp`): how far a transfer got.
pub fn staged_bytes(root: &Path) -> u64 {
    std::fs::read_dir(root.join(".rainmaker/tmp"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Reads a child's piped stderr on a thread: every line is kept in the returned log and also
/// sent on the returned channel (for waiting on a line).
fn capture_stderr(child: &mut Child) -> (Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(String::new()));
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr is piped");
    let shared = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = shared.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
            drop(log);
            let _ = lines_tx.send(line);
        }
    });
    (log, lines)
}

/// A `rainmaker push` to run.
#[derive(Debug)]
pub struct Push {
    command: Command,
    source: PathBuf,
    targets: Vec<String>,
    fingerprints: Vec<String>,
    token_file: PathBuf,
    known_peers: PathBuf,
    state_dir: PathBuf,
    insecure: bool,
    extra: Vec<String>,
    timeout: Duration,
}

impl Push {
    /// Adds a target URL (pin it with [`Push::fingerprint`], or [`Push::trust_first_use`]).
    pub fn to(mut self, url: &str) -> Push {
        self.targets.push(url.to_string());
        self
    }

    /// Adds an agent by its pairing code (or, for an agent started without the helpers, by its
    /// address and the fingerprint it printed): pinned, as a user does it.
    pub fn target(mut self, agent: &Agent) -> Push {
        match &agent.code {
            Some(code) => self.targets.push(code.clone()),
            None => {
                self.targets.push(agent.url.clone());
                self.fingerprints.push(agent.fp().to_owned());
            }
        }
        self
    }

    /// Trusts targets that are neither pinned nor known on first use (`--trust-first-use`).
    pub fn trust_first_use(mut self) -> Push {
        self.extra.push("--trust-first-use".into());
        self
    }

    /// Pins the certificate of the targets (one `--fingerprint` per `--to` given as an
    /// address, in order).
    pub fn fingerprint(mut self, fingerprint: &str) -> Push {
        self.fingerprints.push(fingerprint.to_string());
        self
    }

    pub fn token_file(mut self, path: &Path) -> Push {
        self.token_file = path.to_path_buf();
        self
    }

    pub fn known_peers(mut self, path: &Path) -> Push {
        self.known_peers = path.to_path_buf();
        self
    }

    pub fn state_dir(mut self, path: &Path) -> Push {
        self.state_dir = path.to_path_buf();
        self
    }

    /// Allows plain ws:// targets.
    pub fn insecure(mut self) -> Push {
        self.insecure = true;
        self
    }

    /// Adds any other flag.
    pub fn arg(mut self, arg: &str) -> Push {
        self.extra.push(arg.to_string());
        self
    }

    /// Sets an environment variable of the push (`RUST_LOG` replaces the default `info`).
    pub fn env(mut self, key: &str, value: &str) -> Push {
        self.command.env(key, value);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Push {
        self.timeout = timeout;
        self
    }

    fn into_command(mut self) -> (Command, Duration) {
        let command = &mut self.command;
        command.arg("push").arg(&self.source);
        for url in &self.targets {
            command.arg("--to").arg(url);
        }
        for fp in &self.fingerprints {
            command.arg("--fingerprint").arg(fp);
        }
        command
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--known-peers")
            .arg(&self.known_peers)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if self.extra.iter().any(|a| a == "--watch" || a == "--every") {
            if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
                command.env("RUST_LOG", "info");
            }
        } else {
            command.arg("--once").arg("--json");
        }
        if self.insecure {
            command.arg("--insecure");
        }
        command.args(&self.extra);
        (self.command, self.timeout)
    }

    /// Runs the push to its end.
    pub fn run(self) -> PushResult {
        let (command, timeout) = self.into_command();
        let (code, stdout, stderr) = run_bounded(command, timeout);
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!("--json must print one JSON document on stdout ({e}):\n{stdout}\nstderr:\n{stderr}")
            })
        };
        PushResult {
            code,
            json,
            stdout,
            stderr,
        }
    }

    /// Starts a continuous push (`--watch` or `--every` given with [`Push::arg`]) in the
    /// background, with its stderr captured like an agent's.
    pub fn spawn_continuous(self) -> Agent {
        let (mut command, _) = self.into_command();
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        Agent::from_child(spawn(&mut command).expect("start rainmaker push"))
    }

    /// Starts the push in the background; its output goes nowhere.
    pub fn spawn(self) -> Child {
        let (mut command, _) = self.into_command();
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rainmaker push")
    }
}

/// What a push did.
#[derive(Debug)]
pub struct PushResult {
    pub code: i32,
    /// The `--json` report (`Null` when the push failed before it could report).
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl PushResult {
    /// The exit code, the report and stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Asserts the push exited 0 (every target verified identical).
    #[track_caller]
    pub fn assert_ok(&self) -> &PushResult {
        assert_eq!(
            self.code,
            0,
            "the push must exit 0 when every target verified it is identical\n{}",
            self.describe()
        );
        self
    }

    /// The report of the target `url`.
    #[track_caller]
    pub fn target(&self, url: &str) -> &Value {
        self.json["targets"]
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["url"] == url))
            .unwrap_or_else(|| {
                panic!(
                    "the JSON report must have an entry for {url}\n{}",
                    self.describe()
                )
            })
    }

    /// A numeric field of the target `url`'s report.
    #[track_caller]
    pub fn target_u64(&self, url: &str, field: &str) -> u64 {
        self.target(url)[field].as_u64().unwrap_or_else(|| {
            panic!(
                "targets[].{field} must be a number in the JSON report\n{}",
                self.describe()
            )
        })
    }
}

/// Asserts the target root holds exactly the source's tree: same folders, same files with
/// the same content, modification time (to the nanosecond) and executable bit.
#[track_caller]
pub fn assert_same_tree(source: &Path, target: &Path) {
    let diffs = tree_diff(&tree(source), &tree(target));
    if !diffs.is_empty() {
        let mut message = format!(
            "the target {} must be an exact mirror of the source {}; {} differences:\n",
            target.display(),
            source.display(),
            diffs.len()
        );
        for diff in diffs.iter().take(40) {
            let _ = writeln!(message, "- {diff}");
        }
        panic!("{message}");
    }
}

/// Names of the entries directly in `dir`, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `len` pseudo-random (incompressible) bytes, the same for the same seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// Writes `len` pseudo-random bytes to `path` (creating its folder), 1 MiB at a time.
pub fn write_random(path: &Path, seed: u64, len: usize) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill_bytes(&mut chunk[..n]);
        file.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    file.into_inner().unwrap().sync_all().unwrap();
}

/// Sets a file's modification time to `secs` seconds and `nanos` nanoseconds after the epoch.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    filetime::set_file_mtime(path, filetime::FileTime::from_unix_time(secs, nanos)).unwrap();
}

/// Sets a file's Unix mode. Windows has no mode bits (RainMaker mirrors only Unix's
/// executable bit, and keeps secret files to their owner with ACLs there), so it does nothing.
pub fn chmod(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// Total size of the regular files below `root` (without `.rainmaker`).
pub fn total_bytes(root: &Path) -> u64 {
    tree(root)
        .values()
        .map(|n| match n {
            Node::File { len, .. } => *len,
            _ => 0,
        })
        .sum()
}

/// Number of regular files below `root` (without `.rainmaker`).
pub fn file_count(root: &Path) -> u64 {
    tree(root)
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count() as u64
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Sends the signal `name` (`STOP`, `CONT`, `TERM`, ...) to the process `pid`.
#[cfg(unix)]
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} {pid} failed");
}
