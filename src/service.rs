//! `rainmaker service install|uninstall|status|unit`: run the agent (`rainmaker run`, which
//! serves and mirrors what the configuration file says) at boot, restarted on failure, after
//! the network is up, with nobody logged in. A systemd unit on Linux, a launchd agent on
//! macOS, a Windows service (registered with `sc.exe`, run through the service control
//! dispatcher in `winservice.rs`) on Windows.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the service runs.
#[derive(Debug)]
pub struct Service {
    pub exe: PathBuf,
    pub config: PathBuf,
    pub user: String,
    /// The folder it receives mirrors into (`[serve] root`), the one place it writes besides
    /// its state and logs.
    pub root: Option<PathBuf>,
    /// Every path the configuration names (folders, token files), to tell whether the unit
    /// may hide the home folders and /tmp.
    pub paths: Vec<PathBuf>,
    /// It listens on a port below 1024, which needs `CAP_NET_BIND_SERVICE`.
    pub low_port: bool,
}

/// Where the service keeps its data (known peers, the sources' indexes, push status):
/// systemd creates it for the service's user (`StateDirectory=`).
const STATE_DIR: &str = "/var/lib/rainmaker";

impl Service {
    /// The service for this binary and configuration file, running as `user` (default: the
    /// user who ran the command, through sudo if so).
    pub fn new(config: &Path, user: Option<String>) -> Result<Service> {
        let exe = std::env::current_exe().context("cannot tell where the rainmaker binary is")?;
        let config = std::path::absolute(config)
            .with_context(|| format!("cannot resolve {}", config.display()))?;
        let user = user
            .or_else(|| std::env::var("SUDO_USER").ok())
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("USERNAME").ok())
            .unwrap_or_else(|| "root".into());
        let mut service = Service {
            exe,
            config,
            user,
            root: None,
            paths: Vec::new(),
            low_port: false,
        };
        // A configuration that does not load yet (a fresh `init`) gives the strictest unit;
        // `install` checks that the file exists, `run` that it is valid.
        if let Ok(loaded) = rainmaker_engine::config::load(&service.config) {
            let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            if let Some(serve) = &loaded.serve {
                service.root = Some(absolute(&serve.root));
                service.paths.push(absolute(&serve.token_file));
                service
                    .paths
                    .extend(serve.admin_token_file.as_deref().map(absolute));
                service
                    .paths
                    .extend(serve.subscribe_token_file.as_deref().map(absolute));
                service.low_port = serve
                    .listen
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_some_and(|port| port < 1024);
            }
            for folder in &loaded.folders {
                service.paths.push(absolute(&folder.source));
                service
                    .paths
                    .extend(folder.targets.iter().map(|t| absolute(&t.token_file)));
            }
            for server in &loaded.servers {
                service.paths.push(absolute(&server.token_file));
                service
                    .paths
                    .extend(server.admin_token_file.as_deref().map(absolute));
            }
        }
        Ok(service)
    }

    /// Every path the service touches: its binary, its configuration and what that names.
    fn touched(&self) -> impl Iterator<Item = &Path> {
        [self.exe.as_path(), self.config.as_path()]
            .into_iter()
            .chain(self.root.as_deref())
            .chain(self.paths.iter().map(PathBuf::as_path))
    }

    /// The sandbox of the systemd unit: what `systemd-analyze security` scores, as tight as
    /// the agent allows. It needs the network (IPv4, IPv6, and Unix sockets for name lookups),
    /// its root, its state folder and its logs; /proc for the resource guard's CPU, memory and
    /// network figures; and lowering its hashing threads' priority (`@resources`).
    fn hardening(&self) -> String {
        let under = |dirs: &[&str]| {
            self.touched()
                .any(|p| dirs.iter().any(|d| p.starts_with(d)))
        };
        let mut lines = vec![
            "NoNewPrivileges=yes".to_string(),
            "ProtectSystem=strict".into(),
        ];
        // LogsDirectory= and StateDirectory= are writable by themselves.
        if let Some(root) = &self.root {
            lines.push(format!("ReadWritePaths={}", quote_systemd(root)));
        }
        // A folder or token file in a home folder must stay reachable: read-only, with the
        // root (if there) made writable by ReadWritePaths= above.
        lines.push(
            if under(&["/home", "/root", "/run/user"]) {
                "ProtectHome=read-only"
            } else {
                "ProtectHome=yes"
            }
            .into(),
        );
        if !under(&["/tmp", "/var/tmp"]) {
            lines.push("PrivateTmp=yes".into());
        }
        if self.low_port {
            lines.push("CapabilityBoundingSet=CAP_NET_BIND_SERVICE".into());
            lines.push("AmbientCapabilities=CAP_NET_BIND_SERVICE".into());
        } else {
            lines.push("CapabilityBoundingSet=".into());
        }
        lines.extend(
            [
                "PrivateDevices=yes",
                "PrivateMounts=yes",
                "ProtectClock=yes",
                "ProtectControlGroups=yes",
                "ProtectHostname=yes",
                "ProtectKernelLogs=yes",
                "ProtectKernelModules=yes",
                "ProtectKernelTunables=yes",
                "ProtectProc=invisible",
                "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                "RestrictNamespaces=yes",
                "RestrictRealtime=yes",
                "RestrictSUIDSGID=yes",
                "LockPersonality=yes",
                "MemoryDenyWriteExecute=yes",
                "RemoveIPC=yes",
                "SystemCallArchitectures=native",
                "SystemCallFilter=@system-service",
                "SystemCallFilter=~@privileged",
                "SystemCallErrorNumber=EPERM",
                "UMask=0027",
            ]
            .map(String::from),
        );
        lines.join("\n")
    }

    /// The systemd unit.
    pub fn systemd_unit(&self) -> String {
        format!(
            "[Unit]
Description=RainMaker agent: keeps backup servers a hot mirror of a trading PC
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
LogsDirectory=rainmaker
StateDirectory=rainmaker
StateDirectoryMode=0700
ExecStart={exe} --config {config} --log-dir /var/log/rainmaker run
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=20
Environment=RUST_LOG=info
Environment=RAINMAKER_DATA_DIR={STATE_DIR}
{hardening}

[Install]
WantedBy=multi-user.target
",
            user = self.user,
            exe = quote_systemd(&self.exe),
            config = quote_systemd(&self.config),
            hardening = self.hardening(),
        )
    }

    /// The launchd property list.
    pub fn launchd_plist(&self) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{LABEL}</string>
  <key>ProgramArguments</key>
  <array><string>{exe}</string><string>--config</string><string>{config}</string><string>--log-dir</string><string>{logs}</string><string>run</string></array>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
</dict>
</plist>
"#,
            exe = xml(&self.exe.display().to_string()),
            config = xml(&self.config.display().to_string()),
            logs = xml(&dirs::home_dir()
                .unwrap_or_default()
                .join("Library/Logs/RainMaker")
                .display()
                .to_string()),
        )
    }
}

const UNIT_PATH: &str = "/etc/systemd/system/rainmaker.service";
const LABEL: &str = "com.rainmaker.agent";
const WINDOWS_SERVICE: &str = "RainMaker";

fn quote_systemd(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains(' ') {
        format!("\"{}\"", text.replace('"', "\\\""))
    } else {
        text
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Installs and starts the service.
pub fn install(service: &Service) -> Result<()> {
    if !service.config.exists() {
        bail!(
            "{} does not exist; write it with `rainmaker init` and check it with `rainmaker config check` first",
            service.config.display()
        );
    }
    if cfg!(target_os = "linux") {
        std::fs::write(UNIT_PATH, service.systemd_unit()).with_context(|| {
            format!("cannot write {UNIT_PATH} (run this as root, e.g. with sudo)")
        })?;
        run("systemctl", &["daemon-reload"])?;
        run("systemctl", &["enable", "--now", "rainmaker.service"])?;
        println!(
            "installed {UNIT_PATH}; RainMaker starts at boot as {}, keeps its state in \
             {STATE_DIR} (`sudo -u {} RAINMAKER_DATA_DIR={STATE_DIR} rainmaker status` shows its \
             pushes) and writes only there, in /var/log/rainmaker and in its root",
            service.user, service.user
        );
    } else if cfg!(target_os = "macos") {
        let path = launch_agent_path()?;
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(&path, service.launchd_plist())
            .with_context(|| format!("cannot write {}", path.display()))?;
        run("launchctl", &["load", "-w", &path.display().to_string()])?;
        println!(
            "installed {}; RainMaker starts when you log in",
            path.display()
        );
    } else if cfg!(windows) {
        let logs = std::env::var_os("ProgramData")
            .map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from)
            .join(r"RainMaker\logs");
        let command = format!(
            "\"{}\" --config \"{}\" --log-dir \"{}\" service run",
            service.exe.display(),
            service.config.display(),
            logs.display()
        );
        // Starts at boot (delayed, once the network stack is up), as LocalSystem, and is
        // restarted by the service manager when it fails.
        run(
            "sc.exe",
            &[
                "create",
                WINDOWS_SERVICE,
                "binPath=",
                &command,
                "start=",
                "delayed-auto",
                "depend=",
                "Tcpip",
                "DisplayName=",
                "RainMaker agent",
            ],
        )?;
        run(
            "sc.exe",
            &[
                "description",
                WINDOWS_SERVICE,
                "Keeps this server a hot mirror of a trading PC",
            ],
        )?;
        run(
            "sc.exe",
            &[
                "failure",
                WINDOWS_SERVICE,
                "reset=",
                "86400",
                "actions=",
                "restart/5000/restart/5000/restart/60000",
            ],
        )?;
        run("sc.exe", &["start", WINDOWS_SERVICE])?;
        println!("installed the {WINDOWS_SERVICE} service; RainMaker starts at boot");
    } else {
        bail!(
            "installing a service is not supported on this system; run `rainmaker run` from its startup scripts"
        );
    }
    Ok(())
}

/// Stops and removes the service.
pub fn uninstall() -> Result<()> {
    if cfg!(target_os = "linux") {
        let _ = run("systemctl", &["disable", "--now", "rainmaker.service"]);
        match std::fs::remove_file(UNIT_PATH) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("RainMaker is not installed as a service ({UNIT_PATH} does not exist)")
            }
            Err(e) => bail!("cannot remove {UNIT_PATH}: {e} (run this as root)"),
        }
        run("systemctl", &["daemon-reload"])?;
    } else if cfg!(target_os = "macos") {
        let path = launch_agent_path()?;
        let _ = run("launchctl", &["unload", "-w", &path.display().to_string()]);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    } else if cfg!(windows) {
        let _ = run("sc.exe", &["stop", WINDOWS_SERVICE]);
        run("sc.exe", &["delete", WINDOWS_SERVICE])?;
    } else {
        bail!("no service to remove on this system");
    }
    println!("RainMaker no longer starts at boot");
    Ok(())
}

/// Shows the service manager's view of the service.
pub fn status() -> Result<()> {
    if cfg!(target_os = "linux") {
        // `systemctl status` exits non-zero for a stopped service; its text says why.
        let _ = Command::new("systemctl")
            .args(["status", "--no-pager", "rainmaker.service"])
            .status()
            .context("cannot run systemctl")?;
    } else if cfg!(target_os = "macos") {
        let _ = Command::new("launchctl").args(["list", LABEL]).status();
    } else if cfg!(windows) {
        let _ = Command::new("sc.exe")
            .args(["queryex", WINDOWS_SERVICE])
            .status();
    }
    Ok(())
}

/// `rainmaker service run`: what the Windows service manager starts. It hands this thread to
/// the service control dispatcher and runs the agent until the service is stopped.
pub fn run_as_service(config: Option<PathBuf>) -> Result<()> {
    #[cfg(windows)]
    {
        crate::winservice::dispatch(config)
    }
    #[cfg(not(windows))]
    {
        let _ = config;
        bail!(
            "`service run` is what the Windows service manager starts; here the service runs `rainmaker run` (see `rainmaker service install`)"
        )
    }
}

fn launch_agent_path() -> Result<PathBuf> {
    let home = dirs::home_dir().context("no home folder")?;
    Ok(home
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist")))
}
