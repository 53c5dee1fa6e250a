//! Who may use the admin API.
//!
//! Bound to loopback, the API is open: only local users can reach it. On
//! any other address every request needs `Authorization: Bearer <token>`,
//! and without a configured token the API is closed (403) rather than open.
//! Handlers take an [`Operator`], which only this check can produce.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, ServerState};

/// How the admin API is protected; decided once at startup.
#[derive(Clone)]
pub enum ApiAccess {
    /// Listening on loopback: no token needed.
    Loopback,
    /// A bearer token is required (its SHA-256, compared in constant time).
    Token([u8; 32]),
    /// Not loopback and no token configured: the API refuses everyone.
    Closed,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiAccess::Loopback => "Loopback",
            ApiAccess::Token(_) => "Token(***)",
            ApiAccess::Closed => "Closed",
        })
    }
}

impl ApiAccess {
    pub fn new(listen_is_loopback: bool, token: Option<&str>) -> ApiAccess {
        match (listen_is_loopback, token) {
            (_, Some(token)) => ApiAccess::Token(Sha256::digest(token.as_bytes()).into()),
            (true, None) => ApiAccess::Loopback,
            (false, None) => ApiAccess::Closed,
        }
    }
}

/// Proof that the request may use the admin API.
#[derive(Debug)]
pub(crate) struct Operator;

impl FromRequestParts<ServerState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Operator, ApiError> {
        let expected = match &state.access {
            ApiAccess::Loopback => return Ok(Operator),
            ApiAccess::Closed => {
                return Err(ApiError::Forbidden(
                    "the admin API is closed: hangar listens beyond loopback and has no api_token \
                     (set [server] api_token or HANGAR_API_TOKEN)"
                        .into(),
                ));
            }
            ApiAccess::Token(expected) => expected,
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Equal-length digests compared in constant time leak nothing about the token.
        if bool::from(presented.ct_eq(expected)) {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized("the bearer token is not valid".into()))
        }
    }
}
