//! The known-peers file: the fingerprints a source has accepted, for trust on first use.
//!
//! One peer a line, `host:port SHA256:hex`; blank lines and lines starting with `#` are ignored.
//! A peer may have several lines (all of them are accepted, as in SSH's `known_hosts`). New
//! peers are appended with a single write, so sources pushing to several new targets at once do
//! not interleave their lines.

use std::io::Write;
use std::path::Path;

use super::TransportError;
use super::identity::{Fingerprint, parse_fingerprint};

/// The parsed content of a known-peers file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownPeers {
    entries: Vec<(String, Fingerprint)>,
    ends_with_newline: bool,
}

impl KnownPeers {
    /// Reads `path`; a missing file is an empty list. A malformed line is an error naming the
    /// file and the line.
    pub fn load(path: &Path) -> Result<KnownPeers, TransportError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KnownPeers {
                entries: Vec::new(),
                ends_with_newline: true,
            }),
            Err(e) => Err(TransportError::Io {
                context: format!("reading the known-peers file {}", path.display()),
                source: e,
            }),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<KnownPeers, TransportError> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| TransportError::KnownPeers {
                path: path.to_path_buf(),
                line: index + 1,
                reason: reason.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let (Some(peer), Some(fingerprint), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed("expected `host:port SHA256:hex`"));
            };
            if !peer.contains(':') {
                return Err(malformed("the peer must be written `host:port`"));
            }
            let fingerprint = parse_fingerprint(fingerprint)
                .ok_or_else(|| malformed("the fingerprint must be `SHA256:` and 64 hex digits"))?;
            entries.push((peer.to_ascii_lowercase(), fingerprint));
        }
        Ok(KnownPeers {
            entries,
            ends_with_newline: text.is_empty() || text.ends_with('\n'),
        })
    }

    /// The fingerprints recorded for `peer` (`host:port`), empty when it was never seen.
    pub fn fingerprints(&self, peer: &str) -> Vec<Fingerprint> {
        let peer = peer.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Appends `peer fingerprint` to the file at `path` (creating it and its folder), in one
    /// write.
    pub fn append(&self, path: &Path, peer: &str, fingerprint: &str) -> Result<(), TransportError> {
        let io_error = |e| TransportError::Io {
            context: format!(
                "recording {peer} in the known-peers file {}",
                path.display()
            ),
            source: e,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        let separator = if self.ends_with_newline { "" } else { "\n" };
        let line = format!("{separator}{} {fingerprint}\n", peer.to_ascii_lowercase());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error)?;
        file.write_all(line.as_bytes()).map_err(io_error)?;
        file.sync_all().map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn lines_comments_and_several_entries_are_read() {
        let text = format!(
            "# pinned by hand\n\n10.0.0.5:7878 {FP}\nbackup.example:7878 {}\n10.0.0.5:7878 {}\n",
            FP.to_uppercase().replace("SHA256", "sha256"),
            FP.replace('0', "f")
        );
        let known = KnownPeers::parse(Path::new("kp"), &text).unwrap();
        assert_eq!(
            known.fingerprints("10.0.0.5:7878"),
            vec![FP.to_owned(), FP.replace('0', "f")]
        );
        assert_eq!(
            known.fingerprints("BACKUP.example:7878"),
            vec![FP.to_owned()]
        );
        assert!(known.fingerprints("10.0.0.6:7878").is_empty());
    }

    #[test]
    fn a_malformed_line_is_named() {
        for text in [
            format!("a:1 {FP}\nb:2\n"),
            format!("a:1 {FP}\nb:2 SHA256:xyz\n"),
            format!("a:1 {FP}\nb {FP}\n"),
            format!("a:1 {FP}\nb:2 {FP} extra\n"),
        ] {
            let err = KnownPeers::parse(Path::new("/x/known_peers"), &text).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("/x/known_peers") && message.contains("line 2"),
                "the user must find the bad line: {message}"
            );
        }
    }

    #[test]
    fn appending_creates_folders_and_keeps_lines_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/known_peers");
        let known = KnownPeers::load(&path).unwrap();
        known.append(&path, "h:1", FP).unwrap();
        // A hand-edited file without a final newline.
        std::fs::write(&path, format!("h:1 {FP}")).unwrap();
        let known = KnownPeers::load(&path).unwrap();
        known.append(&path, "H:2", FP).unwrap();
        let known = KnownPeers::load(&path).unwrap();
        assert_eq!(known.fingerprints("h:1"), vec![FP.to_owned()]);
        assert_eq!(known.fingerprints("h:2"), vec![FP.to_owned()]);
    }
}
