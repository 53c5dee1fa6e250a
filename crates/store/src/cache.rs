//! Cache entries of the GitHub Actions cache server (`hangar-cache`), which
//! keeps the bytes in its blob store and the metadata here.
//!
//! Entry lifecycle (the only transitions):
//!
//! ```text
//!   cache_entry_reserve ──► Uploading ──cache_entry_commit──► Ready
//!                              │                                │
//!                              └──────── cache_entry_delete ◄───┘
//! ```
//!
//! The identity (repository, scope, key lower-cased, version) is unique in
//! both states: reserving it twice yields `None` (the server's 409). Keys are
//! lower-cased in Rust (`key_norm`), not in SQL, so SQLite and PostgreSQL
//! agree on non-ASCII keys; prefix search compares `substr` of that column,
//! so `%` and `_` in keys are plain characters.

use hangar_types::{CacheEntryId, RepositoryId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{AnyQuery, Store, StoreError};

/// Unix milliseconds.
pub(crate) type Millis = i64;

/// Whether an entry can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEntryState {
    /// Reserved; parts are being uploaded. Never served.
    Uploading,
    /// Committed: all parts present, size verified.
    Ready,
}

impl CacheEntryState {
    fn as_str(self) -> &'static str {
        match self {
            CacheEntryState::Uploading => "uploading",
            CacheEntryState::Ready => "ready",
        }
    }
}

/// A reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCacheEntry {
    pub repository_id: RepositoryId,
    pub scope: String,
    pub key: String,
    pub version: String,
    /// Where the entry's bytes live in the blob store (unique per entry).
    pub blob_prefix: String,
    pub now: Millis,
}

/// One cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub id: CacheEntryId,
    pub repository_id: RepositoryId,
    pub scope: String,
    /// As the client sent it (case kept).
    pub key: String,
    pub version: String,
    pub blob_prefix: String,
    pub state: CacheEntryState,
    /// Bytes: while `Uploading`, the bytes received so far (counted towards
    /// the caps); once `Ready`, the committed size.
    pub size: u64,
    /// The blob's parts in order, `key<TAB>size` per line; empty until committed.
    pub manifest: String,
    pub created_at: Millis,
    pub committed_at: Option<Millis>,
    pub last_used_at: Millis,
    pub hits: u64,
    pub bytes_served: u64,
}

/// Usage of one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheRepoStats {
    pub repository_id: RepositoryId,
    pub entries: u64,
    pub bytes: u64,
    pub lookups: u64,
    pub hits: u64,
    pub bytes_served: u64,
}

/// Lower-cases a key for comparison.
pub fn cache_key_norm(key: &str) -> String {
    key.to_lowercase()
}

const COLUMNS: &str = "id, repository_id, scope, cache_key, version, blob_prefix, state, size, \
     manifest, created_at_ms, committed_at_ms, last_used_at_ms, hits, bytes_served";

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn entry_from(row: &AnyRow) -> Result<CacheEntry, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(CacheEntry {
        id: CacheEntryId(row.try_get("id")?),
        repository_id: RepositoryId(row.try_get("repository_id")?),
        scope: row.try_get("scope")?,
        key: row.try_get("cache_key")?,
        version: row.try_get("version")?,
        blob_prefix: row.try_get("blob_prefix")?,
        state: if state == "ready" { CacheEntryState::Ready } else { CacheEntryState::Uploading },
        size: u(row.try_get("size")?),
        manifest: row.try_get("manifest")?,
        created_at: row.try_get("created_at_ms")?,
        committed_at: row.try_get("committed_at_ms")?,
        last_used_at: row.try_get("last_used_at_ms")?,
        hits: u(row.try_get("hits")?),
        bytes_served: u(row.try_get("bytes_served")?),
    })
}

impl Store {
    /// Reserves an entry in state `Uploading`; `None` if the identity exists.
    pub async fn cache_entry_reserve(
        &self,
        new: &NewCacheEntry,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let op = "reserving a cache entry";
        let row = sqlx::query(
            "INSERT INTO cache_entries (repository_id, scope, cache_key, key_norm, version, \
             blob_prefix, state, created_at_ms, last_used_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (repository_id, scope, key_norm, version) DO NOTHING RETURNING id",
        )
        .bind(new.repository_id.0)
        .bind(&new.scope)
        .bind(&new.key)
        .bind(cache_key_norm(&new.key))
        .bind(&new.version)
        .bind(&new.blob_prefix)
        .bind(CacheEntryState::Uploading.as_str())
        .bind(new.now)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query(op))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let id = CacheEntryId(row.try_get("id").map_err(StoreError::query(op))?);
                self.cache_entry_get(id).await
            }
        }
    }

    /// Runs a query of at most one row of `COLUMNS`.
    async fn entry_one(
        &self,
        op: &'static str,
        query: AnyQuery<'_>,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let row = query.fetch_optional(self.pool()).await.map_err(StoreError::query(op))?;
        row.as_ref().map(entry_from).transpose().map_err(StoreError::query(op))
    }

    pub async fn cache_entry_get(
        &self,
        id: CacheEntryId,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let op = "reading a cache entry";
        let sql = format!("SELECT {COLUMNS} FROM cache_entries WHERE id = $1");
        self.entry_one(op, sqlx::query(&sql).bind(id.0)).await
    }

    /// Uploading → Ready. False (and nothing changes) unless it was `Uploading`.
    pub async fn cache_entry_commit(
        &self,
        id: CacheEntryId,
        size: u64,
        manifest: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE cache_entries SET state = $1, size = $2, manifest = $3, \
             committed_at_ms = $4, last_used_at_ms = $4 WHERE id = $5 AND state = $6",
        )
        .bind(CacheEntryState::Ready.as_str())
        .bind(i(size))
        .bind(manifest)
        .bind(now)
        .bind(id.0)
        .bind(CacheEntryState::Uploading.as_str())
        .execute(self.pool())
        .await
        .map_err(StoreError::query("committing a cache entry"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds `delta` (negative when a retried part replaced a larger one) to
    /// the bytes an `Uploading` entry has received, never going below 0.
    /// Nothing changes for a `Ready` or missing entry.
    pub async fn cache_entry_add_uploaded(
        &self,
        id: CacheEntryId,
        delta: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE cache_entries SET \
             size = CASE WHEN size + $1 < 0 THEN 0 ELSE size + $1 END \
             WHERE id = $2 AND state = $3",
        )
        .bind(delta)
        .bind(id.0)
        .bind(CacheEntryState::Uploading.as_str())
        .execute(self.pool())
        .await
        .map_err(StoreError::query("counting uploaded cache bytes"))?;
        Ok(())
    }

    /// Bytes received by entries still `Uploading` (of one repository if given).
    pub async fn cache_uploading_bytes(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<u64, StoreError> {
        let op = "summing unfinished cache uploads";
        let sum = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM cache_entries \
                   WHERE state = $1";
        let row = match repository_id {
            Some(repo) => {
                let sql = format!("{sum} AND repository_id = $2");
                sqlx::query(&sql)
                    .bind(CacheEntryState::Uploading.as_str())
                    .bind(repo.0)
                    .fetch_one(self.pool())
                    .await
            }
            None => {
                sqlx::query(sum)
                    .bind(CacheEntryState::Uploading.as_str())
                    .fetch_one(self.pool())
                    .await
            }
        }
        .map_err(StoreError::query(op))?;
        Ok(u(row.try_get("bytes").map_err(StoreError::query(op))?))
    }

    /// The entry with exactly this identity, in any state.
    pub async fn cache_entry_find_exact(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        key: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let op = "looking up a cache key";
        let sql = format!(
            "SELECT {COLUMNS} FROM cache_entries \
             WHERE repository_id = $1 AND scope = $2 AND key_norm = $3 AND version = $4"
        );
        self.entry_one(
            op,
            sqlx::query(&sql)
                .bind(repository_id.0)
                .bind(scope)
                .bind(cache_key_norm(key))
                .bind(version),
        )
        .await
    }

    /// The most recently committed `Ready` entry whose key starts with `prefix`.
    pub async fn cache_entry_find_prefix(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        prefix: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let op = "looking up a cache key prefix";
        let prefix = cache_key_norm(prefix);
        let sql = format!(
            "SELECT {COLUMNS} FROM cache_entries \
             WHERE repository_id = $1 AND scope = $2 AND version = $3 AND state = $4 \
             AND substr(key_norm, 1, $5) = $6 \
             ORDER BY committed_at_ms DESC, id DESC LIMIT 1"
        );
        self.entry_one(
            op,
            sqlx::query(&sql)
                .bind(repository_id.0)
                .bind(scope)
                .bind(version)
                .bind(CacheEntryState::Ready.as_str())
                // An INTEGER, not a BIGINT: PostgreSQL has no substr(text, int, bigint).
                .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
                .bind(&prefix),
        )
        .await
    }

    /// Marks an entry used at `now` (never moving back), counting a hit if
    /// `hit` and `bytes` more served.
    pub async fn cache_entry_touch(
        &self,
        id: CacheEntryId,
        now: Millis,
        hit: bool,
        bytes: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE cache_entries SET \
             last_used_at_ms = CASE WHEN last_used_at_ms > $1 THEN last_used_at_ms ELSE $1 END, \
             hits = hits + $2, bytes_served = bytes_served + $3 WHERE id = $4",
        )
        .bind(now)
        .bind(i64::from(hit))
        .bind(i(bytes))
        .bind(id.0)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("touching a cache entry"))?;
        Ok(())
    }

    /// Deletes an entry, returning it if it existed.
    pub async fn cache_entry_delete(
        &self,
        id: CacheEntryId,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let op = "deleting a cache entry";
        let sql = format!("DELETE FROM cache_entries WHERE id = $1 RETURNING {COLUMNS}");
        self.entry_one(op, sqlx::query(&sql).bind(id.0)).await
    }

    /// All entries (of one repository if given), least recently used first.
    pub async fn cache_entry_list(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        let op = "listing cache entries";
        let rows = match repository_id {
            Some(repo) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM cache_entries WHERE repository_id = $1 \
                     ORDER BY last_used_at_ms, id"
                );
                sqlx::query(&sql).bind(repo.0).fetch_all(self.pool()).await
            }
            None => {
                let sql =
                    format!("SELECT {COLUMNS} FROM cache_entries ORDER BY last_used_at_ms, id");
                sqlx::query(&sql).fetch_all(self.pool()).await
            }
        }
        .map_err(StoreError::query(op))?;
        rows.iter().map(entry_from).collect::<Result<_, _>>().map_err(StoreError::query(op))
    }

    /// Counts one restore lookup of a repository, and whether it hit.
    pub async fn cache_lookup_record(
        &self,
        repository_id: RepositoryId,
        hit: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cache_repo_stats (repository_id, lookups, hits) VALUES ($1, 1, $2) \
             ON CONFLICT (repository_id) DO UPDATE SET \
             lookups = cache_repo_stats.lookups + 1, hits = cache_repo_stats.hits + excluded.hits",
        )
        .bind(repository_id.0)
        .bind(i64::from(hit))
        .execute(self.pool())
        .await
        .map_err(StoreError::query("counting a cache lookup"))?;
        Ok(())
    }

    /// Usage per repository, by repository id.
    pub async fn cache_repo_stats(&self) -> Result<Vec<CacheRepoStats>, StoreError> {
        let op = "reading cache usage";
        let entries = sqlx::query(
            "SELECT repository_id, CAST(COUNT(*) AS BIGINT) AS entries, \
             CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes, \
             CAST(COALESCE(SUM(bytes_served), 0) AS BIGINT) AS bytes_served \
             FROM cache_entries GROUP BY repository_id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query(op))?;
        let lookups = sqlx::query("SELECT repository_id, lookups, hits FROM cache_repo_stats")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query(op))?;
        let mut stats = std::collections::BTreeMap::<RepositoryId, CacheRepoStats>::new();
        let q = StoreError::query(op);
        let mut read = || -> Result<(), sqlx::Error> {
            for row in &entries {
                let repo = RepositoryId(row.try_get("repository_id")?);
                let s = stats.entry(repo).or_default();
                s.entries = u(row.try_get("entries")?);
                s.bytes = u(row.try_get("bytes")?);
                s.bytes_served = u(row.try_get("bytes_served")?);
            }
            for row in &lookups {
                let repo = RepositoryId(row.try_get("repository_id")?);
                let s = stats.entry(repo).or_default();
                s.lookups = u(row.try_get("lookups")?);
                s.hits = u(row.try_get("hits")?);
            }
            Ok(())
        };
        read().map_err(q)?;
        Ok(stats
            .into_iter()
            .map(|(repository_id, s)| CacheRepoStats { repository_id, ..s })
            .collect())
    }
}
