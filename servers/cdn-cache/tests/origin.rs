//! The synthetic origin over loopback sockets: bodies, validators,
//! conditionals, variants, versions, injections, fetch counts, bad input.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use refbench_cdn::origin::{
    self, Injection, OriginConfig, OriginPlan, Rule, SizeDist, Started, fmt_http_date,
    parse_http_date,
};
use refbench_common::shutdown::{self, ShutdownTrigger};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Bounds hangs on a shared 2-core host; never a speed measurement.
const PROMPT: Duration = Duration::from_secs(10);

struct Origin {
    started: Started,
    _trigger: ShutdownTrigger,
}

impl Origin {
    fn http(&self) -> SocketAddr {
        self.started.http_addr
    }
    fn admin(&self) -> SocketAddr {
        self.started.admin_addr
    }
}

async fn start(cfg: OriginConfig) -> Origin {
    let (trigger, shutdown) = shutdown::channel();
    let started = origin::start(cfg.resolve().unwrap(), &OriginPlan::default(), shutdown)
        .await
        .unwrap();
    Origin {
        started,
        _trigger: trigger,
    }
}

/// One request on a fresh HTTP/1.1 connection.
async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string());
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    tokio::time::timeout(PROMPT, tx.send_request(req))
        .await
        .expect("response head in time")
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn request(addr: SocketAddr, method: Method, target: &str, headers: &[(&str, &str)]) -> Got {
    let r = send(addr, method, target, headers, Bytes::new())
        .await
        .expect("response");
    let status = r.status();
    let headers = r.headers().clone();
    let body = tokio::time::timeout(PROMPT, r.into_body().collect())
        .await
        .expect("body in time")
        .expect("whole body")
        .to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Got {
    request(addr, Method::GET, target, headers).await
}

/// An admin call; returns the status and the JSON body.
async fn admin(addr: SocketAddr, method: Method, target: &str, body: &str) -> (StatusCode, Value) {
    let r = send(addr, method, target, &[], Bytes::from(body.to_string()))
        .await
        .expect("admin response");
    let status = r.status();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into()));
    (status, v)
}

async fn fetches(o: &Origin, query: &str) -> Value {
    let (s, v) = admin(o.admin(), Method::GET, &format!("/fetches?{query}"), "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn inject(o: &Origin, body: Value) {
    let (s, v) = admin(o.admin(), Method::PUT, "/inject", &body.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "current_thread")]
async fn bodies_and_sizes_are_deterministic() {
    let o = start(OriginConfig::default()).await;
    let a = get(o.http(), "/static/a.js", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("cache-control"),
        "public, max-age=86400, immutable"
    );
    assert_eq!(a.header("content-length"), a.body.len().to_string());
    assert!(
        (1024..=1024 * 1024).contains(&a.body.len()),
        "{}",
        a.body.len()
    );
    let again = get(o.http(), "/static/a.js", &[]).await;
    assert_eq!(a.body, again.body);
    assert_eq!(a.header("etag"), again.header("etag"));

    // A second origin with the same seed, and the pure functions, agree byte for byte.
    let cfg = OriginConfig::default().resolve().unwrap();
    let expected = origin::describe_object(&cfg, "/static/a.js", &HeaderMap::new(), 0).unwrap();
    assert_eq!(expected.body(), a.body);
    assert_eq!(expected.etag.as_deref(), Some(a.header("etag")));
    assert_eq!(
        origin::expected_body(&cfg, "/static/a.js", &HeaderMap::new(), 0),
        a.body
    );
    let other = start(OriginConfig::default()).await;
    assert_eq!(get(other.http(), "/static/a.js", &[]).await.body, a.body);
    let reseeded = start(OriginConfig {
        seed: 2,
        ..OriginConfig::default()
    })
    .await;
    assert_ne!(get(reseeded.http(), "/static/a.js", &[]).await.body, a.body);

    // Size override, streamed across several 64 KiB frames.
    let big = get(o.http(), "/x/big?size=300000", &[]).await;
    assert_eq!(big.body.len(), 300_000);
    assert_eq!(
        big.body,
        o.started
            .app
            .describe("/x/big?size=300000", &HeaderMap::new())
            .unwrap()
            .body()
    );
    assert_eq!(get(o.http(), "/x/empty?size=0", &[]).await.body.len(), 0);

    // Video segments: fixed size, their content type, and an end.
    let seg = get(o.http(), "/video/v1/seg-3.ts", &[]).await;
    assert_eq!(seg.body.len(), 256 * 1024);
    assert_eq!(seg.header("content-type"), "video/mp2t");
    let past = get(o.http(), "/video/v1/seg-100.ts", &[]).await;
    assert_eq!(past.status, StatusCode::NOT_FOUND);
    assert!(
        past.text().contains("past the last segment"),
        "{}",
        past.text()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn conditional_requests() {
    let o = start(OriginConfig::default()).await;
    let a = get(o.http(), "/static/c", &[]).await;
    let etag = a.header("etag").to_string();
    let lm = a.header("last-modified").to_string();
    assert!(etag.starts_with('"'), "{etag}");

    let nm = get(o.http(), "/static/c", &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), etag);
    assert_eq!(nm.header("cache-control"), a.header("cache-control"));
    assert_eq!(nm.header("last-modified"), lm);

    // If-None-Match uses the weak comparison: W/ on our strong tag still matches.
    let weak = format!("\"nope\", W/{etag}");
    let nm = get(o.http(), "/static/c", &[("if-none-match", &weak)]).await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    let miss = get(o.http(), "/static/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.body, a.body);

    // If-Modified-Since: not later → 304; earlier → 200; unparsable → 200;
    // ignored when If-None-Match is present.
    let lm_s = parse_http_date(&lm).unwrap();
    let ims = get(o.http(), "/static/c", &[("if-modified-since", &lm)]).await;
    assert_eq!(ims.status, StatusCode::NOT_MODIFIED);
    let earlier = fmt_http_date(lm_s - 1);
    let ims = get(o.http(), "/static/c", &[("if-modified-since", &earlier)]).await;
    assert_eq!(ims.status, StatusCode::OK);
    let ims = get(o.http(), "/static/c", &[("if-modified-since", "yesterday")]).await;
    assert_eq!(ims.status, StatusCode::OK);
    let both = get(
        o.http(),
        "/static/c",
        &[("if-modified-since", &lm), ("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(both.status, StatusCode::OK);

    // If-Match uses the strong comparison: a weak match fails.
    let im = get(o.http(), "/static/c", &[("if-match", &format!("W/{etag}"))]).await;
    assert_eq!(im.status, StatusCode::PRECONDITION_FAILED);
    assert!(im.text().contains("If-Match"), "{}", im.text());
    let im = get(o.http(), "/static/c", &[("if-match", &etag)]).await;
    assert_eq!(im.status, StatusCode::OK);

    // Weak tags from /weak/ match If-None-Match too.
    let w = get(o.http(), "/weak/x", &[]).await;
    let wtag = w.header("etag").to_string();
    assert!(wtag.starts_with("W/\""), "{wtag}");
    let nm = get(o.http(), "/weak/x", &[("if-none-match", &wtag)]).await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);

    // No validators on /nostore/: nothing to match, even "*".
    let ns = get(o.http(), "/nostore/x", &[("if-none-match", "*")]).await;
    assert_eq!(ns.status, StatusCode::OK);
    assert_eq!(ns.header("cache-control"), "no-store");
    assert!(ns.headers.get("etag").is_none() && ns.headers.get("last-modified").is_none());

    // HEAD: the same headers, no body.
    let h = request(o.http(), Method::HEAD, "/static/c", &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), a.body.len().to_string());
    assert_eq!(h.header("etag"), etag);
    assert!(h.body.is_empty());

    // Two If-None-Match hits and one If-Modified-Since hit.
    let counts = fetches(&o, "key=/static/c").await;
    assert_eq!(counts["not_modified"], 3, "{counts}");
}

#[tokio::test(flavor = "current_thread")]
async fn vary_keeps_variants_apart() {
    let o = start(OriginConfig::default()).await;
    let gz = get(o.http(), "/vary/v", &[("accept-encoding", "gzip")]).await;
    let br = get(o.http(), "/vary/v", &[("accept-encoding", "br")]).await;
    let none = get(o.http(), "/vary/v", &[]).await;
    assert_eq!(gz.header("vary"), "accept-encoding");
    assert_ne!(gz.body, br.body);
    assert_ne!(gz.body, none.body);
    assert_ne!(gz.header("etag"), br.header("etag"));
    assert_eq!(gz.header("x-origin-key"), "/vary/v accept-encoding=gzip");
    // Normalised: case and surrounding spaces do not make a new variant.
    let gz2 = get(o.http(), "/vary/v", &[("accept-encoding", " GZIP ")]).await;
    assert_eq!(gz2.body, gz.body);
    // A tag of another variant does not validate this one.
    let cross = get(
        o.http(),
        "/vary/v",
        &[
            ("accept-encoding", "br"),
            ("if-none-match", gz.header("etag")),
        ],
    )
    .await;
    assert_eq!(cross.status, StatusCode::OK);

    let one = fetches(&o, "key=/vary/v%20accept-encoding%3Dgzip").await;
    assert_eq!(one["fetches"], 2, "{one}");
    let all = fetches(&o, "path=/vary/v").await;
    assert_eq!(all["fetches"], 5, "{all}");
}

#[tokio::test(flavor = "current_thread")]
async fn version_bump_changes_body_and_validators() {
    let o = start(OriginConfig::default()).await;
    let v0 = get(o.http(), "/static/b?x=1", &[]).await;
    assert_eq!(v0.header("x-origin-version"), "0");
    let (s, v) = admin(
        o.admin(),
        Method::POST,
        "/version?key=%2Fstatic%2Fb%3Fx%3D1",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 1);
    let v1 = get(o.http(), "/static/b?x=1", &[]).await;
    assert_eq!(v1.header("x-origin-version"), "1");
    assert_ne!(v1.body, v0.body);
    assert_eq!(v1.body.len(), v0.body.len());
    assert_ne!(v1.header("etag"), v0.header("etag"));
    assert!(
        parse_http_date(v1.header("last-modified")) > parse_http_date(v0.header("last-modified"))
    );
    // The old validator no longer matches: revalidation gets the new body.
    let reval = get(
        o.http(),
        "/static/b?x=1",
        &[("if-none-match", v0.header("etag"))],
    )
    .await;
    assert_eq!(reval.status, StatusCode::OK);
    assert_eq!(reval.body, v1.body);
    let reval = get(
        o.http(),
        "/static/b?x=1",
        &[("if-modified-since", v0.header("last-modified"))],
    )
    .await;
    assert_eq!(reval.status, StatusCode::OK);

    // A prefix bump moves everything under it, and nothing else.
    let other = get(o.http(), "/swr/z", &[]).await;
    let (s, v) = admin(o.admin(), Method::POST, "/version?prefix=/static/", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        get(o.http(), "/static/b?x=1", &[])
            .await
            .header("x-origin-version"),
        "2"
    );
    assert_eq!(get(o.http(), "/swr/z", &[]).await.body, other.body);
    let (_, v) = admin(o.admin(), Method::GET, "/version?key=/static/q", "").await;
    assert_eq!(v["version"], 1);
}

#[tokio::test(flavor = "current_thread")]
async fn failure_and_latency_injection() {
    let o = start(OriginConfig::default()).await;
    inject(
        &o,
        json!([{"prefix": "/sie/", "fail_share": 1.0, "fail_status": 502},
               {"prefix": "/slow/", "latency_fixed_ms": 150}]),
    )
    .await;
    let down = get(o.http(), "/sie/a", &[]).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert!(down.text().contains("injected"), "{}", down.text());
    assert_eq!(get(o.http(), "/static/a", &[]).await.status, StatusCode::OK);
    let t = Instant::now();
    assert_eq!(get(o.http(), "/slow/a", &[]).await.status, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    let c = fetches(&o, "key=/sie/a").await;
    assert_eq!(
        (c["fetches"].as_u64(), c["failed"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );

    // A share: some fail, some do not (seeded draws).
    inject(&o, json!({"fail_share": 0.5})).await;
    let mut failed = 0;
    for i in 0..40 {
        if get(o.http(), &format!("/half/{i}"), &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
        {
            failed += 1;
        }
    }
    assert!((5..=35).contains(&failed), "{failed} of 40 failed");

    let (s, v) = admin(o.admin(), Method::DELETE, "/inject", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    assert_eq!(get(o.http(), "/sie/a", &[]).await.status, StatusCode::OK);

    let (_, m) = admin(o.admin(), Method::GET, "/metrics", "").await;
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains("cdn_origin_requests_total{status=\"502\"}"),
        "{m}"
    );
    assert!(m.contains("cdn_origin_bytes_total"), "{m}");
}

#[tokio::test(flavor = "current_thread")]
async fn origin_down_closes_then_refuses() {
    let o = start(OriginConfig::default()).await;
    inject(&o, json!({"prefix": "/", "close_connection": true})).await;
    let r = send(o.http(), Method::GET, "/a", &[], Bytes::new()).await;
    assert!(r.is_err(), "expected a closed connection, got {r:?}");
    let (_, v) = admin(o.admin(), Method::DELETE, "/inject", "").await;
    assert_eq!(v, json!([]));
    assert_eq!(get(o.http(), "/a", &[]).await.status, StatusCode::OK);

    let (s, _) = admin(o.admin(), Method::POST, "/listener?state=down", "").await;
    assert_eq!(s, StatusCode::OK);
    // The port closes as soon as the serving loop sees the switch.
    let refused = tokio::time::timeout(PROMPT, async {
        loop {
            if TcpStream::connect(o.http()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the port kept accepting");
    let (s, v) = admin(o.admin(), Method::GET, "/listener", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"listening": false})));

    admin(o.admin(), Method::POST, "/listener?state=up", "").await;
    let back = tokio::time::timeout(PROMPT, async {
        loop {
            if TcpStream::connect(o.http()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the port did not come back");
    assert_eq!(get(o.http(), "/a", &[]).await.status, StatusCode::OK);
    let c = fetches(&o, "key=/a").await;
    assert_eq!(
        (c["fetches"].as_u64(), c["failed"].as_u64()),
        (Some(3), Some(1)),
        "{c}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn hang_mid_body_stalls_after_partial_body() {
    let o = start(OriginConfig::default()).await;
    inject(&o, json!({"prefix": "/hang/", "hang_after_bytes": 100000})).await;
    let r = send(
        o.http(),
        Method::GET,
        "/hang/a?size=500000",
        &[],
        Bytes::new(),
    )
    .await
    .expect("head arrives before the stall");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "500000");
    let mut body = r.into_body();
    let mut got = Vec::new();
    while got.len() < 100_000 {
        let f = tokio::time::timeout(PROMPT, body.frame())
            .await
            .expect("frames before the hang point")
            .expect("not the end")
            .expect("no error");
        got.extend_from_slice(&f.into_data().unwrap());
    }
    assert_eq!(
        got.len(),
        100_000,
        "exactly hang_after_bytes before the stall"
    );
    let stalled = tokio::time::timeout(Duration::from_millis(300), body.frame()).await;
    assert!(stalled.is_err(), "the body kept flowing: {stalled:?}");
    let expected = o
        .started
        .app
        .describe("/hang/a?size=500000", &HeaderMap::new())
        .unwrap()
        .body();
    assert_eq!(&got[..], &expected[..100_000]);
    assert_eq!(o.started.app.hangs_active(), 1);
    // The client giving up releases the hang slot (hyper notices the close).
    drop(body);
    let released = tokio::time::timeout(PROMPT, async {
        while o.started.app.hangs_active() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "the hang slot was never released");

    // A finite hang resumes: the whole, correct body, at least hang_ms late.
    inject(
        &o,
        json!({"prefix": "/hang/", "hang_after_bytes": 1000, "hang_ms": 200}),
    )
    .await;
    let t = Instant::now();
    let full = get(o.http(), "/hang/b?size=5000", &[]).await;
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        full.body,
        o.started
            .app
            .describe("/hang/b?size=5000", &HeaderMap::new())
            .unwrap()
            .body()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn hangs_over_the_cap_are_aborted() {
    let o = start(OriginConfig {
        max_hangs: 0,
        ..OriginConfig::default()
    })
    .await;
    inject(&o, json!({"hang_after_bytes": 10})).await;
    // hyper may not have flushed the head when the body errors, so the cut
    // shows either as a failed response or as a failed body; never a hang.
    match send(o.http(), Method::GET, "/a?size=100", &[], Bytes::new()).await {
        Err(e) => assert!(!e.is_timeout(), "{e}"),
        Ok(r) => {
            let res = tokio::time::timeout(PROMPT, r.into_body().collect())
                .await
                .expect("aborted, not hanging");
            assert!(res.is_err(), "the body must be cut short");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn fetch_counts_per_key() {
    let o = start(OriginConfig {
        max_tracked_keys: 3,
        ..OriginConfig::default()
    })
    .await;
    for _ in 0..3 {
        get(o.http(), "/k/a", &[]).await;
    }
    get(o.http(), "/k/b", &[]).await;
    // Concurrent requests for one key are each counted.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let addr = o.http();
            tokio::spawn(async move { get(addr, "/k/c", &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(fetches(&o, "key=/k/a").await["fetches"], 3);
    assert_eq!(fetches(&o, "key=/k/b").await["ok"], 1);
    assert_eq!(fetches(&o, "key=/k/c").await["fetches"], 20);
    assert_eq!(fetches(&o, "key=/k/never").await["fetches"], 0);
    // The table is full: a fourth key only counts in the overflow.
    get(o.http(), "/k/d", &[]).await;
    let top = fetches(&o, "top=2").await;
    assert_eq!(top["total"], 25, "{top}");
    assert_eq!(top["tracked_keys"], 3, "{top}");
    assert_eq!(top["overflow"], 1, "{top}");
    assert_eq!(top["top"][0]["key"], "/k/c", "{top}");
    assert_eq!(top["top"].as_array().unwrap().len(), 2, "{top}");
    assert_eq!(o.started.app.fetches().get("/k/a").fetches, 3);

    let (s, _) = admin(o.admin(), Method::DELETE, "/fetches", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(fetches(&o, "").await["total"], 0);
}

#[tokio::test(flavor = "current_thread")]
async fn bad_input_gets_a_reason() {
    let o = start(OriginConfig {
        rules: vec![Rule {
            prefix: "/only/".into(),
            size: Some(SizeDist::Fixed { size_bytes: 10 }),
            ..Rule::default()
        }],
        ..OriginConfig::default()
    })
    .await;
    let r = request(o.http(), Method::POST, "/only/a", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, HEAD");
    assert!(r.text().contains("POST"), "{}", r.text());
    let r = request(
        o.http(),
        Method::from_bytes(b"PURGE").unwrap(),
        "/only/a",
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let r = send(
        o.http(),
        Method::GET,
        "/only/a",
        &[],
        Bytes::from_static(b"abc"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = get(o.http(), "/elsewhere", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("no rule matches"), "{}", r.text());
    let r = get(o.http(), "/only/a?size=lots", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("size"), "{}", r.text());
    let r = get(o.http(), "/only/a?size=999999999999", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("max_object_size_bytes"), "{}", r.text());

    let huge = "x".repeat(64 * 1024);
    let r = send(
        o.http(),
        Method::GET,
        "/only/a",
        &[("x-big", &huge)],
        Bytes::new(),
    )
    .await;
    match r {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // hyper may close before the client finished writing the head.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }

    // Control input is validated, naming the field; nothing changes on error.
    let (s, v) = admin(o.admin(), Method::PUT, "/inject", r#"{"fail_share": 2}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("injections[0].fail_share"),
        "{v}"
    );
    let (s, v) = admin(o.admin(), Method::PUT, "/inject", r#"{"fial_share": 1}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("fial_share"), "{v}");
    let (s, v) = admin(o.admin(), Method::PUT, "/inject", r#"{"hang_ms": 5}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("hang_after_bytes"),
        "{v}"
    );
    assert_eq!(o.started.app.injections(), Vec::<Injection>::new());
    let (s, _) = admin(o.admin(), Method::POST, "/version", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = admin(o.admin(), Method::PATCH, "/fetches", "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    let (s, _) = admin(o.admin(), Method::GET, "/nope", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = admin(o.admin(), Method::GET, "/healthz", "").await;
    assert_eq!((s, v), (StatusCode::OK, Value::String("ok".into())));
}
