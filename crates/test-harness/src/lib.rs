//! Helpers shared by the test suites of every crate. Test-only: no
//! production crate depends on this one.

use std::future::Future;
use std::time::Duration;

/// Returns the value of the environment variable `var` that points a test at
/// a real dependency (a PostgreSQL server, node modules, QEMU images...).
///
/// When it is missing the test cannot run: on a laptop it skips with one
/// loud line saying what and why; under `CI=true` it fails, because CI
/// installs everything and a silent skip there would hide a broken setup.
/// `cargo xtask test` sets these variables.
pub fn require_env(var: &str, what: &str) -> Option<String> {
    if let Ok(value) = std::env::var(var)
        && !value.is_empty()
    {
        return Some(value);
    }
    let message =
        format!("SKIPPED: {what}: {var} is not set (run `cargo xtask test` to set it up)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{message}, and CI=true forbids skipping"
    );
    eprintln!("{message}");
    None
}

/// Polls `condition` every 20 ms until it returns `Some`, or panics with
/// `what` after `timeout`. Tests wait for conditions, they never sleep.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
