//! Blob storage for the cache server, over the `object_store` crate.
//!
//! The cache stores archives of up to many GiB that arrive as HTTP bodies and
//! leave as HTTP bodies. Three rules shape this crate:
//!
//! - **Nothing holds an archive in memory.** [`BlobStore::put_stream`] feeds
//!   the body into an `object_store` multipart upload a few small parts at a
//!   time (bounded by [`MAX_PARTS_IN_FLIGHT`] × the part size), and reads
//!   stream back in bounded chunks.
//! - **A partial upload is never visible.** Every object is written through a
//!   multipart upload: the local filesystem backend writes a hidden staging
//!   file and renames it on completion; S3 only shows the object after
//!   `CompleteMultipartUpload`. A body that fails half-way aborts the upload.
//! - **No copying at commit.** A cache entry is a *list of parts* ([`Part`]),
//!   read back as their concatenation ([`BlobStore::read`]). An Azure-style
//!   block upload or a v1 chunked upload stores each block as its own object
//!   (itself a streamed multipart upload on S3), and committing an entry only
//!   records the order of its parts. Deleting an entry deletes its prefix.
//!
//! Backends are chosen by URL: `file:///abs/dir` (the default, under the data
//! directory) or `s3://bucket/prefix`, configured from the usual `AWS_*`
//! environment variables (`AWS_ENDPOINT` for S3-compatible servers).
//!
//! Local blobs are private to hangar's user: the root and every directory
//! under it are 0700, every stored file 0600 (archives often hold build
//! outputs and sometimes credentials), whatever the umask.

use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How many parts of one upload may be in flight to the backend at once.
/// Together with the part size this bounds the memory one upload uses.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Part size for the local filesystem: small, since memory is the only cost.
const LOCAL_PART_SIZE: usize = 1024 * 1024;
/// Part size for S3: at least S3's 5 MiB minimum for all but the last part.
const S3_PART_SIZE: usize = 8 * 1024 * 1024;
/// Read buffer for local files.
const LOCAL_READ_CHUNK: usize = 256 * 1024;

/// A stream of bytes read from the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

/// One stored object that is a piece of a blob, in blob order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The object's key inside the store (`/`-separated, no leading `/`).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("unsupported storage url {url:?}: expected file:///abs/dir or s3://bucket/prefix")]
    BadUrl { url: String },
    #[error("invalid blob key {key:?}")]
    BadKey { key: String },
    #[error("opening storage {url:?}")]
    Open {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("the request body failed after {received} bytes")]
    Body {
        received: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob {key:?} not found")]
    NotFound { key: String },
    #[error("range {start}..{end} is outside the blob of {size} bytes")]
    BadRange { start: u64, end: u64, size: u64 },
    #[error("storage operation {op} on {key:?}")]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("reading local file for {key:?}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which kind of backend a store is (for logs and for choosing part sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Files under a local directory.
    Local { root: PathBuf },
    /// An S3 (or S3-compatible) bucket, optionally under a prefix.
    S3 { bucket: String, prefix: String },
}

/// A blob store: local directory or S3 bucket.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    backend: Backend,
    part_size: usize,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens the store named by `url` (`file:///abs/dir` or `s3://bucket/prefix`).
    /// A local directory is created if missing. S3 credentials, region and
    /// endpoint come from the `AWS_*` environment variables.
    pub fn open(url: &str) -> Result<BlobStore, BlobError> {
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(BlobError::BadUrl { url: url.to_owned() });
            }
            return Self::local(PathBuf::from(dir));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BlobError::BadUrl { url: url.to_owned() });
            }
            let open_err = |source| BlobError::Open { url: url.to_owned(), source };
            let s3 =
                AmazonS3Builder::from_env().with_bucket_name(bucket).build().map_err(open_err)?;
            let prefix = prefix.trim_matches('/').to_owned();
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix.as_str()))
            };
            return Ok(BlobStore {
                store,
                backend: Backend::S3 { bucket: bucket.to_owned(), prefix },
                part_size: S3_PART_SIZE,
            });
        }
        Err(BlobError::BadUrl { url: url.to_owned() })
    }

    /// A store in a local directory (created if missing).
    pub fn local(root: PathBuf) -> Result<BlobStore, BlobError> {
        let url = format!("file://{}", root.display());
        let io_err = |source| BlobError::Io { key: url.clone(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(io_err)?;
        // An existing directory keeps its mode otherwise.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|source| BlobError::Open { url, source })?;
        Ok(BlobStore {
            store: Arc::new(fs),
            backend: Backend::Local { root },
            part_size: LOCAL_PART_SIZE,
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Bytes available to hangar on the filesystem of a local store; `None`
    /// for S3 (no such limit) or when the filesystem cannot be asked.
    pub fn free_bytes(&self) -> Option<u64> {
        let Backend::Local { root } = &self.backend else { return None };
        let stat = nix::sys::statvfs::statvfs(root.as_path()).ok()?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let (avail, frsize) = (u64::from(stat.blocks_available()), u64::from(stat.fragment_size()));
        Some(avail.saturating_mul(frsize))
    }

    /// Local backend: makes the file at `key` 0600 and the directories from
    /// the root down to it 0700 (object_store creates them with the umask).
    fn restrict_local(&self, key: &str) -> Result<(), BlobError> {
        let Backend::Local { root } = &self.backend else { return Ok(()) };
        let io_err = |source| BlobError::Io { key: key.to_owned(), source };
        let file = root.join(key);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        let mut dir: &Path = file.parent().unwrap_or(root);
        while dir.starts_with(root) && dir != root.as_path() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err)?;
            dir = dir.parent().unwrap_or(root);
        }
        Ok(())
    }

    /// Streams `body` into a new object at `key`, replacing any earlier one
    /// only once the whole body has arrived. Fails (and stores nothing) when
    /// the body errors or grows past `limit` bytes. Returns the size.
    pub async fn put_stream<S, E>(&self, key: &str, body: S, limit: u64) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = object_path(key)?;
        let store_err = |op, source| BlobError::Store { op, key: key.to_owned(), source };
        let upload =
            self.store.put_multipart(&path).await.map_err(|e| store_err("put_multipart", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut body = std::pin::pin!(body);
        let mut received: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(source) => {
                    let _ = writer.abort().await;
                    return Err(BlobError::Body { received, source: source.into() });
                }
            };
            received += chunk.len() as u64;
            if received > limit {
                let _ = writer.abort().await;
                return Err(BlobError::TooLarge { limit });
            }
            if let Err(e) = writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
                return Err(store_err("put_part", e));
            }
            writer.put(chunk);
        }
        writer.finish().await.map_err(|e| store_err("complete", e))?;
        self.restrict_local(key)?;
        Ok(received)
    }

    /// The size of the object at `key`, or `None` if it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self.store.head(&object_path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(BlobError::Store { op: "head", key: key.to_owned(), source }),
        }
    }

    /// Every object under `prefix` (a folder: `a/b` lists `a/b/...`), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Part>, BlobError> {
        let path = object_path(prefix)?;
        let mut parts: Vec<Part> = self
            .store
            .list(Some(&path))
            .map_ok(|meta| Part { key: meta.location.to_string(), size: meta.size })
            .try_collect()
            .await
            .map_err(|source| BlobError::Store { op: "list", key: prefix.to_owned(), source })?;
        parts.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(parts)
    }

    /// Deletes every object under `prefix`. Missing objects are not an error.
    /// Returns how many objects were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, BlobError> {
        let parts = self.list(prefix).await?;
        for part in &parts {
            match self.store.delete(&object_path(&part.key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(BlobError::Store { op: "delete", key: part.key.clone(), source });
                }
            }
        }
        Ok(parts.len())
    }

    /// Reads bytes `range` (default: all) of the blob made of `parts` in
    /// order. Parts are opened lazily, one at a time, as the stream is read.
    pub fn read(&self, parts: &[Part], range: Option<Range<u64>>) -> Result<ByteStream, BlobError> {
        let size: u64 = parts.iter().map(|p| p.size).sum();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(BlobError::BadRange { start: range.start, end: range.end, size });
        }
        // Which piece of each part the range covers.
        let mut pieces = Vec::new();
        let mut offset = 0;
        for part in parts {
            let (start, end) = (offset, offset + part.size);
            offset = end;
            let lo = range.start.max(start);
            let hi = range.end.min(end);
            if lo < hi {
                pieces.push((part.key.clone(), (lo - start)..(hi - start)));
            }
        }
        let this = self.clone();
        let stream = futures::stream::iter(pieces)
            .then(move |(key, range)| {
                let this = this.clone();
                async move { this.read_part(key, range).await }
            })
            .try_flatten();
        Ok(Box::pin(stream))
    }

    async fn read_part(&self, key: String, range: Range<u64>) -> Result<ByteStream, BlobError> {
        let path = object_path(&key)?;
        let options =
            GetOptions { range: Some(GetRange::Bounded(range.clone())), ..Default::default() };
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound { key }),
            Err(source) => return Err(BlobError::Store { op: "get", key, source }),
        };
        match result.payload {
            // object_store reads local files in 8 KiB pieces; read big ones.
            GetResultPayload::File(file, _) => {
                let mut file = tokio::fs::File::from_std(file);
                let io_err = |key: &str| {
                    let key = key.to_owned();
                    move |source| BlobError::Io { key, source }
                };
                file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(io_err(&key))?;
                let reader = file.take(range.end - range.start);
                let stream = tokio_util::io::ReaderStream::with_capacity(reader, LOCAL_READ_CHUNK)
                    .map_err(move |source| BlobError::Io { key: key.clone(), source });
                Ok(Box::pin(stream))
            }
            GetResultPayload::Stream(stream) => {
                let stream = stream.map_err(move |source| BlobError::Store {
                    op: "get",
                    key: key.clone(),
                    source,
                });
                Ok(Box::pin(stream))
            }
        }
    }
}

/// Keys are `/`-separated segments of `[A-Za-z0-9._-]`, never `.` or `..`.
fn object_path(key: &str) -> Result<ObjectPath, BlobError> {
    let ok = !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if !ok {
        return Err(BlobError::BadKey { key: key.to_owned() });
    }
    Ok(ObjectPath::from(key))
}
