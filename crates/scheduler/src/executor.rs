//! The executor: carries a plan's actions out.
//!
//! Quick store writes (assignments, reasons, ready times) happen inline.
//! Creating and tearing down runners are multi-step sagas run as tasks, so
//! an activation never waits on a slow provider; their runner ids sit in
//! `in_flight` meanwhile and the planner leaves them alone.
//!
//! # Creating a runner
//! 1. The id is generated and the `planned` record inserted *in the
//!    activation*, before any side effect and before the next activation
//!    could plan the same job again.
//! 2. [`step_mint`]: `generate-jitconfig` named after the id. A 409 means an
//!    earlier attempt registered the name; nothing runs with it yet (launch
//!    is the next step), so it is deleted and minted again, once.
//! 3. `planned → registered` ([`step_record_registered`]).
//! 4. [`step_launch`]: `Provider::launch`, idempotent by runner id.
//! 5. `registered → launched` ([`step_record_launched`]).
//!
//! Steps do not retry: a failure at any step ([`StepError`]) tears the
//! runner down ([`runner_teardown`]) and records one failed launch on the
//! job, of the kind [`StepError::failure_kind`] says: an infrastructure
//! failure (GitHub 5xx, rate limit, timeout, provider fault) only backs
//! off, one of the job's own counts against `launch_attempts`; the planner
//! retries with backoff (`launch_backoff` up to `launch_backoff_max`).
//!
//! # Tearing a runner down
//! 1. A runner that never got a job is re-read on GitHub first; if GitHub
//!    says busy, it is kept (marked busy) and nothing is deleted.
//! 2. `→ draining` with the reason.
//! 3. Delete the registration: 204 and 404 are both "gone"; 422 means a job
//!    was assigned meanwhile: back to `busy`, nothing destroyed.
//! 4. Destroy the instance.
//! 5. `draining → gone`.
//!
//! Every step is idempotent; a crash between steps leaves a `draining`
//! runner that the next activation resumes from step 3.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use hangar_github::{GitHubError, JitConfig, JitConfigRequest, RunnerDeletion};
use hangar_provider::{Instance, InstanceState, RunnerSpec};
use hangar_store::{FailureKind, StoreError};
use hangar_types::{
    ErrorChain, GitHubRunnerId, JobId, PoolName, RunnerId, RunnerRecord, RunnerState, Timestamp,
};

use crate::plan::{Action, JobView, Snapshot};
use crate::reconciler::{Lifecycle, chain, lock};

mod error;
pub use error::{Step, StepError};

/// Removes a name from `in_flight` when its task ends, and asks for an
/// activation so the result is acted on promptly.
struct InFlight {
    lifecycle: Arc<Lifecycle>,
    name: String,
}

impl InFlight {
    /// `None` when a task for `name` is already running.
    fn claim(lifecycle: &Arc<Lifecycle>, name: &str) -> Option<InFlight> {
        let fresh = lifecycle.in_flight().insert(name.to_owned());
        fresh.then(|| InFlight { lifecycle: lifecycle.clone(), name: name.to_owned() })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.lifecycle.in_flight().remove(&self.name);
        self.lifecycle.wake.notify_one();
    }
}

pub(crate) async fn execute(
    lc: &Arc<Lifecycle>,
    snapshot: &Snapshot,
    actions: &[Action],
    errors: &mut Vec<String>,
) {
    let runners: HashMap<&RunnerId, &RunnerRecord> =
        snapshot.runners.iter().map(|r| (&r.id, r)).collect();
    let jobs: HashMap<JobId, &JobView> = snapshot.jobs.iter().map(|j| (j.id, j)).collect();
    // Creations first: they are what decision latency measures.
    let creates: Vec<(&PoolName, Option<JobId>)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::RunnerCreate { pool, for_job } => Some((pool, *for_job)),
            _ => None,
        })
        .collect();
    if let Err(e) = runner_create_begin(lc, &creates, &jobs).await {
        errors.push(chain(&e));
    }
    let reasons: Vec<(JobId, Option<String>)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::JobReasonSet { job, reason } => Some((*job, reason.clone())),
            _ => None,
        })
        .collect();
    if !reasons.is_empty()
        && let Err(e) = lc.store.job_reason_set_batch(&reasons, chrono::Utc::now()).await
    {
        errors.push(chain(&e));
    }
    for action in actions {
        let result = match action {
            Action::RunnerCreate { .. } => Ok(()),
            Action::RunnerAssign { runner, job, stolen_from } => match runners.get(runner) {
                Some(record) => {
                    let queued_at = jobs.get(job).map(|j| j.queued_at);
                    runner_assign(lc, record, *job, *stolen_from, queued_at).await
                }
                None => Ok(()),
            },
            Action::RunnerReady { runner } => match runners.get(runner) {
                Some(record) => runner_ready(lc, record).await,
                None => Ok(()),
            },
            Action::RunnerReap { runner, reason, failure_of } => {
                if let (Some(record), Some(guard)) =
                    (runners.get(runner), InFlight::claim(lc, runner.as_str()))
                {
                    let failure_of = failure_of.map(|job| (job, reason.failure_kind()));
                    let (lc, record, reason) = (lc.clone(), (*record).clone(), reason.to_string());
                    lc.clone().task_spawn(async move {
                        let _guard = guard;
                        let Some(_permit) = slot(&lc, &lc.teardown_slots).await else { return };
                        runner_teardown(&lc, record, &reason, failure_of).await;
                    });
                }
                Ok(())
            }
            Action::InstanceDestroy { pool, runner } => {
                if let Some(guard) = InFlight::claim(lc, runner.as_str()) {
                    let (lc, pool, runner) = (lc.clone(), pool.clone(), runner.clone());
                    lc.clone().task_spawn(async move {
                        let _guard = guard;
                        orphan_instance_destroy(&lc, &pool, &runner).await;
                    });
                }
                Ok(())
            }
            Action::RegistrationDelete { github_id, name } => {
                if let Some(guard) = InFlight::claim(lc, name) {
                    let (lc, github_id, name) = (lc.clone(), *github_id, name.clone());
                    lc.clone().task_spawn(async move {
                        let _guard = guard;
                        orphan_registration_delete(&lc, github_id, &name).await;
                    });
                }
                Ok(())
            }
            Action::JobReasonSet { .. } => Ok(()),
        };
        if let Err(e) = result {
            errors.push(chain(&e));
        }
    }
}

/// Step 1 of creating: ids and `planned` records (one transaction for the
/// whole plan), then the rest of each creation as a task.
async fn runner_create_begin(
    lc: &Arc<Lifecycle>,
    creates: &[(&PoolName, Option<JobId>)],
    jobs: &HashMap<JobId, &JobView>,
) -> Result<(), StoreError> {
    if creates.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let records: Vec<(RunnerRecord, String)> = creates
        .iter()
        .map(|&(pool, for_job)| {
            let id = RunnerId::new(pool, rand::random());
            let message = match for_job {
                Some(job) => format!("decided for job {job}"),
                None => "decided as a hot runner".to_owned(),
            };
            (RunnerRecord::planned(id, pool.clone(), for_job, now), message)
        })
        .collect();
    lc.store.runner_insert_batch(&records).await?;
    for (record, _) in records {
        let Some(guard) = InFlight::claim(lc, record.id.as_str()) else { continue };
        let queued_at = record.for_job.and_then(|j| jobs.get(&j)).map(|j| j.queued_at);
        phase_observe("decided", queued_at, now);
        tracing::info!(runner_id = %record.id, pool = %record.pool, job_id = ?record.for_job.map(|j| j.0), "Runner decided.");
        let lc = lc.clone();
        lc.clone().task_spawn(async move {
            let _guard = guard;
            let Some(_permit) = slot(&lc, &lc.launch_slots).await else { return };
            runner_create_finish(&lc, record, queued_at).await;
        });
    }
    Ok(())
}

/// A launch or teardown slot, or `None` once hangar is stopping: a saga
/// still waiting has made no side effect yet, so it ends here (see
/// `reconciler`'s module docs).
async fn slot<'a>(
    lc: &Lifecycle,
    slots: &'a tokio::sync::Semaphore,
) -> Option<tokio::sync::SemaphorePermit<'a>> {
    tokio::select! {
        biased;
        () = lc.cancel.cancelled() => None,
        permit = slots.acquire() => permit.ok(),
    }
}

async fn runner_create_finish(
    lc: &Arc<Lifecycle>,
    runner: RunnerRecord,
    queued_at: Option<Timestamp>,
) {
    let mut runner = runner;
    let failure = match runner_create_steps(lc, &mut runner, queued_at).await {
        Ok(()) => return,
        Err(failure) => failure,
    };
    let (step, kind) = (failure.step(), failure.failure_kind());
    tracing::warn!(runner_id = %runner.id, pool = %runner.pool, step = %step, kind = kind.as_str(), error = %ErrorChain(&failure), "Runner launch failed; tearing it down.");
    metrics::counter!(
        crate::metrics::RUNNER_LAUNCH_FAILURES,
        "pool" => runner.pool.0.clone(),
        "kind" => kind.as_str()
    )
    .increment(1);
    // The job's recorded error keeps the whole chain; the event says whose.
    let failure = chain(&failure);
    event(lc, &runner.id, "launch_failed", &format!("{}: {failure}", kind.as_str())).await;
    // Re-read: the record may have moved on since.
    if let Ok(Some(fresh)) = lc.store.runner_get(&runner.id).await {
        runner = fresh;
    }
    let reason = format!("launch failed: {failure}");
    let failure_of = runner.for_job.map(|job| (job, kind));
    runner_teardown(lc, runner.clone(), &reason, failure_of).await;
}

async fn runner_create_steps(
    lc: &Arc<Lifecycle>,
    runner: &mut RunnerRecord,
    queued_at: Option<Timestamp>,
) -> Result<(), StepError> {
    let started = Instant::now();
    let jit = step_mint(lc, runner).await?;
    metrics::histogram!(crate::metrics::RUNNER_JIT_MINT_SECONDS)
        .record(started.elapsed().as_secs_f64());
    step_record_registered(lc, runner, &jit).await?;
    phase_observe("jit_minted", queued_at, chrono::Utc::now());
    phase_observe("launch_called", queued_at, chrono::Utc::now());
    let started = Instant::now();
    let instance = step_launch(lc, runner, &jit).await?;
    metrics::histogram!(crate::metrics::RUNNER_LAUNCH_SECONDS)
        .record(started.elapsed().as_secs_f64());
    phase_observe("launched", queued_at, chrono::Utc::now());
    step_record_launched(lc, runner, &instance).await
}

/// Mints the JIT config for `runner` (named after its id). See the module
/// docs for why resolving a 409 by delete-and-mint-again is safe here.
/// Anything else fails the step; the planner's backoff is the retry.
pub async fn step_mint(lc: &Lifecycle, runner: &RunnerRecord) -> Result<JitConfig, StepError> {
    let step = Step::Mint;
    let pool = lc.pool(&runner.pool).ok_or_else(|| pool_missing(step, runner))?;
    let request = JitConfigRequest {
        name: runner.id.to_string(),
        runner_group_id: lc.config.runner_group_id,
        labels: pool.runner_labels(),
        work_folder: None,
    };
    match lc.github.jit_config_create(&lc.scope, &request).await {
        Err(GitHubError::Conflict { .. }) => {}
        minted => return minted.map_err(StepError::github(step)),
    }
    match registration_remove(lc, runner.id.as_str(), None).await {
        Ok(RunnerDeletion::Busy) => return Err(StepError::NameBusy { step }),
        Ok(RunnerDeletion::Deleted | RunnerDeletion::Gone) => {}
        Err(source) => return Err(StepError::GitHub { step, source }),
    }
    lc.github.jit_config_create(&lc.scope, &request).await.map_err(StepError::github(step))
}

/// `planned → registered`, recording GitHub's id of the registration.
pub async fn step_record_registered(
    lc: &Lifecycle,
    runner: &mut RunnerRecord,
    jit: &JitConfig,
) -> Result<(), StepError> {
    let step = Step::RecordRegistered;
    let now = chrono::Utc::now();
    let github_id = jit.github_runner_id;
    let applied = transition(lc, runner, None, |r| {
        r.state = RunnerState::Registered;
        r.github_id = Some(github_id);
        r.jit_minted_at.get_or_insert(now);
    })
    .await
    .map_err(StepError::store(step))?;
    if !applied && runner.state != RunnerState::Registered {
        return Err(StepError::Moved { step, state: runner.state });
    }
    Ok(())
}

/// Launches the instance. Idempotent: the provider returns the existing
/// instance for a runner id it already holds.
pub async fn step_launch(
    lc: &Lifecycle,
    runner: &RunnerRecord,
    jit: &JitConfig,
) -> Result<Instance, StepError> {
    let step = Step::Launch;
    let pool = lc.pool(&runner.pool).ok_or_else(|| pool_missing(step, runner))?;
    let provider = lc
        .provider(&runner.pool)
        .ok_or_else(|| StepError::ProviderMissing { step, pool: runner.pool.clone() })?;
    let spec = RunnerSpec {
        runner_id: runner.id.clone(),
        pool: runner.pool.clone(),
        labels: pool.runner_labels(),
        jit_config: jit.encoded.clone(),
        env: Vec::new(),
    };
    let after = lc.config.provider_timeout;
    match tokio::time::timeout(after, provider.launch(&spec)).await {
        Ok(launched) => launched.map_err(StepError::provider(step)),
        Err(_) => Err(StepError::Timeout { step, after }),
    }
}

/// `registered → launched` (and the ready time when it is already running).
pub async fn step_record_launched(
    lc: &Lifecycle,
    runner: &mut RunnerRecord,
    instance: &Instance,
) -> Result<(), StepError> {
    let step = Step::RecordLaunched;
    let now = chrono::Utc::now();
    let running = instance.state == InstanceState::Running;
    let applied = transition(lc, runner, Some(("launched", &instance.detail)), |r| {
        r.state = RunnerState::Launched;
        r.launched_at.get_or_insert(now);
        if running {
            r.ready_at.get_or_insert(now);
        }
    })
    .await
    .map_err(StepError::store(step))?;
    if !applied && runner.state != RunnerState::Launched {
        return Err(StepError::Moved { step, state: runner.state });
    }
    Ok(())
}

async fn runner_assign(
    lc: &Lifecycle,
    record: &RunnerRecord,
    job: JobId,
    stolen_from: Option<JobId>,
    queued_at: Option<Timestamp>,
) -> Result<(), StoreError> {
    let mut runner = record.clone();
    let now = chrono::Utc::now();
    let (kind, message) = match stolen_from {
        Some(victim) => ("stolen", format!("made for job {victim}, taken by job {job}")),
        None => ("busy", format!("running job {job}")),
    };
    let applied = transition(lc, &mut runner, Some((kind, &message)), |r| {
        r.state = RunnerState::Busy;
        r.job = Some(job);
        r.busy_at.get_or_insert(now);
    })
    .await?;
    if !applied {
        return Ok(());
    }
    phase_observe("picked_up", queued_at, now);
    if stolen_from.is_some() {
        metrics::counter!(crate::metrics::RUNNERS_STOLEN).increment(1);
        tracing::info!(runner_id = %runner.id, job_id = job.0, message = %message, "Runner stolen.");
    }
    Ok(())
}

async fn runner_ready(lc: &Lifecycle, record: &RunnerRecord) -> Result<(), StoreError> {
    let mut runner = record.clone();
    let now = chrono::Utc::now();
    transition(lc, &mut runner, None, |r| {
        r.ready_at.get_or_insert(now);
    })
    .await
    .map(|_| ())
}

/// Tears `runner` down for `reason`; see the module docs. `failure_of`
/// is the job charged a failed launch of that kind. Errors are logged and
/// left for the next activation, which resumes from `draining`.
pub async fn runner_teardown(
    lc: &Lifecycle,
    runner: RunnerRecord,
    reason: &str,
    failure_of: Option<(JobId, FailureKind)>,
) {
    let id = runner.id.clone();
    if let Err(error) = runner_teardown_steps(lc, runner, reason, failure_of).await {
        tracing::warn!(runner_id = %id, error = %ErrorChain(&error), "Runner teardown incomplete; the next activation resumes it.");
    }
}

async fn runner_teardown_steps(
    lc: &Lifecycle,
    mut runner: RunnerRecord,
    reason: &str,
    failure_of: Option<(JobId, FailureKind)>,
) -> Result<(), StepError> {
    if runner.state == RunnerState::Gone {
        return Ok(());
    }
    if runner.state != RunnerState::Draining {
        // Never a busy runner: a runner without a job may have been given
        // one since the snapshot. One that ran its job cannot take another.
        if runner.job.is_none()
            && let Some(registration) = registration_find(lc, &runner).await?
            && registration.busy
        {
            return keep_busy(lc, &mut runner, "GitHub says it is busy").await;
        }
        let step = Step::RecordDraining;
        let applied = transition(lc, &mut runner, Some(("draining", reason)), |r| {
            r.state = RunnerState::Draining;
            r.reason = Some(reason.to_owned());
        })
        .await
        .map_err(StepError::store(step))?;
        if !applied {
            return Err(StepError::Moved { step, state: runner.state });
        }
        tracing::info!(runner_id = %runner.id, pool = %runner.pool, reason = %reason, "Runner draining.");
        if let Some((job, kind)) = failure_of {
            lc.store
                .job_launch_failure_record(job, kind, reason, chrono::Utc::now())
                .await
                .map_err(StepError::store(Step::ChargeFailure))?;
        }
    }
    match registration_remove(lc, runner.id.as_str(), runner.github_id).await {
        Ok(RunnerDeletion::Busy) => {
            return keep_busy(lc, &mut runner, "delete refused (422): a job was assigned").await;
        }
        Ok(RunnerDeletion::Deleted | RunnerDeletion::Gone) => {}
        Err(source) => return Err(StepError::GitHub { step: Step::DeleteRegistration, source }),
    }
    if let Some(provider) = lc.provider(&runner.pool) {
        let (step, after) = (Step::Destroy, lc.config.provider_timeout);
        match tokio::time::timeout(after, provider.destroy(&runner.id)).await {
            Ok(destroyed) => destroyed.map_err(StepError::provider(step))?,
            Err(_) => return Err(StepError::Timeout { step, after }),
        }
    }
    let now = chrono::Utc::now();
    transition(lc, &mut runner, Some(("gone", reason)), |r| {
        r.state = RunnerState::Gone;
        r.gone_at.get_or_insert(now);
    })
    .await
    .map_err(StepError::store(Step::RecordGone))?;
    metrics::histogram!(crate::metrics::RUNNER_LIFETIME_SECONDS)
        .record((now - runner.created_at).to_std().unwrap_or_default().as_secs_f64());
    if runner.job.is_some() {
        lock(&lc.last_completed).insert(runner.pool.clone(), now);
    }
    Ok(())
}

async fn keep_busy(lc: &Lifecycle, runner: &mut RunnerRecord, why: &str) -> Result<(), StepError> {
    let now = chrono::Utc::now();
    if runner.state != RunnerState::Busy {
        transition(lc, runner, Some(("kept_busy", why)), |r| {
            r.state = RunnerState::Busy;
            r.busy_at.get_or_insert(now);
        })
        .await
        .map_err(StepError::store(Step::KeepBusy))?;
    } else {
        event(lc, &runner.id, "kept_busy", why).await;
    }
    Ok(())
}

/// The registration of `runner` as GitHub has it now (by id, else by name).
async fn registration_find(
    lc: &Lifecycle,
    runner: &RunnerRecord,
) -> Result<Option<hangar_github::GitHubRunner>, StepError> {
    let found = match runner.github_id {
        Some(id) => lc.github.runner_get(&lc.scope, id).await,
        None => lc.github.runner_find_by_name(&lc.scope, runner.id.as_str()).await,
    };
    found.map_err(StepError::github(Step::Reread))
}

fn pool_missing(step: Step, runner: &RunnerRecord) -> StepError {
    StepError::PoolMissing { step, pool: runner.pool.clone() }
}

/// Deletes the registration named `name` (by `github_id` when known).
async fn registration_remove(
    lc: &Lifecycle,
    name: &str,
    github_id: Option<GitHubRunnerId>,
) -> Result<RunnerDeletion, GitHubError> {
    let github_id = match github_id {
        Some(id) => id,
        None => match lc.github.runner_find_by_name(&lc.scope, name).await? {
            Some(registration) => registration.id,
            None => return Ok(RunnerDeletion::Gone),
        },
    };
    lc.github.runner_delete(&lc.scope, github_id).await
}

async fn orphan_instance_destroy(lc: &Lifecycle, pool: &PoolName, runner: &RunnerId) {
    let Some(provider) = lc.provider(pool) else { return };
    tracing::info!(runner_id = %runner, pool = %pool, "Destroying an orphan instance.");
    // An orphan may still hold a registration (hangar died before recording
    // it); one GitHub says is busy is running a job and is left alone.
    match registration_remove(lc, runner.as_str(), None).await {
        Ok(RunnerDeletion::Busy) => {
            tracing::info!(runner_id = %runner, "Orphan instance kept: GitHub says it is busy.");
            return;
        }
        Ok(RunnerDeletion::Deleted | RunnerDeletion::Gone) => {}
        Err(e) => {
            tracing::warn!(runner_id = %runner, error = %ErrorChain(&e), "Could not remove an orphan's registration.");
            return;
        }
    }
    match tokio::time::timeout(lc.config.provider_timeout, provider.destroy(runner)).await {
        Ok(Ok(())) => {
            metrics::counter!(crate::metrics::ORPHANS_REAPED, "kind" => "instance").increment(1);
            event(lc, runner, "gone", "orphan instance (not in the store)").await;
        }
        Ok(Err(e)) => {
            tracing::warn!(runner_id = %runner, error = %ErrorChain(&e), "Orphan destroy failed.");
        }
        Err(_) => tracing::warn!(runner_id = %runner, "Orphan destroy timed out."),
    }
}

async fn orphan_registration_delete(lc: &Lifecycle, github_id: GitHubRunnerId, name: &str) {
    // Re-read: a list can be a minute stale, and busy runners are never deleted.
    match lc.github.runner_get(&lc.scope, github_id).await {
        Ok(Some(registration)) if registration.busy => return,
        Ok(None) => return,
        Ok(Some(_)) => {}
        Err(e) => {
            tracing::warn!(runner_id = %name, error = %ErrorChain(&e), "Could not re-read an orphan registration.");
            return;
        }
    }
    match lc.github.runner_delete(&lc.scope, github_id).await {
        Ok(RunnerDeletion::Deleted) => {
            tracing::info!(runner_id = %name, "Deleted an orphan registration.");
            metrics::counter!(crate::metrics::ORPHANS_REAPED, "kind" => "registration")
                .increment(1);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(runner_id = %name, error = %ErrorChain(&e), "Orphan registration delete failed.");
        }
    }
}

/// Writes `change(runner)` conditionally on `runner`'s generation. On
/// success `runner` is the written record; when someone else wrote first it
/// is the fresh record and the result is `false`.
async fn transition(
    lc: &Lifecycle,
    runner: &mut RunnerRecord,
    event: Option<(&str, &str)>,
    change: impl FnOnce(&mut RunnerRecord),
) -> Result<bool, StoreError> {
    let mut next = runner.clone();
    change(&mut next);
    if next == *runner {
        return Ok(true);
    }
    match lc.store.runner_write(runner, &next, event).await? {
        Some(written) => {
            *runner = written;
            Ok(true)
        }
        None => {
            if let Some(fresh) = lc.store.runner_get(&runner.id).await? {
                *runner = fresh;
            }
            Ok(false)
        }
    }
}

async fn event(lc: &Lifecycle, runner: &RunnerId, kind: &str, message: &str) {
    if let Err(e) = lc.store.runner_event_record(runner, chrono::Utc::now(), kind, message).await {
        tracing::warn!(runner_id = %runner, error = %ErrorChain(&e), "Could not record a runner event.");
    }
}

/// Observes a job phase, measured from when its `queued` webhook arrived.
fn phase_observe(phase: &'static str, queued_at: Option<Timestamp>, at: Timestamp) {
    if let Some(queued_at) = queued_at {
        let seconds = (at - queued_at).to_std().unwrap_or_default().as_secs_f64();
        metrics::histogram!(crate::metrics::JOB_PHASE_SECONDS, "phase" => phase).record(seconds);
    }
}
