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
//!
//! No statement waits forever: on PostgreSQL every connection runs with
//! `statement_timeout` (`[store] statement_timeout`, default 30 s); on
//! SQLite a statement waits at most [`SQLITE_BUSY_TIMEOUT`] for the write
//! lock. History is deleted after `[store] retention` (`retention`).

mod batch;
mod cache;
mod checkpoint;
mod error;
mod jobs;
pub mod retention;
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
pub use retention::{RetentionReport, retention_schedule};
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `sqlite:///abs/path.db` or `postgres://user@host/db`. When absent,
    /// SQLite in the data directory. Also `HANGAR_DATABASE_URL`. May hold
    /// a password, so it is a `Secret` (redacted in `Debug`).
    pub url: Option<hangar_types::Secret>,
    /// Deliveries, runner events, gone runners and completed jobs older
    /// than this are deleted (see [`retention`]). At least an hour.
    #[serde(default = "defaults::retention", with = "hangar_types::duration")]
    pub retention: Duration,
    /// PostgreSQL: a statement running longer is cancelled (and its
    /// caller gets an error) instead of holding a connection.
    #[serde(default = "defaults::statement_timeout", with = "hangar_types::duration")]
    pub statement_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            url: None,
            retention: defaults::retention(),
            statement_timeout: defaults::statement_timeout(),
        }
    }
}

impl Config {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.retention < Duration::from_secs(3600) {
            return Err(("store.retention", "expected at least 1h"));
        }
        if self.statement_timeout < Duration::from_secs(1) {
            return Err(("store.statement_timeout", "expected at least 1s"));
        }
        Ok(())
    }

    /// How [`Store::open_with`] connects.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions { statement_timeout: self.statement_timeout }
    }
}

mod defaults {
    use std::time::Duration;

    pub(super) fn retention() -> Duration {
        Duration::from_secs(90 * 24 * 3600)
    }
    pub(super) fn statement_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

/// How a store connects (from [`Config::open_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// PostgreSQL's `statement_timeout` on every connection.
    pub statement_timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        Config::default().open_options()
    }
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
    /// schema up to date, with the default [`OpenOptions`].
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, OpenOptions::default()).await
    }

    /// [`Store::open`] with `options`.
    pub async fn open_with(url: &str, open: OpenOptions) -> Result<Store, StoreError> {
        let statement_timeout_ms = open.statement_timeout.as_millis();
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact(url) });
        };
        let open_error = |source| StoreError::Open { backend, location: redact(url), source };
        if backend == Backend::Sqlite {
            sqlite_file_create_private(url).map_err(|e| open_error(sqlx::Error::Io(e)))?;
        }
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
                    match backend {
                        Backend::Sqlite => conn.execute(SQLITE_PRAGMAS).await?,
                        Backend::Postgres => {
                            let set = format!("SET statement_timeout = {statement_timeout_ms}");
                            conn.execute(set.as_str()).await?
                        }
                    };
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

/// How long a SQLite statement waits for the write lock before it fails:
/// under GitHub's 10 s webhook timeout, so a delivery stuck behind a lock
/// is answered (an error GitHub redelivers) before GitHub gives up on it.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `journal_mode=WAL` lets readers run beside the writer; `synchronous=FULL`
/// makes every commit durable before it returns; checkpoints are left to
/// the `checkpoint` task, so no commit waits for one; `busy_timeout` is
/// [`SQLITE_BUSY_TIMEOUT`] (a test checks they agree).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA wal_autocheckpoint = 0; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

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

/// Creates a missing SQLite database file owner-only (0600) before SQLite
/// does (it would use the umask: world-readable webhook payloads). SQLite
/// gives its `-wal` and `-shm` files the database file's mode.
fn sqlite_file_create_private(url: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return Ok(());
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
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
    use std::time::Duration;

    use super::{Config, SQLITE_BUSY_TIMEOUT, SQLITE_PRAGMAS, Store};

    #[test]
    fn the_sqlite_busy_timeout_is_the_documented_one() {
        let ms = SQLITE_BUSY_TIMEOUT.as_millis();
        assert!(SQLITE_PRAGMAS.contains(&format!("busy_timeout = {ms};")), "{SQLITE_PRAGMAS}");
        assert!(SQLITE_BUSY_TIMEOUT < Duration::from_secs(10), "under GitHub's webhook timeout");
    }

    #[test]
    fn the_section_has_defaults_and_checks_its_bounds() {
        let config: Config = toml_free_parse("");
        assert_eq!(config.retention, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(config.statement_timeout, Duration::from_secs(30));
        assert_eq!(config.validate(), Ok(()));
        let short = Config { retention: Duration::from_secs(60), ..Config::default() };
        assert_eq!(short.validate(), Err(("store.retention", "expected at least 1h")));
    }

    /// `Config` from a JSON object (the crate has no TOML dependency; the
    /// binary's config tests parse the TOML).
    fn toml_free_parse(fields: &str) -> Config {
        serde_json::from_str(&format!("{{{fields}}}")).expect("parses")
    }

    /// On PostgreSQL a statement past `statement_timeout` is cancelled
    /// (the error comes back) instead of holding its connection.
    #[tokio::test]
    async fn postgres_statements_time_out() {
        let Some(url) =
            hangar_test_harness::require_env("TEST_POSTGRES_URL", "PostgreSQL statement timeout")
        else {
            return;
        };
        // A database of its own, as the store suite makes.
        sqlx::any::install_default_drivers();
        let name = format!("hangar_timeout_{}", std::process::id());
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect to the test PostgreSQL server");
        let _ =
            sqlx::Executor::execute(&mut admin, format!("DROP DATABASE IF EXISTS {name}").as_str())
                .await;
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        let base = url.rsplit_once('/').expect("url has a database").0;
        let options = super::OpenOptions { statement_timeout: Duration::from_secs(1) };
        let store = Store::open_with(&format!("{base}/{name}"), options).await.expect("open");
        let started = std::time::Instant::now();
        let error = sqlx::query("SELECT pg_sleep(30)")
            .execute(store.pool())
            .await
            .expect_err("cancelled by the timeout");
        assert!(error.to_string().contains("statement timeout"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(20));
        store.close().await;
        let _ = sqlx::Executor::execute(&mut admin, format!("DROP DATABASE {name}").as_str()).await;
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
