//! Everything hangar knows about GitHub's wire formats lives in this crate.
//!
//! - `webhook`: signature check of a delivery (which yields a
//!   [`VerifiedDelivery`], the only way to get one) and parsing of the events
//!   hangar acts on.
//! - [`rest`]: the REST client (GitHub App or personal-access-token auth,
//!   rate-limit accounting) and the [`GitHubApi`] trait the scheduler,
//!   reaper and recovery loops are written against.
//!
//! **Architecture invariant:** this is the only crate that knows GitHub's
//! JSON shapes, URLs and signature scheme. Everything past it speaks
//! `hangar_types` and the types below.

pub mod metrics;
pub mod rest;
pub mod webhook;

pub use rest::{
    API_VERSION, AppCredentials, Auth, CallPriority, ClientConfig, ENV_GITHUB_APP_PRIVATE_KEY,
    ENV_GITHUB_TOKEN, GitHubApi, GitHubConfig, GitHubConfigError, GitHubError, GitHubJob,
    GitHubRunner, HookDelivery, JitConfig, JitConfigRequest, MAX_PAGES, RateBudget, RestClient,
    RunnerDeletion, RunnerGroup, RunnerScope, RunnerStatus,
};
pub use webhook::{
    ContentType, DeliveryHeaders, Event, PayloadError, SignatureError, VerifiedDelivery,
    WebhookSecret,
};
