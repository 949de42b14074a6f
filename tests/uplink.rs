//! End to end over a home uplink: two network namespaces made by the test, joined by
//! bench/link.py (20 Mbit/s, 30 ms round trip, 0.1% packet loss, packet by packet over TUN
//! devices). An agent in one receives a folder pushed from the other, then a session's
//! appends; both arrive whole. Root only (namespaces, TUN); skipped with a message otherwise.

mod common;

use common::{Sandbox, assert_same_tree, binary, run_bounded, write_random};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RATE_BITS: f64 = 20e6;

struct Namespaces {
    src: String,
    dst: String,
    link: Option<Child>,
    serve: Option<Child>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in [self.serve.as_mut(), self.link.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        for ns in [&self.src, &self.dst] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_folder_crosses_a_slow_lossy_uplink_whole() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("SKIPPED: network namespaces and TUN devices need root");
        return;
    }
    let id = std::process::id();
    let mut ns = Namespaces {
        src: format!("rm-t{id}-src"),
        dst: format!("rm-t{id}-dst"),
        link: None,
        serve: None,
    };
    if !(ip(&["netns", "add", &ns.src]) && ip(&["netns", "add", &ns.dst])) {
        eprintln!("SKIPPED: this machine refuses to create network namespaces");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/link.py");
    let mut link = Command::new("python3")
        .args([script, &ns.src, &ns.dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bench/link.py");
    let mut line = String::new();
    BufReader::new(link.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    ns.link = Some(link);
    assert_eq!(line.trim(), "ready", "the link came up");

    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    write_random(&src.join("db/tick/ES.ncd"), 7, 3 << 20);
    std::fs::create_dir_all(src.join("workspaces")).unwrap();
    for i in 0..100 {
        std::fs::write(
            src.join(format!("workspaces/w{i}.xml")),
            format!("<w n='{i}'/>"),
        )
        .unwrap();
    }
    let in_ns = |name: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", name, binary()])
            .env("RAINMAKER_DATA_DIR", sandbox.path("data"))
            .env("HOME", sandbox.path("home"));
        c
    };
    let mut serve = in_ns(&ns.dst);
    serve
        .args(["serve", "--listen", "10.78.0.2:7878", "--root"])
        .arg(&dst)
        .arg("--token-file")
        .arg(sandbox.token_file())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(sandbox.path("serve.log")).unwrap());
    ns.serve = Some(serve.spawn().expect("start the agent"));
    let started = Instant::now();
    while !std::fs::read_to_string(sandbox.path("serve.log"))
        .is_ok_and(|l| l.contains("fingerprint"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(sandbox.path("serve.log")).unwrap();
    let fingerprint = log
        .lines()
        .find_map(|l| l.split("certificate fingerprint ").nth(1))
        .expect("the agent printed its fingerprint")
        .trim()
        .to_owned();

    let push = |what: &str| {
        let mut c = in_ns(&ns.src);
        c.arg("push")
            .arg(&src)
            .args([
                "--to",
                "wss://10.78.0.2:7878",
                "--fingerprint",
                &fingerprint,
                "--once",
                "--json",
                "--token-file",
            ])
            .arg(sandbox.token_file())
            .arg("--known-peers")
            .arg(sandbox.known_peers())
            .arg("--state-dir")
            .arg(sandbox.state_dir());
        let started = Instant::now();
        let (code, stdout, stderr) = run_bounded(c, Duration::from_secs(60));
        let took = started.elapsed().as_secs_f64();
        assert_eq!(
            code, 0,
            "{what} over the uplink failed:\n{stdout}\n{stderr}"
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let changed = report["targets"][0]["bytes_changed"].as_u64().unwrap();
        let limit = changed as f64 * 8.0 / RATE_BITS;
        println!(
            "{what}: {changed} bytes in {took:.2} s over 20 Mbit/s, 30 ms, 0.1% loss (limit {limit:.2} s, {:.2}x)",
            took / limit
        );
        assert_same_tree(&src, &dst);
    };
    push("initial mirror");
    let mut tick = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("db/tick/ES.ncd"))
        .unwrap();
    std::io::Write::write_all(&mut tick, &vec![42u8; 300_000]).unwrap();
    drop(tick);
    push("a session's appends");
}
