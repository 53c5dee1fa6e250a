//! The provider contract: the small interface between the scheduler and the
//! machines runners live in (a child process, a microVM, an EC2 instance).
//!
//! **Architecture invariant:** providers know nothing about the store, GitHub
//! or HTTP. They receive a [`RunnerSpec`] and report [`Instance`]s; that is all.
//!
//! # Lifecycle contract
//!
//! ```text
//!   launch(spec) ──► Starting ──► Running ──► Exited { code }
//!        │                                       │
//!        └──────────── destroy(id) ◄─────────────┘  (from any state) ──► gone
//! ```
//!
//! Every implementation must uphold, and `conformance` checks:
//! - **Idempotent by runner id.** `launch` of a spec whose runner id already
//!   has an instance returns that instance and starts nothing new. `destroy`
//!   of an id with no instance succeeds.
//! - **Destroy leaves nothing.** After `destroy` returns `Ok`, the instance
//!   and everything made for it (processes, disks, sockets, network
//!   devices) are gone, and `list` no longer reports it.
//! - **`list` is the truth.** It reports every instance the provider holds,
//!   including ones hangar has forgotten (after a crash), so the reaper can
//!   find orphans by comparing it with the store.
//! - **Secrets stay secret.** The JIT config reaches the runner and nothing
//!   else: not logs, not command lines, not `Debug` output.
//! - An instance runs exactly one runner; when the runner exits, the
//!   instance reports `Exited` (or disappears) and is never reused for
//!   another job.

use std::fmt;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
mod fake;
#[cfg(feature = "testing")]
pub use fake::FakeProvider;
mod unavailable;
pub use unavailable::Unavailable;

use hangar_types::{Labels, PoolName, RunnerId, Secret, Timestamp};
use serde::{Deserialize, Serialize};

/// Everything a provider needs to start one runner.
#[derive(Clone)]
pub struct RunnerSpec {
    /// Also the instance's name; see [`RunnerId`].
    pub runner_id: RunnerId,
    pub pool: PoolName,
    pub labels: Labels,
    /// GitHub's `encoded_jit_config`, passed to `run.sh --jitconfig`.
    pub jit_config: Secret,
    /// Extra environment for the runner process.
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for RunnerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerSpec")
            .field("runner_id", &self.runner_id)
            .field("pool", &self.pool)
            .field("labels", &self.labels)
            .field("jit_config", &self.jit_config)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

/// Where an instance is in its lifecycle, as the provider sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum InstanceState {
    /// Launched, runner not started yet (booting, waiting for the agent).
    Starting,
    /// The runner process is running.
    Running,
    /// The runner process ended; `code` when it is known.
    Exited { code: Option<i32> },
}

/// One machine a provider holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub runner_id: RunnerId,
    pub state: InstanceState,
    pub launched_at: Timestamp,
    /// Provider-specific detail for operators (a pid, a VM id, an instance id).
    pub detail: String,
}

/// Whether the provider can launch right now, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("launching runner {runner_id} failed: {reason}")]
    Launch {
        runner_id: RunnerId,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("destroying runner {runner_id} failed: {reason}")]
    Destroy {
        runner_id: RunnerId,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("listing instances failed: {reason}")]
    List {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// The machines of one pool. One value per pool: the pool's config (image,
/// CPU, memory, instance type) is given to the provider when it is built,
/// so the calls carry only what differs per runner.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// A short name of the implementation (`process`, `microvm`, `ec2`, `fake`).
    fn kind(&self) -> &'static str;

    /// Starts a runner; returns once the instance exists (it may still be
    /// `Starting`). Idempotent by `spec.runner_id`.
    async fn launch(&self, spec: &RunnerSpec) -> Result<Instance, ProviderError>;

    /// Stops and removes the instance and everything made for it.
    /// Idempotent: an unknown id is already destroyed.
    async fn destroy(&self, runner_id: &RunnerId) -> Result<(), ProviderError>;

    /// Every instance this provider holds.
    async fn list(&self) -> Result<Vec<Instance>, ProviderError>;

    /// Whether launches can succeed now.
    async fn health(&self) -> Health;

    /// Whether a runner's job is kept from the host and from other runners
    /// (its own VM or machine). The process provider is not.
    fn isolated(&self) -> bool {
        true
    }

    /// Stops what the provider keeps running for itself (pre-booted
    /// capacity, refill tasks) before hangar exits. Runner instances stay:
    /// the next start finds them through [`Provider::list`].
    async fn shutdown(&self) {}
}
