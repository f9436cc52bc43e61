//! The origin's admin listener: `/metrics` and `/healthz` (shared with every
//! server) plus the origin's control routes. They live on the admin port, not
//! under a prefix of the main port, so they keep working while the main
//! listener is refusing connections or closing them ("origin down").

use crate::query::param;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use metrics_exporter_prometheus::PrometheusHandle;
use refbench_common::http::{BodyError, Limits, read_body_limited};
use serde_json::{Value, json};

use super::app::OriginApp;
use super::body::OriginBody;
use super::config::Injection;

/// Largest control request body (an injection list), bytes.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

/// Most keys `GET /fetches?top=N` returns.
pub const MAX_TOP_KEYS: usize = 10_000;

/// Keys `GET /fetches` returns without `top`.
pub const DEFAULT_TOP_KEYS: usize = 20;

/// Limits of the admin listener: like `refbench_common::admin::admin_limits`,
/// but with room for a control body.
pub fn origin_admin_limits() -> Limits {
    Limits {
        max_body_bytes: MAX_ADMIN_BODY_BYTES,
        ..refbench_common::admin::admin_limits()
    }
}

/// The admin service: cheap to clone; usable without a socket via
/// [`OriginAdmin::route`].
#[derive(Clone)]
pub struct OriginAdmin {
    app: OriginApp,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for OriginAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginAdmin").finish_non_exhaustive()
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<OriginBody> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(OriginBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<OriginBody> {
    json_response(status, &json!({ "error": reason.to_string() }))
}

fn not_allowed(allow: &'static str) -> Response<OriginBody> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

impl OriginAdmin {
    /// An admin service for `app`, rendering metrics from `handle`.
    pub fn new(app: OriginApp, handle: PrometheusHandle) -> Self {
        OriginAdmin { app, handle }
    }

    /// Routes one admin request (the whole admin API; see the module docs of
    /// `origin` for the table).
    pub async fn route<B>(&self, req: Request<B>) -> Response<OriginBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let query = parts.uri.query();
        let m = &parts.method;
        match path {
            "/metrics" | "/healthz" => {
                let r = refbench_common::admin::route(&self.handle, m, path);
                let (p, b) = r.into_parts();
                let bytes = b.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                Response::from_parts(p, OriginBody::full(bytes))
            }
            "/fetches" => match *m {
                Method::GET => self.fetches(query),
                Method::DELETE => {
                    self.app.fetches().reset();
                    json_response(StatusCode::OK, &json!({ "reset": true }))
                }
                _ => not_allowed("GET, DELETE"),
            },
            "/version" => match *m {
                Method::GET | Method::POST => self.version(m == Method::POST, query),
                _ => not_allowed("GET, POST"),
            },
            "/inject" => match *m {
                Method::GET => json_response(StatusCode::OK, &json!(self.app.injections())),
                Method::PUT => {
                    let bytes = match read_body_limited(body, MAX_ADMIN_BODY_BYTES).await {
                        Ok(b) => b,
                        Err(e @ BodyError::TooLarge { .. }) => {
                            return error(StatusCode::PAYLOAD_TOO_LARGE, e);
                        }
                        Err(e @ BodyError::Read(_)) => return error(StatusCode::BAD_REQUEST, e),
                    };
                    self.put_injections(&bytes)
                }
                Method::DELETE => match self.app.set_injections(Vec::new()) {
                    Ok(()) => json_response(StatusCode::OK, &json!([])),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                },
                _ => not_allowed("GET, PUT, DELETE"),
            },
            "/listener" => match *m {
                Method::GET => json_response(
                    StatusCode::OK,
                    &json!({ "listening": self.app.is_listening() }),
                ),
                Method::POST => match param(query, "state").as_ref().map(|s| s.as_deref()) {
                    Ok(Some("up")) => {
                        self.app.set_listening(true);
                        json_response(StatusCode::OK, &json!({ "listening": true }))
                    }
                    Ok(Some("down")) => {
                        self.app.set_listening(false);
                        json_response(StatusCode::OK, &json!({ "listening": false }))
                    }
                    _ => error(StatusCode::BAD_REQUEST, "state: must be up or down"),
                },
                _ => not_allowed("GET, POST"),
            },
            "/config" => match *m {
                Method::GET => json_response(StatusCode::OK, &json!(self.app.config().config())),
                _ => not_allowed("GET"),
            },
            _ => error(
                StatusCode::NOT_FOUND,
                "not found: the origin admin serves /metrics, /healthz, /fetches, /version, \
                 /inject, /listener, /config",
            ),
        }
    }

    fn fetches(&self, query: Option<&str>) -> Response<OriginBody> {
        let f = self.app.fetches();
        let key = match param(query, "key") {
            Ok(k) => k,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if let Some(key) = key {
            let c = f.get(&key);
            return json_response(
                StatusCode::OK,
                &json!({ "key": key, "fetches": c.fetches, "ok": c.ok,
                         "not_modified": c.not_modified, "failed": c.failed }),
            );
        }
        let target = match param(query, "path") {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if let Some(target) = target {
            let c = f.for_target(&target);
            return json_response(
                StatusCode::OK,
                &json!({ "path": target, "fetches": c.fetches, "ok": c.ok,
                         "not_modified": c.not_modified, "failed": c.failed }),
            );
        }
        let top = match param(query, "top") {
            Ok(None) => DEFAULT_TOP_KEYS,
            Ok(Some(n)) => match n.parse::<usize>() {
                Ok(n) if n <= MAX_TOP_KEYS => n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("top: must be a count up to {MAX_TOP_KEYS}, got {n:?}"),
                    );
                }
            },
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let list: Vec<Value> = f
            .top(top)
            .into_iter()
            .map(|(k, c)| {
                json!({ "key": k, "fetches": c.fetches, "ok": c.ok,
                        "not_modified": c.not_modified, "failed": c.failed })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({ "total": f.total(), "tracked_keys": f.tracked_keys(),
                     "overflow": f.overflow(), "top": list }),
        )
    }

    fn version(&self, bump: bool, query: Option<&str>) -> Response<OriginBody> {
        let (key, prefix) = match (param(query, "key"), param(query, "prefix")) {
            (Ok(k), Ok(p)) => (k, p),
            (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        };
        match (key, prefix, bump) {
            (Some(key), None, false) => json_response(
                StatusCode::OK,
                &json!({ "key": key, "version": self.app.version(&key) }),
            ),
            (Some(key), None, true) => match self.app.bump_version(&key) {
                Ok(v) => json_response(StatusCode::OK, &json!({ "key": key, "version": v })),
                Err(e) => error(StatusCode::INSUFFICIENT_STORAGE, e),
            },
            (None, Some(prefix), true) => match self.app.bump_prefix(&prefix) {
                Ok(n) => json_response(StatusCode::OK, &json!({ "prefix": prefix, "bumps": n })),
                Err(e @ super::OriginError::Full { .. }) => {
                    error(StatusCode::INSUFFICIENT_STORAGE, e)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            },
            _ => error(
                StatusCode::BAD_REQUEST,
                "give key=<path and query> (GET or POST), or prefix=<path prefix> (POST)",
            ),
        }
    }

    fn put_injections(&self, bytes: &[u8]) -> Response<OriginBody> {
        // One object or a list; either replaces the whole set.
        let parsed: Result<Vec<Injection>, _> = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(_)) => serde_json::from_slice(bytes),
            Ok(_) => serde_json::from_slice::<Injection>(bytes).map(|i| vec![i]),
            Err(e) => Err(e),
        };
        match parsed {
            Err(e) => error(StatusCode::BAD_REQUEST, format!("injections: {e}")),
            Ok(list) => match self.app.set_injections(list) {
                Ok(()) => json_response(StatusCode::OK, &json!(self.app.injections())),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            },
        }
    }
}

/// The response future of [`OriginAdmin`]'s [`Service`] impl.
pub type AdminFuture =
    Pin<Box<dyn Future<Output = Result<Response<OriginBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for OriginAdmin {
    type Response = Response<OriginBody>;
    type Error = Infallible;
    type Future = AdminFuture;

    fn call(&self, req: Request<Incoming>) -> AdminFuture {
        let admin = self.clone();
        Box::pin(async move { Ok(admin.route(req).await) })
    }
}

/// Runs the exporter's upkeep (histogram rotation) every
/// `refbench_common::admin::UPKEEP_INTERVAL` until `shutdown`, as
/// `serve_admin` does for the other servers.
pub(crate) async fn upkeep(
    handle: PrometheusHandle,
    mut shutdown: refbench_common::shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(
        refbench_common::admin::UPKEEP_INTERVAL.max(Duration::from_millis(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::percent_decode;

    #[test]
    fn decoding() {
        assert_eq!(
            percent_decode("/a%20b%3Fc=d+e").as_deref(),
            Some("/a b?c=d+e")
        );
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(
            param(Some("x=1&key=%2Fa"), "key"),
            Ok(Some("/a".to_string()))
        );
        assert_eq!(param(Some("x=1"), "key"), Ok(None));
        assert!(param(Some("key=%zz"), "key").is_err());
    }
}
