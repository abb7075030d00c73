//! Bearer-token authentication: every request but `GET /health` must carry
//! `Authorization: Bearer <token>` when `[rest] token` is set. The comparison takes the same time
//! wherever the first difference is; the token is never logged nor shown by `Debug`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::routes::ApiError;

/// The expected token (its `Debug` shows `***`).
#[derive(Clone)]
pub(crate) struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    pub(crate) fn new(token: String) -> Self {
        Self(token.into())
    }

    /// Whether `given` is the token, in time that depends on their lengths only.
    fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = u8::from(expected.len() != given.len());
        for (i, e) in expected.iter().enumerate() {
            // Compare against the given bytes cyclically so that the loop always runs over the
            // whole expected token.
            let g = if given.is_empty() { 0 } else { given[i % given.len()] };
            diff |= e ^ g;
        }
        diff == 0
    }
}

/// The token of an `Authorization` value of the `Bearer` scheme (its name is case-insensitive,
/// RFC 7235: `bearer x` too).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Refuses a request without the right bearer token (401, `WWW-Authenticate: Bearer`).
pub(crate) async fn require_token(
    State(token): State<Option<Token>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else { return next.run(request).await };
    let given = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match given {
        Some(g) if token.matches(g.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::unauthorized("the bearer token is not valid").into_response(),
        None => ApiError::unauthorized("this API needs an Authorization: Bearer <token> header")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches_and_debug_hides_it() {
        let t = Token::new("s3cret".into());
        assert!(t.matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"S3cret", b"xxxxxx"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{t:?}"), "Token(***)");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret ", "bEaReR s3cret"] {
            assert_eq!(bearer(value), Some("s3cret"), "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "s3cret", ""] {
            assert_eq!(bearer(value), None, "{value}");
        }
    }
}
