//! A trader's real topology, through NAT routers the test builds from network namespaces:
//! the home PC and an off-cloud backup each sit behind a router of their own (iptables
//! MASQUERADE, no inbound forwarding); a cloud agent has a reachable address. First, a
//! connection into home or into the off-cloud server fails. Then everything works through
//! connections dialed out: the home PC pushes to the cloud, the off-cloud server subscribes to
//! the cloud (a cascade), it is caught up within 5 s of its cut link coming back, the cloud is
//! promoted after a failover and the off-cloud server follows it, and the home PC fails back
//! by dialing the cloud. The folders are compared at each step. Root only (namespaces,
//! iptables); skipped with a message otherwise. Linux only (network namespaces).
#![cfg(target_os = "linux")]

mod common;

use common::{Sandbox, binary, run_bounded, wait_identical, write_random};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cloud agent's address, reachable from both routers' outer sides.
const CLOUD: &str = "203.0.113.2";
const HOME: &str = "10.1.0.2";
const HOME_ROUTER: &str = "198.51.100.2";
const OFFCLOUD: &str = "10.2.0.2";
const OFFCLOUD_ROUTER: &str = "192.0.2.2";

/// The namespaces of one run, removed (with the processes in them) when dropped.
struct Net {
    prefix: String,
    children: Vec<Child>,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for role in ["inet", "cloud", "homegw", "home", "offgw", "offcloud"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// Runs `ip ARGS`, failing the test with what it printed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `command` in namespace `ns`, failing the test with what it printed.
fn exec(ns: &str, command: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(command)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "in {ns}: {}: {}",
        command.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Joins namespaces `a` and `b` with a veth pair named `a_if`/`b_if`, addressed `a_ip`/`b_ip`
/// (with their prefix length).
fn link(a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
    ip(&[
        "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
    ]);
    for (ns, dev, addr) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
}

/// A router: forwards, masquerades what leaves by `wan`, and forwards nothing new that comes
/// in by it (no port forwarding).
fn nat_router(ns: &str) {
    exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    exec(
        ns,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ],
    );
    exec(ns, &["iptables", "-P", "FORWARD", "DROP"]);
    exec(
        ns,
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-i",
            "wan",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ],
    );
    exec(
        ns,
        &["iptables", "-A", "FORWARD", "-o", "wan", "-j", "ACCEPT"],
    );
}

/// Builds the topology; `None` when this machine cannot (not root, no namespaces, no
/// iptables).
fn build() -> Option<Net> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("SKIPPED: network namespaces and NAT routers need root");
        return None;
    }
    if Command::new("iptables").arg("--version").output().is_err() {
        eprintln!("SKIPPED: iptables is not installed (.ci/run installs it)");
        return None;
    }
    let net = Net {
        prefix: format!("rmnat{}", std::process::id() % 100_000),
        children: Vec::new(),
    };
    for role in ["inet", "cloud", "homegw", "home", "offgw", "offcloud"] {
        let made = Command::new("ip")
            .args(["netns", "add", &net.ns(role)])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("SKIPPED: this machine refuses to create network namespaces");
            return None;
        }
        exec(&net.ns(role), &["ip", "link", "set", "lo", "up"]);
    }
    let (inet, cloud) = (net.ns("inet"), net.ns("cloud"));
    let (homegw, home) = (net.ns("homegw"), net.ns("home"));
    let (offgw, offcloud) = (net.ns("offgw"), net.ns("offcloud"));
    // The internet: one router joining the cloud and the two home routers' outer sides.
    link(
        &inet,
        "tocloud",
        "203.0.113.1/30",
        &cloud,
        "eth0",
        &format!("{CLOUD}/30"),
    );
    link(
        &inet,
        "tohome",
        "198.51.100.1/30",
        &homegw,
        "wan",
        &format!("{HOME_ROUTER}/30"),
    );
    link(
        &inet,
        "tooff",
        "192.0.2.1/30",
        &offgw,
        "wan",
        &format!("{OFFCLOUD_ROUTER}/30"),
    );
    exec(&inet, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ip(&[
        "-n",
        &cloud,
        "route",
        "add",
        "default",
        "via",
        "203.0.113.1",
    ]);
    // Behind each router, its private network.
    link(
        &homegw,
        "lan",
        "10.1.0.1/24",
        &home,
        "eth0",
        &format!("{HOME}/24"),
    );
    link(
        &offgw,
        "lan",
        "10.2.0.1/24",
        &offcloud,
        "eth0",
        &format!("{OFFCLOUD}/24"),
    );
    for (router, private) in [(&homegw, &home), (&offgw, &offcloud)] {
        ip(&[
            "-n",
            router,
            "route",
            "add",
            "default",
            "via",
            match router == &homegw {
                true => "198.51.100.1",
                false => "192.0.2.1",
            },
        ]);
        let gateway = if router == &homegw {
            "10.1.0.1"
        } else {
            "10.2.0.1"
        };
        ip(&["-n", private, "route", "add", "default", "via", gateway]);
        nat_router(router);
    }
    Some(net)
}

/// Whether a TCP connection from namespace `ns` to `addr` opens within 2 s.
fn connects(ns: &str, addr: &str, port: u16) -> bool {
    let script = format!(
        "import socket,sys\ntry:\n socket.create_connection(('{addr}',{port}),timeout=2).close()\nexcept OSError:\n sys.exit(1)"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .status()
        .is_ok_and(|s| s.success())
}

/// A `rainmaker` command run in namespace `ns`, with the sandbox's data folder.
fn rainmaker(sandbox: &Sandbox, ns: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns, binary()])
        .env("RAINMAKER_DATA_DIR", sandbox.path(&format!("data-{ns}")))
        .env("HOME", sandbox.path("home-dir"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// Starts an agent (`rainmaker serve ARGS`) in `ns`, its log in the sandbox; waits until it
/// printed its fingerprint, and returns it.
fn start_agent(net: &mut Net, sandbox: &Sandbox, ns: &str, args: &[&str]) -> (String, PathBuf) {
    let log = sandbox.path(&format!("{ns}.log"));
    let child = rainmaker(sandbox, ns)
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the agent");
    net.children.push(child);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(fp) = text
            .lines()
            .find_map(|l| l.split("certificate fingerprint ").nth(1))
        {
            return (fp.trim().to_owned(), log);
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the agent in {ns} did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Bytes sent out of `dev` in namespace `ns` so far.
fn tx_bytes(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{dev}/statistics/tx_bytes"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn behind_nat_everything_works_by_dialing_out() {
    let Some(mut net) = build() else {
        return;
    };
    let sandbox = Sandbox::new();
    let (home_dir, cloud_dir, offcloud_dir) = (
        sandbox.dir("home"),
        sandbox.dir("cloud"),
        sandbox.dir("offcloud"),
    );
    write_random(&home_dir.join("db/tick/ES/20261201.Last.ncd"), 11, 4 << 20);
    std::fs::create_dir_all(home_dir.join("workspaces")).unwrap();
    for i in 0..50 {
        std::fs::write(
            home_dir.join(format!("workspaces/w{i}.xml")),
            format!("<w n='{i}'/>"),
        )
        .unwrap();
    }
    let token = sandbox.token_file();
    let admin = sandbox.secret("admin.token", "admin-secret-of-the-cloud-0123456789");
    let subscribe = sandbox.secret("subscribe.token", "subscribe-secret-of-the-cloud-0123456");
    let (cloud_ns, home_ns, offcloud_ns) = (net.ns("cloud"), net.ns("home"), net.ns("offcloud"));

    // The off-cloud server listens, as every agent does, and the home PC too: nothing outside
    // their routers reaches either.
    let listen_off = format!("{OFFCLOUD}:7878");
    let probe_home = rainmaker(&sandbox, &home_ns)
        .args(["serve", "--listen", &format!("{HOME}:7878"), "--root"])
        .arg(sandbox.dir("home-listener"))
        .arg("--token-file")
        .arg(&token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    net.children.push(probe_home);
    let (cloud_fp, cloud_log) = start_agent(
        &mut net,
        &sandbox,
        &cloud_ns,
        &[
            "--root",
            cloud_dir.to_str().unwrap(),
            "--listen",
            &format!("{CLOUD}:7878"),
            "--name",
            "cloud-a",
            "--token-file",
            token.to_str().unwrap(),
            "--admin-token-file",
            admin.to_str().unwrap(),
            "--subscribe-token-file",
            subscribe.to_str().unwrap(),
        ],
    );
    let code = |role: &str, secret: &Path| {
        format!(
            "rainmaker{role}://{CLOUD}:7878#{cloud_fp}/{}",
            read(secret).trim()
        )
    };
    let (subscribe_code, admin_code) = (code("-subscribe", &subscribe), code("-admin", &admin));

    // Before anything: into home and into the off-cloud server, nothing connects.
    let started = Instant::now();
    while !connects(&home_ns, HOME, 7878) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the home listener did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(connects(&cloud_ns, CLOUD, 7878), "the cloud agent listens");
    assert!(
        connects(&home_ns, CLOUD, 7878),
        "home reaches the cloud through its router"
    );
    for (addr, what) in [
        (HOME, "home's private address"),
        (HOME_ROUTER, "home's router"),
        (OFFCLOUD, "the off-cloud server's private address"),
        (OFFCLOUD_ROUTER, "the off-cloud server's router"),
    ] {
        assert!(
            !connects(&cloud_ns, addr, 7878),
            "a connection from the cloud into {what} ({addr}) must fail"
        );
    }

    // The home PC pushes to the cloud through its router.
    let push = |what: &str| {
        let mut command = rainmaker(&sandbox, &home_ns);
        command
            .arg("push")
            .arg(&home_dir)
            .args([
                "--to",
                &format!("wss://{CLOUD}:7878"),
                "--fingerprint",
                &cloud_fp,
            ])
            .args(["--once", "--json", "--token-file"])
            .arg(&token)
            .arg("--state-dir")
            .arg(sandbox.path("home-state"));
        let (code, stdout, stderr) = run_bounded(command, Duration::from_secs(60));
        assert_eq!(
            code,
            0,
            "{what}: {stdout}\n{stderr}\ncloud:\n{}",
            read(&cloud_log)
        );
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        json["targets"][0]["bytes_changed"].as_u64().unwrap()
    };
    push("the first push");
    common::assert_same_tree(&home_dir, &cloud_dir);

    // The off-cloud server subscribes to the cloud: a cascade over a connection it opens.
    let (_, off_log) = start_agent(
        &mut net,
        &sandbox,
        &offcloud_ns,
        &[
            "--root",
            offcloud_dir.to_str().unwrap(),
            "--listen",
            &listen_off,
            "--name",
            "offcloud-b",
            "--token-file",
            token.to_str().unwrap(),
            "--subscribe",
            &subscribe_code,
        ],
    );
    let logs = || {
        format!(
            "off-cloud:\n{}\ncloud:\n{}",
            read(&off_log),
            read(&cloud_log)
        )
    };
    wait_identical(&cloud_dir, &offcloud_dir, Duration::from_secs(30), &logs);

    // One trading session: the home uplink carries the changes once, not once per server.
    let uplink = tx_bytes(&net.ns("homegw"), "wan");
    write_random(
        &home_dir.join("db/tick/ES/20261201.Last.ncd"),
        12,
        (4 << 20) + 65_536,
    );
    write_random(&home_dir.join("db/tick/NQ/20261202.Last.ncd"), 13, 300_000);
    std::fs::write(
        home_dir.join("workspaces/w3.xml"),
        b"<w n='3' edited='yes'/>",
    )
    .unwrap();
    let changed = push("the session's push");
    let sent = tx_bytes(&net.ns("homegw"), "wan") - uplink;
    let took = wait_identical(&home_dir, &offcloud_dir, Duration::from_secs(20), &logs);
    eprintln!(
        "one session: {changed} bytes changed, the home uplink sent {sent} bytes ({:.2}x); the off-cloud server had them {:.2} s after the push",
        sent as f64 / changed as f64,
        took.as_secs_f64()
    );
    assert!(
        sent < changed + changed / 4 + (256 << 10),
        "the home uplink sends a session's changes once ({sent} bytes for {changed} changed)"
    );

    // The off-cloud server's link goes down while the PC trades on, and comes back.
    ip(&["-n", &offcloud_ns, "link", "set", "eth0", "down"]);
    write_random(
        &home_dir.join("db/tick/ES/20261201.Last.ncd"),
        14,
        (4 << 20) + 131_072,
    );
    std::fs::remove_file(home_dir.join("workspaces/w7.xml")).unwrap();
    push("a push during the cut");
    std::thread::sleep(Duration::from_secs(8));
    ip(&["-n", &offcloud_ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &offcloud_ns,
        "route",
        "replace",
        "default",
        "via",
        "10.2.0.1",
    ]);
    let back = Instant::now();
    wait_identical(&home_dir, &offcloud_dir, Duration::from_secs(30), &logs);
    let catch_up = back.elapsed();
    eprintln!(
        "after an 8 s cut, the off-cloud server was caught up {:.2} s after its link came back",
        catch_up.as_secs_f64()
    );
    assert!(
        catch_up < Duration::from_secs(5),
        "caught up within 5 s of the link coming back, took {catch_up:?}\n{}",
        logs()
    );

    // Failover: the home PC is gone; the cloud is promoted (commanded from home, dialing out)
    // and trades; the off-cloud server follows the new source.
    let remote = |args: &[&str]| {
        let mut command = rainmaker(&sandbox, &home_ns);
        command.args(["remote", "--agent", &admin_code]).args(args);
        run_bounded(command, Duration::from_secs(60))
    };
    let (code, stdout, stderr) = remote(&["promote", "--force"]);
    assert_eq!(code, 0, "promote: {stdout}{stderr}");
    write_random(&cloud_dir.join("db/tick/ES/20261203.Last.ncd"), 15, 500_000);
    std::fs::write(
        cloud_dir.join("workspaces/w1.xml"),
        b"<w n='1' traded-in-the-cloud/>",
    )
    .unwrap();
    wait_identical(&cloud_dir, &offcloud_dir, Duration::from_secs(20), &logs);
    let (code, stdout, _) = remote(&["status"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("subscriber offcloud-b (dials in from 192.0.2.2:"),
        "the cloud names its subscriber and the router it dials in from:\n{stdout}"
    );

    // Failback: home dials the cloud and takes the folder back; nothing listens for it.
    let (code, stdout, stderr) = remote(&["failback", "--into", home_dir.to_str().unwrap()]);
    assert_eq!(
        code,
        0,
        "failback: {stdout}\n{stderr}\ncloud:\n{}",
        read(&cloud_log)
    );
    common::assert_same_tree(&cloud_dir, &home_dir);
    common::assert_same_tree(&cloud_dir, &offcloud_dir);
}
