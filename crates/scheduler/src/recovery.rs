//! Lost-webhook recovery: GitHub does not resend a failed delivery by
//! itself, and some are never sent at all. A periodic pass
//! 1. lists queued jobs in every repository of the installation and records
//!    the ones the store does not have as queued;
//! 2. re-reads (`job_get`) jobs the store thinks are queued but GitHub no
//!    longer lists, and in-progress jobs no live runner of ours is working
//!    on, so lost `in_progress`/`completed` events are found too;
//! 3. with GitHub App auth, scans the App's delivery log and asks GitHub to
//!    redeliver failed deliveries the store never received.
//!
//! Everything polled is recorded as a delivery with a synthetic id
//! (`poll-<job>-<state>`) through the same store path as webhooks, so the
//! job record converges by job id whichever path saw an event first, and a
//! second poll of the same state is a duplicate. All calls here are
//! `Poll` priority: the GitHub client refuses them when the rate-limit
//! budget is down to the reserve kept for runner launches, and the pass
//! simply stops until the next one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hangar_github::{GitHubError, GitHubJob};
use hangar_store::NewDelivery;
use hangar_types::{DeliveryId, ErrorChain, JobAction, JobEvent, JobId, JobState, Timestamp};

use crate::reconciler::Lifecycle;

/// Jobs re-read from GitHub at once during a recovery pass.
const REFRESH_CONCURRENCY: usize = 8;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub repositories: usize,
    /// Job states learnt from polling that the store did not have.
    pub jobs_recorded: usize,
    pub jobs_refreshed: usize,
    pub redeliveries: usize,
}

/// State kept between passes.
#[derive(Debug, Default)]
pub struct RecoveryState {
    /// Newest delivery time scanned, so each pass reads only newer ones.
    deliveries_since: Option<Timestamp>,
    redelivered: HashSet<i64>,
    app_auth: Option<bool>,
}

impl Lifecycle {
    /// Runs recovery passes every `github_sync_interval` until
    /// [`Lifecycle::stop`].
    pub fn start_recovery(self: &Arc<Self>) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let mut state = RecoveryState::default();
            let mut tick = tokio::time::interval(this.config.github_sync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = this.cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.recovery_pass(&mut state).await {
                    Ok(report)
                        if report.jobs_recorded + report.jobs_refreshed + report.redeliveries
                            > 0 =>
                    {
                        tracing::info!(?report, "Recovery found what webhooks missed.");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "Recovery pass stopped early; the next one retries.");
                    }
                }
            }
        });
    }

    /// One recovery pass (see the module docs).
    pub async fn recovery_pass(
        self: &Arc<Self>,
        state: &mut RecoveryState,
    ) -> Result<RecoveryReport, GitHubError> {
        let mut report = RecoveryReport::default();
        tracing::debug!("Recovery pass starting.");
        let repositories = self.github.installation_repository_list().await?;
        report.repositories = repositories.len();
        let known: HashMap<JobId, (JobState, String, Option<String>)> =
            match self.store.job_list_active().await {
                Ok(jobs) => jobs
                    .into_iter()
                    .map(|j| {
                        let runner = j.record.fields.runner.as_ref().map(|r| r.name.clone());
                        (j.record.fields.id, (j.record.state, j.record.fields.repository, runner))
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "Recovery cannot read the store.");
                    return Ok(report);
                }
            };
        let mut queued_on_github = HashSet::new();
        let mut result = Ok(());
        for repo in &repositories {
            match self.github.queued_job_list(repo).await {
                Ok(jobs) => {
                    for job in jobs {
                        queued_on_github.insert(job.fields.id);
                        let stored = known.get(&job.fields.id).map(|k| k.0);
                        if stored.is_none_or(|s| s < job.state)
                            && self.job_record_polled(&job).await
                        {
                            report.jobs_recorded += 1;
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.jobs_refresh(&known, &queued_on_github, &repositories, &mut report).await;
        }
        if result.is_ok() {
            result = self.deliveries_redeliver(state, &mut report).await;
        }
        if report.jobs_recorded + report.jobs_refreshed > 0 {
            self.wake.notify_one();
        }
        tracing::debug!(?report, ok = result.is_ok(), "Recovery pass done.");
        result.map(|()| report)
    }

    async fn jobs_refresh(
        self: &Arc<Self>,
        known: &HashMap<JobId, (JobState, String, Option<String>)>,
        queued_on_github: &HashSet<JobId>,
        repositories: &[String],
        report: &mut RecoveryReport,
    ) -> Result<(), GitHubError> {
        let live: HashSet<String> = match self.store.runner_list_live().await {
            Ok(runners) => runners.into_iter().map(|r| r.id.to_string()).collect(),
            Err(_) => return Ok(()),
        };
        let mut stale: Vec<(&JobId, &String, JobState)> = known
            .iter()
            .filter(|(id, (state, repo, runner))| {
                let ours_running = runner.as_ref().is_some_and(|name| live.contains(name));
                repositories.contains(repo)
                    && match state {
                        JobState::Queued => !queued_on_github.contains(id),
                        JobState::InProgress => !ours_running,
                        _ => false,
                    }
            })
            .map(|(id, (state, repo, _))| (id, repo, *state))
            .collect();
        stale.sort_by_key(|(id, _, _)| **id);
        tracing::debug!(stale = stale.len(), "Recovery re-reads jobs.");
        // A few reads at a time: a burst of lost events must not take one
        // round trip per job in sequence.
        let mut reads = tokio::task::JoinSet::new();
        let mut stale = stale.into_iter();
        let mut first_error = None;
        loop {
            while reads.len() < REFRESH_CONCURRENCY {
                let Some((id, repo, state)) = stale.next() else { break };
                let (github, id, repo) = (self.github.clone(), *id, repo.clone());
                reads.spawn(async move { (state, github.job_get(&repo, id).await) });
            }
            let Some(joined) = reads.join_next().await else { break };
            match joined {
                Ok((state, Ok(Some(job)))) => {
                    if job.state > state && self.job_record_polled(&job).await {
                        report.jobs_refreshed += 1;
                    }
                }
                Ok((_, Ok(None))) | Err(_) => {}
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                    // Stop starting new reads; let the running ones finish.
                    stale = Vec::new().into_iter();
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn deliveries_redeliver(
        &self,
        state: &mut RecoveryState,
        report: &mut RecoveryReport,
    ) -> Result<(), GitHubError> {
        if state.app_auth == Some(false) {
            return Ok(());
        }
        let deliveries = match self.github.hook_delivery_list(state.deliveries_since).await {
            Ok(deliveries) => deliveries,
            Err(GitHubError::AppAuthRequired { .. }) => {
                state.app_auth = Some(false);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        state.app_auth = Some(true);
        // A guid that succeeded once (original or redelivery) needs nothing.
        let succeeded: HashSet<&DeliveryId> =
            deliveries.iter().filter(|d| d.succeeded()).map(|d| &d.guid).collect();
        for delivery in &deliveries {
            if delivery.succeeded()
                || delivery.event != "workflow_job"
                || succeeded.contains(&delivery.guid)
                || state.redelivered.contains(&delivery.id)
            {
                continue;
            }
            if matches!(self.store.delivery_known(&delivery.guid).await, Ok(true)) {
                continue;
            }
            self.github.hook_delivery_redeliver(delivery.id).await?;
            state.redelivered.insert(delivery.id);
            report.redeliveries += 1;
            metrics::counter!(crate::metrics::REDELIVERIES).increment(1);
        }
        if let Some(newest) = deliveries.iter().map(|d| d.delivered_at).max() {
            // Keep a margin: deliveries logged late must not be skipped.
            state.deliveries_since = Some(newest - chrono::Duration::minutes(5));
        }
        Ok(())
    }

    /// Records a polled job state as a synthetic delivery. Returns whether
    /// it was new.
    async fn job_record_polled(&self, job: &GitHubJob) -> bool {
        let action = match job.state {
            JobState::Waiting => JobAction::Waiting,
            JobState::Queued => JobAction::Queued,
            JobState::InProgress => JobAction::InProgress,
            JobState::Completed => JobAction::Completed,
        };
        let delivery_id = DeliveryId(format!("poll-{}-{}", job.fields.id, job.state));
        let received_at = chrono::Utc::now();
        let delivery = NewDelivery {
            delivery_id: delivery_id.clone(),
            event: "workflow_job".to_owned(),
            action: Some(action.as_str().to_owned()),
            received_at,
            payload: serde_json::to_string(job).unwrap_or_default(),
            job_event: Some(JobEvent { delivery_id, action, received_at, job: job.fields.clone() }),
        };
        match self.store.delivery_record(delivery).await {
            Ok(hangar_store::DeliveryOutcome::Recorded { job_changed, .. }) => {
                if job_changed {
                    metrics::counter!(crate::metrics::JOBS_RECOVERED, "state" => job.state.as_str())
                        .increment(1);
                    tracing::info!(job_id = job.fields.id.0, state = %job.state, "Recovered a job state no webhook delivered.");
                }
                job_changed
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(job_id = job.fields.id.0, error = %ErrorChain(&e), "Could not record a polled job.");
                false
            }
        }
    }
}
