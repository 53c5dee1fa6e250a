//! hangar's GitHub Actions cache server.
//!
//! Unchanged `actions/cache` steps (and every `setup-*` `cache:` input, all
//! built on the `@actions/cache` npm package) save to and restore from this
//! server when the runner's `ACTIONS_RESULTS_URL` (protocol v2) or
//! `ACTIONS_CACHE_URL` (v1) points at hangar. See
//! `../shared/research/cache-protocol.md` for the protocol and its traps.
//!
//! Layers, outside in:
//!
//! - [`http`]: both wire protocols → [`http::Endpoint`] → the service
//!   (Twirp bodies in JSON or protobuf, [`twirp_pb`]);
//! - [`service`]: lookup order, scopes, reservations, part uploads, commit;
//! - [`token`]: who asks (the job's runtime token, verified against a JWKS);
//! - [`index`]: entry metadata ([`index::CacheIndex`]; real one in `hangar-store`);
//! - `hangar-blobstore`: the bytes, on disk or S3, streamed;
//! - [`evict`]: TTL, size cap and abandoned uploads, on a schedule.

pub mod clock;
pub mod config;
pub mod evict;
pub mod http;
pub mod index;
pub mod metrics;
pub mod service;
pub mod sign;
pub mod token;
pub mod twirp_pb;

use std::path::Path;
use std::sync::Arc;

pub use config::CacheConfig;
pub use http::router;
pub use service::{CacheError, CacheService};

use hangar_blobstore::{BlobError, BlobStore};

/// Why the cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("opening cache storage")]
    Storage(#[source] BlobError),
}

impl CacheService {
    /// Builds the service from its config section. `data_dir` holds the
    /// default storage (`<data_dir>/cache`).
    pub fn new(
        config: &CacheConfig,
        data_dir: &Path,
        index: Arc<dyn index::CacheIndex>,
        clock: Arc<dyn clock::Clock>,
    ) -> Result<CacheService, StartError> {
        let settings = config.settings()?;
        let blobs = match &config.storage {
            Some(url) => BlobStore::open(url),
            None => BlobStore::local(data_dir.join("cache")),
        }
        .map_err(StartError::Storage)?;
        let tokens = if config.insecure_skip_token_verification {
            token::TokenVerifier::insecure_skip_verification()
        } else {
            token::TokenVerifier::new(token::Policy {
                issuer: config.token_issuer.clone(),
                jwks_url: config.token_jwks_url.clone(),
                audience: config.token_audience.clone(),
                allow: token::AllowList::new(
                    &config.allowed_owners,
                    &config.allowed_repository_ids,
                ),
                refresh_min: token::JWKS_REFRESH_MIN,
            })
        };
        let signer = match &config.url_signing_key {
            Some(key) => sign::UrlSigner::new(key.expose().as_bytes()),
            None => sign::UrlSigner::random(),
        };
        if let (None, hangar_blobstore::Backend::Local { root }) =
            (&config.storage, blobs.backend())
        {
            tracing::info!(
                storage = %root.display(),
                "cache: blobs on local disk; give them their own filesystem ([cache] storage) so \
                 a full cache cannot stop the database"
            );
        }
        tracing::info!(
            storage = ?blobs.backend(),
            issuer = %config.token_issuer,
            allowed_owners = ?config.allowed_owners,
            allowed_repository_ids = ?config.allowed_repository_ids,
            "cache: serving"
        );
        Ok(CacheService {
            index,
            blobs,
            tokens,
            signer,
            settings,
            public_url: config.public_url.clone(),
            clock,
            in_flight: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Waits for the work a request left running (the size-cap eviction
    /// after a save), for an orderly stop.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The metadata index (for `hangar cache ls/rm/stats`).
    pub fn index(&self) -> &Arc<dyn index::CacheIndex> {
        &self.index
    }
}
