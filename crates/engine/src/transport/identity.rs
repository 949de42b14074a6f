//! The agent's TLS identity (a self-signed certificate and its key, kept on disk) and the
//! fingerprint by which peers pin it.
//!
//! There is no certificate authority: a source trusts a target because the SHA-256 of the
//! target's certificate matches the fingerprint it was given (or recorded on first use), so the
//! identity must survive restarts. It lives in two files, `cert.der` and `key.der`, in the
//! agent's state folder.

use crate::fs::Keep;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::TransportError;

/// A certificate fingerprint: `"SHA256:"` followed by the 64 lowercase hex digits of the SHA-256
/// of the certificate's DER bytes.
pub type Fingerprint = String;

const CERT_FILE: &str = "cert.der";
const KEY_FILE: &str = "key.der";
const PREFIX: &str = "SHA256:";

/// The fingerprint of a DER-encoded certificate.
pub fn fingerprint_of(cert_der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    format!("{PREFIX}{}", hex::encode(digest.as_ref()))
}

/// The fingerprint of the identity kept in `dir`, read from its certificate alone (the key may
/// be readable by the agent's user only). An error when there is none yet: the agent creates
/// its identity the first time it serves.
pub fn fingerprint_in(dir: &Path) -> Result<Fingerprint, TransportError> {
    let cert_path = dir.join(CERT_FILE);
    match fs::read(&cert_path) {
        Ok(cert) => Ok(fingerprint_of(&cert)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(identity_error(
            &cert_path,
            "there is no certificate yet; start `rainmaker serve` once, it creates one".into(),
        )),
        Err(e) => Err(identity_error(&cert_path, format!("cannot read it: {e}"))),
    }
}

/// Normalizes a fingerprint typed or pasted by a person: the `SHA256:` prefix is optional and
/// case-insensitive, hex digits may be upper case and separated by `:`. Returns `None` when what
/// remains is not 64 hex digits.
pub fn parse_fingerprint(text: &str) -> Option<Fingerprint> {
    let text = text.trim();
    let hex_part = match text.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => &text[PREFIX.len()..],
        _ => text,
    };
    let digits: String = hex_part
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (digits.len() == 64 && digits.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("{PREFIX}{digits}"))
}

/// The agent's TLS identity: a self-signed ECDSA P-256 certificate and its PKCS#8 key.
#[derive(Clone)]
pub struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `dir/cert.der` and `dir/key.der`, or creates a new identity there if there is none
    /// yet (the folder is created with mode 0700 and the key written with mode 0600 on Unix).
    ///
    /// A file that cannot be read or parsed, a key that does not belong to the certificate, or a
    /// certificate without its key is an error naming the file: the identity is what peers have
    /// pinned, so it is never replaced silently.
    pub fn load_or_create(dir: &Path) -> Result<Identity, TransportError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert = match fs::read(&cert_path) {
            Ok(cert) => cert,
            // The key is written first, so a key without a certificate is an interrupted
            // creation: nobody can have pinned it yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::create(dir),
            Err(e) => return Err(identity_error(&cert_path, format!("cannot read it: {e}"))),
        };
        let key = match fs::read(&key_path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(identity_error(
                    &key_path,
                    format!(
                        "it is missing but {} exists; restore it, or delete {} to create a new \
                         identity (every source will then have to accept its new fingerprint)",
                        cert_path.display(),
                        cert_path.display()
                    ),
                ));
            }
            Err(e) => return Err(identity_error(&key_path, format!("cannot read it: {e}"))),
        };
        let identity = Identity { cert, key };
        identity.check(&cert_path, &key_path)?;
        if let Some(warning) = crate::secret::readable_by_others(&key_path, "TLS key") {
            tracing::warn!("{warning}");
        }
        Ok(identity)
    }

    /// An identity held only in memory (tests, or an agent that must not touch the disk).
    pub fn generate() -> Result<Identity, TransportError> {
        let certified =
            rcgen::generate_simple_self_signed(vec!["rainmaker".to_owned()]).map_err(|e| {
                TransportError::Identity {
                    path: PathBuf::new(),
                    reason: format!("cannot generate a certificate: {e}"),
                }
            })?;
        Ok(Identity {
            cert: certified.cert.der().to_vec(),
            key: certified.signing_key.serialize_der(),
        })
    }

    /// The fingerprint peers pin: print it at start so users can pass it to `--fingerprint`.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint_of(&self.cert)
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert.clone())
    }

    /// The private key, PKCS#8 DER-encoded.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    fn create(dir: &Path) -> Result<Identity, TransportError> {
        create_private_dir(dir)
            .map_err(|e| identity_error(dir, format!("cannot create the identity folder: {e}")))?;
        let identity = Self::generate()?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        crate::fs::write_atomic(&key_path, &identity.key, Keep::Private)
            .map_err(|e| identity_error(&key_path, format!("cannot write it: {e}")))?;
        crate::fs::write_atomic(&cert_path, &identity.cert, Keep::Durable)
            .map_err(|e| identity_error(&cert_path, format!("cannot write it: {e}")))?;
        Ok(identity)
    }

    /// Checks that the key parses, the certificate parses, and the key is the certificate's.
    fn check(&self, cert_path: &Path, key_path: &Path) -> Result<(), TransportError> {
        let provider: CryptoProvider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(self.key_der())
            .map_err(|e| {
                identity_error(
                    key_path,
                    format!("it is not a usable private key ({e}); {}", CORRUPT_ADVICE),
                )
            })?;
        let certified = rustls::sign::CertifiedKey::new(vec![self.cert_der()], signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(())
            }
            Err(rustls::Error::InconsistentKeys(_)) => Err(identity_error(
                key_path,
                format!(
                    "it is not the key of {}; {}",
                    cert_path.display(),
                    CORRUPT_ADVICE
                ),
            )),
            Err(e) => Err(identity_error(
                cert_path,
                format!("it is not a valid certificate ({e}); {}", CORRUPT_ADVICE),
            )),
        }
    }
}

const CORRUPT_ADVICE: &str = "restore it from a backup, or delete cert.der and key.der to create \
                              a new identity (every source will then have to accept its new \
                              fingerprint)";

fn identity_error(path: &Path, reason: String) -> TransportError {
    TransportError::Identity {
        path: path.to_path_buf(),
        reason,
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    crate::fs::restrict_to_owner(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = Identity::load_or_create(&state).unwrap();
        let second = Identity::load_or_create(&state).unwrap();
        assert_eq!(
            first.fingerprint(),
            second.fingerprint(),
            "peers pinned the first fingerprint, so a restart must keep it"
        );
        assert!(state.join("cert.der").is_file() && state.join("key.der").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key_mode = fs::metadata(state.join("key.der"))
                .unwrap()
                .permissions()
                .mode();
            let dir_mode = fs::metadata(&state).unwrap().permissions().mode();
            assert_eq!(key_mode & 0o777, 0o600, "only the owner may read the key");
            assert_eq!(
                dir_mode & 0o777,
                0o700,
                "only the owner may enter the state folder"
            );
        }
    }

    #[test]
    fn a_fingerprint_is_sha256_in_lowercase_hex() {
        let identity = Identity::generate().unwrap();
        let fp = identity.fingerprint();
        assert!(fp.starts_with("SHA256:"));
        let hex = &fp["SHA256:".len()..];
        assert_eq!(hex.len(), 64);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_ne!(
            fp,
            Identity::generate().unwrap().fingerprint(),
            "identities are unique"
        );
    }

    #[test]
    fn a_corrupt_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join("key.der"), b"not a key").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("key.der"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join("cert.der"), b"not a certificate").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("cert.der"), "{err}");
    }

    #[test]
    fn a_key_from_another_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        fs::write(
            dir.path().join("key.der"),
            Identity::generate().unwrap().key,
        )
        .unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not the key of"), "{err}");
    }

    #[test]
    fn a_certificate_without_its_key_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join("key.der")).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("key.der"), "{err}");
        assert_eq!(
            fingerprint_of(&fs::read(dir.path().join("cert.der")).unwrap()),
            first.fingerprint(),
            "the pinned certificate must stay until a person decides"
        );
    }

    #[test]
    fn an_interrupted_creation_starts_over() {
        // The key is written before the certificate; a key alone was never pinned by anyone.
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join("cert.der")).unwrap();
        let second = Identity::load_or_create(dir.path()).unwrap();
        assert_ne!(first.fingerprint(), second.fingerprint());
        let third = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(second.fingerprint(), third.fingerprint());
    }

    #[test]
    fn fingerprints_are_normalized() {
        let fp = Identity::generate().unwrap().fingerprint();
        let hex = &fp["SHA256:".len()..];
        assert_eq!(parse_fingerprint(&fp).as_deref(), Some(fp.as_str()));
        assert_eq!(parse_fingerprint(hex).as_deref(), Some(fp.as_str()));
        assert_eq!(
            parse_fingerprint(&format!(" sha256:{} ", hex.to_uppercase())).as_deref(),
            Some(fp.as_str())
        );
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect();
        assert_eq!(
            parse_fingerprint(&colons.join(":")).as_deref(),
            Some(fp.as_str())
        );
        assert_eq!(parse_fingerprint("SHA256:abc"), None);
        assert_eq!(parse_fingerprint(&format!("SHA256:{}zz", &hex[2..])), None);
    }
}
