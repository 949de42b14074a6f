//! A tree built as another tree with changes: an entry the other holds alike is not added but
//! kept from it, so the two share every node where they agree.
//!
//! A source reads the manifest it kept of a target back over its own scan: when little changed
//! since the last session, the target's tree costs only what differs (a whole second tree of
//! 300,000 files is about 64 MB), and the plan's merge of the two skips what they share.

use super::{Sink, Tree};
use crate::index::FileRecord;
use std::iter::Peekable;

/// Entries added in ascending order of path (folders among themselves, files among
/// themselves, as a listing holds them), laid over `base`.
pub struct Overlay<'a> {
    tree: Tree,
    dirs: Peekable<imbl::ordset::Iter<'a, String, imbl::shared_ptr::DefaultSharedPtr>>,
    files: Peekable<imbl::ordmap::Iter<'a, String, FileRecord, imbl::shared_ptr::DefaultSharedPtr>>,
    /// Whether the base's record stands for the one added (the same for what the tree is used
    /// for).
    alike: fn(&FileRecord, &FileRecord) -> bool,
    last_dir: Option<String>,
    last_file: Option<String>,
    /// An entry came out of order: the result would not be the listing.
    disordered: bool,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a Tree, alike: fn(&FileRecord, &FileRecord) -> bool) -> Overlay<'a> {
        Overlay {
            tree: base.clone(),
            dirs: base.dirs.iter().peekable(),
            files: base.files.iter().peekable(),
            alike,
            last_dir: None,
            last_file: None,
            disordered: false,
        }
    }

    /// The tree of what was added, or `None` if the entries were not in ascending order.
    pub fn finish(mut self) -> Option<Tree> {
        if self.disordered {
            return None;
        }
        for dir in self.dirs {
            self.tree.dirs.remove(dir);
        }
        for (path, _) in self.files {
            self.tree.files.remove(path);
        }
        Some(self.tree)
    }

    /// Whether `path` comes after the last one of its kind; remembers it.
    fn in_order(last: &mut Option<String>, path: &str) -> bool {
        match last {
            Some(last) if last.as_str() >= path => false,
            Some(last) => {
                last.clear();
                last.push_str(path);
                true
            }
            None => {
                *last = Some(path.to_string());
                true
            }
        }
    }
}

impl Sink for Overlay<'_> {
    fn dir(&mut self, path: String) {
        if self.disordered || !Self::in_order(&mut self.last_dir, &path) {
            self.disordered = true;
            return;
        }
        while let Some(base) = self.dirs.next_if(|d| d.as_str() < path.as_str()) {
            self.tree.dirs.remove(base);
        }
        if self.dirs.next_if(|d| **d == path).is_none() {
            self.tree.dirs.insert(path);
        }
    }

    fn file(&mut self, path: String, record: FileRecord) {
        if self.disordered || !Self::in_order(&mut self.last_file, &path) {
            self.disordered = true;
            return;
        }
        while let Some((base, _)) = self.files.next_if(|(p, _)| p.as_str() < path.as_str()) {
            self.tree.files.remove(base);
        }
        let alike = self.alike;
        let kept = self
            .files
            .next_if(|(p, _)| **p == path)
            .is_some_and(|(_, theirs)| alike(theirs, &record));
        if !kept {
            self.tree.files.insert(path, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Stamp;

    fn record(seed: u8) -> FileRecord {
        FileRecord {
            stamp: Stamp {
                size: seed as u64,
                mtime_ns: 1_700_000_000_000_000_000,
                file_id: seed as u128,
                executable: false,
            },
            hash: [seed; 32],
            blocks: smallvec::smallvec![[seed; 32]],
            racy: false,
        }
    }

    fn same_content(a: &FileRecord, b: &FileRecord) -> bool {
        a.hash == b.hash
    }

    fn tree(files: &[(&str, u8)], dirs: &[&str]) -> Tree {
        Tree {
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            files: files
                .iter()
                .map(|(p, seed)| (p.to_string(), record(*seed)))
                .collect(),
        }
    }

    fn lay(base: &Tree, listing: &Tree) -> Option<Tree> {
        let mut over = Overlay::new(base, same_content);
        for dir in &listing.dirs {
            over.dir(dir.clone());
        }
        for (path, record) in &listing.files {
            over.file(path.clone(), record.clone());
        }
        over.finish()
    }

    #[test]
    fn the_result_is_the_listing_whatever_the_base() {
        let listing = tree(&[("a", 1), ("b/c", 2), ("d", 3), ("e", 4)], &["b", "x"]);
        for base in [
            Tree::default(),
            listing.clone(),
            tree(
                &[("0", 9), ("a", 1), ("b/c", 7), ("z", 5)],
                &["a", "b", "y"],
            ),
            tree(&[("zz", 1)], &["zz"]),
        ] {
            let laid = lay(&base, &listing).expect("in order");
            assert_eq!(laid.dirs, listing.dirs);
            let paths: Vec<_> = laid.files.keys().cloned().collect();
            assert_eq!(paths, ["a", "b/c", "d", "e"]);
            for (path, record) in &listing.files {
                assert_eq!(laid.files[path].hash, record.hash, "{path}");
            }
        }
    }

    #[test]
    fn an_alike_record_is_the_base_s_own_and_a_different_one_the_listing_s() {
        let mut base = tree(&[("a", 1), ("b", 2)], &[]);
        base.files.get_mut("a").unwrap().stamp.file_id = 77;
        let listing = tree(&[("a", 1), ("b", 3)], &[]);
        let laid = lay(&base, &listing).unwrap();
        assert_eq!(laid.files["a"].stamp.file_id, 77, "kept from the base");
        assert_eq!(laid.files["b"], record(3), "taken from the listing");
    }

    #[test]
    fn entries_out_of_order_give_no_tree() {
        let base = tree(&[("a", 1), ("b", 2)], &[]);
        let mut over = Overlay::new(&base, same_content);
        over.file("b".into(), record(2));
        over.file("a".into(), record(1));
        assert!(over.finish().is_none());
        let mut over = Overlay::new(&base, same_content);
        over.dir("b".into());
        over.dir("b".into());
        assert!(over.finish().is_none(), "a folder twice");
    }
}
