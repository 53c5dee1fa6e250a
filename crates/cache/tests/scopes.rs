//! Who may read and write what, decided by the job's runtime token: a
//! feature branch reads the default branch's entries but not the other way
//! round; repository A never sees B's entries; bad, expired, foreign-issuer
//! and missing tokens get 401; signed URLs cannot be reused for another entry.

mod support;

use support::{
    Client, FEATURE, Issuer, MAIN, Op, Proto, Server, make_payload, node_modules, tree_digest,
    unix_now, workspace,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_and_repositories_with_the_real_client() {
    let Some(modules) = node_modules("cache scopes with the real client") else { return };
    let client = Client::new(&modules, "cache6", Proto::V2);
    let issuer = Issuer::start().await;
    let server = Server::start(&issuer).await;
    let root = tempfile::tempdir().unwrap();
    let main_a = issuer.branch_token(1, MAIN);
    let feature_a = issuer.branch_token(1, FEATURE);
    let main_b = issuer.branch_token(2, MAIN);

    let ws_main = workspace(root.path(), "save-main");
    let main_digest = make_payload(&ws_main, 1000, 1);
    let ws_feature = workspace(root.path(), "save-feature");
    let feature_digest = make_payload(&ws_feature, 1000, 2);
    let saved = client
        .batch(
            &server,
            &[
                Op::save(&ws_main, "deps-main", &main_a),
                Op::save(&ws_feature, "deps-feature", &feature_a),
                // Same key as main's, but in the feature scope: allowed.
                Op::save(&ws_feature, "deps-main", &feature_a),
            ],
        )
        .await;
    for run in &saved {
        run.assert_no_warning();
        assert!(run.saved_id() > 0, "{run:?}");
    }

    let dirs: Vec<_> = (0..5).map(|i| workspace(root.path(), &format!("restore-{i}"))).collect();
    let restored = client
        .batch(
            &server,
            &[
                // The feature branch reads main's entry...
                Op::restore(&dirs[0], "deps-ma", &[], &feature_a),
                // ...but its own entry of the same key comes first.
                Op::restore(&dirs[1], "deps-main", &[], &feature_a),
                // Main does not read the feature branch's entries.
                Op::restore(&dirs[2], "deps-feature", &[], &main_a),
                // Repository B sees nothing of A's.
                Op::restore(&dirs[3], "deps-main", &["deps-"], &main_b),
                Op::restore(&dirs[4], "deps-main", &[], &main_a),
            ],
        )
        .await;
    for run in &restored {
        run.assert_no_warning();
    }
    let keys: Vec<Option<String>> = restored.iter().map(support::Run::restored_key).collect();
    assert_eq!(
        keys,
        [Some("deps-main".into()), Some("deps-main".into()), None, None, Some("deps-main".into())]
    );
    // deps-ma is a prefix of both deps-main entries; the feature scope is searched first.
    assert_eq!(tree_digest(&dirs[0]), feature_digest);
    assert_eq!(tree_digest(&dirs[1]), feature_digest);
    assert_eq!(tree_digest(&dirs[4]), main_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401() {
    let issuer = Issuer::start().await;
    let server = Server::start(&issuer).await;
    let http = reqwest::Client::new();
    let lookup = format!(
        "{}/twirp/github.actions.results.api.v1.CacheService/GetCacheEntryDownloadURL",
        server.url
    );
    let body = serde_json::json!({ "key": "k", "version": "v" });
    let now = unix_now();
    let scopes = [(MAIN, 3)];
    let cases = [
        ("expired", Some(issuer.token_with(1, &scopes, &issuer.url, now - 7200, now - 3600))),
        ("not yet valid", Some(issuer.token_with(1, &scopes, &issuer.url, now + 3600, now + 7200))),
        (
            "other issuer",
            Some(issuer.token_with(1, &scopes, "https://evil.example", now - 60, now + 3600)),
        ),
        ("garbage", Some("not.a.jwt".to_owned())),
        ("tampered", Some(format!("{}x", issuer.token(1, &scopes)))),
        ("missing", None),
    ];
    for (what, token) in cases {
        let mut req = http.post(&lookup).json(&body);
        if let Some(token) = &token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["code"], "unauthenticated", "{what}");
    }
    // v1 too.
    let v1 = format!("{}/_apis/artifactcache/cache?keys=k&version=v", server.url);
    assert_eq!(http.get(&v1).bearer_auth("nope").send().await.unwrap().status(), 401);
    // A good token works.
    let ok =
        http.post(&lookup).bearer_auth(issuer.token(1, &scopes)).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<serde_json::Value>().await.unwrap(), serde_json::json!({ "ok": false }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_bind_their_entry() {
    let issuer = Issuer::start().await;
    let server = Server::start(&issuer).await;
    let http = reqwest::Client::new();
    let twirp =
        |m: &str| format!("{}/twirp/github.actions.results.api.v1.CacheService/{m}", server.url);
    let token = issuer.token(1, &[(MAIN, 3)]);
    let create = |key: &'static str| {
        let (http, token, url) = (http.clone(), token.clone(), twirp("CreateCacheEntry"));
        async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"key": key, "version": "v"}))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = resp.json().await.unwrap();
            body["signed_upload_url"].as_str().unwrap().to_owned()
        }
    };
    let url_a = create("a").await;
    let url_b = create("b").await;
    // A's signature on B's path is refused, and nothing is stored.
    let sig_a = url_a.split_once('?').unwrap().1;
    let forged = format!("{}?{sig_a}", url_b.split_once('?').unwrap().0);
    let resp =
        http.put(&forged).header("x-ms-blob-type", "BlockBlob").body("evil").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // The real URL works, with exactly 201.
    let resp =
        http.put(&url_b).header("x-ms-blob-type", "BlockBlob").body("good").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().contains_key("x-ms-request-id"));
    // A wrong size does not finalize; the right one does.
    let fin = |size: &'static str| {
        let (http, token, url) = (http.clone(), token.clone(), twirp("FinalizeCacheEntryUpload"));
        async move {
            let body = serde_json::json!({"key": "b", "version": "v", "size_bytes": size});
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(fin("5").await["ok"], false);
    assert_eq!(fin("4").await, serde_json::json!({"ok": true, "entry_id": "2"}));
    // Another repository's token cannot finalize or read it.
    let other = issuer.token(2, &[(MAIN, 3)]);
    let resp = http
        .post(twirp("GetCacheEntryDownloadURL"))
        .bearer_auth(&other)
        .json(&serde_json::json!({"key": "b", "version": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"ok": false}));
    // The download URL serves ranges; a tampered one is refused.
    let resp = http
        .post(twirp("GetCacheEntryDownloadURL"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"key": "b", "version": "v"}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let dl = body["signed_download_url"].as_str().unwrap().to_owned();
    assert_eq!(http.get(&dl).send().await.unwrap().text().await.unwrap(), "good");
    let part = http.get(&dl).header("range", "bytes=1-2").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.text().await.unwrap(), "oo");
    let tampered = dl.replace("/download/2", "/download/1");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 401);
}
