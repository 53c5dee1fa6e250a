//! Project automation, run as `cargo xtask <command>`.
//!
//! `cargo xtask test` is *the* test command: the README tells users to run
//! it and `.ci/run` calls it. It installs and starts what the tests need
//! (see `prepare`), then runs every test, then the lints. Nothing here is a
//! shell script, so it is checked by the compiler like the rest.

mod bench_cache;
mod deny;
mod prepare;
mod readme;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "hangar project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prepare everything the tests need, run every test, then fmt, clippy, tidy and deny.
    /// With arguments, runs only the tests they select, and no lints.
    Test {
        /// Arguments passed on to `cargo nextest run` (e.g. `-p hangar-cache`
        /// or a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// Check the architecture invariants that a command can check.
    Tidy,
    /// `cargo deny` on the shipped binary's dependencies (`deny.toml`; a
    /// step of `test`).
    Deny,
    /// Run the README's `cargo run` commands as a new user would (a step of
    /// `test`): `serve` must listen, answer /healthz and stop cleanly on
    /// SIGTERM; `demo` must exit 0.
    Readme,
    /// Only prepare what the tests need (packages, npm modules, the microVM
    /// image) and print, as `export` lines, the variables that outlive it.
    /// The throw-away servers stop when it exits: `cargo xtask test ARGS`
    /// runs a selection of tests against them, or `--hold` keeps them.
    Prepare {
        /// Keep PostgreSQL and the S3 server running, print their variables
        /// too, and stop them when stdin reaches a newline or its end.
        #[arg(long)]
        hold: bool,
    },
    /// `bench microvm --runs N --json` (same as `hangar bench microvm`);
    /// `bench microvm-reference` adds the research's reference guest.
    Bench {
        /// What to measure: `microvm` or `microvm-reference`.
        what: String,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Build the guest agent as images ship it (release, statically
    /// linked) and print its path, for `hangar image build --agent PATH`.
    Agent,
    /// Benchmark the cache server with the real client (docs/BENCHMARKS.md).
    BenchCache {
        /// Runs per size and operation.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Test { nextest_args } => test(&root, &nextest_args),
        Cmd::Tidy => tidy::run(&root),
        Cmd::Deny => deny::run(&root),
        Cmd::Readme => readme::run(&root),
        Cmd::Bench { what, runs, json } => match what.as_str() {
            "microvm" => prepare::images::bench_microvm(&root, runs, json),
            "microvm-reference" => prepare::images::bench_microvm_reference(&root, runs, json),
            other => {
                anyhow::bail!("unknown benchmark {other:?} (known: microvm, microvm-reference)")
            }
        },
        Cmd::Prepare { hold } => {
            let env = prepare::all(&root)?;
            let printed: Vec<_> =
                if hold { env.all_vars().collect() } else { env.vars.iter().collect() };
            for (k, v) in printed {
                println!("export {k}={v:?}");
            }
            if hold {
                eprintln!("xtask: the servers run until a newline or the end of stdin");
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
            } else if !env.server_vars.is_empty() {
                let names: Vec<&str> = env.server_vars.iter().map(|(k, _)| k.as_str()).collect();
                eprintln!(
                    "xtask: not printed, as their servers stop now: {} (use --hold, or `cargo xtask test ARGS`)",
                    names.join(" ")
                );
            }
            drop(env);
            Ok(())
        }
        Cmd::Agent => {
            println!("{}", prepare::images::build_static_agent(&root)?.display());
            Ok(())
        }
        Cmd::BenchCache { runs } => bench_cache::run(&root, runs),
    }
}

fn test(root: &Path, nextest_args: &[String]) -> Result<()> {
    let env = prepare::all(root)?;
    let mut nextest = Command::new("cargo");
    // Not `--all-targets`: benches are `harness = false` programs (they would run
    // in full when nextest lists tests); `cargo bench` runs them.
    nextest.args(["nextest", "run", "--workspace", "--lib", "--bins", "--tests", "--no-fail-fast"]);
    nextest.args(nextest_args);
    nextest.envs(env.all_vars().map(|(k, v)| (k, v)));
    run(&mut nextest).context("tests failed")?;
    if !nextest_args.is_empty() {
        eprintln!(
            "xtask: a selection of tests passed (fmt, clippy and tidy run only without arguments)"
        );
        return Ok(());
    }
    readme::run(root).context("the README's commands")?;
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"])).context("cargo fmt")?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("cargo clippy")?;
    tidy::run(root)?;
    deny::run(root)?;
    drop(env);
    eprintln!("xtask: all tests and checks passed");
    Ok(())
}

/// Runs a command with inherited stdio, failing on a non-zero exit (a
/// missing program is named with its Debian package).
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    Ok(hangar_exec::status(cmd)?)
}

/// Cargo's target directory (`$CARGO_TARGET_DIR`, else `target/`).
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Builds `hangar` in release mode and returns its path (the benchmarks).
pub(crate) fn release_hangar(root: &Path) -> Result<PathBuf> {
    run(Command::new("cargo").args(["build", "--release", "--quiet", "-p", "hangar"]))?;
    Ok(target_dir(root).join("release").join("hangar"))
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the project root")
        .to_owned()
}
