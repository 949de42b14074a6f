//! The check every path from the wire passes before it touches the disk.
//!
//! Wire paths are relative, `/`-separated UTF-8. A path is refused when it could leave the
//! root or mean something else on another file system: `..`, `.`, empty or absolute paths,
//! drive letters and `:`, backslashes, NUL and other control characters, characters Windows
//! forbids, reserved Windows device names (`CON`, `NUL`, `COM1`, ...), trailing dots or spaces,
//! over-long names, and RainMaker's own state folder. [`resolve`] then refuses to go through
//! any symlink already on the target, so nothing is written outside the root.

use crate::protocol::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The folder, at the top of every mirrored root, where RainMaker keeps its state.
pub const STATE_DIR: &str = ".rainmaker";

/// Why a wire path was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("refused path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

fn refuse(path: &str, reason: impl Into<String>) -> PathError {
    PathError {
        path: path.chars().take(200).collect(),
        reason: reason.into(),
    }
}

const RESERVED: [&str; 32] = [
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    "COM0",
    "COM1",
    "COM2",
    "COM3",
    "COM4",
    "COM5",
    "COM6",
    "COM7",
    "COM8",
    "COM9",
    "COM\u{b9}",
    "COM\u{b2}",
    "COM\u{b3}",
    "LPT0",
    "LPT1",
    "LPT2",
    "LPT3",
    "LPT4",
    "LPT5",
    "LPT6",
    "LPT7",
    "LPT8",
    "LPT9",
    "LPT\u{b9}",
    "LPT\u{b2}",
    "LPT\u{b3}",
];

/// Checks a relative path from the wire; returns its components.
pub fn check(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(refuse(path, "it is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(refuse(
            path,
            format!("it is longer than {MAX_PATH_BYTES} bytes"),
        ));
    }
    if path.starts_with('/') {
        return Err(refuse(path, "it is absolute"));
    }
    let components: Vec<&str> = path.split('/').collect();
    for component in &components {
        check_component(path, component)?;
    }
    if components[0].eq_ignore_ascii_case(STATE_DIR) {
        return Err(refuse(path, "it is inside RainMaker's state folder"));
    }
    Ok(components)
}

fn check_component(path: &str, component: &str) -> Result<(), PathError> {
    match component {
        "" => {
            return Err(refuse(
                path,
                "it has an empty component (`//` or a trailing `/`)",
            ));
        }
        "." | ".." => return Err(refuse(path, format!("it has a `{component}` component"))),
        _ => {}
    }
    if component.len() > MAX_COMPONENT_BYTES {
        return Err(refuse(
            path,
            format!("a name is longer than {MAX_COMPONENT_BYTES} bytes"),
        ));
    }
    if let Some(c) = component
        .chars()
        .find(|c| c.is_control() || matches!(c, '\\' | ':' | '<' | '>' | '"' | '|' | '?' | '*'))
    {
        let shown = if c.is_control() {
            format!("control character {:#04x}", c as u32)
        } else {
            format!("`{c}`")
        };
        return Err(refuse(
            path,
            format!(
                "it contains {shown}, which is not allowed in a file name (drive letters and backslashes included)"
            ),
        ));
    }
    if component.ends_with('.') || component.ends_with(' ') {
        return Err(refuse(
            path,
            "a name ends with a dot or a space, which Windows drops",
        ));
    }
    let stem = component.split('.').next().unwrap_or(component).trim_end();
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return Err(refuse(
            path,
            format!("`{component}` is a reserved Windows device name"),
        ));
    }
    Ok(())
}

/// Joins a checked wire path to `root`, refusing any existing symlink on the way. The last
/// component may be a symlink only if `replace_last` is set (the caller will replace or remove
/// the link itself, never write through it).
pub fn resolve(root: &Path, path: &str, replace_last: bool) -> Result<PathBuf, PathError> {
    let components = check(path)?;
    let mut full = root.to_path_buf();
    for (i, component) in components.iter().enumerate() {
        full.push(component);
        let last = i + 1 == components.len();
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() && !(last && replace_last) => {
                return Err(refuse(
                    path,
                    format!(
                        "`{}` is a symlink on the target; RainMaker never writes through one",
                        full.display()
                    ),
                ));
            }
            Ok(_) => {}
            Err(_) => break, // nothing exists below a missing component
        }
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_paths_pass() {
        for ok in [
            "a",
            "db/tick/ES 12-26/20261126.Last.ncd",
            "Ünïcødé/файл.txt",
            "a.b.c",
            ".hidden",
        ] {
            assert!(check(ok).is_ok(), "{ok} is an ordinary path");
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "C:/x",
            "C:",
            "c:x",
            "a\\..\\b",
            "\\\\server\\share",
            "a\0b",
            "CON",
            "nul.txt",
            "x/com1.log",
            "Lpt9",
            "a./b",
            "a /b",
            ".rainmaker/index.redb",
            ".RainMaker/x",
            "a\u{1}b",
        ] {
            assert!(check(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(
            check(&"a".repeat(256)).is_err(),
            "over-long name must be refused"
        );
        assert!(
            check(&"a/".repeat(2100)).is_err(),
            "over-long path must be refused"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_on_the_target_are_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        assert!(
            resolve(root.path(), "link/x", false).is_err(),
            "a parent symlink leads out"
        );
        assert!(
            resolve(root.path(), "link", false).is_err(),
            "writing through the link"
        );
        assert!(
            resolve(root.path(), "link", true).is_ok(),
            "replacing the link itself is safe"
        );
        assert!(resolve(root.path(), "new/x", false).is_ok());
    }

    proptest! {
        #[test]
        fn no_accepted_path_leaves_the_root(path in "[a-z./\\\\:]{0,12}") {
            if let Ok(components) = check(&path) {
                prop_assert!(components.iter().all(|c| !c.is_empty() && *c != "." && *c != ".."));
                let joined = Path::new("/root").join(&path);
                prop_assert!(joined.starts_with("/root"), "{path} left the root");
                prop_assert!(!Path::new(&path).is_absolute());
            }
        }
    }
}
