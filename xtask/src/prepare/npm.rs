//! The real `@actions/cache` npm clients the cache server is tested against.
//!
//! `crates/cache/tests/node/package.json` + `package-lock.json` (committed;
//! `node_modules` never is) are installed with `npm ci` into
//! `<cache_dir>/npm/<hash of both files>/`, outside the clone, so a second
//! run reuses them and a changed lockfile gets a fresh directory. A marker
//! file written after a successful install makes a half-finished install
//! count as missing. `TEST_NODE_MODULES` points the tests at the result.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::TestEnv;

const MARKER: &str = ".hangar-installed";

pub(crate) fn prepare(root: &Path, env: &mut TestEnv) -> Result<()> {
    let src = root.join("crates/cache/tests/node");
    let mut hash = Sha256::new();
    for name in ["package.json", "package-lock.json"] {
        let bytes = std::fs::read(src.join(name)).with_context(|| format!("reading {name}"))?;
        hash.update(name.as_bytes());
        hash.update(&bytes);
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let dir = super::cache_dir().join("npm").join(&key);
    if !dir.join(MARKER).exists() {
        if !super::packages::probe_exists("npm") {
            eprintln!(
                "xtask: WARNING: npm is not installed: the real-client cache tests will skip"
            );
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        for name in ["package.json", "package-lock.json"] {
            std::fs::copy(src.join(name), dir.join(name))?;
        }
        crate::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
        )
        .context("installing the @actions/cache clients")?;
        std::fs::write(dir.join(MARKER), b"")?;
    }
    eprintln!("xtask: @actions/cache clients in {}", dir.display());
    env.vars.push(("TEST_NODE_MODULES".into(), dir.join("node_modules").display().to_string()));
    Ok(())
}
