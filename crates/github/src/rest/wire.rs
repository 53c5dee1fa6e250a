//! GitHub's JSON shapes (the subset hangar reads), and their conversion to
//! the crate's types. Unknown fields are ignored; missing required ones are
//! a decode error naming the call.

use hangar_types::{
    Conclusion, DeliveryId, GitHubRunnerId, InstallationId, JobFields, JobId, JobState, Labels,
    RepositoryId, RunId, RunnerAssignment, Secret, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::{GitHubJob, GitHubRunner, HookDelivery, RunnerGroup, RunnerStatus};

#[derive(Debug, Serialize)]
pub(crate) struct JitBody<'a> {
    pub(crate) name: &'a str,
    pub(crate) runner_group_id: i64,
    pub(crate) labels: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) work_folder: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JitResponse {
    pub(crate) runner: WireRunner,
    pub(crate) encoded_jit_config: Secret,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireLabel {
    name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireRunner {
    pub(crate) id: i64,
    pub(crate) name: String,
    #[serde(default)]
    os: String,
    status: String,
    #[serde(default)]
    busy: bool,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(default)]
    runner_group_id: Option<i64>,
    #[serde(default)]
    labels: Vec<WireLabel>,
}

impl From<WireRunner> for GitHubRunner {
    fn from(w: WireRunner) -> GitHubRunner {
        GitHubRunner {
            id: GitHubRunnerId(w.id),
            name: w.name,
            os: w.os,
            status: if w.status == "online" { RunnerStatus::Online } else { RunnerStatus::Offline },
            busy: w.busy,
            ephemeral: w.ephemeral,
            runner_group_id: w.runner_group_id,
            labels: Labels::new(w.labels.into_iter().map(|l| l.name)),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunnerPage {
    pub(crate) runners: Vec<WireRunner>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireGroup {
    id: i64,
    name: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    visibility: String,
}

impl From<WireGroup> for RunnerGroup {
    fn from(w: WireGroup) -> RunnerGroup {
        RunnerGroup { id: w.id, name: w.name, default: w.default, visibility: w.visibility }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct GroupPage {
    pub(crate) runner_groups: Vec<WireGroup>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireRun {
    pub(crate) id: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunPage {
    pub(crate) workflow_runs: Vec<WireRun>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireJob {
    id: i64,
    run_id: i64,
    #[serde(default)]
    run_attempt: Option<i64>,
    status: String,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    created_at: Option<Timestamp>,
    #[serde(default)]
    started_at: Option<Timestamp>,
    #[serde(default)]
    completed_at: Option<Timestamp>,
    name: String,
    #[serde(default)]
    workflow_name: Option<String>,
    #[serde(default)]
    head_branch: Option<String>,
    #[serde(default)]
    head_sha: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    runner_id: Option<i64>,
    #[serde(default)]
    runner_name: Option<String>,
    #[serde(default)]
    runner_group_id: Option<i64>,
    #[serde(default)]
    runner_group_name: Option<String>,
}

impl WireJob {
    pub(crate) fn state(&self) -> JobState {
        job_state(&self.status)
    }

    pub(crate) fn into_job(self, repo: &str, installation: Option<InstallationId>) -> GitHubJob {
        let state = self.state();
        let runner = match (self.runner_id, self.runner_name) {
            (Some(id), Some(name)) if id > 0 && !name.is_empty() => Some(RunnerAssignment {
                id: GitHubRunnerId(id),
                name,
                group_id: self.runner_group_id,
                group_name: self.runner_group_name,
            }),
            _ => None,
        };
        GitHubJob {
            state,
            fields: JobFields {
                id: JobId(self.id),
                run_id: RunId(self.run_id),
                run_attempt: self.run_attempt.unwrap_or(1),
                repository: repo.to_owned(),
                organization: repo.split_once('/').map(|(owner, _)| owner.to_owned()),
                installation_id: installation,
                workflow_name: self.workflow_name,
                job_name: self.name,
                labels: Labels::new(self.labels),
                head_branch: self.head_branch,
                head_sha: self.head_sha,
                html_url: self.html_url,
                runner,
                conclusion: self.conclusion.map(Conclusion::from),
                created_at: self.created_at,
                started_at: self.started_at,
                completed_at: self.completed_at,
            },
        }
    }
}

/// GitHub's job `status` as a hangar state. The REST-only `requested` and
/// `pending` are not yet running anywhere, so they count as queued; an
/// unknown value is treated as `waiting` (not runnable) rather than guessed.
pub(crate) fn job_state(status: &str) -> JobState {
    match status {
        "queued" | "requested" | "pending" => JobState::Queued,
        "in_progress" => JobState::InProgress,
        "completed" => JobState::Completed,
        _ => JobState::Waiting,
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct JobPage {
    pub(crate) jobs: Vec<WireJob>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireRepo {
    pub(crate) full_name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RepoPage {
    pub(crate) repositories: Vec<WireRepo>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AccessToken {
    pub(crate) token: Secret,
    pub(crate) expires_at: Timestamp,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireDelivery {
    id: i64,
    guid: String,
    delivered_at: Timestamp,
    #[serde(default)]
    redelivery: bool,
    #[serde(default)]
    status: String,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    event: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    installation_id: Option<i64>,
    #[serde(default)]
    repository_id: Option<i64>,
}

impl From<WireDelivery> for HookDelivery {
    fn from(w: WireDelivery) -> HookDelivery {
        HookDelivery {
            id: w.id,
            guid: DeliveryId(w.guid),
            delivered_at: w.delivered_at,
            redelivery: w.redelivery,
            status_code: w.status_code,
            status: w.status,
            event: w.event,
            action: w.action,
            installation_id: w.installation_id.map(InstallationId),
            repository_id: w.repository_id.map(RepositoryId),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) message: String,
}

/// The `rel="next"` URL of a `Link` header.
pub(crate) fn link_next(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        is_next.then(|| url.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_next_finds_the_next_page_only() {
        let link = "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\"";
        assert_eq!(link_next(link), Some("https://api.github.com/x?page=2"));
        assert_eq!(link_next("<https://api.github.com/x?page=1>; rel=\"prev\""), None);
    }

    #[test]
    fn the_documented_job_example_decodes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/github/rest-subset.json"
        );
        let raw = std::fs::read_to_string(path).expect("the shared fixtures are next to the repo");
        let spec: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let example = &spec["components"]["examples"]["job"]["value"];
        let job: WireJob = serde_json::from_value(example.clone()).unwrap();
        let job = job.into_job("octo-org/octo-repo", None);
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.fields.id, JobId(399_444_496));
        assert_eq!(job.fields.runner.unwrap().name, "my runner");
        assert!(job.fields.labels.contains("self-hosted"));
        let runner = &spec["components"]["examples"]["runner"]["value"];
        let runner: GitHubRunner =
            serde_json::from_value::<WireRunner>(runner.clone()).unwrap().into();
        assert_eq!(runner.status, RunnerStatus::Online);
    }

    #[test]
    fn rest_only_statuses_map_conservatively() {
        assert_eq!(job_state("pending"), JobState::Queued);
        assert_eq!(job_state("waiting"), JobState::Waiting);
        assert_eq!(job_state("something-new"), JobState::Waiting);
    }
}
