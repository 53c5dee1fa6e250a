//! The cache's metadata: which entries exist, in which state, and how much
//! they are used. A small trait so the protocol can be tested against a fake;
//! the real implementation is `hangar_store::Store` (the only crate that
//! holds SQL), adapted below. All run one conformance suite
//! (`tests/index_conformance.rs`: the fake, SQLite and PostgreSQL).
//!
//! Entry lifecycle (the only transitions):
//!
//! ```text
//!   entry_reserve ──► Uploading ──entry_commit──► Ready
//!                        │                          │
//!                        └──── entry_delete ◄───────┘   (eviction, `cache rm`)
//! ```
//!
//! The identity (repository, scope, key, version) is unique across both
//! states, compared with the key lower-cased: a second reservation of the same
//! identity is a conflict (HTTP 409) until the first is deleted. Keys keep
//! their original case for display.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use hangar_types::{CacheEntryId, RepositoryId};

pub use hangar_store::{CacheEntry, CacheEntryState, CacheRepoStats, NewCacheEntry};

/// Unix time in milliseconds.
pub type Millis = i64;

/// Errors of a metadata backend.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("an entry with this repository, scope, key and version already exists")]
    Conflict,
    #[error("cache metadata backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The metadata operations the cache needs.
#[async_trait]
pub trait CacheIndex: Send + Sync + 'static {
    /// Reserves a new entry in state `Uploading`; `Conflict` if the identity exists.
    async fn entry_reserve(&self, new: &NewCacheEntry) -> Result<CacheEntry, IndexError>;
    async fn entry_get(&self, id: CacheEntryId) -> Result<Option<CacheEntry>, IndexError>;
    /// Uploading → Ready with its size and manifest. False if the entry is
    /// missing or not `Uploading` (nothing changes then).
    async fn entry_commit(
        &self,
        id: CacheEntryId,
        size: u64,
        manifest: &str,
        now: Millis,
    ) -> Result<bool, IndexError>;
    /// The entry with exactly this identity (key compared lower-cased), any state.
    async fn entry_find_exact(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        key: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, IndexError>;
    /// The most recently committed `Ready` entry whose lower-cased key starts
    /// with the lower-cased `prefix`.
    async fn entry_find_prefix(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        prefix: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, IndexError>;
    /// Marks an entry used at `now`, counting a hit if `hit`, and `bytes` more served.
    async fn entry_touch(
        &self,
        id: CacheEntryId,
        now: Millis,
        hit: bool,
        bytes: u64,
    ) -> Result<(), IndexError>;
    /// Deletes an entry, returning it if it existed.
    async fn entry_delete(&self, id: CacheEntryId) -> Result<Option<CacheEntry>, IndexError>;
    /// Adds `delta` to the bytes an `Uploading` entry has received (its
    /// `size`), never below 0; nothing for a `Ready` or missing entry.
    async fn entry_add_uploaded(&self, id: CacheEntryId, delta: i64) -> Result<(), IndexError>;
    /// Bytes received by `Uploading` entries (of one repository if given).
    async fn uploading_bytes(&self, repository_id: Option<RepositoryId>)
    -> Result<u64, IndexError>;
    /// All entries (of one repository if given), least recently used first.
    async fn entry_list(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<Vec<CacheEntry>, IndexError>;
    /// Counts one restore lookup for a repository, and whether it hit.
    async fn lookup_record(&self, repository_id: RepositoryId, hit: bool)
    -> Result<(), IndexError>;
    /// Usage per repository (repositories with entries or lookups), by id.
    async fn repo_stats(&self) -> Result<Vec<CacheRepoStats>, IndexError>;
}

/// Lower-cases a key for comparison (Unicode-aware, done in Rust rather than
/// in SQL so every backend agrees).
pub fn key_norm(key: &str) -> String {
    hangar_store::cache_key_norm(key)
}

/// An in-memory [`CacheIndex`] for tests.
#[derive(Debug, Default)]
pub struct MemIndex {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    next_id: i64,
    entries: BTreeMap<CacheEntryId, CacheEntry>,
    lookups: BTreeMap<RepositoryId, (u64, u64)>,
}

impl MemIndex {
    fn with<T>(&self, f: impl FnOnce(&mut MemInner) -> T) -> T {
        f(&mut self.inner.lock().expect("MemIndex lock"))
    }
}

fn same_identity(
    e: &CacheEntry,
    repository_id: RepositoryId,
    scope: &str,
    key: &str,
    version: &str,
) -> bool {
    e.repository_id == repository_id
        && e.scope == scope
        && key_norm(&e.key) == key_norm(key)
        && e.version == version
}

#[async_trait]
impl CacheIndex for MemIndex {
    async fn entry_reserve(&self, new: &NewCacheEntry) -> Result<CacheEntry, IndexError> {
        self.with(|m| {
            if m.entries
                .values()
                .any(|e| same_identity(e, new.repository_id, &new.scope, &new.key, &new.version))
            {
                return Err(IndexError::Conflict);
            }
            m.next_id += 1;
            let entry = CacheEntry {
                id: CacheEntryId(m.next_id),
                repository_id: new.repository_id,
                scope: new.scope.clone(),
                key: new.key.clone(),
                version: new.version.clone(),
                blob_prefix: new.blob_prefix.clone(),
                state: CacheEntryState::Uploading,
                size: 0,
                manifest: String::new(),
                created_at: new.now,
                committed_at: None,
                last_used_at: new.now,
                hits: 0,
                bytes_served: 0,
            };
            m.entries.insert(entry.id, entry.clone());
            Ok(entry)
        })
    }

    async fn entry_get(&self, id: CacheEntryId) -> Result<Option<CacheEntry>, IndexError> {
        Ok(self.with(|m| m.entries.get(&id).cloned()))
    }

    async fn entry_commit(
        &self,
        id: CacheEntryId,
        size: u64,
        manifest: &str,
        now: Millis,
    ) -> Result<bool, IndexError> {
        Ok(self.with(|m| match m.entries.get_mut(&id) {
            Some(e) if e.state == CacheEntryState::Uploading => {
                e.state = CacheEntryState::Ready;
                e.size = size;
                e.manifest = manifest.to_owned();
                e.committed_at = Some(now);
                e.last_used_at = now;
                true
            }
            _ => false,
        }))
    }

    async fn entry_find_exact(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        key: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, IndexError> {
        Ok(self.with(|m| {
            m.entries
                .values()
                .find(|e| same_identity(e, repository_id, scope, key, version))
                .cloned()
        }))
    }

    async fn entry_find_prefix(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        prefix: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, IndexError> {
        let prefix = key_norm(prefix);
        Ok(self.with(|m| {
            m.entries
                .values()
                .filter(|e| {
                    e.repository_id == repository_id
                        && e.scope == scope
                        && e.version == version
                        && e.state == CacheEntryState::Ready
                        && key_norm(&e.key).starts_with(&prefix)
                })
                .max_by_key(|e| (e.committed_at, e.id))
                .cloned()
        }))
    }

    async fn entry_touch(
        &self,
        id: CacheEntryId,
        now: Millis,
        hit: bool,
        bytes: u64,
    ) -> Result<(), IndexError> {
        self.with(|m| {
            if let Some(e) = m.entries.get_mut(&id) {
                e.last_used_at = e.last_used_at.max(now);
                e.hits += u64::from(hit);
                e.bytes_served += bytes;
            }
        });
        Ok(())
    }

    async fn entry_delete(&self, id: CacheEntryId) -> Result<Option<CacheEntry>, IndexError> {
        Ok(self.with(|m| m.entries.remove(&id)))
    }

    async fn entry_add_uploaded(&self, id: CacheEntryId, delta: i64) -> Result<(), IndexError> {
        self.with(|m| {
            if let Some(e) = m.entries.get_mut(&id)
                && e.state == CacheEntryState::Uploading
            {
                e.size = e.size.saturating_add_signed(delta);
            }
        });
        Ok(())
    }

    async fn uploading_bytes(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<u64, IndexError> {
        Ok(self.with(|m| {
            m.entries
                .values()
                .filter(|e| e.state == CacheEntryState::Uploading)
                .filter(|e| repository_id.is_none_or(|r| e.repository_id == r))
                .map(|e| e.size)
                .sum()
        }))
    }

    async fn entry_list(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<Vec<CacheEntry>, IndexError> {
        let mut list: Vec<CacheEntry> = self.with(|m| {
            m.entries
                .values()
                .filter(|e| repository_id.is_none_or(|r| e.repository_id == r))
                .cloned()
                .collect()
        });
        list.sort_by_key(|e| (e.last_used_at, e.id));
        Ok(list)
    }

    async fn lookup_record(
        &self,
        repository_id: RepositoryId,
        hit: bool,
    ) -> Result<(), IndexError> {
        self.with(|m| {
            let counts = m.lookups.entry(repository_id).or_default();
            counts.0 += 1;
            counts.1 += u64::from(hit);
        });
        Ok(())
    }

    async fn repo_stats(&self) -> Result<Vec<CacheRepoStats>, IndexError> {
        Ok(self.with(|m| {
            let mut stats: BTreeMap<RepositoryId, CacheRepoStats> = BTreeMap::new();
            for e in m.entries.values() {
                let s = stats.entry(e.repository_id).or_default();
                s.entries += 1;
                s.bytes += e.size;
                s.bytes_served += e.bytes_served;
            }
            for (repo, (lookups, hits)) in &m.lookups {
                let s = stats.entry(*repo).or_default();
                s.lookups = *lookups;
                s.hits = *hits;
            }
            stats
                .into_iter()
                .map(|(repository_id, s)| CacheRepoStats { repository_id, ..s })
                .collect()
        }))
    }
}

fn backend(e: hangar_store::StoreError) -> IndexError {
    IndexError::Backend(Box::new(e))
}

/// The real index: the store's `cache_entries` table.
#[async_trait]
impl CacheIndex for hangar_store::Store {
    async fn entry_reserve(&self, new: &NewCacheEntry) -> Result<CacheEntry, IndexError> {
        self.cache_entry_reserve(new).await.map_err(backend)?.ok_or(IndexError::Conflict)
    }

    async fn entry_get(&self, id: CacheEntryId) -> Result<Option<CacheEntry>, IndexError> {
        self.cache_entry_get(id).await.map_err(backend)
    }

    async fn entry_commit(
        &self,
        id: CacheEntryId,
        size: u64,
        manifest: &str,
        now: Millis,
    ) -> Result<bool, IndexError> {
        self.cache_entry_commit(id, size, manifest, now).await.map_err(backend)
    }

    async fn entry_find_exact(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        key: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, IndexError> {
        self.cache_entry_find_exact(repository_id, scope, key, version).await.map_err(backend)
    }

    async fn entry_find_prefix(
        &self,
        repository_id: RepositoryId,
        scope: &str,
        prefix: &str,
        version: &str,
    ) -> Result<Option<CacheEntry>, IndexError> {
        self.cache_entry_find_prefix(repository_id, scope, prefix, version).await.map_err(backend)
    }

    async fn entry_touch(
        &self,
        id: CacheEntryId,
        now: Millis,
        hit: bool,
        bytes: u64,
    ) -> Result<(), IndexError> {
        self.cache_entry_touch(id, now, hit, bytes).await.map_err(backend)
    }

    async fn entry_delete(&self, id: CacheEntryId) -> Result<Option<CacheEntry>, IndexError> {
        self.cache_entry_delete(id).await.map_err(backend)
    }

    async fn entry_add_uploaded(&self, id: CacheEntryId, delta: i64) -> Result<(), IndexError> {
        self.cache_entry_add_uploaded(id, delta).await.map_err(backend)
    }

    async fn uploading_bytes(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<u64, IndexError> {
        self.cache_uploading_bytes(repository_id).await.map_err(backend)
    }

    async fn entry_list(
        &self,
        repository_id: Option<RepositoryId>,
    ) -> Result<Vec<CacheEntry>, IndexError> {
        self.cache_entry_list(repository_id).await.map_err(backend)
    }

    async fn lookup_record(
        &self,
        repository_id: RepositoryId,
        hit: bool,
    ) -> Result<(), IndexError> {
        self.cache_lookup_record(repository_id, hit).await.map_err(backend)
    }

    async fn repo_stats(&self) -> Result<Vec<CacheRepoStats>, IndexError> {
        self.cache_repo_stats().await.map_err(backend)
    }
}
