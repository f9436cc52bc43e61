//! The authorization endpoint (`GET /authorize`, OIDC Core §3.1.2, RFC 6749 §4.1, RFC 7636) and the minimal login
//! (`POST /login`): pending authorization requests, browser sessions and authorization codes, each in a bounded
//! store ([`crate::store`]).
//!
//! Flow: `/authorize` validates the request; without a session it stores the request (opaque id, bounded store,
//! `pending_lifetime_s`) and answers a login form carrying that id; `/login` checks the password (argon2id, see
//! [`crate::password`]), starts a session (`rb_session` cookie) and redirects with a code. With a valid session
//! `/authorize` redirects at once (single sign-on across clients) unless `prompt=login`.
//!
//! Redirect URIs are compared as exact strings (RFC 9700 §4.1.3). For public clients a registered loopback URI
//! without a port, `http://127.0.0.1/<path>` or `http://[::1]/<path>`, also matches the same URI with any port
//! (RFC 8252 §7.3: native apps listen on an ephemeral port); `localhost` gets no such latitude (RFC 8252 §8.3).
//!
//! Errors before the client and redirect URI are established (malformed query, unknown client, unregistered
//! redirect URI) are a 400 JSON error and never a redirect (RFC 6749 §4.1.2.1: an open redirector otherwise); later
//! errors redirect with `error`, `error_description`, `state` and `iss` (RFC 9207).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;

use crate::app::Issuer;
use crate::config::{Client, ConfigError, ResolvedConfig, User, invalid};
use crate::form::Form;
use crate::grants::client_credentials::granted_scope;
use crate::grants::refresh_token::RefreshStore;
use crate::grants::{Grant, GrantSet};
use crate::oauth::{json_response, no_store, sanitize_description};
use crate::password::{BUSY_RETRY_AFTER_S, PasswordChecker, PasswordError};
use crate::store::{Key, StoreFull, TtlStore, key_of, new_opaque_token};
use crate::token::Jti;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "rb_session";
/// Longest `state` or `nonce` accepted (they are echoed into redirects and tokens).
pub const MAX_STATE_CHARS: usize = 512;
/// Most redirect URIs a client may register.
pub const MAX_REDIRECT_URIS: usize = 16;
/// Most parameters in an authorization request's query.
pub const MAX_QUERY_BYTES: usize = 4 * 1024;

/// `[authorization]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationFile {
    /// Lifetime of an authorization code, seconds (default 60).
    pub code_lifetime_s: Option<u64>,
    /// How long a login form stays usable, seconds (default 600).
    pub pending_lifetime_s: Option<u64>,
    /// Lifetime of a login session, seconds (default 3600).
    pub session_lifetime_s: Option<u64>,
    /// Most authorization requests waiting for a login (default 10000).
    pub max_pending_requests: Option<usize>,
    /// Most codes issued and not yet expired (redeemed ones are kept until expiry for reuse detection) (default 10000).
    pub max_codes: Option<usize>,
    /// Most live sessions (default 100000).
    pub max_sessions: Option<usize>,
    /// Most refresh tokens, used ones included until they expire, and as many grant families (default 1000000).
    pub max_refresh_tokens: Option<usize>,
    /// Wrong passwords tolerated per login form before it is discarded (default 5).
    pub max_failed_logins: Option<u32>,
}

/// The validated `[authorization]` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizationLimits {
    /// Code lifetime, seconds.
    pub code_lifetime_s: u64,
    /// Pending request lifetime, seconds.
    pub pending_lifetime_s: u64,
    /// Session lifetime, seconds.
    pub session_lifetime_s: u64,
    /// Pending request store bound.
    pub max_pending_requests: usize,
    /// Code store bound.
    pub max_codes: usize,
    /// Session store bound.
    pub max_sessions: usize,
    /// Refresh token store bound.
    pub max_refresh_tokens: usize,
    /// Wrong passwords per login form.
    pub max_failed_logins: u32,
}

impl AuthorizationFile {
    /// Validates the table; absent values take the defaults.
    pub fn resolve(self) -> Result<AuthorizationLimits, ConfigError> {
        fn bounded<T: Copy + Into<u64>>(
            field: &str,
            v: Option<T>,
            default: T,
            lo: u64,
            hi: u64,
        ) -> Result<T, ConfigError> {
            let got = v.unwrap_or(default);
            if (lo..=hi).contains(&got.into()) {
                Ok(got)
            } else {
                Err(invalid(
                    format!("authorization.{field}"),
                    format!("must be between {lo} and {hi}, got {}", got.into()),
                ))
            }
        }
        let usize_bounded = |field: &str, v: Option<usize>, default: usize, hi: u64| {
            bounded(field, v.map(|x| x as u64), default as u64, 1, hi).map(|x| x as usize)
        };
        let d = AuthorizationLimits::default();
        Ok(AuthorizationLimits {
            // RFC 6749 §4.1.2: a maximum of 10 minutes is RECOMMENDED; a minute is plenty for a redirect.
            code_lifetime_s: bounded(
                "code_lifetime_s",
                self.code_lifetime_s,
                d.code_lifetime_s,
                1,
                600,
            )?,
            pending_lifetime_s: bounded(
                "pending_lifetime_s",
                self.pending_lifetime_s,
                d.pending_lifetime_s,
                10,
                3600,
            )?,
            session_lifetime_s: bounded(
                "session_lifetime_s",
                self.session_lifetime_s,
                d.session_lifetime_s,
                10,
                7 * 86_400,
            )?,
            max_pending_requests: usize_bounded(
                "max_pending_requests",
                self.max_pending_requests,
                d.max_pending_requests,
                1_000_000,
            )?,
            max_codes: usize_bounded("max_codes", self.max_codes, d.max_codes, 1_000_000)?,
            max_sessions: usize_bounded(
                "max_sessions",
                self.max_sessions,
                d.max_sessions,
                10_000_000,
            )?,
            max_refresh_tokens: usize_bounded(
                "max_refresh_tokens",
                self.max_refresh_tokens,
                d.max_refresh_tokens,
                10_000_000,
            )?,
            max_failed_logins: bounded(
                "max_failed_logins",
                self.max_failed_logins,
                d.max_failed_logins,
                1,
                100,
            )?,
        })
    }
}

impl Default for AuthorizationLimits {
    /// The limits of an absent `[authorization]` table.
    fn default() -> Self {
        AuthorizationLimits {
            code_lifetime_s: 60,
            pending_lifetime_s: 600,
            session_lifetime_s: 3600,
            max_pending_requests: 10_000,
            max_codes: 300_000,
            max_sessions: 100_000,
            max_refresh_tokens: 1_000_000,
            max_failed_logins: 5,
        }
    }
}

/// Config checks of a client's flows: public clients use only the code and refresh grants; the code grant needs
/// redirect URIs (absolute, no fragment, RFC 6749 §3.1.2); refresh tokens come only from codes.
pub(crate) fn check_client_flows(
    i: usize,
    public: bool,
    grants: GrantSet,
    introspect_any: bool,
    redirect_uris: &[String],
) -> Result<(), ConfigError> {
    let f = |name: &str| format!("clients[{i}].{name}");
    if public && grants.contains(Grant::ClientCredentials) {
        return Err(invalid(
            f("grant_types"),
            "a public client may not use client_credentials (RFC 6749 §4.4: confidential clients only)",
        ));
    }
    if public && introspect_any {
        return Err(invalid(
            f("introspect_any"),
            "a public client cannot introspect",
        ));
    }
    if grants.contains(Grant::RefreshToken) && !grants.contains(Grant::AuthorizationCode) {
        return Err(invalid(
            f("grant_types"),
            "refresh_token needs authorization_code (the only grant that issues refresh tokens)",
        ));
    }
    if grants.contains(Grant::AuthorizationCode) && redirect_uris.is_empty() {
        return Err(invalid(
            f("redirect_uris"),
            "authorization_code needs at least one redirect URI",
        ));
    }
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid(
            f("redirect_uris"),
            format!("at most {MAX_REDIRECT_URIS}"),
        ));
    }
    for (j, r) in redirect_uris.iter().enumerate() {
        if !crate::config::is_resource_uri(r) {
            return Err(invalid(
                format!("clients[{i}].redirect_uris[{j}]"),
                format!("must be an absolute URI without a fragment: {r:?}"),
            ));
        }
    }
    Ok(())
}

/// Whether `requested` is registered for `client` (see the module docs for the loopback rule).
pub fn redirect_uri_allowed(client: &Client, requested: &str) -> bool {
    if client.redirect_uris.iter().any(|r| r == requested) {
        return true;
    }
    if client.auth_method != Some(crate::client_auth::AuthMethod::None) {
        return false;
    }
    for host in ["http://127.0.0.1", "http://[::1]"] {
        let Some(rest) = requested
            .strip_prefix(host)
            .and_then(|r| r.strip_prefix(':'))
        else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let port_ok =
            (1..=5).contains(&digits) && rest[..digits].parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok {
            return false;
        }
        let without_port = format!("{host}{}", &rest[digits..]);
        return client.redirect_uris.contains(&without_port);
    }
    false
}

/// An authorization request waiting for a login.
#[derive(Debug, Clone)]
pub struct Pending {
    client: Arc<Client>,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    challenge: String,
    failed_logins: u32,
}

/// A login session.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// Index into the users.
    pub user: usize,
    /// When the user authenticated (`auth_time`).
    pub auth_time_s: u64,
}

/// What a code grants.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    /// The client it was issued to.
    pub client_id: String,
    /// The `redirect_uri` of the authorization request (must be repeated at the token endpoint).
    pub redirect_uri: String,
    /// The PKCE `S256` challenge.
    pub challenge: String,
    /// The granted scope.
    pub scope: String,
    /// The `nonce` of the authorization request.
    pub nonce: Option<String>,
    /// Index into the users.
    pub user: usize,
    /// When the user authenticated.
    pub auth_time_s: u64,
}

/// What was issued from a code or refresh token (revoked when the code or token is replayed).
#[derive(Debug, Clone, Copy)]
pub struct Issued {
    /// The access token's id.
    pub jti: Jti,
    /// The access token's expiry.
    pub access_exp_s: u64,
    /// The refresh token family, if one was started.
    pub family: Option<Key>,
}

/// A code in the store: kept after redemption until it expires, to detect reuse.
#[derive(Debug, Clone)]
pub struct CodeEntry {
    /// What it grants.
    pub grant: CodeGrant,
    /// Redeemed (or burnt by a failed redemption).
    pub redeemed: bool,
    /// What the redemption issued.
    pub issued: Option<Issued>,
    /// Presented again after redemption.
    pub reused: bool,
}

/// The state of the user flows: users, password checks, and the bounded stores.
#[derive(Debug)]
pub struct UserFlows {
    /// Users in config order.
    pub users: Vec<User>,
    by_name: HashMap<String, usize>,
    by_sub: HashMap<String, usize>,
    /// Password verification (argon2id on the blocking pool, bounded).
    pub passwords: PasswordChecker,
    /// Authorization requests waiting for a login.
    pub pending: TtlStore<Pending>,
    /// Login sessions.
    pub sessions: TtlStore<Session>,
    /// Authorization codes.
    pub codes: TtlStore<CodeEntry>,
    /// Refresh tokens and their families.
    pub refresh: RefreshStore,
    /// The limits.
    pub limits: AuthorizationLimits,
}

impl UserFlows {
    /// Empty stores for `cfg`; the decoy hash is made here (one argon2id hash at start).
    pub fn new(cfg: &ResolvedConfig) -> Result<UserFlows, PasswordError> {
        let l = cfg.authorization;
        let users = cfg.users.clone();
        Ok(UserFlows {
            by_name: users
                .iter()
                .enumerate()
                .map(|(i, u)| (u.username.clone(), i))
                .collect(),
            by_sub: users
                .iter()
                .enumerate()
                .map(|(i, u)| (u.sub.clone(), i))
                .collect(),
            users,
            passwords: PasswordChecker::new(&cfg.password_params)?,
            pending: TtlStore::new("pending authorization request", l.max_pending_requests),
            sessions: TtlStore::new("session", l.max_sessions),
            codes: TtlStore::new("authorization code", l.max_codes),
            refresh: RefreshStore::new(l.max_refresh_tokens, cfg.lifetimes.refresh_s),
            limits: l,
        })
    }

    /// The user with this `sub`.
    pub fn user_by_sub(&self, sub: &str) -> Option<&User> {
        self.by_sub.get(sub).and_then(|&i| self.users.get(i))
    }
}

type Resp = Response<Full<Bytes>>;

fn html(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The login form must not be framed by another site (clickjacking of the password form), and needs no script.
    // No `form-action`: browsers apply it to the redirect after the POST, which goes to the client.
    r.headers_mut().insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    r.headers_mut().insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    r
}

/// A 400 (or other) JSON error that is never a redirect.
fn direct_error(status: StatusCode, error: &str, description: &str) -> Resp {
    let body = serde_json::json!({
        "error": error,
        "error_description": sanitize_description(description),
    });
    let mut r = json_response(status, serde_json::to_vec(&body).unwrap_or_default());
    no_store(&mut r);
    r
}

/// 503 `temporarily_unavailable` with `Retry-After`.
pub(crate) fn unavailable(description: &str, retry_after_s: u64) -> Resp {
    let mut r = direct_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        description,
    );
    if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

fn store_full(e: StoreFull) -> Resp {
    unavailable(&e.to_string(), e.retry_after_s)
}

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
fn encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// `uri` with `params` appended to its query.
pub fn with_query(uri: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut out = String::with_capacity(uri.len() + 128);
    out.push_str(uri);
    let mut sep = if uri.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        if let Some(v) = value {
            out.push(sep);
            sep = '&';
            out.push_str(name);
            out.push('=');
            encode(v, &mut out);
        }
    }
    out
}

fn found(location: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(LOCATION, v);
        }
        // Every piece is percent-encoded or a registered URI of visible ASCII, so this cannot happen.
        Err(_) => {
            return direct_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the redirect URI cannot be a header value",
            );
        }
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The 302 to the client with an error (RFC 6749 §4.1.2.1, RFC 9207 `iss`).
fn redirect_error(
    issuer: &Issuer,
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Resp {
    issuer.metrics().authorize_error();
    found(&with_query(
        redirect_uri,
        &[
            ("error", Some(error)),
            (
                "error_description",
                Some(&sanitize_description(description)),
            ),
            ("state", state),
            ("iss", Some(issuer.issuer())),
        ],
    ))
}

/// Minimal HTML escaping for attribute values and text.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The login form for pending request `request_id` (the interop scripts regex the hidden `request` input).
fn login_form(
    status: StatusCode,
    request_id: &str,
    client_id: &str,
    message: Option<&str>,
) -> Resp {
    let message = message
        .map(|m| format!("<p class=\"error\">{}</p>\n", escape(m)))
        .unwrap_or_default();
    html(
        status,
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign in</title></head><body>\n\
             <h1>Sign in to {client}</h1>\n{message}\
             <form method=\"post\" action=\"/login\">\n\
             <input type=\"hidden\" name=\"request\" value=\"{request}\">\n\
             <label>Username <input name=\"username\" autocomplete=\"username\"></label>\n\
             <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\"></label>\n\
             <button type=\"submit\">Sign in</button>\n</form>\n</body></html>\n",
            client = escape(client_id),
            request = escape(request_id),
        ),
    )
}

/// The session key from the request's cookies, if any.
fn session_key(parts: &Parts) -> Option<Key> {
    for v in parts.headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some(value) = c
                .trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                // Ours are 43 characters; anything else cannot be a session.
                if value.len() == 43 {
                    return Some(key_of(value));
                }
            }
        }
    }
    None
}

fn valid_state(s: &str) -> bool {
    s.len() <= MAX_STATE_CHARS && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Whether `c` is an S256 code challenge: 43 base64url characters (a SHA-256 digest, RFC 7636 §4.2).
fn valid_s256_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET /authorize`: the parameters are the query's.
pub fn authorize_get(issuer: &Issuer, parts: &Parts) -> Resp {
    let query = parts.uri.query().unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("the query exceeds {MAX_QUERY_BYTES} bytes"),
        );
    }
    // Strict parsing: a repeated parameter is refused (RFC 6749 §3.1), before anything is trusted.
    match Form::parse(query.as_bytes()) {
        Ok(form) => authorize(issuer, parts, &form),
        Err(e) => direct_error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    }
}

/// 400 for a `POST /authorize` whose form body could not be read (no redirect: nothing is trusted yet).
pub fn authorize_bad_body(description: &str) -> Resp {
    direct_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// The authorization request (from the query of a GET or the form body of a POST, OIDC Core §3.1.2.1); cookies come
/// from `parts`.
pub fn authorize(issuer: &Issuer, parts: &Parts, form: &Form<'_>) -> Resp {
    let Some(client_id) = form.get("client_id") else {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing parameter: client_id",
        );
    };
    let Some(client) = issuer.clients().get(client_id) else {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "unknown client_id",
        );
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing parameter: redirect_uri (required: it is compared exactly with the registered ones)",
        );
    };
    if !redirect_uri_allowed(client, redirect_uri) {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is not registered for this client",
        );
    }
    // From here on, errors go back to the client through its redirect URI.
    let state = form.get("state");
    if state.is_some_and(|s| !valid_state(s)) {
        return redirect_error(
            issuer,
            redirect_uri,
            None,
            "invalid_request",
            "state must be at most 512 printable ASCII characters",
        );
    }
    let fail = |error: &str, description: &str| {
        redirect_error(issuer, redirect_uri, state, error, description)
    };
    match form.get("response_type") {
        None => return fail("invalid_request", "missing parameter: response_type"),
        Some("code") => {}
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
    }
    if form.get("response_mode").is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query is supported");
    }
    if form.has("request") || form.has("request_uri") {
        return fail("request_not_supported", "request objects are not supported");
    }
    if !client.grants.contains(Grant::AuthorizationCode) {
        return fail(
            "unauthorized_client",
            "this client may not use the authorization code grant",
        );
    }
    let scope = match granted_scope(client, form.get("scope")) {
        Ok(s) => s.into_owned(),
        Err(e) => return fail("invalid_scope", &e.description),
    };
    let Some(challenge) = form.get("code_challenge") else {
        return fail(
            "invalid_request",
            "PKCE is required: missing code_challenge (RFC 7636, S256)",
        );
    };
    match form.get("code_challenge_method") {
        Some("S256") => {}
        None => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (absent means plain, which is refused)",
            );
        }
        Some(_) => {
            return fail(
                "invalid_request",
                "only code_challenge_method=S256 is supported",
            );
        }
    }
    if !valid_s256_challenge(challenge) {
        return fail(
            "invalid_request",
            "code_challenge must be 43 base64url characters (S256)",
        );
    }
    let nonce = form.get("nonce");
    if nonce.is_some_and(|n| !valid_state(n)) {
        return fail(
            "invalid_request",
            "nonce must be at most 512 printable ASCII characters",
        );
    }
    let prompt = form.get("prompt").unwrap_or("");
    let prompts: Vec<&str> = prompt.split(' ').filter(|p| !p.is_empty()).collect();
    if prompts
        .iter()
        .any(|p| !matches!(*p, "none" | "login" | "consent" | "select_account"))
    {
        return fail("invalid_request", "unknown prompt value");
    }
    if prompts.contains(&"none") && prompts.len() > 1 {
        return fail(
            "invalid_request",
            "prompt=none cannot be combined (OIDC Core §3.1.2.1)",
        );
    }
    let force_login = prompts.contains(&"login");
    let now_s = issuer.clock().now_s();
    let flows = issuer.flows();
    // max_age (OIDC Core §3.1.2.1): a session older than this many seconds must log in again.
    let max_age_s = match form.get("max_age").map(str::parse::<u64>) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => return fail("invalid_request", "max_age must be a number of seconds"),
    };
    let session = if force_login {
        None
    } else {
        session_key(parts)
            .and_then(|k| flows.sessions.with_mut(&k, now_s, |s, _| *s))
            .filter(|s| max_age_s.is_none_or(|a| s.auth_time_s.saturating_add(a) >= now_s))
    };
    let pending = Pending {
        client: Arc::clone(client),
        redirect_uri: redirect_uri.to_string(),
        scope,
        state: state.map(str::to_string),
        nonce: nonce.map(str::to_string),
        challenge: challenge.to_string(),
        failed_logins: 0,
    };
    if let Some(session) = session {
        return issue_code(issuer, &pending, session, now_s);
    }
    if prompts.contains(&"none") {
        return fail("login_required", "no session and prompt=none");
    }
    let (request_id, key) = match new_opaque_token() {
        Ok(t) => t,
        Err(e) => return unavailable(&e.to_string(), 1),
    };
    let until_s = now_s + flows.limits.pending_lifetime_s;
    if let Err(full) = flows.pending.insert(key, pending, until_s, now_s) {
        return store_full(full);
    }
    login_form(StatusCode::OK, &request_id, client_id, None)
}

/// Stores a code for `p` and `session`; the redirect with it, or the 503 to answer.
fn issue_code(issuer: &Issuer, p: &Pending, session: Session, now_s: u64) -> Resp {
    let flows = issuer.flows();
    let (code, key) = match new_opaque_token() {
        Ok(t) => t,
        Err(e) => return unavailable(&e.to_string(), 1),
    };
    let entry = CodeEntry {
        grant: CodeGrant {
            client_id: p.client.id.clone(),
            redirect_uri: p.redirect_uri.clone(),
            challenge: p.challenge.clone(),
            scope: p.scope.clone(),
            nonce: p.nonce.clone(),
            user: session.user,
            auth_time_s: session.auth_time_s,
        },
        redeemed: false,
        issued: None,
        reused: false,
    };
    if let Err(full) = flows
        .codes
        .insert(key, entry, now_s + flows.limits.code_lifetime_s, now_s)
    {
        return store_full(full);
    }
    issuer.metrics().codes_issued.increment(1);
    found(&with_query(
        &p.redirect_uri,
        &[
            ("code", Some(&code)),
            ("state", p.state.as_deref()),
            ("iss", Some(issuer.issuer())),
        ],
    ))
}

/// `POST /login` with the form fields `request`, `username`, `password`.
pub async fn login(issuer: &Issuer, form: &Form<'_>, secure_cookie: bool) -> Resp {
    let flows = issuer.flows();
    let now_s = issuer.clock().now_s();
    let Some(request_id) = form.get("request") else {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing parameter: request",
        );
    };
    let key = key_of(request_id);
    let Some(pending) = flows.pending.with_mut(&key, now_s, |p, _| p.clone()) else {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown or expired login request: start again at the client",
        );
    };
    let username = form.get("username").unwrap_or("");
    let password = form.get("password").unwrap_or("").to_string();
    let user = flows.by_name.get(username).copied();
    let phc = user
        .and_then(|i| flows.users.get(i))
        .map(|u| Arc::clone(&u.password_hash));
    let ok = match flows.passwords.check(password, phc).await {
        Ok(ok) => ok,
        Err(busy) => return unavailable(&busy.to_string(), BUSY_RETRY_AFTER_S),
    };
    let (Some(user), true) = (user, ok) else {
        issuer.metrics().logins_failed.increment(1);
        let discard = flows
            .pending
            .with_mut(&key, now_s, |p, _| {
                p.failed_logins += 1;
                p.failed_logins >= flows.limits.max_failed_logins
            })
            .unwrap_or(true);
        if discard {
            flows.pending.remove(&key, now_s);
            return direct_error(
                StatusCode::BAD_REQUEST,
                "access_denied",
                "too many failed logins for this request: start again at the client",
            );
        }
        // The same answer for an unknown user and a wrong password.
        return login_form(
            StatusCode::UNAUTHORIZED,
            request_id,
            &pending.client.id,
            Some("Wrong username or password."),
        );
    };
    // Single use: a second login for the same request finds nothing.
    let Some(pending) = flows.pending.remove(&key, now_s) else {
        return direct_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown or expired login request: start again at the client",
        );
    };
    let session = Session {
        user,
        auth_time_s: now_s,
    };
    let (cookie, session_key) = match new_opaque_token() {
        Ok(t) => t,
        Err(e) => return unavailable(&e.to_string(), 1),
    };
    let until_s = now_s + flows.limits.session_lifetime_s;
    if let Err(full) = flows.sessions.insert(session_key, session, until_s, now_s) {
        return store_full(full);
    }
    issuer.metrics().logins_ok.increment(1);
    issuer.metrics().sessions.set(flows.sessions.len() as f64);
    // The session exists from here on, so the cookie goes out even if the code store is full (a 503).
    let mut r = issue_code(issuer, &pending, session, now_s);
    // Lax: the cookie must come along on the top-level GET navigations to /authorize from client sites.
    let cookie = format!(
        "{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        flows.limits.session_lifetime_s,
        if secure_cookie { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(public: bool, uris: &[&str]) -> Client {
        Client {
            id: "c".into(),
            secret: None,
            auth_method: public.then_some(crate::client_auth::AuthMethod::None),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
            grants: GrantSet::default(),
            scopes: vec![],
            default_scope: String::new(),
            audience: "https://api".into(),
            resources: vec![],
            introspect_any: false,
            jwks: None,
        }
    }

    #[test]
    fn redirect_uris_match_exactly_or_by_loopback_port_for_public_clients() {
        let public = client(true, &["http://127.0.0.1/cb", "http://[::1]/cb"]);
        assert!(redirect_uri_allowed(&public, "http://127.0.0.1/cb"));
        assert!(redirect_uri_allowed(&public, "http://127.0.0.1:51234/cb"));
        assert!(redirect_uri_allowed(&public, "http://[::1]:8080/cb"));
        assert!(!redirect_uri_allowed(&public, "http://127.0.0.1:0/cb"));
        assert!(!redirect_uri_allowed(&public, "http://127.0.0.1:99999/cb"));
        assert!(!redirect_uri_allowed(&public, "http://127.0.0.1:80/cb2"));
        assert!(!redirect_uri_allowed(
            &public,
            "http://127.0.0.1:80@evil/cb"
        ));
        assert!(!redirect_uri_allowed(&public, "http://localhost:80/cb"));
        let confidential = client(false, &["http://127.0.0.1/cb"]);
        assert!(redirect_uri_allowed(&confidential, "http://127.0.0.1/cb"));
        assert!(!redirect_uri_allowed(
            &confidential,
            "http://127.0.0.1:8080/cb"
        ));
        assert!(!redirect_uri_allowed(&confidential, "http://127.0.0.1/cb/"));
    }

    #[test]
    fn query_building_encodes_and_appends() {
        assert_eq!(
            with_query(
                "https://a/cb?x=1",
                &[("code", Some("a b&c")), ("state", None)]
            ),
            "https://a/cb?x=1&code=a%20b%26c"
        );
        assert_eq!(
            with_query("https://a/cb", &[("s", Some("~._-"))]),
            "https://a/cb?s=~._-"
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn limits_default_and_name_the_field() {
        let l = AuthorizationFile::default().resolve().unwrap();
        assert_eq!(l.code_lifetime_s, 60);
        assert_eq!(l, AuthorizationLimits::default());
        let e = AuthorizationFile {
            code_lifetime_s: Some(3600),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            e.to_string().contains("authorization.code_lifetime_s"),
            "{e}"
        );
    }
}
