//! The metrics this crate emits (see `hangar_types::Metric`; listed in
//! `docs/metrics.md`).

use hangar_types::{Metric, MetricKind, MetricUnit};

pub const CACHE_LOOKUPS: &str = "hangar_cache_lookups_total";
pub const CACHE_BYTES_IN: &str = "hangar_cache_bytes_in_total";
pub const CACHE_BYTES_OUT: &str = "hangar_cache_bytes_out_total";
pub const CACHE_EVICTIONS: &str = "hangar_cache_evictions_total";

pub const ALL: &[Metric] = &[
    Metric {
        name: CACHE_LOOKUPS,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["result"],
        help: "Cache restore lookups: `hit` or `miss`.",
    },
    Metric {
        name: CACHE_BYTES_IN,
        kind: MetricKind::Counter,
        unit: MetricUnit::Bytes,
        labels: &[],
        help: "Bytes uploaded into cache entries.",
    },
    Metric {
        name: CACHE_BYTES_OUT,
        kind: MetricKind::Counter,
        unit: MetricUnit::Bytes,
        labels: &[],
        help: "Bytes of cache entries served to downloads.",
    },
    Metric {
        name: CACHE_EVICTIONS,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["reason"],
        help: "Cache entries evicted, by reason (`unused`, `size_cap`, `total_cap`, `abandoned`).",
    },
];
