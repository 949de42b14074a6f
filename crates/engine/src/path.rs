//! The check every path from the wire passes before it touches the disk.
//!
//! Wire paths are relative, `/`-separated UTF-8. A path is refused when it could leave the
//! root or mean something else on another file system: `..`, `.`, empty or absolute paths,
//! drive letters and `:`, backslashes, NUL and other control characters, characters Windows
//! forbids, reserved Windows device names (`CON`, `NUL`, `COM1`, ...), trailing dots or spaces,
//! over-long names, and RainMaker's own state folder under any name a file system could take
//! for it: other cases and Unicode spellings (NTFS, APFS), code points HFS+ ignores, and the
//! 8.3 short names Windows gives it (`RAINMA~1`, or `RA` and four hex digits, `~` and a
//! number), as git refuses `git~1`. [`resolve`] then refuses to go through any symlink already
//! on the target, and a top-level name that opens the state folder itself (compared by file
//! identity, which catches aliases no rule foresees), so nothing is written outside the root
//! or into RainMaker's own state.

use crate::protocol::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
use std::path::{Path, PathBuf};
use thiserror::Error;
use unicode_normalization::UnicodeNormalization;

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
    if may_be_state_dir(components[0]) {
        return Err(refuse(
            path,
            "it is inside RainMaker's state folder, or a name a file system could take for it",
        ));
    }
    Ok(components)
}

/// Whether some file system could take `name` for [`STATE_DIR`]: the same name after Unicode
/// case folding and compatibility normalization, with the code points HFS+ ignores removed,
/// or one of the 8.3 short names Windows makes for it.
fn may_be_state_dir(name: &str) -> bool {
    let folded = fold(name);
    if folded == STATE_DIR {
        return true;
    }
    // Windows drops the leading dot and keeps six letters: `RAINMA~1`; after four of those it
    // keeps two letters and four hex digits of a hash: `RA1B2C~5`. Any extension too.
    let stem = folded.split('.').next().unwrap_or(&folded);
    let Some((head, number)) = stem.split_once('~') else {
        return false;
    };
    let numbered = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    let hashed = head.len() == 6
        && head.starts_with("ra")
        && head[2..].bytes().all(|b| b.is_ascii_hexdigit());
    numbered && (head == "rainma" || hashed)
}

/// A name as the most forgiving file system compares it.
fn fold(name: &str) -> String {
    let kept: String = name.chars().filter(|c| !hfs_ignores(*c)).collect();
    kept.to_lowercase()
        .nfkc()
        .collect::<String>()
        .to_lowercase()
}

/// Code points HFS+ leaves out when it compares names (as git's `is_hfs_dotgit` lists them).
fn hfs_ignores(c: char) -> bool {
    matches!(c as u32, 0x200c..=0x200f | 0x202a..=0x202e | 0x206a..=0x206f | 0xfeff)
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
            Ok(meta) if i == 0 && meta.is_dir() && is_state_dir(root, &full, &meta) => {
                return Err(refuse(
                    path,
                    format!(
                        "`{component}` is another name of RainMaker's state folder on this file system"
                    ),
                ));
            }
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

/// Whether the folder `full` (with metadata `meta`) is the state folder of `root`.
#[cfg(unix)]
fn is_state_dir(root: &Path, _full: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(root.join(STATE_DIR))
        .is_ok_and(|state| state.dev() == meta.dev() && state.ino() == meta.ino())
}

/// Whether the folder `full` is the state folder of `root` (opened, to read its file index).
#[cfg(not(unix))]
fn is_state_dir(root: &Path, full: &Path, _meta: &std::fs::Metadata) -> bool {
    same_file::is_same_file(full, root.join(STATE_DIR)).unwrap_or(false)
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
            // 8.3 short names of `.rainmaker`, in both of Windows' shapes.
            "RAINMA~1/role",
            "rainma~2",
            "RAINMA~12/trash/x",
            "RA1B2C~5/known_peers",
            "ra0f9e~1.x/tls.key",
            // Unicode spellings a case-folding file system (APFS, NTFS) takes for it: the
            // Kelvin sign for `k`, fullwidth letters, code points HFS+ ignores.
            ".rainma\u{212a}er/x",
            ".ＲＡＩＮＭＡＫＥＲ/x",
            ".rain\u{200c}maker/x",
            "\u{feff}.rainmaker",
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

    #[test]
    fn names_near_the_state_folder_that_cannot_be_it_pass() {
        for ok in [
            "rainmaker",
            ".rainmakers",
            "RAINMA~X",
            "RAIN~1",
            "RAZZZZ~1",
            "a/RAINMA~1",
        ] {
            assert!(check(ok).is_ok(), "{ok} is not the state folder anywhere");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn another_name_of_the_state_folder_is_refused_by_identity() {
        // An alias no rule foresees (on Windows a short name made by other rules, on macOS a
        // folding not listed above) is the same folder under another name: a bind mount makes
        // one here. It needs root; elsewhere the test says so and checks what it can.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(STATE_DIR)).unwrap();
        std::fs::create_dir(root.path().join("alias")).unwrap();
        let mounted = std::process::Command::new("mount")
            .arg("--bind")
            .arg(root.path().join(STATE_DIR))
            .arg(root.path().join("alias"))
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped the bind mount (needs root); only the plain case is checked");
            assert!(resolve(root.path(), "alias/role", false).is_ok());
            return;
        }
        let refused = resolve(root.path(), "alias/role", false);
        let _ = std::process::Command::new("umount")
            .arg(root.path().join("alias"))
            .status();
        let error = refused.unwrap_err();
        assert!(error.reason.contains("state folder"), "{error}");
        assert!(resolve(root.path(), "other/role", false).is_ok());
    }

    #[cfg(windows)]
    #[test]
    fn the_short_name_of_the_state_folder_is_refused() {
        // Windows makes 8.3 short names by its rules (`RAINMA~1`); Wine by its own (a hash),
        // which no rule foresees: then only the folder's identity tells.
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join(STATE_DIR);
        std::fs::create_dir(&state).unwrap();
        let short = crate::win32::short_path(&state).unwrap();
        let alias = short.file_name().unwrap().to_str().unwrap().to_owned();
        if alias == STATE_DIR {
            eprintln!("this volume makes no 8.3 short names; the rules are tested above");
            return;
        }
        assert!(
            root.path().join(&alias).is_dir(),
            "{alias} opens the state folder"
        );
        let error = resolve(root.path(), &format!("{alias}/role"), false)
            .expect_err("a short name of the state folder must be refused");
        assert!(error.reason.contains("state folder"), "{alias}: {error}");
        assert!(resolve(root.path(), "other/role", false).is_ok());
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
