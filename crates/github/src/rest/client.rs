//! [`RestClient`]: the real [`GitHubApi`] over reqwest.
//!
//! One request path (`RestClient::send`) does everything cross-cutting, in
//! this order, for every attempt:
//! 1. **Reserve**: a poll is refused when the remaining budget is at or
//!    below the reserve and the window has not reset.
//! 2. **Backoff**: while a rate limit is in force (`blocked_until`), wait if
//!    it ends within `max_rate_limit_wait`, else fail with `RateLimited`.
//! 3. **Auth**: a PAT, or the App's cached installation token, refreshed
//!    `token_refresh_margin` before it expires (JWT → access token); JWT-only
//!    endpoints get a fresh-enough JWT. A 401 drops the cached token and
//!    retries once.
//! 4. **Headers**: every answer updates the budget from `x-ratelimit-*`.
//! 5. **Rate limits**: 429, or 403 with `remaining: 0` or a "rate limit"
//!    message, waits `retry-after`, else until `x-ratelimit-reset`, else
//!    `secondary_backoff` doubling per attempt; then retries (a refused
//!    request had no effect, so this is safe even for POSTs).
//! 6. **Retries**: 5xx and transport errors are retried with jittered
//!    exponential backoff, only for idempotent calls.
//!
//! List calls are conditional (`If-None-Match` with the page's last
//! `ETag`); a 304 reuses the cached page and does not count against the
//! primary limit.
//!
//! Mutating calls additionally take one of `max_concurrent_mutations`
//! permits while in flight (GitHub asks for serialised mutations).

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use hangar_types::{ErrorChain, GitHubRunnerId, InstallationId, JobId, Secret, Timestamp};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::wire::{self, ErrorBody};
use super::{
    CallPriority, GitHubApi, GitHubError, GitHubJob, GitHubRunner, HookDelivery, JitConfig,
    JitConfigRequest, RateBudget, RunnerDeletion, RunnerGroup, RunnerScope,
};

/// The API version every request pins.
pub const API_VERSION: &str = "2022-11-28";

/// At most this many pages of one list are read (a list of runners or jobs
/// this long is not real; a page that links to itself would loop forever).
pub const MAX_PAGES: usize = 1000;

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A personal access token (classic or fine-grained).
    Token(Secret),
    /// A GitHub App installation.
    App(AppCredentials),
}

/// A GitHub App and the installation hangar acts for.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    /// The JWT `iss`: the App's client id (`Iv1.…`) or numeric App id.
    pub app_id: String,
    pub installation_id: InstallationId,
    /// The App's private key, PEM (PKCS#1 as GitHub issues it, or PKCS#8).
    pub private_key_pem: Secret,
}

/// Client settings. `ClientConfig::new` gives GitHub.com defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GHES.
    pub api_url: String,
    pub auth: Auth,
    pub user_agent: String,
    pub request_timeout: Duration,
    /// Attempts after the first, for retryable failures.
    pub max_retries: u32,
    /// First backoff for 5xx/transport retries (doubles, with jitter).
    pub retry_base: Duration,
    /// The longest a call sleeps for a rate limit before giving up with
    /// [`GitHubError::RateLimited`].
    pub max_rate_limit_wait: Duration,
    /// Wait after a secondary rate limit without `retry-after` (GitHub
    /// says at least a minute); doubles per attempt.
    pub secondary_backoff: Duration,
    /// Share of the primary limit kept for essential calls; polls stop there.
    pub poll_reserve_fraction: f64,
    /// Refresh the installation token this long before it expires.
    pub token_refresh_margin: Duration,
    /// With a PAT, the repositories `installation_repository_list` returns.
    pub repositories: Vec<String>,
    /// Mutating calls (POST, DELETE) in flight at once. GitHub asks
    /// integrations to serialise them to stay clear of secondary limits; a
    /// small number keeps one slow call from holding up every launch.
    pub max_concurrent_mutations: usize,
}

impl ClientConfig {
    pub fn new(api_url: impl Into<String>, auth: Auth) -> ClientConfig {
        ClientConfig {
            api_url: api_url.into(),
            auth,
            user_agent: format!("hangar/{}", env!("CARGO_PKG_VERSION")),
            request_timeout: Duration::from_secs(30),
            max_retries: 4,
            retry_base: Duration::from_millis(500),
            max_rate_limit_wait: Duration::from_secs(60),
            secondary_backoff: Duration::from_secs(60),
            poll_reserve_fraction: 0.1,
            token_refresh_margin: Duration::from_secs(300),
            repositories: Vec::new(),
            max_concurrent_mutations: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    /// Installation token or PAT.
    Installation,
    /// The App's JWT.
    Jwt,
}

#[derive(Debug, Default)]
struct Inner {
    budget: RateBudget,
    /// Last answer per list-page URL, for conditional requests: ETag, body, next page.
    etags: std::collections::HashMap<String, (String, bytes::Bytes, Option<String>)>,
    /// The installation token and when to refresh it.
    installation_token: Option<(Secret, Timestamp)>,
    jwt: Option<(Secret, Timestamp)>,
}

/// The GitHub REST client. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RestClient {
    http: reqwest::Client,
    config: ClientConfig,
    base: String,
    /// `api_url` parsed: next-page Links must share its origin.
    origin: reqwest::Url,
    inner: Mutex<Inner>,
    token_refresh: tokio::sync::Mutex<()>,
    mutations: tokio::sync::Semaphore,
}

struct Call<'a> {
    /// Stable operation name, the metrics label (paths carry ids).
    op: &'static str,
    method: Method,
    /// Path for errors and metrics (no query string).
    path: String,
    /// Full URL, query included.
    url: String,
    body: Option<&'a serde_json::Value>,
    priority: CallPriority,
    auth: AuthKind,
    idempotent: bool,
    /// `If-None-Match` for a conditional GET (a 304 costs no rate limit).
    if_none_match: Option<String>,
}

impl RestClient {
    pub fn new(config: ClientConfig) -> Result<RestClient, GitHubError> {
        let base = config.api_url.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|e| GitHubError::Config {
            message: format!("api_url {base:?} is not a URL: {e}"),
        })?;
        let origin = url;
        if let Auth::App(app) = &config.auth {
            jsonwebtoken::EncodingKey::from_rsa_pem(app.private_key_pem.expose().as_bytes())
                .map_err(|source| GitHubError::Jwt { source })?;
        }
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| GitHubError::Config {
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let budget = RateBudget::default();
        let mutations = tokio::sync::Semaphore::new(config.max_concurrent_mutations.max(1));
        Ok(RestClient {
            http,
            config,
            base,
            origin,
            inner: Mutex::new(Inner { budget, ..Inner::default() }),
            token_refresh: tokio::sync::Mutex::new(()),
            mutations,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn app(&self) -> Option<&AppCredentials> {
        match &self.config.auth {
            Auth::App(app) => Some(app),
            Auth::Token(_) => None,
        }
    }

    fn call<'a>(&self, op: &'static str, method: Method, path: String, query: &str) -> Call<'a> {
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let idempotent = method == Method::GET || method == Method::DELETE;
        Call {
            op,
            method,
            path,
            url,
            body: None,
            priority: CallPriority::Essential,
            auth: AuthKind::Installation,
            idempotent,
            if_none_match: None,
        }
    }

    // ---- auth ---------------------------------------------------------------

    fn jwt(&self, app: &AppCredentials) -> Result<Secret, GitHubError> {
        let now = Utc::now();
        if let Some((jwt, exp)) = &self.inner().jwt
            && *exp - chrono::Duration::seconds(60) > now
        {
            return Ok(jwt.clone());
        }
        #[derive(serde::Serialize)]
        struct Claims {
            iat: i64,
            exp: i64,
            iss: serde_json::Value,
        }
        let iss = match app.app_id.parse::<i64>() {
            Ok(id) => serde_json::Value::from(id),
            Err(_) => serde_json::Value::from(app.app_id.clone()),
        };
        // iat 60 s in the past for clock drift; exp 9 min ahead (GitHub's max is 10).
        let iat = now.timestamp() - 60;
        let exp = now.timestamp() + 540;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(app.private_key_pem.expose().as_bytes())
            .map_err(|source| GitHubError::Jwt { source })?;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &Claims { iat, exp, iss },
            &key,
        )
        .map_err(|source| GitHubError::Jwt { source })?;
        let token = Secret::new(token);
        let expires = chrono::DateTime::from_timestamp(exp, 0).unwrap_or(now);
        self.inner().jwt = Some((token.clone(), expires));
        Ok(token)
    }

    /// The cached installation token while it is not yet due for refresh.
    fn cached_installation_token(&self) -> Option<Secret> {
        let inner = self.inner();
        let (token, refresh_at) = inner.installation_token.as_ref()?;
        (*refresh_at > Utc::now()).then(|| token.clone())
    }

    async fn installation_token(&self, app: &AppCredentials) -> Result<Secret, GitHubError> {
        if let Some(token) = self.cached_installation_token() {
            return Ok(token);
        }
        let _refreshing = self.token_refresh.lock().await;
        if let Some(token) = self.cached_installation_token() {
            return Ok(token);
        }
        let mut call = self.call(
            "access_token_create",
            Method::POST,
            format!("/app/installations/{}/access_tokens", app.installation_id),
            "",
        );
        call.auth = AuthKind::Jwt;
        call.idempotent = true; // minting a second token is harmless
        let response = Box::pin(self.send(&call)).await?;
        let response = self.expect(&call, response, &[StatusCode::CREATED]).await?;
        let token: wire::AccessToken = self.decode(&call, response).await?;
        tracing::debug!(expires_at = %token.expires_at, "github installation token refreshed");
        let secret = token.token;
        // Refresh `token_refresh_margin` before expiry, but never later than
        // half-way through the token's life (short-lived tokens stay usable).
        let now = Utc::now();
        let margin =
            chrono::Duration::from_std(self.config.token_refresh_margin).unwrap_or_default();
        let margin = margin.min((token.expires_at - now) / 2);
        self.inner().installation_token = Some((secret.clone(), token.expires_at - margin));
        Ok(secret)
    }

    async fn authorization(&self, kind: AuthKind) -> Result<Secret, GitHubError> {
        match (&self.config.auth, kind) {
            (Auth::Token(token), AuthKind::Installation) => Ok(token.clone()),
            (Auth::Token(_), AuthKind::Jwt) => {
                Err(GitHubError::AppAuthRequired { operation: "this call" })
            }
            (Auth::App(app), AuthKind::Installation) => self.installation_token(app).await,
            (Auth::App(app), AuthKind::Jwt) => self.jwt(app),
        }
    }

    // ---- the request path --------------------------------------------------------

    fn reserve_of(&self, limit: u64) -> u64 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let reserve =
            (limit as f64 * self.config.poll_reserve_fraction.clamp(0.0, 1.0)).ceil() as u64;
        reserve
    }

    fn budget_update(&self, headers: &reqwest::header::HeaderMap) {
        let num = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        let limit = num("x-ratelimit-limit");
        let remaining = num("x-ratelimit-remaining");
        let reset = num("x-ratelimit-reset")
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0));
        let mut inner = self.inner();
        let budget = &mut inner.budget;
        if limit.is_some() {
            budget.limit = limit;
            budget.reserve = self.reserve_of(limit.unwrap_or(0));
        }
        if remaining.is_some() {
            budget.remaining = remaining;
        }
        if reset.is_some() {
            budget.reset = reset;
        }
        #[allow(clippy::cast_precision_loss)]
        if let (Some(limit), Some(remaining)) = (budget.limit, budget.remaining) {
            metrics::gauge!(crate::metrics::GITHUB_RATE_LIMIT_REMAINING).set(remaining as f64);
            metrics::gauge!(crate::metrics::GITHUB_RATE_LIMIT_LIMIT).set(limit as f64);
        }
    }

    /// Step 1 and 2 of the module docs: `Ok` when the call may go now.
    async fn admit(&self, call: &Call<'_>) -> Result<(), GitHubError> {
        let (budget, blocked) = {
            let inner = self.inner();
            (inner.budget, inner.budget.blocked_until)
        };
        let now = Utc::now();
        if call.priority == CallPriority::Poll
            && let (Some(remaining), Some(reset)) = (budget.remaining, budget.reset)
            && remaining <= budget.reserve
            && reset > now
            && budget.limit.is_some()
        {
            return Err(GitHubError::BudgetReserved {
                method: method_name(&call.method),
                path: call.path.clone(),
                remaining,
                reserve: budget.reserve,
            });
        }
        if let Some(until) = blocked.filter(|until| *until > now) {
            let wait = (until - now).to_std().unwrap_or_default();
            if wait > self.config.max_rate_limit_wait {
                return Err(GitHubError::RateLimited {
                    method: method_name(&call.method),
                    path: call.path.clone(),
                    retry_at: until,
                });
            }
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// How long a rate-limited answer says to wait, or `None` if the
    /// answer is not a rate limit.
    fn rate_limit_wait(
        &self,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        message: &str,
        attempt: u32,
    ) -> Option<Duration> {
        let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        let remaining = header("x-ratelimit-remaining");
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (remaining == Some(0) || message.to_ascii_lowercase().contains("rate limit")));
        if !limited {
            return None;
        }
        if let Some(seconds) = header("retry-after") {
            return Some(Duration::from_secs(seconds));
        }
        if remaining == Some(0)
            && let Some(reset) = header("x-ratelimit-reset").and_then(|r| i64::try_from(r).ok())
        {
            let wait = reset - Utc::now().timestamp();
            return Some(Duration::from_secs(u64::try_from(wait.max(1)).unwrap_or(1)));
        }
        Some(self.config.secondary_backoff * 2u32.saturating_pow(attempt.min(6)))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.config.retry_base * 2u32.saturating_pow(attempt.min(6));
        let jitter = rand::rng().random_range(0.5..1.0);
        base.mul_f64(jitter)
    }

    /// Sends `call` through the whole path in the module docs. Returns the
    /// response for any status the path does not handle itself.
    async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response, GitHubError> {
        let method = method_name(&call.method);
        let mut attempt: u32 = 0;
        let mut refreshed_auth = false;
        loop {
            self.admit(call).await?;
            let token = self.authorization(call.auth).await?;
            let _permit = match call.method {
                Method::GET => None,
                _ => Some(self.mutations.acquire().await.expect("the semaphore is never closed")),
            };
            let mut request = self
                .http
                .request(call.method.clone(), &call.url)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", API_VERSION)
                .bearer_auth(token.expose());
            if let Some(body) = call.body {
                request = request.json(body);
            }
            if let Some(etag) = &call.if_none_match {
                request = request.header("if-none-match", etag);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(source) => {
                    metrics::counter!(crate::metrics::GITHUB_REQUESTS, "op" => call.op, "status" => "error")
                        .increment(1);
                    if call.idempotent && attempt < self.config.max_retries {
                        tracing::debug!(%method, path = %call.path, error = %ErrorChain(&source), attempt, "github call failed, retrying");
                        tokio::time::sleep(self.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(GitHubError::Transport { method, path: call.path.clone(), source });
                }
            };
            let status = response.status();
            metrics::counter!(crate::metrics::GITHUB_REQUESTS, "op" => call.op, "status" => status.as_str().to_owned())
                .increment(1);
            self.budget_update(response.headers());
            if status == StatusCode::UNAUTHORIZED
                && !refreshed_auth
                && call.auth == AuthKind::Installation
                && self.app().is_some()
            {
                // The cached installation token may have been revoked or expired early.
                refreshed_auth = true;
                self.inner().installation_token = None;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::FORBIDDEN {
                let headers = response.headers().clone();
                let message = error_message(response).await;
                match self.rate_limit_wait(status, &headers, &message, attempt) {
                    Some(wait) => {
                        let until = Utc::now() + wait;
                        self.inner().budget.blocked_until = Some(until);
                        tracing::warn!(%method, path = %call.path, wait_ms = wait.as_millis(), "github rate limit, backing off");
                        if wait > self.config.max_rate_limit_wait
                            || attempt >= self.config.max_retries
                        {
                            return Err(GitHubError::RateLimited {
                                method,
                                path: call.path.clone(),
                                retry_at: until,
                            });
                        }
                        attempt += 1;
                        continue;
                    }
                    None => {
                        return Err(GitHubError::Status {
                            method,
                            path: call.path.clone(),
                            status: status.as_u16(),
                            message,
                        });
                    }
                }
            }
            if status.is_server_error() && call.idempotent && attempt < self.config.max_retries {
                tracing::debug!(%method, path = %call.path, status = status.as_u16(), attempt, "github server error, retrying");
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            self.inner().budget.blocked_until = None;
            return Ok(response);
        }
    }

    /// Turns any status outside `ok` into an error.
    async fn expect(
        &self,
        call: &Call<'_>,
        response: reqwest::Response,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, GitHubError> {
        let status = response.status();
        if ok.contains(&status) {
            return Ok(response);
        }
        let message = error_message(response).await;
        let method = method_name(&call.method);
        if status == StatusCode::UNAUTHORIZED {
            return Err(GitHubError::Unauthorized { method, path: call.path.clone(), message });
        }
        Err(GitHubError::Status {
            method,
            path: call.path.clone(),
            status: status.as_u16(),
            message,
        })
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        response: reqwest::Response,
    ) -> Result<T, GitHubError> {
        let method = method_name(&call.method);
        let bytes = response.bytes().await.map_err(|source| GitHubError::Transport {
            method,
            path: call.path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| GitHubError::Decode {
            method,
            path: call.path.clone(),
            source,
        })
    }

    /// GETs every page of a list, following `Link: rel="next"`.
    async fn get_all<P: DeserializeOwned, T>(
        &self,
        mut call: Call<'_>,
        mut items: impl FnMut(P) -> Vec<T>,
    ) -> Result<Vec<T>, GitHubError> {
        const ETAG_CACHE_MAX: usize = 1024;
        let method = method_name(&call.method);
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            // Polls repeat the same pages: ask conditionally, a 304 is free.
            let cached = self.inner().etags.get(&call.url).cloned();
            call.if_none_match = cached.as_ref().map(|(etag, _, _)| etag.clone());
            let response = self.send(&call).await?;
            let (body, next) = match cached {
                Some((_, body, next)) if response.status() == StatusCode::NOT_MODIFIED => {
                    (body, next)
                }
                _ => {
                    let next = response
                        .headers()
                        .get("link")
                        .and_then(|l| l.to_str().ok())
                        .and_then(wire::link_next)
                        .map(str::to_owned);
                    let etag = response
                        .headers()
                        .get("etag")
                        .and_then(|e| e.to_str().ok())
                        .map(str::to_owned);
                    let response = self.expect(&call, response, &[StatusCode::OK]).await?;
                    let body = response.bytes().await.map_err(|source| GitHubError::Transport {
                        method,
                        path: call.path.clone(),
                        source,
                    })?;
                    if let Some(etag) = etag {
                        let mut inner = self.inner();
                        if inner.etags.len() >= ETAG_CACHE_MAX {
                            inner.etags.clear();
                        }
                        inner.etags.insert(call.url.clone(), (etag, body.clone(), next.clone()));
                    }
                    (body, next)
                }
            };
            let page: P = serde_json::from_slice(&body).map_err(|source| GitHubError::Decode {
                method,
                path: call.path.clone(),
                source,
            })?;
            all.extend(items(page));
            pages += 1;
            match next {
                Some(url) => call.url = self.next_page(&call, method, &url, pages)?,
                None => return Ok(all),
            }
        }
    }

    /// Checks a `Link: rel="next"` before it is followed: same origin as
    /// `api_url` (compared parsed, so `https://api.github.com.evil.test`
    /// is another origin), and no more than [`MAX_PAGES`] pages.
    fn next_page(
        &self,
        call: &Call<'_>,
        method: &'static str,
        next: &str,
        pages: usize,
    ) -> Result<String, GitHubError> {
        let refuse =
            |message: String| GitHubError::Pagination { method, path: call.path.clone(), message };
        let url = reqwest::Url::parse(next)
            .map_err(|e| refuse(format!("the next-page Link {next:?} is not a URL: {e}")))?;
        if url.origin() != self.origin.origin() {
            return Err(refuse(format!("refusing to follow a Link to another origin: {next}")));
        }
        if pages >= MAX_PAGES {
            return Err(refuse(format!("more than {MAX_PAGES} pages: refusing to follow {next}")));
        }
        Ok(url.into())
    }

    async fn runner_list_query(
        &self,
        scope: &RunnerScope,
        query: &str,
        priority: CallPriority,
    ) -> Result<Vec<GitHubRunner>, GitHubError> {
        let mut call = self.call(
            "runner_list",
            Method::GET,
            format!("{}/actions/runners", scope.path()),
            query,
        );
        call.priority = priority;
        self.get_all(call, |page: wire::RunnerPage| {
            page.runners.into_iter().map(GitHubRunner::from).collect()
        })
        .await
    }

    async fn run_ids(&self, repo: &str, status: &str) -> Result<Vec<i64>, GitHubError> {
        let mut call = self.call(
            "run_list",
            Method::GET,
            format!("/repos/{repo}/actions/runs"),
            &format!("status={status}&per_page=100"),
        );
        call.priority = CallPriority::Poll;
        self.get_all(call, |page: wire::RunPage| {
            page.workflow_runs.into_iter().map(|r| r.id).collect()
        })
        .await
    }

    fn installation_id(&self) -> Option<InstallationId> {
        self.app().map(|app| app.installation_id)
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "REQUEST",
    }
}

async fn error_message(response: reqwest::Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) if !body.message.is_empty() => body.message,
        _ => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
    }
}

fn repo_ok(repo: &str) -> Result<(), GitHubError> {
    match repo.split_once('/') {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(())
        }
        _ => Err(GitHubError::Config { message: format!("repository {repo:?} is not owner/name") }),
    }
}

#[async_trait::async_trait]
impl GitHubApi for RestClient {
    async fn jit_config_create(
        &self,
        scope: &RunnerScope,
        req: &JitConfigRequest,
    ) -> Result<JitConfig, GitHubError> {
        let body = serde_json::to_value(wire::JitBody {
            name: &req.name,
            runner_group_id: req.runner_group_id,
            labels: req.labels.iter().collect(),
            work_folder: req.work_folder.as_deref(),
        })
        .expect("a JIT request serialises");
        let mut call = self.call(
            "jit_config_create",
            Method::POST,
            format!("{}/actions/runners/generate-jitconfig", scope.path()),
            "",
        );
        call.body = Some(&body);
        let response = self.send(&call).await?;
        if response.status() == StatusCode::CONFLICT {
            return Err(GitHubError::Conflict { scope: scope.to_string(), name: req.name.clone() });
        }
        let response = self.expect(&call, response, &[StatusCode::CREATED]).await?;
        let created: wire::JitResponse = self.decode(&call, response).await?;
        tracing::info!(runner_name = %created.runner.name, github_runner_id = created.runner.id, scope = %scope, "jit runner minted");
        Ok(JitConfig {
            github_runner_id: GitHubRunnerId(created.runner.id),
            name: created.runner.name,
            encoded: created.encoded_jit_config,
        })
    }

    async fn runner_list(&self, scope: &RunnerScope) -> Result<Vec<GitHubRunner>, GitHubError> {
        self.runner_list_query(scope, "per_page=100", CallPriority::Poll).await
    }

    async fn runner_find_by_name(
        &self,
        scope: &RunnerScope,
        name: &str,
    ) -> Result<Option<GitHubRunner>, GitHubError> {
        let query: String = form_query(&[("name", name), ("per_page", "100")]);
        let runners = self.runner_list_query(scope, &query, CallPriority::Essential).await?;
        Ok(runners.into_iter().find(|r| r.name == name))
    }

    async fn runner_get(
        &self,
        scope: &RunnerScope,
        id: GitHubRunnerId,
    ) -> Result<Option<GitHubRunner>, GitHubError> {
        let call = self.call(
            "runner_get",
            Method::GET,
            format!("{}/actions/runners/{id}", scope.path()),
            "",
        );
        let response = self.send(&call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.expect(&call, response, &[StatusCode::OK]).await?;
        let runner: wire::WireRunner = self.decode(&call, response).await?;
        Ok(Some(runner.into()))
    }

    async fn runner_delete(
        &self,
        scope: &RunnerScope,
        id: GitHubRunnerId,
    ) -> Result<RunnerDeletion, GitHubError> {
        let call = self.call(
            "runner_delete",
            Method::DELETE,
            format!("{}/actions/runners/{id}", scope.path()),
            "",
        );
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(RunnerDeletion::Deleted),
            StatusCode::UNPROCESSABLE_ENTITY => Ok(RunnerDeletion::Busy),
            StatusCode::NOT_FOUND => Ok(RunnerDeletion::Gone),
            _ => Err(self.expect(&call, response, &[]).await.expect_err("no status is accepted")),
        }
    }

    async fn runner_group_list(&self, org: &str) -> Result<Vec<RunnerGroup>, GitHubError> {
        let mut call = self.call(
            "runner_group_list",
            Method::GET,
            format!("/orgs/{org}/actions/runner-groups"),
            "per_page=100",
        );
        call.priority = CallPriority::Poll;
        self.get_all(call, |page: wire::GroupPage| {
            page.runner_groups.into_iter().map(RunnerGroup::from).collect()
        })
        .await
    }

    async fn queued_job_list(&self, repo: &str) -> Result<Vec<GitHubJob>, GitHubError> {
        repo_ok(repo)?;
        // A run that is in_progress can still hold queued jobs (needs:, matrix),
        // so both kinds of run are listed and the jobs filtered on their own status.
        let mut runs = self.run_ids(repo, "queued").await?;
        runs.extend(self.run_ids(repo, "in_progress").await?);
        runs.sort_unstable();
        runs.dedup();
        let installation = self.installation_id();
        let mut jobs = Vec::new();
        for run in runs {
            let mut call = self.call(
                "run_job_list",
                Method::GET,
                format!("/repos/{repo}/actions/runs/{run}/jobs"),
                "per_page=100",
            );
            call.priority = CallPriority::Poll;
            let found = self
                .get_all(call, |page: wire::JobPage| {
                    page.jobs
                        .into_iter()
                        .filter(|j| j.state() == hangar_types::JobState::Queued)
                        .collect::<Vec<_>>()
                })
                .await;
            match found {
                Ok(found) => jobs.extend(found.into_iter().map(|j| j.into_job(repo, installation))),
                // A run can finish and vanish between the two calls.
                Err(GitHubError::Status { status: 404, .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(jobs)
    }

    async fn job_get(&self, repo: &str, job: JobId) -> Result<Option<GitHubJob>, GitHubError> {
        repo_ok(repo)?;
        let call =
            self.call("job_get", Method::GET, format!("/repos/{repo}/actions/jobs/{job}"), "");
        let response = self.send(&call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.expect(&call, response, &[StatusCode::OK]).await?;
        let wire: wire::WireJob = self.decode(&call, response).await?;
        Ok(Some(wire.into_job(repo, self.installation_id())))
    }

    async fn installation_repository_list(&self) -> Result<Vec<String>, GitHubError> {
        if self.app().is_none() {
            return Ok(self.config.repositories.clone());
        }
        let mut call = self.call(
            "installation_repository_list",
            Method::GET,
            "/installation/repositories".to_owned(),
            "per_page=100",
        );
        call.priority = CallPriority::Poll;
        self.get_all(call, |page: wire::RepoPage| {
            page.repositories.into_iter().map(|r| r.full_name).collect()
        })
        .await
    }

    async fn hook_delivery_list(
        &self,
        since: Option<Timestamp>,
    ) -> Result<Vec<HookDelivery>, GitHubError> {
        if self.app().is_none() {
            return Err(GitHubError::AppAuthRequired { operation: "listing webhook deliveries" });
        }
        let mut call = self.call(
            "hook_delivery_list",
            Method::GET,
            "/app/hook/deliveries".to_owned(),
            "per_page=100",
        );
        call.priority = CallPriority::Poll;
        call.auth = AuthKind::Jwt;
        // Newest first: stop paging once a page reaches back past `since`.
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let response = self.send(&call).await?;
            let next = response
                .headers()
                .get("link")
                .and_then(|l| l.to_str().ok())
                .and_then(wire::link_next)
                .map(str::to_owned);
            let response = self.expect(&call, response, &[StatusCode::OK]).await?;
            let page: Vec<wire::WireDelivery> = self.decode(&call, response).await?;
            let page_len = page.len();
            let before = all.len();
            all.extend(
                page.into_iter()
                    .map(HookDelivery::from)
                    .filter(|d| since.is_none_or(|since| d.delivered_at >= since)),
            );
            let reached_since = all.len() - before < page_len;
            pages += 1;
            match next {
                Some(url) if !reached_since => {
                    call.url = self.next_page(&call, "GET", &url, pages)?;
                }
                _ => return Ok(all),
            }
        }
    }

    async fn hook_delivery_redeliver(&self, id: i64) -> Result<(), GitHubError> {
        if self.app().is_none() {
            return Err(GitHubError::AppAuthRequired { operation: "redelivering a webhook" });
        }
        let mut call = self.call(
            "hook_delivery_redeliver",
            Method::POST,
            format!("/app/hook/deliveries/{id}/attempts"),
            "",
        );
        call.priority = CallPriority::Poll;
        call.auth = AuthKind::Jwt;
        // Asking twice for a redelivery only duplicates a delivery, which the
        // webhook path deduplicates; so this POST may be retried.
        call.idempotent = true;
        let response = self.send(&call).await?;
        self.expect(&call, response, &[StatusCode::ACCEPTED, StatusCode::OK]).await?;
        Ok(())
    }

    fn rate_budget(&self) -> RateBudget {
        self.inner().budget
    }
}

fn form_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}
