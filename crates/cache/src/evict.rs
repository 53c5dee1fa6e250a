//! Eviction, as GitHub does it: entries not used for the TTL go; a
//! repository over its size cap loses least-recently-used entries until it
//! fits; reservations never committed within the upload timeout are purged.
//! Beyond GitHub, a global cap (`max_total_bytes`) over all repositories
//! evicts the least recently used entries of any repository. Uploads under
//! way count towards both caps with the bytes they have so far (they are
//! never evicted before their timeout; `service.rs` refuses their bytes
//! once the unfinished bytes alone would pass a cap).
//!
//! One pass re-reads the whole index (metadata only) and needs no input, so
//! the scheduled run, the run after each save and `hangar cache evict
//! --dry-run` share this code path. Time comes from the service's clock.

use std::collections::BTreeMap;

use hangar_types::{ErrorChain, RepositoryId};

use crate::index::{CacheEntry, CacheEntryState};
use crate::service::{CacheError, CacheService};

/// Why an entry was (or would be) evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// Not used for longer than the TTL.
    Unused,
    /// Its repository was over the size cap; this was least recently used.
    SizeCap,
    /// The whole cache was over the global cap; this was least recently used.
    TotalCap,
    /// Reserved but never committed within the upload timeout.
    Abandoned,
}

impl EvictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Unused => "unused",
            EvictReason::SizeCap => "size_cap",
            EvictReason::TotalCap => "total_cap",
            EvictReason::Abandoned => "abandoned",
        }
    }
}

/// What one pass removed (or, in a dry run, would remove).
#[derive(Debug, Default)]
pub struct EvictionReport {
    pub removed: Vec<(CacheEntry, EvictReason)>,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The size caps, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Per repository.
    pub repo: u64,
    /// All repositories together.
    pub total: u64,
}

/// Decides which entries go, given all entries (least recently used first).
pub fn plan(
    entries: &[CacheEntry],
    now: i64,
    ttl_ms: i64,
    upload_timeout_ms: i64,
    caps: Caps,
) -> Vec<(CacheEntry, EvictReason)> {
    let mut out = Vec::new();
    let mut kept: BTreeMap<RepositoryId, Vec<&CacheEntry>> = BTreeMap::new();
    let mut unfinished: BTreeMap<RepositoryId, u64> = BTreeMap::new();
    for e in entries {
        match e.state {
            CacheEntryState::Uploading if e.created_at + upload_timeout_ms < now => {
                out.push((e.clone(), EvictReason::Abandoned));
            }
            CacheEntryState::Uploading => *unfinished.entry(e.repository_id).or_default() += e.size,
            CacheEntryState::Ready if e.last_used_at + ttl_ms < now => {
                out.push((e.clone(), EvictReason::Unused));
            }
            CacheEntryState::Ready => kept.entry(e.repository_id).or_default().push(e),
        }
    }
    let mut survivors: Vec<&CacheEntry> = Vec::new();
    for (repo, list) in &mut kept {
        list.sort_by_key(|e| (e.last_used_at, e.id));
        let mut total: u64 =
            list.iter().map(|e| e.size).sum::<u64>() + unfinished.get(repo).copied().unwrap_or(0);
        for e in list.iter() {
            if total <= caps.repo {
                survivors.push(e);
                continue;
            }
            total -= e.size;
            out.push(((*e).clone(), EvictReason::SizeCap));
        }
    }
    survivors.sort_by_key(|e| (e.last_used_at, e.id));
    let mut total: u64 =
        survivors.iter().map(|e| e.size).sum::<u64>() + unfinished.values().sum::<u64>();
    for e in survivors {
        if total <= caps.total {
            break;
        }
        total -= e.size;
        out.push((e.clone(), EvictReason::TotalCap));
    }
    out
}

fn caps(service: &CacheService) -> Caps {
    Caps { repo: service.settings.max_repo_bytes, total: service.settings.max_total_bytes }
}

async fn apply(
    service: &CacheService,
    plan: Vec<(CacheEntry, EvictReason)>,
    dry_run: bool,
) -> Result<EvictionReport, CacheError> {
    if !dry_run {
        for (entry, reason) in &plan {
            service.entry_remove(entry).await?;
            metrics::counter!(crate::metrics::CACHE_EVICTIONS, "reason" => reason.as_str())
                .increment(1);
            tracing::info!(repository_id = entry.repository_id.0, entry_id = entry.id.0, key = %entry.key, reason = reason.as_str(), "cache: evicted");
        }
    }
    Ok(EvictionReport { removed: plan })
}

/// One full pass over every repository.
pub async fn evict(service: &CacheService, dry_run: bool) -> Result<EvictionReport, CacheError> {
    let entries = service.index.entry_list(None).await?;
    let s = &service.settings;
    let plan =
        plan(&entries, service.now(), millis(s.ttl), millis(s.upload_timeout), caps(service));
    apply(service, plan, dry_run).await
}

/// Only the size caps, per repository and global (run after each save).
pub async fn evict_over_caps(
    service: &CacheService,
    dry_run: bool,
) -> Result<EvictionReport, CacheError> {
    let entries = service.index.entry_list(None).await?;
    let plan = plan(&entries, service.now(), i64::MAX / 4, i64::MAX / 4, caps(service));
    apply(service, plan, dry_run).await
}

/// Runs [`evict`] on the configured schedule until `stop` is cancelled. A
/// pass under way when it is finishes first (its steps are not cut).
pub async fn schedule(service: CacheService, stop: tokio_util::sync::CancellationToken) {
    loop {
        let delay = service.settings.schedule.delay_from(service.now());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        match evict(&service, false).await {
            Ok(report) => {
                tracing::info!(evicted = report.removed.len(), "cache: eviction pass done");
            }
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "cache: eviction pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use hangar_types::CacheEntryId;

    use super::*;

    fn entry(id: i64, repo: i64, size: u64, last_used: i64, state: CacheEntryState) -> CacheEntry {
        CacheEntry {
            id: CacheEntryId(id),
            repository_id: RepositoryId(repo),
            scope: "refs/heads/main".into(),
            key: format!("k{id}"),
            version: "v".into(),
            blob_prefix: format!("{repo}/{id}"),
            state,
            size,
            manifest: String::new(),
            created_at: last_used,
            committed_at: Some(last_used),
            last_used_at: last_used,
            hits: 0,
            bytes_served: 0,
        }
    }

    #[test]
    fn ttl_cap_and_abandoned_uploads() {
        let r = CacheEntryState::Ready;
        let entries = vec![
            entry(1, 1, 10, 0, r),                           // unused past the TTL
            entry(2, 1, 60, 500, r),                         // LRU in repo 1, over cap
            entry(3, 1, 50, 900, r),                         // kept
            entry(4, 2, 100, 300, r),                        // repo 2 fits exactly
            entry(5, 2, 0, 10, CacheEntryState::Uploading),  // abandoned
            entry(6, 2, 0, 990, CacheEntryState::Uploading), // still uploading
        ];
        let got: Vec<(i64, EvictReason)> =
            plan(&entries, 1000, 800, 100, Caps { repo: 100, total: u64::MAX })
                .into_iter()
                .map(|(e, r)| (e.id.0, r))
                .collect();
        assert_eq!(
            got,
            vec![(1, EvictReason::Unused), (5, EvictReason::Abandoned), (2, EvictReason::SizeCap)]
        );
    }

    #[test]
    fn unfinished_uploads_count_and_the_global_cap_evicts_across_repositories() {
        let r = CacheEntryState::Ready;
        let entries = vec![
            entry(1, 1, 40, 100, r),
            entry(2, 2, 40, 200, r),
            entry(3, 1, 40, 300, r),
            // 30 bytes uploaded so far, not committed: counts, is never evicted.
            entry(4, 2, 30, 950, CacheEntryState::Uploading),
        ];
        let got = |caps| -> Vec<(i64, EvictReason)> {
            plan(&entries, 1000, i64::MAX / 4, 1000, caps)
                .into_iter()
                .map(|(e, r)| (e.id.0, r))
                .collect()
        };
        // Repo 1 holds 80: over a cap of 65. Repo 2 holds 40 committed, which
        // fits, plus 30 unfinished, which does not: its entry goes too.
        assert_eq!(
            got(Caps { repo: 65, total: u64::MAX }),
            [(1, EvictReason::SizeCap), (2, EvictReason::SizeCap)]
        );
        assert_eq!(got(Caps { repo: 80, total: u64::MAX }), []);
        // 150 in all over a global cap of 100: the oldest entries of any repository go.
        assert_eq!(
            got(Caps { repo: u64::MAX, total: 100 }),
            [(1, EvictReason::TotalCap), (2, EvictReason::TotalCap)]
        );
    }
}
