//! The reconciler: a background task that reads the world, plans, and
//! hands the plan to the executor.
//!
//! Shaped like omicron's background tasks: an activation takes **no input**
//! (a webhook only says "look again", never "here is what changed"), re-reads
//! providers, GitHub and the store, and never retries inside an activation;
//! whatever failed is planned again next time. Activations come from
//! [`ReconcilerHandle::activate`] (the webhook intake calls it for every
//! accepted `workflow_job`, recovery calls it when it found something) and
//! from a timer. Pokes during an activation coalesce into one more
//! activation, so a burst of 1,000 webhooks costs a handful of activations.
//!
//! Every task the lifecycle runs (the reconciler loop, recovery, each
//! creation and teardown saga) is spawned on its [`TaskTracker`] and sees
//! its [`CancellationToken`]: [`Lifecycle::stop`] ends the loops, lets sagas
//! already past their first side effect reach the end (bounded by
//! `shutdown_grace`), and drops sagas still waiting for a slot, which have
//! done nothing yet (their `planned` record is reaped as interrupted on the
//! next start).
//!
//! Reads happen in a fixed order: provider instances and GitHub
//! registrations *before* the store. Runner ids are persisted before any
//! side effect, so anything hangar made that a provider or GitHub reports is
//! already in the store snapshot read afterwards; what is not there is an
//! orphan.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hangar_github::{GitHubApi, RunnerScope};
use hangar_provider::Provider;
use hangar_store::Store;
use hangar_types::{PoolName, RunnerId, RunnerRecord, Timestamp};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, PoolConfig, SchedulerConfig};
use crate::executor;
use crate::plan::{self, Action, JobView, Registration, Snapshot};

/// Everything the reconciler and its executor tasks share.
#[derive(Debug)]
pub struct Lifecycle {
    pub(crate) store: Store,
    pub(crate) github: Arc<dyn GitHubApi>,
    pub(crate) scope: RunnerScope,
    pub(crate) config: SchedulerConfig,
    pub(crate) pools: Vec<PoolConfig>,
    pub(crate) providers: HashMap<PoolName, Arc<dyn Provider>>,
    /// Runner ids (and orphan names) an executor task is working on.
    pub(crate) in_flight: Mutex<HashSet<String>>,
    pub(crate) launch_slots: Semaphore,
    pub(crate) teardown_slots: Semaphore,
    /// When a job of each pool last ended (for `keep_warm`); read from the
    /// store by the first activation, so it outlives a restart.
    pub(crate) last_completed: Mutex<HashMap<PoolName, Timestamp>>,
    last_completed_loaded: AtomicBool,
    last_registration_scan: Mutex<Option<Instant>>,
    pub(crate) wake: Arc<Notify>,
    status: watch::Sender<Status>,
    /// Every task the lifecycle spawned (see the module docs).
    pub(crate) tasks: TaskTracker,
    /// Cancelled by [`Lifecycle::stop`].
    pub(crate) cancel: CancellationToken,
}

/// What a [`Lifecycle`] is built from.
#[derive(Debug)]
pub struct LifecycleParts {
    pub store: Store,
    pub github: Arc<dyn GitHubApi>,
    /// `runner_scope` must be set.
    pub config: SchedulerConfig,
    pub pools: Vec<PoolConfig>,
    /// One provider per pool.
    pub providers: HashMap<PoolName, Arc<dyn Provider>>,
    /// The notification the webhook intake pokes for every accepted job
    /// change (`hangar_server::ServerState::job_activity`).
    pub wake: Arc<Notify>,
}

/// How [`Lifecycle::stop`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Tasks still running when `shutdown_grace` ran out (they were left
    /// to be cut by the exit; the next start resumes their runners).
    pub tasks_left: usize,
}

/// What the last activation did (for `/metrics`, the API and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub activations: u64,
    pub last_activation: Option<Timestamp>,
    pub jobs_active: usize,
    pub runners_live: usize,
    /// Actions planned last time, by kind.
    pub planned: BTreeMap<String, usize>,
    /// Read or write errors of the last activation (it carried on).
    pub errors: Vec<String>,
    /// Pools whose provider cannot launch, with the reason.
    pub unhealthy: BTreeMap<PoolName, String>,
}

/// How the rest of hangar pokes the reconciler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReconcilerHandle {
    wake: Arc<Notify>,
    status: watch::Receiver<Status>,
}

impl ReconcilerHandle {
    /// Asks for an activation soon. Never blocks; pokes coalesce.
    pub fn activate(&self) {
        self.wake.notify_one();
    }

    /// The status of the latest activation.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until an activation that started after this call has finished.
    pub async fn activated(&self) {
        let mut status = self.status.clone();
        let seen = status.borrow_and_update().activations;
        self.activate();
        while status.changed().await.is_ok() {
            if status.borrow().activations > seen + 1 {
                return;
            }
        }
    }
}

impl Lifecycle {
    /// Builds the shared state; nothing runs until [`Lifecycle::start`].
    pub fn new(parts: LifecycleParts) -> Result<Arc<Lifecycle>, ConfigError> {
        let LifecycleParts { store, github, config, pools, providers, wake } = parts;
        crate::config::validate(&config, &pools)?;
        let scope = config.runner_scope.clone().ok_or_else(|| ConfigError {
            key: "scheduler.runner_scope".into(),
            expected: "the organization or repository runners register in".into(),
        })?;
        if let Some(pool) = pools.iter().find(|p| !providers.contains_key(&p.name)) {
            return Err(ConfigError {
                key: format!("pools.{}", pool.name),
                expected: "a provider for the pool".into(),
            });
        }
        let (status, _) = watch::channel(Status::default());
        Ok(Arc::new(Lifecycle {
            store,
            github,
            scope,
            launch_slots: Semaphore::new(config.max_concurrent_launches),
            teardown_slots: Semaphore::new(config.max_concurrent_launches),
            config,
            pools,
            providers,
            in_flight: Mutex::new(HashSet::new()),
            last_completed: Mutex::new(HashMap::new()),
            last_completed_loaded: AtomicBool::new(false),
            last_registration_scan: Mutex::new(None),
            wake,
            status,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }))
    }

    /// Starts the reconciler loop and recovery.
    pub fn start(self: &Arc<Self>) {
        self.start_reconciler();
        self.start_recovery();
    }

    /// Stops in order: no new activation or recovery pass starts, sagas
    /// waiting for a slot give up before any side effect, sagas under way
    /// run to their end for at most `shutdown_grace`, then every provider
    /// stops its own capacity (pre-booted VMs). Runner instances stay for
    /// the next start.
    pub async fn stop(&self) -> StopReport {
        self.cancel.cancel();
        self.tasks.close();
        let drained =
            tokio::time::timeout(self.config.shutdown_grace, self.tasks.wait()).await.is_ok();
        let tasks_left = if drained { 0 } else { self.tasks.len() };
        if tasks_left > 0 {
            tracing::warn!(
                tasks_left,
                grace = %hangar_types::duration::format(self.config.shutdown_grace),
                "Runner tasks still under way at the end of the shutdown grace; the next start resumes their runners."
            );
        }
        for (pool, provider) in &self.providers {
            tracing::debug!(pool = %pool, "Stopping the provider's own capacity.");
            provider.shutdown().await;
        }
        StopReport { tasks_left }
    }

    /// Spawns `task` on the lifecycle's tracker (see the module docs).
    pub(crate) fn task_spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// A handle to poke the reconciler with.
    pub fn handle(&self) -> ReconcilerHandle {
        ReconcilerHandle { wake: self.wake.clone(), status: self.status.subscribe() }
    }

    /// Runs activations on every poke and every `reconcile_interval`, until
    /// [`Lifecycle::stop`].
    pub fn start_reconciler(self: &Arc<Self>) {
        let this = self.clone();
        self.tasks.spawn(async move {
            while !this.cancel.is_cancelled() {
                this.activate().await;
                tokio::select! {
                    () = this.cancel.cancelled() => {}
                    _ = tokio::time::timeout(this.config.reconcile_interval, this.wake.notified()) => {}
                }
            }
        });
    }

    /// One activation: read, plan, hand actions to the executor.
    pub async fn activate(self: &Arc<Self>) {
        let started = Instant::now();
        let mut errors = Vec::new();
        let snapshot = self.snapshot(&mut errors).await;
        let Some(snapshot) = snapshot else {
            self.publish(None, &[], errors);
            return;
        };
        let read_ms = started.elapsed().as_millis();
        let actions = plan::plan(&self.config, &self.pools, &snapshot);
        executor::execute(self, &snapshot, &actions, &mut errors).await;
        tracing::debug!(
            read_ms,
            total_ms = started.elapsed().as_millis(),
            actions = actions.len(),
            "Reconciler activation done."
        );
        self.publish(Some(&snapshot), &actions, errors);
    }

    async fn snapshot(&self, errors: &mut Vec<String>) -> Option<Snapshot> {
        let now = chrono::Utc::now();
        // In-flight runners first: a task that finishes after this point is
        // still treated as in flight, so its instance, which may be missing
        // from the list read next, is not mistaken for a vanished one.
        let in_flight = self
            .in_flight()
            .iter()
            .filter_map(|name| RunnerId::try_from(name.clone()).ok())
            .collect();
        let mut instances = HashMap::new();
        let mut unhealthy = BTreeMap::new();
        for pool in &self.pools {
            let Some(provider) = self.providers.get(&pool.name) else {
                unhealthy.insert(pool.name.clone(), "no provider configured".to_owned());
                continue;
            };
            match tokio::time::timeout(self.config.provider_timeout, provider.list()).await {
                Ok(Ok(list)) => {
                    instances.insert(pool.name.clone(), list);
                }
                Ok(Err(e)) => errors.push(format!("pool {}: {}", pool.name, chain(&e))),
                Err(_) => errors.push(format!("pool {}: listing instances timed out", pool.name)),
            }
            let health = provider.health().await;
            if !health.ok {
                unhealthy.insert(pool.name.clone(), health.message);
            }
        }
        let registrations = self.registrations(errors).await;
        // The store last: see the module docs.
        let runners = match self.store.runner_list_live().await {
            Ok(runners) => runners,
            Err(e) => {
                errors.push(chain(&e));
                return None;
            }
        };
        let jobs = match self.store.job_list_active().await {
            Ok(jobs) => jobs,
            Err(e) => {
                errors.push(chain(&e));
                return None;
            }
        };
        if !self.last_completed_loaded.load(Ordering::Acquire) {
            match self.store.runner_last_job_end_by_pool().await {
                Ok(ends) => {
                    let mut last = lock(&self.last_completed);
                    for (pool, at) in ends {
                        let entry = last.entry(pool).or_insert(at);
                        *entry = (*entry).max(at);
                    }
                    self.last_completed_loaded.store(true, Ordering::Release);
                }
                Err(e) => {
                    errors.push(chain(&e));
                    return None;
                }
            }
        }
        let jobs = jobs
            .into_iter()
            .map(|active| {
                let record = active.record;
                JobView {
                    id: record.fields.id,
                    state: record.state,
                    labels: record.fields.labels.clone(),
                    repository: record.fields.repository.clone(),
                    queued_at: record.received.queued.or(record.fields.created_at).unwrap_or(now),
                    runner_name: record.fields.runner.as_ref().map(|r| r.name.clone()),
                    launch_failures: active.notes.launch_failures,
                    infra_failures: active.notes.infra_failures,
                    last_failure_at: active.notes.last_failure_at,
                    last_failure_kind: active.notes.last_failure_kind,
                    last_error: active.notes.last_error,
                    reason: active.notes.reason,
                }
            })
            .collect();
        self.status.send_modify(|status| status.unhealthy.clone_from(&unhealthy));
        Some(Snapshot {
            now,
            jobs,
            runners,
            in_flight,
            instances,
            registrations,
            unhealthy,
            last_completed: lock(&self.last_completed).clone(),
        })
    }

    /// GitHub's `hangar-` registrations, read at most every
    /// `github_sync_interval` (a list costs API budget).
    async fn registrations(&self, errors: &mut Vec<String>) -> Option<Vec<Registration>> {
        {
            let mut last = lock(&self.last_registration_scan);
            if last.is_some_and(|at| at.elapsed() < self.config.github_sync_interval) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match self.github.runner_list(&self.scope).await {
            Ok(list) => Some(
                list.into_iter()
                    .filter(|r| r.name.starts_with(RunnerId::PREFIX))
                    .map(|r| Registration { github_id: r.id, name: r.name, busy: r.busy })
                    .collect(),
            ),
            Err(e) => {
                errors.push(format!("listing runner registrations: {}", chain(&e)));
                None
            }
        }
    }

    fn publish(&self, snapshot: Option<&Snapshot>, actions: &[Action], errors: Vec<String>) {
        for error in &errors {
            tracing::warn!(
                error = error.as_str(),
                "Reconciler activation hit an error; the next one retries."
            );
        }
        let mut planned = BTreeMap::new();
        for action in actions {
            *planned.entry(action_kind(action).to_owned()).or_default() += 1;
        }
        if let Some(snapshot) = snapshot {
            metrics::gauge!(crate::metrics::RUNNERS_LIVE).set(snapshot.runners.len() as f64);
        }
        metrics::counter!(crate::metrics::RECONCILER_ACTIVATIONS).increment(1);
        self.status.send_modify(|status| {
            status.activations += 1;
            status.last_activation = Some(chrono::Utc::now());
            status.jobs_active = snapshot.map_or(0, |s| s.jobs.len());
            status.runners_live = snapshot.map_or(0, |s| s.runners.len());
            status.planned = planned;
            status.errors = errors;
        });
    }

    pub(crate) fn in_flight(&self) -> MutexGuard<'_, HashSet<String>> {
        lock(&self.in_flight)
    }

    pub(crate) fn pool(&self, name: &PoolName) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| &p.name == name)
    }

    pub(crate) fn provider(&self, name: &PoolName) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    /// The store (for callers that build the API on top of the lifecycle).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live runners as the store has them, for status output.
    pub async fn runner_list_live(&self) -> Result<Vec<RunnerRecord>, hangar_store::StoreError> {
        self.store.runner_list_live().await
    }

    /// Waits until no executor task is running (for tests and shutdown).
    pub async fn idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.in_flight().is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

pub(crate) fn action_kind(action: &Action) -> &'static str {
    match action {
        Action::RunnerCreate { .. } => "runner_create",
        Action::RunnerAssign { .. } => "runner_assign",
        Action::RunnerReady { .. } => "runner_ready",
        Action::RunnerReap { .. } => "runner_reap",
        Action::InstanceDestroy { .. } => "instance_destroy",
        Action::RegistrationDelete { .. } => "registration_delete",
        Action::JobReasonSet { .. } => "job_reason_set",
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error with all its sources, `: `-separated (see `ErrorChain`).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    hangar_types::ErrorChain(error).to_string()
}
