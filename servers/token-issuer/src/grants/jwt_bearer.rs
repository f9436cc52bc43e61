//! The JWT bearer grant (RFC 7523 §2.1, §3): a client presents a JWT that a trusted issuer signed about a subject
//! (`assertion`) and gets an access token for that subject here.
//!
//! The assertion must come from a trusted issuer that lists this client (`trusted_issuers[].clients`), verify with
//! that issuer's keys and algorithms, carry an `aud` accepted for that issuer (default: this issuer's identifier or
//! token endpoint), an `exp` in the future and at most [`MAX_BEARER_ASSERTION_LIFETIME_S`] (+ leeway) away,
//! `nbf`/`iat` not in the future, a `sub`, and a `jti` not seen before from that issuer (required here, unlike RFC
//! 7523, so that an assertion is good for one token; remembered until `exp` + leeway). Any failure is
//! `invalid_grant` with the reason. The token's `sub` is the mapped subject (see [`crate::trust`]); `scope` and
//! `aud` follow the client's rules exactly as for `client_credentials` (`scope`, `resource`).

use crate::assertion::{Namespace, ReplayError, parse, required};
use crate::grants::client_credentials::{audience, granted_scope};
use crate::grants::{TokenRequest, TokenResponse};
use crate::oauth::{ErrorCode, OAuthError};

/// The `grant_type` value.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Longest assertion lifetime accepted (`exp` − now), seconds: assertions are made to be exchanged at once, and
/// the bound caps how long each `jti` is remembered.
pub const MAX_BEARER_ASSERTION_LIFETIME_S: u64 = 3_600;

fn invalid_grant(why: impl std::fmt::Display) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidGrant, format!("assertion refused: {why}"))
}

/// Issues the token.
pub fn issue(req: &TokenRequest<'_>) -> Result<TokenResponse, OAuthError> {
    let client = req.client.as_ref();
    let fed = req.issuer.federation();
    let assertion = req
        .form
        .get("assertion")
        .ok_or_else(|| OAuthError::missing("assertion"))?;
    let parsed = parse(assertion).map_err(invalid_grant)?;
    let iss = required(&parsed.claims.iss, "iss").map_err(invalid_grant)?;
    let trusted = fed
        .find(iss)
        .ok_or_else(|| invalid_grant(format_args!("issuer {iss} is not trusted")))?;
    if !trusted.allows_client(&client.id) {
        return Err(invalid_grant(format_args!(
            "this client may not present assertions of {iss}"
        )));
    }
    let leeway_s = req.issuer.leeway_s();
    let exp = fed
        .verify_from(
            trusted,
            &parsed,
            req.now_s,
            leeway_s,
            Some(MAX_BEARER_ASSERTION_LIFETIME_S),
        )
        .map_err(invalid_grant)?;
    let jti = required(&parsed.claims.jti, "jti").map_err(invalid_grant)?;
    let sub = trusted.map_subject(required(&parsed.claims.sub, "sub").map_err(invalid_grant)?);
    let scope = granted_scope(client, req.form.get("scope"))?;
    let aud = audience(client, req.form)?;
    // Recorded last, so an assertion refused for its scope or resource can be retried.
    match fed.replay.check_and_insert(
        Namespace::Issuer(iss),
        jti,
        exp.saturating_add(leeway_s),
        req.now_s,
    ) {
        Ok(()) => {}
        Err(ReplayError::Replayed) => return Err(invalid_grant("jti already used")),
        Err(e @ ReplayError::Full { retry_after_s, .. }) => {
            return Err(OAuthError::unavailable(e.to_string(), retry_after_s));
        }
    }
    let access_token = req
        .issuer
        .mint_access_token(&sub, client, aud, &scope, req.now_s)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: req.issuer.lifetimes().access_s,
        scope: Some(scope.into_owned()),
        refresh_token: None,
        id_token: None,
        issued_token_type: None,
    })
}
