//! Token exchange (RFC 8693): a client presents a token about a subject (`subject_token`, from this issuer or a
//! trusted one) and gets an access token for that subject scoped to another audience, optionally recording who acts
//! for the subject (`act`, §4.1).
//!
//! Who may exchange what is an [`ExchangePolicy`] per client (`[[exchange_policies]]`); a client with the grant but
//! no policy is `unauthorized_client`. The rules, in order:
//! - `requested_token_type`, if given, must be `...:access_token` (the only type issued), else `invalid_request`;
//! - `subject_token_type` must be `...:access_token` or `...:jwt`, else `invalid_request`;
//! - the subject token's issuer must be `self` or a trusted issuer listed in the policy's `subjects_from` (and that
//!   trusted issuer must list this client): else `invalid_grant`. A `self` token must verify as one of our access
//!   tokens (key ring, `typ`, not expired, not revoked); a trusted issuer's token as in [`crate::trust`]. Failures are
//!   `invalid_grant` with the reason;
//! - an `actor_token` (with its `actor_token_type`) needs `may_act = true`, else `unauthorized_client`; it is
//!   verified like the subject token. `act` becomes `{"sub": <actor>, "act": <the subject token's act>}`. Without an
//!   actor token, `client_as_actor = true` records the exchanging client as the actor the same way; otherwise the
//!   subject token's own `act`, if any, is carried over unchanged (a delegation is never silently dropped). A chain
//!   deeper than [`crate::token::MAX_ACT_DEPTH`] is `invalid_grant`;
//! - the audience: each `resource` (absolute URI) and the `audience` (a name from `exchange_audiences`, mapped to
//!   its URI, or else taken as is) must be in the policy's `audiences`, else `invalid_target`; none given = the
//!   policy's first audience;
//! - the scope is never broader than both the subject token's `scope` and the policy's `scopes`: a requested scope
//!   must lie in both (else `invalid_scope`); without `scope`, the granted scope is the subject token's scopes that
//!   the policy allows (none left: `invalid_scope`). A subject token without `scope` has no scopes to pass on.
//!
//! The issued token's `sub` is the subject (mapped for a trusted issuer), `client_id` the exchanging client; the
//! response carries `issued_token_type = urn:ietf:params:oauth:token-type:access_token`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::assertion::{AssertionError, parse, required};
use crate::config::{
    Client, ConfigError, MAX_SCOPES_PER_CLIENT, invalid, is_resource_uri, is_scope_token,
};
use crate::grants::{Grant, TokenRequest, TokenResponse};
use crate::oauth::{ErrorCode, OAuthError};
use crate::token::{Act, AudRef, MAX_ACT_DEPTH};
use crate::trust::TrustedIssuerConfig;

/// The `grant_type` value.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type of an access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token type of a JWT (RFC 8693 §3).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The `subjects_from` entry naming this issuer's own tokens.
pub const SELF: &str = "self";
/// Most `subjects_from` or `audiences` entries in one policy.
pub const MAX_POLICY_ENTRIES: usize = 16;

/// One policy as written (`[[exchange_policies]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    /// The client it governs (must have the token-exchange grant).
    pub client_id: String,
    /// Issuers whose tokens it may exchange: `"self"` and/or trusted issuer identifiers.
    pub subjects_from: Vec<String>,
    /// Audiences it may ask for: absolute URIs or names from `exchange_audiences`. The first is the default.
    pub audiences: Vec<String>,
    /// The most scope it may get (also bounded by the subject token's scope).
    pub scopes: Vec<String>,
    /// Whether it may present actor tokens (delegation).
    #[serde(default)]
    pub may_act: bool,
    /// Whether, without an actor token, the client itself is recorded as the actor.
    #[serde(default)]
    pub client_as_actor: bool,
}

/// A policy, validated.
#[derive(Debug, Clone)]
pub struct ExchangePolicy {
    /// The client.
    pub client_id: String,
    /// `"self"` is allowed.
    pub from_self: bool,
    /// Trusted issuer identifiers allowed.
    pub from_issuers: Vec<String>,
    /// Allowed `aud` values (names already mapped); the first is the default.
    pub audiences: Vec<String>,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// Actor tokens allowed.
    pub may_act: bool,
    /// The client is the actor when no actor token is given.
    pub client_as_actor: bool,
}

/// Validates the policies against the clients and trusted issuers.
pub fn resolve_policies(
    policies: Vec<FilePolicy>,
    clients: &[Arc<Client>],
    trusted: &[TrustedIssuerConfig],
    names: &BTreeMap<String, String>,
) -> Result<Vec<ExchangePolicy>, ConfigError> {
    let mut out: Vec<ExchangePolicy> = Vec::with_capacity(policies.len());
    for (i, p) in policies.into_iter().enumerate() {
        let f = |name: &str| format!("exchange_policies[{i}].{name}");
        let client = clients
            .iter()
            .find(|c| c.id == p.client_id)
            .ok_or_else(|| invalid(f("client_id"), format!("no client {:?}", p.client_id)))?;
        if !client.grants.contains(Grant::TokenExchange) {
            return Err(invalid(
                f("client_id"),
                format!("client {:?} lacks the grant {GRANT_TYPE}", p.client_id),
            ));
        }
        if out.iter().any(|o| o.client_id == p.client_id) {
            return Err(invalid(f("client_id"), "one policy per client"));
        }
        if p.subjects_from.is_empty() || p.subjects_from.len() > MAX_POLICY_ENTRIES {
            return Err(invalid(
                f("subjects_from"),
                format!("1 to {MAX_POLICY_ENTRIES} entries"),
            ));
        }
        let mut from_self = false;
        let mut from_issuers = Vec::new();
        for (j, s) in p.subjects_from.iter().enumerate() {
            if s == SELF {
                from_self = true;
            } else if let Some(t) = trusted.iter().find(|t| &t.issuer == s || &t.alias == s) {
                // By identifier or by alias (an alias survives `--trusted-issuer ALIAS=URL` moving the issuer).
                from_issuers.push(t.issuer.clone());
            } else {
                return Err(invalid(
                    format!("exchange_policies[{i}].subjects_from[{j}]"),
                    format!("{s:?} is neither \"self\" nor a trusted issuer"),
                ));
            }
        }
        if p.audiences.is_empty() || p.audiences.len() > MAX_POLICY_ENTRIES {
            return Err(invalid(
                f("audiences"),
                format!("1 to {MAX_POLICY_ENTRIES} entries"),
            ));
        }
        let mut audiences = Vec::with_capacity(p.audiences.len());
        for (j, a) in p.audiences.iter().enumerate() {
            let aud = names.get(a).cloned().unwrap_or_else(|| a.clone());
            if !is_resource_uri(&aud) {
                return Err(invalid(
                    format!("exchange_policies[{i}].audiences[{j}]"),
                    format!("{a:?} is neither an absolute URI nor a name in exchange_audiences"),
                ));
            }
            audiences.push(aud);
        }
        if p.scopes.len() > MAX_SCOPES_PER_CLIENT {
            return Err(invalid(
                f("scopes"),
                format!("at most {MAX_SCOPES_PER_CLIENT}"),
            ));
        }
        for (j, s) in p.scopes.iter().enumerate() {
            if !is_scope_token(s) || !client.allows_scope(s) {
                return Err(invalid(
                    format!("exchange_policies[{i}].scopes[{j}]"),
                    format!("{s:?} is not a scope of client {:?}", p.client_id),
                ));
            }
        }
        out.push(ExchangePolicy {
            client_id: p.client_id,
            from_self,
            from_issuers,
            audiences,
            scopes: p.scopes,
            may_act: p.may_act,
            client_as_actor: p.client_as_actor,
        });
    }
    Ok(out)
}

/// A verified subject or actor token.
struct Verified {
    /// The local subject (mapped for a trusted issuer).
    sub: String,
    /// Its scope.
    scope: Option<String>,
    /// Its `act`.
    act: Option<Act>,
}

fn invalid_grant(what: &str, why: impl std::fmt::Display) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidGrant, format!("{what} refused: {why}"))
}

/// Verifies a subject or actor token (`what` names it in errors).
fn verify_token(
    req: &TokenRequest<'_>,
    policy: &ExchangePolicy,
    what: &'static str,
    token: &str,
    token_type: &str,
) -> Result<Verified, OAuthError> {
    if token_type != ACCESS_TOKEN_TYPE && token_type != JWT_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(format!(
            "unsupported {what}_type: only {ACCESS_TOKEN_TYPE} and {JWT_TOKEN_TYPE}"
        )));
    }
    let issuer = req.issuer;
    let parsed = parse(token).map_err(|e| invalid_grant(what, e))?;
    let iss = required(&parsed.claims.iss, "iss").map_err(|e| invalid_grant(what, e))?;
    if iss == issuer.issuer() {
        if !policy.from_self {
            return Err(invalid_grant(
                what,
                "this client may not exchange tokens of this issuer",
            ));
        }
        let c = issuer
            .verify(token, req.now_s)
            .map_err(|e| invalid_grant(what, e))?;
        return Ok(Verified {
            sub: c.sub,
            scope: c.scope,
            act: c.act,
        });
    }
    let fed = issuer.federation();
    let trusted = fed
        .find(iss)
        .ok_or_else(|| invalid_grant(what, format_args!("issuer {iss} is not trusted")))?;
    if !policy.from_issuers.iter().any(|i| i == iss) || !trusted.allows_client(&policy.client_id) {
        return Err(invalid_grant(
            what,
            format_args!("this client may not exchange tokens of {iss}"),
        ));
    }
    // The issuer bounds its own tokens' lifetime; nothing is cached per token here, so none is imposed.
    fed.verify_from(trusted, &parsed, req.now_s, issuer.leeway_s(), None)
        .map_err(|e| invalid_grant(what, e))?;
    let sub = required(&parsed.claims.sub, "sub").map_err(|e| invalid_grant(what, e))?;
    Ok(Verified {
        sub: trusted.map_subject(sub),
        scope: parsed.claims.scope.clone(),
        act: parsed.claims.act.clone(),
    })
}

/// Issues the token (see the module docs).
pub fn issue(req: &TokenRequest<'_>) -> Result<TokenResponse, OAuthError> {
    let client = req.client.as_ref();
    let form = req.form;
    let policy = req.issuer.federation().policy(&client.id).ok_or_else(|| {
        OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "no exchange policy allows this client to exchange tokens",
        )
    })?;
    if let Some(t) = form.get("requested_token_type") {
        if t != ACCESS_TOKEN_TYPE {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type {t} is not supported; only {ACCESS_TOKEN_TYPE} is issued"
            )));
        }
    }
    let subject_token = form
        .get("subject_token")
        .ok_or_else(|| OAuthError::missing("subject_token"))?;
    let subject_type = form
        .get("subject_token_type")
        .ok_or_else(|| OAuthError::missing("subject_token_type"))?;
    let subject = verify_token(req, policy, "subject_token", subject_token, subject_type)?;
    let act = match (form.get("actor_token"), form.get("actor_token_type")) {
        (Some(_), None) => return Err(OAuthError::missing("actor_token_type")),
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type without actor_token",
            ));
        }
        (Some(token), Some(token_type)) => {
            if !policy.may_act {
                return Err(OAuthError::new(
                    ErrorCode::UnauthorizedClient,
                    "this client may not present actor tokens (exchange policy may_act = false)",
                ));
            }
            let actor = verify_token(req, policy, "actor_token", token, token_type)?;
            Some(Act {
                sub: actor.sub,
                act: subject.act.map(Box::new),
            })
        }
        (None, None) if policy.client_as_actor => Some(Act {
            sub: client.id.clone(),
            act: subject.act.map(Box::new),
        }),
        (None, None) => subject.act,
    };
    if act.as_ref().is_some_and(|a| a.depth() > MAX_ACT_DEPTH) {
        return Err(invalid_grant("subject_token", AssertionError::ActTooDeep));
    }
    let aud = exchange_audience(req, policy)?;
    let scope = exchange_scope(policy, subject.scope.as_deref(), form.get("scope"))?;
    let access_token = req.issuer.mint_access_token_with_act(
        &subject.sub,
        client,
        aud,
        &scope,
        act.as_ref(),
        req.now_s,
    )?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: req.issuer.lifetimes().access_s,
        scope: Some(scope),
        refresh_token: None,
        id_token: None,
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
    })
}

/// The `aud`: `resource`s and the mapped `audience`, each allowed by the policy; default its first audience.
fn exchange_audience<'a>(
    req: &'a TokenRequest<'_>,
    policy: &'a ExchangePolicy,
) -> Result<AudRef<'a>, OAuthError> {
    let names = &req.issuer.federation().audience_names;
    let mut picked: Vec<&'a str> = Vec::new();
    let requested = req
        .form
        .get_all("resource")
        .map(|r| (r, true))
        .chain(req.form.get("audience").map(|a| (a, false)));
    for (value, is_resource) in requested {
        let aud = if is_resource {
            if !is_resource_uri(value) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidTarget,
                    "resource must be an absolute URI without a fragment (RFC 8707)",
                ));
            }
            value
        } else {
            names.get(value).map_or(value, String::as_str)
        };
        let allowed = policy
            .audiences
            .iter()
            .find(|a| a.as_str() == aud)
            .ok_or_else(|| {
                OAuthError::new(
                    ErrorCode::InvalidTarget,
                    format!("the exchange policy does not allow the audience {value}"),
                )
            })?;
        if !picked.contains(&allowed.as_str()) {
            picked.push(allowed.as_str());
        }
    }
    Ok(match picked.len() {
        0 => AudRef::One(policy.audiences[0].as_str()),
        1 => AudRef::One(picked[0]),
        _ => AudRef::Many(picked),
    })
}

/// The granted scope (see the module docs): within the subject token's and the policy's.
fn exchange_scope(
    policy: &ExchangePolicy,
    subject_scope: Option<&str>,
    requested: Option<&str>,
) -> Result<String, OAuthError> {
    let held: Vec<&str> = subject_scope
        .map(|s| s.split(' ').filter(|t| !t.is_empty()).collect())
        .unwrap_or_default();
    let allowed = |s: &str| held.contains(&s) && policy.scopes.iter().any(|p| p == s);
    let mut out: Vec<&str> = Vec::new();
    match requested {
        Some(r) => {
            for s in r.split(' ') {
                if !is_scope_token(s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        "malformed scope: tokens separated by single spaces",
                    ));
                }
                if !allowed(s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!(
                            "scope {s} is not both in the subject token's scope and allowed by the exchange policy"
                        ),
                    ));
                }
                if out.len() >= MAX_SCOPES_PER_CLIENT {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!("more than {MAX_SCOPES_PER_CLIENT} scope tokens"),
                    ));
                }
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        None => {
            for &s in &held {
                if allowed(s) && !out.contains(&s) && out.len() < MAX_SCOPES_PER_CLIENT {
                    out.push(s);
                }
            }
            if out.is_empty() {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    "the subject token carries no scope the exchange policy allows",
                ));
            }
        }
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ExchangePolicy {
        ExchangePolicy {
            client_id: "x".into(),
            from_self: true,
            from_issuers: vec![],
            audiences: vec!["https://b".into()],
            scopes: vec!["read".into(), "write".into()],
            may_act: false,
            client_as_actor: false,
        }
    }

    #[test]
    fn scope_is_within_the_subject_token_and_the_policy() {
        let p = policy();
        assert_eq!(
            exchange_scope(&p, Some("read admin"), None).unwrap(),
            "read"
        );
        assert_eq!(
            exchange_scope(&p, Some("read write"), Some("write")).unwrap(),
            "write"
        );
        for (held, asked) in [
            (Some("read"), Some("write")),       // not in the subject token
            (Some("read admin"), Some("admin")), // not in the policy
            (None, None),                        // nothing to pass on
            (Some("admin"), None),
            (Some("read"), Some("read  read")),
        ] {
            assert_eq!(
                exchange_scope(&p, held, asked).unwrap_err().code,
                ErrorCode::InvalidScope,
                "{held:?} {asked:?}"
            );
        }
    }
}
