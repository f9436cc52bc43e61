//! The signing keys: each [`SigningKey`] keeps its parsed aws-lc-rs key pair (so a token costs one signature, never
//! a PKCS#8 parse), its prebuilt base64url JWS headers, its public JWK and its verification key. The [`KeyRing`]
//! holds them in three states:
//!
//! - **next**: published in the JWKS, never signs. It becomes current at the next rotation, so every verifier that
//!   fetched the JWKS since the previous rotation already knows it when it starts signing.
//! - **current**: signs every token; published.
//! - **retired**: signed before the last rotation(s); published until every token it signed has expired
//!   (`retired_at + max signed token lifetime + clock leeway`), then dropped.
//!
//! Rotation (scheduled or on demand) turns current into retired, next into current, and generates a new next. The
//! ring is an immutable [`RingState`] snapshot behind `RwLock<Arc<..>>`: a token request clones the `Arc` under a
//! read lock and signs without holding it; a rotation builds the next snapshot (the JWKS response bytes included)
//! and swaps it in. Keys live only in memory: a restarted server has new keys, and tokens from before the restart no
//! longer verify.

use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
    PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

/// Most retired keys published at once. With `next` and `current` the JWKS holds at most 16 keys: verifiers scan
/// it, and a rotation that would exceed it is refused (see [`check_rotation_period`]).
pub const MAX_RETIRED_KEYS: usize = 14;

/// Room reserved for a signed token: header (~110 characters with a 43-character kid), claims (~300), signature
/// (86 for ES256/EdDSA). Tokens larger than this only cost one reallocation.
const TOKEN_CAPACITY_BYTES: usize = 640;

thread_local! {
    /// Scratch space for a token's claims JSON (a few hundred bytes; reused, so minting does not allocate for it).
    static CLAIMS_JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A JWS signing algorithm the ring can use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256 (RFC 7518 §3.4), fixed-length `r || s` signatures: the default.
    #[default]
    #[serde(rename = "ES256")]
    #[value(name = "ES256")]
    Es256,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    #[value(name = "EdDSA")]
    EdDsa,
}

impl SigningAlg {
    /// The JOSE `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
        }
    }

    /// The same algorithm in `jsonwebtoken`'s terms.
    pub fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// The media type a JWS announces in its `typ` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsType {
    /// `at+jwt`: an access token (RFC 9068 §2.1), so it cannot be confused with an ID token.
    AccessToken,
    /// `JWT`: an OpenID Connect ID token.
    IdToken,
}

impl JwsType {
    /// The `typ` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            JwsType::AccessToken => "at+jwt",
            JwsType::IdToken => "JWT",
        }
    }
}

/// Why a key could not be made, used or rotated.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// aws-lc-rs could not generate or load a key pair.
    #[error("key generation failed: {0}")]
    Generate(&'static str),
    /// A signature could not be made.
    #[error("signing failed")]
    Sign,
    /// The claims could not be serialized (a bug: our claim types always serialize).
    #[error("claims do not serialize: {0}")]
    Claims(String),
    /// A rotation would publish more than [`MAX_RETIRED_KEYS`] retired keys.
    #[error(
        "rotation refused: {retired} retired keys are still published (the most is {MAX_RETIRED_KEYS}); the next \
         one leaves the JWKS at {next_unpublish_s}"
    )]
    RingFull {
        /// Retired keys published now.
        retired: usize,
        /// When the oldest of them may leave the JWKS (seconds since the epoch).
        next_unpublish_s: u64,
    },
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// One signing key with everything derived from it once.
pub struct SigningKey {
    kid: String,
    alg: SigningAlg,
    pair: Pair,
    jwk: Jwk,
    decoding: DecodingKey,
    /// base64url of `{"alg":..,"kid":..,"typ":"at+jwt"}`.
    header_at_b64: String,
    /// base64url of `{"alg":..,"kid":..,"typ":"JWT"}`.
    header_id_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

impl SigningKey {
    /// Generates a fresh key pair (from the system CSPRNG) and derives its kid, JWK and headers.
    pub fn generate(alg: SigningAlg) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let (pair, public) = match alg {
            SigningAlg::Es256 => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Generate("P-256 key generation"))?;
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                        .map_err(|_| KeyError::Generate("P-256 PKCS#8 load"))?;
                let public = pair.public_key().as_ref().to_vec();
                (Pair::Es256(pair), public)
            }
            SigningAlg::EdDsa => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| KeyError::Generate("Ed25519 key generation"))?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| KeyError::Generate("Ed25519 PKCS#8 load"))?;
                let public = pair.public_key().as_ref().to_vec();
                (Pair::EdDsa(pair), public)
            }
        };
        let (params, thumbprint_input, decoding) = match alg {
            SigningAlg::Es256 => {
                // An uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                if public.len() != 65 || public[0] != 4 {
                    return Err(KeyError::Generate("unexpected P-256 public key encoding"));
                }
                let x = URL_SAFE_NO_PAD.encode(&public[1..33]);
                let y = URL_SAFE_NO_PAD.encode(&public[33..65]);
                // RFC 7638 §3.2: the required members, lexicographic order, no whitespace.
                let input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                let params = AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                    key_type: EllipticCurveKeyType::EC,
                    curve: EllipticCurve::P256,
                    x,
                    y,
                });
                (params, input, DecodingKey::from_ec_der(&public))
            }
            SigningAlg::EdDsa => {
                let x = URL_SAFE_NO_PAD.encode(&public);
                let input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
                let params = AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x,
                });
                (params, input, DecodingKey::from_ed_der(&public))
            }
        };
        // The kid is the key's RFC 7638 thumbprint: unique per key and checkable by anyone holding the JWK.
        let kid =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, thumbprint_input.as_bytes()));
        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(match alg {
                    SigningAlg::Es256 => KeyAlgorithm::ES256,
                    SigningAlg::EdDsa => KeyAlgorithm::EdDSA,
                }),
                key_id: Some(kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: params,
        };
        let header = |typ: JwsType| -> Result<String, KeyError> {
            let json = serde_json::to_vec(&HeaderJson {
                alg: alg.as_str(),
                kid: &kid,
                typ: typ.as_str(),
            })
            .map_err(|e| KeyError::Claims(e.to_string()))?;
            Ok(URL_SAFE_NO_PAD.encode(json))
        };
        Ok(SigningKey {
            header_at_b64: header(JwsType::AccessToken)?,
            header_id_b64: header(JwsType::IdToken)?,
            kid,
            alg,
            pair,
            jwk,
            decoding,
        })
    }

    /// The key id (RFC 7638 SHA-256 thumbprint, base64url).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The public JWK (`kty`, `crv`, `x`, `y` for EC, `kid`, `alg`, `use`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The public key for verification.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// Signs `claims` as a JWS compact serialization with `typ`, this key's `alg` and `kid`.
    ///
    /// One allocation (the returned `String`): the claims' JSON is base64url-encoded as it is serialized, straight
    /// into the output, and the signature is made over the output's bytes so far.
    pub fn sign<C: Serialize + ?Sized>(
        &self,
        typ: JwsType,
        claims: &C,
    ) -> Result<String, KeyError> {
        let header = match typ {
            JwsType::AccessToken => &self.header_at_b64,
            JwsType::IdToken => &self.header_id_b64,
        };
        let mut out = String::with_capacity(TOKEN_CAPACITY_BYTES);
        out.push_str(header);
        out.push('.');
        // The claims are serialized whole into a per-thread buffer and encoded in one call: serde_json writes in
        // many small pieces, and a streaming base64 writer paid a UTF-8 check and a partial-block copy per piece.
        CLAIMS_JSON.with_borrow_mut(|json| {
            json.clear();
            serde_json::to_writer(&mut *json, claims)
                .map_err(|e| KeyError::Claims(e.to_string()))?;
            URL_SAFE_NO_PAD.encode_string(json.as_slice(), &mut out);
            Ok::<(), KeyError>(())
        })?;
        let signing_input_len = out.len();
        out.push('.');
        match &self.pair {
            Pair::Es256(p) => {
                // aws-lc-rs draws the nonce itself; the `rng` argument is kept for ring compatibility only.
                let sig = p
                    .sign(&SystemRandom::new(), &out.as_bytes()[..signing_input_len])
                    .map_err(|_| KeyError::Sign)?;
                URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut out);
            }
            Pair::EdDsa(p) => {
                let sig = p.sign(&out.as_bytes()[..signing_input_len]);
                URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut out);
            }
        }
        Ok(out)
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// Signing.
    Current,
    /// Published until its tokens expired; no longer signing.
    Retired,
}

/// A retired key and how long it stays published.
#[derive(Debug, Clone)]
pub struct RetiredKey {
    /// The key.
    pub key: Arc<SigningKey>,
    /// When it stopped signing (seconds since the epoch).
    pub retired_at_s: u64,
    /// When it leaves the JWKS: `retired_at_s` + the longest signed token lifetime + the clock leeway.
    pub published_until_s: u64,
}

/// One immutable state of the ring.
#[derive(Debug)]
pub struct RingState {
    /// Rotations since the ring was made.
    pub generation: u64,
    /// The signing key.
    pub current: Arc<SigningKey>,
    /// The key that signs after the next rotation.
    pub next: Arc<SigningKey>,
    /// Retired keys still published, newest first.
    pub retired: Vec<RetiredKey>,
    /// The JWKS response body (RFC 7517 JWK Set): current, next, then retired keys.
    pub jwks_json: Bytes,
    /// The earliest `published_until_s` among the retired keys (`u64::MAX` if none): when this state goes stale.
    unpublish_due_s: u64,
}

impl RingState {
    fn build(
        generation: u64,
        current: Arc<SigningKey>,
        next: Arc<SigningKey>,
        retired: Vec<RetiredKey>,
    ) -> Result<RingState, KeyError> {
        let mut keys = Vec::with_capacity(2 + retired.len());
        keys.push(current.jwk.clone());
        keys.push(next.jwk.clone());
        keys.extend(retired.iter().map(|r| r.key.jwk.clone()));
        let jwks =
            serde_json::to_vec(&JwkSet { keys }).map_err(|e| KeyError::Claims(e.to_string()))?;
        let unpublish_due_s = retired
            .iter()
            .map(|r| r.published_until_s)
            .min()
            .unwrap_or(u64::MAX);
        Ok(RingState {
            generation,
            current,
            next,
            retired,
            jwks_json: Bytes::from(jwks),
            unpublish_due_s,
        })
    }

    /// The published key with this kid, and its state.
    pub fn find(&self, kid: &str) -> Option<(&Arc<SigningKey>, KeyState)> {
        if self.current.kid == kid {
            return Some((&self.current, KeyState::Current));
        }
        if self.next.kid == kid {
            return Some((&self.next, KeyState::Next));
        }
        self.retired
            .iter()
            .find(|r| r.key.kid == kid)
            .map(|r| (&r.key, KeyState::Retired))
    }

    /// Keys in the JWKS.
    pub fn published_keys(&self) -> usize {
        2 + self.retired.len()
    }
}

/// Checks that rotating every `every_s` seconds, with retired keys published for `grace_s` seconds, never needs more
/// than [`MAX_RETIRED_KEYS`] retired keys at once.
pub fn check_rotation_period(every_s: u64, grace_s: u64) -> Result<(), String> {
    let needed = grace_s.div_ceil(every_s.max(1)) + 1;
    if needed > MAX_RETIRED_KEYS as u64 {
        let least = grace_s.div_ceil(MAX_RETIRED_KEYS as u64 - 1);
        Err(format!(
            "every {every_s} s with tokens verifiable for {grace_s} s (longest lifetime + leeway) would publish \
             {needed} retired keys, more than {MAX_RETIRED_KEYS}; rotate every {least} s or more"
        ))
    } else {
        Ok(())
    }
}

/// The key ring (see the module docs).
pub struct KeyRing {
    alg: SigningAlg,
    /// How long a retired key stays published: longest signed token lifetime + clock leeway.
    retire_grace_s: u64,
    state: RwLock<Arc<RingState>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("alg", &self.alg)
            .field("retire_grace_s", &self.retire_grace_s)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A ring with a fresh current and next key.
    pub fn new(alg: SigningAlg, retire_grace_s: u64) -> Result<KeyRing, KeyError> {
        let current = Arc::new(SigningKey::generate(alg)?);
        let next = Arc::new(SigningKey::generate(alg)?);
        let state = RingState::build(0, current, next, Vec::new())?;
        Ok(KeyRing {
            alg,
            retire_grace_s,
            state: RwLock::new(Arc::new(state)),
        })
    }

    /// The signing algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// How long a retired key stays published, seconds.
    pub fn retire_grace_s(&self) -> u64 {
        self.retire_grace_s
    }

    /// The state at `now_s`: retired keys whose tokens have all expired are dropped first (and the JWKS rebuilt), so
    /// what is published never depends on a background task having run.
    pub fn snapshot(&self, now_s: u64) -> Arc<RingState> {
        {
            let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if now_s < s.unpublish_due_s {
                return Arc::clone(&s);
            }
        }
        let mut w = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if now_s >= w.unpublish_due_s {
            if let Ok(pruned) = Self::pruned(&w, now_s) {
                *w = Arc::new(pruned);
            }
        }
        Arc::clone(&w)
    }

    fn pruned(s: &RingState, now_s: u64) -> Result<RingState, KeyError> {
        let retired = s
            .retired
            .iter()
            .filter(|r| now_s < r.published_until_s)
            .cloned()
            .collect();
        RingState::build(
            s.generation,
            Arc::clone(&s.current),
            Arc::clone(&s.next),
            retired,
        )
    }

    /// Rotates at `now_s`: next becomes current, current is retired, a new next is generated. Refused (nothing
    /// changes) when [`MAX_RETIRED_KEYS`] retired keys are still published.
    pub fn rotate(&self, now_s: u64) -> Result<Arc<RingState>, KeyError> {
        // The new key is generated before the lock is taken, so signers never wait on key generation.
        let fresh = Arc::new(SigningKey::generate(self.alg)?);
        let mut w = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let live = Self::pruned(&w, now_s)?;
        if live.retired.len() >= MAX_RETIRED_KEYS {
            return Err(KeyError::RingFull {
                retired: live.retired.len(),
                next_unpublish_s: live.unpublish_due_s,
            });
        }
        let mut retired = Vec::with_capacity(live.retired.len() + 1);
        retired.push(RetiredKey {
            key: Arc::clone(&live.current),
            retired_at_s: now_s,
            published_until_s: now_s.saturating_add(self.retire_grace_s),
        });
        retired.extend(live.retired);
        let state = Arc::new(RingState::build(
            live.generation + 1,
            Arc::clone(&live.next),
            fresh,
            retired,
        )?);
        *w = Arc::clone(&state);
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_and_eddsa_keys_sign_tokens_that_jsonwebtoken_verifies() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let k = SigningKey::generate(alg).unwrap();
            let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
            let token = k.sign(JwsType::AccessToken, &claims).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg.jwt_algorithm());
            assert_eq!(header.kid.as_deref(), Some(k.kid()));
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            let key = DecodingKey::from_jwk(k.jwk()).unwrap();
            let mut v = jsonwebtoken::Validation::new(alg.jwt_algorithm());
            v.validate_aud = false;
            let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
            assert_eq!(data.claims, claims);
            let id = k.sign(JwsType::IdToken, &claims).unwrap();
            assert_eq!(
                jsonwebtoken::decode_header(&id).unwrap().typ.as_deref(),
                Some("JWT")
            );
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        let k = SigningKey::generate(SigningAlg::Es256).unwrap();
        let AlgorithmParameters::EllipticCurve(p) = &k.jwk().algorithm else {
            panic!("EC key expected");
        };
        let input = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            p.x, p.y
        );
        let want = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, input.as_bytes()));
        assert_eq!(k.kid(), want);
        assert_eq!(k.kid().len(), 43);
    }

    #[test]
    fn rotation_promotes_next_and_retires_current_until_its_tokens_expire() {
        let ring = KeyRing::new(SigningAlg::Es256, 100).unwrap();
        let s0 = ring.snapshot(1_000);
        let s1 = ring.rotate(1_000).unwrap();
        assert_eq!(s1.generation, 1);
        assert_eq!(s1.current.kid(), s0.next.kid());
        assert_eq!(s1.retired[0].key.kid(), s0.current.kid());
        assert_eq!(s1.retired[0].published_until_s, 1_100);
        assert_eq!(s1.find(s0.current.kid()).unwrap().1, KeyState::Retired);
        assert_eq!(ring.snapshot(1_099).published_keys(), 3);
        let later = ring.snapshot(1_100);
        assert_eq!(later.published_keys(), 2);
        assert!(later.find(s0.current.kid()).is_none());
        assert_eq!(later.generation, 1);
    }

    #[test]
    fn a_full_ring_refuses_to_rotate() {
        let ring = KeyRing::new(SigningAlg::EdDsa, 1_000).unwrap();
        for i in 0..MAX_RETIRED_KEYS as u64 {
            ring.rotate(10 + i).unwrap();
        }
        let err = ring.rotate(100).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::RingFull {
                    retired: MAX_RETIRED_KEYS,
                    next_unpublish_s: 1_010
                }
            ),
            "{err}"
        );
        // Once the oldest retired key's tokens have expired there is room again.
        ring.rotate(1_010).unwrap();
    }

    #[test]
    fn rotation_period_bound() {
        assert!(check_rotation_period(600, 330).is_ok());
        assert!(check_rotation_period(1, 330).is_err());
        assert!(check_rotation_period(30, 330).is_ok());
    }
}
