//! A scan of part of a folder: the paths a change feed named, and everything below them.
//!
//! Continuous mode scans the whole source when it starts, at each safety rescan and whenever
//! the feed lost track ([`crate::watch`]); in between, each change is a scan of the paths the
//! feed named, merged into the last whole tree. A large history is then not walked again for
//! every append: the cost of a change is the cost of its paths (and of listing the folders on
//! the way to them), not of the folder.
//!
//! A named path is looked at with everything below it, so a folder that was created, renamed
//! in or deleted is listed whole, whatever the feed said about its contents. A path whose
//! folder is gone widens to the highest folder that is gone; a database's companion file
//! (`-wal`, `-journal`) widens to the database, which is read through a consistent copy.

use super::{Growth, Scan, ScanError, Tree, walk};
use crate::exclude::Exclude;
use crate::index::FileRecord;
use crate::snapshot::{self, Snapshots};
use imbl::{OrdMap, OrdSet};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;

/// Paths below a root (`/`-separated, relative), each standing for itself and all below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Region {
    paths: BTreeSet<String>,
}

impl Region {
    /// The region of `paths`; a path below another is part of it already.
    pub fn new(paths: impl IntoIterator<Item = String>) -> Region {
        let mut region = Region::default();
        let all: BTreeSet<String> = paths.into_iter().filter(|p| !p.is_empty()).collect();
        for path in all {
            // Sorted: a path's ancestors come before it.
            if !region.covers(&path) {
                region.paths.insert(path);
            }
        }
        region
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The paths, each standing for what is below it too.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(String::as_str)
    }

    /// Whether `rel` is one of the paths or below one.
    pub fn covers(&self, rel: &str) -> bool {
        self.paths.contains(rel)
            || rel
                .match_indices('/')
                .any(|(i, _)| self.paths.contains(&rel[..i]))
    }

    /// Whether `rel` is a folder above one of the paths, which a walk must pass through.
    pub fn leads_to(&self, rel: &str) -> bool {
        let prefix = format!("{rel}/");
        self.paths
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    }

    /// The records of `files` this region covers.
    fn records_in(&self, files: &OrdMap<String, FileRecord>) -> BTreeMap<String, FileRecord> {
        let mut out = BTreeMap::new();
        for path in &self.paths {
            for (file, record) in below(files, path) {
                out.insert(file.clone(), record.clone());
            }
        }
        out
    }
}

/// The entries of `map` at or below `path`: the path itself, then the run of keys that start
/// with `path/` (contiguous when sorted; a sibling such as `path-old` or `path 2` sorts between
/// the two, so the run starts at `path/`, not at `path`).
pub(crate) fn below<'a, V: Clone>(
    map: &'a OrdMap<String, V>,
    path: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let prefix = format!("{path}/");
    map.get_key_value(path).into_iter().chain(
        map.range::<_, String>((Bound::Included(prefix.clone()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix)),
    )
}

/// The folders of `dirs` at or below `path` (as [`below`]).
pub(crate) fn dirs_below<'a>(
    dirs: &'a OrdSet<String>,
    path: &'a str,
) -> impl Iterator<Item = &'a String> {
    let prefix = format!("{path}/");
    dirs.get(path).into_iter().chain(
        dirs.range::<_, String>((Bound::Included(prefix.clone()), Bound::Unbounded))
            .take_while(move |k| k.starts_with(&prefix)),
    )
}

/// Scans the part of `root` that `region` names against `tree`, the whole tree of the last
/// scan (whose records are the index's), and returns that tree with that part replaced.
/// The scan's `changed` and `removed` are relative to `tree`, so applying it to the index
/// ([`Scan::apply_to`]) brings the index in line as a whole scan would. Returns the region
/// as scanned: widened (see the module's doc).
pub fn scan_region(
    root: &Path,
    tree: Tree,
    region: &Region,
    exclude: &Exclude,
    growth: Growth,
    databases: Option<&Snapshots>,
) -> Result<(Scan, Region), ScanError> {
    let region = widen(root, region, databases.is_some());
    let previous = region.records_in(&tree.files);
    let mut scanned = walk(
        root,
        previous.into(),
        exclude,
        growth,
        databases,
        Some(&region),
    )?;
    let mut whole = tree;
    for path in region.paths() {
        let files: Vec<String> = below(&whole.files, path).map(|(k, _)| k.clone()).collect();
        for file in files {
            whole.files.remove(&file);
        }
        let dirs: Vec<String> = dirs_below(&whole.dirs, path).cloned().collect();
        for dir in dirs {
            whole.dirs.remove(&dir);
        }
    }
    // One insert each: `append` would rebuild the whole tree.
    whole.dirs.extend(std::mem::take(&mut scanned.tree.dirs));
    whole.files.extend(std::mem::take(&mut scanned.tree.files));
    scanned.tree = whole;
    Ok((scanned, region))
}

/// The region a scan must look at for `region` to be seen whole: a path whose folder is gone
/// (or is no longer a folder) becomes the highest such folder, and on a source a database's
/// companion file becomes the database (and its companions).
fn widen(root: &Path, region: &Region, source: bool) -> Region {
    let mut paths = Vec::new();
    for path in region.paths() {
        let mut path = path;
        if source && let Some(database) = snapshot::companion_of(path) {
            path = database;
        }
        let gone = path
            .match_indices('/')
            .map(|(i, _)| &path[..i])
            .find(|folder| {
                !std::fs::symlink_metadata(root.join(folder)).is_ok_and(|m| m.file_type().is_dir())
            });
        paths.push(gone.unwrap_or(path).to_string());
    }
    if source {
        // A database's companions are never listed, whichever of them changed.
        let databases: Vec<String> = paths.clone();
        for database in databases {
            for suffix in snapshot::COMPANIONS {
                paths.push(format!("{database}{suffix}"));
            }
        }
    }
    Region::new(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan;

    fn region(paths: &[&str]) -> Region {
        Region::new(paths.iter().map(|p| p.to_string()))
    }

    #[test]
    fn a_region_covers_its_paths_and_below_and_leads_to_their_folders() {
        let r = region(&["a/b", "a/b/c", "x", "ab"]);
        assert_eq!(r.paths().collect::<Vec<_>>(), ["a/b", "ab", "x"]);
        for covered in ["a/b", "a/b/c", "a/b/c/d", "x", "x/y", "ab"] {
            assert!(r.covers(covered), "{covered}");
        }
        for not in ["a", "a/bc", "a/c", "xy", "b"] {
            assert!(!r.covers(not), "{not}");
        }
        assert!(r.leads_to("a"));
        for not in ["a/b", "ab", "x", "a/c", "b", "a/b/c"] {
            assert!(!r.leads_to(not), "{not}");
        }
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A region scan merged into the last tree equals a whole scan, whatever changed in it.
    #[test]
    fn a_region_scan_gives_the_tree_a_whole_scan_gives() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "db/tick/ES/01.ncd",
            "db/tick/ES/02.ncd",
            "db/tick/NQ/01.ncd",
            "db/tick/NQ/deep/x.ncd",
            "gone/a/1",
            "gone/a/2",
            "workspaces/Default.xml",
            "keep.txt",
        ] {
            write(root, rel, rel.as_bytes());
        }
        let before = scan(root, BTreeMap::new()).unwrap().tree;
        // An append, a new file in a new folder, a folder deleted under a named file, a
        // folder renamed, a file replaced by a folder.
        write(root, "db/tick/ES/02.ncd", b"grown by a few bytes");
        write(root, "db/tick/CL/new/01.ncd", b"new");
        std::fs::remove_dir_all(root.join("gone")).unwrap();
        std::fs::rename(root.join("db/tick/NQ"), root.join("db/tick/NQ2")).unwrap();
        std::fs::remove_file(root.join("keep.txt")).unwrap();
        write(root, "keep.txt/inside", b"now a folder");
        let changed = region(&[
            "db/tick/ES/02.ncd",
            "db/tick/CL",
            "gone/a/1",
            "db/tick/NQ",
            "db/tick/NQ2",
            "keep.txt",
        ]);
        let partial = scan_region(
            root,
            before.clone(),
            &changed,
            &Exclude::none(),
            Growth::Prove,
            None,
        )
        .unwrap()
        .0;
        let whole = scan(root, before.records()).unwrap();
        assert_eq!(partial.tree, whole.tree);
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(partial.changed.iter().collect()),
            sorted(whole.changed.iter().collect())
        );
        assert_eq!(sorted(partial.removed), sorted(whole.removed));
        assert!(partial.tree.files.contains_key("workspaces/Default.xml"));
        assert!(
            !partial.tree.dirs.contains("gone"),
            "the gone folder widened the region"
        );
    }

    /// `ES 12-26` and `ES-old` sort between `ES` and `ES/...`: a region of `ES` must still
    /// take in everything below `ES`, and leave the siblings alone.
    #[test]
    fn a_region_reaches_past_siblings_that_sort_between_a_folder_and_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "ES/01.ncd",
            "ES/02.ncd",
            "ES 12-26/01.ncd",
            "ES-old/01.ncd",
            "ES.txt",
        ] {
            write(root, rel, rel.as_bytes());
        }
        let before = scan(root, BTreeMap::new()).unwrap().tree;
        std::fs::remove_file(root.join("ES/02.ncd")).unwrap();
        write(root, "ES/01.ncd", b"changed");
        let (partial, _) = scan_region(
            root,
            before.clone(),
            &region(&["ES"]),
            &Exclude::none(),
            Growth::Prove,
            None,
        )
        .unwrap();
        let whole = scan(root, before.records()).unwrap();
        assert_eq!(partial.tree, whole.tree);
        assert_eq!(partial.removed, ["ES/02.ncd"]);
    }

    #[test]
    fn an_empty_region_keeps_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/b", b"x");
        let before = scan(dir.path(), BTreeMap::new()).unwrap().tree;
        write(dir.path(), "a/c", b"unnamed: not seen until a whole scan");
        let partial = scan_region(
            dir.path(),
            before.clone(),
            &Region::default(),
            &Exclude::none(),
            Growth::Prove,
            None,
        )
        .unwrap()
        .0;
        assert_eq!(partial.tree, before);
        assert!(partial.changed.is_empty() && partial.removed.is_empty());
    }
}
