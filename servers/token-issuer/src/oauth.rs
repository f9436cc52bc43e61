//! OAuth error responses (RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 8707 §2) and the JSON response helpers every endpoint
//! shares.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The `WWW-Authenticate` challenge of a 401 at the client-authenticated endpoints (RFC 7617 requires a realm).
pub const BASIC_CHALLENGE: &str = r#"Basic realm="token-issuer", charset="UTF-8""#;

/// An OAuth `error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A parameter is missing, repeated, malformed, or the request is otherwise malformed (RFC 6749 §5.2).
    InvalidRequest,
    /// Client authentication failed: unknown client, wrong secret, none given, unsupported method (RFC 6749 §5.2).
    InvalidClient,
    /// The grant (code, refresh token, assertion) is invalid, expired or revoked (RFC 6749 §5.2).
    InvalidGrant,
    /// The authenticated client may not use this grant, or act on this token (RFC 6749 §5.2, RFC 7009 §2.1).
    UnauthorizedClient,
    /// The grant type is not implemented (RFC 6749 §5.2).
    UnsupportedGrantType,
    /// The scope is malformed, unknown, or more than the client may have (RFC 6749 §5.2).
    InvalidScope,
    /// A `resource` is not an absolute URI or not allowed for the client (RFC 8707 §2).
    InvalidTarget,
    /// The token type cannot be revoked (RFC 7009 §2.2.1).
    UnsupportedTokenType,
    /// The server failed (RFC 6749 §4.1.2.1); never for bad input.
    ServerError,
    /// The server cannot take the request now, e.g. the revocation set is full (RFC 6749 §4.1.2.1, RFC 7009
    /// §2.2.1); retry later.
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// Every code (metrics labels are registered for each).
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidClient,
        ErrorCode::InvalidGrant,
        ErrorCode::UnauthorizedClient,
        ErrorCode::UnsupportedGrantType,
        ErrorCode::InvalidScope,
        ErrorCode::InvalidTarget,
        ErrorCode::UnsupportedTokenType,
        ErrorCode::ServerError,
        ErrorCode::TemporarilyUnavailable,
    ];

    /// The `error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// Index into [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth error answer: code, description, HTTP status and, for a 401, the challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    /// The `error` code.
    pub code: ErrorCode,
    /// The `error_description` (for developers, never for end users).
    pub description: Cow<'static, str>,
    /// The HTTP status: 400 unless said otherwise.
    pub status: StatusCode,
    /// `WWW-Authenticate` to send (with a 401).
    pub challenge: Option<&'static str>,
    /// `Retry-After` seconds to send (with a 503 `temporarily_unavailable`).
    pub retry_after_s: Option<u64>,
}

impl OAuthError {
    /// A 400 with `code`.
    pub fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError {
            code,
            description: description.into(),
            status: StatusCode::BAD_REQUEST,
            challenge: None,
            retry_after_s: None,
        }
    }

    /// `invalid_request` (400).
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError::new(ErrorCode::InvalidRequest, description)
    }

    /// `invalid_request` naming a missing parameter.
    pub fn missing(param: &'static str) -> OAuthError {
        OAuthError::invalid_request(format!("missing parameter: {param}"))
    }

    /// `invalid_client`: 401 with a Basic challenge when the client tried HTTP Basic or sent no credentials (RFC
    /// 6749 §5.2 requires the 401 for the former; RFC 7235 requires the challenge with every 401); 400 when it
    /// authenticated in the body (`client_secret_post`).
    pub fn invalid_client(
        description: impl Into<Cow<'static, str>>,
        with_challenge: bool,
    ) -> OAuthError {
        let mut e = OAuthError::new(ErrorCode::InvalidClient, description);
        if with_challenge {
            e.status = StatusCode::UNAUTHORIZED;
            e.challenge = Some(BASIC_CHALLENGE);
        }
        e
    }

    /// Changes the status.
    pub fn with_status(mut self, status: StatusCode) -> OAuthError {
        self.status = status;
        self
    }

    /// A 503 `temporarily_unavailable` with `Retry-After: retry_after_s` (a bounded store is full).
    pub fn unavailable(
        description: impl Into<Cow<'static, str>>,
        retry_after_s: u64,
    ) -> OAuthError {
        let mut e = OAuthError::new(ErrorCode::TemporarilyUnavailable, description)
            .with_status(StatusCode::SERVICE_UNAVAILABLE);
        e.retry_after_s = Some(retry_after_s.max(1));
        e
    }

    /// The response: JSON `{"error", "error_description"}` with `Cache-Control: no-store` and `Pragma: no-cache`.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "error_description": sanitize_description(&self.description),
        });
        let mut r = json_response(self.status, serde_json::to_vec(&body).unwrap_or_default());
        no_store(&mut r);
        if let Some(c) = self.challenge {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Keeps only what RFC 6749 §5.2 allows in `error_description` (`%x20-21 / %x23-5B / %x5D-7E`): `"` becomes `'`,
/// `\` and anything non-ASCII or control becomes `?`.
pub fn sanitize_description(s: &str) -> Cow<'_, str> {
    let ok = |c: char| c == ' ' || c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c);
    if s.chars().all(ok) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '"' => '\'',
                c if ok(c) => c,
                _ => '?',
            })
            .collect(),
    )
}

/// A JSON response with `status` and `body`.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Marks a response that carries tokens or token state as uncacheable (RFC 6749 §5.1).
pub fn no_store(r: &mut Response<Full<Bytes>>) {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_keep_only_allowed_characters() {
        assert_eq!(
            sanitize_description("missing parameter: scope"),
            "missing parameter: scope"
        );
        assert_eq!(sanitize_description("scope \"x\\y\" é"), "scope 'x?y' ?");
    }

    #[test]
    fn invalid_client_with_challenge_is_a_401() {
        let e = OAuthError::invalid_client("bad secret", true);
        let r = e.to_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], BASIC_CHALLENGE);
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        let r = OAuthError::invalid_client("bad secret", false).to_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
    }
}
