//! The targets a command line names: each `--to` is a pairing code (address, pin and token in
//! one string) or an address that takes its fingerprint from the `--fingerprint` list and its
//! token from a token file. `push` and `remote ... push` both read them here.

use anyhow::{Result, bail};
use rainmaker_engine::pairing::Pairing;
use rainmaker_engine::transport::Role;
use std::path::PathBuf;

/// One target as the command line gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub url: String,
    /// The pinned fingerprint, from the pairing code or `--fingerprint`.
    pub fingerprint: Option<String>,
    pub token: String,
}

/// Reads the `to` entries. `fingerprints` go, in order, to the entries that are addresses
/// (none, or one each); so do `token_files` (one for all, or one each).
pub fn read(
    to: &[String],
    fingerprints: &[String],
    token_files: &[PathBuf],
    flags: (&str, &str),
) -> Result<Vec<Given>> {
    let (fingerprint_flag, token_flag) = flags;
    let addresses = to.iter().filter(|t| !Pairing::is_code(t)).count();
    if !fingerprints.is_empty() && fingerprints.len() != addresses {
        bail!(
            "give one {fingerprint_flag} per --to that is an address, in the same order \
             ({addresses} addresses, {} fingerprints); a pairing code carries its own",
            fingerprints.len()
        );
    }
    if addresses > 0 && token_files.is_empty() {
        bail!(
            "{token_flag} is missing: a target given by address needs its pairing token (or \
             give its pairing code as --to instead: `rainmaker pair` prints it on the target)"
        );
    }
    if token_files.len() > 1 && token_files.len() != addresses {
        bail!("give one {token_flag} for all targets given by address, or one for each");
    }
    let mut given = Vec::new();
    let mut k = 0;
    for entry in to {
        if Pairing::is_code(entry) {
            let code = Pairing::parse(entry)?;
            match code.role {
                Role::Source => {}
                Role::Admin => bail!(
                    "a --to is an admin code (rainmaker-admin://): pushing needs the target's \
                     pairing code, `rainmaker pair` without --admin; the admin token is not \
                     for mirroring"
                ),
                Role::Subscriber => bail!(
                    "a --to is a subscribe code (rainmaker-subscribe://): it lets its holder \
                     receive the agent's folder, not mirror into it; pushing needs the target's \
                     pairing code, `rainmaker pair` without --subscribe"
                ),
            }
            given.push(Given {
                url: code.url(),
                fingerprint: Some(code.fingerprint),
                token: code.token,
            });
        } else {
            let file = &token_files[k.min(token_files.len() - 1)];
            given.push(Given {
                url: entry.trim().to_owned(),
                fingerprint: fingerprints.get(k).cloned(),
                token: crate::read_token(file)?,
            });
            k += 1;
        }
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn codes_and_addresses_mix_and_fingerprints_go_to_the_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "file-token\n").unwrap();
        let code = format!("rainmaker://b1:7878#{FP}/code-token");
        let to = vec![
            "wss://b0:7878".to_owned(),
            code,
            "ws://127.0.0.1:9".to_owned(),
        ];
        let fps = vec![FP.to_owned(), "SHA256:x".to_owned()];
        let given = read(
            &to,
            &fps,
            std::slice::from_ref(&token),
            ("--fingerprint", "--token-file"),
        )
        .unwrap();
        assert_eq!(
            given,
            vec![
                Given {
                    url: "wss://b0:7878".into(),
                    fingerprint: Some(FP.into()),
                    token: "file-token".into()
                },
                Given {
                    url: "wss://b1:7878".into(),
                    fingerprint: Some(FP.into()),
                    token: "code-token".into()
                },
                Given {
                    url: "ws://127.0.0.1:9".into(),
                    fingerprint: Some("SHA256:x".into()),
                    token: "file-token".into()
                },
            ]
        );
        let only_codes = read(&to[1..2], &[], &[], ("--fingerprint", "--token-file")).unwrap();
        assert_eq!(only_codes.len(), 1, "codes need no token file");
        let err = read(&to, &[], &[], ("--fingerprint", "--token-file")).unwrap_err();
        assert!(err.to_string().contains("--token-file is missing"), "{err}");
        let admin = format!("rainmaker-admin://b1:7878#{FP}/admin");
        let err = read(&[admin], &[], &[], ("--fingerprint", "--token-file")).unwrap_err();
        assert!(err.to_string().contains("admin code"), "{err}");
    }
}
