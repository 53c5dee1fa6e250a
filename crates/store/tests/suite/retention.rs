//! The retention pass, on every backend: history older than the cutoff
//! goes, what is still live stays, and deletes run in batches.

use std::time::Duration;

use hangar_store::{NewDelivery, RetentionReport, retention, retention_schedule};
use hangar_types::{DeliveryId, JobAction, JobId, PoolName, RunnerId, RunnerState};

use super::{Harness, at, job_event, open};

pub(super) async fn retention_deletes_old_history_and_keeps_what_is_live(harness: &Harness) {
    let store = open(harness).await;
    // Old: job 1 completed; job 2 still queued; job 4 completed, but a live
    // runner of ours still holds it. Recent: job 3 completed.
    for (job, action, id, received) in [
        (1, JobAction::Queued, "old-q1", 1),
        (1, JobAction::Completed, "old-c1", 2),
        (2, JobAction::Queued, "old-q2", 3),
        (4, JobAction::Completed, "old-c4", 4),
        (3, JobAction::Completed, "new-c3", 100),
    ] {
        store.delivery_record(job_event(job, action, id, received)).await.unwrap();
    }
    let pool = PoolName("linux".into());
    let record = |n: u64, job: i64, state: RunnerState, gone: Option<i64>| {
        let created = at(i64::try_from(n).expect("small"));
        let mut r = hangar_types::RunnerRecord::planned(
            RunnerId::new(&pool, n),
            pool.clone(),
            Some(JobId(job)),
            created,
        );
        r.state = state;
        r.job = Some(JobId(job));
        r.gone_at = gone.map(at);
        (r, format!("decided for job {job}"))
    };
    let old_gone = record(1, 1, RunnerState::Gone, Some(5));
    let live = record(2, 4, RunnerState::Busy, None);
    let recent_gone = record(3, 3, RunnerState::Gone, Some(100));
    store
        .runner_insert_batch(&[old_gone.clone(), live.clone(), recent_gone.clone()])
        .await
        .unwrap();
    store.runner_event_record(&recent_gone.0.id, at(100), "gone", "job 3 completed").await.unwrap();
    let orphan = RunnerId::new(&pool, 9);
    store.runner_event_record(&orphan, at(6), "gone", "orphan instance").await.unwrap();
    store.job_reason_set_batch(&[(JobId(1), Some("done".into()))], at(6)).await.unwrap();

    let report = store.retention_pass(at(50), Duration::from_secs(40)).await.unwrap();
    assert_eq!(
        report,
        RetentionReport { deliveries: 4, runner_events: 3, runners: 1, jobs: 1 },
        "cutoff at 10 s: the old deliveries, the created events of the gone runners and the \
         orphan's event, the old gone runner, job 1"
    );
    assert_eq!(store.delivery_count().await.unwrap(), 1);
    assert!(store.delivery_known(&DeliveryId("new-c3".into())).await.unwrap());
    assert_eq!(store.job_get(JobId(1)).await.unwrap(), None);
    assert_eq!(store.job_notes_get(JobId(1)).await.unwrap(), Default::default());
    for kept in [2, 3, 4] {
        assert!(store.job_get(JobId(kept)).await.unwrap().is_some(), "job {kept} kept");
    }
    assert_eq!(store.runner_get(&old_gone.0.id).await.unwrap(), None);
    assert!(store.runner_get(&live.0.id).await.unwrap().is_some());
    assert!(store.runner_get(&recent_gone.0.id).await.unwrap().is_some());
    let live_events = store.runner_event_list(&live.0.id).await.unwrap();
    assert_eq!(live_events.len(), 1, "a live runner keeps its history");
    assert!(store.runner_event_list(&orphan).await.unwrap().is_empty());
    assert_eq!(store.runner_event_list(&recent_gone.0.id).await.unwrap().len(), 1);

    let again = store.retention_pass(at(50), Duration::from_secs(40)).await.unwrap();
    assert_eq!(again, RetentionReport::default(), "a second pass finds nothing");
}

/// More rows than one delete batch: all of them go, over several batches.
pub(super) async fn retention_deletes_in_batches(harness: &Harness) {
    let store = std::sync::Arc::new(open(harness).await);
    let n = retention::BATCH * 2 + 100;
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        writes.spawn(async move {
            let received = i64::try_from(i % 10).expect("small");
            let ping = NewDelivery {
                delivery_id: DeliveryId(format!("ping-{i}")),
                event: "ping".into(),
                action: None,
                received_at: at(received),
                payload: "{}".into(),
                job_event: None,
            };
            store.delivery_record(ping).await.unwrap();
        });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("write task");
    }
    let report = store.retention_pass(at(3600), Duration::from_secs(3000)).await.unwrap();
    assert_eq!(report.deliveries, n);
    assert_eq!(store.delivery_count().await.unwrap(), 0);
}

/// The task the composition root owns: a pass at start, then it waits
/// for the next one and ends when its token is cancelled.
pub(super) async fn the_retention_task_runs_a_pass_at_start_and_stops_when_told(harness: &Harness) {
    let store = open(harness).await;
    // Received at `at(0)`, long before now: older than an hour of retention.
    store.delivery_record(job_event(1, JobAction::Completed, "ancient", 0)).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task =
        tokio::spawn(retention_schedule(store.clone(), Duration::from_secs(3600), stop.clone()));
    // Deliveries go first, the job a few statements later.
    hangar_test_harness::wait_for("the first pass", Duration::from_secs(30), || async {
        let deliveries_gone = store.delivery_count().await.ok()? == 0;
        let job_gone = store.job_get(JobId(1)).await.ok()?.is_none();
        (deliveries_gone && job_gone).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends when cancelled")
        .expect("the task did not panic");
}
