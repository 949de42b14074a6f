//! The tray's commands through Tauri's mock runtime (no display): a real `rainmaker` server
//! (the engine's, on a loopback port, with TLS) is added, a folder is picked and synced, and
//! bad input comes back as `{code, message}` with nothing changed.

mod common;

use common::{agent, identical};
use rainmaker_tray::runner::Runner;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{INVOKE_KEY, MockRuntime, mock_builder, mock_context, noop_assets};
use tauri::webview::InvokeRequest;
use tauri::{Manager, WebviewWindow, WebviewWindowBuilder};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "pairing-token-for-tests";

struct Harness {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    source: std::path::PathBuf,
    config: std::path::PathBuf,
    url: String,
    fingerprint: String,
    window: WebviewWindow<MockRuntime>,
    _app: tauri::App<MockRuntime>,
    runner: Arc<Runner>,
    stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.runner.stop();
        self.stop.cancel();
    }
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (root, source) = (dir.path().join("backup"), dir.path().join("NinjaTrader 8"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(source.join("db/tick")).unwrap();
    std::fs::create_dir_all(source.join("cache")).unwrap();
    std::fs::write(source.join("db/tick/ES.ncd"), vec![7u8; 300_000]).unwrap();
    std::fs::write(source.join("workspace.xml"), b"<workspace/>").unwrap();
    std::fs::write(source.join("cache/bars.tmp"), b"rebuilt on the backup").unwrap();
    let stop = CancellationToken::new();
    let (url, fingerprint) =
        tauri::async_runtime::block_on(agent(&root, "backup-1", TOKEN, None, &stop));
    let config = dir.path().join("config/rainmaker.toml");
    let rt = tauri::async_runtime::handle().inner().clone();
    let (runner, _notices) = Runner::start(config.clone(), dir.path().join("data"), rt).unwrap();
    let app = rainmaker_tray::commands(mock_builder())
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .build(mock_context(noop_assets()))
        .unwrap();
    app.manage(runner.clone());
    let window = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    Harness {
        root,
        source,
        config,
        url,
        fingerprint,
        window,
        _app: app,
        runner,
        stop,
        _dir: dir,
    }
}

/// Invokes a command as the front end does; `Err` is the `{code, message}` it received.
fn call(h: &Harness, cmd: &str, args: Value) -> Result<Value, Value> {
    tauri::test::get_ipc_response(
        &h.window,
        InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| body.deserialize::<Value>().unwrap())
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The arguments of `save_folder` that add a folder of `h.source`.
fn folder(h: &Harness, targets: &[&str], mode: &str) -> Value {
    folder_of(&h.source, None, targets, mode)
}

/// The arguments of `save_folder` that save `source` as folder `index` (`None`: a new one).
fn folder_of(source: &Path, index: Option<usize>, targets: &[&str], mode: &str) -> Value {
    json!({ "index": index, "folder": {
        "source": source.display().to_string(),
        "preset": "ninjatrader8",
        "exclude": ["cache", "log"],
        "targets": targets,
        "mode": mode,
        "every_minutes": null,
        "bwlimit_mbit": null,
    }})
}

/// The dashboard's row of the server `name`.
fn server(dashboard: &Value, name: &str) -> Value {
    dashboard["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} on the dashboard: {dashboard}"))
        .clone()
}

#[test]
fn a_server_added_with_its_fingerprint_receives_the_folder_on_sync() {
    let h = harness();
    let peeked = call(&h, "peek_server", json!({ "url": h.url })).unwrap();
    assert_eq!(
        peeked, h.fingerprint,
        "the dashboard shows the certificate the server really holds"
    );

    let refused = call(
        &h,
        "add_server",
        json!({ "name": "cloud-1", "url": h.url, "token": "wrong", "fingerprint": h.fingerprint }),
    )
    .unwrap_err();
    assert_eq!(refused["code"], "wrong_token", "{refused}");
    assert!(
        !h.config.exists(),
        "a refused server is not saved: nothing was written"
    );

    call(
        &h,
        "add_server",
        json!({ "name": "cloud-1", "url": h.url, "token": TOKEN, "fingerprint": h.fingerprint }),
    )
    .unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(
        text.contains("name = \"cloud-1\"") && text.contains(&h.fingerprint),
        "the server and its pinned fingerprint are in rainmaker.toml:\n{text}"
    );
    assert!(
        !text.contains(TOKEN),
        "the token is kept in its own file, not in the configuration"
    );

    call(&h, "save_folder", folder(&h, &["cloud-1"], "manual")).unwrap();
    call(&h, "sync_now", json!({})).unwrap();
    wait_for("the target is in sync", Duration::from_secs(30), || {
        let d = call(&h, "dashboard", json!({})).unwrap();
        d["servers"][0]["state"] == "in sync"
    });
    for file in ["db/tick/ES.ncd", "workspace.xml"] {
        assert!(
            identical(&h.source.join(file), &h.root.join(file)),
            "{file} arrived whole"
        );
    }
    assert!(
        !h.root.join("cache").exists(),
        "the preset's cache folder is left out"
    );
    let d = call(&h, "dashboard", json!({})).unwrap();
    assert_eq!(d["overall"], "in_sync", "{d}");
    assert_eq!(d["servers"][0]["online"], true);
    assert_eq!(d["servers"][0]["role"], "target");
    assert!(d["servers"][0]["last_sync"].as_f64().is_some());
    assert!(
        d["activity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["text"].as_str().unwrap().contains("cloud-1 is in sync")),
        "the activity log says so: {}",
        d["activity"]
    );

    // The settings survive a restart: a new runner reads the same file.
    let rt = tauri::async_runtime::handle().inner().clone();
    let (again, _) = Runner::start(h.config.clone(), h.config.with_file_name("data2"), rt).unwrap();
    let d2 = again.dashboard();
    again.stop();
    assert_eq!(d2.servers.len(), 1);
    assert_eq!(d2.folders.len(), 1);
    assert_eq!(d2.folders[0].form.targets, ["cloud-1"]);
}

#[test]
fn bad_input_is_refused_with_a_code_and_changes_nothing() {
    let h = harness();
    for (args, why) in [
        (json!({ "url": "cloud.example.com" }), "port is missing"),
        (
            json!({ "url": "http://cloud.example.com:80" }),
            "not a server address",
        ),
    ] {
        let e = call(&h, "peek_server", args).unwrap_err();
        assert_eq!(e["code"], "bad_input", "{e}");
        assert!(e["message"].as_str().unwrap().contains(why), "{e}");
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = call(
        &h,
        "peek_server",
        json!({ "url": format!("127.0.0.1:{port}") }),
    )
    .unwrap_err();
    assert_eq!(e["code"], "unreachable", "{e}");

    let e = call(
        &h,
        "add_server",
        json!({ "name": "x", "url": h.url, "token": TOKEN, "fingerprint": format!("SHA256:{}", "0".repeat(64)) }),
    )
    .unwrap_err();
    assert_eq!(
        e["code"], "fingerprint",
        "another certificate is refused: {e}"
    );

    let mut missing = folder(&h, &[], "watch");
    missing["folder"]["source"] = json!(h.source.join("nope").display().to_string());
    let e = call(&h, "save_folder", missing).unwrap_err();
    assert_eq!(e["code"], "bad_input", "{e}");
    let mut bad = folder(&h, &["nobody"], "watch");
    let e = call(&h, "save_folder", bad.clone()).unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("nobody"), "{e}");
    bad["folder"]["targets"] = json!([]);
    bad["folder"]["exclude"] = json!(["../up"]);
    let e = call(&h, "save_folder", bad).unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("inside the folder"),
        "{e}"
    );
    let e = call(&h, "sync_now", json!({})).unwrap_err();
    assert_eq!(e["code"], "bad_input", "nothing to sync yet: {e}");
    assert!(!h.config.exists(), "no bad input reached the file");
    let written: Vec<_> = std::fs::read_dir(&h.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".rainmaker")
        .collect();
    assert!(
        written.is_empty(),
        "nothing was written on the target: {written:?}"
    );
}

/// Another agent, with an admin token, serving `root`.
fn agent_with_admin(root: &Path, name: &str, stop: &CancellationToken) -> (String, String) {
    tauri::async_runtime::block_on(agent(root, name, TOKEN, Some(ADMIN), stop))
}

const ADMIN: &str = "admin-token-for-tests";

/// Adds cloud-a (an agent with its admin token, serving a folder beside this PC's) as the
/// target of this PC's folder, synced once; returns cloud-a's folder.
fn admin_server_in_sync(h: &Harness) -> std::path::PathBuf {
    let cloud = h.source.parent().unwrap().join("cloud-a");
    let (url, fp) = agent_with_admin(&cloud, "cloud-a", &h.stop);
    call(
        h,
        "add_server",
        json!({ "name": "cloud-a", "url": url, "token": TOKEN, "fingerprint": fp, "adminToken": ADMIN }),
    )
    .unwrap();
    call(h, "save_folder", folder(h, &["cloud-a"], "manual")).unwrap();
    call(h, "sync_now", json!({})).unwrap();
    wait_for("cloud-a is in sync", Duration::from_secs(30), || {
        let d = call(h, "dashboard", json!({})).unwrap();
        server(&d, "cloud-a")["state"] == "in sync"
    });
    cloud
}

#[test]
fn two_folders_are_mirrored_each_to_its_own_server() {
    let h = harness();
    let dir = h.source.parent().unwrap().to_path_buf();
    let (mt5, mt5_backup) = (dir.join("MetaTrader 5"), dir.join("backup-mt5"));
    std::fs::create_dir_all(mt5.join("Bases")).unwrap();
    std::fs::write(mt5.join("Bases/EURUSD.hcc"), vec![3u8; 250_000]).unwrap();
    std::fs::write(mt5.join("config.ini"), b"[Common]").unwrap();
    let (b_url, b_fp) = agent_with_admin(&mt5_backup, "backup-2", &h.stop);
    for (name, url, fp) in [
        ("cloud-1", &h.url, &h.fingerprint),
        ("cloud-2", &b_url, &b_fp),
    ] {
        call(
            &h,
            "add_server",
            json!({ "name": name, "url": url, "token": TOKEN, "fingerprint": fp }),
        )
        .unwrap();
    }
    call(&h, "save_folder", folder(&h, &["cloud-1"], "manual")).unwrap();

    // A server receives one folder; a folder is mirrored once.
    let e = call(
        &h,
        "save_folder",
        folder_of(&mt5, None, &["cloud-1"], "manual"),
    )
    .unwrap_err();
    assert_eq!(e["code"], "bad_input", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("already receives"),
        "{e}"
    );
    let e = call(&h, "save_folder", folder(&h, &["cloud-2"], "manual")).unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("already mirrored"),
        "{e}"
    );

    call(
        &h,
        "save_folder",
        folder_of(&mt5, None, &["cloud-2"], "watch"),
    )
    .unwrap();
    let d = call(&h, "dashboard", json!({})).unwrap();
    let folders = d["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 2, "{d}");
    assert_eq!(folders[1]["form"]["mode"], "watch");
    assert_eq!(server(&d, "cloud-2")["folder"], mt5.display().to_string());
    // The continuous folder mirrors by itself; the manual one waits for Sync.
    wait_for("cloud-2 is in sync", Duration::from_secs(30), || {
        let d = call(&h, "dashboard", json!({})).unwrap();
        server(&d, "cloud-2")["state"] == "in sync"
    });
    assert!(identical(
        &mt5.join("Bases/EURUSD.hcc"),
        &mt5_backup.join("Bases/EURUSD.hcc")
    ));
    assert!(
        !h.root.join("workspace.xml").exists(),
        "NinjaTrader waits for Sync"
    );

    call(&h, "sync_now", json!({})).unwrap();
    wait_for("both are in sync", Duration::from_secs(30), || {
        let d = call(&h, "dashboard", json!({})).unwrap();
        d["overall"] == "in_sync"
            && d["folders"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["state"] == "in_sync")
    });
    assert!(identical(
        &h.source.join("workspace.xml"),
        &h.root.join("workspace.xml")
    ));
    assert!(
        !h.root.join("Bases").exists() && !mt5_backup.join("workspace.xml").exists(),
        "each server holds its own folder only"
    );

    // Removing a folder stops its mirror and touches nothing on its server.
    call(&h, "remove_folder", json!({ "index": 1 })).unwrap();
    std::fs::write(mt5.join("config.ini"), b"[Common] changed").unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        std::fs::read(mt5_backup.join("config.ini")).unwrap(),
        b"[Common]",
        "a removed folder is mirrored no more"
    );
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(!text.contains("MetaTrader"), "{text}");
}

#[test]
fn the_dashboard_makes_one_server_push_to_another_and_promotes_it() {
    let h = harness();
    let dir = h.source.parent().unwrap().to_path_buf();
    let (a_root, b_root) = (dir.join("cloud-a"), dir.join("cloud-b"));
    std::fs::create_dir_all(a_root.join("db")).unwrap();
    std::fs::write(a_root.join("db/ES.ncd"), vec![9u8; 200_000]).unwrap();
    std::fs::write(a_root.join("workspace.xml"), b"<traded on cloud a/>").unwrap();
    let (a_url, a_fp) = agent_with_admin(&a_root, "cloud-a", &h.stop);
    let (b_url, b_fp) = agent_with_admin(&b_root, "cloud-b", &h.stop);

    let wrong = call(
        &h,
        "add_server",
        json!({ "name": "cloud-a", "url": a_url, "token": TOKEN, "fingerprint": a_fp, "adminToken": "nope" }),
    )
    .unwrap_err();
    assert_eq!(
        wrong["code"], "wrong_token",
        "a wrong admin token is refused: {wrong}"
    );
    call(
        &h,
        "add_server",
        json!({ "name": "cloud-a", "url": a_url, "token": TOKEN, "fingerprint": a_fp, "adminToken": ADMIN }),
    )
    .unwrap();
    call(
        &h,
        "add_server",
        json!({ "name": "cloud-b", "url": b_url, "token": TOKEN, "fingerprint": b_fp, "adminToken": null }),
    )
    .unwrap();
    let e = call(
        &h,
        "remote_push",
        json!({ "from": "cloud-b", "to": ["cloud-a"] }),
    )
    .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("admin token"),
        "{e}"
    );

    call(
        &h,
        "remote_push",
        json!({ "from": "cloud-a", "to": ["cloud-b"] }),
    )
    .unwrap();
    wait_for(
        "cloud-b holds cloud-a's folder",
        Duration::from_secs(30),
        || {
            identical(&a_root.join("db/ES.ncd"), &b_root.join("db/ES.ncd"))
                && identical(&a_root.join("workspace.xml"), &b_root.join("workspace.xml"))
        },
    );
    wait_for("the push is reported done", Duration::from_secs(30), || {
        let d = call(&h, "dashboard", json!({})).unwrap();
        d["activity"].as_array().unwrap().iter().any(|a| {
            a["text"]
                .as_str()
                .unwrap()
                .contains("cloud-a finished its push")
        })
    });

    call(
        &h,
        "set_role",
        json!({ "name": "cloud-a", "source": true, "force": false }),
    )
    .unwrap();
    let d = call(&h, "dashboard", json!({})).unwrap();
    let a = server(&d, "cloud-a");
    assert_eq!(a["remote_role"], "source", "{a}");
    assert_eq!(a["admin"], true);
    let e = call(
        &h,
        "set_role",
        json!({ "name": "cloud-b", "source": true, "force": false }),
    )
    .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("admin token"),
        "{e}"
    );
    call(
        &h,
        "set_role",
        json!({ "name": "cloud-a", "source": false, "force": false }),
    )
    .unwrap();
    let d = call(&h, "dashboard", json!({})).unwrap();
    let a = server(&d, "cloud-a");
    assert_eq!(a["remote_role"], "target", "{a}");
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(
        text.contains("admin_token_file") && !text.contains(ADMIN),
        "{text}"
    );
}

#[test]
fn a_server_s_push_is_paused_resumed_and_stopped_from_the_dashboard() {
    let h = harness();
    let dir = h.source.parent().unwrap().to_path_buf();
    let a_root = dir.join("cloud-a");
    std::fs::create_dir_all(a_root.join("db")).unwrap();
    std::fs::write(a_root.join("db/ES.ncd"), vec![9u8; 200_000]).unwrap();
    let (a_url, a_fp) = agent_with_admin(&a_root, "cloud-a", &h.stop);
    // A server that is added, then goes silent: it takes connections and never answers, so a
    // push to it runs (until the handshake's time limit) for the buttons to act on.
    let silent_stop = h.stop.child_token();
    let (s_url, s_fp) = agent_with_admin(&dir.join("silent"), "silent", &silent_stop);
    for (name, url, fp, admin) in [
        ("cloud-a", &a_url, &a_fp, Some(ADMIN)),
        ("silent", &s_url, &s_fp, None),
    ] {
        call(
            &h,
            "add_server",
            json!({ "name": name, "url": url, "token": TOKEN, "fingerprint": fp, "adminToken": admin }),
        )
        .unwrap();
    }
    silent_stop.cancel();
    std::thread::sleep(Duration::from_millis(300));
    let silent = std::net::TcpListener::bind(&s_url).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });

    call(
        &h,
        "remote_push",
        json!({ "from": "cloud-a", "to": ["silent"] }),
    )
    .unwrap();
    let push = |action: &str| {
        call(
            &h,
            "control_push",
            json!({ "name": "cloud-a", "job": 1, "action": action }),
        )
    };
    let state = || {
        let d = call(&h, "dashboard", json!({})).unwrap();
        server(&d, "cloud-a")["pushes"][0].clone()
    };
    push("pause").unwrap();
    assert_eq!(state()["state"], "paused", "{}", state());
    assert_eq!(state()["to"], json!(["silent"]));
    // A push that is still stopping is resumed a moment later.
    wait_for("the push resumes", Duration::from_secs(10), || {
        push("resume").is_ok()
    });
    assert_eq!(state()["state"], "running", "{}", state());
    push("stop").unwrap();
    assert_eq!(state()["state"], "stopped", "{}", state());
    let e = push("pause").unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("push 1 is stopped"),
        "the server's reason reaches the dashboard: {e}"
    );
    let e = call(
        &h,
        "control_push",
        json!({ "name": "silent", "job": 1, "action": "stop" }),
    )
    .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("admin token"),
        "{e}"
    );
}

#[test]
fn a_server_is_added_from_its_pairing_code_once_the_certificate_is_the_pinned_one() {
    let h = harness();
    let code = format!("rainmaker://{}#{}/{TOKEN}", h.url, h.fingerprint);

    // A code whose pin is not the certificate that answers (a hijacked address): refused at
    // the confirmation step already, with a code the UI can act on.
    let other = format!("SHA256:{}", "0".repeat(64));
    let hijacked = format!("rainmaker://{}#{other}/{TOKEN}", h.url);
    let e = call(&h, "peek_server", json!({ "url": hijacked })).unwrap_err();
    assert_eq!(e["code"], "fingerprint", "{e}");
    let e = call(
        &h,
        "add_server",
        json!({ "name": "cloud-1", "url": hijacked, "token": "", "fingerprint": h.fingerprint }),
    )
    .unwrap_err();
    assert_eq!(
        e["code"], "fingerprint",
        "the confirmed fingerprint must be the pinned one: {e}"
    );
    assert!(!h.config.exists(), "nothing was saved");

    // The real code: the confirmation step shows the pinned certificate, and the code alone
    // (no token typed) adds the server.
    let peeked = call(&h, "peek_server", json!({ "url": code })).unwrap();
    assert_eq!(peeked, h.fingerprint);
    call(
        &h,
        "add_server",
        json!({ "name": "cloud-1", "url": code, "token": "", "fingerprint": peeked }),
    )
    .unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(
        text.contains(&format!("wss://{}", h.url)) && text.contains(&h.fingerprint),
        "the address and the pin from the code are in rainmaker.toml:\n{text}"
    );
    assert!(
        !text.contains(TOKEN) && !text.contains("rainmaker://"),
        "the token goes to its own file, not into the configuration:\n{text}"
    );
}

#[test]
fn servers_whose_names_look_alike_keep_a_token_file_each() {
    let h = harness();
    let other_root = h.source.parent().unwrap().join("other");
    let (other_url, other_fp) = agent_with_admin(&other_root, "other", &h.stop);
    call(
        &h,
        "add_server",
        json!({ "name": "cloud a", "url": h.url, "token": TOKEN, "fingerprint": h.fingerprint }),
    )
    .unwrap();
    // The same name once made safe for a file name.
    call(
        &h,
        "add_server",
        json!({ "name": "cloud/a", "url": other_url, "token": TOKEN, "fingerprint": other_fp, "adminToken": ADMIN }),
    )
    .unwrap();
    let config = rainmaker_engine::config::load(&h.config).unwrap();
    let [first, second] = &config.servers[..] else {
        panic!("two servers were added: {:?}", config.servers);
    };
    assert_ne!(
        first.token_file, second.token_file,
        "each server has a token file of its own"
    );
    let second_admin = second.admin_token_file.clone().unwrap();

    call(&h, "remove_server", json!({ "name": "cloud/a" })).unwrap();
    let config = rainmaker_engine::config::load(&h.config).unwrap();
    assert_eq!(
        rainmaker_engine::config::read_token(&config.servers[0].token_file).unwrap(),
        TOKEN,
        "removing one server must not delete another's token"
    );
    assert!(
        !second.token_file.exists() && !second_admin.exists(),
        "the removed server's own token files go with it"
    );
    call(&h, "save_folder", folder(&h, &["cloud a"], "manual")).unwrap();
    call(&h, "sync_now", json!({})).unwrap();
    wait_for(
        "the remaining server is in sync",
        Duration::from_secs(30),
        || {
            let d = call(&h, "dashboard", json!({})).unwrap();
            server(&d, "cloud a")["state"] == "in sync"
        },
    );
}

#[test]
fn bring_back_takes_the_folder_from_a_promoted_server_over_a_connection_this_pc_opens() {
    let h = harness();
    let cloud = admin_server_in_sync(&h);

    // Failover: cloud-a becomes the source and trades on.
    call(
        &h,
        "set_role",
        json!({ "name": "cloud-a", "source": true, "force": true }),
    )
    .unwrap();
    std::fs::write(cloud.join("workspace.xml"), b"<traded in the cloud/>").unwrap();
    std::fs::write(cloud.join("db/tick/NQ.ncd"), vec![3u8; 150_000]).unwrap();

    // Bring back, with no address: this PC dials cloud-a and receives.
    call(
        &h,
        "receive_from",
        json!({ "from": "cloud-a", "address": null }),
    )
    .unwrap();
    let again = call(
        &h,
        "receive_from",
        json!({ "from": "cloud-a", "address": null }),
    );
    wait_for("the folder is back whole", Duration::from_secs(30), || {
        let d = call(&h, "dashboard", json!({})).unwrap();
        d["activity"].as_array().unwrap().iter().any(|a| {
            a["text"]
                .as_str()
                .unwrap()
                .contains("This PC's folder is back whole from cloud-a")
        })
    });
    if let Err(e) = again {
        assert_eq!(e["code"], "busy", "a second Bring back waits its turn: {e}");
    }
    for file in ["workspace.xml", "db/tick/NQ.ncd", "db/tick/ES.ncd"] {
        assert!(
            identical(&cloud.join(file), &h.source.join(file)),
            "{file} came back"
        );
    }
    // The line is logged first, and then every server is asked for its state again.
    wait_for(
        "cloud-a reports this PC's pull, in sync",
        Duration::from_secs(30),
        || {
            let d = call(&h, "dashboard", json!({})).unwrap();
            server(&d, "cloud-a")["feeds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["once"] == true && f["in_sync_at"].is_number())
        },
    );
    let d = call(&h, "dashboard", json!({})).unwrap();
    assert_eq!(
        d["paused"]["by"], "you",
        "sync from this PC stays paused until the user resumes: {d}"
    );
}

#[test]
fn a_server_added_by_its_codes_alone_is_named_as_it_names_itself_and_can_be_commanded() {
    let h = harness();
    let dir = h.source.parent().unwrap().to_path_buf();
    let (url, fp) = agent_with_admin(&dir.join("cloud-a"), "cloud-a", &h.stop);
    let authority = url.trim_start_matches("wss://");
    let code = format!("rainmaker://{authority}#{fp}/{TOKEN}");
    let admin_code = format!("rainmaker-admin://{authority}#{fp}/{ADMIN}");

    // Another server's admin code is refused, and nothing is saved.
    let foreign = format!(
        "rainmaker-admin://{authority}#SHA256:{}/{ADMIN}",
        "0".repeat(64)
    );
    let e = call(
        &h,
        "add_server",
        json!({ "name": "", "url": code, "token": "", "fingerprint": fp, "adminToken": foreign }),
    )
    .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("another server's"),
        "{e}"
    );
    assert!(!h.config.exists());

    call(
        &h,
        "add_server",
        json!({ "name": "", "url": code, "token": "", "fingerprint": fp, "adminToken": admin_code }),
    )
    .unwrap();
    let d = call(&h, "dashboard", json!({})).unwrap();
    let a = server(&d, "cloud-a");
    assert_eq!(a["admin"], true, "the admin code's token was kept: {a}");
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(
        !text.contains(ADMIN) && !text.contains("rainmaker-admin://"),
        "{text}"
    );
    // It can be commanded with what the admin code carried.
    call(
        &h,
        "set_role",
        json!({ "name": "cloud-a", "source": true, "force": false }),
    )
    .unwrap();
    // A second server that calls itself the same gets a name of its own.
    let (url2, fp2) = agent_with_admin(&dir.join("cloud-a2"), "cloud-a", &h.stop);
    let code2 = format!(
        "rainmaker://{}#{fp2}/{TOKEN}",
        url2.trim_start_matches("wss://")
    );
    call(
        &h,
        "add_server",
        json!({ "name": " ", "url": code2, "token": "", "fingerprint": fp2 }),
    )
    .unwrap();
    let d = call(&h, "dashboard", json!({})).unwrap();
    server(&d, "cloud-a-2");
}

#[test]
fn a_server_reinstalled_elsewhere_is_retried_then_paired_again_and_its_folder_follows() {
    let h = harness();
    call(
        &h,
        "add_server",
        json!({ "name": "cloud-1", "url": h.url, "token": TOKEN, "fingerprint": h.fingerprint }),
    )
    .unwrap();
    call(&h, "save_folder", folder(&h, &["cloud-1"], "manual")).unwrap();
    // The server goes away (reinstalled elsewhere: a new address, certificate and token).
    h.stop.cancel();
    let dir = h.source.parent().unwrap().to_path_buf();
    let moved = dir.join("reinstalled");
    let stop = CancellationToken::new();
    let (url, fp) =
        tauri::async_runtime::block_on(agent(&moved, "cloud-1", "a-new-token", None, &stop));
    let e = call(&h, "retry_server", json!({ "name": "cloud-1" })).unwrap_err();
    assert_eq!(e["code"], "unreachable", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("still does not answer"),
        "{e}"
    );
    // Paired again from its new code: the folder that mirrors to it follows.
    let code = format!("rainmaker://{url}#{fp}/a-new-token");
    let wrong = format!("rainmaker://{url}#{fp}/not-its-token");
    let e = call(
        &h,
        "repair_server",
        json!({ "name": "cloud-1", "url": wrong, "token": "", "fingerprint": fp }),
    )
    .unwrap_err();
    assert_eq!(
        e["code"], "wrong_token",
        "nothing changes on a refusal: {e}"
    );
    call(
        &h,
        "repair_server",
        json!({ "name": "cloud-1", "url": code, "token": "", "fingerprint": fp }),
    )
    .unwrap();
    call(&h, "retry_server", json!({ "name": "cloud-1" })).unwrap();
    wait_for(
        "the folder arrives on the reinstalled server",
        Duration::from_secs(30),
        || {
            identical(
                &h.source.join("db/tick/ES.ncd"),
                &moved.join("db/tick/ES.ncd"),
            )
        },
    );
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(
        text.contains(&format!("wss://{url}"))
            && text.contains(&fp)
            && !text.contains(&h.fingerprint),
        "the new address and certificate replaced the old:\n{text}"
    );
    let tokens = std::fs::read_dir(h.config.parent().unwrap().join("tokens"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tokens, 1, "the old token file went with the old pairing");
    stop.cancel();
}

#[test]
fn a_batch_of_a_server_s_trash_comes_back_to_this_pc_in_a_new_folder() {
    let h = harness();
    let cloud = admin_server_in_sync(&h);
    // A sync that replaces the workspace: the old one goes to cloud-a's trash.
    std::fs::write(h.source.join("workspace.xml"), b"<changed/>").unwrap();
    call(&h, "sync_now", json!({})).unwrap();
    wait_for("the change arrives", Duration::from_secs(30), || {
        identical(
            &h.source.join("workspace.xml"),
            &cloud.join("workspace.xml"),
        )
    });
    let batches = call(&h, "trash_of", json!({ "name": "cloud-a" })).unwrap();
    let batch = batches
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            b["paths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "workspace.xml")
        })
        .unwrap_or_else(|| panic!("the replaced workspace is in a batch: {batches}"))
        .clone();
    let into = call(
        &h,
        "restore_from",
        json!({ "name": "cloud-a", "batch": batch["name"] }),
    )
    .unwrap();
    let into = std::path::PathBuf::from(into.as_str().unwrap());
    assert!(
        into.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("NinjaTrader 8 (restored from cloud-a, "),
        "{}",
        into.display()
    );
    wait_for(
        "the old workspace comes back",
        Duration::from_secs(30),
        || std::fs::read(into.join("workspace.xml")).is_ok_and(|b| b == b"<workspace/>"),
    );
    assert_eq!(
        std::fs::read(h.source.join("workspace.xml")).unwrap(),
        b"<changed/>",
        "nothing of this PC's folder is overwritten"
    );
    let e = call(
        &h,
        "restore_from",
        json!({ "name": "cloud-a", "batch": "no-such-batch" }),
    )
    .unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("no batch"), "{e}");
    // A second restore of the same batch gets a folder of its own.
    let again = call(
        &h,
        "restore_from",
        json!({ "name": "cloud-a", "batch": batch["name"] }),
    )
    .unwrap();
    assert_ne!(again.as_str().unwrap(), into.display().to_string());
}
