//! Protobuf bodies for the three Twirp `CacheService` calls.
//!
//! `@actions/cache` sends protobuf-JSON, which `http.rs` parses; Twirp also
//! allows binary protobuf (`Content-Type: application/protobuf`), and other
//! clients of GitHub's `results/api/v1/cache.proto` may send it. These
//! structs are written by hand for `prost` (no `protoc` at build time). The
//! field numbers are those of `github.actions.results.api.v1` as generated
//! into `@actions/cache` 6.3.0 (`lib/generated/results/api/v1/cache.js`),
//! also listed in `../shared/research/cache-protocol.md` §5.2. Field 1 of
//! every request (`metadata`, a `CacheMetadata` the client never fills) is
//! not declared, so prost skips it as an unknown field.

use prost::Message;

/// `CreateCacheEntryRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CreateCacheEntryRequest {
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, tag = "3")]
    pub version: String,
}

/// `CreateCacheEntryResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct CreateCacheEntryResponse {
    #[prost(bool, tag = "1")]
    pub ok: bool,
    #[prost(string, tag = "2")]
    pub signed_upload_url: String,
    #[prost(string, tag = "3")]
    pub message: String,
}

/// `FinalizeCacheEntryUploadRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct FinalizeCacheEntryUploadRequest {
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(int64, tag = "3")]
    pub size_bytes: i64,
    #[prost(string, tag = "4")]
    pub version: String,
}

/// `FinalizeCacheEntryUploadResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct FinalizeCacheEntryUploadResponse {
    #[prost(bool, tag = "1")]
    pub ok: bool,
    #[prost(int64, tag = "2")]
    pub entry_id: i64,
    #[prost(string, tag = "3")]
    pub message: String,
}

/// `GetCacheEntryDownloadURLRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct GetCacheEntryDownloadUrlRequest {
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, repeated, tag = "3")]
    pub restore_keys: Vec<String>,
    #[prost(string, tag = "4")]
    pub version: String,
}

/// `GetCacheEntryDownloadURLResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct GetCacheEntryDownloadUrlResponse {
    #[prost(bool, tag = "1")]
    pub ok: bool,
    #[prost(string, tag = "2")]
    pub signed_download_url: String,
    #[prost(string, tag = "3")]
    pub matched_key: String,
}
