//! `hangar serve` stopped in the middle of a burst — by `kill -9`, and by
//! SIGTERM (the ordered stop) — then restarted on the same data directory:
//! every job completes and nothing leaks. Runs the real binary against the
//! GitHub simulator, with real stand-in runner processes (which outlive the
//! stopped hangar, as VMs would).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hangar_simulator::{JobSpec, SimConfig, SimJobStatus, Simulator};

fn hangar_start(config: &Path, data_dir: &Path) -> (Child, String) {
    hangar_start_logged(config, data_dir, None)
}

/// With `log`, hangar's stderr (at info) goes there.
fn hangar_start_logged(config: &Path, data_dir: &Path, log: Option<&Path>) -> (Child, String) {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("hangar starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("first line");
    let url = line.trim().strip_prefix("hangar listening on ").expect("listening line").to_owned();
    (child, url)
}

/// A process pool of stand-in runners against `sim`, in `dir/hangar.toml`.
fn config_write(dir: &Path, sim: &hangar_simulator::SimHandle) -> std::path::PathBuf {
    let runner = hangar_standin_runner::binary_path().expect("stand-in runner");
    let config = dir.join("hangar.toml");
    std::fs::write(
        &config,
        format!(
            r#"{github}

[[pools]]
name = "linux"
labels = ["linux"]
max_runners = 6
idle_timeout = "5s"
[pools.provider.process]
command = "{runner}"
"#,
            runner = runner.display(),
            github = sim.hangar_toml(
                "reconcile_interval = \"200ms\"\ngithub_sync_interval = \"500ms\"\npickup_deadline = \"20s\""
            ),
        ),
    )
    .expect("config written");
    config
}

fn burst(sim: &hangar_simulator::SimHandle, n: usize) -> Vec<i64> {
    (0..n)
        .map(|_| {
            sim.job_queue(
                JobSpec::new("octo-org/app", ["self-hosted", "linux"])
                    .duration(Duration::from_millis(300)),
            )
        })
        .collect()
}

/// Every job of the burst completes, then no registration and no runner
/// process is left.
async fn burst_finishes(sim: &hangar_simulator::SimHandle, jobs: &[i64], data: &Path) {
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
}

async fn simulator() -> hangar_simulator::SimHandle {
    Simulator::start(SimConfig { long_poll: Duration::from_millis(500), ..SimConfig::default() })
        .await
        .expect("simulator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_then_restart_completes_every_job_and_leaks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = simulator().await;
    let config = config_write(dir.path(), &sim);
    let data = dir.path().join("data");
    let (mut first, url) = hangar_start(&config, &data);
    sim.webhook_url_set(Some(format!("{url}/webhook")));
    let jobs = burst(&sim, 30);
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
    burst_finishes(&sim, &jobs, &data).await;
    second.kill().expect("stop hangar");
    second.wait().expect("reaped");
}

/// SIGTERM in the middle of a burst takes the ordered stop: hangar exits 0,
/// and at that moment no step was cut between a side effect and its
/// record — every runner process on disk and every registration on GitHub
/// belongs to a runner the store has at the matching step, and nothing is
/// half torn down. The restart then finds no orphan to repair (only
/// creations that never started, which it reaps as interrupted), and the
/// burst completes with nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_stops_in_order_and_the_restart_finds_nothing_to_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = simulator().await;
    let config = config_write(dir.path(), &sim);
    let data = dir.path().join("data");
    let first_log = dir.path().join("first.log");
    let (mut first, url) = hangar_start_logged(&config, &data, Some(&first_log));
    sim.webhook_url_set(Some(format!("{url}/webhook")));
    let jobs = burst(&sim, 30);
    hangar_test_harness::wait_for("a few jobs done", Duration::from_secs(120), || async {
        (sim.counters().jobs_completed >= 5).then_some(())
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = hangar_test_harness::wait_for("hangar to stop", Duration::from_secs(60), || {
        let status = first.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    assert!(status.success(), "hangar exited with {status}");
    let log = std::fs::read_to_string(&first_log).expect("log");
    assert!(log.contains("Stopped."), "{log}");
    assert!(!log.contains("still under way"), "the stop was not orderly:\n{log}");
    assert!(sim.counters().jobs_completed < 30, "the burst was over before the stop");

    // The store against the world, with nothing running.
    let store =
        hangar_store::Store::open(&hangar_store::Store::sqlite_url(&data.join("hangar.db")))
            .await
            .expect("store opens");
    let runners = store.runner_list_live().await.expect("runners");
    let state_of = |name: &str| runners.iter().find(|r| r.id.as_str() == name).map(|r| r.state);
    let on_disk: Vec<String> = std::fs::read_dir(data.join("runners").join("linux"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    use hangar_types::RunnerState as S;
    for name in &on_disk {
        let state = state_of(name);
        assert!(
            matches!(state, Some(S::Launched | S::Busy)),
            "runner process {name} on disk, but the store has it as {state:?}"
        );
    }
    for registration in sim.runners() {
        let state = state_of(&registration.name);
        assert!(
            matches!(state, Some(S::Registered | S::Launched | S::Busy)),
            "registration {} on GitHub, but the store has it as {state:?}",
            registration.name
        );
    }
    for runner in &runners {
        assert_ne!(runner.state, S::Draining, "{} was cut mid-teardown", runner.id);
        if runner.state == S::Planned {
            assert!(!on_disk.contains(&runner.id.to_string()), "{} launched unrecorded", runner.id);
        }
    }
    store.close().await;

    let second_log = dir.path().join("second.log");
    let (mut second, url) = hangar_start_logged(&config, &data, Some(&second_log));
    sim.webhook_url_set(Some(format!("{url}/webhook")));
    burst_finishes(&sim, &jobs, &data).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(second.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(second.wait().expect("reaped").success());
    let log = std::fs::read_to_string(&second_log).expect("log");
    assert!(!log.contains("orphan"), "the restart had orphans to repair:\n{log}");
}
