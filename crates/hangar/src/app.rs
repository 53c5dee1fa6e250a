//! [`App`]: the one place the whole system is built, from a [`Resolved`]
//! configuration. `hangar serve`, `hangar demo`, the benchmarks and the
//! integration tests all build through it; tests swap parts ([`Parts`]: a
//! store, a GitHub client such as one pointed at the simulator, a fake
//! provider for a pool) and keep the rest of the wiring.
//!
//! What it builds, in order: the store; the webhook intake and admin API
//! (`hangar_server`: a public router and an admin router, for two
//! listeners); when pools run, the GitHub client, one provider per
//! pool and the runner [`Lifecycle`] (reconciler, recovery, sagas); the
//! cache server and its eviction schedule. Every background task is owned:
//! the lifecycle's by the lifecycle, the app's own (eviction, the store's
//! retention pass) by the app.
//!
//! # Stopping
//! [`App::serve`] serves both listeners and stops taking requests on both
//! when its shutdown future resolves (in-flight requests finish, idle
//! connections close), then [`App::stop`] goes in order:
//! 1. the app's own tasks end (eviction between passes, the cache's
//!    size-cap evictions after saves, retention after its current batch);
//! 2. the lifecycle stops: no new activation, sagas under way reach their
//!    end (bounded by `scheduler.shutdown_grace`), sagas not yet started
//!    are dropped before any side effect;
//! 3. each provider stops its own capacity (pre-booted VMs, firewall
//!    tables when no runner VM is left); runner instances stay for the
//!    next start;
//! 4. the store is flushed and closed.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use hangar_github::{GitHubApi, RestClient, WebhookSecret};
use hangar_provider::Provider;
use hangar_scheduler::{Lifecycle, LifecycleParts, StopReport};
use hangar_server::{Bound, Limits, Problem, ServerState};
use hangar_store::Store;
use hangar_types::PoolName;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Resolved;

/// Parts a caller brings instead of having them built from the config.
#[derive(Debug, Default)]
pub struct Parts {
    /// Used instead of opening `database_url`.
    pub store: Option<Store>,
    /// Used instead of a `RestClient` from `[github]`.
    pub github: Option<Arc<dyn GitHubApi>>,
    /// Used for these pools instead of building their configured provider.
    pub providers: HashMap<PoolName, Arc<dyn Provider>>,
}

/// The running system (see the module docs).
pub struct App {
    store: Store,
    public: Router,
    admin: Router,
    limits: Limits,
    lifecycle: Option<Arc<Lifecycle>>,
    providers: HashMap<PoolName, Arc<dyn Provider>>,
    cache: Option<hangar_cache::CacheService>,
    /// `[store] retention`, kept by the retention task.
    retention: std::time::Duration,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .field("lifecycle", &self.lifecycle.is_some())
            .field("pools", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds everything; nothing runs in the background until
    /// [`App::start`]. Host probes happen here (QEMU, images); config
    /// mistakes were found by [`crate::config::load`] already.
    pub async fn build(config: &Resolved, parts: Parts) -> Result<App> {
        let Parts { store, github, providers: mut given } = parts;
        // Metrics recorded while building (pool isolation) must be kept.
        hangar_server::prometheus_handle();
        private_dir(&config.data_dir).with_context(|| {
            format!("cannot create the data directory {}", config.data_dir.display())
        })?;
        let store = match store {
            Some(store) => store,
            None => {
                Store::open_with(config.database_url.expose(), config.file.store.open_options())
                    .await
                    .context("opening the store")?
            }
        };
        let secret = config.webhook_secret.as_ref().map(|s| WebhookSecret::new(s.expose()));
        let limits = config.file.server.limits.clone();
        let api_token = config.api_token.as_ref().map(hangar_types::Secret::expose);
        let mut state = ServerState::new(store.clone(), secret, api_token).with_limits(&limits);

        let mut providers = HashMap::new();
        let mut lifecycle = None;
        if let Some(why) = &config.runners_off {
            tracing::warn!("{why}");
        } else if !config.pools.is_empty() {
            if config.file.pools.is_empty() {
                tracing::info!(
                    "No [[pools]] configured: running the default pool `default` (labels \
                     self-hosted, linux, x64; provider auto)."
                );
            }
            let github: Arc<dyn GitHubApi> = match github {
                Some(github) => github,
                None => {
                    let client = config.github.clone().context(
                        "pools are configured but GitHub credentials are not: set [github] or \
                         HANGAR_GITHUB_TOKEN",
                    )?;
                    Arc::new(RestClient::new(client).context("building the GitHub client")?)
                }
            };
            for (i, pool) in config.pools.iter().enumerate() {
                let provider = match given.remove(&pool.name) {
                    Some(provider) => provider,
                    None => crate::providers::provider_build(i, pool, &config.data_dir).await,
                };
                let isolated = if provider.isolated() { 1.0 } else { 0.0 };
                metrics::gauge!(crate::metrics::POOL_ISOLATED, "pool" => pool.name.0.clone())
                    .set(isolated);
                providers.insert(pool.name.clone(), provider);
            }
            let pools = config.pools.iter().map(|p| p.clone().scheduling().0).collect();
            let built = Lifecycle::new(LifecycleParts {
                store: store.clone(),
                github,
                config: config.scheduler.clone(),
                pools,
                providers: providers.clone(),
                wake: state.job_activity(),
            })
            .map_err(|e| anyhow::anyhow!("config: key `{}`: expected {}", e.key, e.expected))?;
            let handle = built.handle();
            state = state.with_problems(Arc::new(move || {
                handle
                    .status()
                    .unhealthy
                    .into_iter()
                    .map(|(pool, reason)| Problem { component: format!("pool {pool}"), reason })
                    .collect()
            }));
            tracing::info!(pools = config.pools.len(), "Runner lifecycle built.");
            lifecycle = Some(built);
        }

        let admin = hangar_server::admin_router(state.clone());
        let mut public = hangar_server::public_router(state);
        let mut cache = None;
        if config.file.cache.enabled {
            // The cache answers on the public listener, at the paths the clients expect.
            let service = cache_service(config, &store)?;
            public = public.merge(hangar_cache::router(service.clone()));
            cache = Some(service);
        }
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let retention = config.file.store.retention;
        Ok(App {
            store,
            public,
            admin,
            limits,
            lifecycle,
            providers,
            cache,
            retention,
            tasks,
            cancel,
        })
    }

    /// Starts every background task: the runner lifecycle (reconciler,
    /// recovery), the cache's eviction schedule and the store's retention.
    pub fn start(&self) {
        let store = self.store.clone();
        self.tasks.spawn(hangar_store::retention_schedule(
            store,
            self.retention,
            self.cancel.clone(),
        ));
        if let Some(cache) = &self.cache {
            self.tasks.spawn(hangar_cache::evict::schedule(cache.clone(), self.cancel.clone()));
        }
        if let Some(lifecycle) = &self.lifecycle {
            lifecycle.start();
        }
    }

    /// The public listener's routes: intake, health, cache (and the admin
    /// routes behind the API token, when one is set).
    pub fn public_router(&self) -> Router {
        self.public.clone()
    }

    /// The admin listener's routes: admin API, metrics, health.
    pub fn admin_router(&self) -> Router {
        self.admin.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The runner lifecycle, when pools run.
    pub fn lifecycle(&self) -> Option<&Arc<Lifecycle>> {
        self.lifecycle.as_ref()
    }

    /// The provider of a pool.
    pub fn provider(&self, pool: &PoolName) -> Option<&Arc<dyn Provider>> {
        self.providers.get(pool)
    }

    /// Serves [`App::public_router`] on `public` and [`App::admin_router`]
    /// on `admin`, with `[server.limits]`, until `shutdown` resolves and the
    /// requests under way on both have been answered.
    pub async fn serve(
        &self,
        public: Bound,
        admin: Bound,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        hangar_server::listen::serve_both(
            (public, self.public_router()),
            (admin, self.admin_router()),
            &self.limits,
            shutdown,
        )
        .await;
    }

    /// The ordered stop (see the module docs).
    pub async fn stop(self) -> StopReport {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(cache) = &self.cache {
            cache.drain().await;
        }
        let report = match &self.lifecycle {
            Some(lifecycle) => lifecycle.stop().await,
            None => StopReport { tasks_left: 0 },
        };
        tracing::info!(
            tasks_left = report.tasks_left,
            "Stopped the runner lifecycle; flushing the store."
        );
        self.store.close().await;
        report
    }
}

/// An admin listener on a free loopback port, for callers (the demo,
/// benchmarks, tests) that serve the app in-process and read no admin route.
pub async fn local_admin_listener() -> Result<Bound> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback admin listener")?;
    Ok(Bound::Tcp(listener))
}

/// The cache service over the app's store, blobs where `[cache] storage`
/// says (default `<data_dir>/cache`).
pub fn cache_service(config: &Resolved, store: &Store) -> Result<hangar_cache::CacheService> {
    hangar_cache::CacheService::new(
        &config.file.cache,
        &config.data_dir,
        Arc::new(store.clone()),
        Arc::new(hangar_cache::clock::SystemClock),
    )
    .context("starting the cache")
}

/// Creates `dir` (with its missing parents) owner-only, 0700: it holds the
/// database (every webhook payload), cache blobs and runner logs. An
/// existing directory that others can read is left as the operator made
/// it, with a warning.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{mode:o}"),
            "the data directory is open to other users: `chmod 700` it"
        );
    }
    Ok(())
}
