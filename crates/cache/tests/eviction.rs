//! Eviction with a controllable clock: by TTL (unused entries), by the
//! per-repository size cap (least recently used first, other repositories
//! untouched), abandoned uploads after the upload timeout, and dry runs that
//! change nothing.

use std::sync::Arc;

use bytes::Bytes;
use hangar_cache::clock::ManualClock;
use hangar_cache::evict::{EvictReason, evict};
use hangar_cache::index::{CacheIndex, MemIndex};
use hangar_cache::token::Identity;
use hangar_cache::{CacheConfig, CacheService};
use hangar_types::RepositoryId;

const HOUR: i64 = 3_600_000;

fn who(repo: i64) -> Identity {
    Identity {
        repository_id: RepositoryId(repo),
        read_scopes: vec!["refs/heads/main".into()],
        write_scope: Some("refs/heads/main".into()),
    }
}

async fn save(svc: &CacheService, repo: i64, key: &str, size: usize) {
    let entry = svc.reserve(&who(repo), key, "v", None).await.unwrap();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![7u8; size]))]);
    svc.put_blob(&entry, body).await.unwrap();
    svc.finalize_v2(&who(repo), key, "v", size as u64).await.unwrap();
}

async fn found(svc: &CacheService, repo: i64, key: &str) -> bool {
    svc.lookup(&who(repo), &[key.to_owned()], "v").await.unwrap().is_some()
}

fn service(index: Arc<MemIndex>, clock: &ManualClock, dir: &std::path::Path) -> CacheService {
    let config = CacheConfig {
        ttl: std::time::Duration::from_secs(72 * 3600),
        max_repo_bytes: 1000,
        ..CacheConfig::default()
    };
    CacheService::new(&config, dir, index, Arc::new(clock.clone())).unwrap()
}

#[tokio::test]
async fn ttl_evicts_unused_entries_and_use_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000 * HOUR);
    let index = Arc::new(MemIndex::default());
    let svc = service(index.clone(), &clock, dir.path());
    save(&svc, 1, "old", 10).await;
    save(&svc, 1, "used", 10).await;
    clock.advance(48 * HOUR);
    assert!(found(&svc, 1, "used").await, "a lookup counts as use");
    clock.advance(48 * HOUR);

    let dry = evict(&svc, true).await.unwrap();
    assert_eq!(
        dry.removed.iter().map(|(e, r)| (e.key.as_str(), *r)).collect::<Vec<_>>(),
        [("old", EvictReason::Unused)]
    );
    assert!(found(&svc, 1, "old").await, "a dry run removes nothing");
    // That lookup was a use: move past the TTL again.
    clock.advance(73 * HOUR);
    assert!(found(&svc, 1, "used").await);
    let report = evict(&svc, false).await.unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(!found(&svc, 1, "old").await);
    assert!(found(&svc, 1, "used").await);
    // The blobs went too.
    assert_eq!(files_under(&dir.path().join("cache/1")), 2, "blob + manifest of `used`");
}

#[tokio::test]
async fn size_cap_evicts_least_recently_used_per_repository() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000 * HOUR);
    let index = Arc::new(MemIndex::default());
    let svc = service(index.clone(), &clock, dir.path());
    for key in ["a", "b", "c"] {
        save(&svc, 1, key, 400).await;
        clock.advance(HOUR);
    }
    save(&svc, 2, "other", 900).await;
    // The save of c took repo 1 over 1000 bytes: the after-save pass runs in
    // the background; wait for it.
    hangar_test_harness::wait_for("size-cap eviction", std::time::Duration::from_secs(10), || {
        let index = index.clone();
        async move {
            let left = index.entry_list(Some(RepositoryId(1))).await.unwrap();
            (left.len() == 2).then_some(())
        }
    })
    .await;
    assert!(!found(&svc, 1, "a").await, "least recently used goes first");
    assert!(found(&svc, 1, "b").await && found(&svc, 1, "c").await);
    assert!(found(&svc, 2, "other").await, "other repositories are untouched");
    // Using b makes c the least recently used.
    clock.advance(HOUR);
    assert!(found(&svc, 1, "b").await);
    clock.advance(HOUR);
    save(&svc, 1, "d", 400).await;
    hangar_test_harness::wait_for("second eviction", std::time::Duration::from_secs(10), || {
        let index = index.clone();
        async move {
            let keys: Vec<String> = index
                .entry_list(Some(RepositoryId(1)))
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect();
            (keys.len() == 2).then_some(keys)
        }
    })
    .await;
    assert!(!found(&svc, 1, "c").await);
    assert!(found(&svc, 1, "b").await && found(&svc, 1, "d").await);
}

#[tokio::test]
async fn abandoned_uploads_are_purged_and_free_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000 * HOUR);
    let index = Arc::new(MemIndex::default());
    let svc = service(index.clone(), &clock, dir.path());
    let entry = svc.reserve(&who(1), "k", "v", None).await.unwrap();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"partial"))]);
    svc.put_blob(&entry, body).await.unwrap();
    assert!(!found(&svc, 1, "k").await, "never served before commit");
    assert!(svc.reserve(&who(1), "k", "v", None).await.is_err(), "the reservation blocks the key");
    clock.advance(29 * 60_000);
    assert!(evict(&svc, false).await.unwrap().removed.is_empty());
    clock.advance(2 * 60_000);
    let report = evict(&svc, false).await.unwrap();
    assert_eq!(report.removed[0].1, EvictReason::Abandoned);
    assert!(index.entry_get(entry.id).await.unwrap().is_none());
    save(&svc, 1, "k", 5).await;
    assert!(found(&svc, 1, "k").await);
}

fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}
