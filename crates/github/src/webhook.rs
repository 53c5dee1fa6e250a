//! Webhook deliveries: checking the signature, then reading the payload.
//!
//! The order is the point. [`WebhookSecret::verify`] runs over the raw
//! bytes before anything parses them, and it is the only constructor of
//! [`VerifiedDelivery`], so no code can reach a payload that was not signed
//! with our secret (a typed proof rather than a middleware that could be
//! forgotten). Parsing then turns the JSON into `hangar_types` values and
//! nothing else: GitHub's shapes stay in this module.
//!
//! GitHub's quirks handled here (see `research/github-api.md`):
//! - the signature covers the body exactly as sent, also for form-encoded
//!   deliveries, whose JSON sits in the `payload` field;
//! - `action` and `workflow_job.status` can disagree; `action` wins;
//! - the sample `queued` payload names a runner although none is assigned;
//!   the job state machine ranks that below the `in_progress` assignment.

use std::fmt;

use chrono::{DateTime, Utc};
use hangar_types::{
    Conclusion, DeliveryId, GitHubRunnerId, InstallationId, JobAction, JobEvent, JobFields, JobId,
    Labels, RunId, RunnerAssignment, Timestamp,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// GitHub does not deliver events larger than this.
pub const MAX_PAYLOAD_BYTES: usize = 25 * 1024 * 1024;

/// The webhook secret shared with GitHub.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// The headers of a delivery that hangar reads.
#[derive(Debug, Clone)]
pub struct DeliveryHeaders {
    /// `X-GitHub-Event`.
    pub event: String,
    /// `X-GitHub-Delivery`.
    pub delivery_id: DeliveryId,
    /// `X-Hub-Signature-256`, when present.
    pub signature: Option<String>,
    pub content_type: ContentType,
}

/// How the payload is encoded (`Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded`, the JSON in a `payload` field.
    Form,
    /// Anything else; rejected after the signature check.
    Unsupported,
}

impl ContentType {
    /// Reads a `Content-Type` header value (parameters such as `charset` ignored).
    pub fn from_header(value: Option<&str>) -> ContentType {
        let essence = value.unwrap_or("").split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/json") {
            ContentType::Json
        } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            ContentType::Form
        } else {
            ContentType::Unsupported
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the delivery has no X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body and the webhook secret")]
    Mismatch,
}

/// A delivery whose signature matched. Only [`WebhookSecret::verify`] makes one.
#[derive(Debug)]
pub struct VerifiedDelivery {
    headers: DeliveryHeaders,
    body: Vec<u8>,
}

impl WebhookSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> WebhookSecret {
        WebhookSecret(secret.into())
    }

    /// `sha256=` + hex HMAC-SHA256 of `body`: the header GitHub would send.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks the signature over the raw body, in constant time.
    pub fn verify(
        &self,
        headers: DeliveryHeaders,
        body: Vec<u8>,
    ) -> Result<VerifiedDelivery, SignatureError> {
        let header = headers.signature.as_deref().ok_or(SignatureError::Missing)?;
        let hex_digest = header.strip_prefix("sha256=").ok_or(SignatureError::Malformed)?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| SignatureError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&body);
        mac.verify_slice(&digest).map_err(|_| SignatureError::Mismatch)?;
        Ok(VerifiedDelivery { headers, body })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// Why a signed delivery cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "unsupported Content-Type: expected application/json or application/x-www-form-urlencoded"
    )]
    UnsupportedContentType,
    #[error("the form-encoded body has no `payload` field")]
    MissingFormPayload,
    #[error("the payload is not valid UTF-8")]
    NotUtf8,
    #[error("the payload is not valid JSON: {detail}")]
    Json { detail: String },
    #[error("the {event} payload lacks what hangar needs at `{path}`: {detail}")]
    Shape { event: String, path: String, detail: String },
}

/// What a delivery is about, for the events hangar acts on.
#[derive(Debug, Clone)]
pub enum Event {
    Ping {
        zen: Option<String>,
        hook_id: Option<i64>,
    },
    WorkflowJob(Box<JobEvent>),
    /// A `workflow_job` whose action hangar does not know (GitHub may add some).
    UnknownJobAction {
        action: String,
    },
    /// Any other event: acknowledged, counted, not stored.
    Ignored,
}

impl VerifiedDelivery {
    pub fn headers(&self) -> &DeliveryHeaders {
        &self.headers
    }

    /// The JSON payload as text, from either encoding.
    pub fn payload_json(&self) -> Result<String, PayloadError> {
        match self.headers.content_type {
            ContentType::Json => {
                String::from_utf8(self.body.clone()).map_err(|_| PayloadError::NotUtf8)
            }
            ContentType::Form => form_urlencoded::parse(&self.body)
                .find(|(key, _)| key == "payload")
                .map(|(_, value)| value.into_owned())
                .ok_or(PayloadError::MissingFormPayload),
            ContentType::Unsupported => Err(PayloadError::UnsupportedContentType),
        }
    }

    /// Reads the payload `json` (from [`Self::payload_json`]) as an [`Event`].
    pub fn event(&self, json: &str, received_at: Timestamp) -> Result<Event, PayloadError> {
        match self.headers.event.as_str() {
            "ping" => {
                let ping: wire::Ping = from_json("ping", json)?;
                Ok(Event::Ping { zen: ping.zen, hook_id: ping.hook_id })
            }
            "workflow_job" => {
                // One pass on the hot path; only a payload that fails it is
                // read again, the slow way, for an error naming the action
                // or the path of what is wrong.
                let (action, job) = match serde_json::from_str::<wire::WorkflowJobPayload>(json) {
                    Ok(mut payload) => (std::mem::take(&mut payload.action), payload.into_fields()),
                    Err(_) => {
                        let action: wire::ActionOnly = from_json("workflow_job", json)?;
                        if action.action.parse::<JobAction>().is_err() {
                            return Ok(Event::UnknownJobAction { action: action.action });
                        }
                        let payload: wire::WorkflowJobPayload = from_json("workflow_job", json)?;
                        (payload.action.clone(), payload.into_fields())
                    }
                };
                let Ok(parsed) = action.parse::<JobAction>() else {
                    return Ok(Event::UnknownJobAction { action });
                };
                Ok(Event::WorkflowJob(Box::new(JobEvent {
                    delivery_id: self.headers.delivery_id.clone(),
                    action: parsed,
                    received_at,
                    job,
                })))
            }
            _ => Ok(Event::Ignored),
        }
    }
}

fn from_json<'a, T: Deserialize<'a>>(event: &str, json: &'a str) -> Result<T, PayloadError> {
    let deserializer = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            PayloadError::Json { detail: inner.to_string() }
        } else {
            PayloadError::Shape { event: event.to_owned(), path, detail: inner.to_string() }
        }
    })
}

/// GitHub's JSON shapes, private to this module. Only what hangar reads is
/// declared; serde skips the rest.
mod wire {
    use super::*;

    #[derive(Deserialize)]
    pub(super) struct Ping {
        pub(super) zen: Option<String>,
        pub(super) hook_id: Option<i64>,
    }

    #[derive(Deserialize)]
    pub(super) struct ActionOnly {
        pub(super) action: String,
    }

    #[derive(Deserialize)]
    pub(super) struct WorkflowJobPayload {
        pub(super) action: String,
        workflow_job: WorkflowJob,
        repository: Repository,
        organization: Option<Organization>,
        installation: Option<Installation>,
    }

    #[derive(Deserialize)]
    struct WorkflowJob {
        id: i64,
        run_id: i64,
        #[serde(default = "first_attempt")]
        run_attempt: i64,
        name: String,
        workflow_name: Option<String>,
        #[serde(default)]
        labels: Vec<String>,
        head_branch: Option<String>,
        head_sha: Option<String>,
        html_url: Option<String>,
        runner_id: Option<i64>,
        runner_name: Option<String>,
        runner_group_id: Option<i64>,
        runner_group_name: Option<String>,
        conclusion: Option<String>,
        created_at: Option<DateTime<Utc>>,
        started_at: Option<DateTime<Utc>>,
        completed_at: Option<DateTime<Utc>>,
    }

    #[derive(Deserialize)]
    struct Repository {
        full_name: String,
    }

    #[derive(Deserialize)]
    struct Organization {
        login: String,
    }

    #[derive(Deserialize)]
    struct Installation {
        id: i64,
    }

    fn first_attempt() -> i64 {
        1
    }

    impl WorkflowJobPayload {
        pub(super) fn into_fields(self) -> JobFields {
            let job = self.workflow_job;
            let runner = match (job.runner_id, job.runner_name) {
                (Some(id), Some(name)) => Some(RunnerAssignment {
                    id: GitHubRunnerId(id),
                    name,
                    group_id: job.runner_group_id,
                    group_name: job.runner_group_name,
                }),
                _ => None,
            };
            JobFields {
                id: JobId(job.id),
                run_id: RunId(job.run_id),
                run_attempt: job.run_attempt,
                repository: self.repository.full_name,
                organization: self.organization.map(|org| org.login),
                installation_id: self.installation.map(|i| InstallationId(i.id)),
                workflow_name: job.workflow_name,
                job_name: job.name,
                labels: Labels::new(job.labels),
                head_branch: job.head_branch,
                head_sha: job.head_sha,
                html_url: job.html_url,
                runner,
                conclusion: job.conclusion.map(Conclusion::from),
                created_at: job.created_at,
                started_at: job.started_at,
                completed_at: job.completed_at,
            }
        }
    }
}

#[cfg(test)]
mod tests;
