//! Retention: history older than `[store] retention` (default 90 days) is
//! deleted, so the database does not grow forever (at 10k jobs a day the
//! deliveries' payloads alone add about 0.8 GB a day).
//!
//! What a pass deletes, each older than the cutoff:
//! - deliveries (the raw payloads; a job's record is kept apart, so its
//!   state does not depend on them);
//! - runner events, except those of live runners;
//! - `gone` runners;
//! - completed jobs no live runner refers to, with their scheduler notes.
//!
//! Queued and running jobs are never deleted, whatever their age: they are
//! the scheduler's and recovery's business. Deletes go in batches of
//! [`BATCH`] rows, one statement each, so on SQLite the write lock is held
//! briefly and webhook commits go on in between.
//!
//! [`retention_schedule`] runs a pass at start and every [`PASS_INTERVAL`];
//! the composition root owns it (on its task tracker, ended by its
//! cancellation token).

use std::time::Duration;

use hangar_types::{ErrorChain, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::{Store, StoreError, to_ms};

/// How often the retention task runs a pass.
pub const PASS_INTERVAL: Duration = Duration::from_secs(3600);

/// Rows per delete statement.
pub const BATCH: u64 = 1000;

/// How many rows one pass deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deliveries: u64,
    pub runner_events: u64,
    pub runners: u64,
    pub jobs: u64,
}

/// Each statement deletes at most [`BATCH`] rows (its `LIMIT`) older than
/// `$1` (ms).
const DELETES: [(&str, &str); 5] = [
    (
        "deliveries",
        "DELETE FROM deliveries WHERE delivery_id IN \
           (SELECT delivery_id FROM deliveries WHERE received_at_ms < $1 LIMIT 1000)",
    ),
    (
        "runner_events",
        "DELETE FROM runner_events WHERE event_id IN \
           (SELECT event_id FROM runner_events WHERE at_ms < $1 AND runner_id NOT IN \
              (SELECT runner_id FROM runners WHERE state <> 'gone') LIMIT 1000)",
    ),
    (
        "runners",
        "DELETE FROM runners WHERE runner_id IN \
           (SELECT runner_id FROM runners WHERE state = 'gone' \
              AND COALESCE(gone_at_ms, created_at_ms) < $1 LIMIT 1000)",
    ),
    (
        "jobs",
        "DELETE FROM jobs WHERE job_id IN \
           (SELECT job_id FROM jobs WHERE state = 'completed' AND updated_at_ms < $1 \
              AND job_id NOT IN (SELECT job_id FROM runners \
                                 WHERE state <> 'gone' AND job_id IS NOT NULL) \
              AND job_id NOT IN (SELECT for_job FROM runners \
                                 WHERE state <> 'gone' AND for_job IS NOT NULL) \
            LIMIT 1000)",
    ),
    (
        "job_lifecycle",
        "DELETE FROM job_lifecycle WHERE job_id IN \
           (SELECT l.job_id FROM job_lifecycle l LEFT JOIN jobs j ON j.job_id = l.job_id \
            WHERE j.job_id IS NULL AND l.updated_at_ms < $1 LIMIT 1000)",
    ),
];

impl Store {
    /// Deletes what is older than `now - keep` (see the module docs).
    pub async fn retention_pass(
        &self,
        now: Timestamp,
        keep: Duration,
    ) -> Result<RetentionReport, StoreError> {
        self.retention_run(now, keep, &CancellationToken::new()).await
    }

    /// A pass that stops between batches once `stop` is cancelled.
    async fn retention_run(
        &self,
        now: Timestamp,
        keep: Duration,
        stop: &CancellationToken,
    ) -> Result<RetentionReport, StoreError> {
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let cutoff = now.checked_sub_signed(keep).map_or(i64::MIN, to_ms);
        let mut report = RetentionReport::default();
        for (table, sql) in DELETES {
            let deleted = self.retention_delete(sql, cutoff, stop).await?;
            match table {
                "deliveries" => report.deliveries = deleted,
                "runner_events" => report.runner_events = deleted,
                "runners" => report.runners = deleted,
                "jobs" => report.jobs = deleted,
                _ => {}
            }
        }
        Ok(report)
    }

    /// Runs one batched delete until a batch comes back short (or `stop`).
    async fn retention_delete(
        &self,
        sql: &str,
        cutoff: i64,
        stop: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        while !stop.is_cancelled() {
            let deleted = sqlx::query(sql)
                .bind(cutoff)
                .execute(self.pool())
                .await
                .map_err(StoreError::query("deleting old history"))?
                .rows_affected();
            total += deleted;
            if deleted < BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(total)
    }
}

/// The retention task: a pass now and every [`PASS_INTERVAL`], keeping
/// `keep` of history, until `stop` is cancelled (a pass under way ends
/// after its current batch).
pub async fn retention_schedule(store: Store, keep: Duration, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match store.retention_run(chrono::Utc::now(), keep, &stop).await {
            Ok(report) => tracing::info!(
                deliveries = report.deliveries,
                runner_events = report.runner_events,
                runners = report.runners,
                jobs = report.jobs,
                keep = %hangar_types::duration::format(keep),
                "Retention pass done."
            ),
            Err(e) => tracing::warn!(
                error = %ErrorChain(&e),
                "Retention pass failed; the next one retries."
            ),
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(PASS_INTERVAL) => {}
        }
    }
}
