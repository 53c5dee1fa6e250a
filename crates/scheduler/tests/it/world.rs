//! `World`: the system built by `hangar::App` (as `hangar serve` builds
//! it) with its GitHub client pointed at the simulator and its providers
//! swapped for test ones, short timers, plus the checks every test ends
//! with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hangar::config::{Overrides, ProviderConfig};
use hangar_github::rest::{Auth, ClientConfig, RestClient};
use hangar_github::{GitHubApi, RunnerScope};
use hangar_provider::{FakeProvider, Provider};
use hangar_provider_process::{ProcessConfig, ProcessProvider};
use hangar_scheduler::{Lifecycle, PoolConfig, SchedulerConfig};
use hangar_simulator::{SimConfig, SimHandle, SimJobStatus, Simulator};
use hangar_store::{NewDelivery, Store};
use hangar_types::{DeliveryId, JobAction, JobEvent, JobId, PoolName, Secret};

pub(crate) const REPO: &str = "octo-org/app";

pub(crate) enum Runners {
    /// Real `hangar-standin-runner` processes.
    Process,
    /// FakeProvider: nothing runs; tests steer instances by hand.
    Fake,
}

pub(crate) struct World {
    pub(crate) sim: SimHandle,
    pub(crate) store: Store,
    pub(crate) github: Arc<RestClient>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) providers: HashMap<PoolName, Arc<dyn Provider>>,
    pub(crate) fakes: HashMap<PoolName, FakeProvider>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _app: hangar::App,
    _dir: tempfile::TempDir,
}

pub(crate) fn pool(name: &str, labels: &[&str], max: u32) -> PoolConfig {
    PoolConfig {
        name: PoolName(name.into()),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        max_runners: max,
        min_hot: 0,
        idle_timeout: Duration::from_secs(5),
        keep_warm: Duration::ZERO,
        provider: (),
    }
}

pub(crate) fn config() -> SchedulerConfig {
    SchedulerConfig {
        runner_scope: Some(RunnerScope::Organization("octo-org".into())),
        reconcile_interval: Duration::from_millis(200),
        github_sync_interval: Duration::from_millis(500),
        pickup_deadline: Duration::from_secs(20),
        max_lifetime: Duration::from_secs(600),
        launch_attempts: 3,
        launch_backoff: Duration::from_millis(100),
        launch_backoff_max: Duration::from_secs(2),
        provider_timeout: Duration::from_secs(10),
        max_concurrent_launches: 16,
        runner_group_id: 1,
        shutdown_grace: Duration::from_secs(10),
    }
}

impl World {
    pub(crate) async fn start(
        sim_config: SimConfig,
        config: SchedulerConfig,
        pools: Vec<PoolConfig>,
        runners: Runners,
    ) -> World {
        World::start_with(sim_config, config, pools, runners, false, None).await
    }

    /// With `webhooks`, hangar's real intake (`hangar_server::router`)
    /// listens on a port and the simulator sends it signed webhooks; an
    /// accepted job change wakes the reconciler, as in `hangar serve`.
    pub(crate) async fn start_with(
        sim_config: SimConfig,
        config: SchedulerConfig,
        pools: Vec<PoolConfig>,
        runners: Runners,
        webhooks: bool,
        app: Option<hangar_simulator::AppKeyPair>,
    ) -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tasks = Vec::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let webhook_url = webhooks.then(|| format!("http://{addr}/webhook"));
        let sim = Simulator::start(SimConfig {
            long_poll: Duration::from_millis(500),
            runner_lost_after: Duration::from_secs(10),
            webhook_url,
            app: app.as_ref().map(|key| hangar_simulator::SimApp {
                app_id: "123".into(),
                public_key_pem: key.public_pem.clone(),
            }),
            ..sim_config
        })
        .await
        .expect("simulator starts");
        let auth = match &app {
            Some(key) => Auth::App(hangar_github::AppCredentials {
                app_id: "123".into(),
                installation_id: hangar_types::InstallationId(4242),
                private_key_pem: Secret::new(key.private_pem.clone()),
            }),
            None => Auth::Token(Secret::new(SimConfig::DEFAULT_PAT)),
        };
        let mut client = ClientConfig::new(sim.api_url(), auth);
        client.request_timeout = Duration::from_secs(10);
        client.retry_base = Duration::from_millis(20);
        client.max_retries = 6;
        client.secondary_backoff = Duration::from_millis(100);
        client.max_rate_limit_wait = Duration::from_secs(5);
        client.repositories = vec![REPO.to_owned(), "octo-org/lib".to_owned()];
        let github = Arc::new(RestClient::new(client).expect("client"));
        let mut providers: HashMap<PoolName, Arc<dyn Provider>> = HashMap::new();
        let mut fakes = HashMap::new();
        for pool in &pools {
            let provider: Arc<dyn Provider> = match runners {
                Runners::Process => {
                    let command = hangar_standin_runner::binary_path().expect("stand-in runner");
                    let config = ProcessConfig {
                        command,
                        args: Vec::new(),
                        work_root: None,
                        env: Default::default(),
                    };
                    Arc::new(ProcessProvider::new(
                        config,
                        &dir.path().join("runners").join(&pool.name.0),
                    ))
                }
                Runners::Fake => {
                    let fake = FakeProvider::new();
                    fakes.insert(pool.name.clone(), fake.clone());
                    Arc::new(fake)
                }
            };
            providers.insert(pool.name.clone(), provider);
        }
        // The system as `serve` builds it, with the test's timers and pools.
        let overrides = Overrides {
            listen: Some(addr),
            data_dir: Some(dir.path().to_owned()),
            ..Overrides::default()
        };
        let mut resolved =
            hangar::config::load_text("world.toml", "", &hangar::config::no_env, overrides)
                .expect("an empty config loads");
        resolved.webhook_secret =
            Some(hangar_types::Secret::new(SimConfig::DEFAULT_WEBHOOK_SECRET));
        resolved.scheduler = config;
        resolved.pools =
            pools.into_iter().map(|p| p.with_provider(ProviderConfig::default()).0).collect();
        resolved.runners_off = None;
        resolved.file.cache.enabled = false;
        let parts = hangar::Parts {
            github: Some(github.clone() as Arc<dyn GitHubApi>),
            providers: providers.clone(),
            ..hangar::Parts::default()
        };
        let app = hangar::App::build(&resolved, parts).await.expect("the app builds");
        let lifecycle = app.lifecycle().expect("pools run").clone();
        let store = app.store().clone();
        if webhooks {
            let router = app.public_router();
            tasks.push(tokio::spawn(async move {
                axum::serve(listener, router).await.expect("intake serves");
            }));
        }
        World { sim, store, github, lifecycle, providers, fakes, tasks, _app: app, _dir: dir }
    }

    /// Starts the reconciler and (optionally) the recovery task.
    pub(crate) fn run(&mut self, recovery: bool) {
        self.lifecycle.start_reconciler();
        if recovery {
            self.lifecycle.start_recovery();
        }
    }

    /// Records what GitHub says about `job` as if its webhook had arrived.
    pub(crate) async fn webhook(&self, job: i64) {
        let polled =
            self.github.job_get(REPO, JobId(job)).await.expect("job_get").expect("job exists");
        let action = match polled.state {
            hangar_types::JobState::Waiting => JobAction::Waiting,
            hangar_types::JobState::Queued => JobAction::Queued,
            hangar_types::JobState::InProgress => JobAction::InProgress,
            hangar_types::JobState::Completed => JobAction::Completed,
        };
        let delivery_id = DeliveryId(format!("test-{job}-{action}"));
        let received_at = chrono::Utc::now();
        self.store
            .delivery_record(NewDelivery {
                delivery_id: delivery_id.clone(),
                event: "workflow_job".into(),
                action: Some(action.as_str().into()),
                received_at,
                payload: "{}".into(),
                job_event: Some(JobEvent { delivery_id, action, received_at, job: polled.fields }),
            })
            .await
            .expect("delivery recorded");
        self.lifecycle.handle().activate();
    }

    pub(crate) async fn wait_all_completed(&self, jobs: &[i64], timeout: Duration) {
        hangar_test_harness::wait_for("all jobs completed on GitHub", timeout, || async {
            jobs.iter()
                .all(|&j| self.sim.job(j).is_some_and(|job| job.status == SimJobStatus::Completed))
                .then_some(())
        })
        .await;
    }

    /// Nothing left: no registration on GitHub, no instance, no live runner.
    pub(crate) async fn wait_nothing_left(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut instances = Vec::new();
            for provider in self.providers.values() {
                instances.extend(provider.list().await.expect("list"));
            }
            let live = self.store.runner_list_live().await.expect("live runners");
            let registrations = self.sim.runners();
            if registrations.is_empty() && instances.is_empty() && live.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                // One line per leftover, so a CI log cut short still says why.
                let mut report = format!(
                    "left after {timeout:?}; reconciler {:?}\n",
                    self.lifecycle.handle().status()
                );
                for r in &registrations {
                    report += &format!(
                        "registration {} {} {:?} job {:?} connected {}\n",
                        r.id, r.name, r.status, r.job_id, r.ever_connected
                    );
                }
                for i in &instances {
                    report += &format!(
                        "instance {} {:?} since {} ({})\n",
                        i.runner_id, i.state, i.launched_at, i.detail
                    );
                }
                for r in &live {
                    report += &format!(
                        "runner {} {} gen {} for {:?} job {:?} created {} launched {:?} reason {:?}\n",
                        r.id,
                        r.state,
                        r.generation,
                        r.for_job.map(|j| j.0),
                        r.job.map(|j| j.0),
                        r.created_at,
                        r.launched_at,
                        r.reason
                    );
                }
                for j in self.store.job_list_active().await.expect("jobs") {
                    report += &format!(
                        "job {} {} reason {:?}\n",
                        j.record.fields.id, j.record.state, j.notes.reason
                    );
                }
                panic!("{report}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
