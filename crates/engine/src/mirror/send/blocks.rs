//! The blocks of a push, read once for every target: a block is read from the source (or
//! from a live file's copy), checked against the hash the scan recorded (a file truncated
//! since is abandoned for this pass), and kept in a bounded cache so every other target that
//! needs it gets the same bytes without reading the disk again; compressed once for each level
//! a target asks (targets choose their own, [`super::adapt`]), when that makes it smaller. A
//! slow target falls out of the cache window and reads for itself.

use super::adapt::{LADDER, Level};
use crate::fs;
use crate::hash;
use crate::index::FileRecord;
use crate::protocol::{BLOCK_SIZE, Hash, Payload};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Blocks kept for other targets (128 KiB each: 32 MiB, with their compressed forms).
const CACHE_BLOCKS: usize = 256;
/// After this many blocks of a file that did not compress, stop trying for that file.
const GIVE_UP_COMPRESSING: u32 = 3;
/// Files whose failures to compress are counted at once; past it, the count starts again (a
/// first mirror of 300,000 small files would otherwise keep one entry each).
const COUNTED_FILES: usize = 4_096;

/// Source bytes a level must have compressed before its speed is reported.
const MEASURED_BYTES: u64 = 1 << 20;

type Key = (String, Hash, u64);

/// A block in the cache: its bytes once read, and each level's compression of them once made
/// (none when it did not make them smaller).
#[derive(Debug, Default)]
struct Block {
    raw: OnceCell<Arc<Vec<u8>>>,
    packed: [std::sync::OnceLock<Option<Arc<Vec<u8>>>>; LADDER.len()],
}
type Slot = Arc<Block>;

/// Reads, verifies and compresses source blocks once for every target.
#[derive(Debug)]
pub struct BlockSource {
    root: PathBuf,
    /// Files read from a consistent copy instead of the live file (databases).
    copies: Mutex<BTreeMap<String, Arc<crate::snapshot::Copy>>>,
    cache: Mutex<(HashMap<Key, Slot>, VecDeque<Key>)>,
    incompressible: Mutex<HashMap<(String, Hash), u32>>,
    bytes_read: AtomicU64,
    /// Per level: source bytes compressed, and the nanoseconds that took (wall time on the
    /// compressing thread, so a CPU shared with other work counts as a slower compressor).
    packing: [(AtomicU64, AtomicU64); LADDER.len()],
    /// Targets sending from it now: their compressors share the cores.
    senders: Arc<AtomicUsize>,
}

/// One target sending from a [`BlockSource`] ([`BlockSource::sending`]), until dropped.
#[derive(Debug)]
pub struct Sending(Arc<AtomicUsize>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BlockSource {
    /// A block source for the folder `root`.
    pub fn new(root: PathBuf) -> BlockSource {
        BlockSource {
            root,
            copies: Mutex::new(BTreeMap::new()),
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            incompressible: Mutex::new(HashMap::new()),
            bytes_read: AtomicU64::new(0),
            packing: Default::default(),
            senders: Arc::default(),
        }
    }

    /// A target starts sending from this source; it counts in [`BlockSource::senders`] until
    /// the returned guard is dropped.
    pub fn sending(&self) -> Sending {
        self.senders.fetch_add(1, Ordering::Relaxed);
        Sending(self.senders.clone())
    }

    /// Targets sending now (at least 1 for the one that asks).
    pub fn senders(&self) -> usize {
        self.senders.load(Ordering::Relaxed).max(1)
    }

    /// This block source, reading the files of `copies` from their copies.
    pub fn reading_copies(self, copies: BTreeMap<String, Arc<crate::snapshot::Copy>>) -> Self {
        self.read_copies(copies);
        self
    }

    /// From now on, reads the files of `copies` from their copies (the scan's databases).
    pub fn read_copies(&self, copies: BTreeMap<String, Arc<crate::snapshot::Copy>>) {
        *self.copies.lock().expect("copies lock") = copies;
    }

    /// The copies files are read from, by path.
    pub fn copies(&self) -> BTreeMap<String, Arc<crate::snapshot::Copy>> {
        self.copies.lock().expect("copies lock").clone()
    }

    /// Where the bytes of `path` are read from.
    fn location(&self, path: &str) -> PathBuf {
        match self.copies.lock().expect("copies lock").get(path) {
            Some(copy) => copy.path.clone(),
            None => self.root.join(path),
        }
    }

    /// Bytes read from source files to be sent (each block counts once per read).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// How fast one thread compressed at each level so far, source bytes a second (none for a
    /// level that compressed less than a few blocks).
    pub fn packing_speeds(&self) -> [Option<f64>; LADDER.len()] {
        std::array::from_fn(|rung| {
            let (bytes, nanos) = &self.packing[rung];
            let (bytes, nanos) = (bytes.load(Ordering::Relaxed), nanos.load(Ordering::Relaxed));
            (bytes >= MEASURED_BYTES && nanos > 0).then(|| bytes as f64 * 1e9 / nanos as f64)
        })
    }

    /// The hash of the source file's bytes from the start of the block holding `len` to
    /// `len`; what the plan needs to recognise an append.
    pub fn tail_hash(&self, path: &str, len: u64) -> Option<Hash> {
        let start = len - len % BLOCK_SIZE;
        let file = fs::open_shared(&self.location(path)).ok()?;
        let mut buffer = vec![0u8; (len - start) as usize];
        let n = fs::read_at(&file, start, &mut buffer).ok()?;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        (n == buffer.len()).then(|| hash::block_hash(&buffer))
    }

    /// The payload of `record`'s bytes from `offset` to the end of their block, compressed at
    /// `level` when that makes them smaller.
    pub async fn get(
        self: &Arc<Self>,
        path: &str,
        record: &FileRecord,
        offset: u64,
        level: Level,
    ) -> Result<Payload, String> {
        let key = (path.to_string(), record.hash, offset);
        let slot = {
            let mut guard = self.cache.lock().expect("cache lock");
            let (map, order) = &mut *guard;
            match map.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot: Slot = Arc::default();
                    map.insert(key.clone(), slot.clone());
                    order.push_back(key.clone());
                    while order.len() > CACHE_BLOCKS {
                        if let Some(old) = order.pop_front() {
                            map.remove(&old);
                        }
                    }
                    slot
                }
            }
        };
        let this = self.clone();
        // Only a file with more blocks than that can be spared a try.
        let countable = record.blocks.len() > GIVE_UP_COMPRESSING as usize;
        let (path, record) = (path.to_string(), record.clone());
        let file = (path.clone(), record.hash);
        // Errors are not kept: the next pass, or the next target, tries the disk again.
        let raw = slot
            .raw
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || this.read(&path, &record, offset))
                    .await
                    .unwrap_or_else(|e| Err(format!("reader failed: {e}")))
            })
            .await?
            .clone();
        let Level::Zstd(zstd_level) = level else {
            return Ok(Payload::Raw(raw.to_vec()));
        };
        if raw.len() < 64 || self.gave_up(&file) {
            return Ok(Payload::Raw(raw.to_vec()));
        }
        let rung = level.rung();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let packed = slot.packed[rung].get_or_init(|| {
                let started = std::time::Instant::now();
                let packed = zstd::bulk::compress(&raw, zstd_level);
                let (bytes, nanos) = &this.packing[rung];
                bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
                nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let packed = packed.ok().filter(|p| p.len() < raw.len() - raw.len() / 16);
                if packed.is_none() && countable {
                    this.count_incompressible(file);
                }
                packed.map(Arc::new)
            });
            match packed {
                Some(packed) => Payload::Zstd(packed.to_vec()),
                None => Payload::Raw(raw.to_vec()),
            }
        })
        .await
        .map_err(|e| format!("compressor failed: {e}"))
    }

    /// Counts a block of this version of a file that did not compress.
    fn count_incompressible(&self, file: (String, Hash)) {
        let mut counts = self.incompressible.lock().expect("lock");
        if counts.len() >= COUNTED_FILES && !counts.contains_key(&file) {
            counts.clear();
        }
        *counts.entry(file).or_default() += 1;
    }

    /// Whether enough blocks of this version of a file failed to compress to stop trying.
    fn gave_up(&self, file: &(String, Hash)) -> bool {
        self.incompressible
            .lock()
            .expect("lock")
            .get(file)
            .is_some_and(|n| *n >= GIVE_UP_COMPRESSING)
    }

    fn read(&self, path: &str, record: &FileRecord, offset: u64) -> Result<Arc<Vec<u8>>, String> {
        let index = offset / BLOCK_SIZE;
        let start = index * BLOCK_SIZE;
        let len = hash::block_len(record.stamp.size, index) as usize;
        if index >= record.blocks.len() as u64 {
            return Err(format!("block {index} is past the end of {path}"));
        }
        let file =
            fs::open_shared(&self.location(path)).map_err(|e| format!("cannot read it: {e}"))?;
        let mut buffer = vec![0u8; len];
        let n =
            fs::read_at(&file, start, &mut buffer).map_err(|e| format!("cannot read it: {e}"))?;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        if n != len {
            return Err(
                "it was truncated while being sent; the next pass sends the new version".into(),
            );
        }
        Ok(Arc::new(buffer.split_off((offset - start) as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn only_files_of_many_blocks_are_counted_and_the_count_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(BlockSource::new(dir.path().to_path_buf()));
        let level = Level::Zstd(1);
        let get = |name: String, len: usize, seed: u64| {
            let source = source.clone();
            let full = dir.path().join(&name);
            async move {
                std::fs::write(&full, random(len, seed)).unwrap();
                let record = crate::scan::hash_file(&full, None, crate::scan::Growth::Prove)
                    .unwrap()
                    .record;
                let mut raw = Vec::new();
                for i in 0..record.blocks.len() as u64 {
                    let payload = source
                        .get(&name, &record, i * BLOCK_SIZE, level)
                        .await
                        .unwrap();
                    raw.push(matches!(payload, Payload::Raw(_)));
                }
                (record, raw)
            }
        };
        // Files of one block that do not compress are tried each time, and never counted.
        for i in 0..50 {
            let (_, raw) = get(format!("small{i}"), 4_000, i).await;
            assert_eq!(raw, [true]);
        }
        assert!(source.incompressible.lock().unwrap().is_empty());
        // A file of many blocks is given up on after a few.
        let blocks = GIVE_UP_COMPRESSING as usize + 2;
        let (record, raw) = get("large".into(), blocks * BLOCK_SIZE as usize, 99).await;
        assert_eq!(raw, vec![true; blocks]);
        assert!(source.gave_up(&("large".to_string(), record.hash)));
        assert_eq!(source.incompressible.lock().unwrap().len(), 1);
        // Many such files: the count never holds more than its bound.
        for i in 0..COUNTED_FILES + 10 {
            source.count_incompressible((format!("f{i}"), [0; 32]));
            assert!(source.incompressible.lock().unwrap().len() <= COUNTED_FILES);
        }
    }
}
