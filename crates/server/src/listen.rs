//! Listeners and the connection loop: where hangar's HTTP limits that come
//! before any handler live.
//!
//! hangar has two listeners (see the crate docs): the public one and the
//! admin one, a TCP address or a unix socket ([`ListenAddr`]). Both are
//! served by [`serve`], which, unlike `axum::serve`,
//! - caps open connections per listener (`max_connections`; a connection
//!   over the cap is closed at once and counted), and
//! - closes a connection whose request head has not fully arrived within
//!   `header_read_timeout` (hyper's timer; this also ends idle keep-alive
//!   connections), so stalled or slow-header clients hold nothing for long.
//!
//! Body limits are the webhook handler's (`webhook.rs`): they depend on
//! the route.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hangar_types::{ErrorChain, duration};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};

use crate::metrics::CONNECTIONS_REFUSED;

/// Where a listener binds: `127.0.0.1:8081`, or `unix:/run/hangar/admin.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// An absolute path; the socket file is created with mode 0600.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Reachable only from this host: a loopback address or a unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenAddr, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "expected an absolute socket path after `unix:`, not `{text}`"
                ));
            }
            return Ok(ListenAddr::Unix(path));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "expected an address such as \"127.0.0.1:8081\" or \"unix:/PATH\", not `{text}`"
            )
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[server.limits]`: what one client can hold before it is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per listener; one more is closed at once.
    pub max_connections: usize,
    /// A request head (line and headers) must arrive within this; also how
    /// long an idle keep-alive connection stays open.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A webhook body must arrive within this (GitHub gives up after 10 s).
    #[serde(with = "duration")]
    pub webhook_body_timeout: Duration,
    /// Largest webhook body read. hangar acts on `workflow_job` and `ping`
    /// only (tens of KB); other events are answered without reading theirs.
    pub webhook_max_body_bytes: usize,
    /// Webhook bodies read and checked at the same time (they are not yet
    /// authenticated); one more waits up to a second, then gets 503.
    pub webhook_unverified_bodies: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            webhook_body_timeout: Duration::from_secs(10),
            webhook_max_body_bytes: 1024 * 1024,
            webhook_unverified_bodies: 32,
        }
    }
}

/// A [`Limits`] value out of range: the key (under `server.limits`) and
/// what it expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `server.limits.{key}`: {expected}")]
pub struct LimitError {
    pub key: &'static str,
    pub expected: &'static str,
}

impl Limits {
    /// Checks every value (run by the config loader).
    pub fn validate(&self) -> Result<(), LimitError> {
        let err = |key, expected| Err(LimitError { key, expected });
        if self.max_connections == 0 {
            return err("max_connections", "expected at least 1");
        }
        if self.header_read_timeout.is_zero() {
            return err("header_read_timeout", "expected more than 0s");
        }
        if self.webhook_body_timeout.is_zero() {
            return err("webhook_body_timeout", "expected more than 0s");
        }
        if self.webhook_max_body_bytes < 64 * 1024
            || self.webhook_max_body_bytes > hangar_github::webhook::MAX_PAYLOAD_BYTES
        {
            return err(
                "webhook_max_body_bytes",
                "expected from 65536 (64 KiB) to 26214400 (GitHub's 25 MiB)",
            );
        }
        if self.webhook_unverified_bodies == 0 {
            return err("webhook_unverified_bodies", "expected at least 1");
        }
        Ok(())
    }
}

/// A bound listener, TCP or unix.
#[derive(Debug)]
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Bound {
    /// Binds `addr`. A unix socket replaces a stale socket file at the path
    /// and is made 0600 (only hangar's user may connect).
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Bound> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Bound::Unix(listener, path.clone()))
            }
        }
    }

    /// The address bound (a TCP port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Bound::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Bound::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }

    /// The URL clients use: `http://ADDR`, or `unix:PATH`.
    pub fn url(&self) -> std::io::Result<String> {
        Ok(match self.local_addr()? {
            ListenAddr::Tcp(addr) => format!("http://{addr}"),
            unix @ ListenAddr::Unix(_) => unix.to_string(),
        })
    }
}

/// Serves `router` on `listener` (see the module docs) until `shutdown`
/// resolves; then stops accepting, lets requests under way finish, closes
/// idle connections and returns when every connection has ended. `name`
/// (`public`, `admin`) labels the logs and metrics.
pub async fn serve(
    listener: Bound,
    name: &'static str,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    match listener {
        Bound::Tcp(listener) => serve_on(listener, name, router, limits, shutdown).await,
        Bound::Unix(listener, path) => {
            serve_on(listener, name, router, limits, shutdown).await;
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves the public and the admin listener, each with its router, until
/// `shutdown` resolves; then both stop accepting and drain (what `hangar
/// serve` runs, and tests that need both).
pub async fn serve_both(
    public: (Bound, Router),
    admin: (Bound, Router),
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop, stopped) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let wait = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tokio::join!(
        signal,
        serve(public.0, "public", public.1, limits, wait(stopped.clone())),
        serve(admin.0, "admin", admin.1, limits, wait(stopped)),
    );
}

async fn serve_on<L: Listener>(
    mut listener: L,
    name: &'static str,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    // Every connection holds a receiver: `stop` tells them to wind down,
    // and `closed()` resolves when the last one has gone.
    let (stop, stopped) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // `Listener::accept` retries accept errors itself (EMFILE too).
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics::counter!(CONNECTIONS_REFUSED, "listener" => name).increment(1);
            tracing::debug!(
                listener = name,
                max_connections = limits.max_connections,
                "Connection refused: too many open."
            );
            continue;
        };
        let connection =
            http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router.clone()));
        let mut stopping = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(
                            listener = name,
                            error = %ErrorChain(&error),
                            "Connection ended."
                        );
                    }
                }
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(stopping);
        });
    }
    drop(listener);
    drop(stopped);
    stop.send_replace(());
    stop.closed().await;
}
