//! `hangar serve`: the long-running control plane.
//!
//! With no config file at all it starts on embedded defaults (127.0.0.1,
//! SQLite under the data directory) and says plainly what is missing to
//! receive real webhooks. The first line on stdout is
//! `hangar listening on http://ADDR`, which scripts may read (useful with
//! `--listen 127.0.0.1:0`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hangar_github::WebhookSecret;
use hangar_server::{ApiAccess, ServerState};
use hangar_store::Store;
use tracing_subscriber::EnvFilter;

use crate::config::{ENV_WEBHOOK_SECRET, Effective, HangarConfig, Overrides};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Config file (default: HANGAR_CONFIG, else ./hangar.toml if present, else built-in defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the file (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database and local state, overriding the file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    init_tracing();
    crate::metrics::describe_all();
    let path = crate::config_path(args.config);
    let config = match &path {
        Some(path) => HangarConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => HangarConfig::default(),
    };
    let effective =
        Effective::resolve(&config, Overrides { listen: args.listen, data_dir: args.data_dir });
    std::fs::create_dir_all(&effective.data_dir).with_context(|| {
        format!("cannot create the data directory {}", effective.data_dir.display())
    })?;
    let store = Store::open(&effective.database_url).await.context("opening the store")?;
    let access =
        ApiAccess::new(effective.listen.ip().is_loopback(), effective.api_token.as_deref());
    let secret = effective.webhook_secret.as_deref().map(WebhookSecret::new);
    let state = ServerState::new(store.clone(), secret, access);
    let running =
        crate::lifecycle::start(&config, &store, &effective.data_dir, state.job_activity()).await?;
    let mut app = hangar_server::router(state);
    // The cache answers on the same listener, at the paths the clients expect.
    let mut eviction = None;
    if config.cache.enabled {
        let cache = super::cache::service(&config.cache, &effective.data_dir, &store)?;
        eviction = Some(hangar_cache::evict::spawn_schedule(cache.clone()));
        app = app.merge(hangar_cache::router(cache));
    }

    // Installed before "listening" is printed: a SIGTERM that follows that
    // line at once must take the graceful path, not the default (death).
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(effective.listen)
        .await
        .with_context(|| format!("cannot listen on {}", effective.listen))?;
    let addr = listener.local_addr()?;
    println!("hangar listening on http://{addr}");
    report_startup(path.as_deref(), &effective, addr);

    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP")?;
    if let Some(eviction) = eviction {
        eviction.abort();
    }
    tracing::info!("Shutting down: stopping pre-booted VMs and removing idle pools' firewalls.");
    running.shutdown().await;
    tracing::info!("Shutting down: flushing the store.");
    store.close().await;
    Ok(())
}

/// Says what hangar runs with, and loudly what is missing.
fn report_startup(path: Option<&std::path::Path>, effective: &Effective, addr: SocketAddr) {
    match path {
        Some(path) => tracing::info!(config = %path.display(), "Configuration loaded."),
        None => tracing::info!("No config file: running on embedded defaults."),
    }
    tracing::info!(
        data_dir = %effective.data_dir.display(),
        database = if effective.database_url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "Store open."
    );
    if effective.webhook_secret.is_none() {
        tracing::warn!(
            "No webhook secret: every delivery is refused (503) until you set {ENV_WEBHOOK_SECRET} \
             or [webhook] secret. Then point a GitHub webhook (events: Workflow jobs) at \
             http://{addr}/webhook (through a public URL) with the same secret."
        );
    }
    if !addr.ip().is_loopback() && effective.api_token.is_none() {
        tracing::warn!(
            "Listening beyond loopback without an API token: the admin API is closed. \
             Set HANGAR_API_TOKEN or [server] api_token to use it."
        );
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by the time
/// this returns, not when the future is first polled.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
