//! Twirp calls with `application/protobuf` bodies, through the HTTP
//! endpoint: create, upload, finalize and look up an entry in protobuf, the
//! answers come back in protobuf, and the downloaded bytes are the uploaded
//! ones. The request bytes are also built by hand once, so the field numbers
//! are pinned independently of the message structs under test.

mod support;

use hangar_cache::twirp_pb::{
    CreateCacheEntryRequest, CreateCacheEntryResponse, FinalizeCacheEntryUploadRequest,
    FinalizeCacheEntryUploadResponse, GetCacheEntryDownloadUrlRequest,
    GetCacheEntryDownloadUrlResponse,
};
use prost::Message;
use support::{Issuer, MAIN, Server};

async fn call<Req: Message, Resp: Message + Default>(
    http: &reqwest::Client,
    server: &Server,
    method: &str,
    token: &str,
    req: &Req,
) -> Resp {
    let url = format!("{}/twirp/github.actions.results.api.v1.CacheService/{method}", server.url);
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{method}");
    assert_eq!(resp.headers()["content-type"], "application/protobuf", "{method}");
    Resp::decode(resp.bytes().await.unwrap()).unwrap()
}

#[test]
fn field_numbers_match_cache_proto() {
    // key = 2, version = 3 (length-delimited: tag byte = field << 3 | 2).
    let req = CreateCacheEntryRequest { key: "k".into(), version: "v".into() };
    assert_eq!(req.encode_to_vec(), [0x12, 1, b'k', 0x1a, 1, b'v']);
    // key = 2, size_bytes = 3 (varint), version = 4.
    let req =
        FinalizeCacheEntryUploadRequest { key: "k".into(), size_bytes: 5, version: "v".into() };
    assert_eq!(req.encode_to_vec(), [0x12, 1, b'k', 0x18, 5, 0x22, 1, b'v']);
    // key = 2, restore_keys = 3 (repeated), version = 4.
    let req = GetCacheEntryDownloadUrlRequest {
        key: "k".into(),
        restore_keys: vec!["a".into(), "b".into()],
        version: "v".into(),
    };
    assert_eq!(req.encode_to_vec(), [0x12, 1, b'k', 0x1a, 1, b'a', 0x1a, 1, b'b', 0x22, 1, b'v']);
    // A request with field 1 (metadata, never declared) still decodes.
    let with_metadata = [0x0a, 2, 0x08, 7, 0x12, 1, b'k', 0x1a, 1, b'v'];
    let req = CreateCacheEntryRequest::decode(&with_metadata[..]).unwrap();
    assert_eq!((req.key.as_str(), req.version.as_str()), ("k", "v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_round_trip_through_http() {
    let issuer = Issuer::start().await;
    let server = Server::start(&issuer).await;
    let http = reqwest::Client::new();
    let token = issuer.token(1, &[(MAIN, 3)]);

    let miss: GetCacheEntryDownloadUrlResponse = call(
        &http,
        &server,
        "GetCacheEntryDownloadURL",
        &token,
        &GetCacheEntryDownloadUrlRequest {
            key: "pb-key".into(),
            restore_keys: vec![],
            version: "v1".into(),
        },
    )
    .await;
    assert!(!miss.ok);

    let created: CreateCacheEntryResponse = call(
        &http,
        &server,
        "CreateCacheEntry",
        &token,
        &CreateCacheEntryRequest { key: "pb-key".into(), version: "v1".into() },
    )
    .await;
    assert!(created.ok);
    let payload = b"protobuf bodies work".to_vec();
    let resp = http
        .put(&created.signed_upload_url)
        .header("x-ms-blob-type", "BlockBlob")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A wrong size is refused with ok = false and a message, in protobuf.
    let wrong: FinalizeCacheEntryUploadResponse = call(
        &http,
        &server,
        "FinalizeCacheEntryUpload",
        &token,
        &FinalizeCacheEntryUploadRequest {
            key: "pb-key".into(),
            size_bytes: 999,
            version: "v1".into(),
        },
    )
    .await;
    assert!(!wrong.ok);
    assert!(!wrong.message.is_empty());
    let done: FinalizeCacheEntryUploadResponse = call(
        &http,
        &server,
        "FinalizeCacheEntryUpload",
        &token,
        &FinalizeCacheEntryUploadRequest {
            key: "pb-key".into(),
            size_bytes: i64::try_from(payload.len()).unwrap(),
            version: "v1".into(),
        },
    )
    .await;
    assert!(done.ok);
    assert!(done.entry_id > 0);

    // Found by prefix through a restore key; the bytes are the uploaded ones.
    let hit: GetCacheEntryDownloadUrlResponse = call(
        &http,
        &server,
        "GetCacheEntryDownloadURL",
        &token,
        &GetCacheEntryDownloadUrlRequest {
            key: "other".into(),
            restore_keys: vec!["pb-".into()],
            version: "v1".into(),
        },
    )
    .await;
    assert!(hit.ok);
    assert_eq!(hit.matched_key, "pb-key");
    let got = http.get(&hit.signed_download_url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), payload);

    // A body that is not protobuf is a 400 Twirp error (always JSON).
    let url =
        format!("{}/twirp/github.actions.results.api.v1.CacheService/CreateCacheEntry", server.url);
    let resp = http
        .post(url)
        .bearer_auth(&token)
        .header("content-type", "application/protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "invalid_argument");
}
