//! The store's error type. Callers mostly log these; the server turns them
//! into 503s (the database is unavailable) in one place.

use hangar_types::JobId;

use crate::Backend;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url {url:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl { url: String },
    #[error("opening the {} database at {location}", backend.as_str())]
    Open {
        backend: Backend,
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database schema")]
    Migrate {
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("{operation}")]
    Query {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the stored record of job {job_id} cannot be read")]
    Corrupt {
        job_id: JobId,
        #[source]
        source: serde_json::Error,
    },
    #[error("job {job_id} kept changing under us; gave up after {attempts} attempts")]
    Contended { job_id: JobId, attempts: u32 },
    #[error("runner {runner_id} cannot go from {from} to {to}")]
    RunnerTransition {
        runner_id: hangar_types::RunnerId,
        from: hangar_types::RunnerState,
        to: hangar_types::RunnerState,
    },
    #[error("the stored runner {runner_id} cannot be read")]
    CorruptRunner { runner_id: String },
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// Wraps a sqlx error with what we were doing.
    pub(crate) fn query(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { operation, source }
    }
}
