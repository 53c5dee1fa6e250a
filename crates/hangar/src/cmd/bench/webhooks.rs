//! The webhook intake benchmark.
//!
//! Starts `hangar serve` (this same executable) as a child process on a
//! fresh SQLite data directory, so the load comes from a second process over
//! loopback, then runs two phases with realistic signed `workflow_job`
//! deliveries (about 8 KB each, every job going queued → in_progress →
//! completed, each delivery a new id):
//! 1. **throughput**: `--concurrency` workers send back to back for
//!    `--seconds`: the sustained deliveries per second;
//! 2. **fixed rate**: `--rate` deliveries per second, open loop (latency is
//!    measured from when each request was *due*, so a stall is not hidden by
//!    the sender waiting for it), for `--seconds`.
//!
//! Every answer must be a 2xx, or the run fails. Prints one JSON object.
//!
//! The sender speaks HTTP/1.1 through hyper's connection API, one request
//! at a time per keep-alive connection, like GitHub's sender: the load
//! generator shares the machine's cores with the server, so it should spend
//! as little of them as it can (reqwest's pool and request building cost
//! ~110 µs of CPU per delivery).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hangar_github::WebhookSecret;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent senders in the throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Deliveries per second in the fixed-rate phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Data directory of the server (default: a fresh temporary one).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const SECRET: &str = "bench-webhook-secret";

pub(crate) async fn run(args: Args) -> Result<()> {
    let temp = std::env::temp_dir().join(format!("hangar-bench-{}", std::process::id()));
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.clone());
    std::fs::create_dir_all(&data_dir)?;
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("HANGAR_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .env_remove("HANGAR_CONFIG")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting hangar serve")?;
    let mut first = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut first).await?;
    let base = first.trim().strip_prefix("hangar listening on ").context("no address")?.to_owned();
    let pid = server.id().context("server pid")?;
    let load = Load::new(&base);

    load.closed_loop(args.concurrency, Duration::from_secs(2)).await?; // warm up
    let throughput = load.closed_loop(args.concurrency, Duration::from_secs(args.seconds)).await?;
    let fixed = load.open_loop(args.rate, Duration::from_secs(args.seconds)).await?;
    let peak_rss_mib = peak_rss_mib(pid);
    let server_cpu = cpu_seconds(&pid.to_string());
    let load_cpu = cpu_seconds("self");
    #[allow(clippy::cast_precision_loss)]
    let per_delivery = |cpu: Option<f64>| {
        let n = load.next.load(Ordering::Relaxed) as f64;
        cpu.map(|s| (s * 1e6 / n).round())
    };
    server.kill().await?;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    let report = json!({
        "payload_bytes": load.payload_bytes(),
        "throughput": throughput.to_json(),
        "fixed_rate": fixed.to_json(),
        "server_peak_rss_mib": peak_rss_mib,
        "server_cpu_us_per_delivery": per_delivery(server_cpu),
        "load_generator_cpu_us_per_delivery": per_delivery(load_cpu),
        "store": "sqlite (WAL, synchronous=FULL)",
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

struct Load {
    /// `host:port` of the server.
    addr: String,
    /// Idle keep-alive connections. A sender takes one (or opens one) per
    /// request and puts it back after the answer.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    secret: WebhookSecret,
    next: AtomicU64,
    run: u64,
    /// One payload per action, with `JOB_ID` standing for the job id, so
    /// building a delivery is a string replace, not a JSON serialisation.
    templates: [String; 3],
}

const JOB_ID: &str = "987654321987";

struct Phase {
    sent: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    target_rate: Option<u64>,
}

impl Load {
    fn new(base: &str) -> Arc<Load> {
        Arc::new(Load {
            addr: base.trim_start_matches("http://").to_owned(),
            idle: Mutex::new(Vec::new()),
            secret: WebhookSecret::new(SECRET),
            next: AtomicU64::new(0),
            run: u64::from(std::process::id()),
            templates: ["queued", "in_progress", "completed"].map(|action| {
                String::from_utf8(payload(JOB_ID.parse().expect("a number"), action))
                    .expect("utf-8")
            }),
        })
    }

    fn payload_bytes(&self) -> usize {
        payload(1, "queued").len()
    }

    /// Sends delivery number `n`: job n/3, action n%3.
    async fn send(&self, n: u64) -> Result<()> {
        let template = &self.templates[usize::try_from(n % 3)?];
        let body = template.replace(JOB_ID, &(1_000_000 + n / 3).to_string()).into_bytes();
        let request = Request::post("/webhook")
            .header("Host", &self.addr)
            .header("X-GitHub-Event", "workflow_job")
            .header("X-GitHub-Delivery", format!("bench-{}-{n}", self.run))
            .header("X-Hub-Signature-256", self.secret.sign(&body))
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let idle = self.idle.lock().expect("not poisoned").pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let response = connection.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if !status.is_success() {
            bail!("delivery {n} answered {status}");
        }
        self.idle.lock().expect("not poisoned").push(connection);
        Ok(())
    }

    /// A new HTTP/1.1 connection, driven by a task of its own.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn closed_loop(self: &Arc<Self>, workers: usize, length: Duration) -> Result<Phase> {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let load = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < length {
                    let n = load.next.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    load.send(n).await?;
                    latencies.push(micros(sent.elapsed()));
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies_us = Vec::new();
        for task in tasks {
            latencies_us.extend(task.await??);
        }
        Ok(Phase {
            sent: latencies_us.len(),
            elapsed: start.elapsed(),
            latencies_us,
            target_rate: None,
        })
    }

    async fn open_loop(self: &Arc<Self>, rate: u64, length: Duration) -> Result<Phase> {
        let total = rate * length.as_secs();
        let interval = Duration::from_secs(1) / u32::try_from(rate)?;
        // Paced by a thread of its own with `thread::sleep` (microsecond
        // resolution): tokio's timer wheel ticks in whole milliseconds, which
        // at 1,000/s would add up to a millisecond of the sender's own lateness
        // to every latency measured from the due time.
        let runtime = tokio::runtime::Handle::current();
        let load = Arc::clone(self);
        let pacer = std::thread::spawn(move || {
            let start = Instant::now();
            let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            for i in 0..total {
                let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    #[allow(
                        clippy::disallowed_methods,
                        reason = "the pacer's own thread, not a runtime's"
                    )]
                    std::thread::sleep(wait);
                }
                let load = Arc::clone(&load);
                tasks.push(runtime.spawn(async move {
                    let n = load.next.fetch_add(1, Ordering::Relaxed);
                    load.send(n).await?;
                    anyhow::Ok(micros(due.elapsed()))
                }));
            }
            (start, tasks)
        });
        let (start, tasks) =
            tokio::task::spawn_blocking(move || pacer.join()).await?.expect("the pacer panicked");
        let mut latencies_us = Vec::with_capacity(tasks.len());
        for task in tasks {
            latencies_us.push(task.await??);
        }
        Ok(Phase {
            sent: latencies_us.len(),
            elapsed: start.elapsed(),
            latencies_us,
            target_rate: Some(rate),
        })
    }
}

impl Phase {
    fn to_json(&self) -> serde_json::Value {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let pct = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
            #[allow(clippy::cast_precision_loss)]
            let ms = sorted[idx] as f64 / 1000.0;
            (ms * 1000.0).round() / 1000.0
        };
        #[allow(clippy::cast_precision_loss)]
        let per_second = self.sent as f64 / self.elapsed.as_secs_f64();
        json!({
            "target_per_second": self.target_rate,
            "deliveries": self.sent,
            "seconds": (self.elapsed.as_secs_f64() * 100.0).round() / 100.0,
            "deliveries_per_second": per_second.round(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A `workflow_job` payload shaped and sized like GitHub's (about 8 KB:
/// most of it is the repository object's URLs).
fn payload(job: u64, action: &str) -> Vec<u8> {
    let repo = "octo-org/hello-world";
    let api = format!("https://api.github.com/repos/{repo}");
    let mut repository = serde_json::Map::new();
    repository.insert("id".into(), 1_296_269.into());
    repository.insert("full_name".into(), repo.into());
    repository.insert("name".into(), "hello-world".into());
    repository.insert("private".into(), false.into());
    for key in [
        "archive",
        "assignees",
        "blobs",
        "branches",
        "collaborators",
        "comments",
        "commits",
        "compare",
        "contents",
        "contributors",
        "deployments",
        "downloads",
        "events",
        "forks",
        "git_commits",
        "git_refs",
        "git_tags",
        "hooks",
        "issue_comment",
        "issue_events",
        "issues",
        "keys",
        "labels",
        "languages",
        "merges",
        "milestones",
        "notifications",
        "pulls",
        "releases",
        "stargazers",
        "statuses",
        "subscribers",
        "subscription",
        "tags",
        "teams",
        "trees",
    ] {
        repository.insert(format!("{key}_url"), format!("{api}/{key}{{/sha}}").into());
    }
    let owner: serde_json::Map<String, serde_json::Value> = [
        "avatar",
        "events",
        "followers",
        "following",
        "gists",
        "html",
        "organizations",
        "repos",
        "starred",
        "subscriptions",
    ]
    .iter()
    .map(|key| {
        (format!("{key}_url"), format!("https://api.github.com/users/octo-org/{key}").into())
    })
    .collect();
    repository.insert("owner".into(), owner.into());
    let assigned = action != "queued";
    let body = json!({
        "action": action,
        "workflow_job": {
            "id": job,
            "run_id": job * 7,
            "run_attempt": 1,
            "run_url": format!("{api}/actions/runs/{}", job * 7),
            "node_id": "CR_kwDOB7Mfk88AAAAA",
            "head_sha": "3484a3fb816e0859fd6e1cea078d76385ff50625",
            "url": format!("{api}/actions/jobs/{job}"),
            "html_url": format!("https://github.com/{repo}/runs/{job}"),
            "status": action,
            "conclusion": if action == "completed" { json!("success") } else { json!(null) },
            "created_at": "2026-11-01T10:00:00Z",
            "started_at": "2026-11-01T10:00:05Z",
            "completed_at": if action == "completed" { json!("2026-11-01T10:03:00Z") } else { json!(null) },
            "name": "build (ubuntu, stable)",
            "steps": [],
            "check_run_url": format!("{api}/check-runs/{job}"),
            "labels": ["self-hosted", "linux", "x64"],
            "runner_id": if assigned { json!(42) } else { json!(null) },
            "runner_name": if assigned { json!("hangar-linux-000000000000002a") } else { json!(null) },
            "runner_group_id": if assigned { json!(1) } else { json!(null) },
            "runner_group_name": if assigned { json!("Default") } else { json!(null) },
            "workflow_name": "CI",
            "head_branch": "main",
        },
        "repository": repository,
        "organization": { "login": "octo-org", "id": 9_919 },
        "sender": { "login": "octocat", "id": 1 },
        "installation": { "id": 3_456_996, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMzQ1Njk5Ng==" },
    });
    serde_json::to_vec(&body).expect("json")
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some(ticks as f64 / 100.0)
}

/// The child's peak resident set (VmHWM), from /proc.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
