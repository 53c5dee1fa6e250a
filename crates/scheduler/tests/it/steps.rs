//! Launch and teardown steps: each run twice (idempotent) and each failed
//! in turn (no orphan instance or registration left). Uses the fake
//! provider to fail provider steps and the simulator to fail GitHub ones.

use std::time::Duration;

use hangar_provider::Provider;
use hangar_scheduler::executor::{
    runner_teardown, step_launch, step_mint, step_record_launched, step_record_registered,
};
use hangar_simulator::{Faults, JobSpec, SimConfig};
use hangar_types::{JobId, PoolName, RunnerId, RunnerRecord, RunnerState};

use crate::world::{REPO, Runners, World, config, pool};

const LABELS: [&str; 2] = ["self-hosted", "linux"];

async fn fake_world() -> World {
    World::start(SimConfig::default(), config(), vec![pool("linux", &["linux"], 4)], Runners::Fake)
        .await
}

fn linux() -> PoolName {
    PoolName("linux".into())
}

#[tokio::test]
async fn every_launch_and_teardown_step_can_run_twice() {
    let world = fake_world().await;
    let lc = &world.lifecycle;
    let id = RunnerId::new(&linux(), 7);
    let mut runner = RunnerRecord::planned(id.clone(), linux(), None, chrono::Utc::now());
    assert!(world.store.runner_insert(&runner).await.expect("insert"));
    assert!(
        !world.store.runner_insert(&runner).await.expect("insert twice"),
        "second insert is a no-op"
    );

    let first = step_mint(lc, &runner).await.expect("mint");
    // The second mint meets a 409 for the name and resolves it.
    let jit = step_mint(lc, &runner).await.expect("mint twice");
    assert_ne!(first.github_runner_id, jit.github_runner_id);
    assert_eq!(world.sim.counters().registrations_alive, 1);

    step_record_registered(lc, &mut runner, &jit).await.expect("registered");
    step_record_registered(lc, &mut runner, &jit).await.expect("registered twice");
    let instance = step_launch(lc, &runner, &jit).await.expect("launch");
    step_launch(lc, &runner, &jit).await.expect("launch twice");
    let fake = &world.fakes[&linux()];
    assert_eq!(fake.instance_count(), 1);
    assert_eq!(fake.jit_config(&id).as_deref(), Some(jit.encoded.expose()));
    step_record_launched(lc, &mut runner, &instance).await.expect("launched");
    step_record_launched(lc, &mut runner, &instance).await.expect("launched twice");
    assert_eq!(runner.state, RunnerState::Launched);

    runner_teardown(lc, runner.clone(), "test", None).await;
    // Tearing down from a stale copy, or again, changes nothing and fails nothing.
    runner_teardown(lc, runner.clone(), "test", None).await;
    let stored = world.store.runner_get(&id).await.expect("get").expect("exists");
    runner_teardown(lc, stored.clone(), "test", None).await;
    assert_eq!(stored.state, RunnerState::Gone);
    assert_eq!(stored.reason.as_deref(), Some("test"));
    assert_eq!(world.sim.counters().registrations_alive, 0);
    assert_eq!(fake.instance_count(), 0);
}

/// Runs activations until nothing is in flight and `done` holds.
async fn settle(world: &World, what: &str, done: impl AsyncFn(&World) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        world.lifecycle.activate().await;
        assert!(world.lifecycle.idle(Duration::from_secs(15)).await, "executor stuck: {what}");
        if done(world).await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job's (own, infrastructure) failed launches.
async fn failures(world: &World, job: i64) -> (u32, u32) {
    let notes = world.store.job_notes_get(JobId(job)).await.expect("notes");
    (notes.launch_failures, notes.infra_failures)
}

#[tokio::test]
async fn a_failure_at_each_step_leaves_no_orphan_and_the_job_is_retried() {
    let world = fake_world().await;
    let fake = world.fakes[&linux()].clone();
    let job = world.sim.job_queue(JobSpec::new(REPO, LABELS));
    world.webhook(job).await;

    // 1. Minting fails (GitHub 5xx on every try).
    let jit_path = "POST /orgs/{org}/actions/runners/generate-jitconfig".to_owned();
    world.sim.faults_set(Faults {
        api_fail: 1.0,
        api_endpoints: vec![jit_path],
        ..Faults::default()
    });
    world.lifecycle.activate().await;
    assert!(world.lifecycle.idle(Duration::from_secs(20)).await);
    assert_eq!(failures(&world, job).await, (0, 1), "GitHub's failure, not the job's");
    assert_eq!(world.sim.counters().registrations_alive, 0);
    assert_eq!(fake.instance_count(), 0);
    world.sim.faults_set(Faults::default());

    // 2. The provider launch fails: the registration minted for it is deleted.
    fake.fail_next_launch("no capacity");
    settle(&world, "second failure", async |w| failures(w, job).await.1 >= 2).await;
    assert_eq!(world.sim.counters().registrations_alive, 0);
    assert_eq!(fake.instance_count(), 0);
    let notes = world.store.job_notes_get(JobId(job)).await.expect("notes");
    assert!(notes.last_error.as_deref().is_some_and(|e| e.contains("no capacity")), "{notes:?}");
    assert!(notes.reason.is_some());

    // 3. A third provider fault: as many failures as `launch_attempts`, all
    // the infrastructure's, so the job is not given up (the bound on the
    // job's own failures is `outage.rs`'s): the next launch succeeds.
    // (A launch hanging past the provider timeout is the fake's hang +
    // timeout in `provider`.)
    fake.fail_next_launch("still no capacity");
    settle(&world, "third failure", async |w| failures(w, job).await.1 >= 3).await;
    assert_eq!(failures(&world, job).await, (0, 3));
    settle(&world, "a runner launched after all", async |_| fake.instance_count() == 1).await;
    assert_eq!(world.sim.counters().registrations_alive, 1);
    assert_eq!(world.store.runner_list_live().await.expect("live").len(), 1);
}

#[tokio::test]
async fn failed_teardown_steps_are_resumed_until_nothing_is_left() {
    let world = fake_world().await;
    let fake = world.fakes[&linux()].clone();
    let job = world.sim.job_queue(JobSpec::new(REPO, LABELS));
    world.webhook(job).await;
    settle(&world, "runner launched", async |_| fake.instance_count() == 1).await;
    assert_eq!(world.sim.counters().registrations_alive, 1);

    // The instance dies; deleting its registration fails, then destroying it.
    let runner = world.store.runner_list_live().await.expect("live").remove(0);
    fake.kill(&runner.id, 1);
    let delete_path = "DELETE /orgs/{org}/actions/runners/{runner_id}".to_owned();
    world.sim.faults_set(Faults {
        api_fail: 1.0,
        api_endpoints: vec![delete_path],
        ..Faults::default()
    });
    world.lifecycle.activate().await;
    assert!(world.lifecycle.idle(Duration::from_secs(20)).await);
    let stuck = world.store.runner_get(&runner.id).await.expect("get").expect("exists");
    assert_eq!(stuck.state, RunnerState::Draining);
    assert_eq!(stuck.reason.as_deref(), Some("instance exited with code 1"));

    world.sim.faults_set(Faults::default());
    fake.fail_next_destroy("disk busy");
    world.lifecycle.activate().await;
    assert!(world.lifecycle.idle(Duration::from_secs(20)).await);
    let registered = world.sim.runners().iter().any(|r| r.name == runner.id.as_str());
    assert!(!registered, "registration deleted on resume");
    assert_eq!(
        world.store.runner_get(&runner.id).await.expect("get").expect("exists").state,
        RunnerState::Draining,
        "instance destroy failed: still draining"
    );
    settle(&world, "old runner gone", async |w| {
        let stored = w.store.runner_get(&runner.id).await.expect("get").expect("exists");
        stored.state == RunnerState::Gone
    })
    .await;
    // The crash charged the job an infrastructure failure and it got a
    // replacement runner.
    assert_eq!(failures(&world, job).await, (0, 1));
    let events = world.store.runner_event_list(&runner.id).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert_eq!(kinds.last(), Some(&"gone"));
    let _ = fake.list().await;
}

#[tokio::test]
async fn orphan_instances_and_registrations_are_removed_busy_ones_kept() {
    let mut config = config();
    config.github_sync_interval = Duration::from_millis(1);
    let world = World::start(
        SimConfig::default(),
        config,
        vec![pool("linux", &["linux"], 4)],
        Runners::Fake,
    )
    .await;
    let fake = world.fakes[&linux()].clone();
    // An instance hangar forgot, and a registration it forgot.
    fake.plant(RunnerId::new(&linux(), 1));
    let request = hangar_github::JitConfigRequest {
        name: RunnerId::new(&linux(), 2).to_string(),
        runner_group_id: 1,
        labels: hangar_types::Labels::new(LABELS),
        work_folder: None,
    };
    use hangar_github::GitHubApi;
    let scope = hangar_github::RunnerScope::Organization("octo-org".into());
    world.github.jit_config_create(&scope, &request).await.expect("mint");
    assert_eq!(world.sim.counters().registrations_alive, 1);
    settle(&world, "orphans removed", async |w| {
        w.sim.counters().registrations_alive == 0 && w.fakes[&linux()].instance_count() == 0
    })
    .await;
}

#[tokio::test]
async fn keep_warm_counts_from_the_last_job_in_the_store_after_a_restart() {
    let mut warm = pool("linux", &["linux"], 4);
    warm.keep_warm = Duration::from_secs(600);
    let world = World::start(SimConfig::default(), config(), vec![warm], Runners::Fake).await;
    // What an earlier hangar process left: a runner that ran a job, gone a
    // minute ago. This process has seen no completion itself.
    let mut ran = RunnerRecord::planned(
        RunnerId::new(&linux(), 1),
        linux(),
        Some(JobId(7)),
        chrono::Utc::now() - chrono::Duration::seconds(120),
    );
    ran.job = Some(JobId(7));
    ran.state = RunnerState::Gone;
    ran.gone_at = Some(chrono::Utc::now() - chrono::Duration::seconds(60));
    world.store.runner_insert_batch(&[(ran, "ran job 7".into())]).await.expect("insert");

    world.lifecycle.activate().await;
    let live = world.store.runner_list_live().await.expect("list");
    assert_eq!(live.len(), 1, "one warm runner is kept for the pool: {live:?}");
    assert_eq!(live[0].for_job, None);
}
