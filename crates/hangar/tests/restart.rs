//! `kill -9` of `hangar serve` in the middle of a burst, then a restart on
//! the same data directory: every job completes and nothing leaks. Runs the
//! real binary against the GitHub simulator, with real stand-in runner
//! processes (which outlive the killed hangar, as VMs would).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};

fn hangar_start(config: &Path, data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hangar starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("first line");
    let url = line.trim().strip_prefix("hangar listening on ").expect("listening line").to_owned();
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_then_restart_completes_every_job_and_leaks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        long_poll: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let runner = hangar_standin_runner::binary_path().expect("stand-in runner");
    let config = dir.path().join("hangar.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[webhook]
secret = "{secret}"

[github]
api_url = "{api}"
token = "{token}"
repositories = ["octo-org/app"]

[scheduler]
runner_scope = "octo-org"
reconcile_interval = 0.2
github_sync_interval = 0.5
pickup_deadline = 20

[[pools]]
name = "linux"
labels = ["linux"]
provider = "process"
max_runners = 6
idle_timeout = 5
[pools.settings]
command = "{runner}"
"#,
            secret = SimConfig::DEFAULT_WEBHOOK_SECRET,
            api = sim.api_url(),
            token = SimConfig::DEFAULT_PAT,
            runner = runner.display(),
        ),
    )
    .expect("config written");
    let data = dir.path().join("data");
    let (mut first, url) = hangar_start(&config, &data);
    sim.webhook_url_set(Some(format!("{url}/webhook")));
    let jobs: Vec<i64> = (0..30)
        .map(|_| {
            sim.job_queue(
                JobSpec::new("octo-org/app", ["self-hosted", "linux"])
                    .duration(Duration::from_millis(300)),
            )
        })
        .collect();
    // Kill it once some jobs are done and others are running or queued.
    hangar_test_harness::wait_for("a few jobs done", Duration::from_secs(120), || async {
        (sim.counters().jobs_completed >= 5).then_some(())
    })
    .await;
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    let done_at_kill = sim.counters().jobs_completed;
    assert!(done_at_kill < 30, "the burst was over before the kill");

    let (mut second, url) = hangar_start(&config, &data);
    sim.webhook_url_set(Some(format!("{url}/webhook")));
    hangar_test_harness::wait_for("every job completed", Duration::from_secs(180), || async {
        jobs.iter()
            .all(|&j| sim.job(j).is_some_and(|job| job.status == SimJobStatus::Completed))
            .then_some(())
    })
    .await;
    let runners_dir = data.join("runners").join("linux");
    hangar_test_harness::wait_for("nothing left", Duration::from_secs(90), || async {
        let instances = std::fs::read_dir(&runners_dir).map(|d| d.count()).unwrap_or(0);
        (sim.counters().registrations_alive == 0 && instances == 0).then_some(())
    })
    .await;
    second.kill().expect("stop hangar");
    second.wait().expect("reaped");
}
