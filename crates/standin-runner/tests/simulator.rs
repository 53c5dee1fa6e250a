//! The stand-in runner against the simulator over real HTTP: the binary
//! runs a job and exits 0; a deleted registration makes it exit 0 without
//! a job; another job can take the runner minted "for" a job.

use std::time::Duration;

use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};
use serde_json::{Value, json};

async fn mint(api: &str, name: &str, labels: &[&str]) -> (i64, String) {
    let response = reqwest::Client::new()
        .post(format!("{api}/orgs/octo-org/actions/runners/generate-jitconfig"))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .json(&json!({ "name": name, "runner_group_id": 1, "labels": labels }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (
        body["runner"]["id"].as_i64().unwrap(),
        body["encoded_jit_config"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_binary_runs_one_job_and_exits_zero() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let job = sim.job_queue(
        JobSpec::new("octo-org/app", ["self-hosted", "linux"]).duration(Duration::from_millis(300)),
    );
    let (_, encoded) =
        mint(&sim.api_url(), "hangar-test-0000000000000001", &["self-hosted", "Linux", "x64"])
            .await;
    let root = tempfile::tempdir().unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_hangar-standin-runner"))
        .args(["run", "--root"])
        .arg(root.path())
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &encoded)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), status).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let job = sim.job(job).unwrap();
    assert_eq!(job.status, SimJobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(job.runner_name.as_deref(), Some("hangar-test-0000000000000001"));
    assert_eq!(
        sim.counters().registrations_alive,
        0,
        "an ephemeral registration goes after its job"
    );
    assert!(
        std::fs::read_dir(root.path()).unwrap().next().is_none(),
        "local config removed on exit"
    );
}

#[tokio::test]
async fn a_deleted_registration_makes_the_runner_exit_without_a_job() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let (id, encoded) =
        mint(&sim.api_url(), "hangar-test-0000000000000002", &["self-hosted"]).await;
    let options = hangar_standin_runner::RunOptions {
        poll_wait: Duration::from_millis(200),
        ..Default::default()
    };
    let runner = tokio::spawn(async move { hangar_standin_runner::run(&encoded, &options).await });
    hangar_test_harness::wait_for("the runner to connect", Duration::from_secs(10), || async {
        sim.runners().iter().any(|r| r.ever_connected).then_some(())
    })
    .await;
    let deleted = reqwest::Client::new()
        .delete(format!("{}/orgs/octo-org/actions/runners/{id}", sim.api_url()))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), runner).await.unwrap().unwrap().unwrap();
    assert_eq!(outcome, hangar_standin_runner::Outcome::RegistrationGone);
}

#[tokio::test]
async fn any_matching_job_takes_an_idle_runner_and_busy_runners_refuse_delete() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let (id, encoded) =
        mint(&sim.api_url(), "hangar-test-0000000000000003", &["self-hosted", "linux"]).await;
    let options = hangar_standin_runner::RunOptions {
        poll_wait: Duration::from_millis(200),
        ..Default::default()
    };
    let runner = tokio::spawn(async move { hangar_standin_runner::run(&encoded, &options).await });
    // A job with labels the runner lacks stays queued; a matching one (upper
    // case: labels compare case-insensitively) takes the runner.
    let gpu = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted", "gpu"]));
    let other = sim
        .job_queue(JobSpec::new("octo-org/lib", ["SELF-HOSTED"]).duration(Duration::from_secs(4)));
    hangar_test_harness::wait_for("the job to start", Duration::from_secs(10), || async {
        (sim.job(other)?.status == SimJobStatus::InProgress).then_some(())
    })
    .await;
    let refused = reqwest::Client::new()
        .delete(format!("{}/orgs/octo-org/actions/runners/{id}", sim.api_url()))
        .bearer_auth(SimConfig::DEFAULT_PAT)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422, "busy from assignment");
    let outcome =
        tokio::time::timeout(Duration::from_secs(20), runner).await.unwrap().unwrap().unwrap();
    assert_eq!(
        outcome,
        hangar_standin_runner::Outcome::Completed { job_id: other, conclusion: "success".into() }
    );
    assert_eq!(sim.job(gpu).unwrap().status, SimJobStatus::Queued);
}
