//! End to end: the configuration file. `init` writes a file `config check` accepts; a bad
//! file is refused with its location, key and what was expected; `serve` and `push` run
//! from the file, and flags override it.

// On Windows the systemd unit's helpers go unused with those tests.
#![cfg_attr(windows, allow(dead_code, unused_imports))]

mod common;

use common::{Sandbox, assert_same_tree, run_bounded, write_random};
use std::path::Path;
use std::time::Duration;

fn rainmaker(sandbox: &Sandbox, config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command = sandbox.command();
    command.arg("--config").arg(config).args(args);
    run_bounded(command, Duration::from_secs(30))
}

#[test]
fn init_writes_a_file_that_passes_the_check_and_will_not_overwrite_it() {
    let sandbox = Sandbox::new();
    let config = sandbox.path("etc/rainmaker.toml");
    let (code, out, err) = rainmaker(&sandbox, &config, &["init"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = rainmaker(&sandbox, &config, &["config", "check"]);
    // The starting file is well formed, and names a folder and a token file that are not
    // there yet: the check says so, with the fixes, instead of "ok".
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains("well formed")
            && out.contains("/srv/rainmaker/NinjaTrader 8")
            && out.contains("mkdir")
            && out.contains("/etc/rainmaker/token")
            && out.contains("fix:"),
        "{out}"
    );
    let (code, _, err) = rainmaker(&sandbox, &config, &["init"]);
    assert_ne!(code, 0, "init must not overwrite a file the user edited");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
}

/// `config check` checks what the agent will need, not only the file's form: the folder that
/// receives, its token file, and a free listen address; then, once they are there, says ok.
#[test]
fn the_check_names_what_the_agent_would_lack_and_passes_once_it_is_there() {
    let sandbox = Sandbox::new();
    let config = sandbox.path("rainmaker.toml");
    let root = sandbox.path("receive here");
    let token = sandbox.path("etc/serve-token");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let text = |listen: &str| {
        format!(
            "[serve]\nroot = {:?}\nlisten = {listen:?}\ntoken_file = {:?}\n",
            root.to_string_lossy().replace('\\', "/"),
            token.to_string_lossy().replace('\\', "/")
        )
    };
    std::fs::write(&config, text(&listen)).unwrap();
    let (code, out, err) = rainmaker(&sandbox, &config, &["config", "check"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("3 thing(s)"), "{out}");
    assert!(
        out.contains("receive here") && out.contains("mkdir"),
        "{out}"
    );
    assert!(out.contains("token") && out.contains("secret"), "{out}");
    assert!(out.contains(&listen) && out.contains("free port"), "{out}");
    assert!(err.contains("not ready"), "{err}");

    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "a-long-random-secret-of-many-characters\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    drop(held);
    std::fs::write(&config, text("127.0.0.1:0")).unwrap();
    let (code, out, err) = rainmaker(&sandbox, &config, &["config", "check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok;"), "{out}");
}

#[test]
fn a_bad_file_is_refused_with_file_line_column_key_and_expectation() {
    let sandbox = Sandbox::new();
    let cases = [
        (
            "[serve]\nroot = \"/r\"\nlisten = \"0.0.0.0:1\"\ntoken_file = \"/t\"\nbwlimt = \"2MB\"\n",
            ":5:1:",
            &["bwlimt", "expected one of"][..],
        ),
        (
            "[[folder]]\nsource = \"/s\"\nevery = \"often\"\n[[folder.target]]\nurl = \"wss://a:1\"\ntoken_file = \"/t\"\n",
            ":3:",
            &["folder[0].every", "not a duration", "expected"][..],
        ),
        (
            "[[folder]]\nsource = \"/s\"\n[[folder.target]]\nurl = \"wss://a:1\"\ntoken_file = \"/t\"\nfingerprint = \"abc\"\n",
            ":6:",
            &["folder[0].target[0].fingerprint", "SHA256"][..],
        ),
        (
            "[guard]\npause_net_above = \"fast\"\n",
            ":2:",
            &["guard.pause_net_above", "50Mbit"][..],
        ),
        ("[serve\nroot = 1\n", ":1:", &["expected"][..]),
    ];
    for (i, (text, location, words)) in cases.iter().enumerate() {
        let config = sandbox.path(&format!("bad{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let (code, out, err) = rainmaker(&sandbox, &config, &["config", "check"]);
        assert_ne!(code, 0, "case {i} must be refused: {out}");
        let named = format!("bad{i}.toml{location}");
        assert!(
            err.contains(&named),
            "case {i}: the error names file, line and column ({named}): {err}"
        );
        for word in *words {
            assert!(
                err.contains(word),
                "case {i}: the error says {word:?}: {err}"
            );
        }
    }
}

#[test]
fn serve_and_push_run_from_the_file_and_flags_override_it() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("db/tick.ncd"), 12, 300_000);
    write_random(&src.join("workspaces/w.xml"), 13, 2_000);
    let token = sandbox.token_file();
    // The file names a port the test never uses: the --listen flag must win.
    let serve_config = sandbox.path("serve.toml");
    std::fs::write(
        &serve_config,
        format!(
            "[serve]\nroot = {:?}\nlisten = \"127.0.0.1:1\"\ntoken_file = {:?}\n",
            dst.display().to_string(),
            token.display().to_string()
        ),
    )
    .unwrap();
    let mut command = sandbox.command();
    command
        .arg("--config")
        .arg(&serve_config)
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0");
    let agent = sandbox.start_agent(command);
    assert_ne!(
        agent.port(),
        1,
        "the flag overrides the file's listen address"
    );

    let push_config = sandbox.path("push.toml");
    std::fs::write(
        &push_config,
        format!(
            "[[folder]]\nsource = {:?}\nmode = \"manual\"\n[[folder.target]]\nurl = {:?}\ntoken_file = {:?}\nfingerprint = {:?}\n",
            src.display().to_string(),
            agent.url,
            token.display().to_string(),
            agent.fingerprint.clone().unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = rainmaker(&sandbox, &push_config, &["push"]);
    assert_eq!(
        code, 0,
        "a push from the file mirrors its folder: {out}{err}"
    );
    assert_same_tree(&src, &dst);
}

// Not on Windows: systemd is Linux's service manager.
#[cfg(unix)]
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let sandbox = Sandbox::new();
    let config = sandbox.path("rainmaker.toml");
    let (code, _, err) = rainmaker(&sandbox, &config, &["init"]);
    assert_eq!(code, 0, "{err}");
    let (code, unit, err) = rainmaker(&sandbox, &config, &["service", "unit", "--user", "root"]);
    assert_eq!(code, 0, "{err}");
    assert!(unit.contains("After=network-online.target") && unit.contains("Restart=on-failure"));
    assert!(
        unit.contains(" run"),
        "the service runs what the configuration says: {unit}"
    );
    let path = sandbox.path("rainmaker.service");
    std::fs::write(&path, &unit).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is needed for this test (apt-get install systemd)");
    let said = String::from_utf8_lossy(&verify.stderr).to_string();
    // It may mention unrelated units of this machine; none of its words may be about ours.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("rainmaker.service"))
        .collect();
    assert!(
        verify.status.success() && ours.is_empty(),
        "systemd-analyze verify must accept the unit:\n{said}\n{unit}"
    );
}

/// The exposure `systemd-analyze security` gives a unit file (0 safe .. 10 unsafe).
fn exposure(unit: &Path) -> f64 {
    let analyze = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze is needed for this test (apt-get install systemd)");
    let said = String::from_utf8_lossy(&analyze.stdout).to_string();
    said.lines()
        .find_map(|l| l.split_once("Overall exposure level for rainmaker.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"))
}

// Not on Windows: systemd is Linux's service manager.
#[cfg(unix)]
#[test]
fn the_systemd_unit_is_confined_to_the_network_its_root_state_and_logs() {
    let sandbox = Sandbox::new();
    let root = sandbox.dir("root with space");
    let config = sandbox.path("rainmaker.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nroot = {:?}\nlisten = \"0.0.0.0:7878\"\ntoken_file = {:?}\n",
            root.display().to_string(),
            sandbox.token_file().display().to_string()
        ),
    )
    .unwrap();
    let (code, unit, err) = rainmaker(
        &sandbox,
        &config,
        &[
            "service",
            "unit",
            "--user",
            "rainmaker",
            "--exe",
            "/usr/bin/rainmaker",
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        &format!("ReadWritePaths=\"{}\"", root.display()),
        "LogsDirectory=rainmaker",
        "StateDirectory=rainmaker",
        "Environment=RAINMAKER_DATA_DIR=/var/lib/rainmaker",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures=native",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "ProtectKernelTunables=yes",
    ] {
        assert!(
            unit.contains(line),
            "the agent needs only the network, its root, its state and its logs, so the unit \
             says {line:?}:\n{unit}"
        );
    }
    let in_tmp = root.starts_with("/tmp");
    assert_eq!(
        unit.contains("PrivateTmp=yes"),
        !in_tmp,
        "a private /tmp would hide a root under /tmp, and only then is it left out:\n{unit}"
    );
    let path = sandbox.path("rainmaker.service");
    std::fs::write(&path, &unit).unwrap();
    let score = exposure(&path);
    println!("systemd-analyze security: {score}");
    assert!(
        score <= 2.5,
        "the unit must stay hardened (exposure {score}, was 9.6 before it was):\n{unit}"
    );

    // A port below 1024 keeps the one capability it needs; a root in a home folder keeps the
    // home folders readable instead of hidden.
    std::fs::write(
        &config,
        "[serve]\nroot = \"/home/trader/NinjaTrader 8\"\nlisten = \"0.0.0.0:443\"\ntoken_file = \"/etc/rainmaker/token\"\n",
    )
    .unwrap();
    let (code, unit, err) = rainmaker(
        &sandbox,
        &config,
        &[
            "service",
            "unit",
            "--user",
            "trader",
            "--exe",
            "/usr/bin/rainmaker",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        unit.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE")
            && unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "port 443 needs CAP_NET_BIND_SERVICE:\n{unit}"
    );
    assert!(
        unit.contains("ProtectHome=read-only")
            && unit.contains("ReadWritePaths=\"/home/trader/NinjaTrader 8\""),
        "a root in a home folder stays writable:\n{unit}"
    );
}

// Not on Windows: it stops the agent with SIGTERM, which Windows does not have (the
// service stop is in tests/windows.rs).
#[cfg(unix)]
#[test]
fn run_serves_what_the_file_says_and_stops_cleanly_on_sigterm() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("a.dat"), 14, 50_000);
    let config = sandbox.path("rainmaker.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nroot = {:?}\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
            dst.display().to_string(),
            sandbox.token_file().display().to_string()
        ),
    )
    .unwrap();
    let logs = sandbox.path("logs");
    let mut command = sandbox.command();
    command
        .arg("--config")
        .arg(&config)
        .arg("--log-dir")
        .arg(&logs)
        .arg("run");
    let agent = sandbox.start_agent(command);
    let result = sandbox.push(&src).target(&agent).run();
    assert_eq!(result.code, 0, "{}", result.describe());
    assert_same_tree(&src, &dst);
    let logged: String = std::fs::read_dir(&logs)
        .expect("the log folder is created")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rainmaker"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        logged.contains("source connected"),
        "the log file holds the agent's log: {logged:?}"
    );
    let started = std::time::Instant::now();
    assert_eq!(agent.terminate(), 0, "SIGTERM is a clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "and a quick one"
    );
}

#[test]
fn a_watch_folder_from_the_file_follows_changes() {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    write_random(&src.join("tick.ncd"), 15, 100_000);
    let agent = sandbox.serve(&dst);
    let config = sandbox.path("push.toml");
    std::fs::write(
        &config,
        format!(
            "[[folder]]\nsource = {:?}\nmode = \"watch\"\n[[folder.target]]\nurl = {:?}\ntoken_file = {:?}\nfingerprint = {:?}\n",
            src.display().to_string(),
            agent.url,
            sandbox.token_file().display().to_string(),
            agent.fingerprint.clone().unwrap()
        ),
    )
    .unwrap();
    let mut command = sandbox.command();
    command.arg("--config").arg(&config).arg("run");
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut running = command.spawn().expect("start rainmaker run");
    let follows = |what: &str| {
        let started = std::time::Instant::now();
        while !common::tree_diff(&common::tree(&src), &common::tree(&dst)).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what} did not arrive"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    follows("the first mirror");
    write_random(&src.join("new.xml"), 16, 3_000);
    follows("a new file");
    let _ = running.kill();
    let _ = running.wait();
}
