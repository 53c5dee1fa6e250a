//! Who may use the admin API.
//!
//! Decided per router, never by addresses (behind a reverse proxy every
//! peer is loopback): on the admin listener the API is open unless a token
//! is configured; on the public listener the admin routes exist only with a
//! token, and every request must carry `Authorization: Bearer <token>`.
//! Handlers take an [`Operator`], which only this check can produce.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, ServerState};

/// How the admin API is protected on one router.
#[derive(Clone)]
pub enum ApiAccess {
    /// The admin listener without a token: reaching it is enough.
    Open,
    /// A bearer token is required (its SHA-256, compared in constant time).
    Token([u8; 32]),
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiAccess::Open => "Open",
            ApiAccess::Token(_) => "Token(***)",
        })
    }
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
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
            ApiAccess::Open => return Ok(Operator),
            ApiAccess::Token(expected) => expected,
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let presented = digest(presented);
        // Equal-length digests compared in constant time leak nothing about the token.
        if bool::from(presented.ct_eq(expected)) {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized("the bearer token is not valid".into()))
        }
    }
}
