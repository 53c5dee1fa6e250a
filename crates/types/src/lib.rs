//! The vocabulary every other hangar crate speaks.
//!
//! **Architecture invariant:** this crate does no IO, has no async code and
//! depends on no other workspace crate. It does not even read the clock:
//! callers pass timestamps in. That keeps everything here pure, so the job
//! state machine can be tested exhaustively (see `job::tests`).

pub mod duration;
mod ids;
mod job;
mod labels;
mod metric;
mod runner;

pub use ids::{
    CacheEntryId, DeliveryId, GitHubRunnerId, InstallationId, JobId, PoolName, RepositoryId, RunId,
    RunnerId, RunnerIdError, Secret,
};
pub use job::{
    Conclusion, JobAction, JobEvent, JobFields, JobRecord, JobState, Merge, Report, Reports,
    RunnerAssignment, StateTimes,
};
pub use labels::Labels;
pub use metric::{Metric, MetricKind, MetricUnit};
pub use runner::{RunnerRecord, RunnerState};

/// All timestamps in hangar are UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Displays an error with all its sources, `outer: inner: innermost`.
///
/// Error messages in hangar never repeat their source (see ARCHITECTURE.md),
/// so logging only `{error}` would lose the cause; log `ErrorChain(&error)`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
