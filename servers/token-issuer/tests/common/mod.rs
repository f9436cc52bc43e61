//! What the token-issuer integration tests share: an issuer driven through `app()` with a manual clock, a real one
//! on `127.0.0.1:0`, a plain HTTP/1.1 client, and verification of issued tokens with `jsonwebtoken` against the
//! served JWKS (independently of the server's own `verify` code).

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

pub mod flow;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, TokenData, Validation};
use refbench_common::shutdown::{self, ShutdownTrigger};
use refbench_oidc::client_auth::basic_header;
use refbench_oidc::secret::{AdminToken, SecretHasher};
use refbench_oidc::{Clock, FileConfig, OidcApp, ResolvedConfig, ServeArgs};
use serde_json::Value;
use tokio::net::TcpStream;

/// Bounds hangs on a shared 2-core host; never a speed measurement.
pub const PROMPT: Duration = Duration::from_secs(10);

/// The issuer of the `app()`-driven tests.
pub const ISSUER: &str = "https://issuer.test";

/// The admin bearer secret of the `app()`-driven tests.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

pub const BENCH_ID: &str = "bench-client";
pub const BENCH_SECRET: &str = "bench-secret-0123456789abcdef";
pub const OTHER_ID: &str = "other-client";
pub const OTHER_SECRET: &str = "other-secret-0123456789abcdef";
pub const NO_GRANT_ID: &str = "no-grant-client";
pub const NO_GRANT_SECRET: &str = "no-grant-secret-0123456789abcdef";
pub const API: &str = "https://api.refbench.test";
pub const REPORTS: &str = "https://reports.refbench.test";

pub const FORM: &str = "application/x-www-form-urlencoded";

/// The embedded defaults with `overrides` (TOML scalars) put in front: same clients, other lifetimes.
pub fn config_with(overrides: &str) -> ResolvedConfig {
    let text = format!(
        "{overrides}\n{}",
        refbench_oidc::config::DEFAULT_CONFIG_TOML
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or("").trim();
                // The embedded scalars that `overrides` sets would be duplicate keys.
                !overrides
                    .lines()
                    .any(|o| o.split('=').next().unwrap_or("").trim() == key && !key.is_empty())
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
    FileConfig::parse(&text, Path::new("test.toml"))
        .unwrap()
        .resolve(SecretHasher::random().unwrap(), false)
        .unwrap()
}

/// An issuer at [`ISSUER`] on a manual clock that starts at the real time (so `jsonwebtoken`, which reads the
/// system clock, agrees with it until a test moves it), with [`ADMIN_TOKEN`].
pub fn test_app(cfg: ResolvedConfig) -> (OidcApp, Clock) {
    let clock = Clock::manual(Clock::System.now_s());
    let app = refbench_oidc::app(
        cfg,
        ISSUER,
        clock.clone(),
        Some(AdminToken::new(ADMIN_TOKEN)),
    )
    .unwrap();
    (app, clock)
}

/// The embedded defaults through [`test_app`].
pub fn default_app() -> (OidcApp, Clock) {
    test_app(config_with(""))
}

/// A whole response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The OAuth `error` code, checking the error body's shape and that it is never a 5xx.
    pub fn oauth_error(&self) -> String {
        assert!(
            self.status.is_client_error(),
            "expected a 4xx, got {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert!(v["error_description"].is_string(), "{v}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {v}"))
            .to_string()
    }
}

/// Calls the app without a socket.
pub async fn call(
    app: &OidcApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    let mut req = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let r = app.handle(req).await;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

/// `POST path` with a form body and `extra` headers.
pub async fn post_form(app: &OidcApp, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let mut h = vec![("content-type", FORM)];
    h.extend_from_slice(headers);
    call(app, Method::POST, path, &h, body.as_bytes()).await
}

/// The `Authorization` value of `client_secret_basic`.
pub fn basic(id: &str, secret: &str) -> String {
    basic_header(id, secret)
}

/// A client_credentials token for `bench-client` (Basic) with `extra` form parameters; panics unless 200.
pub async fn bench_token(app: &OidcApp, extra: &str) -> String {
    client_token(app, BENCH_ID, BENCH_SECRET, extra).await
}

pub async fn client_token(app: &OidcApp, id: &str, secret: &str, extra: &str) -> String {
    let auth = basic(id, secret);
    let body = format!("grant_type=client_credentials{extra}");
    let r = post_form(app, "/token", &[("authorization", &auth)], &body).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// The served JWKS.
pub async fn jwks(app: &OidcApp) -> JwkSet {
    let r = call(app, Method::GET, "/jwks", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).unwrap()
}

pub fn kids(set: &JwkSet) -> Vec<String> {
    set.keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect()
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Verifies `token` with `jsonwebtoken` alone: the key is the JWKS entry its `kid` names, the algorithm that key's
/// `alg`, and `iss`, `aud`, `exp` are checked by `jsonwebtoken` (against the system clock).
pub fn verify_independently(token: &str, set: &JwkSet, iss: &str, aud: &str) -> TokenData<Value> {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.as_deref().expect("a kid in the header");
    let jwk = set
        .find(kid)
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let alg = jwk
        .common
        .key_algorithm
        .expect("alg in the JWK")
        .to_string();
    let mut v = Validation::new(alg.parse().unwrap());
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &v).unwrap_or_else(|e| panic!("{e}: {token}"))
}

/// Introspects `token` as `id`; the response JSON.
pub async fn introspect(app: &OidcApp, id: &str, secret: &str, token: &str) -> Value {
    let auth = basic(id, secret);
    let r = post_form(
        app,
        "/introspect",
        &[("authorization", &auth)],
        &format!("token={token}"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

/// A real issuer on 127.0.0.1:0, stopped when dropped.
pub struct Server {
    pub started: refbench_oidc::Started,
    _trigger: ShutdownTrigger,
}

pub async fn start_server(args: ServeArgs) -> Server {
    let (trigger, shutdown) = shutdown::channel();
    let plan = args.resolve().unwrap();
    let started = refbench_oidc::start(&plan, shutdown).await.unwrap();
    Server {
        started,
        _trigger: trigger,
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string());
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let r = tokio::time::timeout(PROMPT, tx.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = r.status();
    let headers = r.headers().clone();
    let body = tokio::time::timeout(PROMPT, r.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    Got {
        status,
        headers,
        body,
    }
}
