//! The OIDC scenario: token requests against an OAuth 2.0 / OpenID Connect issuer (the built-in token-issuer or
//! anybody's), with a sample of the issued tokens verified as a relying party would verify them.
//!
//! - Coordinator side: [`discover`] reads the issuer's discovery document (`/.well-known/openid-configuration`)
//!   once before a phase, so the scenario follows whatever token endpoint and JWKS the issuer publishes; [`rotate`]
//!   asks a built-in issuer to rotate its signing key at the offsets the phase gives.
//! - Worker side: [`OidcConfig`] holds the serialized token request (the same bytes every send, built once);
//!   [`OidcTotals`] counts tokens; [`JwksWatcher`] re-reads the JWKS every `jwks_refresh_ms` on its own thread,
//!   like a caching relying party; after the phase (outside the loader's CPU window) [`verify_samples`] checks
//!   every sampled token with the `jsonwebtoken` crate: the token must verify against the newest JWKS read
//!   *before* it was issued (a signing key must be published before it signs), and again against the JWKS read
//!   after the phase (a key must stay published while its tokens live). None of this uses the issuer's own code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, Conn, Exchange};
use crate::plan::{HttpUrl, OidcAuth, OidcFlow, OidcPlan};
use crate::procs;

/// Largest token response a loader reads (a JWT access token response is about 1 KiB).
pub const MAX_OIDC_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest discovery document or JWKS loadgen reads.
const MAX_DOC_BYTES: u64 = 1024 * 1024;
/// Clock skew allowed between the issuer's `iat` / `exp` and the loader's clock (same host: small).
const LEEWAY_S: u64 = 5;

/// Where an issuer's endpoints are, from its discovery document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OidcEndpoints {
    /// The `issuer` value tokens must carry in `iss`.
    pub issuer: String,
    /// Path (and query) of the token endpoint on the target.
    pub token_path: String,
    /// The JWKS: address, Host header and path.
    pub jwks_addr: SocketAddr,
    /// Host header for the JWKS request.
    pub jwks_host: String,
    /// Path of the JWKS.
    pub jwks_path: String,
    /// Path (and query) of the introspection endpoint on the target, when the issuer publishes one.
    #[serde(default)]
    pub introspection_path: Option<String>,
    /// Introspection phases: the access token every request asks about (obtained before the phase).
    #[serde(default)]
    pub subject_token: Option<String>,
    /// Path of the authorization endpoint on the target, when the issuer publishes one.
    #[serde(default)]
    pub authorization_path: Option<String>,
    /// User flows: the `Cookie` header value of the session the coordinator's login opened.
    #[serde(default)]
    pub session_cookie: Option<String>,
}

/// The parts of a discovery document the scenario reads.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    authorization_endpoint: Option<String>,
}

/// Reads `{base}/.well-known/openid-configuration` (blocking; coordinator side). The token endpoint must be on
/// the target itself (the load goes to the target's address); the JWKS may be elsewhere on loopback.
pub fn discover(
    base: &HttpUrl,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<OidcEndpoints, String> {
    let host = base.authority();
    let path = format!("{}/.well-known/openid-configuration", base.prefix);
    let (status, body) =
        procs::http_request(addr, &host, "GET", &path, None, b"", timeout, MAX_DOC_BYTES)
            .map_err(|e| format!("discovery {path}: {e}"))?;
    if status != 200 {
        return Err(format!("discovery {path}: status {status}"));
    }
    let d: Discovery =
        serde_json::from_slice(&body).map_err(|e| format!("discovery {path}: {e}"))?;
    let token =
        HttpUrl::parse(&d.token_endpoint).map_err(|e| format!("discovery token_endpoint: {e}"))?;
    if token.host != base.host || token.port != base.port {
        return Err(format!(
            "discovery token_endpoint `{}` is not on the target ({host}); loadgen loads the target only",
            d.token_endpoint
        ));
    }
    let jwks = HttpUrl::parse(&d.jwks_uri).map_err(|e| format!("discovery jwks_uri: {e}"))?;
    let jwks_addr = procs::resolve_addr(&jwks.host, jwks.port)
        .map_err(|e| format!("discovery jwks_uri: {e}"))?;
    if !jwks_addr.ip().is_loopback() && !addr.ip().eq(&jwks_addr.ip()) {
        return Err(format!(
            "discovery jwks_uri `{}` is neither on loopback nor on the target's host",
            d.jwks_uri
        ));
    }
    let on_target = |name: &str, u: &Option<String>| -> Result<Option<String>, String> {
        let Some(u) = u else { return Ok(None) };
        let i = HttpUrl::parse(u).map_err(|e| format!("discovery {name}: {e}"))?;
        if i.host != base.host || i.port != base.port {
            return Err(format!(
                "discovery {name} `{u}` is not on the target ({host}); loadgen loads the target only"
            ));
        }
        Ok(Some(if i.prefix.is_empty() {
            "/".into()
        } else {
            i.prefix
        }))
    };
    let introspection_path = on_target("introspection_endpoint", &d.introspection_endpoint)?;
    let authorization_path = on_target("authorization_endpoint", &d.authorization_endpoint)?;
    Ok(OidcEndpoints {
        introspection_path,
        authorization_path,
        session_cookie: None,
        subject_token: None,
        issuer: d.issuer,
        token_path: if token.prefix.is_empty() {
            "/".into()
        } else {
            token.prefix
        },
        jwks_host: jwks.authority(),
        jwks_path: if jwks.prefix.is_empty() {
            "/".into()
        } else {
            jwks.prefix
        },
        jwks_addr,
    })
}

/// Obtains one access token with the phase's client (client_credentials, blocking; coordinator side) for an
/// introspection phase. Returns the token and its `expires_in`.
pub fn obtain_token(
    plan: &OidcPlan,
    base: &HttpUrl,
    addr: SocketAddr,
    e: &OidcEndpoints,
    timeout: Duration,
) -> Result<(String, u64), String> {
    let cc = OidcPlan {
        flow: OidcFlow::ClientCredentials,
        ..plan.clone()
    };
    let r = FormRequest::of(&cc, e);
    let headers: Vec<(&str, &str)> = r
        .authorization
        .iter()
        .map(|a| ("Authorization", a.as_str()))
        .collect();
    let (status, body) = procs::http_request_with(
        addr,
        &base.authority(),
        "POST",
        &r.path,
        Some("application/x-www-form-urlencoded"),
        &headers,
        r.body.as_bytes(),
        timeout,
        MAX_OIDC_RESPONSE_BYTES as u64,
    )
    .map_err(|err| format!("token request: {err}"))?;
    if status != 200 {
        return Err(format!(
            "token request: status {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    #[derive(Deserialize)]
    struct Lifetime {
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let token =
        access_token(&body).ok_or("token request: no Bearer access_token in the response")?;
    let expires_in = serde_json::from_slice::<Lifetime>(&body)
        .ok()
        .and_then(|l| l.expires_in)
        .unwrap_or(0);
    Ok((token, expires_in))
}

/// What loadgen needs to rotate a built-in issuer's keys: the bearer secret of its `POST /admin/rotate`, made at
/// random for this run and handed to the server in a private file (removed when the target stops).
#[derive(Debug)]
pub struct RotateAuth {
    /// The bearer secret.
    pub token: String,
    /// The file the server read it from.
    pub file: tempfile::NamedTempFile,
}

impl RotateAuth {
    /// A fresh random secret (32 bytes, base64url) in a new private file.
    pub fn new() -> std::io::Result<RotateAuth> {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut file = tempfile::Builder::new()
            .prefix("refbench-oidc-admin-")
            .tempfile()?;
        std::io::Write::write_all(&mut file, token.as_bytes())?;
        Ok(RotateAuth { token, file })
    }
}

/// Asks a built-in issuer to rotate its signing key (`POST /admin/rotate` with the admin bearer; blocking).
pub fn rotate(addr: SocketAddr, host: &str, token: &str, timeout: Duration) -> Result<(), String> {
    let bearer = format!("Bearer {token}");
    let (status, body) = procs::http_request_with(
        addr,
        host,
        "POST",
        "/admin/rotate",
        Some("application/json"),
        &[("Authorization", &bearer)],
        b"",
        timeout,
        MAX_DOC_BYTES,
    )?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ))
    }
}

/// RFC 8693 §2.1's `grant_type`.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: an OAuth access token (the subject token's type).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Form-urlencodes one value (RFC 6749 appendix B; also what §2.3.1 asks for inside Basic).
fn form(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// What every lane of one loader process shares.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The validated scenario.
    pub plan: OidcPlan,
    /// The issuer's endpoints.
    pub endpoints: OidcEndpoints,
    /// The whole serialized token request: the same bytes for every send of a client_credentials phase.
    pub request: Vec<u8>,
    /// `Host` header value.
    host: String,
    /// Client authentication: the `Authorization` value (Basic) or the form suffix (post).
    client_auth: ClientAuth,
}

/// How one request carries the client's credentials.
#[derive(Debug, Clone)]
struct ClientAuth {
    /// `Basic ...` for client_secret_basic.
    header: Option<String>,
    /// `&client_id=...&client_secret=...` for client_secret_post.
    body_suffix: String,
}

impl ClientAuth {
    fn of(plan: &OidcPlan) -> ClientAuth {
        match plan.auth {
            OidcAuth::Basic => {
                let pair = format!("{}:{}", form(&plan.client_id), form(&plan.client_secret));
                ClientAuth {
                    header: Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )),
                    body_suffix: String::new(),
                }
            }
            OidcAuth::Post => ClientAuth {
                header: None,
                body_suffix: format!(
                    "&client_id={}&client_secret={}",
                    form(&plan.client_id),
                    form(&plan.client_secret)
                ),
            },
        }
    }
}

/// A token-endpoint or introspection request, before serialization: path, `Authorization` value (Basic) and form.
struct FormRequest {
    path: String,
    authorization: Option<String>,
    body: String,
}

impl FormRequest {
    fn of(plan: &OidcPlan, endpoints: &OidcEndpoints) -> FormRequest {
        let (path, mut body) = match plan.flow {
            // The user flows build their requests per send; this is the first token request's shape only.
            OidcFlow::ClientCredentials | OidcFlow::AuthorizationCode | OidcFlow::RefreshToken => {
                let mut body = "grant_type=client_credentials".to_string();
                if let Some(s) = &plan.scope {
                    body.push_str("&scope=");
                    body.push_str(&form(s));
                }
                if let Some(r) = &plan.resource {
                    body.push_str("&resource=");
                    body.push_str(&form(r));
                }
                (endpoints.token_path.clone(), body)
            }
            OidcFlow::TokenExchange => {
                let mut body = format!(
                    "grant_type={}&subject_token={}&subject_token_type={}",
                    form(TOKEN_EXCHANGE_GRANT),
                    form(endpoints.subject_token.as_deref().unwrap_or("")),
                    form(ACCESS_TOKEN_TYPE)
                );
                for (k, v) in [
                    ("audience", &plan.audience),
                    ("resource", &plan.resource),
                    ("scope", &plan.scope),
                ] {
                    if let Some(v) = v {
                        body.push_str(&format!("&{k}={}", form(v)));
                    }
                }
                (endpoints.token_path.clone(), body)
            }
            OidcFlow::Introspect => (
                endpoints
                    .introspection_path
                    .clone()
                    .unwrap_or_else(|| "/introspect".into()),
                format!(
                    "token={}&token_type_hint=access_token",
                    form(endpoints.subject_token.as_deref().unwrap_or(""))
                ),
            ),
        };
        let auth = ClientAuth::of(plan);
        body.push_str(&auth.body_suffix);
        FormRequest {
            path,
            authorization: auth.header,
            body,
        }
    }
}

impl OidcConfig {
    /// The scenario against `base` with `endpoints`.
    pub fn new(plan: &OidcPlan, base: &HttpUrl, endpoints: OidcEndpoints) -> OidcConfig {
        let r = FormRequest::of(plan, &endpoints);
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n",
            r.path,
            base.authority()
        );
        if let Some(a) = &r.authorization {
            head.push_str("Authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", r.body.len()));
        let mut request = head.into_bytes();
        request.extend_from_slice(r.body.as_bytes());
        OidcConfig {
            plan: plan.clone(),
            endpoints,
            request,
            host: base.authority(),
            client_auth: ClientAuth::of(plan),
        }
    }

    /// Serializes `POST {token endpoint}` with form `params` (already encoded) and the client's credentials
    /// into `out`.
    fn token_post(&self, params: &str, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        let len = params.len() + self.client_auth.body_suffix.len();
        let _ = write!(
            out,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n",
            self.endpoints.token_path, self.host
        );
        if let Some(a) = &self.client_auth.header {
            let _ = write!(out, "Authorization: {a}\r\n");
        }
        let _ = write!(out, "Content-Length: {len}\r\n\r\n");
        out.extend_from_slice(params.as_bytes());
        out.extend_from_slice(self.client_auth.body_suffix.as_bytes());
    }

    /// Serializes `GET {authorization endpoint}?...` for one code flow (with the session cookie) into `out`.
    fn authorize_get(&self, p: &Pkce, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        let path = self
            .endpoints
            .authorization_path
            .as_deref()
            .unwrap_or("/authorize");
        let _ = write!(
            out,
            "GET {path}{}{}",
            if path.contains('?') { '&' } else { '?' },
            authorize_query(&self.plan, p)
        );
        let _ = write!(out, " HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(c) = &self.endpoints.session_cookie {
            let _ = write!(out, "Cookie: {c}\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// One code flow's secrets: the PKCE verifier and its S256 challenge, `state` and `nonce`.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// `code_verifier`: 43 characters (32 random bytes, base64url).
    pub verifier: String,
    /// `code_challenge` = base64url(SHA-256(verifier)) (RFC 7636 §4.2).
    pub challenge: String,
    /// `state` (16 random bytes).
    pub state: String,
    /// `nonce` (16 random bytes), echoed in the ID token.
    pub nonce: String,
}

impl Pkce {
    /// Fresh values from `rng` (a load generator's flow, not a real client's secret: a seeded PRNG is enough).
    pub fn new<R: rand::Rng>(rng: &mut R) -> Pkce {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let verifier = b64.encode(rng.random::<[u8; 32]>());
        let challenge = s256(&verifier);
        Pkce {
            verifier,
            challenge,
            state: b64.encode(rng.random::<[u8; 16]>()),
            nonce: b64.encode(rng.random::<[u8; 16]>()),
        }
    }
}

/// The S256 `code_challenge` of a verifier: base64url(SHA-256(ASCII(verifier))) (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The authorization request's query (OpenID Connect Core §3.1.2.1, RFC 7636 §4.3).
fn authorize_query(plan: &OidcPlan, p: &Pkce) -> String {
    let mut q = format!(
        "response_type=code&client_id={}&redirect_uri={}",
        form(&plan.client_id),
        form(plan.redirect_uri.as_deref().unwrap_or(""))
    );
    if let Some(s) = &plan.scope {
        q.push_str("&scope=");
        q.push_str(&form(s));
    }
    q.push_str(&format!(
        "&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        p.state, p.nonce, p.challenge
    ));
    q
}

/// What a redirect back from `/authorize` carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    /// A code, with `state` and `iss` checked.
    Code(String),
    /// The failed check, or the `error` the issuer sent back.
    Refused(&'static str),
}

/// Reads the `Location` of an authorization response (RFC 6749 §4.1.2, RFC 9207): it must go to the redirect URI
/// and carry a `code`, the flow's `state`, and (when present) this issuer as `iss`.
pub fn parse_redirect(location: &[u8], redirect_uri: &str, p: &Pkce, issuer: &str) -> Redirect {
    let Ok(location) = std::str::from_utf8(location) else {
        return Redirect::Refused("redirect_not_utf8");
    };
    let Some(query) = location
        .strip_prefix(redirect_uri)
        .and_then(|r| r.strip_prefix('?'))
    else {
        return Redirect::Refused("redirect_to_wrong_uri");
    };
    let (mut code, mut state, mut iss, mut error) = (None, None, None, false);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v),
            "iss" => iss = Some(v),
            "error" => error = true,
            _ => {}
        }
    }
    if error {
        return Redirect::Refused("authorize_error");
    }
    if state.as_deref() != Some(p.state.as_str()) {
        return Redirect::Refused("state_mismatch");
    }
    if iss.is_some_and(|i| i != issuer) {
        return Redirect::Refused("wrong_iss_in_redirect");
    }
    match code {
        Some(c) if !c.is_empty() => Redirect::Code(c),
        _ => Redirect::Refused("redirect_without_code"),
    }
}

/// The hidden `request` field of the built-in issuer's login form (see `servers/token-issuer/API.md`).
pub fn login_request_id(html: &str) -> Option<String> {
    html.split("<input").skip(1).find_map(|tag| {
        let tag = tag.split('>').next()?;
        if !tag.contains("name=\"request\"") {
            return None;
        }
        let v = tag.split("value=\"").nth(1)?.split('"').next()?;
        Some(
            v.replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        )
    })
}

/// Logs the phase's user in once (coordinator side, blocking) through the built-in issuer's login form:
/// `GET /authorize` (no session: the form), `POST /login` (a redirect with a code and the session cookie).
/// Returns the `Cookie` value that later authorization requests carry, so every flow of the phase rides one
/// session, as single sign-on does.
pub fn login(
    plan: &OidcPlan,
    base: &HttpUrl,
    addr: SocketAddr,
    e: &OidcEndpoints,
    timeout: Duration,
) -> Result<String, String> {
    let host = base.authority();
    let auth_path = e
        .authorization_path
        .as_deref()
        .ok_or("the issuer's discovery document names no authorization_endpoint")?;
    let p = Pkce::new(&mut rand::rng());
    let path = format!("{auth_path}?{}", authorize_query(plan, &p));
    let r = procs::http_exchange(
        addr,
        &host,
        "GET",
        &path,
        None,
        &[],
        b"",
        timeout,
        MAX_DOC_BYTES,
    )
    .map_err(|err| format!("authorize: {err}"))?;
    if r.status != 200 {
        return Err(format!(
            "authorize without a session: status {} (expected the login form): {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        ));
    }
    let request = login_request_id(&String::from_utf8_lossy(&r.body))
        .ok_or("the login form has no hidden `request` field")?;
    let body = format!(
        "request={}&username={}&password={}",
        form(&request),
        form(plan.username.as_deref().unwrap_or("")),
        form(plan.password.as_deref().unwrap_or(""))
    );
    let r = procs::http_exchange(
        addr,
        &host,
        "POST",
        "/login",
        Some("application/x-www-form-urlencoded"),
        &[],
        body.as_bytes(),
        timeout,
        MAX_DOC_BYTES,
    )
    .map_err(|err| format!("login: {err}"))?;
    if r.status != 302 && r.status != 303 {
        return Err(format!(
            "login as {}: status {}: {}",
            plan.username.as_deref().unwrap_or(""),
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        ));
    }
    let location = r.header("location").unwrap_or("");
    if let Redirect::Refused(why) = parse_redirect(
        location.as_bytes(),
        plan.redirect_uri.as_deref().unwrap_or(""),
        &p,
        &e.issuer,
    ) {
        return Err(format!("login redirect `{location}`: {why}"));
    }
    let cookie = r
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    if cookie.is_empty() {
        return Err("login answered without a session cookie".into());
    }
    Ok(cookie)
}

/// A token kept for verification, with when its request was sent and answered.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The compact JWS.
    pub token: String,
    /// When the token request was sent.
    pub sent: Instant,
    /// When the response arrived.
    pub received: Instant,
    /// The ID token that came with it (user flows).
    pub id_token: Option<String>,
    /// The `nonce` the flow sent (authorization code flow), which the ID token must echo.
    pub nonce: Option<String>,
}

/// One loader process's OIDC counts (merged by plain addition in the coordinator).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OidcTotals {
    /// Responses with status 200 that carried an `access_token`.
    pub tokens: u64,
    /// Status 200 responses without a usable `access_token`, or with a `token_type` other than Bearer.
    pub malformed_responses: u64,
    /// Tokens kept for verification.
    pub sampled: u64,
    /// Tokens that would have been sampled but found the sample full.
    pub sample_overflow: u64,
    /// Sampled tokens that passed every check.
    pub verified: u64,
    /// Sampled tokens that failed, by the first check they failed.
    pub failures: BTreeMap<String, u64>,
    /// JWKS reads during the phase (the one before it included) and how many failed.
    pub jwks_reads: u64,
    /// Failed JWKS reads.
    pub jwks_read_failures: u64,
    /// Introspection phases: status-200 answers saying `active: true`.
    #[serde(default)]
    pub introspected_active: u64,
    /// Introspection phases: answers saying `active: false` (the token is valid, so each is a failure).
    #[serde(default)]
    pub introspected_inactive: u64,
    /// HTTP exchanges sent (a code flow is two per flow).
    #[serde(default)]
    pub http_requests: u64,
    /// User flows that failed a protocol check, by the check (`state_mismatch`, `refresh_not_rotated`, ...).
    #[serde(default)]
    pub flow_failures: BTreeMap<String, u64>,
    /// Refresh flow: refresh-token chains started again through the code flow after a transport error left the
    /// lane's refresh token in doubt.
    #[serde(default)]
    pub refresh_chain_restarts: u64,
}

impl OidcTotals {
    /// Adds another process's counts.
    pub fn merge(&mut self, o: &OidcTotals) {
        self.tokens += o.tokens;
        self.malformed_responses += o.malformed_responses;
        self.sampled += o.sampled;
        self.sample_overflow += o.sample_overflow;
        self.verified += o.verified;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_insert(0) += v;
        }
        self.jwks_reads += o.jwks_reads;
        self.jwks_read_failures += o.jwks_read_failures;
        self.introspected_active += o.introspected_active;
        self.introspected_inactive += o.introspected_inactive;
        self.http_requests += o.http_requests;
        for (k, v) in &o.flow_failures {
            *self.flow_failures.entry(k.clone()).or_insert(0) += v;
        }
        self.refresh_chain_restarts += o.refresh_chain_restarts;
    }

    /// Counts a failed protocol check of a user flow.
    pub fn flow_fail(&mut self, why: &str) {
        *self.flow_failures.entry(why.to_string()).or_insert(0) += 1;
    }

    fn fail(&mut self, why: &str) {
        *self.failures.entry(why.to_string()).or_insert(0) += 1;
    }
}

/// The access token in a token response body, when the body is a JSON object with a string `access_token` and
/// `token_type` Bearer (RFC 6749 §5.1; the type is case-insensitive).
pub fn access_token(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenResponse {
        access_token: String,
        token_type: String,
    }
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    (r.token_type.eq_ignore_ascii_case("bearer") && !r.access_token.is_empty())
        .then_some(r.access_token)
}

/// The tokens of a token response (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `Bearer` (case-insensitive).
    pub token_type: String,
    /// The ID token, for flows with a user and `openid`.
    #[serde(default)]
    pub id_token: Option<String>,
    /// The refresh token, when one was issued.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// Parses a token response; `None` unless it has a non-empty Bearer `access_token`.
pub fn token_response(body: &[u8]) -> Option<TokenResponse> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    (r.token_type.eq_ignore_ascii_case("bearer") && !r.access_token.is_empty()).then_some(r)
}

/// A cheap plausibility check for responses that are not sampled: a JSON object naming `access_token` and
/// `token_type`.
pub fn looks_like_token_response(body: &[u8]) -> bool {
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    body.first() == Some(&b'{') && find(b"\"access_token\"") && find(b"\"token_type\"")
}

/// The `active` member of an introspection response (RFC 7662 §2.2), found without parsing the whole document:
/// `Some(true)` / `Some(false)`, or `None` when the body has no boolean `active`.
pub fn introspection_active(body: &[u8]) -> Option<bool> {
    const KEY: &[u8] = b"\"active\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &body[at + KEY.len()..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

/// Per-lane state: the buffers of the current send, the user flows' state, and sampling (every
/// `verify_every`-th token of the lane is kept; deterministic, so runs compare).
#[derive(Debug, Default)]
pub struct LaneOidc {
    /// The response body of the current send.
    pub response: Vec<u8>,
    /// The request being built (user flows).
    request: Vec<u8>,
    /// The `Location` of an authorization response.
    location: Vec<u8>,
    /// Refresh flow: the lane's current refresh token (`None`: none yet, or in doubt after an error).
    refresh_token: Option<String>,
    /// The current send's protocol failure (a user flow's failed check), counted by the caller.
    pub failure: Option<&'static str>,
    /// The current send's nonce (authorization code flow).
    pub nonce: Option<String>,
    /// HTTP exchanges of the current send.
    pub exchanges: u64,
    /// Whether the current send restarted a refresh chain.
    pub restarted: bool,
    seen: u64,
}

impl LaneOidc {
    /// Runs one send of the phase's flow on `conn`: the prebuilt request (client_credentials, introspection), a
    /// code flow, or one refresh. The result is the last exchange's; a failed protocol check is left in
    /// [`LaneOidc::failure`].
    pub async fn send<R: rand::Rng>(
        &mut self,
        conn: &mut Conn,
        cfg: &OidcConfig,
        rng: &mut R,
    ) -> Result<Exchange, ClientError> {
        self.failure = None;
        self.nonce = None;
        self.exchanges = 0;
        self.restarted = false;
        match cfg.plan.flow {
            OidcFlow::ClientCredentials | OidcFlow::Introspect | OidcFlow::TokenExchange => {
                self.exchanges = 1;
                conn.send_raw(&cfg.request, &mut self.response, MAX_OIDC_RESPONSE_BYTES)
                    .await
            }
            OidcFlow::AuthorizationCode => self.code_flow(conn, cfg, rng).await,
            OidcFlow::RefreshToken => {
                if self.refresh_token.is_none() {
                    self.restarted = true;
                    return self.start_refresh_chain(conn, cfg, rng).await;
                }
                self.refresh(conn, cfg).await
            }
        }
    }

    /// Before the phase (refresh flow): obtains the lane's first refresh token through the code flow.
    pub async fn prepare<R: rand::Rng>(
        &mut self,
        conn: &mut Conn,
        cfg: &OidcConfig,
        rng: &mut R,
    ) -> Result<(), String> {
        if cfg.plan.flow != OidcFlow::RefreshToken {
            return Ok(());
        }
        let x = self
            .start_refresh_chain(conn, cfg, rng)
            .await
            .map_err(|e| format!("the first refresh token: {e}"))?;
        match self.failure {
            None if self.refresh_token.is_some() => Ok(()),
            why => Err(format!(
                "the first refresh token: status {}, {}: {}",
                x.status.as_u16(),
                why.unwrap_or("no refresh_token"),
                String::from_utf8_lossy(&self.response).trim()
            )),
        }
    }

    /// A code flow that keeps the refresh token it returns.
    async fn start_refresh_chain<R: rand::Rng>(
        &mut self,
        conn: &mut Conn,
        cfg: &OidcConfig,
        rng: &mut R,
    ) -> Result<Exchange, ClientError> {
        let x = self.code_flow(conn, cfg, rng).await?;
        if self.failure.is_none() && x.status.as_u16() == 200 {
            match token_response(&self.response).and_then(|t| t.refresh_token) {
                Some(r) if !r.is_empty() => self.refresh_token = Some(r),
                _ => self.failure = Some("no_refresh_token"),
            }
        }
        Ok(x)
    }

    /// `GET /authorize` with the session (a redirect with the code), then `POST /token` with the code and the
    /// PKCE verifier.
    async fn code_flow<R: rand::Rng>(
        &mut self,
        conn: &mut Conn,
        cfg: &OidcConfig,
        rng: &mut R,
    ) -> Result<Exchange, ClientError> {
        let p = Pkce::new(rng);
        cfg.authorize_get(&p, &mut self.request);
        self.exchanges += 1;
        let a = conn
            .send_raw_location(
                &self.request,
                &mut self.response,
                &mut self.location,
                MAX_OIDC_RESPONSE_BYTES,
            )
            .await?;
        let redirect_uri = cfg.plan.redirect_uri.as_deref().unwrap_or("");
        if !matches!(a.status.as_u16(), 302 | 303) {
            self.failure = Some(if a.status.as_u16() == 200 {
                "authorize_asked_to_log_in"
            } else {
                "authorize_not_redirected"
            });
            return Ok(a);
        }
        let code = match parse_redirect(&self.location, redirect_uri, &p, &cfg.endpoints.issuer) {
            Redirect::Code(c) => c,
            Redirect::Refused(why) => {
                self.failure = Some(why);
                return Ok(a);
            }
        };
        let params = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            form(&code),
            form(redirect_uri),
            p.verifier
        );
        cfg.token_post(&params, &mut self.request);
        self.nonce = Some(p.nonce);
        self.exchanges += 1;
        conn.send_raw(&self.request, &mut self.response, MAX_OIDC_RESPONSE_BYTES)
            .await
    }

    /// `POST /token` with `grant_type=refresh_token`; the answer must carry a new refresh token (rotation), which
    /// replaces the lane's.
    async fn refresh(
        &mut self,
        conn: &mut Conn,
        cfg: &OidcConfig,
    ) -> Result<Exchange, ClientError> {
        let Some(old) = self.refresh_token.take() else {
            return Err(ClientError::BadRequest);
        };
        let params = format!("grant_type=refresh_token&refresh_token={}", form(&old));
        cfg.token_post(&params, &mut self.request);
        self.exchanges += 1;
        // Any transport error leaves the token in doubt (the issuer may have rotated it): the next send starts a
        // new chain rather than risk presenting a used token, which a correct issuer treats as theft.
        let x = conn
            .send_raw(&self.request, &mut self.response, MAX_OIDC_RESPONSE_BYTES)
            .await?;
        if x.status.as_u16() != 200 {
            self.failure = Some("refresh_refused");
            return Ok(x);
        }
        match token_response(&self.response).and_then(|t| t.refresh_token) {
            Some(new) if !new.is_empty() && new != old => self.refresh_token = Some(new),
            Some(_) => self.failure = Some("refresh_not_rotated"),
            None => self.failure = Some("refresh_not_rotated"),
        }
        Ok(x)
    }

    /// Whether the next token should be kept (and counts it).
    pub fn take_sample(&mut self, every: u64) -> bool {
        self.seen += 1;
        every > 0 && (self.seen - 1) % every == 0
    }
}

/// A JWKS as read at one instant (`None`: the read failed).
type Snapshot = (Instant, Option<Arc<JwkSet>>);

/// Re-reads the issuer's JWKS on its own thread until stopped, keeping every read (bounded: one per refresh
/// period of the phase, at most [`MAX_SNAPSHOTS`]).
pub struct JwksWatcher {
    snapshots: Arc<Mutex<Vec<Snapshot>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Most JWKS reads one watcher keeps (at the default 1 s period: ten hours).
pub const MAX_SNAPSHOTS: usize = 36_000;

/// Reads the JWKS once (blocking).
pub fn read_jwks(e: &OidcEndpoints, timeout: Duration) -> Option<JwkSet> {
    let (status, body) = procs::http_request(
        e.jwks_addr,
        &e.jwks_host,
        "GET",
        &e.jwks_path,
        None,
        b"",
        timeout,
        MAX_DOC_BYTES,
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

impl JwksWatcher {
    /// Reads the JWKS now (before the phase starts), then every `period` on a thread.
    pub fn start(e: &OidcEndpoints, period: Duration, timeout: Duration) -> JwksWatcher {
        let snapshots = Arc::new(Mutex::new(vec![(
            Instant::now(),
            read_jwks(e, timeout).map(Arc::new),
        )]));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, e) = (snapshots.clone(), stop.clone(), e.clone());
        let thread = std::thread::Builder::new()
            .name("jwks".into())
            .spawn(move || {
                let mut next = Instant::now() + period;
                while !st.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if now < next {
                        // Short naps so a stop is seen quickly.
                        std::thread::sleep((next - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    next += period;
                    // The read time is taken before the request: a key published after it may or may not be in
                    // the answer, so the check below never credits the JWKS with more than it could know.
                    let at = Instant::now();
                    let set = read_jwks(&e, timeout).map(Arc::new);
                    let mut v = s.lock().expect("not poisoned");
                    if v.len() < MAX_SNAPSHOTS {
                        v.push((at, set));
                    }
                }
            })
            .ok();
        JwksWatcher {
            snapshots,
            stop,
            thread,
        }
    }

    /// Stops the thread and returns every read.
    pub fn finish(mut self) -> Vec<Snapshot> {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.snapshots.lock().expect("not poisoned"))
    }
}

/// The claims the scenario checks beyond what `jsonwebtoken` validates.
#[derive(Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// Unix seconds of a monotonic instant (either side of now).
fn unix_s(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let back = now.saturating_duration_since(at).as_secs_f64();
    let ahead = at.saturating_duration_since(now).as_secs_f64();
    (wall - back + ahead).max(0.0) as u64
}

/// Verifies one token against `set`: header, key, signature, issuer, audience (when the phase asked for one),
/// times relative to when it was requested, and the client. Returns the token's `exp`, or the failed check's name.
fn check(cfg: &OidcConfig, set: &JwkSet, s: &Sample) -> Result<u64, &'static str> {
    let header = jsonwebtoken::decode_header(&s.token).map_err(|_| "malformed_jws")?;
    let typ = header.typ.as_deref().unwrap_or("");
    if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
        return Err("typ_not_at_jwt");
    }
    if !matches!(header.alg, Algorithm::ES256 | Algorithm::EdDSA) {
        return Err("unexpected_alg");
    }
    let kid = header.kid.as_deref().ok_or("no_kid")?;
    let jwk: &Jwk = set.find(kid).ok_or("kid_not_published")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "unusable_jwk")?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_S;
    // Expiry is checked against the issue time below: verification runs after the phase, when a short-lived
    // token may have expired in the meantime without anything being wrong.
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    v.set_issuer(&[cfg.endpoints.issuer.as_str()]);
    match &cfg.plan.resource {
        Some(r) => v.set_audience(&[r.as_str()]),
        None => v.validate_aud = false,
    }
    let data = jsonwebtoken::decode::<Claims>(&s.token, &key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => "bad_signature",
            K::InvalidIssuer => "wrong_iss",
            K::InvalidAudience => "wrong_aud",
            K::MissingRequiredClaim(_) => "missing_claim",
            K::ImmatureSignature => "not_yet_valid",
            K::InvalidAlgorithm => "alg_does_not_match_key",
            _ => "invalid_token",
        }
    })?;
    let c = data.claims;
    let (sent, received) = (unix_s(s.sent), unix_s(s.received));
    if c.iat + LEEWAY_S < sent || c.iat > received + LEEWAY_S {
        return Err("iat_outside_request");
    }
    if c.exp <= received {
        return Err("expired_when_issued");
    }
    if c.client_id.as_deref() != Some(cfg.plan.client_id.as_str()) {
        return Err("wrong_client_id");
    }
    if let Some(want) = &cfg.plan.scope {
        let mut a: Vec<&str> = want.split(' ').filter(|x| !x.is_empty()).collect();
        let mut b: Vec<&str> = c
            .scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|x| !x.is_empty())
            .collect();
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return Err("wrong_scope");
        }
    }
    Ok(c.exp)
}

/// The ID token claims the scenario checks beyond what `jsonwebtoken` validates.
#[derive(Deserialize)]
struct IdClaims {
    iat: u64,
    exp: u64,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    at_hash: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

/// `at_hash` of `access_token` for a JWS algorithm (OpenID Connect Core §3.1.3.6): the left half of the hash that
/// goes with the algorithm, base64url. ES256 hashes with SHA-256; EdDSA with Ed25519 with SHA-512 (the hash
/// Ed25519 itself uses, as OpenID Connect's EdDSA guidance says).
pub fn at_hash(alg: Algorithm, access_token: &str) -> Option<String> {
    use aws_lc_rs::digest::{SHA256, SHA512, digest};
    let d = match alg {
        Algorithm::ES256 | Algorithm::RS256 | Algorithm::PS256 | Algorithm::HS256 => {
            digest(&SHA256, access_token.as_bytes())
        }
        Algorithm::EdDSA => digest(&SHA512, access_token.as_bytes()),
        _ => return None,
    };
    let half = &d.as_ref()[..d.as_ref().len() / 2];
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(half))
}

/// Verifies a sample's ID token against `set` (OpenID Connect Core §3.1.3.7): signature by a published key,
/// `typ` JWT (or none), `iss`, `aud` = the client, `azp` (when present) = the client, times relative to the
/// request, the flow's `nonce` echoed, and `at_hash` (when present) matching the access token.
fn check_id(cfg: &OidcConfig, set: &JwkSet, s: &Sample, id: &str) -> Result<(), &'static str> {
    let header = jsonwebtoken::decode_header(id).map_err(|_| "id_token_malformed_jws")?;
    if let Some(typ) = header.typ.as_deref()
        && !typ.eq_ignore_ascii_case("jwt")
    {
        return Err("id_token_typ_not_jwt");
    }
    if !matches!(header.alg, Algorithm::ES256 | Algorithm::EdDSA) {
        return Err("id_token_unexpected_alg");
    }
    let kid = header.kid.as_deref().ok_or("id_token_no_kid")?;
    let jwk: &Jwk = set.find(kid).ok_or("kid_not_published")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "unusable_jwk")?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_S;
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
    v.set_issuer(&[cfg.endpoints.issuer.as_str()]);
    v.set_audience(&[cfg.plan.client_id.as_str()]);
    let c = jsonwebtoken::decode::<IdClaims>(id, &key, &v)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => "id_token_bad_signature",
                K::InvalidIssuer => "id_token_wrong_iss",
                K::InvalidAudience => "id_token_wrong_aud",
                K::MissingRequiredClaim(_) => "id_token_missing_claim",
                K::ImmatureSignature => "id_token_not_yet_valid",
                _ => "id_token_invalid",
            }
        })?
        .claims;
    let (sent, received) = (unix_s(s.sent), unix_s(s.received));
    if c.iat + LEEWAY_S < sent || c.iat > received + LEEWAY_S {
        return Err("id_token_iat_outside_request");
    }
    if c.exp <= received {
        return Err("id_token_expired_when_issued");
    }
    if c.azp.as_deref().is_some_and(|a| a != cfg.plan.client_id) {
        return Err("id_token_wrong_azp");
    }
    // A refreshed ID token need not carry the nonce (OpenID Connect Core §12.2); a code flow's must.
    if let Some(n) = &s.nonce
        && c.nonce.as_deref() != Some(n.as_str())
    {
        return Err("id_token_nonce_mismatch");
    }
    if let Some(h) = &c.at_hash
        && at_hash(header.alg, &s.token).as_deref() != Some(h.as_str())
    {
        return Err("id_token_at_hash_mismatch");
    }
    Ok(())
}

/// The access token's and (when there is one) the ID token's checks; the access token's `exp`.
fn check_all(cfg: &OidcConfig, set: &JwkSet, s: &Sample) -> Result<u64, &'static str> {
    let exp = check(cfg, set, s)?;
    match (&s.id_token, cfg.plan.flow) {
        (Some(id), _) => check_id(cfg, set, s, id)?,
        // `openid` asks for an ID token; a code flow that asked and got none is wrong (OIDC Core §3.1.3.3).
        (None, OidcFlow::AuthorizationCode)
            if cfg
                .plan
                .scope
                .as_deref()
                .is_some_and(|sc| sc.split(' ').any(|t| t == "openid")) =>
        {
            return Err("no_id_token");
        }
        (None, _) => {}
    }
    Ok(exp)
}

/// Verifies every sample: against the newest JWKS read before the token was requested (`kid_not_prepublished`
/// when its key was not in it), then against `after`, the JWKS read after the phase (`key_withdrawn_early` when
/// the key had gone while the token still lived; a token that had expired by then is not checked again).
pub fn verify_samples(
    cfg: &OidcConfig,
    samples: &[Sample],
    snapshots: &[Snapshot],
    after: Option<(Instant, &JwkSet)>,
    totals: &mut OidcTotals,
) {
    totals.jwks_reads += snapshots.len() as u64;
    totals.jwks_read_failures += snapshots.iter().filter(|(_, s)| s.is_none()).count() as u64;
    for s in samples {
        // The newest successful read that started before the request was sent.
        let before = snapshots
            .iter()
            .rev()
            .find(|(at, set)| *at <= s.sent && set.is_some())
            .and_then(|(_, set)| set.clone());
        let Some(before) = before else {
            totals.fail("no_jwks_before_issue");
            continue;
        };
        let exp = match check_all(cfg, &before, s) {
            Ok(exp) => exp,
            Err("kid_not_published") => {
                totals.fail("kid_not_prepublished");
                continue;
            }
            Err(why) => {
                totals.fail(why);
                continue;
            }
        };
        match after {
            None => totals.fail("no_jwks_after_phase"),
            Some((at, _)) if unix_s(at) >= exp => totals.verified += 1,
            Some((_, set)) => match check_all(cfg, set, s) {
                Ok(_) => totals.verified += 1,
                Err("kid_not_published") => totals.fail("key_withdrawn_early"),
                Err(why) => totals.fail(why),
            },
        }
    }
}
