//! Every REST answer of the simulator is checked against the response
//! schema of the same operation in `shared/fixtures/github/rest-subset.json`
//! (GitHub's own OpenAPI description): required keys, types, enums,
//! nullability, recursively. That is what "speaks the same REST shapes"
//! means, and it keeps the simulator honest when it grows.

use std::time::Duration;

use hangar_simulator::{JobSpec, SimApp, SimConfig, Simulator};
use serde_json::{Value, json};

fn spec() -> Value {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/github/rest-subset.json");
    serde_json::from_str(
        &std::fs::read_to_string(path).expect("the shared fixtures are next to the repo"),
    )
    .unwrap()
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let mut node = spec;
            for part in reference.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(spec, node)
        }
        None => schema,
    }
}

/// Appends to `errors` every way `value` does not fit `schema`.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(spec, part, value, at, errors);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let fits = options.iter().any(|option| {
                let mut sub = Vec::new();
                check(spec, option, value, at, &mut sub);
                sub.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: fits none of {key}"));
            }
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if value.is_null() {
        let nullable =
            schema.get("nullable") == Some(&Value::Bool(true)) || types.contains(&"null");
        if !nullable && !types.is_empty() {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    let fits_type = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => false,
        });
    if !fits_type {
        errors.push(format!("{at}: expected {types:?}, got {value}"));
        return;
    }
    if let (Some(allowed), Some(s)) = (schema.get("enum").and_then(Value::as_array), value.as_str())
        && !allowed.iter().any(|a| a.as_str() == Some(s))
    {
        errors.push(format!("{at}: {s:?} not in {allowed:?}"));
    }
    if let Some(object) = value.as_object() {
        for key in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let key = key.as_str().unwrap();
            if !object.contains_key(key) {
                errors.push(format!("{at}: missing required `{key}`"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, sub) in object {
                if let Some(property) = properties.get(key) {
                    check(spec, property, sub, &format!("{at}.{key}"), errors);
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

fn response_schema<'a>(spec: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response = resolve(spec, &spec["paths"][path][method]["responses"][status.to_string()]);
    let schema = &response["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "no schema for {method} {path} {status}");
    schema
}

/// (method, OpenAPI path, concrete path, body, token, expected status)
type Case<'a> = (&'a str, &'a str, String, Option<Value>, &'a str, u16);

#[tokio::test]
async fn every_answer_fits_githubs_schema() {
    let key = hangar_simulator::app_key_generate();
    let sim = Simulator::start(SimConfig {
        app: Some(SimApp { app_id: "77".to_owned(), public_key_pem: key.public_pem.clone() }),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let api = sim.api_url();
    let http = reqwest::Client::new();
    let job = sim
        .job_queue(JobSpec::new("octo-org/app", ["self-hosted"]).duration(Duration::from_secs(1)));
    let run = sim.job(job).unwrap().run_id;

    let now = chrono::Utc::now().timestamp();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({ "iat": now - 60, "exp": now + 500, "iss": 77 }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let pat = SimConfig::DEFAULT_PAT.to_owned();
    let jit = json!({ "name": "hangar-shape-0000000000000001", "runner_group_id": 1, "labels": ["self-hosted"] });

    let cases: Vec<Case<'_>> = vec![
        (
            "post",
            "/orgs/{org}/actions/runners/generate-jitconfig",
            "/orgs/octo-org/actions/runners/generate-jitconfig".into(),
            Some(jit.clone()),
            &pat,
            201,
        ),
        (
            "post",
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            "/repos/octo-org/app/actions/runners/generate-jitconfig".into(),
            Some(jit),
            &pat,
            201,
        ),
        (
            "post",
            "/orgs/{org}/actions/runners/registration-token",
            "/orgs/octo-org/actions/runners/registration-token".into(),
            None,
            &pat,
            201,
        ),
        (
            "post",
            "/repos/{owner}/{repo}/actions/runners/remove-token",
            "/repos/octo-org/app/actions/runners/remove-token".into(),
            None,
            &pat,
            201,
        ),
        (
            "get",
            "/orgs/{org}/actions/runners",
            "/orgs/octo-org/actions/runners".into(),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/repos/{owner}/{repo}/actions/runners",
            "/repos/octo-org/app/actions/runners".into(),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/orgs/{org}/actions/runners/{runner_id}",
            "/orgs/octo-org/actions/runners/1".into(),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/repos/{owner}/{repo}/actions/runners/{runner_id}",
            "/repos/octo-org/app/actions/runners/2".into(),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/orgs/{org}/actions/runner-groups",
            "/orgs/octo-org/actions/runner-groups".into(),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/repos/{owner}/{repo}/actions/runs",
            "/repos/octo-org/app/actions/runs".into(),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            format!("/repos/octo-org/app/actions/runs/{run}/jobs"),
            None,
            &pat,
            200,
        ),
        (
            "get",
            "/repos/{owner}/{repo}/actions/jobs/{job_id}",
            format!("/repos/octo-org/app/actions/jobs/{job}"),
            None,
            &pat,
            200,
        ),
        ("get", "/installation/repositories", "/installation/repositories".into(), None, &pat, 200),
        ("get", "/rate_limit", "/rate_limit".into(), None, &pat, 200),
        ("get", "/app/installations", "/app/installations".into(), None, &jwt, 200),
        ("get", "/orgs/{org}/installation", "/orgs/octo-org/installation".into(), None, &jwt, 200),
        (
            "get",
            "/repos/{owner}/{repo}/installation",
            "/repos/octo-org/app/installation".into(),
            None,
            &jwt,
            200,
        ),
        (
            "post",
            "/app/installations/{installation_id}/access_tokens",
            "/app/installations/4242/access_tokens".into(),
            None,
            &jwt,
            201,
        ),
    ];
    let spec = spec();
    let mut errors = Vec::new();
    for (method, template, path, body, token, status) in cases {
        let mut request = match method {
            "post" => http.post(format!("{api}{path}")),
            _ => http.get(format!("{api}{path}")),
        }
        .bearer_auth(token)
        .header("x-github-api-version", "2022-11-28");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let value: Value = response.json().await.unwrap();
        check(
            &spec,
            response_schema(&spec, method, template, status),
            &value,
            &format!("{method} {template}"),
            &mut errors,
        );
    }
    // Error bodies are GitHub's basic-error.
    let missing = http
        .get(format!("{api}/orgs/octo-org/actions/runners/999"))
        .bearer_auth(&pat)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let value: Value = missing.json().await.unwrap();
    check(
        &spec,
        &json!({ "$ref": "#/components/schemas/basic-error" }),
        &value,
        "404",
        &mut errors,
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[tokio::test]
async fn every_webhook_fits_githubs_schema() {
    use axum::body::Bytes;
    use std::sync::{Arc, Mutex};
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = bodies.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
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
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/orgs/octo-org/actions/runners/generate-jitconfig", sim.api_url()))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .json(&json!({ "name": "hangar-shape-0000000000000002", "runner_group_id": 1, "labels": ["self-hosted"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted"]));
    let cancelled = sim.job_queue(JobSpec::new("octo-org/app", ["gpu"]));
    assert!(sim.job_cancel(cancelled));
    // Drive the runner protocol by hand: connect, take the job, complete it.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let files: Value = serde_json::from_slice(
        &b64.decode(created["encoded_jit_config"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let credentials: Value =
        serde_json::from_slice(&b64.decode(files[".credentials"].as_str().unwrap()).unwrap())
            .unwrap();
    let token = credentials["Data"]["token"].as_str().unwrap();
    let runner = format!("{}/_runner", sim.api_url());
    http.post(format!("{runner}/connect")).bearer_auth(token).send().await.unwrap();
    let message: Value = http
        .get(format!("{runner}/message?wait_ms=2000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(message["job_id"], job);
    http.post(format!("{runner}/jobs/{job}/complete"))
        .bearer_auth(token)
        .json(&json!({ "conclusion": "failure" }))
        .send()
        .await
        .unwrap();
    let bodies =
        hangar_test_harness::wait_for("five webhooks", Duration::from_secs(10), || async {
            let bodies = bodies.lock().unwrap().clone();
            (bodies.len() == 5).then_some(bodies)
        })
        .await;
    let spec = spec();
    let mut errors = Vec::new();
    for body in &bodies {
        let action = body["action"].as_str().unwrap().replace('_', "-");
        let schema =
            json!({ "$ref": format!("#/components/schemas/webhook-workflow-job-{action}") });
        check(
            &spec,
            &schema,
            body,
            &format!("{action} of job {}", body["workflow_job"]["id"]),
            &mut errors,
        );
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
