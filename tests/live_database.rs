//! End to end: a live SQLite database, written by another process all the time, mirrored by
//! `rainmaker push --watch` to a real agent. At many instants the target is sampled as a
//! platform starting at failover would find it (its files hard-linked together, copied, and
//! opened read-write, so a hot journal is rolled back and a WAL replayed): every instant must
//! open and pass `PRAGMA integrity_check`, and the newest row must never be more than
//! [`BOUND`] behind the source. The writer measures how long its transactions take, so what
//! the snapshots cost it is reported.
//!
//! The writer is this test binary itself, started again as a separate process with
//! `RAINMAKER_SQLITE_WRITER` set (see [`sqlite_writer_process`]).

mod common;

use common::Sandbox;
use rusqlite::Connection;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far the target's newest row may lag the source's. A live database is copied once a
/// second, so the lag is about a second (see RELIABILITY.md); this is the limit that must never
/// be crossed, even on a test machine running other builds at a load of 6 on 2 cores.
const BOUND: Duration = Duration::from_secs(10);
/// How long the writer writes while the target is sampled.
const WRITING: Duration = Duration::from_secs(12);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Not a test of its own: the writer process. It runs only when `RAINMAKER_SQLITE_WRITER` names
/// a database; it commits about 40 transactions a second (inserts of 100 to 3,000 bytes, a
/// delete of old rows every 20th) in the journal mode `RAINMAKER_SQLITE_MODE`, logs the newest
/// id and when it was committed after each commit, and at the end prints the longest and the
/// 99th-percentile transaction time.
#[test]
fn sqlite_writer_process() {
    let Ok(db_path) = std::env::var("RAINMAKER_SQLITE_WRITER") else {
        return;
    };
    let mode = std::env::var("RAINMAKER_SQLITE_MODE").unwrap_or_else(|_| "WAL".into());
    let log_path = PathBuf::from(std::env::var("RAINMAKER_SQLITE_LOG").unwrap());
    let stop = PathBuf::from(std::env::var("RAINMAKER_SQLITE_STOP").unwrap());
    let db = Connection::open(&db_path).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(&format!(
        "PRAGMA journal_mode = {mode};
         CREATE TABLE IF NOT EXISTS ticks (id INTEGER PRIMARY KEY, at REAL, payload BLOB);"
    ))
    .unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut times = Vec::new();
    let mut n: u64 = 0;
    while !stop.exists() {
        n += 1;
        let started = Instant::now();
        let tx = db.unchecked_transaction().unwrap();
        for k in 0..(1 + n % 3) {
            let len = 100 + ((n * 7919 + k * 104_729) % 2_900) as usize;
            tx.execute(
                "INSERT INTO ticks (at, payload) VALUES (?1, ?2)",
                rusqlite::params![unix_now(), vec![(n % 251) as u8; len]],
            )
            .unwrap();
        }
        if n % 20 == 0 {
            tx.execute(
                "DELETE FROM ticks WHERE id IN (SELECT id FROM ticks ORDER BY id LIMIT 5)",
                [],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        times.push(started.elapsed());
        let newest: i64 = db
            .query_row("SELECT max(id) FROM ticks", [], |r| r.get(0))
            .unwrap();
        writeln!(log, "{newest} {:.6}", unix_now()).unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    // The first transaction creates the table and the journal; the rest are the steady state.
    times.remove(0);
    times.sort();
    let p99 = times[times.len() * 99 / 100];
    println!(
        "WRITER transactions {} max_ms {:.3} p99_ms {:.3}",
        times.len(),
        times.last().unwrap().as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

/// `push --watch` of `src` to `agent`, with the guard kept off: the bound holds while sync
/// runs, and the guard must not pause it because this test machine is busy (on a trading PC,
/// a pause for a busy CPU is what the trader wants).
fn watch_unpaused(sandbox: &Sandbox, src: &Path, agent: &common::Agent) -> common::Agent {
    sandbox
        .push(src)
        .target(agent)
        .arg("--watch")
        .arg("--pause-cpu-for")
        .arg("1h")
        .spawn_continuous()
}

/// Starts the writer process on `db`.
fn start_writer(db: &Path, mode: &str, log: &Path, stop: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite_writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAINMAKER_SQLITE_WRITER", db)
        .env("RAINMAKER_SQLITE_MODE", mode)
        .env("RAINMAKER_SQLITE_LOG", log)
        .env("RAINMAKER_SQLITE_STOP", stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the writer process")
}

/// The writer's log: (newest id, when it was committed), in commit order.
fn commits(log: &Path) -> Vec<(i64, f64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (id, at) = line.split_once(' ')?;
            Some((id.parse().ok()?, at.parse().ok()?))
        })
        .collect()
}

/// What one sample of the target found.
#[derive(Debug)]
enum Sample {
    /// The database opened and passed the check; its newest row.
    Sound(i64),
    /// Not there yet.
    Missing,
    Broken(String),
}

/// Takes the target's database and any companion files together (hard links), then opens a
/// copy of them read-write, as the platform would, and checks it.
fn sample(target_db: &Path, scratch: &Path) -> Sample {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch.join("links")).unwrap();
    std::fs::create_dir_all(scratch.join("open")).unwrap();
    let name = target_db
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut linked = Vec::new();
    for suffix in ["", "-wal", "-journal", "-shm"] {
        let from = target_db.with_file_name(format!("{name}{suffix}"));
        let to = scratch.join("links").join(format!("{name}{suffix}"));
        if std::fs::hard_link(&from, &to).is_ok() {
            linked.push((to, suffix));
        }
    }
    if !linked.iter().any(|(_, s)| s.is_empty()) {
        return Sample::Missing;
    }
    for (link, suffix) in &linked {
        std::fs::copy(link, scratch.join("open").join(format!("{name}{suffix}"))).unwrap();
    }
    let opened = scratch.join("open").join(&name);
    let checked = Connection::open(&opened).and_then(|db| {
        let ok: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        let newest: Option<i64> = db.query_row("SELECT max(id) FROM ticks", [], |r| r.get(0))?;
        Ok((ok, newest))
    });
    match checked {
        Ok((ok, newest)) if ok == "ok" => Sample::Sound(newest.unwrap_or(0)),
        Ok((ok, _)) => Sample::Broken(ok),
        Err(e) => Sample::Broken(e.to_string()),
    }
}

/// How long the target had lacked a committed row at `at`, given it holds rows up to `newest`.
fn staleness(commits: &[(i64, f64)], newest: i64, at: f64) -> f64 {
    commits
        .iter()
        .find(|(id, when)| *id > newest && *when <= at)
        .map_or(0.0, |(_, when)| at - when)
}

fn mirror_live_database(mode: &str) {
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("workspace.xml"), "<workspace/>").unwrap();
    let (db, log, stop) = (
        src.join("db/NinjaTrader.sqlite"),
        sandbox.path("writer.log"),
        sandbox.path("writer.stop"),
    );
    let mut writer = start_writer(&db, mode, &log, &stop);
    let agent = sandbox.serve(&dst);
    let push = watch_unpaused(&sandbox, &src, &agent);
    let started = Instant::now();
    let target_db = dst.join("db/NinjaTrader.sqlite");
    let scratch = sandbox.path("sample");
    let (mut sound, mut broken, mut worst) = (0, Vec::new(), 0.0f64);
    while started.elapsed() < WRITING {
        std::thread::sleep(Duration::from_millis(150));
        let at = unix_now();
        match sample(&target_db, &scratch) {
            Sample::Missing if started.elapsed() < BOUND => {}
            Sample::Missing => broken.push(format!("{at:.3}: no database on the target")),
            Sample::Broken(why) => broken.push(format!("{at:.3}: {why}")),
            Sample::Sound(newest) => {
                sound += 1;
                // Compared with the log read after the sample, so every commit before it is in.
                let lag = staleness(&commits(&log), newest, at);
                worst = worst.max(lag);
            }
        }
    }
    std::fs::write(&stop, "").unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut writer.stdout.take().unwrap(), &mut out).unwrap();
    writer.wait().unwrap();
    let stall = out
        .lines()
        .find_map(|l| l.find("WRITER").map(|i| l[i..].to_string()))
        .unwrap_or_else(|| "WRITER (no report)".into());
    eprintln!(
        "{mode}: {sound} sound instants, {} broken, worst staleness {worst:.3} s; {stall}",
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "{mode}: every instant of the target must open as a sound database; these did not: \
         {broken:?}\npush log:\n{}",
        push.log()
    );
    assert!(
        sound >= 20,
        "{mode}: the target was sampled ({sound} times)"
    );
    assert!(
        worst <= BOUND.as_secs_f64(),
        "{mode}: the newest row on the target was {worst:.3} s behind the source (bound {BOUND:?})\npush log:\n{}",
        push.log()
    );
    // Once the writer stopped, the target converges: one database, no companion.
    let log_fn = || push.log();
    wait_identical_except_companions(&src, &dst, &log_fn);
}

/// The source keeps `-wal`/`-shm` files beside the database; the target has only the database,
/// whose rows must be the source's (the source's read with its WAL, as SQLite reads it).
fn wait_identical_except_companions(src: &Path, dst: &Path, log: &dyn Fn() -> String) {
    // Opened on a copy, with its WAL if it has one (the source's may still hold the newest
    // rows): opening a WAL database makes its -wal and -shm files beside it.
    let scratch = tempfile::tempdir().unwrap();
    let rows = |db: &Path| -> Option<i64> {
        let copy = scratch.path().join("rows.sqlite");
        let _ = std::fs::remove_file(scratch.path().join("rows.sqlite-wal"));
        let _ = std::fs::remove_file(scratch.path().join("rows.sqlite-shm"));
        let wal = db.with_file_name(format!("{}-wal", db.file_name()?.to_string_lossy()));
        if wal.exists() {
            std::fs::copy(&wal, scratch.path().join("rows.sqlite-wal")).ok()?;
        }
        std::fs::copy(db, &copy).ok()?;
        let db = Connection::open(&copy).ok()?;
        db.query_row(
            "SELECT count(*) + coalesce(max(id), 0) FROM ticks",
            [],
            |r| r.get(0),
        )
        .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (
            rows(&src.join("db/NinjaTrader.sqlite")),
            rows(&dst.join("db/NinjaTrader.sqlite")),
        );
        if a.is_some() && a == b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target's database must catch up once the writer stops: source {a:?}, target {b:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for suffix in ["-wal", "-journal", "-shm"] {
        let companion = dst.join(format!("db/NinjaTrader.sqlite{suffix}"));
        assert!(
            !companion.exists(),
            "a database is mirrored as one consistent file; {} must not be there",
            companion.display()
        );
    }
}

#[test]
fn a_live_database_in_wal_mode_opens_at_every_instant() {
    mirror_live_database("WAL");
}

#[test]
fn a_live_database_in_rollback_journal_mode_opens_at_every_instant() {
    mirror_live_database("DELETE");
}

/// A file that is not a database but is rewritten in place all the time (a chart's state, a
/// history file's header): every attempt to read and send it meets a newer version. It must
/// still reach the target, whole, within [`BOUND`]: it is read through a stable copy.
#[test]
fn a_file_rewritten_all_the_time_reaches_the_target_within_the_bound() {
    use std::io::{Seek, SeekFrom};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const LEN: usize = 8 << 20;
    let sandbox = Sandbox::new();
    let src = sandbox.dir("src");
    let dst = sandbox.dir("dst");
    let live = src.join("charts/state.dat");
    std::fs::create_dir_all(live.parent().unwrap()).unwrap();
    std::fs::write(&live, vec![0u8; LEN]).unwrap();
    let written: Arc<Mutex<Vec<(u8, f64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (live, written, stop) = (live.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().write(true).open(&live).unwrap();
            let mut round = 0u8;
            while !stop.load(Ordering::Relaxed) {
                round = round.wrapping_add(1).max(1);
                // In place, in pieces, as a platform rewrites its state: a read in between
                // sees a mix of two versions.
                file.seek(SeekFrom::Start(0)).unwrap();
                for _ in 0..8 {
                    file.write_all(&vec![round; LEN / 8]).unwrap();
                    std::thread::sleep(Duration::from_millis(4));
                }
                written.lock().unwrap().push((round, unix_now()));
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    let agent = sandbox.serve(&dst);
    let push = watch_unpaused(&sandbox, &src, &agent);
    let target = dst.join("charts/state.dat");
    let started = Instant::now();
    let (mut seen, mut worst, mut torn) = (0, 0.0f64, Vec::new());
    // Wine reads and replaces the 8 MiB file more slowly (and a read there keeps the agent
    // from replacing it): it samples for longer to see as many versions.
    let sampling = if rainmaker_engine::win32::under_wine() {
        Duration::from_secs(25)
    } else {
        Duration::from_secs(10)
    };
    // Sampled for at least `sampling`, and on a slow machine until twenty samples were taken.
    while started.elapsed() < sampling || (seen < 20 && started.elapsed() < sampling * 4) {
        std::thread::sleep(Duration::from_millis(100));
        let at = unix_now();
        let Ok(bytes) = std::fs::read(&target) else {
            assert!(
                started.elapsed() < BOUND,
                "the file must reach the target within {BOUND:?}:\n{}",
                push.log()
            );
            continue;
        };
        if bytes.len() != LEN || bytes.iter().any(|b| *b != bytes[0]) {
            torn.push(format!("{at:.3}"));
            continue;
        }
        seen += 1;
        let round = bytes[0];
        // How long the target had lacked a newer version the source had finished writing.
        let history = written.lock().unwrap().clone();
        let mine = history.iter().rposition(|(r, _)| *r == round);
        let newer = mine.map_or(history.first(), |i| history.get(i + 1));
        if let Some((_, when)) = newer.filter(|(_, when)| *when <= at) {
            worst = worst.max(at - when);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("rewritten file: {seen} whole versions seen, worst staleness {worst:.3} s");
    assert!(
        torn.is_empty(),
        "the target only ever holds a version the source had, whole; torn at {torn:?}"
    );
    assert!(
        seen >= 20,
        "the target was sampled ({seen} times)\n{}",
        push.log()
    );
    assert!(
        worst <= BOUND.as_secs_f64(),
        "the target lagged {worst:.3} s behind a file that never stops changing (bound {BOUND:?})\n{}",
        push.log()
    );
}
