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
/// What the target holds of the entries that differ, each list in ascending order of path (a
/// list, not a map).
#[derive(Debug, Default)]
pub struct Side<'a> {
    pub files: Vec<(&'a str, &'a FileRecord)>,
    pub dirs: Vec<&'a str>,
}

/// The entries of a source and a target tree that are not alike: a file on one side only or
/// with another record on the other, a folder on one side only.
///
/// The source's side of the files is not listed but walked ([`Delta::source_files`]): at a
/// first mirror it is every file (7 MB of list at 300,000 files).
#[derive(Debug)]
pub struct Delta<'a> {
    trees: (&'a Tree, &'a Tree),
    /// The source's folders that the target lacks, in order.
    pub source_dirs: Vec<&'a str>,
    pub target: Side<'a>,
}

impl<'a> Delta<'a> {
    /// The delta of `source` and `target`. Their maps are persistent: what the two share (a
    /// snapshot and the one a target verified before it) is skipped without being visited, so
    /// the cost is that of what differs, not of the folder.
    pub fn between(source: &'a Tree, target: &'a Tree) -> Delta<'a> {
        use imbl::ordmap::DiffItem;
        use imbl::ordset::DiffItem as DirItem;
        let mut delta = Delta {
            trees: (source, target),
            source_dirs: Vec::new(),
            target: Side::default(),
        };
        for item in target.files.diff(&source.files) {
            match item {
                DiffItem::Remove(path, theirs) => {
                    delta.target.files.push((path.as_str(), theirs));
                }
                DiffItem::Update {
                    old: (path, theirs),
                    new: (_, ours),
                } if !alike(ours, theirs) => {
                    delta.target.files.push((path.as_str(), theirs));
                }
                DiffItem::Add(..) | DiffItem::Update { .. } => {}
            }
        }
        for item in target.dirs.diff(&source.dirs) {
            match item {
                DirItem::Add(dir) => delta.source_dirs.push(dir.as_str()),
                DirItem::Remove(dir) => delta.target.dirs.push(dir.as_str()),
            }
        }
        // The merge gives each list in order already (a sort of a sorted list is one pass);
        // the plan relies on it.
        delta.target.files.sort_by(|a, b| a.0.cmp(b.0));
        delta.target.dirs.sort();
        delta.source_dirs.sort();
        delta
    }

    /// The source's files that are new or differ from the target's, in ascending order of
    /// path, found by walking the merge again.
    pub fn source_files(&self) -> impl Iterator<Item = (&'a str, &'a FileRecord)> + 'a {
        changed_files(self.trees.0, self.trees.1)
    }

    pub fn is_empty(&self) -> bool {
        self.source_files().next().is_none()
            && self.target.files.is_empty()
            && self.source_dirs.is_empty()
            && self.target.dirs.is_empty()
    }
}

/// The files of `source` that `target` lacks or holds with a record not [`alike`], in
/// ascending order of path: what [`Delta::source_files`] walks. The same two trees give the
/// same sequence every time: a plan records a step for each and replays them as it sends.
pub fn changed_files<'a>(
    source: &'a Tree,
    target: &'a Tree,
) -> impl Iterator<Item = (&'a str, &'a FileRecord)> + 'a {
    use imbl::ordmap::DiffItem;
    let mut last: Option<&'a str> = None;
    target
        .files
        .diff(&source.files)
        .filter_map(|item| match item {
            DiffItem::Add(path, ours) => Some((path.as_str(), ours)),
            DiffItem::Update {
                old: (_, theirs),
                new: (path, ours),
            } if !alike(ours, theirs) => Some((path.as_str(), ours)),
            DiffItem::Remove(..) | DiffItem::Update { .. } => None,
        })
        .inspect(move |(path, _)| {
            debug_assert!(
                last.is_none_or(|l| l < *path),
                "a merge of two sorted maps gives its paths in order"
            );
            last = Some(path);
        })
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
        fn sources<'a>(delta: &Delta<'a>) -> Vec<&'a str> {
            delta.source_files().map(|f| f.0).collect()
        }
        assert_eq!(sources(&delta), ["b", "d/new"]);
        assert_eq!(keys(&delta.target), ["b", "gone"]);
        assert_eq!(delta.source_dirs.to_vec(), ["d"]);
        assert_eq!(delta.target.dirs.to_vec(), ["old"]);
        assert!(Delta::between(&source, &source.clone()).is_empty());
        let empty = Tree::default();
        let first = Delta::between(&source, &empty);
        assert_eq!(
            first.source_files().count(),
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
        assert_eq!(
            delta.source_files().map(|f| f.0).collect::<Vec<_>>(),
            ["b", "c", "d"]
        );
        assert_eq!(keys(&delta.target), ["b", "c", "d"]);
    }
}
