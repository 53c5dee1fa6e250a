//! `hangar-standin-runner`: what a microVM or child process runs in place of
//! `run.sh --jitconfig <encoded>` when the "GitHub" is hangar-simulator.
//!
//! Exit status mirrors `run.sh`: 0 after the job, and 0 when the
//! registration was deleted before a job came; 1 on a broken config or when
//! the server stayed unreachable. As with the real runner, the job's result
//! is reported to the server, not through the exit status.

use std::process::ExitCode;

use clap::Parser;

/// Run one job from the GitHub simulator with a JIT config, then exit.
#[derive(Debug, Parser)]
#[command(name = "hangar-standin-runner", version)]
struct Args {
    /// Optional `run` verb, as in `Runner.Listener run --jitconfig ...`.
    #[arg(value_parser = ["run"])]
    verb: Option<String>,
    /// The `encoded_jit_config` from generate-jitconfig.
    #[arg(long, env = "ACTIONS_RUNNER_INPUT_JITCONFIG", hide_env_values = true)]
    jitconfig: String,
    /// Directory to write `.runner`/`.credentials` into while running (the
    /// real runner writes them into its root); nothing is written if unset.
    #[arg(long)]
    root: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hangar-standin-runner: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = hangar_standin_runner::RunOptions { root: args.root, ..Default::default() };
    match runtime.block_on(hangar_standin_runner::run(&args.jitconfig, &options)) {
        Ok(outcome) => {
            eprintln!("hangar-standin-runner: {outcome}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            let mut message = format!("hangar-standin-runner: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
