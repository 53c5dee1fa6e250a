//! How a crate declares the Prometheus metrics it emits.
//!
//! Each crate that records metrics has a `metrics.rs` holding one `pub
//! const` per name and one list, `ALL`, of [`Metric`]s: kind, unit, labels
//! and help text. Call sites use the constants, never a string literal
//! (`cargo xtask tidy` checks), `hangar serve` describes every list to the
//! exporter at start, and `docs/metrics.md` is generated from the lists (a
//! test in the `hangar` crate fails when it is stale).

/// One metric a crate emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// `hangar_…`; counters end in `_total`, durations in `_seconds`.
    pub name: &'static str,
    pub kind: MetricKind,
    pub unit: MetricUnit,
    /// Label names. Every label takes a bounded set of values.
    pub labels: &'static [&'static str],
    /// One sentence: what is counted or measured, and when.
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    /// A plain number of things.
    Count,
    Seconds,
    Bytes,
}

impl MetricUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricUnit::Count => "count",
            MetricUnit::Seconds => "seconds",
            MetricUnit::Bytes => "bytes",
        }
    }
}
