//! `hangar bench …`: reproducible measurements whose figures go into
//! docs/BENCHMARKS.md. Each prints one JSON object on stdout.

mod webhooks;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Signed workflow_job deliveries against a `hangar serve` child process
    /// over loopback: sustained rate and time to 2xx.
    Webhooks(webhooks::Args),
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Webhooks(args) => webhooks::run(args).await,
    }
}
