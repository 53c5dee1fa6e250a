//! Who is asking: the job's runtime token, verified.
//!
//! `@actions/cache` sends the job's `ACTIONS_RUNTIME_TOKEN` as a bearer token
//! on every API call. It is a JWT signed by GitHub; we verify it against the
//! configured issuer's JWKS (RS256, `iss`, `exp`, `nbf`) and read
//! `repository_id` (a number or a numeric string) and `ac`, a JSON *string*
//! holding `[{"Scope": "<ref>", "Permission": <bits>}]` with bit 1 = read and
//! bit 2 = write. Keys are fetched once and again when an unknown `kid`
//! appears (at most every [`JWKS_REFRESH_MIN`]).
//!
//! The development switch (`insecure_skip_token_verification`) still parses
//! the claims but does not check the signature or the issuer; it is logged at
//! `warn` when the server starts and on every request it lets through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_types::RepositoryId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;
use tokio::sync::Mutex;

/// Refetch the JWKS for an unknown key id at most this often.
pub const JWKS_REFRESH_MIN: Duration = Duration::from_secs(30);

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub repository_id: RepositoryId,
    /// Refs readable, in search order: the writable ref first, then the rest
    /// in the token's order (base branch, default branch).
    pub read_scopes: Vec<String>,
    /// The ref saves go to, if the token may write.
    pub write_scope: Option<String>,
}

/// Why a token was refused (always HTTP 401).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("token signed with unknown key {kid:?}")]
    UnknownKey { kid: Option<String> },
    #[error("token claim {claim} is missing or malformed")]
    Claim { claim: &'static str },
    #[error("fetching the issuer's keys from {url}")]
    Jwks {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

#[derive(Debug, Deserialize)]
struct Claims {
    repository_id: Option<serde_json::Value>,
    ac: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct AcScope {
    #[serde(rename = "Scope")]
    scope: String,
    #[serde(rename = "Permission")]
    permission: i64,
}

/// Verifies runtime tokens.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    issuer: String,
    jwks_url: String,
    skip_verification: bool,
    http: reqwest::Client,
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys without a `kid`, tried in order.
    anonymous: Vec<DecodingKey>,
    fetched_at: Option<Instant>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Verifies tokens from `issuer` with the keys at `jwks_url`.
    pub fn new(issuer: &str, jwks_url: &str) -> TokenVerifier {
        Self::build(issuer, jwks_url, false)
    }

    /// Accepts any well-formed token without checking who signed it.
    /// For development only.
    pub fn insecure_skip_verification() -> TokenVerifier {
        tracing::warn!(
            "cache: TOKEN VERIFICATION IS OFF (insecure_skip_token_verification = true): \
             any client can read and write any repository's cache"
        );
        Self::build("", "", true)
    }

    fn build(issuer: &str, jwks_url: &str, skip_verification: bool) -> TokenVerifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client with default TLS builds");
        TokenVerifier {
            inner: Arc::new(Inner {
                issuer: issuer.to_owned(),
                jwks_url: jwks_url.to_owned(),
                skip_verification,
                http,
                keys: Mutex::new(Keys::default()),
            }),
        }
    }

    /// Verifies the value of an `Authorization` header.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Identity, TokenError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Missing)?;
        self.verify(token).await
    }

    /// Verifies a bare JWT.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Invalid)?;
        let claims = if self.inner.skip_verification {
            tracing::warn!("cache: accepting a runtime token WITHOUT verifying it");
            let mut validation = Validation::new(header.alg);
            // TODO-cleanup: jsonwebtoken 10 (the workspace's version, needed by the
            // GitHub App client) deprecates this for `dangerous::insecure_decode`;
            // same behaviour, kept until the cache owner moves to it.
            #[allow(deprecated)]
            validation.insecure_disable_signature_validation();
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            let key = DecodingKey::from_secret(&[]);
            jsonwebtoken::decode::<Claims>(token, &key, &validation)
                .map_err(TokenError::Invalid)?
                .claims
        } else {
            let key = self.key_for(header.kid.as_deref()).await?;
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_issuer(&[&self.inner.issuer]);
            validation.validate_aud = false;
            validation.validate_nbf = true;
            validation.leeway = 30;
            validation.set_required_spec_claims(&["exp", "nbf", "iss"]);
            let mut last = None;
            let mut verified = None;
            for key in key {
                match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                    Ok(data) => {
                        verified = Some(data.claims);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (verified, last) {
                (Some(claims), _) => claims,
                (None, Some(e)) => return Err(TokenError::Invalid(e)),
                (None, None) => return Err(TokenError::UnknownKey { kid: header.kid }),
            }
        };
        identity_from(&claims)
    }

    /// The candidate keys for `kid`, refetching the JWKS once if it is unknown.
    async fn key_for(&self, kid: Option<&str>) -> Result<Vec<DecodingKey>, TokenError> {
        let mut keys = self.inner.keys.lock().await;
        let stale = keys.fetched_at.is_none_or(|at| at.elapsed() >= JWKS_REFRESH_MIN);
        let known = match kid {
            Some(kid) => keys.by_kid.contains_key(kid),
            None => !keys.anonymous.is_empty() || !keys.by_kid.is_empty(),
        };
        if !known && stale {
            *keys = self.fetch().await?;
        }
        Ok(match kid {
            Some(kid) => keys.by_kid.get(kid).cloned().into_iter().collect(),
            None => keys.anonymous.iter().chain(keys.by_kid.values()).cloned().collect(),
        })
    }

    async fn fetch(&self) -> Result<Keys, TokenError> {
        let url = &self.inner.jwks_url;
        let jwks_err = |source| TokenError::Jwks { url: url.clone(), source };
        let set: JwkSet = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(jwks_err)?
            .json()
            .await
            .map_err(jwks_err)?;
        let mut keys = Keys { fetched_at: Some(Instant::now()), ..Keys::default() };
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid = ?jwk.common.key_id, "cache: skipping an unusable JWKS key");
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.anonymous.push(key),
            }
        }
        tracing::info!(url = %url, keys = set.keys.len(), "cache: fetched the token issuer's keys");
        Ok(keys)
    }
}

fn identity_from(claims: &Claims) -> Result<Identity, TokenError> {
    let repository_id = match &claims.repository_id {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .map(RepositoryId)
    .ok_or(TokenError::Claim { claim: "repository_id" })?;
    let ac_err = TokenError::Claim { claim: "ac" };
    let scopes: Vec<AcScope> = match &claims.ac {
        Some(serde_json::Value::String(s)) => serde_json::from_str(s).map_err(|_| ac_err)?,
        Some(value @ serde_json::Value::Array(_)) => {
            serde_json::from_value(value.clone()).map_err(|_| ac_err)?
        }
        _ => return Err(ac_err),
    };
    let write_scope = scopes.iter().find(|s| s.permission & 2 != 0).map(|s| s.scope.clone());
    let mut read_scopes: Vec<String> = Vec::new();
    if let Some(own) = scopes.iter().find(|s| s.permission & 3 == 3) {
        read_scopes.push(own.scope.clone());
    }
    for s in scopes.iter().filter(|s| s.permission & 1 != 0) {
        if !read_scopes.contains(&s.scope) {
            read_scopes.push(s.scope.clone());
        }
    }
    Ok(Identity { repository_id, read_scopes, write_scope })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(repo: serde_json::Value, ac: serde_json::Value) -> Claims {
        Claims { repository_id: Some(repo), ac: Some(ac) }
    }

    #[test]
    fn scopes_come_from_the_ac_claim() {
        let ac = r#"[{"Scope":"refs/heads/main","Permission":1},{"Scope":"refs/heads/feature","Permission":3}]"#;
        let id = identity_from(&claims("42".into(), ac.into())).unwrap();
        assert_eq!(id.repository_id, RepositoryId(42));
        assert_eq!(id.read_scopes, ["refs/heads/feature", "refs/heads/main"]);
        assert_eq!(id.write_scope.as_deref(), Some("refs/heads/feature"));
    }

    #[test]
    fn read_only_tokens_cannot_write() {
        let ac = serde_json::json!([{"Scope":"refs/heads/main","Permission":1}]);
        let id = identity_from(&claims(7.into(), ac)).unwrap();
        assert_eq!((id.read_scopes.len(), id.write_scope), (1, None));
    }

    #[test]
    fn malformed_claims_are_refused() {
        let ac: serde_json::Value = "[]".into();
        assert!(identity_from(&claims("x".into(), ac.clone())).is_err());
        assert!(identity_from(&Claims { repository_id: Some(1.into()), ac: None }).is_err());
        assert!(identity_from(&claims(1.into(), "not json".into())).is_err());
        assert!(identity_from(&claims(1.into(), ac)).is_ok());
    }
}
