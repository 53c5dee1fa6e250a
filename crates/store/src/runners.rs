//! Runners, their event history, and the scheduler's notes on jobs (the
//! reason a job has no runner, its failed launches).
//!
//! Runner writes follow the state machine in `hangar_types::RunnerState`:
//! [`Store::runner_write`] refuses a transition the machine does not allow
//! and applies only if the row still has the generation the caller read, so
//! two reconcilers (or a reconciler and a stale executor task) can never
//! overwrite each other; the loser re-reads.

use hangar_types::{
    GitHubRunnerId, JobId, JobRecord, PoolName, RunnerId, RunnerRecord, RunnerState, Timestamp,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{AnyQuery, Store, StoreError, from_ms, to_ms};

/// The scheduler's notes on one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobNotes {
    /// Why the job has no runner (yet); `None` once it has one.
    pub reason: Option<String>,
    /// Failed launches of [`FailureKind::Job`]: these give a job up.
    pub launch_failures: u32,
    /// Failed launches of [`FailureKind::Infrastructure`]: these only back off.
    pub infra_failures: u32,
    pub last_failure_at: Option<Timestamp>,
    pub last_failure_kind: Option<FailureKind>,
    pub last_error: Option<String>,
}

/// Whose a failed launch was, which decides whether it counts against the
/// job's bounded attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The job's own, or one that trying again cannot fix without someone
    /// changing something (GitHub refused the request as such, the pool is
    /// gone, GitHub never gave the job to its runner): counted.
    Job,
    /// GitHub or the provider failing (5xx, rate limits, timeouts, transport,
    /// capacity): not the job's; it backs off and tries again until the job
    /// runs or is cancelled.
    Infrastructure,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Job => "job",
            FailureKind::Infrastructure => "infrastructure",
        }
    }

    fn parse(text: &str) -> Option<FailureKind> {
        match text {
            "job" => Some(FailureKind::Job),
            "infrastructure" => Some(FailureKind::Infrastructure),
            _ => None,
        }
    }
}

/// A job the scheduler still has to care about, with its notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveJob {
    pub record: JobRecord,
    pub notes: JobNotes,
}

/// One entry of a runner's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerEvent {
    pub runner_id: RunnerId,
    pub at: Timestamp,
    /// `created`, `registered`, `launched`, `ready`, `busy`, `stolen`,
    /// `draining`, `gone`, `kept_busy`, `launch_failed`…
    pub kind: String,
    pub message: String,
}

const RUNNER_COLUMNS: &str = "runner_id, pool, state, generation, for_job, job_id, github_id, \
     reason, created_at_ms, jit_minted_at_ms, launched_at_ms, ready_at_ms, busy_at_ms, gone_at_ms";

impl Store {
    /// Persists newly decided runners, each with its `created` event, in
    /// one transaction (one commit for a whole burst). Inserting an id that
    /// exists is a no-op (the step is idempotent); returns how many were new.
    pub async fn runner_insert_batch(
        &self,
        runners: &[(RunnerRecord, String)],
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await.map_err(StoreError::query("inserting runners"))?;
        let mut inserted = 0;
        for (runner, message) in runners {
            let result = insert_query(runner)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("inserting a runner"))?;
            if result.rows_affected() == 0 {
                continue;
            }
            inserted += result.rows_affected();
            event_query(&runner.id, runner.created_at, "created", message)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("recording a runner event"))?;
        }
        tx.commit().await.map_err(StoreError::query("inserting runners"))?;
        Ok(inserted)
    }

    /// Persists one newly decided runner; see [`Store::runner_insert_batch`].
    pub async fn runner_insert(&self, runner: &RunnerRecord) -> Result<bool, StoreError> {
        let result = insert_query(runner)
            .execute(self.pool())
            .await
            .map_err(StoreError::query("inserting a runner"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Replaces `current` by `next` if the stored row still has
    /// `current.generation`; `next` gets generation + 1. Returns `Ok(None)`
    /// when someone else wrote first (re-read and decide again), or the
    /// written record.
    /// `event` (kind, message) is recorded in the same transaction when the
    /// write applies.
    pub async fn runner_write(
        &self,
        current: &RunnerRecord,
        next: &RunnerRecord,
        event: Option<(&str, &str)>,
    ) -> Result<Option<RunnerRecord>, StoreError> {
        if current.state != next.state && !current.state.can_transition_to(next.state) {
            return Err(StoreError::RunnerTransition {
                runner_id: current.id.clone(),
                from: current.state,
                to: next.state,
            });
        }
        let mut written = next.clone();
        written.generation = current.generation + 1;
        let mut tx = self.pool().begin().await.map_err(StoreError::query("updating a runner"))?;
        let result = sqlx::query(
            "UPDATE runners SET state = $1, generation = $2, job_id = $3, github_id = $4, \
               reason = $5, jit_minted_at_ms = $6, launched_at_ms = $7, ready_at_ms = $8, \
               busy_at_ms = $9, gone_at_ms = $10 \
             WHERE runner_id = $11 AND generation = $12",
        )
        .bind(written.state.as_str())
        .bind(written.generation)
        .bind(written.job.map(|j| j.0))
        .bind(written.github_id.map(|g| g.0))
        .bind(written.reason.as_deref())
        .bind(written.jit_minted_at.map(to_ms))
        .bind(written.launched_at.map(to_ms))
        .bind(written.ready_at.map(to_ms))
        .bind(written.busy_at.map(to_ms))
        .bind(written.gone_at.map(to_ms))
        .bind(current.id.as_str())
        .bind(current.generation)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("updating a runner"))?;
        if result.rows_affected() != 1 {
            return Ok(None);
        }
        if let Some((kind, message)) = event {
            event_query(&current.id, chrono::Utc::now(), kind, message)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("recording a runner event"))?;
        }
        tx.commit().await.map_err(StoreError::query("updating a runner"))?;
        Ok(Some(written))
    }

    pub async fn runner_get(&self, id: &RunnerId) -> Result<Option<RunnerRecord>, StoreError> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE runner_id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("reading a runner"))?;
        row.map(|row| decode_runner(&row)).transpose()
    }

    /// Every runner that is not `gone`.
    pub async fn runner_list_live(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE state <> 'gone' ORDER BY runner_id"
        );
        self.runner_query(&sql, "listing live runners").await
    }

    /// The most recently created runners, newest first (for the API).
    pub async fn runner_list_recent(&self, limit: u32) -> Result<Vec<RunnerRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUNNER_COLUMNS} FROM runners ORDER BY created_at_ms DESC, runner_id LIMIT {}",
            limit.clamp(1, 10_000)
        );
        self.runner_query(&sql, "listing runners").await
    }

    /// Runners made for `job` or that ran it, oldest first.
    pub async fn runner_list_for_job(&self, job: JobId) -> Result<Vec<RunnerRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE for_job = $1 OR job_id = $1 \
             ORDER BY created_at_ms, runner_id"
        );
        let rows = sqlx::query(&sql)
            .bind(job.0)
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("listing a job's runners"))?;
        rows.iter().map(decode_runner).collect()
    }

    /// For each pool, when its last runner that ran a job was torn down:
    /// what `keep_warm` counts from, so a restart does not forget it.
    pub async fn runner_last_job_end_by_pool(
        &self,
    ) -> Result<Vec<(PoolName, Timestamp)>, StoreError> {
        let rows = sqlx::query(
            "SELECT pool, MAX(gone_at_ms) AS at_ms FROM runners \
             WHERE state = 'gone' AND job_id IS NOT NULL AND gone_at_ms IS NOT NULL GROUP BY pool",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("reading the last job end per pool"))?;
        Ok(rows.iter().map(|row| (PoolName(row.get("pool")), from_ms(row.get("at_ms")))).collect())
    }

    /// How many runners are in each state.
    pub async fn runner_count_by_state(&self) -> Result<Vec<(RunnerState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM runners GROUP BY state")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("counting runners"))?;
        rows.iter()
            .map(|row| {
                let state: String = row.get("state");
                let state = state.parse().map_err(|_| StoreError::CorruptRunner {
                    runner_id: format!("(state {state})"),
                })?;
                Ok((state, row.get::<i64, _>("n")))
            })
            .collect()
    }

    async fn runner_query(
        &self,
        sql: &str,
        operation: &'static str,
    ) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows =
            sqlx::query(sql).fetch_all(self.pool()).await.map_err(StoreError::query(operation))?;
        rows.iter().map(decode_runner).collect()
    }

    pub async fn runner_event_record(
        &self,
        runner_id: &RunnerId,
        at: Timestamp,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        event_query(runner_id, at, kind, message)
            .execute(self.pool())
            .await
            .map_err(StoreError::query("recording a runner event"))?;
        Ok(())
    }

    /// A runner's history, oldest first.
    pub async fn runner_event_list(
        &self,
        runner_id: &RunnerId,
    ) -> Result<Vec<RunnerEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, kind, message FROM runner_events WHERE runner_id = $1 ORDER BY event_id",
        )
        .bind(runner_id.as_str())
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("listing runner events"))?;
        Ok(rows
            .iter()
            .map(|row| RunnerEvent {
                runner_id: runner_id.clone(),
                at: from_ms(row.get("at_ms")),
                kind: row.get("kind"),
                message: row.get("message"),
            })
            .collect())
    }

    /// Whether a delivery with this id was recorded (recovery skips
    /// redelivering those).
    pub async fn delivery_known(&self, id: &hangar_types::DeliveryId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM deliveries WHERE delivery_id = $1")
            .bind(id.0.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("looking up a delivery"))?;
        Ok(row.is_some())
    }

    /// Jobs the scheduler must look at: every job not completed, and
    /// completed ones still holding a live runner; with their notes.
    pub async fn job_list_active(&self) -> Result<Vec<ActiveJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT j.job_id, j.record, l.reason, l.launch_failures, l.infra_failures, \
               l.last_failure_at_ms, l.last_failure_kind, l.last_error \
             FROM jobs j LEFT JOIN job_lifecycle l ON l.job_id = j.job_id \
             WHERE j.state <> 'completed' \
                OR j.job_id IN (SELECT job_id FROM runners WHERE state <> 'gone' AND job_id IS NOT NULL) \
             ORDER BY j.job_id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("listing active jobs"))?;
        rows.iter()
            .map(|row| {
                let job_id = JobId(row.get("job_id"));
                let record: String = row.get("record");
                let record = serde_json::from_str(&record)
                    .map_err(|source| StoreError::Corrupt { job_id, source })?;
                Ok(ActiveJob { record, notes: decode_notes(row) })
            })
            .collect()
    }

    /// The scheduler's notes on `job` (default when it has none).
    pub async fn job_notes_get(&self, job: JobId) -> Result<JobNotes, StoreError> {
        let row = sqlx::query(
            "SELECT reason, launch_failures, infra_failures, last_failure_at_ms, \
               last_failure_kind, last_error \
             FROM job_lifecycle WHERE job_id = $1",
        )
        .bind(job.0)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("reading a job's notes"))?;
        Ok(row.map(|row| decode_notes(&row)).unwrap_or_default())
    }

    /// Sets (or clears) the reason each job has no runner, in one transaction.
    pub async fn job_reason_set_batch(
        &self,
        reasons: &[(JobId, Option<String>)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await.map_err(StoreError::query("setting reasons"))?;
        for (job, reason) in reasons {
            sqlx::query(
                "INSERT INTO job_lifecycle (job_id, reason, launch_failures, updated_at_ms) \
                 VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (job_id) DO UPDATE SET reason = excluded.reason, \
                   updated_at_ms = excluded.updated_at_ms",
            )
            .bind(job.0)
            .bind(reason.as_deref())
            .bind(to_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("setting a job's reason"))?;
        }
        tx.commit().await.map_err(StoreError::query("setting reasons"))
    }

    /// Records one failed launch (or never-picked-up runner) of `job`, of
    /// `kind`: it counts as a launch failure or an infrastructure failure.
    pub async fn job_launch_failure_record(
        &self,
        job: JobId,
        kind: FailureKind,
        error: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (job_failures, infra_failures) = match kind {
            FailureKind::Job => (1_i64, 0_i64),
            FailureKind::Infrastructure => (0, 1),
        };
        sqlx::query(
            "INSERT INTO job_lifecycle (job_id, launch_failures, infra_failures, \
               last_failure_at_ms, last_failure_kind, last_error, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $4) \
             ON CONFLICT (job_id) DO UPDATE SET \
               launch_failures = job_lifecycle.launch_failures + excluded.launch_failures, \
               infra_failures = job_lifecycle.infra_failures + excluded.infra_failures, \
               last_failure_at_ms = excluded.last_failure_at_ms, \
               last_failure_kind = excluded.last_failure_kind, \
               last_error = excluded.last_error, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(job.0)
        .bind(job_failures)
        .bind(infra_failures)
        .bind(to_ms(now))
        .bind(kind.as_str())
        .bind(error)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("recording a failed launch"))?;
        Ok(())
    }
}

fn decode_notes(row: &AnyRow) -> JobNotes {
    let count = |column: &str| {
        let n: Option<i64> = row.get(column);
        u32::try_from(n.unwrap_or(0)).unwrap_or(u32::MAX)
    };
    let kind: Option<String> = row.get("last_failure_kind");
    JobNotes {
        reason: row.get("reason"),
        launch_failures: count("launch_failures"),
        infra_failures: count("infra_failures"),
        last_failure_at: row.get::<Option<i64>, _>("last_failure_at_ms").map(from_ms),
        last_failure_kind: kind.as_deref().and_then(FailureKind::parse),
        last_error: row.get("last_error"),
    }
}

fn decode_runner(row: &AnyRow) -> Result<RunnerRecord, StoreError> {
    let id: String = row.get("runner_id");
    let corrupt = || StoreError::CorruptRunner { runner_id: id.clone() };
    let runner_id = RunnerId::try_from(id.clone()).map_err(|_| corrupt())?;
    let state: String = row.get("state");
    let ms = |col: &str| row.get::<Option<i64>, _>(col).map(from_ms);
    Ok(RunnerRecord {
        id: runner_id,
        pool: PoolName(row.get("pool")),
        state: state.parse().map_err(|_| corrupt())?,
        generation: row.get("generation"),
        for_job: row.get::<Option<i64>, _>("for_job").map(JobId),
        job: row.get::<Option<i64>, _>("job_id").map(JobId),
        github_id: row.get::<Option<i64>, _>("github_id").map(GitHubRunnerId),
        reason: row.get("reason"),
        created_at: from_ms(row.get("created_at_ms")),
        jit_minted_at: ms("jit_minted_at_ms"),
        launched_at: ms("launched_at_ms"),
        ready_at: ms("ready_at_ms"),
        busy_at: ms("busy_at_ms"),
        gone_at: ms("gone_at_ms"),
    })
}

fn insert_query(runner: &RunnerRecord) -> AnyQuery<'_> {
    sqlx::query(
        "INSERT INTO runners (runner_id, pool, state, generation, for_job, job_id, github_id, \
           reason, created_at_ms, jit_minted_at_ms, launched_at_ms, ready_at_ms, busy_at_ms, \
           gone_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (runner_id) DO NOTHING",
    )
    .bind(runner.id.as_str())
    .bind(runner.pool.0.as_str())
    .bind(runner.state.as_str())
    .bind(runner.generation)
    .bind(runner.for_job.map(|j| j.0))
    .bind(runner.job.map(|j| j.0))
    .bind(runner.github_id.map(|g| g.0))
    .bind(runner.reason.as_deref())
    .bind(to_ms(runner.created_at))
    .bind(runner.jit_minted_at.map(to_ms))
    .bind(runner.launched_at.map(to_ms))
    .bind(runner.ready_at.map(to_ms))
    .bind(runner.busy_at.map(to_ms))
    .bind(runner.gone_at.map(to_ms))
}

fn event_query<'q>(
    runner_id: &'q RunnerId,
    at: Timestamp,
    kind: &'q str,
    message: &'q str,
) -> AnyQuery<'q> {
    sqlx::query(
        "INSERT INTO runner_events (runner_id, at_ms, kind, message) VALUES ($1, $2, $3, $4)",
    )
    .bind(runner_id.as_str())
    .bind(to_ms(at))
    .bind(kind)
    .bind(message)
}
