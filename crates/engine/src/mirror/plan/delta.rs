//! The entries in which two trees differ, borrowed from them.
//!
//! A plan is made by walking the source's and the target's entries; an entry both hold alike
//! (the same folder, or a file with the same content, size, time and executable bit: what
//! [`super::digest`] covers) never gives an operation. Records that differ only in what the
//! mirror does not carry (the file id of a local stamp, whether a local record is trusted) are
//! alike: a source's scan and a target's listing differ there in every file. The plan
//! therefore walks only the [`Delta`], found by a merge of the two sorted trees that skips the
//! nodes they share, and asks the whole trees what it must know about the rest (whether a path
//! exists, where a block can be found). In continuous mode, where the target's tree is the one
//! it verified a moment ago and shares all but the changed paths with the new one, a change of
//! a few files is planned in the time of those few files.

use crate::index::FileRecord;
use crate::scan::Tree;
/// What one side holds of the entries that differ, each list in ascending order of path (a
/// list, not a map: at a first mirror it holds every file).
#[derive(Debug, Default)]
pub struct Side<'a> {
    pub files: Vec<(&'a str, &'a FileRecord)>,
    pub dirs: Vec<&'a str>,
}

/// The entries of a source and a target tree that are not alike: a file on one side only or
/// with another record on the other, a folder on one side only.
#[derive(Debug, Default)]
pub struct Delta<'a> {
    pub source: Side<'a>,
    pub target: Side<'a>,
}

impl<'a> Delta<'a> {
    /// The delta of `source` and `target`. Their maps are persistent: what the two share (a
    /// snapshot and the one a target verified before it) is skipped without being visited, so
    /// the cost is that of what differs, not of the folder.
    pub fn between(source: &'a Tree, target: &'a Tree) -> Delta<'a> {
        use imbl::ordmap::DiffItem;
        use imbl::ordset::DiffItem as DirItem;
        let mut delta = Delta::default();
        for item in target.files.diff(&source.files) {
            match item {
                DiffItem::Add(path, ours) => {
                    delta.source.files.push((path.as_str(), ours));
                }
                DiffItem::Remove(path, theirs) => {
                    delta.target.files.push((path.as_str(), theirs));
                }
                DiffItem::Update {
                    old: (path, theirs),
                    new: (_, ours),
                } if !alike(ours, theirs) => {
                    delta.source.files.push((path.as_str(), ours));
                    delta.target.files.push((path.as_str(), theirs));
                }
                DiffItem::Update { .. } => {}
            }
        }
        for item in target.dirs.diff(&source.dirs) {
            match item {
                DirItem::Add(dir) => delta.source.dirs.push(dir.as_str()),
                DirItem::Remove(dir) => delta.target.dirs.push(dir.as_str()),
            }
        }
        // The merge gives each list in order already (a sort of a sorted list is one pass);
        // the plan relies on it.
        for side in [&mut delta.source, &mut delta.target] {
            side.files.sort_by(|a, b| a.0.cmp(b.0));
            side.dirs.sort();
        }
        delta
    }

    pub fn is_empty(&self) -> bool {
        self.source.files.is_empty()
            && self.target.files.is_empty()
            && self.source.dirs.is_empty()
            && self.target.dirs.is_empty()
    }
}

/// Whether two records of a file are the same for the mirror: a plan made with either is the
/// same.
pub fn alike(ours: &FileRecord, theirs: &FileRecord) -> bool {
    ours.hash == theirs.hash
        && ours.stamp.size == theirs.stamp.size
        && ours.stamp.executable == theirs.stamp.executable
        && super::coarse_mtime(ours.stamp.mtime_ns) == super::coarse_mtime(theirs.stamp.mtime_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Stamp;

    fn record(size: u64, seed: u8) -> FileRecord {
        FileRecord {
            stamp: Stamp {
                size,
                mtime_ns: 1_700_000_000_000_000_000,
                file_id: 0,
                executable: false,
            },
            hash: [seed; 32],
            blocks: smallvec::smallvec![[seed; 32]],
            racy: false,
        }
    }

    fn tree(files: &[(&str, u64, u8)], dirs: &[&str]) -> Tree {
        Tree {
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            files: files
                .iter()
                .map(|(p, size, seed)| (p.to_string(), record(*size, *seed)))
                .collect(),
        }
    }

    #[test]
    fn the_delta_holds_what_differs_and_nothing_both_hold_alike() {
        let source = tree(
            &[("a", 1, 1), ("b", 2, 2), ("d/new", 3, 3), ("same", 4, 4)],
            &["d", "kept"],
        );
        let target = tree(
            &[("a", 1, 1), ("b", 2, 9), ("gone", 5, 5), ("same", 4, 4)],
            &["kept", "old"],
        );
        let delta = Delta::between(&source, &target);
        fn keys<'a>(side: &Side<'a>) -> Vec<&'a str> {
            side.files.iter().map(|f| f.0).collect()
        }
        assert_eq!(keys(&delta.source), ["b", "d/new"]);
        assert_eq!(keys(&delta.target), ["b", "gone"]);
        assert_eq!(delta.source.dirs.to_vec(), ["d"]);
        assert_eq!(delta.target.dirs.to_vec(), ["old"]);
        assert!(Delta::between(&source, &source.clone()).is_empty());
        let empty = Tree::default();
        let first = Delta::between(&source, &empty);
        assert_eq!(
            first.source.files.len(),
            4,
            "a first mirror differs in everything"
        );
    }

    #[test]
    fn records_that_differ_only_in_what_the_mirror_does_not_carry_are_alike() {
        let source = tree(&[("a", 1, 1), ("b", 1, 1), ("c", 1, 1), ("d", 1, 1)], &[]);
        let mut target = source.clone();
        // A target's listing: another file id, trusted or not.
        for path in ["a", "b", "c", "d"] {
            let record = target.files.get_mut(path).unwrap();
            record.stamp.file_id = 7;
            record.racy = true;
        }
        // Below 100 ns, a time is the same on every file system.
        target.files.get_mut("a").unwrap().stamp.mtime_ns += 99;
        target.files.get_mut("b").unwrap().stamp.mtime_ns += 100;
        target.files.get_mut("c").unwrap().stamp.executable = true;
        target.files.get_mut("d").unwrap().hash = [9; 32];
        let delta = Delta::between(&source, &target);
        fn keys<'a>(side: &Side<'a>) -> Vec<&'a str> {
            side.files.iter().map(|f| f.0).collect()
        }
        assert_eq!(keys(&delta.source), ["b", "c", "d"]);
        assert_eq!(keys(&delta.target), ["b", "c", "d"]);
    }
}
