//! Client secrets stored as keyed hashes: HMAC-SHA256 under a server-held pepper, compared in constant time.
//!
//! Why this is enough for client secrets (and why it is not for user passwords) is argued in the crate docs
//! (`lib.rs`, "Client secrets"). In short: a generated secret with at least 128 bits of entropy cannot be found by
//! guessing, however fast each guess is, so the slow, memory-hard hashing that protects low-entropy human passwords
//! (argon2id, bcrypt, scrypt) buys nothing here and would cost milliseconds on every token request.

use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of a pepper: HMAC-SHA256 keys gain nothing beyond the 64-byte block, and 32 bytes is 256 bits of key.
pub const PEPPER_BYTES: usize = 32;

/// Bytes of a stored secret hash (one HMAC-SHA256 output).
pub const SECRET_HASH_BYTES: usize = 32;

/// Fewest characters a client secret may have: 22 characters is what 128 random bits take in base64url. The server
/// cannot measure entropy; the length is the check it can make, and the docs require generated secrets.
pub const MIN_CLIENT_SECRET_CHARS: usize = 22;

/// Most characters of a client secret (an upper bound on what is hashed per request).
pub const MAX_CLIENT_SECRET_CHARS: usize = 256;

/// Why a pepper or a stored hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text is not unpadded base64url.
    #[error("not unpadded base64url")]
    NotBase64,
    /// The decoded value has the wrong length.
    #[error("must decode to {expected} bytes, got {got}")]
    Length {
        /// Bytes required (at least, for a pepper).
        expected: usize,
        /// Bytes found.
        got: usize,
    },
    /// The system random generator failed (no pepper could be made).
    #[error("the system random generator failed")]
    Random,
}

/// A stored client secret: HMAC-SHA256(pepper, secret).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; SECRET_HASH_BYTES]);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

impl SecretHash {
    /// Parses the unpadded base64url form printed by `token-issuer hash-secret`.
    pub fn from_b64(text: &str) -> Result<SecretHash, SecretError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| SecretError::NotBase64)?;
        let arr: [u8; SECRET_HASH_BYTES] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::Length {
                    expected: SECRET_HASH_BYTES,
                    got: bytes.len(),
                })?;
        Ok(SecretHash(arr))
    }

    /// The unpadded base64url form.
    pub fn to_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// Hashes and checks client secrets under one pepper. The pepper never leaves this value (its `Debug` hides it).
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
    /// A hash no real secret has: checked against when the client is unknown, so an unknown client id costs the same
    /// HMAC as a known one.
    decoy: SecretHash,
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(..)")
    }
}

impl SecretHasher {
    /// A hasher under `pepper`.
    pub fn new(pepper: &[u8; PEPPER_BYTES]) -> SecretHasher {
        let key = hmac::Key::new(hmac::HMAC_SHA256, pepper);
        let mut decoy = [0u8; SECRET_HASH_BYTES];
        decoy.copy_from_slice(hmac::sign(&key, b"\0decoy: no client secret is empty\0").as_ref());
        SecretHasher {
            key,
            decoy: SecretHash(decoy),
        }
    }

    /// A hasher under a fresh random pepper: plaintext secrets from the config are hashed at start and the pepper
    /// lives only in this process.
    pub fn random() -> Result<SecretHasher, SecretError> {
        let mut pepper = [0u8; PEPPER_BYTES];
        rand::fill(&mut pepper).map_err(|_| SecretError::Random)?;
        Ok(SecretHasher::new(&pepper))
    }

    /// A hasher under a pepper given as unpadded base64url of exactly [`PEPPER_BYTES`] bytes.
    pub fn from_pepper_b64(text: &str) -> Result<SecretHasher, SecretError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| SecretError::NotBase64)?;
        let pepper: [u8; PEPPER_BYTES] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::Length {
                    expected: PEPPER_BYTES,
                    got: bytes.len(),
                })?;
        Ok(SecretHasher::new(&pepper))
    }

    /// HMAC-SHA256(pepper, secret).
    pub fn hash(&self, secret: &[u8]) -> SecretHash {
        let mut out = [0u8; SECRET_HASH_BYTES];
        out.copy_from_slice(hmac::sign(&self.key, secret).as_ref());
        SecretHash(out)
    }

    /// Whether `presented` hashes to `stored`, compared in constant time (both sides are 32 bytes, so the comparison
    /// leaks neither length nor the position of the first difference). `None` checks against the decoy and fails,
    /// at the same cost.
    pub fn verify(&self, presented: &[u8], stored: Option<&SecretHash>) -> bool {
        let candidate = self.hash(presented);
        let against = stored.unwrap_or(&self.decoy);
        let equal = constant_time::verify_slices_are_equal(&candidate.0, &against.0).is_ok();
        equal && stored.is_some()
    }
}

/// A bearer secret for the admin endpoints, kept as its SHA-256 so checking it compares two fixed-length digests in
/// constant time.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Fewest characters of an admin token (128 random bits in base64url).
    pub const MIN_CHARS: usize = MIN_CLIENT_SECRET_CHARS;

    /// Keeps the digest of `token`.
    pub fn new(token: &str) -> AdminToken {
        let mut d = [0u8; 32];
        d.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        AdminToken(d)
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &str) -> bool {
        let d = digest::digest(&digest::SHA256, presented.as_bytes());
        constant_time::verify_slices_are_equal(d.as_ref(), &self.0).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_verifies_in_constant_time() {
        let h = SecretHasher::new(&[7u8; PEPPER_BYTES]);
        let stored = h.hash(b"correct horse battery staple 0123");
        assert!(h.verify(b"correct horse battery staple 0123", Some(&stored)));
        assert!(!h.verify(b"correct horse battery staple 0124", Some(&stored)));
        assert!(!h.verify(b"", Some(&stored)));
        assert!(!h.verify(b"anything", None));
        assert_eq!(SecretHash::from_b64(&stored.to_b64()).unwrap(), stored);
        // Another pepper gives another hash: a leaked table is useless without the pepper.
        let other = SecretHasher::new(&[8u8; PEPPER_BYTES]);
        assert!(!other.verify(b"correct horse battery staple 0123", Some(&stored)));
    }

    #[test]
    fn pepper_and_hash_parsing_refuse_bad_input() {
        assert_eq!(
            SecretHasher::from_pepper_b64("!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            SecretHasher::from_pepper_b64(&URL_SAFE_NO_PAD.encode([1u8; 16])).unwrap_err(),
            SecretError::Length {
                expected: 32,
                got: 16
            }
        );
        assert!(SecretHasher::from_pepper_b64(&URL_SAFE_NO_PAD.encode([1u8; 32])).is_ok());
        assert!(SecretHash::from_b64("abc").is_err());
    }

    #[test]
    fn admin_token_matches_only_itself() {
        let t = AdminToken::new("admin-token-0123456789abcdef");
        assert!(t.matches("admin-token-0123456789abcdef"));
        assert!(!t.matches("admin-token-0123456789abcdeg"));
        assert!(!t.matches(""));
    }
}
