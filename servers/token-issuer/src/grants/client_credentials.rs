//! The client credentials grant (RFC 6749 §4.4): the authenticated client gets an access token for itself.
//!
//! Parameters: `scope` (optional: the client's default scopes when absent; every token must be allowed for the
//! client, else `invalid_scope`) and `resource` (optional, RFC 8707, up to four: each must be an absolute URI allowed
//! for the client, else `invalid_target`; they become `aud`, otherwise `aud` is the client's audience). No refresh
//! token (RFC 6749 §4.4.3).

use std::borrow::Cow;

use crate::config::{Client, MAX_SCOPES_PER_CLIENT, is_resource_uri, is_scope_token};
use crate::form::{Form, MAX_RESOURCE_PARAMS};
use crate::grants::{TokenRequest, TokenResponse};
use crate::oauth::{ErrorCode, OAuthError};
use crate::token::AudRef;

/// Issues the token.
pub fn issue(req: &TokenRequest<'_>) -> Result<TokenResponse, OAuthError> {
    let client = req.client.as_ref();
    let scope = granted_scope(client, req.form.get("scope"))?;
    let aud = audience(client, req.form)?;
    let lifetime_s = req.issuer.lifetimes().access_s;
    let access_token = req
        .issuer
        .mint_access_token(&client.id, client, aud, &scope, req.now_s)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: lifetime_s,
        scope: Some(scope.into_owned()),
        refresh_token: None,
        id_token: None,
        issued_token_type: None,
    })
}

/// The scope to grant: the request's (validated, duplicates dropped) or the client's default.
pub fn granted_scope<'a>(
    client: &'a Client,
    requested: Option<&'a str>,
) -> Result<Cow<'a, str>, OAuthError> {
    let Some(requested) = requested else {
        if client.default_scope.is_empty() {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "no scope requested and the client has no default scope",
            ));
        }
        return Ok(Cow::Borrowed(client.default_scope.as_str()));
    };
    let mut tokens = 0usize;
    let mut duplicates = false;
    for (i, s) in requested.split(' ').enumerate() {
        // RFC 6749 §3.3: tokens are separated by single spaces; an empty token means a stray space.
        if !is_scope_token(s) {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "malformed scope: tokens separated by single spaces, no quote or backslash",
            ));
        }
        if !client.allows_scope(s) {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!("scope {s} is not allowed for this client"),
            ));
        }
        tokens += 1;
        if tokens > MAX_SCOPES_PER_CLIENT {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!("more than {MAX_SCOPES_PER_CLIENT} scope tokens"),
            ));
        }
        duplicates |= requested.split(' ').take(i).any(|t| t == s);
    }
    if !duplicates {
        return Ok(Cow::Borrowed(requested));
    }
    let mut out = String::with_capacity(requested.len());
    for (i, s) in requested.split(' ').enumerate() {
        if !requested.split(' ').take(i).any(|t| t == s) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
    }
    Ok(Cow::Owned(out))
}

/// The `aud` to mint: the `resource` parameters (checked, duplicates dropped) or the client's audience.
pub fn audience<'a>(client: &'a Client, form: &'a Form<'a>) -> Result<AudRef<'a>, OAuthError> {
    let mut picked: Vec<&'a str> = Vec::new();
    for r in form.get_all("resource") {
        if !is_resource_uri(r) {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "resource must be an absolute URI without a fragment (RFC 8707)",
            ));
        }
        if !client.allows_resource(r) {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                format!("resource {r} is not allowed for this client"),
            ));
        }
        if !picked.contains(&r) {
            picked.push(r);
        }
    }
    debug_assert!(picked.len() <= MAX_RESOURCE_PARAMS);
    Ok(match picked.len() {
        0 => AudRef::One(client.audience.as_str()),
        1 => AudRef::One(picked[0]),
        _ => AudRef::Many(picked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::GrantSet;

    fn client() -> Client {
        Client {
            id: "c".into(),
            secret: None,
            auth_method: None,
            redirect_uris: vec![],
            grants: GrantSet::default(),
            scopes: vec!["read".into(), "write".into()],
            default_scope: "read".into(),
            audience: "https://api".into(),
            resources: vec!["https://api".into(), "https://other".into()],
            introspect_any: false,
            jwks: None,
        }
    }

    #[test]
    fn scope_defaults_validates_and_dedupes() {
        let c = client();
        assert_eq!(granted_scope(&c, None).unwrap(), "read");
        assert_eq!(granted_scope(&c, Some("write read")).unwrap(), "write read");
        assert!(matches!(
            granted_scope(&c, Some("read")).unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            granted_scope(&c, Some("read write read")).unwrap(),
            "read write"
        );
        for bad in ["admin", "read  write", " read", "read ", "re\"ad"] {
            let e = granted_scope(&c, Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidScope, "{bad}");
        }
        let mut none = client();
        none.default_scope.clear();
        assert_eq!(
            granted_scope(&none, None).unwrap_err().code,
            ErrorCode::InvalidScope
        );
    }

    #[test]
    fn resources_become_the_audience() {
        let c = client();
        let f = Form::parse(b"").unwrap();
        assert!(matches!(
            audience(&c, &f).unwrap(),
            AudRef::One("https://api")
        ));
        let f = Form::parse(b"resource=https://other").unwrap();
        assert!(matches!(
            audience(&c, &f).unwrap(),
            AudRef::One("https://other")
        ));
        let f = Form::parse(b"resource=https://other&resource=https://api&resource=https://other")
            .unwrap();
        assert!(
            matches!(audience(&c, &f).unwrap(), AudRef::Many(v) if v == ["https://other", "https://api"])
        );
        for bad in [
            "resource=https://evil",
            "resource=relative",
            "resource=https://api%23frag",
        ] {
            let f = Form::parse(bad.as_bytes()).unwrap();
            assert_eq!(
                audience(&c, &f).unwrap_err().code,
                ErrorCode::InvalidTarget,
                "{bad}"
            );
        }
    }
}
