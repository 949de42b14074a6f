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
#[derive(Debug, Default)]
pub struct Names {
    folding: Folding,
    by_key: HashMap<String, String>,
}

impl Names {
    pub fn new(folding: Folding) -> Names {
        Names {
            folding,
            by_key: HashMap::new(),
        }
    }

    pub fn folding(&self) -> Folding {
        self.folding
    }

    /// Starts over with these names.
    pub fn reset<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        self.by_key.clear();
        if self.folding.any() {
            for name in names {
                self.insert(name);
            }
        }
    }

    pub fn insert(&mut self, name: &str) {
        if self.folding.any() {
            self.by_key.insert(self.folding.key(name), name.to_owned());
        }
    }

    pub fn remove(&mut self, name: &str) {
        if self.folding.any() {
            let key = self.folding.key(name);
            if self.by_key.get(&key).is_some_and(|held| held == name) {
                self.by_key.remove(&key);
            }
        }
    }

    /// Why `name` cannot be written here: another name the file system would take for it.
    pub fn clash(&self, name: &str) -> Option<String> {
        if !self.folding.any() {
            return None;
        }
        let held = self.by_key.get(&self.folding.key(name))?;
        (held != name).then(|| {
            format!(
                "{held} is already on this server, and its file system {} so the two would be one \
                 file; rename one of them on the source to mirror both",
                self.folding.describe()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_only_in_case_or_normalization_clash_where_folded() {
        let mut names = Names::new(Folding {
            case: true,
            unicode: true,
        });
        names.reset(&["Data.txt".to_string(), "caf\u{e9}.xml".to_string()]);
        let why = names.clash("data.txt").expect("a case-only twin clashes");
        assert!(
            why.contains("Data.txt") && why.contains("ignores case"),
            "{why}"
        );
        assert!(
            names.clash("cafe\u{301}.xml").is_some(),
            "decomposed é is the same name"
        );
        assert!(
            names.clash("Data.txt").is_none(),
            "the same name is no clash"
        );
        assert!(names.clash("other.txt").is_none());
        names.remove("Data.txt");
        assert!(
            names.clash("data.txt").is_none(),
            "once removed, the twin may come"
        );
    }

    #[test]
    fn a_case_sensitive_file_system_keeps_both() {
        let mut names = Names::new(Folding::default());
        names.reset(&["Data.txt".to_string()]);
        assert!(names.clash("data.txt").is_none());
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
