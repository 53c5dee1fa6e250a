//! The `[github]` section of `hangar.toml`: how to reach and authenticate
//! to the REST API. Secrets may come from the environment alone
//! (`HANGAR_GITHUB_TOKEN`, `HANGAR_GITHUB_APP_PRIVATE_KEY`), so the file can
//! be committed.
//!
//! ```toml
//! [github]
//! api_url = "https://github.example.com/api/v3"   # GHES; default api.github.com
//! app_id = "123456"            # or the client id, "Iv1.…"
//! installation_id = 7890
//! private_key_file = "/etc/hangar/app.pem"
//! # or, instead of an App: token = "ghp_…" (better: HANGAR_GITHUB_TOKEN)
//! # repositories = ["octo-org/app"]  # with a token: what to poll for lost jobs
//! ```

use std::path::PathBuf;
use std::time::Duration;

use hangar_types::{InstallationId, Secret};
use serde::Deserialize;

use super::{AppCredentials, Auth, ClientConfig};

/// Environment variable holding a personal access token.
pub const ENV_GITHUB_TOKEN: &str = "HANGAR_GITHUB_TOKEN";
/// Environment variable holding the App's private key (PEM text).
pub const ENV_GITHUB_APP_PRIVATE_KEY: &str = "HANGAR_GITHUB_APP_PRIVATE_KEY";

/// The `[github]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubConfig {
    /// REST API root; default `https://api.github.com`, GHES `https://HOST/api/v3`.
    pub api_url: Option<String>,
    /// A personal access token. Prefer `HANGAR_GITHUB_TOKEN`.
    pub token: Option<Secret>,
    /// The GitHub App's id or client id.
    pub app_id: Option<String>,
    pub installation_id: Option<i64>,
    /// PEM file of the App's private key (or `HANGAR_GITHUB_APP_PRIVATE_KEY`).
    pub private_key_file: Option<PathBuf>,
    /// With a token: the repositories (`owner/name`) polled for lost jobs.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Percent of the hourly budget kept for runner launches; default 10.
    pub poll_reserve_percent: Option<u8>,
    /// Per-request timeout (a duration, `"30s"`); default 30 s.
    #[serde(default, with = "hangar_types::duration::option")]
    pub request_timeout: Option<Duration>,
}

/// A `[github]` section that cannot work. `key` is the dotted key at fault.
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct GitHubConfigError {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> GitHubConfigError {
    GitHubConfigError { key, message: message.into() }
}

impl GitHubConfig {
    /// Turns the section plus the environment (`env` looks a variable up)
    /// into a client configuration; `Ok(None)` when no credentials are
    /// configured at all (hangar then only takes webhooks).
    pub fn client_config(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ClientConfig>, GitHubConfigError> {
        let token = env(ENV_GITHUB_TOKEN)
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.as_ref().map(|t| t.expose().to_owned()));
        let auth = match (token, &self.app_id) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "github.app_id",
                    format!(
                        "expected either an App (app_id) or a token ({ENV_GITHUB_TOKEN} or github.token), not both"
                    ),
                ));
            }
            (None, None) => return Ok(None),
            (Some(token), None) if token.trim().is_empty() => {
                return Err(invalid("github.token", "expected a non-empty token"));
            }
            (Some(token), None) => Auth::Token(Secret::new(token.trim())),
            (None, Some(app_id)) => {
                if app_id.trim().is_empty() {
                    return Err(invalid("github.app_id", "expected the App id or client id"));
                }
                let installation_id = self.installation_id.ok_or_else(|| {
                    invalid(
                        "github.installation_id",
                        "expected the installation id with github.app_id",
                    )
                })?;
                let pem = match (
                    env(ENV_GITHUB_APP_PRIVATE_KEY).filter(|k| !k.is_empty()),
                    &self.private_key_file,
                ) {
                    (Some(pem), _) => pem,
                    (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                        invalid(
                            "github.private_key_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?,
                    (None, None) => {
                        return Err(invalid(
                            "github.private_key_file",
                            format!(
                                "expected the App's private key file (or {ENV_GITHUB_APP_PRIVATE_KEY})"
                            ),
                        ));
                    }
                };
                if jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).is_err() {
                    return Err(invalid(
                        "github.private_key_file",
                        "expected an RSA private key in PEM format",
                    ));
                }
                Auth::App(AppCredentials {
                    app_id: app_id.trim().to_owned(),
                    installation_id: InstallationId(installation_id),
                    private_key_pem: Secret::new(pem),
                })
            }
        };
        let api_url = self.api_url.clone().unwrap_or_else(|| "https://api.github.com".to_owned());
        match reqwest::Url::parse(&api_url) {
            Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {}
            _ => {
                return Err(invalid(
                    "github.api_url",
                    "expected an http(s) URL such as https://HOST/api/v3",
                ));
            }
        }
        for repo in &self.repositories {
            if super::RunnerScope::parse(repo)
                .is_none_or(|s| matches!(s, super::RunnerScope::Organization(_)))
            {
                return Err(invalid(
                    "github.repositories",
                    format!("expected owner/name, got {repo:?}"),
                ));
            }
        }
        let mut config = ClientConfig::new(api_url, auth);
        if let Some(percent) = self.poll_reserve_percent {
            if percent > 100 {
                return Err(invalid("github.poll_reserve_percent", "expected 0 to 100"));
            }
            config.poll_reserve_fraction = f64::from(percent) / 100.0;
        }
        if let Some(timeout) = self.request_timeout {
            if timeout.is_zero() {
                return Err(invalid("github.request_timeout", "expected more than 0s"));
            }
            config.request_timeout = timeout;
        }
        config.repositories = self.repositories.clone();
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> GitHubConfig {
        toml::from_str(text).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn nothing_configured_means_no_client() {
        assert!(GitHubConfig::default().client_config(no_env).unwrap().is_none());
    }

    #[test]
    fn a_token_from_the_environment_wins_and_ghes_urls_are_kept() {
        let config =
            parse("api_url = \"https://ghe.example.com/api/v3\"\nrepositories = [\"octo/app\"]\n");
        let client = config
            .client_config(|name| (name == ENV_GITHUB_TOKEN).then(|| "ghp_x".to_owned()))
            .unwrap()
            .unwrap();
        assert_eq!(client.api_url, "https://ghe.example.com/api/v3");
        assert!(matches!(client.auth, Auth::Token(ref t) if t.expose() == "ghp_x"));
        assert_eq!(client.repositories, vec!["octo/app".to_owned()]);
    }

    #[test]
    fn an_app_key_comes_from_the_environment() {
        let key = hangar_simulator::app_key_generate();
        let config = parse("app_id = \"Iv1.abc\"\ninstallation_id = 42\npoll_reserve_percent = 25");
        let client = config
            .client_config(|name| {
                (name == ENV_GITHUB_APP_PRIVATE_KEY).then(|| key.private_pem.clone())
            })
            .unwrap()
            .unwrap();
        assert!(
            matches!(client.auth, Auth::App(ref app) if app.installation_id == InstallationId(42) && app.app_id == "Iv1.abc")
        );
        assert!((client.poll_reserve_fraction - 0.25).abs() < f64::EPSILON);
        let garbage = config
            .client_config(|name| (name == ENV_GITHUB_APP_PRIVATE_KEY).then(|| "nope".to_owned()));
        assert_eq!(garbage.unwrap_err().key, "github.private_key_file");
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            ("app_id = \"1\"\ntoken = \"t\"", "github.app_id"),
            ("app_id = \"1\"", "github.installation_id"),
            ("app_id = \"1\"\ninstallation_id = 2", "github.private_key_file"),
            (
                "app_id = \"1\"\ninstallation_id = 2\nprivate_key_file = \"/nonexistent.pem\"",
                "github.private_key_file",
            ),
            ("token = \"t\"\napi_url = \"ftp://x\"", "github.api_url"),
            ("token = \"t\"\nrepositories = [\"just-an-org\"]", "github.repositories"),
            ("token = \"t\"\npoll_reserve_percent = 101", "github.poll_reserve_percent"),
        ];
        for (text, key) in cases {
            let error = parse(text).client_config(no_env).unwrap_err();
            assert_eq!(error.key, key, "{text}");
        }
        assert!(
            toml::from_str::<GitHubConfig>("tokn = \"t\"").is_err(),
            "unknown keys are refused"
        );
    }
}
