//! The metrics this crate emits (see `hangar_types::Metric`; listed in
//! `docs/metrics.md`). Jobs per state are the server's `hangar_jobs`, read
//! from the store at scrape time; the scheduler does not count them again.

use hangar_types::{Metric, MetricKind, MetricUnit};

pub const RUNNERS_LIVE: &str = "hangar_runners_live";
pub const RECONCILER_ACTIVATIONS: &str = "hangar_reconciler_activations_total";
pub const RUNNER_LAUNCH_FAILURES: &str = "hangar_runner_launch_failures_total";
pub const RUNNER_JIT_MINT_SECONDS: &str = "hangar_runner_jit_mint_seconds";
pub const RUNNER_LAUNCH_SECONDS: &str = "hangar_runner_launch_seconds";
pub const RUNNER_LIFETIME_SECONDS: &str = "hangar_runner_lifetime_seconds";
pub const RUNNERS_STOLEN: &str = "hangar_runners_stolen_total";
pub const ORPHANS_REAPED: &str = "hangar_orphans_reaped_total";
pub const JOB_PHASE_SECONDS: &str = "hangar_job_phase_seconds";
pub const REDELIVERIES: &str = "hangar_redeliveries_total";
pub const JOBS_RECOVERED: &str = "hangar_jobs_recovered_total";

pub const ALL: &[Metric] = &[
    Metric {
        name: RUNNERS_LIVE,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Count,
        labels: &[],
        help: "Runners not yet gone, as the last reconciler activation saw them.",
    },
    Metric {
        name: RECONCILER_ACTIVATIONS,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &[],
        help: "Reconciler activations (plan, then execute), failed ones included.",
    },
    Metric {
        name: RUNNER_LAUNCH_FAILURES,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["pool", "kind"],
        help: "Runner launches that failed and were torn down, by pool (a name from the config) and kind: `infrastructure` (GitHub or the provider failing: backs off, never gives the job up) or `job` (counts against `launch_attempts`).",
    },
    Metric {
        name: RUNNER_JIT_MINT_SECONDS,
        kind: MetricKind::Histogram,
        unit: MetricUnit::Seconds,
        labels: &[],
        help: "Time to mint a runner's JIT configuration on GitHub.",
    },
    Metric {
        name: RUNNER_LAUNCH_SECONDS,
        kind: MetricKind::Histogram,
        unit: MetricUnit::Seconds,
        labels: &[],
        help: "Time the provider took to launch a runner's instance (the launch step alone).",
    },
    Metric {
        name: RUNNER_LIFETIME_SECONDS,
        kind: MetricKind::Histogram,
        unit: MetricUnit::Seconds,
        labels: &[],
        help: "Time from a runner's decision to gone.",
    },
    Metric {
        name: RUNNERS_STOLEN,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &[],
        help: "Runners GitHub gave a job other than the one they were made for.",
    },
    Metric {
        name: ORPHANS_REAPED,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["kind"],
        help: "Leftovers the store did not know, removed: `instance` or `registration`.",
    },
    Metric {
        name: JOB_PHASE_SECONDS,
        kind: MetricKind::Histogram,
        unit: MetricUnit::Seconds,
        labels: &["phase"],
        help: "Time from a job's `queued` webhook to each step of its runner: `decided`, `jit_minted`, `launch_called`, `launched`, `picked_up`.",
    },
    Metric {
        name: REDELIVERIES,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &[],
        help: "Failed webhook deliveries that recovery asked GitHub to redeliver.",
    },
    Metric {
        name: JOBS_RECOVERED,
        kind: MetricKind::Counter,
        unit: MetricUnit::Count,
        labels: &["state"],
        help: "Job states that recovery found by polling GitHub, which no webhook had delivered, by new state.",
    },
];
