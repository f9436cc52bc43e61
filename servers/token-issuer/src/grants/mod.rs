//! OAuth 2.0 grants: the [`Grant`] enum and one module per grant.
//!
//! Adding a grant (authorization code with PKCE, refresh token):
//! 1. a variant in [`Grant`] with its `grant_type` value in [`Grant::as_str`] and [`Grant::ALL`] (discovery's
//!    `grant_types_supported` and the config's `grant_types` follow from these);
//! 2. a module here with an `issue(&TokenRequest) -> Result<TokenResponse, OAuthError>` like
//!    [`client_credentials::issue`];
//! 3. its arm in the dispatch `match` of `app::Issuer::token`.

pub mod authorization_code;
pub mod client_credentials;
pub mod jwt_bearer;
pub mod refresh_token;
pub mod token_exchange;

use std::sync::Arc;

use serde::Serialize;

use crate::app::Issuer;
use crate::config::Client;
use crate::form::Form;

/// A grant type this issuer implements (RFC 6749 §4, `grant_type` at the token endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `client_credentials` (RFC 6749 §4.4): the client acts for itself; `sub` is its client id.
    ClientCredentials,
    /// `authorization_code` (RFC 6749 §4.1 with PKCE, RFC 7636): a code from `/authorize` for a user's tokens.
    AuthorizationCode,
    /// `refresh_token` (RFC 6749 §6): a rotated refresh token for new tokens of the same grant.
    RefreshToken,
    /// JWT bearer (RFC 7523 §2.1): a trusted issuer's JWT about a subject becomes a token here.
    JwtBearer,
    /// Token exchange (RFC 8693): a subject token becomes a token for another audience.
    TokenExchange,
}

impl Grant {
    /// Every implemented grant, in the order discovery lists them.
    pub const ALL: [Grant; 5] = [
        Grant::ClientCredentials,
        Grant::AuthorizationCode,
        Grant::RefreshToken,
        Grant::JwtBearer,
        Grant::TokenExchange,
    ];

    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::AuthorizationCode => "authorization_code",
            Grant::RefreshToken => "refresh_token",
            Grant::JwtBearer => jwt_bearer::GRANT_TYPE,
            Grant::TokenExchange => token_exchange::GRANT_TYPE,
        }
    }

    /// The grant a `grant_type` value names, if implemented.
    pub fn from_param(value: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|g| g.as_str() == value)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of grants (a client's allowed `grant_types`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantSet(u32);

impl GrantSet {
    /// Adds `g`.
    pub fn insert(&mut self, g: Grant) {
        self.0 |= g.bit();
    }

    /// Whether `g` is in the set.
    pub fn contains(self, g: Grant) -> bool {
        self.0 & g.bit() != 0
    }
}

/// What a grant handler gets: the issuer, the authenticated client, the parsed form and the time.
pub struct TokenRequest<'a> {
    /// The issuer's shared state (keys, config, metrics).
    pub issuer: &'a Issuer,
    /// The authenticated client.
    pub client: &'a Arc<Client>,
    /// The request's form parameters.
    pub form: &'a Form<'a>,
    /// Now, seconds since the epoch (read once per request).
    pub now_s: u64,
}

/// A successful token response (RFC 6749 §5.1); serialized as the response body.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The issued access token (a JWT per RFC 9068).
    pub access_token: String,
    /// Always "Bearer" (RFC 6750).
    pub token_type: &'static str,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
    /// The granted scope (always sent, so the client need not compare with what it asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// A refresh token (not issued by `client_credentials`, RFC 6749 §4.4.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// An OpenID Connect ID token (only for grants that authenticate a user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The type of the issued token (token exchange only, RFC 8693 §2.2.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}
