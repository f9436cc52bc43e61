//! The origin's request handler: objects, validators, conditionals,
//! injections and fetch counting.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, EXPIRES, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use tokio::sync::{Semaphore, watch};

use super::body::{Hang, HangState, OriginBody};
use super::config::{EtagMode, Injection, ResolvedOrigin, ResolvedRule, validate_injections};
use super::error::{ConnectionClosed, OriginError};
use super::object::{self, EntityTag, EtagCondition, hash_parts, mix64, unit};
use super::state::{FetchCounts, Outcome, Versions};

/// Response header naming the fetch-count key of the response.
pub const X_ORIGIN_KEY: HeaderName = HeaderName::from_static("x-origin-key");
/// Response header carrying the object's version.
pub const X_ORIGIN_VERSION: HeaderName = HeaderName::from_static("x-origin-version");

/// Statuses whose Prometheus counters are resolved once (others are resolved
/// per response, which allocates a label).
const KNOWN_STATUSES: [u16; 12] = [200, 304, 400, 404, 405, 412, 500, 502, 503, 504, 505, 599];

/// A request the origin refuses before serving, with the status and the
/// reason sent in the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct Rejection {
    /// 4xx status.
    pub status: StatusCode,
    /// Human-readable reason (the response body).
    pub reason: String,
}

fn reject(status: StatusCode, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

/// Everything the origin would send for one (target, variant, version):
/// recompute it in tests to check a cache byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Path and query as requested (the object's identity).
    pub target: String,
    /// The fetch-count key: the target, plus ` name=value` per `Vary` header.
    pub key: String,
    /// The version the body was generated for.
    pub version: u64,
    /// Body length, bytes.
    pub size_bytes: u64,
    /// Seed of the body stream (see [`object::fill_body`]).
    pub body_seed: u64,
    /// The `ETag` value sent (with quotes and `W/` if weak), if the rule sends one.
    pub etag: Option<String>,
    /// `Last-Modified`, seconds since the Unix epoch, if the rule sends it.
    pub last_modified_unix_s: Option<u64>,
    /// Index of the rule that matched.
    pub rule_index: usize,
}

impl Object {
    /// The whole body (built in memory: for tests).
    pub fn body(&self) -> Bytes {
        object::body_bytes(self.body_seed, self.size_bytes)
    }
}

/// The key fetches of `target` are counted under for the variant values
/// `variant` (`(lowercase header name, normalised value)`, in the rule's
/// `vary` order); with no `Vary`, just the target.
pub fn fetch_key(target: &str, variant: &[(&str, &str)]) -> String {
    let mut key = String::from(target);
    for (name, value) in variant {
        key.push(' ');
        key.push_str(name);
        key.push('=');
        key.push_str(value);
    }
    key
}

/// A variant value as the origin sees it: all field lines joined with ", ",
/// trimmed, lowercased; absent is "".
fn variant_value(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    out.trim().to_ascii_lowercase()
}

/// The value of query parameter `name` (raw, not percent-decoded: sizes are digits).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Describes what the origin serves for `target` (path and optional query)
/// with request headers `headers` at `version`, or why it refuses.
pub fn describe_object(
    cfg: &ResolvedOrigin,
    target: &str,
    headers: &HeaderMap,
    version: u64,
) -> Result<Object, Rejection> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!("the target must be an absolute path, got {target:?}"),
        ));
    }
    let (rule_index, rule) = cfg
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| path.starts_with(r.prefix.as_str()))
        .ok_or_else(|| reject(StatusCode::NOT_FOUND, format!("no rule matches {path:?}")))?;
    if let Some(n) = rule.segments {
        check_segment(&path[rule.prefix.len()..], n).map_err(|why| {
            reject(
                StatusCode::NOT_FOUND,
                format!(
                    "{path:?}: segments under {} are {{id}}/seg-{{0..{n}}}.ts: {why}",
                    rule.prefix
                ),
            )
        })?;
    }
    let max = cfg.config.max_object_size_bytes;
    let size_bytes = match query_param(query, "size").filter(|_| cfg.config.allow_size_query) {
        Some(s) => {
            let n: u64 = s.parse().map_err(|_| {
                reject(
                    StatusCode::BAD_REQUEST,
                    format!("size: not a byte count: {s:?}"),
                )
            })?;
            if n > max {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    format!("size: {n} is above max_object_size_bytes ({max})"),
                ));
            }
            n
        }
        None => rule
            .size
            .as_ref()
            .unwrap_or(&cfg.size)
            .sample(hash_parts(cfg.config.seed, &[b"size", target.as_bytes()])),
    };
    let variant: Vec<(&str, String)> = rule
        .vary
        .iter()
        .map(|n| (n.as_str(), variant_value(headers, n)))
        .collect();
    let variant_refs: Vec<(&str, &str)> = variant.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let key = fetch_key(target, &variant_refs);
    let body_seed = hash_parts(
        cfg.config.seed,
        &[
            b"body",
            target.as_bytes(),
            &key.as_bytes()[target.len()..],
            &version.to_le_bytes(),
        ],
    );
    let opaque = mix64(body_seed ^ size_bytes.rotate_left(17));
    let etag = match rule.etag {
        EtagMode::None => None,
        EtagMode::Strong => Some(format!("\"{opaque:016x}\"")),
        EtagMode::Weak => Some(format!("W/\"{opaque:016x}\"")),
    };
    Ok(Object {
        target: target.to_string(),
        key,
        version,
        size_bytes,
        body_seed,
        etag,
        last_modified_unix_s: rule
            .last_modified
            .then(|| cfg.config.last_modified_base_unix_s + version),
        rule_index,
    })
}

/// The body the origin sends for `target` with `headers` at `version`
/// (empty if it would refuse the request).
pub fn expected_body(
    cfg: &ResolvedOrigin,
    target: &str,
    headers: &HeaderMap,
    version: u64,
) -> Bytes {
    describe_object(cfg, target, headers, version).map_or_else(|_| Bytes::new(), |o| o.body())
}

fn check_segment(rest: &str, segments: u32) -> Result<(), &'static str> {
    let (id, file) = rest.split_once('/').ok_or("no segment file")?;
    if id.is_empty() || file.contains('/') {
        return Err("malformed id");
    }
    let n = file
        .strip_prefix("seg-")
        .and_then(|f| f.strip_suffix(".ts"))
        .ok_or("not a seg-{n}.ts file")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 10 {
        return Err("bad segment number");
    }
    match n.parse::<u64>() {
        Ok(k) if k < u64::from(segments) => Ok(()),
        _ => Err("past the last segment"),
    }
}

#[derive(Debug)]
struct Metrics {
    bytes_total: metrics::Counter,
    by_status: Vec<(u16, metrics::Counter)>,
    closed: metrics::Counter,
    injected_failures: metrics::Counter,
    injected_latency: metrics::Counter,
    hangs_active: metrics::Gauge,
    hangs_over_cap: metrics::Counter,
    fetch_keys_overflow: metrics::Counter,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            bytes_total: metrics::counter!("cdn_origin_bytes_total"),
            by_status: KNOWN_STATUSES
                .iter()
                .map(|s| {
                    (
                        *s,
                        metrics::counter!("cdn_origin_requests_total", "status" => s.to_string()),
                    )
                })
                .collect(),
            closed: metrics::counter!("cdn_origin_requests_total", "status" => "closed"),
            injected_failures: metrics::counter!("cdn_origin_injected_failures_total"),
            injected_latency: metrics::counter!("cdn_origin_injected_latency_total"),
            hangs_active: metrics::gauge!("cdn_origin_hangs_active"),
            hangs_over_cap: metrics::counter!("cdn_origin_hangs_over_cap_total"),
            fetch_keys_overflow: metrics::counter!("cdn_origin_fetch_keys_overflow_total"),
        }
    }

    fn status(&self, s: StatusCode) {
        let code = s.as_u16();
        match self.by_status.iter().find(|(c, _)| *c == code) {
            Some((_, c)) => c.increment(1),
            None => {
                metrics::counter!("cdn_origin_requests_total", "status" => code.to_string())
                    .increment(1);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    cfg: ResolvedOrigin,
    fetches: FetchCounts,
    versions: Versions,
    /// Replaced whole on every switch; requests clone the `Arc` and never
    /// hold the lock while they wait.
    injections: RwLock<Arc<Vec<Injection>>>,
    /// Request index for the seeded latency and failure draws.
    next_k: AtomicU64,
    hangs: Arc<Semaphore>,
    /// Whether the main listener should accept (see [`OriginApp::set_listening`]).
    listening: watch::Sender<bool>,
    metrics: Metrics,
}

/// The origin handler; cheap to clone (one `Arc`). Implements hyper's
/// [`Service`] for `refbench_common::http::serve_http`; [`OriginApp::handle`]
/// drives it without a socket.
#[derive(Debug, Clone)]
pub struct OriginApp {
    inner: Arc<Inner>,
}

/// Builds the handler. Metric handles are resolved here: install the
/// recorder first (`refbench_common::admin::metrics_handle`) or they are no-ops.
pub fn app(cfg: ResolvedOrigin) -> OriginApp {
    let injections = Arc::new(cfg.config.injections.clone());
    OriginApp {
        inner: Arc::new(Inner {
            fetches: FetchCounts::new(cfg.config.max_tracked_keys),
            versions: Versions::new(cfg.config.max_versioned_keys),
            injections: RwLock::new(injections),
            next_k: AtomicU64::new(0),
            hangs: Arc::new(Semaphore::new(cfg.config.max_hangs)),
            listening: watch::Sender::new(true),
            metrics: Metrics::new(),
            cfg,
        }),
    }
}

fn text(status: StatusCode, reason: impl Into<String>) -> Response<OriginBody> {
    let mut body = reason.into();
    body.push('\n');
    let mut r = Response::new(OriginBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl OriginApp {
    /// The configuration served.
    pub fn config(&self) -> &ResolvedOrigin {
        &self.inner.cfg
    }

    /// Fetch counts per key.
    pub fn fetches(&self) -> &FetchCounts {
        &self.inner.fetches
    }

    /// The current version of the object at `target`.
    pub fn version(&self, target: &str) -> u64 {
        self.inner.versions.get(target)
    }

    /// Bumps one object's version (new body, ETag, Last-Modified); returns it.
    pub fn bump_version(&self, target: &str) -> Result<u64, OriginError> {
        self.inner.versions.bump(target)
    }

    /// Bumps every object under `prefix`; returns the prefix's bump count.
    pub fn bump_prefix(&self, prefix: &str) -> Result<u64, OriginError> {
        if !prefix.starts_with('/') {
            return Err(OriginError::invalid(
                "prefix",
                format!("must start with '/', got {prefix:?}"),
            ));
        }
        self.inner.versions.bump_prefix(prefix)
    }

    /// What a request for `target` with `headers` gets now.
    pub fn describe(&self, target: &str, headers: &HeaderMap) -> Result<Object, Rejection> {
        describe_object(&self.inner.cfg, target, headers, self.version(target))
    }

    /// Responses stalled at their hang point right now (each holds one of
    /// `max_hangs` slots until it resumes or its client or the drain drops it).
    pub fn hangs_active(&self) -> usize {
        self.inner.cfg.config.max_hangs - self.inner.hangs.available_permits()
    }

    /// The active injections.
    pub fn injections(&self) -> Vec<Injection> {
        let guard = self
            .inner
            .injections
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().clone()
    }

    /// Replaces the active injections (validated first; on error nothing changes).
    pub fn set_injections(&self, list: Vec<Injection>) -> Result<(), OriginError> {
        validate_injections(&list, "injections")?;
        *self
            .inner
            .injections
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
        Ok(())
    }

    /// Starts (true) or stops (false) the main listener: stopped, the port is
    /// closed and connections are refused, as with a dead origin host. Only
    /// has an effect on a server run by `origin::start`.
    pub fn set_listening(&self, on: bool) {
        self.inner.listening.send_replace(on);
    }

    /// Whether the main listener is meant to be accepting.
    pub fn is_listening(&self) -> bool {
        *self.inner.listening.borrow()
    }

    pub(crate) fn listening_watch(&self) -> watch::Receiver<bool> {
        self.inner.listening.subscribe()
    }

    fn injection_for(&self, path: &str) -> Option<Injection> {
        let list = Arc::clone(
            &self
                .inner
                .injections
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        list.iter().find(|i| i.applies_to(path)).cloned()
    }

    fn respond(&self, r: Response<OriginBody>) -> Response<OriginBody> {
        self.inner.metrics.status(r.status());
        r
    }

    /// Handles one request. `Err` means "close the connection without a
    /// response" (the `close_connection` injection).
    ///
    /// Order: method (405), request body (400), target and rule (400/404),
    /// then the fetch is counted, then injected latency, close, failure, then
    /// the conditionals (412/304), then the object (200, maybe hanging).
    pub async fn handle<B: Body>(
        &self,
        req: Request<B>,
    ) -> Result<Response<OriginBody>, ConnectionClosed> {
        let inner = &*self.inner;
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed: the origin serves GET and HEAD"),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(self.respond(r));
        }
        if !req.body().is_end_stream() {
            // Not read: hyper closes an HTTP/1 connection with an unread body.
            return Ok(self.respond(text(
                StatusCode::BAD_REQUEST,
                "request bodies are not accepted by the origin",
            )));
        }
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |pq| pq.as_str())
            .to_string();
        let version = inner.versions.get(&target);
        let obj = match describe_object(&inner.cfg, &target, req.headers(), version) {
            Ok(o) => o,
            Err(rej) => return Ok(self.respond(text(rej.status, rej.reason))),
        };
        let tracked = inner.fetches.arrive(&obj.key);
        if !tracked {
            inner.metrics.fetch_keys_overflow.increment(1);
        }
        let finish = |status: Option<StatusCode>| {
            if tracked {
                let outcome = match status {
                    None => Outcome::Failed,
                    Some(s) if s == StatusCode::NOT_MODIFIED => Outcome::NotModified,
                    Some(s) if s.is_success() => Outcome::Ok,
                    Some(s) if s.is_server_error() => Outcome::Failed,
                    Some(_) => Outcome::Other,
                };
                inner.fetches.finish(&obj.key, outcome);
            }
        };

        let path = req.uri().path();
        let inj = self.injection_for(path);
        let k = inner.next_k.fetch_add(1, Ordering::Relaxed);
        let seed = inner.cfg.config.seed;
        if let Some(inj) = &inj {
            let jitter = if inj.latency_jitter_ms > 0 {
                mix64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1a7e)
                    % (inj.latency_jitter_ms + 1)
            } else {
                0
            };
            let ms = inj.latency_fixed_ms + jitter;
            if ms > 0 {
                inner.metrics.injected_latency.increment(1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if inj.close_connection {
                finish(None);
                inner.metrics.closed.increment(1);
                return Err(ConnectionClosed);
            }
            if inj.fail_share > 0.0
                && unit(mix64(seed ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0xfa11))
                    < inj.fail_share
            {
                let status = StatusCode::from_u16(inj.fail_status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                finish(Some(status));
                inner.metrics.injected_failures.increment(1);
                return Ok(self.respond(text(status, format!("injected failure ({status})"))));
            }
        }

        let rule = &inner.cfg.rules[obj.rule_index];
        let status = conditional_status(req.headers(), rule, &obj);
        finish(Some(status));
        let mut headers = HeaderMap::new();
        self.representation_headers(&mut headers, rule, &obj);
        if status != StatusCode::OK {
            let mut r = if status == StatusCode::NOT_MODIFIED {
                Response::new(OriginBody::empty())
            } else {
                text(
                    status,
                    "precondition failed: If-Match does not match the current ETag",
                )
            };
            *r.status_mut() = status;
            for (n, v) in &headers {
                r.headers_mut().insert(n.clone(), v.clone());
            }
            return Ok(self.respond(r));
        }
        let body = if method == Method::HEAD {
            OriginBody::empty()
        } else {
            let hang = inj
                .as_ref()
                .and_then(|i| i.hang_after_bytes.map(|at| (at, i.hang_ms)))
                .filter(|(at, _)| *at < obj.size_bytes)
                .map(|(at_bytes, hang_ms)| {
                    let permit = Arc::clone(&inner.hangs).try_acquire_owned().ok();
                    if permit.is_none() {
                        inner.metrics.hangs_over_cap.increment(1);
                    }
                    Hang {
                        at_bytes,
                        state: HangState::Armed {
                            duration: hang_ms.map(Duration::from_millis),
                            permit,
                            active: inner.metrics.hangs_active.clone(),
                        },
                    }
                });
            OriginBody::object(
                obj.body_seed,
                obj.size_bytes,
                inner.cfg.config.chunk_bytes,
                hang,
                inner.metrics.bytes_total.clone(),
            )
        };
        let mut r = Response::new(body);
        *r.headers_mut() = headers;
        r.headers_mut()
            .insert(CONTENT_TYPE, rule.content_type.clone());
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(obj.size_bytes));
        Ok(self.respond(r))
    }

    /// Cache-Control, ETag, Last-Modified, Vary, Expires and the debug headers:
    /// sent on 200 and (so caches can refresh what they store) on 304.
    fn representation_headers(&self, h: &mut HeaderMap, rule: &ResolvedRule, obj: &Object) {
        if let Some(cc) = &rule.cache_control {
            h.insert(CACHE_CONTROL, cc.clone());
        }
        if let Some(tag) = obj
            .etag
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.insert(ETAG, tag);
        }
        if let Some(lm) = obj.last_modified_unix_s {
            if let Ok(v) = HeaderValue::from_str(&object::fmt_http_date(lm)) {
                h.insert(LAST_MODIFIED, v);
            }
        }
        if let Some(v) = &rule.vary_value {
            h.insert(VARY, v.clone());
        }
        if let Some(s) = rule.expires_in_s {
            let at = now_unix_s().saturating_add_signed(s);
            if let Ok(v) = HeaderValue::from_str(&object::fmt_http_date(at)) {
                h.insert(EXPIRES, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&obj.key) {
            h.insert(X_ORIGIN_KEY, v);
        }
        h.insert(X_ORIGIN_VERSION, HeaderValue::from(obj.version));
    }
}

/// RFC 9110 §13.2.2 for GET/HEAD: If-Match (strong comparison) → 412 on a
/// mismatch; then If-None-Match (weak comparison) → 304 on a match; only
/// without If-None-Match, If-Modified-Since → 304 when not modified since.
/// Unparsable fields are ignored (a full 200 is always safe).
fn conditional_status(h: &HeaderMap, rule: &ResolvedRule, obj: &Object) -> StatusCode {
    let current = obj.etag.as_deref().and_then(EntityTag::parse);
    let values = |name| h.get_all(name).iter().filter_map(|v| v.to_str().ok());
    if h.contains_key(IF_MATCH)
        && let Some(cond) = EtagCondition::parse(values(IF_MATCH))
        && !cond.matches(current.as_ref(), true)
    {
        return StatusCode::PRECONDITION_FAILED;
    }
    if h.contains_key(IF_NONE_MATCH) {
        return match EtagCondition::parse(values(IF_NONE_MATCH)) {
            Some(cond) if cond.matches(current.as_ref(), false) => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        };
    }
    if rule.last_modified
        && let Some(lm) = obj.last_modified_unix_s
        && let Some(since) = h
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(object::parse_http_date)
        && lm <= since
    {
        return StatusCode::NOT_MODIFIED;
    }
    StatusCode::OK
}

/// The response future of [`OriginApp`]'s [`Service`] impl.
pub type OriginFuture =
    Pin<Box<dyn Future<Output = Result<Response<OriginBody>, ConnectionClosed>> + Send>>;

impl Service<Request<Incoming>> for OriginApp {
    type Response = Response<OriginBody>;
    type Error = ConnectionClosed;
    type Future = OriginFuture;

    fn call(&self, req: Request<Incoming>) -> OriginFuture {
        let app = self.clone();
        Box::pin(async move { app.handle(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::OriginConfig;

    #[test]
    fn segments() {
        assert!(check_segment("abc/seg-0.ts", 3).is_ok());
        assert!(check_segment("abc/seg-2.ts", 3).is_ok());
        assert!(check_segment("abc/seg-3.ts", 3).is_err());
        assert!(check_segment("abc/seg-x.ts", 3).is_err());
        assert!(check_segment("/seg-1.ts", 3).is_err());
        assert!(check_segment("a/b/seg-1.ts", 3).is_err());
    }

    #[test]
    fn objects_are_deterministic_and_vary() {
        let cfg = OriginConfig::default().resolve().unwrap();
        let h = HeaderMap::new();
        let a = describe_object(&cfg, "/static/a", &h, 0).unwrap();
        assert_eq!(a, describe_object(&cfg, "/static/a", &h, 0).unwrap());
        let b = describe_object(&cfg, "/static/a", &h, 1).unwrap();
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.size_bytes, b.size_bytes);
        assert_eq!(
            b.last_modified_unix_s,
            a.last_modified_unix_s.map(|t| t + 1)
        );
        let mut gz = HeaderMap::new();
        gz.insert("accept-encoding", HeaderValue::from_static(" GZIP "));
        let v1 = describe_object(&cfg, "/vary/a", &gz, 0).unwrap();
        let v2 = describe_object(&cfg, "/vary/a", &h, 0).unwrap();
        assert_eq!(v1.key, "/vary/a accept-encoding=gzip");
        assert_eq!(v2.key, "/vary/a accept-encoding=");
        assert_ne!(v1.etag, v2.etag);
        let s = describe_object(&cfg, "/x?size=5", &h, 0).unwrap();
        assert_eq!(s.size_bytes, 5);
        let e = describe_object(&cfg, "/x?size=999999999999", &h, 0).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.reason.contains("max_object_size_bytes"), "{e}");
    }
}
