//! `cargo deny` (a step of `cargo xtask test`, and `cargo xtask deny`): the
//! shipped binary's dependency graph, checked against `deny.toml` for
//! banned crates (`rsa`), duplicate versions, licenses, sources and known
//! advisories.
//!
//! cargo-deny is installed from crates.io at [`VERSION`] into the cache
//! directory outside the clone (built once per version). The RustSec
//! advisory database is a git repository on github.com: where it can be
//! fetched (or a copy exists from an earlier fetch) advisories are checked;
//! on a machine that reaches only package registries, as these do, that
//! one check is skipped with a loud line, and the others still run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// The cargo-deny release the checks are written for.
pub(crate) const VERSION: &str = "0.20.2";

pub(crate) fn run(root: &Path) -> Result<()> {
    let deny = install()?;
    let check = |which: &[&str]| {
        let mut cmd = Command::new(&deny);
        cmd.current_dir(root).args(["--offline", "check"]).args(which);
        crate::run(&mut cmd)
    };
    check(&["bans", "licenses", "sources"]).context("cargo deny: bans, licenses, sources")?;
    let mut fetch = Command::new(&deny);
    fetch.current_dir(root).args(["fetch", "db"]);
    let fetched = hangar_exec::output_within(&mut fetch, std::time::Duration::from_secs(120))
        .is_ok_and(|out| out.status.success());
    if fetched || advisory_db_present() {
        if !fetched {
            eprintln!(
                "xtask: WARNING: the RustSec database could not be refreshed (github.com is not \
                 reachable); checking advisories against the copy fetched earlier"
            );
        }
        check(&["advisories"]).context("cargo deny: advisories")?;
    } else {
        eprintln!(
            "xtask: SKIPPED: cargo deny advisories: the RustSec database (a git repository on \
             github.com) cannot be fetched from this machine and no copy is in \
             $CARGO_HOME/advisory-dbs; bans (rsa), licenses, duplicates and sources were checked"
        );
    }
    Ok(())
}

/// `cargo install`s cargo-deny into the cache when it is not there yet.
fn install() -> Result<PathBuf> {
    let root = crate::prepare::cache_dir().join("tools").join(format!("cargo-deny-{VERSION}"));
    let bin = root.join("bin").join("cargo-deny");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("xtask: installing cargo-deny {VERSION} (once per version; a few minutes)");
    let build = crate::prepare::cache_dir().join("tools").join("build");
    crate::run(
        Command::new("cargo")
            .args(["install", "cargo-deny", "--locked", "--version", VERSION, "--root"])
            .arg(&root)
            .env("CARGO_TARGET_DIR", &build),
    )
    .context("installing cargo-deny from crates.io")?;
    let _ = std::fs::remove_dir_all(&build);
    Ok(bin)
}

/// A database fetched earlier: a directory in `$CARGO_HOME/advisory-dbs`
/// with RustSec's `crates/` tree (a failed fetch leaves only a lock file).
fn advisory_db_present() -> bool {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let Some(Ok(entries)) = cargo_home.map(|home| std::fs::read_dir(home.join("advisory-dbs")))
    else {
        return false;
    };
    entries.flatten().any(|entry| entry.path().join("crates").is_dir())
}
