//! `hangar cache ls|rm|stats|evict`: the operator's view of the Actions cache.
//!
//! These open the same database and blob storage as `hangar serve` (from the
//! same config file and `--data-dir`), so they work whether or not the
//! server runs; SQLite's WAL lets both at once. `rm` and `evict` delete the
//! index row first, then the blobs, exactly as the server's eviction does.

use std::path::PathBuf;

use anyhow::{Context, Result};
use comfy_table::Table;
use hangar_cache::CacheService;
use hangar_store::Store;

use hangar::config::Overrides;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Config file (default: HANGAR_CONFIG, else ./hangar.toml if present).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Data directory, overriding the file.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List entries, least recently used first.
    Ls {
        /// Only this repository (GitHub's numeric repository id).
        #[arg(long)]
        repo: Option<i64>,
    },
    /// Delete entries by id.
    Rm {
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Per repository: entries, bytes, hit rate, bytes served.
    Stats,
    /// Run one eviction pass now (TTL, size cap, abandoned uploads).
    Evict {
        /// Only print what would be evicted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Builds the cache service `hangar serve` runs.
pub(crate) async fn run(args: Args) -> Result<()> {
    let path = crate::config_path(args.config);
    let overrides = Overrides { data_dir: args.data_dir, ..Overrides::default() };
    let config = hangar::config::load(path.as_deref(), &hangar::config::process_env, overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::open(config.database_url.expose()).await.context("opening the store")?;
    let cache = hangar::app::cache_service(&config, &store)?;
    let result = match args.command {
        Command::Ls { repo } => ls(&cache, repo).await,
        Command::Rm { ids } => rm(&cache, &ids).await,
        Command::Stats => stats(&cache).await,
        Command::Evict { dry_run } => evict(&cache, dry_run).await,
    };
    store.close().await;
    result
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

async fn ls(cache: &CacheService, repo: Option<i64>) -> Result<()> {
    let entries = cache
        .index()
        .entry_list(repo.map(hangar_types::RepositoryId))
        .await
        .context("listing cache entries")?;
    let mut table = Table::new();
    table.set_header(["id", "repo", "scope", "key", "state", "bytes", "last used", "hits"]);
    for e in &entries {
        table.add_row([
            e.id.to_string(),
            e.repository_id.to_string(),
            e.scope.clone(),
            e.key.clone(),
            format!("{:?}", e.state).to_lowercase(),
            e.size.to_string(),
            when(e.last_used_at),
            e.hits.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn rm(cache: &CacheService, ids: &[i64]) -> Result<()> {
    for id in ids {
        match cache
            .index()
            .entry_get(hangar_types::CacheEntryId(*id))
            .await
            .context("reading a cache entry")?
        {
            Some(entry) => {
                cache.entry_remove(&entry).await.with_context(|| format!("removing entry {id}"))?;
                println!("removed {id} ({} in repository {})", entry.key, entry.repository_id);
            }
            None => println!("no entry {id}"),
        }
    }
    Ok(())
}

async fn stats(cache: &CacheService) -> Result<()> {
    let stats = cache.index().repo_stats().await.context("reading cache usage")?;
    let mut table = Table::new();
    table.set_header(["repo", "entries", "bytes", "lookups", "hit rate", "bytes served"]);
    for s in &stats {
        #[allow(clippy::cast_precision_loss)] // a percentage for display
        let rate = if s.lookups == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", 100.0 * s.hits as f64 / s.lookups as f64)
        };
        table.add_row([
            s.repository_id.to_string(),
            s.entries.to_string(),
            s.bytes.to_string(),
            s.lookups.to_string(),
            rate,
            s.bytes_served.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn evict(cache: &CacheService, dry_run: bool) -> Result<()> {
    let report = hangar_cache::evict::evict(cache, dry_run).await.context("evicting")?;
    let verb = if dry_run { "would evict" } else { "evicted" };
    for (e, reason) in &report.removed {
        println!(
            "{verb} {} ({}, {} bytes, repository {}): {}",
            e.id,
            e.key,
            e.size,
            e.repository_id,
            reason.as_str()
        );
    }
    println!("{verb} {} entries", report.removed.len());
    Ok(())
}
