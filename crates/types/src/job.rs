//! A GitHub workflow job as hangar knows it, and how webhook events fold into it.
//!
//! # States
//!
//! ```text
//!   waiting ──► queued ──► in_progress ──► completed
//!      │           │                          ▲
//!      └───────────┴──────────────────────────┘
//! ```
//!
//! A transition is allowed only towards a later state (`JobState::rank`).
//! GitHub delivers events late, twice, out of order or never, so an event
//! for an earlier state than the one recorded changes no state: a late
//! `queued` after `completed` is kept in the event log and otherwise ignored,
//! and a `completed` with no earlier event creates a completed job. `waiting`
//! ranks below `queued` because a job waits for an environment approval
//! before it is queued for a runner (GitHub has been seen sending `queued`,
//! `waiting`, `queued` for one job; the job is queued either way).
//!
//! # Convergence
//!
//! [`JobRecord::merge`] is written so that the record depends only on the
//! *set* of events seen, never on their order or multiplicity. The record
//! keeps one [`Report`] per state: what the event of that state said (of
//! several, the one with the smallest delivery id, so even disagreeing
//! duplicates settle the same way whatever their order). Everything else is
//! derived from the reports:
//! - the state is the highest state reported;
//! - each field comes from the highest-ranked report that has it, so a
//!   `completed` that names no runner (a job cancelled before assignment)
//!   keeps the runner an `in_progress` named, and GitHub's always-present
//!   fields follow the latest state;
//! - our own receive times are kept per action, earliest first.
//!
//! The property test in this module checks convergence over random
//! permutations with duplicates.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DeliveryId, GitHubRunnerId, InstallationId, JobId, Labels, RunId, Timestamp};

/// The `action` of a `workflow_job` webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    Waiting,
    Queued,
    InProgress,
    Completed,
}

/// The state of a job. Same vocabulary as [`JobAction`]: a job is in the
/// state of the latest-ranked action seen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Waiting,
    Queued,
    InProgress,
    Completed,
}

impl JobState {
    pub const ALL: [JobState; 4] =
        [JobState::Waiting, JobState::Queued, JobState::InProgress, JobState::Completed];

    /// Position in the lifecycle; a job only ever moves to a higher rank.
    pub fn rank(self) -> u8 {
        match self {
            JobState::Waiting => 0,
            JobState::Queued => 1,
            JobState::InProgress => 2,
            JobState::Completed => 3,
        }
    }

    /// The allowed transitions, all of them.
    pub fn can_transition_to(self, next: JobState) -> bool {
        next.rank() > self.rank()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Queued => "queued",
            JobState::InProgress => "in_progress",
            JobState::Completed => "completed",
        }
    }
}

impl From<JobAction> for JobState {
    fn from(action: JobAction) -> JobState {
        match action {
            JobAction::Waiting => JobState::Waiting,
            JobAction::Queued => JobState::Queued,
            JobAction::InProgress => JobState::InProgress,
            JobAction::Completed => JobState::Completed,
        }
    }
}

impl JobAction {
    pub fn as_str(self) -> &'static str {
        JobState::from(self).as_str()
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JobAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<JobState, String> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            format!("unknown job state {s:?}: expected waiting, queued, in_progress or completed")
        })
    }
}

impl FromStr for JobAction {
    type Err = String;

    fn from_str(s: &str) -> Result<JobAction, String> {
        match JobState::from_str(s)? {
            JobState::Waiting => Ok(JobAction::Waiting),
            JobState::Queued => Ok(JobAction::Queued),
            JobState::InProgress => Ok(JobAction::InProgress),
            JobState::Completed => Ok(JobAction::Completed),
        }
    }
}

/// How a completed job ended (`workflow_job.conclusion`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    Skipped,
    TimedOut,
    ActionRequired,
    Neutral,
    /// A value GitHub added after this list was written; kept verbatim.
    Other(String),
}

impl Conclusion {
    pub fn as_str(&self) -> &str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::Skipped => "skipped",
            Conclusion::TimedOut => "timed_out",
            Conclusion::ActionRequired => "action_required",
            Conclusion::Neutral => "neutral",
            Conclusion::Other(other) => other,
        }
    }
}

impl From<String> for Conclusion {
    fn from(s: String) -> Conclusion {
        match s.as_str() {
            "success" => Conclusion::Success,
            "failure" => Conclusion::Failure,
            "cancelled" => Conclusion::Cancelled,
            "skipped" => Conclusion::Skipped,
            "timed_out" => Conclusion::TimedOut,
            "action_required" => Conclusion::ActionRequired,
            "neutral" => Conclusion::Neutral,
            _ => Conclusion::Other(s),
        }
    }
}

impl From<Conclusion> for String {
    fn from(c: Conclusion) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Conclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runner GitHub assigned a job to (`runner_*` fields of the payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerAssignment {
    pub id: GitHubRunnerId,
    pub name: String,
    pub group_id: Option<i64>,
    pub group_name: Option<String>,
}

/// What one `workflow_job` event says about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFields {
    pub id: JobId,
    pub run_id: RunId,
    pub run_attempt: i64,
    /// `owner/name`.
    pub repository: String,
    pub organization: Option<String>,
    pub installation_id: Option<InstallationId>,
    pub workflow_name: Option<String>,
    pub job_name: String,
    pub labels: Labels,
    pub head_branch: Option<String>,
    pub head_sha: Option<String>,
    pub html_url: Option<String>,
    pub runner: Option<RunnerAssignment>,
    pub conclusion: Option<Conclusion>,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
}

/// One accepted `workflow_job` delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub delivery_id: DeliveryId,
    pub action: JobAction,
    /// When hangar received it (not GitHub's time).
    pub received_at: Timestamp,
    pub job: JobFields,
}

/// Our own receive time of the first event of each action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTimes {
    pub waiting: Option<Timestamp>,
    pub queued: Option<Timestamp>,
    pub in_progress: Option<Timestamp>,
    pub completed: Option<Timestamp>,
}

impl StateTimes {
    pub fn get(&self, action: JobAction) -> Option<Timestamp> {
        match action {
            JobAction::Waiting => self.waiting,
            JobAction::Queued => self.queued,
            JobAction::InProgress => self.in_progress,
            JobAction::Completed => self.completed,
        }
    }

    fn slot(&mut self, action: JobAction) -> &mut Option<Timestamp> {
        match action {
            JobAction::Waiting => &mut self.waiting,
            JobAction::Queued => &mut self.queued,
            JobAction::InProgress => &mut self.in_progress,
            JobAction::Completed => &mut self.completed,
        }
    }
}

/// What the event of one state said about the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub delivery_id: DeliveryId,
    pub fields: JobFields,
}

/// The report of each state seen, indexed by [`JobState::rank`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reports(pub [Option<Report>; 4]);

/// The durable picture of one job: what the store keeps, keyed by `fields.id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub state: JobState,
    /// Derived from `reports`; see the module docs.
    pub fields: JobFields,
    pub received: StateTimes,
    pub reports: Reports,
    /// Bumped on every change; writes are conditional on it.
    pub generation: i64,
}

/// The outcome of folding one event into a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The first event for this job.
    Created(JobRecord),
    /// The event changed the record (state, fields or receive times).
    Updated(JobRecord),
    /// The event added nothing the record did not already say.
    Unchanged,
}

impl JobRecord {
    /// Folds `event` into `current` (the stored record, if any). Pure; see
    /// the module docs for why the result does not depend on event order.
    pub fn merge(current: Option<&JobRecord>, event: &JobEvent) -> Merge {
        let mut reports = current.map(|c| c.reports.clone()).unwrap_or_default();
        let mut received = current.map(|c| c.received.clone()).unwrap_or_default();
        let slot = &mut reports.0[usize::from(JobState::from(event.action).rank())];
        if slot.as_ref().is_none_or(|seen| event.delivery_id < seen.delivery_id) {
            *slot =
                Some(Report { delivery_id: event.delivery_id.clone(), fields: event.job.clone() });
        }
        let time = received.slot(event.action);
        if time.is_none_or(|seen| event.received_at < seen) {
            *time = Some(event.received_at);
        }
        let (state, fields) = derive(&reports).expect("the event's own report is there");
        let generation = current.map_or(0, |c| c.generation) + 1;
        let next = JobRecord { state, fields, received, reports, generation };
        match current {
            None => Merge::Created(next),
            Some(current) if next.same_as(current) => Merge::Unchanged,
            Some(_) => Merge::Updated(next),
        }
    }

    fn same_as(&self, other: &JobRecord) -> bool {
        self.received == other.received && self.reports == other.reports
    }
}

/// The state and fields the reports add up to: each field from the
/// highest-ranked report that has it.
fn derive(reports: &Reports) -> Option<(JobState, JobFields)> {
    let mut ranked = JobState::ALL.into_iter().rev().zip(reports.0.iter().rev());
    let (state, top) = ranked.find_map(|(state, report)| report.as_ref().map(|r| (state, r)))?;
    let mut fields = top.fields.clone();
    for (_, report) in ranked {
        if let Some(report) = report {
            fields = overlay(&fields, &report.fields);
        }
    }
    Some((state, fields))
}

/// `primary`'s fields, with its missing optional ones taken from `fallback`.
fn overlay(primary: &JobFields, fallback: &JobFields) -> JobFields {
    fn or<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
        a.clone().or_else(|| b.clone())
    }
    JobFields {
        id: primary.id,
        run_id: primary.run_id,
        run_attempt: primary.run_attempt,
        repository: primary.repository.clone(),
        organization: or(&primary.organization, &fallback.organization),
        installation_id: primary.installation_id.or(fallback.installation_id),
        workflow_name: or(&primary.workflow_name, &fallback.workflow_name),
        job_name: primary.job_name.clone(),
        labels: if primary.labels.is_empty() {
            fallback.labels.clone()
        } else {
            primary.labels.clone()
        },
        head_branch: or(&primary.head_branch, &fallback.head_branch),
        head_sha: or(&primary.head_sha, &fallback.head_sha),
        html_url: or(&primary.html_url, &fallback.html_url),
        runner: or(&primary.runner, &fallback.runner),
        conclusion: or(&primary.conclusion, &fallback.conclusion),
        created_at: primary.created_at.or(fallback.created_at),
        started_at: primary.started_at.or(fallback.started_at),
        completed_at: primary.completed_at.or(fallback.completed_at),
    }
}

#[cfg(test)]
mod tests;
