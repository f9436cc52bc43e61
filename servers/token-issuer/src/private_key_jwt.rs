//! `private_key_jwt` client authentication (RFC 7523 §2.2 and §3, OpenID Connect Core §9): the client signs a short
//! JWT with a private key whose public half is registered (`jwks` in its config) and sends it as `client_assertion`
//! with `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
//!
//! The assertion must have `iss` = `sub` = the client id, an `aud` naming this issuer or its token endpoint, an `exp`
//! in the future but at most [`MAX_CLIENT_ASSERTION_LIFETIME_S`] (+ leeway) away (a short life bounds what a stolen
//! assertion is worth and how long its `jti` is remembered), `nbf`/`iat` not in the future, and a `jti` never used
//! before by this client (remembered until `exp` + leeway in the bounded [`ReplayCache`]; when that is full: 503
//! `temporarily_unavailable` with `Retry-After`). The `alg` must be asymmetric and fit the key (see
//! [`crate::assertion`]). Every failure is `invalid_client` (401).

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::assertion::{
    ASYMMETRIC_ALGS, AssertionError, KeySet, Namespace, ReplayCache, ReplayError, TimeRules,
    check_audience, check_times, parse, required,
};
use crate::client_auth::{AuthMethod, Authenticated, ClientRegistry};
use crate::form::Form;
use crate::oauth::OAuthError;

/// The only `client_assertion_type` (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest client assertion lifetime accepted (`exp` − now), seconds: assertions are made per request.
pub const MAX_CLIENT_ASSERTION_LIFETIME_S: u64 = 300;

/// Whether the request tries `private_key_jwt` (either parameter present).
pub fn is_attempt(form: &Form<'_>) -> bool {
    form.has("client_assertion") || form.has("client_assertion_type")
}

/// What the check needs from the issuer.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The issuer identifier (an accepted `aud`).
    pub issuer: &'a str,
    /// The token endpoint URL (the other accepted `aud`, OIDC Core §9).
    pub token_endpoint: &'a str,
    /// Clock skew tolerated, seconds.
    pub leeway_s: u64,
    /// Now.
    pub now_s: u64,
    /// Seen `jti`s.
    pub replay: &'a ReplayCache,
}

fn fail(why: impl std::fmt::Display) -> OAuthError {
    OAuthError::invalid_client(format!("client assertion refused: {why}"), true)
}

/// Authenticates the client of a request that carries `client_assertion` (see the module docs).
pub fn authenticate(
    headers: &HeaderMap,
    form: &Form<'_>,
    clients: &ClientRegistry,
    ctx: &Context<'_>,
) -> Result<Authenticated, OAuthError> {
    // RFC 6749 §2.3: one authentication method per request.
    if headers.contains_key(AUTHORIZATION) || form.has("client_secret") {
        return Err(OAuthError::invalid_request(
            "the client used private_key_jwt and another authentication method; use exactly one",
        ));
    }
    let assertion_type = form
        .get("client_assertion_type")
        .ok_or_else(|| OAuthError::missing("client_assertion_type"))?;
    if assertion_type != CLIENT_ASSERTION_TYPE {
        return Err(fail(format_args!(
            "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
        )));
    }
    let assertion = form
        .get("client_assertion")
        .ok_or_else(|| OAuthError::missing("client_assertion"))?;
    let parsed = parse(assertion).map_err(fail)?;
    let id = required(&parsed.claims.sub, "sub").map_err(fail)?;
    if parsed.claims.iss.as_deref() != Some(id) {
        return Err(fail("iss and sub must both be the client id"));
    }
    if form.get("client_id").is_some_and(|c| c != id) {
        return Err(OAuthError::invalid_request(
            "client_id differs from the client assertion's sub",
        ));
    }
    // An unknown client and one without keys get the same answer as a bad signature.
    let client = clients
        .get(id)
        .ok_or_else(|| fail("unknown client or bad signature"))?;
    let keys = client
        .jwks
        .as_ref()
        .ok_or_else(|| fail("unknown client or bad signature"))?;
    parsed.verify(keys, &ASYMMETRIC_ALGS).map_err(|e| match e {
        AssertionError::BadSignature | AssertionError::UnknownKid(_) => {
            fail("unknown client or bad signature")
        }
        e => fail(e),
    })?;
    let exp = check_times(
        &parsed.claims,
        TimeRules {
            now_s: ctx.now_s,
            leeway_s: ctx.leeway_s,
            max_lifetime_s: Some(MAX_CLIENT_ASSERTION_LIFETIME_S),
        },
    )
    .map_err(fail)?;
    check_audience(&parsed.claims, &[ctx.issuer, ctx.token_endpoint]).map_err(fail)?;
    let jti = required(&parsed.claims.jti, "jti").map_err(fail)?;
    match ctx.replay.check_and_insert(
        Namespace::Client(id),
        jti,
        exp.saturating_add(ctx.leeway_s),
        ctx.now_s,
    ) {
        Ok(()) => {}
        Err(ReplayError::Replayed) => return Err(fail("jti already used")),
        Err(e @ ReplayError::Full { retry_after_s, .. }) => {
            return Err(OAuthError::unavailable(e.to_string(), retry_after_s));
        }
    }
    Ok(Authenticated {
        client: Arc::clone(client),
        method: AuthMethod::PrivateKeyJwt,
    })
}

/// Reads a client's `jwks` from the config: a JSON string or a TOML table holding a JWK Set. Every key must be
/// usable (a typo should fail at start, not at the first request).
pub fn client_jwks(value: &toml::Value) -> Result<KeySet, String> {
    let json = match value {
        toml::Value::String(s) => s.as_bytes().to_vec(),
        toml::Value::Table(_) => {
            serde_json::to_vec(value).map_err(|e| format!("cannot convert to JSON: {e}"))?
        }
        _ => return Err("must be a JWK Set as a JSON string or a table".into()),
    };
    KeySet::from_json(&json, true)
}

/// Checks a client's `token_endpoint_auth_method` against what it has; the error names the field at fault.
pub fn check_auth_method(
    method: Option<&str>,
    has_secret: bool,
    has_jwks: bool,
) -> Result<(), (&'static str, String)> {
    match method {
        None | Some("client_secret_basic") | Some("client_secret_post") if has_secret => {
            if has_jwks {
                Err((
                    "jwks",
                    "only for token_endpoint_auth_method = \"private_key_jwt\" (without a secret)"
                        .into(),
                ))
            } else {
                Ok(())
            }
        }
        None | Some("private_key_jwt") if has_jwks && !has_secret => Ok(()),
        // A public client (checked further by the authorization-code rules).
        Some("none") if !has_secret && !has_jwks => Ok(()),
        Some("none") => Err((
            "jwks",
            "a public client (token_endpoint_auth_method = \"none\") has no secret and no jwks"
                .into(),
        )),
        Some("private_key_jwt") => Err((
            "jwks",
            "private_key_jwt needs the client's public keys in jwks and no client_secret".into(),
        )),
        None | Some("client_secret_basic") | Some("client_secret_post") => Err((
            "client_secret",
            "one of client_secret or client_secret_hmac is required (or jwks with private_key_jwt)"
                .into(),
        )),
        Some(other) => Err((
            "token_endpoint_auth_method",
            format!(
                "{other:?} is not implemented; use client_secret_basic, client_secret_post, none or private_key_jwt"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: &str = "ZvRjCSR4cKOa0_KiLyvh4bBUgXx0dOYW7oVEt5AMjGA";
    const Y: &str = "p2v9EW83DwnQM1Eng0gQHwXIppVHat3C1xg3Zyl0e44";

    #[test]
    fn jwks_may_be_a_json_string_or_a_toml_table() {
        let as_string = toml::Value::String(format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{X}","y":"{Y}","kid":"k1"}}]}}"#
        ));
        assert!(client_jwks(&as_string).unwrap().has_kid("k1"));
        let table: toml::Value = toml::from_str(&format!(
            "[[keys]]\nkty = \"EC\"\ncrv = \"P-256\"\nx = \"{X}\"\ny = \"{Y}\"\nkid = \"k2\"\nalg = \"ES256\"\n"
        ))
        .unwrap();
        assert!(client_jwks(&table).unwrap().has_kid("k2"));
        // An alg that does not fit the key, a key for encryption, a number: refused.
        for bad in [
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{X}","y":"{Y}","alg":"EdDSA"}}]}}"#
            ),
            format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{X}","y":"{Y}","use":"enc"}}]}}"#),
            r#"{"keys":[]}"#.to_string(),
        ] {
            assert!(
                client_jwks(&toml::Value::String(bad.clone())).is_err(),
                "{bad}"
            );
        }
        assert!(client_jwks(&toml::Value::Integer(1)).is_err());
    }

    #[test]
    fn auth_method_follows_what_the_client_has() {
        assert!(check_auth_method(None, true, false).is_ok());
        assert!(check_auth_method(None, false, true).is_ok());
        assert!(check_auth_method(Some("private_key_jwt"), false, true).is_ok());
        assert_eq!(
            check_auth_method(Some("private_key_jwt"), true, true)
                .unwrap_err()
                .0,
            "jwks"
        );
        assert_eq!(check_auth_method(None, true, true).unwrap_err().0, "jwks");
        assert_eq!(
            check_auth_method(None, false, false).unwrap_err().0,
            "client_secret"
        );
        // A public client: neither secret nor keys.
        assert!(check_auth_method(Some("none"), false, false).is_ok());
        assert_eq!(
            check_auth_method(Some("none"), false, true).unwrap_err().0,
            "jwks"
        );
        assert_eq!(
            check_auth_method(Some("tls_client_auth"), true, false)
                .unwrap_err()
                .0,
            "token_endpoint_auth_method"
        );
    }
}
