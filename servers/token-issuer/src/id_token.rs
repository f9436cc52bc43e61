//! Tokens for a user (the authorization code and refresh token grants): the access token (RFC 9068, `sub` = the
//! user's `sub`) with its `jti` kept for later revocation, and the OpenID Connect ID token (OIDC Core §2,
//! §3.1.3.6) signed by the same current key.
//!
//! `at_hash` is the base64url of the left half of the hash of the access token's ASCII octets, with "the hash
//! algorithm used in the `alg` header" (OIDC Core §3.1.3.6). For ES256 that is SHA-256 (16 bytes kept). `EdDSA`
//! names no hash; the OpenID Connect working group's resolution (connect issue #1125, followed by the maintained
//! libraries) is the hash of the curve's signature scheme, which for Ed25519 is SHA-512 (RFC 8032 §5.1), so 32 bytes
//! of SHA-512 are kept.

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::app::Issuer;
use crate::config::{Client, User};
use crate::keys::{JwsType, SigningAlg};
use crate::oauth::{ErrorCode, OAuthError};
use crate::token::{AccessTokenClaims, AudRef, Jti};

/// The claims of an ID token being minted.
#[derive(Debug, Serialize)]
pub struct IdTokenClaims<'a> {
    /// Issuer.
    pub iss: &'a str,
    /// The user's subject identifier.
    pub sub: &'a str,
    /// The client id.
    pub aud: &'a str,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// When the user authenticated.
    pub auth_time: u64,
    /// The authorization request's `nonce`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<&'a str>,
    /// Authorized party: the client id (OIDC Core §2).
    pub azp: &'a str,
    /// Access token hash (see the module docs).
    pub at_hash: &'a str,
    /// With the `profile` scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// With the `email` scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

/// `at_hash` of `access_token` for an ID token signed with `alg`.
pub fn at_hash(access_token: &str, alg: SigningAlg) -> String {
    let (algorithm, keep) = match alg {
        SigningAlg::Es256 => (&digest::SHA256, 16),
        SigningAlg::EdDsa => (&digest::SHA512, 32),
    };
    let d = digest::digest(algorithm, access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..keep])
}

/// Whether the space-separated `scope` has `token`.
pub fn has_scope(scope: &str, token: &str) -> bool {
    scope.split(' ').any(|s| s == token)
}

/// What minting a user's tokens produced.
#[derive(Debug)]
pub struct UserTokens {
    /// The access token.
    pub access_token: String,
    /// Its id (for revocation).
    pub jti: Jti,
    /// Its expiry.
    pub access_exp_s: u64,
    /// The ID token, when `openid` was granted.
    pub id_token: Option<String>,
}

/// Mints the access token and (with `openid`) the ID token for `user` and `client`.
#[allow(clippy::too_many_arguments)] // each is one claim of the two tokens; a struct would only rename them
pub fn mint_user_tokens(
    issuer: &Issuer,
    client: &Client,
    user: &User,
    scope: &str,
    auth_time_s: u64,
    nonce: Option<&str>,
    grant_id: Option<&str>,
    now_s: u64,
) -> Result<UserTokens, OAuthError> {
    let fail = |e: crate::keys::KeyError| {
        OAuthError::new(ErrorCode::ServerError, format!("token signing failed: {e}"))
            .with_status(http::StatusCode::INTERNAL_SERVER_ERROR)
    };
    let jti = Jti::random().map_err(fail)?;
    let lifetimes = issuer.lifetimes();
    let access_exp_s = now_s + lifetimes.access_s;
    let claims = AccessTokenClaims {
        iss: issuer.issuer(),
        sub: &user.sub,
        aud: AudRef::One(&client.audience),
        exp: access_exp_s,
        iat: now_s,
        nbf: now_s,
        jti: jti.as_str(),
        client_id: &client.id,
        scope,
        grant_id,
        act: None,
    };
    // One snapshot: the ID token is signed by the same key, so `at_hash` uses that key's algorithm.
    let keys = issuer.ring().snapshot(now_s);
    let access_token = keys
        .current
        .sign(JwsType::AccessToken, &claims)
        .map_err(fail)?;
    let id_token = if has_scope(scope, "openid") {
        let hash = at_hash(&access_token, keys.current.alg());
        let claims = IdTokenClaims {
            iss: issuer.issuer(),
            sub: &user.sub,
            aud: &client.id,
            exp: now_s + lifetimes.id_s,
            iat: now_s,
            auth_time: auth_time_s,
            nonce,
            azp: &client.id,
            at_hash: &hash,
            name: user.name.as_deref().filter(|_| has_scope(scope, "profile")),
            email: user.email.as_deref().filter(|_| has_scope(scope, "email")),
        };
        Some(keys.current.sign(JwsType::IdToken, &claims).map_err(fail)?)
    } else {
        None
    };
    Ok(UserTokens {
        access_token,
        jti,
        access_exp_s,
        id_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_the_algorithms_hash() {
        // OIDC Core §A.3/A.4 example: access token "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y" has at_hash
        // "77QmUPtjPfzWtF2AnpK9RQ" under SHA-256.
        assert_eq!(
            at_hash(
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y",
                SigningAlg::Es256
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
        // Ed25519: the left 32 bytes of SHA-512, computed independently here.
        let full = digest::digest(&digest::SHA512, b"token");
        let expected = URL_SAFE_NO_PAD.encode(&full.as_ref()[..32]);
        assert_eq!(at_hash("token", SigningAlg::EdDsa), expected);
        assert_eq!(at_hash("token", SigningAlg::EdDsa).len(), 43);
        assert_eq!(at_hash("token", SigningAlg::Es256).len(), 22);
    }

    #[test]
    fn scopes_are_matched_as_whole_tokens() {
        assert!(has_scope("openid profile", "openid"));
        assert!(!has_scope("openidx profile", "openid"));
    }
}
