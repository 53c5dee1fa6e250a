use std::path::PathBuf;

use hangar_types::{GitHubRunnerId, JobState};

use super::*;

fn fixture(path: &str) -> Vec<u8> {
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/github/webhooks");
    std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("read fixture {path}: {e}"))
}

fn headers(event: &str, signature: Option<String>, content_type: ContentType) -> DeliveryHeaders {
    DeliveryHeaders {
        event: event.into(),
        delivery_id: DeliveryId("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
        signature,
        content_type,
    }
}

fn now() -> Timestamp {
    DateTime::from_timestamp(1_750_000_000, 0).expect("valid")
}

#[test]
fn githubs_published_test_vector_verifies() {
    let secret = WebhookSecret::new("It's a Secret to Everybody");
    let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(secret.sign(b"Hello, World!"), expected);
    let delivery = headers("ping", Some(expected.into()), ContentType::Json);
    assert!(secret.verify(delivery, b"Hello, World!".to_vec()).is_ok());
}

#[test]
fn bad_signatures_are_told_apart() {
    let secret = WebhookSecret::new("s3cret");
    let body = b"{}".to_vec();
    let check = |signature: Option<&str>| {
        let delivery = headers("ping", signature.map(str::to_owned), ContentType::Json);
        secret.verify(delivery, body.clone()).map(|_| ())
    };
    assert_eq!(check(None), Err(SignatureError::Missing));
    assert_eq!(check(Some("sha1=abc")), Err(SignatureError::Malformed));
    assert_eq!(check(Some("sha256=zz")), Err(SignatureError::Malformed));
    let other = WebhookSecret::new("other").sign(&body);
    assert_eq!(check(Some(&other)), Err(SignatureError::Mismatch));
    assert_eq!(check(Some(&secret.sign(&body))), Ok(()));
}

#[test]
fn content_types_are_read_by_their_essence() {
    assert_eq!(
        ContentType::from_header(Some("application/json; charset=utf-8")),
        ContentType::Json
    );
    assert_eq!(
        ContentType::from_header(Some("application/x-www-form-urlencoded")),
        ContentType::Form
    );
    assert_eq!(ContentType::from_header(Some("text/plain")), ContentType::Unsupported);
    assert_eq!(ContentType::from_header(None), ContentType::Unsupported);
}

fn parse(event: &str, body: Vec<u8>, content_type: ContentType) -> Result<Event, PayloadError> {
    let secret = WebhookSecret::new("t");
    let signature = secret.sign(&body);
    let verified =
        secret.verify(headers(event, Some(signature), content_type), body).expect("signed");
    let json = verified.payload_json()?;
    verified.event(&json, now())
}

#[test]
fn every_workflow_job_fixture_parses() {
    let cases = [
        ("queued.payload.json", JobState::Queued),
        ("queued.with-deployment.payload.json", JobState::Queued),
        ("waiting.payload.json", JobState::Waiting),
        ("in_progress.payload.json", JobState::InProgress),
        ("in_progress.with-queued-steps.payload.json", JobState::InProgress),
        ("completed.success.with-organization.payload.json", JobState::Completed),
        ("completed.failure.with-organization.payload.json", JobState::Completed),
    ];
    for (file, state) in cases {
        let body = fixture(&format!("workflow_job/{file}"));
        let Ok(Event::WorkflowJob(event)) = parse("workflow_job", body, ContentType::Json) else {
            panic!("{file} did not parse as a workflow_job");
        };
        assert_eq!(JobState::from(event.action), state, "{file}");
        assert!(!event.job.repository.is_empty(), "{file}");
    }
}

#[test]
fn fields_come_through_from_a_real_payload() {
    let body = fixture("workflow_job/in_progress.with-queued-steps.payload.json");
    let Ok(Event::WorkflowJob(event)) = parse("workflow_job", body, ContentType::Json) else {
        panic!("did not parse");
    };
    assert_eq!(event.job.id, JobId(14_541_957_942));
    assert_eq!(event.job.run_id, RunId(5_373_506_832));
    assert_eq!(event.job.job_name, "Do examples need to be regenerated?");
    assert_eq!(event.job.head_branch.as_deref(), Some("renovate/got-13.x"));
    assert_eq!(event.job.runner.as_ref().map(|r| r.id), Some(GitHubRunnerId(6)));
    assert_eq!(event.received_at, now());
}

#[test]
fn the_form_encoding_carries_the_same_payload() {
    let json = fixture("workflow_job/completed.failure.with-organization.payload.json");
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).expect("utf-8"))
        .finish();
    let Ok(Event::WorkflowJob(event)) = parse("workflow_job", form.into_bytes(), ContentType::Form)
    else {
        panic!("did not parse");
    };
    assert_eq!(event.job.conclusion, Some(Conclusion::Failure));
    assert!(event.job.organization.is_some());
    assert!(matches!(
        parse("workflow_job", b"other=1".to_vec(), ContentType::Form),
        Err(PayloadError::MissingFormPayload)
    ));
}

#[test]
fn pings_parse_and_other_events_are_ignored() {
    for file in ["payload.json", "with-app_id.payload.json", "with-organization.payload.json"] {
        let event = parse("ping", fixture(&format!("ping/{file}")), ContentType::Json);
        assert!(matches!(event, Ok(Event::Ping { hook_id: Some(_), .. })), "{file}");
    }
    assert!(matches!(parse("push", b"{}".to_vec(), ContentType::Json), Ok(Event::Ignored)));
}

#[test]
fn broken_payloads_say_what_is_wrong() {
    let truncated = fixture("workflow_job/queued.payload.json")[..200].to_vec();
    let error = parse("workflow_job", truncated, ContentType::Json).unwrap_err();
    assert!(matches!(error, PayloadError::Json { .. }), "{error}");

    let no_id = br#"{"action":"queued","workflow_job":{"run_id":1,"name":"x"},"repository":{"full_name":"a/b"}}"#;
    let error = parse("workflow_job", no_id.to_vec(), ContentType::Json).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "the workflow_job payload lacks what hangar needs at `workflow_job`: missing field `id`"
        ),
        "{error}"
    );

    let unknown = br#"{"action":"requested"}"#;
    assert!(matches!(
        parse("workflow_job", unknown.to_vec(), ContentType::Json),
        Ok(Event::UnknownJobAction { .. })
    ));
}
