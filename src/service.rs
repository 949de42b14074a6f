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
}

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
        Ok(Service { exe, config, user })
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
ExecStart={exe} --config {config} --log-dir /var/log/rainmaker run
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=20
Environment=RUST_LOG=info

[Install]
WantedBy=multi-user.target
",
            user = self.user,
            exe = quote_systemd(&self.exe),
            config = quote_systemd(&self.config),
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
            "installed {UNIT_PATH}; RainMaker starts at boot as {}",
            service.user
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
