//! `POST /webhook`: GitHub's deliveries.
//!
//! The steps, in this order, each with its own answer:
//! 1. a configured secret, or 503 (nothing can be verified);
//! 2. `X-GitHub-Event` and `X-GitHub-Delivery`, or 400;
//! 3. a body within GitHub's 25 MB, or 413 (checked against
//!    `Content-Length` first, then while reading);
//! 4. a matching `X-Hub-Signature-256`, or 401; nothing is parsed before;
//! 5. JSON or form encoding, or 415; a payload with what we need, or 400;
//! 6. recorded durably (the store commits before returning), then 2xx.
//!
//! Nothing is stored unless every step passed. A redelivery (same
//! delivery id) is acknowledged and changes nothing.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hangar_github::webhook::MAX_PAYLOAD_BYTES;
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
    let delivery_headers = DeliveryHeaders {
        event: event.to_owned(),
        delivery_id: DeliveryId(delivery_id.to_owned()),
        signature: header(headers, "x-hub-signature-256").map(str::to_owned),
        content_type: ContentType::from_header(header(headers, "content-type")),
    };
    let body = read_body(headers, body).await?;
    let verified = secret.verify(delivery_headers, body).map_err(|error| match error {
        SignatureError::Missing | SignatureError::Malformed | SignatureError::Mismatch => {
            ApiError::Unauthorized(error.to_string())
        }
    })?;
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

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit: MAX_PAYLOAD_BYTES };
    let declared = header(headers, "content-length").and_then(|len| len.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_PAYLOAD_BYTES) {
        return Err(too_large);
    }
    match Limited::new(body, MAX_PAYLOAD_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large),
        Err(error) => Err(ApiError::BadRequest(format!("reading the body failed: {error}"))),
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
        ApiError::BadRequest(_) | ApiError::Forbidden(_) | ApiError::NotFound(_) => "bad_request",
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}
