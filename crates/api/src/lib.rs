//! The admin API (`/api/v1`): what goes over the wire, and a client.
//!
//! **Boundary:** these types are the API's contract. The server converts
//! its records into them; the CLI and scripts read them. Changing a field
//! here changes the API.

use hangar_types::{
    Conclusion, DeliveryId, GitHubRunnerId, InstallationId, JobId, JobState, Labels, PoolName,
    RunId, RunnerId, RunnerState, Timestamp,
};
use serde::{Deserialize, Serialize};

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub state: JobState,
    pub repository: String,
    pub organization: Option<String>,
    pub installation_id: Option<InstallationId>,
    pub run_id: RunId,
    pub run_attempt: i64,
    pub workflow_name: Option<String>,
    pub job_name: String,
    pub labels: Labels,
    pub head_branch: Option<String>,
    /// GitHub's id of the runner that took the job.
    pub runner_id: Option<GitHubRunnerId>,
    pub runner_name: Option<String>,
    pub runner_group: Option<String>,
    pub conclusion: Option<Conclusion>,
    pub html_url: Option<String>,
    /// GitHub's timestamps.
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// When hangar first received each action.
    pub received: ReceivedTimes,
    pub generation: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedTimes {
    pub waiting: Option<Timestamp>,
    pub queued: Option<Timestamp>,
    pub in_progress: Option<Timestamp>,
    pub completed: Option<Timestamp>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `before=` for the next page.
    pub next: Option<JobId>,
}

/// `GET /api/v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobView,
    /// Every delivery about the job, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// What the scheduler did about the job (runners, phases, why not).
    #[serde(default)]
    pub lifecycle: JobLifecycle,
}

/// The scheduler's side of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLifecycle {
    /// Why the job has no runner yet ("no pool matches labels [gpu]",
    /// "pool linux-x64 at max 20/20", "launch failed 3×: …").
    pub reason: Option<String>,
    pub launch_failures: u32,
    pub last_error: Option<String>,
    pub phases: JobPhases,
    /// Runners made for the job or that ran it, oldest first.
    pub runners: Vec<RunnerView>,
}

/// When the job passed each step, from GitHub's creation to completion.
/// Runner steps come from the runner that ran the job, else the latest one
/// made for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPhases {
    pub github_created_at: Option<Timestamp>,
    pub webhook_received: Option<Timestamp>,
    pub runner_decided: Option<Timestamp>,
    pub jit_minted: Option<Timestamp>,
    pub instance_launched: Option<Timestamp>,
    pub instance_ready: Option<Timestamp>,
    pub picked_up: Option<Timestamp>,
    pub completed: Option<Timestamp>,
}

/// A runner as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerView {
    pub id: RunnerId,
    pub pool: PoolName,
    pub state: RunnerState,
    pub for_job: Option<JobId>,
    pub job: Option<JobId>,
    pub reason: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub action: Option<String>,
    pub received_at: Timestamp,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Query of `GET /api/v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach hangar at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("hangar answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("hangar's answer could not be read")]
    Decode {
        #[source]
        source: reqwest::Error,
    },
}

/// A typed client of the admin API.
#[derive(Debug, Clone)]
pub struct Client {
    /// What the user gave (`http://…` or `unix:PATH`), for messages.
    base: String,
    /// Where requests go (`http://localhost` over a unix socket).
    root: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the admin listener's root URL, e.g. `http://127.0.0.1:8081`,
    /// or `unix:/run/hangar/admin.sock` for a unix socket.
    pub fn new(base: &str, token: Option<String>) -> Client {
        if let Some(path) = base.strip_prefix("unix:") {
            let http = reqwest::Client::builder()
                .unix_socket(path)
                .build()
                .expect("an HTTP client builds (as reqwest::Client::new)");
            let (base, root) = (base.to_owned(), "http://localhost".to_owned());
            return Client { base, root, token, http };
        }
        let base = base.trim_end_matches('/').to_owned();
        Client { root: base.clone(), base, token, http: reqwest::Client::new() }
    }

    /// The server as the caller named it.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn job_list(&self, query: &JobQuery) -> Result<JobList, ClientError> {
        self.get("/api/v1/jobs", query).await
    }

    pub async fn job_view(&self, id: JobId) -> Result<JobDetail, ClientError> {
        self.get(&format!("/api/v1/jobs/{id}"), &()).await
    }

    async fn get<Q: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.root);
        let mut request = self.http.get(&url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response =
            request.send().await.map_err(|source| ClientError::Unreachable { url, source })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |body| body.error);
            return Err(ClientError::Status { status: status.as_u16(), message });
        }
        response.json().await.map_err(|source| ClientError::Decode { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed ids are `serde(transparent)`: the JSON is what it was when
    /// these fields were bare numbers and strings.
    #[test]
    fn typed_ids_keep_the_wire_format() {
        let wire = serde_json::json!({
            "job": {
                "id": 11, "state": "completed", "repository": "octo/app",
                "organization": "octo", "installation_id": 7, "run_id": 99, "run_attempt": 1,
                "workflow_name": "ci", "job_name": "build", "labels": ["linux", "self-hosted"],
                "head_branch": "main", "runner_id": 42, "runner_name": "hangar-linux-1",
                "runner_group": "Default", "conclusion": "success", "html_url": null,
                "created_at": "2025-01-02T03:04:05Z", "started_at": null, "completed_at": null,
                "received": { "waiting": null, "queued": "2025-01-02T03:04:06Z",
                              "in_progress": null, "completed": null },
                "generation": 3
            },
            "timeline": [{ "delivery_id": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                           "event": "workflow_job", "action": "queued",
                           "received_at": "2025-01-02T03:04:06Z" }],
            "lifecycle": {
                "reason": null, "launch_failures": 0, "last_error": null,
                "phases": { "github_created_at": null, "webhook_received": null,
                            "runner_decided": null, "jit_minted": null,
                            "instance_launched": null, "instance_ready": null,
                            "picked_up": null, "completed": null },
                "runners": [{ "id": "hangar-linux-00000000000000ff", "pool": "linux",
                              "state": "gone", "for_job": 11, "job": 11, "reason": "done",
                              "created_at": "2025-01-02T03:04:06Z" }]
            }
        });
        let detail: JobDetail =
            serde_json::from_value(wire.clone()).expect("the wire format parses");
        assert_eq!(detail.job.runner_id, Some(GitHubRunnerId(42)));
        assert_eq!(detail.job.installation_id, Some(InstallationId(7)));
        assert_eq!(detail.lifecycle.runners[0].state, RunnerState::Gone);
        assert_eq!(detail.lifecycle.runners[0].pool, PoolName("linux".into()));
        assert_eq!(serde_json::to_value(&detail).expect("serializes"), wire);
    }
}
