//! Runner rows, their events and the scheduler's job notes, on every backend.

use hangar_store::{FailureKind, StoreError};
use hangar_types::{
    GitHubRunnerId, JobAction, JobId, PoolName, RunnerId, RunnerRecord, RunnerState,
};

use super::{Harness, at, job_event, open};

fn runner(n: u64, for_job: Option<i64>) -> RunnerRecord {
    let pool = PoolName("linux".into());
    let seconds = i64::try_from(n).expect("small");
    RunnerRecord::planned(RunnerId::new(&pool, n), pool, for_job.map(JobId), at(seconds))
}

pub(super) async fn runner_writes_follow_the_state_machine_and_generations(harness: &Harness) {
    let store = open(harness).await;
    let planned = runner(1, Some(7));
    let batch = vec![(planned.clone(), "decided for job 7".to_owned())];
    assert_eq!(store.runner_insert_batch(&batch).await.unwrap(), 1);
    assert_eq!(store.runner_insert_batch(&batch).await.unwrap(), 0, "idempotent insert");
    assert_eq!(store.runner_get(&planned.id).await.unwrap(), Some(planned.clone()));

    let mut registered = planned.clone();
    registered.state = RunnerState::Registered;
    registered.github_id = Some(GitHubRunnerId(42));
    registered.jit_minted_at = Some(at(2));
    let written = store.runner_write(&planned, &registered, None).await.unwrap().expect("applies");
    assert_eq!(written.generation, 2);
    // A second writer holding the old generation loses and learns it.
    assert_eq!(store.runner_write(&planned, &registered, None).await.unwrap(), None);
    // A transition the state machine forbids is refused before touching the row.
    let mut back = written.clone();
    back.state = RunnerState::Planned;
    let refused = store.runner_write(&written, &back, None).await;
    assert!(matches!(refused, Err(StoreError::RunnerTransition { .. })), "{refused:?}");

    let mut gone = written.clone();
    gone.state = RunnerState::Draining;
    gone.reason = Some("test".into());
    let draining =
        store.runner_write(&written, &gone, Some(("draining", "test"))).await.unwrap().unwrap();
    assert_eq!(store.runner_list_live().await.unwrap().len(), 1);
    let mut done = draining.clone();
    done.state = RunnerState::Gone;
    done.gone_at = Some(at(9));
    store.runner_write(&draining, &done, Some(("gone", "test"))).await.unwrap().unwrap();
    assert!(store.runner_list_live().await.unwrap().is_empty());
    let stored = store.runner_get(&planned.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.generation, stored.github_id),
        (RunnerState::Gone, 4, Some(GitHubRunnerId(42)))
    );
    let kinds: Vec<String> =
        store.runner_event_list(&planned.id).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["created", "draining", "gone"]);
    assert_eq!(store.runner_list_for_job(JobId(7)).await.unwrap().len(), 1);
    // It never took a job: keep_warm does not count from it.
    assert!(store.runner_last_job_end_by_pool().await.unwrap().is_empty());
}

pub(super) async fn the_last_job_end_per_pool_survives_in_the_store(harness: &Harness) {
    let store = open(harness).await;
    // Pool `linux`: two runners that ran jobs, gone at 20 s and 30 s, and a
    // live one; pool `gpu`: one that ran a job.
    let mut rows = Vec::new();
    for (n, pool, job, gone) in
        [(1, "linux", 11, Some(20)), (2, "linux", 12, Some(30)), (3, "linux", 13, None)]
            .into_iter()
            .chain([(4, "gpu", 14, Some(25))])
    {
        let pool = PoolName(pool.into());
        let mut r = RunnerRecord::planned(RunnerId::new(&pool, n), pool, Some(JobId(job)), at(1));
        r.job = Some(JobId(job));
        if let Some(gone) = gone {
            r.state = RunnerState::Gone;
            r.gone_at = Some(at(gone));
        } else {
            r.state = RunnerState::Busy;
        }
        rows.push((r, "test".to_owned()));
    }
    store.runner_insert_batch(&rows).await.unwrap();
    let mut ends = store.runner_last_job_end_by_pool().await.unwrap();
    ends.sort();
    assert_eq!(ends, [(PoolName("gpu".into()), at(25)), (PoolName("linux".into()), at(30))]);
}

pub(super) async fn job_notes_and_active_jobs(harness: &Harness) {
    let store = open(harness).await;
    // Job ids beyond 32 bits, as GitHub's are.
    let big = 14_541_957_942;
    store.delivery_record(job_event(big, JobAction::Queued, "q", 1)).await.unwrap();
    store.delivery_record(job_event(2, JobAction::Completed, "c", 1)).await.unwrap();
    let active = store.job_list_active().await.unwrap();
    assert_eq!(active.len(), 1, "a completed job with no live runner is not active");
    assert_eq!(active[0].record.fields.id, JobId(big));
    assert_eq!(active[0].notes, Default::default());

    store
        .job_reason_set_batch(&[(JobId(big), Some("pool linux at max 2/2".into()))], at(2))
        .await
        .unwrap();
    store.job_launch_failure_record(JobId(big), FailureKind::Job, "boom", at(3)).await.unwrap();
    store
        .job_launch_failure_record(JobId(big), FailureKind::Infrastructure, "503", at(4))
        .await
        .unwrap();
    let notes = store.job_notes_get(JobId(big)).await.unwrap();
    assert_eq!((notes.launch_failures, notes.infra_failures), (1, 1));
    assert_eq!(notes.last_failure_kind, Some(FailureKind::Infrastructure));
    store
        .job_launch_failure_record(JobId(big), FailureKind::Job, "boom again", at(4))
        .await
        .unwrap();
    let notes = store.job_notes_get(JobId(big)).await.unwrap();
    assert_eq!(notes.reason.as_deref(), Some("pool linux at max 2/2"));
    assert_eq!(notes.launch_failures, 2);
    assert_eq!(notes.infra_failures, 1, "a failure of one kind leaves the other count alone");
    assert_eq!(notes.last_failure_kind, Some(FailureKind::Job));
    assert_eq!(notes.last_error.as_deref(), Some("boom again"));
    assert_eq!(notes.last_failure_at, Some(at(4)));
    store.job_reason_set_batch(&[(JobId(big), None)], at(5)).await.unwrap();
    let active = store.job_list_active().await.unwrap();
    assert_eq!(active[0].notes.reason, None);
    assert_eq!(active[0].notes.launch_failures, 2, "clearing the reason keeps the failures");

    // A completed job whose runner is still live stays active (for the reaper).
    let mut busy = runner(3, Some(2));
    busy.state = RunnerState::Busy;
    busy.job = Some(JobId(2));
    store.runner_insert(&busy).await.unwrap();
    let ids: Vec<JobId> =
        store.job_list_active().await.unwrap().iter().map(|j| j.record.fields.id).collect();
    assert_eq!(ids, [JobId(2), JobId(big)]);
    assert!(store.delivery_known(&hangar_types::DeliveryId("q".into())).await.unwrap());
    assert!(!store.delivery_known(&hangar_types::DeliveryId("nope".into())).await.unwrap());
}
