//! The cdn-cache tier's hit path without a socket, the way `servers/cdn-cache/tests/cache.rs` (`hit_path_cost`)
//! drives it: a real synthetic origin and a real tier (`cache::start`, so the Prometheus recorder is installed and
//! the tier's counters cost what they cost in the server) on loopback fill the memory tier; the timed part then calls
//! `CacheApp::handle` (or the store) directly. Figures are per request.
//!
//! - `cdn_store_lookup/key_build_get_1kb/{N}_objects`: building the primary key from the request target and `Host`
//!   (`CacheKey::of_request`) plus one memory-tier lookup (`Store::get`: shard lock, S3-FIFO access, `Arc` clone),
//!   keys drawn uniformly from a store holding N objects of 1 KiB (uniform is the CPU caches' worst case).
//! - `cdn_hit/handle_*`: a whole hit through `CacheApp::handle`: key, lookup, freshness, `Age` and `Cache-Status`
//!   (RFC 9211) generation, the response head copied from the stored one, the body frames handed out (shared,
//!   not copied) and everything dropped again. Serialising the head onto the wire is hyper's part and not in it.
//!   `hot_key` repeats one key; `uniform_100k_keys` draws from 100 000 stored objects; `vary` goes through the
//!   `Vary: accept-encoding` spec to the `gzip` variant.
//!
//! - `cdn_hit/h1_fast_path_*`: what the server runs for a plain hit instead (`refbench_common::h1`): the request
//!   head parsed in place (httparse) and answered by the tier's `FastPath` into the connection's output buffer —
//!   key, lookup, freshness, the stored header block, `Age`, `Cache-Status`, the 1 KiB body copied. Parsing is
//!   inside the timed part; writing to the socket is not.
//!
//! Requests are built outside the timed part (in chunks, so memory stays bounded), as hyper has built them by the
//! time the tier sees them. The fill happens once, before the first bench, and takes a few seconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::header::{ACCEPT_ENCODING, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use refbench_cdn::cache::{
    self, CACHE_STATUS, CacheApp, CacheKey, Role, Stored, TierConfig, TierPlan,
};
use refbench_cdn::origin::{self, OriginConfig, OriginPlan, Rule, SizeDist, default_rules};
use refbench_common::h1::{FastPath, Head, Out};
use refbench_common::shutdown::{self, ShutdownTrigger};
use tokio::runtime::Runtime;

/// Every request names this host (the key is `host + path + query`).
const HOST_NAME: &str = "cdn.test";
/// Stored objects of the default size (`/static/` is `public, max-age=86400, immutable` at the origin).
const OBJECT_BYTES: usize = 1024;
/// The large object of `handle_hit_64kb_hot_key` (one 64 KiB frame: the origin's frame size).
const LARGE_BYTES: usize = 64 * 1024;
/// Store populations of the lookup bench; the largest is also the full-hit `uniform` key set.
const POPULATIONS: [usize; 3] = [1_000, 10_000, 100_000];
/// Requests built per untimed chunk.
const CHUNK: u64 = 4096;
/// Pre-drawn key indices (a power of two, cycled).
const DRAWS: usize = 1 << 16;
/// Misses in flight while filling.
const FILL_CONCURRENCY: usize = 64;

fn static_path(i: usize) -> String {
    format!("/static/k{i}")
}

/// The origin and the tier, both on `rt` (current_thread, like `loadgen serve cdn cache --threads 1`).
struct Setup {
    rt: Runtime,
    app: CacheApp,
    host: HeaderValue,
    filled: usize,
    _origin: origin::Started,
    _tier: cache::Started,
    _triggers: (ShutdownTrigger, ShutdownTrigger),
}

impl Setup {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Objects are 1 KiB unless `?size=` says otherwise; `/vary/` lives long enough for any bench run.
        let mut rules = default_rules();
        rules.insert(
            0,
            Rule {
                prefix: "/vary/".into(),
                cache_control: Some("public, max-age=86400".into()),
                vary: vec!["accept-encoding".into()],
                ..Rule::default()
            },
        );
        let origin_cfg = OriginConfig {
            size: SizeDist::Fixed {
                size_bytes: OBJECT_BYTES as u64,
            },
            rules,
            ..OriginConfig::default()
        };
        let (origin_trigger, origin_shutdown) = shutdown::channel();
        let (tier_trigger, tier_shutdown) = shutdown::channel();
        let (o, t) = rt.block_on(async {
            let o = origin::start(
                origin_cfg.resolve().expect("origin config"),
                &OriginPlan::default(),
                origin_shutdown,
            )
            .await
            .expect("origin starts");
            let tier_cfg = TierConfig {
                role: Role::Edge,
                upstreams: vec![format!("http://{}", o.http_addr)],
                // 100k objects of 1 KiB are charged ~2.3 KiB each (headers twice + overhead): nothing is evicted.
                memory_bytes: 512 * 1024 * 1024,
                ..TierConfig::default()
            };
            let t = cache::start(
                tier_cfg.resolve().expect("tier config"),
                &TierPlan::default(),
                tier_shutdown,
            )
            .await
            .expect("tier starts");
            (o, t)
        });
        Setup {
            rt,
            app: t.app.clone(),
            host: HeaderValue::from_static(HOST_NAME),
            filled: 0,
            _origin: o,
            _tier: t,
            _triggers: (origin_trigger, tier_trigger),
        }
    }

    fn request(
        &self,
        uri: &Uri,
        extra: Option<(http::HeaderName, &HeaderValue)>,
    ) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri.clone();
        req.headers_mut().insert(HOST, self.host.clone());
        if let Some((n, v)) = extra {
            req.headers_mut().insert(n, v.clone());
        }
        req
    }

    /// Requests `/static/k{i}` for every `i` in `filled..n` (misses: the tier fetches and stores them).
    fn fill_to(&mut self, n: usize) {
        if n <= self.filled {
            return;
        }
        let (from, app, host) = (self.filled, self.app.clone(), self.host.clone());
        self.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for i in from..n {
                if set.len() >= FILL_CONCURRENCY {
                    set.join_next().await.expect("a task").expect("fill task");
                }
                let (app, host) = (app.clone(), host.clone());
                set.spawn(async move {
                    let mut req = Request::new(Empty::<Bytes>::new());
                    *req.uri_mut() = static_path(i).parse().expect("uri");
                    req.headers_mut().insert(HOST, host);
                    let resp = app.handle(req).await;
                    assert_eq!(resp.status(), StatusCode::OK);
                    let body = resp.into_body().collect().await.expect("body").to_bytes();
                    assert_eq!(body.len(), OBJECT_BYTES);
                });
            }
            while let Some(r) = set.join_next().await {
                r.expect("fill task");
            }
        });
        let store = self.app.store();
        for i in [from, (from + n) / 2, n - 1] {
            let key = CacheKey::new(HOST_NAME, &static_path(i));
            assert!(store.contains(key.hash), "k{i} was not stored");
        }
        self.filled = n;
    }

    /// One request through the tier, checked: a fresh hit with `Age` and a `Cache-Status` hit member.
    fn check_hit(&self, req: Request<Empty<Bytes>>, body_bytes: usize) {
        let resp = self.rt.block_on(self.app.handle(req));
        assert_eq!(resp.status(), StatusCode::OK);
        let status = resp.headers()[CACHE_STATUS].to_str().expect("ascii");
        assert!(status.contains("; hit"), "not a hit: {status}");
        assert!(resp.headers().contains_key(http::header::AGE));
        let body = self
            .rt
            .block_on(resp.into_body().collect())
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), body_bytes);
    }

    /// Times `iters` requests made by `make(i)` through `CacheApp::handle`, building them in untimed chunks.
    fn time_hits(
        &self,
        iters: u64,
        make: &mut dyn FnMut(u64) -> Request<Empty<Bytes>>,
    ) -> Duration {
        let mut total = Duration::ZERO;
        let mut reqs = Vec::with_capacity(CHUNK as usize);
        let mut done = 0;
        while done < iters {
            let n = CHUNK.min(iters - done);
            reqs.extend((done..done + n).map(&mut *make));
            total += self.rt.block_on(async {
                let started = Instant::now();
                for req in reqs.drain(..) {
                    let resp = self.app.handle(req).await;
                    debug_assert_eq!(resp.status(), StatusCode::OK);
                    let (head, mut body) = resp.into_parts();
                    black_box(&head.headers);
                    // What hyper does with a stored body: take each frame (a shared `Bytes`), write it, drop it.
                    while let Some(frame) = body.frame().await {
                        black_box(frame.expect("stored frames do not fail"));
                    }
                }
                started.elapsed()
            });
            done += n;
        }
        total
    }
}

/// Parses `bytes` as the server does (httparse, in place) and offers the head to the tier's fast path.
fn answer_fast(app: &CacheApp, bytes: &[u8], out: &mut Out) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(bytes).expect("a valid head");
    debug_assert!(parsed.is_complete());
    let head = Head {
        method: req.method.expect("method"),
        target: req.path.expect("target"),
        version: http::Version::HTTP_11,
        headers: req.headers,
        keep_alive: true,
    };
    app.answer(&head, out)
}

/// `DRAWS` indices uniform in `0..n`, fixed seed.
fn draws(n: usize) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(0x00c0_ffee);
    (0..DRAWS).map(|_| rng.random_range(0..n)).collect()
}

fn static_uris(n: usize) -> Vec<Uri> {
    (0..n)
        .map(|i| static_path(i).parse().expect("uri"))
        .collect()
}

fn cdn(c: &mut Criterion) {
    let mut s = Setup::new();

    // ---- full hits through the handler ----
    let hot: Uri = "/static/hot".parse().expect("uri");
    let large: Uri = format!("/static/large?size={LARGE_BYTES}")
        .parse()
        .expect("uri");
    let vary: Uri = "/vary/hot".parse().expect("uri");
    let gzip = HeaderValue::from_static("gzip");
    let identity = HeaderValue::from_static("identity");
    // Misses first (they store), then one checked hit each.
    for (uri, enc, bytes) in [
        (&hot, None, OBJECT_BYTES),
        (&large, None, LARGE_BYTES),
        (&vary, Some(&identity), OBJECT_BYTES),
        (&vary, Some(&gzip), OBJECT_BYTES),
    ] {
        let extra = enc.map(|v| (ACCEPT_ENCODING, v));
        let resp = s.rt.block_on(s.app.handle(s.request(uri, extra.clone())));
        assert_eq!(resp.status(), StatusCode::OK);
        drop(s.rt.block_on(resp.into_body().collect()).expect("body"));
        s.check_hit(s.request(uri, extra), bytes);
    }
    let vary_key = CacheKey::new(HOST_NAME, "/vary/hot");
    assert!(
        matches!(s.app.store().get(vary_key.hash), Some(Stored::Vary(..))),
        "/vary/hot is stored as a Vary spec with variants"
    );

    let largest = POPULATIONS[POPULATIONS.len() - 1];
    s.fill_to(largest);
    let uris = static_uris(largest);
    let order = draws(largest);
    s.check_hit(s.request(&uris[order[0]], None), OBJECT_BYTES);

    let mut g = c.benchmark_group("cdn_hit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("handle_hit_1kb_hot_key", |b| {
        b.iter_custom(|iters| s.time_hits(iters, &mut |_| s.request(&hot, None)))
    });
    g.bench_function("handle_hit_64kb_hot_key", |b| {
        b.iter_custom(|iters| s.time_hits(iters, &mut |_| s.request(&large, None)))
    });
    g.bench_function("handle_hit_vary_1kb_hot_key_gzip", |b| {
        b.iter_custom(|iters| {
            s.time_hits(iters, &mut |_| {
                s.request(&vary, Some((ACCEPT_ENCODING, &gzip)))
            })
        })
    });
    g.bench_function("handle_hit_1kb_uniform_100k_keys", |b| {
        b.iter_custom(|iters| {
            s.time_hits(iters, &mut |i| {
                s.request(&uris[order[i as usize % DRAWS]], None)
            })
        })
    });
    // The fast path the server runs for these hits: the parsed head straight to wire bytes (status line, stored
    // header block, `Age`, `Cache-Status`, body copied into the output buffer as it is below 4 KiB).
    let fast_hit = |target: &str| -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: {HOST_NAME}\r\nUser-Agent: refbench\r\n\r\n")
            .into_bytes()
    };
    let hot_head = fast_hit("/static/hot");
    let uniform_heads: Vec<Vec<u8>> = (0..largest).map(|i| fast_hit(&static_path(i))).collect();
    let mut out = Out::default();
    assert!(
        answer_fast(&s.app, &hot_head, &mut out),
        "/static/hot is answered on the fast path"
    );
    assert!(out.len() > OBJECT_BYTES, "a whole response was written");
    out.clear();
    g.bench_function("h1_fast_path_hit_1kb_hot_key", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let answered = answer_fast(&s.app, &hot_head, &mut out);
                debug_assert!(answered);
                black_box(out.len());
                out.clear();
            }
            started.elapsed()
        })
    });
    g.bench_function("h1_fast_path_hit_1kb_uniform_100k_keys", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for i in 0..iters {
                let head = &uniform_heads[order[i as usize % DRAWS]];
                let answered = answer_fast(&s.app, head, &mut out);
                debug_assert!(answered);
                black_box(out.len());
                out.clear();
            }
            started.elapsed()
        })
    });
    g.finish();

    // ---- key build + memory-tier lookup only, at several populations ----
    // The store holds all of `largest` now; a separate tier per population keeps the smaller ones honest.
    drop(s);
    let mut g = c.benchmark_group("cdn_store_lookup");
    g.throughput(Throughput::Elements(1));
    for n in POPULATIONS {
        let mut s = Setup::new();
        s.fill_to(n);
        let uris = static_uris(n);
        let order = draws(n);
        let mut headers = HeaderMap::new();
        headers.insert(HOST, s.host.clone());
        let store = s.app.store();
        g.bench_function(
            BenchmarkId::new("key_build_get_1kb", format!("{n}_objects")),
            |b| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    for i in 0..iters {
                        let uri = &uris[order[i as usize % DRAWS]];
                        let key = CacheKey::of_request(uri, &headers);
                        let found = store.get(key.hash);
                        debug_assert!(matches!(found, Some(Stored::Object(_))));
                        black_box(found);
                    }
                    started.elapsed()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, cdn);
criterion_main!(benches);
