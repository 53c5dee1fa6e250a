//! The REST client against the simulator over real HTTP: call semantics
//! (409/422/404), pagination, rate limits and retries, App auth with a key
//! generated here, and the webhook delivery log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_github::{
    AppCredentials, Auth, CallPriority, ClientConfig, GitHubApi, GitHubError, JitConfigRequest,
    RestClient, RunnerDeletion, RunnerScope, RunnerStatus,
};
use hangar_simulator::{
    Faults, JobSpec, RateLimitConfig, SimApp, SimConfig, SimHandle, SimJobStatus, Simulator,
};
use hangar_test_harness::wait_for;
use hangar_types::{GitHubRunnerId, InstallationId, JobId, JobState, Labels, Secret};

const ORG: &str = "octo-org";

fn org() -> RunnerScope {
    RunnerScope::Organization(ORG.to_owned())
}

fn pat_config(sim: &SimHandle) -> ClientConfig {
    let mut config =
        ClientConfig::new(sim.api_url(), Auth::Token(Secret::new(SimConfig::DEFAULT_PAT)));
    config.retry_base = Duration::from_millis(10);
    config.secondary_backoff = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(5);
    config.repositories = vec!["octo-org/app".to_owned()];
    config
}

fn client(sim: &SimHandle) -> RestClient {
    RestClient::new(pat_config(sim)).unwrap()
}

fn jit(name: &str) -> JitConfigRequest {
    JitConfigRequest {
        name: name.to_owned(),
        runner_group_id: 1,
        labels: Labels::new(["self-hosted", "linux", "x64"]),
        work_folder: None,
    }
}

#[tokio::test]
async fn jit_runners_are_created_found_and_deleted_with_github_semantics() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    for scope in [org(), RunnerScope::parse("octo-org/app").unwrap()] {
        let created =
            gh.jit_config_create(&scope, &jit("hangar-pool-0000000000000001")).await.unwrap();
        assert_eq!(created.name, "hangar-pool-0000000000000001");
        let decoded = hangar_standin_runner::decode(created.encoded.expose()).unwrap();
        assert_eq!(decoded.settings.agent_name, created.name);
        assert!(decoded.settings.server_url.starts_with(&sim.api_url()));

        let again = gh.jit_config_create(&scope, &jit("hangar-pool-0000000000000001")).await;
        assert!(matches!(again, Err(GitHubError::Conflict { .. })), "{again:?}");
        let found = gh.runner_find_by_name(&scope, &created.name).await.unwrap().unwrap();
        assert_eq!(found.id, created.github_runner_id);
        assert_eq!(found.status, RunnerStatus::Offline, "never connected");
        assert!(found.labels.contains("SELF-HOSTED"));
        assert!(gh.runner_find_by_name(&scope, "hangar-nope").await.unwrap().is_none());

        let got = gh.runner_get(&scope, created.github_runner_id).await.unwrap().unwrap();
        assert!(!got.busy);
        assert_eq!(
            gh.runner_delete(&scope, created.github_runner_id).await.unwrap(),
            RunnerDeletion::Deleted
        );
        assert_eq!(gh.runner_get(&scope, created.github_runner_id).await.unwrap(), None);
        assert_eq!(
            gh.runner_delete(&scope, created.github_runner_id).await.unwrap(),
            RunnerDeletion::Gone
        );
    }
    let missing_group =
        JitConfigRequest { runner_group_id: 7, ..jit("hangar-pool-0000000000000002") };
    let error = gh.jit_config_create(&org(), &missing_group).await.unwrap_err();
    assert_eq!(error.status(), Some(404));
    assert_eq!(sim.counters().registrations_alive, 0);
}

#[tokio::test]
async fn a_busy_runner_is_not_deleted_and_jobs_are_read_back() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    let job = sim.job_queue(
        JobSpec::new("octo-org/app", ["self-hosted", "Linux"]).duration(Duration::from_secs(3)),
    );
    let queued = gh.job_get("octo-org/app", JobId(job)).await.unwrap().unwrap();
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.fields.labels, Labels::new(["self-hosted", "linux"]));
    assert!(queued.fields.runner.is_none());
    assert_eq!(gh.job_get("octo-org/app", JobId(1)).await.unwrap(), None);

    let created = gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000aa")).await.unwrap();
    let options = hangar_standin_runner::RunOptions {
        poll_wait: Duration::from_millis(200),
        ..Default::default()
    };
    let encoded = created.encoded.expose().to_owned();
    let runner = tokio::spawn(async move { hangar_standin_runner::run(&encoded, &options).await });
    let running = wait_for("the job to be picked up", Duration::from_secs(10), || async {
        gh.job_get("octo-org/app", JobId(job))
            .await
            .unwrap()
            .filter(|j| j.state == JobState::InProgress)
    })
    .await;
    assert_eq!(running.fields.runner.unwrap().name, created.name);
    let runner_now = gh.runner_get(&org(), created.github_runner_id).await.unwrap().unwrap();
    assert!(runner_now.busy);
    assert_eq!(runner_now.status, RunnerStatus::Online);
    assert_eq!(
        gh.runner_delete(&org(), created.github_runner_id).await.unwrap(),
        RunnerDeletion::Busy
    );
    runner.await.unwrap().unwrap();
    let done = gh.job_get("octo-org/app", JobId(job)).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(sim.counters().delete_refused_busy, 1);
    assert_eq!(sim.counters().registrations_alive, 0);
}

#[tokio::test]
async fn lists_follow_every_page() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    for i in 0..230 {
        gh.jit_config_create(&org(), &jit(&format!("hangar-pool-{i:016x}"))).await.unwrap();
    }
    let runners = gh.runner_list(&org()).await.unwrap();
    assert_eq!(runners.len(), 230);
    let calls = sim.counters().api_calls["GET /orgs/{org}/actions/runners"];
    assert_eq!(calls, 3, "100 per page");

    // 120 queued jobs in one run, one more run with a running and a queued job.
    let first = sim.job_queue(JobSpec::new("octo-org/app", ["gpu"]));
    let run = sim.job(first).unwrap().run_id;
    for _ in 1..120 {
        sim.job_queue(JobSpec { run_id: Some(run), ..JobSpec::new("octo-org/app", ["gpu"]) });
    }
    sim.job_queue(JobSpec::new("octo-org/app", ["arm64"]));
    sim.job_queue(JobSpec::new("octo-org/lib", ["gpu"]));
    let jobs = gh.queued_job_list("octo-org/app").await.unwrap();
    assert_eq!(jobs.len(), 121);
    assert!(
        jobs.iter().all(|j| j.state == JobState::Queued && j.fields.repository == "octo-org/app")
    );
    let groups = gh.runner_group_list(ORG).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert!(groups[0].default);
    assert_eq!(gh.installation_repository_list().await.unwrap(), vec!["octo-org/app".to_owned()]);
}

#[tokio::test]
async fn queued_jobs_inside_running_runs_are_found() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    let busy = sim
        .job_queue(JobSpec::new("octo-org/app", ["self-hosted"]).duration(Duration::from_secs(30)));
    let run = sim.job(busy).unwrap().run_id;
    let waiting = sim.job_queue(JobSpec {
        run_id: Some(run),
        ..JobSpec::new("octo-org/app", ["self-hosted", "gpu"])
    });
    let created = gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000bb")).await.unwrap();
    let encoded = created.encoded.expose().to_owned();
    let runner = tokio::spawn(async move {
        hangar_standin_runner::run(&encoded, &hangar_standin_runner::RunOptions::default()).await
    });
    wait_for("the first job to run", Duration::from_secs(10), || async {
        (sim.job(busy)?.status == SimJobStatus::InProgress).then_some(())
    })
    .await;
    let jobs = gh.queued_job_list("octo-org/app").await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.fields.id).collect::<Vec<_>>(), vec![JobId(waiting)]);
    runner.abort();
}

#[tokio::test]
async fn retry_after_is_honoured_and_5xx_reads_are_retried() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    sim.faults_set(Faults { api_rate_limit: 1.0, api_retry_after_secs: 1, ..Faults::default() });
    let started = tokio::time::Instant::now();
    let call = tokio::spawn({
        let gh = client(&sim);
        async move { gh.runner_list(&org()).await }
    });
    wait_for("the first 429", Duration::from_secs(5), || async {
        (sim.counters().api_calls_total >= 1).then_some(())
    })
    .await;
    sim.faults_set(Faults::default());
    assert!(call.await.unwrap().unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1), "waited for retry-after");
    assert_eq!(sim.counters().api_calls_total, 2);

    // GitHub also answers secondary limits with 403.
    sim.faults_set(Faults {
        api_rate_limit: 1.0,
        api_retry_after_secs: 1,
        api_rate_limit_forbidden: true,
        ..Faults::default()
    });
    let call = tokio::spawn({
        let gh = client(&sim);
        async move { gh.runner_list(&org()).await }
    });
    wait_for("the 403", Duration::from_secs(5), || async {
        (sim.counters().api_calls_total >= 3).then_some(())
    })
    .await;
    sim.faults_set(Faults::default());
    call.await.unwrap().unwrap();

    // Reads are retried through 30 % failures (seeded, so reproducible).
    sim.faults_set(Faults { api_fail: 0.3, ..Faults::default() });
    let mut config = pat_config(&sim);
    config.max_retries = 8;
    let patient = RestClient::new(config).unwrap();
    for _ in 0..20 {
        patient.runner_list(&org()).await.unwrap();
    }
    // A JIT mint is never retried on a 5xx: it may have registered the runner.
    sim.faults_set(Faults {
        api_fail: 1.0,
        api_endpoints: vec!["POST /orgs/{org}/actions/runners/generate-jitconfig".to_owned()],
        ..Faults::default()
    });
    let before = sim.counters().api_calls_total;
    let error =
        gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000cc")).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(sim.counters().api_calls_total, before + 1);
}

#[tokio::test]
async fn a_lost_jit_response_is_resolved_by_name() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    sim.faults_set(Faults { api_lost_response: 1.0, ..Faults::default() });
    let error =
        gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000dd")).await.unwrap_err();
    assert_eq!(error.status(), Some(502));
    sim.faults_set(Faults::default());
    let again =
        gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000dd")).await.unwrap_err();
    assert!(matches!(again, GitHubError::Conflict { .. }));
    let existing =
        gh.runner_find_by_name(&org(), "hangar-pool-00000000000000dd").await.unwrap().unwrap();
    assert_eq!(gh.runner_delete(&org(), existing.id).await.unwrap(), RunnerDeletion::Deleted);
}

#[tokio::test]
async fn timeouts_surface_as_transport_errors() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let mut config = pat_config(&sim);
    config.request_timeout = Duration::from_millis(300);
    config.max_retries = 1;
    let gh = RestClient::new(config).unwrap();
    sim.faults_set(Faults {
        api_timeout: 1.0,
        api_timeout_hang: Duration::from_secs(3),
        ..Faults::default()
    });
    let started = tokio::time::Instant::now();
    let error = gh.runner_get(&org(), GitHubRunnerId(1)).await.unwrap_err();
    assert!(matches!(error, GitHubError::Transport { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(sim.counters().api_calls_total, 2, "one retry");
}

#[tokio::test]
async fn the_primary_budget_is_tracked_waited_out_and_reserved_for_essential_calls() {
    let sim = Simulator::start(SimConfig {
        rate_limit: Some(RateLimitConfig { limit: 10, window: Duration::from_secs(4) }),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut config = pat_config(&sim);
    config.poll_reserve_fraction = 0.5;
    config.max_rate_limit_wait = Duration::from_secs(10);
    let gh = RestClient::new(config).unwrap();
    for _ in 0..5 {
        gh.runner_get(&org(), GitHubRunnerId(1)).await.unwrap();
    }
    let budget = gh.rate_budget();
    assert_eq!((budget.limit, budget.remaining, budget.reserve), (Some(10), Some(5), 5));
    let refused = gh.runner_list(&org()).await.unwrap_err();
    assert!(matches!(refused, GitHubError::BudgetReserved { .. }), "{refused}");
    assert_eq!(sim.counters().api_calls_total, 5, "a refused poll costs nothing");
    // Essential calls spend the reserve, then wait for the window to reset.
    for _ in 0..5 {
        gh.runner_get(&org(), GitHubRunnerId(1)).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    gh.runner_get(&org(), GitHubRunnerId(1)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200), "waited for x-ratelimit-reset");
    assert!(gh.rate_budget().remaining.unwrap() >= 8);

    // A client that will not wait that long says until when.
    let mut config = pat_config(&sim);
    config.max_rate_limit_wait = Duration::ZERO;
    config.poll_reserve_fraction = 0.0;
    let impatient = RestClient::new(config).unwrap();
    let error = loop {
        match impatient.runner_get(&org(), GitHubRunnerId(1)).await {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, GitHubError::RateLimited { .. }), "{error}");
    let _ = CallPriority::Poll;
}

#[tokio::test]
async fn unchanged_pages_are_asked_conditionally_and_cost_no_budget() {
    let sim = Simulator::start(SimConfig {
        rate_limit: Some(RateLimitConfig { limit: 100, window: Duration::from_secs(3600) }),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gh = client(&sim);
    gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000f1")).await.unwrap();
    assert_eq!(gh.runner_list(&org()).await.unwrap().len(), 1);
    let remaining = gh.rate_budget().remaining.unwrap();
    for _ in 0..3 {
        assert_eq!(gh.runner_list(&org()).await.unwrap().len(), 1);
    }
    assert_eq!(sim.counters().api_calls_not_modified, 3);
    assert_eq!(gh.rate_budget().remaining.unwrap(), remaining, "304s are free");
    gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000f2")).await.unwrap();
    assert_eq!(gh.runner_list(&org()).await.unwrap().len(), 2, "a changed page is fetched again");
    assert_eq!(sim.counters().api_calls_not_modified, 3);
}

#[tokio::test]
async fn the_ghes_base_url_works() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let mut config = pat_config(&sim);
    config.api_url = format!("{}/api/v3/", sim.api_url());
    let gh = RestClient::new(config).unwrap();
    gh.jit_config_create(&org(), &jit("hangar-pool-00000000000000ee")).await.unwrap();
    assert_eq!(gh.runner_list(&org()).await.unwrap().len(), 1);
}

/// Webhooks received by a test endpoint: (delivery guid, signature ok).
type Received = Arc<Mutex<Vec<(String, bool)>>>;

async fn receiver(secret: &'static str) -> (String, Received) {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use hmac::Mac;
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(&body);
                let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let header =
                    |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let ok = header("x-hub-signature-256") == expected
                    && header("x-github-event") == "workflow_job";
                sink.lock().unwrap().push((header("x-github-delivery"), ok));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/webhook"), received)
}

#[tokio::test]
async fn app_auth_refreshes_its_token_and_redelivers_failed_webhooks() {
    let key = hangar_simulator::app_key_generate();
    let (url, received) = receiver(SimConfig::DEFAULT_WEBHOOK_SECRET).await;
    let sim = Simulator::start(SimConfig {
        app: Some(SimApp { app_id: "31337".to_owned(), public_key_pem: key.public_pem.clone() }),
        pat: None,
        installation_token_ttl: Duration::from_secs(3),
        webhook_url: Some(url),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let app = AppCredentials {
        app_id: "31337".to_owned(),
        installation_id: InstallationId(SimConfig::default().installation_id),
        private_key_pem: Secret::new(key.private_pem.clone()),
    };
    let mut config = ClientConfig::new(sim.api_url(), Auth::App(app.clone()));
    config.token_refresh_margin = Duration::from_secs(2);
    let gh = RestClient::new(config).unwrap();
    gh.runner_list(&org()).await.unwrap();
    gh.runner_list(&org()).await.unwrap();
    assert_eq!(sim.counters().installation_tokens_issued, 1, "the token is cached");
    assert_eq!(
        gh.installation_repository_list().await.unwrap(),
        vec!["octo-org/app".to_owned(), "octo-org/lib".to_owned()]
    );
    wait_for("a refresh before expiry", Duration::from_secs(10), || async {
        gh.runner_list(&org()).await.unwrap();
        (sim.counters().installation_tokens_issued == 2).then_some(())
    })
    .await;

    // Deliveries that failed show up in the log and can be redelivered with
    // the same X-GitHub-Delivery.
    sim.faults_set(Faults { webhook_drop: 1.0, ..Faults::default() });
    let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted"]));
    sim.faults_set(Faults::default());
    let deliveries = gh.hook_delivery_list(None).await.unwrap();
    let failed: Vec<_> = deliveries.iter().filter(|d| !d.succeeded()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].action.as_deref(), Some("queued"));
    assert!(received.lock().unwrap().is_empty());
    gh.hook_delivery_redeliver(failed[0].id).await.unwrap();
    wait_for("the redelivery", Duration::from_secs(10), || async {
        received.lock().unwrap().first().cloned()
    })
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got, vec![(failed[0].guid.0.clone(), true)]);
    let after = gh.hook_delivery_list(Some(failed[0].delivered_at)).await.unwrap();
    assert!(after.iter().any(|d| d.redelivery && d.succeeded()));
    assert_eq!(sim.job(job).unwrap().status, SimJobStatus::Queued);

    // A JWT signed with another key is refused.
    let other = hangar_simulator::app_key_generate();
    let forged = AppCredentials { private_key_pem: Secret::new(other.private_pem), ..app };
    let forged = RestClient::new(ClientConfig::new(sim.api_url(), Auth::App(forged))).unwrap();
    let error = forged.runner_list(&org()).await.unwrap_err();
    assert!(matches!(error, GitHubError::Unauthorized { .. }), "{error}");
}

#[tokio::test]
async fn delivery_calls_need_an_app() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = client(&sim);
    assert!(matches!(gh.hook_delivery_list(None).await, Err(GitHubError::AppAuthRequired { .. })));
    assert!(matches!(
        gh.hook_delivery_redeliver(1).await,
        Err(GitHubError::AppAuthRequired { .. })
    ));
}

#[tokio::test]
async fn two_hundred_runners_take_two_hundred_jobs_and_leave_nothing() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gh = Arc::new(client(&sim));
    let started = tokio::time::Instant::now();
    let mut runners = Vec::new();
    for i in 0..200u64 {
        let labels: &[&str] =
            if i % 2 == 0 { &["self-hosted", "linux"] } else { &["self-hosted", "arm64"] };
        sim.job_queue(
            JobSpec::new("octo-org/app", labels.iter().copied())
                .duration(Duration::from_millis(50)),
        );
        let request = JitConfigRequest {
            name: format!("hangar-burst-{i:016x}"),
            runner_group_id: 1,
            labels: Labels::new(labels.iter().copied()),
            work_folder: None,
        };
        let gh = gh.clone();
        runners.push(tokio::spawn(async move {
            let minted = gh.jit_config_create(&org(), &request).await.unwrap();
            let options = hangar_standin_runner::RunOptions {
                poll_wait: Duration::from_millis(500),
                ..Default::default()
            };
            hangar_standin_runner::run(minted.encoded.expose(), &options).await.unwrap()
        }));
    }
    for runner in runners {
        let outcome = tokio::time::timeout(Duration::from_secs(60), runner).await.unwrap().unwrap();
        assert!(matches!(outcome, hangar_standin_runner::Outcome::Completed { .. }), "{outcome:?}");
    }
    let counters = sim.counters();
    assert_eq!(counters.jobs_completed, 200);
    assert_eq!(counters.registrations_alive, 0);
    assert_eq!(counters.api_calls["POST /orgs/{org}/actions/runners/generate-jitconfig"], 200);
    eprintln!("200 jobs through 200 JIT runners in {:?}", started.elapsed());
}

/// A hostile (or broken) API that answers every runner list with an empty
/// page whose `Link: rel="next"` is `next(own_origin)`; returns its URL
/// and how many pages it served.
async fn linking_api(next: fn(&str) -> String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let link = format!("<{}>; rel=\"next\"", next(&origin));
    let counter = served.clone();
    let app = axum::Router::new().fallback(move || {
        let link = link.clone();
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            ([("link", link)], axum::Json(serde_json::json!({"total_count": 0, "runners": []})))
                .into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (origin, served)
}

#[tokio::test]
async fn next_page_links_to_another_origin_are_refused() {
    // `http://127.0.0.1:PORT@127.0.0.2:PORT` starts with the API's origin
    // but is another host (the part before `@` is a user name): a
    // string-prefix check would send the token there.
    let (api, served) = linking_api(|origin| {
        let port = origin.rsplit(':').next().unwrap();
        format!("{origin}@127.0.0.2:{port}/orgs/octo-org/actions/runners")
    })
    .await;
    let gh = RestClient::new(ClientConfig::new(api, Auth::Token(Secret::new("t")))).unwrap();
    let err = gh.runner_list(&org()).await.unwrap_err();
    assert!(matches!(err, GitHubError::Pagination { .. }), "{err:?}");
    assert!(err.to_string().contains("another origin"), "{err}");
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_page_that_links_to_itself_stops_at_the_page_cap() {
    let (api, served) =
        linking_api(|origin| format!("{origin}/orgs/octo-org/actions/runners")).await;
    let gh = RestClient::new(ClientConfig::new(api, Auth::Token(Secret::new("t")))).unwrap();
    let err = gh.runner_list(&org()).await.unwrap_err();
    assert!(matches!(err, GitHubError::Pagination { .. }), "{err:?}");
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), hangar_github::MAX_PAGES);
}
