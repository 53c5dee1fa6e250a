//! Errors of the GitHub client. Each variant says which call failed and
//! carries what a caller needs to decide (retry, resolve a conflict, wait).

use hangar_types::Timestamp;

/// A failed GitHub call. `method` and `path` name the request (no query
/// string, no credentials).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitHubError {
    /// The request never got an HTTP answer (connect error, reset, timeout).
    #[error("{method} {path}: no answer from github")]
    Transport {
        method: &'static str,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// GitHub answered with a status the call does not expect.
    #[error("{method} {path}: github answered {status}: {message}")]
    Status { method: &'static str, path: String, status: u16, message: String },
    /// A list's `Link: rel="next"` that must not be followed: to another
    /// origin (the credentials would go there), or past the page cap (a
    /// page that links to itself would loop forever).
    #[error("{method} {path}: {message}")]
    Pagination { method: &'static str, path: String, message: String },
    /// 409 on `generate-jitconfig`: a runner with this name already exists
    /// (possibly created by an earlier call whose answer was lost).
    #[error("a runner named {name:?} already exists in {scope}")]
    Conflict { scope: String, name: String },
    /// 401: the credentials were refused.
    #[error("{method} {path}: github refused the credentials: {message}")]
    Unauthorized { method: &'static str, path: String, message: String },
    /// Rate limited for longer than the client is configured to wait.
    #[error("{method} {path}: rate limited until {retry_at}")]
    RateLimited { method: &'static str, path: String, retry_at: Timestamp },
    /// A poll was refused to keep the rest of the budget for essential calls.
    #[error(
        "{method} {path}: skipped, {remaining} requests left and {reserve} are kept for runner launches"
    )]
    BudgetReserved { method: &'static str, path: String, remaining: u64, reserve: u64 },
    /// The answer was not the JSON shape GitHub documents.
    #[error("{method} {path}: unexpected response body")]
    Decode {
        method: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The call needs GitHub App credentials and the client has a token.
    #[error("{operation} needs GitHub App credentials, the client has a personal access token")]
    AppAuthRequired { operation: &'static str },
    /// The App's JWT could not be signed (bad private key).
    #[error("cannot sign the GitHub App JWT")]
    Jwt {
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The client configuration is unusable.
    #[error("invalid github client configuration: {message}")]
    Config { message: String },
}

impl GitHubError {
    /// True when trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            GitHubError::Transport { .. }
            | GitHubError::RateLimited { .. }
            | GitHubError::BudgetReserved { .. } => true,
            GitHubError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status GitHub answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GitHubError::Status { status, .. } => Some(*status),
            GitHubError::Conflict { .. } => Some(409),
            GitHubError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }
}
