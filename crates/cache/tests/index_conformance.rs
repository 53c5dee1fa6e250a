//! One suite for every `CacheIndex`: the in-memory fake, the store on SQLite,
//! and the store on a fresh PostgreSQL database (`TEST_POSTGRES_URL`).

use std::sync::Arc;

use hangar_cache::index::{CacheEntryState, CacheIndex, IndexError, MemIndex, NewCacheEntry};
use hangar_store::Store;
use hangar_types::{CacheEntryId, RepositoryId};

fn new(repo: i64, scope: &str, key: &str, now: i64) -> NewCacheEntry {
    NewCacheEntry {
        repository_id: RepositoryId(repo),
        scope: scope.into(),
        key: key.into(),
        version: "v1".into(),
        blob_prefix: format!("{repo}/{key}-{now}"),
        now,
    }
}

async fn suite(index: Arc<dyn CacheIndex>) {
    // Reserve, conflict (case-insensitively), commit once.
    let a = index.entry_reserve(&new(1, "refs/heads/main", "Deps-Linux-1", 100)).await.unwrap();
    assert_eq!((a.state, a.size, a.key.as_str()), (CacheEntryState::Uploading, 0, "Deps-Linux-1"));
    let dup = index.entry_reserve(&new(1, "refs/heads/main", "deps-linux-1", 101)).await;
    assert!(matches!(dup, Err(IndexError::Conflict)), "{dup:?}");
    // Other scope, repository or version: no conflict.
    index.entry_reserve(&new(1, "refs/heads/feature", "deps-linux-1", 102)).await.unwrap();
    index.entry_reserve(&new(2, "refs/heads/main", "deps-linux-1", 103)).await.unwrap();
    let other_version =
        NewCacheEntry { version: "v2".into(), ..new(1, "refs/heads/main", "deps-linux-1", 104) };
    index.entry_reserve(&other_version).await.unwrap();

    // Unfinished bytes: counted per entry while uploading, summed per
    // repository and in all, never below 0.
    let open = index.entry_reserve(&new(3, "refs/heads/main", "partial", 105)).await.unwrap();
    let other = index.entry_reserve(&new(4, "refs/heads/main", "partial", 106)).await.unwrap();
    index.entry_add_uploaded(open.id, 500).await.unwrap();
    index.entry_add_uploaded(open.id, -200).await.unwrap();
    index.entry_add_uploaded(other.id, 70).await.unwrap();
    assert_eq!(index.entry_get(open.id).await.unwrap().unwrap().size, 300);
    assert_eq!(index.uploading_bytes(Some(RepositoryId(3))).await.unwrap(), 300);
    assert_eq!(index.uploading_bytes(None).await.unwrap(), 370);
    index.entry_add_uploaded(other.id, -1000).await.unwrap();
    assert_eq!(index.uploading_bytes(Some(RepositoryId(4))).await.unwrap(), 0);
    assert!(index.entry_commit(open.id, 300, "3/x/blob\t300\n", 107).await.unwrap());
    index.entry_add_uploaded(open.id, 5).await.unwrap();
    assert_eq!(index.entry_get(open.id).await.unwrap().unwrap().size, 300, "ready: unchanged");
    assert_eq!(index.uploading_bytes(None).await.unwrap(), 0, "ready bytes are not unfinished");
    index.entry_delete(open.id).await.unwrap();
    index.entry_delete(other.id).await.unwrap();

    // Uploading entries are never found by prefix.
    let none =
        index.entry_find_prefix(RepositoryId(1), "refs/heads/main", "deps", "v1").await.unwrap();
    assert_eq!(none, None);
    assert!(index.entry_commit(a.id, 42, "1/x/blob\t42\n", 200).await.unwrap());
    assert!(!index.entry_commit(a.id, 43, "", 201).await.unwrap(), "commits once");
    let a = index.entry_get(a.id).await.unwrap().unwrap();
    assert_eq!(
        (a.state, a.size, a.committed_at, a.last_used_at),
        (CacheEntryState::Ready, 42, Some(200), 200)
    );
    assert_eq!(a.manifest, "1/x/blob\t42\n");

    // Exact lookups ignore case; prefix lookups take the newest commit.
    let exact = index
        .entry_find_exact(RepositoryId(1), "refs/heads/main", "DEPS-linux-1", "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exact.id, a.id);
    let b = index.entry_reserve(&new(1, "refs/heads/main", "deps-linux-2", 300)).await.unwrap();
    index.entry_commit(b.id, 7, "", 400).await.unwrap();
    let newest = index
        .entry_find_prefix(RepositoryId(1), "refs/heads/main", "DEPS-LINUX-", "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newest.id, b.id);
    assert_eq!(
        index
            .entry_find_prefix(RepositoryId(1), "refs/heads/main", "deps-linux-", "v9")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        index.entry_find_prefix(RepositoryId(1), "refs/heads/other", "deps", "v1").await.unwrap(),
        None
    );
    // LIKE wildcards are plain characters.
    assert_eq!(
        index.entry_find_prefix(RepositoryId(1), "refs/heads/main", "deps%", "v1").await.unwrap(),
        None
    );
    assert_eq!(
        index
            .entry_find_prefix(RepositoryId(1), "refs/heads/main", "deps_linux", "v1")
            .await
            .unwrap(),
        None
    );
    // Unicode keys compare lower-cased on every backend.
    let u = index.entry_reserve(&new(1, "refs/heads/main", "Ünïcode-Key", 500)).await.unwrap();
    index.entry_commit(u.id, 1, "", 500).await.unwrap();
    assert!(
        index
            .entry_find_exact(RepositoryId(1), "refs/heads/main", "üNÏCODE-key", "v1")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        index
            .entry_find_prefix(RepositoryId(1), "refs/heads/main", "ÜNÏ", "v1")
            .await
            .unwrap()
            .is_some()
    );

    // Touch moves last use forward only and counts hits and bytes.
    index.entry_touch(a.id, 1000, true, 0).await.unwrap();
    index.entry_touch(a.id, 900, false, 42).await.unwrap();
    let a = index.entry_get(a.id).await.unwrap().unwrap();
    assert_eq!((a.last_used_at, a.hits, a.bytes_served), (1000, 1, 42));

    // Listing is least recently used first, optionally per repository.
    let list: Vec<CacheEntryId> =
        index.entry_list(Some(RepositoryId(1))).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(list.len(), 5);
    assert_eq!(list.last(), Some(&a.id));
    assert_eq!(index.entry_list(None).await.unwrap().len(), 6);

    // Stats per repository.
    index.lookup_record(RepositoryId(1), true).await.unwrap();
    index.lookup_record(RepositoryId(1), false).await.unwrap();
    index.lookup_record(RepositoryId(3), false).await.unwrap();
    let stats = index.repo_stats().await.unwrap();
    let repo1 = stats.iter().find(|s| s.repository_id == RepositoryId(1)).unwrap();
    assert_eq!(
        (repo1.entries, repo1.bytes, repo1.lookups, repo1.hits, repo1.bytes_served),
        (5, 50, 2, 1, 42)
    );
    let repo3 = stats.iter().find(|s| s.repository_id == RepositoryId(3)).unwrap();
    assert_eq!((repo3.entries, repo3.lookups), (0, 1));

    // Delete returns the entry once and frees the identity.
    assert_eq!(index.entry_delete(a.id).await.unwrap().map(|e| e.id), Some(a.id));
    assert_eq!(index.entry_delete(a.id).await.unwrap(), None);
    index.entry_reserve(&new(1, "refs/heads/main", "deps-linux-1", 2000)).await.unwrap();
}

#[tokio::test]
async fn in_memory_fake() {
    suite(Arc::new(MemIndex::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_postgres() {
    let Some(admin_url) =
        hangar_test_harness::require_env("TEST_POSTGRES_URL", "cache index on PostgreSQL")
    else {
        return;
    };
    let name = format!("hangar_cache_test_{:016x}", rand::random::<u64>());
    sqlx::any::install_default_drivers();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await.unwrap();
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = admin_url.rsplit_once('/').unwrap().0;
    let store = Store::open(&format!("{base}/{name}")).await.unwrap();
    suite(Arc::new(store)).await;
}
