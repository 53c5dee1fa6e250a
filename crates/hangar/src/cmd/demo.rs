//! `hangar demo`: the whole lifecycle on one machine with no GitHub
//! organization. In one process it runs the GitHub simulator, hangar's
//! webhook intake, store and scheduler, and the process provider running
//! `hangar-standin-runner` (NOT isolated); queues a burst of jobs; waits;
//! prints each job's phases.
//!
//! Exit status (scripts rely on it): 0 only when every job completed on
//! the simulated GitHub and no instance, registration or live runner is
//! left afterwards; non-zero otherwise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hangar_github::{Auth, ClientConfig, RestClient, RunnerScope, WebhookSecret};
use hangar_provider::Provider;
use hangar_provider_process::{ProcessConfig, ProcessProvider};
use hangar_scheduler::{Lifecycle, PoolConfig, SchedulerConfig};
use hangar_server::{ApiAccess, ServerState};
use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};
use hangar_store::Store;
use hangar_types::{JobId, PoolName, Secret, Timestamp};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// How many jobs to queue at once.
    #[arg(long, default_value_t = 10)]
    jobs: usize,
    /// How long each job runs on its runner, in milliseconds.
    #[arg(long, default_value_t = 200)]
    job_ms: u64,
    /// Give up (exit non-zero) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The stand-in runner program (default: next to this binary).
    #[arg(long)]
    runner: Option<PathBuf>,
}

const REPO: &str = "octo-org/app";

pub(crate) async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let runner = match args.runner {
        Some(path) => path,
        None => standin_next_to_me()?,
    };
    let store = Store::open(&Store::sqlite_url(&dir.path().join("hangar.db"))).await?;
    let state = ServerState::new(
        store.clone(),
        Some(WebhookSecret::new(SimConfig::DEFAULT_WEBHOOK_SECRET)),
        ApiAccess::new(true, None),
    );
    let wake = state.job_activity();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let intake = listener.local_addr()?;
    let app = hangar_server::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sim = Simulator::start(SimConfig {
        webhook_url: Some(format!("http://{intake}/webhook")),
        long_poll: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .context("starting the GitHub simulator")?;
    let mut client =
        ClientConfig::new(sim.api_url(), Auth::Token(Secret::new(SimConfig::DEFAULT_PAT)));
    client.repositories = vec![REPO.to_owned()];
    let github = Arc::new(RestClient::new(client)?);
    let pool = PoolConfig {
        name: PoolName("demo".into()),
        labels: vec!["linux".into()],
        provider: "process".into(),
        max_runners: 8,
        min_hot: 0,
        idle_timeout: Duration::from_secs(10),
        keep_warm: Duration::ZERO,
        settings: toml::Table::new(),
    };
    let config = SchedulerConfig {
        runner_scope: Some("octo-org".into()),
        reconcile_interval: Duration::from_millis(500),
        github_sync_interval: Duration::from_secs(2),
        pickup_deadline: Duration::from_secs(30),
        ..SchedulerConfig::default()
    };
    let process = ProcessConfig {
        command: runner,
        args: Vec::new(),
        work_root: None,
        env: Default::default(),
    };
    let provider: Arc<dyn Provider> =
        Arc::new(ProcessProvider::new(process, &dir.path().join("runners")));
    let providers = HashMap::from([(pool.name.clone(), provider.clone())]);
    let lifecycle = Lifecycle::new(
        store.clone(),
        github,
        RunnerScope::Organization("octo-org".into()),
        config,
        vec![pool],
        providers,
        wake,
    );
    lifecycle.spawn();
    lifecycle.recovery_spawn();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let jobs: Vec<i64> = (0..args.jobs)
        .map(|_| {
            let spec = JobSpec::new(REPO, ["self-hosted", "linux"])
                .duration(Duration::from_millis(args.job_ms));
            sim.job_queue(spec)
        })
        .collect();
    println!("Queued {} jobs on the simulated GitHub; hangar takes it from here.", jobs.len());
    let completed = loop {
        let done = jobs
            .iter()
            .filter(|&&j| sim.job(j).is_some_and(|job| job.status == SimJobStatus::Completed))
            .count();
        if done == jobs.len() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let clean = loop {
        let registrations = sim.counters().registrations_alive;
        let instances = provider.list().await.map(|l| l.len()).unwrap_or(usize::MAX);
        let live = store.runner_list_live().await.map(|l| l.len()).unwrap_or(usize::MAX);
        if registrations == 0 && instances == 0 && live == 0 {
            break true;
        }
        if Instant::now() > deadline {
            println!(
                "Left over: {registrations} registration(s), {instances} instance(s), {live} live runner(s)."
            );
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    phases_print(&store, &jobs).await?;
    let counters = sim.counters();
    println!(
        "{} of {} jobs completed in {:.1} s; {} runner registrations, {} GitHub API calls.",
        counters.jobs_completed,
        jobs.len(),
        started.elapsed().as_secs_f64(),
        counters.registrations_created,
        counters.api_calls_total
    );
    match (completed, clean) {
        (true, true) => {
            println!("OK: every job completed and nothing is left.");
            Ok(())
        }
        (false, _) => bail!("not every job completed within {} s", args.timeout),
        (true, false) => bail!("jobs completed but instances or registrations were left"),
    }
}

/// One line per job: each phase as seconds after the job was created.
async fn phases_print(store: &Store, jobs: &[i64]) -> Result<()> {
    println!(
        "{:>10}  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}   (seconds after GitHub created the job)",
        "job", "webhook", "decided", "jit", "launched", "ready", "picked", "done"
    );
    for &id in jobs {
        let Some(job) = store.job_get(JobId(id)).await? else {
            println!("{id:>10}  (never heard of)");
            continue;
        };
        let runners = store.runner_list_for_job(JobId(id)).await?;
        let ran = runners.iter().find(|r| r.job == Some(JobId(id)));
        let runner = ran.or_else(|| runners.iter().rev().find(|r| r.for_job == Some(JobId(id))));
        let origin = job.fields.created_at.or(job.received.queued);
        let rel = |at: Option<Timestamp>| match (origin, at) {
            (Some(origin), Some(at)) => {
                format!("{:.2}", (at - origin).num_milliseconds() as f64 / 1000.0)
            }
            _ => "-".to_owned(),
        };
        println!(
            "{id:>10}  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            rel(job.received.queued),
            rel(runner.map(|r| r.created_at)),
            rel(runner.and_then(|r| r.jit_minted_at)),
            rel(runner.and_then(|r| r.launched_at)),
            rel(runner.and_then(|r| r.ready_at)),
            rel(job.received.in_progress.or(ran.and_then(|r| r.busy_at))),
            rel(job.received.completed),
        );
    }
    Ok(())
}

/// `hangar-standin-runner` installed beside `hangar` (as `cargo build` and
/// `cargo install` leave them).
fn standin_next_to_me() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the hangar binary")?;
    let candidate = exe.with_file_name("hangar-standin-runner");
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "{} is missing: build it (`cargo build -p hangar-standin-runner`) or pass --runner PATH",
        candidate.display()
    )
}
