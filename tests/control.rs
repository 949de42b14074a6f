//! End to end: remote control of agents. A control client (`rainmaker remote`) with an
//! agent's admin token makes it push its folder to another agent; a pairing token or a wrong
//! token commands nothing; after a failover a target is promoted to source, the old source is
//! refused, and the new source fails the fresh data back home, then is demoted. The admin
//! token's reach is pinned: a commanded push goes only to a pinned certificate (or plain ws://
//! on loopback), only where `push_to` allows, and the admin client itself pins its agent.

mod common;

use common::{Agent, Sandbox, assert_same_tree, run_bounded, write_random};
use std::path::Path;
use std::time::Duration;

fn files_in(dir: &Path) -> usize {
    common::list(dir)
        .iter()
        .filter(|p| !p.starts_with(".rainmaker"))
        .count()
}

#[test]
fn an_agent_commanded_with_its_admin_token_pushes_and_other_tokens_command_nothing() {
    let sandbox = Sandbox::new();
    let (a, b) = (sandbox.dir("a"), sandbox.dir("b"));
    write_random(&a.join("db/tick/ES.ncd"), 3, 3 << 20);
    std::fs::write(a.join("workspace.xml"), b"<w/>").unwrap();
    let agent_a = sandbox.serve_admin(&a, &[], &[]);
    let agent_b = sandbox.serve(&b);

    let wrong = sandbox.path("wrong.token");
    std::fs::write(&wrong, "not-a-token-of-this-agent").unwrap();
    let push = |token: &Path| {
        sandbox.remote(
            &agent_a,
            token,
            &[
                "push",
                "--to",
                &agent_b.url,
                "--target-fingerprint",
                agent_b.fp(),
                "--follow",
                "--target-token-file",
                &sandbox.token_file().display().to_string(),
            ],
        )
    };
    let (code, _, stderr) = push(&sandbox.token_file());
    assert_ne!(code, 0, "the pairing token commands nothing");
    assert!(
        stderr.contains("admin token"),
        "the refusal says why: {stderr}"
    );
    let (code, _, stderr) = push(&wrong);
    assert_ne!(code, 0, "a wrong token commands nothing");
    assert!(stderr.contains("token"), "the refusal says why: {stderr}");
    assert_eq!(files_in(&b), 0, "nothing reached B");
    let (code, status, _) =
        sandbox.remote(&agent_a, &sandbox.admin_token_file(), &["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["jobs"].as_array().unwrap().len(),
        0,
        "no push was started: {status}"
    );
    assert_eq!(status["role"], "target");

    let (code, events, stderr) = push(&sandbox.admin_token_file());
    assert_eq!(
        code, 0,
        "a commanded push ends with B identical:\n{events}\n{stderr}"
    );
    assert!(
        events.contains("in_sync"),
        "the client saw the agent's events: {events}"
    );
    assert_same_tree(&a, &b);
}

// Not on Windows: it stops the agent with SIGTERM, which Windows does not have (the
// service stop is in tests/windows.rs).
#[cfg(unix)]
#[test]
fn a_promoted_target_becomes_the_source_and_fails_the_fresh_data_back() {
    let sandbox = Sandbox::new();
    let (home, cloud) = (sandbox.dir("home"), sandbox.dir("cloud"));
    write_random(&home.join("db/tick/ES.ncd"), 4, 1 << 20);
    let agent_cloud = sandbox.serve_admin(&cloud, &[], &[]);
    let admin = sandbox.admin_token_file();
    sandbox.push(&home).target(&agent_cloud).run().assert_ok();

    // While home keeps mirroring, the cloud refuses to become a second source.
    let watching = sandbox
        .push(&home)
        .target(&agent_cloud)
        .arg("--watch")
        .spawn_continuous();
    assert!(
        watching.wait_for_log("in sync", Duration::from_secs(20)),
        "{}",
        watching.log()
    );
    let (code, _, stderr) = sandbox.remote(&agent_cloud, &admin, &["promote"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("mirroring into this folder right now"),
        "{stderr}"
    );
    assert_eq!(watching.terminate(), 0);

    // Failover: home is gone; the cloud is promoted (it heard from home a moment ago, so force).
    let (code, _, stderr) = sandbox.remote(&agent_cloud, &admin, &["promote"]);
    assert_ne!(
        code, 0,
        "a source heard from a moment ago may still be alive"
    );
    assert!(stderr.contains("force"), "{stderr}");
    let (code, _, stderr) = sandbox.remote(&agent_cloud, &admin, &["promote", "--force"]);
    assert_eq!(code, 0, "{stderr}");
    let refused = sandbox.push(&home).target(&agent_cloud).run();
    assert_ne!(
        refused.code, 0,
        "the old source cannot write into the new source's folder"
    );
    assert!(
        refused.stderr.contains("promoted"),
        "{}",
        refused.describe()
    );

    // Trading goes on in the cloud.
    write_random(&cloud.join("db/tick/NQ.ncd"), 5, 300_000);
    std::fs::write(cloud.join("workspace.xml"), b"<w traded='on the cloud'/>").unwrap();
    let (_, status, _) = sandbox.remote(&agent_cloud, &admin, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["role"], "source");

    // Failback: home receives from the cloud, then the cloud is a target again.
    let agent_home = sandbox.serve(&home);
    let (code, out, stderr) = sandbox.remote(
        &agent_cloud,
        &admin,
        &[
            "push",
            "--to",
            &agent_home.url,
            "--target-fingerprint",
            agent_home.fp(),
            "--follow",
            "--target-token-file",
            &sandbox.token_file().display().to_string(),
        ],
    );
    assert_eq!(code, 0, "failback:\n{out}\n{stderr}");
    assert_same_tree(&cloud, &home);
    drop(agent_home);
    let (code, _, stderr) = sandbox.remote(&agent_cloud, &admin, &["demote"]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(home.join("after.txt"), b"home trades again").unwrap();
    sandbox.push(&home).target(&agent_cloud).run().assert_ok();
    assert_same_tree(&home, &cloud);
}

/// A listener that accepts nothing: whether anything connected to it.
fn silent() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// The jobs an agent reports.
fn jobs(sandbox: &Sandbox, agent: &Agent) -> Vec<serde_json::Value> {
    let (code, status, stderr) =
        sandbox.remote(agent, &sandbox.admin_token_file(), &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    status["jobs"].as_array().unwrap().clone()
}

#[test]
fn a_commanded_push_goes_only_to_a_pinned_certificate() {
    let sandbox = Sandbox::new();
    let a = sandbox.dir("a");
    std::fs::write(a.join("workspace.xml"), b"<w/>").unwrap();
    let agent_a = sandbox.serve_admin(&a, &[], &[]);
    let admin = sandbox.admin_token_file();
    let token_file = sandbox.token_file().display().to_string();
    let stranger = silent();
    let stranger_url = format!("wss://{}", stranger.local_addr().unwrap());

    // No fingerprint: the agent would trust whoever answers with its folder and the token.
    let (code, _, stderr) = sandbox.remote(
        &agent_a,
        &admin,
        &[
            "push",
            "--to",
            &stranger_url,
            "--target-token-file",
            &token_file,
        ],
    );
    assert_ne!(code, 0, "an unpinned target is refused");
    assert!(
        stderr.contains("pinned") && stderr.contains("pairing code"),
        "the refusal says how to pin the target: {stderr}"
    );
    // Plain ws:// off loopback, even with --insecure: the folder would cross in clear.
    let (code, _, stderr) = sandbox.remote(
        &agent_a,
        &admin,
        &[
            "push",
            "--to",
            "ws://192.0.2.1:7878",
            "--insecure",
            "--target-token-file",
            &token_file,
        ],
    );
    assert_ne!(code, 0, "plain ws:// off loopback is refused");
    assert!(stderr.contains("loopback"), "{stderr}");
    // Plain ws:// on loopback needs --insecure on the client.
    let (code, _, stderr) = sandbox.remote(
        &agent_a,
        &admin,
        &[
            "push",
            "--to",
            "ws://127.0.0.1:9",
            "--target-token-file",
            &token_file,
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("--insecure"), "{stderr}");

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        stranger.accept().is_err(),
        "the agent must not connect to a target it was refused to push to"
    );
    assert!(
        jobs(&sandbox, &agent_a).is_empty(),
        "no push was started for a refused target"
    );
}

#[test]
fn push_to_limits_where_an_agent_pushes() {
    let sandbox = Sandbox::new();
    let (a, b, c) = (sandbox.dir("a"), sandbox.dir("b"), sandbox.dir("c"));
    std::fs::write(a.join("workspace.xml"), b"<w/>").unwrap();
    let (agent_b, agent_c) = (sandbox.serve(&b), sandbox.serve(&c));
    let allowed = format!("127.0.0.1:{}", agent_b.port());
    let agent_a = sandbox.serve_admin(&a, &["--push-to", &allowed], &[]);
    let admin = sandbox.admin_token_file();

    let code_c = agent_c.code.clone().unwrap();
    let (code, _, stderr) = sandbox.remote(&agent_a, &admin, &["push", "--to", &code_c]);
    assert_ne!(code, 0, "a target outside push_to is refused");
    assert!(
        stderr.contains("push_to") && stderr.contains(&format!("127.0.0.1:{}", agent_c.port())),
        "the refusal names the list and the address to add: {stderr}"
    );
    assert_eq!(files_in(&c), 0, "nothing reached C");

    let code_b = agent_b.code.clone().unwrap();
    let (code, out, stderr) =
        sandbox.remote(&agent_a, &admin, &["push", "--to", &code_b, "--follow"]);
    assert_eq!(
        code, 0,
        "a target in push_to, by its pairing code:\n{out}\n{stderr}"
    );
    assert_same_tree(&a, &b);
}

#[test]
fn the_admin_client_pins_its_agent() {
    let sandbox = Sandbox::new();
    let a = sandbox.dir("a");
    let agent_a = sandbox.serve_admin(&a, &[], &[]);
    let admin = sandbox.admin_token_file();
    let run = |args: &[&str]| {
        let mut command = sandbox.command();
        command.arg("remote").args(args);
        run_bounded(command, Duration::from_secs(30))
    };

    // Plain ws:// to another machine: refused before connecting.
    let admin_file = admin.display().to_string();
    let (code, _, stderr) = run(&[
        "--agent",
        "ws://192.0.2.1:7878",
        "--admin-token-file",
        &admin_file,
        "status",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("loopback"),
        "the admin token is not sent in clear off loopback: {stderr}"
    );
    // Neither pinned nor known: refused, and the stranger is not contacted.
    let stranger = silent();
    let stranger_url = format!("wss://{}", stranger.local_addr().unwrap());
    let (code, _, stderr) = run(&[
        "--agent",
        &stranger_url,
        "--admin-token-file",
        &admin_file,
        "--known-peers",
        &sandbox.known_peers().display().to_string(),
        "status",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("pairing code"), "{stderr}");
    assert!(stranger.accept().is_err(), "the stranger got no connection");

    // The admin code, as `rainmaker pair --admin` prints it, is all a client needs.
    let mut pair = sandbox.command();
    pair.arg("pair")
        .arg("--root")
        .arg(&a)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", agent_a.port()),
            "--admin",
        ])
        .arg("--token-file")
        .arg(sandbox.token_file())
        .arg("--admin-token-file")
        .arg(&admin);
    let (code, admin_code, stderr) = run_bounded(pair, Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    let (code, status, stderr) = run(&["--agent", admin_code.trim(), "status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(status.contains("\"role\""), "{status}");
    // The pairing code only mirrors: the client says which code it needs.
    let pairing_code = sandbox.pair(&a, agent_a.port());
    let (code, _, stderr) = run(&["--agent", &pairing_code, "status"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("pair --admin"), "{stderr}");
}

#[test]
fn an_agents_name_reaches_the_terminal_with_its_control_characters_escaped() {
    let sandbox = Sandbox::new();
    let root = sandbox.dir("a");
    // Retitles the terminal, rings the bell and clears the screen, if printed as it is.
    let name = "cloud\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let mut command = sandbox.command();
    command
        .arg("serve")
        .arg("--root")
        .arg(&root)
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .arg("--token-file")
        .arg(sandbox.token_file())
        .arg("--admin-token-file")
        .arg(sandbox.admin_token_file());
    let agent = sandbox.start_agent(command);
    let (code, out, err) = sandbox.remote(&agent, &sandbox.admin_token_file(), &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains(['\u{1b}', '\u{7}']),
        "a name from a peer must never reach the terminal raw: {out:?}"
    );
    assert!(
        out.contains("cloud\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"),
        "it is shown, escaped: {out:?}"
    );
}
