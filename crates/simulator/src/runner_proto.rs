//! The protocol between a runner process and the simulator (`/_runner/...`).
//!
//! Not GitHub's (the real runner speaks the Actions service's protocol); it
//! is the smallest one with the same observable lifecycle, spoken by
//! `hangar-standin-runner`. The runner authenticates with the token from
//! its `.credentials` file.
//!
//! | call | answers |
//! |---|---|
//! | `POST /_runner/connect` | 200 (now online); 404 registration gone |
//! | `GET /_runner/message?wait_ms=N` | 200 `{job_id, duration_ms, conclusion}`; 204 nothing yet; 404 gone (exit 0) |
//! | `POST /_runner/jobs/{id}/renew` | 200 keep going; 404 stop (job or registration gone) |
//! | `POST /_runner/jobs/{id}/complete` `{conclusion}` | 200 (registration removed; exit); 404 |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::state::{Poll, Shared};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_runner/connect", post(connect))
        .route("/_runner/message", get(message))
        .route("/_runner/jobs/{job_id}/renew", post(renew))
        .route("/_runner/jobs/{job_id}/complete", post(complete))
}

fn token(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

fn gone() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "message": "The runner registration has been deleted from the server" })),
    )
        .into_response()
}

async fn connect(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if shared.runner_connect(&token(&headers)) { StatusCode::OK.into_response() } else { gone() }
}

#[derive(Debug, Deserialize)]
struct Wait {
    wait_ms: Option<u64>,
}

async fn message(
    State(shared): State<Arc<Shared>>,
    Query(wait): Query<Wait>,
    headers: HeaderMap,
) -> Response {
    let max = shared.lock().config.long_poll;
    let wait = wait.wait_ms.map_or(max, Duration::from_millis).min(max);
    match shared.runner_poll(&token(&headers), wait).await {
        Poll::Job { job_id, duration, conclusion } => Json(json!({
            "job_id": job_id,
            "duration_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            "conclusion": conclusion,
        }))
        .into_response(),
        Poll::Nothing => StatusCode::NO_CONTENT.into_response(),
        Poll::Gone => gone(),
    }
}

async fn renew(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if shared.runner_renew(&token(&headers), job_id) {
        StatusCode::OK.into_response()
    } else {
        gone()
    }
}

#[derive(Debug, Deserialize)]
struct Done {
    conclusion: String,
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<i64>,
    headers: HeaderMap,
    Json(done): Json<Done>,
) -> Response {
    if shared.runner_complete(&token(&headers), job_id, &done.conclusion) {
        StatusCode::OK.into_response()
    } else {
        gone()
    }
}
