//! `hangar serve`: the long-running control plane.
//!
//! With no config file at all it starts on embedded defaults (127.0.0.1,
//! SQLite under the data directory) and says plainly what is missing to
//! receive real webhooks. The first line on stdout is
//! `hangar listening on http://ADDR` (the public listener), the second
//! `hangar admin on http://ADDR` (or `unix:PATH`), which scripts may read
//! (useful with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hangar::App;
use hangar::config::{ENV_WEBHOOK_SECRET, Overrides, Resolved, Source};
use hangar_server::{Bound, ListenAddr};
use tracing_subscriber::EnvFilter;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Config file (default: HANGAR_CONFIG, else ./hangar.toml if present, else built-in defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Public address (webhooks, health, cache), overriding the file (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin address (API, metrics) or unix:PATH, overriding the file (default 127.0.0.1:8081).
    #[arg(long)]
    admin_listen: Option<ListenAddr>,
    /// Directory for the SQLite database and local state, overriding the file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    init_tracing();
    // Everything hangar writes (database, cache blobs, runner dirs, VM
    // state, sockets) is for hangar alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let path = crate::config_path(args.config);
    let overrides =
        Overrides { listen: args.listen, admin_listen: args.admin_listen, data_dir: args.data_dir };
    let config = hangar::config::load(path.as_deref(), &hangar::config::process_env, overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    hangar::metrics::describe_all();
    let app = App::build(&config, hangar::Parts::default()).await?;
    app.start();

    // Installed before "listening" is printed: a SIGTERM that follows that
    // line at once must take the graceful path, not the default (death).
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = Bound::bind(&config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
    let addr = listener.local_addr()?;
    // One write: a reader that takes the first line and closes the pipe
    // must not make the second one fail.
    let lines = format!("hangar listening on http://{addr}\nhangar admin on {}\n", admin.url()?);
    print!("{lines}");
    report_startup(&config, addr);

    app.serve(Bound::Tcp(listener), admin, shutdown).await;
    tracing::info!("Shutting down: no new requests; letting runner steps under way finish.");
    let report = app.stop().await;
    if report.tasks_left > 0 {
        tracing::warn!(
            tasks_left = report.tasks_left,
            "Stopped with runner steps still under way; the next start resumes them."
        );
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// Says what hangar runs with, and loudly what is missing.
fn report_startup(effective: &Resolved, addr: SocketAddr) {
    match &effective.source {
        Source::File(path) => {
            tracing::info!(config = %path.display(), "Configuration loaded.");
            config_file_check(path, &effective.file);
        }
        Source::Defaults => tracing::info!("No config file: running on embedded defaults."),
    }
    tracing::info!(
        data_dir = %effective.data_dir.display(),
        database = if effective.database_url.expose().starts_with("sqlite") { "sqlite" } else { "postgres" },
        "Store open."
    );
    if effective.webhook_secret.is_none() {
        tracing::warn!(
            "No webhook secret: every delivery is refused (503) until you set {ENV_WEBHOOK_SECRET} \
             or [webhook] secret. Then point a GitHub webhook (events: Workflow jobs) at \
             http://{addr}/webhook (through a public URL) with the same secret."
        );
    }
    if effective.api_token.is_none() {
        tracing::info!(
            admin = %effective.admin_listen,
            "The admin API and metrics answer on the admin listener only (no API token set)."
        );
    }
}

/// Warns when a config file that holds a secret can be read by others.
fn config_file_check(path: &std::path::Path, file: &hangar::config::HangarConfig) {
    use std::os::unix::fs::PermissionsExt;
    let secrets = file.webhook.secret.is_some()
        || file.server.api_token.is_some()
        || file.github.token.is_some()
        || file.store.url.as_ref().is_some_and(|u| u.expose().contains('@'));
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if secrets && mode & 0o077 != 0 {
        tracing::warn!(
            config = %path.display(),
            mode = format!("{mode:o}"),
            "The config file holds secrets and other users can read it: `chmod 600` it, or give \
             the secrets in the environment."
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
