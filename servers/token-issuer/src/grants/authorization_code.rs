//! The authorization code grant (RFC 6749 §4.1.3) with PKCE (RFC 7636, `S256` only, required for every client).
//!
//! Parameters: `code`, `redirect_uri` (must equal the authorization request's), `code_verifier` (43 to 128
//! characters of `[A-Za-z0-9-._~]`, RFC 7636 §4.1). A code is single use: the first presentation redeems it whatever
//! the outcome (a failed redemption burns it), and a second presentation is `invalid_grant` and revokes what the
//! first issued, the access token and the refresh token family (RFC 6749 §4.1.2, RFC 9700 §4.1). A code issued to
//! another client, a wrong `redirect_uri` or a wrong verifier is `invalid_grant`.
//!
//! The response has an access token (`sub` = the user's), an ID token when `openid` was granted, and a refresh token
//! when the client may use the `refresh_token` grant (see [`super::refresh_token`]).

use aws_lc_rs::{constant_time, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::authorize::{CodeGrant, Issued};
use crate::grants::refresh_token::{RefreshEntry, full, grant_id_of, revoke_issued};
use crate::grants::{Grant, TokenRequest, TokenResponse};
use crate::id_token::mint_user_tokens;
use crate::oauth::{ErrorCode, OAuthError};
use crate::store::key_of;

/// Whether `v` is a syntactically valid code verifier (RFC 7636 §4.1).
pub fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The S256 challenge of a verifier: BASE64URL(SHA256(ASCII(verifier))) (RFC 7636 §4.2).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// Whether `verifier` matches `challenge` (compared in constant time: the challenge is not secret, but nothing is
/// lost by not leaking how much of a guess matched).
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    valid_verifier(verifier)
        && constant_time::verify_slices_are_equal(
            s256_challenge(verifier).as_bytes(),
            challenge.as_bytes(),
        )
        .is_ok()
}

enum Found {
    Fresh(CodeGrant),
    Reused(Option<Issued>),
}

/// Redeems the code.
pub fn issue(req: &TokenRequest<'_>) -> Result<TokenResponse, OAuthError> {
    let code = req
        .form
        .get("code")
        .ok_or_else(|| OAuthError::missing("code"))?;
    let redirect_uri = req
        .form
        .get("redirect_uri")
        .ok_or_else(|| OAuthError::missing("redirect_uri"))?;
    let verifier = req
        .form
        .get("code_verifier")
        .ok_or_else(|| OAuthError::missing("code_verifier"))?;
    let issuer = req.issuer;
    let flows = issuer.flows();
    let invalid = |why: &'static str| OAuthError::new(ErrorCode::InvalidGrant, why);
    let key = key_of(code);
    let found = flows.codes.with_mut(&key, req.now_s, |e, _| {
        if e.redeemed {
            e.reused = true;
            Found::Reused(e.issued)
        } else {
            e.redeemed = true;
            Found::Fresh(e.grant.clone())
        }
    });
    let grant = match found {
        None => return Err(invalid("unknown or expired authorization code")),
        Some(Found::Reused(issued)) => {
            issuer.metrics().codes_reused.increment(1);
            if let Some(issued) = issued {
                revoke_issued(req, &issued)?;
            }
            return Err(invalid(
                "authorization code already used: the tokens issued from it are revoked",
            ));
        }
        Some(Found::Fresh(g)) => g,
    };
    if grant.client_id != req.client.id {
        return Err(invalid("the code was issued to another client"));
    }
    if grant.redirect_uri != redirect_uri {
        return Err(invalid(
            "redirect_uri differs from the authorization request's",
        ));
    }
    if !valid_verifier(verifier) {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)",
        ));
    }
    if !pkce_matches(verifier, &grant.challenge) {
        return Err(invalid("code_verifier does not match the code_challenge"));
    }
    let Some(user) = flows.users.get(grant.user) else {
        return Err(invalid("the user no longer exists"));
    };
    // The grant (refresh token family) starts first, so the access token can name it (`grant_id`).
    let family = if req.client.grants.contains(Grant::RefreshToken) {
        Some(flows.refresh.start_family(req.now_s).map_err(full)?)
    } else {
        None
    };
    let grant_id = family.as_ref().map(grant_id_of);
    let tokens = mint_user_tokens(
        issuer,
        req.client,
        user,
        &grant.scope,
        grant.auth_time_s,
        grant.nonce.as_deref(),
        grant_id.as_deref(),
        req.now_s,
    )?;
    let issued = Issued {
        jti: tokens.jti,
        access_exp_s: tokens.access_exp_s,
        family,
    };
    let mut refresh_token = None;
    if let Some(family) = family {
        refresh_token = Some(
            flows
                .refresh
                .issue(
                    RefreshEntry {
                        family,
                        client_id: req.client.id.clone(),
                        user: grant.user,
                        scope: grant.scope.clone(),
                        auth_time_s: grant.auth_time_s,
                        used: false,
                    },
                    req.now_s,
                )
                .map_err(full)?,
        );
    }
    // Record what was issued, unless the code was replayed meanwhile: then revoke it at once.
    let replayed = flows.codes.with_mut(&key, req.now_s, |e, _| {
        e.issued = Some(issued);
        e.reused
    });
    if replayed == Some(true) {
        revoke_issued(req, &issued)?;
        return Err(invalid(
            "authorization code already used: the tokens issued from it are revoked",
        ));
    }
    Ok(TokenResponse {
        access_token: tokens.access_token,
        token_type: "Bearer",
        expires_in: issuer.lifetimes().access_s,
        scope: Some(grant.scope),
        refresh_token,
        id_token: tokens.id_token,
        issued_token_type: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_test_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(s256_challenge(verifier), challenge);
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
            challenge
        ));
    }

    #[test]
    fn verifier_syntax() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"~._-".repeat(32)));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(42))));
        // A malformed verifier never matches, even one whose hash would.
        assert!(!pkce_matches("short", &s256_challenge("short")));
    }
}
