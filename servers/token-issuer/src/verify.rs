//! Access token verification: a pure function of the token, the published keys, what is expected and the time,
//! so tests can hit every refusal directly.
//!
//! Order of checks: size; three base64url parts; the header (JSON, `typ` = `at+jwt` per RFC 9068 §4, no `crit`
//! since we understand no extensions, a `kid` naming a published key, `alg` equal to that key's own algorithm, so
//! `none`, `HS256` signed with the public key, or any other algorithm substitution is refused before any
//! cryptography); the signature (by `jsonwebtoken` on aws-lc-rs, restricted to the key's algorithm); the claims
//! (RFC 9068 §2.2 required claims present, `iss` exact, `exp` not passed, `nbf` and `iat` not in the future, each
//! with the clock leeway, and `aud` when the caller names one). Revocation is the caller's concern: this function
//! has no state.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{RingState, SigningAlg};

/// Largest token accepted for verification; ours are ~500 bytes, and anything far larger is not one of ours.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a token must match besides its signature.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The exact `iss`.
    pub issuer: &'a str,
    /// An `aud` value the token must contain; `None` = not checked (introspection answers for every resource).
    pub audience: Option<&'a str>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
    pub leeway_s: u64,
}

/// The `aud` claim: one string or an array (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `aud` is among the audiences.
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

/// The claims of a verified access token (RFC 9068 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the client id for `client_credentials`, the user's `sub` otherwise.
    pub sub: String,
    /// Audience(s).
    pub aud: Audience,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Unique token id.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Granted scope, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The refresh-token grant the token was issued in (see `token::AccessTokenClaims::grant_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The actor (RFC 8693 §4.1) of a token made by token exchange; shown by introspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<crate::token::Act>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWS compact serialization: size, part count, base64url or header JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not the algorithm of the key its `kid` names (`none`, `HS256`, ...).
    #[error("algorithm {alg:?} is not allowed for this key")]
    AlgNotAllowed {
        /// The `alg` the token claims.
        alg: String,
    },
    /// The header's `typ` is not `at+jwt` (an ID token or another JWT presented as an access token).
    #[error("typ {0:?} is not at+jwt")]
    WrongType(Option<String>),
    /// The header has a `crit` parameter; no extension is understood, so RFC 7515 §4.1.11 requires refusing it.
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    /// The header names no key.
    #[error("no kid in the header")]
    MissingKid,
    /// No published key has this kid (never ours, or retired and dropped after its tokens expired).
    #[error("unknown kid")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The claims are not JSON or miss a required claim.
    #[error("bad claims: {0}")]
    Claims(String),
    /// `exp` (plus the leeway) has passed.
    #[error("expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// Now.
        now: u64,
    },
    /// `nbf` or `iat` is later than now plus the leeway.
    #[error("not valid before {at} (now {now})")]
    NotYetValid {
        /// The token's `nbf` or `iat`.
        at: u64,
        /// Now.
        now: u64,
    },
    /// `iss` is not this issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the expected audience.
    #[error("wrong audience")]
    WrongAudience,
}

impl VerifyError {
    /// A short, fixed label (metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::AlgNotAllowed { .. } => "alg_not_allowed",
            VerifyError::WrongType(_) => "wrong_typ",
            VerifyError::CriticalHeader => "crit",
            VerifyError::MissingKid => "missing_kid",
            VerifyError::UnknownKid => "unknown_kid",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Claims(_) => "bad_claims",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::WrongIssuer => "wrong_issuer",
            VerifyError::WrongAudience => "wrong_audience",
        }
    }
}

/// The header fields we look at before any cryptography.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// `jsonwebtoken`'s validation for a key's algorithm: signature only. The time, issuer and audience checks are done
/// here against the injected clock (`jsonwebtoken` reads the system clock).
fn signature_only(alg: SigningAlg) -> &'static Validation {
    static ES256: OnceLock<Validation> = OnceLock::new();
    static EDDSA: OnceLock<Validation> = OnceLock::new();
    let make = |a: Algorithm| {
        let mut v = Validation::new(a);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.leeway = 0;
        v.required_spec_claims.clear();
        v
    };
    match alg {
        SigningAlg::Es256 => ES256.get_or_init(|| make(Algorithm::ES256)),
        SigningAlg::EdDsa => EDDSA.get_or_init(|| make(Algorithm::EdDSA)),
    }
}

/// Verifies an access token against the keys published in `keys` at `now_s` (see the module docs).
pub fn verify_access_token(
    token: &str,
    keys: &RingState,
    expected: &Expected<'_>,
    now_s: u64,
) -> Result<AccessClaims, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::Malformed("too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("not three dot-separated parts"));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| VerifyError::Malformed("header is not base64url"))?;
    let header: RawHeader = serde_json::from_slice(&header_json)
        .map_err(|_| VerifyError::Malformed("header is not a JOSE header"))?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(VerifyError::WrongType(header.typ));
    }
    if header.crit.is_some() {
        return Err(VerifyError::CriticalHeader);
    }
    let kid = header.kid.as_deref().ok_or(VerifyError::MissingKid)?;
    let (key, _state) = keys.find(kid).ok_or(VerifyError::UnknownKid)?;
    if header.alg != key.alg().as_str() {
        return Err(VerifyError::AlgNotAllowed { alg: header.alg });
    }
    let data =
        jsonwebtoken::decode::<AccessClaims>(token, key.decoding_key(), signature_only(key.alg()))
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    VerifyError::AlgNotAllowed {
                        alg: key.alg().as_str().to_string(),
                    }
                }
                ErrorKind::InvalidToken | ErrorKind::Base64(_) => {
                    VerifyError::Malformed("signature or claims are not base64url")
                }
                _ => VerifyError::Claims(e.to_string()),
            })?;
    let c = data.claims;
    if c.iss != expected.issuer {
        return Err(VerifyError::WrongIssuer);
    }
    let leeway = expected.leeway_s;
    if now_s >= c.exp.saturating_add(leeway) {
        return Err(VerifyError::Expired {
            exp: c.exp,
            now: now_s,
        });
    }
    for at in [c.nbf.unwrap_or(0), c.iat] {
        if at > now_s.saturating_add(leeway) {
            return Err(VerifyError::NotYetValid { at, now: now_s });
        }
    }
    if let Some(aud) = expected.audience {
        if !c.aud.contains(aud) {
            return Err(VerifyError::WrongAudience);
        }
    }
    Ok(c)
}
