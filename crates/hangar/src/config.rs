//! `hangar.toml`: one file, one section per component.
//!
//! Each component owns the struct of its section (`hangar_server::Config`,
//! `hangar_store::Config`, …); this module only composes them, reads the
//! file, layers environment variables and command-line flags on top, and
//! turns every mistake into a [`ConfigError`] that names the file, the key
//! and what was expected. Unknown keys are errors (`deny_unknown_fields`),
//! so a typo never silently falls back to a default.
//!
//! Precedence, strongest first: command-line flags, environment variables,
//! the file, built-in defaults. Secrets can come from the environment alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HangarConfig {
    #[serde(default)]
    pub(crate) server: hangar_server::Config,
    #[serde(default)]
    pub(crate) github: hangar_github::GitHubConfig,
    #[serde(default)]
    pub(crate) scheduler: hangar_scheduler::SchedulerConfig,
    #[serde(default)]
    pub(crate) pools: Vec<hangar_scheduler::PoolConfig>,
    #[serde(default)]
    pub(crate) webhook: hangar_server::WebhookConfig,
    #[serde(default)]
    pub(crate) store: hangar_store::Config,
    #[serde(default)]
    pub(crate) cache: hangar_cache::CacheConfig,
}

/// Environment variables that override the file.
pub(crate) const ENV_WEBHOOK_SECRET: &str = "HANGAR_WEBHOOK_SECRET";
pub(crate) const ENV_API_TOKEN: &str = "HANGAR_API_TOKEN";
pub(crate) const ENV_DATABASE_URL: &str = "HANGAR_DATABASE_URL";

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("{path}: cannot read the config file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Syntax { path: PathBuf, line: Option<usize>, message: String },
    #[error("{}{}: key `{key}`: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Key { path: PathBuf, line: Option<usize>, key: String, message: String },
}

impl HangarConfig {
    /// Reads and checks `path`.
    pub(crate) fn load(path: &Path) -> Result<HangarConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        HangarConfig::parse(path, &text)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Result<HangarConfig, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: HangarConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let key = error.path().to_string();
                let inner = error.into_inner();
                let line = inner.span().map(|span| line_of(text, span.start));
                let message = inner.message().trim().to_owned();
                if key == "." || key.is_empty() {
                    ConfigError::Syntax { path: path.to_owned(), line, message }
                } else {
                    ConfigError::Key { path: path.to_owned(), line, key, message }
                }
            })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Key {
            path: path.to_owned(),
            line: None,
            key: key.to_owned(),
            message: message.to_owned(),
        };
        if self.server.api_token.as_deref().is_some_and(|t| t.trim().len() < 16) {
            return Err(invalid("server.api_token", "expected a token of at least 16 characters"));
        }
        if self.webhook.secret.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("webhook.secret", "expected a non-empty secret"));
        }
        if let Some(url) = &self.store.url
            && !(url.starts_with("sqlite:") || url.starts_with("postgres"))
        {
            return Err(invalid("store.url", "expected a sqlite://PATH or postgres://... URL"));
        }
        for (i, pool) in self.pools.iter().enumerate() {
            if let Err((key, message)) = crate::lifecycle::pool_check(pool) {
                return Err(invalid(&format!("pools[{i}].{key}"), &message));
            }
        }
        if let Err(e) = self.cache.settings() {
            let message = format!("expected {}, got {:?}", e.expected, e.value);
            return Err(invalid(&format!("cache.{}", e.key), &message));
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The settings `hangar serve` runs with, after every layer is applied.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub(crate) listen: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) database_url: String,
    pub(crate) webhook_secret: Option<String>,
    pub(crate) api_token: Option<String>,
}

/// Command-line overrides of `hangar serve`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) data_dir: Option<PathBuf>,
}

impl Effective {
    pub(crate) fn resolve(config: &HangarConfig, overrides: Overrides) -> Effective {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let listen = overrides
            .listen
            .or(config.server.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
        let data_dir = overrides
            .data_dir
            .or_else(|| config.server.data_dir.clone())
            .unwrap_or_else(default_data_dir);
        let database_url = env(ENV_DATABASE_URL)
            .or_else(|| config.store.url.clone())
            .unwrap_or_else(|| hangar_store::Store::sqlite_url(&data_dir.join("hangar.db")));
        Effective {
            listen,
            data_dir,
            database_url,
            webhook_secret: env(ENV_WEBHOOK_SECRET).or_else(|| config.webhook.secret.clone()),
            api_token: env(ENV_API_TOKEN).or_else(|| config.server.api_token.clone()),
        }
    }
}

/// `$XDG_DATA_HOME/hangar`, else `~/.local/share/hangar`, else `./hangar-data`.
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("hangar");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/hangar"),
        None => PathBuf::from("hangar-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HangarConfig, String> {
        HangarConfig::parse(Path::new("hangar.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(parse(""), Ok(HangarConfig::default()));
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_expectation() {
        let error = parse("[server]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(error.starts_with("hangar.toml:2: key `server.listen`: "), "{error}");
        assert!(error.contains("socket address"), "{error}");

        let error = parse("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        assert!(error.starts_with("hangar.toml:3: key `server"), "{error}");
        assert!(error.contains("unknown field `listne`"), "{error}");

        let error = parse("[servre]\n").unwrap_err();
        assert!(error.contains("unknown field `servre`"), "{error}");

        let error = parse("[server\n").unwrap_err();
        assert!(error.starts_with("hangar.toml:1: "), "{error}");

        let error = parse("[server]\napi_token = \"short\"\n").unwrap_err();
        assert_eq!(
            error,
            "hangar.toml: key `server.api_token`: expected a token of at least 16 characters"
        );

        let error = parse("[cache]\nttl = \"soon\"\n").unwrap_err();
        assert!(error.contains("key `cache.ttl`: expected a duration"), "{error}");

        let error = parse("[cache]\nstorage = \"/tmp/x\"\n").unwrap_err();
        assert!(error.contains("key `cache.storage`: expected file:///"), "{error}");

        let error = parse("[store]\nurl = \"mysql://x\"\n").unwrap_err();
        assert!(error.contains("key `store.url`: expected a sqlite://PATH"), "{error}");
    }

    #[test]
    fn every_example_config_parses() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&examples).expect("examples/ exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                HangarConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked >= 2, "expected example configs in {}", examples.display());
    }
}
