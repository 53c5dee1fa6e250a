//! `hangar`: the one binary. Each subcommand lives in `cmd/`.

mod cmd;
mod config;
mod lifecycle;
mod metrics;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hangar",
    version,
    about = "Self-hosted GitHub Actions runners, one fresh machine per job"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks and run the control plane.
    Serve(cmd::serve::Args),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// List jobs (from a running hangar's database, through its API).
    Jobs(cmd::jobs::ListArgs),
    /// Show one job and its timeline.
    Job(cmd::jobs::ViewArgs),
    /// Run the simulator, hangar and the process provider together on a burst of jobs.
    Demo(cmd::demo::Args),
    /// Build and list microVM guest images (kernel + root filesystem).
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// Inspect and prune the GitHub Actions cache.
    Cache(cmd::cache::Args),
    /// Reproducible measurements (see docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

/// Where `--config` points, else `HANGAR_CONFIG`, else `./hangar.toml` when
/// it exists; `None` means embedded defaults.
pub(crate) fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("HANGAR_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("hangar.toml")).filter(|p| p.exists()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(args).await,
            Command::Config(command) => cmd::config::run(command),
            Command::Jobs(args) => cmd::jobs::list(args).await,
            Command::Job(args) => cmd::jobs::view(args).await,
            Command::Image(command) => cmd::image::run(command).await,
            Command::Cache(args) => cmd::cache::run(args).await,
            Command::Bench(command) => cmd::bench::run(command).await,
            Command::Demo(args) => cmd::demo::run(args).await,
        }
    })
}
