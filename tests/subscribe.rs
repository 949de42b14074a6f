//! End to end on loopback: a server that dials out. An agent started with another agent's
//! subscribe code (`serve --subscribe`) receives that agent's folder over connections it
//! opens, stays a hot mirror as the trading PC pushes into the other, and is caught up at once
//! after it was down; the other agent lists it as a subscriber. The trading PC takes a
//! promoted server's folder back with `remote failback` over a connection it opens itself.
//! (The same through NAT routers, with inbound connections impossible: `tests/nat.rs`.)

mod common;

use common::{Sandbox, assert_same_tree, run_bounded, wait_identical, write_random};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A secret file readable by its owner only.
/// `rainmaker pair` with `extra` for the agent serving `root` on loopback `port`.
fn pair(sandbox: &Sandbox, root: &Path, port: u16, extra: &[&str]) -> (i32, String, String) {
    let mut command = sandbox.command();
    command
        .arg("pair")
        .arg("--root")
        .arg(root)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(sandbox.token_file())
        .args(extra);
    run_bounded(command, Duration::from_secs(10))
}

/// `rainmaker serve` for `root` on a free loopback port, named `name`, with `extra` flags.
fn serve(sandbox: &Sandbox, root: &Path, name: &str, extra: &[&str]) -> Command {
    let mut command = sandbox.command();
    command
        .arg("serve")
        .arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .arg("--token-file")
        .arg(sandbox.token_file())
        .args(extra)
        .env("RUST_LOG", "info");
    command
}

#[test]
fn a_server_that_dials_out_stays_a_hot_mirror_and_is_caught_up_when_it_returns() {
    let sandbox = Sandbox::new();
    let (home, cloud, offcloud) = (
        sandbox.dir("home"),
        sandbox.dir("cloud"),
        sandbox.dir("offcloud"),
    );
    write_random(&home.join("db/tick/ES/20261201.Last.ncd"), 1, 2 << 20);
    std::fs::create_dir_all(home.join("workspaces")).unwrap();
    std::fs::write(home.join("workspaces/Default.xml"), b"<w/>").unwrap();
    let subscribe_token = sandbox.secret("subscribe.token", "subscribe-secret-0123456789abcdef");
    let subscribe_flag = format!("--subscribe-token-file={}", subscribe_token.display());
    // A short idle limit: a subscriber that goes silent is noticed in a moment.
    let agent_a = sandbox.serve_admin(
        &cloud,
        &[&subscribe_flag],
        &[("RUST_LOG", "info"), ("RAINMAKER_TEST_IDLE_MS", "1500")],
    );
    let (code, stdout, stderr) = pair(
        &sandbox,
        &cloud,
        agent_a.port(),
        &["--subscribe", &subscribe_flag],
    );
    assert_eq!(code, 0, "pair --subscribe: {stdout}{stderr}");
    let subscribe_code = stdout.trim().to_owned();
    assert!(
        subscribe_code.starts_with("rainmaker-subscribe://127.0.0.1:"),
        "pair --subscribe prints the subscribe code: {subscribe_code}"
    );

    // A pairing code is refused as a subscription, before anything is dialed.
    let pairing_code = agent_a_code(&sandbox, &cloud, agent_a.port());
    let (code, _, stderr) = run_bounded(
        serve(
            &sandbox,
            &offcloud,
            "offcloud-b",
            &["--subscribe", &pairing_code],
        ),
        Duration::from_secs(10),
    );
    assert_ne!(
        code, 0,
        "serve --subscribe with a pairing code must not start"
    );
    assert!(
        stderr.contains("subscribe code") && !stderr.contains(&sandbox.token()),
        "the refusal names the code it needs and does not repeat the token: {stderr}"
    );

    sandbox.push(&home).target(&agent_a).run().assert_ok();
    let agent_b = sandbox.start_agent(serve(
        &sandbox,
        &offcloud,
        "offcloud-b",
        &["--subscribe", &subscribe_code],
    ));
    wait_identical(&cloud, &offcloud, Duration::from_secs(20), &|| {
        format!("offcloud:\n{}\ncloud:\n{}", agent_b.log(), agent_a.log())
    });

    // A subscribed server takes no mirror from anyone else: two sources would fight.
    let b_code = agent_a_code(&sandbox, &offcloud, agent_b.port());
    let direct = sandbox.push(&home).to(&b_code).run();
    assert!(
        direct.code != 0
            && direct
                .describe()
                .contains("receives its folder from 127.0.0.1:"),
        "a push into a subscribed server is refused with the reason: {}",
        direct.describe()
    );

    // A trading session: the PC pushes into the cloud, the off-cloud server follows.
    write_random(
        &home.join("db/tick/ES/20261201.Last.ncd"),
        2,
        (2 << 20) + 4096,
    );
    std::fs::write(home.join("workspaces/Default.xml"), b"<w v='2'/>").unwrap();
    sandbox.push(&home).target(&agent_a).run().assert_ok();
    wait_identical(&home, &offcloud, Duration::from_secs(10), &|| agent_b.log());

    // The cloud agent knows who dials in for its folder.
    let (code, stdout, stderr) = sandbox.remote(&agent_a, &sandbox.admin_token_file(), &["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("subscriber offcloud-b (dials in from 127.0.0.1:")
            && stdout.contains("connected, in sync at"),
        "status lists the subscriber, its address and that it is in sync:\n{stdout}"
    );

    // The off-cloud server freezes (its connection stays open, silent, as behind a cut link):
    // the cloud notices and says so; thawed, it dials again and catches up. (Unix: Windows has
    // no SIGSTOP; tests/nat.rs cuts a link instead, Linux only.)
    #[cfg(unix)]
    freeze_and_thaw(&sandbox, &agent_a, &agent_b, &home, &offcloud);

    // The off-cloud server is down while the PC trades on; back, it is caught up at once.
    agent_b.sigkill();
    write_random(&home.join("db/tick/NQ/20261202.Last.ncd"), 3, 1 << 20);
    std::fs::remove_file(home.join("workspaces/Default.xml")).unwrap();
    sandbox.push(&home).target(&agent_a).run().assert_ok();
    let started = Instant::now();
    let agent_b = sandbox.start_agent(serve(
        &sandbox,
        &offcloud,
        "offcloud-b",
        &["--subscribe", &subscribe_code],
    ));
    let took = wait_identical(&home, &offcloud, Duration::from_secs(10), &|| agent_b.log());
    eprintln!(
        "the returning subscriber was caught up {:.2} s after it started",
        started.elapsed().as_secs_f64().max(took.as_secs_f64())
    );
    assert_same_tree(&cloud, &offcloud);
    // The cloud agent's state folder never crosses: its key, its feeds' indexes.
    assert!(
        !offcloud.join(".rainmaker/feeds").exists(),
        "the cloud's state folder is not mirrored"
    );
    let key = |root: &Path| std::fs::read(root.join(".rainmaker/tls/key.der")).unwrap();
    assert_ne!(
        key(&offcloud),
        key(&cloud),
        "the off-cloud server has its own key, never the cloud's"
    );
    assert!(
        offcloud.join(".rainmaker/trash").exists(),
        "what the subscription deleted is in the off-cloud server's trash"
    );
    drop(agent_b);
}

/// Freezes the subscriber (SIGSTOP): the cloud must list it as not connected; thawed, it must
/// dial again and follow a new change.
#[cfg(unix)]
fn freeze_and_thaw(
    sandbox: &Sandbox,
    agent_a: &common::Agent,
    agent_b: &common::Agent,
    home: &Path,
    offcloud: &Path,
) {
    let status_of_b = || {
        let (code, stdout, stderr) =
            sandbox.remote(agent_a, &sandbox.admin_token_file(), &["status"]);
        assert_eq!(code, 0, "{stderr}");
        stdout
            .lines()
            .find(|l| l.starts_with("subscriber offcloud-b"))
            .unwrap_or_default()
            .to_owned()
    };
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &agent_b.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let frozen = Instant::now();
    while !status_of_b().contains("not connected") {
        assert!(
            frozen.elapsed() < Duration::from_secs(15),
            "the cloud still lists the frozen subscriber as connected: {}",
            status_of_b()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal("-CONT");
    std::fs::write(home.join("workspaces/Default.xml"), b"<w v='3'/>").unwrap();
    sandbox.push(home).target(agent_a).run().assert_ok();
    wait_identical(home, offcloud, Duration::from_secs(20), &|| agent_b.log());
    assert!(status_of_b().contains(": connected"), "{}", status_of_b());
}

/// The cloud agent's pairing code.
fn agent_a_code(sandbox: &Sandbox, root: &Path, port: u16) -> String {
    let (code, stdout, stderr) = pair(sandbox, root, port, &[]);
    assert_eq!(code, 0, "{stderr}");
    stdout.trim().to_owned()
}

#[test]
fn the_trading_pc_takes_its_folder_back_from_a_promoted_server_by_dialing_it() {
    let sandbox = Sandbox::new();
    let (home, cloud) = (sandbox.dir("home"), sandbox.dir("cloud"));
    write_random(&home.join("db/tick/ES.ncd"), 4, 1 << 20);
    std::fs::write(home.join("chart.xml"), b"<old/>").unwrap();
    let agent = sandbox.serve_admin(&cloud, &[], &[]);
    sandbox.push(&home).target(&agent).run().assert_ok();

    // Failover: the cloud is promoted and trades on; its folder moves ahead of home's.
    let admin = sandbox.admin_token_file();
    let (code, _, stderr) = sandbox.remote(&agent, &admin, &["promote", "--force"]);
    assert_eq!(code, 0, "{stderr}");
    write_random(&cloud.join("db/tick/ES.ncd"), 5, (1 << 20) + 8192);
    std::fs::write(cloud.join("chart.xml"), b"<new/>").unwrap();
    std::fs::write(cloud.join("traded-in-the-cloud.txt"), b"fills").unwrap();

    // Failback: home dials the cloud and receives; nothing listens at home.
    let (code, stdout, stderr) = sandbox.remote(
        &agent,
        &admin,
        &["failback", "--into", home.to_str().unwrap()],
    );
    assert_eq!(code, 0, "failback:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("now holds exactly what cloud holds"),
        "{stderr}"
    );
    assert_same_tree(&cloud, &home);
    assert!(
        std::fs::read_dir(home.join(".rainmaker/trash")).is_ok_and(|mut d| d.next().is_some()),
        "what the failback replaced at home is kept in its trash"
    );
    let (code, stdout, _) = sandbox.remote(&agent, &admin, &["status"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("pull by "),
        "the cloud's status records the pull:\n{stdout}"
    );
}

#[test]
fn an_emptied_cloud_folder_does_not_empty_the_server_that_subscribes_to_it() {
    let sandbox = Sandbox::new();
    let (cloud, offcloud) = (sandbox.dir("cloud"), sandbox.dir("offcloud"));
    for i in 0..20 {
        write_random(
            &cloud.join(format!("db/tick/ES/day{i}.Last.ncd")),
            i,
            10_000,
        );
    }
    let subscribe_token = sandbox.secret("subscribe.token", "subscribe-secret-0123456789abcdef");
    let subscribe_flag = format!("--subscribe-token-file={}", subscribe_token.display());
    let agent_a = sandbox.serve_admin(&cloud, &[&subscribe_flag], &[]);
    let (code, stdout, stderr) = pair(
        &sandbox,
        &cloud,
        agent_a.port(),
        &["--subscribe", &subscribe_flag],
    );
    assert_eq!(code, 0, "{stderr}");
    let agent_b = sandbox.start_agent(serve(
        &sandbox,
        &offcloud,
        "offcloud-b",
        &["--subscribe", stdout.trim()],
    ));
    wait_identical(&cloud, &offcloud, Duration::from_secs(20), &|| {
        agent_b.log()
    });

    // The cloud's folder is gone at once (a disk that failed, a folder moved away by mistake):
    // the backup behind NAT keeps everything, and the cloud says why it does not follow. (A
    // folder deleted file by file may lose what one sync sees gone before the guard holds, up
    // to its minimum of 10: tests/mirror.rs shows the deletions of successive syncs add up.)
    std::fs::rename(cloud.join("db"), sandbox.dir("moved-away").join("db")).unwrap();
    let started = Instant::now();
    let refused = loop {
        let (code, stdout, stderr) =
            sandbox.remote(&agent_a, &sandbox.admin_token_file(), &["status"]);
        assert_eq!(code, 0, "{stderr}");
        if stdout.contains("would delete ") {
            break stdout;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the cloud does not say why the subscriber stopped following:\n{stdout}\n{}",
            agent_b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(refused.contains("subscriber offcloud-b"), "{refused}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        common::list(&offcloud.join("db/tick/ES")).len(),
        20,
        "every file is still on the subscribed server\n{}",
        agent_b.log()
    );
}
