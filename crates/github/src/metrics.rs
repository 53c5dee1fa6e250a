//! The metrics this crate emits (see `hangar_types::Metric`; listed in
//! `docs/metrics.md`).

use hangar_types::{Metric, MetricKind, MetricUnit};

pub const GITHUB_REQUESTS: &str = "hangar_github_requests_total";
pub const GITHUB_RATE_LIMIT_REMAINING: &str = "hangar_github_rate_limit_remaining";
pub const GITHUB_RATE_LIMIT_LIMIT: &str = "hangar_github_rate_limit_limit";

pub const ALL: &[Metric] = &[
    Metric {
        name: GITHUB_REQUESTS,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["op", "status"],
        help: "GitHub REST calls by operation and HTTP status (`error`: no response), retries included.",
    },
    Metric {
        name: GITHUB_RATE_LIMIT_REMAINING,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Count,
        labels: &[],
        help: "`x-ratelimit-remaining` of the last GitHub response that carried it.",
    },
    Metric {
        name: GITHUB_RATE_LIMIT_LIMIT,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Count,
        labels: &[],
        help: "`x-ratelimit-limit` of the last GitHub response that carried it.",
    },
];
