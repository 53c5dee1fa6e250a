//! A GitHub outage longer than a job's launch attempts: JIT mints fail
//! (5xx) until GitHub recovers. Those failures are GitHub's, not the
//! jobs': the jobs back off, say why, and are never given up; once GitHub
//! answers again every one gets a runner and completes.

use std::time::Duration;

use hangar_scheduler::SchedulerConfig;
use hangar_simulator::{Faults, JobSpec, SimConfig};
use hangar_store::FailureKind;
use hangar_types::JobId;

use crate::world::{REPO, Runners, World, config, pool};

const X64: [&str; 3] = ["self-hosted", "linux", "x64"];
const MINT: &str = "POST /orgs/{org}/actions/runners/generate-jitconfig";

/// The outage lasts until every job has failed more launches than
/// `launch_attempts` allows (the old rule gave each up at that point). With
/// the defaults (5 attempts, 5 s doubling) that many failures span over
/// two and a half minutes, longer than the 90 s outage of issue 14; here
/// the backoff is short so the test is fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jit_mints_failing_for_longer_than_the_retries_give_no_job_up() {
    let config = SchedulerConfig {
        launch_attempts: 2,
        launch_backoff: Duration::from_millis(50),
        launch_backoff_max: Duration::from_millis(400),
        ..config()
    };
    let attempts = config.launch_attempts;
    let mut world = World::start_with(
        SimConfig::default(),
        config,
        vec![pool("x64", &["linux", "x64"], 8)],
        Runners::Process,
        true,
        None,
    )
    .await;
    world.sim.faults_set(Faults {
        api_fail: 1.0,
        api_endpoints: vec![MINT.to_owned()],
        ..Faults::default()
    });
    let jobs: Vec<i64> = (0..6)
        .map(|_| world.sim.job_queue(JobSpec::new(REPO, X64).duration(Duration::from_millis(30))))
        .collect();
    world.run(true);

    let notes = hangar_test_harness::wait_for(
        "every job failed more launches than launch_attempts",
        Duration::from_secs(90),
        || async {
            let mut all = Vec::new();
            for &job in &jobs {
                let notes = world.store.job_notes_get(JobId(job)).await.ok()?;
                (notes.infra_failures > attempts + 1).then_some(())?;
                all.push(notes);
            }
            Some(all)
        },
    )
    .await;
    for notes in &notes {
        assert_eq!(notes.launch_failures, 0, "an outage is not the job's failure: {notes:?}");
        assert_eq!(notes.last_failure_kind, Some(FailureKind::Infrastructure));
        assert!(
            notes.last_error.as_deref().is_some_and(|e| e.contains("github answered 5")),
            "{notes:?}"
        );
    }
    // The reasons say the jobs wait for GitHub; none is given up.
    hangar_test_harness::wait_for(
        "a reason naming the outage",
        Duration::from_secs(30),
        || async {
            for &job in &jobs {
                let reason = world.store.job_notes_get(JobId(job)).await.ok()?.reason;
                if reason.is_some_and(|r| r.contains("not counted against the job")) {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    assert_eq!(world.sim.counters().registrations_created, 0);
    // Each failed runner's history says whose failure it was.
    let failed = world.store.runner_list_for_job(JobId(jobs[0])).await.expect("runners");
    let events = world.store.runner_event_list(&failed[0].id).await.expect("events");
    assert!(
        events.iter().any(|e| e.kind == "launch_failed"
            && e.message.starts_with("infrastructure: minting the JIT config")),
        "{events:?}"
    );

    // GitHub recovers.
    world.sim.faults_set(Faults::default());
    world.wait_all_completed(&jobs, Duration::from_secs(90)).await;
    world.wait_nothing_left(Duration::from_secs(60)).await;
}

/// A failure that is the job's own (here GitHub refusing the mint as such,
/// 422, which no retry fixes) still counts: after `launch_attempts` the
/// job is given up and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_the_jobs_own_still_give_it_up() {
    let config = SchedulerConfig {
        launch_attempts: 2,
        launch_backoff: Duration::from_millis(50),
        ..config()
    };
    let mut world = World::start(
        SimConfig::default(),
        config,
        vec![pool("x64", &["linux", "x64"], 8)],
        Runners::Fake,
    )
    .await;
    world.sim.faults_set(Faults {
        api_fail: 1.0,
        api_fail_status: Some(422),
        api_endpoints: vec![MINT.to_owned()],
        ..Faults::default()
    });
    let job = world.sim.job_queue(JobSpec::new(REPO, X64));
    world.webhook(job).await;
    world.run(false);
    let reason = hangar_test_harness::wait_for("the job given up", Duration::from_secs(30), || {
        let store = world.store.clone();
        async move {
            let notes = store.job_notes_get(JobId(job)).await.ok()?;
            notes.reason.filter(|r| r.starts_with("launch failed 2×: "))
        }
    })
    .await;
    assert!(reason.contains("github answered 422"), "{reason}");
    let notes = world.store.job_notes_get(JobId(job)).await.expect("notes");
    assert_eq!((notes.launch_failures, notes.infra_failures), (2, 0));
    assert_eq!(notes.last_failure_kind, Some(FailureKind::Job));
}
