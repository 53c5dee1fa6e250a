//! The `hangar` binary as scripts use it: `serve --listen --data-dir` with
//! the secret from `HANGAR_WEBHOOK_SECRET` alone, `jobs`, `job`,
//! `config check`, and a restart on the same data.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hmac::{Hmac, Mac};

const SECRET: &str = "cli-test-webhook-secret";

fn hangar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
}

struct Serve {
    child: Child,
    /// The public listener.
    url: String,
    /// The admin listener (what `hangar jobs` talks to).
    admin: String,
}

impl Serve {
    fn start(data_dir: &Path) -> Serve {
        Serve::start_in(data_dir, data_dir, "127.0.0.1:0")
    }

    fn start_with_admin(data_dir: &Path, admin: &str) -> Serve {
        Serve::start_in(data_dir, data_dir, admin)
    }

    /// `serve` in `cwd` (where no `hangar.toml` is) on `data_dir`.
    fn start_in(cwd: &Path, data_dir: &Path, admin: &str) -> Serve {
        let mut child = hangar()
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", admin, "--data-dir"])
            .arg(data_dir)
            .env("HANGAR_WEBHOOK_SECRET", SECRET)
            .env_remove("HANGAR_CONFIG")
            .env_remove("HANGAR_GITHUB_TOKEN")
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hangar serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (mut first_line, mut second_line) = (String::new(), String::new());
        stdout.read_line(&mut first_line).expect("read the first line");
        stdout.read_line(&mut second_line).expect("read the second line");
        let url = first_line
            .trim()
            .strip_prefix("hangar listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
            .to_owned();
        let admin = second_line
            .trim()
            .strip_prefix("hangar admin on ")
            .unwrap_or_else(|| panic!("unexpected second line {second_line:?}"))
            .to_owned();
        Serve { child, url, admin }
    }

    /// SIGTERM, then wait: the graceful path.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "hangar serve exited with {exit}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture(path: &str) -> Vec<u8> {
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/github/webhooks");
    std::fs::read(root.join(path)).expect("fixture")
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(url: &str, id: &str, file: &str) -> u16 {
    let body = fixture(file);
    reqwest::Client::new()
        .post(format!("{url}/webhook"))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", id)
        .header("X-Hub-Signature-256", sign(&body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("deliver")
        .status()
        .as_u16()
}

fn run(args: &[&str], url: &str) -> (bool, String) {
    let out = hangar().args(args).env("HANGAR_URL", url).output().expect("run hangar");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_records_jobs_and_keeps_them_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let serve = Serve::start(dir.path());
    assert_eq!(
        deliver(&serve.url, "a", "workflow_job/queued.with-deployment.payload.json").await,
        200
    );
    assert_eq!(
        deliver(&serve.url, "b", "workflow_job/in_progress.with-queued-steps.payload.json").await,
        200
    );

    let (ok, table) = run(&["jobs"], &serve.admin);
    assert!(ok, "{table}");
    let (ok, public) = run(&["jobs"], &serve.url);
    assert!(!ok && public.contains("404"), "the public listener has no admin API: {public}");
    assert!(table.contains("14541957942") && table.contains("in_progress"), "{table}");
    let (ok, json) = run(&["jobs", "--json", "--state", "in_progress"], &serve.admin);
    assert!(ok, "{json}");
    let page: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(page["jobs"].as_array().expect("jobs").len(), 1);

    serve.stop();
    let serve = Serve::start(dir.path());
    let (ok, detail) = run(&["job", "14541957942"], &serve.admin);
    assert!(ok, "{detail}");
    assert!(detail.contains("Do examples need to be regenerated?"), "{detail}");
    assert!(detail.contains("in_progress") && detail.contains(" b "), "{detail}");
    let (ok, missing) = run(&["job", "1"], &serve.admin);
    assert!(!ok && missing.contains("404"), "{missing}");
    assert_eq!(
        deliver(&serve.url, "b", "workflow_job/in_progress.with-queued-steps.payload.json").await,
        200
    );
    let (_, json) = run(&["jobs", "--json"], &serve.admin);
    let page: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(page["jobs"].as_array().expect("jobs").len(), 2);
}

/// The admin listener on a unix socket (0600): `hangar jobs --url unix:PATH`
/// reads the API through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_can_be_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("admin.sock");
    let admin = format!("unix:{}", socket.display());
    let serve = Serve::start_with_admin(dir.path(), &admin);
    assert_eq!(serve.admin, admin);
    let mode = std::fs::metadata(&socket).expect("the socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(
        deliver(&serve.url, "u", "workflow_job/queued.with-deployment.payload.json").await,
        200
    );
    let (ok, table) = run(&["jobs"], &serve.admin);
    assert!(ok && table.contains("12877621891"), "{table}");
    assert!(table.contains(&admin), "the listing names the socket: {table}");
    serve.stop();
    assert!(!socket.exists(), "the socket is removed on stop");
}

#[test]
fn config_check_names_the_file_the_key_and_the_problem() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hangar.toml");
    let (ok, text) = run(&["config", "check", "--config", examples.to_str().expect("utf-8")], "");
    assert!(ok, "{text}");
    assert!(text.contains("hangar.toml: ok"), "{text}");

    let microvm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/microvm.toml");
    // `secret`: the example's placeholder replaced, as its comment says.
    let check = |token: Option<&str>, secret: bool| {
        let mut command = hangar();
        command.args(["config", "check", "--config"]).arg(&microvm);
        command.env_remove("HANGAR_WEBHOOK_SECRET");
        match token {
            Some(token) => command.env("HANGAR_GITHUB_TOKEN", token),
            None => command.env_remove("HANGAR_GITHUB_TOKEN"),
        };
        if secret {
            command.env("HANGAR_WEBHOOK_SECRET", "a-real-secret-0123456789");
        }
        let out = command.output().expect("run hangar");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    // Its pools need credentials, which it leaves to the environment.
    let (ok, text) = check(None, true);
    assert!(!ok && text.contains("key `github`: expected GitHub credentials"), "{text}");
    let (ok, text) = check(Some("ghp_example"), false);
    assert!(!ok && text.contains("key `webhook.secret`: is a placeholder"), "{text}");
    let (ok, text) = check(Some("ghp_example"), true);
    assert!(ok, "{text}");
    assert!(text.contains("pool linux-vm: provider microvm"), "{text}");
    assert!(
        text.contains("pool linux-auto: provider auto (microVMs, else local processes"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[scheduler]\nrunner_scope = \"o\"\n[[pools]]\nname = \"a\"\nlabels = [\"linux\"]\n\
         max_runners = 1\n[pools.provider.auto]\nmicrovm = { vcpu = 2 }\n",
    )
    .expect("write");
    let (ok, text) = run(&["config", "check", "--config", typo.to_str().expect("utf-8")], "");
    assert!(!ok);
    assert!(text.contains("typo.toml:8: key `pools[0].provider.auto.microvm"), "{text}");
    assert!(text.contains("unknown field `vcpu`"), "{text}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[server]\nlisten = \"127.0.0.1:80\"\ndata_dri = \"/x\"\n")
        .expect("write");
    let (ok, text) = run(&["config", "check", "--config", broken.to_str().expect("utf-8")], "");
    assert!(!ok);
    assert!(text.contains("broken.toml:3: key `server"), "{text}");
    assert!(text.contains("unknown field `data_dri`"), "{text}");
}

/// Starts `serve` with `config` and `env`, returns its stderr once it
/// listens (the lifecycle has started by then), and stops it.
fn serve_startup_log(dir: &Path, config: &str, env: &[(&str, &str)]) -> String {
    let file = dir.join("hangar.toml");
    std::fs::write(&file, config).expect("write");
    let log = dir.join("serve.log");
    let mut command = hangar();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("HANGAR_GITHUB_TOKEN")
        .env_remove("HANGAR_RUNNER_SCOPE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"));
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start hangar serve");
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first_line)
        .expect("read the first line");
    let serve = Serve { child, url: first_line, admin: String::new() };
    serve.stop();
    std::fs::read_to_string(&log).expect("log")
}

#[test]
fn serve_without_pools_runs_the_default_auto_pool_only_with_credentials() {
    let dir = tempfile::tempdir().expect("dir");
    // GitHub is a closed local port: nothing leaves the machine.
    let config = "[github]\napi_url = \"http://127.0.0.1:9\"\n";
    let log = serve_startup_log(dir.path(), config, &[]);
    assert!(log.contains("No GitHub credentials"), "{log}");
    assert!(!log.contains("default pool"), "{log}");

    let empty_cache = dir.path().join("no-images");
    let log = serve_startup_log(
        dir.path(),
        config,
        &[
            ("HANGAR_GITHUB_TOKEN", "ghp_test"),
            ("HANGAR_RUNNER_SCOPE", "octo-org"),
            ("HANGAR_CACHE_DIR", empty_cache.to_str().expect("utf-8")),
        ],
    );
    assert!(log.contains("running the default pool `default`"), "{log}");
    // With no image (and maybe no QEMU) auto fails closed, once, saying why.
    assert_eq!(log.matches("is UNHEALTHY and starts no runners").count(), 1, "{log}");
    assert!(log.contains("no microVM image in") || log.contains("QEMU"), "{log}");
    assert!(!log.contains("FELL BACK"), "{log}");
    assert!(log.contains("Runner lifecycle built"), "{log}");
}

/// What `serve` writes is for hangar alone: the data directory is 0700 and
/// the database (every webhook payload) 0600, whatever the caller's umask.
#[test]
fn serve_keeps_its_data_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let serve = Serve::start_in(dir.path(), &data, "127.0.0.1:0");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("hangar.db")), 0o600);
    serve.stop();
}
