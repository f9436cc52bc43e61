//! Client-side faults against one cache tier over loopback: malformed requests on raw TCP, request targets that are
//! not origin-form, slow clients (slowloris heads, a reader that stops reading a large object others are waiting
//! for) and more connections than the tier's limit. Each fault must end in a 4xx or a clean close (never a 5xx,
//! never a hang), cost no stray origin fetch, store nothing corrupt, and leave the tier serving normally.
//!
//! The origin-side faults (an origin hanging mid-body) and oversized headers are in `cache.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use refbench_cdn::cache::{Role, TierConfig, TierPlan};
use refbench_cdn::origin::{Injection, OriginConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Bounds hangs on a shared 2-core host; never a speed measurement.
const PROMPT: Duration = Duration::from_secs(5);

mod common;

use common::{Got, HOST, Origin, read, start_tier, start_tier_with};

async fn start_origin() -> Origin {
    common::start_origin(OriginConfig::default()).await
}

/// An edge with room for the slow-reader test's 8 MiB object.
fn tier_config(upstream: String) -> TierConfig {
    TierConfig {
        max_object_bytes: 12 * 1024 * 1024,
        ..common::tier_config(Role::Edge, vec![upstream])
    }
}

/// One GET on a fresh HTTP/1.1 connection, naming `host`.
async fn get_at(addr: SocketAddr, host: &str, target: &str) -> Got {
    let r = common::send(addr, Method::GET, target, host, &[], Bytes::new())
        .await
        .expect("response");
    read(r).await
}

async fn get(addr: SocketAddr, target: &str) -> Got {
    get_at(addr, HOST, target).await
}

/// What a raw exchange ended with.
#[derive(Debug)]
struct Raw {
    /// The status of the response, if one came before the close.
    status: Option<u16>,
    /// Everything read (the head, maybe some body).
    text: String,
}

/// Reads until a whole response head arrived, or the peer closed (EOF or reset); panics on a hang.
async fn read_head<R: AsyncRead + Unpin>(s: &mut R, what: &str) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!("{what}: no response and no close within {PROMPT:?}"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    Raw { status, text }
}

/// Sends `bytes` on a new connection and reads the answer's head (or the close).
async fn raw(addr: SocketAddr, bytes: &[u8], what: &str) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it read everything (an oversized head): a failed write is fine, the
    // read says what happened.
    let _ = s.write_all(bytes).await;
    read_head(&mut s, what).await
}

/// Polls `cond` every 10 ms until it holds, or panics after `within`.
async fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_or_a_close_and_fetch_nothing() {
    let o = start_origin().await;
    let edge = start_tier(tier_config(o.url())).await;
    let warm = get(edge.http(), "/static/warm").await;
    assert_eq!(warm.status, StatusCode::OK);
    assert!(!warm.hit(), "{}", warm.cache_status());
    let fetches_before = o.total_fetches();
    assert_eq!(fetches_before, 1);

    let huge_uri = format!(
        "GET /static/{} HTTP/1.1\r\nHost: cdn.test\r\n\r\n",
        "u".repeat(24 * 1024)
    );
    let big_line = format!(
        "GET /static/a HTTP/1.1\r\nHost: cdn.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(24 * 1024)
    );
    // (what, bytes, acceptable statuses, whether a close without any response is acceptable too)
    let cases: Vec<(&str, Vec<u8>, &[u16], bool)> = vec![
        (
            "binary garbage",
            b"\x00\x01\x02\xff garbage\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        ("request line alone", b"GET\r\n\r\n".to_vec(), &[400], false),
        (
            "invalid method token",
            b"G(T /static/m HTTP/1.1\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "unknown HTTP version",
            b"GET /static/v HTTP/1.7\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "asterisk-form on GET",
            b"GET * HTTP/1.1\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "target without a leading slash",
            b"GET x HTTP/1.1\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "authority-form on GET",
            b"GET cdn.test:80 HTTP/1.1\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "absolute-form with a non-HTTP scheme",
            b"GET ftp://cdn.test/static/f HTTP/1.1\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "HTTP/1.1 without Host",
            b"GET /static/nohost HTTP/1.1\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "two Host fields",
            b"GET /static/twohosts HTTP/1.1\r\nHost: cdn.test\r\nHost: other.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "Host carrying a path (its key would be cdn.test + /static/x)",
            b"GET /x HTTP/1.1\r\nHost: cdn.test/static\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "Host with userinfo",
            b"GET /static/u HTTP/1.1\r\nHost: user@cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "absolute-form without Host on HTTP/1.1",
            b"GET http://cdn.test/static/nohost HTTP/1.1\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "absolute-form with userinfo",
            b"GET http://user@cdn.test/static/u HTTP/1.1\r\nHost: cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "conflicting Content-Length on GET",
            b"GET /static/cl HTTP/1.1\r\nHost: cdn.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .to_vec(),
            &[400],
            false,
        ),
        (
            "conflicting Content-Length on POST",
            b"POST /static/cl HTTP/1.1\r\nHost: cdn.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .to_vec(),
            &[400],
            false,
        ),
        (
            "non-numeric Content-Length",
            b"POST /static/cl HTTP/1.1\r\nHost: cdn.test\r\nContent-Length: five\r\n\r\nhello".to_vec(),
            &[400],
            false,
        ),
        (
            "header line without a colon",
            b"GET /static/h HTTP/1.1\r\nHost: cdn.test\r\nNoColonHere\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "whitespace before the colon",
            b"GET /static/h HTTP/1.1\r\nHost : cdn.test\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "control byte in a header value",
            b"GET /static/h HTTP/1.1\r\nHost: cdn.test\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
        (
            "URI larger than the header limit",
            huge_uri.into_bytes(),
            &[400, 414, 431],
            true,
        ),
        (
            "header line larger than the header limit",
            big_line.into_bytes(),
            &[400, 431],
            true,
        ),
    ];
    // Every case runs and every failure is listed, so one run shows all that is wrong.
    let mut wrong = Vec::new();
    for (what, bytes, ok, close_ok) in &cases {
        let fetches = o.total_fetches();
        let r = raw(edge.http(), bytes, what).await;
        let first_line = r.text.lines().next().unwrap_or("").to_string();
        match r.status {
            Some(s) if !ok.contains(&s) => {
                wrong.push(format!("{what}: got {first_line:?}, want one of {ok:?}"));
            }
            None if !(*close_ok && r.text.is_empty()) => {
                wrong.push(format!(
                    "{what}: closed without a status line: {:?}",
                    r.text
                ));
            }
            _ => {}
        }
        if o.total_fetches() != fetches {
            wrong.push(format!("{what}: reached the origin"));
        }
        // After every fault, not just at the end: the tier still answers, from the cache.
        let again = get(edge.http(), "/static/warm").await;
        assert_eq!(again.status, StatusCode::OK, "after {what}");
        assert!(again.hit(), "after {what}: {}", again.cache_status());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(o.total_fetches(), fetches_before);
    for path in [
        "/static/nohost",
        "/static/twohosts",
        "/static/cl",
        "/static/x",
        "/",
    ] {
        assert!(!edge.stored(path), "{path} stored");
        assert!(!edge.stored_at("", path), "{path} stored without a host");
    }

    // A normal miss afterwards costs exactly one fetch, and is then a byte-exact hit.
    let target = "/static/after?size=70000";
    let miss = get(edge.http(), target).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert!(!miss.hit(), "{}", miss.cache_status());
    let hit = get(edge.http(), target).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, o.expected(target, &HeaderMap::new()));
    assert_eq!(miss.body, hit.body);
    assert_eq!(o.total_fetches(), fetches_before + 1);
}

/// A fake upstream that records each request head and answers `200` with a cacheable body naming the `Host` it
/// received and the request target.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let host = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
                        .map(|(_, v)| v.trim().to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                    record.lock().unwrap().push(head);
                    let body = format!("{host} {target}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncache-control: public, max-age=60\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_h2_targets_are_keyed_and_forwarded_by_their_authority() {
    let (up, heads) = recording_upstream().await;
    let edge = start_tier(tier_config(format!("http://{up}"))).await;

    // Absolute-form is legal (RFC 9112 §3.2.2): the target's authority is the host, and a received Host is
    // ignored. So the object is keyed under other.test, and forwarded with Host: other.test; a tier that keyed by
    // one host and forwarded the other would let a client store one host's response under another host's key.
    let mut s = TcpStream::connect(edge.http()).await.unwrap();
    s.write_all(
        b"GET http://other.test/static/abs HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(PROMPT, s.read_to_end(&mut all))
        .await
        .expect("answer and close in time")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\nother.test /static/abs"),
        "forwarded with the target's host, in origin-form: {text}"
    );
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(
            heads[0].starts_with("GET /static/abs HTTP/1.1\r\n"),
            "{heads:?}"
        );
    }
    assert!(edge.stored_at("other.test", "/static/abs"));
    assert!(!edge.stored_at(HOST, "/static/abs"));

    // The same effective URI in origin-form is the same object: a hit, no second fetch.
    let same = get_at(edge.http(), "other.test", "/static/abs").await;
    assert!(same.hit(), "{}", same.cache_status());
    assert_eq!(&same.body[..], b"other.test /static/abs");
    // Another host's object is its own: a miss, fetched with its own Host.
    let other = get(edge.http(), "/static/abs").await;
    assert!(!other.hit(), "{}", other.cache_status());
    assert_eq!(&other.body[..], b"cdn.test /static/abs");
    assert_eq!(heads.lock().unwrap().len(), 2);

    // HTTP/2 has no Host field, only :authority: the fetch upstream (HTTP/1.1) must carry it as Host, not the
    // upstream's own address.
    let stream = TcpStream::connect(edge.http()).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://h2.test/static/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = tokio::time::timeout(PROMPT, tx.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"h2.test /static/h2");
    assert!(edge.stored_at("h2.test", "/static/h2"));
    assert_eq!(heads.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_off_at_the_header_timeout_while_others_are_served() {
    let o = start_origin().await;
    let header_timeout = Duration::from_millis(1_000);
    let mut plan = TierPlan::default();
    plan.limits.header_read_timeout = header_timeout;
    let edge = start_tier_with(tier_config(o.url()), plan).await;
    assert_eq!(
        get(edge.http(), "/static/fast").await.status,
        StatusCode::OK
    );

    // Each slow client would need ~20 s to finish its head at one byte per 200 ms.
    let head = format!(
        "GET /static/slow HTTP/1.1\r\nHost: cdn.test\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(60)
    );
    let mut slow = Vec::new();
    for _ in 0..3 {
        let addr = edge.http();
        let head = head.clone().into_bytes();
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 1024];
            for (sent, b) in head.iter().enumerate() {
                if s.write_all(&[*b]).await.is_err() {
                    return (started.elapsed(), sent, String::new());
                }
                tokio::select! {
                    r = s.read(&mut buf) => {
                        let text = match r {
                            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                            Err(_) => String::new(),
                        };
                        return (started.elapsed(), sent + 1, text);
                    }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            (
                started.elapsed(),
                head.len(),
                "the whole head was accepted".into(),
            )
        }));
    }

    // And one that connects and never sends a byte (cut off by the first-byte wait, same timeout).
    let addr = edge.http();
    let silent = tokio::spawn(async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(PROMPT, s.read(&mut buf))
            .await
            .expect("a silent connection is closed in time")
            .unwrap_or(0);
        (started.elapsed(), n)
    });

    // Meanwhile other clients are served at normal latency.
    let loop_start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut served = 0;
    while slow.iter().any(|t| !t.is_finished()) {
        assert!(
            loop_start.elapsed() < header_timeout + Duration::from_secs(3),
            "the slow clients were not cut off"
        );
        let t0 = Instant::now();
        let g = get(edge.http(), "/static/fast").await;
        worst = worst.max(t0.elapsed());
        assert_eq!(g.status, StatusCode::OK);
        assert!(g.hit(), "{}", g.cache_status());
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 10, "only {served} requests served meanwhile");
    assert!(
        worst < Duration::from_millis(500),
        "a normal request took {worst:?} while slow clients were connected"
    );
    for t in slow {
        let (elapsed, sent, answer) = t.await.unwrap();
        assert!(
            sent < head.len(),
            "sent the whole head ({sent} bytes): {answer}"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "cut off with {answer:?}"
        );
        assert!(
            elapsed >= header_timeout.mul_f32(0.8)
                && elapsed < header_timeout + Duration::from_millis(1_500),
            "cut off after {elapsed:?} ({sent} bytes), header timeout {header_timeout:?}"
        );
    }
    let (elapsed, n) = silent.await.unwrap();
    assert_eq!(n, 0, "a silent connection got an answer");
    assert!(
        elapsed >= header_timeout.mul_f32(0.8)
            && elapsed < header_timeout + Duration::from_millis(1_500),
        "silent connection closed after {elapsed:?}"
    );
    assert_eq!(
        get(edge.http(), "/static/fast").await.status,
        StatusCode::OK
    );
    assert_eq!(o.fetches("/static/slow"), 0);
    assert_eq!(o.fetches("/static/fast"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_hold_back_the_others_on_the_same_cold_object() {
    let o = start_origin().await;
    // The head waits 300 ms at the origin, so every request joins the one fetch.
    o.inject(vec![Injection {
        prefix: "/static/big".into(),
        latency_fixed_ms: 300,
        ..Injection::default()
    }]);
    let edge = start_tier(tier_config(o.url())).await;
    // 8 MiB: more than the kernel can buffer for a reader that stops (send buffer at most 4 MiB by default,
    // receive buffer shrunk below), so the server really has to wait on this one client.
    let size = 8 * 1024 * 1024;
    let target = format!("/static/big?size={size}");
    let expected = o.expected(&target, &HeaderMap::new());
    assert_eq!(expected.len(), size);

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(edge.http()).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(target.as_str())
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let slow = tokio::spawn(tx.send_request(req));
    let inflight = edge.started.app.clone();
    until(PROMPT, "the slow reader's fetch in flight", || {
        inflight.inflight() == 1
    })
    .await;

    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut others = Vec::new();
    for _ in 0..20 {
        let addr = edge.http();
        let target = target.clone();
        let expected = expected.clone();
        let done = Arc::clone(&done);
        others.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::builder()
                .uri(target.as_str())
                .header("host", HOST)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = tx.send_request(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            // Compared frame by frame, so 20 readers never hold 20 copies.
            let mut body = r.into_body();
            let mut at = 0;
            while let Some(f) = body.frame().await {
                let f = f.unwrap();
                if let Ok(d) = f.into_data() {
                    assert_eq!(d[..], expected[at..at + d.len()], "at {at}");
                    at += d.len();
                }
            }
            assert_eq!(at, expected.len());
            done.fetch_add(1, Ordering::SeqCst);
            started.elapsed()
        }));
    }
    // The slow reader has its head (and at most a few frames in flight) and reads nothing more until the others
    // are done: if the shared fetch were paced by its slowest reader, they would not finish.
    let slow_resp = tokio::time::timeout(PROMPT, slow)
        .await
        .expect("slow reader's head in time")
        .unwrap()
        .unwrap();
    assert_eq!(slow_resp.status(), StatusCode::OK);
    let mut worst = Duration::ZERO;
    for t in others {
        let elapsed = tokio::time::timeout(PROMPT, t)
            .await
            .expect("the others finish while the slow reader does not read")
            .unwrap();
        worst = worst.max(elapsed);
    }
    assert_eq!(done.load(Ordering::SeqCst), 20);
    assert!(worst < Duration::from_secs(4), "the others took {worst:?}");
    // The fetch completed and stored while the slow reader still has most of its body unread.
    until(PROMPT, "the object stored", || {
        edge.stored(&target) && inflight.inflight() == 0
    })
    .await;
    assert_eq!(o.fetches(&target), 1, "one origin fetch for all 21");

    // Now the slow reader reads: every byte, in order.
    let body = tokio::time::timeout(PROMPT, slow_resp.into_body().collect())
        .await
        .expect("slow reader's body in time")
        .expect("whole body")
        .to_bytes();
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the slow reader's body differs");

    // A hit with exactly the origin's bytes.
    let hit = get(edge.http(), &target).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(o.fetches(&target), 1);
    o.inject(vec![]);
    let direct = get(o.started.http_addr, &target).await;
    assert_eq!(direct.status, StatusCode::OK);
    assert!(
        hit.body == direct.body,
        "the stored object differs from the origin's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_and_are_served_once_others_close() {
    let o = start_origin().await;
    let limit = 4;
    let mut plan = TierPlan::default();
    plan.limits.max_connections = limit;
    let edge = start_tier_with(tier_config(o.url()), plan).await;
    let target = "/static/limit?size=20000";
    let expected = o.expected(target, &HeaderMap::new());

    // Hold every connection slot with an idle keep-alive connection that was served once.
    let mut holders = Vec::new();
    for _ in 0..limit {
        let stream = TcpStream::connect(edge.http()).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .uri("/static/hold")
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = tokio::time::timeout(PROMPT, tx.send_request(req))
            .await
            .expect("a holder is served")
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.into_body().collect().await.unwrap();
        holders.push((tx, conn));
    }

    // Ten times the limit more: they connect (the kernel backlog holds them) but are not served yet.
    let excess = 10 * limit;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut waiting = Vec::new();
    for i in 0..excess {
        let addr = edge.http();
        let answered = Arc::clone(&answered);
        waiting.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req =
                format!("GET {target} HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut all = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut all)).await;
            answered.fetch_add(1, Ordering::SeqCst);
            assert!(r.is_ok(), "excess connection {i} never served");
            all
        }));
    }
    // A negative check needs a window: no excess connection is answered while every slot is held.
    let window = Instant::now() + Duration::from_millis(500);
    while Instant::now() < window {
        assert_eq!(
            answered.load(Ordering::SeqCst),
            0,
            "served beyond the connection limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.fetches(target), 0);

    // Close the holders: the waiting connections are accepted and served, all of them, correctly.
    for (tx, conn) in holders {
        drop(tx);
        conn.abort();
    }
    let t0 = Instant::now();
    for t in waiting {
        let all = t.await.unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with("HTTP/1.1 200 "),
            "{}",
            &text[..text.len().min(200)]
        );
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(all[split..] == expected[..], "wrong body");
    }
    assert!(
        t0.elapsed() < PROMPT,
        "the waiting connections took {:?}",
        t0.elapsed()
    );
    assert_eq!(o.fetches(target), 1);

    // And the tier serves normally afterwards.
    let hit = get(edge.http(), target).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, expected);
    let miss = get(edge.http(), "/static/after-limit").await;
    assert_eq!(miss.status, StatusCode::OK);
    assert!(!miss.hit(), "{}", miss.cache_status());
    assert_eq!(o.fetches("/static/after-limit"), 1);
}
