//! Durable state: the only crate that contains SQL.
//!
//! One concrete [`Store`] over two backends, chosen by URL:
//! - **SQLite** (`sqlite:///path/hangar.db`), the embedded default: WAL
//!   journal, `synchronous=FULL`, so a commit is on disk before we answer;
//! - **PostgreSQL** (`postgres://…`), for several replicas.
//!
//! Both go through sqlx's `Any` driver, so every query is written once.
//! Placeholders are `$1, $2, …` numbered in order of first appearance:
//! PostgreSQL reads them as positions, SQLite as named parameters indexed by
//! first appearance, which is the same thing. Schema migrations are kept per
//! backend (`migrations/sqlite`, `migrations/postgres`) because column types
//! and indexes differ.
//!
//! Writes that GitHub's webhooks cause go through one writer task that
//! commits many deliveries in a single transaction (group commit): each
//! caller still gets its answer only after *its* delivery is durable, but a
//! burst costs one fsync, not one per delivery. See `writer`.
//!
//! Every state change is a conditional write on the row's generation and
//! reports whether it applied (`jobs::job_write`).

mod batch;
mod cache;
mod checkpoint;
mod error;
mod jobs;
mod runners;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

/// A query with its binds, for either backend.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub use cache::{CacheEntry, CacheEntryState, CacheRepoStats, NewCacheEntry, cache_key_norm};
pub use error::StoreError;
pub use jobs::{DeliveryOutcome, DeliveryRecord, JobFilter, JobPage, NewDelivery};
pub use runners::{ActiveJob, FailureKind, JobNotes, RunnerEvent};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The `[store]` section of `hangar.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `sqlite:///abs/path.db` or `postgres://user@host/db`. When absent,
    /// SQLite in the data directory. Also `HANGAR_DATABASE_URL`.
    pub url: Option<String>,
}

/// The handle every component uses. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: AnyPool,
    backend: Backend,
    writer: writer::WriterHandle,
}

static MIGRATIONS_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static MIGRATIONS_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its
    /// schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact(url) });
        };
        let open_error = |source| StoreError::Open { backend, location: redact(url), source };
        let options = AnyConnectOptions::from_str(&connect_url(backend, url))
            .map_err(open_error)?
            .disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let migrator = match backend {
            Backend::Sqlite => &MIGRATIONS_SQLITE,
            Backend::Postgres => &MIGRATIONS_POSTGRES,
        };
        migrator.run(&pool).await.map_err(|source| StoreError::Migrate { source })?;
        let checkpoints = (backend == Backend::Sqlite).then(|| checkpoint::spawn(pool.clone()));
        let writer = writer::spawn(pool.clone(), checkpoints);
        Ok(Store { inner: Arc::new(Inner { pool, backend, writer }) })
    }

    /// The URL of a SQLite database at `path`.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Checks that the database answers.
    pub async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(drop)
            .map_err(StoreError::query("checking the database"))
    }

    /// Waits until every write accepted so far is committed, then closes
    /// the connections.
    pub async fn close(&self) {
        self.inner.writer.shutdown().await;
        self.inner.pool.close().await;
    }
}

/// `journal_mode=WAL` lets readers run beside the writer; `synchronous=FULL`
/// makes every commit durable before it returns; checkpoints are left to
/// the `checkpoint` task, so no commit waits for one.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA wal_autocheckpoint = 0; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

fn connect_url(backend: Backend, url: &str) -> String {
    match backend {
        // Create the file when it is missing.
        Backend::Sqlite if !url.contains("mode=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        _ => url.to_owned(),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => {
                    format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the epoch, as stored.
fn to_ms(t: hangar_types::Timestamp) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> hangar_types::Timestamp {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
