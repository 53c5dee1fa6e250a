//! The scheduler's part of `hangar.toml`: the `[scheduler]` section (timers,
//! deadlines, retry bounds) and the scheduling half of each `[[pools]]`
//! entry.
//!
//! ```toml
//! [scheduler]
//! runner_scope = "octo-org"  # or "owner/repo"
//! pickup_deadline = "5m"
//!
//! [[pools]]
//! name = "linux-x64"
//! labels = ["linux", "x64"]  # `self-hosted` is always added
//! max_runners = 20
//! min_hot = 2
//! idle_timeout = "5m"
//! keep_warm = "1m"
//! provider = "microvm"       # the binary's half, see `PoolConfig::provider`
//! ```
//!
//! Durations use the one syntax of the whole file ([`hangar_types::duration`]).
//! Every struct denies unknown fields: a typo is an error naming the key,
//! never a silently ignored setting. [`validate`] checks what serde cannot;
//! the binary runs it when it loads the file, so `hangar config check` and
//! `hangar serve` accept the same files.

use std::collections::BTreeSet;
use std::time::Duration;

use hangar_github::RunnerScope;
use hangar_types::{Labels, PoolName, duration};
use serde::{Deserialize, Serialize};

/// The label every hangar runner carries, as GitHub's own self-hosted runners do.
pub const SELF_HOSTED: &str = "self-hosted";

/// The `[scheduler]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Where runners are registered: an organization (`octo-org`) or one
    /// repository (`owner/repo`). Required as soon as a pool is configured.
    #[serde(default)]
    pub runner_scope: Option<RunnerScope>,
    /// How often the reconciler runs without being poked by a webhook.
    #[serde(default = "defaults::reconcile_interval", with = "duration")]
    pub reconcile_interval: Duration,
    /// How often GitHub is polled for queued jobs, runner registrations
    /// (orphans) and failed webhook deliveries.
    #[serde(default = "defaults::github_sync_interval", with = "duration")]
    pub github_sync_interval: Duration,
    /// A runner made for a job that is still queued and not picked up this
    /// long after launch is torn down and replaced.
    #[serde(default = "defaults::pickup_deadline", with = "duration")]
    pub pickup_deadline: Duration,
    /// No idle runner lives longer than this.
    #[serde(default = "defaults::max_lifetime", with = "duration")]
    pub max_lifetime: Duration,
    /// Launches per job before hangar gives up and says so on the job.
    #[serde(default = "defaults::launch_attempts")]
    pub launch_attempts: u32,
    /// Wait before the second launch of a job; doubles per further failure,
    /// up to `launch_backoff_max`.
    #[serde(default = "defaults::launch_backoff", with = "duration")]
    pub launch_backoff: Duration,
    /// The longest wait between launches of a job. Failures that are not the
    /// job's own (GitHub 5xx and rate limits, provider faults) never give it
    /// up: it is retried this often at most until it runs or is cancelled.
    #[serde(default = "defaults::launch_backoff_max", with = "duration")]
    pub launch_backoff_max: Duration,
    /// A provider launch or destroy that takes longer has failed.
    #[serde(default = "defaults::provider_timeout", with = "duration")]
    pub provider_timeout: Duration,
    /// Runner creations (JIT mint + launch) in flight at once.
    #[serde(default = "defaults::max_concurrent_launches")]
    pub max_concurrent_launches: usize,
    /// GitHub runner group new runners join (1 is "Default").
    #[serde(default = "defaults::runner_group_id")]
    pub runner_group_id: i64,
    /// On stop, how long runner creations and teardowns already under way
    /// get to reach their next recorded step before hangar exits anyway.
    #[serde(default = "defaults::shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
}

/// One `[[pools]]` entry. The scheduler reads only the scheduling fields;
/// `provider` is the part the binary owns (which machines run the pool's
/// runners, with their typed settings), so the scheduler never depends on a
/// provider implementation. The scheduler's own view is `PoolConfig<()>`
/// ([`PoolConfig::scheduling`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig<P = ()> {
    pub name: PoolName,
    /// The labels runners of this pool register with (plus `self-hosted`).
    pub labels: Vec<String>,
    pub max_runners: u32,
    /// Runners kept started and idle, waiting for jobs.
    #[serde(default)]
    pub min_hot: u32,
    /// An idle runner nobody needs is torn down after this long.
    #[serde(default = "defaults::idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// After a job of this pool completes, keep one more runner warm for
    /// this long (reruns get a runner at once).
    #[serde(default, with = "duration")]
    pub keep_warm: Duration,
    /// What runs this pool's runners (the binary's provider config).
    #[serde(default)]
    pub provider: P,
}

impl<P> PoolConfig<P> {
    /// The pool as the scheduler sees it, and its provider part.
    pub fn scheduling(self) -> (PoolConfig, P) {
        let (pool, provider) = self.with_provider(());
        (pool, provider)
    }

    /// The same pool with another provider part; returns the old one.
    pub fn with_provider<Q>(self, provider: Q) -> (PoolConfig<Q>, P) {
        let PoolConfig {
            name,
            labels,
            max_runners,
            min_hot,
            idle_timeout,
            keep_warm,
            provider: old,
        } = self;
        (PoolConfig { name, labels, max_runners, min_hot, idle_timeout, keep_warm, provider }, old)
    }
}

impl<P> PoolConfig<P> {
    /// The labels a runner of this pool registers with: the configured ones
    /// and `self-hosted`.
    pub fn runner_labels(&self) -> Labels {
        Labels::new(self.labels.iter().map(String::as_str).chain([SELF_HOSTED]))
    }

    /// Whether a job asking for `job_labels` can run here.
    pub fn matches(&self, job_labels: &Labels) -> bool {
        self.runner_labels().is_superset_of(job_labels)
    }
}

/// What is wrong with a config, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {expected}")]
pub struct ConfigError {
    pub key: String,
    pub expected: String,
}

/// Checks what serde cannot: unique names, sane bounds.
pub fn validate<P>(
    scheduler: &SchedulerConfig,
    pools: &[PoolConfig<P>],
) -> Result<(), ConfigError> {
    let err = |key: String, expected: &str| Err(ConfigError { key, expected: expected.into() });
    if scheduler.launch_attempts == 0 {
        return err("scheduler.launch_attempts".into(), "expected at least 1");
    }
    if scheduler.max_concurrent_launches == 0 {
        return err("scheduler.max_concurrent_launches".into(), "expected at least 1");
    }
    if scheduler.launch_backoff_max < scheduler.launch_backoff {
        return err("scheduler.launch_backoff_max".into(), "expected at least launch_backoff");
    }
    if scheduler.reconcile_interval.is_zero() {
        return err("scheduler.reconcile_interval".into(), "expected more than 0s");
    }
    if scheduler.shutdown_grace.is_zero() {
        return err("scheduler.shutdown_grace".into(), "expected more than 0s");
    }
    if !pools.is_empty() && scheduler.runner_scope.is_none() {
        return err(
            "scheduler.runner_scope".into(),
            "expected the organization (`octo-org`) or repository (`owner/repo`) runners register in",
        );
    }
    let mut names = BTreeSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let key = |field: &str| format!("pools[{i}].{field}");
        let valid_name = !pool.name.0.is_empty()
            && pool.name.0.len() <= 32
            && pool
                .name
                .0
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return err(key("name"), "expected 1 to 32 of [a-z0-9-] (it is part of runner names)");
        }
        if !names.insert(pool.name.0.as_str()) {
            return err(key("name"), "expected a name no other pool uses");
        }
        if pool.max_runners == 0 {
            return err(key("max_runners"), "expected at least 1");
        }
        if pool.min_hot > pool.max_runners {
            return err(key("min_hot"), "expected at most max_runners");
        }
        if pool.labels.iter().any(|l| l.trim().is_empty() || l.contains(',')) {
            return err(key("labels"), "expected non-empty labels without commas");
        }
    }
    Ok(())
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            runner_scope: None,
            reconcile_interval: defaults::reconcile_interval(),
            github_sync_interval: defaults::github_sync_interval(),
            pickup_deadline: defaults::pickup_deadline(),
            max_lifetime: defaults::max_lifetime(),
            launch_attempts: defaults::launch_attempts(),
            launch_backoff: defaults::launch_backoff(),
            launch_backoff_max: defaults::launch_backoff_max(),
            provider_timeout: defaults::provider_timeout(),
            max_concurrent_launches: defaults::max_concurrent_launches(),
            runner_group_id: defaults::runner_group_id(),
            shutdown_grace: defaults::shutdown_grace(),
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub(super) fn reconcile_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn github_sync_interval() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn pickup_deadline() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn max_lifetime() -> Duration {
        Duration::from_secs(6 * 3600)
    }
    pub(super) fn launch_attempts() -> u32 {
        5
    }
    pub(super) fn launch_backoff() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn launch_backoff_max() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn provider_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn max_concurrent_launches() -> usize {
        16
    }
    pub(super) fn runner_group_id() -> i64 {
        1
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        scheduler: Option<SchedulerConfig>,
        pools: Vec<PoolConfig<String>>,
    }

    #[test]
    fn pools_parse_with_defaults_and_self_hosted_is_added() {
        let file: File = toml::from_str(
            r#"
            [[pools]]
            name = "linux-x64"
            labels = ["Linux", "X64"]
            provider = "process"
            max_runners = 20
            keep_warm = "1500ms"
            "#,
        )
        .expect("valid config");
        let (pool, provider) = file.pools[0].clone().scheduling();
        assert_eq!(provider, "process");
        assert_eq!(pool.runner_labels(), Labels::new(["self-hosted", "linux", "x64"]));
        assert!(pool.matches(&Labels::new(["self-hosted", "LINUX"])));
        assert!(!pool.matches(&Labels::new(["self-hosted", "gpu"])));
        assert_eq!(pool.keep_warm, Duration::from_millis(1500));
        assert_eq!(pool.idle_timeout, Duration::from_secs(300));
        assert!(file.scheduler.is_none());
        let err = validate(&SchedulerConfig::default(), &file.pools).expect_err("no scope");
        assert!(err.to_string().starts_with("scheduler.runner_scope: expected"), "{err}");
        let scoped = SchedulerConfig {
            runner_scope: RunnerScope::parse("octo-org"),
            ..SchedulerConfig::default()
        };
        validate(&scoped, &file.pools).expect("valid pools");
    }

    #[test]
    fn durations_are_strings_and_old_seconds_are_refused_with_the_new_spelling() {
        let file: File = toml::from_str(
            "pools = []\n[scheduler]\npickup_deadline = \"2m\"\nreconcile_interval = \"250ms\"\n",
        )
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        let scheduler = file.scheduler.expect("section");
        assert_eq!(scheduler.pickup_deadline, Duration::from_secs(120));
        assert_eq!(scheduler.reconcile_interval, Duration::from_millis(250));
        let old = toml::from_str::<File>("pools = []\n[scheduler]\npickup_deadline = 300\n");
        let message = old.err().expect("bare seconds refused").to_string();
        assert!(message.contains("write \"300s\""), "{message}");
        let scope = toml::from_str::<File>("pools = []\n[scheduler]\nrunner_scope = \"a/b/c\"\n");
        let message = scope.err().expect("bad scope refused").to_string();
        assert!(message.contains("owner/repo"), "{message}");
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let typo = toml::from_str::<File>(
            "[[pools]]\nname='a'\nlabels=[]\nprovider='fake'\nmax_runner=1\n",
        );
        let message = typo.err().expect("typo rejected").to_string();
        assert!(message.contains("max_runner"), "{message}");

        let pool = |name: &str, max, min_hot| PoolConfig {
            name: PoolName(name.into()),
            labels: vec!["linux".into()],
            max_runners: max,
            min_hot,
            idle_timeout: Duration::from_secs(1),
            keep_warm: Duration::ZERO,
            provider: (),
        };
        let cfg = SchedulerConfig {
            runner_scope: RunnerScope::parse("o/r"),
            ..SchedulerConfig::default()
        };
        let check = |pools: &[PoolConfig]| validate(&cfg, pools).err().map(|e| e.to_string());
        assert_eq!(check(&[pool("a", 1, 0)]), None);
        assert_eq!(
            check(&[pool("a", 0, 0)]),
            Some("pools[0].max_runners: expected at least 1".into())
        );
        assert_eq!(
            check(&[pool("a", 1, 2)]),
            Some("pools[0].min_hot: expected at most max_runners".into())
        );
        assert!(
            check(&[pool("a", 1, 0), pool("a", 1, 0)])
                .is_some_and(|m| m.starts_with("pools[1].name"))
        );
        assert!(check(&[pool("Big_Pool", 1, 0)]).is_some_and(|m| m.starts_with("pools[0].name")));
    }
}
