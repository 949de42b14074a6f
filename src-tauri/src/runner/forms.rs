//! The dashboard's forms, checked before anything changes and saved to the configuration
//! file: a server added (its certificate confirmed, its token tried), renamed or removed; a
//! folder saved, added or removed; the guard's thresholds.

use super::{Online, Runner, overlapping};
use crate::error::{UiCode, UiError};
use crate::settings;
use crate::view::{FolderForm, FolderMode, GuardView, Level};
use rainmaker_engine::config::{Folder, KnownServer, Mode, Target};
use rainmaker_engine::engine::{self, TargetSpec};
use rainmaker_engine::event::Refusal;
use rainmaker_engine::exclude::Exclude;
use rainmaker_engine::pairing::Pairing;
use rainmaker_engine::transport::{self, Address, Role, TransportError, Trust};
use std::path::PathBuf;
use std::time::Duration;

impl Runner {
    /// Connects to `url` (an address, or a pairing code) only as far as TLS and returns its
    /// certificate's fingerprint, for the user to confirm before trusting it. A pairing code's
    /// server must present the certificate the code pins.
    pub async fn peek(&self, url: &str) -> Result<String, UiError> {
        let (url, pinned) = match paired(url)? {
            Some(code) => (code.url(), Some(code.fingerprint)),
            None => (check_url(url)?, None),
        };
        let presented = transport::peek_fingerprint(&url).await?;
        match pinned {
            Some(pinned) if pinned != presented => Err(TransportError::FingerprintChanged {
                peer: url.trim_start_matches("wss://").to_owned(),
                expected: pinned,
                got: presented,
                known_peers: None,
            }
            .into()),
            _ => Ok(presented),
        }
    }

    /// Adds a server once it answered with the confirmed certificate and accepted the token.
    pub async fn add_server(
        &self,
        name: &str,
        url: &str,
        token: &str,
        fingerprint: &str,
        admin_token: Option<&str>,
    ) -> Result<(), UiError> {
        self.save_server(name, url, token, fingerprint, admin_token, None)
            .await
    }

    /// Pairs server `name` again (it was reinstalled, moved, or given new tokens): its new
    /// address, certificate and tokens replace the old ones once it answered with them, and
    /// the folders that mirror to it follow; until then nothing changes.
    pub async fn repair_server(
        &self,
        name: &str,
        url: &str,
        token: &str,
        fingerprint: &str,
        admin_token: Option<&str>,
    ) -> Result<(), UiError> {
        self.server(name)?;
        self.save_server(name, url, token, fingerprint, admin_token, Some(name))
            .await
    }

    /// [`Runner::add_server`], or, with `replacing`, the repair of that server.
    async fn save_server(
        &self,
        name: &str,
        url: &str,
        token: &str,
        fingerprint: &str,
        admin_token: Option<&str>,
        replacing: Option<&str>,
    ) -> Result<(), UiError> {
        // No name given: the server's own name, once it answered.
        let given = match (replacing, name.trim()) {
            (Some(replaced), _) => Some(replaced.to_owned()),
            (None, "") => None,
            (None, name) => Some(check_name(name)?),
        };
        // A pairing code brings the address, the pin and the token; the confirmed fingerprint
        // must be the pinned one.
        let code = paired(url)?;
        let (url, token) = match &code {
            Some(code) => {
                if !token.trim().is_empty() && token.trim() != code.token {
                    return Err(UiError::bad_input(
                        "The pairing token differs from the one in the pairing code; leave it empty.",
                    ));
                }
                if transport::parse_fingerprint(fingerprint).as_ref() != Some(&code.fingerprint) {
                    return Err(UiError::new(
                        UiCode::Fingerprint,
                        "The confirmed certificate is not the one the pairing code pins; check the server again.",
                    ));
                }
                (code.url(), code.token.as_str())
            }
            None => (check_url(url)?, token),
        };
        if token.trim().is_empty() {
            return Err(UiError::bad_input(
                "The pairing token is empty. Copy it from the server's token file.",
            ));
        }
        let fingerprint = transport::parse_fingerprint(fingerprint).ok_or_else(|| {
            UiError::bad_input(
                "The certificate fingerprint is missing or garbled; check the server again.",
            )
        })?;
        {
            let inner = self.lock();
            let others = || {
                inner
                    .config
                    .servers
                    .iter()
                    .filter(|s| Some(s.name.as_str()) != replacing)
            };
            if let Some(name) = &given
                && others().any(|s| &s.name == name)
            {
                return Err(UiError::bad_input(format!(
                    "A server is already named {name:?}."
                )));
            }
            if others().any(|s| s.url == url) {
                return Err(UiError::bad_input(format!("{url} is already in the list.")));
            }
        }
        // The admin token may come as the server's admin code: it must name this server.
        let admin_token = match admin_token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(text) if Pairing::is_code(text) => {
                let code = Pairing::parse(text).map_err(|e| UiError::bad_input(e.to_string()))?;
                if code.role != Role::Admin {
                    return Err(UiError::bad_input(
                        "That is not the server's admin code (rainmaker-admin://…): `rainmaker pair --admin` shows it there.",
                    ));
                }
                if code.url() != url || code.fingerprint != fingerprint {
                    return Err(UiError::bad_input(
                        "That admin code is another server's: its address or certificate differs from this one's.",
                    ));
                }
                Some(code.token)
            }
            other => other.map(str::to_owned),
        };
        let spec = TargetSpec {
            url: url.clone(),
            trust: Trust::Pinned(fingerprint.clone()),
            token: token.trim().to_owned(),
            dialed_in: None,
        };
        let remote = engine::probe(&spec, &self.this_pc).await?;
        let name = match given {
            Some(name) => name,
            None => self.free_name(&remote),
        };
        // Paired again without an admin code: the admin token this PC had is kept, if the
        // server still takes it.
        let kept_admin = match (&admin_token, replacing) {
            (None, Some(replaced)) => self
                .server(replaced)?
                .admin_token_file
                .and_then(|file| settings::read_token(&file).ok()),
            _ => None,
        };
        let mut admin_token = admin_token.or(kept_admin.clone());
        let status = match admin_token.as_deref() {
            Some(admin) => match self.remote_status(&spec, admin).await {
                Ok(status) => Some(status),
                Err(e) if e.code == UiCode::WrongToken && kept_admin.is_some() => {
                    self.log(
                        Level::Warn,
                        format!(
                            "{name} no longer takes the admin token this PC had: Pair it again with its admin code to command it"
                        ),
                    );
                    admin_token = None;
                    None
                }
                Err(e) if e.code == UiCode::WrongToken => {
                    return Err(UiError::refused(
                        Refusal::WrongToken,
                        "The server refused the admin token. Copy it again from the server (`rainmaker pair --admin` shows its admin code).",
                    ));
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let admin_token = admin_token.as_deref();
        let settings::TokenFiles {
            token: token_file,
            admin: admin_token_file,
        } = settings::write_tokens(&self.config_path, &name, token, admin_token)?;
        let server = KnownServer {
            name: name.clone(),
            url: url.clone(),
            token_file,
            fingerprint: Some(fingerprint),
            admin_token_file,
        };
        let mut unused = Vec::new();
        self.change_config(|config| {
            let Some(replaced) = replacing else {
                config.servers.push(server);
                return Ok(());
            };
            let at = config
                .servers
                .iter()
                .position(|s| s.name == replaced)
                .ok_or_else(|| {
                    UiError::bad_input(format!("There is no server named {replaced:?}."))
                })?;
            let old = std::mem::replace(&mut config.servers[at], server.clone());
            for target in config.folders.iter_mut().flat_map(|f| f.targets.iter_mut()) {
                if target.name.as_deref() == Some(replaced) || target.url == old.url {
                    target.url = server.url.clone();
                    target.token_file = server.token_file.clone();
                    target.fingerprint = server.fingerprint.clone();
                }
            }
            unused = unused_token_files(config, &settings::token_dir(&self.config_path), old);
            Ok(())
        })?;
        for file in unused {
            let _ = std::fs::remove_file(file);
        }
        self.lock().online.insert(
            name.clone(),
            Online {
                ok: true,
                remote_name: Some(remote.clone()),
                reason: None,
                status,
            },
        );
        self.log(
            Level::Info,
            match replacing {
                Some(_) => format!("Paired server {name} again ({url}, calls itself {remote})"),
                None => format!("Added server {name} ({url}, calls itself {remote})"),
            },
        );
        Ok(())
    }

    /// Renames a server (its targets follow).
    pub fn rename_server(&self, old: &str, new: &str) -> Result<(), UiError> {
        let new = check_name(new)?;
        self.change_config(|config| {
            if config.servers.iter().any(|s| s.name == new) {
                return Err(UiError::bad_input(format!(
                    "A server is already named {new:?}."
                )));
            }
            let server = config
                .servers
                .iter_mut()
                .find(|s| s.name == old)
                .ok_or_else(|| UiError::bad_input(format!("There is no server named {old:?}.")))?;
            server.name = new.clone();
            for folder in &mut config.folders {
                for target in &mut folder.targets {
                    if target.name.as_deref() == Some(old) {
                        target.name = Some(new.clone());
                    }
                }
            }
            Ok(())
        })?;
        let mut inner = self.lock();
        if let Some(online) = inner.online.remove(old) {
            inner.online.insert(new.clone(), online);
        }
        drop(inner);
        self.log(Level::Info, format!("Renamed server {old} to {new}"));
        Ok(())
    }

    /// Removes a server and stops mirroring to it; nothing on it is touched.
    pub fn remove_server(&self, name: &str) -> Result<(), UiError> {
        let mut unused = Vec::new();
        self.change_config(|config| {
            let at = config
                .servers
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| UiError::bad_input(format!("There is no server named {name:?}.")))?;
            let server = config.servers.remove(at);
            for folder in &mut config.folders {
                folder.targets.retain(|t| t.name.as_deref() != Some(name));
            }
            unused = unused_token_files(config, &settings::token_dir(&self.config_path), server);
            Ok(())
        })?;
        for file in unused {
            let _ = std::fs::remove_file(file);
        }
        self.lock().online.remove(name);
        self.log(
            Level::Info,
            format!("Removed server {name}; its files were left as they are"),
        );
        Ok(())
    }

    /// Sets folder `index`'s source, targets, schedule, exclusions and bandwidth cap, or adds
    /// a folder (`None`). A server receives one folder (an agent has one root), and a folder
    /// is mirrored once: both are refused with what to do instead.
    pub fn save_folder(&self, index: Option<usize>, form: &FolderForm) -> Result<(), UiError> {
        let source = PathBuf::from(form.source.trim());
        if form.source.trim().is_empty() {
            return Err(UiError::bad_input("Pick the folder to mirror."));
        }
        match std::fs::metadata(&source) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(UiError::bad_input(format!(
                    "{} is a file, not a folder.",
                    source.display()
                )));
            }
            Err(e) => {
                return Err(UiError::bad_input(format!(
                    "Cannot open the folder {}: {e}",
                    source.display()
                )));
            }
        }
        let exclude: Vec<String> = form
            .exclude
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Exclude::new(&exclude).map_err(|e| UiError::bad_input(format!("Excluded paths: {e}")))?;
        let mode = match form.mode {
            FolderMode::Manual => Mode::Manual,
            FolderMode::Watch => Mode::Watch,
            FolderMode::Every => {
                let minutes = form.every_minutes.unwrap_or(5.0);
                if !(minutes.is_finite() && (0.25..=24.0 * 60.0).contains(&minutes)) {
                    return Err(UiError::bad_input(
                        "The interval must be between 15 seconds and 24 hours.",
                    ));
                }
                Mode::Every(Duration::from_secs_f64(minutes * 60.0))
            }
        };
        let bwlimit = match form.bwlimit_mbit {
            Some(mbit) if mbit.is_finite() && mbit > 0.0 => Some(mbit * 1e6 / 8.0),
            Some(_) => {
                return Err(UiError::bad_input(
                    "The bandwidth cap must be above 0 Mbit/s (or empty for none).",
                ));
            }
            None => None,
        };
        self.change_config(|config| {
            let mut targets = Vec::new();
            for name in &form.targets {
                let server = config
                    .servers
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| {
                        UiError::bad_input(format!("There is no server named {name:?}."))
                    })?;
                targets.push(Target {
                    name: Some(server.name.clone()),
                    url: server.url.clone(),
                    token_file: server.token_file.clone(),
                    fingerprint: server.fingerprint.clone(),
                });
            }
            if index.is_some_and(|i| i >= config.folders.len()) {
                return Err(UiError::bad_input("That folder was removed meanwhile."));
            }
            for (i, other) in config.folders.iter().enumerate() {
                if Some(i) == index {
                    continue;
                }
                if overlapping(&other.source, &source) {
                    return Err(UiError::bad_input(format!(
                        "{} is already mirrored (or holds, or lies in, {}); edit that folder instead.",
                        other.source.display(),
                        source.display()
                    )));
                }
                if let Some(shared) = other
                    .targets
                    .iter()
                    .find(|t| targets.iter().any(|n: &Target| n.url == t.url))
                {
                    let name = shared.name.clone().unwrap_or_else(|| shared.url.clone());
                    return Err(UiError::bad_input(format!(
                        "{name} already receives {}. A server receives one folder; run a second \
                         agent on it (another port and folder) for this one, and add it as a server.",
                        other.source.display()
                    )));
                }
            }
            let folder = Folder {
                source: source.clone(),
                mode,
                bwlimit,
                exclude: exclude.clone(),
                preset: form.preset.clone().filter(|p| !p.is_empty()),
                targets,
            };
            match index {
                Some(i) => config.folders[i] = folder,
                None => config.folders.push(folder),
            }
            Ok(())
        })?;
        self.log(
            Level::Info,
            format!(
                "Settings saved: {} ({})",
                source.display(),
                match form.mode {
                    FolderMode::Manual => "only on Sync".to_owned(),
                    FolderMode::Watch => "continuous".to_owned(),
                    FolderMode::Every =>
                        format!("every {} minutes", form.every_minutes.unwrap_or(5.0)),
                }
            ),
        );
        Ok(())
    }

    /// Stops mirroring folder `index`; nothing on its targets or in it is touched.
    pub fn remove_folder(&self, index: usize) -> Result<(), UiError> {
        let mut removed = None;
        self.change_config(|config| {
            if index >= config.folders.len() {
                return Err(UiError::bad_input("That folder was removed already."));
            }
            removed = Some(config.folders.remove(index).source);
            Ok(())
        })?;
        if let Some(source) = removed {
            self.log(
                Level::Info,
                format!(
                    "Stopped mirroring {}; the backups keep their copy",
                    source.display()
                ),
            );
        }
        Ok(())
    }

    /// Sets the guard's thresholds.
    pub fn save_guard(&self, form: &GuardView) -> Result<(), UiError> {
        if !(1.0..=100.0).contains(&form.cpu_above) {
            return Err(UiError::bad_input(
                "The CPU threshold must be between 1% and 100%.",
            ));
        }
        let seconds = |value: f64, what: &str| {
            if value.is_finite() && (0.0..=3600.0).contains(&value) {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(UiError::bad_input(format!(
                    "{what} must be between 0 and 3600 seconds."
                )))
            }
        };
        let cpu_for = seconds(form.cpu_for_seconds, "The CPU window")?;
        let resume_after = seconds(form.resume_after_seconds, "The resume delay")?;
        let net = match form.net_above_mbit {
            Some(mbit) if mbit.is_finite() && mbit > 0.0 => Some(mbit * 1e6 / 8.0),
            Some(_) => {
                return Err(UiError::bad_input(
                    "The network threshold must be above 0 Mbit/s (or empty for none).",
                ));
            }
            None => None,
        };
        self.change_config(|config| {
            config.guard.pause_cpu_above = form.cpu_above;
            config.guard.pause_cpu_for = cpu_for;
            config.guard.resume_after = resume_after;
            config.guard.pause_memory_below = form.memory_below_mb.map(|mb| mb << 20);
            config.guard.pause_net_above = net;
            Ok(())
        })?;
        let thresholds = self.lock().config.guard.thresholds();
        self.supervisor.set_guard(thresholds);
        self.log(Level::Info, "Guard thresholds saved".into());
        Ok(())
    }
}

impl Runner {
    /// A name for a server that calls itself `remote`: that name (made fit to be one), with
    /// a number after it when another server has it.
    fn free_name(&self, remote: &str) -> String {
        // Printable characters only, at most 56 bytes (a number may follow, within the 64 a
        // name may have).
        let mut base = String::new();
        for c in remote.chars().filter(|c| !c.is_control() && !is_format(*c)) {
            if base.len() + c.len_utf8() > 56 {
                break;
            }
            base.push(c);
        }
        let base = base.trim().to_owned();
        let base = if base.is_empty() {
            "server".to_owned()
        } else {
            base
        };
        let inner = self.lock();
        let taken = |name: &str| inner.config.servers.iter().any(|s| s.name == name);
        (1..)
            .map(|n| match n {
                1 => base.clone(),
                n => format!("{base}-{n}"),
            })
            .find(|name| !taken(name))
            .expect("a free name")
    }
}

/// The token files of `server`, gone from `config`, that are the dashboard's own (in `dir`)
/// and that no other server or target uses (an older version could give two servers one file).
fn unused_token_files(
    config: &rainmaker_engine::config::Config,
    dir: &std::path::Path,
    server: KnownServer,
) -> Vec<PathBuf> {
    let in_use = |path: &PathBuf| {
        config
            .servers
            .iter()
            .any(|s| &s.token_file == path || s.admin_token_file.as_ref() == Some(path))
            || config
                .folders
                .iter()
                .any(|f| f.targets.iter().any(|t| &t.token_file == path))
    };
    [Some(server.token_file), server.admin_token_file]
        .into_iter()
        .flatten()
        .filter(|p| p.starts_with(dir) && !in_use(p))
        .collect()
}

/// A character that changes how text around it shows (bidirectional overrides, zero-width
/// characters): never part of a name a server gives itself.
fn is_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn check_name(name: &str) -> Result<String, UiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(UiError::bad_input(
            "Give the server a name of 1 to 64 characters.",
        ));
    }
    Ok(name.to_owned())
}

/// Accepts `HOST:PORT` or a wss:// address; returns the wss:// address.
/// The pairing code the user pasted as the address, if it is one.
fn paired(address: &str) -> Result<Option<Pairing>, UiError> {
    if !Pairing::is_code(address) {
        return Ok(None);
    }
    let code = Pairing::parse(address).map_err(|e| UiError::bad_input(e.to_string()))?;
    match code.role {
        Role::Source => {}
        Role::Admin => {
            return Err(UiError::bad_input(
                "That is the server's admin code: paste its pairing code (`rainmaker pair`) as the address, and the admin token below.",
            ));
        }
        Role::Subscriber => {
            return Err(UiError::bad_input(
                "That is the server's subscribe code, for a server that receives from it: paste its pairing code (`rainmaker pair`) as the address.",
            ));
        }
    }
    Ok(Some(code))
}

fn check_url(url: &str) -> Result<String, UiError> {
    let url = url.trim().trim_end_matches('/');
    let address = Address::parse_host_port(url).map_err(|e| {
        let why = match e {
            TransportError::BadUrl { reason, .. } => reason,
            other => other.to_string(),
        };
        UiError::bad_input(format!(
            "{url:?} is not a server address ({why}); write HOST:PORT, e.g. 203.0.113.5:7878 \
             (the port `rainmaker serve` listens on)."
        ))
    })?;
    if !address.tls {
        return Err(UiError::bad_input(format!(
            "{url:?} is not encrypted (ws://); write HOST:PORT, e.g. 203.0.113.5:7878."
        )));
    }
    Ok(address.url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_before_any_connection() {
        assert_eq!(
            check_url("203.0.113.5:7878").unwrap(),
            "wss://203.0.113.5:7878"
        );
        assert_eq!(check_url("wss://[::1]:7878/").unwrap(), "wss://[::1]:7878");
        assert_eq!(
            check_url("WSS://Cloud.Example:7878").unwrap(),
            "wss://cloud.example:7878",
            "one parser: the scheme and host in any case"
        );
        for bad in [
            "cloud.example.com",
            "http://x:1",
            "x:0",
            ":7878",
            "x:99999",
            "ws://x:1",
        ] {
            assert_eq!(check_url(bad).unwrap_err().code, UiCode::BadInput, "{bad}");
        }
        assert!(check_name("  ").is_err() && check_name(&"n".repeat(65)).is_err());
    }
}
