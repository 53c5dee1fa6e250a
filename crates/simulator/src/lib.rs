//! A GitHub stand-in for tests and `hangar demo`: an axum server on
//! 127.0.0.1 that speaks the REST shapes of
//! `shared/fixtures/github/rest-subset.json`, registers JIT runners, hands
//! queued jobs to connected runners and sends signed `workflow_job`
//! webhooks, with knobs to make every one of those misbehave.
//!
//! It is the fake of the GitHub side: hangar's real `RestClient` talks to it
//! over real HTTP, and real runner processes (`hangar-standin-runner`) connect
//! to it, so tests exercise the wire formats, not a mock of them.
//!
//! # Driving it from a test
//!
//! ```ignore
//! let sim = Simulator::start(SimConfig {
//!     webhook_url: Some(format!("http://{hangar_addr}/webhook")),
//!     ..SimConfig::default()
//! }).await?;
//! let client_base = sim.api_url();           // http://127.0.0.1:PORT
//! let token = SimConfig::DEFAULT_PAT;        // accepted as a PAT
//! let job = sim.job_queue(JobSpec::new("octo-org/app", ["self-hosted", "linux"]));
//! sim.faults_set(Faults { webhook_drop: 0.3, ..Faults::default() });
//! wait_for("job done", t, || async { (sim.job(job)?.status == SimJobStatus::Completed).then_some(()) }).await;
//! assert_eq!(sim.counters().registrations_alive, 0);
//! ```
//!
//! # What it models (and how GitHub behaves, see `research/github-api.md`)
//! - **JIT runners.** `generate-jitconfig` (org and repo level) creates an
//!   `offline` registration and returns `encoded_jit_config`: base64 of a
//!   JSON map of file names (`.runner`, `.credentials`,
//!   `.credentials_rsaparams`) to base64 file contents, like the real one.
//!   `.runner`'s `ServerUrl` points at this simulator; `.credentials` holds
//!   the runner's own token. A second registration with the same name in a
//!   scope is 409. A registration nobody connects to stays `offline` until
//!   deleted (GitHub keeps it ~24 h).
//! - **Runner protocol** (`/_runner/...`, spoken by `hangar-standin-runner`,
//!   not a GitHub API): connect (→ `online`), long-poll for a job, renew while
//!   running, complete. After its job, or when its registration is deleted,
//!   the runner is told to go away, and the registration is removed, as an
//!   ephemeral runner's is.
//! - **Assignment.** A queued job goes to ANY idle online runner whose labels
//!   are a superset of the job's (case-insensitive) and whose scope covers the
//!   job's repository (org runners: repositories of that owner), oldest job
//!   first. So a runner minted for job A can take job B, as on GitHub. A runner
//!   counts as busy from assignment: `DELETE` then answers 422.
//! - **Webhooks.** `workflow_job` `queued`, `in_progress`, `completed`,
//!   shaped like the fixtures, signed with `X-Hub-Signature-256`, with
//!   `X-GitHub-Event`, `X-GitHub-Delivery`, `X-GitHub-Hook-ID` and a
//!   `GitHub-Hookshot/` user agent. Every attempt is logged in the App's
//!   delivery log (`/app/hook/deliveries`, redeliverable).
//! - **Auth.** A personal access token ([`SimConfig::pat`]) and, when
//!   [`SimConfig::app`] is set, GitHub App auth: RS256 JWTs are verified with
//!   the App's public key, installation tokens expire after
//!   [`SimConfig::installation_token_ttl`].
//! - **Rate limits.** `x-ratelimit-*` headers on every API response; with
//!   [`SimConfig::rate_limit`] a real budget per window (403 when spent).
//! - **Faults** ([`Faults`], changeable at any time): drop (logged as failed),
//!   vanish (never sent nor logged), duplicate, reorder and delay webhooks;
//!   fail (5xx, or a given status; at rate 1.0 an outage until the faults
//!   change), lose the response of (effect applied, 502 returned), time
//!   out, slow down or rate-limit (429 with `retry-after`) API calls.
//!
//! Randomness comes from one seeded RNG ([`SimConfig::seed`]) so a failing
//! test can be replayed with the same draws (modulo task scheduling).

mod api;
pub mod netns;
mod runner_proto;
mod state;
mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hangar_types::{ErrorChain, Timestamp};
use serde::{Deserialize, Serialize};

pub use state::{Shared, SimJob, SimJobStatus, SimRunner, SimRunnerStatus};

/// Everything the simulator is told at start. `Default` gives a usable
/// setup: organization `octo-org`, repositories `octo-org/app` and
/// `octo-org/lib`, PAT [`SimConfig::DEFAULT_PAT`], no App, no webhooks.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where webhooks go (`http://127.0.0.1:PORT/webhook`); `None` sends none.
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    /// Organizations runners can be registered in.
    pub orgs: Vec<String>,
    /// Repositories (`owner/name`) of the installation.
    pub repos: Vec<String>,
    /// Accepted personal access token, if any.
    pub pat: Option<String>,
    /// GitHub App auth, if any.
    pub app: Option<SimApp>,
    pub installation_id: i64,
    pub installation_token_ttl: Duration,
    /// A primary rate-limit budget; `None` = unlimited (headers still sent).
    pub rate_limit: Option<RateLimitConfig>,
    /// A busy runner that has not renewed its job for this long is lost: its
    /// job fails and it goes offline (GitHub notices dead runners too). An
    /// idle one that stops polling goes offline. At least `long_poll` + 1 s.
    pub runner_lost_after: Duration,
    /// How long a runner's long-poll for a job waits before answering 204.
    pub long_poll: Duration,
    /// GitHub removes an ephemeral registration nobody connected to after a
    /// day; `Some(d)` makes the simulator do the same after `d` (so a
    /// reaper meets 404s). `None` (default): it lingers until deleted.
    pub unconnected_registration_ttl: Option<Duration>,
    pub faults: Faults,
    pub seed: u64,
}

impl SimConfig {
    pub const DEFAULT_PAT: &'static str = "ghp_simulator_token";
    pub const DEFAULT_WEBHOOK_SECRET: &'static str = "simulator-webhook-secret";
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            webhook_url: None,
            webhook_secret: SimConfig::DEFAULT_WEBHOOK_SECRET.to_owned(),
            orgs: vec!["octo-org".to_owned()],
            repos: vec!["octo-org/app".to_owned(), "octo-org/lib".to_owned()],
            pat: Some(SimConfig::DEFAULT_PAT.to_owned()),
            app: None,
            installation_id: 4242,
            installation_token_ttl: Duration::from_secs(3600),
            rate_limit: None,
            runner_lost_after: Duration::from_secs(30),
            long_poll: Duration::from_secs(10),
            unconnected_registration_ttl: None,
            faults: Faults::default(),
            seed: 1,
        }
    }
}

/// The simulated GitHub App.
#[derive(Debug, Clone)]
pub struct SimApp {
    /// The JWT's `iss`: the App id (`"123"`) or client id (`"Iv1.abc"`).
    pub app_id: String,
    /// PEM of the App's public key; JWTs are verified with it.
    pub public_key_pem: String,
}

/// A primary rate-limit budget: `limit` requests per `window`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub limit: u64,
    pub window: Duration,
}

/// Fault injection. Rates are probabilities in `0.0..=1.0`, drawn per
/// webhook or per API call. API faults apply to the REST API only, never to
/// the runner protocol or `/_sim`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Webhook not sent, logged as a failed delivery (redeliverable).
    pub webhook_drop: f64,
    /// Webhook neither sent nor logged (only polling finds the job).
    pub webhook_vanish: f64,
    /// Webhook sent twice (same `X-GitHub-Delivery`).
    pub webhook_duplicate: f64,
    /// Webhook held back by `webhook_reorder_delay`, so later ones overtake it.
    pub webhook_reorder: f64,
    pub webhook_reorder_delay: Duration,
    /// Added to every webhook.
    pub webhook_delay: Duration,
    /// API call answered 500/502/503 without effect. With `1.0` (and
    /// `api_endpoints`) an outage that lasts until the faults are changed.
    pub api_fail: f64,
    /// The status `api_fail` answers with instead of a 5xx drawn at
    /// random, e.g. 422: a request GitHub refuses as such.
    pub api_fail_status: Option<u16>,
    /// Mutating API call performed, then answered 502 (lost response).
    pub api_lost_response: f64,
    /// API call that hangs for `api_timeout_hang`, then answers 504.
    pub api_timeout: f64,
    pub api_timeout_hang: Duration,
    /// Added to every API call.
    pub api_delay: Duration,
    /// API call answered 429 (secondary limit) with `retry-after`.
    pub api_rate_limit: f64,
    pub api_retry_after_secs: u64,
    /// Answer the secondary limit with 403 (as GitHub also does) instead of 429.
    pub api_rate_limit_forbidden: bool,
    /// Only these endpoints (e.g. `"POST /orgs/{org}/actions/runners/generate-jitconfig"`)
    /// get API faults; empty = all.
    pub api_endpoints: Vec<String>,
}

/// A job to queue.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// `owner/name`.
    pub repo: String,
    pub labels: Vec<String>,
    /// How long the runner works on it.
    pub duration: Duration,
    /// The conclusion the runner reports.
    pub conclusion: String,
    pub name: String,
    pub workflow_name: String,
    /// Put the job in an existing run (see [`SimJob::run_id`]); new run if `None`.
    pub run_id: Option<i64>,
    /// Send webhooks for this job (false: GitHub "forgot" it entirely).
    pub webhooks: bool,
}

impl JobSpec {
    pub fn new<I, S>(repo: &str, labels: I) -> JobSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        JobSpec {
            repo: repo.to_owned(),
            labels: labels.into_iter().map(Into::into).collect(),
            duration: Duration::from_millis(100),
            conclusion: "success".to_owned(),
            name: "build".to_owned(),
            workflow_name: "CI".to_owned(),
            run_id: None,
            webhooks: true,
        }
    }

    pub fn duration(mut self, duration: Duration) -> JobSpec {
        self.duration = duration;
        self
    }
}

/// Numbers a test can assert on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// REST calls per endpoint, keyed `"METHOD /path/{template}"` (faulted
    /// and rate-limited ones included).
    pub api_calls: BTreeMap<String, u64>,
    pub api_calls_total: u64,
    /// REST calls that came without `X-GitHub-Api-Version` (GitHub serves
    /// them as 2022-11-28; hangar always pins it, so tests expect 0).
    pub api_calls_unversioned: u64,
    /// Conditional GETs answered 304 (free for the rate limit).
    pub api_calls_not_modified: u64,
    /// Registrations that exist (any status).
    pub registrations_alive: u64,
    pub registrations_created: u64,
    pub registrations_deleted: u64,
    /// Never-connected registrations removed by `unconnected_registration_ttl`.
    pub registrations_expired: u64,
    /// `DELETE` refused with 422 because the runner was busy.
    pub delete_refused_busy: u64,
    pub runners_online: u64,
    pub runners_busy: u64,
    pub jobs_queued: u64,
    pub jobs_in_progress: u64,
    pub jobs_completed: u64,
    pub webhooks_sent: u64,
    pub webhooks_dropped: u64,
    pub webhooks_vanished: u64,
    pub webhooks_duplicated: u64,
    pub redeliveries: u64,
    pub installation_tokens_issued: u64,
}

/// A delivery log entry, as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDelivery {
    pub id: i64,
    pub guid: String,
    pub action: String,
    pub job_id: i64,
    pub status_code: u16,
    pub redelivery: bool,
    pub delivered_at: Timestamp,
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds 127.0.0.1 on a free port and serves until the handle is dropped.
    pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
        Simulator::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`Simulator::start`] on a given address (127.0.0.1 only, please).
    pub async fn start_on(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Simulator::serve(config, listener)
    }

    /// Like [`Simulator::start`] on a listener the caller bound, e.g. inside
    /// a network namespace a test made (a socket stays in the namespace it
    /// was created in). The JIT configs' server URL is its local address.
    pub async fn start_with_listener(
        config: SimConfig,
        listener: std::net::TcpListener,
    ) -> std::io::Result<SimHandle> {
        listener.set_nonblocking(true)?;
        Simulator::serve(config, tokio::net::TcpListener::from_std(listener)?)
    }

    fn serve(config: SimConfig, listener: tokio::net::TcpListener) -> std::io::Result<SimHandle> {
        let addr = listener.local_addr()?;
        let shared = Shared::new(config, addr);
        let router = api::router(shared.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(error = %ErrorChain(&error), "simulator server stopped");
            }
        });
        let ticker = tokio::spawn(state::tick_loop(shared.clone()));
        Ok(SimHandle { shared, addr, tasks: vec![server, ticker], stop: Some(stop_tx) })
    }
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The REST API base URL (`http://127.0.0.1:PORT`), for the client's
    /// `api_url` (it also serves `/api/v3/...`, the GHES layout).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[webhook]` and `[github]` sections of a `hangar.toml` that talks
    /// to this simulator (its webhook secret, its API, its token, the
    /// repository `octo-org/app`), with `[scheduler] runner_scope =
    /// "octo-org"` and the given scheduler keys, for tests, the demo and
    /// benchmarks.
    pub fn hangar_toml(&self, scheduler: &str) -> String {
        format!(
            "[webhook]\nsecret = \"{secret}\"\n[github]\napi_url = \"{api}\"\ntoken = \"{token}\"\n\
             repositories = [\"octo-org/app\"]\n[scheduler]\nrunner_scope = \"octo-org\"\n{scheduler}\n",
            secret = SimConfig::DEFAULT_WEBHOOK_SECRET,
            api = self.api_url(),
            token = SimConfig::DEFAULT_PAT,
        )
    }

    /// Queues a job: sends `queued` (unless the spec says no webhooks) and
    /// hands it to a matching idle runner when there is one. Call it from
    /// within a Tokio runtime (webhooks are sent by spawned tasks).
    pub fn job_queue(&self, spec: JobSpec) -> i64 {
        self.shared.job_queue(spec)
    }

    /// Cancels a job that is still queued (a `completed`/`cancelled` webhook
    /// with no runner follows, as on GitHub). False if it was not queued.
    pub fn job_cancel(&self, job_id: i64) -> bool {
        self.shared.job_cancel(job_id)
    }

    pub fn job(&self, job_id: i64) -> Option<SimJob> {
        self.shared.job(job_id)
    }

    pub fn jobs(&self) -> Vec<SimJob> {
        self.shared.jobs()
    }

    /// Registrations that exist, deleted ones excluded.
    pub fn runners(&self) -> Vec<SimRunner> {
        self.shared.runners()
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    pub fn deliveries(&self) -> Vec<SimDelivery> {
        self.shared.deliveries()
    }

    pub fn faults_set(&self, faults: Faults) {
        self.shared.faults_set(faults);
    }

    pub fn webhook_url_set(&self, url: Option<String>) {
        self.shared.webhook_url_set(url);
    }

    /// Replaces the rate-limit budget and starts a fresh window.
    pub fn rate_limit_set(&self, rate_limit: Option<RateLimitConfig>) {
        self.shared.rate_limit_set(rate_limit);
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.shared.shutdown();
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shared.shutdown();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A freshly generated GitHub App key pair, PEM-encoded (PKCS#1 private key,
/// as GitHub hands it out; SPKI public key).
#[derive(Clone)]
pub struct AppKeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

impl std::fmt::Debug for AppKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeyPair").field("public_pem", &self.public_pem).finish_non_exhaustive()
    }
}

/// Generates a 2048-bit RSA key pair for a simulated App (tests and the
/// demo; takes a moment). Through aws-lc-rs, the library that signs App JWTs
/// in production; the private key is PKCS#8 PEM, which hangar reads as it
/// reads GitHub's PKCS#1 downloads.
pub fn app_key_generate() -> AppKeyPair {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("RSA key generation with the OS RNG cannot fail");
    let private = key.as_der().expect("a fresh key encodes");
    let public = key.public_key().as_der().expect("a fresh key encodes");
    AppKeyPair {
        private_pem: pem("PRIVATE KEY", private.as_ref()),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

/// PEM armour (RFC 7468): base64 in lines of 64 between the labels.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
