//! The simulator's webhooks pass hangar's own webhook path (signature check
//! and parsing), and a job read back through the REST client says the same
//! as its webhooks: the two ways a job reaches hangar agree.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use hangar_github::{
    Auth, ClientConfig, ContentType, DeliveryHeaders, Event, GitHubApi, JitConfigRequest,
    RestClient, RunnerScope, WebhookSecret,
};
use hangar_simulator::{JobSpec, SimConfig, Simulator};
use hangar_test_harness::wait_for;
use hangar_types::{DeliveryId, JobAction, JobId, Labels, Secret};

type Raw = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

#[tokio::test]
async fn simulator_webhooks_verify_and_parse_and_agree_with_rest() {
    let raw: Raw = Arc::default();
    let sink = raw.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sim = Simulator::start(SimConfig {
        webhook_url: Some(format!("http://{addr}/webhook")),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gh = RestClient::new(ClientConfig::new(
        sim.api_url(),
        Auth::Token(Secret::new(SimConfig::DEFAULT_PAT)),
    ))
    .unwrap();

    let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted", "Linux"]));
    let scope = RunnerScope::Organization("octo-org".into());
    let request = JitConfigRequest {
        name: "hangar-web-0000000000000001".into(),
        runner_group_id: 1,
        labels: Labels::new(["self-hosted", "linux", "x64"]),
        work_folder: None,
    };
    let minted = gh.jit_config_create(&scope, &request).await.unwrap();
    hangar_standin_runner::run(
        minted.encoded.expose(),
        &hangar_standin_runner::RunOptions::default(),
    )
    .await
    .unwrap();
    let raw = wait_for("three webhooks", Duration::from_secs(10), || async {
        let raw = raw.lock().unwrap();
        (raw.len() == 3).then(|| raw.clone())
    })
    .await;

    let secret = WebhookSecret::new(SimConfig::DEFAULT_WEBHOOK_SECRET);
    let rest = gh.job_get("octo-org/app", JobId(job)).await.unwrap().unwrap();
    for (headers, body) in raw {
        let header =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let delivery = DeliveryHeaders {
            event: header("x-github-event").unwrap(),
            delivery_id: DeliveryId(header("x-github-delivery").unwrap()),
            signature: header("x-hub-signature-256"),
            content_type: ContentType::from_header(header("content-type").as_deref()),
        };
        let verified = secret.verify(delivery, body).expect("signed with the webhook secret");
        let json = verified.payload_json().unwrap();
        let Event::WorkflowJob(event) = verified.event(&json, chrono::Utc::now()).unwrap() else {
            panic!("a workflow_job event");
        };
        let fields = &event.job;
        assert_eq!(fields.id, JobId(job));
        assert_eq!(fields.run_id, rest.fields.run_id);
        assert_eq!(fields.repository, rest.fields.repository);
        assert_eq!(fields.labels, rest.fields.labels);
        assert_eq!(fields.job_name, rest.fields.job_name);
        assert_eq!(fields.workflow_name, rest.fields.workflow_name);
        assert_eq!(fields.installation_id.map(|i| i.0), Some(SimConfig::default().installation_id));
        match event.action {
            JobAction::Queued => assert!(fields.runner.is_none()),
            JobAction::InProgress | JobAction::Completed => {
                assert_eq!(fields.runner.as_ref().unwrap().name, minted.name);
                assert_eq!(fields.runner, rest.fields.runner);
            }
            JobAction::Waiting => panic!("no waiting event was sent"),
        }
        if event.action == JobAction::Completed {
            assert_eq!(fields.conclusion, rest.fields.conclusion);
        }
    }
}
