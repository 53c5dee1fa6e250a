//! hangar's HTTP front: `POST /webhook`, the admin API under `/api/v1`,
//! `/healthz` and `/metrics`, on two listeners:
//! - the **public** one ([`public_router`]): `/webhook` and `/healthz` (and
//!   the cache's routes, merged by the binary). The admin routes are absent
//!   (404) unless `[server] api_token` is set; then they answer only to
//!   `Authorization: Bearer <token>` (401 otherwise). Who may call is never
//!   decided by addresses: behind a reverse proxy every peer is loopback.
//! - the **admin** one ([`admin_router`], `[server] admin_listen`, loopback or
//!   a unix socket): the admin API, `/metrics` and `/healthz`. Reaching it is
//!   the authentication; with a token set, the API asks for it there too.
//!
//! Both are served by [`listen::serve`], which caps connections and times
//! out slow request heads; the webhook handler caps and times out bodies
//! before their signature is checked (`webhook.rs`).
//!
//! Handlers are thin: they call the `github` crate to verify and parse, the
//! store to record, and turn the outcome into a response. Every error ends
//! as an [`ApiError`], converted to HTTP in exactly one place (`error.rs`).
//! Other components (the cache) bring their own `Router`; the binary
//! merges them beside [`router`].

mod api;
mod auth;
mod error;
pub mod listen;
pub mod metrics;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use hangar_github::WebhookSecret;
use hangar_store::Store;
use hangar_types::Secret;
use tokio::sync::{Notify, Semaphore};

pub use auth::ApiAccess;
pub use error::ApiError;
pub use listen::{Bound, LimitError, Limits, ListenAddr};
pub use metrics::prometheus_handle;

/// The admin listener when `[server] admin_listen` is not set.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";

/// The `[server]` section of `hangar.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public listener (webhooks, health, cache); default `127.0.0.1:8080`.
    pub listen: Option<SocketAddr>,
    /// The admin listener (API, metrics): default `127.0.0.1:8081`; a
    /// loopback address or `unix:/PATH` unless `api_token` is set.
    pub admin_listen: Option<ListenAddr>,
    /// Where the SQLite database and other local state live.
    pub data_dir: Option<PathBuf>,
    /// Bearer token of the admin API. With it, the admin routes also answer
    /// on the public listener (to this token only). Also `HANGAR_API_TOKEN`.
    pub api_token: Option<Secret>,
    /// Connection, header and body limits (`[server.limits]`).
    #[serde(default)]
    pub limits: Limits,
}

/// The `[webhook]` section of `hangar.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The secret set on the GitHub webhook. Also `HANGAR_WEBHOOK_SECRET`.
    pub secret: Option<Secret>,
}

/// What is wrong with the system beyond the store, for `/healthz`: each
/// problem names its part (`pool linux`) and says why.
pub type Problems = Arc<dyn Fn() -> Vec<Problem> + Send + Sync>;

/// One reason `/healthz` says `degraded`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What is affected, e.g. `pool default`.
    pub component: String,
    pub reason: String,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ServerState {
    pub(crate) store: Store,
    pub(crate) secret: Option<WebhookSecret>,
    /// Who may use the admin API on the router this state is in.
    pub(crate) access: ApiAccess,
    /// SHA-256 of `[server] api_token`, if set.
    pub(crate) token: Option<[u8; 32]>,
    pub(crate) job_activity: Arc<Notify>,
    pub(crate) problems: Option<Problems>,
    pub(crate) webhook: Arc<WebhookLimits>,
}

/// The webhook handler's share of [`Limits`].
#[derive(Debug)]
pub(crate) struct WebhookLimits {
    pub(crate) max_body: usize,
    pub(crate) body_timeout: std::time::Duration,
    /// One permit per unauthenticated body being read and checked.
    pub(crate) unverified: Semaphore,
}

impl WebhookLimits {
    fn new(limits: &Limits) -> WebhookLimits {
        WebhookLimits {
            max_body: limits.webhook_max_body_bytes,
            body_timeout: limits.webhook_body_timeout,
            unverified: Semaphore::new(limits.webhook_unverified_bodies),
        }
    }
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("store", &self.store)
            .field("secret", &self.secret.is_some())
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl ServerState {
    /// `secret: None` refuses every delivery with 503 until one is set;
    /// `api_token: None` keeps the admin routes off the public listener.
    /// Limits are the defaults until [`ServerState::with_limits`].
    pub fn new(
        store: Store,
        secret: Option<WebhookSecret>,
        api_token: Option<&str>,
    ) -> ServerState {
        let token = api_token.map(auth::digest);
        ServerState {
            store,
            secret,
            access: ApiAccess::Open,
            token,
            job_activity: Arc::new(Notify::new()),
            problems: None,
            webhook: Arc::new(WebhookLimits::new(&Limits::default())),
        }
    }

    /// The webhook body limits of `limits` (the connection limits are
    /// [`listen::serve`]'s).
    pub fn with_limits(mut self, limits: &Limits) -> ServerState {
        self.webhook = Arc::new(WebhookLimits::new(limits));
        self
    }

    /// Where `/healthz` learns what else is wrong (unhealthy pools).
    pub fn with_problems(mut self, problems: Problems) -> ServerState {
        self.problems = Some(problems);
        self
    }

    /// Notified whenever an accepted delivery changed a job, so the
    /// scheduler's reconciler can wake up at once instead of at its next tick.
    pub fn job_activity(&self) -> Arc<Notify> {
        Arc::clone(&self.job_activity)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The public listener's routes: `/webhook` and `/healthz`; with an API
/// token, also the admin routes, each needing that token (see the crate docs).
pub fn public_router(state: ServerState) -> Router {
    // Install the recorder before the first delivery is counted.
    prometheus_handle();
    let public = Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/healthz", get(api::health))
        .with_state(state.clone());
    match state.token {
        Some(token) => {
            let state = ServerState { access: ApiAccess::Token(token), ..state };
            let guard =
                axum::middleware::from_extractor_with_state::<auth::Operator, _>(state.clone());
            public.merge(admin_routes().route_layer(guard).with_state(state))
        }
        None => public,
    }
}

/// The admin listener's routes: the admin API (open, or the token when one
/// is set), `/metrics` and `/healthz`.
pub fn admin_router(state: ServerState) -> Router {
    prometheus_handle();
    let access = state.token.map_or(ApiAccess::Open, ApiAccess::Token);
    admin_routes().route("/healthz", get(api::health)).with_state(ServerState { access, ..state })
}

/// The admin API handlers take an `Operator` themselves; `/metrics` is
/// guarded by the public router only.
fn admin_routes() -> Router<ServerState> {
    Router::new()
        .route("/metrics", get(metrics::render))
        .route("/api/v1/jobs", get(api::job_list))
        .route("/api/v1/jobs/{id}", get(api::job_view))
}
