//! Predictive prefetch over loopback sockets, in front of the real synthetic origin (its `/video/` rule: segments
//! `{id}/seg-{0..100}.ts` of 256 KiB, 404 beyond): sequential reads hit, each segment is fetched from the origin
//! once, the end of a video is counted as failed and not stored, prefetch is off by default, a client joins a
//! prefetch in flight instead of fetching again, unused prefetches evicted from a small memory tier lower the
//! precision, and the in-flight bound drops rather than queues.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use refbench_cdn::cache::{self, Role, TierConfig};
use refbench_cdn::origin::OriginConfig;
use serde_json::Value;

mod common;

use common::{Got, HOST, Origin, PROMPT, Tier, read, start_tier, tier_config};

/// The edge's `Cache-Status` member name.
const EDGE: &str = "refbench-edge";

async fn start_origin() -> Origin {
    common::start_origin(OriginConfig::default()).await
}

impl Tier {
    /// Waits (polling, bounded by [`PROMPT`]) until no prefetch and no fetch is running.
    async fn settle(&self) {
        let app = &self.started.app;
        eventually("prefetches and fetches to finish", || {
            app.prefetch_inflight() == 0 && app.inflight() == 0
        })
        .await;
    }
    async fn prefetch_stats(&self) -> Value {
        let stats = admin(self.admin(), Method::GET, "/stats", Bytes::new()).await;
        stats["prefetch"].clone()
    }
}

/// An edge straight in front of `origin` with `k` segments of prefetch.
fn edge_config(origin: &Origin, k: usize) -> TierConfig {
    TierConfig {
        prefetch_segments: k,
        ..tier_config(Role::Edge, vec![origin.url()])
    }
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after [`PROMPT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    body: Bytes,
) -> hyper::Response<Incoming> {
    common::send(addr, method, target, HOST, &[], body)
        .await
        .expect("response")
}

async fn get(addr: SocketAddr, target: &str) -> Got {
    read(send(addr, Method::GET, target, Bytes::new()).await).await
}

async fn admin(addr: SocketAddr, method: Method, target: &str, body: Bytes) -> Value {
    let r = send(addr, method, target, body).await;
    assert_eq!(r.status(), StatusCode::OK, "{target}");
    let b = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

fn count(p: &Value, outcome: &str) -> u64 {
    p[outcome]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {outcome} in {p}"))
}

fn seg(video: &str, n: u64) -> String {
    format!("/video/{video}/seg-{n}.ts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_segments_hit_after_the_first_miss_and_are_fetched_once() {
    let o = start_origin().await;
    let edge = start_tier(edge_config(&o, 3)).await;
    for n in 0..10 {
        let target = seg("seq", n);
        let got = get(edge.http(), &target).await;
        assert_eq!(got.status, StatusCode::OK, "{target}");
        assert_eq!(got.body, o.expected(&target, &HeaderMap::new()), "{target}");
        let st = got.status_of(EDGE);
        if n == 0 {
            assert!(st.contains("fwd=uri-miss") && st.contains("stored"), "{st}");
        } else {
            assert!(
                st.starts_with("refbench-edge; hit") && st.contains("detail=prefetch"),
                "{target}: {st}"
            );
        }
        // The next read comes after this one's prefetches landed (a player reads at the media's pace).
        edge.settle().await;
    }
    // seg-0 by the client, seg-1 ..= seg-12 by prefetches (the last three are still unused).
    for n in 0..13 {
        assert_eq!(o.fetches(&seg("seq", n)), 1, "origin fetches of seg-{n}");
        assert!(edge.stored(&seg("seq", n)), "seg-{n} stored");
    }
    assert_eq!(o.fetches(&seg("seq", 13)), 0);
    let p = edge.prefetch_stats().await;
    assert_eq!(count(&p, "issued"), 12, "{p}");
    assert_eq!(count(&p, "stored"), 12, "{p}");
    assert_eq!(count(&p, "used"), 9, "{p}");
    assert_eq!(count(&p, "evicted_unused"), 0, "{p}");
    // Each request after the first finds two of its next three stored already.
    assert_eq!(count(&p, "skipped_cached"), 18, "{p}");
    assert_eq!(count(&p, "failed"), 0, "{p}");
    assert_eq!(p["segments"], 3, "{p}");
    assert_eq!(p["precision"].as_f64(), Some(1.0), "{p}");

    // A second hit on a used object is not counted again.
    let again = get(edge.http(), &seg("seq", 5)).await;
    assert!(again.status_of(EDGE).contains("hit"));
    edge.settle().await;
    assert_eq!(
        edge.started
            .app
            .prefetch_count(cache::PrefetchOutcome::Used),
        9
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_prefetch_past_the_last_segment_counts_failed_and_stores_nothing() {
    let o = start_origin().await;
    let edge = start_tier(edge_config(&o, 3)).await;
    let got = get(edge.http(), &seg("end", 98)).await;
    assert_eq!(got.status, StatusCode::OK);
    edge.settle().await;

    let p = edge.prefetch_stats().await;
    assert_eq!(count(&p, "issued"), 3, "{p}");
    assert_eq!(count(&p, "stored"), 1, "{p}");
    assert_eq!(count(&p, "failed"), 2, "{p}");
    assert!(edge.stored(&seg("end", 99)));
    // Neither an object nor a hit-for-pass marker for the 404s.
    assert!(!edge.stored(&seg("end", 100)));
    assert!(!edge.stored(&seg("end", 101)));
    assert_eq!(o.fetches(&seg("end", 99)), 1);

    // A client asking for the missing segment goes upstream as for any miss and gets the origin's 404.
    let missing = get(edge.http(), &seg("end", 100)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let st = missing.status_of(EDGE);
    assert!(st.contains("fwd=uri-miss") && !st.contains("hit"), "{st}");
}

#[tokio::test(flavor = "current_thread")]
async fn prefetch_is_off_by_default() {
    let o = start_origin().await;
    let cfg = TierConfig {
        role: Role::Edge,
        upstreams: vec![o.url()],
        ..TierConfig::default()
    };
    assert_eq!(cfg.prefetch_segments, 0);
    let edge = start_tier(cfg).await;
    for n in 0..5 {
        let got = get(edge.http(), &seg("off", n)).await;
        assert_eq!(got.status, StatusCode::OK);
        let st = got.status_of(EDGE);
        assert!(st.contains("fwd=uri-miss"), "seg-{n}: {st}");
        edge.settle().await;
    }
    assert_eq!(o.started.app.fetches().total(), 5);
    assert_eq!(o.fetches(&seg("off", 5)), 0);
    assert!(!edge.stored(&seg("off", 5)));
    let p = edge.prefetch_stats().await;
    for outcome in ["issued", "stored", "used", "skipped_cached", "dropped_full"] {
        assert_eq!(count(&p, outcome), 0, "{outcome}: {p}");
    }
    assert!(p["precision"].is_null(), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_segment_being_prefetched_joins_that_fetch() {
    let o = start_origin().await;
    // Only seg-1 is slow, so its prefetch is still in flight when the client asks for it.
    let inject = br#"[{"prefix": "/video/join/seg-1.ts", "latency_fixed_ms": 1500}]"#;
    admin(
        o.started.admin_addr,
        Method::PUT,
        "/inject",
        Bytes::from_static(inject),
    )
    .await;
    let edge = start_tier(edge_config(&o, 2)).await;

    let first = get(edge.http(), &seg("join", 0)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        edge.started.app.prefetch_inflight() >= 1 && !edge.stored(&seg("join", 1)),
        "seg-1's prefetch should still be waiting for the origin"
    );

    let target = seg("join", 1);
    let joined = get(edge.http(), &target).await;
    assert_eq!(joined.status, StatusCode::OK);
    assert_eq!(joined.body, o.expected(&target, &HeaderMap::new()));
    let st = joined.status_of(EDGE);
    assert!(
        st.contains("collapsed") && st.contains("detail=prefetch"),
        "{st}"
    );
    edge.settle().await;
    assert_eq!(o.fetches(&target), 1, "one origin fetch for seg-1");
    assert!(edge.stored(&target));
    let p = edge.prefetch_stats().await;
    assert_eq!(count(&p, "used"), 1, "{p}");

    // Later reads of seg-1 are plain hits, and the prefetch is not counted as used twice.
    let hit = get(edge.http(), &target).await;
    assert!(hit.status_of(EDGE).contains("hit"), "{:?}", hit.headers);
    edge.settle().await;
    assert_eq!(o.fetches(&target), 1);
    assert_eq!(count(&edge.prefetch_stats().await, "used"), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn unused_prefetches_evicted_from_a_small_memory_tier_lower_the_precision() {
    let o = start_origin().await;
    // 1 MiB holds three 256 KiB segments (plus overhead): eight prefetched ones cannot all stay.
    let edge = start_tier(TierConfig {
        memory_bytes: 1024 * 1024,
        shards: 1,
        max_object_bytes: 512 * 1024,
        ..edge_config(&o, 8)
    })
    .await;
    let got = get(edge.http(), &seg("small", 0)).await;
    assert_eq!(got.status, StatusCode::OK);
    edge.settle().await;
    let p = edge.prefetch_stats().await;
    assert_eq!(count(&p, "stored"), 8, "{p}");
    assert!(count(&p, "evicted_unused") >= 4, "{p}");
    assert_eq!(count(&p, "used"), 0, "{p}");
    assert_eq!(p["precision"].as_f64(), Some(0.0), "{p}");

    // Use one that is still resident.
    let resident = (1..=8)
        .map(|n| seg("small", n))
        .find(|t| edge.stored(t))
        .expect("some prefetched segment is still in memory");
    let hit = get(edge.http(), &resident).await;
    let st = hit.status_of(EDGE);
    assert!(st.contains("hit") && st.contains("detail=prefetch"), "{st}");
    edge.settle().await;

    let p = edge.prefetch_stats().await;
    let used = count(&p, "used");
    let unused = count(&p, "evicted_unused");
    assert_eq!(used, 1, "{p}");
    assert!(used + unused <= count(&p, "stored"), "{p}");
    let precision = p["precision"].as_f64().expect("precision");
    assert!(precision > 0.0 && precision < 1.0, "{p}");
    assert!(
        (precision - used as f64 / (used + unused) as f64).abs() < 1e-9,
        "{p}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn prefetches_beyond_the_inflight_bound_are_dropped_not_queued() {
    let o = start_origin().await;
    let inject = br#"[{"prefix": "/video/bound/", "latency_fixed_ms": 300}]"#;
    admin(
        o.started.admin_addr,
        Method::PUT,
        "/inject",
        Bytes::from_static(inject),
    )
    .await;
    let edge = start_tier(TierConfig {
        prefetch_max_inflight: 1,
        ..edge_config(&o, 4)
    })
    .await;
    let got = get(edge.http(), &seg("bound", 0)).await;
    assert_eq!(got.status, StatusCode::OK);
    edge.settle().await;
    let p = edge.prefetch_stats().await;
    assert_eq!(count(&p, "issued"), 1, "{p}");
    assert_eq!(count(&p, "dropped_full"), 3, "{p}");
    assert_eq!(o.fetches(&seg("bound", 2)), 0);
}
