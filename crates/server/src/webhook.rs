//! `POST /webhook`: GitHub's deliveries.
//!
//! The steps, in this order, each with its own answer:
//! 1. a configured secret, or 503 (nothing can be verified);
//! 2. `X-GitHub-Event` and `X-GitHub-Delivery`, or 400;
//! 3. an `X-Hub-Signature-256` of the right shape (`sha256=` and 64 hex
//!    digits), or 401, before a byte of the body is read;
//! 4. an event hangar acts on (`workflow_job`, `ping`), or 202 without
//!    reading the body;
//! 5. a body within `[server.limits] webhook_max_body_bytes`, or 413
//!    (checked against `Content-Length` first, then while reading), read
//!    within `webhook_body_timeout`, or 408; at most
//!    `webhook_unverified_bodies` are read at once, one more waits up to a
//!    second, then gets 503: unauthenticated memory stays bounded;
//! 6. a matching signature, or 401; nothing is parsed before;
//! 7. JSON or form encoding, or 415; a payload with what we need, or 400;
//! 8. recorded durably (the store commits before returning), then 2xx.
//!
//! Nothing is stored unless every step passed. A redelivery (same
//! delivery id) is acknowledged and changes nothing. The metrics see only
//! fixed words, never a header's text (`metrics::delivery_counted`).

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hangar_github::{ContentType, DeliveryHeaders, Event, PayloadError, SignatureError};
use hangar_store::{DeliveryOutcome, NewDelivery};
use hangar_types::DeliveryId;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use crate::metrics::delivery_counted;
use crate::{ApiError, ServerState};

pub(crate) async fn receive(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = Instant::now();
    let event = header(&headers, "x-github-event").unwrap_or("").to_owned();
    let result = accept(&state, &headers, body).await;
    let (outcome, action) = match &result {
        Ok(accepted) => (accepted.outcome, accepted.action.as_str()),
        Err(error) => (rejection_outcome(error), ""),
    };
    delivery_counted(&event, action, outcome, started.elapsed().as_secs_f64());
    let accepted = result?;
    tracing::debug!(
        delivery_id = %accepted.delivery_id,
        event = %event,
        action = %accepted.action,
        outcome,
        "Delivery accepted."
    );
    Ok((accepted.status, Json(accepted.body)))
}

struct Accepted {
    delivery_id: DeliveryId,
    action: String,
    outcome: &'static str,
    status: StatusCode,
    body: Value,
}

async fn accept(
    state: &ServerState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let received_at = chrono::Utc::now();
    let Some(secret) = &state.secret else {
        return Err(ApiError::Unavailable(
            "no webhook secret is configured: set HANGAR_WEBHOOK_SECRET or [webhook] secret".into(),
        ));
    };
    let event = header(headers, "x-github-event")
        .ok_or_else(|| ApiError::BadRequest("missing X-GitHub-Event header".into()))?;
    let delivery_id = header(headers, "x-github-delivery")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing X-GitHub-Delivery header".into()))?;
    let signature = header(headers, "x-hub-signature-256")
        .ok_or_else(|| ApiError::Unauthorized(SignatureError::Missing.to_string()))?;
    if !signature_well_formed(signature) {
        return Err(ApiError::Unauthorized(SignatureError::Malformed.to_string()));
    }
    if !matches!(event, "workflow_job" | "ping") {
        // Not read, not verified, not stored: nothing to act on.
        return Ok(ignored(DeliveryId(delivery_id.to_owned()), String::new(), "event"));
    }
    let delivery_headers = DeliveryHeaders {
        event: event.to_owned(),
        delivery_id: DeliveryId(delivery_id.to_owned()),
        signature: Some(signature.to_owned()),
        content_type: ContentType::from_header(header(headers, "content-type")),
    };
    let verified = {
        let _unverified = unverified_permit(state).await?;
        let body = read_body(state, headers, body).await?;
        secret.verify(delivery_headers, body).map_err(|error| match error {
            SignatureError::Missing | SignatureError::Malformed | SignatureError::Mismatch => {
                ApiError::Unauthorized(error.to_string())
            }
        })?
    };
    let payload = verified.payload_json().map_err(|error| payload_error(&error))?;
    let parsed = verified.event(&payload, received_at).map_err(|error| payload_error(&error))?;
    let delivery_id = verified.headers().delivery_id.clone();
    let (action, job_event) = match parsed {
        Event::Ignored => return Ok(ignored(delivery_id, String::new(), "event")),
        Event::UnknownJobAction { action } => return Ok(ignored(delivery_id, action, "action")),
        Event::Ping { .. } => (String::new(), None),
        Event::WorkflowJob(job_event) => (job_event.action.as_str().to_owned(), Some(*job_event)),
    };
    let job_id = job_event.as_ref().map(|e| e.job.id);
    let outcome = state
        .store
        .delivery_record(NewDelivery {
            delivery_id: delivery_id.clone(),
            event: event.to_owned(),
            action: (!action.is_empty()).then(|| action.clone()),
            received_at,
            payload,
            job_event,
        })
        .await?;
    let (outcome, body) = match outcome {
        DeliveryOutcome::Duplicate => ("duplicate", json!({ "status": "duplicate" })),
        DeliveryOutcome::Recorded { job: None, .. } => ("recorded", json!({ "status": "pong" })),
        DeliveryOutcome::Recorded { job: Some(job), job_changed } => {
            if job_changed {
                state.job_activity.notify_one();
            }
            let body = json!({ "status": "recorded", "job_id": job_id, "state": job.state });
            ("recorded", body)
        }
    };
    Ok(Accepted { delivery_id, action, outcome, status: StatusCode::OK, body })
}

fn ignored(delivery_id: DeliveryId, action: String, what: &str) -> Accepted {
    Accepted {
        delivery_id,
        action,
        outcome: "ignored",
        status: StatusCode::ACCEPTED,
        body: json!({ "status": "ignored", "reason": format!("hangar does not act on this {what}") }),
    }
}

/// `sha256=` and 64 hex digits: the only shape GitHub sends.
fn signature_well_formed(signature: &str) -> bool {
    signature
        .strip_prefix("sha256=")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How long a body waits for a turn to be read when
/// `webhook_unverified_bodies` are under way.
const UNVERIFIED_WAIT: Duration = Duration::from_secs(1);

async fn unverified_permit(
    state: &ServerState,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let busy = || ApiError::Busy("too many unverified deliveries under way; retry".into());
    // The common case takes no timer.
    if let Ok(permit) = state.webhook.unverified.try_acquire() {
        return Ok(permit);
    }
    match tokio::time::timeout(UNVERIFIED_WAIT, state.webhook.unverified.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) | Err(_) => Err(busy()),
    }
}

async fn read_body(
    state: &ServerState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, ApiError> {
    let limit = state.webhook.max_body;
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = header(headers, "content-length").and_then(|len| len.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large);
    }
    let timeout = state.webhook.body_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        // A body that came in one chunk becomes the `Vec` without a copy.
        Ok(Ok(collected)) => Ok(Vec::from(collected.to_bytes())),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large),
        Ok(Err(error)) => Err(ApiError::BadRequest(format!("reading the body failed: {error}"))),
        Err(_) => Err(ApiError::Timeout(format!(
            "the body did not arrive within {}",
            hangar_types::duration::format(timeout)
        ))),
    }
}

fn payload_error(error: &PayloadError) -> ApiError {
    match error {
        PayloadError::UnsupportedContentType => ApiError::UnsupportedMediaType(error.to_string()),
        PayloadError::MissingFormPayload
        | PayloadError::NotUtf8
        | PayloadError::Json { .. }
        | PayloadError::Shape { .. } => ApiError::BadRequest(error.to_string()),
    }
}

fn rejection_outcome(error: &ApiError) -> &'static str {
    match error {
        ApiError::Unauthorized(_) => "bad_signature",
        ApiError::PayloadTooLarge { .. } => "too_large",
        ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
        ApiError::Unavailable(_) | ApiError::Store(_) => "unavailable",
        ApiError::Busy(_) => "busy",
        ApiError::Timeout(_) => "timeout",
        ApiError::BadRequest(_) | ApiError::Forbidden(_) | ApiError::NotFound(_) => "bad_request",
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}
