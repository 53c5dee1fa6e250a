//! hangar's HTTP front: `POST /webhook`, the admin API under `/api/v1`,
//! `/healthz` and `/metrics`.
//!
//! Handlers are thin: they call the `github` crate to verify and parse, the
//! store to record, and turn the outcome into a response. Every error ends
//! as an [`ApiError`], converted to HTTP in exactly one place (`error.rs`).
//! Other components (the cache) bring their own `Router`; the binary
//! merges them beside [`router`].

mod api;
mod auth;
mod error;
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
use tokio::sync::Notify;

pub use auth::ApiAccess;
pub use error::ApiError;
pub use metrics::prometheus_handle;

/// The `[server]` section of `hangar.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; default `127.0.0.1:8080`.
    pub listen: Option<SocketAddr>,
    /// Where the SQLite database and other local state live.
    pub data_dir: Option<PathBuf>,
    /// Bearer token of the admin API. Required to use the API when
    /// listening on a non-loopback address. Also `HANGAR_API_TOKEN`.
    pub api_token: Option<Secret>,
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
    pub(crate) access: ApiAccess,
    pub(crate) job_activity: Arc<Notify>,
    pub(crate) problems: Option<Problems>,
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
    /// `secret: None` refuses every delivery with 503 until one is set.
    pub fn new(store: Store, secret: Option<WebhookSecret>, access: ApiAccess) -> ServerState {
        ServerState { store, secret, access, job_activity: Arc::new(Notify::new()), problems: None }
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

/// The routes this crate serves.
pub fn router(state: ServerState) -> Router {
    // Install the recorder before the first delivery is counted.
    prometheus_handle();
    Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/healthz", get(api::health))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/jobs", get(api::job_list))
        .route("/api/v1/jobs/{id}", get(api::job_view))
        .with_state(state)
}
