//! What the cache does, independent of which protocol asked: look up, reserve,
//! store parts, commit, open for download. `http.rs` turns requests of both
//! protocols into calls here and results back into their wire formats.
//!
//! Blob layout per entry, under the entry's unique `blob_prefix`
//! (`<repository_id>/<random>`):
//!
//! - `blob` — a v2 Put Blob (archives up to 128 MiB);
//! - `block-<hex of the block id>` — one per v2 Put Block;
//! - `chunk-<start offset, 20 digits>` — one per v1 PATCH;
//! - `manifest` — written by Put Blob / Put Block List: the parts in order.
//!
//! Commit (v2 Finalize, v1 POST) checks the parts add up to the declared size
//! and records the ordered part list in the index; only then is the entry
//! `Ready`, and only `Ready` entries are ever found or served.
//!
//! Limits, checked as bytes arrive rather than at commit: an entry never
//! holds more than `max_entry_bytes` (counted over all its blocks or chunks,
//! and again at commit); the bytes of unfinished uploads — received so far,
//! recorded in the index as each part completes, plus the parts arriving in
//! this process right now ([`InFlight`]) — never exceed the repository's cap
//! nor the global one; and on local storage nothing is written while the
//! disk has less than `min_free_bytes` free. Committed entries over a cap are
//! evicted least recently used first ([`crate::evict`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use hangar_blobstore::{BlobError, BlobStore, ByteStream, Part};
use hangar_types::{CacheEntryId, ErrorChain, RepositoryId};

use crate::clock::Clock;
use crate::config::Settings;
use crate::index::{CacheEntry, CacheEntryState, CacheIndex, IndexError, Millis, NewCacheEntry};
use crate::sign::{UrlOp, UrlSigner};
use crate::token::{Identity, TokenVerifier};

/// Client-side limits of `@actions/cache`, enforced here too.
pub const MAX_KEY_LEN: usize = 512;
pub const MAX_KEYS: usize = 10;
/// Azure's largest block; a Put Block beyond this is refused.
pub const MAX_BLOCK_BYTES: u64 = 4000 * 1024 * 1024;

/// Failures, each mapped to an HTTP status by `http.rs`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("unauthorized")]
    Unauthorized(#[from] crate::token::TokenError),
    #[error("cache write denied: the token has no writable scope")]
    WriteDenied,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("cache entry with the same key, version, and scope already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("the signed URL is invalid or expired")]
    BadSignature,
    #[error("entry too large: {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("cache full: unfinished uploads would exceed the {cap} of {limit} bytes")]
    QuotaExceeded { cap: &'static str, limit: u64 },
    #[error("cache storage is low on space: {free} bytes free, {floor} required")]
    LowSpace { free: u64, floor: u64 },
    #[error("the upload is incomplete: {0}")]
    Incomplete(String),
    #[error("the block list references a block that was not uploaded")]
    InvalidBlockList,
    #[error("the request body failed")]
    Body(#[source] BlobError),
    #[error("cache index")]
    Index(#[source] IndexError),
    #[error("blob storage")]
    Blob(#[source] BlobError),
}

impl From<IndexError> for CacheError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Conflict => CacheError::Conflict,
            other @ IndexError::Backend(_) => CacheError::Index(other),
        }
    }
}

impl From<BlobError> for CacheError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Body { .. } => CacheError::Body(e),
            BlobError::TooLarge { limit } => CacheError::TooLarge { size: limit + 1, limit },
            other => CacheError::Blob(other),
        }
    }
}

/// An entry opened for download.
pub struct Download {
    pub entry: CacheEntry,
    /// Total size of the blob.
    pub size: u64,
    pub range: std::ops::Range<u64>,
    pub body: ByteStream,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("entry", &self.entry.id)
            .field("range", &self.range)
            .finish()
    }
}

/// Bytes of part bodies arriving in this process right now, per repository
/// and in total. Each chunk is added as it arrives (and checked against the
/// caps together with what the index says is already uploaded), and taken
/// out again when its part ends, so concurrent uploads cannot each use the
/// same room.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    total: u64,
    by_repo: HashMap<RepositoryId, u64>,
}

/// One part upload's share of [`InFlight`] (`bytes`, grown by the body as it
/// arrives), returned when it drops: after the index has counted the part.
struct InFlightGuard {
    ledger: Arc<Mutex<InFlight>>,
    repo: RepositoryId,
    bytes: Arc<AtomicU64>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let bytes = self.bytes.load(Ordering::SeqCst);
        let mut ledger = self.ledger.lock().expect("in-flight ledger lock");
        ledger.total = ledger.total.saturating_sub(bytes);
        if let Some(n) = ledger.by_repo.get_mut(&self.repo) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                ledger.by_repo.remove(&self.repo);
            }
        }
    }
}

/// Re-check free space after this many bytes of one body.
const FREE_SPACE_CHECK_EVERY: u64 = 64 * 1024 * 1024;

/// The cache service: shared state behind the HTTP handlers.
#[derive(Clone)]
pub struct CacheService {
    pub(crate) index: Arc<dyn CacheIndex>,
    pub(crate) blobs: BlobStore,
    pub(crate) tokens: TokenVerifier,
    pub(crate) signer: UrlSigner,
    pub(crate) settings: Settings,
    pub(crate) public_url: Option<String>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) in_flight: Arc<Mutex<InFlight>>,
    /// Work a request leaves running (size-cap eviction), drained on stop.
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService").field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

/// Validates keys the way the client does.
fn check_keys(keys: &[String], version: &str) -> Result<(), CacheError> {
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(CacheError::Invalid(format!("between 1 and {MAX_KEYS} keys are allowed")));
    }
    for key in keys {
        if key.is_empty() || key.chars().count() > MAX_KEY_LEN || key.contains(',') {
            return Err(CacheError::Invalid(format!(
                "key {key:?} must be 1 to {MAX_KEY_LEN} characters without commas"
            )));
        }
    }
    if version.is_empty() || version.len() > MAX_KEY_LEN {
        return Err(CacheError::Invalid("version must be 1 to 512 characters".into()));
    }
    Ok(())
}

/// Parses a manifest: one `key<TAB>size` line per part.
pub(crate) fn manifest_parts(manifest: &str) -> Result<Vec<Part>, CacheError> {
    manifest
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (key, size) = line
                .split_once('\t')
                .ok_or_else(|| CacheError::Incomplete("bad manifest".into()))?;
            let size = size.parse().map_err(|_| CacheError::Incomplete("bad manifest".into()))?;
            Ok(Part { key: key.to_owned(), size })
        })
        .collect()
}

fn manifest_of(parts: &[Part]) -> String {
    parts.iter().map(|p| format!("{}\t{}\n", p.key, p.size)).collect()
}

impl CacheService {
    pub(crate) fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Verifies an `Authorization` header.
    pub async fn identify(&self, authorization: Option<&str>) -> Result<Identity, CacheError> {
        Ok(self.tokens.verify_header(authorization).await?)
    }

    /// Finds the entry a restore gets: for each readable scope in order, for
    /// each key in order, the exact key, then the newest entry with that prefix.
    pub async fn lookup(
        &self,
        who: &Identity,
        keys: &[String],
        version: &str,
    ) -> Result<Option<CacheEntry>, CacheError> {
        check_keys(keys, version)?;
        let mut found = None;
        'search: for scope in &who.read_scopes {
            for key in keys {
                let exact =
                    self.index.entry_find_exact(who.repository_id, scope, key, version).await?;
                if let Some(e) = exact
                    && e.state == CacheEntryState::Ready
                {
                    found = Some(e);
                    break 'search;
                }
                if let Some(e) =
                    self.index.entry_find_prefix(who.repository_id, scope, key, version).await?
                {
                    found = Some(e);
                    break 'search;
                }
            }
        }
        self.index.lookup_record(who.repository_id, found.is_some()).await?;
        match &found {
            Some(e) => {
                self.index.entry_touch(e.id, self.now(), true, 0).await?;
                metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => "hit").increment(1);
                tracing::info!(repository_id = who.repository_id.0, entry_id = e.id.0, key = %e.key, scope = %e.scope, "cache: hit");
            }
            None => {
                metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => "miss").increment(1);
                tracing::info!(repository_id = who.repository_id.0, key = %keys[0], "cache: miss");
            }
        }
        Ok(found)
    }

    /// Reserves a new entry in the token's writable scope. A reservation that
    /// was never committed within the upload timeout no longer blocks the key.
    pub async fn reserve(
        &self,
        who: &Identity,
        key: &str,
        version: &str,
        size: Option<u64>,
    ) -> Result<CacheEntry, CacheError> {
        check_keys(std::slice::from_ref(&key.to_owned()), version)?;
        let scope = who.write_scope.clone().ok_or(CacheError::WriteDenied)?;
        if let Some(size) = size
            && size > self.settings.max_entry_bytes
        {
            return Err(CacheError::TooLarge { size, limit: self.settings.max_entry_bytes });
        }
        self.check_free_space()?;
        let repo_unfinished = self.index.uploading_bytes(Some(who.repository_id)).await?;
        if repo_unfinished >= self.settings.max_repo_bytes {
            return Err(CacheError::QuotaExceeded {
                cap: "repository cap (max_repo_bytes)",
                limit: self.settings.max_repo_bytes,
            });
        }
        if self.index.uploading_bytes(None).await? >= self.settings.max_total_bytes {
            return Err(CacheError::QuotaExceeded {
                cap: "global cap (max_total_bytes)",
                limit: self.settings.max_total_bytes,
            });
        }
        let now = self.now();
        let new = NewCacheEntry {
            repository_id: who.repository_id,
            scope: scope.clone(),
            key: key.to_owned(),
            version: version.to_owned(),
            blob_prefix: format!(
                "{}/{}",
                who.repository_id,
                hex::encode(rand::random::<[u8; 12]>())
            ),
            now,
        };
        match self.index.entry_reserve(&new).await {
            Err(IndexError::Conflict) => {
                let stale =
                    self.index.entry_find_exact(who.repository_id, &scope, key, version).await?;
                let timeout =
                    i64::try_from(self.settings.upload_timeout.as_millis()).unwrap_or(i64::MAX);
                match stale {
                    Some(e)
                        if e.state == CacheEntryState::Uploading
                            && e.created_at + timeout < now =>
                    {
                        self.entry_remove(&e).await?;
                        Ok(self.index.entry_reserve(&new).await?)
                    }
                    _ => Err(CacheError::Conflict),
                }
            }
            other => Ok(other?),
        }
    }

    /// Deletes an entry: index first (so it is never served again), then blobs.
    pub async fn entry_remove(&self, entry: &CacheEntry) -> Result<(), CacheError> {
        self.index.entry_delete(entry.id).await?;
        self.blobs.delete_prefix(&entry.blob_prefix).await?;
        Ok(())
    }

    /// The origin for signed URLs.
    pub(crate) fn base_url(&self, host: Option<&str>) -> String {
        match (&self.public_url, host) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(host)) => format!("http://{host}"),
            (None, None) => "http://127.0.0.1".to_owned(),
        }
    }

    fn expiry(&self) -> Millis {
        self.now() + i64::try_from(self.settings.url_ttl.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// Signed Azure-style upload URL (three path segments, as the SDK needs).
    pub fn upload_url(&self, host: Option<&str>, id: CacheEntryId) -> String {
        let query = self.signer.query(UrlOp::Upload, id.0, self.expiry());
        format!("{}/_hangar/blob/{id}?{query}", self.base_url(host))
    }

    /// Signed download URL.
    pub fn download_url(&self, host: Option<&str>, id: CacheEntryId) -> String {
        let query = self.signer.query(UrlOp::Download, id.0, self.expiry());
        format!("{}/_hangar/download/{id}?{query}", self.base_url(host))
    }

    /// Checks a signed URL and returns its entry.
    pub async fn signed_entry(
        &self,
        op: UrlOp,
        id: CacheEntryId,
        se: Option<&str>,
        sig: Option<&str>,
    ) -> Result<CacheEntry, CacheError> {
        let (Some(se), Some(sig)) = (se.and_then(|s| s.parse().ok()), sig) else {
            return Err(CacheError::BadSignature);
        };
        if !self.signer.check(op, id.0, se, sig, self.now()) {
            return Err(CacheError::BadSignature);
        }
        self.index.entry_get(id).await?.ok_or(CacheError::NotFound)
    }

    fn uploading(entry: &CacheEntry) -> Result<(), CacheError> {
        match entry.state {
            CacheEntryState::Uploading => Ok(()),
            CacheEntryState::Ready => Err(CacheError::Conflict),
        }
    }

    /// Refuses writes while local storage has less than `min_free_bytes` free.
    fn check_free_space(&self) -> Result<(), CacheError> {
        let floor = self.settings.min_free_bytes;
        match self.blobs.free_bytes() {
            Some(free) if free < floor => Err(CacheError::LowSpace { free, floor }),
            _ => Ok(()),
        }
    }

    /// Stores one part (a block, a chunk, the whole blob) of an `Uploading`
    /// entry, within `limit` and every cap (see the module docs), and counts
    /// its bytes towards the entry's unfinished total.
    async fn put_part<S, E>(
        &self,
        entry: &CacheEntry,
        name: &str,
        body: S,
        limit: u64,
    ) -> Result<u64, CacheError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.check_free_space()?;
        let key = format!("{}/{name}", entry.blob_prefix);
        // A retried part replaces the earlier one: its bytes are not counted twice.
        let old = self.blobs.size(&key).await?.unwrap_or(0);
        let s = &self.settings;
        // The entry as it is now (the caller's copy may predate other parts).
        let current = self.index.entry_get(entry.id).await?.ok_or(CacheError::NotFound)?;
        Self::uploading(&current)?;
        let entry_before = current.size.saturating_sub(old);
        let entry_room = s.max_entry_bytes.saturating_sub(entry_before);
        let repo = entry.repository_id;
        let repo_base = self.index.uploading_bytes(Some(repo)).await?.saturating_sub(old);
        let total_base = self.index.uploading_bytes(None).await?.saturating_sub(old);
        let (max_repo, max_total, floor) = (s.max_repo_bytes, s.max_total_bytes, s.min_free_bytes);
        let guard = InFlightGuard { ledger: self.in_flight.clone(), repo, bytes: Arc::default() };
        let (ledger, mine) = (guard.ledger.clone(), guard.bytes.clone());
        let blobs = self.blobs.clone();
        let mut since_space_check = 0u64;
        let counted = futures::StreamExt::map(body, move |chunk| {
            let chunk = chunk.map_err(Into::into)?;
            let n = chunk.len() as u64;
            let (repo_now, total_now) = {
                let mut ledger = ledger.lock().expect("in-flight ledger lock");
                ledger.total += n;
                let by_repo = ledger.by_repo.entry(repo).or_default();
                *by_repo += n;
                mine.fetch_add(n, Ordering::SeqCst);
                (*by_repo, ledger.total)
            };
            if repo_base + repo_now > max_repo {
                let cap = "repository cap (max_repo_bytes)";
                return Err(CacheError::QuotaExceeded { cap, limit: max_repo }.into());
            }
            if total_base + total_now > max_total {
                let cap = "global cap (max_total_bytes)";
                return Err(CacheError::QuotaExceeded { cap, limit: max_total }.into());
            }
            since_space_check += n;
            if since_space_check >= FREE_SPACE_CHECK_EVERY {
                since_space_check = 0;
                if let Some(free) = blobs.free_bytes()
                    && free < floor
                {
                    return Err(CacheError::LowSpace { free, floor }.into());
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(chunk)
        });
        let n = match self.blobs.put_stream(&key, counted, limit.min(entry_room)).await {
            Ok(n) => n,
            Err(BlobError::TooLarge { .. }) if entry_room < limit => {
                return Err(CacheError::TooLarge {
                    size: entry_before + entry_room + 1,
                    limit: s.max_entry_bytes,
                });
            }
            // A cap the counting stream hit comes back as the body's error.
            Err(BlobError::Body { source, received }) => {
                return Err(match source.downcast::<CacheError>() {
                    Ok(cap) => *cap,
                    Err(source) => CacheError::Body(BlobError::Body { received, source }),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let delta = i64::try_from(n).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(0);
        self.index.entry_add_uploaded(entry.id, delta).await?;
        // Only now out of the in-flight ledger: the part is never uncounted.
        drop(guard);
        metrics::counter!(crate::metrics::CACHE_BYTES_IN).increment(n);
        Ok(n)
    }

    async fn write_manifest(&self, entry: &CacheEntry, parts: &[Part]) -> Result<(), CacheError> {
        let text = Bytes::from(manifest_of(parts));
        let key = format!("{}/manifest", entry.blob_prefix);
        let body = futures::stream::iter([Ok::<_, std::io::Error>(text)]);
        self.blobs.put_stream(&key, body, u64::MAX).await?;
        Ok(())
    }

    /// v2 Put Blob: the whole archive in one body.
    pub async fn put_blob<S, E>(&self, entry: &CacheEntry, body: S) -> Result<(), CacheError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::uploading(entry)?;
        let size = self.put_part(entry, "blob", body, self.settings.max_entry_bytes).await?;
        let part = Part { key: format!("{}/blob", entry.blob_prefix), size };
        self.write_manifest(entry, &[part]).await
    }

    /// v2 Put Block: one block, any order, retries overwrite.
    pub async fn put_block<S, E>(
        &self,
        entry: &CacheEntry,
        block_id: &str,
        body: S,
    ) -> Result<(), CacheError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::uploading(entry)?;
        if block_id.is_empty() || block_id.len() > 128 {
            return Err(CacheError::Invalid("blockid must be 1 to 128 characters".into()));
        }
        let name = format!("block-{}", hex::encode(block_id));
        self.put_part(entry, &name, body, MAX_BLOCK_BYTES).await?;
        Ok(())
    }

    /// v2 Put Block List: fixes the blob's block order.
    pub async fn put_block_list(
        &self,
        entry: &CacheEntry,
        block_ids: &[String],
    ) -> Result<(), CacheError> {
        Self::uploading(entry)?;
        let stored = self.blobs.list(&entry.blob_prefix).await?;
        let mut parts = Vec::with_capacity(block_ids.len());
        for id in block_ids {
            let key = format!("{}/block-{}", entry.blob_prefix, hex::encode(id));
            let part = stored.iter().find(|p| p.key == key).ok_or(CacheError::InvalidBlockList)?;
            parts.push(part.clone());
        }
        self.write_manifest(entry, &parts).await
    }

    /// v1 PATCH: bytes `start..=end` of the archive.
    pub async fn put_chunk<S, E>(
        &self,
        entry: &CacheEntry,
        start: u64,
        end: u64,
        body: S,
    ) -> Result<(), CacheError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::uploading(entry)?;
        if end < start || end >= self.settings.max_entry_bytes {
            return Err(CacheError::Invalid(format!("bad Content-Range {start}-{end}")));
        }
        let name = format!("chunk-{start:020}");
        let want = end - start + 1;
        let got = self.put_part(entry, &name, body, want).await?;
        if got != want {
            self.blobs.delete_prefix(&format!("{}/{name}", entry.blob_prefix)).await?;
            self.index.entry_add_uploaded(entry.id, -i64::try_from(got).unwrap_or(0)).await?;
            return Err(CacheError::Invalid(format!(
                "Content-Range says {want} bytes, the body had {got}"
            )));
        }
        Ok(())
    }

    /// v2 Finalize: find the caller's reservation and commit it.
    pub async fn finalize_v2(
        &self,
        who: &Identity,
        key: &str,
        version: &str,
        size: u64,
    ) -> Result<CacheEntry, CacheError> {
        let scope = who.write_scope.as_deref().ok_or(CacheError::WriteDenied)?;
        let entry = self
            .index
            .entry_find_exact(who.repository_id, scope, key, version)
            .await?
            .ok_or(CacheError::NotFound)?;
        Self::uploading(&entry)?;
        let manifest = self.read_small(&format!("{}/manifest", entry.blob_prefix)).await?;
        let parts = manifest_parts(&manifest)?;
        self.commit(entry, &parts, size).await
    }

    /// v1 commit: the chunks must cover `0..size` exactly.
    pub async fn commit_v1(
        &self,
        who: &Identity,
        id: CacheEntryId,
        size: u64,
    ) -> Result<CacheEntry, CacheError> {
        let entry = self.owned_entry(who, id).await?;
        Self::uploading(&entry)?;
        let chunk_prefix = format!("{}/chunk-", entry.blob_prefix);
        let parts: Vec<Part> = self
            .blobs
            .list(&entry.blob_prefix)
            .await?
            .into_iter()
            .filter(|p| p.key.starts_with(&chunk_prefix))
            .collect();
        let mut offset = 0;
        for part in &parts {
            let start: u64 = part.key[chunk_prefix.len()..]
                .parse()
                .map_err(|_| CacheError::Incomplete("bad chunk".into()))?;
            if start != offset {
                return Err(CacheError::Incomplete(format!("no data at offset {offset}")));
            }
            offset += part.size;
        }
        self.commit(entry, &parts, size).await
    }

    async fn commit(
        &self,
        entry: CacheEntry,
        parts: &[Part],
        size: u64,
    ) -> Result<CacheEntry, CacheError> {
        let total: u64 = parts.iter().map(|p| p.size).sum();
        let limit = self.settings.max_entry_bytes;
        if total > limit || size > limit {
            return Err(CacheError::TooLarge { size: total.max(size), limit });
        }
        if total != size {
            return Err(CacheError::Incomplete(format!(
                "{total} bytes were uploaded, {size} declared"
            )));
        }
        if !self.index.entry_commit(entry.id, size, &manifest_of(parts), self.now()).await? {
            return Err(CacheError::Conflict);
        }
        tracing::info!(repository_id = entry.repository_id.0, entry_id = entry.id.0, key = %entry.key, scope = %entry.scope, size, "cache: saved");
        // Enforce the size caps right away; GitHub also accepts then evicts.
        let this = self.clone();
        let repo = entry.repository_id;
        self.tasks.spawn(async move {
            if let Err(e) = crate::evict::evict_over_caps(&this, false).await {
                tracing::warn!(repository_id = repo.0, error = %ErrorChain(&e), "cache: size-cap eviction failed");
            }
        });
        self.index.entry_get(entry.id).await?.ok_or(CacheError::NotFound)
    }

    /// An entry of the caller's repository (v1 uses bare ids in URLs).
    pub async fn owned_entry(
        &self,
        who: &Identity,
        id: CacheEntryId,
    ) -> Result<CacheEntry, CacheError> {
        match self.index.entry_get(id).await? {
            Some(e)
                if e.repository_id == who.repository_id
                    && who.write_scope.as_deref() == Some(&e.scope) =>
            {
                Ok(e)
            }
            _ => Err(CacheError::NotFound),
        }
    }

    async fn read_small(&self, key: &str) -> Result<String, CacheError> {
        let size = self
            .blobs
            .size(key)
            .await?
            .ok_or_else(|| CacheError::Incomplete("nothing was uploaded".into()))?;
        if size > 16 * 1024 * 1024 {
            return Err(CacheError::Incomplete("manifest too large".into()));
        }
        let part = Part { key: key.to_owned(), size };
        let mut stream = self.blobs.read(&[part], None)?;
        let mut out = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            out.extend_from_slice(&chunk?);
        }
        String::from_utf8(out).map_err(|_| CacheError::Incomplete("bad manifest".into()))
    }

    /// Opens a `Ready` entry for download, optionally a byte range.
    pub fn open(
        &self,
        entry: CacheEntry,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Download, CacheError> {
        if entry.state != CacheEntryState::Ready {
            return Err(CacheError::NotFound);
        }
        let parts = manifest_parts(&entry.manifest)?;
        let size = entry.size;
        let range = range.unwrap_or(0..size);
        let body = self.blobs.read(&parts, Some(range.clone()))?;
        Ok(Download { entry, size, range, body })
    }

    /// Records bytes served.
    pub async fn served(&self, entry: &CacheEntry, bytes: u64) -> Result<(), CacheError> {
        metrics::counter!(crate::metrics::CACHE_BYTES_OUT).increment(bytes);
        self.index.entry_touch(entry.id, self.now(), false, bytes).await?;
        Ok(())
    }
}
