//! `workflow_job` webhooks: payloads shaped like the fixtures in
//! `shared/fixtures/github/webhooks/workflow_job/`, HMAC-SHA256 signing, the
//! delivery log, and the webhook faults (drop, vanish, duplicate, reorder,
//! delay).
//!
//! Planning happens under the state lock (fault draws, delivery ids, the
//! body); sending happens in a spawned task afterwards, which records the
//! outcome in the log like GitHub's delivery history.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::state::{Delivery, Job, Shared, State};

/// One HTTP delivery to make.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) delivery_id: i64,
    pub(crate) guid: String,
    pub(crate) body: Arc<Vec<u8>>,
    pub(crate) delay: Duration,
    /// Send a second copy (duplicate fault).
    pub(crate) duplicate: bool,
}

const HOOK_ID: i64 = 420_042;

fn ts(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(crate) fn repo_id(repo: &str) -> i64 {
    // Stable per name, positive, fits JSON numbers.
    let mut h: i64 = 17;
    for b in repo.bytes() {
        h = (h.wrapping_mul(31).wrapping_add(i64::from(b))) & 0x3fff_ffff;
    }
    h + 1
}

/// A user or organization (`simple-user`), with every URL GitHub sends.
pub(crate) fn user_json(login: &str, kind: &str) -> Value {
    let id = repo_id(login);
    let api = "https://api.github.com";
    json!({
        "login": login,
        "id": id,
        "node_id": format!("O_sim{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "",
        "url": format!("{api}/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{api}/users/{login}/followers"),
        "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
        "organizations_url": format!("{api}/users/{login}/orgs"),
        "repos_url": format!("{api}/users/{login}/repos"),
        "events_url": format!("{api}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/{login}/received_events"),
        "type": kind,
        "site_admin": false
    })
}

/// A repository (`repository`), with every key GitHub's schema requires.
pub(crate) fn repository_json(repo: &str) -> Value {
    let (owner, name) = repo.split_once('/').unwrap_or((repo, repo));
    let id = repo_id(repo);
    let url = format!("https://api.github.com/repos/{repo}");
    let mut value = json!({
        "id": id,
        "node_id": format!("R_sim{id}"),
        "name": name,
        "full_name": repo,
        "private": true,
        "owner": user_json(owner, "Organization"),
        "html_url": format!("https://github.com/{repo}"),
        "description": null,
        "fork": false,
        "url": url,
        "clone_url": format!("https://github.com/{repo}.git"),
        "git_url": format!("git://github.com/{repo}.git"),
        "ssh_url": format!("git@github.com:{repo}.git"),
        "svn_url": format!("https://github.com/{repo}"),
        "mirror_url": null,
        "homepage": null,
        "language": "Rust",
        "default_branch": "main",
        "visibility": "private",
        "forks": 0,
        "forks_count": 0,
        "stargazers_count": 0,
        "watchers": 0,
        "watchers_count": 0,
        "open_issues": 0,
        "open_issues_count": 0,
        "size": 1,
        "has_issues": true,
        "has_projects": false,
        "has_downloads": true,
        "has_wiki": false,
        "has_pages": false,
        "archived": false,
        "disabled": false,
        "license": null,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "pushed_at": "2024-01-01T00:00:00Z"
    });
    let templates = [
        ("archive_url", "/{archive_format}{/ref}"),
        ("assignees_url", "/assignees{/user}"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("branches_url", "/branches{/branch}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("comments_url", "/comments{/number}"),
        ("commits_url", "/commits{/sha}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("contents_url", "/contents/{+path}"),
        ("contributors_url", "/contributors"),
        ("deployments_url", "/deployments"),
        ("downloads_url", "/downloads"),
        ("events_url", "/events"),
        ("forks_url", "/forks"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("hooks_url", "/hooks"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("issue_events_url", "/issues/events{/number}"),
        ("issues_url", "/issues{/number}"),
        ("keys_url", "/keys{/key_id}"),
        ("labels_url", "/labels{/name}"),
        ("languages_url", "/languages"),
        ("merges_url", "/merges"),
        ("milestones_url", "/milestones{/number}"),
        ("notifications_url", "/notifications{?since,all,participating}"),
        ("pulls_url", "/pulls{/number}"),
        ("releases_url", "/releases{/id}"),
        ("stargazers_url", "/stargazers"),
        ("statuses_url", "/statuses/{sha}"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("tags_url", "/tags"),
        ("teams_url", "/teams"),
        ("trees_url", "/git/trees{/sha}"),
    ];
    let object = value.as_object_mut().expect("built as an object");
    for (key, suffix) in templates {
        object.insert(key.to_owned(), Value::String(format!("{url}{suffix}")));
    }
    value
}

/// The `workflow_job` object, shared by webhooks and the REST job API
/// (`status` follows the job, as in GitHub's job object).
pub(crate) fn job_json(job: &Job, status: &str, api_url: &str) -> Value {
    let repo = &job.repo;
    let (runner_id, runner_name, group_id, group_name) = match (&job.runner, status) {
        (Some((id, name, group)), "in_progress" | "completed") => {
            (json!(id), json!(name), json!(group), json!("Default"))
        }
        _ => (Value::Null, Value::Null, Value::Null, Value::Null),
    };
    let completed = status == "completed";
    let steps = if status == "queued" {
        json!([])
    } else {
        json!([{
            "name": "Set up job",
            "status": "completed",
            "conclusion": "success",
            "number": 1,
            "started_at": job.started_at.map(ts),
            "completed_at": job.started_at.map(ts)
        }])
    };
    json!({
        "id": job.id,
        "run_id": job.run_id,
        "workflow_name": job.workflow_name,
        "head_branch": "main",
        "run_url": format!("{api_url}/repos/{repo}/actions/runs/{}", job.run_id),
        "run_attempt": 1,
        "node_id": format!("CR_sim{}", job.id),
        "head_sha": job.head_sha,
        "url": format!("{api_url}/repos/{repo}/actions/jobs/{}", job.id),
        "html_url": format!("https://github.com/{repo}/actions/runs/{}/job/{}", job.run_id, job.id),
        "status": status,
        "conclusion": if completed { json!(job.conclusion) } else { Value::Null },
        "created_at": ts(job.created_at),
        "started_at": ts(job.started_at.unwrap_or(job.created_at)),
        "completed_at": if completed { json!(job.completed_at.map(ts)) } else { Value::Null },
        "name": job.name,
        "steps": steps,
        "check_run_url": format!("{api_url}/repos/{repo}/check-runs/{}", job.id),
        "labels": job.labels_raw,
        "runner_id": runner_id,
        "runner_name": runner_name,
        "runner_group_id": group_id,
        "runner_group_name": group_name
    })
}

fn guid(state: &mut State) -> String {
    let a: u128 = state.rng.random();
    let hex = format!("{a:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

impl State {
    /// Plans the `action` webhook for a job, applying the webhook faults.
    pub(crate) fn webhook_plan(&mut self, job_id: i64, action: &str, out: &mut Vec<Outgoing>) {
        if self.config.webhook_url.is_none() || !self.job_webhooks_enabled(job_id) {
            return;
        }
        let Some(job) = self.jobs.get(&job_id) else { return };
        let status = match action {
            "queued" => "queued",
            "in_progress" => "in_progress",
            _ => "completed",
        };
        let org = job.repo.split_once('/').map(|(o, _)| o.to_owned()).unwrap_or_default();
        let payload = json!({
            "action": action,
            "workflow_job": job_json(job, status, "https://api.github.com"),
            "repository": repository_json(&job.repo),
            "organization": {
                "login": org,
                "id": repo_id(&org),
                "node_id": format!("O_sim{}", repo_id(&org)),
                "url": format!("https://api.github.com/orgs/{org}"),
                "repos_url": format!("https://api.github.com/orgs/{org}/repos"),
                "events_url": format!("https://api.github.com/orgs/{org}/events"),
                "hooks_url": format!("https://api.github.com/orgs/{org}/hooks"),
                "issues_url": format!("https://api.github.com/orgs/{org}/issues"),
                "members_url": format!("https://api.github.com/orgs/{org}/members{{/member}}"),
                "public_members_url": format!("https://api.github.com/orgs/{org}/public_members{{/member}}"),
                "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", repo_id(&org)),
                "description": null
            },
            "sender": user_json("simulated-user", "User"),
            "installation": {
                "id": self.config.installation_id,
                "node_id": format!("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{}", self.config.installation_id)
            }
        });
        let body = Arc::new(serde_json::to_vec_pretty(&payload).expect("json serialises"));
        let repository_id = repo_id(&job.repo);
        let faults = self.config.faults.clone();
        if self.chance(faults.webhook_vanish) {
            self.counters.webhooks_vanished += 1;
            return;
        }
        let id = self.next_delivery_id();
        let guid = guid(self);
        let mut delivery = Delivery {
            id,
            guid: guid.clone(),
            action: action.to_owned(),
            job_id,
            repository_id,
            body: body.clone(),
            redelivery: false,
            attempted: false,
            status_code: 0,
            status: "pending".to_owned(),
            delivered_at: Utc::now(),
            duration: 0.0,
        };
        if self.chance(faults.webhook_drop) {
            self.counters.webhooks_dropped += 1;
            delivery.attempted = true;
            delivery.status_code = 504;
            delivery.status = "timed out".to_owned();
            self.deliveries.insert(id, delivery);
            return;
        }
        self.deliveries.insert(id, delivery);
        let mut delay = faults.webhook_delay;
        if self.chance(faults.webhook_reorder) {
            delay += faults.webhook_reorder_delay;
        }
        let duplicate = self.chance(faults.webhook_duplicate);
        if duplicate {
            self.counters.webhooks_duplicated += 1;
        }
        out.push(Outgoing { delivery_id: id, guid, body, delay, duplicate });
    }

    /// Plans a redelivery of a logged delivery (same guid and body).
    pub(crate) fn redelivery_plan(&mut self, original: i64) -> Option<Outgoing> {
        let original = self.deliveries.get(&original)?.clone();
        let id = self.next_delivery_id();
        self.counters.redeliveries += 1;
        let faults = self.config.faults.clone();
        let mut delivery = Delivery {
            id,
            redelivery: true,
            attempted: false,
            status_code: 0,
            status: "pending".to_owned(),
            delivered_at: Utc::now(),
            duration: 0.0,
            ..original
        };
        if self.chance(faults.webhook_drop) {
            self.counters.webhooks_dropped += 1;
            delivery.attempted = true;
            delivery.status_code = 504;
            delivery.status = "timed out".to_owned();
            self.deliveries.insert(id, delivery);
            return None;
        }
        let outgoing = Outgoing {
            delivery_id: id,
            guid: delivery.guid.clone(),
            body: delivery.body.clone(),
            delay: faults.webhook_delay,
            duplicate: false,
        };
        self.deliveries.insert(id, delivery);
        Some(outgoing)
    }
}

pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) fn spawn_send(shared: Arc<Shared>, outgoing: Outgoing) {
    tokio::spawn(async move {
        if !outgoing.delay.is_zero() {
            tokio::time::sleep(outgoing.delay).await;
        }
        let copies = if outgoing.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            send_once(&shared, &outgoing).await;
        }
    });
}

async fn send_once(shared: &Arc<Shared>, outgoing: &Outgoing) {
    if shared.is_stopped() {
        return;
    }
    let (url, secret) = {
        let state = shared.lock();
        (state.config.webhook_url.clone(), state.config.webhook_secret.clone())
    };
    let Some(url) = url else { return };
    let started = std::time::Instant::now();
    let result = shared
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/simulator")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", &outgoing.guid)
        .header("x-github-hook-id", HOOK_ID.to_string())
        .header("x-github-hook-installation-target-type", "integration")
        .header("x-github-hook-installation-target-id", "1")
        .header("x-hub-signature-256", signature(&secret, &outgoing.body))
        .body(outgoing.body.as_ref().clone())
        .send()
        .await;
    let (code, status) = match result {
        Ok(response) => {
            let code = response.status().as_u16();
            (code, response.status().canonical_reason().unwrap_or("").to_owned())
        }
        Err(error) if error.is_timeout() => (504, "timed out".to_owned()),
        Err(_) => (0, "failed to connect".to_owned()),
    };
    let mut state = shared.lock();
    state.counters.webhooks_sent += 1;
    if let Some(delivery) = state.deliveries.get_mut(&outgoing.delivery_id) {
        delivery.attempted = true;
        delivery.status_code = code;
        delivery.status = status;
        delivery.delivered_at = Utc::now();
        delivery.duration = started.elapsed().as_secs_f64();
    }
}
