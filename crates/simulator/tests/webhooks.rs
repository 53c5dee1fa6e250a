//! The simulator's webhooks and runner bookkeeping, seen from outside over
//! real HTTP: payloads shaped like the fixtures and signed, each webhook
//! fault, runners that never connect or die mid-job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hangar_simulator::{
    Faults, JobSpec, SimConfig, SimHandle, SimJobStatus, SimRunnerStatus, Simulator,
};
use hangar_test_harness::wait_for;
use hmac::Mac;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Hook {
    guid: String,
    signed: bool,
    body: Value,
}

type Hooks = Arc<Mutex<Vec<Hook>>>;

async fn receiver() -> (String, Hooks) {
    let hooks: Hooks = Arc::default();
    let sink = hooks.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(
                    SimConfig::DEFAULT_WEBHOOK_SECRET.as_bytes(),
                )
                .unwrap();
                mac.update(&body);
                let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let header =
                    |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let signed = header("x-hub-signature-256") == expected
                    && header("x-github-event") == "workflow_job"
                    && header("user-agent").starts_with("GitHub-Hookshot/")
                    && !header("x-github-hook-id").is_empty();
                let body = serde_json::from_slice(&body).unwrap();
                sink.lock().unwrap().push(Hook { guid: header("x-github-delivery"), signed, body });
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/webhook"), hooks)
}

async fn sim_with_hooks() -> (SimHandle, Hooks) {
    let (url, hooks) = receiver().await;
    let sim = Simulator::start(SimConfig {
        webhook_url: Some(url),
        runner_lost_after: Duration::from_millis(600),
        long_poll: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    (sim, hooks)
}

/// Registers a runner and returns (github id, runner token).
async fn register(sim: &SimHandle, name: &str) -> (i64, String) {
    let body: Value = reqwest::Client::new()
        .post(format!("{}/orgs/octo-org/actions/runners/generate-jitconfig", sim.api_url()))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .json(&json!({ "name": name, "runner_group_id": 1, "labels": ["self-hosted", "linux"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files: Value =
        serde_json::from_slice(&B64.decode(body["encoded_jit_config"].as_str().unwrap()).unwrap())
            .unwrap();
    let credentials: Value =
        serde_json::from_slice(&B64.decode(files[".credentials"].as_str().unwrap()).unwrap())
            .unwrap();
    let runner: Value =
        serde_json::from_slice(&B64.decode(files[".runner"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(runner["AgentName"], name);
    assert_eq!(runner["ServerUrl"], format!("{}/", sim.api_url()));
    (
        body["runner"]["id"].as_i64().unwrap(),
        credentials["Data"]["token"].as_str().unwrap().to_owned(),
    )
}

async fn runner_call(sim: &SimHandle, token: &str, path: &str) -> reqwest::Response {
    let url = format!("{}/_runner/{path}", sim.api_url());
    let http = reqwest::Client::new();
    let request = if path.starts_with("message") { http.get(url) } else { http.post(url) };
    request.bearer_auth(token).json(&json!({ "conclusion": "success" })).send().await.unwrap()
}

#[tokio::test]
async fn a_job_sends_signed_queued_in_progress_completed_shaped_like_the_fixtures() {
    let (sim, hooks) = sim_with_hooks().await;
    let (_, token) = register(&sim, "hangar-x-0000000000000001").await;
    let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted"]));
    assert_eq!(runner_call(&sim, &token, "connect").await.status(), 200);
    let message: Value =
        runner_call(&sim, &token, "message?wait_ms=2000").await.json().await.unwrap();
    assert_eq!(message["job_id"], job);
    assert_eq!(runner_call(&sim, &token, &format!("jobs/{job}/complete")).await.status(), 200);
    let hooks = wait_for("three webhooks", Duration::from_secs(10), || async {
        let hooks = hooks.lock().unwrap().clone();
        (hooks.len() == 3).then_some(hooks)
    })
    .await;
    let mut actions: Vec<&str> = hooks.iter().map(|h| h.body["action"].as_str().unwrap()).collect();
    actions.sort_unstable();
    assert_eq!(actions, ["completed", "in_progress", "queued"]);
    assert!(hooks.iter().all(|h| h.signed));
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/github/webhooks/workflow_job/in_progress.payload.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    for hook in &hooks {
        assert_eq!(keys(&hook.body["workflow_job"]), keys(&fixture["workflow_job"]));
        for key in ["repository", "sender", "installation"] {
            assert!(hook.body.get(key).is_some(), "{key}");
        }
        assert_eq!(hook.body["workflow_job"]["id"], job);
    }
    let in_progress = hooks.iter().find(|h| h.body["action"] == "in_progress").unwrap();
    assert_eq!(in_progress.body["workflow_job"]["runner_name"], "hangar-x-0000000000000001");
    let guids: std::collections::BTreeSet<_> = hooks.iter().map(|h| h.guid.clone()).collect();
    assert_eq!(guids.len(), 3);
    assert_eq!(sim.counters().registrations_alive, 0);
}

#[tokio::test]
async fn webhook_faults_drop_vanish_and_duplicate() {
    let (sim, hooks) = sim_with_hooks().await;
    sim.faults_set(Faults { webhook_vanish: 1.0, ..Faults::default() });
    sim.job_queue(JobSpec::new("octo-org/app", ["a"]));
    assert!(sim.deliveries().is_empty(), "vanished: not even logged");
    sim.faults_set(Faults { webhook_drop: 1.0, ..Faults::default() });
    let dropped = sim.job_queue(JobSpec::new("octo-org/app", ["b"]));
    let logged = sim.deliveries();
    assert_eq!(logged.len(), 1);
    assert_eq!((logged[0].job_id, logged[0].status_code), (dropped, 504));
    sim.faults_set(Faults { webhook_duplicate: 1.0, ..Faults::default() });
    let twice = sim.job_queue(JobSpec::new("octo-org/app", ["c"]));
    let got = wait_for("both copies", Duration::from_secs(10), || async {
        let hooks = hooks.lock().unwrap().clone();
        (hooks.len() == 2).then_some(hooks)
    })
    .await;
    assert_eq!(got[0].guid, got[1].guid);
    assert_eq!(got[0].body["workflow_job"]["id"], twice);
    let counters = sim.counters();
    assert_eq!(
        (counters.webhooks_vanished, counters.webhooks_dropped, counters.webhooks_duplicated),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn reordered_webhooks_arrive_after_later_ones() {
    let (sim, hooks) = sim_with_hooks().await;
    sim.faults_set(Faults {
        webhook_reorder: 1.0,
        webhook_reorder_delay: Duration::from_millis(1500),
        ..Faults::default()
    });
    let first = sim.job_queue(JobSpec::new("octo-org/app", ["a"]));
    sim.faults_set(Faults::default());
    let second = sim.job_queue(JobSpec::new("octo-org/app", ["a"]));
    let got = wait_for("both", Duration::from_secs(10), || async {
        let hooks = hooks.lock().unwrap().clone();
        (hooks.len() == 2).then_some(hooks)
    })
    .await;
    assert_eq!(got[0].body["workflow_job"]["id"], second);
    assert_eq!(got[1].body["workflow_job"]["id"], first);
}

#[tokio::test]
async fn unconnected_runners_linger_offline_and_dead_runners_fail_their_job() {
    let (sim, _hooks) = sim_with_hooks().await;
    let (_, _never) = register(&sim, "hangar-x-0000000000000002").await;
    let (_, token) = register(&sim, "hangar-x-0000000000000003").await;
    assert_eq!(runner_call(&sim, &token, "connect").await.status(), 200);
    let job =
        sim.job_queue(JobSpec::new("octo-org/app", ["linux"]).duration(Duration::from_secs(60)));
    let message: Value =
        runner_call(&sim, &token, "message?wait_ms=2000").await.json().await.unwrap();
    assert_eq!(message["job_id"], job);
    // The runner process "dies": no renewals.
    wait_for("the job to fail", Duration::from_secs(10), || async {
        (sim.job(job)?.status == SimJobStatus::Completed).then_some(())
    })
    .await;
    assert_eq!(sim.job(job).unwrap().conclusion.as_deref(), Some("failure"));
    let runners = sim.runners();
    assert_eq!(runners.len(), 2, "registrations stay until deleted");
    assert!(runners.iter().all(|r| r.status == SimRunnerStatus::Offline));
    assert!(!runners[0].ever_connected);
}

#[tokio::test]
async fn rate_limit_headers_and_the_control_api() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    let queued: Value = http
        .post(format!("{}/_sim/jobs", sim.api_url()))
        .json(&json!({ "repo": "octo-org/app", "labels": ["self-hosted"], "duration_ms": 10 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = http
        .get(format!("{}/repos/octo-org/app/actions/jobs/{}", sim.api_url(), queued["id"]))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for header in
        ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-used"]
    {
        assert!(response.headers().contains_key(header), "{header}");
    }
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    let token: Value = http
        .post(format!("{}/orgs/octo-org/actions/runners/registration-token", sim.api_url()))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(token["token"].is_string() && token["expires_at"].is_string());
    let unauthorized =
        http.get(format!("{}/orgs/octo-org/actions/runners", sim.api_url())).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let counters: Value = http
        .get(format!("{}/_sim/counters", sim.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["jobs_queued"], 1);
    assert_eq!(counters["api_calls"]["GET /repos/{owner}/{repo}/actions/jobs/{job_id}"], 1);
}

#[tokio::test]
async fn never_connected_registrations_expire_when_asked_to() {
    let sim = Simulator::start(SimConfig {
        unconnected_registration_ttl: Some(Duration::from_millis(300)),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (id, token) = register(&sim, "hangar-x-0000000000000004").await;
    let (_, _) = register(&sim, "hangar-x-0000000000000005").await;
    assert_eq!(runner_call(&sim, &token, "connect").await.status(), 200);
    wait_for("the unconnected one to expire", Duration::from_secs(10), || async {
        (sim.counters().registrations_expired == 1).then_some(())
    })
    .await;
    let left = sim.runners();
    assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id], "the connected one stays");
}

/// An idle runner's long-poll waits, it does not spin: every wake-up used
/// to notify all polls, its own included, so one idle runner kept a core
/// busy until its poll expired. Process CPU time over a 2 s poll with
/// nothing to hand out stays far below what a spin takes.
#[tokio::test]
async fn an_idle_long_poll_waits_without_spinning() {
    fn cpu_seconds() -> f64 {
        // Fields 14 and 15 of /proc/self/stat: user and system time in ticks.
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let (_, rest) = stat.rsplit_once(')').expect("stat has a comm field");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
    let sim = Simulator::start(SimConfig {
        long_poll: Duration::from_secs(2),
        runner_lost_after: Duration::from_secs(10),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (_, token) = register(&sim, "hangar-x-0000000000000004").await;
    assert_eq!(runner_call(&sim, &token, "connect").await.status(), 200);
    let before = cpu_seconds();
    let poll = runner_call(&sim, &token, "message?wait_ms=2000").await;
    assert_eq!(poll.status(), 204, "no job to hand out");
    let used = cpu_seconds() - before;
    assert!(used < 0.5, "a 2 s idle long-poll used {used:.2} s of CPU");
}
