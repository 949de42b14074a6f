//! `rainmaker init`, `rainmaker config check`, and filling the command line's gaps from the
//! configuration file (flags always win).

use anyhow::{Context, Result, bail};
use rainmaker_engine::config::{self, Config, Mode};
use rainmaker_engine::guard::Thresholds;
use std::path::{Path, PathBuf};

/// The configuration file to use: `--config`, else the default location.
pub fn path(given: Option<&Path>) -> PathBuf {
    given.map_or_else(config::default_path, Path::to_path_buf)
}

/// Loads the configuration; a missing default file is an empty configuration, a missing
/// file named with `--config` is an error.
pub fn load(given: Option<&Path>) -> Result<(Config, PathBuf)> {
    let path = path(given);
    if given.is_none() && !path.exists() {
        return Ok((Config::default(), path));
    }
    let config = config::load(&path)?;
    Ok((config, path))
}

/// `rainmaker init`.
pub fn init(given: Option<&Path>, force: bool) -> Result<()> {
    let path = path(given);
    if path.exists() && !force {
        bail!(
            "{} already exists; check it with `rainmaker config check`, or pass --force to replace it",
            path.display()
        );
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, config::TEMPLATE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {}; edit it, then run `rainmaker config check`",
        path.display()
    );
    Ok(())
}

/// `rainmaker config check`.
pub fn check(given: Option<&Path>) -> Result<()> {
    let path = path(given);
    let config = config::load(&path)?;
    let mut said = Vec::new();
    if let Some(serve) = &config.serve {
        said.push(format!(
            "receives into {} on {}",
            serve.root.display(),
            serve.listen
        ));
    }
    for folder in &config.folders {
        let mode = match folder.mode {
            Mode::Manual => "manually".to_string(),
            Mode::Watch => "continuously".to_string(),
            Mode::Every(d) => format!("every {}", humantime::format_duration(d)),
        };
        said.push(format!(
            "mirrors {} to {} target(s) {mode}",
            folder.source.display(),
            folder.targets.len()
        ));
    }
    if said.is_empty() {
        said.push("neither serves nor mirrors anything yet".into());
    }
    let problems = rainmaker_engine::app::ready::check(&config);
    if problems.is_empty() {
        println!("{}: ok; this machine {}", path.display(), said.join("; "));
        return Ok(());
    }
    println!(
        "{}: the file is well formed (this machine {}), but {} thing(s) would keep it from \
         working here:",
        path.display(),
        said.join("; "),
        problems.len()
    );
    for problem in &problems {
        println!("- {}\n  fix: {}", problem.what, problem.fix);
    }
    bail!(
        "{} is not ready on this machine ({} problem(s) above); checked as this user, so run \
         the check as the user the agent runs as",
        path.display(),
        problems.len()
    )
}

/// The guard's thresholds from the configuration.
pub fn thresholds(config: &Config) -> Thresholds {
    config.guard.thresholds()
}
