//! The same save/restore through the real client with the blobs on a real
//! S3-compatible server (moto, started by `cargo xtask test`): Put Blob,
//! Put Block (each block its own streamed multipart upload) and v1 chunks.

mod support;

use std::sync::Arc;

use hangar_cache::clock::SystemClock;
use hangar_cache::index::MemIndex;
use support::{
    Client, Issuer, MAIN, Op, Proto, Server, make_payload, node_modules, tree_digest, workspace,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_with_blobs_on_s3() {
    let Some(_) = hangar_test_harness::require_env("TEST_S3_ENDPOINT", "cache on S3") else {
        return;
    };
    let Some(modules) = node_modules("cache on S3 with the real client") else { return };
    let bucket =
        std::env::var("TEST_S3_BUCKET").expect("TEST_S3_BUCKET is set with TEST_S3_ENDPOINT");
    let issuer = Issuer::start().await;
    let storage = format!("s3://{bucket}/cache-{}-{:x}", std::process::id(), rand::random::<u32>());
    let server = Server::start_with(
        &issuer,
        Arc::new(MemIndex::default()),
        Some(storage),
        Arc::new(SystemClock),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let token = issuer.branch_token(1, MAIN);

    for (proto, sizes) in [(Proto::V2, &[5 << 20, 140 << 20][..]), (Proto::V1, &[40 << 20][..])] {
        let client = Client::new(&modules, "cache6", proto);
        let mut saves = Vec::new();
        let mut digests = Vec::new();
        for size in sizes {
            let ws = workspace(root.path(), &format!("save-{proto:?}-{size}"));
            digests.push(make_payload(&ws, *size, *size as u64));
            saves.push(Op::save(&ws, &format!("s3-{proto:?}-{size}"), &token));
        }
        for run in client.batch(&server, &saves).await {
            run.assert_no_warning();
            assert!(run.saved_id() > 0, "{run:?}");
        }
        let mut restores = Vec::new();
        let mut dirs = Vec::new();
        for size in sizes {
            let ws = workspace(root.path(), &format!("restore-{proto:?}-{size}"));
            restores.push(Op::restore(&ws, &format!("s3-{proto:?}-{size}"), &[], &token));
            dirs.push(ws);
        }
        for (i, run) in client.batch(&server, &restores).await.iter().enumerate() {
            run.assert_no_warning();
            assert_eq!(run.restored_key(), Some(format!("s3-{proto:?}-{}", sizes[i])));
            assert_eq!(tree_digest(&dirs[i]), digests[i]);
        }
        let _ = std::fs::remove_dir_all(root.path().join(format!("save-{proto:?}-{}", 140 << 20)));
    }
}
