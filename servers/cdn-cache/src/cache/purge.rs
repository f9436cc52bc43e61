//! The tier's admin listener: `/metrics` and `/healthz` (shared with every server), purges, and stats.
//!
//! | route | what |
//! |-------|------|
//! | `POST /purge?path=P[&host=H]` | remove the object at path-and-query `P` (all its variants) |
//! | `POST /purge?prefix=P[&host=H]` | remove every object whose path starts with `P` |
//! | `POST /purge?all=1` | empty the memory tier |
//! | `GET /stats` | `{"role","objects","used_bytes","capacity_bytes","inflight"}` |
//!
//! Without `host`, a purge covers every host. Values are percent-decoded (`%3F` for a `?` inside `path`). A purge
//! answers `{"purged": keys, "cancelled": fetches}` only after the objects are gone and the fetches in flight for
//! them are unregistered and barred from storing, so once it returns this tier never serves the old object. A
//! parent purging a whole deployment calls it on every tier (shields first, then edges, so an edge cannot refill
//! from a shield that still holds the old object).

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use metrics_exporter_prometheus::PrometheusHandle;
use refbench_common::http::Limits;
use serde_json::{Value, json};

use super::app::CacheApp;
use super::store::PurgeRule;

/// Limits of the admin listener: the shared admin limits (purges carry no body).
pub fn cache_admin_limits() -> Limits {
    refbench_common::admin::admin_limits()
}

/// The admin service: cheap to clone; usable without a socket via [`CacheAdmin::route`].
#[derive(Clone)]
pub struct CacheAdmin {
    app: CacheApp,
    handle: Option<PrometheusHandle>,
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

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn param(query: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let Some(q) = query else { return Ok(None) };
    for kv in q.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == name {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| format!("{name}: bad percent-encoding"));
        }
    }
    Ok(None)
}

impl CacheAdmin {
    /// An admin service for `app`, rendering metrics from `handle` (`None`: `/metrics` answers 404).
    pub fn new(app: CacheApp, handle: Option<PrometheusHandle>) -> Self {
        CacheAdmin { app, handle }
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
        let get = |name| param(query, name);
        let (path, prefix, host, all) = match (get("path"), get("prefix"), get("host"), get("all"))
        {
            (Ok(p), Ok(x), Ok(h), Ok(a)) => (p, x, h, a),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                return error(StatusCode::BAD_REQUEST, e);
            }
        };
        if all.is_some() {
            let n = self.app.purge_all();
            return json_response(StatusCode::OK, &json!({ "purged": n, "all": true }));
        }
        let (path, is_prefix) = match (path, prefix) {
            (Some(p), None) => (p, false),
            (None, Some(p)) => (p, true),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "give exactly one of path=, prefix= (or all=1)",
                );
            }
        };
        if !path.starts_with('/') {
            return error(
                StatusCode::BAD_REQUEST,
                format!("path must start with '/', got {path:?}"),
            );
        }
        let rule = PurgeRule {
            host: host.map(|h| h.to_ascii_lowercase()),
            path,
            prefix: is_prefix,
        };
        let (purged, cancelled) = self.app.purge(rule);
        json_response(
            StatusCode::OK,
            &json!({ "purged": purged, "cancelled": cancelled }),
        )
    }
}

impl Service<Request<Incoming>> for CacheAdmin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.route(&req)))
    }
}
