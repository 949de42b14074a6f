//! A target's listing as the source holds it until it has a tree of its own to lay it over.
//!
//! The listing arrives while the source still scans. Built into a tree as it came, it would be
//! a whole second tree (about 64 MB at 300,000 files) beside the scan's. It is held instead as
//! its encoded entries ([`Spool`]: in memory up to [`IN_MEMORY`], past that in a temporary file
//! in the state folder, unnamed on Unix and deleted when closed on Windows), then read back over
//! the scan's tree ([`Overlay`]), so that the two share every node where they agree.
//!
//! The entries are written as the source keeps a target's manifest between sessions: each a
//! little-endian `u32` length and its postcard bytes ([`write_entry`], [`read_entry`]).

use crate::mirror::plan;
use crate::protocol::Entry;
use crate::scan::{Overlay, Tree};
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use tempfile::SpooledTempFile;

/// The most bytes one entry may take (a file's block hashes: 64 MiB covers a file of about
/// 250 GiB); a longer length means the bytes are damaged.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// Encoded entries held in memory before they go to a file: a listing of about 70,000 files.
pub const IN_MEMORY: usize = 8 << 20;

/// Writes `entry` after the ones before it.
pub fn write_entry(to: &mut (impl Write + ?Sized), entry: &Entry) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(entry).map_err(std::io::Error::other)?;
    to.write_all(&(bytes.len() as u32).to_le_bytes())?;
    to.write_all(&bytes)
}

/// The next entry [`write_entry`] wrote, or `None` at the end. `buf` is reused between calls.
pub fn read_entry(
    from: &mut (impl Read + ?Sized),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Entry>> {
    let mut len = [0u8; 4];
    match from.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_ENTRY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an entry says it is {len} bytes long"),
        ));
    }
    buf.resize(len, 0);
    from.read_exact(buf)?;
    postcard::from_bytes(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Why a spooled listing could not be held or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Writing or reading the spool failed (the state folder's disk is full).
    #[error("cannot hold it in {dir}: {reason}")]
    Io {
        dir: PathBuf,
        reason: std::io::Error,
    },
    /// The target listed its folders or its files out of order: laid over a tree, they would
    /// not make the tree the target listed.
    #[error("the target listed its entries out of order")]
    Disordered,
}

/// A target's listing, held encoded until it is read over a tree.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    file: BufWriter<SpooledTempFile>,
    entries: u64,
}

impl Spool {
    /// An empty spool that goes to a temporary file in `dir` past [`IN_MEMORY`] bytes.
    pub fn new(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            file: BufWriter::with_capacity(64 << 10, tempfile::spooled_tempfile_in(IN_MEMORY, dir)),
            entries: 0,
        }
    }

    /// Adds entries after the ones before them.
    pub fn add(&mut self, entries: &[Entry]) -> Result<(), SpoolError> {
        for entry in entries {
            write_entry(&mut self.file, entry).map_err(|e| self.error(e))?;
        }
        self.entries += entries.len() as u64;
        Ok(())
    }

    /// How many entries it holds.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether its entries went to a file.
    pub fn on_disk(&self) -> bool {
        self.file.get_ref().is_rolled()
    }

    /// The listing as a tree laid over `over`, sharing what the two hold alike
    /// ([`plan::alike`]).
    pub fn read_over(self, over: &Tree) -> Result<Tree, SpoolError> {
        let dir = self.dir;
        let error = |reason| SpoolError::Io {
            dir: dir.clone(),
            reason,
        };
        let mut file = self.file.into_inner().map_err(|e| error(e.into_error()))?;
        file.rewind().map_err(error)?;
        let mut file = BufReader::with_capacity(64 << 10, file);
        let mut tree = Overlay::new(over, plan::alike);
        let mut buf = Vec::new();
        while let Some(entry) = read_entry(&mut file, &mut buf).map_err(error)? {
            plan::add_entry(&mut tree, entry);
        }
        tree.finish().ok_or(SpoolError::Disordered)
    }

    fn error(&self, reason: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EntryKind, FileMeta};

    fn file(path: &str, seed: u8) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File(FileMeta {
                size: seed as u64,
                mtime_ns: 1_700_000_000_000_000_000 + seed as i128,
                executable: false,
                hash: crate::hash::file_hash(seed as u64, &[[seed; 32]]),
                blocks: vec![[seed; 32]],
            }),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
        }
    }

    /// The tree the entries make on their own.
    fn built(entries: &[Entry]) -> Tree {
        let mut tree = crate::scan::TreeBuilder::default();
        plan::add_entries(&mut tree, entries.to_vec());
        tree.finish()
    }

    /// A listing of `files` files under a few folders, in the order a target sends it.
    fn listing(files: usize, seed: u8) -> Vec<Entry> {
        let mut entries = vec![dir("db"), dir("db/tick")];
        entries.extend((0..files).map(|i| file(&format!("db/tick/{i:06}.ncd"), seed)));
        entries
    }

    #[test]
    fn a_listing_read_over_a_tree_is_the_tree_it_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let theirs = listing(1_000, 1);
        // Over an empty tree, over itself, over a tree that differs in part, and over one that
        // holds more.
        let mut partly = built(&listing(1_000, 1));
        for i in (0..1_000).step_by(7) {
            partly.files.insert(
                format!("db/tick/{i:06}.ncd"),
                built(&[file("x", 2)]).files.get("x").unwrap().clone(),
            );
        }
        let mut more = built(&listing(1_200, 1));
        more.dirs.insert("other".into());
        for over in [Tree::default(), built(&theirs), partly, more] {
            let mut spool = Spool::new(tmp.path());
            for part in theirs.chunks(97) {
                spool.add(part).unwrap();
            }
            assert_eq!(spool.len(), theirs.len() as u64);
            let tree = spool.read_over(&over).unwrap();
            assert_eq!(tree, built(&theirs));
            assert_eq!(plan::digest(&tree), plan::digest(&built(&theirs)));
        }
    }

    #[test]
    fn a_listing_past_the_memory_bound_goes_to_a_file_and_reads_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        // About 90 bytes an entry: twice IN_MEMORY.
        let theirs = listing(IN_MEMORY / 45, 3);
        let mut spool = Spool::new(tmp.path());
        for part in theirs.chunks(1_000) {
            spool.add(part).unwrap();
        }
        assert!(spool.on_disk(), "{} entries stayed in memory", spool.len());
        let files = || std::fs::read_dir(tmp.path()).unwrap().count();
        // The file has no name (Unix) or goes when its handle closes (Windows, even when the
        // process is killed): nothing is left in the folder, whatever becomes of the process.
        #[cfg(unix)]
        assert_eq!(files(), 0);
        let over = built(&theirs[..theirs.len() / 2]);
        assert_eq!(spool.read_over(&over).unwrap(), built(&theirs));
        assert_eq!(files(), 0);
    }

    #[test]
    fn entries_out_of_order_are_refused_not_laid_over() {
        let tmp = tempfile::tempdir().unwrap();
        for entries in [
            vec![file("b", 1), file("a", 1)],
            vec![dir("b"), dir("a")],
            vec![file("a", 1), file("a", 2)],
        ] {
            let mut spool = Spool::new(tmp.path());
            spool.add(&entries).unwrap();
            assert!(matches!(
                spool.read_over(&Tree::default()),
                Err(SpoolError::Disordered)
            ));
        }
        // Folders and files are each in order among themselves, as a target sends them.
        let mut spool = Spool::new(tmp.path());
        spool.add(&[dir("b"), file("a", 1), dir("c")]).unwrap();
        assert!(spool.read_over(&Tree::default()).is_ok());
    }

    #[test]
    fn a_damaged_length_is_an_error_not_an_allocation() {
        let mut bytes = ((MAX_ENTRY_BYTES + 1) as u32).to_le_bytes().to_vec();
        bytes.extend([0; 16]);
        let error = read_entry(&mut bytes.as_slice(), &mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            read_entry(&mut [].as_slice(), &mut Vec::new())
                .unwrap()
                .is_none()
        );
    }
}
