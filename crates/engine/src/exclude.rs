//! Paths of a source folder that are not mirrored: a trading platform's caches, logs and
//! lock files, which are rebuilt on the backup and would only cost bandwidth.
//!
//! Patterns follow the shape of `.gitignore` lines: a pattern without a `/` matches a name at
//! any depth (`*.log`, `cache`); a pattern with a `/` matches the path from the folder's root
//! (`db/cache`, `/tmp`); `*` does not cross a `/`, `**` does; case is ignored (the platforms
//! run on Windows, where `Logs` and `logs` are one folder). A matching folder takes
//! everything below it with it. Excluded paths are neither scanned nor sent, so a target
//! ends without them (what it had goes to its trash like any other deletion).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use thiserror::Error;

/// Most patterns in one list; a list is typed by a person, not generated.
pub const MAX_PATTERNS: usize = 256;

/// A compiled list of patterns.
#[derive(Debug, Clone, Default)]
pub struct Exclude {
    set: Option<GlobSet>,
}

/// A pattern that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("exclude pattern {pattern:?}: {reason}")]
pub struct ExcludeError {
    pub pattern: String,
    pub reason: String,
}

impl Exclude {
    /// Excludes nothing.
    pub fn none() -> Exclude {
        Exclude::default()
    }

    /// Compiles `patterns`; the first bad one is named in the error.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Exclude, ExcludeError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(ExcludeError {
                pattern: format!("({} patterns)", patterns.len()),
                reason: format!("at most {MAX_PATTERNS} patterns are allowed"),
            });
        }
        if patterns.is_empty() {
            return Ok(Exclude::none());
        }
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            let bad = |reason: &str| ExcludeError {
                pattern: pattern.to_string(),
                reason: reason.to_string(),
            };
            if pattern.is_empty() {
                return Err(bad("it is empty"));
            }
            if pattern.contains('\\') {
                return Err(bad("use / between folders, also on Windows"));
            }
            let anchored = pattern.trim_start_matches('/').trim_end_matches('/');
            if anchored.is_empty() || anchored.split('/').any(|part| part == "..") {
                return Err(bad("it must name something inside the folder"));
            }
            let full = if pattern.trim_end_matches('/').contains('/') {
                anchored.to_string()
            } else {
                format!("**/{anchored}")
            };
            let glob = GlobBuilder::new(&full)
                .literal_separator(true)
                .case_insensitive(true)
                .build()
                .map_err(|e| bad(&e.kind().to_string()))?;
            builder.add(glob);
            kept.push(pattern.to_string());
        }
        let set = builder.build().map_err(|e| ExcludeError {
            pattern: kept.join(", "),
            reason: e.to_string(),
        })?;
        Ok(Exclude { set: Some(set) })
    }

    /// Whether the `/`-separated relative path `rel` is excluded (its own name or path; the
    /// walk does not enter an excluded folder, so what is below one never gets here).
    pub fn matches(&self, rel: &str) -> bool {
        self.set.as_ref().is_some_and(|set| set.is_match(rel))
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.set.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_matches_at_any_depth_and_a_path_only_from_the_root() {
        let ex = Exclude::new(&["*.log", "cache", "db/tmp"]).unwrap();
        assert!(ex.matches("trace.log"), "*.log at the root");
        assert!(ex.matches("logs/2026/trace.log"), "*.log below");
        assert!(
            ex.matches("cache") && ex.matches("db/cache"),
            "a name anywhere"
        );
        assert!(ex.matches("db/tmp"), "a path from the root");
        assert!(
            !ex.matches("x/db/tmp"),
            "an anchored path is not matched deeper"
        );
        assert!(!ex.matches("db/history/ES.ncd"), "data is kept");
        assert!(!ex.matches("cachefile"), "a name matches whole");
        assert!(
            ex.matches("Cache") && ex.matches("DB/TMP"),
            "case is ignored"
        );
    }

    #[test]
    fn star_stays_within_a_folder_and_double_star_crosses() {
        let ex = Exclude::new(&["db/*.lock", "/tmp/**/*.bin"]).unwrap();
        assert!(ex.matches("db/a.lock"));
        assert!(!ex.matches("db/x/a.lock"), "* does not cross /");
        assert!(ex.matches("tmp/a/b/c.bin"), "** crosses /");
    }

    #[test]
    fn bad_patterns_are_named() {
        for (pattern, why) in [
            ("", "empty"),
            ("a\\b", "use /"),
            ("../x", "inside the folder"),
            ("[", "unclosed"),
        ] {
            let err = Exclude::new(&[pattern]).unwrap_err();
            assert!(
                err.to_string().contains(why),
                "{pattern:?} is refused with a reason containing {why:?}: {err}"
            );
        }
        assert!(
            !Exclude::none().matches("anything"),
            "none excludes nothing"
        );
    }
}
