//! The HTTP surface: GitHub's REST endpoints (at `/` and, as on GitHub
//! Enterprise Server, under `/api/v3`), the runner protocol (`/_runner`,
//! see `runner_proto`) and a small control API for scripts (`/_sim`).
//!
//! Every REST call passes through [`api_layer`], which counts it, spends the
//! rate-limit budget, applies the API faults and adds the `x-ratelimit-*`
//! headers, so handlers only deal with the happy shapes and their 4xx.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::{Runner, Scope, Shared, SimJobStatus};
use crate::webhooks::{job_json, repository_json, user_json};
use crate::{JobSpec, runner_proto};

type Sh = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let rest = Router::new()
        .route("/orgs/{org}/actions/runners/generate-jitconfig", post(jit))
        .route("/repos/{owner}/{repo}/actions/runners/generate-jitconfig", post(jit))
        .route("/orgs/{org}/actions/runners", get(runner_list))
        .route("/repos/{owner}/{repo}/actions/runners", get(runner_list))
        .route("/orgs/{org}/actions/runners/{runner_id}", get(runner_get).delete(runner_delete))
        .route(
            "/repos/{owner}/{repo}/actions/runners/{runner_id}",
            get(runner_get).delete(runner_delete),
        )
        .route("/orgs/{org}/actions/runners/registration-token", post(registration_token))
        .route("/orgs/{org}/actions/runners/remove-token", post(registration_token))
        .route("/repos/{owner}/{repo}/actions/runners/registration-token", post(registration_token))
        .route("/repos/{owner}/{repo}/actions/runners/remove-token", post(registration_token))
        .route("/orgs/{org}/actions/runner-groups", get(runner_group_list))
        .route("/repos/{owner}/{repo}/actions/runs", get(run_list))
        .route("/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", get(run_job_list))
        .route("/repos/{owner}/{repo}/actions/jobs/{job_id}", get(job_get))
        .route("/installation/repositories", get(installation_repository_list))
        .route("/rate_limit", get(rate_limit_get))
        .route("/app/installations", get(app_installation_list))
        .route("/orgs/{org}/installation", get(installation_get))
        .route("/repos/{owner}/{repo}/installation", get(installation_get))
        .route("/app/installations/{installation_id}/access_tokens", post(access_token_create))
        .route("/app/hook/deliveries", get(hook_delivery_list))
        .route("/app/hook/deliveries/{delivery_id}/attempts", post(hook_delivery_redeliver))
        .route_layer(from_fn_with_state(shared.clone(), api_layer));
    let control = Router::new()
        .route("/_sim/jobs", post(sim_job_queue).get(sim_job_list))
        .route("/_sim/counters", get(sim_counters))
        .route("/_sim/runners", get(sim_runner_list));
    Router::new()
        .merge(rest.clone())
        .nest("/api/v3", rest)
        .merge(runner_proto::router())
        .merge(control)
        .with_state(shared)
}

/// A GitHub-style error response (`basic-error`).
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "status": status.as_u16().to_string(),
    });
    (status, Json(body)).into_response()
}

fn ts(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn api_layer(
    State(shared): Sh,
    matched: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let path = matched.as_str();
    let path = path.strip_prefix("/api/v3").unwrap_or(path);
    let endpoint = format!("{} {path}", request.method());
    let mutating = request.method() != Method::GET;
    let if_none_match = request.headers().get("if-none-match").cloned();
    let free = path == "/rate_limit";
    let version = request.headers().get("x-github-api-version").map(|v| v.as_bytes().to_vec());
    if let Some(version) = &version
        && version.as_slice() != b"2022-11-28"
        && version.as_slice() != b"2026-03-10"
    {
        return error(StatusCode::BAD_REQUEST, "Unsupported API version");
    }
    enum Fault {
        None,
        RateLimited(u64, bool),
        Fail(u16),
        Timeout(Duration),
        LostResponse,
    }
    let (fault, budget, delay) = {
        let mut state = shared.lock();
        *state.counters.api_calls.entry(endpoint.clone()).or_default() += 1;
        state.counters.api_calls_total += 1;
        if version.is_none() {
            state.counters.api_calls_unversioned += 1;
        }
        let faults = state.config.faults.clone();
        let targeted = faults.api_endpoints.is_empty() || faults.api_endpoints.contains(&endpoint);
        let budget = if free { Ok(()) } else { state.rate_spend() };
        let fault = if !targeted || free {
            Fault::None
        } else if state.chance(faults.api_rate_limit) {
            Fault::RateLimited(faults.api_retry_after_secs, faults.api_rate_limit_forbidden)
        } else if state.chance(faults.api_fail) {
            let drawn = [500, 502, 503][state.rng.random_range(0..3)];
            Fault::Fail(faults.api_fail_status.unwrap_or(drawn))
        } else if state.chance(faults.api_timeout) {
            Fault::Timeout(faults.api_timeout_hang)
        } else if mutating && state.chance(faults.api_lost_response) {
            Fault::LostResponse
        } else {
            Fault::None
        };
        (fault, budget, faults.api_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = match (budget, fault) {
        (Err(_), _) => {
            let installation = shared.lock().config.installation_id;
            error(
                StatusCode::FORBIDDEN,
                &format!(
                    "API rate limit exceeded for installation ID {installation}. If you reach out to GitHub Support for help, please include the request ID."
                ),
            )
        }
        (Ok(()), Fault::RateLimited(after, forbidden)) => {
            let status =
                if forbidden { StatusCode::FORBIDDEN } else { StatusCode::TOO_MANY_REQUESTS };
            let mut response = error(
                status,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            );
            response.headers_mut().insert("retry-after", HeaderValue::from(after));
            response
        }
        (Ok(()), Fault::Fail(code)) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "Server Error",
        ),
        (Ok(()), Fault::Timeout(hang)) => {
            tokio::time::sleep(hang).await;
            error(StatusCode::GATEWAY_TIMEOUT, "We couldn't respond to your request in time.")
        }
        (Ok(()), Fault::LostResponse) => {
            let _ = next.run(request).await;
            error(StatusCode::BAD_GATEWAY, "Server Error")
        }
        (Ok(()), Fault::None) => next.run(request).await,
    };
    if !mutating && response.status() == StatusCode::OK {
        response = conditional(&shared, response, if_none_match).await;
    }
    let (limit, remaining, used, reset) = shared.lock().rate_headers();
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-used", HeaderValue::from(used));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
    headers.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    headers.insert("x-github-api-version-selected", HeaderValue::from_static("2022-11-28"));
    response
}

/// Adds an `ETag` to a 200 GET answer; answers 304 (and gives the request
/// back to the budget, as GitHub does not count 304s) when the client's
/// `If-None-Match` matches.
async fn conditional(
    shared: &Shared,
    response: Response,
    if_none_match: Option<HeaderValue>,
) -> Response {
    use std::hash::{Hash, Hasher};
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "simulator: cannot buffer a response");
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let etag = format!("W/\"{:016x}\"", hasher.finish());
    let etag_value = HeaderValue::from_str(&etag).expect("hex is a valid header");
    if if_none_match.as_ref() == Some(&etag_value) {
        let mut state = shared.lock();
        state.counters.api_calls_not_modified += 1;
        state.rate_refund();
        drop(state);
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert("etag", etag_value);
        return response;
    }
    parts.headers.insert("etag", etag_value);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

// ---- auth -------------------------------------------------------------------

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("token ")).map(str::trim)
}

/// Installation token or PAT.
#[allow(clippy::result_large_err)]
fn auth_token(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let bad = || Err(error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    let Some(token) = bearer(headers) else { return bad() };
    let state = shared.lock();
    if state.config.pat.as_deref() == Some(token) {
        return Ok(());
    }
    match state.tokens.get(token) {
        Some(expires) if *expires > Utc::now() => Ok(()),
        _ => bad(),
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: Value,
}

/// A GitHub App JWT, verified with the App's public key.
#[allow(clippy::result_large_err)]
fn auth_jwt(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let refuse = |why: &str| Err(error(StatusCode::UNAUTHORIZED, why));
    let Some(app) = shared.lock().config.app.clone() else {
        return refuse("A JSON web token could not be decoded");
    };
    let Some(token) = bearer(headers) else {
        return refuse("A JSON web token could not be decoded");
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()) else {
        return refuse("the simulator's App public key is not a valid PEM");
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // `iss` is checked below: GitHub accepts a number (App id) or a string (client id).
    validation.set_required_spec_claims(&["exp", "iat"]);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return refuse(&format!("A JSON web token could not be decoded: {e}")),
    };
    let iss = match &claims.iss {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    if iss != app.app_id {
        return refuse("'Issuer' claim ('iss') must be the App's id");
    }
    let now = Utc::now().timestamp();
    if claims.iat > now + 60 {
        return refuse(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past",
        );
    }
    if claims.exp - claims.iat > 660 || claims.exp > now + 600 + 60 {
        return refuse("'Expiration time' claim ('exp') is too far in the future");
    }
    Ok(())
}

/// A caller with an installation token or a PAT; a handler that takes this
/// runs only after the check (401 otherwise, before any 404).
struct Token;

impl FromRequestParts<Arc<Shared>> for Token {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, Response> {
        auth_token(shared, &parts.headers).map(|()| Token)
    }
}

/// A caller authenticated as the App, by its JWT.
struct AppJwt;

impl FromRequestParts<Arc<Shared>> for AppJwt {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, Response> {
        auth_jwt(shared, &parts.headers).map(|()| AppJwt)
    }
}

/// The account an endpoint is under, `/orgs/{org}/…` or
/// `/repos/{owner}/{repo}/…`, one the simulator knows (404 otherwise): one
/// handler serves both forms, as on GitHub.
struct Owner(Scope);

#[derive(Debug, Deserialize)]
struct OwnerPath {
    org: Option<String>,
    owner: Option<String>,
    repo: Option<String>,
}

impl FromRequestParts<Arc<Shared>> for Owner {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, Response> {
        let not_found = || error(StatusCode::NOT_FOUND, "Not Found");
        let Path(path) =
            Path::<OwnerPath>::from_request_parts(parts, shared).await.map_err(|_| not_found())?;
        match path {
            OwnerPath { org: Some(org), .. } if known_org(shared, &org) => {
                Ok(Owner(Scope::Org(org)))
            }
            OwnerPath { owner: Some(owner), repo: Some(repo), .. } => {
                let full = format!("{owner}/{repo}");
                if known_repo(shared, &full) {
                    Ok(Owner(Scope::Repo(full)))
                } else {
                    Err(not_found())
                }
            }
            _ => Err(not_found()),
        }
    }
}

impl Owner {
    /// The path prefix the account's endpoints share.
    fn prefix(&self) -> String {
        match &self.0 {
            Scope::Org(org) => format!("/orgs/{org}"),
            Scope::Repo(full) => format!("/repos/{full}"),
        }
    }
}

// ---- pagination ---------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
struct PageQuery {
    per_page: Option<usize>,
    page: Option<usize>,
    name: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
}

/// Slices `items` by `per_page`/`page` and builds the `Link` header.
fn paginate<T>(
    shared: &Shared,
    path: &str,
    raw: Option<&str>,
    q: &PageQuery,
    items: Vec<T>,
) -> (Vec<T>, Option<String>) {
    let per_page = q.per_page.unwrap_or(30).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let last = items.len().div_ceil(per_page).max(1);
    let slice: Vec<T> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let base_query: Vec<&str> = raw
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("page="))
        .collect();
    let url = |p: usize| {
        let mut query = base_query.clone();
        let page_kv = format!("page={p}");
        query.push(&page_kv);
        format!("<{}{}?{}>", shared.server_url(), path, query.join("&"))
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    (slice, (!links.is_empty()).then(|| links.join(", ")))
}

fn with_link(status: StatusCode, body: Value, link: Option<String>) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(link) = link
        && let Ok(value) = HeaderValue::from_str(&link)
    {
        response.headers_mut().insert("link", value);
    }
    response
}

// ---- runners ------------------------------------------------------------------

fn runner_json(runner: &Runner) -> Value {
    const READ_ONLY: [&str; 8] =
        ["self-hosted", "linux", "x64", "arm64", "macos", "windows", "arm", "x86"];
    let labels: Vec<Value> = runner
        .labels_raw
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let kind = if READ_ONLY.iter().any(|l| l.eq_ignore_ascii_case(name)) {
                "read-only"
            } else {
                "custom"
            };
            json!({ "id": i + 1, "name": name, "type": kind })
        })
        .collect();
    json!({
        "id": runner.id,
        "runner_group_id": runner.group_id,
        "name": runner.name,
        "os": if runner.ever_connected { "linux" } else { "unknown" },
        "status": if runner.online { "online" } else { "offline" },
        "busy": runner.job.is_some(),
        "ephemeral": true,
        "version": if runner.ever_connected { json!("2.330.0") } else { Value::Null },
        "labels": labels,
    })
}

fn known_org(shared: &Shared, org: &str) -> bool {
    shared.lock().config.orgs.iter().any(|o| o.eq_ignore_ascii_case(org))
}

fn known_repo(shared: &Shared, repo: &str) -> bool {
    let state = shared.lock();
    state.config.repos.iter().any(|r| r.eq_ignore_ascii_case(repo))
        || state.jobs.values().any(|j| j.repo == repo)
}

#[derive(Debug, Deserialize)]
struct JitBody {
    name: Option<String>,
    runner_group_id: Option<i64>,
    labels: Option<Vec<String>>,
    work_folder: Option<String>,
}

async fn jit(
    State(shared): Sh,
    _: Token,
    Owner(scope): Owner,
    body: axum::body::Bytes,
) -> Response {
    let body: JitBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("Problems parsing JSON: {e}")),
    };
    let Some(name) = body.name.filter(|n| !n.is_empty()) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid input: object is missing required key: name",
        );
    };
    let Some(group_id) = body.runner_group_id else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid input: object is missing required key: runner_group_id",
        );
    };
    let labels = body.labels.unwrap_or_default();
    if labels.is_empty() || labels.len() > 100 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid input: labels must have 1 to 100 items",
        );
    }
    if group_id != 1 {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let Ok((id, token)) = shared.runner_register(scope, &name, labels, group_id) else {
        return error(
            StatusCode::CONFLICT,
            &format!("Already exists - A runner with the name {name} already exists."),
        );
    };
    let server = shared.server_url();
    let dot_runner = json!({
        "AgentId": id.to_string(),
        "AgentName": name,
        "PoolId": group_id.to_string(),
        "PoolName": null,
        "DisableUpdate": true,
        "Ephemeral": true,
        "ServerUrl": format!("{server}/"),
        "GitHubUrl": "",
        "WorkFolder": body.work_folder.unwrap_or_else(|| "_work".to_owned()),
        "UseV2Flow": true,
        "ServerUrlV2": format!("{server}/_runner/"),
    });
    let credentials = json!({ "Scheme": "OAuthAccessToken", "Data": { "token": token } });
    let rsa_params: [u8; 32] = shared.lock().rng.random();
    let files = json!({
        ".runner": B64.encode(dot_runner.to_string()),
        ".credentials": B64.encode(credentials.to_string()),
        ".credentials_rsaparams": B64.encode(json!({ "d": B64.encode(rsa_params) }).to_string()),
    });
    let encoded = B64.encode(files.to_string());
    let state = shared.lock();
    let runner = &state.runners[&id];
    (
        StatusCode::CREATED,
        Json(json!({ "runner": runner_json(runner), "encoded_jit_config": encoded })),
    )
        .into_response()
}

/// Registration and remove tokens (the non-JIT path): the simulator hands
/// them out with GitHub's shape; its runners only use JIT configs.
async fn registration_token(State(shared): Sh, _: Token, _: Owner) -> Response {
    let token = format!("SIMREG{:026X}", shared.lock().rng.random::<u128>() >> 24);
    let expires_at = Utc::now() + Duration::from_secs(3600);
    (StatusCode::CREATED, Json(json!({ "token": token, "expires_at": ts(expires_at) })))
        .into_response()
}

async fn runner_list(
    State(shared): Sh,
    _: Token,
    owner: Owner,
    Query(q): Query<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    let runners: Vec<Value> = {
        let state = shared.lock();
        state
            .runners
            .values()
            .filter(|r| r.scope == owner.0 && q.name.as_ref().is_none_or(|n| *n == r.name))
            .map(runner_json)
            .collect()
    };
    let total = runners.len();
    let path = format!("{}/actions/runners", owner.prefix());
    let (page, link) = paginate(&shared, &path, raw.as_deref(), &q, runners);
    with_link(StatusCode::OK, json!({ "total_count": total, "runners": page }), link)
}

#[derive(Debug, Deserialize)]
struct RunnerPath {
    runner_id: i64,
}

async fn runner_get(
    State(shared): Sh,
    _: Token,
    Owner(scope): Owner,
    Path(RunnerPath { runner_id }): Path<RunnerPath>,
) -> Response {
    let state = shared.lock();
    match state.runners.get(&runner_id) {
        Some(runner) if runner.scope == scope => {
            (StatusCode::OK, Json(runner_json(runner))).into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn runner_delete(
    State(shared): Sh,
    _: Token,
    Owner(scope): Owner,
    Path(RunnerPath { runner_id }): Path<RunnerPath>,
) -> Response {
    let name = shared.lock().runners.get(&runner_id).map(|r| r.name.clone()).unwrap_or_default();
    match shared.runner_delete(&scope, runner_id) {
        Some(true) => StatusCode::NO_CONTENT.into_response(),
        Some(false) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Bad request - Runner \"{name}\" is still running a job\""),
        ),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn runner_group_list(
    State(shared): Sh,
    _: Token,
    owner: Owner,
    Query(q): Query<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Scope::Org(org) = &owner.0 else { return error(StatusCode::NOT_FOUND, "Not Found") };
    let server = shared.server_url();
    let groups = vec![json!({
        "id": 1,
        "name": "Default",
        "visibility": "all",
        "default": true,
        "runners_url": format!("{server}/orgs/{org}/actions/runner-groups/1/runners"),
        "inherited": false,
        "allows_public_repositories": true,
        "restricted_to_workflows": false,
        "selected_workflows": [],
        "workflow_restrictions_read_only": false
    })];
    let total = groups.len();
    let path = format!("/orgs/{org}/actions/runner-groups");
    let (page, link) = paginate(&shared, &path, raw.as_deref(), &q, groups);
    with_link(StatusCode::OK, json!({ "total_count": total, "runner_groups": page }), link)
}

// ---- runs and jobs --------------------------------------------------------------

/// The latest change of any job of the run (stable between changes, so
/// conditional requests see an unchanged page).
fn run_updated(state: &crate::state::State, run_id: i64) -> chrono::DateTime<Utc> {
    let run = &state.runs[&run_id];
    run.jobs
        .iter()
        .filter_map(|j| state.jobs.get(j))
        .map(|j| j.completed_at.or(j.started_at).unwrap_or(j.created_at))
        .max()
        .unwrap_or(run.created_at)
}

fn run_status(state: &crate::state::State, run_id: i64) -> &'static str {
    let run = &state.runs[&run_id];
    let statuses: Vec<SimJobStatus> =
        run.jobs.iter().filter_map(|j| state.jobs.get(j)).map(|j| j.status).collect();
    if statuses.iter().all(|s| *s == SimJobStatus::Completed) {
        "completed"
    } else if statuses.iter().all(|s| *s == SimJobStatus::Queued) {
        "queued"
    } else {
        "in_progress"
    }
}

async fn run_list(
    State(shared): Sh,
    _: Token,
    owner: Owner,
    Query(q): Query<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Scope::Repo(full) = &owner.0 else { return error(StatusCode::NOT_FOUND, "Not Found") };
    let server = shared.server_url();
    let runs: Vec<Value> = {
        let state = shared.lock();
        state
            .runs
            .iter()
            .rev()
            .filter(|(_, run)| run.repo == *full)
            .map(|(id, run)| (id, run, run_status(&state, *id)))
            .filter(|(_, _, status)| q.status.as_deref().is_none_or(|want| want == *status))
            .map(|(id, run, status)| {
                json!({
                    "id": id,
                    "name": run.workflow_name,
                    "node_id": format!("WFR_sim{id}"),
                    "head_branch": "main",
                    "head_sha": run.head_sha,
                    "run_number": id,
                    "event": "push",
                    "status": status,
                    "conclusion": if status == "completed" { json!("success") } else { Value::Null },
                    "workflow_id": 1,
                    "url": format!("{server}/repos/{full}/actions/runs/{id}"),
                    "html_url": format!("https://github.com/{full}/actions/runs/{id}"),
                    "jobs_url": format!("{server}/repos/{full}/actions/runs/{id}/jobs"),
                    "logs_url": format!("{server}/repos/{full}/actions/runs/{id}/logs"),
                    "check_suite_url": format!("{server}/repos/{full}/check-suites/{id}"),
                    "artifacts_url": format!("{server}/repos/{full}/actions/runs/{id}/artifacts"),
                    "cancel_url": format!("{server}/repos/{full}/actions/runs/{id}/cancel"),
                    "rerun_url": format!("{server}/repos/{full}/actions/runs/{id}/rerun"),
                    "workflow_url": format!("{server}/repos/{full}/actions/workflows/1"),
                    "display_title": run.workflow_name,
                    "path": ".github/workflows/ci.yml",
                    "pull_requests": [],
                    "created_at": ts(run.created_at),
                    "updated_at": ts(run_updated(&state, *id)),
                    "run_attempt": 1,
                    "head_commit": {
                        "id": run.head_sha,
                        "tree_id": run.head_sha,
                        "message": "simulated commit",
                        "timestamp": ts(run.created_at),
                        "author": { "name": "Simulated User", "email": "sim@example.com" },
                        "committer": { "name": "Simulated User", "email": "sim@example.com" }
                    },
                    "repository": repository_json(full),
                    "head_repository": repository_json(full),
                })
            })
            .collect()
    };
    let total = runs.len();
    let path = format!("/repos/{full}/actions/runs");
    let (page, link) = paginate(&shared, &path, raw.as_deref(), &q, runs);
    with_link(StatusCode::OK, json!({ "total_count": total, "workflow_runs": page }), link)
}

async fn run_job_list(
    State(shared): Sh,
    _: Token,
    Path((owner, repo, run_id)): Path<(String, String, i64)>,
    Query(q): Query<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    let full = format!("{owner}/{repo}");
    let server = shared.server_url();
    let jobs: Vec<Value> = {
        let state = shared.lock();
        let Some(run) = state.runs.get(&run_id).filter(|r| r.repo == full) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        run.jobs
            .iter()
            .filter_map(|j| state.jobs.get(j))
            .map(|job| job_json(job, job.status.as_str(), &server))
            .collect()
    };
    let total = jobs.len();
    let path = format!("/repos/{full}/actions/runs/{run_id}/jobs");
    let (page, link) = paginate(&shared, &path, raw.as_deref(), &q, jobs);
    with_link(StatusCode::OK, json!({ "total_count": total, "jobs": page }), link)
}

async fn job_get(
    State(shared): Sh,
    _: Token,
    Path((owner, repo, job_id)): Path<(String, String, i64)>,
) -> Response {
    let full = format!("{owner}/{repo}");
    let server = shared.server_url();
    let state = shared.lock();
    match state.jobs.get(&job_id).filter(|j| j.repo == full) {
        Some(job) => {
            (StatusCode::OK, Json(job_json(job, job.status.as_str(), &server))).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn installation_repository_list(
    State(shared): Sh,
    _: Token,
    Query(q): Query<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    let repos: Vec<Value> = shared.lock().config.repos.iter().map(|r| repository_json(r)).collect();
    let total = repos.len();
    let (page, link) = paginate(&shared, "/installation/repositories", raw.as_deref(), &q, repos);
    with_link(
        StatusCode::OK,
        json!({ "total_count": total, "repository_selection": "selected", "repositories": page }),
        link,
    )
}

async fn rate_limit_get(State(shared): Sh, _: Token) -> Response {
    let (limit, remaining, used, reset) = shared.lock().rate_headers();
    let core = json!({ "limit": limit, "remaining": remaining, "used": used, "reset": reset });
    Json(json!({
        "resources": {
            "core": core,
            "search": { "limit": 30, "remaining": 30, "used": 0, "reset": reset },
            "actions_runner_registration": { "limit": 10000, "remaining": 10000, "used": 0, "reset": reset }
        },
        "rate": core
    }))
    .into_response()
}

// ---- the App --------------------------------------------------------------------

fn installation_json(shared: &Shared) -> Value {
    let state = shared.lock();
    let id = state.config.installation_id;
    let org = state.config.orgs.first().cloned().unwrap_or_default();
    let app_id = state.config.app.as_ref().map(|a| a.app_id.clone()).unwrap_or_default();
    // `GET /app/installations` describes `account` as simple-user AND
    // enterprise (allOf), so the account carries the enterprise keys too.
    let mut account = user_json(&org, "Organization");
    for (key, value) in [
        ("name", json!(org)),
        ("slug", json!(org)),
        ("created_at", json!("2024-01-01T00:00:00Z")),
        ("updated_at", json!("2024-01-01T00:00:00Z")),
    ] {
        account[key] = value;
    }
    json!({
        "id": id,
        "account": account,
        "target_id": crate::webhooks::repo_id(&org),
        "single_file_name": null,
        "html_url": format!("https://github.com/organizations/{org}/settings/installations/{id}"),
        "repositories_url": format!("{}/installation/repositories", shared.server_url()),
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "suspended_by": null,
        "app_id": app_id.parse::<i64>().unwrap_or(1),
        "app_slug": "hangar-simulated",
        "target_type": "Organization",
        "repository_selection": "selected",
        "access_tokens_url": format!("{}/app/installations/{id}/access_tokens", shared.server_url()),
        "permissions": {
            "actions": "read",
            "administration": "write",
            "organization_self_hosted_runners": "write",
            "metadata": "read"
        },
        "events": ["workflow_job"],
        "suspended_at": null
    })
}

async fn app_installation_list(State(shared): Sh, _: AppJwt) -> Response {
    Json(json!([installation_json(&shared)])).into_response()
}

async fn installation_get(State(shared): Sh, _: AppJwt, _: Owner) -> Response {
    Json(installation_json(&shared)).into_response()
}

async fn access_token_create(
    State(shared): Sh,
    _: AppJwt,
    Path(installation): Path<i64>,
) -> Response {
    let mut state = shared.lock();
    if installation != state.config.installation_id {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let token = format!("ghs_sim{:032x}", state.rng.random::<u128>());
    let expires_at = Utc::now() + state.config.installation_token_ttl;
    state.tokens.insert(token.clone(), expires_at);
    state.counters.installation_tokens_issued += 1;
    (
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": ts(expires_at),
            "permissions": {
                "actions": "read",
                "administration": "write",
                "organization_self_hosted_runners": "write",
                "metadata": "read"
            },
            "repository_selection": "selected"
        })),
    )
        .into_response()
}

async fn hook_delivery_list(State(shared): Sh, _: AppJwt, Query(q): Query<PageQuery>) -> Response {
    let per_page = q.per_page.unwrap_or(30).clamp(1, 100);
    let before = q.cursor.as_deref().and_then(|c| c.parse::<i64>().ok()).unwrap_or(i64::MAX);
    let (items, more, installation) = {
        let state = shared.lock();
        let mut matching =
            state.deliveries.values().rev().filter(|d| d.attempted && d.id < before).filter(|d| {
                match q.status.as_deref() {
                    Some("success") => (200..400).contains(&d.status_code),
                    Some("failure") => !(200..400).contains(&d.status_code),
                    _ => true,
                }
            });
        let items: Vec<_> = matching.by_ref().take(per_page).cloned().collect();
        let more = matching.next().is_some();
        (items, more, state.config.installation_id)
    };
    let link = match (more, items.last()) {
        (true, Some(last)) => {
            let mut link = format!(
                "<{}/app/hook/deliveries?per_page={per_page}&cursor={}",
                shared.server_url(),
                last.id
            );
            if let Some(status) = &q.status {
                link.push_str(&format!("&status={status}"));
            }
            link.push_str(">; rel=\"next\"");
            Some(link)
        }
        _ => None,
    };
    let body: Vec<Value> = items
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "guid": d.guid,
                "delivered_at": ts(d.delivered_at),
                "redelivery": d.redelivery,
                "duration": d.duration,
                "status": d.status,
                "status_code": d.status_code,
                "event": "workflow_job",
                "action": d.action,
                "installation_id": installation,
                "repository_id": d.repository_id,
                "throttled_at": null
            })
        })
        .collect();
    with_link(StatusCode::OK, Value::Array(body), link)
}

async fn hook_delivery_redeliver(State(shared): Sh, _: AppJwt, Path(id): Path<i64>) -> Response {
    let planned = {
        let mut state = shared.lock();
        if !state.deliveries.contains_key(&id) {
            return error(StatusCode::NOT_FOUND, "Not Found");
        }
        state.redelivery_plan(id)
    };
    shared.after_change(planned.into_iter().collect());
    (StatusCode::ACCEPTED, Json(json!({}))).into_response()
}

// ---- control API for scripts ----------------------------------------------------

#[derive(Debug, Deserialize)]
struct SimJobBody {
    repo: String,
    labels: Vec<String>,
    #[serde(default)]
    duration_ms: u64,
}

async fn sim_job_queue(State(shared): Sh, Json(body): Json<SimJobBody>) -> Response {
    let spec =
        JobSpec::new(&body.repo, body.labels).duration(Duration::from_millis(body.duration_ms));
    let id = shared.job_queue(spec);
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

async fn sim_job_list(State(shared): Sh) -> Response {
    Json(shared.jobs()).into_response()
}

async fn sim_counters(State(shared): Sh) -> Response {
    Json(shared.counters()).into_response()
}

async fn sim_runner_list(State(shared): Sh) -> Response {
    Json(shared.runners()).into_response()
}
