//! The `[cache]` section of `hangar.toml`.
//!
//! ```toml
//! [cache]
//! storage = "file:///var/lib/hangar/cache"   # or "s3://bucket/prefix" (AWS_* env)
//! token_issuer = "https://token.actions.githubusercontent.com"
//! token_jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
//! # token_audience = "..."        # checked when set; real runtime tokens' `aud` is unknown
//! allowed_owners = ["my-org"]     # default: the owner of [scheduler] runner_scope
//! # allowed_repository_ids = [123456]   # also accepted, whatever their owner
//! ttl = "7d"                      # unused entries older than this are evicted
//! max_repo_bytes = 10000000000    # per repository, least recently used evicted first
//! max_total_bytes = 50000000000   # all repositories together, same rule
//! max_entry_bytes = 10000000000   # one entry (GitHub's limit)
//! min_free_bytes = 2000000000     # local storage: refuse uploads below this much free space
//! eviction_schedule = "1h"       # every hour, or "daily 03:00" (UTC)
//! # public_url = "https://cache.example"   # origin in signed URLs; default: the request's Host
//! # insecure_skip_token_verification = true  # development only, loopback listener only
//! ```
//!
//! Every cap counts uploads still under way: their bytes so far count
//! towards the repository's and the global cap, and an upload that would
//! push the *unfinished* bytes past a cap is refused (committed entries are
//! evicted least recently used first instead, as GitHub does).
//!
//! Blobs default to `<data_dir>/cache`, the disk the SQLite database is on; a
//! full disk then stops webhook intake too. Point `storage` at its own
//! filesystem (or S3) in production; `min_free_bytes` is the floor below
//! which local uploads are refused either way.
//!
//! Durations are written as everywhere in the file
//! ([`hangar_types::duration`]: `"30s"`, `"30m"`, `"72h"`, `"7d"`) and parsed
//! when the file is read.

use std::time::Duration;

use hangar_types::duration;
use serde::Deserialize;

/// GitHub's token issuer, the default.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// GitHub's JWKS, the default.
pub const GITHUB_JWKS_URL: &str = "https://token.actions.githubusercontent.com/.well-known/jwks";

/// The `[cache]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Serve the cache at all.
    pub enabled: bool,
    /// `file:///abs/dir` or `s3://bucket/prefix`; default `<data-dir>/cache`.
    pub storage: Option<String>,
    pub token_issuer: String,
    pub token_jwks_url: String,
    /// When set, a token's `aud` must contain it. Unset: `aud` is not checked
    /// (what GitHub puts in runtime tokens' `aud` is not known yet).
    pub token_audience: Option<String>,
    /// Owners (organization or user logins, compared case-insensitively
    /// with the token's `repository_owner` claim) whose tokens are accepted.
    /// Empty: hangar fills in the owner of `[scheduler] runner_scope`; with
    /// neither, no token is accepted.
    pub allowed_owners: Vec<String>,
    /// Repositories whose tokens are accepted, whatever their owner.
    pub allowed_repository_ids: Vec<i64>,
    /// Development only: accept tokens without verifying them. Refused
    /// unless hangar listens on loopback only.
    pub insecure_skip_token_verification: bool,
    /// The origin put into signed upload/download URLs (e.g. `http://10.0.0.1:8080`).
    /// Default: `http://` + the request's `Host` header.
    pub public_url: Option<String>,
    /// Secret for signing URLs (hex or any string). Default: random per process,
    /// so URLs handed out before a restart stop working.
    pub url_signing_key: Option<hangar_types::Secret>,
    /// How long signed URLs stay valid.
    #[serde(with = "duration")]
    pub url_ttl: Duration,
    /// Evict entries unused for this long.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Per-repository size cap in bytes.
    pub max_repo_bytes: u64,
    /// Cap over all repositories together, in bytes.
    pub max_total_bytes: u64,
    /// Largest single entry accepted, in bytes.
    pub max_entry_bytes: u64,
    /// Local storage only: uploads are refused while the filesystem holding
    /// the blobs has less than this many bytes free.
    pub min_free_bytes: u64,
    /// Unfinished uploads older than this are purged.
    #[serde(with = "duration")]
    pub upload_timeout: Duration,
    /// A duration (`"1h"`: that often) or `daily HH:MM` (UTC).
    pub eviction_schedule: Schedule,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            storage: None,
            token_issuer: GITHUB_ISSUER.to_owned(),
            token_jwks_url: GITHUB_JWKS_URL.to_owned(),
            token_audience: None,
            allowed_owners: Vec::new(),
            allowed_repository_ids: Vec::new(),
            insecure_skip_token_verification: false,
            public_url: None,
            url_signing_key: None,
            url_ttl: Duration::from_secs(6 * 3600),
            ttl: Duration::from_secs(7 * 86_400),
            max_repo_bytes: 10_000_000_000,
            max_total_bytes: 50_000_000_000,
            max_entry_bytes: 10_000_000_000,
            min_free_bytes: 2_000_000_000,
            upload_timeout: Duration::from_secs(30 * 60),
            eviction_schedule: Schedule::Every(Duration::from_secs(3600)),
        }
    }
}

/// A config value that does not parse; names the key and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("[cache] {key} = {value:?}: expected {expected}")]
pub struct ConfigError {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// When eviction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Schedule {
    Every(Duration),
    /// Daily at this many minutes after midnight UTC.
    DailyAt {
        minute_of_day: u32,
    },
}

/// The parsed, checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url_ttl: Duration,
    pub ttl: Duration,
    pub upload_timeout: Duration,
    pub schedule: Schedule,
    pub max_repo_bytes: u64,
    pub max_total_bytes: u64,
    pub max_entry_bytes: u64,
    pub min_free_bytes: u64,
}

impl CacheConfig {
    /// Checks every value; the first bad one is the error.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        for (key, value) in
            [("url_ttl", self.url_ttl), ("ttl", self.ttl), ("upload_timeout", self.upload_timeout)]
        {
            if value.is_zero() {
                return Err(ConfigError {
                    key,
                    value: duration::format(value),
                    expected: "more than 0s",
                });
            }
        }
        if let Some(storage) = &self.storage {
            let ok = storage.starts_with("file:///") || storage.starts_with("s3://");
            if !ok {
                return Err(ConfigError {
                    key: "storage",
                    value: storage.clone(),
                    expected: "file:///abs/dir or s3://bucket/prefix",
                });
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            {
                return Err(ConfigError {
                    key: "public_url",
                    value: url.clone(),
                    expected: "an http(s) URL",
                });
            }
        }
        for (key, value) in [
            ("max_repo_bytes", self.max_repo_bytes),
            ("max_total_bytes", self.max_total_bytes),
            ("max_entry_bytes", self.max_entry_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError {
                    key,
                    value: value.to_string(),
                    expected: "more than 0 bytes",
                });
            }
        }
        if let Some(owner) = self.allowed_owners.iter().find(|o| !valid_owner(o)) {
            return Err(ConfigError {
                key: "allowed_owners",
                value: owner.clone(),
                expected: "GitHub logins (letters, digits and `-`)",
            });
        }
        if self.token_audience.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError {
                key: "token_audience",
                value: String::new(),
                expected: "a non-empty audience, or no key at all",
            });
        }
        Ok(Settings {
            url_ttl: self.url_ttl,
            ttl: self.ttl,
            upload_timeout: self.upload_timeout,
            schedule: self.eviction_schedule,
            max_repo_bytes: self.max_repo_bytes,
            max_total_bytes: self.max_total_bytes,
            max_entry_bytes: self.max_entry_bytes,
            min_free_bytes: self.min_free_bytes,
        })
    }

    /// Refuses `insecure_skip_token_verification` unless every address the
    /// cache is served on is loopback: with it, anyone who reaches the
    /// listener can forge a token for any repository and poison its cache.
    pub fn check_listener(&self, listen: std::net::SocketAddr) -> Result<(), ConfigError> {
        if self.enabled && self.insecure_skip_token_verification && !listen.ip().is_loopback() {
            return Err(ConfigError {
                key: "insecure_skip_token_verification",
                value: format!("true (server.listen = {listen})"),
                expected: "false when hangar listens on a non-loopback address: without \
                           verification anyone who reaches the listener can write any \
                           repository's cache",
            });
        }
        Ok(())
    }
}

/// A GitHub login: ASCII letters, digits and `-` (and `_` in some
/// enterprise logins), 1 to 100 characters.
fn valid_owner(owner: &str) -> bool {
    !owner.is_empty()
        && owner.len() <= 100
        && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl TryFrom<String> for Schedule {
    type Error = String;

    /// A duration (`"1h"`) or `daily HH:MM`.
    fn try_from(text: String) -> Result<Schedule, String> {
        let expected = "expected a duration such as \"1h\" (that often) or \"daily HH:MM\" (UTC)";
        let text = text.trim();
        if let Some(every) = text.strip_prefix("every ") {
            return Err(format!("{expected}: write {:?} for {text:?}", every.trim()));
        }
        if let Some(at) = text.strip_prefix("daily ") {
            let minute_of_day = at.trim().split_once(':').and_then(|(h, m)| {
                let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
                (h < 24 && m < 60).then_some(h * 60 + m)
            });
            return minute_of_day
                .map(|minute_of_day| Schedule::DailyAt { minute_of_day })
                .ok_or_else(|| format!("{expected}, got {text:?}"));
        }
        match duration::parse(text) {
            Ok(every) if !every.is_zero() => Ok(Schedule::Every(every)),
            _ => Err(format!("{expected}, got {text:?}")),
        }
    }
}

impl Schedule {
    /// How long from `now_ms` (unix ms) until the next run.
    pub fn delay_from(self, now_ms: i64) -> Duration {
        match self {
            Schedule::Every(d) => d,
            Schedule::DailyAt { minute_of_day } => {
                let day_ms: i64 = 86_400_000;
                let target = i64::from(minute_of_day) * 60_000;
                let into_day = now_ms.rem_euclid(day_ms);
                let wait = (target - into_day).rem_euclid(day_ms);
                let wait = if wait == 0 { day_ms } else { wait };
                Duration::from_millis(u64::try_from(wait).unwrap_or(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_match_github() {
        let s = CacheConfig::default().settings().unwrap();
        assert_eq!(s.ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(s.upload_timeout, Duration::from_secs(1800));
        assert_eq!(s.max_repo_bytes, 10_000_000_000);
        assert_eq!(s.schedule, Schedule::Every(Duration::from_secs(3600)));
    }

    #[test]
    fn toml_section_parses_and_rejects_unknown_keys() {
        let c: CacheConfig =
            parse(r#"{"storage":"s3://b/p","ttl":"72h","eviction_schedule":"daily 03:00"}"#)
                .unwrap();
        let s = c.settings().unwrap();
        assert_eq!(s.ttl, Duration::from_secs(72 * 3600));
        assert_eq!(s.schedule, Schedule::DailyAt { minute_of_day: 180 });
        let c = parse(r#"{"eviction_schedule":"30m"}"#).unwrap();
        assert_eq!(c.eviction_schedule, Schedule::Every(Duration::from_secs(1800)));
        assert!(parse(r#"{"stroage":"x"}"#).is_err());
    }

    fn parse(json: &str) -> Result<CacheConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_values_name_the_key_and_old_spellings_say_the_new_one() {
        assert!(parse(r#"{"ttl":"soon"}"#).unwrap_err().contains("expected a duration"));
        let old = parse(r#"{"eviction_schedule":"every 1h"}"#).unwrap_err();
        assert!(old.contains(r#"write "1h""#), "{old}");
        assert!(parse(r#"{"eviction_schedule":"daily 25:00"}"#).is_err());
        let c = CacheConfig { storage: Some("/tmp/x".into()), ..CacheConfig::default() };
        assert_eq!(c.settings().unwrap_err().key, "storage");
        let c = CacheConfig { ttl: Duration::ZERO, ..CacheConfig::default() };
        assert_eq!(c.settings().unwrap_err().key, "ttl");
    }

    #[test]
    fn daily_schedule_waits_until_the_time() {
        let s = Schedule::DailyAt { minute_of_day: 180 };
        // 01:00 UTC → two hours.
        assert_eq!(s.delay_from(3_600_000), Duration::from_secs(7200));
        // 03:00 exactly → a full day.
        assert_eq!(s.delay_from(3 * 3_600_000), Duration::from_secs(86_400));
        // 04:00 → 23 h.
        assert_eq!(s.delay_from(4 * 3_600_000), Duration::from_secs(23 * 3600));
    }
}
