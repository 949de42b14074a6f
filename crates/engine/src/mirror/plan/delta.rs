//! The entries in which two trees differ, borrowed from them.
//!
//! A plan is made by walking the source's and the target's entries; an entry both hold alike
//! (the same folder, or a file with the same record) never gives an operation. The plan
//! therefore walks only the [`Delta`], found in one merge of the two sorted trees, and asks
//! the whole trees what it must know about the rest (whether a path exists, where a block can
//! be found). In continuous mode, where the target's tree is the one it verified a moment ago,
//! a change of a few files is then planned in the time of that merge, not of the whole plan.

use crate::index::FileRecord;
use crate::scan::Tree;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// What one side holds of the entries that differ.
#[derive(Debug, Default)]
pub struct Side<'a> {
    pub files: BTreeMap<&'a str, &'a FileRecord>,
    pub dirs: BTreeSet<&'a str>,
}

/// The entries of a source and a target tree that are not alike: a file on one side only or
/// with another record on the other, a folder on one side only.
#[derive(Debug, Default)]
pub struct Delta<'a> {
    pub source: Side<'a>,
    pub target: Side<'a>,
}

impl<'a> Delta<'a> {
    /// The delta of `source` and `target`, in one merge of their sorted entries.
    pub fn between(source: &'a Tree, target: &'a Tree) -> Delta<'a> {
        let mut delta = Delta::default();
        for step in merge(source.files.iter(), target.files.iter(), |a, b| {
            a.0.cmp(b.0)
        }) {
            match step {
                Step::Left((path, ours)) => {
                    delta.source.files.insert(path.as_str(), ours);
                }
                Step::Right((path, theirs)) => {
                    delta.target.files.insert(path.as_str(), theirs);
                }
                Step::Both((path, ours), (_, theirs)) => {
                    if ours != theirs {
                        delta.source.files.insert(path.as_str(), ours);
                        delta.target.files.insert(path.as_str(), theirs);
                    }
                }
            }
        }
        for step in merge(source.dirs.iter(), target.dirs.iter(), |a, b| a.cmp(b)) {
            match step {
                Step::Left(dir) => {
                    delta.source.dirs.insert(dir.as_str());
                }
                Step::Right(dir) => {
                    delta.target.dirs.insert(dir.as_str());
                }
                Step::Both(..) => {}
            }
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

/// One step of a merge of two sorted sequences.
enum Step<T> {
    Left(T),
    Right(T),
    Both(T, T),
}

/// The steps of a merge of two sequences sorted by `order`.
fn merge<T>(
    left: impl Iterator<Item = T>,
    right: impl Iterator<Item = T>,
    order: impl Fn(&T, &T) -> Ordering,
) -> impl Iterator<Item = Step<T>> {
    let (mut left, mut right) = (left.peekable(), right.peekable());
    std::iter::from_fn(move || match (left.peek(), right.peek()) {
        (Some(a), Some(b)) => Some(match order(a, b) {
            Ordering::Less => Step::Left(left.next()?),
            Ordering::Greater => Step::Right(right.next()?),
            Ordering::Equal => Step::Both(left.next()?, right.next()?),
        }),
        (Some(_), None) => left.next().map(Step::Left),
        (None, Some(_)) => right.next().map(Step::Right),
        (None, None) => None,
    })
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
            blocks: vec![[seed; 32]],
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
            side.files.keys().copied().collect()
        }
        assert_eq!(keys(&delta.source), ["b", "d/new"]);
        assert_eq!(keys(&delta.target), ["b", "gone"]);
        assert_eq!(delta.source.dirs.iter().copied().collect::<Vec<_>>(), ["d"]);
        assert_eq!(
            delta.target.dirs.iter().copied().collect::<Vec<_>>(),
            ["old"]
        );
        assert!(Delta::between(&source, &source.clone()).is_empty());
        let empty = Tree::default();
        let first = Delta::between(&source, &empty);
        assert_eq!(
            first.source.files.len(),
            4,
            "a first mirror differs in everything"
        );
    }
}
