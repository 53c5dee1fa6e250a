//! The admin API: read-only views of what the store knows.

use axum::Json;
use axum::extract::{Path, Query, State};
use hangar_api::{
    JobDetail, JobLifecycle, JobList, JobPhases, JobQuery, JobView, ReceivedTimes, RunnerView,
    TimelineEntry,
};
use hangar_store::JobFilter;
use hangar_types::{JobId, JobRecord};
use serde_json::{Value, json};

use crate::auth::Operator;
use crate::{ApiError, ServerState};

/// `ok`, or `degraded` with the problems (a pool that cannot start
/// runners, and why). Degraded is still 200: webhooks are taken and
/// recorded; a store that does not answer is the error (503).
pub(crate) async fn health(State(state): State<ServerState>) -> Result<Json<Value>, ApiError> {
    state.store.health().await?;
    let problems = state.problems.as_ref().map(|p| p()).unwrap_or_default();
    let status = if problems.is_empty() { "ok" } else { "degraded" };
    Ok(Json(json!({
        "status": status,
        "database": state.store.backend().as_str(),
        "problems": problems,
    })))
}

pub(crate) async fn job_list(
    _: Operator,
    State(state): State<ServerState>,
    Query(query): Query<JobQuery>,
) -> Result<Json<JobList>, ApiError> {
    let filter = JobFilter {
        state: query.state,
        repository: query.repository,
        before: query.before,
        limit: query.limit.unwrap_or(50),
    };
    let page = state.store.job_list(&filter).await?;
    Ok(Json(JobList { jobs: page.jobs.iter().map(view_of).collect(), next: page.next }))
}

pub(crate) async fn job_view(
    _: Operator,
    State(state): State<ServerState>,
    Path(id): Path<i64>,
) -> Result<Json<JobDetail>, ApiError> {
    let job_id = JobId(id);
    let job = state
        .store
        .job_get(job_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    let timeline = state
        .store
        .job_timeline(job_id)
        .await?
        .into_iter()
        .map(|delivery| TimelineEntry {
            delivery_id: delivery.delivery_id,
            event: delivery.event,
            action: delivery.action,
            received_at: delivery.received_at,
        })
        .collect();
    let lifecycle = lifecycle_of(&state, &job).await?;
    Ok(Json(JobDetail { job: view_of(&job), timeline, lifecycle }))
}

/// The scheduler's notes and runners for a job, and its phases.
async fn lifecycle_of(state: &ServerState, job: &JobRecord) -> Result<JobLifecycle, ApiError> {
    let job_id = job.fields.id;
    let notes = state.store.job_notes_get(job_id).await?;
    let runners = state.store.runner_list_for_job(job_id).await?;
    let ran = runners.iter().find(|r| r.job == Some(job_id));
    let chosen = ran.or_else(|| runners.iter().rev().find(|r| r.for_job == Some(job_id)));
    let phases = JobPhases {
        github_created_at: job.fields.created_at,
        webhook_received: job.received.queued,
        runner_decided: chosen.map(|r| r.created_at),
        jit_minted: chosen.and_then(|r| r.jit_minted_at),
        instance_launched: chosen.and_then(|r| r.launched_at),
        instance_ready: chosen.and_then(|r| r.ready_at),
        picked_up: job.received.in_progress.or(ran.and_then(|r| r.busy_at)),
        completed: job.received.completed,
    };
    Ok(JobLifecycle {
        reason: notes.reason,
        launch_failures: notes.launch_failures,
        last_error: notes.last_error,
        phases,
        runners: runners
            .iter()
            .map(|r| RunnerView {
                id: r.id.clone(),
                pool: r.pool.clone(),
                state: r.state,
                for_job: r.for_job,
                job: r.job,
                reason: r.reason.clone(),
                created_at: r.created_at,
            })
            .collect(),
    })
}

fn view_of(record: &JobRecord) -> JobView {
    let fields = &record.fields;
    let runner = fields.runner.as_ref();
    JobView {
        id: fields.id,
        state: record.state,
        repository: fields.repository.clone(),
        organization: fields.organization.clone(),
        installation_id: fields.installation_id,
        run_id: fields.run_id,
        run_attempt: fields.run_attempt,
        workflow_name: fields.workflow_name.clone(),
        job_name: fields.job_name.clone(),
        labels: fields.labels.clone(),
        head_branch: fields.head_branch.clone(),
        runner_id: runner.map(|r| r.id),
        runner_name: runner.map(|r| r.name.clone()),
        runner_group: runner.and_then(|r| r.group_name.clone()),
        conclusion: fields.conclusion.clone(),
        html_url: fields.html_url.clone(),
        created_at: fields.created_at,
        started_at: fields.started_at,
        completed_at: fields.completed_at,
        received: ReceivedTimes {
            waiting: record.received.waiting,
            queued: record.received.queued,
            in_progress: record.received.in_progress,
            completed: record.received.completed,
        },
        generation: record.generation,
    }
}
