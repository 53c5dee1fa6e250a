//! One suite, run against every backend: the local filesystem always, and a
//! real S3-compatible server when `cargo xtask test` started one
//! (`TEST_S3_ENDPOINT`, with the bucket in `TEST_S3_BUCKET`).

#![allow(clippy::cast_possible_truncation)] // test data sizes are small

use bytes::Bytes;
use futures::TryStreamExt;
use hangar_blobstore::{BlobError, BlobStore, Part};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
    data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect()
}

async fn read_all(
    store: &BlobStore,
    parts: &[Part],
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let stream = store.read(parts, range).unwrap();
    let pieces: Vec<Bytes> = stream.try_collect().await.unwrap();
    pieces.concat()
}

async fn suite(store: BlobStore, run: &str) {
    // A streamed put larger than one part comes back identical.
    let big = pattern(3 * 1024 * 1024 + 17, 1);
    let key = format!("{run}/e1/blob");
    let n = store
        .put_stream(&key, futures::stream::iter(chunks(&big, 100_000)), u64::MAX)
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    assert_eq!(store.size(&key).await.unwrap(), Some(n));
    let part = Part { key: key.clone(), size: n };
    assert_eq!(read_all(&store, std::slice::from_ref(&part), None).await, big);

    // Several parts read back as their concatenation, with ranges across them.
    let small = pattern(1000, 2);
    let key2 = format!("{run}/e1/tail");
    store.put_stream(&key2, futures::stream::iter(chunks(&small, 7)), u64::MAX).await.unwrap();
    let parts = vec![part, Part { key: key2, size: 1000 }];
    let whole = [big.clone(), small.clone()].concat();
    assert_eq!(read_all(&store, &parts, None).await, whole);
    let (a, b) = (big.len() as u64 - 10, big.len() as u64 + 20);
    assert_eq!(read_all(&store, &parts, Some(a..b)).await, whole[a as usize..b as usize]);
    assert!(matches!(
        store.read(&parts, Some(0..whole.len() as u64 + 1)),
        Err(BlobError::BadRange { .. })
    ));

    // A body that fails half-way leaves nothing behind.
    let failing = format!("{run}/e2/blob");
    let mut body = chunks(&big, 1024 * 1024);
    body.truncate(2);
    body.push(Err(std::io::Error::other("client went away")));
    let err = store.put_stream(&failing, futures::stream::iter(body), u64::MAX).await.unwrap_err();
    assert!(matches!(err, BlobError::Body { .. }), "{err:?}");
    assert_eq!(store.size(&failing).await.unwrap(), None);

    // So does one over the limit.
    let err = store
        .put_stream(&failing, futures::stream::iter(chunks(&big, 4096)), 10_000)
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::TooLarge { limit: 10_000 }), "{err:?}");
    assert_eq!(store.size(&failing).await.unwrap(), None);

    // An empty object is an object.
    let empty = format!("{run}/e3/blob");
    let n =
        store.put_stream(&empty, futures::stream::iter(chunks(&[], 1)), u64::MAX).await.unwrap();
    assert_eq!((n, store.size(&empty).await.unwrap()), (0, Some(0)));

    // An upload in progress is invisible, also where it replaces an object,
    // and one abandoned half-way (the request dropped) leaves nothing.
    let pending = format!("{run}/e4/blob");
    store.put_stream(&pending, futures::stream::iter(chunks(&small, 100)), u64::MAX).await.unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Ok::<_, std::io::Error>(Bytes::from(pattern(3 * 1024 * 1024, 3)))).unwrap();
    let mut put = Box::pin(store.put_stream(&pending, rx, u64::MAX));
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut put).await;
    assert!(waited.is_err(), "the body has not ended, so the put cannot have finished");
    assert_eq!(store.size(&pending).await.unwrap(), Some(1000));
    let listed = store.list(&format!("{run}/e4")).await.unwrap();
    assert_eq!(listed, vec![Part { key: pending.clone(), size: 1000 }]);
    drop(put);
    drop(tx);
    assert_eq!(read_all(&store, &listed, None).await, small);
    assert_eq!(store.delete_prefix(&format!("{run}/e4")).await.unwrap(), 1);

    // Listing and deleting by prefix.
    let listed = store.list(&format!("{run}/e1")).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.size).collect::<Vec<_>>(), vec![big.len() as u64, 1000]);
    assert_eq!(store.delete_prefix(&format!("{run}/e1")).await.unwrap(), 2);
    assert!(store.list(&format!("{run}/e1")).await.unwrap().is_empty());
    let err = read_all_err(&store, &parts).await;
    assert!(matches!(err, BlobError::NotFound { .. }), "{err:?}");

    // Keys are checked.
    for bad in ["", "/a", "a//b", "a/../b", "a b"] {
        assert!(matches!(store.size(bad).await, Err(BlobError::BadKey { .. })), "{bad:?}");
    }
}

async fn read_all_err(store: &BlobStore, parts: &[Part]) -> BlobError {
    let stream = store.read(parts, None).unwrap();
    stream.try_collect::<Vec<Bytes>>().await.unwrap_err()
}

#[tokio::test]
async fn local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("blobs").display());
    suite(BlobStore::open(&url).unwrap(), "run").await;
    // No staging file outlives its upload (failed, oversized or dropped).
    let mut left = Vec::new();
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                left.push(path);
            }
        }
    }
    let staging: Vec<_> = left.iter().filter(|p| p.to_string_lossy().contains('#')).collect();
    assert!(staging.is_empty(), "staging files left: {staging:?}");
}

#[tokio::test]
async fn s3_compatible_server() {
    let Some(_) = hangar_test_harness::require_env("TEST_S3_ENDPOINT", "blob store on S3") else {
        return;
    };
    let bucket =
        std::env::var("TEST_S3_BUCKET").expect("TEST_S3_BUCKET is set with TEST_S3_ENDPOINT");
    let run = format!("blobstore-{}", std::process::id());
    suite(BlobStore::open(&format!("s3://{bucket}/conformance")).unwrap(), &run).await;
}

#[test]
fn urls_are_checked() {
    for bad in ["file://relative", "http://x", "s3://", "/abs"] {
        assert!(matches!(BlobStore::open(bad), Err(BlobError::BadUrl { .. })), "{bad}");
    }
}

#[tokio::test]
async fn local_blobs_are_private_to_hangars_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    // An existing root with a loose mode is tightened too.
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = BlobStore::local(root.clone()).unwrap();
    let data = futures::stream::iter(chunks(b"secret build output", 4));
    store.put_stream("7/abc/block-00", data, u64::MAX).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("7")), 0o700);
    assert_eq!(mode(&root.join("7/abc")), 0o700);
    assert_eq!(mode(&root.join("7/abc/block-00")), 0o600);
    assert!(store.free_bytes().is_some_and(|n| n > 0));
}
