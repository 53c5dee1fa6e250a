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
use hangar_provider_microvm::{MicrovmConfig, MicrovmProvider};
use hangar_provider_process::ProcessProvider;
use hangar_scheduler::Lifecycle;
use hangar_scheduler::config::PoolConfig;
use hangar_store::Store;
use hangar_types::PoolName;
use tokio::sync::Notify;

use crate::config::HangarConfig;

/// Builds and spawns the lifecycle; `Ok(None)` when no pool is configured
/// (hangar then only records webhooks).
pub(crate) async fn start(
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
            "microvm" => Arc::new(microvm_provider(i, pool, data_dir).await?),
            other => bail!(
                "config: key `pools[{i}].provider`: `{other}` is not built into this hangar \
                 (expected `microvm` or `process`)"
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

/// A microVM pool. Its `settings` are a `MicrovmConfig`; `state_dir`
/// defaults to `<data_dir>/vms/<pool>`, and `kernel`/`rootfs` to the newest
/// image `hangar image build` left in the image cache.
async fn microvm_provider(i: usize, pool: &PoolConfig, data_dir: &Path) -> Result<MicrovmProvider> {
    let mut settings = pool.settings.clone();
    let state_dir = data_dir.join("vms").join(&pool.name.0);
    settings.entry("state_dir").or_insert_with(|| state_dir.display().to_string().into());
    if !settings.contains_key("kernel") || !settings.contains_key("rootfs") {
        let cache =
            crate::cmd::image::cache_dir(std::env::var_os("HANGAR_CACHE_DIR").map(Into::into));
        let newest = hangar_provider_microvm::image::image_list(&cache).into_iter().next();
        let Some(image) = newest else {
            bail!(
                "config: pools[{i}] (microvm): no `settings.kernel`/`settings.rootfs` and no image in {} \
                 (build one with `hangar image build SPEC`)",
                cache.display()
            );
        };
        settings.entry("kernel").or_insert_with(|| image.kernel.display().to_string().into());
        settings.entry("rootfs").or_insert_with(|| image.rootfs.display().to_string().into());
    }
    let config: MicrovmConfig = settings.try_into().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("config: pools[{i}].settings (microvm): {}", e.message().trim())
    })?;
    let provider = MicrovmProvider::new(pool.name.clone(), config)
        .await
        .with_context(|| format!("starting the microVM provider of pool {}", pool.name))?;
    let health = provider.health().await;
    if !health.ok {
        tracing::warn!(pool = %pool.name, problem = %health.message, "The microVM provider cannot launch yet.");
    }
    Ok(provider)
}
