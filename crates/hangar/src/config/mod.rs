//! `hangar.toml`: one file, one section per component, parsed once into
//! typed values and checked as a whole when it is loaded.
//!
//! Each component owns the struct of its section (`hangar_server::Config`,
//! `hangar_scheduler::SchedulerConfig`, …, and [`ProviderConfig`] here for a
//! pool's provider); this module composes them, reads the file, layers
//! environment variables and command-line flags on top ([`load`]) and runs
//! every section's validation, so that [`load`] is the one door: `hangar
//! config check` and `hangar serve` both go through it and accept exactly
//! the same files. Only probes of the host (is QEMU there? an image?) wait
//! until `serve` builds the providers.
//!
//! Every mistake is a [`ConfigError`] that names the file, the line when
//! known, the key and what was expected. Unknown keys are errors
//! (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. Durations have one syntax everywhere (`"90s"`, `"15m"`, `"72h"`:
//! [`hangar_types::duration`]).
//!
//! Precedence, strongest first: command-line flags, environment variables,
//! the file, built-in defaults. Secrets can come from the environment alone.

mod provider;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hangar_github::ClientConfig;
use hangar_scheduler::{PoolConfig, SchedulerConfig};
use hangar_server::ListenAddr;
use hangar_types::Secret;
use serde::Deserialize;

pub use provider::{AutoSettings, PROVIDER_KINDS, ProviderConfig};

/// A `[[pools]]` entry as the file gives it: the scheduling fields and the
/// provider.
pub type PoolSection = PoolConfig<ProviderConfig>;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HangarConfig {
    #[serde(default)]
    pub server: hangar_server::Config,
    #[serde(default)]
    pub github: hangar_github::GitHubConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub pools: Vec<PoolSection>,
    #[serde(default)]
    pub webhook: hangar_server::WebhookConfig,
    #[serde(default)]
    pub store: hangar_store::Config,
    #[serde(default)]
    pub cache: hangar_cache::CacheConfig,
}

/// Environment variables that override the file.
pub const ENV_WEBHOOK_SECRET: &str = "HANGAR_WEBHOOK_SECRET";
pub const ENV_API_TOKEN: &str = "HANGAR_API_TOKEN";
pub const ENV_DATABASE_URL: &str = "HANGAR_DATABASE_URL";
/// Names the runner scope when `[scheduler] runner_scope` does not.
pub const ENV_RUNNER_SCOPE: &str = "HANGAR_RUNNER_SCOPE";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub use hangar_server::DEFAULT_ADMIN_LISTEN;

/// What a config error is about: a file, or the built-in defaults (with
/// the environment) when there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Defaults => f.write_str("embedded defaults and environment"),
        }
    }
}

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}{}: {message}", line_suffix(*line))]
    Syntax { origin: Source, line: Option<usize>, message: String },
    #[error("{origin}{}: key `{key}`: {message}", line_suffix(*line))]
    Key { origin: Source, line: Option<usize>, key: String, message: String },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// Looks an environment variable up (`std::env::var` in production; a
/// table in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, empty values counted as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Command-line overrides of `hangar serve`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<hangar_server::ListenAddr>,
    pub data_dir: Option<PathBuf>,
}

/// The configuration hangar runs with: the file with every layer applied,
/// checked as a whole.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub source: Source,
    /// The file's sections as written (the cache and server sections are
    /// read from here), except that an empty `[cache] allowed_owners` (with
    /// no `allowed_repository_ids`) holds the runner scope's owner.
    pub file: HangarConfig,
    /// The public listener: webhooks, health, cache.
    pub listen: SocketAddr,
    /// The admin listener: the admin API and metrics.
    pub admin_listen: hangar_server::ListenAddr,
    pub data_dir: PathBuf,
    /// May hold a password: a [`Secret`], shown redacted.
    pub database_url: Secret,
    pub webhook_secret: Option<Secret>,
    pub api_token: Option<Secret>,
    /// `[scheduler]`, with `runner_scope` from the environment when the
    /// file has none.
    pub scheduler: SchedulerConfig,
    /// How to reach GitHub; `None` without credentials.
    pub github: Option<ClientConfig>,
    /// The pools to run: the file's, or the default pool.
    pub pools: Vec<PoolSection>,
    /// Why no runners are started, when none are.
    pub runners_off: Option<String>,
}

/// Reads `path` (or nothing: built-in defaults), applies the environment
/// and `overrides`, and checks the result (see the module docs).
pub fn load(
    path: Option<&Path>,
    env: Env<'_>,
    overrides: Overrides,
) -> Result<Resolved, ConfigError> {
    let (source, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            (Source::File(path.to_owned()), text)
        }
        None => (Source::Defaults, String::new()),
    };
    let file = parse(&source, &text)?;
    resolve(source, &text, file, env, overrides)
}

/// [`load`] of a text that is not in a file (tests, benchmarks); errors
/// name it `name`.
pub fn load_text(
    name: &str,
    text: &str,
    env: Env<'_>,
    overrides: Overrides,
) -> Result<Resolved, ConfigError> {
    let source = Source::File(PathBuf::from(name));
    let file = parse(&source, text)?;
    resolve(source, text, file, env, overrides)
}

/// No environment at all (tests and benchmarks that must not read the
/// caller's).
pub fn no_env(_: &str) -> Option<String> {
    None
}

/// Parses a file's text into its sections (no checks across sections).
pub fn parse(source: &Source, text: &str) -> Result<HangarConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let key = error.path().to_string();
        let inner = error.into_inner();
        let line = inner.span().map(|span| line_of(text, span.start));
        let message = renamed_hint(inner.message().trim());
        if key == "." || key.is_empty() {
            ConfigError::Syntax { origin: source.clone(), line, message }
        } else {
            ConfigError::Key { origin: source.clone(), line, key, message }
        }
    })
}

/// Keys that were renamed when durations got one syntax: the unknown-field
/// error says the new name.
fn renamed_hint(message: &str) -> String {
    const RENAMED: [(&str, &str); 2] = [
        ("unknown field `boot_timeout_secs`", "`boot_timeout`, a duration such as \"60s\""),
        ("unknown field `request_timeout_secs`", "`request_timeout`, a duration such as \"30s\""),
    ];
    const SETTINGS: &str = "unknown field `settings`";
    for (old, new) in RENAMED {
        if message.starts_with(old) {
            return format!("{message} (it is now {new})");
        }
    }
    if message.starts_with(SETTINGS) {
        return format!(
            "{message} (a pool's provider settings are now `[pools.provider.KIND]`, e.g. \
             `[pools.provider.microvm]`)"
        );
    }
    message.to_owned()
}

fn resolve(
    source: Source,
    text: &str,
    mut file: HangarConfig,
    env: Env<'_>,
    overrides: Overrides,
) -> Result<Resolved, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Key {
        origin: source.clone(),
        line: key_line(text, key),
        key: key.to_owned(),
        message,
    };
    let listen = overrides
        .listen
        .or(file.server.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
    let admin_listen = overrides
        .admin_listen
        .or_else(|| file.server.admin_listen.clone())
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("the default admin address parses"));
    let data_dir = overrides
        .data_dir
        .or_else(|| file.server.data_dir.clone())
        .unwrap_or_else(|| default_data_dir(env));
    let database_url = env(ENV_DATABASE_URL)
        .or_else(|| file.store.url.as_ref().map(|u| u.expose().to_owned()))
        .unwrap_or_else(|| hangar_store::Store::sqlite_url(&data_dir.join("hangar.db")));
    if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
        return Err(invalid("store.url", "expected a sqlite://PATH or postgres://... URL".into()));
    }
    if let Err((key, expected)) = file.store.validate() {
        return Err(invalid(key, expected.to_owned()));
    }
    let api_token =
        secret(&invalid, "server.api_token", ENV_API_TOKEN, env, &file.server.api_token)?;
    let webhook_secret =
        secret(&invalid, "webhook.secret", ENV_WEBHOOK_SECRET, env, &file.webhook.secret)?;
    if !admin_listen.is_local() && api_token.is_none() {
        return Err(invalid(
            "server.admin_listen",
            format!(
                "expected a loopback address or `unix:/PATH` (it serves the admin API and \
                 metrics), or an api_token ({ENV_API_TOKEN}) to guard them; not {admin_listen}"
            ),
        ));
    }
    if ListenAddr::Tcp(listen) == admin_listen && listen.port() != 0 {
        return Err(invalid(
            "server.admin_listen",
            format!("expected an address other than server.listen ({listen})"),
        ));
    }
    if let Err(e) = file.server.limits.validate() {
        return Err(invalid(&format!("server.limits.{}", e.key), e.expected.to_owned()));
    }
    if let Err(e) = file.cache.settings().and_then(|_| file.cache.check_listener(listen)) {
        return Err(invalid(&format!("cache.{}", e.key), format!("expected {}", e.expected)));
    }
    let mut scheduler = file.scheduler.clone();
    if scheduler.runner_scope.is_none()
        && let Some(scope) = env(ENV_RUNNER_SCOPE)
    {
        scheduler.runner_scope =
            Some(hangar_github::RunnerScope::try_from(scope).map_err(|message| {
                invalid("scheduler.runner_scope", format!("{ENV_RUNNER_SCOPE}: {message}"))
            })?);
    }
    // The cache accepts tokens of the runner scope's owner unless told otherwise.
    if file.cache.allowed_owners.is_empty()
        && file.cache.allowed_repository_ids.is_empty()
        && let Some(scope) = &scheduler.runner_scope
    {
        let owner = match scope {
            hangar_github::RunnerScope::Organization(org) => org,
            hangar_github::RunnerScope::Repository { owner, .. } => owner,
        };
        file.cache.allowed_owners = vec![owner.clone()];
    }
    let github =
        file.github.client_config(|var| env(var)).map_err(|e| invalid(e.key, e.message.clone()))?;
    let (pools, runners_off) = pools_effective(&file, &scheduler, github.is_some());
    hangar_scheduler::config::validate(&scheduler, &pools)
        .map_err(|e| invalid(&e.key, e.expected.clone()))?;
    if !file.pools.is_empty() && github.is_none() {
        return Err(invalid(
            "github",
            format!(
                "expected GitHub credentials for the pools (a GitHub App in [github], or a token \
                 in {})",
                hangar_github::ENV_GITHUB_TOKEN
            ),
        ));
    }
    Ok(Resolved {
        source,
        file,
        listen,
        admin_listen,
        data_dir,
        database_url: Secret::new(database_url),
        webhook_secret,
        api_token,
        scheduler,
        github,
        pools,
        runners_off,
    })
}

/// Secret values the files in `examples/` ship with: a copied example must
/// not run with a secret anyone can read (forged webhooks, an open admin
/// API). `every_example_config_loads` checks that each is refused.
pub const EXAMPLE_PLACEHOLDERS: [&str; 3] = [
    "change-me-to-the-secret-set-on-the-github-webhook",
    "replace-with-a-long-random-token",
    "at-least-sixteen-characters",
];

/// Shortest secret accepted, from any source (the environment too).
pub const MIN_SECRET_LEN: usize = 16;

/// A secret from the environment (`var`, stronger) or the file (`key`):
/// at least [`MIN_SECRET_LEN`] characters and not a placeholder.
fn secret(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    var: &str,
    env: Env<'_>,
    file: &Option<Secret>,
) -> Result<Option<Secret>, ConfigError> {
    let (value, from_env) = match (env(var), file) {
        (Some(value), _) => (value, true),
        (None, Some(value)) => (value.expose().to_owned(), false),
        (None, None) => return Ok(None),
    };
    let value = value.trim();
    let lowered = value.to_ascii_lowercase();
    let problem = if EXAMPLE_PLACEHOLDERS.contains(&value)
        || ["change-me", "changeme", "replace-with", "replace-me"]
            .iter()
            .any(|p| lowered.starts_with(p))
    {
        Some("is a placeholder from the examples: set a long random value (e.g. `openssl rand -hex 32`)".to_owned())
    } else if value.chars().count() < MIN_SECRET_LEN {
        Some(format!("expected at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"))
    } else {
        None
    };
    match problem {
        Some(problem) if from_env => Err(invalid(key, format!("{var}: {problem}"))),
        Some(problem) => Err(invalid(key, problem)),
        None => Ok(Some(Secret::new(value))),
    }
}

/// The pool `serve` runs when the file has no `[[pools]]`: `default`,
/// labels `self-hosted, linux, x64`, provider `auto` (microVMs, or
/// unhealthy with the reason).
pub fn default_pool() -> PoolSection {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    PoolConfig {
        name: hangar_types::PoolName("default".into()),
        labels: vec!["linux".into(), "x64".into()],
        max_runners: u32::try_from(cores).unwrap_or(2),
        min_hot: 0,
        idle_timeout: std::time::Duration::from_secs(300),
        keep_warm: std::time::Duration::ZERO,
        provider: ProviderConfig::default(),
    }
}

/// The file's pools, else the default pool when credentials and a scope
/// exist; else none, and why.
fn pools_effective(
    file: &HangarConfig,
    scheduler: &SchedulerConfig,
    credentials: bool,
) -> (Vec<PoolSection>, Option<String>) {
    if !file.pools.is_empty() {
        return (file.pools.clone(), None);
    }
    let off = |why: String| (Vec::new(), Some(why));
    match (credentials, scheduler.runner_scope.is_some()) {
        (false, _) => off(format!(
            "No GitHub credentials ({}, or a GitHub App in [github]): jobs are recorded, no \
             runners are started.",
            hangar_github::ENV_GITHUB_TOKEN
        )),
        (true, false) => off(format!(
            "GitHub credentials are set but no runner scope: set {ENV_RUNNER_SCOPE} or \
             [scheduler] runner_scope to the organization (or owner/repo) runners register in. \
             Until then jobs are recorded, no runners are started."
        )),
        (true, true) => (vec![default_pool()], None),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The line of a dotted key such as `pools[1].min_hot` in `text`, when
/// the file spells it (the deepest part of it the file has).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    let mut span = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = item.get(name) else { break };
        item = next;
        if let Some(i) = index {
            let Some(element) = item.get(i) else { break };
            item = element;
        }
        span = item.span().or(span);
    }
    span.map(|s| line_of(text, s.start))
}

/// `$XDG_DATA_HOME/hangar`, else `~/.local/share/hangar`, else `./hangar-data`.
fn default_data_dir(env: Env<'_>) -> PathBuf {
    if let Some(dir) = env("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("hangar");
    }
    match env("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/hangar"),
        None => PathBuf::from("hangar-data"),
    }
}

#[cfg(test)]
mod tests;
