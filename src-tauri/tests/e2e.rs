//! The real tray app, end to end: it runs under its own Xvfb display and is driven through
//! WebDriver (tauri-driver with WebKitWebDriver). A RainMaker server started here on a
//! loopback port is added as a target (its fingerprint confirmed; the first-run guide is set
//! aside for the forms), a source folder picked,
//! Sync clicked; the files must arrive and the dashboard must say the target is in sync. Then
//! a second platform's folder is added with a second server as its target, and one Sync
//! mirrors both, each to its own server.
//! The second server is added with its admin token, so its row carries every action. Then, at
//! 1280×800 and at 900×600, every button on the page must be the element at its own centre
//! (nothing covers it, nothing cuts it off) and the page must not scroll sideways. The test
//! leaves a screenshot at each size in its temporary folder (and in the folder that
//! `RAINMAKER_SCREENSHOTS` names: `docs/` for the README).
//!
//! Needs Xvfb, dbus-run-session, WebKitWebDriver and tauri-driver on the PATH (`scripts/test`
//! installs them).

mod common;

use common::{agent, free_port, identical, spawn_group, wait_port, xvfb};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "e2e-pairing-token";
const ADMIN: &str = "e2e-admin-token";

/// Run in the page: whether the page scrolls sideways, and every displayed button that is
/// not the element at its own centre once scrolled into view (covered by another element, or
/// cut off by the window), by its label.
const LAYOUT_CHECK: &str = r#"
const label = (e) => e ? (e.dataset.test || e.getAttribute('aria-label') || e.textContent.trim() || e.tagName) : 'nothing';
const problems = [];
const doc = document.documentElement;
if (doc.scrollWidth > doc.clientWidth) problems.push(`the page scrolls sideways: ${doc.scrollWidth} px in ${doc.clientWidth} px`);
let buttons = 0;
for (const b of document.querySelectorAll('button')) {
  // Not drawn: hidden, or inside a closed <details> (its summary shows instead).
  if (b.getClientRects().length === 0 || (b.checkVisibility && !b.checkVisibility())) continue;
  if (b.closest('details:not([open])') && !b.closest('summary')) continue;
  buttons += 1;
  b.scrollIntoView({ block: 'center', inline: 'center' });
  const r = b.getBoundingClientRect();
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  if (!hit || !(hit === b || b.contains(hit))) problems.push(`${label(b)}: at its centre (${Math.round(x)}, ${Math.round(y)}) is ${label(hit)}`);
  else if (r.left < 0 || r.right > window.innerWidth) problems.push(`${label(b)} runs out of the window`);
}
window.scrollTo(0, 0);
return { width: window.innerWidth, height: window.innerHeight, buttons, problems };
"#;

async fn css(client: &Client, selector: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("the dashboard shows no {selector}: {e}"))
}

/// Clicks the element `selector` names, once the dashboard shows it.
async fn click(client: &Client, selector: &str) {
    css(client, selector).await.click().await.unwrap();
}

/// Clicks Save (the one `selector` names) and waits until the folder is saved: its button is
/// disabled again (Sync refuses a folder with unsaved changes).
async fn save(client: &Client, selector: &str) {
    click(client, selector).await;
    let enabled = format!("{selector}:not([disabled])");
    wait_until(client, "saving a folder", async || {
        client.find(Locator::Css(&enabled)).await.is_err()
    })
    .await;
}

/// Clicks Sync once no form shows unsaved changes (as a person would: Sync refuses while one
/// does, and a form can show them for a moment while the dashboard's snapshot catches up with a
/// save).
async fn sync(client: &Client) {
    wait_until(client, "the forms to show no unsaved changes", async || {
        client
            .find(Locator::Css("[data-test=unsaved]"))
            .await
            .is_err()
    })
    .await;
    click(client, "[data-test=sync]").await;
}

/// Waits until `done` holds, for 20 s at most; fails on an error the dashboard shows.
async fn wait_until(client: &Client, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        let error = text_of(client, "[data-test=error]").await;
        assert!(error.is_empty(), "{what}: {error}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not done after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(client: &Client, selector: &str) -> String {
    match client.find(Locator::Css(selector)).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Adds a server through the dashboard's form (with `admin`, its admin token); returns the
/// fingerprint it showed to confirm.
async fn add_server(client: &Client, name: &str, address: &str, admin: Option<&str>) -> String {
    click(client, "[data-test=add-server]").await;
    css(client, "input[name=server-name]")
        .await
        .send_keys(name)
        .await
        .unwrap();
    css(client, "input[name=server-address]")
        .await
        .send_keys(address)
        .await
        .unwrap();
    css(client, "input[name=server-token]")
        .await
        .send_keys(TOKEN)
        .await
        .unwrap();
    if let Some(admin) = admin {
        css(client, "input[name=server-admin-token]")
            .await
            .send_keys(admin)
            .await
            .unwrap();
    }
    click(client, "[data-test=check-server]").await;
    // The certificate to confirm, or (failing the test with it) the error the dashboard shows.
    let start = Instant::now();
    let shown = loop {
        let shown = text_of(client, "[data-test=fingerprint]").await;
        if !shown.is_empty() {
            break shown;
        }
        let error = text_of(client, "[data-test=error]").await;
        assert!(error.is_empty(), "checking {name} at {address}: {error}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the dashboard shows no fingerprint for {name} after 20 s; the form says: {}",
            text_of(client, ".add-server").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    click(client, "[data-test=trust-server]").await;
    css(client, &format!("[data-test=server-{name}]")).await;
    shown
}

/// What keeps a WebDriver session with the tray app going: its display and its driver.
struct Session {
    _xvfb: common::Group,
    _driver: common::Group,
}

/// Starts the real tray app under its own Xvfb display, with its configuration and data in
/// `dir` and `env` besides, and a WebDriver session with it.
async fn open_dashboard(dir: &Path, env: &[(&str, &Path)]) -> (Session, Client) {
    let (xvfb, display) = xvfb();
    let (port, native) = (free_port(), free_port());
    let driver = spawn_group(
        Command::new("dbus-run-session")
            .args([
                "--",
                "tauri-driver",
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .env("DISPLAY", &display)
            .env("RAINMAKER_CONFIG", dir.join("config/rainmaker.toml"))
            .env("RAINMAKER_DATA_DIR", dir.join("data"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // tauri-driver listens before WebKitWebDriver does; a session asked for too early fails.
    wait_port(port, Duration::from_secs(30));
    wait_port(native, Duration::from_secs(30));
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("wry"));
    caps.insert(
        "tauri:options".into(),
        json!({ "application": env!("CARGO_BIN_EXE_rainmaker-tray") }),
    );
    let client = ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with the tray app");
    (
        Session {
            _xvfb: xvfb,
            _driver: driver,
        },
        client,
    )
}

/// A screenshot of the dashboard, kept in the test's temporary folder and, when
/// `RAINMAKER_SCREENSHOTS` names a folder, there too (`docs/` for the README).
async fn screenshot(client: &Client, file: &str) {
    let png = client.screenshot().await.unwrap();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(file);
    std::fs::write(&shot, &png).unwrap();
    if let Some(dir) = std::env::var_os("RAINMAKER_SCREENSHOTS") {
        std::fs::write(Path::new(&dir).join(file), &png).unwrap();
    }
    eprintln!("screenshot: {}", shot.display());
}

/// Waits until the dashboard says server `name` is in sync; fails on a shown error.
async fn wait_in_sync(client: &Client, name: &str) {
    let start = Instant::now();
    loop {
        let state = text_of(
            client,
            &format!("[data-test=server-{name}] [data-test=state]"),
        )
        .await;
        if state == "In sync" {
            return;
        }
        let error = text_of(client, "[data-test=error]").await;
        assert!(error.is_empty(), "the dashboard shows an error: {error}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} is {state:?}, not in sync, after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_adds_servers_and_syncs_two_folders_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let (root, source) = (dir.path().join("backup"), dir.path().join("NinjaTrader 8"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(source.join("db/tick/ES 12-26")).unwrap();
    std::fs::create_dir_all(source.join("workspaces")).unwrap();
    let ticks: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(source.join("db/tick/ES 12-26/20261127.Last.ncd"), &ticks).unwrap();
    std::fs::write(
        source.join("workspaces/Untitled 1.xml"),
        b"<NinjaTrader><Workspace/></NinjaTrader>",
    )
    .unwrap();

    let stop = CancellationToken::new();
    let (address, fingerprint) = agent(&root, "cloud-e2e", TOKEN, None, &stop).await;

    let (_session, client) = open_dashboard(dir.path(), &[]).await;

    // A fresh PC opens on the first-run guide; this test fills in the forms by hand.
    css(&client, "[data-test=guide]").await;
    click(&client, "[data-test=guide-manual]").await;
    let shown = add_server(&client, "cloud-1", &address, None).await;
    assert_eq!(
        shown, fingerprint,
        "the user is shown the certificate the server really holds"
    );

    let input = css(&client, "input[name=source]").await;
    input.clear().await.unwrap();
    input
        .send_keys(&source.display().to_string())
        .await
        .unwrap();
    css(&client, "select[name=preset]")
        .await
        .select_by_value("ninjatrader8")
        .await
        .unwrap();
    css(&client, "select[name=mode]")
        .await
        .select_by_value("manual")
        .await
        .unwrap();
    click(&client, "[data-test=target-cloud-1]").await;
    save(&client, "[data-test=save-folder]").await;
    assert!(
        !root.join("workspaces").exists(),
        "in manual mode nothing is sent before Sync"
    );
    sync(&client).await;

    wait_in_sync(&client, "cloud-1").await;
    for file in [
        "db/tick/ES 12-26/20261127.Last.ncd",
        "workspaces/Untitled 1.xml",
    ] {
        assert!(
            identical(&source.join(file), &root.join(file)),
            "{file} arrived on the target whole"
        );
    }
    let overall = css(&client, "[data-test=overall]")
        .await
        .attr("data-state")
        .await
        .unwrap();
    assert_eq!(
        overall.as_deref(),
        Some("in_sync"),
        "the header says every target is in sync"
    );
    let config = std::fs::read_to_string(dir.path().join("config/rainmaker.toml")).unwrap();
    assert!(
        config.contains("to = [\"cloud-1\"]"),
        "the choice is saved:\n{config}"
    );

    // A second platform on the same PC: its own folder, to its own server.
    let (mt5, mt5_root) = (
        dir.path().join("MetaTrader 5"),
        dir.path().join("backup-mt5"),
    );
    std::fs::create_dir_all(mt5.join("bases/Default/history/EURUSD")).unwrap();
    std::fs::write(
        mt5.join("bases/Default/history/EURUSD/2026.hcc"),
        &ticks[..700_000],
    )
    .unwrap();
    let (address2, _) = agent(&mt5_root, "cloud-e2e-2", TOKEN, Some(ADMIN), &stop).await;
    add_server(&client, "cloud-2", &address2, Some(ADMIN)).await;
    click(&client, "[data-test=add-folder]").await;
    let new = "[data-test=folder-new]";
    css(&client, &format!("{new} input[name=source]"))
        .await
        .send_keys(&mt5.display().to_string())
        .await
        .unwrap();
    css(&client, &format!("{new} select[name=mode]"))
        .await
        .select_by_value("manual")
        .await
        .unwrap();
    css(&client, &format!("{new} [data-test=target-cloud-2]"))
        .await
        .click()
        .await
        .unwrap();
    css(&client, &format!("{new} [data-test=save-folder]"))
        .await
        .click()
        .await
        .unwrap();
    wait_until(&client, "saving the second folder", async || {
        !text_of(&client, "[data-test=folder-1] h2").await.is_empty()
    })
    .await;
    sync(&client).await;
    wait_in_sync(&client, "cloud-2").await;
    wait_in_sync(&client, "cloud-1").await;
    assert!(identical(
        &mt5.join("bases/Default/history/EURUSD/2026.hcc"),
        &mt5_root.join("bases/Default/history/EURUSD/2026.hcc")
    ));
    assert!(
        !root.join("bases").exists() && !mt5_root.join("workspaces").exists(),
        "each server holds its own folder"
    );
    let config = std::fs::read_to_string(dir.path().join("config/rainmaker.toml")).unwrap();
    assert_eq!(
        config.matches("[[folder]]").count(),
        2,
        "both folders are saved:\n{config}"
    );

    // The layout holds, wide and narrow: every button can be clicked where it is drawn.
    css(&client, "[data-test=push-from-cloud-2]").await;
    for (width, height, file) in [
        (1280, 800, "dashboard.png"),
        (900, 600, "dashboard-900x600.png"),
    ] {
        client.set_window_size(width, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let seen = client.execute(LAYOUT_CHECK, Vec::new()).await.unwrap();
        let problems = seen["problems"].as_array().unwrap();
        assert!(
            seen["buttons"].as_u64().unwrap() >= 10,
            "the check found the dashboard's buttons: {seen}"
        );
        assert!(
            problems.is_empty(),
            "at {width}x{height} (a viewport of {}x{}), {} of {} buttons cannot be clicked where they are drawn, or the page scrolls sideways:\n{}",
            seen["width"],
            seen["height"],
            problems.len(),
            seen["buttons"],
            problems
                .iter()
                .map(|p| p.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        );
        screenshot(&client, file).await;
    }
    let _ = client.close().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_pc_is_set_up_from_the_guide_and_a_mass_deletion_waits_for_a_yes() {
    let dir = tempfile::tempdir().unwrap();
    // NinjaTrader 8 where it lives: under Documents (as this desktop's user-dirs names it).
    let documents = dir.path().join("Documents");
    let source = documents.join("NinjaTrader 8");
    let config_home = dir.path().join("config-home");
    std::fs::create_dir_all(&config_home).unwrap();
    std::fs::write(
        config_home.join("user-dirs.dirs"),
        format!("XDG_DOCUMENTS_DIR=\"{}\"\n", documents.display()),
    )
    .unwrap();
    std::fs::create_dir_all(source.join("workspaces")).unwrap();
    std::fs::create_dir_all(source.join("db/tick/ES 12-26")).unwrap();
    std::fs::write(
        source.join("db/tick/ES 12-26/20261127.Last.ncd"),
        vec![5u8; 300_000],
    )
    .unwrap();
    for i in 0..12 {
        std::fs::write(
            source.join(format!("workspaces/Untitled {i}.xml")),
            format!("<NinjaTrader><Workspace n='{i}'/></NinjaTrader>"),
        )
        .unwrap();
    }
    let root = dir.path().join("backup");
    let stop = CancellationToken::new();
    let (address, fingerprint) = agent(&root, "cloud-e2e", TOKEN, None, &stop).await;
    let code = format!("rainmaker://{address}#{fingerprint}/{TOKEN}");
    let (_session, client) =
        open_dashboard(dir.path(), &[("XDG_CONFIG_HOME", config_home.as_path())]).await;

    // The guide: the platform's folder found, the server from its code, sync when asked.
    css(&client, "[data-test=guide-found-0]").await;
    let found = css(&client, "[data-test=guide]")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        found.contains("NinjaTrader 8") && found.contains(&source.display().to_string()),
        "the guide offers NinjaTrader 8 where it lives: {found}"
    );
    click(&client, "[data-test=guide-found-0]").await;
    click(&client, "[data-test=guide-add-server]").await;
    css(&client, "input[name=server-address]")
        .await
        .send_keys(&code)
        .await
        .unwrap();
    click(&client, "[data-test=check-server]").await;
    css(&client, "[data-test=guide-server-cloud-e2e]").await;
    click(&client, "[data-test=guide-mode-manual]").await;
    screenshot(&client, "first-run.png").await;
    click(&client, "[data-test=guide-start]").await;
    let next = css(&client, "[data-test=next]").await.text().await.unwrap();
    assert!(next.contains("ready to trade from"), "{next}");
    wait_in_sync(&client, "cloud-e2e").await;
    assert!(identical(
        &source.join("db/tick/ES 12-26/20261127.Last.ncd"),
        &root.join("db/tick/ES 12-26/20261127.Last.ncd")
    ));

    // The workspaces vanish from the PC (a mistake): Sync stops, shows them, asks.
    std::fs::remove_dir_all(source.join("workspaces")).unwrap();
    sync(&client).await;
    let listed = css(&client, "[data-test=mass-delete] [data-test=doomed]")
        .await
        .text()
        .await
        .unwrap();
    assert!(listed.contains("workspaces/Untitled 0.xml"), "{listed}");
    screenshot(&client, "mass-delete.png").await;
    assert!(
        root.join("workspaces/Untitled 0.xml").exists(),
        "nothing is deleted before the yes"
    );
    click(&client, "[data-test=allow-mass-delete]").await;
    click(&client, "[data-test=dialog-delete]").await;
    let start = Instant::now();
    while root.join("workspaces/Untitled 0.xml").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the confirmed deletion never happened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_in_sync(&client, "cloud-e2e").await;
    let _ = client.close().await;
    stop.cancel();
}
