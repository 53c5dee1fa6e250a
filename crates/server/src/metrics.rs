//! Prometheus metrics, through the `metrics` facade: the exporter, and the
//! metrics this crate emits (see `hangar_types::Metric`; all of hangar's are
//! listed in `docs/metrics.md`).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use hangar_types::{JobState, Metric, MetricKind, MetricUnit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{ApiError, ServerState};

pub const WEBHOOK_DELIVERIES: &str = "hangar_webhook_deliveries_total";
pub const WEBHOOK_DURATION_SECONDS: &str = "hangar_webhook_duration_seconds";
pub const JOBS: &str = "hangar_jobs";
pub const CONNECTIONS_REFUSED: &str = "hangar_http_connections_refused_total";

pub const ALL: &[Metric] = &[
    Metric {
        name: WEBHOOK_DELIVERIES,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["event", "action", "outcome"],
        help: "Webhook deliveries and what became of them (`recorded`, `duplicate`, `ignored`, `bad_signature`, `bad_request`, `unsupported_media_type`, `too_large`, `timeout` (the body was too slow), `busy` (too many unverified bodies under way), `unavailable`); an event other than `workflow_job`/`ping`, or an unknown action, is `other`.",
    },
    Metric {
        name: WEBHOOK_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: MetricUnit::Seconds,
        labels: &["outcome"],
        help: "Time to answer a webhook delivery.",
    },
    Metric {
        name: JOBS,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Count,
        labels: &["state"],
        help: "Jobs per state, read from the store at each scrape: the one count of jobs.",
    },
    Metric {
        name: CONNECTIONS_REFUSED,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["listener"],
        help: "Connections closed at once because the listener (`public`, `admin`) had `[server.limits] max_connections` open.",
    },
];

/// Describes `metrics` (kind, unit, help) to the Prometheus exporter,
/// installing it first. `hangar serve` passes every crate's `metrics::ALL`.
pub fn describe(metrics: &[Metric]) {
    prometheus_handle();
    for metric in metrics {
        let unit = match metric.unit {
            MetricUnit::Count => metrics::Unit::Count,
            MetricUnit::Seconds => metrics::Unit::Seconds,
            MetricUnit::Bytes => metrics::Unit::Bytes,
        };
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, unit, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, unit, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, unit, metric.help),
        }
    }
}

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

/// Counts a delivery. `event` is a request header and `action` part of the
/// body: mapped to a fixed vocabulary, so no request adds a series.
pub(crate) fn delivery_counted(event: &str, action: &str, outcome: &'static str, seconds: f64) {
    let event = match event {
        "workflow_job" | "ping" | "" => event.to_owned(),
        _ => "other".to_owned(),
    };
    let action = match action.parse::<JobState>() {
        Ok(state) => state.as_str(),
        Err(_) if action.is_empty() => "",
        Err(_) => "other",
    };
    metrics::counter!(WEBHOOK_DELIVERIES, "event" => event, "action" => action, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(WEBHOOK_DURATION_SECONDS, "outcome" => outcome).record(seconds);
}

pub(crate) async fn render(
    State(state): State<ServerState>,
) -> Result<impl IntoResponse, ApiError> {
    let handle = prometheus_handle();
    let counts = state.store.job_count_by_state().await?;
    for job_state in JobState::ALL {
        let n = counts.iter().find(|(s, _)| *s == job_state).map_or(0, |(_, n)| *n);
        #[allow(clippy::cast_precision_loss)] // job counts stay far below 2^52
        metrics::gauge!(JOBS, "state" => job_state.as_str()).set(n as f64);
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_metrics_render_help_and_request_values_stay_bounded() {
        describe(ALL);
        delivery_counted("x-forged-event-1234", "x-forged-action", "bad_signature", 0.01);
        delivery_counted("workflow_job", "queued", "recorded", 0.01);
        let text = prometheus_handle().render();
        assert!(
            text.contains("# HELP hangar_webhook_deliveries_total Webhook deliveries"),
            "{text}"
        );
        assert!(text.contains("# TYPE hangar_webhook_deliveries_total counter"), "{text}");
        assert!(!text.contains("forged"), "request values became labels: {text}");
        assert!(text.contains(r#"event="other",action="other",outcome="bad_signature""#), "{text}");
        assert!(
            text.contains(r#"event="workflow_job",action="queued",outcome="recorded""#),
            "{text}"
        );
    }
}
