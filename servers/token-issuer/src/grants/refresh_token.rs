//! The refresh token grant (RFC 6749 §6) with rotation and reuse detection (RFC 9700 §4.14.2, OAuth 2.1 §4.3.1).
//!
//! Refresh tokens are opaque 256-bit random strings, stored server-side under their SHA-256, never signed by the key
//! ring. They are issued by the authorization code grant to clients allowed the `refresh_token` grant (whether or
//! not `offline_access` was asked for: the client registration decides). Every token belongs to a family: the chain
//! of tokens rotated from one authorization code. Redeeming a token marks it used and issues its successor; a used
//! token is kept until it expires so that presenting it again is detected, and then the whole family is revoked:
//! every refresh token in it stops working and every access token issued in it (their `jti`s are kept per family)
//! goes into the revocation set. `/revoke` of a refresh token does the same (RFC 7009 §2.1).
//!
//! Parameters: `refresh_token` (required), `scope` (optional: a subset of the original scope, RFC 6749 §6; absent =
//! the original). The response has a new access token, a new refresh token and, with `openid`, a new ID token (OIDC
//! Core §12.2: same `sub`, `aud`, `auth_time`; no `nonce`).
//!
//! Access tokens (and so their ID tokens' sessions) issued in a family carry its id as the `grant_id` claim, and
//! [`crate::app::Issuer::verify`] checks that the family is live: revoking a family revokes every access token it ever
//! got with one flag, whatever the refresh rate, with no list of token ids to keep or bound. (An earlier version kept
//! up to 16 `jti`s per family and refused a 17th refresh within one access-token lifetime; a client that refreshes
//! often is legitimate, and a per-family list was memory for nothing.)
//!
//! Bounds: at most `max_refresh_tokens` tokens (used ones included) and as many families; a full store answers 503.

use crate::authorize::Issued;
use crate::grants::{TokenRequest, TokenResponse};
use crate::id_token::{has_scope, mint_user_tokens};
use crate::oauth::{ErrorCode, OAuthError};
use crate::store::{Key, StoreFull, TtlStore, key_of, new_opaque_token};
use crate::token::Jti;

/// A refresh token in the store.
#[derive(Debug, Clone)]
pub struct RefreshEntry {
    /// Its family.
    pub family: Key,
    /// The client it was issued to.
    pub client_id: String,
    /// Index into the users.
    pub user: usize,
    /// The scope of the original grant (a refresh may narrow it for its access token, never widen it).
    pub scope: String,
    /// When the user authenticated.
    pub auth_time_s: u64,
    /// Already redeemed.
    pub used: bool,
}

/// A family of rotated refresh tokens (one authorization grant).
#[derive(Debug, Clone, Default)]
pub struct Family {
    /// Revoked after reuse or by `/revoke`.
    pub revoked: bool,
}

/// The `grant_id` claim of a family: its 32-byte key, base64url (the key is the hash of a random value that was never
/// sent anywhere, so it reveals nothing).
pub fn grant_id_of(family: &Key) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, family)
}

/// Whether the grant a `grant_id` names is live and not revoked.
pub fn grant_active(issuer: &crate::app::Issuer, grant_id: &str, now_s: u64) -> bool {
    let mut key = [0u8; 32];
    match base64::Engine::decode_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        grant_id,
        &mut key,
    ) {
        Ok(32) => issuer.flows().refresh.family_active(&key, now_s),
        _ => false,
    }
}

/// What redeeming a refresh token found.
#[derive(Debug)]
pub enum Redeemed {
    /// Unknown or expired.
    Unknown,
    /// Already used: reuse.
    Reused(RefreshEntry),
    /// Valid, now marked used.
    Fresh(RefreshEntry),
}

/// Refresh tokens and their families.
#[derive(Debug)]
pub struct RefreshStore {
    tokens: TtlStore<RefreshEntry>,
    families: TtlStore<Family>,
    lifetime_s: u64,
}

impl RefreshStore {
    /// Empty, at most `max_tokens` tokens (and families), each living `lifetime_s`.
    pub fn new(max_tokens: usize, lifetime_s: u64) -> RefreshStore {
        RefreshStore {
            tokens: TtlStore::new("refresh token", max_tokens),
            families: TtlStore::new("refresh token family", max_tokens),
            lifetime_s,
        }
    }

    /// Starts a family.
    pub fn start_family(&self, now_s: u64) -> Result<Key, StoreFull> {
        let (_, key) = new_opaque_token().map_err(|_| StoreFull {
            what: "refresh token family",
            entries: 0,
            retry_after_s: 1,
        })?;
        self.families
            .insert(key, Family::default(), now_s + self.lifetime_s, now_s)?;
        Ok(key)
    }

    /// Extends a live family to outlive the refresh token about to be issued in it (so its access tokens, which
    /// expire sooner, can always be checked against it); false if it was revoked or has expired.
    pub fn extend_family(&self, family: &Key, now_s: u64) -> bool {
        let until_s = now_s + self.lifetime_s;
        self.families
            .with_mut(family, now_s, |f, expires_s| {
                if f.revoked {
                    return false;
                }
                *expires_s = (*expires_s).max(until_s);
                true
            })
            .unwrap_or(false)
    }

    /// Issues a refresh token in `family`.
    pub fn issue(&self, entry: RefreshEntry, now_s: u64) -> Result<String, StoreFull> {
        let (token, key) = new_opaque_token().map_err(|_| StoreFull {
            what: "refresh token",
            entries: 0,
            retry_after_s: 1,
        })?;
        self.tokens
            .insert(key, entry, now_s + self.lifetime_s, now_s)?;
        Ok(token)
    }

    /// Redeems `token`: marks it used if fresh.
    pub fn redeem(&self, token: &str, now_s: u64) -> Redeemed {
        let key = key_of(token);
        self.tokens
            .with_mut(&key, now_s, |e, _| {
                if e.used {
                    Redeemed::Reused(e.clone())
                } else {
                    e.used = true;
                    Redeemed::Fresh(e.clone())
                }
            })
            .unwrap_or(Redeemed::Unknown)
    }

    /// Undoes [`RefreshStore::redeem`] when the successor could not be issued (a full store), so that the client's
    /// retry is not mistaken for reuse.
    pub fn unredeem(&self, token: &str, now_s: u64) {
        self.tokens
            .with_mut(&key_of(token), now_s, |e, _| e.used = false);
    }

    /// The entry of `token`, used or not, without changing it (introspection, revocation).
    pub fn peek(&self, token: &str, now_s: u64) -> Option<(RefreshEntry, u64)> {
        self.tokens
            .with_mut(&key_of(token), now_s, |e, exp| (e.clone(), *exp))
    }

    /// Whether `family` is live and not revoked.
    pub fn family_active(&self, family: &Key, now_s: u64) -> bool {
        self.families
            .with_mut(family, now_s, |f, _| !f.revoked)
            .unwrap_or(false)
    }

    /// Revokes `family`: its refresh tokens and (through their `grant_id`) its access tokens stop working.
    pub fn revoke_family(&self, family: &Key, now_s: u64) {
        self.families
            .with_mut(family, now_s, |f, _| f.revoked = true);
    }

    /// Refresh tokens held (used ones included).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no refresh token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Revokes what was issued from a replayed code or refresh token: the access token and the refresh family.
pub fn revoke_issued(req: &TokenRequest<'_>, issued: &Issued) -> Result<(), OAuthError> {
    let issuer = req.issuer;
    if let Some(f) = &issued.family {
        issuer.flows().refresh.revoke_family(f, req.now_s);
    }
    // Also by `jti`: a client without the refresh grant gets no family, and so no `grant_id`.
    revoke_jtis(issuer, &[(issued.jti, issued.access_exp_s)], req.now_s)
}

/// Puts access token ids into the revocation set (kept until `exp` + leeway, like `/revoke`).
pub fn revoke_jtis(
    issuer: &crate::app::Issuer,
    jtis: &[(Jti, u64)],
    now_s: u64,
) -> Result<(), OAuthError> {
    for (jti, exp_s) in jtis {
        issuer
            .revoked()
            .revoke(jti.as_str(), exp_s.saturating_add(issuer.leeway_s()), now_s)
            .map_err(|full| {
                // The family is revoked regardless; only the access tokens stay valid until they expire.
                OAuthError::new(ErrorCode::TemporarilyUnavailable, full.to_string())
                    .with_status(http::StatusCode::SERVICE_UNAVAILABLE)
            })?;
    }
    issuer
        .metrics()
        .revoked_tokens
        .set(issuer.revoked().len() as f64);
    Ok(())
}

/// `/introspect` of a refresh token: active while unused, unexpired and its family not revoked; visible to its own
/// client and to clients with `introspect_any`.
pub fn introspect(
    issuer: &crate::app::Issuer,
    client: &crate::config::Client,
    token: &str,
    now_s: u64,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let flows = issuer.flows();
    let active = flows
        .refresh
        .peek(token, now_s)
        .filter(|(e, _)| !e.used && flows.refresh.family_active(&e.family, now_s))
        .filter(|(e, _)| client.introspect_any || e.client_id == client.id);
    let body = match active {
        Some((e, exp)) => {
            issuer.metrics().introspections_active.increment(1);
            serde_json::json!({
                "active": true,
                "token_type": "refresh_token",
                "client_id": e.client_id,
                "scope": e.scope,
                "sub": flows.users.get(e.user).map(|u| u.sub.as_str()),
                "iss": issuer.issuer(),
                "exp": exp,
            })
        }
        None => {
            issuer.metrics().introspections_inactive.increment(1);
            serde_json::json!({"active": false})
        }
    };
    let mut r = crate::oauth::json_response(
        http::StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    crate::oauth::no_store(&mut r);
    r
}

/// `/revoke` of a refresh token: revokes its family (every refresh token of the grant and the access tokens issued
/// in it, RFC 7009 §2.1). Unknown tokens are fine (§2.2); another client's is `unauthorized_client`.
pub fn revoke(
    issuer: &crate::app::Issuer,
    client: &crate::config::Client,
    token: &str,
    now_s: u64,
) -> Result<(), OAuthError> {
    let refresh = &issuer.flows().refresh;
    let Some((entry, _)) = refresh.peek(token, now_s) else {
        return Ok(());
    };
    if entry.client_id != client.id {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "the token was issued to another client",
        ));
    }
    refresh.revoke_family(&entry.family, now_s);
    issuer.metrics().revocations.increment(1);
    Ok(())
}

pub(crate) fn full(e: StoreFull) -> OAuthError {
    OAuthError::new(ErrorCode::TemporarilyUnavailable, e.to_string())
        .with_status(http::StatusCode::SERVICE_UNAVAILABLE)
}

/// Issues new tokens for a refresh token.
pub fn issue(req: &TokenRequest<'_>) -> Result<TokenResponse, OAuthError> {
    let token = req
        .form
        .get("refresh_token")
        .ok_or_else(|| OAuthError::missing("refresh_token"))?;
    let flows = req.issuer.flows();
    let store = &flows.refresh;
    let invalid = |why: &'static str| OAuthError::new(ErrorCode::InvalidGrant, why);
    let entry = match store.redeem(token, req.now_s) {
        Redeemed::Unknown => return Err(invalid("unknown, expired or revoked refresh token")),
        Redeemed::Reused(e) => {
            // Whoever presents it (even another client), a used token showing up again means it leaked.
            store.revoke_family(&e.family, req.now_s);
            req.issuer.metrics().refresh_reuse.increment(1);
            return Err(invalid(
                "refresh token already used: the grant is revoked (RFC 9700 §4.14.2)",
            ));
        }
        Redeemed::Fresh(e) => e,
    };
    if entry.client_id != req.client.id {
        return Err(invalid("the refresh token was issued to another client"));
    }
    if !store.family_active(&entry.family, req.now_s) {
        return Err(invalid("the refresh token's grant was revoked"));
    }
    let Some(user) = flows.users.get(entry.user) else {
        return Err(invalid("the user no longer exists"));
    };
    let scope = match req.form.get("scope") {
        None => entry.scope.clone(),
        Some(requested) => {
            let granted =
                crate::grants::client_credentials::granted_scope(req.client, Some(requested))?;
            if let Some(s) = granted.split(' ').find(|s| !has_scope(&entry.scope, s)) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    format!("scope {s} was not granted originally (RFC 6749 §6)"),
                ));
            }
            granted.into_owned()
        }
    };
    let grant_id = grant_id_of(&entry.family);
    let tokens = mint_user_tokens(
        req.issuer,
        req.client,
        user,
        &scope,
        entry.auth_time_s,
        None,
        Some(&grant_id),
        req.now_s,
    )?;
    // Reuse detected while we minted revokes the family, and with it what we just made (its `grant_id`).
    if !store.extend_family(&entry.family, req.now_s) {
        return Err(invalid("the refresh token's grant was revoked"));
    }
    let refresh_token = match store.issue(
        RefreshEntry {
            used: false,
            ..entry.clone()
        },
        req.now_s,
    ) {
        Ok(t) => t,
        Err(e) => {
            store.unredeem(token, req.now_s);
            return Err(full(e));
        }
    };
    Ok(TokenResponse {
        access_token: tokens.access_token,
        token_type: "Bearer",
        expires_in: req.issuer.lifetimes().access_s,
        scope: Some(scope),
        refresh_token: Some(refresh_token),
        id_token: tokens.id_token,
        issued_token_type: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(family: Key) -> RefreshEntry {
        RefreshEntry {
            family,
            client_id: "c".into(),
            user: 0,
            scope: "openid".into(),
            auth_time_s: 0,
            used: false,
        }
    }

    #[test]
    fn rotation_marks_used_and_reuse_is_reported() {
        let s = RefreshStore::new(10, 100);
        let f = s.start_family(0).unwrap();
        let t = s.issue(entry(f), 0).unwrap();
        assert!(matches!(s.redeem(&t, 1), Redeemed::Fresh(_)));
        assert!(matches!(s.redeem(&t, 2), Redeemed::Reused(_)));
        assert!(matches!(s.redeem("nope", 2), Redeemed::Unknown));
        assert!(matches!(s.redeem(&t, 100), Redeemed::Unknown), "expired");
    }

    #[test]
    fn families_extend_until_revoked() {
        let s = RefreshStore::new(10, 100);
        let f = s.start_family(0).unwrap();
        assert!(s.family_active(&f, 10));
        // Extending at 90 keeps it past its first expiry (100).
        assert!(s.extend_family(&f, 90));
        assert!(s.family_active(&f, 150));
        s.revoke_family(&f, 150);
        assert!(!s.family_active(&f, 150));
        assert!(
            !s.extend_family(&f, 150),
            "a revoked family is not extended"
        );
        assert!(!s.family_active(&f, 10_000), "expired");
    }

    #[test]
    fn grant_ids_round_trip_to_the_family_key() {
        let s = RefreshStore::new(10, 100);
        let f = s.start_family(0).unwrap();
        let id = grant_id_of(&f);
        assert_eq!(id.len(), 43);
        let mut back = [0u8; 32];
        let n = base64::Engine::decode_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &id,
            &mut back,
        )
        .unwrap();
        assert_eq!((n, back), (32, f));
    }
}
