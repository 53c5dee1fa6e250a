//! The real `@actions/cache` clients (6.3.0 and 5.0.5, as bundled by
//! `actions/cache@v5`) against a running server, under protocol v2 and v1:
//! 1 B, 5 MiB and 140 MiB (v2: Put Block ×3 + Put Block List; v1: five
//! 32 MiB PATCH chunks) round trips, restore by prefix and by restore keys
//! (newest first), a miss, a duplicate save, byte-identical trees and no
//! `::warning::` from the client.

mod support;

use support::{
    Client, Issuer, MAIN, Op, Proto, Server, make_payload, node_modules, tree_digest, workspace,
};

const MIB: usize = 1024 * 1024;

async fn round_trips(package: &'static str, proto: Proto) {
    let Some(modules) = node_modules("real @actions/cache client") else { return };
    let client = Client::new(&modules, package, proto);
    let issuer = Issuer::start().await;
    let server = Server::start(&issuer).await;
    let root = tempfile::tempdir().unwrap();
    let token = issuer.branch_token(1, MAIN);
    let tag = format!("{package}-{proto:?}");
    let key = |name: &str| format!("{tag}-{name}");

    // Saves, in one client process: three sizes, two entries sharing a
    // prefix (the second is newer), then the first key again.
    let sizes = [
        ("tiny-1", 1),
        ("mid-1", 5 * MIB),
        ("big-1", 140 * MIB),
        ("pfx-old", 100),
        ("pfx-new", 100),
    ];
    let mut digests = Vec::new();
    let mut saves = Vec::new();
    for (n, (name, size)) in sizes.iter().enumerate() {
        let ws = workspace(root.path(), &format!("save-{name}"));
        digests.push(make_payload(&ws, *size, n as u64));
        saves.push(Op::save(&ws, &key(name), &token));
    }
    let ws = workspace(root.path(), "save-dup");
    make_payload(&ws, 10, 99);
    saves.push(Op::save(&ws, &key("tiny-1"), &token));
    let saved = client.batch(&server, &saves).await;
    for (run, (name, _)) in saved.iter().zip(&sizes) {
        run.assert_no_warning();
        assert!(run.saved_id() > 0, "{name}: {run:?}");
    }
    let dup = &saved[sizes.len()];
    dup.assert_no_warning();
    assert_eq!(dup.saved_id(), -1, "a second save of the same key is refused: {dup:?}");
    std::fs::remove_dir_all(root.path().join("save-big-1")).unwrap();

    // Restores: each size exactly, the primary key as a prefix, restore keys
    // in order (newest prefix match wins), and a miss.
    let mut restores = Vec::new();
    let mut dirs = Vec::new();
    for (name, _) in &sizes[..3] {
        let ws = workspace(root.path(), &format!("restore-{name}"));
        restores.push(Op::restore(&ws, &key(name), &[], &token));
        dirs.push(ws);
    }
    let prefix_ws = workspace(root.path(), "restore-prefix");
    restores.push(Op::restore(&prefix_ws, &key("mid"), &[], &token));
    let rk_ws = workspace(root.path(), "restore-keys");
    let (rk1, rk2) = (key("nope"), key("pfx-"));
    restores.push(Op::restore(&rk_ws, &key("absent"), &[&rk1, &rk2], &token));
    let miss_ws = workspace(root.path(), "restore-miss");
    restores.push(Op::restore(&miss_ws, &key("never-saved"), &["zzz"], &token));
    let restored = client.batch(&server, &restores).await;
    for run in &restored {
        run.assert_no_warning();
    }
    for (i, ((name, _), ws)) in sizes.iter().zip(&dirs).enumerate() {
        assert_eq!(restored[i].restored_key(), Some(key(name)));
        assert_eq!(tree_digest(ws), digests[i], "{name}: the restored tree differs");
    }
    assert_eq!(restored[3].restored_key(), Some(key("mid-1")));
    assert_eq!(tree_digest(&prefix_ws), digests[1]);
    assert_eq!(restored[4].restored_key(), Some(key("pfx-new")));
    assert_eq!(tree_digest(&rk_ws), digests[4]);
    assert_eq!(restored[5].restored_key(), None);
    assert!(!miss_ws.join("payload").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_6_protocol_v2() {
    round_trips("cache6", Proto::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_6_protocol_v1() {
    round_trips("cache6", Proto::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_5_protocol_v2() {
    round_trips("cache5", Proto::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_5_protocol_v1() {
    round_trips("cache5", Proto::V1).await;
}
