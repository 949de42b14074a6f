//! The persistent index of a folder: for every file its quick-check stamp, block hashes and
//! whole-file hash; on a target also the interrupted transfers and in-place appends that a
//! crash must resume or roll back, and the batch of steps that applies a session, recorded
//! before its first step so that a crash in the middle is completed at the next start.
//!
//! The store is [redb]: an embedded key-value store in pure Rust whose copy-on-write B-trees
//! make every commit atomic and crash-safe (a killed process or a power cut leaves the last
//! committed state), with no C library to build on Windows, Linux or macOS. SQLite would do
//! the job too, but it brings a C build and SQL for what is a map from a path to a record.
//! Records are postcard-encoded.
//!
//! Each commit says whether it must be durable at once ([`Durability::Immediate`], used
//! before writing an append in place) or may ride on the next durable commit
//! ([`Durability::None`], used for batches of finished files: losing them only costs a
//! re-hash at the next start, never a wrong answer, because the quick check still runs).

use crate::fs::Stamp;
use crate::protocol::{FileBegin, Hash};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use redb::Durability;

const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const PARTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("partials");
const APPENDS: TableDefinition<&str, &[u8]> = TableDefinition::new("appends");
const BATCH: TableDefinition<&str, &[u8]> = TableDefinition::new("batch");
/// The one key of the batch table: at most one batch is recorded at a time.
const BATCH_KEY: &str = "steps";

/// The most memory redb may keep of the index's pages (its default is 1 GiB, which a folder of
/// 300,000 files fills and an idle agent then keeps). Pages beyond it are read again, from the
/// system's file cache as a rule. At 300,000 files 4 MiB was as fast as 16 MiB (a one-file
/// push, 5.1 to 5.6 s either way) and an agent idle after a session holds 26 MB instead of 51.
const CACHE_BYTES: usize = 4 << 20;

/// Most files one transaction of [`Index::apply_files`] writes.
const FILES_PER_COMMIT: usize = 16_384;

/// Opens (or creates) the store at `path` with the index's cache size.
fn open_store(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// A file's block hashes: one is held in the record itself (most files of a tick history are
/// one block: a list of their own would take 48 bytes more each). Stored as a list is.
pub type Blocks = smallvec::SmallVec<[Hash; 1]>;

/// `list` as [`Blocks`]: one hash goes into the record, whatever room the list had.
pub fn blocks(list: Vec<Hash>) -> Blocks {
    if list.len() <= 1 {
        Blocks::from_slice(&list)
    } else {
        Blocks::from_vec(list)
    }
}

/// What the index knows about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub stamp: Stamp,
    pub hash: Hash,
    pub blocks: Blocks,
    /// The file was modified so shortly before it was hashed that a later write could keep
    /// the same size and time (file system clocks are coarse); such a record is not trusted by
    /// the quick check and the file is hashed again on the next scan.
    pub racy: bool,
}

/// The file records of an index in the order of their paths ([`Index::file_cursor`]). It
/// reads one snapshot of the store, whatever is committed while it is open.
pub struct FileCursor {
    range: redb::Range<'static, &'static str, &'static [u8]>,
    path: PathBuf,
}

impl std::fmt::Debug for FileCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCursor")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Iterator for FileCursor {
    type Item = Result<(String, FileRecord), IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        let error = |reason: String| IndexError {
            path: self.path.clone(),
            reason,
        };
        Some(match self.range.next()? {
            Ok((key, value)) => postcard::from_bytes(value.value())
                .map(|record| (key.value().to_string(), record))
                .map_err(|e| error(format!("a record for {:?} is damaged: {e}", key.value()))),
            Err(e) => Err(error(e.to_string())),
        })
    }
}

/// A new file version being built in a temporary file on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRecord {
    /// The version being built (its `reuse` list is not kept).
    pub begin: FileBegin,
    /// File name of the temporary file inside the target's `tmp` folder.
    pub temp_name: String,
}

/// An append being written in place: a crash rolls the file back to `from_len`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRecord {
    pub from_len: u64,
    /// The file as it was verified before the append.
    pub before: FileRecord,
}

/// One step of a recorded batch ([`crate::mirror::commit`]): a change a session makes to the
/// target, applied in the order of the batch. Every step can be performed again after a crash
/// and ends where it would have ended the first time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Remove `path` into the trash, if it is still the file or folder `file_id` (0: unknown).
    Remove { path: String, file_id: u128 },
    /// Create the folder `path` and its parents.
    Mkdir { path: String },
    /// Rename the verified temporary file `temp_name` (in the target's `tmp` folder) to `path`;
    /// done when the temporary file is gone.
    Place { path: String, temp_name: String },
    /// Write bytes `from_len..size` at the end of `path`, which held `before` (same file id).
    Append {
        path: String,
        before: Stamp,
        from_len: u64,
        size: u64,
        mtime_ns: i128,
        executable: bool,
        bytes: AppendBytes,
    },
    /// Set the time and executable bit of `path`.
    SetMeta {
        path: String,
        mtime_ns: i128,
        executable: bool,
    },
}

/// Where the bytes of a recorded append are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendBytes {
    /// In the record itself (small appends: the index commit is their only sync).
    Inline(Vec<u8>),
    /// In this synced side file of the target's `tmp` folder.
    Side(String),
}

/// One change to the index.
#[derive(Debug, Clone)]
pub enum Change {
    PutFile(String, FileRecord),
    RemoveFile(String),
    PutPartial(String, PartialRecord),
    RemovePartial(String),
    PutAppend(String, AppendRecord),
    RemoveAppend(String),
    /// Records the batch about to be applied (replacing any).
    PutBatch(Vec<Step>),
    /// The recorded batch is applied.
    ClearBatch,
}

/// An index that could not be opened, read or written.
#[derive(Debug, Error)]
#[error("index {path}: {reason}")]
pub struct IndexError {
    pub path: PathBuf,
    pub reason: String,
}

/// A folder's index, open.
#[derive(Debug)]
pub struct Index {
    /// The open store. After an I/O error (a full disk) redb refuses every later transaction
    /// until the file is opened again, so it is reopened then (see [`Index::begin`]).
    db: std::sync::RwLock<(u64, Option<Database>)>,
    path: PathBuf,
    /// A commit without durability happened since the last durable one. The lock also
    /// orders commits with the flag, so two threads cannot leave it wrong.
    lazy: std::sync::Mutex<bool>,
}

impl Index {
    /// Opens the index at `path`, creating it (and its folder) if it does not exist.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let fail = |reason: String| IndexError {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create its folder: {e}")))?;
        }
        let db = open_store(path).map_err(|e| {
            fail(format!(
                "cannot open it ({e}); if it is damaged, delete it and RainMaker will rebuild it"
            ))
        })?;
        let index = Index {
            db: std::sync::RwLock::new((0, Some(db))),
            path: path.to_path_buf(),
            lazy: std::sync::Mutex::new(false),
        };
        index.commit(&[], Durability::Immediate)?;
        Ok(index)
    }

    /// Begins a transaction with `begin`; when redb refuses because an earlier write failed
    /// (the disk was full), the store is closed, opened again, and asked once more.
    fn begin<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, redb::TransactionError>,
    ) -> Result<T, IndexError> {
        let (generation, first) = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            let first = match db.1.as_ref() {
                Some(store) => begin(store),
                None => Err(redb::TransactionError::Storage(
                    redb::StorageError::PreviousIo,
                )),
            };
            (db.0, first)
        };
        match first {
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
                // Another thread may have reopened it already: use that one.
                if db.0 == generation || db.1.is_none() {
                    drop(db.1.take());
                    tracing::warn!(
                        "reopening the index {} after an I/O error",
                        self.path.display()
                    );
                    let reopened = open_store(&self.path).map_err(|e| {
                        self.error(format!("cannot open it again after an I/O error: {e}"))
                    })?;
                    *db = (generation + 1, Some(reopened));
                }
                let store = db.1.as_ref().expect("just reopened");
                begin(store).map_err(|e| self.error(e))
            }
            other => other.map_err(|e| self.error(e)),
        }
    }

    fn error(&self, reason: impl std::fmt::Display) -> IndexError {
        IndexError {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn load<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<BTreeMap<String, T>, IndexError> {
        let read = self.begin(Database::begin_read)?;
        let table = read.open_table(table).map_err(|e| self.error(e))?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = item.map_err(|e| self.error(e))?;
            let record = postcard::from_bytes(value.value()).map_err(|e| {
                self.error(format!("a record for {:?} is damaged: {e}", key.value()))
            })?;
            out.insert(key.value().to_string(), record);
        }
        Ok(out)
    }

    /// Every file record, by path.
    pub fn files(&self) -> Result<BTreeMap<String, FileRecord>, IndexError> {
        self.load(FILES)
    }

    /// Every file record in the order of their paths, read from the store as the cursor is
    /// advanced: a walk in that order checks each file against its record without holding
    /// them all (at 300,000 files, 90 MB as a map).
    pub fn file_cursor(&self) -> Result<FileCursor, IndexError> {
        let read = self.begin(Database::begin_read)?;
        let table = read.open_table(FILES).map_err(|e| self.error(e))?;
        let range = table.range::<&str>(..).map_err(|e| self.error(e))?;
        Ok(FileCursor {
            range,
            path: self.path.clone(),
        })
    }

    /// Every interrupted transfer, by path.
    pub fn partials(&self) -> Result<BTreeMap<String, PartialRecord>, IndexError> {
        self.load(PARTIALS)
    }

    /// Every append in flight, by path.
    pub fn appends(&self) -> Result<BTreeMap<String, AppendRecord>, IndexError> {
        self.load(APPENDS)
    }

    /// The batch recorded and not yet cleared, if any: a crash interrupted its steps.
    pub fn batch(&self) -> Result<Option<Vec<Step>>, IndexError> {
        Ok(self.load::<Vec<Step>>(BATCH)?.remove(BATCH_KEY))
    }

    /// Applies `changes` in one atomic transaction. With no changes, nothing is written,
    /// unless a durable commit must make earlier lazy ones durable.
    pub fn apply(&self, changes: &[Change], durability: Durability) -> Result<(), IndexError> {
        self.apply_if(!changes.is_empty(), durability, || {
            self.commit(changes, durability)
        })
    }

    /// Puts the records of the files `put` (taken from `records`) and removes the files
    /// `remove`, as [`Index::apply`] does, in transactions of at most [`FILES_PER_COMMIT`]
    /// files (each record is encoded as it is written, never copied): a transaction holds its
    /// pages in memory until it commits. Each record stands alone (the quick check decides
    /// whether it still holds), so a crash between two of them loses nothing but a re-hash;
    /// only the last is made durable as `durability` says, and it makes the others durable.
    pub fn apply_files<P: AsRef<str>>(
        &self,
        put: impl IntoIterator<Item = P>,
        records: &imbl::OrdMap<String, FileRecord>,
        remove: &[String],
        durability: Durability,
    ) -> Result<(), IndexError> {
        let mut put = put.into_iter().peekable();
        let mut remove = remove.chunks(FILES_PER_COMMIT).peekable();
        let any = put.peek().is_some() || remove.peek().is_some();
        self.apply_if(any, durability, || {
            loop {
                let puts: Vec<P> = put.by_ref().take(FILES_PER_COMMIT).collect();
                let removes: &[String] = if puts.is_empty() {
                    match remove.next() {
                        Some(chunk) => chunk,
                        None => return Ok(()),
                    }
                } else {
                    &[]
                };
                let last = put.peek().is_none() && remove.peek().is_none();
                let this = if last { durability } else { Durability::None };
                self.transaction(this, |write| {
                    let mut files = write.open_table(FILES).map_err(|e| self.error(e))?;
                    for path in &puts {
                        let path = path.as_ref();
                        if let Some(record) = records.get(path) {
                            files
                                .insert(path, encode(record).as_slice())
                                .map_err(|e| self.error(e))?;
                        }
                    }
                    for path in removes {
                        files.remove(path.as_str()).map_err(|e| self.error(e))?;
                    }
                    Ok(())
                })?;
            }
        })
    }

    /// Runs `commit` when there is something to write, or when a durable commit must make
    /// earlier lazy ones durable; keeps the lazy flag.
    fn apply_if(
        &self,
        any: bool,
        durability: Durability,
        commit: impl FnOnce() -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let durable = matches!(durability, Durability::Immediate);
        let mut lazy = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        if !(any || durable && *lazy) {
            return Ok(());
        }
        if any {
            if let Err(e) = commit() {
                // Part of it may have committed lazily.
                *lazy = true;
                return Err(e);
            }
        } else {
            self.commit(&[], durability)?;
        }
        *lazy = !durable;
        Ok(())
    }

    fn commit(&self, changes: &[Change], durability: Durability) -> Result<(), IndexError> {
        self.transaction(durability, |write| {
            let mut files = write.open_table(FILES).map_err(|e| self.error(e))?;
            let mut partials = write.open_table(PARTIALS).map_err(|e| self.error(e))?;
            let mut appends = write.open_table(APPENDS).map_err(|e| self.error(e))?;
            let mut batch = write.open_table(BATCH).map_err(|e| self.error(e))?;
            for change in changes {
                let result = match change {
                    Change::PutFile(path, r) => {
                        files.insert(path.as_str(), encode(r).as_slice()).map(drop)
                    }
                    Change::RemoveFile(path) => files.remove(path.as_str()).map(drop),
                    Change::PutPartial(path, r) => partials
                        .insert(path.as_str(), encode(r).as_slice())
                        .map(drop),
                    Change::RemovePartial(path) => partials.remove(path.as_str()).map(drop),
                    Change::PutAppend(path, r) => appends
                        .insert(path.as_str(), encode(r).as_slice())
                        .map(drop),
                    Change::RemoveAppend(path) => appends.remove(path.as_str()).map(drop),
                    Change::PutBatch(steps) => {
                        batch.insert(BATCH_KEY, encode(steps).as_slice()).map(drop)
                    }
                    Change::ClearBatch => batch.remove(BATCH_KEY).map(drop),
                };
                result.map_err(|e| self.error(e))?;
            }
            Ok(())
        })
    }

    /// One write transaction with `durability`: `body` writes, then it commits.
    fn transaction(
        &self,
        durability: Durability,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut write = self.begin(Database::begin_write)?;
        write
            .set_durability(durability)
            .map_err(|e| self.error(e))?;
        body(&write)?;
        write.commit().map_err(|e| self.error(e))
    }
}

impl Index {
    /// Makes every lazy commit durable (for a clean shutdown).
    pub fn close(&self) {
        if let Err(e) = self.apply(&[], Durability::Immediate) {
            tracing::warn!("{e}");
        }
    }
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    postcard::to_stdvec(record).expect("index records always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size: u64) -> FileRecord {
        FileRecord {
            stamp: Stamp {
                size,
                mtime_ns: 7,
                file_id: 9,
                executable: false,
            },
            hash: [1; 32],
            blocks: smallvec::smallvec![[2; 32]],
            racy: false,
        }
    }

    #[test]
    fn many_files_are_written_and_removed_over_several_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb")).unwrap();
        let n = FILES_PER_COMMIT * 2 + 5;
        let records: BTreeMap<String, FileRecord> = (0..n)
            .map(|i| (format!("db/{i:06}"), record(i as u64)))
            .collect();
        let paths: Vec<String> = records.keys().cloned().collect();
        let tree: imbl::OrdMap<String, FileRecord> = records.clone().into_iter().collect();
        index
            .apply_files(&paths, &tree, &[], Durability::Immediate)
            .unwrap();
        assert_eq!(index.files().unwrap(), records);
        let (gone, kept) = paths.split_at(FILES_PER_COMMIT + 3);
        index
            .apply_files(std::iter::empty::<&str>(), &tree, gone, Durability::None)
            .unwrap();
        let left = index.files().unwrap();
        assert_eq!(left.len(), kept.len());
        assert!(kept.iter().all(|p| left[p] == records[p]));
        drop(index);
        // Reopened after a clean drop, all of it reads back.
        let index = Index::open(&dir.path().join("index.redb")).unwrap();
        assert_eq!(index.files().unwrap().len(), kept.len());
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/index.redb");
        {
            let index = Index::open(&path).unwrap();
            index
                .apply(
                    &[
                        Change::PutFile("a".into(), record(1)),
                        Change::PutFile("b".into(), record(2)),
                        Change::RemoveFile("a".into()),
                        Change::PutAppend(
                            "b".into(),
                            AppendRecord {
                                from_len: 2,
                                before: record(2),
                            },
                        ),
                    ],
                    Durability::Immediate,
                )
                .unwrap();
        }
        let index = Index::open(&path).unwrap();
        let files = index.files().unwrap();
        assert_eq!(files.len(), 1, "a removed record stays removed");
        assert_eq!(files["b"], record(2));
        assert_eq!(index.appends().unwrap()["b"].from_len, 2);
        assert!(index.partials().unwrap().is_empty());
        assert!(index.batch().unwrap().is_none());
    }

    #[test]
    fn a_recorded_batch_survives_a_reopen_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let steps = vec![
            Step::Mkdir { path: "ws".into() },
            Step::Place {
                path: "ws/a".into(),
                temp_name: "0123.part".into(),
            },
        ];
        {
            let index = Index::open(&path).unwrap();
            index
                .apply(&[Change::PutBatch(steps.clone())], Durability::Immediate)
                .unwrap();
        }
        let index = Index::open(&path).unwrap();
        assert_eq!(
            index.batch().unwrap(),
            Some(steps),
            "a recorded batch is what a restart completes"
        );
        index
            .apply(&[Change::ClearBatch], Durability::Immediate)
            .unwrap();
        assert!(index.batch().unwrap().is_none());
    }

    #[test]
    fn lazy_commits_survive_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        {
            let index = Index::open(&path).unwrap();
            index
                .apply(&[Change::PutFile("a".into(), record(1))], Durability::None)
                .unwrap();
            index.close();
        }
        let index = Index::open(&path).unwrap();
        assert_eq!(
            index.files().unwrap().len(),
            1,
            "a clean close keeps lazy commits"
        );
    }

    #[test]
    fn a_damaged_store_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        std::fs::write(&path, b"this is not a database").unwrap();
        let error = Index::open(&path).unwrap_err();
        assert!(error.to_string().contains("index.redb"), "{error}");
    }
}
