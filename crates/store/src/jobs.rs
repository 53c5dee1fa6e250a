//! Jobs, deliveries and the event log.
//!
//! A delivery is recorded, and the job it is about is folded forward, in
//! one transaction: either both are durable or neither is. The job row is
//! written conditionally on its generation, so two writers (two replicas on
//! PostgreSQL) can never overwrite each other's merge; the loser re-reads and
//! merges again.

use hangar_types::{DeliveryId, JobEvent, JobId, JobRecord, JobState, Merge, Timestamp};
use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError, from_ms, to_ms};

/// A delivery that passed the signature check and parsed.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery_id: DeliveryId,
    /// `X-GitHub-Event`.
    pub event: String,
    pub action: Option<String>,
    pub received_at: Timestamp,
    /// The JSON payload exactly as GitHub sent it.
    pub payload: String,
    /// Set for `workflow_job` deliveries.
    pub job_event: Option<JobEvent>,
}

/// What recording a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The delivery id was seen before (a redelivery): nothing changed.
    Duplicate,
    /// Stored. For a `workflow_job` delivery, the job as it is now and
    /// whether this delivery changed it.
    Recorded { job: Option<Box<JobRecord>>, job_changed: bool },
}

/// One entry of a job's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub action: Option<String>,
    pub received_at: Timestamp,
    pub payload: String,
}

/// Which jobs to list. Pages go from the newest job id down.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub repository: Option<String>,
    /// Only jobs with an id below this (the `next` of the previous page).
    pub before: Option<JobId>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next: Option<JobId>,
}

/// How often a generation-checked write is retried when another writer
/// changed the job in between.
const MAX_ATTEMPTS: u32 = 8;

impl Store {
    /// Records a delivery and folds its job event into the job, durably,
    /// before returning. A redelivery changes nothing.
    pub async fn delivery_record(
        &self,
        delivery: NewDelivery,
    ) -> Result<DeliveryOutcome, StoreError> {
        self.inner.writer.submit(delivery).await
    }

    pub async fn job_get(&self, job_id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT record FROM jobs WHERE job_id = $1")
            .bind(job_id.0)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("reading a job"))?;
        row.map(|row| decode_record(job_id, &row)).transpose()
    }

    pub async fn job_list(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        let rows = sqlx::query(
            "SELECT job_id, record FROM jobs \
             WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR repository = $2) \
               AND ($3 IS NULL OR job_id < $3) \
             ORDER BY job_id DESC LIMIT $4",
        )
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.repository.as_deref())
        .bind(filter.before.map(|id| id.0))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("listing jobs"))?;
        let mut jobs = rows
            .iter()
            .map(|row| decode_record(JobId(row.get("job_id")), row))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|job| job.fields.id)
        } else {
            None
        };
        Ok(JobPage { jobs, next })
    }

    /// Every delivery about `job_id`, oldest first.
    pub async fn job_timeline(&self, job_id: JobId) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT delivery_id, event, action, received_at_ms, payload FROM deliveries \
             WHERE job_id = $1 ORDER BY received_at_ms, delivery_id",
        )
        .bind(job_id.0)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("reading a job's timeline"))?;
        Ok(rows
            .iter()
            .map(|row| DeliveryRecord {
                delivery_id: DeliveryId(row.get("delivery_id")),
                event: row.get("event"),
                action: row.get("action"),
                received_at: from_ms(row.get("received_at_ms")),
                payload: row.get("payload"),
            })
            .collect())
    }

    /// How many jobs are in each state (states with none are left out).
    pub async fn job_count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("counting jobs"))?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in &rows {
            let state: String = row.get("state");
            if let Ok(state) = state.parse() {
                counts.push((state, row.get("n")));
            }
        }
        Ok(counts)
    }

    pub async fn delivery_count(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) AS n FROM deliveries")
            .fetch_one(self.pool())
            .await
            .map(|row| row.get("n"))
            .map_err(StoreError::query("counting deliveries"))
    }
}

/// Records one delivery inside the writer's transaction.
pub(crate) async fn delivery_write(
    tx: &mut Transaction<'_, Any>,
    delivery: &NewDelivery,
) -> Result<DeliveryOutcome, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO deliveries (delivery_id, event, action, job_id, received_at_ms, payload) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id) DO NOTHING",
    )
    .bind(&delivery.delivery_id.0)
    .bind(&delivery.event)
    .bind(delivery.action.as_deref())
    .bind(delivery.job_event.as_ref().map(|e| e.job.id.0))
    .bind(to_ms(delivery.received_at))
    .bind(&delivery.payload)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("recording a delivery"))?
    .rows_affected();
    if inserted == 0 {
        return Ok(DeliveryOutcome::Duplicate);
    }
    let Some(event) = &delivery.job_event else {
        return Ok(DeliveryOutcome::Recorded { job: None, job_changed: false });
    };
    let (job, job_changed) = job_write(tx, event).await?;
    Ok(DeliveryOutcome::Recorded { job: Some(Box::new(job)), job_changed })
}

/// Folds `event` into its job with a generation-checked write. Returns the
/// job as it is now and whether the event changed it.
async fn job_write(
    tx: &mut Transaction<'_, Any>,
    event: &JobEvent,
) -> Result<(JobRecord, bool), StoreError> {
    let job_id = event.job.id;
    for _ in 0..MAX_ATTEMPTS {
        let current = sqlx::query("SELECT record FROM jobs WHERE job_id = $1")
            .bind(job_id.0)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("reading a job"))?
            .map(|row| decode_record(job_id, &row))
            .transpose()?;
        let applied = match JobRecord::merge(current.as_ref(), event) {
            Merge::Unchanged => {
                let current = current.expect("merge only reports Unchanged for a stored job");
                return Ok((current, false));
            }
            Merge::Created(next) => {
                let rows = sqlx::query(
                    "INSERT INTO jobs (job_id, state, repository, generation, updated_at_ms, record) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
                )
                .bind(job_id.0)
                .bind(next.state.as_str())
                .bind(&next.fields.repository)
                .bind(next.generation)
                .bind(to_ms(event.received_at))
                .bind(encode_record(&next))
                .execute(&mut **tx)
                .await
                .map_err(StoreError::query("creating a job"))?;
                (rows.rows_affected() == 1).then_some(next)
            }
            Merge::Updated(next) => {
                let rows = sqlx::query(
                    "UPDATE jobs SET state = $1, repository = $2, generation = $3, \
                     updated_at_ms = $4, record = $5 WHERE job_id = $6 AND generation = $7",
                )
                .bind(next.state.as_str())
                .bind(&next.fields.repository)
                .bind(next.generation)
                .bind(to_ms(event.received_at))
                .bind(encode_record(&next))
                .bind(job_id.0)
                .bind(next.generation - 1)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::query("updating a job"))?;
                (rows.rows_affected() == 1).then_some(next)
            }
        };
        if let Some(job) = applied {
            return Ok((job, true));
        }
        tracing::debug!(job_id = job_id.0, "Job changed concurrently; merging again.");
    }
    Err(StoreError::Contended { job_id, attempts: MAX_ATTEMPTS })
}

pub(crate) fn encode_record(record: &JobRecord) -> String {
    serde_json::to_string(record).expect("a JobRecord always serializes")
}

pub(crate) fn decode_record(
    job_id: JobId,
    row: &sqlx::any::AnyRow,
) -> Result<JobRecord, StoreError> {
    let record: String = row.get("record");
    serde_json::from_str(&record).map_err(|source| StoreError::Corrupt { job_id, source })
}
