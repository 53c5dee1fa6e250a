//! The batched write path for deliveries: a whole batch in a handful of
//! statements instead of a handful per delivery.
//!
//! sqlx runs every SQLite statement on the connection's own thread, so each
//! statement costs two thread hand-offs; per delivery that dominated the
//! cost of intake. Here a batch of N deliveries takes three statements:
//! 1. one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING delivery_id`
//!    (a redelivery is the row that is not returned);
//! 2. one `SELECT` of every job those deliveries touch;
//! 3. one multi-row upsert of the changed jobs, each conditional on its
//!    generation (`WHERE jobs.generation = excluded.generation - 1`).
//!
//! A job's generation goes up by one per write, however many of its events
//! one batch folds in. If any conditional write did not apply (another
//! writer changed the job in between: possible only with several replicas
//! on PostgreSQL), the batch fails with [`StoreError::Contended`] and the
//! writer redoes each delivery alone on the per-delivery path, which re-reads
//! and retries.

use std::collections::{HashMap, HashSet};

use hangar_types::{JobId, JobRecord, Merge};
use sqlx::{Any, Row, Transaction};

use crate::jobs::{DeliveryOutcome, NewDelivery, decode_record, encode_record};
use crate::{StoreError, to_ms};

/// Records `deliveries` inside `tx`, returning one outcome per delivery.
pub(crate) async fn deliveries_write(
    tx: &mut Transaction<'_, Any>,
    deliveries: &[&NewDelivery],
) -> Result<Vec<DeliveryOutcome>, StoreError> {
    let fresh = deliveries_insert(tx, deliveries).await?;
    let job_ids: Vec<JobId> = {
        let mut seen = HashSet::new();
        fresh
            .iter()
            .zip(deliveries)
            .filter(|(fresh, _)| **fresh)
            .filter_map(|(_, d)| d.job_event.as_ref().map(|e| e.job.id))
            .filter(|id| seen.insert(*id))
            .collect()
    };
    let mut current = jobs_read(tx, &job_ids).await?;
    let stored_generation: HashMap<JobId, i64> = current
        .iter()
        .map(|(id, record)| (*id, record.as_ref().map_or(0, |r| r.generation)))
        .collect();

    // Fold every fresh event into its job, in arrival order.
    let mut changed: HashMap<JobId, bool> = HashMap::new();
    let mut touched_by = Vec::with_capacity(deliveries.len());
    for (delivery, fresh) in deliveries.iter().zip(&fresh) {
        let Some(event) = delivery.job_event.as_ref().filter(|_| *fresh) else {
            touched_by.push(None);
            continue;
        };
        let job = current.entry(event.job.id).or_insert(None);
        let did_change = match JobRecord::merge(job.as_ref(), event) {
            Merge::Created(next) | Merge::Updated(next) => {
                *job = Some(next);
                true
            }
            Merge::Unchanged => false,
        };
        *changed.entry(event.job.id).or_default() |= did_change;
        touched_by.push(Some((event.job.id, did_change)));
    }

    // One write per changed job, with the generation one above the stored one.
    let changed_ids: Vec<JobId> =
        job_ids.iter().copied().filter(|id| changed.get(id).copied().unwrap_or(false)).collect();
    for id in &changed_ids {
        let record = current.get_mut(id).and_then(Option::as_mut).expect("merged");
        record.generation = stored_generation[id] + 1;
    }
    let writes: Vec<&JobRecord> =
        changed_ids.iter().filter_map(|id| current.get(id).and_then(Option::as_ref)).collect();
    jobs_upsert(tx, &writes, deliveries).await?;

    Ok(touched_by
        .into_iter()
        .zip(&fresh)
        .map(|(touched, fresh)| match (fresh, touched) {
            (false, _) => DeliveryOutcome::Duplicate,
            (true, None) => DeliveryOutcome::Recorded { job: None, job_changed: false },
            (true, Some((id, job_changed))) => {
                let job = current.get(&id).and_then(Option::clone).map(Box::new);
                DeliveryOutcome::Recorded { job, job_changed }
            }
        })
        .collect())
}

/// Inserts the deliveries; true for each one that was new. A delivery id
/// repeated inside the batch counts once, at its first place.
async fn deliveries_insert(
    tx: &mut Transaction<'_, Any>,
    deliveries: &[&NewDelivery],
) -> Result<Vec<bool>, StoreError> {
    let mut first = HashSet::new();
    let unique: Vec<&NewDelivery> =
        deliveries.iter().copied().filter(|d| first.insert(&d.delivery_id)).collect();
    let mut sql = String::from(
        "INSERT INTO deliveries (delivery_id, event, action, job_id, received_at_ms, payload) VALUES ",
    );
    push_tuples(&mut sql, unique.len(), 6);
    sql.push_str(" ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id");
    let mut query = sqlx::query(&sql);
    for d in &unique {
        query = query
            .bind(&d.delivery_id.0)
            .bind(&d.event)
            .bind(d.action.as_deref())
            .bind(d.job_event.as_ref().map(|e| e.job.id.0))
            .bind(to_ms(d.received_at))
            .bind(&d.payload);
    }
    let rows =
        query.fetch_all(&mut **tx).await.map_err(StoreError::query("recording deliveries"))?;
    let inserted: HashSet<String> = rows.iter().map(|row| row.get("delivery_id")).collect();
    let mut claimed = HashSet::new();
    Ok(deliveries
        .iter()
        .map(|d| inserted.contains(&d.delivery_id.0) && claimed.insert(&d.delivery_id))
        .collect())
}

/// The stored records of `ids` (absent ones map to `None`).
async fn jobs_read(
    tx: &mut Transaction<'_, Any>,
    ids: &[JobId],
) -> Result<HashMap<JobId, Option<JobRecord>>, StoreError> {
    let mut found: HashMap<JobId, Option<JobRecord>> = ids.iter().map(|id| (*id, None)).collect();
    if ids.is_empty() {
        return Ok(found);
    }
    let mut sql = String::from("SELECT job_id, record FROM jobs WHERE job_id IN (");
    push_list(&mut sql, 1, ids.len());
    sql.push(')');
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id.0);
    }
    let rows = query.fetch_all(&mut **tx).await.map_err(StoreError::query("reading jobs"))?;
    for row in &rows {
        let id = JobId(row.get("job_id"));
        found.insert(id, Some(decode_record(id, row)?));
    }
    Ok(found)
}

/// Writes the changed jobs, each only if its stored generation is still the
/// one we read; any that did not apply fails the batch.
async fn jobs_upsert(
    tx: &mut Transaction<'_, Any>,
    jobs: &[&JobRecord],
    deliveries: &[&NewDelivery],
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let updated_at = deliveries.iter().map(|d| to_ms(d.received_at)).max().unwrap_or(0);
    let mut sql = String::from(
        "INSERT INTO jobs (job_id, state, repository, generation, updated_at_ms, record) VALUES ",
    );
    push_tuples(&mut sql, jobs.len(), 6);
    sql.push_str(
        " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, \
         repository = excluded.repository, generation = excluded.generation, \
         updated_at_ms = excluded.updated_at_ms, record = excluded.record \
         WHERE jobs.generation = excluded.generation - 1 RETURNING job_id",
    );
    let mut query = sqlx::query(&sql);
    for job in jobs {
        query = query
            .bind(job.fields.id.0)
            .bind(job.state.as_str())
            .bind(&job.fields.repository)
            .bind(job.generation)
            .bind(updated_at)
            .bind(encode_record(job));
    }
    let rows = query.fetch_all(&mut **tx).await.map_err(StoreError::query("writing jobs"))?;
    if rows.len() != jobs.len() {
        let applied: HashSet<i64> = rows.iter().map(|row| row.get("job_id")).collect();
        let lost = jobs.iter().find(|j| !applied.contains(&j.fields.id.0)).expect("one lost");
        return Err(StoreError::Contended { job_id: lost.fields.id, attempts: 1 });
    }
    Ok(())
}

/// `($1, …, $k), ($k+1, …), …` for `rows` rows of `width` columns.
fn push_tuples(sql: &mut String, rows: usize, width: usize) {
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        push_list(sql, row * width + 1, width);
        sql.push(')');
    }
}

/// `$first, $first+1, …` (`count` placeholders).
fn push_list(sql: &mut String, first: usize, count: usize) {
    use std::fmt::Write;
    for i in 0..count {
        let sep = if i == 0 { "" } else { ", " };
        write!(sql, "{sep}${}", first + i).expect("writing to a String");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_row_by_row() {
        let mut sql = String::new();
        super::push_tuples(&mut sql, 2, 3);
        assert_eq!(sql, "($1, $2, $3), ($4, $5, $6)");
    }
}
