//! The cache tier over loopback sockets, in front of the real synthetic origin: hits and misses, coalescing,
//! edge → shield → origin, RFC 9111 rules, stale serving, revalidation, invalidation, purges and broken bodies.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use refbench_cdn::cache::{CacheKey, Role, TierConfig};
use refbench_cdn::origin::{Injection, OriginConfig, Rule, default_rules};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::{Got, HOST, PROMPT, Tier, read, start_origin, start_tier, tier_config};

/// The default rules plus `/auth/` (cacheable, but not explicitly shareable with authorized requests).
fn origin_config() -> OriginConfig {
    let mut rules = default_rules();
    let last = rules.len() - 1;
    rules.insert(
        last,
        Rule {
            prefix: "/auth/".into(),
            cache_control: Some("max-age=60".into()),
            ..Rule::default()
        },
    );
    OriginConfig {
        rules,
        ..OriginConfig::default()
    }
}

async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    common::send(addr, method, target, HOST, headers, Bytes::new()).await
}

async fn request(addr: SocketAddr, method: Method, target: &str, headers: &[(&str, &str)]) -> Got {
    read(send(addr, method, target, headers).await.expect("response")).await
}

async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Got {
    request(addr, Method::GET, target, headers).await
}

async fn admin_post(addr: SocketAddr, target: &str) -> Value {
    let r = send(addr, Method::POST, target, &[]).await.expect("admin");
    assert_eq!(r.status(), StatusCode::OK);
    let b = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

#[tokio::test(flavor = "current_thread")]
async fn miss_then_hit_byte_exact_with_cache_status_and_age() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let target = "/static/a.js?size=150000";

    let miss = get(edge.http(), target, &[]).await;
    assert_eq!(miss.status, StatusCode::OK);
    let st = miss.status_of("refbench-edge");
    assert!(
        st.contains("fwd=uri-miss") && st.contains("fwd-status=200") && st.contains("stored"),
        "{st}"
    );
    assert_eq!(miss.body, o.expected(target, &no_headers()));
    assert_eq!(miss.body.len(), 150_000);

    let hit = get(edge.http(), target, &[]).await;
    assert_eq!(hit.status, StatusCode::OK);
    let st = hit.status_of("refbench-edge");
    assert!(st.starts_with("refbench-edge; hit; ttl="), "{st}");
    assert!(hit.header("age").parse::<u64>().unwrap() < 5);
    assert_eq!(hit.header("content-length"), "150000");
    assert_eq!(hit.body, miss.body);
    assert_eq!(o.fetches(target), 1);

    // HEAD shares GET's object; a matching If-None-Match gets a 304 from the cache.
    let head = request(edge.http(), Method::HEAD, target, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "150000");
    let etag = hit.header("etag").to_string();
    let nm = get(edge.http(), target, &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    assert!(nm.body.is_empty());
    assert_eq!(o.fetches(target), 1);

    // Expires-only freshness (RFC 9111 §4.2.1) is honoured too.
    let e1 = get(edge.http(), "/expires/a", &[]).await;
    assert!(
        e1.status_of("refbench-edge").contains("stored"),
        "{:?}",
        e1.headers
    );
    let e2 = get(edge.http(), "/expires/a", &[]).await;
    assert!(
        e2.status_of("refbench-edge").contains("hit"),
        "{:?}",
        e2.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_misses_cause_one_origin_fetch() {
    let o = start_origin(origin_config()).await;
    // The origin answers slowly, so every request arrives while the first fetch is in flight.
    o.inject(vec![Injection {
        prefix: "/slow/".into(),
        latency_fixed_ms: 300,
        ..Injection::default()
    }]);
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let target = "/slow/cold?size=200000";
    let n = 250;
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = edge.http();
        tasks.push(tokio::spawn(async move { get(addr, target, &[]).await }));
    }
    let expected = o.expected(target, &no_headers());
    let mut collapsed = 0;
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, expected);
        let st = got.status_of("refbench-edge");
        if st.contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(o.fetches(target), 1, "exactly one origin fetch");
    assert!(collapsed >= n / 2, "{collapsed} of {n} collapsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_to_two_shields_fetches_each_key_through_one_shield() {
    let o = start_origin(origin_config()).await;
    let s1 = start_tier(TierConfig {
        name: Some("shield-1".into()),
        ..tier_config(Role::Shield, vec![o.url()])
    })
    .await;
    let s2 = start_tier(TierConfig {
        name: Some("shield-2".into()),
        ..tier_config(Role::Shield, vec![o.url()])
    })
    .await;
    let shields = vec![s1.url(), s2.url()];
    let e1 = start_tier(tier_config(Role::Edge, shields.clone())).await;
    let e2 = start_tier(tier_config(Role::Edge, shields)).await;

    // Cold keys, all at once through both edges: one origin fetch per key across all four tiers.
    let keys: Vec<String> = (0..24).map(|i| format!("/obj/{i}?size=3000")).collect();
    let mut tasks = Vec::new();
    for k in &keys {
        for edge in [e1.http(), e2.http()] {
            for _ in 0..4 {
                let k = k.clone();
                tasks.push(tokio::spawn(async move { get(edge, &k, &[]).await }));
            }
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    let (mut on1, mut on2) = (0, 0);
    for k in &keys {
        assert_eq!(o.fetches(k), 1, "{k}");
        let (a, b) = (s1.stored(k), s2.stored(k));
        assert!(a ^ b, "{k}: stored on exactly one shield ({a}, {b})");
        on1 += usize::from(a);
        on2 += usize::from(b);
        assert!(e1.stored(k) && e2.stored(k), "{k}");
    }
    assert!(on1 > 0 && on2 > 0, "both shields own keys: {on1} / {on2}");

    // A key purged from both edges comes back from its shield, not from the origin.
    let k = &keys[0];
    for e in [&e1, &e2] {
        admin_post(
            e.started.admin_addr,
            &format!("/purge?path={}", k.replace('?', "%3F")),
        )
        .await;
        assert!(!e.stored(k));
    }
    let again = get(e1.http(), k, &[]).await;
    let chain = again.header("cache-status").to_string();
    assert!(chain.contains("; hit"), "{chain}");
    assert!(
        chain.ends_with("fwd=uri-miss; fwd-status=200; stored")
            || chain.contains("refbench-edge; fwd=uri-miss"),
        "{chain}"
    );
    assert_eq!(o.fetches(k), 1);
    assert_eq!(again.body, o.expected(k, &no_headers()));
}

#[tokio::test(flavor = "current_thread")]
async fn no_store_private_and_authorization_are_not_stored() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    for (path, reason) in [("/nostore/a", "no-store"), ("/private/a", "private")] {
        let first = get(edge.http(), path, &[]).await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(
            first.status_of("refbench-edge").contains(reason),
            "{:?}",
            first.headers
        );
        let second = get(edge.http(), path, &[]).await;
        assert_eq!(second.body, first.body);
        assert!(!second.status_of("refbench-edge").contains("hit"));
        assert_eq!(o.fetches(path), 2, "{path} reached the origin twice");
        assert!(!edge.stored(path) || !second.status_of("refbench-edge").contains("stored"));
    }

    // RFC 9111 §3.5: a response to an authorized request is stored only when it says so.
    let auth = [("authorization", "Bearer secret")];
    get(edge.http(), "/auth/a", &auth).await;
    get(edge.http(), "/auth/a", &auth).await;
    assert_eq!(o.fetches("/auth/a"), 2);
    assert!(!edge.stored("/auth/a"));
    // Stored from an anonymous request, it is still not served to an authorized one.
    get(edge.http(), "/auth/a", &[]).await;
    assert!(edge.stored("/auth/a"));
    let r = get(edge.http(), "/auth/a", &auth).await;
    assert!(
        r.status_of("refbench-edge")
            .contains("detail=authorization"),
        "{:?}",
        r.headers
    );
    assert_eq!(o.fetches("/auth/a"), 4);
    // `public` allows both storing and serving.
    get(edge.http(), "/pub/a", &auth).await;
    let r = get(edge.http(), "/pub/a", &auth).await;
    assert!(
        r.status_of("refbench-edge").contains("hit"),
        "{:?}",
        r.headers
    );
    assert_eq!(o.fetches("/pub/a"), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn vary_keeps_variants_apart() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let path = "/vary/a";
    let variants: [&[(&str, &str)]; 3] = [
        &[("accept-encoding", "gzip")],
        &[("accept-encoding", "br")],
        &[],
    ];
    let mut bodies = Vec::new();
    for round in 0..2 {
        for v in variants {
            let got = get(edge.http(), path, v).await;
            let mut h = HeaderMap::new();
            for (n, val) in v {
                h.insert(*n, HeaderValue::from_str(val).unwrap());
            }
            assert_eq!(got.body, o.expected(path, &h), "variant {v:?}");
            let st = got.status_of("refbench-edge");
            if round == 1 {
                assert!(st.contains("hit"), "{st}");
            }
            bodies.push(got.body);
        }
    }
    assert_ne!(bodies[0], bodies[1]);
    assert_ne!(bodies[0], bodies[2]);
    assert_eq!(o.fetches("/vary/a accept-encoding=gzip"), 1);
    assert_eq!(o.fetches("/vary/a accept-encoding=br"), 1);
    assert_eq!(o.fetches("/vary/a accept-encoding="), 1);
    // Purging the URI removes every variant.
    admin_post(edge.started.admin_addr, "/purge?path=/vary/a").await;
    let got = get(edge.http(), path, &[("accept-encoding", "gzip")]).await;
    assert!(
        got.status_of("refbench-edge").contains("fwd=uri-miss"),
        "{:?}",
        got.headers
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stale_if_error_serves_stale_when_the_origin_fails_or_is_down() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let path = "/sie/a";
    let fresh = get(edge.http(), path, &[]).await;
    assert!(fresh.status_of("refbench-edge").contains("stored"));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    o.inject(vec![Injection {
        prefix: "/sie/".into(),
        fail_share: 1.0,
        fail_status: 503,
        ..Injection::default()
    }]);
    let stale = get(edge.http(), path, &[]).await;
    assert_eq!(stale.status, StatusCode::OK);
    let st = stale.status_of("refbench-edge");
    assert!(
        st.contains("fwd=stale")
            && st.contains("fwd-status=503")
            && st.contains("detail=stale-if-error"),
        "{st}"
    );
    assert_eq!(stale.body, fresh.body);

    // Origin host down (connections refused): still stale.
    o.inject(vec![]);
    o.started.app.set_listening(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stale = get(edge.http(), path, &[]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(
        stale.status_of("refbench-edge").contains("stale-if-error"),
        "{:?}",
        stale.headers
    );
    assert_eq!(stale.body, fresh.body);
    // Without a stored copy, the error is clear.
    let none = get(edge.http(), "/sie/never-seen", &[]).await;
    assert_eq!(none.status, StatusCode::BAD_GATEWAY);
    assert!(
        none.status_of("refbench-edge")
            .contains("detail=upstream-error")
    );
    o.started.app.set_listening(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let path = "/swr/a";
    let first = get(edge.http(), path, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Slow the refresh down so every stale request below overlaps it.
    o.inject(vec![Injection {
        prefix: "/swr/".into(),
        latency_fixed_ms: 300,
        ..Injection::default()
    }]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = edge.http();
        tasks.push(tokio::spawn(async move { get(addr, path, &[]).await }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            got.status_of("refbench-edge")
                .contains("detail=stale-while-revalidate"),
            "{:?}",
            got.headers
        );
        assert_eq!(got.body, first.body);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counts = o.started.app.fetches().get(path);
    assert_eq!(
        counts.fetches, 2,
        "exactly one background fetch: {counts:?}"
    );
    // Refreshed (a 304 merged into the stored response): fresh again.
    let after = get(edge.http(), path, &[]).await;
    let st = after.status_of("refbench-edge");
    assert!(st.starts_with("refbench-edge; hit; ttl="), "{st}");
    assert_eq!(after.body, first.body);
}

#[tokio::test(flavor = "current_thread")]
async fn revalidation_with_etag_gets_304_and_refreshes() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let path = "/nocache/a";
    let first = get(edge.http(), path, &[]).await;
    assert!(
        first.status_of("refbench-edge").contains("stored"),
        "{:?}",
        first.headers
    );
    let second = get(edge.http(), path, &[]).await;
    let st = second.status_of("refbench-edge");
    assert!(
        st.contains("fwd=stale") && st.contains("fwd-status=304"),
        "{st}"
    );
    assert_eq!(second.body, first.body);
    let counts = o.started.app.fetches().get(path);
    assert_eq!((counts.fetches, counts.not_modified), (2, 1), "{counts:?}");
    // A new version upstream replaces the stored one on the next revalidation.
    o.started.app.bump_version(path).unwrap();
    let third = get(edge.http(), path, &[]).await;
    assert!(third.status_of("refbench-edge").contains("fwd-status=200"));
    assert_eq!(third.body, o.expected(path, &no_headers()));
    assert_ne!(third.body, first.body);
}

#[tokio::test(flavor = "current_thread")]
async fn unsafe_methods_invalidate_and_purges_take_effect() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let admin = edge.started.admin_addr;
    for p in ["/static/x", "/p/a", "/p/b", "/q/c"] {
        get(edge.http(), p, &[]).await;
        assert!(edge.stored(p), "{p}");
    }
    for m in [Method::POST, Method::PUT, Method::DELETE] {
        let r = request(edge.http(), m.clone(), "/static/x", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{m}: the origin refuses, the cache forwards"
        );
        assert!(!edge.stored("/static/x"), "{m} invalidated");
        let again = get(edge.http(), "/static/x", &[]).await;
        assert!(again.status_of("refbench-edge").contains("fwd=uri-miss"));
    }
    assert_eq!(o.fetches("/static/x"), 4);

    let v = admin_post(admin, "/purge?path=/p/a").await;
    assert_eq!(v["purged"], 1, "{v}");
    assert!(!edge.stored("/p/a") && edge.stored("/p/b"));
    let v = admin_post(admin, &format!("/purge?prefix=/p/&host={HOST}")).await;
    assert_eq!(v["purged"], 1, "{v}");
    assert!(!edge.stored("/p/b") && edge.stored("/q/c"));
    assert!(
        get(edge.http(), "/q/c", &[])
            .await
            .status_of("refbench-edge")
            .contains("hit")
    );
    assert!(
        get(edge.http(), "/p/b", &[])
            .await
            .status_of("refbench-edge")
            .contains("uri-miss")
    );
    let v = admin_post(admin, "/purge?all=1").await;
    assert_eq!(v["all"], true);
    assert!(!edge.stored("/q/c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fetch_keeps_the_old_object_out() {
    let o = start_origin(origin_config()).await;
    o.inject(vec![Injection {
        prefix: "/slowp/".into(),
        latency_fixed_ms: 400,
        ..Injection::default()
    }]);
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let addr = edge.http();
    let inflight = tokio::spawn(async move { get(addr, "/slowp/a", &[]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let v = admin_post(edge.started.admin_addr, "/purge?prefix=/slowp/").await;
    assert_eq!(v["cancelled"], 1, "{v}");
    let got = inflight.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        !edge.stored("/slowp/a"),
        "a fetch started before the purge is not stored after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_hanging_mid_body_fails_waiters_and_stores_nothing() {
    let o = start_origin(origin_config()).await;
    o.inject(vec![Injection {
        prefix: "/hang/".into(),
        hang_after_bytes: Some(70_000),
        ..Injection::default()
    }]);
    let edge = start_tier(TierConfig {
        upstream_read_timeout_ms: 300,
        ..tier_config(Role::Edge, vec![o.url()])
    })
    .await;
    let target = "/hang/a?size=200000";
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let addr = edge.http();
        tasks.push(tokio::spawn(async move {
            let r = send(addr, Method::GET, target, &[]).await?;
            let status = r.status();
            let body = tokio::time::timeout(PROMPT, r.into_body().collect())
                .await
                .expect("ends in time");
            Ok::<_, hyper::Error>((status, body.is_ok()))
        }));
    }
    for t in tasks {
        // Either the head came and the body broke (never a complete-looking 200), or the connection was cut
        // before the head (an error here, which is fine too).
        if let Ok((status, complete)) = t.await.unwrap() {
            assert!(
                !(status == StatusCode::OK && complete),
                "a truncated body was presented as complete"
            );
        }
    }
    assert!(!edge.stored(target), "nothing stored");
    o.inject(vec![]);
    let good = get(edge.http(), target, &[]).await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.body, o.expected(target, &no_headers()));
    assert_eq!(o.fetches(target), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn oversized_headers_get_431_and_the_tier_keeps_serving() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let big = "x".repeat(20 * 1024);
    let r = send(edge.http(), Method::GET, "/a", &[("x-big", &big)]).await;
    match r {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // hyper may close before the client finished writing the head.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    let mut buf = vec![0u8; 1024];
    // Garbage gets a 400, and the tier still serves.
    let mut s = TcpStream::connect(edge.http()).await.unwrap();
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let n = tokio::time::timeout(PROMPT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
    assert_eq!(get(edge.http(), "/a", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_through_two_edges_and_two_shields_fetch_once() {
    let o = start_origin(origin_config()).await;
    o.inject(vec![Injection {
        prefix: "/slow/".into(),
        latency_fixed_ms: 300,
        ..Injection::default()
    }]);
    let s1 = start_tier(tier_config(Role::Shield, vec![o.url()])).await;
    let s2 = start_tier(tier_config(Role::Shield, vec![o.url()])).await;
    let shields = vec![s1.url(), s2.url()];
    let e1 = start_tier(tier_config(Role::Edge, shields.clone())).await;
    let e2 = start_tier(tier_config(Role::Edge, shields)).await;
    let target = "/slow/tiers?size=100000";
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let addr = if i % 2 == 0 { e1.http() } else { e2.http() };
        tasks.push(tokio::spawn(async move { get(addr, target, &[]).await }));
    }
    let expected = o.expected(target, &no_headers());
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, expected);
    }
    assert_eq!(
        o.fetches(target),
        1,
        "exactly one origin fetch across all tiers"
    );
    assert!(s1.stored(target) ^ s2.stored(target));
}

/// The hit path's cost in-process (no socket): lookup, freshness, response head and body frames.
/// A measurement, not a check: `cargo test --release -p refbench-cdn --test cache -- --ignored --nocapture`.
#[tokio::test(flavor = "current_thread")]
#[ignore = "measurement; run in release"]
async fn hit_path_cost() {
    let o = start_origin(origin_config()).await;
    let edge = start_tier(tier_config(Role::Edge, vec![o.url()])).await;
    let target = "/static/hot?size=4096";
    get(edge.http(), target, &[]).await;
    let app = edge.started.app.clone();
    let n = 200_000u32;
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    for _ in 0..n {
        let req = Request::builder()
            .uri(target)
            .header("host", HOST)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = app.handle(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        bytes += resp.into_body().collect().await.unwrap().to_bytes().len();
    }
    let per = started.elapsed() / n;
    assert_eq!(bytes, 4096 * n as usize);
    println!("hit path: {per:?} per request ({n} requests, 4 KiB object)");
}

// ---- the disk tier under the memory tier, and purges across tiers ----

/// An object size that lets a handful fill the tiny memory tier below.
const DISK_TEST_OBJECT: &str = "size=40000";

/// A tier with a 1 MiB memory tier (one shard) over a 4 MiB disk tier in `dir`.
fn disk_tier_config(role: Role, upstreams: Vec<String>, dir: &std::path::Path) -> TierConfig {
    TierConfig {
        memory_bytes: 1024 * 1024,
        shards: 1,
        max_object_bytes: 128 * 1024,
        disk_dir: Some(dir.to_path_buf()),
        disk_bytes: 4 * 1024 * 1024,
        ..tier_config(role, upstreams)
    }
}

impl Tier {
    fn disk(&self) -> refbench_cdn::disk::DiskTier {
        self.started.disk.clone().expect("a disk tier")
    }
    fn on_disk(&self, path: &str) -> bool {
        self.disk().contains(CacheKey::new(HOST, path).hash)
    }
    /// Waits until every object handed to the disk tier is written (so reads really come from the file).
    async fn flush_disk(&self) {
        let disk = self.disk();
        tokio::task::spawn_blocking(move || disk.flush())
            .await
            .unwrap()
            .unwrap();
    }
}

/// Requests enough other objects through `tier` that `target` is evicted from its memory tier, then flushes.
async fn evict_to_disk(tier: &Tier, target: &str, tag: &str) {
    for i in 0..48 {
        get(
            tier.http(),
            &format!("/static/{tag}-fill-{i}?{DISK_TEST_OBJECT}"),
            &[],
        )
        .await;
        if !tier.stored(target) {
            break;
        }
    }
    assert!(!tier.stored(target), "{target} was not evicted from memory");
    tier.flush_disk().await;
    assert!(tier.on_disk(target), "{target} is not on disk");
}

async fn admin_post_status(addr: SocketAddr, target: &str) -> (StatusCode, Value) {
    let r = send(addr, Method::POST, target, &[]).await.expect("admin");
    let status = r.status();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn an_object_evicted_from_memory_is_served_from_disk_without_an_origin_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = start_origin(origin_config()).await;
    let edge = start_tier(disk_tier_config(Role::Edge, vec![o.url()], dir.path())).await;
    let target = &format!("/static/disk-a?{DISK_TEST_OBJECT}");

    let miss = get(edge.http(), target, &[]).await;
    assert!(miss.status_of("refbench-edge").contains("stored"));
    evict_to_disk(&edge, target, "a").await;

    let from_disk = get(edge.http(), target, &[]).await;
    assert_eq!(from_disk.status, StatusCode::OK);
    let st = from_disk.status_of("refbench-edge");
    assert!(st.contains("; hit") && st.contains("detail=disk"), "{st}");
    assert_eq!(from_disk.body, o.expected(target, &no_headers()));
    assert_eq!(from_disk.body, miss.body);
    assert_eq!(from_disk.header("content-length"), "40000");
    assert_eq!(o.fetches(target), 1, "served from disk, not the origin");
    assert!(edge.disk().stats().hits >= 1);

    // Promoted: the next request is a plain memory hit.
    assert!(edge.stored(target));
    let hit = get(edge.http(), target, &[]).await;
    let st = hit.status_of("refbench-edge");
    assert!(
        st.starts_with("refbench-edge; hit; ttl=") && !st.contains("disk"),
        "{st}"
    );
    assert_eq!(hit.body, miss.body);
    assert_eq!(o.fetches(target), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stale_disk_copy_is_revalidated_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = start_origin(origin_config()).await;
    let edge = start_tier(disk_tier_config(Role::Edge, vec![o.url()], dir.path())).await;
    // `no-cache`: stored with its ETag, stale at once.
    let target = &format!("/nocache/disk-d?{DISK_TEST_OBJECT}");
    let first = get(edge.http(), target, &[]).await;
    assert!(first.status_of("refbench-edge").contains("stored"));
    evict_to_disk(&edge, target, "d").await;

    let again = get(edge.http(), target, &[]).await;
    let st = again.status_of("refbench-edge");
    assert!(
        st.contains("fwd=stale")
            && st.contains("fwd-status=304")
            && st.contains("detail=disk")
            && !st.contains("; hit"),
        "{st}"
    );
    assert_eq!(
        again.body, first.body,
        "the disk copy's body, refreshed by the 304"
    );
    let counts = o.started.app.fetches().get(target);
    assert_eq!((counts.fetches, counts.not_modified), (2, 1), "{counts:?}");
    assert!(edge.stored(target), "refreshed into memory");
}

#[tokio::test(flavor = "current_thread")]
async fn a_corrupted_disk_record_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = start_origin(origin_config()).await;
    let edge = start_tier(disk_tier_config(Role::Edge, vec![o.url()], dir.path())).await;
    let target = &format!("/static/disk-b?{DISK_TEST_OBJECT}");
    let expected = o.expected(target, &no_headers());

    get(edge.http(), target, &[]).await;
    evict_to_disk(&edge, target, "b").await;

    // Flip one byte in the middle of the object's body, wherever its record landed.
    let needle = &expected[..256];
    let mut flipped = false;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            let at = at + expected.len() / 2;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::os::unix::fs::FileExt::write_at(&file, &[bytes[at] ^ 0x5a], at as u64).unwrap();
            flipped = true;
            break;
        }
    }
    assert!(flipped, "the object's record was not found in any segment");

    let again = get(edge.http(), target, &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    let st = again.status_of("refbench-edge");
    assert!(st.contains("fwd=uri-miss") && !st.contains("disk"), "{st}");
    assert_eq!(again.body, expected, "the damaged copy was not served");
    assert_eq!(o.fetches(target), 2, "refetched from the origin");
    assert!(edge.disk().stats().corrupt_reads >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_purge_removes_from_edge_memory_edge_disk_and_both_shields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = start_origin(origin_config()).await;
    let s1 = start_tier(tier_config(Role::Shield, vec![o.url()])).await;
    let s2 = start_tier(tier_config(Role::Shield, vec![o.url()])).await;
    let edge = start_tier(TierConfig {
        upstream_admins: vec![
            format!("http://{}", s1.started.admin_addr),
            format!("http://{}", s2.started.admin_addr),
        ],
        ..disk_tier_config(Role::Edge, vec![s1.url(), s2.url()], dir.path())
    })
    .await;
    let target = &format!("/static/disk-c?{DISK_TEST_OBJECT}");

    // The object in both shields, on the edge's disk, and (promoted) in the edge's memory.
    get(edge.http(), target, &[]).await;
    get(s1.http(), target, &[]).await;
    get(s2.http(), target, &[]).await;
    assert!(s1.stored(target) && s2.stored(target));
    evict_to_disk(&edge, target, "c").await;
    let promoted = get(edge.http(), target, &[]).await;
    assert!(promoted.status_of("refbench-edge").contains("detail=disk"));
    assert!(edge.stored(target) && edge.on_disk(target));
    let before = o.fetches(target);
    assert_eq!(before, 2, "one fetch per shield");

    let (status, v) = admin_post_status(
        edge.started.admin_addr,
        "/purge?path=/static/disk-c%3Fsize%3D40000",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["upstreams"], 2, "{v}");
    assert!(!edge.stored(target), "edge memory");
    assert!(!edge.on_disk(target), "edge disk");
    assert!(!s1.stored(target) && !s2.stored(target), "shields");

    let after = get(edge.http(), target, &[]).await;
    assert!(after.status_of("refbench-edge").contains("fwd=uri-miss"));
    assert_eq!(after.body, o.expected(target, &no_headers()));
    assert_eq!(o.fetches(target), before + 1, "the origin was asked again");
}

#[tokio::test(flavor = "current_thread")]
async fn a_purge_with_a_shield_down_answers_502_naming_it() {
    let o = start_origin(origin_config()).await;
    let s1 = start_tier(tier_config(Role::Shield, vec![o.url()])).await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let edge = start_tier(TierConfig {
        upstream_admins: vec![
            format!("http://{}", s1.started.admin_addr),
            format!("http://{dead}"),
        ],
        ..tier_config(Role::Edge, vec![s1.url(), format!("http://{dead}")])
    })
    .await;
    let target = "/static/down";
    get(edge.http(), target, &[]).await;
    assert!(edge.stored(target) && s1.stored(target));

    let (status, v) = admin_post_status(edge.started.admin_addr, "/purge?path=/static/down").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    let reason = v["error"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("http://{dead}")), "{reason}");
    assert!(
        !reason.contains(&s1.started.admin_addr.to_string()),
        "the live shield acknowledged: {reason}"
    );
    assert_eq!(v["upstreams"], 1, "{v}");
    assert!(!edge.stored(target), "the local purge still happened");
    assert!(!s1.stored(target), "the live shield purged");
}
