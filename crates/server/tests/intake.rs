//! Webhook intake end to end: real payloads, signed, over real HTTP, into a
//! real store (SQLite; PostgreSQL too when `TEST_POSTGRES_URL` is set).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hangar_github::WebhookSecret;
use hangar_server::{Bound, Limits, ServerState};
use hangar_store::{JobFilter, Store};
use hangar_types::{JobId, JobState};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const SECRET: &str = "It's a Secret to Everybody";

struct TestServer {
    /// The public listener.
    base: String,
    /// The admin listener.
    admin: String,
    store: Store,
    http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = Store::sqlite_url(&dir.path().join("hangar.db"));
        let mut server = TestServer::on(&url, Some(SECRET), None).await;
        server._dir = Some(dir);
        server
    }

    async fn on(url: &str, secret: Option<&str>, token: Option<&str>) -> TestServer {
        let store = Store::open(url).await.expect("open store");
        let state = ServerState::new(store.clone(), secret.map(WebhookSecret::new), token);
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", public.local_addr().expect("addr"));
        let admin_base = format!("http://{}", admin.local_addr().expect("addr"));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            hangar_server::listen::serve_both(
                (Bound::Tcp(public), hangar_server::public_router(state.clone())),
                (Bound::Tcp(admin), hangar_server::admin_router(state)),
                &Limits::default(),
                async {
                    let _ = stop.await;
                },
            )
            .await;
        });
        TestServer {
            base,
            admin: admin_base,
            store,
            http: reqwest::Client::new(),
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: None,
        }
    }

    async fn stop(mut self) -> Option<tempfile::TempDir> {
        let _ = self.shutdown.take().expect("running").send(());
        self.task.take().expect("running").await.expect("server task");
        self.store.close().await;
        self._dir.take()
    }

    async fn deliver(&self, delivery: &Delivery) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/webhook", self.base))
            .header("X-GitHub-Event", &delivery.event)
            .header("X-GitHub-Delivery", &delivery.id)
            .header("User-Agent", "GitHub-Hookshot/044aadd")
            .header("Content-Type", &delivery.content_type)
            .body(delivery.body.clone());
        if let Some(signature) = &delivery.signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn stored(&self) -> (i64, usize) {
        let deliveries = self.store.delivery_count().await.expect("count");
        let jobs = self.store.job_list(&JobFilter { limit: 1000, ..JobFilter::default() }).await;
        (deliveries, jobs.expect("list").jobs.len())
    }
}

#[derive(Clone)]
struct Delivery {
    event: String,
    id: String,
    content_type: String,
    signature: Option<String>,
    body: Vec<u8>,
}

impl Delivery {
    fn signed(event: &str, id: &str, body: Vec<u8>) -> Delivery {
        Delivery {
            event: event.into(),
            id: id.into(),
            content_type: "application/json".into(),
            signature: Some(WebhookSecret::new(SECRET).sign(&body)),
            body,
        }
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/github/webhooks")
}

/// Every fixture file: (event, file name, bytes).
fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let mut all = Vec::new();
    for event in ["workflow_job", "ping"] {
        let mut files: Vec<_> = std::fs::read_dir(fixtures_dir().join(event))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            all.push((event.to_owned(), name, std::fs::read(&path).expect("read")));
        }
    }
    assert_eq!(all.len(), 10, "expected the 7 workflow_job and 3 ping fixtures");
    all
}

fn state_of_action(action: &str) -> JobState {
    action.parse().expect("fixture actions are job states")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_accepted_and_stored() {
    let server = TestServer::start().await;
    every_fixture_is_accepted_and_stored_on(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_accepted_and_stored_on_postgres() {
    let Some(admin) =
        hangar_test_harness::require_env("TEST_POSTGRES_URL", "webhook intake on PostgreSQL")
    else {
        return;
    };
    sqlx::any::install_default_drivers();
    let name = format!("hangar_intake_{:016x}", rand::random::<u64>());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.expect("pg");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let url = format!("{}/{name}", admin.rsplit_once('/').expect("db in url").0);
    let server = TestServer::on(&url, Some(SECRET), None).await;
    every_fixture_is_accepted_and_stored_on(&server).await;
}

async fn every_fixture_is_accepted_and_stored_on(server: &TestServer) {
    let mut expected: Vec<(i64, JobState)> = Vec::new();
    for (n, (event, name, body)) in fixtures().into_iter().enumerate() {
        let json: Value = serde_json::from_slice(&body).expect("fixture is JSON");
        let (status, answer) =
            server.deliver(&Delivery::signed(&event, &format!("fixture-{n}"), body)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        if event == "workflow_job" {
            let id = json["workflow_job"]["id"].as_i64().expect("job id");
            let state = state_of_action(json["action"].as_str().expect("action"));
            match expected.iter_mut().find(|(job, _)| *job == id) {
                Some((_, seen)) => *seen = (*seen).max(state),
                None => expected.push((id, state)),
            }
        } else {
            assert_eq!(answer["status"], "pong", "{name}");
        }
    }
    assert_eq!(server.stored().await.0, 10);
    for (id, state) in expected {
        let job = server.store.job_get(JobId(id)).await.expect("read").expect("job stored");
        assert_eq!(job.state, state, "job {id}");
        let timeline = server.store.job_timeline(JobId(id)).await.expect("timeline");
        assert!(timeline.iter().all(|d| d.payload.starts_with('{')), "raw JSON kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_rejected_and_nothing_is_stored() {
    let server = TestServer::start().await;
    for (n, (event, name, body)) in fixtures().into_iter().enumerate() {
        let good = Delivery::signed(&event, &format!("bad-{n}"), body.clone());

        let mut wrong = good.clone();
        wrong.signature = Some(WebhookSecret::new("not the secret").sign(&body));
        assert_eq!(server.deliver(&wrong).await.0, 401, "{name}: wrong signature");

        let mut unsigned = good.clone();
        unsigned.signature = None;
        assert_eq!(server.deliver(&unsigned).await.0, 401, "{name}: no signature");

        let mut truncated = good.clone();
        truncated.body.truncate(body.len() / 2);
        assert_eq!(server.deliver(&truncated).await.0, 401, "{name}: truncated in transit");
        let resigned = Delivery::signed(&event, &good.id, truncated.body.clone());
        let (status, answer) = server.deliver(&resigned).await;
        assert_eq!(status, 400, "{name}: truncated and signed: {answer}");
        assert!(answer["error"].as_str().expect("message").contains("not valid JSON"), "{answer}");

        let mut text = good.clone();
        text.content_type = "text/plain".into();
        let (status, answer) = server.deliver(&text).await;
        assert_eq!(status, 415, "{name}: wrong content type: {answer}");

        let mut no_id = good.clone();
        no_id.id = String::new();
        assert_eq!(server.deliver(&no_id).await.0, 400, "{name}: no delivery id");
    }
    let stripped =
        br#"{"action":"queued","workflow_job":{"name":"x"},"repository":{"full_name":"a/b"}}"#;
    let (status, answer) =
        server.deliver(&Delivery::signed("workflow_job", "shape", stripped.to_vec())).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().expect("message").contains("missing field `id`"), "{answer}");
    assert_eq!(server.stored().await, (0, 0), "nothing may be stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_encoded_deliveries_are_accepted() {
    let server = TestServer::start().await;
    let json =
        std::fs::read(fixtures_dir().join("workflow_job/waiting.payload.json")).expect("read");
    let body = form_body(&json);
    let mut delivery = Delivery::signed("workflow_job", "form-1", body.into_bytes());
    delivery.content_type = "application/x-www-form-urlencoded".into();
    let (status, answer) = server.deliver(&delivery).await;
    assert_eq!((status, answer["state"].as_str()), (200, Some("waiting")), "{answer}");
    assert_eq!(server.stored().await, (1, 1));
}

fn form_body(json: &[u8]) -> String {
    let mut out = String::from("payload=");
    for &b in json {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A body over `webhook_max_body_bytes` (default 1 MiB; this one declares
/// GitHub's 25 MB and a byte) is refused from its `Content-Length` before it
/// is read. (The client is told at once; it may still be sending,
/// so this speaks raw HTTP to read the answer reliably.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: huge\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
        "0".repeat(64),
        25 * 1024 * 1024 + 1,
    );
    stream.write_all(request.as_bytes()).await.expect("send headers");
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).await.expect("read the answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(server.stored().await, (0, 0));
}

/// The same limit for a body that declares no length (chunked): it is
/// counted while it is read, and refused as soon as it passes the limit. The
/// answer is read while the body is still being sent, as GitHub's sender
/// would see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_bodies_are_refused_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: huge-chunked\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        "0".repeat(64),
    );
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 1024 * 1024];
        // 30 MiB in 1 MiB chunks; the server stops reading after 1 MiB.
        for _ in 0..30 {
            writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut answer = vec![0u8; 1024];
    let n = reader.read(&mut answer).await.expect("read the answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    sender.abort();
    assert_eq!(server.stored().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_and_other_events_change_nothing() {
    let server = TestServer::start().await;
    let body =
        std::fs::read(fixtures_dir().join("workflow_job/queued.payload.json")).expect("read");
    let first = Delivery::signed("workflow_job", "once", body);
    assert_eq!(server.deliver(&first).await.0, 200);
    let (status, answer) = server.deliver(&first).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")));

    let (status, answer) = server.deliver(&Delivery::signed("push", "p", b"{}".to_vec())).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")));
    let requested = br#"{"action":"requested","workflow_job":{}}"#.to_vec();
    let (status, _) = server.deliver(&Delivery::signed("workflow_job", "r", requested)).await;
    assert_eq!(status, 202);
    assert_eq!(server.stored().await, (1, 1));

    let metrics = reqwest::get(format!("{}/metrics", server.admin)).await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("hangar_webhook_deliveries_total"), "{text}");
    assert!(text.contains(r#"outcome="duplicate""#), "{text}");
    assert!(text.contains(r#"hangar_jobs{state="queued"} 1"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_every_delivery_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let url = Store::sqlite_url(&dir.path().join("h.db"));
    let server = TestServer::on(&url, None, None).await;
    let body = std::fs::read(fixtures_dir().join("ping/payload.json")).expect("read");
    let (status, answer) = server.deliver(&Delivery::signed("ping", "p", body)).await;
    assert_eq!(status, 503);
    assert!(answer["error"].as_str().expect("message").contains("HANGAR_WEBHOOK_SECRET"));
    assert_eq!(server.stored().await, (0, 0));
}

/// With a token, the admin routes answer on the public listener too, to
/// that token only; on the admin listener the API asks for it as well
/// (metrics stay open there). Without one, see `tests/listeners.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_public_listener_serves_the_admin_api_to_it_only() {
    let dir = tempfile::tempdir().expect("dir");
    let url = Store::sqlite_url(&dir.path().join("h.db"));
    let token = "a-token-of-sufficient-length";
    let server = TestServer::on(&url, Some(SECRET), Some(token)).await;
    let http = &server.http;
    for base in [&server.base, &server.admin] {
        let jobs = format!("{base}/api/v1/jobs");
        assert_eq!(http.get(&jobs).send().await.expect("get").status(), 401, "{base}");
        let wrong = http.get(&jobs).bearer_auth("nope").send().await.expect("get");
        assert_eq!(wrong.status(), 401, "{base}");
        let right = http.get(&jobs).bearer_auth(token).send().await.expect("get");
        assert_eq!(right.status(), 200, "{base}");
        let health = http.get(format!("{base}/healthz")).send().await.expect("get");
        assert_eq!(health.status(), 200, "{base}");
    }
    let metrics = format!("{}/metrics", server.base);
    assert_eq!(http.get(&metrics).send().await.expect("get").status(), 401);
    let right = http.get(&metrics).bearer_auth(token).send().await.expect("get");
    assert_eq!(right.status(), 200);
    let admin_metrics = http.get(format!("{}/metrics", server.admin)).send().await.expect("get");
    assert_eq!(admin_metrics.status(), 200);
}

/// One job's deliveries, in GitHub's order, built from the real payloads
/// with the job id changed.
fn lifecycle(job: i64) -> Vec<Delivery> {
    let files = [
        "queued.payload.json",
        "in_progress.payload.json",
        "completed.success.with-organization.payload.json",
    ];
    files
        .iter()
        .enumerate()
        .map(|(n, file)| {
            let raw = std::fs::read(fixtures_dir().join("workflow_job").join(file)).expect("read");
            let mut json: Value = serde_json::from_slice(&raw).expect("json");
            json["workflow_job"]["id"] = job.into();
            json["repository"]["full_name"] = "octo-org/converge".into();
            let body = serde_json::to_vec(&json).expect("json");
            Delivery::signed("workflow_job", &format!("job-{job}-{n}"), body)
        })
        .collect()
}

/// For many jobs, random permutations of each job's deliveries, with
/// duplicates and redeliveries, sent concurrently over HTTP, converge to
/// what the complete in-order sequence gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_deliveries_converge_to_the_in_order_state() {
    let jobs: Vec<i64> = (1..=40).map(|n| 9_000_000 + n).collect();
    let reference = TestServer::start().await;
    for &job in &jobs {
        for delivery in lifecycle(job) {
            assert_eq!(reference.deliver(&delivery).await.0, 200);
        }
    }
    for seed in 0..4u64 {
        let server = Arc::new(TestServer::start().await);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut all: Vec<Delivery> = jobs.iter().flat_map(|&job| lifecycle(job)).collect();
        let redeliveries: Vec<Delivery> =
            (0..all.len() / 2).map(|_| all[rng.random_range(0..all.len())].clone()).collect();
        all.extend(redeliveries);
        all.shuffle(&mut rng);
        let mut senders = Vec::new();
        for chunk in all.chunks(all.len().div_ceil(8)) {
            let server = Arc::clone(&server);
            let chunk = chunk.to_vec();
            senders.push(tokio::spawn(async move {
                for delivery in chunk {
                    assert_eq!(server.deliver(&delivery).await.0, 200);
                }
            }));
        }
        for sender in senders {
            sender.await.expect("sender");
        }
        for &job in &jobs {
            let want = reference.store.job_get(JobId(job)).await.expect("read").expect("job");
            let got = server.store.job_get(JobId(job)).await.expect("read").expect("job");
            assert_eq!(got.state, JobState::Completed, "seed {seed} job {job}");
            assert_eq!(got.fields, want.fields, "seed {seed} job {job}");
            assert_eq!(got.reports, want.reports, "seed {seed} job {job}");
        }
        assert_eq!(server.store.delivery_count().await.expect("count"), 120);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_nothing() {
    let server = TestServer::start().await;
    for (n, (event, _, body)) in fixtures().into_iter().enumerate() {
        assert_eq!(server.deliver(&Delivery::signed(&event, &format!("r{n}"), body)).await.0, 200);
    }
    let before = server.stored().await;
    let dir = server.stop().await.expect("temp dir");
    let url = Store::sqlite_url(&dir.path().join("hangar.db"));
    let server = TestServer::on(&url, Some(SECRET), None).await;
    assert_eq!(server.stored().await, before);
    let (event, _, body) = fixtures().remove(0);
    let (_, answer) = server.deliver(&Delivery::signed(&event, "r0", body)).await;
    assert_eq!(answer["status"], "duplicate");
}
