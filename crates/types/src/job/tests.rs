use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;

fn at(seconds: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).single().expect("valid timestamp")
}

fn fields(job: i64) -> JobFields {
    JobFields {
        id: JobId(job),
        run_id: RunId(job * 10),
        run_attempt: 1,
        repository: "octo-org/hello".into(),
        organization: Some("octo-org".into()),
        installation_id: Some(InstallationId(42)),
        workflow_name: Some("CI".into()),
        job_name: "build".into(),
        labels: Labels::new(["self-hosted", "linux"]),
        head_branch: Some("main".into()),
        head_sha: Some("abc".into()),
        html_url: None,
        runner: None,
        conclusion: None,
        created_at: Some(at(0)),
        started_at: Some(at(0)),
        completed_at: None,
    }
}

/// The events GitHub sends for one job, in order, shaped like the fixtures:
/// the runner is named from `in_progress` on, the conclusion on `completed`.
pub(crate) fn lifecycle(job: i64, waits: bool, cancelled_before_assignment: bool) -> Vec<JobEvent> {
    let mut events = Vec::new();
    let mut push = |action, job_fields: JobFields| {
        let n = events.len();
        events.push(JobEvent {
            delivery_id: DeliveryId(format!("d-{job}-{n}")),
            action,
            received_at: at(100 + i64::try_from(n).expect("small")),
            job: job_fields,
        });
    };
    if waits {
        push(JobAction::Waiting, fields(job));
    }
    push(JobAction::Queued, fields(job));
    if cancelled_before_assignment {
        let mut done = fields(job);
        done.conclusion = Some(Conclusion::Cancelled);
        done.completed_at = Some(at(9));
        push(JobAction::Completed, done);
        return events;
    }
    let runner = RunnerAssignment {
        id: GitHubRunnerId(7),
        name: format!("hangar-linux-{job:016x}"),
        group_id: Some(1),
        group_name: Some("Default".into()),
    };
    // Like GitHub's sample payloads, the events disagree on fields that
    // should be constant: the installation differs, then goes missing.
    let mut running = fields(job);
    running.installation_id = Some(InstallationId(1));
    running.started_at = Some(at(5));
    running.runner = Some(runner);
    push(JobAction::InProgress, running.clone());
    let mut done = running;
    done.installation_id = None;
    done.organization = None;
    done.conclusion = Some(Conclusion::Success);
    done.completed_at = Some(at(60));
    push(JobAction::Completed, done);
    events
}

fn fold<'a>(events: impl IntoIterator<Item = &'a JobEvent>) -> Option<JobRecord> {
    let mut record: Option<JobRecord> = None;
    for event in events {
        match JobRecord::merge(record.as_ref(), event) {
            Merge::Created(next) | Merge::Updated(next) => record = Some(next),
            Merge::Unchanged => {}
        }
    }
    record
}

fn without_generation(mut record: JobRecord) -> JobRecord {
    record.generation = 0;
    record
}

#[test]
fn only_forward_transitions_are_allowed() {
    for from in JobState::ALL {
        for to in JobState::ALL {
            assert_eq!(from.can_transition_to(to), to.rank() > from.rank(), "{from} -> {to}");
        }
    }
    assert!(JobState::Waiting.can_transition_to(JobState::Queued));
    assert!(!JobState::Completed.can_transition_to(JobState::Queued));
}

#[test]
fn a_late_queued_after_completed_changes_nothing() {
    let events = lifecycle(1, false, false);
    let done = fold(&events).expect("record");
    assert_eq!(done.state, JobState::Completed);
    let mut late = events[0].clone();
    late.delivery_id = DeliveryId("late".into());
    late.received_at = done.received.queued.expect("queued seen");
    assert_eq!(JobRecord::merge(Some(&done), &late), Merge::Unchanged);
}

#[test]
fn a_completed_with_no_earlier_event_creates_a_completed_job() {
    let events = lifecycle(1, false, false);
    let Merge::Created(record) = JobRecord::merge(None, &events[2]) else {
        panic!("expected a new record");
    };
    assert_eq!(record.state, JobState::Completed);
    assert_eq!(record.fields.conclusion, Some(Conclusion::Success));
    assert_eq!(record.fields.runner.as_ref().map(|r| r.id), Some(GitHubRunnerId(7)));
    assert_eq!(record.generation, 1);
}

#[test]
fn a_runnerless_completed_keeps_the_runner_in_progress_named() {
    let events = lifecycle(1, false, false);
    let mut completed = events[2].clone();
    completed.job.runner = None;
    let record = fold([&events[1], &completed]).expect("record");
    assert_eq!(record.fields.runner.as_ref().map(|r| r.id), Some(GitHubRunnerId(7)));
    let record = fold([&completed, &events[1]]).expect("record");
    assert_eq!(record.fields.runner.as_ref().map(|r| r.id), Some(GitHubRunnerId(7)));
}

#[test]
fn the_generation_counts_changes() {
    let events = lifecycle(1, true, false);
    let record = fold(&events).expect("record");
    assert_eq!(record.generation, 4);
    assert_eq!(record.state, JobState::Completed);
    let again = fold(events.iter().chain(&events)).expect("record");
    assert_eq!(again.generation, 4);
}

proptest! {
    /// Any permutation of a job's events, with any duplicates (redeliveries
    /// keep their delivery id and receive time), folds to the record the
    /// in-order sequence gives.
    #[test]
    fn events_converge_whatever_their_order(
        waits in any::<bool>(),
        cancelled in any::<bool>(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        seed in any::<u64>(),
    ) {
        let events = lifecycle(1, waits, cancelled);
        let expected = without_generation(fold(&events).expect("record"));
        let mut shuffled: Vec<&JobEvent> = events.iter().collect();
        shuffled.extend(picks.iter().map(|pick| pick.get(&events)));
        // A xorshift-driven Fisher-Yates shuffle keeps a failing case reproducible.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).expect("fits");
            shuffled.swap(i, j);
        }
        let got = without_generation(fold(shuffled).expect("record"));
        prop_assert_eq!(got, expected);
    }
}
