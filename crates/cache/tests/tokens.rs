//! Hostile tokens: `alg: none`, HS256 "signed" with the issuer's public key,
//! unknown key ids, a wrong audience and tokens of repositories outside the
//! allow-list are all refused; a storm of unknown key ids costs the issuer
//! one JWKS fetch and never holds up a token with a known key.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hangar_cache::clock::SystemClock;
use hangar_cache::index::MemIndex;
use hangar_cache::token::{AllowList, Policy, TokenError, TokenVerifier};
use support::{Issuer, KID, OWNER, Server, claims, public_pem, sign};

const LOOKUP: &str = "/twirp/github.actions.results.api.v1.CacheService/GetCacheEntryDownloadURL";

async fn lookup_status(server: &Server, token: &str) -> u16 {
    let resp = reqwest::Client::new()
        .post(format!("{}{LOOKUP}", server.url))
        .bearer_auth(token)
        .json(&serde_json::json!({ "key": "k", "version": "v" }))
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

fn unsigned(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let part = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", part(header), part(claims))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_tokens_are_refused() {
    let issuer = Issuer::start().await;
    let config = hangar_cache::CacheConfig {
        token_audience: Some("hangar-cache".into()),
        allowed_repository_ids: vec![99],
        ..Server::config(&issuer.url, &issuer.jwks_url)
    };
    let server =
        Server::start_config(config, Arc::new(MemIndex::default()), Arc::new(SystemClock)).await;
    let good = |repo: i64, owner: &str| {
        let mut c = claims(&issuer.url, repo, owner);
        c["aud"] = "hangar-cache".into();
        c
    };
    assert_eq!(lookup_status(&server, &sign(Some(KID), &good(1, OWNER))).await, 200);
    // Listed by id: any owner (or none).
    assert_eq!(lookup_status(&server, &sign(Some(KID), &good(99, "someone"))).await, 200);

    let hs256_with_public_key = jsonwebtoken::encode(
        &jsonwebtoken::Header { kid: Some(KID.into()), ..jsonwebtoken::Header::default() },
        &good(1, OWNER),
        &jsonwebtoken::EncodingKey::from_secret(public_pem().as_bytes()),
    )
    .unwrap();
    let mut wrong_aud = good(1, OWNER);
    wrong_aud["aud"] = "https://github.com/someone-else".into();
    let mut no_aud = good(1, OWNER);
    no_aud.as_object_mut().unwrap().remove("aud");
    let cases = [
        ("alg none", unsigned(&serde_json::json!({"alg": "none", "kid": KID}), &good(1, OWNER))),
        ("alg None", unsigned(&serde_json::json!({"alg": "None"}), &good(1, OWNER))),
        ("HS256 with the public key", hs256_with_public_key),
        ("unknown kid", sign(Some("not-a-key"), &good(1, OWNER))),
        ("wrong audience", sign(Some(KID), &wrong_aud)),
        ("no audience", sign(Some(KID), &no_aud)),
    ];
    for (what, token) in cases {
        assert_eq!(lookup_status(&server, &token).await, 401, "{what}");
    }
    // Verified, but not ours: a repository of another owner, or no owner claim.
    let mut no_owner = good(2, OWNER);
    no_owner.as_object_mut().unwrap().remove("repository_owner");
    for (what, claims) in [("other owner", good(2, "evil-org")), ("no owner", no_owner)] {
        let token = sign(Some(KID), &claims);
        assert_eq!(lookup_status(&server, &token).await, 403, "{what}");
        let create = reqwest::Client::new()
            .post(format!(
                "{}/twirp/github.actions.results.api.v1.CacheService/CreateCacheEntry",
                server.url
            ))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "key": "k", "version": "v" }))
            .send()
            .await
            .unwrap();
        assert_eq!(create.status(), 403, "{what}: create");
        let v1 = format!("{}/_apis/artifactcache/cache?keys=k&version=v", server.url);
        let v1 = reqwest::Client::new().get(v1).bearer_auth(&token).send().await.unwrap();
        assert_eq!(v1.status(), 403, "{what}: v1");
    }
}

/// A JWKS endpoint that counts requests; the first is answered, the rest
/// hang until [`SlowJwks::release`].
struct SlowJwks {
    url: String,
    hits: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl SlowJwks {
    fn release(&self) {
        self.gate.send_replace(true);
    }
}

async fn slow_jwks() -> SlowJwks {
    let hits = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::watch::channel(false).0);
    let (h, g) = (hits.clone(), gate.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (h, mut open) = (h.clone(), g.subscribe());
            async move {
                if h.fetch_add(1, Ordering::SeqCst) > 0 {
                    let _ = open.wait_for(|open| *open).await;
                }
                axum::Json(support::jwks())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    SlowJwks { url: format!("http://{addr}/jwks"), hits, gate }
}

fn storm(verifier: &TokenVerifier, iss: &str, n: usize) -> Vec<tokio::task::JoinHandle<bool>> {
    (0..n)
        .map(|i| {
            let token =
                sign(Some(&format!("random-kid-{i}-{}", rand_suffix())), &claims(iss, 1, OWNER));
            let verifier = verifier.clone();
            tokio::spawn(async move {
                matches!(
                    verifier.verify(&token).await,
                    Err(TokenError::UnknownKey { .. } | TokenError::Jwks { .. })
                )
            })
        })
        .collect()
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_storm_shares_one_fetch_and_stalls_no_one() {
    let jwks = slow_jwks().await;
    let iss = "https://issuer.test";
    let verifier = TokenVerifier::new(Policy {
        issuer: iss.into(),
        jwks_url: jwks.url.clone(),
        allow: AllowList::new(&[OWNER.into()], &[]),
        refresh_min: std::time::Duration::from_secs(3),
        ..Policy::default()
    });
    let good = sign(Some(KID), &claims(iss, 1, OWNER));
    verifier.verify(&good).await.expect("the first fetch is answered");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1);
    // Past the refetch interval, so the storm does start a fetch (which hangs).
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;

    let tasks = storm(&verifier, iss, 500);
    // Let the storm start its fetch, which now hangs until released.
    while jwks.hits.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    // A known key answers while that fetch is still hanging (the old code
    // held the key lock across the fetch: this waited for the release).
    let during = tokio::time::timeout(std::time::Duration::from_secs(20), verifier.verify(&good))
        .await
        .expect("a token with a known key does not wait for the hanging fetch");
    during.expect("still valid");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2, "the storm shares one fetch");
    jwks.release();
    for task in tasks {
        assert!(task.await.unwrap(), "every random kid is refused");
    }
    assert!(jwks.hits.load(Ordering::SeqCst) <= 3, "hits: {}", jwks.hits.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let jwks = slow_jwks().await;
    jwks.release();
    let iss = "https://issuer.test";
    let verifier = TokenVerifier::new(Policy {
        issuer: iss.into(),
        jwks_url: jwks.url.clone(),
        allow: AllowList::new(&[OWNER.into()], &[]),
        ..Policy::default()
    });
    let good = sign(Some(KID), &claims(iss, 1, OWNER));
    verifier.verify(&good).await.expect("valid");
    for task in storm(&verifier, iss, 500) {
        assert!(task.await.unwrap(), "every random kid is refused");
    }
    // All within the 30 s interval after the first fetch: no refetch at all.
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1);
    verifier.verify(&good).await.expect("still valid");
}
