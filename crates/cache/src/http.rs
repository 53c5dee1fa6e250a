//! The wire: requests of both protocols → [`Endpoint`] → a call into
//! [`CacheService`] → the protocol's response format.
//!
//! Paths (all at the origin root, as the clients expect; v1 also under one
//! path segment, since `ACTIONS_CACHE_URL` keeps its path):
//!
//! | endpoint | request |
//! |---|---|
//! | v2 lookup / create / finalize | `POST /twirp/github.actions.results.api.v1.CacheService/<Method>` (JSON, or protobuf by `Content-Type`) |
//! | Put Blob / Put Block / Put Block List | `PUT /_hangar/blob/<id>?se&sig[&comp=block&blockid=..|&comp=blocklist]` → 201 |
//! | download (both) | `GET`/`HEAD /_hangar/download/<id>?se&sig` (Range supported) |
//! | v1 | `[/<prefix>]/_apis/artifactcache/{cache,caches,caches/<id>}` |
//!
//! Errors: Twirp JSON `{code,msg}` for v2 calls, `{message}` for v1, Azure
//! XML for blob calls. Bodies stream straight between the socket and the blob
//! store.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use futures::TryStreamExt;
use hangar_types::{CacheEntryId, ErrorChain};
use serde::{Deserialize, Serialize};

use crate::service::{CacheError, CacheService};
use crate::sign::UrlOp;
use crate::twirp_pb as pb;

const TWIRP_PREFIX: &str = "/twirp/github.actions.results.api.v1.CacheService/";

/// Every operation the server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    V2Lookup,
    V2Create,
    V2Finalize,
    PutBlob { id: CacheEntryId },
    PutBlock { id: CacheEntryId, block_id: String },
    PutBlockList { id: CacheEntryId },
    Download { id: CacheEntryId },
    V1Lookup,
    V1List,
    V1Reserve,
    V1Upload { id: CacheEntryId },
    V1Commit { id: CacheEntryId },
}

impl Endpoint {
    /// The Twirp method named in the path.
    pub fn twirp(method: &str) -> Option<Endpoint> {
        match method {
            "GetCacheEntryDownloadURL" => Some(Endpoint::V2Lookup),
            "CreateCacheEntry" => Some(Endpoint::V2Create),
            "FinalizeCacheEntryUpload" => Some(Endpoint::V2Finalize),
            _ => None,
        }
    }

    /// The Azure blob operation named by the query.
    pub fn blob(
        id: CacheEntryId,
        comp: Option<&str>,
        block_id: Option<String>,
    ) -> Option<Endpoint> {
        match (comp, block_id) {
            (None, _) => Some(Endpoint::PutBlob { id }),
            (Some("block"), Some(block_id)) => Some(Endpoint::PutBlock { id, block_id }),
            (Some("blocklist"), _) => Some(Endpoint::PutBlockList { id }),
            _ => None,
        }
    }
}

/// The cache's router, to be merged into the server's at the root.
pub fn router(service: CacheService) -> Router {
    Router::new()
        .route(&format!("{TWIRP_PREFIX}{{method}}"), post(twirp))
        .route("/_hangar/blob/{id}", put(blob_put))
        .route("/_hangar/download/{id}", get(download))
        .route("/_apis/artifactcache/cache", get(v1_lookup))
        .route("/{prefix}/_apis/artifactcache/cache", get(v1_lookup_p))
        .route("/_apis/artifactcache/caches", get(v1_list).post(v1_reserve))
        .route("/{prefix}/_apis/artifactcache/caches", get(v1_list_p).post(v1_reserve_p))
        .route("/_apis/artifactcache/caches/{id}", any(v1_entry))
        .route("/{prefix}/_apis/artifactcache/caches/{id}", any(v1_entry_p))
        .with_state(service)
}

// ---------- errors ----------

/// Which wire format an error takes.
#[derive(Debug, Clone, Copy)]
enum Proto {
    Twirp,
    Blob,
    V1,
}

struct ApiError(Proto, CacheError);

impl ApiError {
    fn status(&self) -> (StatusCode, &'static str) {
        match &self.1 {
            CacheError::WriteDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            CacheError::Invalid(_) | CacheError::Incomplete(_) | CacheError::InvalidBlockList => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            CacheError::TooLarge { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
            CacheError::Unauthorized(crate::token::TokenError::NotAllowed { .. }) => {
                (StatusCode::FORBIDDEN, "permission_denied")
            }
            CacheError::QuotaExceeded { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "resource_exhausted")
            }
            CacheError::LowSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "resource_exhausted"),
            CacheError::Unauthorized(_) | CacheError::BadSignature => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            CacheError::Conflict => (StatusCode::CONFLICT, "already_exists"),
            CacheError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            CacheError::Body(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            CacheError::Index(_) | CacheError::Blob(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let msg = match &self.1 {
            CacheError::Unauthorized(e) => format!("unauthorized: {e}"),
            e => e.to_string(),
        };
        if status.is_server_error() {
            tracing::error!(error = %ErrorChain(&self.1), "cache: request failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %ErrorChain(&self.1), "cache: request refused");
        }
        match self.0 {
            Proto::Twirp => (status, axum::Json(serde_json::json!({ "code": code, "msg": msg })))
                .into_response(),
            Proto::V1 => {
                (status, axum::Json(serde_json::json!({ "message": msg }))).into_response()
            }
            Proto::Blob => {
                let azure = match &self.1 {
                    CacheError::InvalidBlockList => "InvalidBlockList",
                    CacheError::BadSignature => "AuthenticationFailed",
                    CacheError::NotFound => "BlobNotFound",
                    _ => "InvalidInput",
                };
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{azure}</Code><Message>{}</Message></Error>",
                    xml_escape(&msg)
                );
                (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
            }
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok())
}

// ---------- v2: Twirp ----------

#[derive(Debug, Deserialize)]
struct LookupRequest {
    key: String,
    #[serde(default, alias = "restoreKeys")]
    restore_keys: Option<Vec<String>>,
    version: String,
}

#[derive(Debug, Deserialize)]
struct CreateRequest {
    key: String,
    version: String,
}

#[derive(Debug, Deserialize)]
struct FinalizeRequest {
    key: String,
    #[serde(alias = "sizeBytes")]
    size_bytes: IntOrString,
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u64),
    Str(String),
}

impl IntOrString {
    fn value(&self) -> Option<u64> {
        match self {
            IntOrString::Int(n) => Some(*n),
            IntOrString::Str(s) => s.parse().ok(),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CacheError> {
    serde_json::from_slice(body).map_err(|e| CacheError::Invalid(format!("bad JSON body: {e}")))
}

/// How a Twirp call's body is encoded; the answer uses the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TwirpFormat {
    Json,
    Protobuf,
}

impl TwirpFormat {
    fn of(headers: &HeaderMap) -> TwirpFormat {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/protobuf") {
            TwirpFormat::Protobuf
        } else {
            TwirpFormat::Json
        }
    }
}

fn parse_pb<T: prost::Message + Default>(body: &[u8]) -> Result<T, CacheError> {
    T::decode(body).map_err(|e| CacheError::Invalid(format!("bad protobuf body: {e}")))
}

/// A Twirp call's answer, rendered in the request's format.
enum TwirpReply {
    Lookup(pb::GetCacheEntryDownloadUrlResponse),
    Create(pb::CreateCacheEntryResponse),
    Finalize(pb::FinalizeCacheEntryUploadResponse),
}

impl TwirpReply {
    fn render(self, format: TwirpFormat) -> Response {
        use prost::Message;
        if format == TwirpFormat::Protobuf {
            let bytes = match &self {
                TwirpReply::Lookup(m) => m.encode_to_vec(),
                TwirpReply::Create(m) => m.encode_to_vec(),
                TwirpReply::Finalize(m) => m.encode_to_vec(),
            };
            return ([(header::CONTENT_TYPE, "application/protobuf")], bytes).into_response();
        }
        // protobuf-JSON as the client's generated code reads it: defaults
        // omitted, int64 as a string.
        let json = match self {
            TwirpReply::Lookup(m) if m.ok => serde_json::json!({
                "ok": true,
                "signed_download_url": m.signed_download_url,
                "matched_key": m.matched_key,
            }),
            TwirpReply::Lookup(_) => serde_json::json!({ "ok": false }),
            TwirpReply::Create(m) => {
                serde_json::json!({ "ok": m.ok, "signed_upload_url": m.signed_upload_url })
            }
            TwirpReply::Finalize(m) if m.ok => {
                serde_json::json!({ "ok": true, "entry_id": m.entry_id.to_string() })
            }
            TwirpReply::Finalize(m) => serde_json::json!({ "ok": false, "message": m.message }),
        };
        axum::Json(json).into_response()
    }
}

async fn twirp(
    State(svc): State<CacheService>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(endpoint) = Endpoint::twirp(&method) else {
        let e = CacheError::NotFound;
        return ApiError(Proto::Twirp, e).into_response();
    };
    let format = TwirpFormat::of(&headers);
    match twirp_call(&svc, &endpoint, &headers, format, &body).await {
        Ok(reply) => reply.render(format),
        Err(e) => ApiError(Proto::Twirp, e).into_response(),
    }
}

async fn twirp_call(
    svc: &CacheService,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    format: TwirpFormat,
    body: &[u8],
) -> Result<TwirpReply, CacheError> {
    let who = svc.identify(authorization(headers)).await?;
    let pb = format == TwirpFormat::Protobuf;
    match endpoint {
        Endpoint::V2Lookup => {
            let req = if pb {
                let m: pb::GetCacheEntryDownloadUrlRequest = parse_pb(body)?;
                LookupRequest { key: m.key, restore_keys: Some(m.restore_keys), version: m.version }
            } else {
                parse_json::<LookupRequest>(body)?
            };
            let mut keys = vec![req.key];
            keys.extend(req.restore_keys.unwrap_or_default());
            let reply = match svc.lookup(&who, &keys, &req.version).await? {
                Some(e) => pb::GetCacheEntryDownloadUrlResponse {
                    ok: true,
                    signed_download_url: svc.download_url(host(headers), e.id),
                    matched_key: e.key,
                },
                None => pb::GetCacheEntryDownloadUrlResponse::default(),
            };
            Ok(TwirpReply::Lookup(reply))
        }
        Endpoint::V2Create => {
            let req = if pb {
                let m: pb::CreateCacheEntryRequest = parse_pb(body)?;
                CreateRequest { key: m.key, version: m.version }
            } else {
                parse_json::<CreateRequest>(body)?
            };
            let entry = svc.reserve(&who, &req.key, &req.version, None).await?;
            Ok(TwirpReply::Create(pb::CreateCacheEntryResponse {
                ok: true,
                signed_upload_url: svc.upload_url(host(headers), entry.id),
                message: String::new(),
            }))
        }
        Endpoint::V2Finalize => {
            let (key, version, size) = if pb {
                let m: pb::FinalizeCacheEntryUploadRequest = parse_pb(body)?;
                (m.key, m.version, u64::try_from(m.size_bytes).ok())
            } else {
                let req: FinalizeRequest = parse_json(body)?;
                let size = req.size_bytes.value();
                (req.key, req.version, size)
            };
            let size =
                size.ok_or_else(|| CacheError::Invalid("size_bytes is not a number".into()))?;
            let reply = match svc.finalize_v2(&who, &key, &version, size).await {
                Ok(entry) => pb::FinalizeCacheEntryUploadResponse {
                    ok: true,
                    entry_id: entry.id.0,
                    message: String::new(),
                },
                Err(CacheError::Incomplete(message)) => {
                    pb::FinalizeCacheEntryUploadResponse { ok: false, entry_id: 0, message }
                }
                Err(e) => return Err(e),
            };
            Ok(TwirpReply::Finalize(reply))
        }
        _ => Err(CacheError::NotFound),
    }
}

// ---------- v2: Azure-style blob upload ----------

#[derive(Debug, Deserialize)]
struct SignedQuery {
    se: Option<String>,
    sig: Option<String>,
    comp: Option<String>,
    blockid: Option<String>,
}

fn blob_created() -> Response {
    let request_id = hex::encode(rand::random::<[u8; 16]>());
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert("x-ms-request-id", HeaderValue::from_str(&request_id).expect("hex is a valid header"));
    h.insert("x-ms-version", HeaderValue::from_static("2025-01-05"));
    h.insert("x-ms-request-server-encrypted", HeaderValue::from_static("false"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

async fn blob_put(
    State(svc): State<CacheService>,
    Path(id): Path<CacheEntryId>,
    Query(q): Query<SignedQuery>,
    request: Request,
) -> Response {
    match blob_call(&svc, id, q, request).await {
        Ok(()) => blob_created(),
        Err(e) => ApiError(Proto::Blob, e).into_response(),
    }
}

async fn blob_call(
    svc: &CacheService,
    id: CacheEntryId,
    q: SignedQuery,
    request: Request,
) -> Result<(), CacheError> {
    let entry = svc.signed_entry(UrlOp::Upload, id, q.se.as_deref(), q.sig.as_deref()).await?;
    let endpoint = Endpoint::blob(id, q.comp.as_deref(), q.blockid)
        .ok_or_else(|| CacheError::Invalid("unsupported comp".into()))?;
    let body = request.into_body().into_data_stream();
    match endpoint {
        Endpoint::PutBlob { .. } => svc.put_blob(&entry, body).await,
        Endpoint::PutBlock { block_id, .. } => svc.put_block(&entry, &block_id, body).await,
        Endpoint::PutBlockList { .. } => {
            let xml = axum::body::to_bytes(Body::from_stream(body), 4 * 1024 * 1024)
                .await
                .map_err(|e| CacheError::Invalid(format!("block list body: {e}")))?;
            let xml = std::str::from_utf8(&xml)
                .map_err(|_| CacheError::Invalid("block list is not UTF-8".into()))?;
            svc.put_block_list(&entry, &block_list_ids(xml)?).await
        }
        _ => Err(CacheError::NotFound),
    }
}

/// The block ids of a Put Block List body, in order (`Latest`, `Committed`
/// and `Uncommitted` all name blocks uploaded to this blob).
pub fn block_list_ids(xml: &str) -> Result<Vec<String>, CacheError> {
    let start =
        xml.find("<BlockList>").ok_or_else(|| CacheError::Invalid("no <BlockList>".into()))?;
    let mut rest = &xml[start + "<BlockList>".len()..];
    let mut ids = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.starts_with("</BlockList>") {
            return Ok(ids);
        }
        // Slices below are only taken at ASCII positions found by `find`, after
        // the opening `<` is known to be there, so no input can panic here.
        let tag = rest
            .strip_prefix('<')
            .and_then(|after| after.split_once('>'))
            .map(|(tag, _)| tag)
            .ok_or_else(|| CacheError::Invalid("bad block list".into()))?;
        if !["Latest", "Committed", "Uncommitted"].contains(&tag) {
            return Err(CacheError::Invalid(format!("unexpected element in block list: {tag:?}")));
        }
        let body = &rest[tag.len() + 2..];
        let close = format!("</{tag}>");
        let value_end =
            body.find(&close).ok_or_else(|| CacheError::Invalid("bad block list".into()))?;
        ids.push(body[..value_end].trim().to_owned());
        rest = &body[value_end + close.len()..];
    }
}

// ---------- downloads ----------

/// Parses `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` against `size`.
pub fn parse_range(value: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            size.saturating_sub(n)..size
        }
        (a, "") => a.parse().ok()?..size,
        (a, b) => a.parse().ok()?..b.parse::<u64>().ok()?.saturating_add(1).min(size),
    };
    (range.start < range.end && range.end <= size).then_some(range)
}

async fn download(
    State(svc): State<CacheService>,
    Path(id): Path<CacheEntryId>,
    Query(q): Query<SignedQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let entry = match svc.signed_entry(UrlOp::Download, id, q.se.as_deref(), q.sig.as_deref()).await
    {
        Ok(e) => e,
        Err(e) => return ApiError(Proto::Blob, e).into_response(),
    };
    let size = entry.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(v) => match parse_range(v, size) {
            Some(r) => Some(r),
            None => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return r;
            }
        },
    };
    let partial = range.is_some();
    let dl = match svc.open(entry, range) {
        Ok(dl) => dl,
        Err(e) => return ApiError(Proto::Blob, e).into_response(),
    };
    let len = dl.range.end - dl.range.start;
    let mut builder = Response::builder()
        .status(if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-request-id", hex::encode(rand::random::<[u8; 16]>()));
    if partial {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", dl.range.start, dl.range.end - 1),
        );
    }
    if method == Method::HEAD {
        return builder.body(Body::empty()).expect("valid response");
    }
    if let Err(e) = svc.served(&dl.entry, len).await {
        return ApiError(Proto::Blob, e).into_response();
    }
    let body = dl.body.map_err(|e| {
        tracing::warn!(error = %ErrorChain(&e), "cache: download stream failed");
        std::io::Error::other(e)
    });
    builder.body(Body::from_stream(body)).expect("valid response")
}

// ---------- v1 ----------

#[derive(Debug, Deserialize)]
struct V1LookupQuery {
    keys: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct V1Entry {
    cache_key: String,
    scope: String,
    cache_version: String,
    creation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_location: Option<String>,
}

fn iso8601(ms: i64) -> String {
    // Days-from-civil inverse (Howard Hinnant), enough for a display field.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

async fn v1_lookup_p(
    svc: State<CacheService>,
    _p: Path<String>,
    q: Query<V1LookupQuery>,
    h: HeaderMap,
) -> Response {
    v1_lookup(svc, q, h).await
}

async fn v1_lookup(
    State(svc): State<CacheService>,
    Query(q): Query<V1LookupQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let who = svc.identify(authorization(&headers)).await?;
        let keys: Vec<String> = q.keys.unwrap_or_default().split(',').map(str::to_owned).collect();
        let entry = svc.lookup(&who, &keys, q.version.as_deref().unwrap_or_default()).await?;
        Ok::<_, CacheError>(entry.map(|e| V1Entry {
            archive_location: Some(svc.download_url(host(&headers), e.id)),
            cache_key: e.key,
            scope: e.scope,
            cache_version: e.version,
            creation_time: iso8601(e.committed_at.unwrap_or(e.created_at)),
        }))
    }
    .await;
    match result {
        Ok(Some(entry)) => axum::Json(entry).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError(Proto::V1, e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct V1ListQuery {
    key: Option<String>,
}

async fn v1_list_p(
    svc: State<CacheService>,
    _p: Path<String>,
    q: Query<V1ListQuery>,
    h: HeaderMap,
) -> Response {
    v1_list(svc, q, h).await
}

/// Debug listing the client calls on a miss with `RUNNER_DEBUG=1`.
async fn v1_list(
    State(svc): State<CacheService>,
    Query(q): Query<V1ListQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let who = svc.identify(authorization(&headers)).await?;
        let key = crate::index::key_norm(&q.key.unwrap_or_default());
        let entries =
            svc.index.entry_list(Some(who.repository_id)).await.map_err(CacheError::from)?;
        let list: Vec<V1Entry> = entries
            .into_iter()
            .filter(|e| who.read_scopes.contains(&e.scope) && crate::index::key_norm(&e.key) == key)
            .map(|e| V1Entry {
                cache_key: e.key,
                scope: e.scope,
                cache_version: e.version,
                creation_time: iso8601(e.created_at),
                archive_location: None,
            })
            .collect();
        Ok::<_, CacheError>(serde_json::json!({ "totalCount": list.len(), "artifactCaches": list }))
    }
    .await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => ApiError(Proto::V1, e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1ReserveRequest {
    key: String,
    version: String,
    cache_size: Option<u64>,
}

async fn v1_reserve_p(
    svc: State<CacheService>,
    _p: Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    v1_reserve(svc, h, body).await
}

async fn v1_reserve(
    State(svc): State<CacheService>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let who = svc.identify(authorization(&headers)).await?;
        let req: V1ReserveRequest = parse_json(&body)?;
        svc.reserve(&who, &req.key, &req.version, req.cache_size).await
    }
    .await;
    match result {
        Ok(entry) => (StatusCode::CREATED, axum::Json(serde_json::json!({ "cacheId": entry.id })))
            .into_response(),
        Err(e) => ApiError(Proto::V1, e).into_response(),
    }
}

async fn v1_entry_p(
    svc: State<CacheService>,
    Path((_p, id)): Path<(String, CacheEntryId)>,
    request: Request,
) -> Response {
    v1_entry(svc, Path(id), request).await
}

/// `PATCH` uploads a chunk, `POST` commits.
async fn v1_entry(
    State(svc): State<CacheService>,
    Path(id): Path<CacheEntryId>,
    request: Request,
) -> Response {
    let endpoint = match *request.method() {
        Method::PATCH => Endpoint::V1Upload { id },
        Method::POST => Endpoint::V1Commit { id },
        _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
    };
    match v1_entry_call(&svc, &endpoint, request).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError(Proto::V1, e).into_response(),
    }
}

async fn v1_entry_call(
    svc: &CacheService,
    endpoint: &Endpoint,
    request: Request,
) -> Result<(), CacheError> {
    let who = svc.identify(authorization(request.headers())).await?;
    match *endpoint {
        Endpoint::V1Upload { id } => {
            let entry = svc.owned_entry(&who, id).await?;
            let range = request
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range)
                .ok_or_else(|| {
                    CacheError::Invalid("Content-Range: bytes a-b/* is required".into())
                })?;
            svc.put_chunk(&entry, range.0, range.1, request.into_body().into_data_stream()).await
        }
        Endpoint::V1Commit { id } => {
            #[derive(Deserialize)]
            struct Commit {
                size: u64,
            }
            let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
                .await
                .map_err(|e| CacheError::Invalid(format!("body: {e}")))?;
            let commit: Commit = parse_json(&body)?;
            svc.commit_v1(&who, id, commit.size).await.map(|_| ())
        }
        _ => Err(CacheError::NotFound),
    }
}

/// `bytes a-b/*` (or `/total`) → (a, b), inclusive.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes ")?;
    let (range, _total) = spec.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_requests() {
        assert_eq!(Endpoint::twirp("CreateCacheEntry"), Some(Endpoint::V2Create));
        assert_eq!(Endpoint::twirp("DeleteCacheEntry"), None);
        assert_eq!(
            Endpoint::blob(CacheEntryId(3), None, None),
            Some(Endpoint::PutBlob { id: CacheEntryId(3) })
        );
        assert_eq!(
            Endpoint::blob(CacheEntryId(3), Some("block"), Some("QQ==".into())),
            Some(Endpoint::PutBlock { id: CacheEntryId(3), block_id: "QQ==".into() })
        );
        assert_eq!(Endpoint::blob(CacheEntryId(3), Some("block"), None), None);
        assert_eq!(
            Endpoint::blob(CacheEntryId(3), Some("blocklist"), None),
            Some(Endpoint::PutBlockList { id: CacheEntryId(3) })
        );
        assert_eq!(Endpoint::blob(CacheEntryId(3), Some("appendblock"), None), None);
    }

    #[test]
    fn block_lists_parse_in_order() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><BlockList><Latest>QQ==</Latest>
            <Latest>Qg==</Latest><Uncommitted>Qw==</Uncommitted></BlockList>"#;
        assert_eq!(block_list_ids(xml).unwrap(), ["QQ==", "Qg==", "Qw=="]);
        assert_eq!(block_list_ids("<BlockList></BlockList>").unwrap(), Vec::<String>::new());
        assert!(block_list_ids("<BlockList><Evil>x</Evil></BlockList>").is_err());
        assert!(block_list_ids("<BlockList><Latest>x</Latest>").is_err());
        assert!(block_list_ids("nothing").is_err());
    }

    #[test]
    fn hostile_block_lists_are_errors_not_panics() {
        // Each of these panicked before (a slice `1..0`, or one cutting `é`).
        for xml in [
            "<BlockList>></BlockList>",
            "<BlockList>é></BlockList>",
            "<BlockList><é>x</é></BlockList>",
            "<BlockList><Latest>",
            "<BlockList><Latest",
            "<BlockList><",
            "<BlockList>x",
        ] {
            assert!(block_list_ids(xml).is_err(), "{xml:?}");
        }
    }

    #[test]
    fn range_ends_at_the_largest_number_do_not_overflow() {
        // `u64::MAX + 1` panicked in debug builds (and wrapped in release).
        assert_eq!(parse_range("bytes=0-18446744073709551615", 100), Some(0..100));
        assert_eq!(parse_range("bytes=0-18446744073709551616", 100), None);
        assert_eq!(parse_range("bytes=-18446744073709551615", 100), Some(0..100));
        assert_eq!(parse_range("bytes=18446744073709551615-", 100), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=0-1000", 100), Some(0..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_content_range("bytes 0-33554431/*"), Some((0, 33_554_431)));
        assert_eq!(parse_content_range("bytes x-1/*"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_340_916_331), "2026-11-22T09:48:36.331Z");
    }
}
