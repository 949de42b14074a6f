//! Checks on the files that hold secrets (the pairing and admin tokens, the agent's TLS key):
//! a token too short to resist guessing, or a file other users of the machine can read, is
//! reported as a warning that says how to fix it. Nothing is refused: an agent that starts with
//! a weak secret still starts, and says so in its log.

use std::path::Path;

/// Tokens shorter than this are warned about: 22 base64 characters carry 128 bits when they
/// are random (`head -c 32 /dev/urandom | base64` gives 44).
pub const MIN_TOKEN_CHARS: usize = 22;

/// What is wrong with the token `token` read from `path`, one sentence each (none: fine).
pub fn token_warnings(path: &Path, token: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        warnings.push(format!(
            "the token in {} has {chars} characters, fewer than {MIN_TOKEN_CHARS} (128 bits), so it \
             can be guessed; make a new one with `head -c 32 /dev/urandom | base64` and give it \
             to every source",
            path.display()
        ));
    }
    warnings.extend(readable_by_others(path, "token file"));
    warnings
}

/// A warning when other users of this machine may read the secret `path` holds (`what`
/// names it: "token file", "TLS key"); Unix mode bits only.
#[cfg(unix)]
pub fn readable_by_others(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the {what} {} can be read by other users of this machine (mode {mode:03o}); make it \
             readable by its owner only: chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// On Windows the file's ACL decides; the state folder's ACL is set where it is created.
#[cfg(not(unix))]
pub fn readable_by_others(_path: &Path, _what: &str) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_token_is_warned_about_and_a_long_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let short = token_warnings(&path, "hunter2");
        assert_eq!(short.len(), 1, "{short:?}");
        assert!(short[0].contains("7 characters") && short[0].contains("urandom"));
        assert!(
            token_warnings(&path, "bG9uZyBlbm91Z2ggdG8gYmUgcmFuZG9tLCAzMiBieXRlcw==").is_empty(),
            "44 base64 characters are 256 bits"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.der");
        std::fs::write(&path, "secret").unwrap();
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = readable_by_others(&path, "TLS key");
            assert_eq!(warning.is_some(), warned, "mode {mode:o}: {warning:?}");
            if let Some(warning) = warning {
                assert!(warning.contains("chmod 600"), "{warning}");
            }
        }
    }
}
