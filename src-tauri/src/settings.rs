//! The tray's settings are RainMaker's configuration file (`rainmaker.toml` in the OS config
//! folder, or `RAINMAKER_CONFIG`), the same file the agent reads: the servers, the folder and
//! its targets, schedule, exclusions and bandwidth cap, and the guard's thresholds. Pairing
//! tokens are kept in files beside it, readable only by the user.

use crate::error::{UiCode, UiError};
use rainmaker_engine::config::{self, Config};
use rainmaker_engine::fs::Keep;
use std::path::{Path, PathBuf};

/// Reads the configuration; a missing file is an empty configuration.
pub fn load(path: &Path) -> Result<Config, UiError> {
    if !path.exists() {
        return Ok(Config::default());
    }
    Ok(config::load(path)?)
}

/// Writes the configuration atomically: a crash leaves the old file or the new one.
pub fn save(path: &Path, config: &Config) -> Result<(), UiError> {
    let text = config::render(config);
    // Never write what could not be read back.
    config::parse(&text, path)?;
    rainmaker_engine::fs::write_atomic(path, text.as_bytes(), Keep::Durable)?;
    Ok(())
}

/// The folder that holds the pairing tokens of the servers added in the dashboard.
pub fn token_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("tokens")
}

/// Where a server's secrets live: `KEY.token` (pairing) and `KEY.admin` in [`token_dir`].
/// The key is the server's name made safe for a file name, plus a number when another server
/// already holds that key, so no two servers ever share a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFiles {
    pub token: PathBuf,
    pub admin: Option<PathBuf>,
}

/// Stores a new server's pairing token and, if given, its admin token, each in a file of its
/// own (mode 0600 on Unix) under a key no other server has.
pub fn write_tokens(
    config_path: &Path,
    server: &str,
    token: &str,
    admin: Option<&str>,
) -> Result<TokenFiles, UiError> {
    let dir = token_dir(config_path);
    std::fs::create_dir_all(&dir)?;
    let safe: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Claims the key by creating its token file: two names that look alike (`cloud a`,
    // `cloud/a`) or two adds at once still get a file each.
    let key = (1u32..)
        .map(|n| {
            if n == 1 {
                safe.clone()
            } else {
                format!("{safe}-{n}")
            }
        })
        .find(|key| {
            !dir.join(format!("{key}.admin")).exists()
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dir.join(format!("{key}.token")))
                    .is_ok()
        })
        .expect("some key is free");
    let token = write_secret(&dir.join(format!("{key}.token")), token)?;
    let admin = match admin {
        Some(admin) => Some(write_secret(&dir.join(format!("{key}.admin")), admin)?),
        None => None,
    };
    Ok(TokenFiles { token, admin })
}

fn write_secret(path: &Path, token: &str) -> Result<PathBuf, UiError> {
    rainmaker_engine::fs::write_atomic(path, token.trim().as_bytes(), Keep::Private)?;
    Ok(path.to_path_buf())
}

/// Reads a token file.
pub fn read_token(path: &Path) -> Result<String, UiError> {
    config::read_token(path).map_err(|e| UiError::new(UiCode::Config, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_configuration_and_token_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rainmaker").join("rainmaker.toml");
        assert_eq!(load(&path).unwrap(), Config::default(), "no file: empty");
        let token = write_tokens(&path, "cloud a/1", "secret\n", None)
            .unwrap()
            .token;
        assert_eq!(token.file_name().unwrap(), "cloud_a_1.token");
        assert_eq!(read_token(&token).unwrap(), "secret");
        let other = write_tokens(&path, "cloud/a 1", "other", Some("admin")).unwrap();
        assert_eq!(
            other.token.file_name().unwrap(),
            "cloud_a_1-2.token",
            "a name that looks alike gets a key of its own"
        );
        assert_eq!(
            read_token(&token).unwrap(),
            "secret",
            "and leaves the first alone"
        );
        assert_eq!(read_token(&other.admin.unwrap()).unwrap(), "admin");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "only the user reads a token");
        }
        let mut config = Config::default();
        config.servers.push(config::KnownServer {
            name: "cloud a/1".into(),
            url: "wss://127.0.0.1:7878".into(),
            token_file: token,
            fingerprint: None,
            admin_token_file: None,
        });
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
    }
}
