//! Consistent copies of the live SQLite databases in a source folder.
//!
//! A trading platform writes its database while it runs (NinjaTrader 8 keeps accounts,
//! executions and ATM templates in `db/NinjaTrader.sqlite`). Read as plain bytes, a database
//! being written is caught halfway through a commit, and its `-wal` or `-journal` file at
//! another instant: the copy on the backup may not open. So a file that starts with SQLite's
//! header is read through SQLite itself, with its online backup API, into a private copy in
//! the source's state folder; that copy, one self-consistent file, is what is hashed and sent
//! under the database's name, and its companions (`-wal`, `-shm`, `-journal`) are not
//! mirrored. The block-level delta still applies: the backup copies page for page, so a page
//! that did not change is a block the target already holds.
//!
//! The platform must barely notice. In WAL mode a reader never blocks a writer, so the copy is
//! taken in one step. In rollback-journal mode a reader holds a shared lock that a committing
//! writer waits for, so the copy is taken in steps of [`STEP_PAGES`] pages (a few milliseconds
//! each) with the lock let go between them; if the writer commits in between, SQLite starts
//! the copy again, and after [`MAX_RESTARTS`] restarts the rest is copied in one step, which
//! holds the writer for as long as copying the database takes.
//!
//! Three routes lead to a private copy, behind one interface (each gives a [`Taking`]): a
//! database through SQLite's backup API ([`Snapshots::take`]); a plain file that changed
//! under every read through a copy checked stable ([`Snapshots::copy_stable`]); and, on
//! Windows, a file another program holds open without sharing it for reading through a shadow
//! copy of its volume ([`Snapshots::copy_from_shadow`], [`crate::shadow`]).
//!
//! A copy is kept while any scan's records refer to it, and taken again only when the
//! database or a companion changed (size, time or file id), so an idle database costs a few
//! `stat` calls per scan; a database that changes all the time is copied at most once per
//! [`Snapshots::every`] (continuous mode asks again when that time is up), so the targets'
//! lag stays bounded and the platform is not read from many times a second. The copy is a
//! private file: it is written without a journal or a sync, in the database's own journal
//! mode (a WAL database stays one), and nothing of the source's is written.

use crate::fs::{self, Stamp};
use crate::hash;
use crate::index::FileRecord;
use crate::shadow::Shadows;
use rusqlite::{Connection, OpenFlags, backup};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first 16 bytes of every SQLite 3 database.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";
/// The files SQLite keeps beside a database, by the suffix of their name.
pub const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];
/// Pages copied in one step in rollback-journal mode (4 MiB of 4 KiB pages).
pub const STEP_PAGES: i32 = 1024;
/// Restarts (a writer committed between two steps) before the rest is copied in one step.
pub const MAX_RESTARTS: u32 = 3;
/// How long one step waits for a writer that holds the database.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Whether the file at `path` is a SQLite database (by its header, not its name).
pub fn is_database(path: &Path) -> bool {
    let mut head = [0u8; 16];
    fs::open_shared(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == HEADER)
}

/// The database a companion file belongs to (`db/x.sqlite` for `db/x.sqlite-wal`), by name.
pub fn companion_of(path: &str) -> Option<&str> {
    COMPANIONS
        .iter()
        .find_map(|suffix| path.strip_suffix(suffix))
        .filter(|base| !base.is_empty() && !base.ends_with('/'))
}

/// A private copy of a database; the file is removed when the last reference goes.
#[derive(Debug)]
pub struct Copy {
    pub path: PathBuf,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What taking a copy cost the platform.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Taken {
    /// The longest a step held the database (what a writer may have waited).
    pub longest_step: Duration,
    pub steps: u32,
    pub restarts: u32,
    /// Bytes of the copy, hashed after the copy.
    pub bytes: u64,
}

/// The stamps of a database and its companions: unchanged stamps, unchanged database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live(Vec<Option<Stamp>>);

impl Live {
    fn of(path: &Path) -> Live {
        let stamp = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| fs::stamp_of_meta(&m))
        };
        let mut stamps = vec![stamp(path)];
        for suffix in COMPANIONS {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            stamps.push(stamp(Path::new(&name)));
        }
        Live(stamps)
    }

    /// The newest modification time of the database and its companions.
    fn newest(&self) -> i128 {
        self.0
            .iter()
            .flatten()
            .map(|s| s.mtime_ns)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct Known {
    live: Live,
    record: FileRecord,
    copy: Arc<Copy>,
    taken_at: Instant,
}

/// What [`Snapshots::take`] gave.
#[derive(Debug)]
pub struct Taking {
    pub record: FileRecord,
    pub copy: Arc<Copy>,
    /// What copying cost (zero steps when the last copy was given again).
    pub taken: Taken,
    /// The database changed since the copy given, which is too recent to be taken again:
    /// ask again after this long.
    pub again_in: Option<Duration>,
}

/// The copies of one source folder's databases.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    next: AtomicU64,
    known: Mutex<HashMap<String, Known>>,
    every: Duration,
    /// Plain files that changed under a read or a send: read through a stable copy from now on.
    unstable: Mutex<std::collections::HashSet<String>>,
    /// Shadow copies of the folder's volume, for files held without read sharing (Windows).
    shadows: Shadows,
}

impl Snapshots {
    /// Copies kept in `dir` (emptied of copies an earlier run left).
    pub fn new(dir: PathBuf) -> std::io::Result<Snapshots> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Snapshots {
            dir,
            next: AtomicU64::new(0),
            known: Mutex::new(HashMap::new()),
            every: Duration::ZERO,
            unstable: Mutex::new(Default::default()),
            shadows: Shadows::default(),
        })
    }

    /// From now on, reads these files through a stable copy ([`Snapshots::copy_stable`]): they
    /// changed while they were read or sent.
    pub fn mark_unstable(&self, paths: impl IntoIterator<Item = String>) {
        self.unstable
            .lock()
            .expect("the unstable list is never poisoned")
            .extend(paths);
    }

    /// Whether `path` is read through a stable copy.
    pub fn is_unstable(&self, path: &str) -> bool {
        self.unstable
            .lock()
            .expect("the unstable list is never poisoned")
            .contains(path)
    }

    /// Copies a database at most once per `every` (continuous mode); the default copies it
    /// whenever it changed.
    pub fn every(self, every: Duration) -> Snapshots {
        Snapshots { every, ..self }
    }

    /// A consistent copy of the database at `full` (`rel` in the folder) and its record: the
    /// copy's content with the database's time. The last copy is reused when neither the
    /// database nor a companion changed since it was taken.
    pub fn take(&self, full: &Path, rel: &str, racy_window_ns: i128) -> Result<Taking, String> {
        self.take_with(full, rel, racy_window_ns, &backup_into)
    }

    /// A private copy of a file that is not a database but keeps changing (it changed under
    /// every read or send), taken in a quiet moment and checked stable: its size, time and file
    /// id were the same before and after the copy, and it had not been written just before
    /// (a write in the same tick of the file system's clock would keep its time).
    pub fn copy_stable(
        &self,
        full: &Path,
        rel: &str,
        racy_window_ns: i128,
    ) -> Result<Taking, String> {
        self.take_with(full, rel, racy_window_ns, &copy_checked)
    }

    /// A private copy of a file another program holds open without sharing it for reading,
    /// taken from a shadow copy of its volume ([`crate::shadow`], Windows only).
    pub fn copy_from_shadow(
        &self,
        full: &Path,
        rel: &str,
        racy_window_ns: i128,
    ) -> Result<Taking, String> {
        self.take_with(full, rel, racy_window_ns, &|from, to| {
            self.shadows.copy(from, to, racy_window_ns)
        })
    }

    /// Lets go of the shadow copy a scan made, once the scan is over.
    pub fn release_shadows(&self) {
        self.shadows.release();
    }

    /// The one way every copy is taken, whatever `copier` reads it with: reused while the
    /// file and its companions keep their stamps, then hashed and recorded.
    fn take_with(
        &self,
        full: &Path,
        rel: &str,
        racy_window_ns: i128,
        copier: &dyn Fn(&Path, &Path) -> Result<Taken, String>,
    ) -> Result<Taking, String> {
        let live = Live::of(full);
        {
            let known = self
                .known
                .lock()
                .expect("the snapshot list is never poisoned");
            if let Some(k) = known.get(rel) {
                let unchanged = k.live == live && !k.record.racy;
                let age = k.taken_at.elapsed();
                if unchanged || age < self.every {
                    let record = FileRecord {
                        racy: true,
                        ..k.record.clone()
                    };
                    return Ok(Taking {
                        record,
                        copy: k.copy.clone(),
                        taken: Taken::default(),
                        again_in: (!unchanged).then(|| self.every - age),
                    });
                }
            }
        }
        let taken_at = Instant::now();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let copy = Arc::new(Copy {
            path: self.dir.join(format!("{n}.sqlite")),
        });
        let mut taken = copier(full, &copy.path)?;
        let mut file =
            std::fs::File::open(&copy.path).map_err(|e| format!("cannot read its copy: {e}"))?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let (blocks, read) =
            hash::hash_blocks(&mut file, size).map_err(|e| format!("cannot hash its copy: {e}"))?;
        taken.bytes = read;
        let db = live.0[0].ok_or_else(|| "it was removed while being copied".to_string())?;
        let mtime_ns = live.newest();
        let record = FileRecord {
            stamp: Stamp {
                size,
                mtime_ns,
                file_id: db.file_id,
                executable: false,
            },
            hash: hash::file_hash(size, &blocks),
            blocks: crate::index::blocks(blocks),
            // Never trusted by the quick check: the scan asks for a copy every time, and
            // the stamps above say whether the last one still holds.
            racy: true,
        };
        let trusted = FileRecord {
            racy: mtime_ns > fs::mtime_now() - racy_window_ns,
            ..record.clone()
        };
        self.known
            .lock()
            .expect("the snapshot list is never poisoned")
            .insert(
                rel.to_string(),
                Known {
                    live,
                    record: trusted,
                    copy: copy.clone(),
                    taken_at,
                },
            );
        Ok(Taking {
            record,
            copy,
            taken,
            again_in: None,
        })
    }

    /// The files read through copies (databases, and files that kept changing under a read).
    pub fn paths(&self) -> Vec<String> {
        self.known
            .lock()
            .expect("the snapshot list is never poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets copies of files that are no longer in the folder or no longer copied.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.known
            .lock()
            .expect("the snapshot list is never poisoned")
            .retain(|rel, _| keep(rel));
    }
}

/// How long a file must have been left alone before it is read whole or copied: longer than a
/// tick of any file system's clock that RainMaker trusts (see `scan`'s racy window).
pub const QUIET: Duration = Duration::from_millis(20);
/// Attempts at a stable copy before giving up for this scan.
const COPY_ATTEMPTS: u32 = 25;

/// Copies a plain file that keeps changing into `to`, in a moment it was left alone.
fn copy_checked(from: &Path, to: &Path) -> Result<Taken, String> {
    let stamp = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| fs::stamp_of_meta(&m))
            .map_err(|e| format!("cannot read it: {e}"))
    };
    let mut taken = Taken::default();
    for _ in 0..COPY_ATTEMPTS {
        let before = stamp(from)?;
        let quiet_for = fs::mtime_now() - before.mtime_ns;
        if quiet_for < QUIET.as_nanos() as i128 {
            taken.restarts += 1;
            std::thread::sleep(QUIET);
            continue;
        }
        let started = Instant::now();
        std::fs::copy(from, to).map_err(|e| format!("cannot copy it: {e}"))?;
        taken.longest_step = taken.longest_step.max(started.elapsed());
        taken.steps += 1;
        if fs::same_stamp(&stamp(from)?, &before) {
            return Ok(taken);
        }
        taken.restarts += 1;
    }
    Err(format!(
        "it changed under each of {COPY_ATTEMPTS} attempts to copy it; the next scan tries again"
    ))
}

/// Copies the database at `from` into a new file `to` with SQLite's online backup.
fn backup_into(from: &Path, to: &Path) -> Result<Taken, String> {
    let fail = |what: &str, e: rusqlite::Error| format!("{what}: {e}");
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail("cannot open it read-only", e))?;
    source
        .busy_timeout(BUSY_WAIT)
        .map_err(|e| fail("cannot set its busy timeout", e))?;
    let wal = source
        .query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0))
        .map(|mode| mode.eq_ignore_ascii_case("wal"))
        .map_err(|e| fail("cannot read its journal mode", e))?;
    let _ = std::fs::remove_file(to);
    let mut copy = Connection::open(to).map_err(|e| fail("cannot create its copy", e))?;
    // A private file, hashed at once: no journal, no sync.
    copy.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")
        .map_err(|e| fail("cannot prepare its copy", e))?;
    let mut taken = Taken::default();
    {
        let backup = backup::Backup::new(&source, &mut copy)
            .map_err(|e| fail("cannot start copying it", e))?;
        let mut remaining = i32::MAX;
        loop {
            let pages = if wal || taken.restarts >= MAX_RESTARTS {
                -1
            } else {
                STEP_PAGES
            };
            let started = Instant::now();
            let step = backup.step(pages);
            taken.longest_step = taken.longest_step.max(started.elapsed());
            taken.steps += 1;
            match step.map_err(|e| fail("cannot copy it", e))? {
                backup::StepResult::Done => break,
                backup::StepResult::More => {}
                backup::StepResult::Busy | backup::StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {}
            }
            let progress = backup.progress();
            if progress.remaining > remaining {
                // A writer committed between two steps: SQLite starts again from page 1.
                taken.restarts += 1;
            }
            remaining = progress.remaining;
            // Let go of the database for a moment, so a writer that waits can commit.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(copy);
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(path: &Path, mode: &str, rows: usize) -> Connection {
        let db = Connection::open(path).unwrap();
        db.execute_batch(&format!(
            "PRAGMA journal_mode = {mode}; CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB);"
        ))
        .unwrap();
        for i in 0..rows {
            db.execute("INSERT INTO t (v) VALUES (?1)", [vec![i as u8; 1500]])
                .unwrap();
        }
        db
    }

    fn rows(path: &Path) -> i64 {
        let db = Connection::open(path).unwrap();
        let ok: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "the copy must be a sound database");
        db.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn databases_are_known_by_their_header_and_companions_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _db = database(&dir.path().join("x.data"), "WAL", 1);
        std::fs::write(dir.path().join("fake.sqlite"), b"not a database at all").unwrap();
        assert!(is_database(&dir.path().join("x.data")));
        assert!(!is_database(&dir.path().join("fake.sqlite")));
        assert_eq!(companion_of("db/x.sqlite-wal"), Some("db/x.sqlite"));
        assert_eq!(companion_of("db/x.sqlite-journal"), Some("db/x.sqlite"));
        assert_eq!(companion_of("db/x.sqlite"), None);
        assert_eq!(companion_of("db/-wal"), None);
    }

    #[test]
    fn a_copy_holds_every_committed_row_in_both_journal_modes_and_is_reused() {
        for mode in ["WAL", "DELETE"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("NinjaTrader.sqlite");
            let db = database(&path, mode, 50);
            let snapshots = Snapshots::new(dir.path().join("snapshots")).unwrap();
            let Taking {
                record,
                copy,
                taken,
                ..
            } = snapshots.take(&path, "db.sqlite", 0).unwrap();
            assert_eq!(
                rows(&copy.path),
                50,
                "{mode}: every committed row is in the copy"
            );
            assert_eq!(
                record.stamp.size,
                std::fs::metadata(&copy.path).unwrap().len()
            );
            assert!(taken.steps >= 1);
            for suffix in COMPANIONS {
                let mut name = copy.path.as_os_str().to_owned();
                name.push(suffix);
                assert!(
                    !Path::new(&name).exists(),
                    "{mode}: the copy has no {suffix}"
                );
            }
            let again = snapshots.take(&path, "db.sqlite", 0).unwrap();
            assert!(
                Arc::ptr_eq(&copy, &again.copy),
                "{mode}: an unchanged database is not copied again"
            );
            assert_eq!(again.record.hash, record.hash);
            assert_eq!(again.again_in, None);
            let same = again.copy;
            db.execute("INSERT INTO t (v) VALUES (x'00')", []).unwrap();
            let changed = snapshots.take(&path, "db.sqlite", 0).unwrap();
            assert_ne!(
                changed.record.hash, record.hash,
                "{mode}: a commit makes a new copy"
            );
            assert_eq!(rows(&changed.copy.path), 51);
            let newer = changed.copy;
            drop(newer);
            let old = copy.path.clone();
            drop((copy, same));
            snapshots.retain(|_| false);
            assert!(!old.exists(), "a copy no one refers to is removed");
        }
    }

    #[test]
    fn a_file_that_keeps_changing_is_copied_in_a_quiet_moment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.dat");
        std::fs::write(&path, vec![7u8; 300_000]).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::{Seek, Write};
                let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let mut round = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    round = round.wrapping_add(1);
                    // Rewritten in place, in three pieces, every 50 ms: a copy taken during a
                    // rewrite would mix two versions; none may come out.
                    file.rewind().unwrap();
                    for _ in 0..3 {
                        file.write_all(&[round; 100_000]).unwrap();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let snapshots = Snapshots::new(dir.path().join("snapshots")).unwrap();
        for _ in 0..5 {
            let taking = snapshots.copy_stable(&path, "chart.dat", 0).unwrap();
            let bytes = std::fs::read(&taking.copy.path).unwrap();
            assert_eq!(bytes.len(), 300_000, "a whole version");
            assert!(
                bytes.iter().all(|b| *b == bytes[0]),
                "one version, not a mix of two"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[test]
    fn a_database_that_keeps_changing_is_copied_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sqlite");
        let db = database(&path, "WAL", 5);
        let snapshots = Snapshots::new(dir.path().join("snapshots"))
            .unwrap()
            .every(Duration::from_secs(3600));
        let first = snapshots.take(&path, "live.sqlite", 0).unwrap();
        db.execute("INSERT INTO t (v) VALUES (x'01')", []).unwrap();
        let soon = snapshots.take(&path, "live.sqlite", 0).unwrap();
        assert!(
            Arc::ptr_eq(&first.copy, &soon.copy),
            "too soon for another copy"
        );
        assert_eq!(soon.taken.steps, 0);
        let wait = soon
            .again_in
            .expect("the change is not forgotten: ask again later");
        assert!(wait <= Duration::from_secs(3600) && wait > Duration::from_secs(3500));
    }
}
