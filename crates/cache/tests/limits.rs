//! Disk limits: `max_entry_bytes` holds for v2 block uploads (at each block
//! and at finalize), unfinished uploads count towards the repository's cap
//! and the global one, the global cap evicts least recently used entries of
//! any repository, and local uploads stop when the disk is nearly full.

use std::sync::Arc;

use bytes::Bytes;
use hangar_cache::clock::ManualClock;
use hangar_cache::index::{CacheEntry, CacheIndex, MemIndex};
use hangar_cache::token::Identity;
use hangar_cache::{CacheConfig, CacheError, CacheService};
use hangar_types::RepositoryId;

const HOUR: i64 = 3_600_000;
const KIB: usize = 1024;

fn who(repo: i64) -> Identity {
    Identity {
        repository_id: RepositoryId(repo),
        read_scopes: vec!["refs/heads/main".into()],
        write_scope: Some("refs/heads/main".into()),
    }
}

fn body(size: usize) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    // Several chunks, as a real body arrives.
    let chunk = Bytes::from(vec![7u8; 64 * KIB.min(size.max(1))]);
    let mut left = size;
    futures::stream::iter(std::iter::from_fn(move || {
        (left > 0).then(|| {
            let n = left.min(chunk.len());
            left -= n;
            Ok(chunk.slice(..n))
        })
    }))
}

struct Fixture {
    _dir: tempfile::TempDir,
    storage: String,
    index: Arc<MemIndex>,
    clock: ManualClock,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!("file://{}", dir.path().join("blobs").display());
        Fixture {
            _dir: dir,
            storage,
            index: Arc::new(MemIndex::default()),
            clock: ManualClock::new(1_000 * HOUR),
        }
    }

    /// A service over this fixture's index and blobs with `config`'s limits.
    fn service(&self, config: CacheConfig) -> CacheService {
        let config = CacheConfig { storage: Some(self.storage.clone()), ..config };
        let dir = self._dir.path();
        CacheService::new(&config, dir, self.index.clone(), Arc::new(self.clock.clone())).unwrap()
    }
}

async fn blocks(svc: &CacheService, entry: &CacheEntry, sizes: &[usize]) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let id = format!("block-{i}");
        svc.put_block(entry, &id, body(*size)).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn v2_blocks_past_max_entry_bytes_are_refused_at_the_block_and_at_finalize() {
    let fx = Fixture::new();
    let small = fx.service(CacheConfig { max_entry_bytes: 1024 * 1024, ..CacheConfig::default() });
    let entry = small.reserve(&who(1), "k", "v", None).await.unwrap();
    small.put_block(&entry, "b0", body(600 * KIB)).await.unwrap();
    // The second block would take the entry to 1200 KiB.
    let err = small.put_block(&entry, "b1", body(600 * KIB)).await.unwrap_err();
    assert!(matches!(err, CacheError::TooLarge { limit: 1_048_576, .. }), "{err:?}");
    // A retry of the first block replaces it: not counted twice.
    small.put_block(&entry, "b0", body(600 * KIB)).await.unwrap();
    small.put_block(&entry, "b1", body(400 * KIB)).await.unwrap();

    // Blocks stored under a larger limit (or before it was lowered) do not
    // finalize under the smaller one.
    let large = fx.service(CacheConfig::default());
    let entry = large.reserve(&who(1), "big", "v", None).await.unwrap();
    let ids = blocks(&large, &entry, &[600 * KIB, 600 * KIB, 600 * KIB]).await;
    large.put_block_list(&entry, &ids).await.unwrap();
    let size = 3 * 600 * 1024;
    let err = small.finalize_v2(&who(1), "big", "v", size).await.unwrap_err();
    assert!(matches!(err, CacheError::TooLarge { limit: 1_048_576, .. }), "{err:?}");
    assert!(small.lookup(&who(1), &["big".into()], "v").await.unwrap().is_none());
}

#[tokio::test]
async fn unfinished_uploads_count_towards_the_repository_cap() {
    let fx = Fixture::new();
    let svc = fx.service(CacheConfig { max_repo_bytes: 1000 * 1024, ..CacheConfig::default() });
    let mut entries = Vec::new();
    for key in ["a", "b", "c"] {
        entries.push(svc.reserve(&who(1), key, "v", None).await.unwrap());
    }
    // Never finalized: 800 KiB outstanding.
    svc.put_block(&entries[0], "x", body(400 * KIB)).await.unwrap();
    svc.put_block(&entries[1], "x", body(400 * KIB)).await.unwrap();
    let err = svc.put_block(&entries[2], "x", body(400 * KIB)).await.unwrap_err();
    assert!(matches!(err, CacheError::QuotaExceeded { .. }), "{err:?}");
    svc.put_block(&entries[2], "x", body(200 * KIB)).await.unwrap();
    // Full: no new reservation either, in this repository.
    let err = svc.reserve(&who(1), "d", "v", None).await.unwrap_err();
    assert!(matches!(err, CacheError::QuotaExceeded { .. }), "{err:?}");
    let other = svc.reserve(&who(2), "d", "v", None).await.unwrap();
    svc.put_block(&other, "x", body(400 * KIB)).await.unwrap();
    // Concurrent blocks share the room: of four 300 KiB blocks into an
    // empty repository with a 1000 KiB cap, at most three fit.
    let mut tasks = Vec::new();
    for key in ["p", "q", "r", "s"] {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let entry = svc.reserve(&who(3), key, "v", None).await.unwrap();
            svc.put_block(&entry, "x", body(300 * KIB)).await.is_ok()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += usize::from(t.await.unwrap());
    }
    assert!(stored <= 3, "{stored} blocks of 300 KiB stored under a 1000 KiB cap");
    assert!(fx.index.uploading_bytes(Some(RepositoryId(3))).await.unwrap() <= 1000 * 1024);
}

async fn save(svc: &CacheService, repo: i64, key: &str, size: usize) {
    let entry = svc.reserve(&who(repo), key, "v", None).await.unwrap();
    svc.put_blob(&entry, body(size)).await.unwrap();
    svc.finalize_v2(&who(repo), key, "v", size as u64).await.unwrap();
}

async fn found(svc: &CacheService, repo: i64, key: &str) -> bool {
    svc.lookup(&who(repo), &[key.to_owned()], "v").await.unwrap().is_some()
}

#[tokio::test]
async fn the_global_cap_evicts_least_recently_used_across_repositories() {
    let fx = Fixture::new();
    let svc = fx.service(CacheConfig { max_total_bytes: 1000, ..CacheConfig::default() });
    for (repo, key) in [(1, "a"), (2, "b"), (3, "c")] {
        save(&svc, repo, key, 400).await;
        fx.clock.advance(HOUR);
    }
    // The third save took the cache to 1200 bytes: the oldest entry goes,
    // whichever repository it belongs to.
    hangar_test_harness::wait_for(
        "global-cap eviction",
        std::time::Duration::from_secs(10),
        || {
            let index = fx.index.clone();
            async move { (index.entry_list(None).await.unwrap().len() == 2).then_some(()) }
        },
    )
    .await;
    assert!(!found(&svc, 1, "a").await);
    assert!(found(&svc, 2, "b").await && found(&svc, 3, "c").await);

    // Unfinished bytes count globally: 600 outstanding in repo 4 leave no
    // room for 600 more in repo 5.
    let open = svc.reserve(&who(4), "u", "v", None).await.unwrap();
    svc.put_block(&open, "x", body(600)).await.unwrap();
    let other = svc.reserve(&who(5), "w", "v", None).await.unwrap();
    let err = svc.put_block(&other, "x", body(600)).await.unwrap_err();
    assert!(matches!(err, CacheError::QuotaExceeded { .. }), "{err:?}");
}

#[tokio::test]
async fn local_uploads_stop_below_the_free_space_floor() {
    let fx = Fixture::new();
    let roomy = fx.service(CacheConfig::default());
    let entry = roomy.reserve(&who(1), "k", "v", None).await.unwrap();
    let full = fx.service(CacheConfig { min_free_bytes: u64::MAX, ..CacheConfig::default() });
    let err = full.reserve(&who(1), "j", "v", None).await.unwrap_err();
    assert!(matches!(err, CacheError::LowSpace { .. }), "{err:?}");
    let err = full.put_block(&entry, "x", body(10)).await.unwrap_err();
    assert!(matches!(err, CacheError::LowSpace { .. }), "{err:?}");
}
