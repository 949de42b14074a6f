//! Names a target's file system would merge: `Data.txt` and `data.txt` on Windows (NTFS) and
//! macOS (APFS, HFS+), which ignore case, and the two Unicode spellings of `é` (one code
//! point, or `e` and a combining accent) on macOS, which ignores normalization. A Linux source
//! can hold both names of such a pair; the target must not let the second overwrite the
//! first, so it refuses it and says why.

use std::collections::HashMap;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// How a file system compares names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folding {
    /// `A` and `a` are one name.
    pub case: bool,
    /// The composed and decomposed spellings of a character are one name.
    pub unicode: bool,
}

impl Folding {
    /// Finds out by creating a name in `dir` and looking for its other spellings.
    pub fn probe(dir: &Path) -> Folding {
        let differs = |made: &str, other: &str| {
            let path = dir.join(made);
            if std::fs::write(&path, b"").is_err() {
                return false;
            }
            let merged = dir.join(other).exists();
            let _ = std::fs::remove_file(&path);
            merged
        };
        Folding {
            case: differs("Fold-Probe.tmp", "fold-probe.tmp"),
            unicode: differs("fold-\u{e9}.tmp", "fold-e\u{301}.tmp"),
        }
    }

    pub fn any(self) -> bool {
        self.case || self.unicode
    }

    /// The name as this file system sees it.
    pub fn key(self, path: &str) -> String {
        let composed: String = if self.unicode {
            path.nfc().collect()
        } else {
            path.to_owned()
        };
        if self.case {
            composed.to_lowercase()
        } else {
            composed
        }
    }

    /// What the file system ignores, in words.
    pub fn describe(self) -> &'static str {
        match (self.case, self.unicode) {
            (true, true) => "ignores case and Unicode normalization",
            (true, false) => "ignores case",
            _ => "ignores Unicode normalization",
        }
    }
}

/// The names a folder holds, by the key its file system compares them by.
///
/// Every name is held as two hashes, of its key and of itself: 300,000 paths of 44 bytes take
/// 8.9 MB from the allocator, where the two strings of each took 52.6 MB (a Windows target's
/// whole folder, during every session; `examples/names_memory.rs`). A name's twin, whose
/// key is the same and the name not, is found from its hashes, then named from where it is:
/// the names of this session not yet in the receiver's tree are kept whole ([`Names::settle`]
/// keeps them few); for the others the tree is searched ([`Names::clash`]'s `search`), which
/// happens only when the hashes say a twin is there.
#[derive(Debug, Default)]
pub struct Names {
    folding: Folding,
    /// The hash of each name held, by the hash of its key.
    held: HashMap<u64, u64>,
    /// The names added since the last [`Names::settle`], by the hash of their keys.
    recent: HashMap<u64, String>,
}

/// A name's hash, for [`Names`]: the same for the same string within a process.
fn hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

impl Names {
    pub fn new(folding: Folding) -> Names {
        Names {
            folding,
            ..Names::default()
        }
    }

    pub fn folding(&self) -> Folding {
        self.folding
    }

    /// Starts over with these names (the receiver's tree: none of them recent).
    pub fn reset<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        self.held.clear();
        self.recent.clear();
        if self.folding.any() {
            for name in names {
                self.held.insert(hash(&self.folding.key(name)), hash(name));
            }
        }
    }

    pub fn insert(&mut self, name: &str) {
        if self.folding.any() {
            let key = hash(&self.folding.key(name));
            self.held.insert(key, hash(name));
            self.recent.insert(key, name.to_owned());
        }
    }

    pub fn remove(&mut self, name: &str) {
        if self.folding.any() {
            let key = hash(&self.folding.key(name));
            if self.held.get(&key) == Some(&hash(name)) {
                self.held.remove(&key);
            }
            if self.recent.get(&key).is_some_and(|held| held == name) {
                self.recent.remove(&key);
            }
        }
    }

    /// The receiver's tree took in a batch: the recent names it holds (`in_tree`) are found by
    /// the search from now on; the others (files still arriving, a file whose batch did not
    /// list it) stay recent.
    pub fn settle(&mut self, in_tree: impl Fn(&str) -> bool) {
        self.recent.retain(|_, name| !in_tree(name));
    }

    /// Why `name` cannot be written here: another name the file system would take for it.
    /// `search` finds, among the names held that are not recent, one whose key is `key` and
    /// that is not `name` (called only when the hashes say there is one).
    pub fn clash(&self, name: &str, search: impl FnOnce(&str) -> Option<String>) -> Option<String> {
        if !self.folding.any() {
            return None;
        }
        let key = self.folding.key(name);
        let key_hash = hash(&key);
        if self
            .held
            .get(&key_hash)
            .is_none_or(|held| *held == hash(name))
        {
            return None;
        }
        let held = match self.recent.get(&key_hash) {
            Some(recent) if recent != name && self.folding.key(recent) == key => {
                Some(recent.clone())
            }
            // Not found: two keys that share a hash, and no twin.
            _ => search(&key),
        }?;
        Some(format!(
            "{held} is already on this server, and its file system {} so the two would be one \
             file; rename one of them on the source to mirror both",
            self.folding.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A search of `held` for a name whose key is the one given, as the receiver's tree is
    /// searched.
    fn among<'a>(
        folding: Folding,
        held: &'a [&'a str],
        name: &'a str,
    ) -> impl FnOnce(&str) -> Option<String> + 'a {
        move |key| {
            held.iter()
                .find(|h| **h != name && folding.key(h) == key)
                .map(|h| h.to_string())
        }
    }

    #[test]
    fn names_that_differ_only_in_case_or_normalization_clash_where_folded() {
        let folding = Folding {
            case: true,
            unicode: true,
        };
        let tree = ["Data.txt", "caf\u{e9}.xml"];
        let mut names = Names::new(folding);
        names.reset(&tree.map(String::from));
        let clash = |names: &Names, name| names.clash(name, among(folding, &tree, name));
        let why = clash(&names, "data.txt").expect("a case-only twin clashes");
        assert!(
            why.contains("Data.txt") && why.contains("ignores case"),
            "{why}"
        );
        assert!(
            clash(&names, "cafe\u{301}.xml").is_some(),
            "decomposed é is the same name"
        );
        assert!(
            clash(&names, "Data.txt").is_none(),
            "the same name is no clash"
        );
        assert!(clash(&names, "other.txt").is_none());
        names.remove("Data.txt");
        assert!(
            clash(&names, "data.txt").is_none(),
            "once removed, the twin may come"
        );
    }

    #[test]
    fn a_recent_name_is_named_without_a_search_and_settles_into_the_tree() {
        let folding = Folding {
            case: true,
            unicode: false,
        };
        let mut names = Names::new(folding);
        names.reset(&[]);
        names.insert("Notes.txt");
        names.insert("Flying.txt");
        let no_search = |_: &str| -> Option<String> { panic!("a recent name is not searched for") };
        let why = names.clash("notes.TXT", no_search).unwrap();
        assert!(why.starts_with("Notes.txt is already"), "{why}");
        // Applied into the tree: found by the search from then on. One still arriving stays.
        names.settle(|name| name == "Notes.txt");
        assert!(names.recent.len() == 1);
        let why = names
            .clash("NOTES.txt", among(folding, &["Notes.txt"], "NOTES.txt"))
            .unwrap();
        assert!(why.starts_with("Notes.txt is already"), "{why}");
        let why = names.clash("flying.txt", no_search).unwrap();
        assert!(why.starts_with("Flying.txt is already"), "{why}");
    }

    #[test]
    fn hashes_that_meet_without_a_twin_are_no_clash() {
        let folding = Folding {
            case: true,
            unicode: false,
        };
        let mut names = Names::new(folding);
        names.reset(&["Data.txt".to_string()]);
        // A key whose hash is held, as if another key shared it, with nothing of that key in
        // the tree: the search finds nothing, and the name may be written.
        let key = hash(&folding.key("other.txt"));
        names.held.insert(key, hash("Other.txt"));
        assert!(names.clash("other.txt", |_| None).is_none());
    }

    #[test]
    fn a_case_sensitive_file_system_keeps_both() {
        let mut names = Names::new(Folding::default());
        names.reset(&["Data.txt".to_string()]);
        assert!(names.clash("data.txt", |_| None).is_none());
        assert!(names.held.is_empty() && names.recent.is_empty());
    }

    #[cfg(not(any(windows, target_os = "macos")))]
    #[test]
    fn the_probe_finds_a_linux_file_system_tells_names_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Folding::probe(dir.path()),
            Folding::default(),
            "Linux file systems tell case and normalization apart"
        );
    }

    #[cfg(windows)]
    #[test]
    fn the_probe_finds_windows_ignores_case_but_not_normalization() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Folding::probe(dir.path()),
            Folding {
                case: true,
                unicode: false
            },
            "NTFS folders ignore case unless made case-sensitive, and keep both Unicode \
             spellings of a name apart"
        );
    }
}
