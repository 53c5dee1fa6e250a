//! `hangar demo`: the whole lifecycle on one machine with no GitHub
//! organization. In one process it runs the GitHub simulator, hangar's
//! webhook intake, store and scheduler, and the process provider running
//! `hangar-standin-runner` (NOT isolated); queues a burst of jobs; waits;
//! prints each job's phases.
//!
//! Exit status (scripts rely on it): 0 only when every job completed on
//! the simulated GitHub and no instance, registration or live runner is
//! left afterwards; non-zero otherwise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hangar::config::Overrides;
use hangar_simulator::{JobSpec, SimConfig, SimHandle, SimJobStatus, Simulator};
use hangar_store::Store;
use hangar_types::{JobId, PoolName, Timestamp};

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
    /// The stand-in runner program (default: this binary's own
    /// `standin-runner` subcommand).
    #[arg(long)]
    runner: Option<PathBuf>,
}

const REPO: &str = "octo-org/app";

/// The demo's configuration: one pool that asks for local processes
/// explicitly (the demo's runners are stand-ins that only talk to the
/// simulator), short timers.
fn demo_config(sim: &SimHandle, runner: &std::path::Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"{github}
[[pools]]
name = "demo"
labels = ["linux"]
max_runners = 8
idle_timeout = "10s"
[pools.provider.process]
command = {runner:?}
args = [{args}]
[cache]
enabled = false
"#,
        github = sim.hangar_toml(
            "reconcile_interval = \"500ms\"\ngithub_sync_interval = \"2s\"\npickup_deadline = \"30s\""
        ),
        runner = runner.display().to_string(),
        args = args.join(", "),
    )
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let me = std::env::current_exe().context("locating the hangar binary")?;
    let (runner, runner_args) = match &args.runner {
        Some(path) => (path.clone(), Vec::new()),
        None => (me, vec!["standin-runner"]),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let intake = listener.local_addr()?;
    let sim = Simulator::start(SimConfig {
        webhook_url: Some(format!("http://{intake}/webhook")),
        long_poll: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .context("starting the GitHub simulator")?;
    let overrides = Overrides {
        listen: Some(intake),
        data_dir: Some(dir.path().to_owned()),
        ..Overrides::default()
    };
    let text = demo_config(&sim, &runner, &runner_args);
    let config = hangar::config::load_text("demo.toml", &text, &hangar::config::no_env, overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Arc::new(hangar::App::build(&config, hangar::Parts::default()).await?);
    app.start();
    let provider = app.provider(&PoolName("demo".into())).context("the demo pool")?.clone();
    let store = app.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let app = app.clone();
        tokio::spawn(async move {
            let admin = hangar::local_admin_listener().await?;
            app.serve(hangar_server::Bound::Tcp(listener), admin, async move {
                let _ = stopped.await;
            })
            .await;
            anyhow::Ok(())
        })
    };

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
    let _ = stop.send(());
    server.await.context("the demo's server task")??;
    let app = Arc::into_inner(app).context("the app is still shared")?;
    app.stop().await;
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

/// `hangar standin-runner`: the stand-in runner the demo's pool runs, as
/// `hangar-standin-runner` does (same arguments, same exit status), so
/// `cargo run -p hangar -- demo` needs no second binary.
#[derive(clap::Args)]
pub(crate) struct StandinArgs {
    /// The `encoded_jit_config` from generate-jitconfig.
    #[arg(long, env = "ACTIONS_RUNNER_INPUT_JITCONFIG", hide_env_values = true)]
    jitconfig: String,
    /// Directory to write `.runner`/`.credentials` into while running.
    #[arg(long)]
    root: Option<PathBuf>,
}

pub(crate) async fn standin_runner(args: StandinArgs) -> Result<()> {
    let options = hangar_standin_runner::RunOptions { root: args.root, ..Default::default() };
    let outcome = hangar_standin_runner::run(&args.jitconfig, &options)
        .await
        .map_err(|e| anyhow::anyhow!("{}", hangar_types::ErrorChain(&e)))?;
    eprintln!("hangar standin-runner: {outcome}");
    Ok(())
}
