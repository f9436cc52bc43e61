//! Client authentication at the token, introspection and revocation endpoints: `client_secret_basic` (RFC 6749
//! §2.3.1: the client id and secret are form-urlencoded, then joined by `:` inside HTTP Basic) and
//! `client_secret_post` (`client_id` and `client_secret` in the body). A request uses exactly one method.
//!
//! An unknown client and a wrong secret get the same answer after the same work (an HMAC against a decoy hash), so
//! the response does not tell which client ids exist.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::config::Client;
use crate::form::{Form, decode_component};
use crate::oauth::OAuthError;
use crate::secret::{MAX_CLIENT_SECRET_CHARS, SecretHasher};

/// A client authentication method (discovery's `token_endpoint_auth_methods_supported`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client (RFC 6749 §2.1): only `client_id` in the body, no secret. Allowed only for the
    /// authorization code (with PKCE) and refresh token grants and for revoking its own tokens, never for
    /// `client_credentials` or introspection.
    None,
    /// A JWT signed with the client's registered key (RFC 7523 §2.2; see [`crate::private_key_jwt`]).
    PrivateKeyJwt,
}

impl AuthMethod {
    /// Every implemented method.
    pub const ALL: [AuthMethod; 4] = [
        AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretPost,
        AuthMethod::None,
        AuthMethod::PrivateKeyJwt,
    ];

    /// The registered name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::None => "none",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// An authenticated client and how it authenticated.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The client.
    pub client: Arc<Client>,
    /// The method it used.
    pub method: AuthMethod,
}

/// The registered clients by id.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    by_id: HashMap<String, Arc<Client>>,
}

impl ClientRegistry {
    /// Indexes `clients` (ids are unique: the config checked).
    pub fn new(clients: &[Arc<Client>]) -> ClientRegistry {
        ClientRegistry {
            by_id: clients
                .iter()
                .map(|c| (c.id.clone(), Arc::clone(c)))
                .collect(),
        }
    }

    /// The client with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Client>> {
        self.by_id.get(id)
    }

    /// Every client.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_id.values()
    }
}

/// Authenticates the client of a request from its headers and form.
pub fn authenticate(
    headers: &HeaderMap,
    form: &Form<'_>,
    clients: &ClientRegistry,
    hasher: &SecretHasher,
) -> Result<Authenticated, OAuthError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    let header = auth.next();
    if auth.next().is_some() {
        return Err(OAuthError::invalid_request(
            "more than one Authorization header",
        ));
    }
    let basic = match header {
        Some(v) => Some(parse_basic(v.as_bytes())?),
        None => None,
    };
    let post_secret = form.get("client_secret");
    let post_id = form.get("client_id");
    match (basic, post_secret) {
        (Some(_), Some(_)) => Err(OAuthError::invalid_request(
            "the client authenticated with both client_secret_basic and client_secret_post; use exactly one",
        )),
        (Some((id, secret)), None) => {
            if post_id.is_some_and(|p| p != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the one in HTTP Basic",
                ));
            }
            check(clients, hasher, &id, &secret, AuthMethod::ClientSecretBasic)
        }
        (None, Some(secret)) => {
            let id = post_id.ok_or_else(|| OAuthError::missing("client_id"))?;
            check(clients, hasher, id, secret, AuthMethod::ClientSecretPost)
        }
        (None, None) => match post_id.and_then(|id| clients.get(id)) {
            // A public client identifies itself only; what it may do is limited per endpoint and grant.
            Some(c) if c.auth_method == Some(AuthMethod::None) => Ok(Authenticated {
                client: Arc::clone(c),
                method: AuthMethod::None,
            }),
            _ => Err(OAuthError::invalid_client(
                "no client authentication: use client_secret_basic or client_secret_post",
                true,
            )),
        },
    }
}

fn check(
    clients: &ClientRegistry,
    hasher: &SecretHasher,
    id: &str,
    secret: &str,
    method: AuthMethod,
) -> Result<Authenticated, OAuthError> {
    let client = clients.get(id);
    // An over-long secret cannot match a registered one; refusing it before hashing bounds the work per request.
    let ok = secret.len() <= MAX_CLIENT_SECRET_CHARS
        && hasher.verify(secret.as_bytes(), client.and_then(|c| c.secret.as_ref()));
    match client {
        // A client registered for one secret method may not use the other (checked after the same work).
        Some(c) if ok && c.auth_method.is_none_or(|m| m == method) => Ok(Authenticated {
            client: Arc::clone(c),
            method,
        }),
        _ => Err(OAuthError::invalid_client(
            "client authentication failed",
            method == AuthMethod::ClientSecretBasic,
        )),
    }
}

/// Parses `Basic <base64(urlencode(id):urlencode(secret))>`. Anything else in `Authorization` is `invalid_client`
/// with a 401 and the Basic challenge (RFC 6749 §5.2).
fn parse_basic(value: &[u8]) -> Result<(String, String), OAuthError> {
    let fail = |why: &'static str| OAuthError::invalid_client(why, true);
    let value = std::str::from_utf8(value).map_err(|_| fail("malformed Authorization header"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| fail("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(fail(
            "unsupported authentication scheme: use Basic (client_secret_basic) or client_secret_post",
        ));
    }
    let decoded = STANDARD
        .decode(rest.trim_matches(' '))
        .map_err(|_| fail("HTTP Basic credentials are not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| fail("HTTP Basic credentials are not UTF-8"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| fail("HTTP Basic credentials have no ':'"))?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before they are joined.
    let id = decode_component(id).map_err(|_| fail("client id in HTTP Basic is malformed"))?;
    let secret =
        decode_component(secret).map_err(|_| fail("client secret in HTTP Basic is malformed"))?;
    if id.is_empty() {
        return Err(fail("empty client id in HTTP Basic"));
    }
    Ok((id.into_owned(), secret.into_owned()))
}

/// The `Authorization` value for `client_secret_basic` (what a client sends; tests and benches use it).
pub fn basic_header(client_id: &str, secret: &str) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
                out.push(b as char);
            } else if b == b' ' {
                out.push('+');
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn basic_round_trips_with_reserved_characters() {
        let h = basic_header("my:client", "s3cret+/=%");
        let (id, secret) = parse_basic(h.as_bytes()).unwrap();
        assert_eq!(id, "my:client");
        assert_eq!(secret, "s3cret+/=%");
    }

    #[test]
    fn malformed_basic_is_invalid_client_with_a_challenge() {
        for bad in [
            "Bearer abc",
            "Basic",
            "Basic !!!",
            "Basic bm9jb2xvbg==",     // "nocolon"
            "Basic OnNlY3JldA==",     // ":secret"
            "Basic JXp6OnNlY3JldA==", // "%zz:secret"
        ] {
            let e = parse_basic(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, crate::oauth::ErrorCode::InvalidClient, "{bad}");
            assert_eq!(e.status, http::StatusCode::UNAUTHORIZED, "{bad}");
        }
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        let e = authenticate(
            &h,
            &Form::default(),
            &ClientRegistry::default(),
            &SecretHasher::new(&[0; 32]),
        )
        .unwrap_err();
        assert_eq!(e.code, crate::oauth::ErrorCode::InvalidRequest);
    }
}
