//! Decision latency: from a `queued` webhook being accepted (its delivery
//! durably recorded) to the provider's `launch` being called for a runner
//! made for that job, for a burst of queued jobs, with the fake provider
//! (so the figure is hangar's own work plus the JIT mint through the
//! simulator over HTTP, not a machine's boot time).
//!
//! `cargo bench -p hangar-scheduler --bench decision_latency [-- JOBS]`
//! (default 1,000 jobs). Prints p50/p90/p99/max and the GitHub API calls
//! spent per job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar::config::{Overrides, ProviderConfig};
use hangar_github::{Auth, ClientConfig, GitHubApi, RestClient, RunnerScope};
use hangar_provider::{FakeProvider, Provider};
use hangar_scheduler::{PoolConfig, SchedulerConfig};
use hangar_simulator::{JobSpec, SimConfig, Simulator};
use hangar_store::NewDelivery;
use hangar_types::{DeliveryId, JobAction, JobEvent, JobId, PoolName, Secret};

const REPO: &str = "octo-org/app";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let jobs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
    let github = Arc::new(
        RestClient::new(ClientConfig::new(
            sim.api_url(),
            Auth::Token(Secret::new(SimConfig::DEFAULT_PAT)),
        ))
        .expect("client"),
    );
    let pool = PoolConfig {
        name: PoolName("linux".into()),
        labels: vec!["linux".into()],
        max_runners: u32::try_from(jobs).expect("jobs fit u32"),
        min_hot: 0,
        idle_timeout: Duration::from_secs(3600),
        keep_warm: Duration::ZERO,
        provider: ProviderConfig::default(),
    };
    let config = SchedulerConfig {
        runner_scope: Some(RunnerScope::Organization("octo-org".into())),
        reconcile_interval: Duration::from_secs(1),
        pickup_deadline: Duration::from_secs(3600),
        ..SchedulerConfig::default()
    };
    // The system as `hangar serve` builds it, with the fake provider.
    let overrides = Overrides { data_dir: Some(dir.path().to_owned()), ..Overrides::default() };
    let mut resolved =
        hangar::config::load_text("bench.toml", "", &hangar::config::no_env, overrides)
            .expect("an empty config loads");
    resolved.scheduler = config;
    resolved.runners_off = None;
    resolved.file.cache.enabled = false;
    let fake = FakeProvider::new();
    let providers: HashMap<PoolName, Arc<dyn Provider>> =
        HashMap::from([(pool.name.clone(), Arc::new(fake.clone()) as Arc<dyn Provider>)]);
    resolved.pools = vec![pool];
    let parts = hangar::Parts {
        github: Some(github.clone() as Arc<dyn GitHubApi>),
        providers,
        ..hangar::Parts::default()
    };
    let app = hangar::App::build(&resolved, parts).await.expect("the app builds");
    let lifecycle = app.lifecycle().expect("the pool runs").clone();
    let store = app.store().clone();

    // Jobs exist on "GitHub" first; their webhooks are then accepted as a burst.
    let mut events = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let id = sim.job_queue(JobSpec::new(REPO, ["self-hosted", "linux"]));
        let job = github.job_get(REPO, JobId(id)).await.expect("job_get").expect("job");
        events.push(job.fields);
    }
    let calls_before = sim.counters().api_calls_total;
    lifecycle.start_reconciler();
    let started = Instant::now();
    let mut accepted = Vec::with_capacity(jobs);
    for fields in events {
        let store = store.clone();
        let handle = lifecycle.handle();
        accepted.push(tokio::spawn(async move {
            let delivery_id = DeliveryId(format!("bench-{}", fields.id));
            let received_at = chrono::Utc::now();
            store
                .delivery_record(NewDelivery {
                    delivery_id: delivery_id.clone(),
                    event: "workflow_job".into(),
                    action: Some("queued".into()),
                    received_at,
                    payload: "{}".into(),
                    job_event: Some(JobEvent {
                        delivery_id,
                        action: JobAction::Queued,
                        received_at,
                        job: fields,
                    }),
                })
                .await
                .expect("recorded");
            // What the webhook intake does for an accepted job change.
            handle.activate();
        }));
    }
    for handle in accepted {
        handle.await.expect("accept task");
    }
    while fake.launches().len() < jobs {
        assert!(started.elapsed() < Duration::from_secs(600), "launches did not all happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    app.stop().await;

    let launched: HashMap<String, chrono::DateTime<chrono::Utc>> =
        fake.launches().into_iter().map(|(id, at)| (id.to_string(), at)).collect();
    let mut latencies = Vec::with_capacity(jobs);
    let mut decided = Vec::with_capacity(jobs);
    for runner in
        store.runner_list_recent(u32::try_from(jobs * 2).expect("fits")).await.expect("runners")
    {
        let (Some(job), Some(launch)) = (runner.for_job, launched.get(runner.id.as_str())) else {
            continue;
        };
        let record = store.job_get(job).await.expect("job").expect("recorded");
        let accepted_at = record.received.queued.expect("queued time");
        latencies.push((*launch - accepted_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        decided.push(
            (runner.created_at - accepted_at).num_microseconds().unwrap_or(0) as f64 / 1000.0,
        );
    }
    latencies.sort_by(f64::total_cmp);
    decided.sort_by(f64::total_cmp);
    // Nearest-rank percentile over a sorted, non-empty list.
    let at = |v: &[f64], per_mille: usize| v[(v.len() - 1) * per_mille / 1000];
    let pct = |per_mille: usize| at(&latencies, per_mille);
    let calls = sim.counters().api_calls_total - calls_before;
    println!("decision latency, {jobs} queued jobs accepted as a burst, fake provider:");
    println!(
        "  p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms  max {:.0} ms  (all launched after {:.1} s)",
        pct(500),
        pct(900),
        pct(990),
        pct(1000),
        elapsed.as_secs_f64()
    );
    println!(
        "  of which webhook accepted -> runner decided (id persisted): p50 {:.0} ms  p99 {:.0} ms",
        at(&decided, 500),
        at(&decided, 990)
    );
    println!("  GitHub API calls to launch: {calls} ({:.2} per job)", calls as f64 / jobs as f64);
}
