//! `hangar config check`: validate a file without starting anything.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use hangar::config::{Overrides, ProviderConfig};

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
    // The same door `hangar serve` goes through, with the same environment.
    let effective =
        match hangar::config::load(Some(&path), &hangar::config::process_env, Overrides::default())
        {
            Ok(effective) => effective,
            Err(error) => bail!("{error}"),
        };
    println!("{}: ok", path.display());
    println!("  listen:         {}", effective.listen);
    println!("  data dir:       {}", effective.data_dir.display());
    println!("  database:       {}", redact_url(effective.database_url.expose()));
    println!(
        "  webhook secret: {}",
        if effective.webhook_secret.is_some() { "set" } else { "MISSING" }
    );
    println!("  api token:      {}", if effective.api_token.is_some() { "set" } else { "not set" });
    if let Some(why) = &effective.runners_off {
        println!("  pools:          none: {why}");
    } else if effective.file.pools.is_empty() {
        println!("  pools:          none in the file: the default pool `default`");
    }
    for pool in &effective.pools {
        let isolation = match &pool.provider {
            ProviderConfig::Process(_) => " (NOT isolated)",
            ProviderConfig::Auto(auto) if auto.allow_unisolated => {
                " (microVMs, else local processes: NOT isolated)"
            }
            ProviderConfig::Auto(_) => " (microVMs, else unhealthy)",
            ProviderConfig::Microvm(_) => "",
        };
        println!(
            "  pool {}: provider {}{isolation}, labels {}, max_runners {}",
            pool.name,
            pool.provider.kind(),
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
