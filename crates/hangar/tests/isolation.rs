//! Isolation fails closed, with the real binary against the GitHub
//! simulator: an `auto` pool with no microVM image starts no runner at all
//! (`/healthz` says degraded and why, the job's reason says why), and only
//! `allow_unisolated = true` makes it run local processes, loudly. Even
//! then a runner inherits none of hangar's secrets from its environment.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hangar_simulator::{JobSpec, SimConfig, SimHandle, SimJobStatus, Simulator};
use hangar_test_harness::wait_for;

struct Serve {
    child: Child,
    url: String,
    /// The admin listener (`/metrics`).
    admin: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, sim: &SimHandle, provider: &str) -> Serve {
    serve_with_env(dir, sim, provider, &[])
}

fn serve_with_env(dir: &Path, sim: &SimHandle, provider: &str, env: &[(&str, &str)]) -> Serve {
    let config = dir.join("hangar.toml");
    std::fs::write(
        &config,
        format!(
            r#"{github}
[[pools]]
name = "linux"
labels = ["linux"]
max_runners = 2
idle_timeout = "2s"
{provider}
"#,
            github =
                sim.hangar_toml("reconcile_interval = \"200ms\"\ngithub_sync_interval = \"500ms\""),
        ),
    )
    .expect("config written");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        // No image in this cache: microVMs are not possible, whatever the host has.
        .env("HANGAR_CACHE_DIR", dir.join("empty-image-cache"))
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("serve.log")).expect("log"))
        .spawn()
        .expect("hangar starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut line, mut admin) = (String::new(), String::new());
    stdout.read_line(&mut line).expect("first line");
    stdout.read_line(&mut admin).expect("second line");
    let url = line.trim().strip_prefix("hangar listening on ").expect("listening line").to_owned();
    let admin = admin.trim().strip_prefix("hangar admin on ").expect("admin line").to_owned();
    sim.webhook_url_set(Some(format!("{url}/webhook")));
    Serve { child, url, admin }
}

async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.expect("GET").json().await.expect("JSON")
}

async fn get_text(url: &str) -> String {
    reqwest::get(url).await.expect("GET").text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_an_image_runs_nothing_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
    let hangar = serve(dir.path(), &sim, "provider = \"auto\"");
    let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted", "linux"]));

    let health = wait_for("/healthz to say degraded", Duration::from_secs(30), || async {
        let health = get_json(&format!("{}/healthz", hangar.url)).await;
        (health["status"] == "degraded").then_some(health)
    })
    .await;
    let problem = &health["problems"][0];
    assert_eq!(problem["component"], "pool linux", "{health}");
    let reason = problem["reason"].as_str().expect("a reason");
    assert!(reason.contains("no microVM image"), "{reason}");
    assert!(reason.contains("allow_unisolated"), "{reason}");

    let view = wait_for("the job's reason", Duration::from_secs(30), || async {
        let view = get_json(&format!("{}/api/v1/jobs/{job}", hangar.admin)).await;
        view["lifecycle"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no microVM image"))
            .then_some(view)
    })
    .await;
    assert!(view["lifecycle"]["reason"].as_str().expect("reason").contains("pool linux"), "{view}");
    // Several activations later, still nothing was started anywhere.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.counters().registrations_created, 0);
    assert!(!dir.path().join("data/runners").exists(), "a local process was started");
    let metrics = get_text(&format!("{}/metrics", hangar.admin)).await;
    assert!(metrics.contains("hangar_pool_isolated{pool=\"linux\"} 1"), "{metrics}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(log.contains("is UNHEALTHY and starts no runners"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unisolated_runs_local_processes_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        long_poll: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let runner = hangar_standin_runner::binary_path().expect("stand-in runner");
    let provider = format!(
        "[pools.provider.auto]\nallow_unisolated = true\nprocess = {{ command = {:?} }}",
        runner.display().to_string()
    );
    let hangar = serve(dir.path(), &sim, &provider);
    let job = sim.job_queue(
        JobSpec::new("octo-org/app", ["self-hosted", "linux"]).duration(Duration::from_millis(100)),
    );
    wait_for("the job to complete", Duration::from_secs(60), || async {
        sim.job(job).is_some_and(|j| j.status == SimJobStatus::Completed).then_some(())
    })
    .await;
    let health = get_json(&format!("{}/healthz", hangar.url)).await;
    assert_eq!(health["status"], "ok", "{health}");
    let metrics = get_text(&format!("{}/metrics", hangar.admin)).await;
    assert!(metrics.contains("hangar_pool_isolated{pool=\"linux\"} 0"), "{metrics}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(log.contains("FELL BACK TO LOCAL PROCESSES"), "{log}");
    assert!(log.contains("NOT isolated"), "{log}");
}

/// `hangar serve` gets its secrets from the environment (as the README
/// suggests, and as systemd's `EnvironmentFile` does) next to unrelated
/// ones such as S3 credentials; a process pool's runner prints its whole
/// environment, as a job step running `env` would into a job log. It holds
/// its JIT config and none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_inherits_none_of_hangars_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
    let out = dir.path().join("runner-env");
    std::fs::create_dir(&out).expect("mkdir");
    let script = r#"env > "$ENV_OUT/.$HANGAR_RUNNER_ID" && mv "$ENV_OUT/.$HANGAR_RUNNER_ID" "$ENV_OUT/$HANGAR_RUNNER_ID""#;
    let provider = format!(
        "[pools.provider.process]\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n\
         env = {{ ENV_OUT = {:?} }}",
        out.display().to_string()
    );
    let secrets = [
        ("HANGAR_WEBHOOK_SECRET", SimConfig::DEFAULT_WEBHOOK_SECRET),
        ("HANGAR_GITHUB_TOKEN", SimConfig::DEFAULT_PAT),
        ("HANGAR_API_TOKEN", "canary-api-token-5e1f0c3a9b7d2e84"),
        ("AWS_SECRET_ACCESS_KEY", "canary-aws-secret-8c2d4f6a1e3b5d79"),
    ];
    let _hangar = serve_with_env(dir.path(), &sim, &provider, &secrets);
    sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted", "linux"]));
    let env = wait_for("a runner printed its environment", Duration::from_secs(60), || async {
        let entry = std::fs::read_dir(&out)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_str().is_some_and(|name| name.starts_with("hangar-")))?;
        std::fs::read_to_string(entry.path()).ok()
    })
    .await;
    assert!(env.contains("ACTIONS_RUNNER_INPUT_JITCONFIG="), "{env}");
    for (name, secret) in secrets {
        assert!(!env.contains(secret), "the runner got {name}: {env}");
        assert!(!env.contains(name), "the runner got {name}: {env}");
    }
}
