//! The discovery document (OpenID Connect Discovery 1.0 §3, RFC 8414 §2), built once at start.
//!
//! It lists only what is implemented: the grants in [`Grant::ALL`], the client authentication methods in
//! [`AuthMethod::ALL`] (`none` not for introspection), the endpoints below, `response_types_supported` `code` with
//! PKCE `S256`, and the ID token and UserInfo claims.

use serde::Serialize;

use crate::client_auth::AuthMethod;
use crate::grants::Grant;
use crate::keys::SigningAlg;

/// Discovery, as OpenID Connect names it.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Discovery, as RFC 8414 names it (same document).
pub const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// The JWK Set.
pub const JWKS_PATH: &str = "/jwks";
/// The token endpoint.
pub const TOKEN_PATH: &str = "/token";
/// Token introspection (RFC 7662).
pub const INTROSPECT_PATH: &str = "/introspect";
/// Token revocation (RFC 7009).
pub const REVOKE_PATH: &str = "/revoke";
/// The authorization endpoint (OIDC Core §3.1.2).
pub const AUTHORIZE_PATH: &str = "/authorize";
/// The login form's target.
pub const LOGIN_PATH: &str = "/login";
/// The UserInfo endpoint (OIDC Core §5.3).
pub const USERINFO_PATH: &str = "/userinfo";
/// On-demand key rotation (admin bearer secret).
pub const ADMIN_ROTATE_PATH: &str = "/admin/rotate";

/// The discovery document.
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    /// The issuer identifier (`iss` of every token).
    pub issuer: String,
    /// `<issuer>/authorize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// `<issuer>/token`.
    pub token_endpoint: String,
    /// `<issuer>/jwks`.
    pub jwks_uri: String,
    /// `<issuer>/userinfo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userinfo_endpoint: Option<String>,
    /// `<issuer>/introspect`.
    pub introspection_endpoint: String,
    /// `<issuer>/revoke`.
    pub revocation_endpoint: String,
    /// The implemented grants.
    pub grant_types_supported: Vec<&'static str>,
    /// `code` only.
    pub response_types_supported: Vec<&'static str>,
    /// `query` only.
    pub response_modes_supported: Vec<&'static str>,
    /// `public`: `sub` is the same for every client.
    pub subject_types_supported: Vec<&'static str>,
    /// The ring's algorithm (ID tokens are signed with the same keys as access tokens).
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
    /// The implemented client authentication methods.
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// `alg`s accepted on `private_key_jwt` client assertions (RFC 8414 §2): the asymmetric ones.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<&'static str>,
    /// Same as the token endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Same as the token endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    /// `S256` only (`plain` is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_challenge_methods_supported: Option<Vec<&'static str>>,
    /// The claims of ID tokens and UserInfo.
    pub claims_supported: Vec<&'static str>,
    /// `prompt` values understood at `/authorize`.
    pub prompt_values_supported: Vec<&'static str>,
    /// RFC 9207: `iss` is in every authorization response.
    pub authorization_response_iss_parameter_supported: bool,
    /// Every scope some client may be granted, sorted.
    pub scopes_supported: Vec<String>,
}

impl Discovery {
    /// The document for `issuer`.
    pub fn new(issuer: &str, alg: SigningAlg, mut scopes: Vec<String>) -> Discovery {
        scopes.sort();
        scopes.dedup();
        let methods: Vec<&'static str> = AuthMethod::ALL.iter().map(|m| m.as_str()).collect();
        let secret_methods: Vec<&'static str> = AuthMethod::ALL
            .iter()
            .filter(|m| **m != AuthMethod::None)
            .map(|m| m.as_str())
            .collect();
        Discovery {
            issuer: issuer.to_string(),
            authorization_endpoint: Some(format!("{issuer}{AUTHORIZE_PATH}")),
            token_endpoint: format!("{issuer}{TOKEN_PATH}"),
            jwks_uri: format!("{issuer}{JWKS_PATH}"),
            userinfo_endpoint: Some(format!("{issuer}{USERINFO_PATH}")),
            introspection_endpoint: format!("{issuer}{INTROSPECT_PATH}"),
            revocation_endpoint: format!("{issuer}{REVOKE_PATH}"),
            grant_types_supported: Grant::ALL.iter().map(|g| g.as_str()).collect(),
            response_types_supported: vec!["code"],
            response_modes_supported: vec!["query"],
            subject_types_supported: vec!["public"],
            id_token_signing_alg_values_supported: vec![alg.as_str()],
            token_endpoint_auth_methods_supported: methods.clone(),
            token_endpoint_auth_signing_alg_values_supported:
                crate::assertion::ASYMMETRIC_ALG_NAMES.to_vec(),
            // Public clients may not introspect.
            introspection_endpoint_auth_methods_supported: secret_methods,
            revocation_endpoint_auth_methods_supported: methods,
            code_challenge_methods_supported: Some(vec!["S256"]),
            claims_supported: vec![
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "azp",
                "at_hash",
                "name",
                "email",
            ],
            prompt_values_supported: vec!["none", "login", "consent", "select_account"],
            authorization_response_iss_parameter_supported: true,
            scopes_supported: scopes,
        }
    }
}
