//! The GitHub REST API as hangar uses it: one trait, [`GitHubApi`], and its
//! one real implementation, [`RestClient`].
//!
//! The trait is the seam the scheduler, reaper and lost-webhook recovery are
//! written against. There is deliberately no in-memory fake of it: tests run
//! the real client against `hangar-simulator`, a GitHub stand-in that speaks
//! the same HTTP, so the shapes, pagination and error mapping are exercised
//! every time.
//!
//! # Semantics every caller can rely on
//! - `jit_config_create` is **not idempotent** on GitHub: a lost response
//!   may still have registered the runner. The client never retries it on a
//!   transport error or 5xx; a retry by the caller with the same name gets
//!   [`GitHubError::Conflict`], after which [`GitHubApi::runner_find_by_name`]
//!   tells whether the registration exists.
//! - Reads and deletes are retried inside the client (bounded, with backoff)
//!   on 5xx, timeouts and rate limits; what comes out is a final answer.
//! - Rate limits: every response updates [`RateBudget`]. Calls are either
//!   [`CallPriority::Essential`] (JIT minting, runner get/delete) or
//!   [`CallPriority::Poll`] (listing queued jobs, runners, deliveries). A poll
//!   refuses to run with [`GitHubError::BudgetReserved`] when it would eat
//!   into the reserve kept for essential calls.

mod client;
mod config;
mod error;
mod wire;

use hangar_types::{
    DeliveryId, GitHubRunnerId, InstallationId, JobFields, JobId, JobState, Labels, RepositoryId,
    Secret, Timestamp,
};
use serde::{Deserialize, Serialize};

pub use client::{API_VERSION, AppCredentials, Auth, ClientConfig, MAX_PAGES, RestClient};
pub use config::{ENV_GITHUB_APP_PRIVATE_KEY, ENV_GITHUB_TOKEN, GitHubConfig, GitHubConfigError};
pub use error::GitHubError;

/// Where a runner is registered: an organization or a single repository.
/// Written (in `hangar.toml` too) as `org` or `owner/repo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RunnerScope {
    Organization(String),
    Repository { owner: String, repo: String },
}

impl RunnerScope {
    /// Parses `org` or `owner/repo`.
    pub fn parse(s: &str) -> Option<RunnerScope> {
        match s.split_once('/') {
            None if !s.is_empty() => Some(RunnerScope::Organization(s.to_owned())),
            Some((owner, repo)) if !owner.is_empty() && !repo.is_empty() && !repo.contains('/') => {
                Some(RunnerScope::Repository { owner: owner.to_owned(), repo: repo.to_owned() })
            }
            _ => None,
        }
    }

    /// Whether runners registered here can take jobs of `repository`
    /// (`owner/name`): an organization's runners take its repositories'
    /// jobs, a repository's runners that repository's. Logins and names
    /// compare without case, as on GitHub.
    pub fn covers(&self, repository: &str) -> bool {
        let Some((owner, name)) = repository.split_once('/') else { return false };
        match self {
            RunnerScope::Organization(org) => owner.eq_ignore_ascii_case(org),
            RunnerScope::Repository { owner: o, repo } => {
                owner.eq_ignore_ascii_case(o) && name.eq_ignore_ascii_case(repo)
            }
        }
    }

    /// The URL path prefix of the scope: `/orgs/{org}` or `/repos/{owner}/{repo}`.
    pub fn path(&self) -> String {
        match self {
            RunnerScope::Organization(org) => format!("/orgs/{org}"),
            RunnerScope::Repository { owner, repo } => format!("/repos/{owner}/{repo}"),
        }
    }
}

impl TryFrom<String> for RunnerScope {
    type Error = String;

    fn try_from(text: String) -> Result<RunnerScope, String> {
        RunnerScope::parse(&text).ok_or_else(|| {
            format!(
                "expected the organization (`octo-org`) or repository (`owner/repo`) runners \
                 register in, got {text:?}"
            )
        })
    }
}

impl From<RunnerScope> for String {
    fn from(scope: RunnerScope) -> String {
        scope.to_string()
    }
}

impl std::fmt::Display for RunnerScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunnerScope::Organization(org) => f.write_str(org),
            RunnerScope::Repository { owner, repo } => write!(f, "{owner}/{repo}"),
        }
    }
}

/// The body of `POST …/actions/runners/generate-jitconfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitConfigRequest {
    /// The runner's name on GitHub: hangar's `RunnerId`.
    pub name: String,
    /// GitHub requires it at both levels; the "Default" group is 1.
    pub runner_group_id: i64,
    /// Every label the runner answers to, `self-hosted` included.
    pub labels: Labels,
    /// Relative to the runner's install dir; GitHub's default is `_work`.
    pub work_folder: Option<String>,
}

/// A minted just-in-time runner configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitConfig {
    /// GitHub's numeric id of the registration the call created.
    pub github_runner_id: GitHubRunnerId,
    pub name: String,
    /// `encoded_jit_config`, for `run.sh --jitconfig`. Never logged.
    pub encoded: Secret,
}

/// `status` of a self-hosted runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    Online,
    Offline,
}

/// A self-hosted runner registration as GitHub reports it. `busy` and
/// `status` from a list can be up to a minute stale: re-read with
/// [`GitHubApi::runner_get`] before anything destructive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubRunner {
    pub id: GitHubRunnerId,
    pub name: String,
    pub os: String,
    pub status: RunnerStatus,
    pub busy: bool,
    pub ephemeral: Option<bool>,
    pub runner_group_id: Option<i64>,
    pub labels: Labels,
}

/// The outcome of `DELETE …/actions/runners/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerDeletion {
    /// 204: the registration was removed.
    Deleted,
    /// 422: the runner is running (or has been assigned) a job; retry later.
    Busy,
    /// 404: there was no such registration (already removed).
    Gone,
}

/// An organization's runner group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerGroup {
    pub id: i64,
    pub name: String,
    pub default: bool,
    /// `all`, `selected` or `private`.
    pub visibility: String,
}

/// A workflow job as the REST API reports it: its state plus the same
/// fields a `workflow_job` webhook carries. GitHub's REST-only statuses
/// `requested` and `pending` are reported as [`JobState::Queued`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubJob {
    pub state: JobState,
    pub fields: JobFields,
}

/// One entry of the App's webhook delivery log (`GET /app/hook/deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookDelivery {
    /// The numeric id used to redeliver.
    pub id: i64,
    /// `X-GitHub-Delivery`; a redelivery carries the original's.
    pub guid: DeliveryId,
    pub delivered_at: Timestamp,
    pub redelivery: bool,
    /// HTTP status hangar's endpoint answered (0 when it could not connect).
    pub status_code: u16,
    /// GitHub's text, e.g. `OK` or `failed to connect`.
    pub status: String,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<InstallationId>,
    pub repository_id: Option<RepositoryId>,
}

impl HookDelivery {
    /// GitHub's definition: `status_code` 200–399 is a success.
    pub fn succeeded(&self) -> bool {
        (200..400).contains(&self.status_code)
    }
}

/// What the last response said about the primary rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateBudget {
    /// `x-ratelimit-limit`; `None` until a response carried it (GHES may
    /// have rate limits off, then it stays `None`).
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset`.
    pub reset: Option<Timestamp>,
    /// How many requests the client keeps for essential calls.
    pub reserve: u64,
    /// Set while the client is backing off a rate limit.
    pub blocked_until: Option<Timestamp>,
}

/// How much a call matters when the rate-limit budget runs low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPriority {
    /// Needed to start or stop a runner: may spend the last of the budget.
    Essential,
    /// Polling that can wait for the next window: stops at the reserve.
    Poll,
}

/// The GitHub calls hangar makes. See the module docs for retry and
/// rate-limit semantics.
#[async_trait::async_trait]
pub trait GitHubApi: Send + Sync + std::fmt::Debug {
    /// Mints a JIT runner (`generate-jitconfig`). 409 (the name exists) is
    /// [`GitHubError::Conflict`]. Never retried on 5xx/transport errors.
    async fn jit_config_create(
        &self,
        scope: &RunnerScope,
        req: &JitConfigRequest,
    ) -> Result<JitConfig, GitHubError>;

    /// Every self-hosted runner of the scope (all pages). Poll priority.
    async fn runner_list(&self, scope: &RunnerScope) -> Result<Vec<GitHubRunner>, GitHubError>;

    /// The registration named `name`, if any (`?name=` filter). Essential:
    /// it is how a caller resolves a [`GitHubError::Conflict`].
    async fn runner_find_by_name(
        &self,
        scope: &RunnerScope,
        name: &str,
    ) -> Result<Option<GitHubRunner>, GitHubError>;

    /// One runner; 404 is `None`. Essential.
    async fn runner_get(
        &self,
        scope: &RunnerScope,
        id: GitHubRunnerId,
    ) -> Result<Option<GitHubRunner>, GitHubError>;

    /// Removes a registration: 204 Deleted, 422 Busy, 404 Gone. Essential.
    async fn runner_delete(
        &self,
        scope: &RunnerScope,
        id: GitHubRunnerId,
    ) -> Result<RunnerDeletion, GitHubError>;

    /// The organization's runner groups (all pages). Poll priority.
    async fn runner_group_list(&self, org: &str) -> Result<Vec<RunnerGroup>, GitHubError>;

    /// Jobs whose status is `queued` in the `queued` and `in_progress` runs
    /// of `repo` (`owner/name`). Poll priority.
    async fn queued_job_list(&self, repo: &str) -> Result<Vec<GitHubJob>, GitHubError>;

    /// One job of `repo`; 404 is `None`. Essential.
    async fn job_get(&self, repo: &str, job: JobId) -> Result<Option<GitHubJob>, GitHubError>;

    /// The repositories (`owner/name`) the credentials can see: the App
    /// installation's repositories (`/installation/repositories`); with a
    /// PAT, the repositories configured on the client. Poll priority.
    async fn installation_repository_list(&self) -> Result<Vec<String>, GitHubError>;

    /// The App's webhook deliveries, newest first, down to `since`
    /// (inclusive; all retained ones when `None`). App auth only
    /// ([`GitHubError::AppAuthRequired`] otherwise). Poll priority.
    async fn hook_delivery_list(
        &self,
        since: Option<Timestamp>,
    ) -> Result<Vec<HookDelivery>, GitHubError>;

    /// Asks GitHub to redeliver one delivery (by its numeric id). App auth
    /// only. Poll priority.
    async fn hook_delivery_redeliver(&self, id: i64) -> Result<(), GitHubError>;

    /// The rate-limit picture after the latest response (for `/metrics`).
    fn rate_budget(&self) -> RateBudget;
}

#[cfg(test)]
mod tests {
    use super::RunnerScope;

    #[test]
    fn a_scope_covers_its_own_repositories_only() {
        let org = RunnerScope::parse("Octo-Org").expect("org");
        assert!(org.covers("octo-org/app"));
        assert!(org.covers("OCTO-ORG/lib"));
        assert!(!org.covers("other-org/app"));
        assert!(!org.covers("octo-org-evil/app"), "a prefix is not the owner");
        assert!(!org.covers("octo-org"), "not owner/name");
        let repo = RunnerScope::parse("octo-org/app").expect("repo");
        assert!(repo.covers("Octo-Org/App"));
        assert!(!repo.covers("octo-org/lib"));
        assert!(!repo.covers("other-org/app"));
    }
}
