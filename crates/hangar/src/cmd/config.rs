//! `hangar config check`: validate a file without starting anything.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::config::{Effective, HangarConfig, Overrides};

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Check a config file; exits non-zero with the file, key and problem.
    Check {
        /// The file to check (default: HANGAR_CONFIG, else ./hangar.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub(crate) fn run(command: Command) -> Result<()> {
    let Command::Check { config } = command;
    let Some(path) = crate::config_path(config) else {
        bail!("no config file given: pass --config FILE (or set HANGAR_CONFIG)");
    };
    let parsed = match HangarConfig::load(&path) {
        Ok(parsed) => parsed,
        Err(error) => bail!("{error}"),
    };
    let effective = Effective::resolve(&parsed, Overrides::default());
    println!("{}: ok", path.display());
    println!("  listen:         {}", effective.listen);
    println!("  data dir:       {}", effective.data_dir.display());
    println!("  database:       {}", redact_url(&effective.database_url));
    println!(
        "  webhook secret: {}",
        if effective.webhook_secret.is_some() { "set" } else { "MISSING" }
    );
    println!("  api token:      {}", if effective.api_token.is_some() { "set" } else { "not set" });
    if parsed.pools.is_empty() {
        println!(
            "  pools:          none: with GitHub credentials, the default pool `default` \
             (self-hosted, linux, x64; provider auto)"
        );
    }
    for pool in &parsed.pools {
        println!(
            "  pool {}: provider {}, labels {}, max_runners {}",
            pool.name,
            pool.provider,
            pool.runner_labels(),
            pool.max_runners
        );
    }
    Ok(())
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
