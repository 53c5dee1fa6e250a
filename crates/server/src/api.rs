//! The admin API: read-only views of what the store knows.

use axum::Json;
use axum::extract::{Path, Query, State};
use hangar_api::{JobDetail, JobList, JobQuery, JobView, ReceivedTimes, TimelineEntry};
use hangar_store::JobFilter;
use hangar_types::{JobId, JobRecord};
use serde_json::{Value, json};

use crate::auth::Operator;
use crate::{ApiError, ServerState};

pub(crate) async fn health(State(state): State<ServerState>) -> Result<Json<Value>, ApiError> {
    state.store.health().await?;
    Ok(Json(json!({ "status": "ok", "database": state.store.backend().as_str() })))
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
            delivery_id: delivery.delivery_id.0,
            event: delivery.event,
            action: delivery.action,
            received_at: delivery.received_at,
        })
        .collect();
    Ok(Json(JobDetail { job: view_of(&job), timeline }))
}

fn view_of(record: &JobRecord) -> JobView {
    let fields = &record.fields;
    let runner = fields.runner.as_ref();
    JobView {
        id: fields.id,
        state: record.state,
        repository: fields.repository.clone(),
        organization: fields.organization.clone(),
        installation_id: fields.installation_id.map(|id| id.0),
        run_id: fields.run_id.0,
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
