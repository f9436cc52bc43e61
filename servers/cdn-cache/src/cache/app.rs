//! The tier's request handler: lookup, freshness, coalesced fetches, stale serving, pass-through and invalidation.
//!
//! GET and HEAD share stored responses (a HEAD miss fetches with GET, so the object is filled for both). Every other
//! method is forwarded upstream uncoalesced with its body, after invalidating the URI (RFC 9111 §4.4; done before
//! forwarding and whatever the outcome, which costs at worst one refetch and closes the race with a fetch in
//! flight). Requests with `Authorization` are served from storage only when the stored response allows it
//! (`public`, `s-maxage`, `must-revalidate`), otherwise forwarded uncoalesced and not stored unless the response
//! allows it (RFC 9111 §3.5; the policy decides).
//!
//! With prefetch on (`cache::prefetch`), a client GET of a segment also starts background fetches of the next
//! segments; they lead ordinary coalesced fetches ([`fetch`] with a marked `Inflight`), so clients join them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_TYPE,
    DATE, ETAG, EXPECT, EXPIRES, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::uri::Scheme;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, request,
};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use refbench_common::h1::{self, FastPath};
use refbench_common::shutdown::Shutdown;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Sleep;

use super::ResolvedTier;
use super::coalesce::{Coalescer, Head, Inflight, Joined, Msg};
use super::error::FetchError;
use super::key::{CacheKey, VaryKind, VarySpec, hash_parts, variant_hash};
use super::policy::{ReqView, decide, fresh_for_request, plain_request, refresh};
use super::prefetch::{
    Counts, Outcome, PREFETCH_HEADER, PrefetchMark, Prefetcher, candidate, parse_segment,
};
use super::status::{CACHE_STATUS, Fwd, Status};
use super::store::{Entry, PassMarker, PurgeRule, Store, Stored};
use super::upstream::{BoxError, UpstreamBody, Upstreams};
use crate::origin::parse_http_date;

/// Tries per request: a failed fetch is retried by a new leader (on the key's next upstream), a `Vary` mismatch
/// with the fetch it joined sends it round again; beyond this it gets the last error.
pub const MAX_ATTEMPTS: usize = 3;

/// `Keep-Alive` and `Proxy-Connection` are not in `http::header`.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop fields (RFC 9110 §7.6.1): never forwarded, never stored.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Request fields the cache replaces with its own when it fetches for everyone (a client's conditionals and
/// ranges concern that client's response, not the shared fetch).
const CLIENT_ONLY: [HeaderName; 7] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    RANGE,
    EXPECT,
];

#[derive(Debug)]
struct Metrics {
    hit: metrics::Counter,
    stale_while_revalidate: metrics::Counter,
    stale_if_error: metrics::Counter,
    miss: metrics::Counter,
    revalidated: metrics::Counter,
    collapsed: metrics::Counter,
    pass: metrics::Counter,
    error: metrics::Counter,
    stored: metrics::Counter,
    not_stored: metrics::Counter,
    fetch_ok: metrics::Counter,
    fetch_failed: metrics::Counter,
    bytes_served: metrics::Counter,
    bytes_fetched: metrics::Counter,
    fetch_seconds: metrics::Histogram,
}

impl Metrics {
    fn new(tier: &str) -> Self {
        let req = |outcome: &'static str| metrics::counter!("cdn_cache_requests_total", "tier" => tier.to_string(), "outcome" => outcome);
        let fetch = |result: &'static str| metrics::counter!("cdn_cache_upstream_fetches_total", "tier" => tier.to_string(), "result" => result);
        Metrics {
            hit: req("hit"),
            stale_while_revalidate: req("stale_while_revalidate"),
            stale_if_error: req("stale_if_error"),
            miss: req("miss"),
            revalidated: req("revalidated"),
            collapsed: req("collapsed"),
            pass: req("pass"),
            error: req("error"),
            stored: metrics::counter!("cdn_cache_stored_total", "tier" => tier.to_string()),
            not_stored: metrics::counter!("cdn_cache_not_stored_total", "tier" => tier.to_string()),
            fetch_ok: fetch("ok"),
            fetch_failed: fetch("failed"),
            bytes_served: metrics::counter!("cdn_cache_bytes_served_total", "tier" => tier.to_string()),
            bytes_fetched: metrics::counter!("cdn_cache_bytes_fetched_total", "tier" => tier.to_string()),
            fetch_seconds: metrics::histogram!("cdn_cache_upstream_fetch_seconds", "tier" => tier.to_string()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) cfg: ResolvedTier,
    pub(crate) store: Store,
    pub(crate) coalescer: Coalescer,
    pub(crate) prefetch: Prefetcher,
    upstreams: Upstreams,
    metrics: Metrics,
}

/// The cache tier's handler; cheap to clone (one `Arc`). Implements hyper's [`Service`] for
/// `refbench_common::http::serve_http`; [`CacheApp::handle`] drives it without a socket.
#[derive(Debug, Clone)]
pub struct CacheApp {
    pub(crate) core: Arc<Core>,
}

/// Builds the handler (and its empty memory tier). Metric handles are resolved here: install the recorder first
/// (`refbench_common::admin::metrics_handle`) or they are no-ops.
pub fn app(cfg: ResolvedTier) -> CacheApp {
    app_with_lower_tier(cfg, None)
}

/// [`app`] with a lower tier (the disk tier's seam): evicted objects are offered to it, misses consult it.
pub fn app_with_lower_tier(
    cfg: ResolvedTier,
    lower: Option<Arc<dyn super::store::LowerTier>>,
) -> CacheApp {
    let store = Store::new(cfg.memory_bytes, cfg.shards, cfg.max_object_bytes, lower)
        .unwrap_or_else(|_| {
            // Validated in `TierConfig::resolve`; a single shard is always accepted.
            Store::new(cfg.memory_bytes, 1, cfg.max_object_bytes, None).expect("one shard is valid")
        });
    let counts = Arc::new(Counts::new(&cfg.name));
    let store = store.with_prefetch_counts(Arc::clone(&counts));
    let upstreams = Upstreams::new(
        &cfg.upstreams,
        cfg.connect_timeout,
        cfg.upstream_timeout,
        cfg.max_idle_per_upstream,
    );
    CacheApp {
        core: Arc::new(Core {
            metrics: Metrics::new(&cfg.name),
            coalescer: Coalescer::new(cfg.max_inflight_keys),
            prefetch: Prefetcher::new(cfg.prefetch.clone(), counts),
            store,
            upstreams,
            cfg,
        }),
    }
}

/// The response body: a stored object, a fetch being streamed, an upstream response passed through, or a short
/// generated text.
#[derive(Debug)]
pub enum CacheBody {
    /// No body (HEAD, 304).
    Empty,
    /// One frame.
    Full(Option<Bytes>),
    /// A stored object's frames.
    Stored {
        /// The object.
        entry: Arc<Entry>,
        /// The next frame to send.
        next: usize,
    },
    /// Frames of a fetch in flight (replayed from its start, then live).
    Fetch(FetchStream),
    /// An upstream body passed straight through, with an idle timeout.
    Pass {
        /// The upstream body.
        body: Incoming,
        /// Fires when no frame arrived for `idle`.
        timer: Pin<Box<Sleep>>,
        /// The idle timeout.
        idle: Duration,
    },
}

impl Body for CacheBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            CacheBody::Empty => Poll::Ready(None),
            CacheBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            CacheBody::Stored { entry, next } => {
                let frame = entry.body.get(*next).cloned();
                *next += 1;
                Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
            }
            CacheBody::Fetch(FetchStream(rx)) => loop {
                match rx.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Msg::Data(b))) => {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    Poll::Ready(Some(Msg::End)) => return Poll::Ready(None),
                    Poll::Ready(Some(Msg::Fail(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                    // The head was consumed before the body was built; nothing else follows a head.
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) => {
                        return Poll::Ready(Some(Err(
                            "the fetch ended without completing the body".into(),
                        )));
                    }
                }
            },
            CacheBody::Pass { body, timer, idle } => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    timer.as_mut().reset(tokio::time::Instant::now() + *idle);
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "upstream body stalled for {} ms",
                        idle.as_millis()
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CacheBody::Empty => true,
            CacheBody::Full(b) => b.is_none(),
            CacheBody::Stored { entry, next } => *next >= entry.body.len(),
            CacheBody::Fetch(_) => false,
            CacheBody::Pass { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CacheBody::Empty => SizeHint::with_exact(0),
            CacheBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            CacheBody::Stored { entry, next } => {
                SizeHint::with_exact(entry.body.iter().skip(*next).map(|b| b.len() as u64).sum())
            }
            CacheBody::Fetch(_) => SizeHint::default(),
            CacheBody::Pass { body, .. } => body.size_hint(),
        }
    }
}

/// The receiving end of a fetch in flight (opaque).
#[derive(Debug)]
pub struct FetchStream(UnboundedReceiver<Msg>);

/// What the store holds for a request.
enum Found {
    Entry(Arc<Entry>),
    Pass(Arc<PassMarker>),
    /// Nothing; `vary_miss` when the URI has stored variants but not this one.
    None {
        vary_miss: bool,
    },
}

/// Checks the request-target and `Host` (RFC 9112 §3.2, §3.2.2) before anything is looked up or fetched, and makes
/// `Host` agree with the key. Returns why the request is a 400, if it is.
///
/// hyper accepts any target `http::Uri` parses, so without this `GET x` (parsed as authority-form, host `x`) was
/// keyed `x/` and fetched `/` from upstream, and a request without `Host`, or with two, was keyed under whatever
/// host came first (or none). The key is `host + path`, so a `Host` carrying a path (`Host: a/b`) could also make
/// one URI's key equal another's (`a` + `/b/c`): a `Host` must be a plain authority.
///
/// A target with an authority (absolute-form, and every HTTP/2 request via `:authority`) is keyed by that
/// authority, so the fetch must name it too: a proxy MUST replace `Host` with it (RFC 9112 §3.2.2). Forwarding the
/// client's `Host` instead stored whatever the upstream answered for that host under the target's host (one host's
/// response under another's key), and HTTP/2 requests went upstream with the upstream's own address as `Host`.
fn normalize_target(parts: &mut request::Parts) -> Option<&'static str> {
    let uri = &parts.uri;
    let authority = match (uri.scheme(), uri.authority()) {
        // origin-form, or asterisk-form (OPTIONS only)
        (None, None) => {
            let path = uri.path();
            if path == "*" {
                if parts.method != Method::OPTIONS {
                    return Some("the asterisk-form target is for OPTIONS only");
                }
            } else if !path.starts_with('/') {
                return Some("the request target must start with /");
            }
            None
        }
        (Some(scheme), Some(a)) => {
            if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
                return Some("the request target's scheme must be http or https");
            }
            Some(a.clone())
        }
        // authority-form: CONNECT only (answered 405 later); anything else
        (None, Some(_)) if parts.method == Method::CONNECT => return None,
        _ => return Some("the request target must be origin-form or absolute-form"),
    };
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host");
    }
    match host {
        // Empty is allowed (RFC 9110 §7.2: a target without an authority); otherwise host[:port], nothing else.
        Some(h) if h.is_empty() => {}
        Some(h) if !plain_host(h.as_bytes()) => {
            return Some("Host must be a host and an optional port");
        }
        Some(_) => {}
        None if parts.version == Version::HTTP_11 => return Some("HTTP/1.1 requires Host"),
        None => {}
    }
    if let Some(a) = authority {
        if a.as_str().contains('@') {
            return Some("the request target must not carry userinfo");
        }
        let same = parts
            .headers
            .get(HOST)
            .is_some_and(|h| h.as_bytes() == a.as_str().as_bytes());
        if !same && let Ok(v) = HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(HOST, v);
        }
    }
    None
}

/// Whether `h` is `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets, or reg-name / IPv4
/// characters, then an optional numeric port. No `/`, `?`, `#`, `@` or whitespace; checked without allocating,
/// since every request runs it.
fn plain_host(h: &[u8]) -> bool {
    let (host, port) = match h.iter().rposition(|&b| b == b':') {
        Some(i) if !h[i..].contains(&b']') => (&h[..i], &h[i + 1..]),
        _ => (h, &[][..]),
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if let Some(literal) = host.strip_prefix(b"[") {
        return literal.strip_suffix(b"]").is_some_and(|l| {
            !l.is_empty()
                && l.iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        });
    }
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
}

fn strip_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
    {
        if let Ok(n) = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) {
            out.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        out.remove(n);
    }
    out
}

/// Headers for a shared fetch: the client's, minus hop-by-hop and client-only fields, plus the stored response's
/// validators when revalidating.
fn fetch_headers(client: &HeaderMap, stale: Option<&Entry>) -> HeaderMap {
    let mut h = strip_hop_by_hop(client);
    for n in CLIENT_ONLY {
        h.remove(n);
    }
    h.remove(CONTENT_LENGTH);
    if let Some(e) = stale {
        if let Some(tag) = e.headers.get(ETAG) {
            h.insert(IF_NONE_MATCH, tag.clone());
        } else if let Some(lm) = e.headers.get(LAST_MODIFIED) {
            h.insert(IF_MODIFIED_SINCE, lm.clone());
        }
    }
    h
}

/// The opaque part of an entity tag, for weak comparison (RFC 9110 §8.8.3.2).
fn opaque(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

/// RFC 9110 §13.1.2 / §13.1.3 for GET/HEAD: whether a 200 with `res` headers answers `req`'s conditionals with
/// 304 (`If-None-Match` by weak comparison; only without it, `If-Modified-Since`).
fn not_modified(req: &HeaderMap, res: &HeaderMap) -> bool {
    if req.contains_key(IF_NONE_MATCH) {
        let Some(current) = res.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return req
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .any(|t| t.trim() == "*" || opaque(t) == opaque(current));
    }
    let since = req
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let modified = res
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

/// A 304 for a 200 with `res` headers (RFC 9110 §15.4.5: the fields a 200 would have carried that matter).
fn not_modified_response(res: &HeaderMap) -> Response<CacheBody> {
    let mut r = Response::new(CacheBody::Empty);
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    for n in [
        CACHE_CONTROL,
        CONTENT_LOCATION,
        DATE,
        ETAG,
        EXPIRES,
        VARY,
        LAST_MODIFIED,
    ] {
        if let Some(v) = res.get(&n) {
            r.headers_mut().insert(n, v.clone());
        }
    }
    r
}

fn text_response(status: StatusCode, body: String) -> Response<CacheBody> {
    let mut body = body;
    body.push('\n');
    let mut r = Response::new(CacheBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn empty_body() -> UpstreamBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn parse_content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Seconds of freshness left (negative when stale), for `Cache-Status; ttl=`.
fn ttl_secs(e: &Entry, now: Instant) -> i64 {
    let fresh = e.freshness.fresh_for.as_secs() as i64;
    fresh - e.freshness.resident(now).as_secs() as i64
}

impl CacheApp {
    /// The configuration served.
    pub fn config(&self) -> &ResolvedTier {
        &self.core.cfg
    }

    /// The memory tier (for the admin port and tests).
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// Fetches in flight now.
    pub fn inflight(&self) -> usize {
        self.core.coalescer.len()
    }

    /// The prefetch counts and settings, as `/stats` reports them (the `prefetch` object).
    pub fn prefetch_stats(&self) -> serde_json::Value {
        self.core.prefetch.stats()
    }

    /// How many prefetches ended in (or were skipped with) `outcome` so far.
    pub fn prefetch_count(&self, outcome: Outcome) -> u64 {
        self.core.prefetch.counts.get(outcome)
    }

    /// Prefetches running now.
    pub fn prefetch_inflight(&self) -> usize {
        self.core.prefetch.inflight()
    }

    /// Removes what `rule` covers from storage and unregisters the fetches in flight for it (they will not store
    /// their result); once this returns, no request to this tier is served the old object. Returns
    /// `(primary keys removed, fetches cancelled)`.
    pub fn purge(&self, rule: PurgeRule) -> (usize, usize) {
        // Log the purge (store) before unregistering the fetches: a fetch finishing in between checks the log.
        let removed = self.core.store.purge(rule.clone());
        let cancelled = self.core.coalescer.purge(&rule);
        (removed, cancelled)
    }

    /// Empties the memory tier (and cancels every fetch's store); returns the primary keys removed.
    pub fn purge_all(&self) -> usize {
        let rule = PurgeRule {
            host: None,
            path: String::new(),
            prefix: true,
        };
        let n = self.core.store.clear();
        self.core.coalescer.purge(&rule);
        n
    }

    fn finish(
        &self,
        mut r: Response<CacheBody>,
        status: &Status,
        upstream: Option<&HeaderValue>,
    ) -> Response<CacheBody> {
        let v = status.render(&self.core.cfg.name, upstream);
        r.headers_mut().insert(CACHE_STATUS, v);
        r
    }

    fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> (Found, u64) {
        let now = Instant::now();
        match self.core.store.get(key.hash) {
            None => (Found::None { vary_miss: false }, key.hash),
            Some(Stored::Object(e)) => (Found::Entry(e), key.hash),
            Some(Stored::Pass(m)) if m.until > now => (Found::Pass(m), key.hash),
            Some(Stored::Pass(_)) => (Found::None { vary_miss: false }, key.hash),
            Some(Stored::Vary(spec, _)) => {
                let v = spec.variant_hash(key.hash, headers);
                match self.core.store.get(v) {
                    Some(Stored::Object(e)) => (Found::Entry(e), v),
                    _ => (Found::None { vary_miss: true }, v),
                }
            }
        }
    }

    /// Serves a stored response (with `Age`, `Cache-Status`, and a 304 when the client's conditionals match).
    fn serve_entry(
        &self,
        req: &request::Parts,
        e: &Arc<Entry>,
        status: &Status,
    ) -> Response<CacheBody> {
        let now = Instant::now();
        let upstream_status = e.headers.get(CACHE_STATUS);
        let mut r = if e.status == StatusCode::OK && not_modified(&req.headers, &e.headers) {
            not_modified_response(&e.headers)
        } else {
            let body = if req.method == Method::HEAD {
                CacheBody::Empty
            } else {
                self.core.metrics.bytes_served.increment(e.body_bytes);
                CacheBody::Stored {
                    entry: Arc::clone(e),
                    next: 0,
                }
            };
            let mut r = Response::new(body);
            *r.status_mut() = e.status;
            *r.headers_mut() = e.headers.clone();
            r
        };
        r.headers_mut()
            .insert(AGE, HeaderValue::from(e.freshness.age_secs(now)));
        self.finish(r, status, upstream_status)
    }

    /// Serves the head of a fetch and streams its body from `rx`.
    fn serve_head(
        &self,
        req: &request::Parts,
        h: &Head,
        rx: UnboundedReceiver<Msg>,
        status: &Status,
    ) -> Response<CacheBody> {
        let upstream_status = h.headers.get(CACHE_STATUS);
        let mut r = if h.status == StatusCode::OK && not_modified(&req.headers, &h.headers) {
            not_modified_response(&h.headers)
        } else {
            let body = if req.method == Method::HEAD {
                CacheBody::Empty
            } else {
                CacheBody::Fetch(FetchStream(rx))
            };
            let mut r = Response::new(body);
            *r.status_mut() = h.status;
            *r.headers_mut() = h.headers.clone();
            r
        };
        r.headers_mut().remove(CACHE_STATUS);
        self.finish(r, status, upstream_status)
    }

    /// Streams an upstream response straight through.
    fn serve_pass(
        &self,
        req_method: &Method,
        resp: Response<Incoming>,
        status: &Status,
    ) -> Response<CacheBody> {
        let (parts, body) = resp.into_parts();
        let mut headers = strip_hop_by_hop(&parts.headers);
        let upstream_status = headers.remove(CACHE_STATUS);
        let body = if *req_method == Method::HEAD {
            CacheBody::Empty
        } else {
            let idle = self.core.cfg.upstream_read_timeout;
            CacheBody::Pass {
                body,
                timer: Box::pin(tokio::time::sleep(idle)),
                idle,
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = parts.status;
        *r.headers_mut() = headers;
        let status = Status {
            fwd_status: Some(parts.status.as_u16()),
            ..status.clone()
        };
        self.finish(r, &status, upstream_status.as_ref())
    }

    fn error(&self, code: StatusCode, e: &FetchError, status: &Status) -> Response<CacheBody> {
        self.core.metrics.error.increment(1);
        let status = Status {
            detail: Some(e.detail()),
            ..status.clone()
        };
        self.finish(text_response(code, e.to_string()), &status, None)
    }

    /// Forwards a request upstream without coalescing or storing (private, no-store, marked pass, too many
    /// fetches in flight, `Authorization`).
    async fn pass(
        &self,
        req: &request::Parts,
        key: &CacheKey,
        status: Status,
    ) -> Response<CacheBody> {
        self.core.metrics.pass.increment(1);
        let mut up = Request::new(empty_body());
        *up.method_mut() = req.method.clone();
        *up.uri_mut() = req.uri.clone();
        *up.headers_mut() = strip_hop_by_hop(&req.headers);
        let idx = self.core.upstreams.pick(key.hash, 0);
        match self.core.upstreams.send(idx, up).await {
            Ok(resp) => self.serve_pass(&req.method, resp, &status),
            Err(e) => self.error(StatusCode::BAD_GATEWAY, &e, &status),
        }
    }

    /// Methods other than GET and HEAD: invalidate the URI, then forward with the body.
    async fn forward_other<B>(&self, req: request::Parts, body: B) -> Response<CacheBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let key = CacheKey::of_request(&req.uri, &req.headers);
        let status = Status {
            detail: Some("method"),
            ..Status::fwd(Fwd::Request)
        };
        if req.method == Method::CONNECT {
            return self.finish(
                text_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "CONNECT is not supported".into(),
                ),
                &status,
                None,
            );
        }
        let safe = matches!(req.method, Method::OPTIONS | Method::TRACE);
        if !safe {
            self.purge(PurgeRule::exact(&key));
        }
        self.core.metrics.pass.increment(1);
        let body = Limited::new(body, self.core.cfg.max_request_body_bytes).boxed_unsync();
        let mut up = Request::new(body);
        *up.method_mut() = req.method.clone();
        *up.uri_mut() = req.uri.clone();
        *up.headers_mut() = strip_hop_by_hop(&req.headers);
        let idx = self.core.upstreams.pick(key.hash, 0);
        match self.core.upstreams.send(idx, up).await {
            Ok(resp) => self.serve_pass(&req.method, resp, &status),
            Err(e) => self.error(StatusCode::BAD_GATEWAY, &e, &status),
        }
    }

    /// Starts a background revalidation of `entry` unless a fetch for the key is already in flight (so a burst of
    /// stale hits causes one fetch).
    fn revalidate_in_background(
        &self,
        hash: u64,
        key: &CacheKey,
        req: &request::Parts,
        entry: &Arc<Entry>,
    ) {
        if self.core.coalescer.in_flight(hash) {
            return;
        }
        if let Joined::Leader(inflight, rx) = self.core.coalescer.join(hash, key) {
            drop(rx);
            tokio::spawn(fetch(
                Arc::clone(&self.core),
                inflight,
                hash,
                req.uri.clone(),
                req.headers.clone(),
                Some(Arc::clone(entry)),
                0,
            ));
        }
    }

    /// Starts background fetches of the segments after the one `req` asks for (see `cache::prefetch`). Only
    /// non-blocking work: it never waits, for a slot or anything else.
    fn prefetch_after(&self, req: &request::Parts) {
        let core = &*self.core;
        let p = &core.prefetch;
        if p.stopping() || req.uri.query().is_some() {
            return;
        }
        let Some(seg) = parse_segment(req.uri.path(), &p.cfg.prefixes) else {
            return;
        };
        let host = req.headers.get(HOST);
        // The key's host as `CacheKey::of_request` takes it (authority, else `Host`), so the candidate's key is
        // the one a client's request for it will have.
        let key_host = match req.uri.authority() {
            Some(a) => a.as_str(),
            None => host.and_then(|v| v.to_str().ok()).unwrap_or(""),
        };
        for i in 1..=p.cfg.segments as u64 {
            let path = seg.next(i);
            let key = CacheKey::new(key_host, &path);
            // `contains` records no access: a prefetch must not make the eviction policy think a client wanted it.
            if core.store.contains(key.hash)
                || core.store.lower().is_some_and(|l| l.contains(key.hash))
            {
                p.counts.count(Outcome::SkippedCached);
                continue;
            }
            if core.coalescer.in_flight(key.hash) {
                p.counts.count(Outcome::SkippedInflight);
                continue;
            }
            // Built only for a prefetch that will run: the common case (already stored) allocates little.
            let Some((uri, headers)) = candidate(&req.uri, host, &path) else {
                continue;
            };
            let Some(slot) = p.slot() else {
                p.counts.count(Outcome::DroppedFull);
                continue;
            };
            let (inflight, rx) =
                match core
                    .coalescer
                    .lead(key.hash, &key, Arc::new(PrefetchMark::new()))
                {
                    Ok(led) => led,
                    Err(true) => {
                        p.counts.count(Outcome::SkippedInflight);
                        continue;
                    }
                    Err(false) => {
                        p.counts.count(Outcome::DroppedFull);
                        continue;
                    }
                };
            // Nobody reads the leader's channel: the fetch is for the store (and for clients that join it).
            drop(rx);
            p.counts.count(Outcome::Issued);
            tokio::spawn(prefetch_task(
                Arc::clone(&self.core),
                inflight,
                key.hash,
                uri,
                headers,
                slot,
                p.shutdown(),
            ));
        }
    }

    /// Handles one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<CacheBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        if let Some(why) = normalize_target(&mut parts) {
            let status = Status {
                detail: Some("bad-request"),
                ..Status::default()
            };
            let mut r = text_response(StatusCode::BAD_REQUEST, why.to_string());
            // hyper keeps the connection open after a handler's 400; a client this confused gets it closed.
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return self.finish(r, &status, None);
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return self.forward_other(parts, body).await;
        }
        drop(body);
        let core = &*self.core;
        let key = CacheKey::of_request(&parts.uri, &parts.headers);
        let authorized = parts.headers.contains_key(AUTHORIZATION);
        let plain = plain_request(&parts.headers);
        // A prefetch never triggers another (a shield behind a prefetching edge), and a request with credentials
        // does not: its segments may need them, and a prefetch does not forward them.
        if core.prefetch.enabled()
            && parts.method == Method::GET
            && !authorized
            && !parts.headers.contains_key(PREFETCH_HEADER)
        {
            self.prefetch_after(&parts);
        }
        let mut last_error = None;
        let mut stale_seen: Option<Arc<Entry>> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let now = Instant::now();
            let (found, hash) = self.lookup(&key, &parts.headers);
            let (stale, fwd) = match found {
                Found::Pass(m) => {
                    let status = Status {
                        detail: Some(m.reason),
                        ..Status::fwd(Fwd::Bypass)
                    };
                    return self.pass(&parts, &key, status).await;
                }
                Found::Entry(e) => {
                    if authorized && !e.directives.allows_authorized() {
                        let status = Status {
                            detail: Some("authorization"),
                            ..Status::fwd(Fwd::Request)
                        };
                        return self.pass(&parts, &key, status).await;
                    }
                    // A prefetched object's first client use (served, or revalidated as the stale copy).
                    let prefetched = e.prefetch.as_ref().is_some_and(|m| {
                        if m.claim() {
                            core.prefetch.counts.count(Outcome::Used);
                        }
                        true
                    });
                    let fresh = if plain {
                        e.freshness.is_fresh(now)
                    } else {
                        let view = ReqView {
                            uri: &parts.uri,
                            headers: &parts.headers,
                        };
                        fresh_for_request(&e.policy, &view)
                    };
                    if fresh {
                        core.metrics.hit.increment(1);
                        let status = Status {
                            detail: prefetched.then_some("prefetch"),
                            ..Status::hit(ttl_secs(&e, now))
                        };
                        return self.serve_entry(&parts, &e, &status);
                    }
                    if plain && e.freshness.within_swr(now) {
                        core.metrics.stale_while_revalidate.increment(1);
                        self.revalidate_in_background(hash, &key, &parts, &e);
                        let status = Status {
                            detail: Some("stale-while-revalidate"),
                            ..Status::hit(ttl_secs(&e, now))
                        };
                        return self.serve_entry(&parts, &e, &status);
                    }
                    (Some(e), Fwd::Stale)
                }
                Found::None { vary_miss } => (
                    None,
                    if vary_miss {
                        Fwd::VaryMiss
                    } else {
                        Fwd::UriMiss
                    },
                ),
            };
            if stale.is_some() {
                stale_seen.clone_from(&stale);
            }
            // A request with credentials fetches alone: its response is stored only if it says it may be
            // shared (the policy applies RFC 9111 §3.5), and it is never handed to other waiters.
            let joined = if authorized {
                core.coalescer.solo(&key)
            } else {
                core.coalescer.join(hash, &key)
            };
            let (rx, collapsed, via_prefetch) = match joined {
                Joined::Ended => continue,
                Joined::Full => {
                    let status = Status {
                        detail: Some("inflight-full"),
                        ..Status::fwd(fwd)
                    };
                    return self.pass(&parts, &key, status).await;
                }
                Joined::Leader(inflight, rx) => {
                    // A fetch may have completed between the lookup and the join: its result is stored now.
                    if !authorized
                        && stale.is_none()
                        && matches!(self.lookup(&key, &parts.headers).0, Found::Entry(_))
                    {
                        core.coalescer.remove(hash, &inflight);
                        inflight.redo();
                        continue;
                    }
                    tokio::spawn(fetch(
                        Arc::clone(&self.core),
                        inflight,
                        hash,
                        parts.uri.clone(),
                        parts.headers.clone(),
                        stale.clone(),
                        attempt,
                    ));
                    (rx, false, false)
                }
                Joined::Follower(rx, mark) => {
                    core.metrics.collapsed.increment(1);
                    // Served by a prefetch still in flight: that prefetch was used (counted now if its result is
                    // stored already, else by the fetch when it stores).
                    if let Some(m) = &mark
                        && m.join()
                    {
                        core.prefetch.counts.count(Outcome::Used);
                    }
                    (rx, true, mark.is_some())
                }
            };
            let mut rx = rx;
            // The leader's wait is bounded by the fetch's own timeouts; a follower's by the coalescing timeout
            // (it may have joined a fetch that is slow for reasons that do not concern it).
            let wait = if collapsed {
                core.cfg.coalesce_timeout
            } else {
                core.cfg.connect_timeout + core.cfg.upstream_timeout + core.cfg.coalesce_timeout
            };
            let first = match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => Msg::Fail(FetchError::Upstream {
                    upstream: String::new(),
                    reason: "the fetch task ended without an answer".into(),
                }),
                Err(_) => Msg::Fail(FetchError::WaitTimeout {
                    timeout_ms: wait.as_millis() as u64,
                }),
            };
            let base = Status {
                collapsed,
                ..Status::fwd(fwd)
            };
            match first {
                Msg::Head(h) => {
                    if let Some((names, leader_variant)) = &h.vary
                        && variant_hash(key.hash, names, &parts.headers) != *leader_variant
                    {
                        // Another variant: go round again (the Vary spec is stored now, so the next lookup
                        // coalesces on this request's own variant).
                        continue;
                    }
                    if h.status.is_server_error()
                        && let Some(s) = &stale
                        && s.freshness.within_sie(Instant::now())
                    {
                        core.metrics.stale_if_error.increment(1);
                        let status = Status {
                            fwd_status: Some(h.status.as_u16()),
                            detail: Some("stale-if-error"),
                            ttl: Some(ttl_secs(s, Instant::now())),
                            ..base
                        };
                        return self.serve_entry(&parts, s, &status);
                    }
                    if fwd == Fwd::Stale {
                        core.metrics.revalidated.increment(1);
                    } else {
                        core.metrics.miss.increment(1);
                    }
                    let status = Status {
                        fwd_status: Some(h.status.as_u16()),
                        stored: h.storing,
                        detail: (!h.reason.is_empty())
                            .then_some(h.reason)
                            .or(via_prefetch.then_some("prefetch")),
                        ..base
                    };
                    return self.serve_head(&parts, &h, rx, &status);
                }
                Msg::Entry(e, revalidated) => {
                    let status = if revalidated {
                        core.metrics.revalidated.increment(1);
                        // Revalidating with nothing stale in memory: the stale copy came from the lower tier.
                        let from_lower = stale.is_none() && core.store.lower().is_some();
                        Status {
                            fwd: if from_lower {
                                Some(Fwd::Stale)
                            } else {
                                base.fwd
                            },
                            fwd_status: Some(304),
                            stored: true,
                            ttl: Some(ttl_secs(&e, Instant::now())),
                            detail: core.store.lower().filter(|_| from_lower).map(|l| l.name()),
                            ..base
                        }
                    } else {
                        core.metrics.hit.increment(1);
                        Status {
                            hit: true,
                            ttl: Some(ttl_secs(&e, Instant::now())),
                            detail: Some(core.store.lower().map_or("lower-tier", |l| l.name())),
                            ..base
                        }
                    };
                    return self.serve_entry(&parts, &e, &status);
                }
                Msg::Pass(resp, reason) => {
                    let status = Status {
                        detail: Some(reason),
                        ..base
                    };
                    return self.serve_pass(&parts.method, *resp, &status);
                }
                Msg::Redo => {
                    let status = Status {
                        detail: Some("not-shareable"),
                        ..base
                    };
                    return self.pass(&parts, &key, status).await;
                }
                Msg::Fail(e) => {
                    if let Some(s) = &stale
                        && s.freshness.within_sie(Instant::now())
                    {
                        core.metrics.stale_if_error.increment(1);
                        let status = Status {
                            detail: Some("stale-if-error"),
                            ttl: Some(ttl_secs(s, Instant::now())),
                            ..base
                        };
                        return self.serve_entry(&parts, s, &status);
                    }
                    last_error = Some((e, base));
                }
                Msg::Data(_) | Msg::End => {
                    last_error = Some((
                        FetchError::Upstream {
                            upstream: String::new(),
                            reason: "fetch published a body before its head".into(),
                        },
                        base,
                    ));
                }
            }
        }
        if let Some(s) = &stale_seen
            && s.freshness.within_sie(Instant::now())
        {
            core.metrics.stale_if_error.increment(1);
            let status = Status {
                detail: Some("stale-if-error"),
                ..Status::fwd(Fwd::Stale)
            };
            return self.serve_entry(&parts, s, &status);
        }
        match last_error {
            Some((e, status)) => {
                let code = if matches!(e, FetchError::WaitTimeout { .. }) {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                self.error(code, &e, &status)
            }
            None => {
                // Every attempt joined a fetch for another variant, or found a fetch just ending: rare; go alone.
                self.pass(
                    &parts,
                    &key,
                    Status {
                        detail: Some("retries-exhausted"),
                        ..Status::fwd(Fwd::UriMiss)
                    },
                )
                .await
            }
        }
    }
}

/// How a fetch ended, for a prefetch's accounting (client fetches ignore it: their waiters were told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// The response is in the memory tier now.
    Stored,
    /// A complete response that was not stored (policy, size, purge, refused by the memory tier).
    NotStored,
    /// No complete response, or (a prefetch) a status it does not store.
    Failed,
    /// Found in the lower tier (and promoted), no upstream request.
    FromLower,
}

/// Ends a fetch with an error: unregister first (waiters retrying start a new fetch), then tell them.
fn fail(core: &Core, inflight: &Arc<Inflight>, hash: u64, e: &FetchError) -> Fetched {
    core.metrics.fetch_failed.increment(1);
    core.coalescer.remove(hash, inflight);
    inflight.fail(e);
    Fetched::Failed
}

/// A prefetch: one marked fetch, holding one of the `max_inflight` slots until it ends, stopped when the tier
/// shuts down (dropping the fetch fails its waiters, if any, who then fetch on their own). `Stored` (and `used`,
/// when a client joined) is counted by [`fetch`] when it stores, so the counts never show a use before its store.
async fn prefetch_task(
    core: Arc<Core>,
    inflight: Arc<Inflight>,
    hash: u64,
    uri: http::Uri,
    headers: HeaderMap,
    slot: OwnedSemaphorePermit,
    shutdown: Option<Shutdown>,
) {
    let _slot = slot;
    let run = fetch(Arc::clone(&core), inflight, hash, uri, headers, None, 0);
    let ended = match shutdown {
        Some(mut s) => tokio::select! {
            f = run => Some(f),
            () = s.wait() => None,
        },
        None => Some(run.await),
    };
    let counts = &core.prefetch.counts;
    match ended {
        Some(Fetched::Stored) => {}
        Some(Fetched::NotStored) => counts.count(Outcome::NotStored),
        Some(Fetched::FromLower) => counts.count(Outcome::SkippedCached),
        Some(Fetched::Failed) => counts.count(Outcome::Failed),
        None => counts.count(Outcome::Cancelled),
    }
}

/// Ends a fetch that stopped without a terminal message (a panic, or the runtime shutting down): its waiters get
/// an error instead of waiting out their timeout, and the key is free for a new fetch. After a normal end this does
/// nothing (the fetch is closed and unregistered already).
struct Abandon {
    core: Arc<Core>,
    inflight: Arc<Inflight>,
    hash: u64,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.core.coalescer.remove(self.hash, &self.inflight);
        self.inflight.fail(&FetchError::Upstream {
            upstream: String::new(),
            reason: "the fetch task ended abnormally".into(),
        });
    }
}

/// The fetch task: one upstream request for everyone waiting on `inflight`, its body published frame by frame,
/// the response stored only once complete and only if the policy allows (and no purge intervened).
async fn fetch(
    core: Arc<Core>,
    inflight: Arc<Inflight>,
    hash: u64,
    uri: http::Uri,
    client_headers: HeaderMap,
    stale: Option<Arc<Entry>>,
    attempt: usize,
) -> Fetched {
    let _abandon = Abandon {
        core: Arc::clone(&core),
        inflight: Arc::clone(&inflight),
        hash,
    };
    let key = inflight.key.clone();
    let since_seq = core.store.purge_seq();
    let started = Instant::now();
    let mut stale = stale;
    // The lower tier answers only plain requests without credentials: its hit is handed to every waiter as a
    // fresh hit, so request directives (`no-cache`, `max-age=0`) and `Authorization` (RFC 9111 §3.5) go upstream
    // instead. Bounded like an upstream head: a slow disk must not hold the fetch longer than the origin would.
    if stale.is_none()
        && plain_request(&client_headers)
        && !client_headers.contains_key(AUTHORIZATION)
        && let Some(lower) = core.store.lower()
        && let Ok(Some(e)) =
            tokio::time::timeout(core.cfg.upstream_timeout, lower.lookup(hash)).await
    {
        if e.freshness.is_fresh(Instant::now()) {
            // Promotion: back into the memory tier (unless a purge intervened since the fetch started).
            let _ = core.store.insert(
                hash,
                &key,
                Stored::Object(Arc::clone(&e)),
                e.size_bytes(),
                since_seq,
            );
            core.coalescer.remove(hash, &inflight);
            inflight.entry(&e, false);
            return Fetched::FromLower;
        }
        // Stale on disk: revalidate it with its validators (a 304 refreshes and stores it) rather than refetch
        // the whole body; without validators the request is an ordinary fetch.
        if e.headers.contains_key(ETAG) || e.headers.contains_key(LAST_MODIFIED) {
            stale = Some(e);
        }
    }
    let mut req = Request::new(empty_body());
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = fetch_headers(&client_headers, stale.as_deref());
    let idx = core.upstreams.pick(key.hash, attempt);
    let resp = match core.upstreams.send(idx, req).await {
        Ok(r) => r,
        Err(e) => return fail(&core, &inflight, hash, &e),
    };
    core.metrics
        .fetch_seconds
        .record(started.elapsed().as_secs_f64());
    let received = SystemTime::now();
    let at = Instant::now();
    let status = resp.status();
    let view = ReqView {
        uri: &uri,
        headers: &client_headers,
    };
    if status == StatusCode::NOT_MODIFIED
        && let Some(old) = &stale
    {
        core.metrics.fetch_ok.increment(1);
        return match refresh(
            &old.policy,
            &old.headers,
            &view,
            status,
            resp.headers(),
            received,
            at,
        ) {
            Some(r) => {
                let mut headers = r.headers;
                headers.remove(AGE);
                let e = Arc::new(Entry {
                    key: old.key.clone(),
                    path_at: old.path_at,
                    variant: old.variant,
                    status: old.status,
                    headers,
                    body: old.body.clone(),
                    body_bytes: old.body_bytes,
                    policy: r.policy,
                    directives: r.directives,
                    freshness: r.freshness,
                    prefetch: None,
                    wire_head: std::sync::OnceLock::new(),
                });
                let stored = match core.store.insert(
                    hash,
                    &key,
                    Stored::Object(Arc::clone(&e)),
                    e.size_bytes(),
                    since_seq,
                ) {
                    Ok(()) => {
                        core.metrics.stored.increment(1);
                        Fetched::Stored
                    }
                    Err(_) => {
                        core.metrics.not_stored.increment(1);
                        Fetched::NotStored
                    }
                };
                core.coalescer.remove(hash, &inflight);
                inflight.entry(&e, true);
                stored
            }
            None => {
                core.store.purge(PurgeRule::exact(&key));
                fail(&core, &inflight, hash, &FetchError::NotModifiedMismatch)
            }
        };
    }
    let d = decide(&view, status, resp.headers(), received, at);
    let headers = strip_hop_by_hop(resp.headers());
    let content_length = parse_content_length(&headers);
    let max = core.cfg.max_object_bytes;
    let too_large = content_length.is_some_and(|n| n > max);
    // A prefetch stores only what a player would use: an error page (a 404 past the last segment) is not a
    // segment, whatever its headers say.
    let prefetch = inflight.mark.is_some();
    let refused_status = prefetch && !status.is_success();
    let unstored = if refused_status {
        Fetched::Failed
    } else {
        Fetched::NotStored
    };
    if !d.shareable || too_large {
        core.metrics.fetch_ok.increment(1);
        core.metrics.not_stored.increment(1);
        // Hit-for-pass: the next requests for this URI skip coalescing instead of queueing behind each other for
        // a response they cannot share. Not for errors: the next response may well be cacheable. Not from a
        // prefetch: it stores nothing, and a client's own request will decide.
        if !prefetch
            && !status.is_server_error()
            && d.reason != "authorization"
            && core.cfg.pass_marker_ttl > Duration::ZERO
        {
            let marker = PassMarker {
                key: key.text.clone(),
                until: at + core.cfg.pass_marker_ttl,
                reason: if too_large { "too-large" } else { d.reason },
            };
            if stale.is_some() {
                core.store.purge(PurgeRule::exact(&key));
            }
            let _ = core.store.insert(
                key.hash,
                &key,
                Stored::Pass(Arc::new(marker)),
                256 + key.text.len() as u64,
                core.store.purge_seq(),
            );
        }
        core.coalescer.remove(hash, &inflight);
        let (mut parts, body) = resp.into_parts();
        parts.headers = headers;
        let reason = if too_large { "too-large" } else { d.reason };
        inflight.pass(Response::from_parts(parts, body), reason);
        return unstored;
    }
    // Shareable. A Vary response goes under its variant key, with the spec under the primary key; the spec is
    // stored now (not at the end) so requests for other variants stop coalescing on the primary key at once.
    let (store_hash, vary) = match &d.vary {
        VaryKind::Headers(names) => {
            let variant = variant_hash(key.hash, names, &client_headers);
            let spec = match core.store.get(key.hash) {
                Some(Stored::Vary(spec, _)) if spec.same_names(names) => Some(spec),
                _ => None,
            };
            let spec = spec.unwrap_or_else(|| {
                let spec = Arc::new(VarySpec::new(names.clone()));
                let size = spec.size_bytes() + key.text.len() as u64;
                let _ = core.store.insert(
                    key.hash,
                    &key,
                    Stored::Vary(Arc::clone(&spec), Arc::from(key.text.as_ref())),
                    size,
                    since_seq,
                );
                spec
            });
            let storable = d.storable && spec.register(variant);
            (
                variant,
                Some((names.clone().into_boxed_slice(), variant, storable)),
            )
        }
        _ => (key.hash, None),
    };
    let storing = d.storable && vary.as_ref().is_none_or(|v| v.2) && !refused_status;
    let head = Arc::new(Head {
        status,
        headers: headers.clone(),
        storing,
        vary: vary.map(|(names, variant, _)| (names, variant)),
        reason: if storing {
            ""
        } else if refused_status {
            "prefetch-status"
        } else if d.reason.is_empty() {
            "variants-full"
        } else {
            d.reason
        },
    });
    inflight.head(head);
    let mut body = resp.into_body();
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    let idle = core.cfg.upstream_read_timeout;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                let e = FetchError::Body {
                    at_bytes: total,
                    reason: format!("no data for {} ms", idle.as_millis()),
                };
                return fail(&core, &inflight, hash, &e);
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                let e = FetchError::Body {
                    at_bytes: total,
                    reason: err.to_string(),
                };
                return fail(&core, &inflight, hash, &e);
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not stored, not forwarded
        };
        total += data.len() as u64;
        if total > max {
            return fail(&core, &inflight, hash, &FetchError::TooLarge { limit: max });
        }
        core.metrics.bytes_fetched.increment(data.len() as u64);
        inflight.data(data.clone());
        frames.push(data);
        if !storing && !inflight.has_subscribers() {
            // Nobody is reading and nothing will be stored: stop pulling the body.
            core.coalescer.remove(hash, &inflight);
            inflight.end();
            return unstored;
        }
    }
    if let Some(n) = content_length
        && n != total
    {
        let e = FetchError::Body {
            at_bytes: total,
            reason: format!("Content-Length {n} but the body ended"),
        };
        return fail(&core, &inflight, hash, &e);
    }
    core.metrics.fetch_ok.increment(1);
    let mut ended = unstored;
    if storing {
        // Armed before the insert, so an eviction right after it already sees a stored, unused prefetch.
        let joined = inflight.mark.as_ref().is_some_and(|m| m.arm());
        let mut stored_headers = headers;
        stored_headers.remove(AGE);
        stored_headers.insert(CONTENT_LENGTH, HeaderValue::from(total));
        let e = Arc::new(Entry {
            key: key.text.clone(),
            path_at: key.path_at,
            variant: store_hash != key.hash,
            status,
            headers: stored_headers,
            body: frames.into_boxed_slice(),
            body_bytes: total,
            policy: d.policy,
            directives: d.directives,
            freshness: d.freshness,
            prefetch: inflight.mark.clone(),
            wire_head: std::sync::OnceLock::new(),
        });
        match core.store.insert(
            store_hash,
            &key,
            Stored::Object(Arc::clone(&e)),
            e.size_bytes(),
            since_seq,
        ) {
            Ok(()) => {
                core.metrics.stored.increment(1);
                ended = Fetched::Stored;
                if prefetch {
                    core.prefetch.counts.count(Outcome::Stored);
                    if joined {
                        core.prefetch.counts.count(Outcome::Used);
                    }
                }
            }
            Err(_) => {
                core.metrics.not_stored.increment(1);
                if let Some(m) = &inflight.mark {
                    m.disarm();
                }
            }
        }
    } else {
        core.metrics.not_stored.increment(1);
    }
    // Unregister after storing: a request arriving in between joins this fetch (and is replayed the whole body),
    // one arriving after finds the stored object. Never a window with neither.
    core.coalescer.remove(hash, &inflight);
    inflight.end();
    ended
}

/// The response future of [`CacheApp`]'s [`Service`] impl.
pub type CacheFuture =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody>, Infallible>> + Send>>;

impl<B> Service<Request<B>> for CacheApp
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<CacheBody>;
    type Error = Infallible;
    type Future = CacheFuture;

    fn call(&self, req: Request<B>) -> CacheFuture {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

/// Request fields that take a request off the fast path: they change what a hit means (credentials, the client's
/// own cache directives, conditionals, prefetch marking) or how the request is framed (a body).
const FAST_PATH_REFUSES: [&str; 12] = [
    "authorization",
    "cache-control",
    "pragma",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "x-refbench-prefetch",
    "content-length",
    "transfer-encoding",
    "expect",
];

/// The hit path without `http::Request`, `HeaderMap` or a task: a plain GET or HEAD (origin-form target, one
/// valid `Host`, none of the fields in `FAST_PATH_REFUSES`) for an object stored under its primary key and fresh now is
/// answered straight into the connection's output. It gives exactly what [`CacheApp::handle`] gives for such a
/// request (the same headers, `Age`, `Cache-Status`, counters and prefetch accounting); anything else — a miss, a
/// stale or `Vary` object, a pass marker, a prefetching tier — returns false and goes through `handle`.
impl FastPath for CacheApp {
    fn answer(&self, head: &h1::Head<'_>, out: &mut h1::Out) -> bool {
        let head_only = match head.method {
            "GET" => false,
            "HEAD" => true,
            _ => return false,
        };
        let core = &*self.core;
        // A prefetching tier acts on GETs of segments; that stays in one place (`handle`).
        if !head.target.starts_with('/') || core.prefetch.enabled() {
            return false;
        }
        let mut host: Option<&[u8]> = None;
        for h in head.headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                if host.is_some() {
                    return false;
                }
                host = Some(h.value);
            } else if FAST_PATH_REFUSES
                .iter()
                .any(|r| name.eq_ignore_ascii_case(r.as_bytes()))
            {
                return false;
            }
        }
        let Some(host) = host else {
            return false;
        };
        if host.is_empty() || !plain_host(host) {
            return false;
        }
        // The primary key's text, as `CacheKey::new` builds it (lowercase host, then the target as sent: a target
        // `http::Uri` would normalise differently hashes differently, misses here, and goes through `handle`).
        let text = &mut out.scratch;
        text.clear();
        text.extend(host.iter().map(u8::to_ascii_lowercase));
        text.extend_from_slice(head.target.as_bytes());
        let hash = hash_parts(&[text.as_slice()]);
        let now = Instant::now();
        let Some(Stored::Object(e)) = core.store.get(hash) else {
            return false;
        };
        if e.variant || !e.freshness.is_fresh(now) {
            return false;
        }
        core.metrics.hit.increment(1);
        let prefetched = e.prefetch.as_ref().is_some_and(|m| {
            if m.claim() {
                core.prefetch.counts.count(Outcome::Used);
            }
            true
        });
        // What `serve_entry` + `finish` send for this hit: the stored fields, `Age`, then `Cache-Status` (the same
        // member `Status::hit(ttl)` renders, with `detail=prefetch` for a prefetched object).
        let wire = e.wire_head(&core.cfg.name);
        out.buf().extend_from_slice(&wire.bytes);
        if !wire.has_date {
            out.date();
        }
        out.header_u64(b"age", e.freshness.age_secs(now));
        out.buf().extend_from_slice(&wire.hit_status_prefix);
        out.push_i64(ttl_secs(&e, now));
        if prefetched {
            out.buf().extend_from_slice(b"; detail=prefetch");
        }
        out.buf().extend_from_slice(b"\r\n");
        out.end_head(head.keep_alive, head.version);
        if !head_only {
            core.metrics.bytes_served.increment(e.body_bytes);
            for b in &e.body {
                out.body(b.clone());
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_hosts() {
        for ok in [
            "cdn.test",
            "CDN.test:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "a-b_c~d",
            "x:",
        ] {
            assert!(plain_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "cdn.test/static",
            "cdn.test?x",
            "cdn.test#f",
            "user@cdn.test",
            "cdn.test:8o",
            "a b",
            "[::1",
            "[]",
            "::1",
            "cdn.test:80:90",
            "cdn\ttest",
        ] {
            assert!(!plain_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn targets_and_hosts() {
        let parts = |method: Method, uri: &str, version: Version, hosts: &[&str]| {
            let mut b = Request::builder().method(method).uri(uri).version(version);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let v11 = Version::HTTP_11;
        for (m, uri, v, hosts) in [
            (Method::GET, "/a?b", v11, &["cdn.test"][..]),
            (Method::GET, "/a", v11, &[""][..]),
            (Method::GET, "/a", Version::HTTP_10, &[][..]),
            (Method::GET, "/a", Version::HTTP_2, &[][..]),
            (Method::OPTIONS, "*", v11, &["cdn.test"][..]),
            (Method::CONNECT, "cdn.test:443", v11, &["cdn.test"][..]),
        ] {
            let mut p = parts(m, uri, v, hosts);
            assert_eq!(normalize_target(&mut p), None, "{uri} {hosts:?}");
        }
        for (m, uri, v, hosts) in [
            (Method::GET, "*", v11, &["cdn.test"][..]),
            (Method::GET, "x", v11, &["cdn.test"][..]),
            (Method::GET, "cdn.test:80", v11, &["cdn.test"][..]),
            (Method::GET, "ftp://cdn.test/a", v11, &["cdn.test"][..]),
            (Method::GET, "http://u@cdn.test/a", v11, &["cdn.test"][..]),
            (Method::GET, "/a", v11, &[][..]),
            (Method::GET, "http://cdn.test/a", v11, &[][..]),
            (Method::GET, "/a", v11, &["a", "b"][..]),
            (Method::GET, "/a", v11, &["a/b"][..]),
        ] {
            let mut p = parts(m, uri, v, hosts);
            assert!(normalize_target(&mut p).is_some(), "{uri} {hosts:?}");
        }
        // An authority in the target replaces Host (absolute-form), or supplies it (HTTP/2).
        let mut p = parts(Method::GET, "http://Other.test:81/a", v11, &["cdn.test"]);
        assert_eq!(normalize_target(&mut p), None);
        assert_eq!(
            p.headers.get_all(HOST).iter().collect::<Vec<_>>(),
            ["Other.test:81"]
        );
        let mut p = parts(Method::GET, "http://h2.test/a", Version::HTTP_2, &[]);
        assert_eq!(normalize_target(&mut p), None);
        assert_eq!(p.headers[HOST], "h2.test");
    }

    #[test]
    fn conditionals() {
        let mut res = HeaderMap::new();
        res.insert(ETAG, HeaderValue::from_static("\"abc\""));
        res.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        let mut req = HeaderMap::new();
        assert!(!not_modified(&req, &res));
        req.insert(IF_NONE_MATCH, HeaderValue::from_static("W/\"abc\", \"x\""));
        assert!(not_modified(&req, &res));
        req.insert(IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(!not_modified(&req, &res));
        let mut req = HeaderMap::new();
        req.insert(
            IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        assert!(not_modified(&req, &res));
        req.insert(
            IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:19 GMT"),
        );
        assert!(!not_modified(&req, &res));
    }

    #[test]
    fn fetch_headers_drop_client_conditionals_and_add_validators() {
        let mut client = HeaderMap::new();
        client.insert(IF_NONE_MATCH, HeaderValue::from_static("\"mine\""));
        client.insert(CONNECTION, HeaderValue::from_static("x-foo"));
        client.insert("x-foo", HeaderValue::from_static("1"));
        client.insert("accept", HeaderValue::from_static("*/*"));
        let h = fetch_headers(&client, None);
        assert!(!h.contains_key(IF_NONE_MATCH));
        assert!(!h.contains_key("x-foo"));
        assert!(!h.contains_key(CONNECTION));
        assert_eq!(h["accept"], "*/*");
    }
}
