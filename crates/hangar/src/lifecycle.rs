//! Starts the runner lifecycle (reconciler + lost-webhook recovery) from
//! the `[scheduler]`, `[[pools]]` and `[github]` sections.
//!
//! This is where provider kinds named in the config become provider
//! values: the closed list of kinds lives here, in the binary, so the
//! scheduler never depends on a provider implementation. A kind this
//! build does not include is a config error naming the pool, not a panic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hangar_github::{RestClient, RunnerScope};
use hangar_provider::Provider;
use hangar_provider_process::ProcessProvider;
use hangar_scheduler::Lifecycle;
use hangar_store::Store;
use hangar_types::PoolName;
use tokio::sync::Notify;

use crate::config::HangarConfig;

/// Builds and spawns the lifecycle; `Ok(None)` when no pool is configured
/// (hangar then only records webhooks).
pub(crate) fn start(
    config: &HangarConfig,
    store: &Store,
    data_dir: &Path,
    wake: Arc<Notify>,
) -> Result<Option<Arc<Lifecycle>>> {
    if config.pools.is_empty() {
        tracing::info!("No [[pools]] configured: jobs are recorded, no runners are started.");
        return Ok(None);
    }
    hangar_scheduler::config::validate(&config.scheduler, &config.pools)
        .map_err(|e| anyhow::anyhow!("config: key `{}`: {}", e.key, e.expected))?;
    let client = config
        .github
        .client_config(|var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("config: {e}"))?
        .context("pools are configured but GitHub credentials are not: set [github] or HANGAR_GITHUB_TOKEN")?;
    let github = Arc::new(RestClient::new(client).context("building the GitHub client")?);
    let scope_text = config.scheduler.runner_scope.as_deref().unwrap_or_default();
    let scope = RunnerScope::parse(scope_text).with_context(|| {
        format!("config: key `scheduler.runner_scope`: cannot parse {scope_text:?}")
    })?;
    let mut providers: HashMap<PoolName, Arc<dyn Provider>> = HashMap::new();
    for (i, pool) in config.pools.iter().enumerate() {
        let provider: Arc<dyn Provider> = match pool.provider.as_str() {
            "process" => {
                let root = data_dir.join("runners").join(&pool.name.0);
                Arc::new(
                    ProcessProvider::from_settings(&pool.settings, &root)
                        .map_err(|e| anyhow::anyhow!("config: pools[{i}]: {e}"))?,
                )
            }
            other => bail!(
                "config: key `pools[{i}].provider`: `{other}` is not built into this hangar (expected `process`)"
            ),
        };
        providers.insert(pool.name.clone(), provider);
    }
    let lifecycle = Lifecycle::new(
        store.clone(),
        github,
        scope,
        config.scheduler.clone(),
        config.pools.clone(),
        providers,
        wake,
    );
    lifecycle.spawn();
    lifecycle.recovery_spawn();
    tracing::info!(pools = config.pools.len(), "Runner lifecycle started.");
    Ok(Some(lifecycle))
}
