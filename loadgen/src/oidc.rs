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
}

/// The parts of a discovery document the scenario reads.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    introspection_endpoint: Option<String>,
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
    let introspection_path = match &d.introspection_endpoint {
        None => None,
        Some(u) => {
            let i =
                HttpUrl::parse(u).map_err(|e| format!("discovery introspection_endpoint: {e}"))?;
            if i.host != base.host || i.port != base.port {
                return Err(format!(
                    "discovery introspection_endpoint `{u}` is not on the target ({host}); loadgen loads the target only"
                ));
            }
            Some(if i.prefix.is_empty() {
                "/".into()
            } else {
                i.prefix
            })
        }
    };
    Ok(OidcEndpoints {
        introspection_path,
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
            OidcFlow::ClientCredentials => {
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
        let authorization = match plan.auth {
            OidcAuth::Basic => {
                let pair = format!("{}:{}", form(&plan.client_id), form(&plan.client_secret));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            OidcAuth::Post => {
                body.push_str("&client_id=");
                body.push_str(&form(&plan.client_id));
                body.push_str("&client_secret=");
                body.push_str(&form(&plan.client_secret));
                None
            }
        };
        FormRequest {
            path,
            authorization,
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
        }
    }
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

/// Per-lane sampling: every `verify_every`-th token of the lane is kept (deterministic, so runs compare).
#[derive(Debug, Default)]
pub struct LaneOidc {
    /// The response body of the current send.
    pub response: Vec<u8>,
    seen: u64,
}

impl LaneOidc {
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
        let exp = match check(cfg, &before, s) {
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
            Some((_, set)) => match check(cfg, set, s) {
                Ok(_) => totals.verified += 1,
                Err("kid_not_published") => totals.fail("key_withdrawn_early"),
                Err(why) => totals.fail(why),
            },
        }
    }
}
