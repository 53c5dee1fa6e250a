//! The simulator's world: registrations, jobs, runs, the delivery log and
//! the counters, behind one mutex.
//!
//! Every change goes through a method of [`Shared`] that takes the lock,
//! mutates, collects the webhooks to send, drops the lock and only then
//! sends them; nothing awaits while holding the lock. Changes wake every
//! long-polling runner through one `Notify`, which then re-check their own
//! registration.
//!
//! # Runner states
//!
//! ```text
//!  created (offline) ──connect──► online idle ──assigned──► busy ──complete──► removed
//!        │                           │                        │
//!        └──── DELETE ──► removed ◄──┘ DELETE        renew stops ──► offline (job fails)
//! ```
//!
//! `DELETE` of a busy runner is refused (422). An idle online runner that
//! stops polling for `runner_lost_after` goes back to offline.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use hangar_types::{Labels, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::webhooks::Outgoing;
use crate::{Counters, Faults, JobSpec, RateLimitConfig, SimConfig, SimDelivery};

/// Where a registration lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Org(String),
    /// `owner/name`.
    Repo(String),
}

impl Scope {
    fn covers(&self, repo: &str) -> bool {
        match self {
            Scope::Org(org) => {
                repo.split_once('/').is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(org))
            }
            Scope::Repo(full) => full.eq_ignore_ascii_case(repo),
        }
    }
}

/// A registration as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRunner {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub status: SimRunnerStatus,
    /// The job assigned to it, if any.
    pub job_id: Option<i64>,
    /// Whether a runner process ever connected with this registration.
    pub ever_connected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimRunnerStatus {
    Offline,
    Idle,
    Busy,
}

/// A job as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimJob {
    pub id: i64,
    pub run_id: i64,
    pub repo: String,
    pub labels: Vec<String>,
    pub status: SimJobStatus,
    pub conclusion: Option<String>,
    pub runner_id: Option<i64>,
    pub runner_name: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimJobStatus {
    Queued,
    InProgress,
    Completed,
}

impl SimJobStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SimJobStatus::Queued => "queued",
            SimJobStatus::InProgress => "in_progress",
            SimJobStatus::Completed => "completed",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) scope: Scope,
    pub(crate) labels_raw: Vec<String>,
    labels: Labels,
    pub(crate) group_id: i64,
    pub(crate) token: String,
    pub(crate) online: bool,
    pub(crate) ever_connected: bool,
    pub(crate) job: Option<i64>,
    /// Whether the assigned job has been handed to the runner process.
    job_delivered: bool,
    last_seen: Instant,
    created: Instant,
}

impl Runner {
    pub(crate) fn status(&self) -> SimRunnerStatus {
        match (self.online, self.job) {
            (_, Some(_)) => SimRunnerStatus::Busy,
            (true, None) => SimRunnerStatus::Idle,
            (false, None) => SimRunnerStatus::Offline,
        }
    }

    fn view(&self) -> SimRunner {
        SimRunner {
            id: self.id,
            name: self.name.clone(),
            labels: self.labels_raw.clone(),
            status: self.status(),
            job_id: self.job,
            ever_connected: self.ever_connected,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: i64,
    pub(crate) run_id: i64,
    pub(crate) repo: String,
    pub(crate) labels_raw: Vec<String>,
    labels: Labels,
    pub(crate) name: String,
    pub(crate) workflow_name: String,
    pub(crate) head_sha: String,
    duration: Duration,
    conclusion_wanted: String,
    pub(crate) status: SimJobStatus,
    pub(crate) conclusion: Option<String>,
    /// `(id, name, group id)` of the runner that took it.
    pub(crate) runner: Option<(i64, String, i64)>,
    pub(crate) created_at: Timestamp,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) completed_at: Option<Timestamp>,
    webhooks: bool,
    last_renew: Instant,
}

impl Job {
    fn view(&self) -> SimJob {
        SimJob {
            id: self.id,
            run_id: self.run_id,
            repo: self.repo.clone(),
            labels: self.labels_raw.clone(),
            status: self.status,
            conclusion: self.conclusion.clone(),
            runner_id: self.runner.as_ref().map(|r| r.0),
            runner_name: self.runner.as_ref().map(|r| r.1.clone()),
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) repo: String,
    pub(crate) jobs: Vec<i64>,
    pub(crate) created_at: Timestamp,
    pub(crate) head_sha: String,
    pub(crate) workflow_name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) id: i64,
    pub(crate) guid: String,
    pub(crate) action: String,
    pub(crate) job_id: i64,
    pub(crate) repository_id: i64,
    pub(crate) body: Arc<Vec<u8>>,
    pub(crate) redelivery: bool,
    /// False until the attempt happened (or was dropped).
    pub(crate) attempted: bool,
    pub(crate) status_code: u16,
    pub(crate) status: String,
    pub(crate) delivered_at: Timestamp,
    pub(crate) duration: f64,
}

#[derive(Debug)]
pub(crate) struct RateWindow {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset_at: Timestamp,
    window: Duration,
}

impl RateWindow {
    fn new(config: RateLimitConfig) -> RateWindow {
        RateWindow {
            limit: config.limit,
            remaining: config.limit,
            reset_at: Utc::now() + config.window,
            window: config.window,
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: SimConfig,
    pub(crate) rng: StdRng,
    next_runner_id: i64,
    next_job_id: i64,
    next_run_id: i64,
    next_delivery_id: i64,
    pub(crate) runners: BTreeMap<i64, Runner>,
    pub(crate) jobs: BTreeMap<i64, Job>,
    pub(crate) runs: BTreeMap<i64, Run>,
    pub(crate) deliveries: BTreeMap<i64, Delivery>,
    /// Installation tokens and their expiry.
    pub(crate) tokens: HashMap<String, Timestamp>,
    pub(crate) counters: Counters,
    pub(crate) rate: Option<RateWindow>,
}

/// What a runner's long-poll gets.
#[derive(Debug)]
pub(crate) enum Poll {
    Job {
        job_id: i64,
        duration: Duration,
        conclusion: String,
    },
    Nothing,
    /// The registration is gone: exit.
    Gone,
}

/// The simulator's shared state and the things that act on it.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    pub(crate) changed: Notify,
    pub(crate) addr: SocketAddr,
    pub(crate) http: reqwest::Client,
    stopped: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: SimConfig, addr: SocketAddr) -> Arc<Shared> {
        let rate = config.rate_limit.map(RateWindow::new);
        let state = State {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            next_runner_id: 1,
            next_job_id: 1_000_001,
            next_run_id: 50_001,
            next_delivery_id: 9_000_001,
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            runs: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            tokens: HashMap::new(),
            counters: Counters::default(),
            rate,
        };
        Arc::new(Shared {
            state: Mutex::new(state),
            changed: Notify::new(),
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
            stopped: AtomicBool::new(false),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn server_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    // ---- test-facing views and knobs -------------------------------------

    pub(crate) fn job(&self, id: i64) -> Option<SimJob> {
        self.lock().jobs.get(&id).map(Job::view)
    }

    pub(crate) fn jobs(&self) -> Vec<SimJob> {
        self.lock().jobs.values().map(Job::view).collect()
    }

    pub(crate) fn runners(&self) -> Vec<SimRunner> {
        self.lock().runners.values().map(Runner::view).collect()
    }

    pub(crate) fn counters(&self) -> Counters {
        let state = self.lock();
        let mut counters = state.counters.clone();
        counters.registrations_alive = state.runners.len() as u64;
        counters.runners_online = state.runners.values().filter(|r| r.online).count() as u64;
        counters.runners_busy = state.runners.values().filter(|r| r.job.is_some()).count() as u64;
        for job in state.jobs.values() {
            match job.status {
                SimJobStatus::Queued => counters.jobs_queued += 1,
                SimJobStatus::InProgress => counters.jobs_in_progress += 1,
                SimJobStatus::Completed => counters.jobs_completed += 1,
            }
        }
        counters
    }

    pub(crate) fn deliveries(&self) -> Vec<SimDelivery> {
        self.lock()
            .deliveries
            .values()
            .map(|d| SimDelivery {
                id: d.id,
                guid: d.guid.clone(),
                action: d.action.clone(),
                job_id: d.job_id,
                status_code: d.status_code,
                redelivery: d.redelivery,
                delivered_at: d.delivered_at,
            })
            .collect()
    }

    pub(crate) fn faults_set(&self, faults: Faults) {
        self.lock().config.faults = faults;
    }

    pub(crate) fn webhook_url_set(&self, url: Option<String>) {
        self.lock().config.webhook_url = url;
    }

    pub(crate) fn rate_limit_set(&self, rate_limit: Option<RateLimitConfig>) {
        let mut state = self.lock();
        state.config.rate_limit = rate_limit;
        state.rate = rate_limit.map(RateWindow::new);
    }

    // ---- jobs -------------------------------------------------------------

    pub(crate) fn job_queue(self: &Arc<Self>, spec: JobSpec) -> i64 {
        let mut out = Vec::new();
        let id = {
            let mut state = self.lock();
            let now = Utc::now();
            let id = state.next_job_id;
            state.next_job_id += 1;
            let run_id = match spec.run_id.filter(|run| state.runs.contains_key(run)) {
                Some(run) => run,
                None => {
                    let run = state.next_run_id;
                    state.next_run_id += 1;
                    let head_sha = format!("{:040x}", state.rng.random::<u128>());
                    state.runs.insert(
                        run,
                        Run {
                            repo: spec.repo.clone(),
                            jobs: Vec::new(),
                            created_at: now,
                            head_sha,
                            workflow_name: spec.workflow_name.clone(),
                        },
                    );
                    run
                }
            };
            let run = state.runs.get_mut(&run_id).expect("inserted above");
            run.jobs.push(id);
            let head_sha = run.head_sha.clone();
            let repo = run.repo.clone();
            state.jobs.insert(
                id,
                Job {
                    id,
                    run_id,
                    repo,
                    labels: Labels::new(spec.labels.iter().cloned()),
                    labels_raw: spec.labels,
                    name: spec.name,
                    workflow_name: spec.workflow_name,
                    head_sha,
                    duration: spec.duration,
                    conclusion_wanted: spec.conclusion,
                    status: SimJobStatus::Queued,
                    conclusion: None,
                    runner: None,
                    created_at: now,
                    started_at: None,
                    completed_at: None,
                    webhooks: spec.webhooks,
                    last_renew: Instant::now(),
                },
            );
            state.webhook_plan(id, "queued", &mut out);
            state.assign(&mut out);
            id
        };
        self.after_change(out);
        id
    }

    pub(crate) fn job_cancel(self: &Arc<Self>, id: i64) -> bool {
        let mut out = Vec::new();
        let cancelled = {
            let mut state = self.lock();
            match state.jobs.get_mut(&id) {
                Some(job) if job.status == SimJobStatus::Queued => {
                    job.status = SimJobStatus::Completed;
                    job.conclusion = Some("cancelled".to_owned());
                    job.completed_at = Some(Utc::now());
                    state.webhook_plan(id, "completed", &mut out);
                    true
                }
                _ => false,
            }
        };
        self.after_change(out);
        cancelled
    }

    /// Sends what was planned and wakes the long-polls.
    pub(crate) fn after_change(self: &Arc<Self>, out: Vec<Outgoing>) {
        for outgoing in out {
            crate::webhooks::spawn_send(self.clone(), outgoing);
        }
        self.changed.notify_waiters();
    }

    // ---- registrations ----------------------------------------------------

    /// Creates a registration. `Err(())` if the name exists in the scope.
    pub(crate) fn runner_register(
        self: &Arc<Self>,
        scope: Scope,
        name: &str,
        labels: Vec<String>,
        group_id: i64,
    ) -> Result<(i64, String), ()> {
        let mut state = self.lock();
        if state.runners.values().any(|r| r.scope == scope && r.name == name) {
            return Err(());
        }
        let id = state.next_runner_id;
        state.next_runner_id += 1;
        // The id leads the token so a runner's calls find it without a scan.
        let token = format!("simrunner_{id}_{:032x}", state.rng.random::<u128>());
        state.runners.insert(
            id,
            Runner {
                id,
                name: name.to_owned(),
                scope,
                labels: Labels::new(labels.iter().cloned()),
                labels_raw: labels,
                group_id,
                token: token.clone(),
                online: false,
                ever_connected: false,
                job: None,
                job_delivered: false,
                last_seen: Instant::now(),
                created: Instant::now(),
            },
        );
        state.counters.registrations_created += 1;
        Ok((id, token))
    }

    /// `DELETE` of a registration: `Some(true)` deleted, `Some(false)` busy,
    /// `None` no such runner.
    pub(crate) fn runner_delete(self: &Arc<Self>, scope: &Scope, id: i64) -> Option<bool> {
        let result = {
            let mut state = self.lock();
            match state.runners.get(&id) {
                Some(runner) if runner.scope == *scope => {
                    if runner.job.is_some() {
                        state.counters.delete_refused_busy += 1;
                        Some(false)
                    } else {
                        state.runners.remove(&id);
                        state.counters.registrations_deleted += 1;
                        Some(true)
                    }
                }
                _ => None,
            }
        };
        self.changed.notify_waiters();
        result
    }

    fn runner_by_token<'s>(state: &'s mut State, token: &str) -> Option<&'s mut Runner> {
        let (id, _) = token.strip_prefix("simrunner_")?.split_once('_')?;
        state.runners.get_mut(&id.parse().ok()?).filter(|r| r.token == token)
    }

    /// A runner process connects. False if the registration is gone.
    pub(crate) fn runner_connect(self: &Arc<Self>, token: &str) -> bool {
        let mut out = Vec::new();
        let found = {
            let mut state = self.lock();
            match Shared::runner_by_token(&mut state, token) {
                Some(runner) => {
                    runner.online = true;
                    runner.ever_connected = true;
                    runner.last_seen = Instant::now();
                    state.assign(&mut out);
                    true
                }
                None => false,
            }
        };
        self.after_change(out);
        found
    }

    /// A runner's long-poll for work.
    pub(crate) async fn runner_poll(self: &Arc<Self>, token: &str, wait: Duration) -> Poll {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut out = Vec::new();
                let poll = {
                    let mut state = self.lock();
                    let Some(runner) = Shared::runner_by_token(&mut state, token) else {
                        return Poll::Gone;
                    };
                    runner.last_seen = Instant::now();
                    let became_online = !runner.online;
                    runner.online = true;
                    runner.ever_connected = true;
                    let mut poll = Poll::Nothing;
                    if let (Some(job_id), false) = (runner.job, runner.job_delivered) {
                        runner.job_delivered = true;
                        if let Some(job) = state.jobs.get_mut(&job_id) {
                            job.last_renew = Instant::now();
                            poll = Poll::Job {
                                job_id,
                                duration: job.duration,
                                conclusion: job.conclusion_wanted.clone(),
                            };
                        }
                    } else if became_online {
                        state.assign(&mut out);
                    }
                    poll
                };
                // Wake the long-polls only for a change they can see. Every
                // poll's own `notified` is already enabled here, so waking
                // for nothing would wake this poll too, and the rest again:
                // idle runners would spin the CPU until their polls expire.
                let assigned = !out.is_empty();
                if assigned {
                    self.after_change(out);
                }
                if !matches!(poll, Poll::Nothing) {
                    return poll;
                }
                if assigned {
                    continue;
                }
            }
            if self.is_stopped() || Instant::now() >= deadline {
                return Poll::Nothing;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// A busy runner says it still works on `job_id`. False: stop (the job
    /// or registration is gone).
    pub(crate) fn runner_renew(&self, token: &str, job_id: i64) -> bool {
        let mut state = self.lock();
        let Some(runner) = Shared::runner_by_token(&mut state, token) else {
            return false;
        };
        runner.last_seen = Instant::now();
        if runner.job != Some(job_id) {
            return false;
        }
        match state.jobs.get_mut(&job_id) {
            Some(job) if job.status == SimJobStatus::InProgress => {
                job.last_renew = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// A runner finished its job: the job completes and the ephemeral
    /// registration is removed.
    pub(crate) fn runner_complete(
        self: &Arc<Self>,
        token: &str,
        job_id: i64,
        conclusion: &str,
    ) -> bool {
        let mut out = Vec::new();
        let ok = {
            let mut state = self.lock();
            let Some(runner) = Shared::runner_by_token(&mut state, token) else {
                return false;
            };
            if runner.job != Some(job_id) {
                return false;
            }
            let runner_id = runner.id;
            state.runners.remove(&runner_id);
            if let Some(job) = state.jobs.get_mut(&job_id)
                && job.status != SimJobStatus::Completed
            {
                job.status = SimJobStatus::Completed;
                job.conclusion = Some(conclusion.to_owned());
                job.completed_at = Some(Utc::now());
                state.webhook_plan(job_id, "completed", &mut out);
            }
            state.assign(&mut out);
            true
        };
        self.after_change(out);
        ok
    }

    /// Periodic housekeeping: lost runners and rate windows.
    fn tick(self: &Arc<Self>) {
        let mut out = Vec::new();
        let changed = {
            let mut state = self.lock();
            // A long-polling runner is seen at least once per long poll.
            let lost_after =
                state.config.runner_lost_after.max(state.config.long_poll + Duration::from_secs(1));
            let now = Instant::now();
            let mut failed_jobs = Vec::new();
            let mut lost = 0;
            for runner in state.runners.values_mut() {
                if runner.online && now.duration_since(runner.last_seen) > lost_after {
                    runner.online = false;
                    lost += 1;
                    if let Some(job) = runner.job.take() {
                        failed_jobs.push(job);
                    }
                }
            }
            let mut removed = 0;
            if let Some(ttl) = state.config.unconnected_registration_ttl {
                let before = state.runners.len();
                state
                    .runners
                    .retain(|_, r| r.ever_connected || now.duration_since(r.created) < ttl);
                removed = (before - state.runners.len()) as u64;
                state.counters.registrations_expired += removed;
            }
            for job_id in failed_jobs {
                if let Some(job) = state.jobs.get_mut(&job_id)
                    && job.status == SimJobStatus::InProgress
                {
                    job.status = SimJobStatus::Completed;
                    job.conclusion = Some("failure".to_owned());
                    job.completed_at = Some(Utc::now());
                    state.webhook_plan(job_id, "completed", &mut out);
                }
            }
            lost > 0 || removed > 0
        };
        if changed || !out.is_empty() {
            self.after_change(out);
        }
    }
}

impl State {
    /// Hands queued jobs (oldest first) to idle online runners that match.
    fn assign(&mut self, out: &mut Vec<Outgoing>) {
        let queued: Vec<i64> =
            self.jobs.values().filter(|j| j.status == SimJobStatus::Queued).map(|j| j.id).collect();
        for job_id in queued {
            let job = &self.jobs[&job_id];
            let Some(runner) = self.runners.values_mut().find(|r| {
                r.online
                    && r.job.is_none()
                    && r.scope.covers(&job.repo)
                    && r.labels.is_superset_of(&job.labels)
            }) else {
                continue;
            };
            runner.job = Some(job_id);
            runner.job_delivered = false;
            let assignment = (runner.id, runner.name.clone(), runner.group_id);
            let job = self.jobs.get_mut(&job_id).expect("listed above");
            job.status = SimJobStatus::InProgress;
            job.started_at = Some(Utc::now());
            job.runner = Some(assignment);
            job.last_renew = Instant::now();
            self.webhook_plan(job_id, "in_progress", out);
        }
    }

    pub(crate) fn next_delivery_id(&mut self) -> i64 {
        let id = self.next_delivery_id;
        self.next_delivery_id += 1;
        id
    }

    pub(crate) fn job_webhooks_enabled(&self, job_id: i64) -> bool {
        self.jobs.get(&job_id).is_some_and(|j| j.webhooks)
    }

    /// Budget check for one API call: `Err(reset)` when spent.
    pub(crate) fn rate_spend(&mut self) -> Result<(), Timestamp> {
        let Some(rate) = self.rate.as_mut() else {
            return Ok(());
        };
        let now = Utc::now();
        if now >= rate.reset_at {
            rate.remaining = rate.limit;
            rate.reset_at = now + rate.window;
        }
        if rate.remaining == 0 {
            return Err(rate.reset_at);
        }
        rate.remaining -= 1;
        Ok(())
    }

    /// Gives one request back (a 304 does not count).
    pub(crate) fn rate_refund(&mut self) {
        if let Some(rate) = self.rate.as_mut() {
            rate.remaining = (rate.remaining + 1).min(rate.limit);
        }
    }

    /// `(limit, remaining, used, reset)` for the `x-ratelimit-*` headers.
    pub(crate) fn rate_headers(&self) -> (u64, u64, u64, i64) {
        match &self.rate {
            Some(rate) => {
                (rate.limit, rate.remaining, rate.limit - rate.remaining, rate.reset_at.timestamp())
            }
            None => (5000, 5000, 0, (Utc::now() + Duration::from_secs(3600)).timestamp()),
        }
    }

    pub(crate) fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.random_bool(probability.clamp(0.0, 1.0))
    }
}

pub(crate) async fn tick_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        if shared.is_stopped() {
            return;
        }
        shared.tick();
    }
}
