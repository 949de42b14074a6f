//! What the tray app's tests share: child process groups killed when dropped, an Xvfb display
//! of their own, free loopback ports, an agent to mirror to, comparing files.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process group that is killed when dropped.
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.0.wait();
    }
}

/// Starts `command` in a process group of its own.
pub fn spawn_group(command: &mut Command) -> Group {
    use std::os::unix::process::CommandExt;
    let program = format!("{:?}", command.get_program());
    Group(command.process_group(0).spawn().unwrap_or_else(|e| {
        panic!("cannot start {program}: {e}; run scripts/test, which installs it")
    }))
}

/// Starts `command` and returns it with the first line it prints (an address, a number).
pub fn spawn_reading_line(command: &mut Command) -> (Group, String) {
    let mut child = spawn_group(command.stdout(Stdio::piped()));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

/// Starts Xvfb on a free display; returns it and its `:N` name.
pub fn xvfb() -> (Group, String) {
    let (child, number) = spawn_reading_line(
        Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x860x24",
                "-nolisten",
                "tcp",
            ])
            .stderr(Stdio::null()),
    );
    assert!(
        number.parse::<u32>().is_ok(),
        "Xvfb printed no display number: {number:?}"
    );
    (child, format!(":{number}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "nothing listens on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether files `a` and `b` both exist and hold the same bytes.
pub fn identical(a: &std::path::Path, b: &std::path::Path) -> bool {
    std::fs::read(a)
        .ok()
        .is_some_and(|x| std::fs::read(b).ok() == Some(x))
}

/// An agent of the engine's on a free loopback port, receiving into `root` (made if missing)
/// from sources with the token `token`, commanded with `admin` if given; runs until `stop`.
/// Returns its address (HOST:PORT) and certificate fingerprint.
pub async fn agent(
    root: &std::path::Path,
    name: &str,
    token: &str,
    admin: Option<&str>,
    stop: &tokio_util::sync::CancellationToken,
) -> (String, String) {
    use rainmaker_engine::engine::{ServeOptions, Server};
    std::fs::create_dir_all(root).unwrap();
    let server = Server::bind(ServeOptions {
        admin_token: admin.map(str::to_owned),
        subscribe_token: None,
        subscribe: None,
        // As `rainmaker serve` keeps it: the dashboard restores from it.
        trash_retention: Some(rainmaker_engine::trash::DEFAULT_RETENTION),
        ..ServeOptions::new(root.to_path_buf(), "127.0.0.1:0", token, name)
    })
    .await
    .unwrap();
    let address = format!("127.0.0.1:{}", server.local_addr().port());
    let fingerprint = server.fingerprint().unwrap().to_owned();
    tokio::spawn(server.run(stop.clone()));
    (address, fingerprint)
}
