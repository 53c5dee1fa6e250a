//! Who is asking: the job's runtime token, verified.
//!
//! `@actions/cache` sends the job's `ACTIONS_RUNTIME_TOKEN` as a bearer token
//! on every API call. It is a JWT signed by GitHub; we verify it against the
//! configured issuer's JWKS (RS256 only, `iss`, `exp`, `nbf`, and `aud` when
//! `token_audience` is set) and read `repository_id` (a number or a numeric
//! string), `repository_owner` and `ac`, a JSON *string* holding
//! `[{"Scope": "<ref>", "Permission": <bits>}]` with bit 1 = read and bit 2 =
//! write. A verified token is then checked against the allow-list
//! (`allowed_owners`, `allowed_repository_ids`): a token of any other
//! repository on github.com is refused (403), whoever signed it.
//!
//! Keys are fetched on first use and again when an unknown `kid` appears,
//! but at most once per [`JWKS_REFRESH_MIN`] whatever the outcome, and never
//! under a lock other requests wait on: the key set is swapped in whole, a
//! token with a known `kid` never waits for a fetch, and concurrent requests
//! with unknown `kid`s share the one fetch under way (or, between fetches,
//! are refused at once). A storm of random `kid`s therefore costs the issuer
//! one request per [`JWKS_REFRESH_MIN`] and stalls nobody else.
//!
//! The issuer: the default, `https://token.actions.githubusercontent.com`,
//! is GitHub's OIDC issuer. Runtime tokens observed in the wild carry
//! `iss: vstoken.actions.githubusercontent.com` instead
//! (`shared/research/cache-protocol.md` §3.4, §8), and whether they verify
//! against that JWKS is not known: see `docs/cache.md`.
//!
//! The development switch (`insecure_skip_token_verification`) still parses
//! the claims but does not check the signature, the issuer or the
//! allow-list; config loading refuses it unless hangar listens on loopback
//! only, and it is logged at `warn` when the server starts and on every
//! request it lets through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hangar_types::RepositoryId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;

/// Fetch the JWKS at most this often, whether the last fetch worked or not.
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

/// Why a token was refused (HTTP 401; [`TokenError::NotAllowed`] is 403).
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
    #[error(
        "repository {repository_id} (owner {owner:?}) is not in the cache's allow-list \
         ([cache] allowed_owners, allowed_repository_ids)"
    )]
    NotAllowed { repository_id: i64, owner: Option<String> },
    #[error("fetching the issuer's keys from {url}: {message}")]
    Jwks { url: String, message: String },
}

#[derive(Debug, Deserialize)]
struct Claims {
    repository_id: Option<serde_json::Value>,
    repository_owner: Option<String>,
    ac: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct AcScope {
    #[serde(rename = "Scope")]
    scope: String,
    #[serde(rename = "Permission")]
    permission: i64,
}

/// Who may use the cache once their token verifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Lower-cased owner logins.
    pub owners: Vec<String>,
    pub repository_ids: Vec<i64>,
}

impl AllowList {
    pub fn new(owners: &[String], repository_ids: &[i64]) -> AllowList {
        AllowList {
            owners: owners.iter().map(|o| o.to_ascii_lowercase()).collect(),
            repository_ids: repository_ids.to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.repository_ids.is_empty()
    }

    fn allows(&self, repository_id: i64, owner: Option<&str>) -> bool {
        self.repository_ids.contains(&repository_id)
            || owner.is_some_and(|o| self.owners.contains(&o.to_ascii_lowercase()))
    }
}

/// What tokens must satisfy, beyond a good signature.
#[derive(Debug, Clone)]
pub struct Policy {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: Option<String>,
    pub allow: AllowList,
    /// Fetch the JWKS at most this often ([`JWKS_REFRESH_MIN`]).
    pub refresh_min: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            issuer: String::new(),
            jwks_url: String::new(),
            audience: None,
            allow: AllowList::default(),
            refresh_min: JWKS_REFRESH_MIN,
        }
    }
}

/// Verifies runtime tokens.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

type FetchResult = Result<Arc<Keys>, String>;

#[derive(Debug)]
struct Inner {
    policy: Policy,
    skip_verification: bool,
    http: reqwest::Client,
    state: SyncMutex<KeyState>,
}

/// The current keys and the fetch bookkeeping, behind a lock that is only
/// ever held for a few instructions (never across an await).
#[derive(Default)]
struct KeyState {
    keys: Arc<Keys>,
    /// When the last fetch started (successful or not).
    last_attempt: Option<Instant>,
    /// The fetch under way, shared by every request that waits for it.
    in_flight: Option<Shared<BoxFuture<'static, FetchResult>>>,
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState").field("keys", &self.keys).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys without a `kid`, tried in order.
    anonymous: Vec<DecodingKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keys {
    fn candidates(&self, kid: Option<&str>) -> Vec<DecodingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned().into_iter().collect(),
            None => self.anonymous.iter().chain(self.by_kid.values()).cloned().collect(),
        }
    }
}

impl TokenVerifier {
    /// Verifies tokens as `policy` says.
    pub fn new(policy: Policy) -> TokenVerifier {
        if policy.allow.is_empty() {
            tracing::warn!(
                "cache: no allow-list ([cache] allowed_owners / allowed_repository_ids, or \
                 [scheduler] runner_scope): every token is refused"
            );
        }
        Self::build(policy, false)
    }

    /// Accepts any well-formed token without checking who signed it.
    /// For development only.
    pub fn insecure_skip_verification() -> TokenVerifier {
        tracing::warn!(
            "cache: TOKEN VERIFICATION IS OFF (insecure_skip_token_verification = true): \
             any client can read and write any repository's cache"
        );
        Self::build(Policy::default(), true)
    }

    fn build(policy: Policy, skip_verification: bool) -> TokenVerifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client with default TLS builds");
        TokenVerifier {
            inner: Arc::new(Inner {
                policy,
                skip_verification,
                http,
                state: SyncMutex::new(KeyState::default()),
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
        if self.inner.skip_verification {
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
            let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
                .map_err(TokenError::Invalid)?
                .claims;
            return identity_from(&claims);
        }
        // Only RS256: `alg: none` does not parse, and an HS256 token (say,
        // "signed" with the public key's PEM as the secret) fails here.
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid(
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into(),
            ));
        }
        let policy = &self.inner.policy;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&policy.issuer]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        match &policy.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
            }
            None => {
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "nbf", "iss"]);
            }
        }
        let keys = self.key_for(header.kid.as_deref()).await?;
        let mut last = None;
        let mut verified = None;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let claims = match (verified, last) {
            (Some(claims), _) => claims,
            (None, Some(e)) => return Err(TokenError::Invalid(e)),
            (None, None) => return Err(TokenError::UnknownKey { kid: header.kid }),
        };
        let identity = identity_from(&claims)?;
        let owner = claims.repository_owner.as_deref();
        if !policy.allow.allows(identity.repository_id.0, owner) {
            return Err(TokenError::NotAllowed {
                repository_id: identity.repository_id.0,
                owner: owner.map(str::to_owned),
            });
        }
        Ok(identity)
    }

    /// The candidate keys for `kid`. An unknown `kid` waits for the fetch
    /// under way, or starts one if none started in the last
    /// `refresh_min`, or else is answered at once with no keys.
    async fn key_for(&self, kid: Option<&str>) -> Result<Vec<DecodingKey>, TokenError> {
        let fetch = {
            let mut state = self.inner.state.lock().expect("token key state lock");
            let known = match kid {
                Some(kid) => state.keys.by_kid.contains_key(kid),
                None => !state.keys.anonymous.is_empty() || !state.keys.by_kid.is_empty(),
            };
            if known {
                return Ok(state.keys.candidates(kid));
            }
            match &state.in_flight {
                Some(fetch) => fetch.clone(),
                None if state
                    .last_attempt
                    .is_some_and(|at| at.elapsed() < self.inner.policy.refresh_min) =>
                {
                    return Ok(state.keys.candidates(kid));
                }
                None => {
                    state.last_attempt = Some(Instant::now());
                    let fetch = self.start_fetch();
                    state.in_flight = Some(fetch.clone());
                    fetch
                }
            }
        };
        match fetch.await {
            Ok(keys) => Ok(keys.candidates(kid)),
            Err(message) => {
                Err(TokenError::Jwks { url: self.inner.policy.jwks_url.clone(), message })
            }
        }
    }

    /// Starts a fetch in its own task (so it completes, and installs its
    /// keys, even if every request waiting for it goes away).
    fn start_fetch(&self) -> Shared<BoxFuture<'static, FetchResult>> {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = match this.fetch().await {
                Ok(keys) => Ok(Arc::new(keys)),
                Err(e) => Err(hangar_types::ErrorChain(&e).to_string()),
            };
            {
                let mut state = this.inner.state.lock().expect("token key state lock");
                state.in_flight = None;
                if let Ok(keys) = &result {
                    state.keys = keys.clone();
                }
            }
            if let Err(message) = &result {
                tracing::warn!(
                    error = message.as_str(),
                    "cache: fetching the token issuer's keys failed"
                );
            }
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(format!("the key fetch task failed: {e}"))) }
            .boxed()
            .shared()
    }

    async fn fetch(&self) -> Result<Keys, reqwest::Error> {
        let url = &self.inner.policy.jwks_url;
        let set: JwkSet = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)?
            .json()
            .await?;
        let mut keys = Keys::default();
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
        Claims { repository_id: Some(repo), repository_owner: None, ac: Some(ac) }
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
        assert!(
            identity_from(&Claims {
                repository_id: Some(1.into()),
                repository_owner: None,
                ac: None
            })
            .is_err()
        );
        assert!(identity_from(&claims(1.into(), "not json".into())).is_err());
        assert!(identity_from(&claims(1.into(), ac)).is_ok());
    }
}

#[cfg(test)]
mod allow_tests {
    use super::AllowList;

    #[test]
    fn owners_compare_case_insensitively_and_ids_exactly() {
        let allow = AllowList::new(&["My-Org".into()], &[42]);
        assert!(allow.allows(1, Some("my-org")));
        assert!(allow.allows(42, Some("someone-else")));
        assert!(allow.allows(42, None));
        assert!(!allow.allows(1, Some("my-org-evil")));
        assert!(!allow.allows(1, None));
        assert!(!AllowList::default().allows(1, Some("my-org")));
    }
}
