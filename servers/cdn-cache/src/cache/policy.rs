//! RFC 9111 decisions for a shared cache, delegated to `http-cache-semantics` where it covers them, plus the parts it
//! does not: RFC 5861's `stale-while-revalidate` / `stale-if-error`, and which responses may be handed to requests
//! that waited on another request's fetch.
//!
//! The crate decides storability (`no-store`, `private`, `Authorization` per §3.5, understood statuses), the
//! freshness lifetime (s-maxage > max-age > Expires > heuristic from Last-Modified), `Age`, request directives
//! (`no-cache`, `max-age`, `min-fresh`, `max-stale`) and the 304 merge (§4.3.4). Its answers are turned into a
//! [`Freshness`] once, when a response is stored, so a plain hit (no request `Cache-Control` or `Pragma`, variant
//! already matched by key) is a clock read and two comparisons: the crate's per-request path clones header maps.

use std::time::{Duration, Instant, SystemTime};

use http::header::{AUTHORIZATION, CACHE_CONTROL, ETAG, LAST_MODIFIED, PRAGMA};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy, RequestLike};

use super::key::{VaryKind, parse_vary};

/// Longest `stale-while-revalidate` / `stale-if-error` window honoured (a day): bounds how long a broken origin
/// can keep old content alive.
pub const MAX_STALE_WINDOW: Duration = Duration::from_secs(86_400);

/// A `'static` GET (a `Method` constant has drop glue, so `&Method::GET` would be a temporary).
static GET: Method = Method::GET;

/// The request as the policy crate sees it. Always GET: HEAD shares GET's stored responses, and the crate would
/// refuse to match a HEAD against a GET-stored policy. The URI always "matches": the cache key already did.
pub(crate) struct ReqView<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
}

impl RequestLike for ReqView<'_> {
    fn uri(&self) -> Uri {
        self.uri.clone()
    }
    fn is_same_uri(&self, _other: &Uri) -> bool {
        true
    }
    fn method(&self) -> &Method {
        &GET
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// The response `Cache-Control` directives this module needs beyond the crate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `public`.
    pub public: bool,
    /// `private`.
    pub private: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (unqualified or qualified: either way, revalidate before reuse).
    pub no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`: never serve stale.
    pub must_revalidate: bool,
    /// `s-maxage` is present.
    pub s_maxage: bool,
    /// `stale-while-revalidate=N`, capped at [`MAX_STALE_WINDOW`].
    pub stale_while_revalidate: Duration,
    /// `stale-if-error=N`, capped at [`MAX_STALE_WINDOW`].
    pub stale_if_error: Duration,
}

impl Directives {
    /// Parses every `Cache-Control` field line of a response; unknown directives are ignored.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for v in headers.get_all(CACHE_CONTROL) {
            let Ok(s) = v.to_str() else { continue };
            for part in s.split(',') {
                let (name, value) = match part.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (part.trim(), None),
                };
                let secs = || {
                    value
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(Duration::ZERO, |s| {
                            Duration::from_secs(s).min(MAX_STALE_WINDOW)
                        })
                };
                match name.to_ascii_lowercase().as_str() {
                    "public" => d.public = true,
                    "private" => d.private = true,
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "s-maxage" => d.s_maxage = true,
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether a stored response may answer a request carrying `Authorization` (RFC 9111 §3.5).
    pub fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage || self.must_revalidate
    }

    /// Whether stale content may ever be served (RFC 9111 §4.2.4, §5.2.2.2).
    fn may_serve_stale(&self) -> bool {
        !self.must_revalidate && !self.no_cache
    }
}

/// When a stored response stops being fresh, and how long after that it may still be served, in monotonic time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// When the response was received.
    pub stored_at: Instant,
    /// Its age then (the upstream's `Age` plus the crate's corrections).
    pub age_at_store: Duration,
    /// How long after `stored_at` it stays fresh (zero: always revalidate).
    pub fresh_for: Duration,
    /// `stale-while-revalidate` window after `fresh_for` (zero when stale use is forbidden).
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` window after `fresh_for` (zero when stale use is forbidden).
    pub stale_if_error: Duration,
}

impl Freshness {
    fn new(policy: &CachePolicy, d: &Directives, received: SystemTime, at: Instant) -> Self {
        let fresh_for = policy.time_to_live(received);
        // A response that is already stale on arrival has an unknown staleness (the crate only reports the
        // remaining lifetime), so it gets no stale windows: never serve content older than we can tell.
        let (swr, sie) = if d.may_serve_stale() && fresh_for > Duration::ZERO {
            (d.stale_while_revalidate, d.stale_if_error)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        Freshness {
            stored_at: at,
            age_at_store: policy.age(received),
            fresh_for,
            stale_while_revalidate: swr,
            stale_if_error: sie,
        }
    }

    /// Time since the response was received.
    pub fn resident(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// The `Age` to send, whole seconds.
    pub fn age_secs(&self, now: Instant) -> u64 {
        (self.age_at_store + self.resident(now)).as_secs()
    }

    /// Fresh now.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.resident(now) < self.fresh_for
    }

    /// Stale but inside the `stale-while-revalidate` window.
    pub fn within_swr(&self, now: Instant) -> bool {
        self.resident(now) < self.fresh_for + self.stale_while_revalidate
    }

    /// Stale but inside the `stale-if-error` window.
    pub fn within_sie(&self, now: Instant) -> bool {
        self.resident(now) < self.fresh_for + self.stale_if_error
    }
}

/// What to do with a response from upstream.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) policy: CachePolicy,
    pub(crate) directives: Directives,
    pub(crate) freshness: Freshness,
    /// May be stored (and later served to other requests).
    pub(crate) storable: bool,
    /// May be handed to the requests that waited on this fetch (coalesced followers).
    pub(crate) shareable: bool,
    /// Why not storable, for `Cache-Status; detail=`.
    pub(crate) reason: &'static str,
    /// The selecting headers, if any.
    pub(crate) vary: VaryKind,
}

fn has_validators(h: &HeaderMap) -> bool {
    h.contains_key(ETAG) || h.contains_key(LAST_MODIFIED)
}

/// Decides storability and sharing of a fresh upstream response to the GET `req`.
pub(crate) fn decide(
    req: &ReqView<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    received: SystemTime,
    at: Instant,
) -> Decision {
    let res = ResParts { status, headers };
    let policy = CachePolicy::new_options(req, &res, received, CacheOptions::default());
    let directives = Directives::parse(headers);
    let freshness = Freshness::new(&policy, &directives, received, at);
    let vary = parse_vary(headers);
    let authorized = req.headers.contains_key(AUTHORIZATION);
    let (storable, reason) = if directives.no_store {
        (false, "no-store")
    } else if directives.private {
        (false, "private")
    } else if authorized && !directives.allows_authorized() {
        (false, "authorization")
    } else if vary == VaryKind::Uncacheable {
        (false, "vary")
    } else if !policy.is_storable() {
        (false, "not-storable")
    } else if freshness.fresh_for.is_zero()
        && !has_validators(headers)
        && freshness.stale_if_error.is_zero()
    {
        // Storable in theory, useless in practice: stale on arrival and impossible to revalidate.
        (false, "no-freshness")
    } else {
        (true, "")
    };
    // An error page nobody marked private is what every waiter would get from its own fetch a moment later;
    // handing it over spares the origin a thundering herd exactly when it is failing.
    let shareable = storable
        || (status.is_server_error()
            && !directives.private
            && !directives.no_store
            && !authorized
            && vary == VaryKind::None);
    Decision {
        policy,
        directives,
        freshness,
        storable,
        shareable,
        reason,
        vary,
    }
}

/// Rebuilds the policy of a response read back from a lower tier (`http-cache-semantics` is built without serde,
/// so the policy itself cannot be stored): a GET of the key's `path_and_query` for `host`, the stored status and
/// headers (with `age_secs`, the age at receipt, as `Age`, since stored heads carry none), received at
/// `received`. The original request's headers are gone, so a `Vary` response rebuilt here never matches in the
/// crate's full check (used for requests with `Cache-Control` or `Pragma`): it is revalidated instead, which is
/// safe, never wrong.
pub(crate) fn rebuild_policy(
    host: &str,
    path_and_query: &str,
    status: StatusCode,
    headers: &HeaderMap,
    age_secs: u64,
    received: SystemTime,
) -> Option<CachePolicy> {
    let uri: Uri = path_and_query.parse().ok()?;
    let mut req_headers = HeaderMap::new();
    req_headers.insert(http::header::HOST, http::HeaderValue::from_str(host).ok()?);
    let req = ReqView {
        uri: &uri,
        headers: &req_headers,
    };
    let mut res_headers = headers.clone();
    res_headers.insert(http::header::AGE, http::HeaderValue::from(age_secs));
    let res = ResParts {
        status,
        headers: &res_headers,
    };
    Some(CachePolicy::new_options(
        &req,
        &res,
        received,
        CacheOptions::default(),
    ))
}

/// Whether a stored response is fresh for `req` by the crate's full rules (used when the request carries
/// `Cache-Control` or `Pragma`, which may shorten or extend what is acceptable).
pub(crate) fn fresh_for_request(policy: &CachePolicy, req: &ReqView<'_>) -> bool {
    matches!(
        policy.before_request(req, SystemTime::now()),
        BeforeRequest::Fresh(_)
    )
}

/// Whether a request can take the precomputed fast path (no request directives to weigh).
pub(crate) fn plain_request(headers: &HeaderMap) -> bool {
    !headers.contains_key(CACHE_CONTROL) && !headers.contains_key(PRAGMA)
}

/// The outcome of merging a 304 into a stored response.
pub(crate) struct Refreshed {
    pub(crate) policy: CachePolicy,
    pub(crate) headers: HeaderMap,
    pub(crate) directives: Directives,
    pub(crate) freshness: Freshness,
}

/// RFC 9111 §4.3.4: a 304 refreshes the stored response it matches; `None` when it matches nothing.
pub(crate) fn refresh(
    stored: &CachePolicy,
    stored_headers: &HeaderMap,
    req: &ReqView<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    received: SystemTime,
    at: Instant,
) -> Option<Refreshed> {
    let res = ResParts { status, headers };
    match stored.after_response(req, &res, received) {
        AfterResponse::NotModified(policy, parts) => {
            // The crate rewrites Date in a non-HTTP format and adds Age; keep the stored fields, updated by the
            // 304's own values, and compute Age ourselves when serving.
            let mut merged = stored_headers.clone();
            for (name, value) in &parts.headers {
                if name == http::header::AGE || name == http::header::DATE {
                    continue;
                }
                merged.insert(name.clone(), value.clone());
            }
            if let Some(date) = headers.get(http::header::DATE) {
                merged.insert(http::header::DATE, date.clone());
            }
            let directives = Directives::parse(&merged);
            let freshness = Freshness::new(&policy, &directives, received, at);
            Some(Refreshed {
                policy,
                headers: merged,
                directives,
                freshness,
            })
        }
        AfterResponse::Modified(..) => None,
    }
}

/// A response head as the crate sees it.
struct ResParts<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
}

impl http_cache_semantics::ResponseLike for ResParts<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn head(cc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
        h.insert(ETAG, HeaderValue::from_static("\"x\""));
        h
    }

    fn decide_for(req_headers: &HeaderMap, cc: &str) -> Decision {
        let uri: Uri = "/a".parse().unwrap();
        let req = ReqView {
            uri: &uri,
            headers: req_headers,
        };
        decide(
            &req,
            StatusCode::OK,
            &head(cc),
            SystemTime::now(),
            Instant::now(),
        )
    }

    #[test]
    fn storability() {
        let none = HeaderMap::new();
        assert!(decide_for(&none, "public, max-age=60").storable);
        assert!(decide_for(&none, "max-age=60").storable);
        let d = decide_for(&none, "no-store");
        assert!(!d.storable && !d.shareable && d.reason == "no-store");
        let d = decide_for(&none, "private, max-age=60");
        assert!(!d.storable && d.reason == "private");
        let mut auth = HeaderMap::new();
        auth.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(!decide_for(&auth, "max-age=60").storable);
        assert!(decide_for(&auth, "public, max-age=60").storable);
        assert!(decide_for(&auth, "s-maxage=60").storable);
    }

    #[test]
    fn freshness_and_stale_windows() {
        let none = HeaderMap::new();
        let d = decide_for(&none, "public, max-age=5, s-maxage=60");
        assert_eq!(d.freshness.fresh_for, Duration::from_secs(60));
        let d = decide_for(&none, "public, max-age=1, stale-while-revalidate=30");
        assert_eq!(d.freshness.fresh_for, Duration::from_secs(1));
        assert_eq!(d.freshness.stale_while_revalidate, Duration::from_secs(30));
        let later = d.freshness.stored_at + Duration::from_secs(2);
        assert!(!d.freshness.is_fresh(later));
        assert!(d.freshness.within_swr(later));
        assert!(!d.freshness.within_sie(later));
        let d = decide_for(&none, "max-age=1, must-revalidate, stale-if-error=60");
        assert!(d.freshness.stale_if_error.is_zero());
        let d = decide_for(&none, "no-cache");
        assert!(d.storable);
        assert!(d.freshness.fresh_for.is_zero());
    }
}
