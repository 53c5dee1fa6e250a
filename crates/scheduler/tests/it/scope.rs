//! Jobs from outside the runner scope: another organization's (the App
//! installed there too, a hook on a second org) reach hangar signed and
//! valid, are recorded, and start nothing: hangar's runners could never
//! take them, so a runner for one would only burn the pool and the API.

use std::time::Duration;

use hangar_simulator::{JobSpec, SimConfig};
use hangar_types::{JobId, JobState};

use crate::world::{REPO, Runners, World, config, pool};

const X64: [&str; 3] = ["self-hosted", "linux", "x64"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_job_from_another_org_is_recorded_and_starts_nothing() {
    let mut world = World::start_with(
        SimConfig::default(),
        config(),
        vec![pool("x64", &["linux", "x64"], 8)],
        Runners::Fake,
        true,
        None,
    )
    .await;
    world.run(false);
    // The simulator signs and sends its webhook through hangar's real intake.
    let foreign = world.sim.job_queue(JobSpec::new("other-org/app", X64));
    let ours = world.sim.job_queue(JobSpec::new(REPO, X64));

    let reason =
        hangar_test_harness::wait_for("the foreign job's reason", Duration::from_secs(30), || {
            let store = world.store.clone();
            async move { store.job_notes_get(JobId(foreign)).await.ok()?.reason }
        })
        .await;
    assert_eq!(
        reason,
        "outside runner scope: repository other-org/app is not in organization octo-org"
    );
    let recorded = world.store.job_get(JobId(foreign)).await.expect("get").expect("recorded");
    assert_eq!(recorded.state, JobState::Queued);
    assert_eq!(recorded.fields.repository, "other-org/app");
    // Our own job, queued after it, got its runner.
    hangar_test_harness::wait_for("our job's runner", Duration::from_secs(30), || {
        let store = world.store.clone();
        async move { (!store.runner_list_for_job(JobId(ours)).await.ok()?.is_empty()).then_some(()) }
    })
    .await;
    // More activations change nothing for the foreign job.
    for _ in 0..3 {
        world.lifecycle.handle().activated().await;
    }
    assert!(world.lifecycle.idle(Duration::from_secs(10)).await);
    assert!(world.store.runner_list_for_job(JobId(foreign)).await.expect("runners").is_empty());
    assert_eq!(world.sim.counters().registrations_created, 1, "one runner: our job's");
    assert_eq!(world.store.runner_list_live().await.expect("live").len(), 1);
}
