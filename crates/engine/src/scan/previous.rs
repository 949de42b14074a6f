//! The records a scan checks its files against: held in a map (a region's, a test's), or read
//! from the index in the order of their paths as the walk reaches them.
//!
//! A whole scan walks each folder's entries in the order their paths have as strings (a
//! folder's name counts as followed by `/`), which is the index's order: each record is read
//! once, when its file is reached, and a folder of 300,000 files is checked without its
//! records held in a map beside the tree the scan builds (90 MB at that size). Whatever the
//! order, the result is the same: a record the walk has passed is not used, and its file, if
//! the walk meets it later, is hashed again.

use super::{Sink, Tree, TreeBuilder};
use crate::index::{FileCursor, FileRecord};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;

/// The records of the files a scan may find unchanged.
#[derive(Debug)]
pub struct Previous {
    source: Source,
    /// Files whose records failed a proof: their blocks are not taken on trust.
    distrust: BTreeSet<String>,
}

#[derive(Debug)]
enum Source {
    Map(BTreeMap<String, FileRecord>),
    /// The index's records, and the paths of those passed without being taken.
    Sorted {
        cursor: Cursor,
        passed: Vec<String>,
    },
}

/// The index's records in path order; `None` once one could not be read.
type Cursor = Option<Box<Peekable<FileCursor>>>;

impl From<BTreeMap<String, FileRecord>> for Previous {
    fn from(map: BTreeMap<String, FileRecord>) -> Previous {
        Previous {
            source: Source::Map(map),
            distrust: BTreeSet::new(),
        }
    }
}

impl Previous {
    /// The index's records, read as the walk reaches them. Those of `distrust` failed a proof:
    /// their files are hashed in full (the stamp, and so an executable bit the file system
    /// cannot show, is kept).
    pub fn index(cursor: FileCursor, distrust: &[String]) -> Previous {
        Previous {
            source: Source::Sorted {
                cursor: Some(Box::new(cursor.peekable())),
                passed: Vec::new(),
            },
            distrust: distrust.iter().cloned().collect(),
        }
    }

    /// Takes the record of the file `rel`, if there is one.
    pub(super) fn take(&mut self, rel: &str) -> Option<FileRecord> {
        let record = match &mut self.source {
            Source::Map(map) => map.remove(rel),
            Source::Sorted { cursor, passed } => {
                pass_before(cursor, passed, rel);
                take_if(cursor, |key| key == rel).map(|(_, record)| record)
            }
        };
        record.map(|mut record| {
            if self.distrust.contains(rel) {
                record.blocks.clear();
                record.racy = true;
            }
            record
        })
    }

    /// Puts into `tree` every record at or below `path` (a folder or file that could not be
    /// read: what cannot be read is not gone), with the folders on their way.
    pub(super) fn keep_below(&mut self, path: &str, tree: &mut TreeBuilder) {
        let prefix = format!("{path}/");
        let mut keep = |file: String, record: FileRecord| {
            let mut dir = file.as_str();
            while let Some(i) = dir.rfind('/') {
                dir = &dir[..i];
                tree.dir(dir.to_string());
            }
            tree.file(file, record);
        };
        match &mut self.source {
            Source::Map(map) => {
                for (file, record) in map.iter() {
                    if file == path || file.starts_with(&prefix) {
                        keep(file.clone(), record.clone());
                    }
                }
            }
            Source::Sorted { cursor, passed } => {
                pass_before(cursor, passed, path);
                if let Some((file, record)) = take_if(cursor, |key| key == path) {
                    keep(file, record);
                }
                // Siblings that sort between `path` and `path/` (`path.old`) come before a
                // folder in the walk, and so are taken or passed by now.
                pass_before(cursor, passed, &prefix);
                while let Some((file, record)) = take_if(cursor, |key| key.starts_with(&prefix)) {
                    keep(file, record);
                }
            }
        }
    }

    /// The paths of the records not taken whose files `tree` does not hold: the files gone.
    pub(super) fn gone(self, tree: &Tree) -> Vec<String> {
        let mut gone: Vec<String> = match self.source {
            Source::Map(map) => map.into_keys().collect(),
            Source::Sorted { mut cursor, passed } => {
                let mut gone = passed;
                while let Some((file, _)) = take_if(&mut cursor, |_| true) {
                    gone.push(file);
                }
                gone
            }
        };
        gone.retain(|path| !tree.files.contains_key(path));
        gone
    }
}

/// Moves the cursor past every record before `path`, noting their paths in `passed`.
fn pass_before(cursor: &mut Cursor, passed: &mut Vec<String>, path: &str) {
    while let Some((file, _)) = take_if(cursor, |key| key.cmp(path) == Ordering::Less) {
        passed.push(file);
    }
}

/// The cursor's next record, taken if its path satisfies `wanted`. A record that cannot be
/// read ends the cursor: the files after it are hashed again, and the scan goes on.
fn take_if(cursor: &mut Cursor, wanted: impl FnOnce(&str) -> bool) -> Option<(String, FileRecord)> {
    let records = cursor.as_mut()?;
    match records.peek()? {
        Ok((key, _)) if wanted(key) => records.next()?.ok(),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("{e}; the files after it are hashed again");
            *cursor = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Stamp;
    use crate::index::{Durability, Index};

    fn record(seed: u8) -> FileRecord {
        FileRecord {
            stamp: Stamp {
                size: 1,
                mtime_ns: 1,
                file_id: 1,
                executable: true,
            },
            hash: [seed; 32],
            blocks: smallvec::smallvec![[seed; 32]],
            racy: false,
        }
    }

    const PATHS: [&str; 7] = [
        "a",
        "data.old",
        "data/a",
        "data/sub/b",
        "data2/c",
        "gone",
        "z",
    ];

    /// The same records, in a map and in an index.
    fn both() -> (tempfile::TempDir, Index, BTreeMap<String, FileRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb")).unwrap();
        let map: BTreeMap<String, FileRecord> = PATHS
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), record(i as u8)))
            .collect();
        let tree = Tree {
            dirs: Default::default(),
            files: map.clone().into_iter().collect(),
        };
        let changed: Vec<String> = map.keys().cloned().collect();
        index
            .apply_files(&changed, &tree.files, &[], Durability::Immediate)
            .unwrap();
        (dir, index, map)
    }

    #[test]
    fn the_index_read_in_order_gives_what_the_map_gives() {
        let (_dir, index, map) = both();
        for distrust in [vec![], vec!["data/a".to_string()]] {
            let mut results = Vec::new();
            for mut previous in [
                Previous::from(map.clone()),
                Previous::index(index.file_cursor().unwrap(), &distrust),
            ] {
                if let Source::Map(_) = previous.source {
                    previous.distrust = distrust.iter().cloned().collect();
                }
                let mut tree = TreeBuilder::default();
                // The walk's order: `data.old` before the folder `data`, a file that is new,
                // an unreadable folder; `gone` is not met.
                let taken: Vec<Option<FileRecord>> = ["a", "data.old", "data/a", "data/new"]
                    .iter()
                    .map(|p| previous.take(p))
                    .collect();
                for (path, record) in ["a", "data.old", "data/a"].iter().zip(&taken) {
                    tree.file(path.to_string(), record.clone().unwrap());
                }
                previous.keep_below("data/sub", &mut tree);
                assert!(previous.take("z").is_some());
                tree.file("z".into(), record(6));
                let tree = tree.finish();
                let gone = previous.gone(&tree);
                results.push((taken, tree, gone));
            }
            assert_eq!(results[0], results[1], "distrusting {distrust:?}");
            let (taken, tree, gone) = &results[0];
            assert_eq!(taken[3], None);
            assert_eq!(taken[2].as_ref().unwrap().racy, !distrust.is_empty());
            assert_eq!(
                tree.files.keys().collect::<Vec<_>>(),
                ["a", "data.old", "data/a", "data/sub/b", "z"]
            );
            assert!(tree.dirs.contains("data/sub") && tree.dirs.contains("data"));
            assert_eq!(gone, &["data2/c", "gone"]);
        }
    }

    #[test]
    fn a_walk_in_another_order_hashes_again_and_loses_no_record() {
        let (_dir, index, _) = both();
        let mut previous = Previous::index(index.file_cursor().unwrap(), &[]);
        // `z` first: every record before it is passed, and not found when its file is met.
        assert!(previous.take("z").is_some());
        assert_eq!(previous.take("a"), None);
        let mut tree = Tree::default();
        tree.files.insert("a".into(), record(9));
        tree.files.insert("z".into(), record(9));
        assert_eq!(
            previous.gone(&tree),
            ["data.old", "data/a", "data/sub/b", "data2/c", "gone"]
        );
    }
}
