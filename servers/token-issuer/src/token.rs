//! What an access token says (RFC 9068 §2.2), borrowed from the request so minting one copies nothing but the
//! signed bytes, and its random `jti`.

use aws_lc_rs::rand;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::keys::KeyError;

/// Random bytes in a `jti`: 128 bits, so ids never collide in practice (and cannot be guessed).
pub const JTI_BYTES: usize = 16;

/// Characters of a `jti`: 16 bytes in unpadded base64url.
pub const JTI_CHARS: usize = 22;

/// A fresh `jti` as a stack string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Jti([u8; JTI_CHARS]);

impl std::fmt::Debug for Jti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Jti").field(&self.as_str()).finish()
    }
}

impl Jti {
    /// 128 bits from the system CSPRNG, base64url-encoded.
    pub fn random() -> Result<Jti, KeyError> {
        let mut raw = [0u8; JTI_BYTES];
        rand::fill(&mut raw).map_err(|_| KeyError::Generate("random jti"))?;
        let mut out = [0u8; JTI_CHARS];
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .map_err(|_| KeyError::Generate("jti encoding"))?;
        debug_assert_eq!(n, JTI_CHARS);
        Ok(Jti(out))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        // base64url output is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// An `aud` value being minted: one audience, or several (RFC 8707 with more than one `resource`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AudRef<'a> {
    /// A single audience (serialized as a string).
    One(&'a str),
    /// Several audiences (serialized as an array).
    Many(Vec<&'a str>),
}

/// The claims of an access token being minted.
#[derive(Debug, Clone, Serialize)]
pub struct AccessTokenClaims<'a> {
    /// Issuer.
    pub iss: &'a str,
    /// Subject.
    pub sub: &'a str,
    /// Audience(s).
    pub aud: AudRef<'a>,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before (= `iat`).
    pub nbf: u64,
    /// Unique id.
    pub jti: &'a str,
    /// The client it was issued to.
    pub client_id: &'a str,
    /// Granted scope.
    pub scope: &'a str,
    /// The refresh-token grant (family) the token was issued in, if any: revoking the grant revokes the token
    /// with one lookup, however many times it was refreshed. Absent (and costless) for other grants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<&'a str>,
    /// Who acts for the subject (RFC 8693 §4.1), set only by token exchange. `None` is skipped, so tokens of the
    /// other grants serialize exactly as before (one `is_none` test, no allocation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<&'a Act>,
}

/// Most nested `act` claims kept (the current actor plus prior ones); a deeper chain is refused.
pub const MAX_ACT_DEPTH: usize = 4;

/// The `act` (actor) claim of RFC 8693 §4.1: the party acting for the subject, with the prior actor nested inside.
/// Only `sub` and the nested `act` are kept; other members of a foreign `act` are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    /// The acting party.
    pub sub: String,
    /// The actor before this one, if the subject token was itself delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Act>>,
}

impl Act {
    /// How many actors the chain holds (1 for a single actor).
    pub fn depth(&self) -> usize {
        1 + self.act.as_ref().map_or(0, |a| a.depth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jtis_are_22_base64url_characters_and_differ() {
        let a = Jti::random().unwrap();
        let b = Jti::random().unwrap();
        assert_eq!(a.as_str().len(), JTI_CHARS);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn audiences_serialize_as_string_or_array() {
        let one = serde_json::to_string(&AudRef::One("https://a")).unwrap();
        assert_eq!(one, r#""https://a""#);
        let many = serde_json::to_string(&AudRef::Many(vec!["https://a", "https://b"])).unwrap();
        assert_eq!(many, r#"["https://a","https://b"]"#);
    }
}
