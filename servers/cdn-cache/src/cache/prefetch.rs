//! Predictive prefetch for sequential objects (`/video/{id}/seg-{n}.ts`): a client GET of segment `n` fetches
//! segments `n+1 ..= n+k` in the background, so a player reading ahead finds them stored.
//!
//! - **Trigger**: a client GET (not HEAD, not itself a prefetch: prefetches carry [`PREFETCH_HEADER`], so a shield
//!   behind an edge does not extend the edge's window) without a query, whose path is under a prefetch prefix and
//!   whose last component is `seg-{n}.{ext}` (`n`: 1 to [`MAX_SEGMENT_DIGITS`] decimal digits, no sign; `ext`: 1 to
//!   [`MAX_EXT_LEN`] ASCII letters or digits). A request with a query does not trigger: the following segments would
//!   carry a query we cannot guess, so a query-less prefetch would never be used. Zero-padded numbers keep their
//!   width (`seg-009.ts` → `seg-010.ts`). A hit triggers as well as a miss.
//! - **Cost on the request**: the trigger does only non-blocking work (parse, one memory-tier `contains` and one
//!   disk-index `contains` per candidate, a semaphore `try_acquire`, a coalescer registration, a spawn), at most
//!   `k` ≤ [`MAX_PREFETCH_SEGMENTS`] times; it never awaits, so the client's request is not held up.
//! - **Fetch**: through the same coalesced fetch as a miss (the prefetch registers as the key's leader), so a client
//!   request for a segment being prefetched joins it and causes no second upstream fetch. The response is stored by
//!   the same RFC 9111 rules, except that a prefetch stores only 2xx answers and leaves no hit-for-pass marker: a
//!   404 past the last segment is counted `failed` and nothing is stored.
//! - **Bounds**: at most `max_inflight` prefetches at once (a semaphore; when full, new ones are dropped and counted
//!   `dropped_full`, never queued); candidates already stored (memory or disk) or in flight are skipped. Each fetch
//!   is bounded by the tier's connect, head and idle-body timeouts, and every prefetch task stops as soon as the
//!   tier's shutdown fires (its waiters, if any, get an error and fetch on their own).
//!
//! # Precision
//! An object stored by a prefetch carries a [`PrefetchMark`]. The first client request that finds it in memory (a
//! hit, or a stale lookup that revalidates it), or that joined the prefetch's fetch while it ran, counts `used`; if it
//! leaves the memory tier still unused (evicted, replaced or purged) it counts `evicted_unused`. Each stored
//! prefetch ends in exactly one of the two (one atomic state per object), so
//! `stored = used + evicted_unused + (prefetched objects still in memory, unused)`, and
//! `precision = used / (used + evicted_unused)`.
//!
//! An object evicted from memory to the disk tier counts as `evicted_unused` at that moment and is not marked on
//! disk: precision measures the memory tier, where a prefetch is meant to land, and a later disk hit is an ordinary
//! disk hit (the mark does not survive encoding, and counting it would mix the two tiers' benefits).
//!
//! Reported as `cdn_cache_prefetch_total{tier, outcome}` (see [`Outcome`]) and as the `prefetch` object of the
//! admin `GET /stats`.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue};
use refbench_common::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most segments fetched ahead per request (`--prefetch-segments`).
pub const MAX_PREFETCH_SEGMENTS: usize = 16;
/// Most prefetches in flight accepted by `--prefetch-max-inflight`.
pub const MAX_PREFETCH_INFLIGHT: usize = 4096;
/// Default of `--prefetch-max-inflight`.
pub const DEFAULT_PREFETCH_MAX_INFLIGHT: usize = 64;
/// Most prefixes in `--prefetch-prefix`; matching is a linear scan per GET.
pub const MAX_PREFETCH_PREFIXES: usize = 16;
/// Longest prefix, bytes.
pub const MAX_PREFETCH_PREFIX_LEN: usize = 256;
/// Most digits of a segment number (so `n + k` never overflows and the number is a plausible index).
pub const MAX_SEGMENT_DIGITS: usize = 9;
/// Longest segment file extension, bytes.
pub const MAX_EXT_LEN: usize = 16;

/// Request header on every prefetch: a tier receiving it (a shield behind an edge) serves and stores the request
/// normally but does not prefetch from it.
pub const PREFETCH_HEADER: HeaderName = HeaderName::from_static("x-refbench-prefetch");

/// What happened to prefetches; the `outcome` label of `cdn_cache_prefetch_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A background fetch was started.
    Issued,
    /// Its response was stored in the memory tier (marked).
    Stored,
    /// It completed with a 2xx the rules do not allow storing (or the memory tier refused it, or a purge
    /// intervened).
    NotStored,
    /// A stored prefetched object served a client (or a client joined the prefetch's fetch).
    Used,
    /// A stored prefetched object left the memory tier before any client used it.
    EvictedUnused,
    /// Not started: already stored (memory or disk).
    SkippedCached,
    /// Not started: a fetch for the key is already in flight.
    SkippedInflight,
    /// Not started: `max_inflight` prefetches (or the tier's `max_inflight_keys` fetches) were already in flight.
    DroppedFull,
    /// The upstream answered a non-2xx status, or the fetch failed: nothing stored.
    Failed,
    /// Stopped by the tier's shutdown.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 10] = [
        Outcome::Issued,
        Outcome::Stored,
        Outcome::NotStored,
        Outcome::Used,
        Outcome::EvictedUnused,
        Outcome::SkippedCached,
        Outcome::SkippedInflight,
        Outcome::DroppedFull,
        Outcome::Failed,
        Outcome::Cancelled,
    ];

    /// The label value and `/stats` field name.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Stored => "stored",
            Outcome::NotStored => "not_stored",
            Outcome::Used => "used",
            Outcome::EvictedUnused => "evicted_unused",
            Outcome::SkippedCached => "skipped_cached",
            Outcome::SkippedInflight => "skipped_inflight",
            Outcome::DroppedFull => "dropped_full",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Per-tier prefetch counts: atomics for `/stats` (exact for this tier, whatever else shares the process's metrics
/// recorder) and the matching Prometheus counters.
#[derive(Debug)]
pub(crate) struct Counts {
    values: [AtomicU64; Outcome::ALL.len()],
    counters: [metrics::Counter; Outcome::ALL.len()],
}

impl Counts {
    pub(crate) fn new(tier: &str) -> Self {
        Counts {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            counters: Outcome::ALL.map(|o| {
                metrics::counter!("cdn_cache_prefetch_total", "tier" => tier.to_string(), "outcome" => o.name())
            }),
        }
    }

    pub(crate) fn count(&self, o: Outcome) {
        self.values[o as usize].fetch_add(1, Ordering::Relaxed);
        self.counters[o as usize].increment(1);
    }

    pub(crate) fn get(&self, o: Outcome) -> u64 {
        self.values[o as usize].load(Ordering::Relaxed)
    }
}

/// A prefetch's fetch is running and no client has joined it.
const PENDING: u8 = 0;
/// A client joined the running fetch: the prefetch counts `used` once its result is stored.
const JOINED: u8 = 1;
/// Stored in memory, not used yet.
const STORED: u8 = 2;
/// Accounted for (used, evicted unused, or never stored).
const DONE: u8 = 3;

/// The mark of an object fetched by a prefetch, shared by the fetch in flight and the stored entry. Its one atomic
/// state makes `used` and `evicted_unused` mutually exclusive and each counted at most once, whichever of a hit, a
/// joining client, an eviction or the fetch's own store comes first.
#[derive(Debug)]
pub struct PrefetchMark(AtomicU8);

impl PrefetchMark {
    pub(crate) fn new() -> Self {
        PrefetchMark(AtomicU8::new(PENDING))
    }

    fn step(&self, from: u8, to: u8) -> bool {
        self.0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A client joined the prefetch's fetch; true when this counts `used` now (the result was stored already),
    /// false when the fetch will count it when it stores.
    pub(crate) fn join(&self) -> bool {
        !self.step(PENDING, JOINED) && self.step(STORED, DONE)
    }

    /// Called by the fetch just before it stores the object: true when a client joined meanwhile (count `used` once
    /// the store succeeds; the object is then stored unmarked in effect).
    pub(crate) fn arm(&self) -> bool {
        if self.step(PENDING, STORED) {
            return false;
        }
        self.step(JOINED, DONE)
    }

    /// The store did not happen: nothing to account for later.
    pub(crate) fn disarm(&self) {
        self.step(STORED, DONE);
    }

    /// A client request found the stored object; true the first time (count `used`).
    pub fn claim(&self) -> bool {
        self.0.load(Ordering::Relaxed) == STORED && self.step(STORED, DONE)
    }

    /// The object left the memory tier; true when it was still unused (count `evicted_unused`).
    pub(crate) fn evict(&self) -> bool {
        self.step(STORED, DONE)
    }
}

/// The validated prefetch settings of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Segments fetched ahead (0 = off).
    pub segments: usize,
    /// Path prefixes whose segments are prefetched.
    pub prefixes: Vec<String>,
    /// Most prefetches in flight.
    pub max_inflight: usize,
}

/// A segment request, split around its number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    /// Everything up to and including `seg-`.
    head: &'a str,
    /// The number.
    n: u64,
    /// Digits written (zero padding kept).
    width: usize,
    /// `.ext`.
    tail: &'a str,
}

impl Segment<'_> {
    /// The path of the segment `i` after this one.
    pub(crate) fn next(&self, i: u64) -> String {
        format!(
            "{}{:0width$}{}",
            self.head,
            self.n + i,
            self.tail,
            width = self.width
        )
    }
}

/// Parses `path` (no query) as a segment under one of `prefixes`.
pub(crate) fn parse_segment<'a>(path: &'a str, prefixes: &[String]) -> Option<Segment<'a>> {
    if !prefixes.iter().any(|p| path.starts_with(p.as_str())) {
        return None;
    }
    let file_at = path.rfind('/')? + 1;
    let file = &path[file_at..];
    let rest = file.strip_prefix("seg-")?;
    let dot = rest.find('.')?;
    let (digits, tail) = rest.split_at(dot);
    let ext = &tail[1..];
    if digits.is_empty()
        || digits.len() > MAX_SEGMENT_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || ext.is_empty()
        || ext.len() > MAX_EXT_LEN
        || !ext.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    let n = digits.parse().ok()?;
    Some(Segment {
        head: &path[..file_at + "seg-".len()],
        n,
        width: digits.len(),
        tail,
    })
}

/// One candidate: the URI to fetch (the client's scheme and authority, if it sent them, with the next segment's
/// path) and the headers of the shared fetch (the client's `Host`, and [`PREFETCH_HEADER`]).
pub(crate) fn candidate(
    client: &Uri,
    host: Option<&HeaderValue>,
    path: &str,
) -> Option<(Uri, HeaderMap)> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = client.scheme().cloned();
    parts.authority = client.authority().cloned();
    parts.path_and_query = Some(PathAndQuery::try_from(path).ok()?);
    let uri = Uri::from_parts(parts).ok()?;
    let mut headers = HeaderMap::with_capacity(2);
    if let Some(h) = host {
        headers.insert(HOST, h.clone());
    }
    headers.insert(PREFETCH_HEADER, HeaderValue::from_static("1"));
    Some((uri, headers))
}

/// The tier's prefetcher: settings, the in-flight bound, counts and the shutdown its tasks watch.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    pub(crate) cfg: PrefetchConfig,
    slots: Arc<Semaphore>,
    pub(crate) counts: Arc<Counts>,
    shutdown: OnceLock<Shutdown>,
}

impl Prefetcher {
    pub(crate) fn new(cfg: PrefetchConfig, counts: Arc<Counts>) -> Self {
        Prefetcher {
            slots: Arc::new(Semaphore::new(cfg.max_inflight.max(1))),
            cfg,
            counts,
            shutdown: OnceLock::new(),
        }
    }

    /// Whether requests trigger prefetches at all.
    pub(crate) fn enabled(&self) -> bool {
        self.cfg.segments > 0
    }

    /// Makes prefetch tasks stop when `shutdown` fires (set once, by `cache::start`).
    pub(crate) fn bind_shutdown(&self, shutdown: Shutdown) {
        let _ = self.shutdown.set(shutdown);
    }

    /// The shutdown to watch (`None` for a handler driven without `cache::start`).
    pub(crate) fn shutdown(&self) -> Option<Shutdown> {
        self.shutdown.get().cloned()
    }

    /// Whether the tier is shutting down (no new prefetches then).
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.get().is_some_and(Shutdown::is_triggered)
    }

    /// A slot for one more prefetch, or `None` when `max_inflight` are running.
    pub(crate) fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Prefetches running now.
    pub(crate) fn inflight(&self) -> usize {
        self.cfg.max_inflight.max(1) - self.slots.available_permits()
    }

    /// The `prefetch` object of `/stats`.
    pub(crate) fn stats(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("segments".into(), json!(self.cfg.segments));
        m.insert("prefixes".into(), json!(self.cfg.prefixes));
        m.insert("max_inflight".into(), json!(self.cfg.max_inflight));
        m.insert("inflight".into(), json!(self.inflight()));
        for o in Outcome::ALL {
            m.insert(o.name().into(), json!(self.counts.get(o)));
        }
        let used = self.counts.get(Outcome::Used);
        let unused = self.counts.get(Outcome::EvictedUnused);
        let precision = if used + unused == 0 {
            Value::Null
        } else {
            json!(used as f64 / (used + unused) as f64)
        };
        m.insert("precision".into(), precision);
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> Vec<String> {
        vec!["/video/".to_string()]
    }

    #[test]
    fn segments_parse_and_step() {
        let s = parse_segment("/video/abc/seg-7.ts", &video()).unwrap();
        assert_eq!(s.next(1), "/video/abc/seg-8.ts");
        assert_eq!(s.next(3), "/video/abc/seg-10.ts");
        let s = parse_segment("/video/a/b/seg-009.m4s", &video()).unwrap();
        assert_eq!(s.next(1), "/video/a/b/seg-010.m4s");
        assert_eq!(s.next(991), "/video/a/b/seg-1000.m4s");
        for bad in [
            "/other/abc/seg-1.ts",
            "/video/abc/seg-.ts",
            "/video/abc/seg-+1.ts",
            "/video/abc/seg--1.ts",
            "/video/abc/seg-1",
            "/video/abc/seg-1.",
            "/video/abc/seg-1.t/s",
            "/video/abc/seg-1.t-s",
            "/video/abc/seg-1234567890.ts",
            "/video/abc/part-1.ts",
            "/video/seg-1.ts/x",
        ] {
            assert!(parse_segment(bad, &video()).is_none(), "{bad}");
        }
        assert!(parse_segment("/video/seg-1.ts", &video()).is_some());
    }

    #[test]
    fn a_mark_is_used_or_evicted_once() {
        // Hit first, then eviction: used only.
        let m = PrefetchMark::new();
        assert!(!m.arm());
        assert!(m.claim());
        assert!(!m.claim());
        assert!(!m.evict());
        // Eviction first: unused only.
        let m = PrefetchMark::new();
        assert!(!m.arm());
        assert!(m.evict());
        assert!(!m.claim());
        // A client joined during the fetch: the store counts it, nothing later does.
        let m = PrefetchMark::new();
        assert!(!m.join());
        assert!(m.arm());
        assert!(!m.claim());
        assert!(!m.evict());
        // A client joined between the store and the fetch's end: counted by the join.
        let m = PrefetchMark::new();
        assert!(!m.arm());
        assert!(m.join());
        assert!(!m.evict());
        // Not stored: nothing afterwards.
        let m = PrefetchMark::new();
        assert!(!m.arm());
        m.disarm();
        assert!(!m.claim() && !m.evict());
    }

    #[test]
    fn candidates_keep_the_clients_authority_and_host() {
        let client: Uri = "/video/a/seg-1.ts".parse().unwrap();
        let host = HeaderValue::from_static("cdn.test");
        let (uri, h) = candidate(&client, Some(&host), "/video/a/seg-2.ts").unwrap();
        assert_eq!(uri, "/video/a/seg-2.ts");
        assert_eq!(h[HOST], "cdn.test");
        assert_eq!(h[PREFETCH_HEADER], "1");
        let client: Uri = "http://cdn.test/video/a/seg-1.ts".parse().unwrap();
        let (uri, _) = candidate(&client, None, "/video/a/seg-2.ts").unwrap();
        assert_eq!(uri, "http://cdn.test/video/a/seg-2.ts");
    }
}
