//! The planner: a pure function from a [`Snapshot`] of the world (jobs,
//! runners, instances, registrations, pools) to the [`Action`]s that move it
//! towards "every queued job has a runner, nothing else is left running".
//!
//! It does no IO, reads no clock and draws no random numbers (the executor
//! generates runner ids), so every decision is table-tested in
//! `plan/tests.rs`. The executor carries actions out; the reconciler runs
//! plan + execute on every activation. Because the planner always starts
//! from a fresh snapshot, a lost action is simply planned again next time.
//!
//! # Decisions, in order
//! 1. **Assignments.** A job GitHub says is running on one of our runners
//!    marks that runner busy, from whatever state before busy it is recorded
//!    in (a restart can leave a runner that is running a job `planned` or
//!    `registered`); if the runner was made for another job, that is
//!    recorded as stolen (the other job is still queued and is matched
//!    again below, so it gets a runner). A runner whose registration GitHub
//!    lists as busy counts as busy too.
//! 2. **Reaping.** Runners whose job completed, whose instance exited or
//!    vanished, whose creation was interrupted (hangar died mid-way), that
//!    were never picked up, idle too long or lived too long; instances the
//!    store does not know (orphan instances); `hangar-` registrations the
//!    store does not know (orphan registrations). Busy runners are never
//!    reaped for idleness or age, and nothing GitHub lists as busy is torn
//!    down at all; the executor re-reads GitHub before any delete as a
//!    second guard.
//! 3. **Matching.** Queued jobs outside the runner scope (another
//!    organization's or repository's, e.g. from another installation of
//!    the App) get no runner and say so. The others, oldest first, each
//!    take one available runner of a pool whose labels are a superset of
//!    theirs (a runner made for the job first). Demand is counted, not pinned: on GitHub any
//!    matching runner may take any matching job.
//! 4. **Creating.** A job left without a runner gets a new one in the first
//!    matching pool under its `max_runners`, unless it is backing off or its
//!    own launches failed too often. Failures of the job's own (GitHub
//!    refused the request as such, never picked up) count against
//!    `launch_attempts`; infrastructure failures (GitHub 5xx, rate limits,
//!    timeouts, provider faults, a runner that died before its job) only
//!    back off, capped at `launch_backoff_max`, and are retried until the
//!    job runs or is cancelled: a GitHub outage gives no job up.
//! 5. **Hot runners.** Each pool keeps `min_hot` spare runners (+1 during
//!    `keep_warm` after a completion); extra idle ones past the idle timeout
//!    are reaped.
//! 6. **Reasons.** Every queued job gets a one-line reason saying why it has
//!    no runner yet, or which runner is on its way.
//!
//! A runner gets at most one action per plan (the executor writes each
//! from the snapshot's record, so a second would be a stale write), and
//! none while it is in flight. `plan/proptests.rs` checks this, and that
//! every action is a transition the runner state machine allows, and that
//! plan → execute → plan reaches a fixed point, on random snapshots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use hangar_github::RunnerScope;
use hangar_provider::{Instance, InstanceState};
use hangar_store::FailureKind;
use hangar_types::{
    JobId, JobState, Labels, PoolName, RunnerId, RunnerRecord, RunnerState, Timestamp,
};

use crate::config::{PoolConfig, SchedulerConfig};

/// A job as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub id: JobId,
    pub state: JobState,
    pub labels: Labels,
    /// `owner/name`, compared with the runner scope.
    pub repository: String,
    /// GitHub's `created_at`, else our first receive time; orders the queue.
    pub queued_at: Timestamp,
    /// The runner name GitHub reported (`in_progress`/`completed`).
    pub runner_name: Option<String>,
    /// Failures of the job's own ([`FailureKind::Job`]); bounded by
    /// `launch_attempts`.
    pub launch_failures: u32,
    /// Infrastructure failures ([`FailureKind::Infrastructure`]): back off only.
    pub infra_failures: u32,
    pub last_failure_at: Option<Timestamp>,
    pub last_failure_kind: Option<FailureKind>,
    pub last_error: Option<String>,
    /// The reason currently stored, so unchanged reasons are not rewritten.
    pub reason: Option<String>,
}

/// A runner registration as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub github_id: hangar_types::GitHubRunnerId,
    pub name: String,
    pub busy: bool,
}

/// Everything the planner looks at. The reconciler reads the provider and
/// GitHub lists *before* the store, so anything they report that was made
/// by hangar is already in `runners` (ids are persisted before side effects).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: Timestamp,
    /// Queued and in-progress jobs, and completed ones that still have a
    /// live runner of ours.
    pub jobs: Vec<JobView>,
    /// Every runner that is not `gone`.
    pub runners: Vec<RunnerRecord>,
    /// Runners an executor task is working on right now; left alone.
    pub in_flight: HashSet<RunnerId>,
    /// Instances per pool; a pool is missing when its provider's `list` failed
    /// (then nothing is decided from its instances).
    pub instances: HashMap<PoolName, Vec<Instance>>,
    /// `hangar-` registrations on GitHub; `None` when not read this time.
    pub registrations: Option<Vec<Registration>>,
    /// Pools whose provider reports unhealthy, with its message.
    pub unhealthy: BTreeMap<PoolName, String>,
    /// Last time a job of each pool completed (for `keep_warm`).
    pub last_completed: HashMap<PoolName, Timestamp>,
}

/// Why a runner (or a leftover) is torn down. Shown on the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReapReason {
    JobCompleted(JobId),
    InstanceExited {
        code: Option<i32>,
    },
    InstanceMissing,
    /// Planned or registered, but no executor is working on it: hangar
    /// stopped in the middle of creating it.
    Interrupted,
    NotPickedUp {
        deadline: Duration,
    },
    Idle {
        timeout: Duration,
    },
    MaxLifetime {
        limit: Duration,
    },
    OrphanInstance,
    OrphanRegistration,
    /// Resuming a teardown that was decided earlier (reason already stored).
    Resume,
}

impl ReapReason {
    /// Whose failure it is when this reaps a runner made for a queued job
    /// (`failure_of`): a runner that died or vanished before GitHub gave it
    /// a job failed on the provider's side; one GitHub never handed its job
    /// to counts against the job.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            ReapReason::InstanceExited { .. } | ReapReason::InstanceMissing => {
                FailureKind::Infrastructure
            }
            _ => FailureKind::Job,
        }
    }
}

impl fmt::Display for ReapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReapReason::JobCompleted(job) => write!(f, "job {job} completed"),
            ReapReason::InstanceExited { code: Some(code) } => {
                write!(f, "instance exited with code {code}")
            }
            ReapReason::InstanceExited { code: None } => f.write_str("instance exited"),
            ReapReason::InstanceMissing => f.write_str("instance disappeared from the provider"),
            ReapReason::Interrupted => f.write_str("creation interrupted (hangar restarted)"),
            ReapReason::NotPickedUp { deadline } => {
                write!(f, "not picked up within {}", secs(*deadline))
            }
            ReapReason::Idle { timeout } => {
                write!(f, "idle beyond the pool timeout {}", secs(*timeout))
            }
            ReapReason::MaxLifetime { limit } => {
                write!(f, "over the maximum lifetime {}", secs(*limit))
            }
            ReapReason::OrphanInstance => f.write_str("orphan instance (not in the store)"),
            ReapReason::OrphanRegistration => f.write_str("orphan registration (not in the store)"),
            ReapReason::Resume => f.write_str("resuming teardown"),
        }
    }
}

/// Why a queued job has no runner (yet). Shown by the API and CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobReason {
    NoPoolMatches {
        labels: Labels,
    },
    PoolAtMax {
        pool: PoolName,
        live: u32,
        max: u32,
    },
    PoolUnhealthy {
        pool: PoolName,
        message: String,
    },
    LaunchFailed {
        attempts: u32,
        last_error: String,
    },
    BackingOff {
        attempts: u32,
        retry_at: Timestamp,
        last_error: String,
    },
    /// The latest failure was GitHub's or the provider's, not the job's.
    InfraBackingOff {
        failures: u32,
        retry_at: Timestamp,
        last_error: String,
    },
    /// The job's repository is outside `runner_scope`: hangar's runners
    /// could never take it.
    OutsideScope {
        repository: String,
        scope: RunnerScope,
    },
    /// A runner is being created for it right now.
    Creating {
        pool: PoolName,
    },
    /// A runner of `pool` is starting or waiting for GitHub to hand it the job.
    RunnerOnItsWay {
        runner: RunnerId,
    },
}

impl fmt::Display for JobReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobReason::NoPoolMatches { labels } => write!(f, "no pool matches labels {labels}"),
            JobReason::PoolAtMax { pool, live, max } => {
                write!(f, "pool {pool} at max {live}/{max}")
            }
            JobReason::PoolUnhealthy { pool, message } => {
                write!(f, "pool {pool} provider unhealthy: {message}")
            }
            JobReason::LaunchFailed { attempts, last_error } => {
                write!(f, "launch failed {attempts}×: {last_error}")
            }
            JobReason::BackingOff { attempts, retry_at, last_error } => write!(
                f,
                "launch failed {attempts}×, retrying at {}: {last_error}",
                retry_at.format("%H:%M:%S")
            ),
            JobReason::InfraBackingOff { failures, retry_at, last_error } => write!(
                f,
                "launch failed {failures}× on GitHub's or the provider's side (not counted \
                 against the job), retrying at {}: {last_error}",
                retry_at.format("%H:%M:%S")
            ),
            JobReason::OutsideScope { repository, scope: RunnerScope::Organization(org) } => {
                write!(
                    f,
                    "outside runner scope: repository {repository} is not in organization {org}"
                )
            }
            JobReason::OutsideScope { repository, scope } => {
                write!(f, "outside runner scope: repository {repository} is not {scope}")
            }
            JobReason::Creating { pool } => write!(f, "creating a runner in pool {pool}"),
            JobReason::RunnerOnItsWay { runner } => write!(f, "runner {runner} is on its way"),
        }
    }
}

/// One thing the executor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist a new runner id, mint its JIT config, launch it.
    RunnerCreate { pool: PoolName, for_job: Option<JobId> },
    /// GitHub gave `job` to `runner`: mark it busy. `stolen_from` is the job
    /// it was made for when that is another one.
    RunnerAssign { runner: RunnerId, job: JobId, stolen_from: Option<JobId> },
    /// The provider reports the instance running: record when.
    RunnerReady { runner: RunnerId },
    /// Tear a runner down: re-read GitHub, delete the registration unless
    /// busy, destroy the instance. `failure_of` is charged one failed launch
    /// (of the kind [`ReapReason::failure_kind`] says).
    RunnerReap { runner: RunnerId, reason: ReapReason, failure_of: Option<JobId> },
    /// Destroy an instance the store does not know.
    InstanceDestroy { pool: PoolName, runner: RunnerId },
    /// Delete a `hangar-` registration the store does not know.
    RegistrationDelete { github_id: hangar_types::GitHubRunnerId, name: String },
    /// Store the reason a queued job has no runner (or `None`: it has one).
    JobReasonSet { job: JobId, reason: Option<String> },
}

/// Plans one activation. Pure: same snapshot, same actions.
pub fn plan(config: &SchedulerConfig, pools: &[PoolConfig], snapshot: &Snapshot) -> Vec<Action> {
    Planner::new(config, pools, snapshot).run()
}

struct Planner<'a> {
    config: &'a SchedulerConfig,
    pools: &'a [PoolConfig],
    s: &'a Snapshot,
    jobs: HashMap<JobId, &'a JobView>,
    /// Runners this plan assigns or marks ready. Nothing else is planned for
    /// them until the next snapshot: the executor writes each action from
    /// the snapshot's record, so a second write to one runner is refused.
    acted_on: HashSet<RunnerId>,
    /// Runners this plan tears down; they are neither matched nor counted as spare.
    reaped: HashSet<RunnerId>,
    /// Live runners per pool, including ones this plan creates.
    live: HashMap<&'a PoolName, u32>,
    /// Names GitHub's registration list reports busy: never torn down.
    github_busy: HashSet<&'a str>,
    actions: Vec<Action>,
}

impl<'a> Planner<'a> {
    fn new(config: &'a SchedulerConfig, pools: &'a [PoolConfig], s: &'a Snapshot) -> Planner<'a> {
        let mut live: HashMap<&PoolName, u32> = pools.iter().map(|p| (&p.name, 0)).collect();
        for runner in &s.runners {
            *live.entry(&runner.pool).or_default() += 1;
        }
        Planner {
            config,
            pools,
            s,
            jobs: s.jobs.iter().map(|j| (j.id, j)).collect(),
            acted_on: HashSet::new(),
            reaped: HashSet::new(),
            live,
            github_busy: s
                .registrations
                .iter()
                .flatten()
                .filter(|r| r.busy)
                .map(|r| r.name.as_str())
                .collect(),
            actions: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<Action> {
        let busy = self.assignments();
        self.reap_runners(&busy);
        self.reap_orphans();
        let spare = self.match_and_create(&busy);
        self.keep_hot(spare);
        self.actions
    }

    /// Step 1: jobs GitHub says run on our runners.
    fn assignments(&mut self) -> HashSet<RunnerId> {
        let by_name: HashMap<&str, &RunnerRecord> =
            self.s.runners.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut busy = HashSet::new();
        for job in &self.s.jobs {
            if job.state < JobState::InProgress {
                continue;
            }
            let Some(runner) = job.runner_name.as_deref().and_then(|n| by_name.get(n)) else {
                continue;
            };
            busy.insert(runner.id.clone());
            let unassigned = runner.job.is_none()
                && matches!(
                    runner.state,
                    RunnerState::Planned | RunnerState::Registered | RunnerState::Launched
                );
            // `acted_on`: one assignment per runner, even if GitHub names it for two jobs.
            if unassigned
                && !self.s.in_flight.contains(&runner.id)
                && self.acted_on.insert(runner.id.clone())
            {
                let stolen_from = runner.for_job.filter(|&wanted| wanted != job.id);
                self.actions.push(Action::RunnerAssign {
                    runner: runner.id.clone(),
                    job: job.id,
                    stolen_from,
                });
            }
        }
        // A busy registration runs a job whose `in_progress` we have not seen.
        for runner in &self.s.runners {
            if self.github_busy.contains(runner.id.as_str()) {
                busy.insert(runner.id.clone());
            }
        }
        busy
    }

    /// Step 2: runners to tear down.
    fn reap_runners(&mut self, busy: &HashSet<RunnerId>) {
        let now = self.s.now;
        for runner in &self.s.runners {
            if self.s.in_flight.contains(&runner.id) || self.acted_on.contains(&runner.id) {
                continue;
            }
            let instance = self.instance_of(runner);
            let job = runner.job.and_then(|id| self.jobs.get(&id));
            let for_job_queued = runner
                .for_job
                .and_then(|id| self.jobs.get(&id))
                .filter(|j| j.state == JobState::Queued)
                .map(|j| j.id);
            let is_busy = runner.state == RunnerState::Busy || busy.contains(&runner.id);
            let reap = match runner.state {
                RunnerState::Gone => None,
                RunnerState::Draining => Some((ReapReason::Resume, None)),
                RunnerState::Planned | RunnerState::Registered if is_busy => None,
                RunnerState::Planned | RunnerState::Registered => {
                    Some((ReapReason::Interrupted, None))
                }
                RunnerState::Launched | RunnerState::Busy => match instance {
                    Lookup::Exited(code) => {
                        // A runner exits 0 after a job, also one we did not
                        // hear about (stolen, webhook lost): not a failure.
                        // Any other exit before a job is one.
                        let crashed = code != Some(0);
                        let failure = if is_busy || !crashed { None } else { for_job_queued };
                        Some((ReapReason::InstanceExited { code }, failure))
                    }
                    Lookup::Missing => {
                        let failure = if is_busy { None } else { for_job_queued };
                        Some((ReapReason::InstanceMissing, failure))
                    }
                    Lookup::Unknown | Lookup::Alive => {
                        if let Some(job) = job.filter(|j| j.state == JobState::Completed) {
                            Some((ReapReason::JobCompleted(job.id), None))
                        } else if is_busy {
                            None
                        } else {
                            self.idle_reap(runner, for_job_queued, now)
                        }
                    }
                },
            };
            // Whatever the store says, a runner GitHub lists as busy is
            // running a job; it is torn down once GitHub lets it go.
            let reap = reap.filter(|_| !self.github_busy.contains(runner.id.as_str()));
            if let Some((reason, failure_of)) = reap {
                self.reaped.insert(runner.id.clone());
                self.actions.push(Action::RunnerReap {
                    runner: runner.id.clone(),
                    reason,
                    failure_of,
                });
            } else if instance == Lookup::Alive
                && runner.ready_at.is_none()
                && self.instance_running(runner)
            {
                self.acted_on.insert(runner.id.clone());
                self.actions.push(Action::RunnerReady { runner: runner.id.clone() });
            }
        }
    }

    /// Deadlines of a launched runner nobody has given a job yet. Idle
    /// runners that the matching step still needs are kept: idleness is
    /// decided in `keep_hot`, after matching.
    fn idle_reap(
        &self,
        runner: &RunnerRecord,
        for_job_queued: Option<JobId>,
        now: Timestamp,
    ) -> Option<(ReapReason, Option<JobId>)> {
        let since = runner.launched_at.unwrap_or(runner.created_at);
        if elapsed(since, now) > self.config.pickup_deadline && for_job_queued.is_some() {
            let deadline = self.config.pickup_deadline;
            return Some((ReapReason::NotPickedUp { deadline }, for_job_queued));
        }
        if elapsed(runner.created_at, now) > self.config.max_lifetime {
            return Some((ReapReason::MaxLifetime { limit: self.config.max_lifetime }, None));
        }
        None
    }

    /// Orphan instances and registrations: named `hangar-…`, unknown to the
    /// store. A runner in flight is not one: its teardown may have marked it
    /// `gone` after its instance or registration was listed.
    fn reap_orphans(&mut self) {
        let known: HashSet<&str> = self
            .s
            .runners
            .iter()
            .map(|r| r.id.as_str())
            .chain(self.s.in_flight.iter().map(RunnerId::as_str))
            .collect();
        let mut instances: Vec<(&PoolName, &Instance)> = self
            .s
            .instances
            .iter()
            .flat_map(|(p, list)| list.iter().map(move |i| (p, i)))
            .collect();
        instances.sort_by(|a, b| a.1.runner_id.cmp(&b.1.runner_id));
        for (pool, instance) in instances {
            let name = instance.runner_id.as_str();
            if !known.contains(name) && !self.github_busy.contains(name) {
                self.actions.push(Action::InstanceDestroy {
                    pool: pool.clone(),
                    runner: instance.runner_id.clone(),
                });
            }
        }
        for registration in self.s.registrations.iter().flatten() {
            let ours = registration.name.starts_with(RunnerId::PREFIX);
            if ours && !registration.busy && !known.contains(registration.name.as_str()) {
                self.actions.push(Action::RegistrationDelete {
                    github_id: registration.github_id,
                    name: registration.name.clone(),
                });
            }
        }
    }

    /// Steps 3 and 4. Returns the available runners no queued job took.
    fn match_and_create(&mut self, busy: &HashSet<RunnerId>) -> Vec<&'a RunnerRecord> {
        let mut available: Vec<&RunnerRecord> = self
            .s
            .runners
            .iter()
            .filter(|r| {
                r.job.is_none()
                    && !busy.contains(&r.id)
                    && !self.reaped.contains(&r.id)
                    && matches!(
                        r.state,
                        RunnerState::Planned | RunnerState::Registered | RunnerState::Launched
                    )
            })
            .collect();
        available.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut queued: Vec<&JobView> = Vec::new();
        for job in self.s.jobs.iter().filter(|j| j.state == JobState::Queued) {
            match &self.config.runner_scope {
                Some(scope) if !scope.covers(&job.repository) => {
                    let reason = JobReason::OutsideScope {
                        repository: job.repository.clone(),
                        scope: scope.clone(),
                    };
                    self.reason_set(job, &reason);
                }
                _ => queued.push(job),
            }
        }
        queued.sort_by_key(|j| (j.queued_at, j.id));

        // Jobs charged a failure in this plan wait for the next one, which
        // sees the failure and applies the backoff.
        let charged: HashSet<JobId> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::RunnerReap { failure_of, .. } => *failure_of,
                _ => None,
            })
            .collect();
        // A runner made for a queued job is kept for that job, so an older
        // job does not take it and leave its own job creating another.
        let reserved: HashSet<JobId> = queued
            .iter()
            .filter(|j| available.iter().any(|r| r.for_job == Some(j.id)))
            .map(|j| j.id)
            .collect();
        for job in queued {
            let pools: Vec<&'a PoolConfig> =
                self.pools.iter().filter(|p| p.matches(&job.labels)).collect();
            let pick = |available: &[&RunnerRecord]| {
                let in_pool = |r: &RunnerRecord| pools.iter().any(|p| p.name == r.pool);
                let own = available.iter().position(|r| r.for_job == Some(job.id) && in_pool(r));
                own.or_else(|| {
                    available.iter().position(|r| {
                        in_pool(r) && r.for_job.is_none_or(|other| !reserved.contains(&other))
                    })
                })
            };
            let reason = if pools.is_empty() {
                JobReason::NoPoolMatches { labels: job.labels.clone() }
            } else if let Some(index) = pick(&available) {
                JobReason::RunnerOnItsWay { runner: available.remove(index).id.clone() }
            } else if charged.contains(&job.id) {
                continue;
            } else {
                self.create_for(job, &pools)
            };
            self.reason_set(job, &reason);
        }
        for job in &self.s.jobs {
            if job.state > JobState::Queued && job.reason.is_some() {
                self.actions.push(Action::JobReasonSet { job: job.id, reason: None });
            }
        }
        available
    }

    /// Stores `reason` on a queued job unless it is the one stored.
    fn reason_set(&mut self, job: &JobView, reason: &JobReason) {
        let reason = reason.to_string();
        if job.reason.as_deref() != Some(reason.as_str()) {
            self.actions.push(Action::JobReasonSet { job: job.id, reason: Some(reason) });
        }
    }

    fn create_for(&mut self, job: &JobView, pools: &[&'a PoolConfig]) -> JobReason {
        let attempts = job.launch_failures;
        let last_error = job.last_error.clone().unwrap_or_else(|| "unknown error".into());
        if attempts >= self.config.launch_attempts {
            return JobReason::LaunchFailed { attempts, last_error };
        }
        // Every failure lengthens the wait, whoever's it was; only the job's
        // own give it up (above).
        let failures = attempts.saturating_add(job.infra_failures);
        if let (Some(failed_at), true) = (job.last_failure_at, failures > 0) {
            let wait =
                backoff(self.config.launch_backoff, failures, self.config.launch_backoff_max);
            let retry_at = failed_at + chrono_duration(wait);
            if retry_at > self.s.now {
                return match job.last_failure_kind {
                    Some(FailureKind::Infrastructure) => {
                        JobReason::InfraBackingOff { failures, retry_at, last_error }
                    }
                    _ => JobReason::BackingOff { attempts, retry_at, last_error },
                };
            }
        }
        let mut first_unhealthy = None;
        for pool in pools {
            if let Some(message) = self.s.unhealthy.get(&pool.name) {
                first_unhealthy.get_or_insert((pool, message));
                continue;
            }
            let live = self.live.entry(&pool.name).or_default();
            if *live < pool.max_runners {
                *live += 1;
                self.actions
                    .push(Action::RunnerCreate { pool: pool.name.clone(), for_job: Some(job.id) });
                return JobReason::Creating { pool: pool.name.clone() };
            }
        }
        if let Some((pool, message)) = first_unhealthy {
            return JobReason::PoolUnhealthy { pool: pool.name.clone(), message: message.clone() };
        }
        let pool = pools[0];
        JobReason::PoolAtMax {
            pool: pool.name.clone(),
            live: self.live.get(&pool.name).copied().unwrap_or(0),
            max: pool.max_runners,
        }
    }

    /// Step 5: spare runners per pool against the pool's hot target.
    fn keep_hot(&mut self, spare: Vec<&RunnerRecord>) {
        let mut by_pool: BTreeMap<&PoolName, Vec<&RunnerRecord>> = BTreeMap::new();
        for runner in spare {
            by_pool.entry(&runner.pool).or_default().push(runner);
        }
        for pool in self.pools {
            let warm = self.s.last_completed.get(&pool.name).is_some_and(|&at| {
                !pool.keep_warm.is_zero() && elapsed(at, self.s.now) < pool.keep_warm
            });
            let target = pool.min_hot as usize + usize::from(warm);
            let mut spare = by_pool.remove(&pool.name).unwrap_or_default();
            // Keep the youngest as hot runners; older extras may time out.
            // One in flight counts as spare but is left to its task.
            spare.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            for extra in spare.iter().skip(target) {
                let since = extra.launched_at.unwrap_or(extra.created_at);
                if extra.state == RunnerState::Launched
                    && !self.s.in_flight.contains(&extra.id)
                    && !self.acted_on.contains(&extra.id)
                    && elapsed(since, self.s.now) > pool.idle_timeout
                {
                    self.actions.push(Action::RunnerReap {
                        runner: extra.id.clone(),
                        reason: ReapReason::Idle { timeout: pool.idle_timeout },
                        failure_of: None,
                    });
                }
            }
            let missing = target.saturating_sub(spare.len());
            if self.s.unhealthy.contains_key(&pool.name) {
                continue;
            }
            for _ in 0..missing {
                let live = self.live.entry(&pool.name).or_default();
                if *live >= pool.max_runners {
                    break;
                }
                *live += 1;
                self.actions.push(Action::RunnerCreate { pool: pool.name.clone(), for_job: None });
            }
        }
        // Spare runners of pools no longer configured: nothing can use them.
        for (_, runners) in by_pool {
            for runner in runners {
                let configured = self.pools.iter().any(|p| p.name == runner.pool);
                let untouched =
                    !self.s.in_flight.contains(&runner.id) && !self.acted_on.contains(&runner.id);
                if !configured && untouched {
                    self.actions.push(Action::RunnerReap {
                        runner: runner.id.clone(),
                        reason: ReapReason::Idle { timeout: Duration::ZERO },
                        failure_of: None,
                    });
                }
            }
        }
    }

    fn instance_of(&self, runner: &RunnerRecord) -> Lookup {
        let Some(list) = self.s.instances.get(&runner.pool) else {
            return Lookup::Unknown;
        };
        match list.iter().find(|i| i.runner_id == runner.id) {
            None if runner.state == RunnerState::Launched || runner.state == RunnerState::Busy => {
                Lookup::Missing
            }
            None => Lookup::Unknown,
            Some(Instance { state: InstanceState::Exited { code }, .. }) => Lookup::Exited(*code),
            Some(_) => Lookup::Alive,
        }
    }

    fn instance_running(&self, runner: &RunnerRecord) -> bool {
        self.s.instances.get(&runner.pool).is_some_and(|list| {
            list.iter().any(|i| i.runner_id == runner.id && i.state == InstanceState::Running)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The pool's provider could not be listed.
    Unknown,
    Missing,
    Alive,
    Exited(Option<i32>),
}

/// The wait after `failures` failed launches: `base`, doubling, at most `max`.
pub fn backoff(base: Duration, failures: u32, max: Duration) -> Duration {
    base.saturating_mul(2u32.pow(failures.saturating_sub(1).min(20))).min(max)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    (now - since).to_std().unwrap_or(Duration::ZERO)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
