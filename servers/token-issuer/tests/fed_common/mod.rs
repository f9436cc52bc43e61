//! Helpers of the federation tests (private_key_jwt, JWT bearer, token exchange, two-issuer federation): signing
//! arbitrary JWTs as a client or a foreign issuer, and the embedded configuration with sections appended.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use refbench_oidc::keys::{JwsType, SigningAlg, SigningKey};
use refbench_oidc::secret::SecretHasher;
use refbench_oidc::{FileConfig, ResolvedConfig};
use serde_json::Value;

pub const EXCHANGE_ID: &str = "exchange-client";
pub const EXCHANGE_SECRET: &str = "exchange-secret-0123456789abcdef";
pub const PKJWT_ID: &str = "pkjwt-client";
pub const PKJWT_KID: &str = "86UeO0-NOVpzv71rjJMDnDi0Z_xJoCKgoOSd9OqyCh0";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The embedded configuration with `extra` TOML appended (more `[[clients]]`, `[[trusted_issuers]]`, ...).
pub fn embedded_plus(extra: &str) -> ResolvedConfig {
    let text = format!("{}\n{extra}", refbench_oidc::config::DEFAULT_CONFIG_TOML);
    FileConfig::parse(&text, Path::new("test.toml"))
        .unwrap()
        .resolve(SecretHasher::random().unwrap(), false)
        .unwrap()
}

/// The PKCS#8 private key of `pkjwt-client` (its public half is in the embedded config).
pub fn pkjwt_key() -> EncodingKey {
    let der = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pkjwt-client.pkcs8.der"
    ))
    .unwrap();
    EncodingKey::from_ec_der(&der)
}

/// Signs `claims` as ES256 with `key` and `kid` using `jsonwebtoken`.
pub fn sign_es256(key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

/// A fresh P-256 key as a client or foreign issuer would hold it: the private half for `jsonwebtoken` and the JWK
/// Set JSON of the public half.
pub struct TestKey {
    pub key: SigningKey,
}

impl TestKey {
    pub fn new() -> TestKey {
        TestKey {
            key: SigningKey::generate(SigningAlg::Es256).unwrap(),
        }
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// `{"keys":[<public JWK>]}`.
    pub fn jwks_json(&self) -> String {
        serde_json::json!({ "keys": [self.key.jwk()] }).to_string()
    }

    /// A JWT (`typ: JWT`, this key's kid) with `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign(JwsType::IdToken, claims).unwrap()
    }
}

/// A JWT with `header` and `claims` and a junk signature (for `alg: none` and the like).
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 JWT whose HMAC key is `secret` (the classic "public key as HMAC secret" confusion).
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A form body from pairs (values form-urlencoded).
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The claims of a JWT, unverified (for looking at what a test already verified another way).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
