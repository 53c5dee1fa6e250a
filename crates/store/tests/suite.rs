//! The store conformance suite: every test runs on SQLite and, when
//! `TEST_POSTGRES_URL` points at a server, on a fresh PostgreSQL database.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use hangar_store::{DeliveryOutcome, JobFilter, NewDelivery, Store};
use hangar_types::{
    Conclusion, DeliveryId, GitHubRunnerId, JobAction, JobEvent, JobFields, JobId, JobState,
    Labels, RunId, RunnerAssignment, Timestamp,
};

/// A place a store lives; dropping it removes what it made.
struct Harness {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = Store::sqlite_url(&dir.path().join("hangar.db"));
    Harness { url, _dir: Some(dir) }
}

async fn postgres() -> Option<Harness> {
    let admin_url =
        hangar_test_harness::require_env("TEST_POSTGRES_URL", "store suite on PostgreSQL")?;
    let name = format!("hangar_test_{:016x}", rand::random::<u64>());
    sqlx::any::install_default_drivers();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    let base = admin_url.rsplit_once('/').expect("url has a database").0;
    Some(Harness { url: format!("{base}/{name}"), _dir: None })
}

macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(&super::sqlite().await).await;
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                if let Some(harness) = super::postgres().await {
                    super::$test(&harness).await;
                }
            })*
        }
    };
}

store_suite!(
    a_redelivery_changes_nothing,
    events_fold_into_one_job,
    a_late_event_does_not_move_a_job_back,
    non_job_deliveries_are_logged,
    jobs_list_by_state_and_repository_in_pages,
    the_timeline_keeps_every_delivery_in_order,
    nothing_is_lost_across_a_restart,
    concurrent_deliveries_converge,
    runner_writes_follow_the_state_machine_and_generations,
    job_notes_and_active_jobs,
    the_last_job_end_per_pool_survives_in_the_store,
    retention_deletes_old_history_and_keeps_what_is_live,
    retention_deletes_in_batches,
    the_retention_task_runs_a_pass_at_start_and_stops_when_told,
);

#[path = "suite/retention.rs"]
mod retention;
use retention::{
    retention_deletes_in_batches, retention_deletes_old_history_and_keeps_what_is_live,
    the_retention_task_runs_a_pass_at_start_and_stops_when_told,
};

#[path = "suite/runners.rs"]
mod runners;
use runners::{
    job_notes_and_active_jobs, runner_writes_follow_the_state_machine_and_generations,
    the_last_job_end_per_pool_survives_in_the_store,
};

fn at(seconds: i64) -> Timestamp {
    Utc.timestamp_opt(1_750_000_000 + seconds, 0).single().expect("valid")
}

fn job_event(job: i64, action: JobAction, delivery: &str, received: i64) -> NewDelivery {
    let mut fields = JobFields {
        id: JobId(job),
        run_id: RunId(job * 100),
        run_attempt: 1,
        repository: if job % 2 == 0 { "octo/even".into() } else { "octo/odd".into() },
        organization: Some("octo".into()),
        installation_id: None,
        workflow_name: Some("CI".into()),
        job_name: format!("job {job}"),
        labels: Labels::new(["self-hosted", "linux"]),
        head_branch: Some("main".into()),
        head_sha: Some("0123abcd".into()),
        html_url: None,
        runner: None,
        conclusion: None,
        created_at: Some(at(0)),
        started_at: Some(at(0)),
        completed_at: None,
    };
    if action >= JobAction::InProgress {
        fields.runner = Some(RunnerAssignment {
            id: GitHubRunnerId(3),
            name: "hangar-linux-0000000000000003".into(),
            group_id: Some(1),
            group_name: Some("Default".into()),
        });
        fields.started_at = Some(at(4));
    }
    if action == JobAction::Completed {
        fields.conclusion = Some(Conclusion::Success);
        fields.completed_at = Some(at(30));
    }
    let event = JobEvent {
        delivery_id: DeliveryId(delivery.into()),
        action,
        received_at: at(received),
        job: fields,
    };
    NewDelivery {
        delivery_id: event.delivery_id.clone(),
        event: "workflow_job".into(),
        action: Some(action.as_str().into()),
        received_at: event.received_at,
        payload: serde_json::to_string(&event.job).expect("json"),
        job_event: Some(event),
    }
}

async fn open(harness: &Harness) -> Store {
    Store::open(&harness.url).await.expect("open the store")
}

async fn a_redelivery_changes_nothing(harness: &Harness) {
    let store = open(harness).await;
    let first = store.delivery_record(job_event(1, JobAction::Queued, "d1", 1)).await.unwrap();
    assert!(matches!(first, DeliveryOutcome::Recorded { job_changed: true, .. }));
    let again = store.delivery_record(job_event(1, JobAction::Queued, "d1", 2)).await.unwrap();
    assert_eq!(again, DeliveryOutcome::Duplicate);
    assert_eq!(store.delivery_count().await.unwrap(), 1);
    assert_eq!(store.job_get(JobId(1)).await.unwrap().unwrap().generation, 1);
}

async fn events_fold_into_one_job(harness: &Harness) {
    let store = open(harness).await;
    for (i, action) in
        [JobAction::Queued, JobAction::InProgress, JobAction::Completed].into_iter().enumerate()
    {
        let i = i64::try_from(i).unwrap();
        store.delivery_record(job_event(7, action, &format!("d{i}"), i)).await.unwrap();
    }
    let job = store.job_get(JobId(7)).await.unwrap().expect("job stored");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.fields.conclusion, Some(Conclusion::Success));
    assert_eq!(job.fields.runner.as_ref().map(|r| r.id), Some(GitHubRunnerId(3)));
    assert_eq!(job.received.queued, Some(at(0)));
    assert_eq!(job.received.completed, Some(at(2)));
    assert_eq!(job.generation, 3);
    assert_eq!(store.job_get(JobId(8)).await.unwrap(), None);
}

async fn a_late_event_does_not_move_a_job_back(harness: &Harness) {
    let store = open(harness).await;
    store.delivery_record(job_event(5, JobAction::Completed, "c", 10)).await.unwrap();
    let late = store.delivery_record(job_event(5, JobAction::Queued, "q", 11)).await.unwrap();
    let DeliveryOutcome::Recorded { job: Some(job), .. } = late else {
        panic!("expected the late event to be logged: {late:?}");
    };
    assert_eq!(job.state, JobState::Completed);
    // The late event is in the log even though the state did not move.
    assert_eq!(store.job_timeline(JobId(5)).await.unwrap().len(), 2);
}

async fn non_job_deliveries_are_logged(harness: &Harness) {
    let store = open(harness).await;
    let ping = NewDelivery {
        delivery_id: DeliveryId("ping-1".into()),
        event: "ping".into(),
        action: None,
        received_at: at(0),
        payload: r#"{"zen":"Keep it logically awesome."}"#.into(),
        job_event: None,
    };
    let outcome = store.delivery_record(ping.clone()).await.unwrap();
    assert_eq!(outcome, DeliveryOutcome::Recorded { job: None, job_changed: false });
    assert_eq!(store.delivery_record(ping).await.unwrap(), DeliveryOutcome::Duplicate);
}

async fn jobs_list_by_state_and_repository_in_pages(harness: &Harness) {
    let store = open(harness).await;
    for job in 1..=25 {
        let action = if job <= 10 { JobAction::Completed } else { JobAction::Queued };
        store.delivery_record(job_event(job, action, &format!("d{job}"), job)).await.unwrap();
    }
    let queued = JobFilter { state: Some(JobState::Queued), limit: 100, ..JobFilter::default() };
    assert_eq!(store.job_list(&queued).await.unwrap().jobs.len(), 15);
    let even =
        JobFilter { repository: Some("octo/even".into()), limit: 100, ..JobFilter::default() };
    assert_eq!(store.job_list(&even).await.unwrap().jobs.len(), 12);

    let mut seen = Vec::new();
    let mut filter = JobFilter { limit: 10, ..JobFilter::default() };
    loop {
        let page = store.job_list(&filter).await.unwrap();
        seen.extend(page.jobs.iter().map(|job| job.fields.id.0));
        match page.next {
            Some(next) => filter.before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());

    let mut counts = store.job_count_by_state().await.unwrap();
    counts.sort();
    assert_eq!(counts, vec![(JobState::Queued, 15), (JobState::Completed, 10)]);
}

async fn the_timeline_keeps_every_delivery_in_order(harness: &Harness) {
    let store = open(harness).await;
    store.delivery_record(job_event(9, JobAction::Completed, "c", 30)).await.unwrap();
    store.delivery_record(job_event(9, JobAction::Queued, "q", 10)).await.unwrap();
    store.delivery_record(job_event(9, JobAction::InProgress, "i", 20)).await.unwrap();
    let timeline = store.job_timeline(JobId(9)).await.unwrap();
    let order: Vec<&str> = timeline.iter().map(|d| d.delivery_id.0.as_str()).collect();
    assert_eq!(order, ["q", "i", "c"]);
    assert!(timeline[0].payload.contains("job 9"));
}

async fn nothing_is_lost_across_a_restart(harness: &Harness) {
    let store = open(harness).await;
    for job in 1..=50 {
        store
            .delivery_record(job_event(job, JobAction::Queued, &format!("d{job}"), job))
            .await
            .unwrap();
    }
    store.close().await;
    drop(store);
    let store = open(harness).await;
    assert_eq!(store.delivery_count().await.unwrap(), 50);
    let all = store.job_list(&JobFilter { limit: 100, ..JobFilter::default() }).await.unwrap();
    assert_eq!(all.jobs.len(), 50);
    let again = store.delivery_record(job_event(1, JobAction::Queued, "d1", 1)).await.unwrap();
    assert_eq!(again, DeliveryOutcome::Duplicate);
}

async fn concurrent_deliveries_converge(harness: &Harness) {
    let store = Arc::new(open(harness).await);
    let mut tasks = Vec::new();
    for job in 1..=20 {
        for (n, action) in
            [JobAction::Completed, JobAction::Queued, JobAction::InProgress].into_iter().enumerate()
        {
            for copy in 0..2 {
                let store = Arc::clone(&store);
                let delivery = job_event(job, action, &format!("d{job}-{n}"), job + copy);
                tasks.push(tokio::spawn(async move { store.delivery_record(delivery).await }));
            }
        }
    }
    for task in tasks {
        task.await.expect("task").expect("recorded");
    }
    assert_eq!(store.delivery_count().await.unwrap(), 60);
    for job in 1..=20 {
        let record = store.job_get(JobId(job)).await.unwrap().expect("job");
        assert_eq!(record.state, JobState::Completed, "job {job}");
        assert_eq!(record.fields.runner.as_ref().map(|r| r.id), Some(GitHubRunnerId(3)));
    }
}
