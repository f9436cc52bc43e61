//! Verifying JWTs that someone else signed: client assertions (`private_key_jwt`), JWT bearer assertions and
//! subject/actor tokens of trusted issuers. Our own access tokens go through [`crate::verify`] instead.
//!
//! Checks before any cryptography: size, three base64url parts, a JOSE header without `crit`, an `alg` from the
//! asymmetric allow-list ([`parse_alg`]: `none` and every `HS*` are refused, so a public key can never be used as an
//! HMAC secret), a key chosen by `kid` whose type and curve fit that `alg`. The signature is checked by
//! `jsonwebtoken` (aws-lc-rs). Time, issuer, audience and replay checks are separate functions so each caller states
//! its own rules; all read the injected clock, never the system time.
//!
//! [`ReplayCache`] remembers `jti`s until their assertion expires, bounded like the revocation set.

use crate::expiring::ExpiringSet;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::token::{Act, MAX_ACT_DEPTH};
use crate::verify::Audience;

/// Largest JWT accepted: assertions and access tokens are well under 2 KiB; far larger ones are not worth parsing.
pub const MAX_JWT_BYTES: usize = 8 * 1024;
/// Most keys in one JWK Set (a client's or a trusted issuer's): verification scans them.
pub const MAX_KEYS_PER_SET: usize = 32;
/// Smallest RSA modulus accepted, bytes (2048 bits; RFC 7518 §3.3 requires at least that).
pub const MIN_RSA_MODULUS_BYTES: usize = 256;
/// Longest `jti`, `sub` or `iss` accepted in a foreign JWT (they become map keys and claims here).
pub const MAX_CLAIM_CHARS: usize = 256;

/// Every algorithm accepted on a foreign JWT: the asymmetric ones `jsonwebtoken` implements. Never `none` or `HS*`.
pub const ASYMMETRIC_ALGS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The names of [`ASYMMETRIC_ALGS`], in the same order (discovery lists them).
pub const ASYMMETRIC_ALG_NAMES: [&str; 9] = [
    "ES256", "ES384", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

/// An `alg` name from [`ASYMMETRIC_ALGS`]; `None` for `none`, `HS*` and anything unknown.
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    ASYMMETRIC_ALGS.contains(&alg).then_some(alg)
}

/// Why a foreign JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not a JWS compact serialization: size, part count, base64url, header or claims JSON.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// The `alg` is `none`, symmetric, unknown or not allowed here.
    #[error("algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    /// The header has `crit`; no extension is understood, so RFC 7515 §4.1.11 requires refusing it.
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    /// No key of the issuer has this `kid` (or, without a `kid`, no single key fits the `alg`).
    #[error("no key for kid {}", kid_label(.0))]
    UnknownKid(Option<String>),
    /// The key the `kid` names is of another type, curve or algorithm than the header's `alg`.
    #[error("the key {} does not fit the header's alg", kid_label(.0))]
    KeyAlgMismatch(Option<String>),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A required claim is absent (or too long).
    #[error("missing or oversized claim: {0}")]
    MissingClaim(&'static str),
    /// `exp` (plus the leeway) has passed.
    #[error("expired at {exp} (now {now})")]
    Expired {
        /// The JWT's `exp`.
        exp: u64,
        /// Now.
        now: u64,
    },
    /// `nbf` or `iat` is later than now plus the leeway.
    #[error("not valid before {at} (now {now})")]
    NotYetValid {
        /// The JWT's `nbf` or `iat`.
        at: u64,
        /// Now.
        now: u64,
    },
    /// `exp` is further in the future than the caller allows (long-lived assertions would pin the replay cache).
    #[error("exp {exp} is more than {max_s} s after now {now}")]
    TooLongLived {
        /// The JWT's `exp`.
        exp: u64,
        /// Now.
        now: u64,
        /// The most allowed, seconds.
        max_s: u64,
    },
    /// `iss` (or `sub`) is not what it must be.
    #[error("wrong issuer or subject")]
    WrongIssuer,
    /// `aud` contains none of the accepted values.
    #[error("aud does not name this server")]
    WrongAudience,
    /// The `act` chain is deeper than [`MAX_ACT_DEPTH`].
    #[error("act chain deeper than {MAX_ACT_DEPTH}")]
    ActTooDeep,
}

fn kid_label(kid: &Option<String>) -> &str {
    kid.as_deref().unwrap_or("(no kid)")
}

/// One verification key from a JWK Set.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    /// The algorithms this key may verify: fixed by its type and curve, narrowed by its JWK `alg`.
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

impl VerifyingKey {
    /// Reads one JWK: EC P-256/P-384, OKP Ed25519 or RSA (2048 bits or more); refuses symmetric keys and keys for
    /// encryption only.
    pub fn from_jwk(jwk: &Jwk) -> Result<VerifyingKey, String> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("key is not for signatures (use != sig)".into());
        }
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Err("EC curve must be P-256 or P-384".into()),
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                _ => return Err("OKP curve must be Ed25519".into()),
            },
            AlgorithmParameters::RSA(p) => {
                let n = URL_SAFE_NO_PAD
                    .decode(p.n.as_bytes())
                    .map_err(|_| "RSA n is not base64url".to_string())?;
                let bytes = n.iter().skip_while(|&&b| b == 0).count();
                if bytes < MIN_RSA_MODULUS_BYTES {
                    return Err(format!(
                        "RSA modulus has {} bits, at least {} required",
                        bytes * 8,
                        MIN_RSA_MODULUS_BYTES * 8
                    ));
                }
                vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ]
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric (oct) keys are refused: a verifier must never share the signer's secret".into());
            }
        };
        let algs = match &jwk.common.key_algorithm {
            None => family,
            Some(ka) => {
                let named = key_algorithm(*ka)
                    .filter(|a| family.contains(a))
                    .ok_or_else(|| format!("alg {ka} does not fit the key type"))?;
                vec![named]
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        Ok(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            algs,
            key,
        })
    }
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    parse_alg(&ka.to_string())
}

/// A JWK Set's verification keys (at most [`MAX_KEYS_PER_SET`]).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// Parses a JWK Set document. `strict`: every key must be usable (inline configuration, where a bad key is a
    /// mistake to report); otherwise unusable keys are skipped (a fetched set may carry keys for others, e.g.
    /// encryption keys or curves we do not verify).
    pub fn from_json(json: &[u8], strict: bool) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
        if doc.keys.len() > MAX_KEYS_PER_SET {
            return Err(format!(
                "{} keys, at most {MAX_KEYS_PER_SET}",
                doc.keys.len()
            ));
        }
        let mut keys = Vec::with_capacity(doc.keys.len());
        for (i, v) in doc.keys.into_iter().enumerate() {
            let parsed = serde_json::from_value::<Jwk>(v)
                .map_err(|e| format!("keys[{i}]: not a JWK: {e}"))
                .and_then(|jwk| {
                    VerifyingKey::from_jwk(&jwk).map_err(|e| format!("keys[{i}]: {e}"))
                });
            match parsed {
                Ok(k) => keys.push(k),
                Err(e) if strict => return Err(e),
                Err(_) => {}
            }
        }
        if keys.is_empty() {
            return Err("no usable signature key".into());
        }
        Ok(KeySet { keys })
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid` (what decides a JWKS refresh).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key for `kid` and `alg`. Without a `kid` the set must hold exactly one key that fits `alg` (RFC 7517
    /// §4.5 leaves the choice open; guessing among several would let a token pick its key).
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyingKey, AssertionError> {
        let owned_kid = || kid.map(str::to_string);
        let key = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| AssertionError::UnknownKid(owned_kid()))?,
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.algs.contains(&alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => k,
                    _ => return Err(AssertionError::UnknownKid(None)),
                }
            }
        };
        if !key.algs.contains(&alg) {
            return Err(AssertionError::KeyAlgMismatch(owned_kid()));
        }
        Ok(key)
    }
}

/// The JOSE header fields looked at.
#[derive(Debug, Clone, Deserialize)]
pub struct JoseHeader {
    /// `alg`.
    pub alg: String,
    /// `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// `typ`.
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The claims looked at in a foreign JWT; all optional here, each caller requires its own.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JwtClaims {
    /// Issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// Subject.
    #[serde(default)]
    pub sub: Option<String>,
    /// Audience(s).
    #[serde(default)]
    pub aud: Option<Audience>,
    /// Expiry.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Not before.
    #[serde(default)]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default)]
    pub iat: Option<u64>,
    /// Unique id.
    #[serde(default)]
    pub jti: Option<String>,
    /// Scope (space-separated, RFC 8693 §4.2).
    #[serde(default)]
    pub scope: Option<String>,
    /// The client the token was issued to.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Prior actor (RFC 8693 §4.1).
    #[serde(default)]
    pub act: Option<Act>,
}

/// A JWT split and decoded but not yet verified: only [`Parsed::verify`] makes its claims trustworthy.
#[derive(Debug)]
pub struct Parsed<'t> {
    /// The header.
    pub header: JoseHeader,
    /// The allowed algorithm the header names.
    pub alg: Algorithm,
    /// The claims, unverified until [`Parsed::verify`] succeeds.
    pub claims: JwtClaims,
    signing_input: &'t str,
    signature: &'t str,
}

/// Splits and decodes `token`, refusing what no key could make acceptable (see the module docs).
pub fn parse(token: &str) -> Result<Parsed<'_>, AssertionError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(AssertionError::Malformed("too large"));
    }
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or(AssertionError::Malformed("not three dot-separated parts"))?;
    let (h, c) = signing_input
        .split_once('.')
        .ok_or(AssertionError::Malformed("not three dot-separated parts"))?;
    if c.contains('.') || signature.is_empty() {
        return Err(AssertionError::Malformed(
            "not three dot-separated parts with a signature",
        ));
    }
    let header_json = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AssertionError::Malformed("header is not base64url"))?;
    let header: JoseHeader = serde_json::from_slice(&header_json)
        .map_err(|_| AssertionError::Malformed("header is not a JOSE header"))?;
    if header.crit.is_some() {
        return Err(AssertionError::CriticalHeader);
    }
    let alg =
        parse_alg(&header.alg).ok_or_else(|| AssertionError::AlgNotAllowed(header.alg.clone()))?;
    let claims_json = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| AssertionError::Malformed("claims are not base64url"))?;
    let claims: JwtClaims = serde_json::from_slice(&claims_json).map_err(|_| {
        AssertionError::Malformed("claims are not a JSON object of the expected types")
    })?;
    if claims
        .act
        .as_ref()
        .is_some_and(|a| a.depth() > MAX_ACT_DEPTH)
    {
        return Err(AssertionError::ActTooDeep);
    }
    Ok(Parsed {
        header,
        alg,
        claims,
        signing_input,
        signature,
    })
}

/// Only the `kid` and `iss` of a JWT, without verifying anything: what decides whether a JWKS refresh could help.
pub fn peek_kid_and_iss(token: &str) -> Option<(Option<String>, String)> {
    let p = parse(token).ok()?;
    Some((p.header.kid, p.claims.iss?))
}

impl Parsed<'_> {
    /// Verifies the signature with the key of `keys` the header selects, the `alg` also being in `allowed`.
    pub fn verify(&self, keys: &KeySet, allowed: &[Algorithm]) -> Result<(), AssertionError> {
        if !allowed.contains(&self.alg) {
            return Err(AssertionError::AlgNotAllowed(self.header.alg.clone()));
        }
        let key = keys.select(self.header.kid.as_deref(), self.alg)?;
        match jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            &key.key,
            self.alg,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(AssertionError::BadSignature),
            // A signature that is not base64url, or a key the provider refuses for this algorithm.
            Err(_) => Err(AssertionError::BadSignature),
        }
    }
}

/// Time rules of one kind of JWT.
#[derive(Debug, Clone, Copy)]
pub struct TimeRules {
    /// Now, seconds since the epoch.
    pub now_s: u64,
    /// Clock skew tolerated on `exp`, `nbf`, `iat`, seconds.
    pub leeway_s: u64,
    /// Most seconds `exp` may lie after now (the leeway added); `None` = unbounded (tokens whose lifetime their
    /// issuer bounds, kept nowhere here).
    pub max_lifetime_s: Option<u64>,
}

/// Checks `exp` (required), `nbf` and `iat`; returns `exp`.
pub fn check_times(claims: &JwtClaims, rules: TimeRules) -> Result<u64, AssertionError> {
    let exp = claims.exp.ok_or(AssertionError::MissingClaim("exp"))?;
    let now = rules.now_s;
    if now >= exp.saturating_add(rules.leeway_s) {
        return Err(AssertionError::Expired { exp, now });
    }
    if let Some(max_s) = rules.max_lifetime_s {
        if exp > now.saturating_add(max_s).saturating_add(rules.leeway_s) {
            return Err(AssertionError::TooLongLived { exp, now, max_s });
        }
    }
    for at in [claims.nbf, claims.iat].into_iter().flatten() {
        if at > now.saturating_add(rules.leeway_s) {
            return Err(AssertionError::NotYetValid { at, now });
        }
    }
    Ok(exp)
}

/// Checks that `aud` contains one of `accepted`.
pub fn check_audience(claims: &JwtClaims, accepted: &[&str]) -> Result<(), AssertionError> {
    let aud = claims
        .aud
        .as_ref()
        .ok_or(AssertionError::MissingClaim("aud"))?;
    if accepted.iter().any(|a| aud.contains(a)) {
        Ok(())
    } else {
        Err(AssertionError::WrongAudience)
    }
}

/// A required string claim, non-empty and at most [`MAX_CLAIM_CHARS`].
pub fn required<'c>(
    value: &'c Option<String>,
    name: &'static str,
) -> Result<&'c str, AssertionError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() && v.len() <= MAX_CLAIM_CHARS => Ok(v),
        _ => Err(AssertionError::MissingClaim(name)),
    }
}

/// Whose `jti`s: a client's assertions and a trusted issuer's are kept apart even if a client id equals an issuer
/// identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace<'a> {
    /// `private_key_jwt` assertions of this client id.
    Client(&'a str),
    /// JWT bearer assertions of this issuer.
    Issuer(&'a str),
}

/// Why [`ReplayCache::check_and_insert`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This `jti` was seen before (and its JWT has not expired).
    #[error("jti already used")]
    Replayed,
    /// The cache is full and nothing in it has expired.
    #[error(
        "the replay cache holds {entries} ids, none expired yet; retry after {retry_after_s} s"
    )]
    Full {
        /// Entries held.
        entries: usize,
        /// Seconds until the earliest entry expires.
        retry_after_s: u64,
    },
}

/// `jti`s seen, per namespace (a client id or an issuer), each kept until its JWT expires (bounded; see the module
/// docs). Key: the first 16 bytes of SHA-256(namespace NUL jti). Only the assertion grants and `private_key_jwt`
/// touch it, never `client_credentials` with a secret.
#[derive(Debug)]
pub struct ReplayCache {
    inner: Mutex<ExpiringSet>,
}

impl ReplayCache {
    /// An empty cache holding at most `max_entries` ids.
    pub fn new(max_entries: usize) -> ReplayCache {
        ReplayCache {
            inner: Mutex::new(ExpiringSet::new(max_entries)),
        }
    }

    /// Records `(namespace, jti)` until `until_s`, refusing it if already recorded and still kept.
    pub fn check_and_insert(
        &self,
        namespace: Namespace<'_>,
        jti: &str,
        until_s: u64,
        now_s: u64,
    ) -> Result<(), ReplayError> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let (tag, name) = match namespace {
            Namespace::Client(c) => (b'c', c),
            Namespace::Issuer(i) => (b'i', i),
        };
        ctx.update(&[tag]);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(jti.as_bytes());
        let d = ctx.finish();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d.as_ref()[..16]);
        let key = u128::from_le_bytes(k);
        let mut set = self.set();
        if set.live(key, now_s) {
            return Err(ReplayError::Replayed);
        }
        set.keep(key, until_s, now_s)
            .map_err(|f| ReplayError::Full {
                entries: f.entries,
                retry_after_s: f.retry_after_s,
            })
    }

    /// Entries held (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.set().len()
    }

    fn set(&self) -> std::sync::MutexGuard<'_, ExpiringSet> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_parse() {
        assert_eq!(parse_alg("ES256"), Some(Algorithm::ES256));
        assert_eq!(parse_alg("EdDSA"), Some(Algorithm::EdDSA));
        for (name, alg) in ASYMMETRIC_ALG_NAMES.iter().zip(ASYMMETRIC_ALGS) {
            assert_eq!(parse_alg(name), Some(alg));
        }
        for bad in ["none", "HS256", "HS512", "es256", ""] {
            assert_eq!(parse_alg(bad), None, "{bad}");
        }
    }

    #[test]
    fn replay_cache_refuses_repeats_until_expiry_and_is_bounded() {
        let c = ReplayCache::new(2);
        c.check_and_insert(Namespace::Client("a"), "1", 100, 0)
            .unwrap();
        assert_eq!(
            c.check_and_insert(Namespace::Client("a"), "1", 100, 50),
            Err(ReplayError::Replayed)
        );
        // Another namespace (even with the same name) is another id.
        c.check_and_insert(Namespace::Issuer("a"), "1", 200, 0)
            .unwrap();
        assert_eq!(
            c.check_and_insert(Namespace::Client("a"), "2", 300, 50),
            Err(ReplayError::Full {
                entries: 2,
                retry_after_s: 50
            })
        );
        // At 100 the first has expired: reusable, and it makes room.
        c.check_and_insert(Namespace::Client("a"), "2", 300, 100)
            .unwrap();
        c.check_and_insert(Namespace::Client("a"), "1", 300, 150)
            .unwrap_err();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn time_rules() {
        let claims = |exp, nbf| JwtClaims {
            exp,
            nbf,
            ..JwtClaims::default()
        };
        let r = TimeRules {
            now_s: 1_000,
            leeway_s: 10,
            max_lifetime_s: Some(300),
        };
        assert_eq!(check_times(&claims(Some(1_100), None), r), Ok(1_100));
        assert_eq!(
            check_times(&claims(None, None), r),
            Err(AssertionError::MissingClaim("exp"))
        );
        assert!(matches!(
            check_times(&claims(Some(990), None), r),
            Err(AssertionError::Expired { .. })
        ));
        assert!(matches!(
            check_times(&claims(Some(1_400), None), r),
            Err(AssertionError::TooLongLived { .. })
        ));
        assert!(matches!(
            check_times(&claims(Some(1_100), Some(1_011)), r),
            Err(AssertionError::NotYetValid { .. })
        ));
    }

    #[test]
    fn malformed_and_unsafe_headers_are_refused_before_any_key() {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let t = format!("{}.{}.sig", enc(r#"{"alg":"none"}"#), enc("{}"));
        assert_eq!(
            parse(&t).unwrap_err(),
            AssertionError::AlgNotAllowed("none".into())
        );
        let t = format!("{}.{}.sig", enc(r#"{"alg":"HS256"}"#), enc("{}"));
        assert!(matches!(parse(&t), Err(AssertionError::AlgNotAllowed(_))));
        let t = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"ES256","crit":["x"]}"#),
            enc("{}")
        );
        assert_eq!(parse(&t).unwrap_err(), AssertionError::CriticalHeader);
        assert!(matches!(parse("a.b"), Err(AssertionError::Malformed(_))));
        assert!(matches!(
            parse("a.b.c.d"),
            Err(AssertionError::Malformed(_))
        ));
        let t = format!("{}.{}.", enc(r#"{"alg":"ES256"}"#), enc("{}"));
        assert!(matches!(parse(&t), Err(AssertionError::Malformed(_))));
    }

    #[test]
    fn symmetric_jwks_are_refused() {
        let e = KeySet::from_json(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, true).unwrap_err();
        assert!(e.contains("symmetric"), "{e}");
        assert!(KeySet::from_json(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, false).is_err());
    }
}
