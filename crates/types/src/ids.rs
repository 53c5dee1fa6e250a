//! Typed ids. A bare `i64` or `String` never crosses a crate boundary as an id.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! int_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// GitHub's `workflow_job.id`: the key of a job everywhere in hangar.
    JobId
);
int_id!(
    /// GitHub's `workflow_job.run_id`.
    RunId
);
int_id!(
    /// GitHub's `installation.id`, present on deliveries to a GitHub App.
    InstallationId
);
int_id!(
    /// GitHub's numeric id of a self-hosted runner registration (`runner.id`,
    /// `workflow_job.runner_id`). Not hangar's [`RunnerId`], which is its name.
    GitHubRunnerId
);
int_id!(
    /// GitHub's `repository.id`; the cache keys entries by it (from the
    /// job's runtime token).
    #[derive(Default)]
    RepositoryId
);
int_id!(
    /// The id the store gives a cache entry when it is reserved.
    CacheEntryId
);

/// GitHub's `X-GitHub-Delivery` GUID. A redelivery carries the same value as
/// the original, which is what makes it the deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(pub String);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a pool of runners, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PoolName(pub String);

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id hangar gives a runner before any side effect happens.
///
/// The same string is the runner's name on GitHub and its instance name in
/// the provider, so every launch and teardown step can be retried and every
/// leftover can be traced back: anything named `hangar-…` that the store does
/// not know is an orphan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunnerId(String);

/// Why a string is not a valid [`RunnerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid runner id {value:?}: expected `hangar-` followed by 1 to 56 of [a-z0-9-]")]
pub struct RunnerIdError {
    value: String,
}

impl RunnerId {
    /// Every runner id starts with this; GitHub registrations and provider
    /// instances carrying it belong to hangar.
    pub const PREFIX: &'static str = "hangar-";

    /// Builds the id of a new runner of `pool` from caller-supplied entropy.
    pub fn new(pool: &PoolName, entropy: u64) -> RunnerId {
        let pool: String = pool
            .0
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .take(32)
            .collect();
        RunnerId(format!("{}{pool}-{entropy:016x}", Self::PREFIX))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunnerId {
    type Error = RunnerIdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let rest = value.strip_prefix(Self::PREFIX).unwrap_or("");
        let valid = !rest.is_empty()
            && rest.len() <= 56
            && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid { Ok(RunnerId(value)) } else { Err(RunnerIdError { value }) }
    }
}

impl From<RunnerId> for String {
    fn from(id: RunnerId) -> String {
        id.0
    }
}

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that never shows itself in `Debug` or `Display`. Config files
/// deserialize into it directly, so a secret is never a plain `String` that
/// a derived `Debug` would print.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must hand it on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_ids_round_trip_and_reject_foreign_names() {
        let id = RunnerId::new(&PoolName("Linux_X64".into()), 0xdead_beef);
        assert_eq!(id.as_str(), "hangar-linux-x64-00000000deadbeef");
        assert_eq!(RunnerId::try_from(id.to_string()), Ok(id));
        assert!(RunnerId::try_from("GitHub Actions 5".to_string()).is_err());
        assert!(RunnerId::try_from("hangar-".to_string()).is_err());
        assert!(RunnerId::try_from("hangar-UPPER".to_string()).is_err());
    }
}
