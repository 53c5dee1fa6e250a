//! What the tests need before they run: packages, a throw-away PostgreSQL,
//! npm packages, an S3-compatible server, guest images.
//!
//! Each prerequisite is a module with one `prepare` function that makes the
//! thing available and returns the environment variables that tell the tests
//! where it is, plus whatever must stay alive while they run (a server
//! process, stopped on drop). A test whose variable is missing skips with a
//! loud line (or fails under `CI=true`; see `hangar-test-harness`).
//!
//! Slow things (npm packages, guest kernels, images) are cached outside the
//! clone under [`cache_dir`], keyed by their inputs, so a second run is fast
//! and a fresh machine still works.

pub(crate) mod images;
mod npm;
mod packages;
mod postgres;
pub(crate) mod reference;
mod s3;

use std::path::{Path, PathBuf};

use anyhow::Result;

/// Environment for the tests, and the processes that must outlive them.
#[derive(Default)]
pub(crate) struct TestEnv {
    /// Variables that stay true after this process exits (paths in the cache).
    pub(crate) vars: Vec<(String, String)>,
    /// Variables that point at a server in `guards`: true only while it lives.
    pub(crate) server_vars: Vec<(String, String)>,
    /// Dropped after the tests: stops servers, removes temporary data.
    pub(crate) guards: Vec<Box<dyn std::any::Any>>,
}

impl TestEnv {
    /// Every variable, for a command run while the servers live.
    pub(crate) fn all_vars(&self) -> impl Iterator<Item = &(String, String)> {
        self.vars.iter().chain(&self.server_vars)
    }
}

pub(crate) fn all(root: &Path) -> Result<TestEnv> {
    let mut env = TestEnv::default();
    packages::ensure(&packages::needed())?;
    postgres::prepare(root, &mut env)?;
    images::prepare(root, &mut env)?;
    npm::prepare(root, &mut env)?;
    s3::prepare(root, &mut env)?;
    Ok(env)
}

/// Only the npm clients (for `cargo xtask bench-cache`).
pub(crate) fn npm_only(root: &Path, env: &mut TestEnv) -> Result<()> {
    packages::ensure(&packages::needed())?;
    npm::prepare(root, env)
}

/// Where slow-to-rebuild test inputs are cached, outside the clone.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HANGAR_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("hangar")
}
