//! The tray icon itself, as a trader uses it: under Xvfb, with an XEmbed system tray
//! (`trayer`; with no StatusNotifier host on the bus, the app's indicator falls back to an
//! XEmbed icon) and a real notification daemon (`dunst`) on a session bus of the test's own.
//! The icon is right-clicked and Sync now chosen from its menu with `xdotool`; the files must
//! arrive, the icon must turn to its in-sync picture; then, with the server gone, Sync now
//! again must turn the icon to its error picture and dunst must show "Sync failed".
//!
//! Needs Xvfb, dbus-daemon, trayer, dunst and xdotool on the PATH (`scripts/setup` installs
//! them).

mod common;

use common::{Group, agent, identical, spawn_group, spawn_reading_line, xvfb};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use x11rb::protocol::xproto::{ConnectionExt, ImageFormat};

const TOKEN: &str = "tray-click-token";
const ICON_CLASS: &str = "tray-icon tray app main";

/// The desktop session: its display, its bus, and the programs on them.
struct Session {
    display: String,
    bus: String,
    _children: Vec<Group>,
}

impl Session {
    fn start(dir: &Path) -> Session {
        let (xvfb, display) = xvfb();
        let (bus_daemon, bus) = spawn_reading_line(
            Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--print-address=1"])
                .stderr(Stdio::null()),
        );
        assert!(bus.starts_with("unix:"), "dbus-daemon printed {bus:?}");
        let tray = spawn_group(
            Command::new("trayer")
                .args([
                    "--edge",
                    "top",
                    "--align",
                    "right",
                    "--widthtype",
                    "request",
                ])
                .args(["--height", "32", "--transparent", "false"])
                .env("DISPLAY", &display)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("trayer.log")).unwrap()),
        );
        // dunst runs a script for every notification it shows: the test reads what it wrote.
        let script = dir.join("notified.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s|%s|%s\\n' \"$1\" \"$2\" \"$3\" >> '{}'\n",
                dir.join("notified.txt").display()
            ),
        )
        .unwrap();
        set_executable(&script);
        let dunstrc = dir.join("dunstrc");
        std::fs::write(
            &dunstrc,
            format!(
                "[global]\n    font = Monospace 8\n[log]\n    summary = \"*\"\n    script = {}\n",
                script.display()
            ),
        )
        .unwrap();
        let dunst = spawn_group(
            Command::new("dunst")
                .arg("-config")
                .arg(&dunstrc)
                .env("DISPLAY", &display)
                .env("DBUS_SESSION_BUS_ADDRESS", &bus)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let session = Session {
            display,
            bus,
            _children: vec![dunst, tray, bus_daemon, xvfb],
        };
        // The tray is up (its panel is mapped) before an app looks for it.
        if session.find("trayer", true).is_none() {
            let log = std::fs::read_to_string(dir.join("trayer.log")).unwrap_or_default();
            panic!("trayer never showed its panel:\n{log}");
        }
        session
    }

    fn xdotool(&self, args: &[&str]) -> String {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .unwrap_or_else(|e| panic!("cannot run xdotool: {e}; run scripts/setup"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The first window of `class` (mapped, with `visible_only`), waiting up to a minute for
    /// one (a busy machine starts a program slowly; this is not a speed test).
    fn find(&self, class: &str, visible_only: bool) -> Option<u32> {
        let start = Instant::now();
        loop {
            let mut args = vec!["search"];
            if visible_only {
                args.push("--onlyvisible");
            }
            args.extend(["--class", class]);
            let found = self.xdotool(&args);
            if let Some(id) = found.lines().find_map(|l| l.trim().parse().ok()) {
                return Some(id);
            }
            if start.elapsed() > Duration::from_secs(60) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Session::find`], which must find it.
    fn window(&self, class: &str, visible_only: bool) -> u32 {
        self.find(class, visible_only)
            .unwrap_or_else(|| panic!("no window of class {class:?} after 60 s"))
    }

    /// Right-clicks the tray icon and chooses the menu's first item, Sync now.
    fn click_sync_now(&self) {
        let icon = self.window(ICON_CLASS, false).to_string();
        self.xdotool(&["mousemove", "--window", &icon, "16", "15", "click", "3"]);
        let menu = self.window("Rainmaker-tray", true).to_string();
        // The menu's items: Sync now, Pause, Open dashboard, Quit; the first is at its top.
        self.xdotool(&["mousemove", "--window", &menu, "40", "14", "click", "1"]);
    }

    /// The average colour of the tray icon's pixels that are not the tray's background; `None`
    /// while the icon's window cannot be read (it is being replaced with a new picture).
    fn icon_colour(&self) -> Option<[f64; 3]> {
        let icon = self.window(ICON_CLASS, false);
        let (conn, _) = x11rb::connect(Some(&self.display)).expect("an X connection");
        let geometry = conn.get_geometry(icon).ok()?.reply().ok()?;
        let image = conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                icon,
                0,
                0,
                geometry.width,
                geometry.height,
                !0,
            )
            .ok()?
            .reply()
            .ok()?;
        // 24-bit depth: 4 bytes a pixel, blue, green, red, unused.
        let pixels: Vec<[f64; 3]> = image
            .data
            .chunks_exact(4)
            .map(|p| [f64::from(p[2]), f64::from(p[1]), f64::from(p[0])])
            .collect();
        let background = *pixels.first()?;
        // Nothing but the tray's background: the picture is not drawn yet.
        mean(
            pixels
                .into_iter()
                .filter(|p| distance(*p, background) > 60.0),
        )
    }

    /// Waits until the icon shows `state`'s picture (its colour is nearest to it of all).
    fn wait_icon(&self, state: &str) {
        let start = Instant::now();
        loop {
            let Some(shown) = self.icon_colour() else {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the tray icon cannot be read, or shows nothing, for 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let nearest = STATES
                .iter()
                .min_by(|a, b| {
                    distance(shown, picture_colour(a))
                        .total_cmp(&distance(shown, picture_colour(b)))
                })
                .unwrap();
            if *nearest == state {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the tray icon shows {nearest}, not {state}, after 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const STATES: [&str; 5] = ["idle", "in_sync", "syncing", "paused", "error"];

/// The average colour of the opaque pixels of the tray picture for `state`.
fn picture_colour(state: &str) -> [f64; 3] {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../icons/tray-{state}.png"));
    let bytes = std::fs::read(&path).unwrap();
    let image = tauri::image::Image::from_bytes(&bytes).unwrap();
    mean(
        image
            .rgba()
            .chunks_exact(4)
            .filter(|p| p[3] > 200)
            .map(|p| [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]),
    )
    .expect("the tray pictures are not empty")
}

/// The average colour of `pixels`; `None` when there are none.
fn mean(pixels: impl Iterator<Item = [f64; 3]>) -> Option<[f64; 3]> {
    let (mut sum, mut n) = ([0.0; 3], 0.0);
    for p in pixels {
        for i in 0..3 {
            sum[i] += p[i];
        }
        n += 1.0;
    }
    (n > 0.0).then(|| sum.map(|s| s / n))
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits until `check` holds; `what` says what did not happen.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tray_icon_s_sync_now_mirrors_and_a_failing_target_is_notified() {
    let dir = tempfile::tempdir().unwrap();
    let (source, root) = (dir.path().join("NinjaTrader 8"), dir.path().join("backup"));
    std::fs::create_dir_all(source.join("db/tick")).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(source.join("db/tick/ES.ncd"), vec![5u8; 400_000]).unwrap();
    std::fs::write(source.join("workspace.xml"), b"<workspace/>").unwrap();

    let stop = CancellationToken::new();
    let (address, fingerprint) = agent(&root, "cloud-tray", TOKEN, None, &stop).await;
    let url = format!("wss://{address}");

    let token_file = dir.path().join("cloud-1.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = dir.path().join("config/rainmaker.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[server]]\nname = \"cloud-1\"\nurl = \"{url}\"\ntoken_file = {:?}\nfingerprint = \"{fingerprint}\"\n\n\
             [[folder]]\nsource = {:?}\nmode = \"manual\"\nto = [\"cloud-1\"]\n\n\
             [guard]\npause_cpu_above = 100\npause_cpu_for = \"1h\"\n",
            token_file.display().to_string(),
            source.display().to_string(),
        ),
    )
    .unwrap();

    let session = Session::start(dir.path());
    let _app = spawn_group(
        Command::new(env!("CARGO_BIN_EXE_rainmaker-tray"))
            .arg("--hidden")
            .env("DISPLAY", &session.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &session.bus)
            .env("RAINMAKER_CONFIG", &config)
            .env("RAINMAKER_DATA_DIR", dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    session.wait_icon("idle");
    assert!(
        !root.join("workspace.xml").exists(),
        "a manual folder waits for Sync now"
    );

    session.click_sync_now();
    wait_for("the files did not arrive", Duration::from_secs(30), || {
        identical(&source.join("db/tick/ES.ncd"), &root.join("db/tick/ES.ncd"))
            && identical(&source.join("workspace.xml"), &root.join("workspace.xml"))
    });
    session.wait_icon("in_sync");

    // The server goes away; the next Sync now fails, and the trader is told.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(source.join("workspace.xml"), b"<workspace changed/>").unwrap();
    session.click_sync_now();
    session.wait_icon("error");
    let notified = dir.path().join("notified.txt");
    wait_for(
        "dunst showed no \"Sync failed\" notification",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&notified)
                .is_ok_and(|t| t.lines().any(|l| l.contains("|Sync failed|cloud-1: ")))
        },
    );
}
