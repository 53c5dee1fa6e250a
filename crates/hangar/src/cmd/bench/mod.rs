//! `hangar bench …`: reproducible measurements whose figures go into
//! docs/BENCHMARKS.md. Each prints one JSON object on stdout.

mod microvm;
mod webhook_vm;
mod webhooks;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Signed workflow_job deliveries against a `hangar serve` child process
    /// over loopback: sustained rate and time to 2xx.
    Webhooks(webhooks::Args),
    /// microVM provider: cold boot, snapshot restore, dispatch into a
    /// pre-booted VM, 4 boots at once, idle RSS (QEMU on this host).
    Microvm(microvm::Args),
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Webhooks(args) => webhooks::run(args).await,
        Command::Microvm(args) => microvm::run(args).await,
    }
}
