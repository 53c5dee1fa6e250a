//! Bursts of jobs through real runner processes: every job completes and
//! nothing is left, with lost webhooks, API failures and stolen runners.

use std::time::Duration;

use hangar_scheduler::SchedulerConfig;
use hangar_simulator::{Faults, JobSpec, SimConfig};
use hangar_types::JobId;

use crate::world::{REPO, Runners, World, config, pool};

const X64: [&str; 3] = ["self-hosted", "linux", "x64"];
const ARM: [&str; 3] = ["self-hosted", "Linux", "ARM64"];

fn two_pools() -> Vec<hangar_scheduler::PoolConfig> {
    vec![pool("x64", &["linux", "x64"], 12), pool("arm", &["linux", "arm64"], 12)]
}

fn queue(world: &World, n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| {
            let labels = if i % 2 == 0 { X64 } else { ARM };
            let repo = if i % 3 == 0 { "octo-org/lib" } else { REPO };
            world.sim.job_queue(JobSpec::new(repo, labels).duration(Duration::from_millis(30)))
        })
        .collect()
}

/// Starts hangar (webhook intake and recovery polling on) against a
/// simulator with `faults` and `app` auth if given, queues `n` jobs on two
/// pools and waits until every one has completed.
async fn complete_under(
    config: SchedulerConfig,
    faults: Faults,
    app: Option<hangar_simulator::AppKeyPair>,
    n: usize,
    within: Duration,
) -> World {
    let mut world = World::start_with(
        SimConfig { faults, ..SimConfig::default() },
        config,
        two_pools(),
        Runners::Process,
        true,
        app,
    )
    .await;
    let jobs = queue(&world, n);
    world.run(true);
    world.wait_all_completed(&jobs, within).await;
    world
}

/// Webhooks through hangar's real intake; recovery polling runs too (it
/// finds nothing to do when no webhook is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_across_two_pools_complete_and_nothing_is_left() {
    let world =
        complete_under(config(), Faults::default(), None, 200, Duration::from_secs(240)).await;
    world.wait_nothing_left(Duration::from_secs(90)).await;
    let counters = world.sim.counters();
    assert_eq!(counters.jobs_completed, 200);
    eprintln!(
        "200 jobs: {} registrations, {} API calls ({:.1} per job), {} webhooks",
        counters.registrations_created,
        counters.api_calls_total,
        counters.api_calls_total as f64 / 200.0,
        counters.webhooks_sent
    );
}

/// 30 % of webhooks dropped (logged as failed) and some never sent at all:
/// recovery polling finds the jobs and their progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_thirty_percent_of_webhooks_lost_every_job_completes() {
    let faults = Faults {
        webhook_drop: 0.2,
        webhook_vanish: 0.1,
        webhook_duplicate: 0.1,
        ..Faults::default()
    };
    let world = complete_under(config(), faults, None, 60, Duration::from_secs(180)).await;
    world.wait_nothing_left(Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_timeouts_and_rate_limits_do_not_lose_jobs_or_leak() {
    let faults = Faults {
        api_fail: 0.1,
        api_timeout: 0.05,
        api_timeout_hang: Duration::from_millis(300),
        api_rate_limit: 0.05,
        api_retry_after_secs: 1,
        api_lost_response: 0.05,
        ..Faults::default()
    };
    // About one call in five fails, mints included, and a launch does not
    // retry its mint: the planner's attempts are the retries. With three, a
    // job would give up (three failed launches in a row) in one run of four.
    let config = SchedulerConfig { launch_attempts: 8, ..config() };
    let world = complete_under(config, faults, None, 40, Duration::from_secs(180)).await;
    world.sim.faults_set(Faults::default());
    world.wait_nothing_left(Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_pool_matches_says_why_and_others_still_run() {
    let mut world =
        World::start(SimConfig::default(), config(), two_pools(), Runners::Process).await;
    let gpu = world.sim.job_queue(JobSpec::new(REPO, ["self-hosted", "gpu", "arm64"]));
    let ok = world.sim.job_queue(JobSpec::new(REPO, X64).duration(Duration::from_millis(10)));
    world.webhook(gpu).await;
    world.webhook(ok).await;
    world.run(true);
    world.wait_all_completed(&[ok], Duration::from_secs(60)).await;
    let reason =
        hangar_test_harness::wait_for("reason on the job", Duration::from_secs(10), || async {
            world.store.job_notes_get(JobId(gpu)).await.ok()?.reason
        })
        .await;
    assert_eq!(reason, "no pool matches labels [arm64, gpu, self-hosted]");
    world.wait_nothing_left(Duration::from_secs(60)).await;
}

/// Job B (older, unknown to hangar) takes the runner hangar made for job A,
/// as GitHub allows. Hangar records the theft and A still gets a runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_runner_is_recorded_and_its_job_still_gets_one() {
    let mut world = World::start(
        SimConfig::default(),
        config(),
        vec![pool("x64", &["linux", "x64"], 4)],
        Runners::Process,
    )
    .await;
    let thief = world.sim.job_queue(JobSpec::new(REPO, X64).duration(Duration::from_secs(2)));
    let victim = world.sim.job_queue(JobSpec::new(REPO, X64).duration(Duration::from_millis(10)));
    // Hangar hears only of the victim; the thief is older, so the simulator
    // (like GitHub) gives it the first matching runner.
    world.webhook(victim).await;
    world.run(false);
    hangar_test_harness::wait_for("the thief running", Duration::from_secs(60), || async {
        (world.sim.job(thief)?.status == hangar_simulator::SimJobStatus::InProgress).then_some(())
    })
    .await;
    // Now hangar hears of it (the thief's in_progress webhook).
    world.webhook(thief).await;
    let runners =
        hangar_test_harness::wait_for("the theft recorded", Duration::from_secs(30), || async {
            let runners = world.store.runner_list_for_job(JobId(thief)).await.ok()?;
            runners.iter().any(|r| r.for_job == Some(JobId(victim))).then_some(runners)
        })
        .await;
    let stolen = runners.iter().find(|r| r.for_job == Some(JobId(victim))).expect("stolen runner");
    let events = world.store.runner_event_list(&stolen.id).await.expect("events");
    assert!(
        events.iter().any(|e| e.kind == "stolen"
            && e.message == format!("made for job {victim}, taken by job {thief}")),
        "{events:?}"
    );
    world.wait_all_completed(&[thief, victim], Duration::from_secs(60)).await;
    world.webhook(thief).await;
    world.webhook(victim).await;
    world.wait_nothing_left(Duration::from_secs(60)).await;
}

/// With GitHub App auth, recovery also scans the App's delivery log and
/// asks GitHub to redeliver what failed; redeliveries and polling are
/// deduplicated by job id (one runner registration per job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_app_auth_failed_deliveries_are_redelivered() {
    let faults = Faults { webhook_drop: 0.5, ..Faults::default() };
    let app = Some(hangar_simulator::app_key_generate());
    let world = complete_under(config(), faults, app, 12, Duration::from_secs(120)).await;
    world.wait_nothing_left(Duration::from_secs(90)).await;
    let counters = world.sim.counters();
    assert!(counters.redeliveries > 0, "{counters:?}");
}
