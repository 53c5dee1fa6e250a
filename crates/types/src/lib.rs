//! The vocabulary every other hangar crate speaks.
//!
//! **Architecture invariant:** this crate does no IO, has no async code and
//! depends on no other workspace crate. It does not even read the clock:
//! callers pass timestamps in. That keeps everything here pure, so the job
//! state machine can be tested exhaustively (see `job::tests`).

mod ids;
mod job;
mod labels;
mod runner;

pub use ids::{
    DeliveryId, InstallationId, JobId, PoolName, RunId, RunnerId, RunnerIdError, Secret,
};
pub use job::{
    Conclusion, JobAction, JobEvent, JobFields, JobRecord, JobState, Merge, RunnerAssignment,
    StateTimes,
};
pub use labels::Labels;
pub use runner::{RunnerRecord, RunnerState};

/// All timestamps in hangar are UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
