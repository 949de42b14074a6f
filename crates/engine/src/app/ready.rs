//! Whether this machine can do what its configuration says, checked as the running agent will
//! need it (`rainmaker config check`): a configuration that parses can still name a folder
//! that does not exist, a token file nobody wrote, or a port another program holds, and the
//! service would then fail at start. Each problem comes with its fix.
//!
//! The checks run as the user who runs them: run `config check` as the user the agent's
//! service runs as (`sudo -u rainmaker rainmaker config check`) to check what that user may
//! read and write.

use crate::config::{self, Config};
use std::path::Path;

/// One thing that keeps the configuration from working here, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// Everything that keeps `config` from working on this machine (none: ready).
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(serve) = &config.serve {
        check_root(&serve.root, &mut problems);
        check_token(&serve.token_file, "pairing token", &mut problems);
        if let Some(admin) = &serve.admin_token_file {
            check_token(admin, "admin token", &mut problems);
        }
        if let Some(subscribe) = &serve.subscribe_token_file {
            check_token(subscribe, "subscribe token", &mut problems);
        }
        check_listen(&serve.listen, &mut problems);
    }
    for folder in &config.folders {
        check_source(&folder.source, &mut problems);
        for target in &folder.targets {
            check_token(&target.token_file, "pairing token", &mut problems);
        }
    }
    problems
}

/// The folder that receives the mirror: it must exist, be a folder, and take new files.
fn check_root(root: &Path, problems: &mut Vec<Problem>) {
    match std::fs::metadata(root) {
        Err(e) => problems.push(Problem {
            what: format!(
                "the folder that receives the mirror, {}, cannot be used: {e}",
                root.display()
            ),
            fix: if cfg!(windows) {
                format!(
                    "create it (mkdir \"{}\") and let the account the agent runs as write to it",
                    root.display()
                )
            } else {
                format!(
                    "create it (mkdir -p \"{}\") and make it writable by the user the agent runs as",
                    root.display()
                )
            },
        }),
        Ok(meta) if !meta.is_dir() => problems.push(Problem {
            what: format!(
                "{}, where the mirror is received, is not a folder",
                root.display()
            ),
            fix: "set [serve] root to a folder".into(),
        }),
        Ok(_) => {
            let probe = root.join(format!(".rainmaker-check-{}", std::process::id()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe);
            match written {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                }
                Err(e) => problems.push(Problem {
                    what: format!("this user cannot write into {}: {e}", root.display()),
                    fix: if cfg!(windows) {
                        "let the account the agent runs as write to the folder (its Security \
                         tab, or icacls)"
                            .into()
                    } else {
                        format!(
                            "give the user the agent runs as the folder (chown -R USER \"{}\")",
                            root.display()
                        )
                    },
                }),
            }
        }
    }
}

/// A token file: it must exist and hold a token, and should be long and private.
fn check_token(path: &Path, what: &str, problems: &mut Vec<Problem>) {
    match config::read_token(path) {
        Err(e) => problems.push(Problem {
            what: format!("the {what} file {}: {}", path.display(), e.message),
            fix: if cfg!(windows) {
                format!(
                    "write a long random secret (32 random bytes in base64) or the pairing code \
                     into \"{}\", readable by its owner only",
                    path.display()
                )
            } else {
                format!(
                    "write a long random secret into it: head -c 32 /dev/urandom | base64 > \"{}\"; \
                     chmod 600 \"{}\" (or paste the pairing code there)",
                    path.display(),
                    path.display()
                )
            },
        }),
        Ok(token) => {
            for warning in crate::secret::token_warnings(path, &token) {
                let (what, fix) = warning
                    .split_once("; ")
                    .map_or((warning.as_str(), ""), |(w, f)| (w, f));
                problems.push(Problem {
                    what: what.to_string(),
                    fix: fix.to_string(),
                });
            }
        }
    }
}

/// The listen address: nothing else may hold it, and this machine must have it.
fn check_listen(listen: &str, problems: &mut Vec<Problem>) {
    if let Err(e) = std::net::TcpListener::bind(listen) {
        let fix = if e.kind() == std::io::ErrorKind::AddrInUse {
            "stop the program that listens there (a RainMaker agent already running?), or \
             change [serve] listen to a free port"
        } else {
            "set [serve] listen to an address of this machine, e.g. 0.0.0.0:7878"
        };
        problems.push(Problem {
            what: format!("the agent cannot listen on {listen}: {e}"),
            fix: fix.into(),
        });
    }
}

/// A folder to mirror: it must exist and be readable.
fn check_source(source: &Path, problems: &mut Vec<Problem>) {
    match std::fs::read_dir(source) {
        Ok(_) => {}
        Err(e) => problems.push(Problem {
            what: format!(
                "the folder to mirror, {}, cannot be read: {e}",
                source.display()
            ),
            fix: "set [[folder]] source to the platform's folder, and run RainMaker as a user \
                  who can read it"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Serve;

    fn serve(root: &Path, token: &Path, listen: &str) -> Config {
        Config {
            serve: Some(Serve {
                root: root.to_path_buf(),
                listen: listen.into(),
                token_file: token.to_path_buf(),
                insecure: false,
                name: None,
                trash_days: None,
                admin_token_file: None,
                push_to: None,
                subscribe_token_file: None,
                subscribe: None,
            }),
            ..Config::default()
        }
    }

    fn private_token(path: &Path) {
        std::fs::write(path, "a-long-random-secret-of-many-characters\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn a_ready_configuration_has_no_problems_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let token = dir.path().join("token");
        private_token(&token);
        assert_eq!(check(&serve(&root, &token, "127.0.0.1:0")), Vec::new());
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "the write probe is removed"
        );
    }

    #[test]
    fn a_missing_root_and_token_and_a_taken_port_are_each_named_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = held.local_addr().unwrap().to_string();
        let root = dir.path().join("no such root");
        let token = dir.path().join("no-token");
        let problems = check(&serve(&root, &token, &listen));
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].what.contains("no such root") && problems[0].fix.contains("mkdir"));
        assert!(problems[1].what.contains("no-token") && problems[1].fix.contains("secret"));
        assert!(problems[2].what.contains(&listen) && problems[2].fix.contains("free port"));
    }

    #[cfg(unix)]
    #[test]
    fn a_token_others_can_read_is_named_with_its_fix() {
        use crate::config::{Folder, Mode, Target};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        private_token(&token);
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = Config {
            folders: vec![Folder {
                source: dir.path().join("missing source"),
                mode: Mode::Manual,
                bwlimit: None,
                exclude: Vec::new(),
                preset: None,
                targets: vec![Target {
                    name: None,
                    url: "wss://127.0.0.1:1".into(),
                    token_file: token.clone(),
                    fingerprint: None,
                }],
            }],
            ..Config::default()
        };
        let problems = check(&config);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].what.contains("missing source"));
        assert!(
            problems[1].what.contains("other users") && problems[1].fix.contains("chmod 600"),
            "{problems:#?}"
        );
    }
}
