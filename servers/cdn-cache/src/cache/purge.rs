//! The tier's admin listener: `/metrics` and `/healthz` (shared with every server), purges, and stats.
//!
//! | route | what |
//! |-------|------|
//! | `POST /purge?path=P[&host=H]` | remove the object at path-and-query `P` (all its variants) |
//! | `POST /purge?prefix=P[&host=H]` | remove every object whose path starts with `P` |
//! | `POST /purge?all=1` | empty the memory tier |
//! | `GET /stats` | `{"role","name","objects","used_bytes","capacity_bytes","inflight","prefetch"}` |
//!
//! `prefetch` is `{"segments","prefixes","max_inflight","inflight"}` (the settings, prefetches running now), one
//! count per outcome (`issued`, `stored`, `not_stored`, `used`, `evicted_unused`, `skipped_cached`,
//! `skipped_inflight`, `dropped_full`, `failed`, `cancelled`: the same as `cdn_cache_prefetch_total{outcome}`, but for
//! this tier alone) and `precision` = used / (used + evicted_unused), `null` while both are 0.
//!
//! Without `host`, a purge covers every host. Values are percent-decoded (`%3F` for a `?` inside `path`). A purge
//! answers `{"purged": keys, "cancelled": fetches}` only after the objects are gone and the fetches in flight for
//! them are unregistered and barred from storing, so once it returns this tier never serves the old object. With a
//! disk tier, the purge removes from it too, before answering.
//!
//! # Propagation
//! A tier given its upstreams' admin URLs (`--upstream-admin`, typically an edge and its shields) first sends the
//! same `POST /purge?...` to every one of them (concurrently, each bounded by connect + upstream timeouts), then
//! purges locally, whatever they answered: shields first, so this tier cannot refill from a shield that still holds
//! the old object. It answers 200 (`"upstreams": N` acknowledged) only when every upstream acknowledged with a 2xx,
//! so then no tier serves the old object; otherwise 502 with an `error` naming each upstream that did not (the local
//! purge still happened, and repeating the purge is safe).

use crate::query::param;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use refbench_common::http::Limits;
use serde_json::{Value, json};

use super::app::CacheApp;
use super::store::PurgeRule;

/// Limits of the admin listener: the shared admin limits (purges carry no body).
pub fn cache_admin_limits() -> Limits {
    refbench_common::admin::admin_limits()
}

/// Most bytes of an upstream's purge answer kept for the error message.
const MAX_UPSTREAM_ANSWER_BYTES: usize = 1024;

/// The upstream admin endpoints purges are sent to, and the client that reaches them.
#[derive(Clone)]
struct Upward {
    client: Client<HttpConnector, Empty<Bytes>>,
    admins: Vec<Uri>,
    /// Bound on each upstream's whole answer (connect, head, body).
    timeout: Duration,
}

/// The admin service: cheap to clone; usable without a socket via [`CacheAdmin::route`] (local purges only) or
/// [`CacheAdmin::handle`] (with propagation).
#[derive(Clone)]
pub struct CacheAdmin {
    app: CacheApp,
    handle: Option<PrometheusHandle>,
    upward: Option<Upward>,
}

/// A validated purge request.
enum PurgeReq {
    All,
    Rule(PurgeRule),
}

impl std::fmt::Debug for CacheAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheAdmin").finish_non_exhaustive()
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": reason.to_string() }))
}

impl CacheAdmin {
    /// An admin service for `app`, rendering metrics from `handle` (`None`: `/metrics` answers 404).
    pub fn new(app: CacheApp, handle: Option<PrometheusHandle>) -> Self {
        let cfg = app.config();
        let upward = (!cfg.upstream_admins.is_empty()).then(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(cfg.connect_timeout));
            // Purges are rare: no pooled connections to keep alive.
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector);
            Upward {
                client,
                admins: cfg.upstream_admins.clone(),
                timeout: cfg.connect_timeout + cfg.upstream_timeout,
            }
        });
        CacheAdmin {
            app,
            handle,
            upward,
        }
    }

    /// Routes one admin request like [`CacheAdmin::route`], but a purge is first propagated to the upstream admin
    /// endpoints, if configured (see the module docs).
    pub async fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let Some(upward) = &self.upward else {
            return self.route(req);
        };
        if req.uri().path() != "/purge" || req.method() != Method::POST {
            return self.route(req);
        }
        let query = req.uri().query();
        let parsed = match parse_purge(query) {
            Ok(p) => p,
            Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
        };
        let failures = upward.purge(query.unwrap_or("")).await;
        let mut body = self.apply(parsed);
        body["upstreams"] = json!(upward.admins.len() - failures.len());
        if failures.is_empty() {
            json_response(StatusCode::OK, &body)
        } else {
            body["error"] = json!(format!(
                "purged here, but not acknowledged by: {}",
                failures.join("; ")
            ));
            json_response(StatusCode::BAD_GATEWAY, &body)
        }
    }

    /// Routes one admin request (see the module docs for the table).
    pub fn route<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let query = req.uri().query();
        let m = req.method();
        match path {
            "/metrics" | "/healthz" => match &self.handle {
                Some(h) => refbench_common::admin::route(h, m, path),
                None if path == "/healthz" => Response::new(Full::new(Bytes::from_static(b"ok"))),
                None => error(StatusCode::NOT_FOUND, "no metrics recorder installed"),
            },
            "/purge" => {
                if m != Method::POST {
                    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                    r.headers_mut()
                        .insert(ALLOW, HeaderValue::from_static("POST"));
                    return r;
                }
                self.purge(query)
            }
            "/stats" => {
                let store = self.app.store();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "role": self.app.config().role.name(),
                        "name": self.app.config().name,
                        "objects": store.len(),
                        "used_bytes": store.used_bytes(),
                        "capacity_bytes": store.capacity_bytes(),
                        "inflight": self.app.inflight(),
                        "prefetch": self.app.prefetch_stats(),
                    }),
                )
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not found: the cache admin serves /metrics, /healthz, /purge, /stats",
            ),
        }
    }

    fn purge(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        match parse_purge(query) {
            Ok(p) => json_response(StatusCode::OK, &self.apply(p)),
            Err(reason) => error(StatusCode::BAD_REQUEST, reason),
        }
    }

    /// Purges locally; the answer's JSON.
    fn apply(&self, p: PurgeReq) -> Value {
        match p {
            PurgeReq::All => json!({ "purged": self.app.purge_all(), "all": true }),
            PurgeReq::Rule(rule) => {
                let (purged, cancelled) = self.app.purge(rule);
                json!({ "purged": purged, "cancelled": cancelled })
            }
        }
    }
}

impl Upward {
    /// Sends `POST /purge?{query}` to every upstream admin at once; returns one message per upstream that did not
    /// answer 2xx in time, naming it.
    async fn purge(&self, query: &str) -> Vec<String> {
        let mut set = tokio::task::JoinSet::new();
        for (i, admin) in self.admins.iter().enumerate() {
            let client = self.client.clone();
            let timeout = self.timeout;
            let authority = admin
                .authority()
                .map_or_else(String::new, |a| a.to_string());
            let target = format!("http://{authority}/purge?{query}");
            set.spawn(async move {
                let outcome = tokio::time::timeout(timeout, purge_one(&client, &target)).await;
                let failure = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(format!("upstream admin http://{authority}: {reason}")),
                    Err(_) => Some(format!(
                        "upstream admin http://{authority}: no answer within {} ms",
                        timeout.as_millis()
                    )),
                };
                (i, failure)
            });
        }
        let mut failures: Vec<(usize, String)> = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Some(f))) => failures.push((i, f)),
                Ok((_, None)) => {}
                Err(e) => failures.push((usize::MAX, format!("purge task failed: {e}"))),
            }
        }
        // In `--upstream-admin` order, so the message is stable.
        failures.sort();
        failures.into_iter().map(|(_, f)| f).collect()
    }
}

/// One upstream purge: `Ok` on a 2xx, else why not.
async fn purge_one(
    client: &Client<HttpConnector, Empty<Bytes>>,
    target: &str,
) -> Result<(), String> {
    let uri: Uri = target
        .parse()
        .map_err(|e| format!("bad purge URL {target:?}: {e}"))?;
    let mut req = Request::new(Empty::new());
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let resp = client.request(req).await.map_err(|e| {
        // hyper-util's error says "client error (Connect)"; the source says why.
        match std::error::Error::source(&e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = Limited::new(resp.into_body(), MAX_UPSTREAM_ANSWER_BYTES)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    Err(format!("answered {status}: {body}"))
}

/// Validates a purge's query; the error is the reason of the 400 to answer.
fn parse_purge(query: Option<&str>) -> Result<PurgeReq, String> {
    let get = |name| param(query, name);
    let (path, prefix, host, all) = match (get("path"), get("prefix"), get("host"), get("all")) {
        (Ok(p), Ok(x), Ok(h), Ok(a)) => (p, x, h, a),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return Err(e);
        }
    };
    if all.is_some() {
        return Ok(PurgeReq::All);
    }
    let (path, is_prefix) = match (path, prefix) {
        (Some(p), None) => (p, false),
        (None, Some(p)) => (p, true),
        _ => {
            return Err("give exactly one of path=, prefix= (or all=1)".into());
        }
    };
    if !path.starts_with('/') {
        return Err(format!("path must start with '/', got {path:?}"));
    }
    let rule = PurgeRule {
        host: host.map(|h| h.to_ascii_lowercase()),
        path,
        prefix: is_prefix,
    };
    Ok(PurgeReq::Rule(rule))
}

impl Service<Request<Incoming>> for CacheAdmin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let admin = self.clone();
        // Purges carry no body; keeping only the head makes the future `Send` whatever the body type is.
        let (parts, _body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        Box::pin(async move { Ok(admin.handle(&req).await) })
    }
}
