//! Property test of the planner against the runner state machine.
//!
//! Random snapshots: jobs in every state (some naming one of our runners:
//! stolen or not), runners in every live state (restarts leave them mid-saga),
//! instances in every state (some without a runner record: orphans), GitHub
//! registrations busy or idle (some unknown to the store), runners in flight,
//! unlisted and unhealthy pools. For each, with a small pure model of the
//! executor in which every step succeeds:
//!
//! 1. every action the planner emits is one the state machine allows for the
//!    runner it names, and never two conflicting actions on one runner, and
//!    never a teardown of a runner GitHub reports busy;
//! 2. plan → execute → re-plan reaches a fixed point (the world stops
//!    changing) within [`MAX_ROUNDS`] rounds.
//!
//! `HANGAR_PROPTEST_CASES` raises the number of cases (default 2,000).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use hangar_provider::{Instance, InstanceState};
use hangar_store::FailureKind;
use hangar_types::{JobId, JobState, Labels, PoolName, RunnerId, RunnerRecord, RunnerState};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::tests::{config, pool, rid, t};
use super::{Action, JobView, Registration, Snapshot, plan};
use crate::config::PoolConfig;

/// The model's clock: every round happens at this instant.
const NOW: i64 = 1_000;
/// Runner numbers drawn per case (a record, an instance, a registration each, or not).
const SLOTS: usize = 8;
const MAX_JOBS: usize = 6;
/// A job id the store does not have (jobs are numbered 1..=MAX_JOBS).
const NO_SUCH_JOB: i64 = 7;
/// Rounds allowed to reach the fixed point. The longest chain is a stolen
/// runner assigned, its job's completion reaping it, the victim's new runner,
/// and the reasons recorded along the way.
const MAX_ROUNDS: usize = 6;
/// Pools the planner is configured with; runners of `retired` belong to a
/// pool that was removed from the configuration.
const CONFIGURED: [&str; 2] = ["linux", "gpu"];
const POOLS: [&str; 3] = ["linux", "gpu", "retired"];
const LABELS: [&[&str]; 4] = [&["linux"], &["linux", "x64"], &["gpu"], &["arm64"]];

fn cases() -> u32 {
    std::env::var("HANGAR_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

// ---------------------------------------------------------------- generators

/// What is drawn for one case, before it is turned into a [`World`].
#[derive(Debug, Clone)]
struct Draw {
    pools: Vec<PoolDraw>,
    slots: Vec<Slot>,
    jobs: Vec<JobDraw>,
    registrations_read: bool,
    /// A `linux` job completed this many seconds ago (for `keep_warm`).
    last_completed_ago: Option<i64>,
}

#[derive(Debug, Clone)]
struct PoolDraw {
    max_runners: u32,
    min_hot: u32,
    keep_warm: bool,
    /// The provider's list answered.
    listed: bool,
    unhealthy: bool,
}

/// Runner number `n`: its pool and what the store, the provider and GitHub
/// hold for it. A slot with an instance or registration but no record is an
/// orphan; one with a record in `planned`/`registered`/`draining` and not in
/// flight is what a restart leaves.
#[derive(Debug, Clone)]
struct Slot {
    pool: &'static str,
    record: Option<RecordDraw>,
    instance: Option<InstanceState>,
    /// GitHub's registration for the name: `Some(busy)`.
    registration: Option<bool>,
    in_flight: bool,
}

#[derive(Debug, Clone)]
struct RecordDraw {
    state: RunnerState,
    for_job: Option<i64>,
    /// The job GitHub gave it; kept only where the executor could have set it.
    job: Option<i64>,
    age_secs: i64,
    ready: bool,
    github_id_known: bool,
}

#[derive(Debug, Clone)]
struct JobDraw {
    state: JobState,
    labels: &'static [&'static str],
    /// The slot GitHub says runs it (only kept once in progress).
    runner: Option<usize>,
    launch_failures: u32,
    failed_ago: Option<i64>,
    stale_reason: bool,
}

fn live_state() -> impl Strategy<Value = RunnerState> {
    // The store snapshot holds only runners that are not gone.
    prop::sample::select(&RunnerState::ALL[..5])
}

fn instance_state() -> impl Strategy<Value = InstanceState> {
    prop_oneof![
        Just(InstanceState::Starting),
        Just(InstanceState::Running),
        prop::option::of(prop::sample::select(&[0, 1, 137][..]))
            .prop_map(|code| InstanceState::Exited { code }),
    ]
}

/// A job id, possibly one the store does not have.
fn job_id() -> impl Strategy<Value = i64> {
    1..=NO_SUCH_JOB
}

fn record() -> impl Strategy<Value = RecordDraw> {
    let ids = (prop::option::of(job_id()), prop::option::of(job_id()));
    (live_state(), ids, 0..5_000i64, any::<bool>(), any::<bool>()).prop_map(
        |(state, (for_job, job), age_secs, ready, github_id_known)| RecordDraw {
            state,
            for_job,
            job,
            age_secs,
            ready,
            github_id_known,
        },
    )
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        prop::sample::select(&POOLS[..]),
        prop::option::weighted(0.7, record()),
        prop::option::of(instance_state()),
        prop::option::of(any::<bool>()),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(pool, record, instance, registration, in_flight)| Slot {
            pool,
            record,
            instance,
            registration,
            in_flight,
        })
}

fn job() -> impl Strategy<Value = JobDraw> {
    (
        prop::sample::select(&JobState::ALL[..]),
        prop::sample::select(&LABELS[..]),
        prop::option::of(0..SLOTS),
        0..4u32,
        prop::option::of(0..60i64),
        any::<bool>(),
    )
        .prop_map(|(state, labels, runner, launch_failures, failed_ago, stale_reason)| {
            JobDraw { state, labels, runner, launch_failures, failed_ago, stale_reason }
        })
}

fn pool_draw() -> impl Strategy<Value = PoolDraw> {
    (0..=3u32, 0..=2u32, any::<bool>(), prop::bool::weighted(0.85), prop::bool::weighted(0.15))
        .prop_map(|(max_runners, min_hot, keep_warm, listed, unhealthy)| PoolDraw {
            max_runners,
            min_hot,
            keep_warm,
            listed,
            unhealthy,
        })
}

fn draw() -> impl Strategy<Value = Draw> {
    (
        prop::collection::vec(pool_draw(), CONFIGURED.len()),
        prop::collection::vec(slot(), SLOTS),
        prop::collection::vec(job(), 0..=MAX_JOBS),
        any::<bool>(),
        prop::option::of(0..120i64),
    )
        .prop_map(|(pools, slots, jobs, registrations_read, last_completed_ago)| Draw {
            pools,
            slots,
            jobs,
            registrations_read,
            last_completed_ago,
        })
}

// --------------------------------------------------------------- the model

/// The truth the model keeps: the store, the providers and GitHub.
#[derive(Debug, Clone, PartialEq)]
struct World {
    /// Every job the store has (the snapshot drops completed ones without a
    /// live runner, as `job_list_active` does).
    jobs: Vec<JobView>,
    /// Every runner record, gone ones included.
    runners: Vec<RunnerRecord>,
    /// Each configured pool's instances.
    instances: BTreeMap<PoolName, Vec<Instance>>,
    /// Pools whose provider list answers.
    listed: BTreeSet<PoolName>,
    registrations: Vec<Registration>,
    /// Whether activations read GitHub's registration list.
    registrations_read: bool,
    /// Tasks running when the first snapshot is taken; they end in round one.
    in_flight: HashSet<RunnerId>,
    unhealthy: BTreeMap<PoolName, String>,
    last_completed: HashMap<PoolName, hangar_types::Timestamp>,
    /// Runners (and registrations) the model created, for fresh ids.
    created: u64,
}

fn github_id(n: u64) -> hangar_types::GitHubRunnerId {
    hangar_types::GitHubRunnerId(100 + n.cast_signed())
}

fn build(draw: &Draw) -> (Vec<PoolConfig>, World) {
    let mut pools = Vec::new();
    let mut world = World {
        jobs: Vec::new(),
        runners: Vec::new(),
        instances: BTreeMap::new(),
        listed: BTreeSet::new(),
        registrations: Vec::new(),
        registrations_read: draw.registrations_read,
        in_flight: HashSet::new(),
        unhealthy: BTreeMap::new(),
        last_completed: HashMap::new(),
        created: 0,
    };
    for (name, d) in CONFIGURED.iter().zip(&draw.pools) {
        let labels: &[&str] = if *name == "gpu" { &["gpu"] } else { &["linux", "x64"] };
        let mut p = pool(name, labels, d.max_runners);
        p.min_hot = d.min_hot;
        if d.keep_warm {
            p.keep_warm = std::time::Duration::from_secs(60);
        }
        world.instances.insert(p.name.clone(), Vec::new());
        if d.listed {
            world.listed.insert(p.name.clone());
        }
        if d.unhealthy {
            world.unhealthy.insert(p.name.clone(), "no capacity".into());
        }
        pools.push(p);
    }
    if let Some(ago) = draw.last_completed_ago {
        world.last_completed.insert(PoolName("linux".into()), t(NOW - ago));
    }
    for (index, slot) in draw.slots.iter().enumerate() {
        let n = index as u64 + 1;
        let id = rid(slot.pool, n);
        let pool_name = PoolName(slot.pool.into());
        if let Some(r) = &slot.record {
            world.runners.push(runner_record(id.clone(), pool_name.clone(), n, r));
        }
        if let (Some(state), Some(list)) = (slot.instance, world.instances.get_mut(&pool_name)) {
            list.push(Instance {
                runner_id: id.clone(),
                state,
                launched_at: t(0),
                detail: "".into(),
            });
        }
        if let Some(busy) = slot.registration {
            let name = id.to_string();
            world.registrations.push(Registration { github_id: github_id(n), name, busy });
        }
        if slot.in_flight {
            world.in_flight.insert(id);
        }
    }
    for (id, d) in (1..).zip(&draw.jobs) {
        let runner = d.runner.filter(|_| d.state >= JobState::InProgress);
        let runner_name = runner.map(|s| rid(draw.slots[s].pool, s as u64 + 1).to_string());
        world.jobs.push(JobView {
            id: JobId(id),
            state: d.state,
            labels: Labels::new(d.labels.iter().copied()),
            repository: "octo-org/app".into(),
            queued_at: t(id),
            runner_name,
            launch_failures: d.launch_failures,
            infra_failures: 0,
            last_failure_at: d.failed_ago.filter(|_| d.launch_failures > 0).map(|a| t(NOW - a)),
            last_failure_kind: (d.launch_failures > 0).then_some(FailureKind::Job),
            last_error: (d.launch_failures > 0).then(|| "boom".to_owned()),
            reason: d.stale_reason.then(|| "stale reason".to_owned()),
        });
    }
    (pools, world)
}

/// A record in the shape the executor could have left it in `state`.
fn runner_record(id: RunnerId, pool: PoolName, n: u64, d: &RecordDraw) -> RunnerRecord {
    let created = NOW - d.age_secs;
    let mut r = RunnerRecord::planned(id, pool, d.for_job.map(JobId), t(created));
    r.state = d.state;
    r.generation = 3;
    let minted = d.state != RunnerState::Planned;
    if minted && d.github_id_known {
        r.github_id = Some(github_id(n));
        r.jit_minted_at = Some(t(created));
    }
    if d.state >= RunnerState::Launched {
        r.launched_at = Some(t(created + 1));
        r.ready_at = d.ready.then(|| t(created + 2));
    }
    // Only an assignment sets the job, and only busy and draining follow one.
    if matches!(d.state, RunnerState::Busy | RunnerState::Draining) {
        r.job = d.job.map(JobId);
    }
    r
}

impl World {
    /// The world without write counters. A teardown GitHub refuses (422:
    /// still busy, although its job completed) is tried again every
    /// activation until GitHub lets the runner go: that costs writes, it
    /// changes nothing.
    fn content(&self) -> World {
        let mut world = self.clone();
        for runner in &mut world.runners {
            runner.generation = 0;
        }
        world
    }

    /// What an activation reads.
    fn snapshot(&self) -> Snapshot {
        let live: Vec<RunnerRecord> =
            self.runners.iter().filter(|r| r.state != RunnerState::Gone).cloned().collect();
        let jobs = self
            .jobs
            .iter()
            .filter(|j| j.state != JobState::Completed || live.iter().any(|r| r.job == Some(j.id)))
            .cloned()
            .collect();
        Snapshot {
            now: t(NOW),
            jobs,
            runners: live,
            in_flight: self.in_flight.clone(),
            instances: self
                .instances
                .iter()
                .filter(|(pool, _)| self.listed.contains(*pool))
                .map(|(pool, list)| (pool.clone(), list.clone()))
                .collect(),
            registrations: self.registrations_read.then(|| self.registrations.clone()),
            unhealthy: self.unhealthy.clone(),
            last_completed: self.last_completed.clone(),
        }
    }

    /// The executor with every step succeeding, in its order: creations,
    /// reasons, then each action. `Err` is a property violation.
    fn execute(&mut self, snapshot: &Snapshot, actions: &[Action]) -> Result<(), String> {
        let seen: HashMap<&RunnerId, &RunnerRecord> =
            snapshot.runners.iter().map(|r| (&r.id, r)).collect();
        let mut claimed = snapshot.in_flight.clone();
        for action in actions {
            if let Action::RunnerCreate { pool, for_job } = action {
                self.create(pool, *for_job)?;
            }
        }
        for action in actions {
            if let Action::JobReasonSet { job, reason } = action
                && let Some(j) = self.jobs.iter_mut().find(|j| j.id == *job)
            {
                j.reason.clone_from(reason);
            }
        }
        for action in actions {
            match action {
                Action::RunnerAssign { runner, job, .. } => {
                    if let Some(r) = seen.get(runner) {
                        self.write(r, |r| {
                            r.state = RunnerState::Busy;
                            r.job = Some(*job);
                            r.busy_at.get_or_insert(t(NOW));
                        })?;
                    }
                }
                Action::RunnerReady { runner } => {
                    if let Some(r) = seen.get(runner) {
                        self.write(r, |r| {
                            r.ready_at.get_or_insert(t(NOW));
                        })?;
                    }
                }
                Action::RunnerReap { runner, reason, failure_of } => {
                    if let Some(r) = seen.get(runner)
                        && claimed.insert(runner.clone())
                    {
                        let failure = failure_of.map(|job| (job, reason.failure_kind()));
                        self.teardown((*r).clone(), &reason.to_string(), failure)?;
                    }
                }
                Action::InstanceDestroy { pool, runner } => {
                    if claimed.insert(runner.clone()) {
                        // Its registration first; a busy one stops it.
                        if self.registration_remove(None, runner.as_str()) {
                            self.destroy(pool, runner)?;
                        }
                    }
                }
                Action::RegistrationDelete { github_id, name } => {
                    let name = RunnerId::try_from(name.clone()).map_err(|e| e.to_string())?;
                    if claimed.insert(name.clone()) {
                        self.registration_remove(Some(*github_id), name.as_str());
                    }
                }
                Action::RunnerCreate { .. } | Action::JobReasonSet { .. } => {}
            }
        }
        Ok(())
    }

    /// The creation saga: planned, minted, registered, launched, launched.
    fn create(&mut self, pool: &PoolName, for_job: Option<JobId>) -> Result<(), String> {
        self.created += 1;
        let n = 1_000 + self.created;
        let id = RunnerId::new(pool, n);
        let planned = RunnerRecord::planned(id.clone(), pool.clone(), for_job, t(NOW));
        self.runners.push(planned.clone());
        self.registrations.push(Registration {
            github_id: github_id(n),
            name: id.to_string(),
            busy: false,
        });
        let registered = self.write(&planned, |r| {
            r.state = RunnerState::Registered;
            r.github_id = Some(github_id(n));
            r.jit_minted_at = Some(t(NOW));
        })?;
        let list = self.instances.get_mut(pool).ok_or(format!("created in unknown pool {pool}"))?;
        list.push(Instance {
            runner_id: id,
            state: InstanceState::Running,
            launched_at: t(NOW),
            detail: "".into(),
        });
        self.write(&registered, |r| {
            r.state = RunnerState::Launched;
            r.launched_at = Some(t(NOW));
            r.ready_at = Some(t(NOW));
        })?;
        Ok(())
    }

    /// `runner_teardown`, every step succeeding.
    fn teardown(
        &mut self,
        mut runner: RunnerRecord,
        reason: &str,
        failure_of: Option<(JobId, FailureKind)>,
    ) -> Result<(), String> {
        if runner.state != RunnerState::Draining {
            let busy = self.registration_of(&runner).is_some_and(|r| r.busy);
            if runner.job.is_none() && busy {
                return self.keep_busy(&runner);
            }
            runner = self.write(&runner, |r| {
                r.state = RunnerState::Draining;
                r.reason = Some(reason.to_owned());
            })?;
            if let Some((job, kind)) = failure_of
                && let Some(job) = self.jobs.iter_mut().find(|j| j.id == job)
            {
                match kind {
                    FailureKind::Job => job.launch_failures += 1,
                    FailureKind::Infrastructure => job.infra_failures += 1,
                }
                job.last_failure_at = Some(t(NOW));
                job.last_failure_kind = Some(kind);
                job.last_error = Some(reason.to_owned());
            }
        }
        if !self.registration_remove(runner.github_id, runner.id.as_str()) {
            return self.keep_busy(&runner);
        }
        if self.instances.contains_key(&runner.pool) {
            self.destroy(&runner.pool.clone(), &runner.id)?;
        }
        let runner = self.write(&runner, |r| {
            r.state = RunnerState::Gone;
            r.gone_at = Some(t(NOW));
        })?;
        if runner.job.is_some() {
            self.last_completed.insert(runner.pool, t(NOW));
        }
        Ok(())
    }

    fn keep_busy(&mut self, runner: &RunnerRecord) -> Result<(), String> {
        self.write(runner, |r| {
            r.state = RunnerState::Busy;
            r.busy_at.get_or_insert(t(NOW));
        })
        .map(|_| ())
    }

    /// The registration the executor would re-read: by GitHub id, else by name.
    fn registration_of(&self, runner: &RunnerRecord) -> Option<&Registration> {
        self.registrations.iter().find(|r| match runner.github_id {
            Some(id) => r.github_id == id,
            None => r.name == runner.id.as_str(),
        })
    }

    /// Deletes a registration; `false` when GitHub refuses (422: busy).
    fn registration_remove(
        &mut self,
        github_id: Option<hangar_types::GitHubRunnerId>,
        name: &str,
    ) -> bool {
        let found = self.registrations.iter().position(|r| match github_id {
            Some(id) => r.github_id == id,
            None => r.name == name,
        });
        match found {
            Some(index) if self.registrations[index].busy => false,
            Some(index) => {
                self.registrations.remove(index);
                true
            }
            None => true,
        }
    }

    fn destroy(&mut self, pool: &PoolName, runner: &RunnerId) -> Result<(), String> {
        if let Some(r) = self.registrations.iter().find(|r| r.name == runner.as_str() && r.busy) {
            return Err(format!("destroyed the instance of {}, which GitHub says is busy", r.name));
        }
        if let Some(list) = self.instances.get_mut(pool) {
            list.retain(|i| &i.runner_id != runner);
        }
        Ok(())
    }

    /// A conditional write, as `transition` makes it: refused when the
    /// record changed since it was read (two actions on one runner in one
    /// plan) or when the state machine forbids the move.
    fn write(
        &mut self,
        seen: &RunnerRecord,
        change: impl FnOnce(&mut RunnerRecord),
    ) -> Result<RunnerRecord, String> {
        let stored = self
            .runners
            .iter_mut()
            .find(|r| r.id == seen.id)
            .ok_or_else(|| format!("{}: no such runner", seen.id))?;
        if stored.generation != seen.generation {
            return Err(format!(
                "{}: written twice from one snapshot (conflicting actions)",
                seen.id
            ));
        }
        let mut next = stored.clone();
        change(&mut next);
        if next == *stored {
            return Ok(next);
        }
        if next.state != stored.state && !stored.state.can_transition_to(next.state) {
            return Err(format!("{}: {} → {} is not allowed", seen.id, stored.state, next.state));
        }
        next.generation += 1;
        *stored = next.clone();
        Ok(next)
    }
}

// --------------------------------------------------------------- properties

/// Property 1, on the plan itself.
fn check_plan(snapshot: &Snapshot, actions: &[Action]) -> Result<(), String> {
    let runners: HashMap<&RunnerId, &RunnerRecord> =
        snapshot.runners.iter().map(|r| (&r.id, r)).collect();
    let github_busy: HashSet<&str> = snapshot
        .registrations
        .iter()
        .flatten()
        .filter(|r| r.busy)
        .map(|r| r.name.as_str())
        .collect();
    let mut acted_on: HashSet<&RunnerId> = HashSet::new();
    for action in actions {
        let (runner, next) = match action {
            Action::RunnerAssign { runner, .. } => (runner, Some(RunnerState::Busy)),
            Action::RunnerReady { runner } => (runner, None),
            Action::RunnerReap { runner, .. } => {
                if github_busy.contains(runner.as_str()) {
                    return Err(format!("{action:?}: GitHub says {runner} is busy"));
                }
                let record = runners.get(runner).ok_or(format!("{action:?}: unknown runner"))?;
                let next = (record.state != RunnerState::Draining).then_some(RunnerState::Draining);
                (runner, next)
            }
            Action::InstanceDestroy { runner, .. } => {
                if github_busy.contains(runner.as_str()) {
                    return Err(format!("{action:?}: GitHub says {runner} is busy"));
                }
                if snapshot.in_flight.contains(runner) {
                    return Err(format!("{action:?}: {runner} is in flight"));
                }
                continue;
            }
            Action::RegistrationDelete { name, .. } => {
                if github_busy.contains(name.as_str()) {
                    return Err(format!("{action:?}: GitHub says it is busy"));
                }
                continue;
            }
            Action::RunnerCreate { .. } | Action::JobReasonSet { .. } => continue,
        };
        let record = runners.get(runner).ok_or(format!("{action:?}: unknown runner"))?;
        if snapshot.in_flight.contains(runner) {
            return Err(format!("{action:?}: {runner} is in flight"));
        }
        if let Some(next) = next
            && record.state != next
            && !record.state.can_transition_to(next)
        {
            return Err(format!("{action:?}: {} → {next} is not allowed", record.state));
        }
        if !acted_on.insert(runner) {
            return Err(format!("{action:?}: a second action on {runner} in one plan"));
        }
    }
    Ok(())
}

/// Property 2: rounds of plan → execute until the world stops changing.
/// Returns the number of rounds.
fn converge(pools: &[PoolConfig], mut world: World) -> Result<usize, String> {
    let config = config();
    for round in 1..=MAX_ROUNDS {
        let snapshot = world.snapshot();
        let actions = plan(&config, pools, &snapshot);
        check_plan(&snapshot, &actions)
            .map_err(|e| format!("round {round}: {e}\nplan: {actions:#?}"))?;
        let mut before = world.clone();
        before.in_flight.clear();
        world.execute(&snapshot, &actions).map_err(|e| format!("round {round}: {e}"))?;
        world.in_flight.clear();
        if world.content() == before.content() {
            return Ok(round);
        }
    }
    Err(format!("no fixed point after {MAX_ROUNDS} rounds: {:#?}", world.snapshot()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn plans_are_allowed_by_the_state_machine_and_converge(draw in draw()) {
        let (pools, world) = build(&draw);
        converge(&pools, world).map_err(TestCaseError::fail)?;
    }
}
