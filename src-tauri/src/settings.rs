//! The tray's settings are RainMaker's configuration file (`rainmaker.toml` in the OS config
//! folder, or `RAINMAKER_CONFIG`), the same file the agent reads: the servers, the folder and
//! its targets, schedule, exclusions and bandwidth cap, and the guard's thresholds. Pairing
//! tokens are kept in files beside it, readable only by the user.

use crate::error::UiError;
use rainmaker_engine::config::{self, Config};
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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("toml.tmp");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// The folder that holds the pairing tokens of the servers added in the dashboard.
pub fn token_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("tokens")
}

/// Stores a server's pairing token in its own file (mode 0600 on Unix); returns the path.
pub fn write_token(config_path: &Path, server: &str, token: &str) -> Result<PathBuf, UiError> {
    write_secret(config_path, server, "token", token)
}

/// Stores a server's admin token (`NAME.admin`), like [`write_token`].
pub fn write_admin_token(
    config_path: &Path,
    server: &str,
    token: &str,
) -> Result<PathBuf, UiError> {
    write_secret(config_path, server, "admin", token)
}

fn write_secret(
    config_path: &Path,
    server: &str,
    extension: &str,
    token: &str,
) -> Result<PathBuf, UiError> {
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
    let path = dir.join(format!("{safe}.{extension}"));
    let temp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        std::io::Write::write_all(&mut file, token.trim().as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, &path)?;
    Ok(path)
}

/// Reads a token file.
pub fn read_token(path: &Path) -> Result<String, UiError> {
    config::read_token(path).map_err(|e| UiError::new("config", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_configuration_and_token_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rainmaker").join("rainmaker.toml");
        assert_eq!(load(&path).unwrap(), Config::default(), "no file: empty");
        let token = write_token(&path, "cloud a/1", "secret\n").unwrap();
        assert_eq!(token.file_name().unwrap(), "cloud_a_1.token");
        assert_eq!(read_token(&token).unwrap(), "secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "only the user reads a token");
        }
        let mut config = Config::default();
        config.servers.push(config::Server {
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
