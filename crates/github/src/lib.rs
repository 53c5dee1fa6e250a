//! Everything hangar knows about GitHub's wire formats lives in this crate.
//!
//! - [`rest`]: the REST client (GitHub App or personal-access-token auth,
//!   rate-limit accounting) and the [`GitHubApi`] trait the scheduler,
//!   reaper and recovery loops are written against.
//!
//! **Architecture invariant:** no other crate parses a GitHub JSON shape or
//! builds a GitHub URL; they speak `hangar_types` and the types below.

pub mod rest;

pub use rest::{
    API_VERSION, AppCredentials, Auth, CallPriority, ClientConfig, ENV_GITHUB_APP_PRIVATE_KEY,
    ENV_GITHUB_TOKEN, GitHubApi, GitHubConfig, GitHubConfigError, GitHubError, GitHubJob,
    GitHubRunner, HookDelivery, JitConfig, JitConfigRequest, RateBudget, RestClient,
    RunnerDeletion, RunnerGroup, RunnerScope, RunnerStatus,
};
