//! End to end: remote control of agents. A control client (`rainmaker remote`) with an
//! agent's admin token makes it push its folder to another agent; a pairing token or a wrong
//! token commands nothing; after a failover a target is promoted to source, the old source is
//! refused, and the new source fails the fresh data back home, then is demoted.

mod common;

use common::{Agent, Sandbox, assert_same_tree, run_bounded, write_random};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn admin_token(sandbox: &Sandbox) -> PathBuf {
    let path = sandbox.path("admin.token");
    if !path.exists() {
        std::fs::write(&path, "admin-secret-for-the-tests-0123456789").unwrap();
    }
    path
}

/// `rainmaker serve` with an admin token.
fn serve_admin(sandbox: &Sandbox, root: &Path) -> Agent {
    let mut command = sandbox.command();
    command
        .arg("serve")
        .arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0", "--name", "cloud"])
        .arg("--token-file")
        .arg(sandbox.token_file())
        .arg("--admin-token-file")
        .arg(admin_token(sandbox));
    sandbox.start_agent(command)
}

/// `rainmaker remote --agent AGENT ... ARGS`; returns the exit code, stdout and stderr.
fn remote(sandbox: &Sandbox, agent: &Agent, token: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command: Command = sandbox.command();
    command
        .arg("remote")
        .args(["--agent", &agent.url, "--fingerprint", agent.fp()])
        .arg("--admin-token-file")
        .arg(token)
        .args(args);
    run_bounded(command, Duration::from_secs(60))
}

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
    let agent_a = serve_admin(&sandbox, &a);
    let agent_b = sandbox.serve(&b);

    let wrong = sandbox.path("wrong.token");
    std::fs::write(&wrong, "not-a-token-of-this-agent").unwrap();
    let push = |token: &Path| {
        remote(
            &sandbox,
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
    let (code, status, _) = remote(
        &sandbox,
        &agent_a,
        &admin_token(&sandbox),
        &["status", "--json"],
    );
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["jobs"].as_array().unwrap().len(),
        0,
        "no push was started: {status}"
    );
    assert_eq!(status["role"], "target");

    let (code, events, stderr) = push(&admin_token(&sandbox));
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

#[test]
fn a_promoted_target_becomes_the_source_and_fails_the_fresh_data_back() {
    let sandbox = Sandbox::new();
    let (home, cloud) = (sandbox.dir("home"), sandbox.dir("cloud"));
    write_random(&home.join("db/tick/ES.ncd"), 4, 1 << 20);
    let agent_cloud = serve_admin(&sandbox, &cloud);
    let admin = admin_token(&sandbox);
    sandbox.push(&home).to(&agent_cloud.url).run().assert_ok();

    // While home keeps mirroring, the cloud refuses to become a second source.
    let watching = sandbox
        .push(&home)
        .to(&agent_cloud.url)
        .arg("--watch")
        .spawn_continuous();
    assert!(
        watching.wait_for_log("in sync", Duration::from_secs(20)),
        "{}",
        watching.log()
    );
    let (code, _, stderr) = remote(&sandbox, &agent_cloud, &admin, &["promote"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("mirroring into this folder right now"),
        "{stderr}"
    );
    assert_eq!(watching.terminate(), 0);

    // Failover: home is gone; the cloud is promoted (it heard from home a moment ago, so force).
    let (code, _, stderr) = remote(&sandbox, &agent_cloud, &admin, &["promote"]);
    assert_ne!(
        code, 0,
        "a source heard from a moment ago may still be alive"
    );
    assert!(stderr.contains("force"), "{stderr}");
    let (code, _, stderr) = remote(&sandbox, &agent_cloud, &admin, &["promote", "--force"]);
    assert_eq!(code, 0, "{stderr}");
    let refused = sandbox.push(&home).to(&agent_cloud.url).run();
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
    let (_, status, _) = remote(&sandbox, &agent_cloud, &admin, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["role"], "source");

    // Failback: home receives from the cloud, then the cloud is a target again.
    let agent_home = sandbox.serve(&home);
    let (code, out, stderr) = remote(
        &sandbox,
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
    let (code, _, stderr) = remote(&sandbox, &agent_cloud, &admin, &["demote"]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(home.join("after.txt"), b"home trades again").unwrap();
    sandbox.push(&home).to(&agent_cloud.url).run().assert_ok();
    assert_same_tree(&home, &cloud);
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
        .arg(admin_token(&sandbox));
    let agent = sandbox.start_agent(command);
    let (code, out, err) = remote(&sandbox, &agent, &admin_token(&sandbox), &["status"]);
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
