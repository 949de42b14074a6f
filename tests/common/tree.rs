//! A folder tree as the mirror must reproduce it (folders; files with length, content hash,
//! modification time and executable bit; links), and the differences between two trees. Used
//! by the end-to-end tests (tests/common) and the engine's property test (by path), so both
//! compare folders the same way.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One entry of a folder tree, as the mirror must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A folder (folder times are not part of the mirror).
    Dir,
    File {
        len: u64,
        /// BLAKE3 of the content, in hex.
        hash: String,
        mtime_ns: i128,
        executable: bool,
    },
    Symlink(PathBuf),
    /// A FIFO, socket or device.
    Special,
}

/// Every entry below `root`, by `/`-separated relative path, without RainMaker's state folder
/// `root/.rainmaker`.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// Walks `dir`. An entry that goes away between the listing and its reading (the tree is
/// changing: a receiver moving a file into its trash) is left out, as if listed a moment later;
/// so is, on Windows, a folder that is being moved at that moment (Wine answered a listing of
/// one with ERROR_SHARING_VIOLATION), and a file being replaced (Windows refuses to open a file
/// whose delete is pending with ERROR_ACCESS_DENIED; a full Wine run hit one). Left out, it can
/// only make two trees differ: a wait for them to match lists again.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
    let gone = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::NotFound || (cfg!(windows) && e.raw_os_error() == Some(32))
    };
    let replaced = |e: &std::io::Error| cfg!(windows) && e.raw_os_error() == Some(5);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if gone(&e) && !prefix.is_empty() => return,
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && name == ".rainmaker" {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => meta,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("cannot read {}: {e}", entry.path().display()),
        };
        let kind = meta.file_type();
        let node = if kind.is_dir() {
            walk(&entry.path(), &format!("{rel}/"), out);
            Node::Dir
        } else if kind.is_symlink() {
            match std::fs::read_link(entry.path()) {
                Ok(to) => Node::Symlink(to),
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("cannot read {}: {e}", entry.path().display()),
            }
        } else if kind.is_file() {
            let bytes = match std::fs::read(entry.path()) {
                Ok(bytes) => bytes,
                Err(e) if gone(&e) || replaced(&e) => continue,
                Err(e) => panic!("cannot read {}: {e}", entry.path().display()),
            };
            Node::File {
                len: meta.len(),
                hash: blake3::hash(&bytes).to_hex().to_string(),
                mtime_ns: mtime_ns(&meta),
                executable: is_executable(&meta),
            }
        } else {
            Node::Special
        };
        out.insert(rel, node);
    }
}

/// A file's modification time in nanoseconds since the epoch (100 ns steps on Windows).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    let modified = meta.modified().unwrap();
    match modified.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// Whether a Unix file has an executable bit set; Windows has none.
fn is_executable(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// The differences between two trees, one a line (empty when identical).
pub fn tree_diff(source: &BTreeMap<String, Node>, target: &BTreeMap<String, Node>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, node) in source {
        match target.get(path) {
            None => diffs.push(format!("missing on the target: {path} ({node:?})")),
            Some(theirs) if theirs != node => diffs.push(format!(
                "differs: {path}\n  source {node:?}\n  target {theirs:?}"
            )),
            Some(_) => {}
        }
    }
    for (path, node) in target {
        if !source.contains_key(path) {
            diffs.push(format!("extra on the target: {path} ({node:?})"));
        }
    }
    diffs
}
