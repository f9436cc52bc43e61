//! The UserInfo endpoint (OIDC Core §5.3): `GET` or `POST /userinfo` with `Authorization: Bearer <access token>`
//! (RFC 6750 §2.1; the token in a form body or query is not accepted). The token must verify with this issuer
//! (signature, `typ`, expiry, revocation) and carry the `openid` scope, and its `sub` must be a user (a
//! `client_credentials` token's `sub` is a client: `invalid_token`). The answer is `sub` and, per scope, `name`
//! (`profile`) and `email` (`email`).
//!
//! Errors follow RFC 6750 §3: no token is a 401 with a bare `Bearer` challenge; a bad token 401 with
//! `error="invalid_token"`; a token without `openid` 403 with `error="insufficient_scope"`.

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::app::Issuer;
use crate::id_token::has_scope;
use crate::oauth::{json_response, no_store};

/// The realm of the Bearer challenge.
const REALM: &str = "token-issuer";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
}

fn challenge(
    status: StatusCode,
    error: Option<(&str, &str)>,
    scope: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut value = format!("Bearer realm=\"{REALM}\"");
    let body = match error {
        Some((code, description)) => {
            let description = crate::oauth::sanitize_description(description);
            value.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
            serde_json::json!({"error": code, "error_description": description})
        }
        None => {
            serde_json::json!({"error": "invalid_request", "error_description": "no bearer token"})
        }
    };
    if let Some(s) = scope {
        value.push_str(&format!(", scope=\"{s}\""));
    }
    let mut r = json_response(status, serde_json::to_vec(&body).unwrap_or_default());
    no_store(&mut r);
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

fn invalid_token(description: &str) -> Response<Full<Bytes>> {
    challenge(
        StatusCode::UNAUTHORIZED,
        Some(("invalid_token", description)),
        None,
    )
}

/// Answers `/userinfo`.
pub fn userinfo(issuer: &Issuer, parts: &Parts) -> Response<Full<Bytes>> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return challenge(StatusCode::UNAUTHORIZED, None, None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return challenge(StatusCode::UNAUTHORIZED, None, None);
    };
    let now_s = issuer.clock().now_s();
    let claims = match issuer.verify(token, now_s) {
        Ok(c) => c,
        Err(e) => return invalid_token(&format!("the access token is not active: {e}")),
    };
    let scope = claims.scope.as_deref().unwrap_or("");
    if !has_scope(scope, "openid") {
        return challenge(
            StatusCode::FORBIDDEN,
            Some((
                "insufficient_scope",
                "the access token lacks the openid scope",
            )),
            Some("openid"),
        );
    }
    let Some(user) = issuer.flows().user_by_sub(&claims.sub) else {
        return invalid_token("the access token was not issued for a user");
    };
    let body = Claims {
        sub: &user.sub,
        name: user.name.as_deref().filter(|_| has_scope(scope, "profile")),
        email: user.email.as_deref().filter(|_| has_scope(scope, "email")),
    };
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    no_store(&mut r);
    r
}
