//! Prometheus metrics, through the `metrics` facade.
//!
//! Names (stable; dashboards depend on them):
//! - `hangar_webhook_deliveries_total{event, action, outcome}`: every
//!   delivery and what became of it (`recorded`, `duplicate`, `ignored`,
//!   `bad_signature`, `bad_request`, `unsupported_media_type`, `too_large`,
//!   `unavailable`);
//! - `hangar_webhook_duration_seconds{outcome}`: time to answer a delivery;
//! - `hangar_jobs{state}`: jobs per state, read from the store at scrape.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use hangar_types::JobState;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{ApiError, ServerState};

/// The process-wide Prometheus recorder, installed on first use. Other
/// crates record through the `metrics` macros and show up here too.
pub fn prometheus_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ])
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours
        // simply renders nothing recorded elsewhere.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub(crate) fn delivery_counted(event: &str, action: &str, outcome: &'static str, seconds: f64) {
    metrics::counter!(
        "hangar_webhook_deliveries_total",
        "event" => event.to_owned(),
        "action" => action.to_owned(),
        "outcome" => outcome,
    )
    .increment(1);
    metrics::histogram!("hangar_webhook_duration_seconds", "outcome" => outcome).record(seconds);
}

pub(crate) async fn render(
    State(state): State<ServerState>,
) -> Result<impl IntoResponse, ApiError> {
    let handle = prometheus_handle();
    let counts = state.store.job_count_by_state().await?;
    for job_state in JobState::ALL {
        let n = counts.iter().find(|(s, _)| *s == job_state).map_or(0, |(_, n)| *n);
        #[allow(clippy::cast_precision_loss)] // job counts stay far below 2^52
        metrics::gauge!("hangar_jobs", "state" => job_state.as_str()).set(n as f64);
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()))
}
