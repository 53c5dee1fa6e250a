//! Every metric hangar emits, from each crate's `metrics::ALL`: described
//! to the exporter at start, and rendered as `docs/metrics.md`.
//!
//! A crate that records metrics declares them in its own `metrics.rs`; add
//! its list here. A test keeps `docs/metrics.md` equal to what `markdown` renders:
//! run `HANGAR_BLESS=1 cargo test -p hangar --lib metrics` to
//! rewrite it after changing a list.

use hangar_types::{Metric, MetricKind, MetricUnit};

pub const POOL_ISOLATED: &str = "hangar_pool_isolated";

/// The metrics this crate (the composition root) records.
pub const ALL: &[Metric] = &[Metric {
    name: POOL_ISOLATED,
    kind: MetricKind::Gauge,
    unit: MetricUnit::Count,
    labels: &["pool"],
    help: "1 when the pool's runners run isolated (own VM or machine, or nothing at all when \
           the pool is unhealthy), 0 when they run as local processes (NOT isolated).",
}];

/// Each crate's metrics, in the order the document shows them.
const LISTS: &[(&str, &[Metric])] = &[
    ("hangar", ALL),
    ("hangar-server", hangar_server::metrics::ALL),
    ("hangar-scheduler", hangar_scheduler::metrics::ALL),
    ("hangar-github", hangar_github::metrics::ALL),
    ("hangar-cache", hangar_cache::metrics::ALL),
];

/// Describes every metric (kind, unit, help) to the Prometheus exporter.
pub fn describe_all() {
    for (_, list) in LISTS {
        hangar_server::metrics::describe(list);
    }
}

/// `docs/metrics.md`.
#[cfg(test)]
fn markdown() -> String {
    let mut text = String::from(
        "# Metrics\n\n\
         Generated from each crate's `metrics::ALL` (`crates/hangar/src/metrics.rs`); \
         do not edit by hand. All are served at `/metrics` in the Prometheus text \
         format. Every label takes a bounded set of values.\n\n\
         Jobs per state are counted once, by `hangar_jobs{state}` (read from the store at \
         each scrape); the scheduler does not publish its own count.\n",
    );
    for (krate, list) in LISTS {
        text.push_str(&format!(
            "\n## {krate}\n\n| name | kind | unit | labels | meaning |\n|---|---|---|---|---|\n"
        ));
        for metric in *list {
            let labels: Vec<String> = metric.labels.iter().map(|l| format!("`{l}`")).collect();
            text.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                metric.name,
                metric.kind.as_str(),
                metric.unit.as_str(),
                labels.join(", "),
                metric.help.replace('|', "\\|"),
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn docs_metrics_md_is_generated_from_the_lists() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
        let expected = markdown();
        if std::env::var_os("HANGAR_BLESS").is_some() {
            std::fs::write(&path, &expected).expect("writing docs/metrics.md");
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "docs/metrics.md is stale: run `HANGAR_BLESS=1 cargo test -p hangar --lib metrics`"
        );
    }

    #[test]
    fn metric_names_are_unique_and_follow_the_conventions() {
        let mut seen = HashSet::new();
        for metric in LISTS.iter().flat_map(|(_, list)| list.iter()) {
            assert!(seen.insert(metric.name), "{} is declared twice", metric.name);
            assert!(metric.name.starts_with("hangar_"), "{}", metric.name);
            let counter = metric.kind == hangar_types::MetricKind::Counter;
            assert_eq!(
                counter,
                metric.name.ends_with("_total"),
                "{}: counters end in _total",
                metric.name
            );
            let seconds = metric.unit == hangar_types::MetricUnit::Seconds;
            assert_eq!(
                seconds,
                metric.name.ends_with("_seconds"),
                "{}: durations end in _seconds",
                metric.name
            );
        }
    }
}
