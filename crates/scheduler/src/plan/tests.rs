//! Table tests of the planner: a world in, the exact actions out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::TimeZone;
use hangar_provider::{Instance, InstanceState};
use hangar_types::GitHubRunnerId;
use hangar_types::{
    JobId, JobState, Labels, PoolName, RunnerId, RunnerRecord, RunnerState, Timestamp,
};

use hangar_github::RunnerScope;
use hangar_store::FailureKind;

use super::{Action, JobView, ReapReason, Registration, Snapshot, plan};
use crate::config::{PoolConfig, SchedulerConfig};

pub(super) fn t(secs: i64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_700_000_000 + secs, 0).single().expect("valid time")
}

pub(super) fn pool(name: &str, labels: &[&str], max: u32) -> PoolConfig {
    PoolConfig {
        name: PoolName(name.into()),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        max_runners: max,
        min_hot: 0,
        idle_timeout: Duration::from_secs(60),
        keep_warm: Duration::ZERO,
        provider: (),
    }
}

pub(super) fn config() -> SchedulerConfig {
    SchedulerConfig {
        pickup_deadline: Duration::from_secs(120),
        max_lifetime: Duration::from_secs(3600),
        launch_attempts: 3,
        launch_backoff: Duration::from_secs(10),
        ..SchedulerConfig::default()
    }
}

fn job(id: i64, state: JobState, labels: &[&str]) -> JobView {
    JobView {
        id: JobId(id),
        state,
        labels: Labels::new(labels.iter().copied()),
        repository: "octo-org/app".into(),
        queued_at: t(id),
        runner_name: None,
        launch_failures: 0,
        infra_failures: 0,
        last_failure_at: None,
        last_failure_kind: None,
        last_error: None,
        reason: None,
    }
}

pub(super) fn rid(pool: &str, n: u64) -> RunnerId {
    RunnerId::new(&PoolName(pool.into()), n)
}

fn runner(pool: &str, n: u64, state: RunnerState, for_job: Option<i64>) -> RunnerRecord {
    let mut r =
        RunnerRecord::planned(rid(pool, n), PoolName(pool.into()), for_job.map(JobId), t(0));
    r.state = state;
    if state >= RunnerState::Launched {
        r.launched_at = Some(t(1));
        r.ready_at = Some(t(2));
    }
    r
}

fn instance(pool: &str, n: u64, state: InstanceState) -> Instance {
    Instance { runner_id: rid(pool, n), state, launched_at: t(1), detail: String::new() }
}

fn world(now: i64) -> Snapshot {
    Snapshot {
        now: t(now),
        jobs: Vec::new(),
        runners: Vec::new(),
        in_flight: HashSet::new(),
        instances: HashMap::from([(PoolName("linux".into()), Vec::new())]),
        registrations: None,
        unhealthy: BTreeMap::new(),
        last_completed: HashMap::new(),
    }
}

fn pools() -> Vec<PoolConfig> {
    vec![pool("linux", &["linux", "x64"], 2)]
}

fn creates(actions: &[Action]) -> Vec<(String, Option<i64>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RunnerCreate { pool, for_job } => Some((pool.0.clone(), for_job.map(|j| j.0))),
            _ => None,
        })
        .collect()
}

fn reasons(actions: &[Action]) -> Vec<(i64, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::JobReasonSet { job, reason } => Some((job.0, reason.clone())),
            _ => None,
        })
        .collect()
}

fn reaps(actions: &[Action]) -> Vec<(RunnerId, String, Option<i64>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RunnerReap { runner, reason, failure_of } => {
                Some((runner.clone(), reason.to_string(), failure_of.map(|j| j.0)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn queued_job_gets_a_runner_in_a_matching_pool_case_insensitively() {
    let mut w = world(10);
    w.jobs = vec![job(1, JobState::Queued, &["self-hosted", "LINUX"])];
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(creates(&actions), vec![("linux".into(), Some(1))]);
    assert_eq!(reasons(&actions), vec![(1, Some("creating a runner in pool linux".into()))]);
}

#[test]
fn unmatched_labels_and_full_pools_say_why() {
    let mut w = world(10);
    w.jobs = vec![
        job(1, JobState::Queued, &["self-hosted", "gpu", "arm64"]),
        job(2, JobState::Queued, &["linux"]),
        job(3, JobState::Queued, &["linux"]),
        job(4, JobState::Queued, &["linux"]),
    ];
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(creates(&actions), vec![("linux".into(), Some(2)), ("linux".into(), Some(3))]);
    assert_eq!(
        reasons(&actions),
        vec![
            (1, Some("no pool matches labels [arm64, gpu, self-hosted]".into())),
            (2, Some("creating a runner in pool linux".into())),
            (3, Some("creating a runner in pool linux".into())),
            (4, Some("pool linux at max 2/2".into())),
        ]
    );
}

#[test]
fn unchanged_reasons_are_not_rewritten_and_cleared_once_running() {
    let mut w = world(10);
    let mut queued = job(1, JobState::Queued, &["gpu"]);
    queued.reason = Some("no pool matches labels [gpu]".into());
    let mut running = job(2, JobState::InProgress, &["linux"]);
    running.reason = Some("creating a runner in pool linux".into());
    w.jobs = vec![queued, running];
    assert_eq!(
        plan(&config(), &pools(), &w),
        vec![Action::JobReasonSet { job: JobId(2), reason: None }]
    );
}

#[test]
fn launch_failures_are_retried_with_backoff_then_given_up() {
    let mut failing = job(1, JobState::Queued, &["linux"]);
    failing.launch_failures = 2;
    failing.last_failure_at = Some(t(100));
    failing.last_error = Some("boom".into());
    // Second retry waits 2 × 10 s after the last failure.
    let mut w = world(110);
    w.jobs = vec![failing.clone()];
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(creates(&actions), vec![]);
    assert_eq!(
        reasons(&actions)[0].1.as_deref(),
        Some("launch failed 2×, retrying at 22:15:20: boom")
    );
    w.now = t(121);
    assert_eq!(creates(&plan(&config(), &pools(), &w)), vec![("linux".into(), Some(1))]);
    failing.launch_failures = 3;
    w.jobs = vec![failing];
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(creates(&actions), vec![]);
    assert_eq!(reasons(&actions), vec![(1, Some("launch failed 3×: boom".into()))]);
}

/// A GitHub outage (or a provider fault) fails launch after launch: the
/// job backs off, up to `launch_backoff_max`, says why, and is never given
/// up; its own failures still are, after `launch_attempts`.
#[test]
fn infrastructure_failures_back_off_capped_and_never_give_a_job_up() {
    let config = SchedulerConfig { launch_backoff_max: Duration::from_secs(60), ..config() };
    let mut failing = job(1, JobState::Queued, &["linux"]);
    failing.infra_failures = 40;
    failing.last_failure_at = Some(t(100));
    failing.last_failure_kind = Some(FailureKind::Infrastructure);
    failing.last_error = Some("minting the JIT config: github answered 503".into());
    let mut w = world(159);
    w.jobs = vec![failing.clone()];
    let actions = plan(&config, &pools(), &w);
    assert_eq!(creates(&actions), vec![]);
    assert_eq!(
        reasons(&actions)[0].1.as_deref(),
        Some(
            "launch failed 40× on GitHub's or the provider's side (not counted against the \
             job), retrying at 22:16:00: minting the JIT config: github answered 503"
        )
    );
    // The wait is capped: 60 s after the last failure it tries again.
    w.now = t(161);
    assert_eq!(creates(&plan(&config, &pools(), &w)), vec![("linux".into(), Some(1))]);
    // Its own failures below the bound: still retried, after both kinds' backoff.
    failing.launch_failures = 2;
    failing.last_failure_kind = Some(FailureKind::Job);
    w.jobs = vec![failing.clone()];
    assert_eq!(creates(&plan(&config, &pools(), &w)), vec![("linux".into(), Some(1))]);
    failing.launch_failures = 3;
    w.jobs = vec![failing];
    let actions = plan(&config, &pools(), &w);
    assert_eq!(creates(&actions), vec![]);
    assert!(reasons(&actions)[0].1.as_deref().is_some_and(|r| r.starts_with("launch failed 3×: ")));
}

/// Another organization's job (another installation of the App, or an
/// org-wide hook with a repository scope) is never given a runner: not a
/// new one, not a spare one; it says why.
#[test]
fn jobs_outside_the_runner_scope_get_no_runner_and_say_why() {
    let org = SchedulerConfig {
        runner_scope: Some(RunnerScope::Organization("octo-org".into())),
        ..config()
    };
    let mut w = world(10);
    let mut foreign = job(1, JobState::Queued, &["linux"]);
    foreign.repository = "other-org/app".into();
    w.jobs = vec![foreign.clone(), job(2, JobState::Queued, &["linux"])];
    let actions = plan(&org, &pools(), &w);
    assert_eq!(creates(&actions), vec![("linux".into(), Some(2))]);
    assert_eq!(
        reasons(&actions)[0],
        (
            1,
            Some(
                "outside runner scope: repository other-org/app is not in organization octo-org"
                    .into()
            )
        )
    );
    // A spare runner is not handed to it either.
    w.jobs = vec![foreign];
    w.runners = vec![runner("linux", 7, RunnerState::Launched, None)];
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 7, InstanceState::Running)]);
    let actions = plan(&org, &pools(), &w);
    assert!(
        reasons(&actions)
            .iter()
            .all(|(_, r)| r.as_deref().is_some_and(|r| r.starts_with("outside"))),
        "{actions:?}"
    );
    assert_eq!(creates(&actions), vec![]);
    // A repository scope: the other repositories of the same owner are outside.
    let repo = SchedulerConfig { runner_scope: RunnerScope::parse("octo-org/app"), ..config() };
    let mut sibling = job(3, JobState::Queued, &["linux"]);
    sibling.repository = "octo-org/lib".into();
    let mut w = world(10);
    w.jobs = vec![sibling, job(4, JobState::Queued, &["linux"])];
    let actions = plan(&repo, &pools(), &w);
    assert_eq!(creates(&actions), vec![("linux".into(), Some(4))]);
    assert_eq!(
        reasons(&actions)[0],
        (3, Some("outside runner scope: repository octo-org/lib is not octo-org/app".into()))
    );
}

#[test]
fn a_runner_on_its_way_is_counted_not_duplicated() {
    let mut w = world(10);
    w.jobs = vec![job(1, JobState::Queued, &["linux"]), job(2, JobState::Queued, &["linux"])];
    // Runner 7 was made for job 2; job 1 is older but job 2 keeps its own runner.
    w.runners = vec![runner("linux", 7, RunnerState::Launched, Some(2))];
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 7, InstanceState::Running)]);
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(creates(&actions), vec![("linux".into(), Some(1))]);
    assert_eq!(
        reasons(&actions)[1],
        (2, Some(format!("runner {} is on its way", rid("linux", 7))))
    );
}

#[test]
fn stolen_runner_is_recorded_and_the_victim_gets_another() {
    let mut w = world(10);
    let mut thief = job(2, JobState::InProgress, &["linux"]);
    thief.runner_name = Some(rid("linux", 7).to_string());
    w.jobs = vec![job(1, JobState::Queued, &["linux"]), thief];
    w.runners = vec![runner("linux", 7, RunnerState::Launched, Some(1))];
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 7, InstanceState::Running)]);
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(
        actions[0],
        Action::RunnerAssign {
            runner: rid("linux", 7),
            job: JobId(2),
            stolen_from: Some(JobId(1))
        }
    );
    assert_eq!(creates(&actions), vec![("linux".into(), Some(1))]);
}

#[test]
fn finished_and_dead_runners_are_reaped_and_failures_charged() {
    let mut w = world(10);
    let mut done = job(1, JobState::Completed, &["linux"]);
    done.runner_name = Some(rid("linux", 1).to_string());
    w.jobs = vec![done, job(2, JobState::Queued, &["linux"]), job(3, JobState::Queued, &["linux"])];
    let mut busy = runner("linux", 1, RunnerState::Busy, Some(1));
    busy.job = Some(JobId(1));
    w.runners = vec![
        busy,
        runner("linux", 2, RunnerState::Launched, Some(2)),
        runner("linux", 3, RunnerState::Launched, Some(3)),
    ];
    w.instances.insert(
        PoolName("linux".into()),
        vec![
            instance("linux", 1, InstanceState::Running),
            instance("linux", 2, InstanceState::Exited { code: Some(1) }),
        ],
    );
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(
        reaps(&actions),
        vec![
            (rid("linux", 1), "job 1 completed".into(), None),
            (rid("linux", 2), "instance exited with code 1".into(), Some(2)),
            (rid("linux", 3), "instance disappeared from the provider".into(), Some(3)),
        ]
    );
    // A runner that died before GitHub gave it a job failed on the
    // provider's side: charged as an infrastructure failure.
    let kinds: Vec<FailureKind> = actions
        .iter()
        .filter_map(|a| match a {
            Action::RunnerReap { reason, failure_of: Some(_), .. } => Some(reason.failure_kind()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [FailureKind::Infrastructure, FailureKind::Infrastructure]);
    // The reaped runners still count against max until gone: no room to replace yet.
    assert_eq!(creates(&actions), vec![]);
}

#[test]
fn unlisted_provider_decides_nothing_about_instances() {
    let mut w = world(10);
    w.instances.clear();
    w.jobs = vec![job(2, JobState::Queued, &["linux"])];
    w.runners = vec![runner("linux", 2, RunnerState::Launched, Some(2))];
    assert_eq!(reaps(&plan(&config(), &pools(), &w)), vec![]);
}

#[test]
fn interrupted_creations_are_reaped_unless_in_flight() {
    let mut w = world(10);
    w.jobs = vec![job(1, JobState::Queued, &["linux"])];
    w.runners = vec![
        runner("linux", 1, RunnerState::Planned, Some(1)),
        runner("linux", 2, RunnerState::Registered, None),
        runner("linux", 3, RunnerState::Draining, None),
    ];
    w.in_flight.insert(rid("linux", 1));
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(
        reaps(&actions),
        vec![
            (rid("linux", 2), "creation interrupted (hangar restarted)".into(), None),
            (rid("linux", 3), "resuming teardown".into(), None),
        ]
    );
    // Job 1 waits for the runner being created for it.
    assert_eq!(creates(&actions), vec![]);
}

#[test]
fn runners_never_picked_up_are_replaced_after_the_deadline() {
    let mut w = world(200);
    w.jobs = vec![job(1, JobState::Queued, &["linux"])];
    w.runners = vec![runner("linux", 1, RunnerState::Launched, Some(1))];
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 1, InstanceState::Running)]);
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(
        reaps(&actions),
        vec![(rid("linux", 1), "not picked up within 120s".into(), Some(1))]
    );
    assert_eq!(creates(&actions), vec![]);
}

#[test]
fn orphans_are_destroyed_but_busy_registrations_are_left() {
    let mut w = world(10);
    w.runners = vec![runner("linux", 1, RunnerState::Launched, None)];
    w.instances.insert(
        PoolName("linux".into()),
        vec![
            instance("linux", 1, InstanceState::Running),
            instance("linux", 9, InstanceState::Running),
        ],
    );
    w.registrations = Some(vec![
        Registration {
            github_id: GitHubRunnerId(1),
            name: rid("linux", 1).to_string(),
            busy: false,
        },
        Registration {
            github_id: GitHubRunnerId(8),
            name: rid("linux", 8).to_string(),
            busy: false,
        },
        Registration {
            github_id: GitHubRunnerId(10),
            name: rid("linux", 10).to_string(),
            busy: true,
        },
        Registration {
            github_id: GitHubRunnerId(11),
            name: "someone else's runner".into(),
            busy: false,
        },
    ]);
    let actions = plan(&config(), &pools(), &w);
    assert!(actions.contains(&Action::InstanceDestroy {
        pool: PoolName("linux".into()),
        runner: rid("linux", 9)
    }));
    assert!(actions.contains(&Action::RegistrationDelete {
        github_id: GitHubRunnerId(8),
        name: rid("linux", 8).to_string()
    }));
    assert_eq!(
        actions.iter().filter(|a| matches!(a, Action::RegistrationDelete { .. })).count(),
        1
    );
}

/// A teardown that finished between the provider's list and the store read
/// leaves an instance and a registration the store calls `gone`: the runner
/// is still in flight in the snapshot, so nothing is planned for it twice.
#[test]
fn leftovers_of_a_runner_in_flight_are_not_orphans() {
    let mut w = world(10);
    w.in_flight.insert(rid("linux", 1));
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 1, InstanceState::Running)]);
    w.registrations = Some(vec![Registration {
        github_id: GitHubRunnerId(1),
        name: rid("linux", 1).to_string(),
        busy: false,
    }]);
    let actions = plan(&config(), &pools(), &w);
    assert_eq!(actions, vec![]);
}

#[test]
fn hot_runners_are_kept_extras_time_out_and_busy_ones_are_never_reaped() {
    let mut hot = pool("linux", &["linux"], 5);
    hot.min_hot = 1;
    hot.keep_warm = Duration::from_secs(30);
    let mut w = world(4000);
    let mut busy = runner("linux", 1, RunnerState::Busy, None);
    busy.job = Some(JobId(5));
    w.jobs = vec![job(5, JobState::InProgress, &["linux"])];
    w.runners = vec![
        busy,
        runner("linux", 2, RunnerState::Launched, None),
        runner("linux", 3, RunnerState::Launched, None),
    ];
    w.runners[2].created_at = t(3990);
    w.runners[2].launched_at = Some(t(3990));
    w.instances.insert(
        PoolName("linux".into()),
        (1..=3).map(|n| instance("linux", n, InstanceState::Running)).collect(),
    );
    let actions = plan(&config(), &[hot.clone()], &w);
    // Runner 2 is over max lifetime (an hour); 3 is the one hot runner; 1 is busy.
    assert_eq!(
        reaps(&actions),
        vec![(rid("linux", 2), "over the maximum lifetime 3600s".into(), None)]
    );
    assert_eq!(creates(&actions), vec![]);
    // A recent completion asks for one more warm runner.
    w.last_completed.insert(PoolName("linux".into()), t(3990));
    assert_eq!(creates(&plan(&config(), &[hot.clone()], &w)), vec![("linux".into(), None)]);
    // Without min_hot, an idle extra past the pool's idle timeout goes.
    hot.min_hot = 0;
    w.last_completed.clear();
    w.now = t(4100);
    w.runners.remove(1);
    assert_eq!(
        reaps(&plan(&config(), &[hot], &w)),
        vec![(rid("linux", 3), "idle beyond the pool timeout 60s".into(), None)]
    );
}

#[test]
fn running_instances_are_marked_ready_once() {
    let mut w = world(10);
    let mut fresh = runner("linux", 1, RunnerState::Launched, None);
    fresh.ready_at = None;
    w.runners = vec![fresh];
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 1, InstanceState::Running)]);
    let mut p = pool("linux", &["linux"], 2);
    p.min_hot = 1;
    assert_eq!(plan(&config(), &[p], &w), vec![Action::RunnerReady { runner: rid("linux", 1) }]);
}

#[test]
fn reap_reason_display_is_stable() {
    assert_eq!(ReapReason::OrphanInstance.to_string(), "orphan instance (not in the store)");
    let max = Duration::from_secs(300);
    assert_eq!(super::backoff(Duration::from_secs(5), 1, max), Duration::from_secs(5));
    assert_eq!(super::backoff(Duration::from_secs(5), 3, max), Duration::from_secs(20));
    assert_eq!(super::backoff(Duration::from_secs(5), 7, max), max, "capped");
    assert_eq!(super::backoff(Duration::from_secs(5), u32::MAX, max), max, "no overflow");
}

/// Hangar died after launching a runner but before recording it; GitHub
/// then gave it a job. The record skips ahead to busy (the state machine
/// allows `planned`/`registered → busy`) instead of being torn down.
#[test]
fn an_interrupted_runner_github_names_for_a_job_is_assigned() {
    let mut w = world(10);
    let mut running = job(1, JobState::InProgress, &["linux"]);
    running.runner_name = Some(rid("linux", 1).to_string());
    let mut thief = job(2, JobState::InProgress, &["linux"]);
    thief.runner_name = Some(rid("linux", 2).to_string());
    w.jobs = vec![running, thief, job(3, JobState::Queued, &["linux"])];
    w.runners = vec![
        runner("linux", 1, RunnerState::Planned, Some(1)),
        runner("linux", 2, RunnerState::Registered, Some(3)),
    ];
    let actions = plan(&config(), &pools(), &w);
    let assigned = [
        Action::RunnerAssign { runner: rid("linux", 1), job: JobId(1), stolen_from: None },
        Action::RunnerAssign {
            runner: rid("linux", 2),
            job: JobId(2),
            stolen_from: Some(JobId(3)),
        },
    ];
    assert_eq!(actions[..2], assigned);
    for state in [RunnerState::Planned, RunnerState::Registered] {
        assert!(state.can_transition_to(RunnerState::Busy));
    }
    assert_eq!(reaps(&actions), vec![]);
}

/// Found by the property test: the registration list is the one place the
/// planner sees GitHub call a runner busy without a job naming it.
#[test]
fn runners_and_orphans_github_lists_as_busy_are_not_torn_down() {
    let mut w = world(10);
    w.runners = vec![
        runner("linux", 1, RunnerState::Planned, None),
        runner("linux", 2, RunnerState::Launched, None),
        runner("linux", 3, RunnerState::Draining, None),
    ];
    w.instances.insert(
        PoolName("linux".into()),
        vec![
            instance("linux", 2, InstanceState::Exited { code: Some(0) }),
            instance("linux", 9, InstanceState::Running),
        ],
    );
    w.registrations = Some(
        [1u64, 2, 3, 9]
            .map(|n| Registration {
                github_id: GitHubRunnerId(n.cast_signed()),
                name: rid("linux", n).to_string(),
                busy: true,
            })
            .to_vec(),
    );
    assert_eq!(plan(&config(), &pools(), &w), vec![]);
    // Not listed this time: the executor's re-read before any delete decides.
    w.registrations = None;
    assert_eq!(reaps(&plan(&config(), &pools(), &w)).len(), 3);
}

/// Found by the property test: the executor writes every action from the
/// snapshot's record, so a second action on one runner in the same plan
/// would be refused as a stale write.
#[test]
fn a_runner_gets_at_most_one_action_per_plan() {
    let mut w = world(10);
    // Named by two jobs: assigned once. Not ready yet: assigned now, ready next time.
    let mut first = job(1, JobState::InProgress, &["linux"]);
    first.runner_name = Some(rid("linux", 1).to_string());
    let mut second = job(2, JobState::InProgress, &["linux"]);
    second.runner_name = first.runner_name.clone();
    w.jobs = vec![first, second];
    let mut fresh = runner("linux", 1, RunnerState::Launched, None);
    fresh.ready_at = None;
    // An idle extra that just came up: marked ready now, reaped next time.
    let mut idle = runner("linux", 2, RunnerState::Launched, None);
    idle.ready_at = None;
    w.runners = vec![fresh, idle];
    w.instances.insert(
        PoolName("linux".into()),
        vec![
            instance("linux", 1, InstanceState::Running),
            instance("linux", 2, InstanceState::Running),
        ],
    );
    w.now = t(100);
    assert_eq!(
        plan(&config(), &pools(), &w),
        vec![
            Action::RunnerAssign { runner: rid("linux", 1), job: JobId(1), stolen_from: None },
            Action::RunnerReady { runner: rid("linux", 2) },
        ]
    );
}

/// Found by the property test: a spare runner whose task is running is
/// counted, but neither timed out nor reaped for a removed pool.
#[test]
fn spare_runners_in_flight_are_left_to_their_task() {
    let mut w = world(1000);
    w.runners = vec![
        runner("linux", 1, RunnerState::Launched, None),
        runner("retired", 2, RunnerState::Launched, None),
    ];
    w.instances
        .insert(PoolName("linux".into()), vec![instance("linux", 1, InstanceState::Running)]);
    w.in_flight = HashSet::from([rid("linux", 1), rid("retired", 2)]);
    assert_eq!(plan(&config(), &pools(), &w), vec![]);
    w.in_flight.clear();
    assert_eq!(reaps(&plan(&config(), &pools(), &w)).len(), 2);
}
