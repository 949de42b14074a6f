//! The manifest a target had at the end of its last session, kept by the source so the next
//! session with an unchanged target skips the listing (its digest proves it still holds).
//!
//! The file is the digest, then the entries one by one (each a little-endian `u32` length and
//! its postcard bytes: [`crate::mirror::listing::write_entry`]), so it is written and read as
//! a stream. A session reads only the digest
//! to offer it to the target. When the target and the source are both unchanged, the plan is
//! empty and the entries are never read; only a target that is unchanged while the source
//! changed has them read back into a tree.

use super::*;
use crate::mirror::listing::{read_entry, write_entry};
use crate::scan::Overlay;
use std::io::Read;

/// What a source keeps of one target's manifest between sessions.
#[derive(Debug)]
pub(super) struct Kept {
    /// The file, for the sessions of a later run.
    pub path: PathBuf,
    /// In continuous mode, the tree the target verified last and its digest: the next
    /// session offers it and plans against it without reading the file.
    tree: Option<(Hash, Arc<Tree>)>,
    /// In continuous mode the file is written at most this often (a large manifest each
    /// sync would cost more than the sync); `None` writes it after every session.
    save_every: Option<Duration>,
    saved_at: Option<Instant>,
}

impl Kept {
    /// For one session (`push --once`): the file alone.
    pub fn file(path: PathBuf) -> Kept {
        Kept {
            path,
            tree: None,
            save_every: None,
            saved_at: None,
        }
    }

    /// For a continuous push: the last verified tree in memory, the file written at most
    /// every `save_every`.
    pub fn continuous(path: PathBuf, save_every: Duration) -> Kept {
        Kept {
            save_every: Some(save_every),
            ..Kept::file(path)
        }
    }

    /// The digest to offer the target: the last verified tree's, else the file's.
    pub fn digest(&self) -> Option<Hash> {
        match &self.tree {
            Some((digest, _)) => Some(*digest),
            None => cached_digest(&self.path),
        }
    }

    /// The kept tree whose digest is `digest`, from memory or from the file. The file is read
    /// over `source` (the tree the session sends): what the two hold alike is shared, not held
    /// twice. The file is read on a blocking thread (about a second at 300,000 files): the
    /// task's other work, a kept connection's answers to pings, goes on meanwhile.
    ///
    /// `Ok(None)`: the file is not the one of `digest`, or is damaged; `Err`: it could not be
    /// read for another reason (the reading thread panicked), which says nothing of the file.
    pub async fn tree(
        &self,
        digest: Hash,
        source: &Arc<Tree>,
    ) -> Result<Option<Arc<Tree>>, tokio::task::JoinError> {
        match &self.tree {
            Some((kept, tree)) if *kept == digest => Ok(Some(tree.clone())),
            _ => {
                let (path, source) = (self.path.clone(), source.clone());
                tokio::task::spawn_blocking(move || {
                    load_cached_manifest(&path, digest, &source).map(Arc::new)
                })
                .await
            }
        }
    }

    /// The target verified `tree` (whose digest is `digest`) at the end of a session. The file
    /// is written on a blocking thread, as [`Kept::tree`] reads it.
    pub async fn verified(&mut self, digest: Hash, tree: &Arc<Tree>) {
        let on_disk = cached_digest(&self.path);
        let due = match (self.save_every, self.saved_at) {
            (Some(every), Some(at)) => at.elapsed() >= every,
            _ => true,
        };
        if self.save_every.is_some() {
            self.tree = Some((digest, tree.clone()));
        }
        if on_disk != Some(digest) && due {
            let (path, tree) = (self.path.clone(), tree.clone());
            let saving =
                tokio::task::spawn_blocking(move || save_cached_manifest(&path, digest, &tree));
            match saving.await {
                Ok(Ok(())) => self.saved_at = Some(Instant::now()),
                Ok(Err(e)) => tracing::warn!("cannot keep a target's manifest: {e}"),
                Err(e) => tracing::warn!("cannot keep a target's manifest: {e}"),
            }
        }
    }

    /// The target is not known to hold anything kept.
    pub fn forget(&mut self) {
        self.tree = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the source keeps the manifest a target had at the end of their last session.
pub(super) fn cached_manifest_path(state_dir: &Path, url: &str) -> PathBuf {
    let key = hex::encode(crate::hash::block_hash(url.as_bytes()));
    state_dir
        .join("targets")
        .join(format!("{}.manifest", &key[..16]))
}

/// The digest of the kept manifest, if there is one (its entries are not read).
fn cached_digest(path: &Path) -> Option<Hash> {
    let mut digest = [0u8; 32];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut digest)
        .ok()?;
    Some(digest)
}

/// The kept manifest as a tree laid over `over` ([`Overlay`]), if it is the one whose digest is
/// `digest` and every file's block hashes make its hash (a damaged or older file is not).
fn load_cached_manifest(path: &Path, digest: Hash, over: &Tree) -> Option<Tree> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let mut header = [0u8; 32];
    file.read_exact(&mut header).ok()?;
    if header != digest {
        return None;
    }
    let mut tree = Overlay::new(over, plan::alike);
    let mut bytes = Vec::new();
    while let Some(entry) = read_entry(&mut file, &mut bytes).ok()? {
        // The digest covers each file's hash, and the hash covers its block hashes.
        if let crate::protocol::EntryKind::File(meta) = &entry.kind
            && crate::hash::file_hash(meta.size, &meta.blocks) != meta.hash
        {
            return None;
        }
        plan::add_entry(&mut tree, entry);
    }
    // The digest is taken of the tree made, not of the file: it proves what was kept from
    // `over` stands for what the file holds.
    let tree = tree.finish()?;
    (plan::digest(&tree) == digest).then_some(tree)
}

/// Keeps `tree`, the target's manifest, whose digest is `digest`.
fn save_cached_manifest(path: &Path, digest: Hash, tree: &Tree) -> std::io::Result<()> {
    crate::fs::write_atomic_with(path, crate::fs::Keep::Volatile, |file| {
        file.write_all(&digest)?;
        for entry in plan::entries(tree) {
            write_entry(file, &entry)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Stamp;
    use crate::index::FileRecord;

    fn tree() -> Tree {
        let mut tree = Tree::default();
        tree.dirs.insert("db".into());
        for (i, size) in [0u64, 5, 300_000].into_iter().enumerate() {
            let blocks = vec![[i as u8; 32]; size.div_ceil(crate::protocol::BLOCK_SIZE) as usize];
            tree.files.insert(
                format!("db/{i}.ncd"),
                FileRecord {
                    stamp: Stamp {
                        size,
                        mtime_ns: 1_700_000_000_000_000_000 + i as i128,
                        file_id: 0,
                        executable: i == 1,
                    },
                    hash: crate::hash::file_hash(size, &blocks),
                    blocks: crate::index::blocks(blocks),
                    racy: false,
                },
            );
        }
        tree
    }

    #[test]
    fn a_kept_manifest_reads_back_only_under_its_own_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = cached_manifest_path(dir.path(), "wss://a:1");
        let tree = tree();
        let digest = plan::digest(&tree);
        assert_eq!(cached_digest(&path), None);
        save_cached_manifest(&path, digest, &tree).unwrap();
        assert_eq!(cached_digest(&path), Some(digest));
        let none = Tree::default();
        assert_eq!(
            load_cached_manifest(&path, digest, &none),
            Some(tree.clone())
        );
        assert_eq!(
            load_cached_manifest(&path, [9; 32], &none),
            None,
            "another digest"
        );

        // Read over a source's tree, it is the kept tree all the same, and shares what the
        // source holds alike (a local record keeps its file id).
        let mut source = tree.clone();
        source.files = source
            .files
            .into_iter()
            .map(|(path, mut record)| {
                record.stamp.file_id = 42;
                (path, record)
            })
            .collect();
        source.files.remove("db/0.ncd");
        let changed = source.files.get_mut("db/1.ncd").unwrap();
        changed.hash = [7; 32];
        let changed = changed.clone();
        source.files.insert("db/new".into(), changed);
        source.dirs.insert("other".into());
        let laid = load_cached_manifest(&path, digest, &source).expect("read over the source");
        assert_eq!(plan::digest(&laid), digest);
        assert_eq!(laid.dirs, tree.dirs);
        assert_eq!(
            laid.files.keys().collect::<Vec<_>>(),
            tree.files.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            laid.files["db/1.ncd"], tree.files["db/1.ncd"],
            "the kept record"
        );
        assert_eq!(
            laid.files["db/2.ncd"].stamp.file_id, 42,
            "the source's record"
        );

        // Damaged entries (a byte flipped, the file cut short) are not taken for the tree.
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(load_cached_manifest(&path, digest, &none), None);
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert_eq!(load_cached_manifest(&path, digest, &none), None);
        // A length past the limit is refused before anything is allocated for it.
        let mut huge = bytes[..32].to_vec();
        huge.extend(u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert_eq!(load_cached_manifest(&path, digest, &none), None);
    }
}
