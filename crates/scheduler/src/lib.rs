//! The scheduler: pools, the pure planner and the reconciler that carries
//! its plans out.
//!
//! - [`config`]: the `[scheduler]` section and `[[pools]]`.
//! - [`plan`]: snapshot in, actions out; pure and table-tested.
//! - [`executor`]: carries a plan out (creation and teardown sagas).
//! - [`reconciler`]: the [`Lifecycle`], its background tasks and its stop.
//! - [`recovery`]: finds what lost webhooks did not say.
//!
//! **Architecture invariant:** only the scheduler changes provider state
//! and runner registrations; the planner never does IO.

pub mod config;
pub mod executor;
pub mod metrics;
pub mod plan;
pub mod reconciler;
pub mod recovery;

pub use config::{ConfigError, PoolConfig, SchedulerConfig};
pub use plan::{Action, JobReason, JobView, ReapReason, Registration, Snapshot, plan};
pub use reconciler::{Lifecycle, LifecycleParts, ReconcilerHandle, Status, StopReport};
