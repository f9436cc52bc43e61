//! The HTTP service: routing, the form endpoints' shared preamble (content type, body limit, strict form parsing,
//! client authentication) and the endpoints themselves. [`app`] builds it; [`OidcApp::handle`] answers one request
//! without a socket, which is what tests and benches drive.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use hyper::service::Service;
use refbench_common::h1::{FastPath, Head, Out};
use refbench_common::http::{BodyError, read_body_limited};
use serde::Serialize;

use crate::authorize::UserFlows;
use crate::client_auth::AuthMethod;
use crate::client_auth::{ClientRegistry, authenticate};
use crate::clock::Clock;
use crate::config::{Client, Lifetimes, ResolvedConfig};
use crate::discovery::{
    ADMIN_ROTATE_PATH, AUTHORIZE_PATH, Discovery, INTROSPECT_PATH, JWKS_PATH, LOGIN_PATH,
    OAUTH_METADATA_PATH, OPENID_CONFIGURATION_PATH, REVOKE_PATH, TOKEN_PATH, USERINFO_PATH,
};
use crate::error::OidcError;
use crate::form::Form;
use crate::grants::{self, Grant, TokenRequest};
use crate::keys::{JwsType, KeyError, KeyRing, RingState};
use crate::metrics::OidcMetrics;
use crate::oauth::{ErrorCode, OAuthError, json_response, no_store};
use crate::private_key_jwt;
use crate::revoke::Revocations;
use crate::secret::{AdminToken, SecretHasher};
use crate::token::{AccessTokenClaims, Act, AudRef, Jti};
use crate::trust::Federation;
use crate::verify::{AccessClaims, Expected, VerifyError, verify_access_token};

/// Largest form body at the token, introspection and revocation endpoints; larger ones get 413 with an
/// `invalid_request` body. OAuth requests are a few hundred bytes.
pub const MAX_FORM_BODY_BYTES: usize = 8 * 1024;

/// Content type of the JWKS (RFC 7517 §8.5).
pub const JWKS_CONTENT_TYPE: &str = "application/jwk-set+json";

/// How long clients may cache the discovery document: it never changes while the process runs.
const DISCOVERY_MAX_AGE_S: u64 = 300;

/// The issuer's shared state.
pub struct Issuer {
    issuer: String,
    lifetimes: Lifetimes,
    leeway_s: u64,
    clients: ClientRegistry,
    hasher: SecretHasher,
    ring: KeyRing,
    revoked: Revocations,
    clock: Clock,
    metrics: OidcMetrics,
    discovery_json: Bytes,
    discovery_cache_control: HeaderValue,
    jwks_cache_control: HeaderValue,
    admin_token: Option<AdminToken>,
    /// Users, sessions, codes and refresh tokens (the authorization code flow; see `authorize`).
    flows: UserFlows,
    federation: Federation,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

/// The token issuer's HTTP service; clone per connection (one `Arc`).
#[derive(Clone, Debug)]
pub struct OidcApp {
    inner: Arc<Issuer>,
}

/// Builds the service for `issuer` (the exact `iss`, e.g. `http://127.0.0.1:8080`), generating the first two keys.
/// `admin_token` enables `POST /admin/rotate`. Install the metrics recorder first if the counters should count.
pub fn app(
    cfg: ResolvedConfig,
    issuer: &str,
    clock: Clock,
    admin_token: Option<AdminToken>,
) -> Result<OidcApp, OidcError> {
    crate::config::validate_issuer(issuer).map_err(|reason| OidcError::InvalidArg {
        flag: "--issuer",
        reason,
    })?;
    let retire_grace_s = cfg.lifetimes.max_signed_s() + cfg.clock_leeway_s;
    let ring = KeyRing::new(cfg.signing_alg, retire_grace_s)?;
    let scopes = cfg
        .clients
        .iter()
        .flat_map(|c| c.scopes.iter().cloned())
        .collect();
    let discovery = Discovery::new(issuer, cfg.signing_alg, scopes);
    let discovery_json =
        serde_json::to_vec(&discovery).map_err(|e| OidcError::Internal(e.to_string()))?;
    let flows = UserFlows::new(&cfg).map_err(|e| OidcError::Internal(e.to_string()))?;
    let federation = Federation::new(cfg.federation.clone(), issuer);
    let metrics = OidcMetrics::new();
    metrics
        .published_keys
        .set(ring.snapshot(clock.now_s()).published_keys() as f64);
    let cache_control = |max_age_s: u64| {
        HeaderValue::from_str(&format!("public, max-age={max_age_s}"))
            .map_err(|e| OidcError::Internal(e.to_string()))
    };
    Ok(OidcApp {
        inner: Arc::new(Issuer {
            issuer: issuer.to_string(),
            lifetimes: cfg.lifetimes,
            leeway_s: cfg.clock_leeway_s,
            clients: ClientRegistry::new(&cfg.clients),
            hasher: cfg.hasher,
            ring,
            revoked: Revocations::new(cfg.max_revoked_tokens),
            clock,
            metrics,
            discovery_json: Bytes::from(discovery_json),
            discovery_cache_control: cache_control(DISCOVERY_MAX_AGE_S)?,
            jwks_cache_control: cache_control(cfg.jwks_max_age_s)?,
            admin_token,
            flows,
            federation,
        }),
    })
}

impl Issuer {
    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Token lifetimes.
    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// The key ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The registered clients.
    pub fn clients(&self) -> &ClientRegistry {
        &self.clients
    }

    /// The authorization code flow's users and stores.
    pub fn flows(&self) -> &UserFlows {
        &self.flows
    }

    /// The metrics.
    pub fn metrics(&self) -> &OidcMetrics {
        &self.metrics
    }

    /// The revocation set.
    pub fn revoked(&self) -> &Revocations {
        &self.revoked
    }

    /// Clock skew tolerated in verification, seconds.
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Trusted issuers, exchange policies, the assertion replay cache.
    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    /// The verification expectations of this issuer (any audience).
    pub fn expected(&self) -> Expected<'_> {
        Expected {
            issuer: &self.issuer,
            audience: None,
            leeway_s: self.leeway_s,
        }
    }

    /// Signs an access token (RFC 9068) with the current key.
    pub fn mint_access_token(
        &self,
        sub: &str,
        client: &Client,
        aud: AudRef<'_>,
        scope: &str,
        now_s: u64,
    ) -> Result<String, OAuthError> {
        self.mint_access_token_with_act(sub, client, aud, scope, None, now_s)
    }

    /// [`Issuer::mint_access_token`] with an `act` claim (RFC 8693 §4.1; token exchange).
    pub fn mint_access_token_with_act(
        &self,
        sub: &str,
        client: &Client,
        aud: AudRef<'_>,
        scope: &str,
        act: Option<&Act>,
        now_s: u64,
    ) -> Result<String, OAuthError> {
        let jti = Jti::random().map_err(server_error)?;
        let claims = AccessTokenClaims {
            iss: &self.issuer,
            sub,
            aud,
            exp: now_s + self.lifetimes.access_s,
            iat: now_s,
            nbf: now_s,
            jti: jti.as_str(),
            client_id: &client.id,
            scope,
            grant_id: None,
            act,
        };
        let keys = self.ring.snapshot(now_s);
        let started = Instant::now();
        let token = keys
            .current
            .sign(JwsType::AccessToken, &claims)
            .map_err(server_error)?;
        self.metrics
            .sign_seconds
            .record(started.elapsed().as_secs_f64());
        Ok(token)
    }

    /// Verifies an access token with this issuer's keys and revocation set at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<AccessClaims, Inactive> {
        let keys = self.ring.snapshot(now_s);
        let claims = verify_access_token(token, &keys, &self.expected(), now_s)?;
        if self.revoked.is_revoked(&claims.jti, now_s) {
            return Err(Inactive::Revoked);
        }
        // A token from a refresh-token grant dies with its grant (reuse detection, `/revoke` of a refresh token,
        // a replayed code): one lookup instead of a list of every access token the grant ever got.
        if let Some(g) = &claims.grant_id
            && !crate::grants::refresh_token::grant_active(self, g, now_s)
        {
            return Err(Inactive::Revoked);
        }
        Ok(claims)
    }

    /// Rotates the keys now (see [`KeyRing::rotate`]).
    pub fn rotate(&self) -> Result<Arc<RingState>, KeyError> {
        let state = self.ring.rotate(self.clock.now_s())?;
        self.metrics.key_rotations.increment(1);
        self.metrics
            .published_keys
            .set(state.published_keys() as f64);
        Ok(state)
    }

    /// The JWKS as published at `now_s`.
    pub fn jwks(&self, now_s: u64) -> Bytes {
        let state = self.ring.snapshot(now_s);
        self.metrics
            .published_keys
            .set(state.published_keys() as f64);
        state.jwks_json.clone()
    }
}

/// Why [`Issuer::verify`] does not consider a token active.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inactive {
    /// The token does not verify (see [`VerifyError`]).
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// The token verifies but was revoked.
    #[error("revoked")]
    Revoked,
}

fn server_error(e: KeyError) -> OAuthError {
    OAuthError::new(ErrorCode::ServerError, format!("token signing failed: {e}"))
        .with_status(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The endpoints that take a form body and an authenticated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FormEndpoint {
    Token,
    Introspect,
    Revoke,
}

impl OidcApp {
    /// The shared state.
    pub fn issuer(&self) -> &Issuer {
        &self.inner
    }

    /// Handles one request (usable without a socket).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let get = parts.method == Method::GET || parts.method == Method::HEAD;
        let post = parts.method == Method::POST;
        let endpoint = match parts.uri.path() {
            OPENID_CONFIGURATION_PATH | OAUTH_METADATA_PATH if get => return self.discovery(),
            JWKS_PATH if get => return self.jwks(),
            TOKEN_PATH if post => FormEndpoint::Token,
            INTROSPECT_PATH if post => FormEndpoint::Introspect,
            REVOKE_PATH if post => FormEndpoint::Revoke,
            ADMIN_ROTATE_PATH if post => return self.admin_rotate(&parts.headers),
            AUTHORIZE_PATH if get => return crate::authorize::authorize_get(&self.inner, &parts),
            AUTHORIZE_PATH if post => return self.authorize_post(&parts, body).await,
            LOGIN_PATH if post => return self.login(&parts, body).await,
            USERINFO_PATH if get || post => {
                return crate::userinfo::userinfo(&self.inner, &parts);
            }
            AUTHORIZE_PATH => return not_allowed("GET, HEAD, POST"),
            LOGIN_PATH => return not_allowed("POST"),
            USERINFO_PATH => return not_allowed("GET, HEAD, POST"),
            OPENID_CONFIGURATION_PATH | OAUTH_METADATA_PATH | JWKS_PATH => {
                return not_allowed("GET, HEAD");
            }
            TOKEN_PATH | INTROSPECT_PATH | REVOKE_PATH | ADMIN_ROTATE_PATH => {
                return not_allowed("POST");
            }
            _ => {
                return plain_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint; see /.well-known/openid-configuration",
                );
            }
        };
        match self.form_endpoint(endpoint, &parts, body).await {
            Ok(r) => r,
            Err(e) => {
                self.inner.metrics.failure(e.code);
                e.to_response()
            }
        }
    }

    fn discovery(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.inner.discovery_json.clone()));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.headers_mut()
            .insert(CACHE_CONTROL, self.inner.discovery_cache_control.clone());
        r
    }

    fn jwks(&self) -> Response<Full<Bytes>> {
        let body = self.inner.jwks(self.inner.clock.now_s());
        let mut r = Response::new(Full::new(body));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(JWKS_CONTENT_TYPE));
        r.headers_mut()
            .insert(CACHE_CONTROL, self.inner.jwks_cache_control.clone());
        r
    }

    /// `POST /authorize` (OIDC Core §3.1.2.1: GET and POST are both supported): the form body, then the same
    /// handling as a GET.
    async fn authorize_post<B>(&self, parts: &Parts, body: B) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Err(e) = check_form_content_type(&parts.headers) {
            return crate::authorize::authorize_bad_body(&e.description);
        }
        let body = match read_body_limited(body, MAX_FORM_BODY_BYTES).await {
            Ok(b) => b,
            Err(e) => return crate::authorize::authorize_bad_body(&e.to_string()),
        };
        match Form::parse(&body) {
            Ok(form) => crate::authorize::authorize(&self.inner, parts, &form),
            Err(e) => crate::authorize::authorize_bad_body(&e.to_string()),
        }
    }

    /// `POST /login`: the form body, then [`crate::authorize::login`].
    async fn login<B>(&self, parts: &Parts, body: B) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let parsed = async {
            check_form_content_type(&parts.headers)?;
            let body = read_body_limited(body, MAX_FORM_BODY_BYTES)
                .await
                .map_err(|e| OAuthError::invalid_request(e.to_string()))?;
            Ok::<_, OAuthError>(body)
        }
        .await;
        let body = match parsed {
            Ok(b) => b,
            Err(e) => return e.to_response(),
        };
        let form = match Form::parse(&body) {
            Ok(f) => f,
            Err(e) => return OAuthError::invalid_request(e.to_string()).to_response(),
        };
        // The cookie is marked Secure when the issuer is https (browsers drop Secure cookies over plain http).
        let secure = self.inner.issuer.starts_with("https://");
        crate::authorize::login(&self.inner, &form, secure).await
    }

    async fn form_endpoint<B>(
        &self,
        endpoint: FormEndpoint,
        parts: &Parts,
        body: B,
    ) -> Result<Response<Full<Bytes>>, OAuthError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        check_form_content_type(&parts.headers)?;
        let body = match read_body_limited(body, MAX_FORM_BODY_BYTES).await {
            Ok(b) => b,
            Err(BodyError::TooLarge { limit }) => {
                return Err(OAuthError::invalid_request(format!(
                    "request body exceeds {limit} bytes"
                ))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE));
            }
            Err(e) => return Err(OAuthError::invalid_request(e.to_string())),
        };
        let form = Form::parse(&body).map_err(|e| OAuthError::invalid_request(e.to_string()))?;
        let issuer = &*self.inner;
        let auth = if private_key_jwt::is_attempt(&form) {
            let fed = &issuer.federation;
            let ctx = private_key_jwt::Context {
                issuer: &issuer.issuer,
                token_endpoint: &fed.token_endpoint,
                leeway_s: issuer.leeway_s,
                now_s: issuer.clock.now_s(),
                replay: &fed.replay,
            };
            private_key_jwt::authenticate(&parts.headers, &form, &issuer.clients, &ctx)?
        } else {
            authenticate(&parts.headers, &form, &issuer.clients, &issuer.hasher)?
        };
        if endpoint == FormEndpoint::Token {
            // A trusted issuer's JWT with an unknown kid may need a JWKS refresh (bounded); a no-op for other grants.
            issuer.federation.prepare(&form).await;
        }
        let now_s = issuer.clock.now_s();
        if auth.method == AuthMethod::None && endpoint == FormEndpoint::Introspect {
            // RFC 7662 §2.1: the caller must be authorized to introspect; a public client holds no credential.
            return Err(OAuthError::invalid_client(
                "a public client may not introspect tokens",
                true,
            ));
        }
        match endpoint {
            FormEndpoint::Token => self.token(&auth.client, &form, now_s),
            FormEndpoint::Introspect => self.introspect(&auth.client, &form, now_s),
            FormEndpoint::Revoke => self.revoke(&auth.client, &form, now_s),
        }
    }

    /// `POST /token`: the grant dispatch.
    fn token(
        &self,
        client: &Arc<Client>,
        form: &Form<'_>,
        now_s: u64,
    ) -> Result<Response<Full<Bytes>>, OAuthError> {
        let grant_type = form
            .get("grant_type")
            .ok_or_else(|| OAuthError::missing("grant_type"))?;
        let grant = Grant::from_param(grant_type).ok_or_else(|| {
            OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!("grant_type {grant_type} is not supported"),
            )
        })?;
        if !client.grants.contains(grant) {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                format!("this client may not use grant_type {grant_type}"),
            ));
        }
        let req = TokenRequest {
            issuer: &self.inner,
            client,
            form,
            now_s,
        };
        // One arm per grant; new grants add theirs here (see `grants`).
        let response = match grant {
            Grant::ClientCredentials => grants::client_credentials::issue(&req)?,
            Grant::AuthorizationCode => grants::authorization_code::issue(&req)?,
            Grant::RefreshToken => grants::refresh_token::issue(&req)?,
            Grant::JwtBearer => grants::jwt_bearer::issue(&req)?,
            Grant::TokenExchange => grants::token_exchange::issue(&req)?,
        };
        self.inner.metrics.grant(grant);
        let body = serde_json::to_vec(&response)
            .map_err(|e| OAuthError::new(ErrorCode::ServerError, e.to_string()))?;
        let mut r = json_response(StatusCode::OK, body);
        no_store(&mut r);
        Ok(r)
    }

    /// `POST /introspect` (RFC 7662): `active` and the claims, or `{"active":false}` for anything not currently
    /// valid, and for another client's token unless this client may introspect any (RFC 7662 §4).
    fn introspect(
        &self,
        client: &Client,
        form: &Form<'_>,
        now_s: u64,
    ) -> Result<Response<Full<Bytes>>, OAuthError> {
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::missing("token"))?;
        // `token_type_hint` may be ignored (RFC 7662 §2.1): a JWS has dots, a refresh token never does.
        if !token.contains('.') {
            return Ok(grants::refresh_token::introspect(
                &self.inner,
                client,
                token,
                now_s,
            ));
        }
        let claims = self
            .inner
            .verify(token, now_s)
            .ok()
            .filter(|c| client.introspect_any || c.client_id == client.id);
        #[derive(Serialize)]
        struct Active<'a> {
            active: bool,
            token_type: &'static str,
            #[serde(flatten)]
            claims: &'a AccessClaims,
        }
        let body = match &claims {
            Some(c) => {
                self.inner.metrics.introspections_active.increment(1);
                serde_json::to_vec(&Active {
                    active: true,
                    token_type: "Bearer",
                    claims: c,
                })
                .map_err(|e| OAuthError::new(ErrorCode::ServerError, e.to_string()))?
            }
            None => {
                self.inner.metrics.introspections_inactive.increment(1);
                br#"{"active":false}"#.to_vec()
            }
        };
        let mut r = json_response(StatusCode::OK, body);
        no_store(&mut r);
        Ok(r)
    }

    /// `POST /revoke` (RFC 7009): 200 for revoked and for invalid or unknown tokens (§2.2); a valid token of
    /// another client is refused with `unauthorized_client` (§2.1).
    fn revoke(
        &self,
        client: &Client,
        form: &Form<'_>,
        now_s: u64,
    ) -> Result<Response<Full<Bytes>>, OAuthError> {
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::missing("token"))?;
        // `token_type_hint` is ignored: the server looks the token up across every type it has (§2.1).
        let issuer = &*self.inner;
        let keys = issuer.ring.snapshot(now_s);
        let ok = || {
            let mut r = Response::new(Full::new(Bytes::new()));
            no_store(&mut r);
            Ok(r)
        };
        if !token.contains('.') {
            // A refresh token: revoking it revokes its grant (RFC 7009 §2.1).
            grants::refresh_token::revoke(issuer, client, token, now_s)?;
            return ok();
        }
        let Ok(claims) = verify_access_token(token, &keys, &issuer.expected(), now_s) else {
            return ok();
        };
        if claims.client_id != client.id {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "the token was issued to another client",
            ));
        }
        // Kept until verification would refuse the token anyway.
        let until_s = claims.exp.saturating_add(issuer.leeway_s);
        match issuer.revoked.revoke(&claims.jti, until_s, now_s) {
            Ok(()) => {
                issuer.metrics.revocations.increment(1);
                issuer
                    .metrics
                    .revoked_tokens
                    .set(issuer.revoked.len() as f64);
                ok()
            }
            Err(full) => {
                let mut r = OAuthError::new(ErrorCode::TemporarilyUnavailable, full.to_string())
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    .to_response();
                if let Ok(v) = HeaderValue::from_str(&full.retry_after_s.to_string()) {
                    r.headers_mut().insert(RETRY_AFTER, v);
                }
                self.inner
                    .metrics
                    .failure(ErrorCode::TemporarilyUnavailable);
                Ok(r)
            }
        }
    }

    /// `POST /admin/rotate` with `Authorization: Bearer <admin token>`.
    fn admin_rotate(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let Some(admin) = &self.inner.admin_token else {
            return plain_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "admin endpoints are disabled: start the server with --admin-token-file",
            );
        };
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !presented.is_some_and(|t| admin.matches(t)) {
            let mut r = plain_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "admin bearer token missing or wrong",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    r#"Bearer realm="token-issuer-admin", error="invalid_token""#,
                ),
            );
            return r;
        }
        match self.inner.rotate() {
            Ok(state) => {
                let body = serde_json::json!({
                    "generation": state.generation,
                    "current_kid": state.current.kid(),
                    "next_kid": state.next.kid(),
                    "retired": state.retired.iter().map(|r| serde_json::json!({
                        "kid": r.key.kid(),
                        "retired_at": r.retired_at_s,
                        "published_until": r.published_until_s,
                    })).collect::<Vec<_>>(),
                });
                let mut r = json_response(
                    StatusCode::OK,
                    serde_json::to_vec(&body).unwrap_or_default(),
                );
                no_store(&mut r);
                r
            }
            Err(e @ KeyError::RingFull { .. }) => {
                plain_error(StatusCode::CONFLICT, "rotation_refused", &e.to_string())
            }
            Err(e) => plain_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &e.to_string(),
            ),
        }
    }
}

/// `application/x-www-form-urlencoded` is required (RFC 6749 §3.2, RFC 7662 §2.1, RFC 7009 §2.1); a `charset`, if
/// given, must be UTF-8. Anything else is `invalid_request` (400): an OAuth client reads OAuth errors, not 415s.
pub(crate) fn check_form_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let wrong =
        || OAuthError::invalid_request("Content-Type must be application/x-www-form-urlencoded");
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(ct), None) = (values.next(), values.next()) else {
        return Err(wrong());
    };
    let ct = ct.to_str().map_err(|_| wrong())?;
    let mut params = ct.split(';');
    let essence = params.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(wrong());
    }
    for p in params {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(OAuthError::invalid_request("charset must be UTF-8"));
        }
    }
    Ok(())
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = plain_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        &format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// A JSON error outside the OAuth endpoints' own vocabulary (routing, admin).
fn plain_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    json_response(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// The future of one request.
pub type OidcFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// Any request body: hyper's (HTTP/2 through `serve_h1`, or `serve_http`) or the lean HTTP/1.1 server's buffered one.
impl<B> Service<Request<B>> for OidcApp
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = OidcFuture;

    fn call(&self, req: Request<B>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

/// Every request goes through [`OidcApp::handle`]: the endpoints that matter for speed take a form body, which a
/// head-only fast path cannot see. `serve_h1` still spares them hyper's HTTP/1 dispatch.
impl FastPath for OidcApp {
    fn answer(&self, _head: &Head<'_>, _out: &mut Out) -> bool {
        false
    }
}
