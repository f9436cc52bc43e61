//! The tier's own HTTP/1.1 server (`refbench_common::h1`) on raw TCP: the hit fast path answers exactly what the
//! service path answers, pipelined requests mixing both come back in order, HTTP/1.0 keep-alive, request bodies
//! (chunked, `Expect: 100-continue`, over the limit) reach the upstream intact or are refused with a reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use refbench_cdn::cache::{Role, TierConfig, TierPlan};
use refbench_cdn::origin::OriginConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{HOST, start_tier, start_tier_with};

/// Bounds hangs on a shared 2-core host; never a speed measurement.
const PROMPT: Duration = Duration::from_secs(5);

/// One response read off a raw connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// Lowercase names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw keep-alive connection with a read buffer that survives between responses (pipelining).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; false at EOF.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PROMPT, self.s.read(&mut chunk))
            .await
            .expect("no hang")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response (`head_only` for a HEAD request's).
    async fn response(&mut self, head_only: bool) -> Resp {
        let (status, headers, used) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("valid response head")
            {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (r.code.unwrap(), headers, n);
            }
            assert!(
                self.more().await,
                "closed before a whole head: {:?}",
                self.buf
            );
        };
        self.buf.drain(..used);
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status < 200 || status == 204 || status == 304 {
            return resp;
        }
        if let Some(n) = resp.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.more().await, "closed mid-body");
            }
            resp.body = self.buf.drain(..n).collect();
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let (used, size) = loop {
                    if let Ok(httparse::Status::Complete(x)) = httparse::parse_chunk_size(&self.buf)
                    {
                        break x;
                    }
                    assert!(self.more().await, "closed mid-chunk");
                };
                let size = size as usize;
                while self.buf.len() < used + size + 2 {
                    assert!(self.more().await, "closed mid-chunk");
                }
                resp.body.extend_from_slice(&self.buf[used..used + size]);
                self.buf.drain(..used + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.more().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Whether the server closed the connection (EOF within [`PROMPT`]).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.more().await
    }
}

fn get(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n")
}

/// Drops the fields that change from one response to the next (`Date`, `Age`) and the `ttl` in `Cache-Status`.
fn stable(r: &Resp) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| n != "date" && n != "age")
        .map(|(n, v)| {
            let v = if n == "cache-status" {
                v.split("; ")
                    .filter(|p| !p.starts_with("ttl="))
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                v.clone()
            };
            (n.clone(), v)
        })
        .collect()
}

#[tokio::test]
async fn a_fast_path_hit_is_the_same_response_as_the_service_path_hit() {
    let o = common::start_origin(OriginConfig::default()).await;
    let edge = start_tier(common::tier_config(Role::Edge, vec![o.url()])).await;
    let mut c = Raw::connect(edge.http()).await;
    c.send(get("/static/same?size=3000", "").as_bytes()).await;
    let miss = c.response(false).await;
    assert_eq!(miss.status, 200);
    assert!(
        miss.header("cache-status")
            .unwrap()
            .contains("fwd=uri-miss")
    );

    // A plain GET takes the fast path; `If-Match` keeps a request off it without changing what a hit serves.
    c.send(get("/static/same?size=3000", "").as_bytes()).await;
    let fast = c.response(false).await;
    c.send(get("/static/same?size=3000", "If-Match: *\r\n").as_bytes())
        .await;
    let slow = c.response(false).await;
    for r in [&fast, &slow] {
        assert_eq!(r.status, 200);
        assert!(
            r.header("cache-status")
                .unwrap()
                .starts_with("refbench-edge; hit; ttl="),
            "{r:?}"
        );
        assert!(
            r.header("age").is_some() && r.header("date").is_some(),
            "{r:?}"
        );
        assert_eq!(r.body, miss.body);
    }
    assert_eq!(stable(&fast), stable(&slow));
    assert_eq!(fast.body.len(), 3000);
    assert_eq!(o.fetches("/static/same?size=3000"), 1);

    // HEAD on both paths: the same head, no body, the stored length.
    let head = "HEAD /static/same?size=3000 HTTP/1.1\r\nHost: cdn.test\r\n";
    c.send(format!("{head}\r\n").as_bytes()).await;
    let fast_head = c.response(true).await;
    c.send(format!("{head}If-Match: *\r\n\r\n").as_bytes())
        .await;
    let slow_head = c.response(true).await;
    assert_eq!(stable(&fast_head), stable(&slow_head));
    assert_eq!(fast_head.header("content-length"), Some("3000"));
    // Nothing was left over: the next request still lines up.
    c.send(get("/static/same?size=3000", "").as_bytes()).await;
    assert_eq!(c.response(false).await.body, miss.body);

    // A differently cased host is the same key (the fast path lowercases as `CacheKey` does).
    let mut c2 = Raw::connect(edge.http()).await;
    c2.send(b"GET /static/same?size=3000 HTTP/1.1\r\nHost: CDN.Test\r\n\r\n")
        .await;
    let upper = c2.response(false).await;
    assert!(
        upper.header("cache-status").unwrap().contains("; hit"),
        "{upper:?}"
    );
    assert_eq!(o.fetches("/static/same?size=3000"), 1);
}

#[tokio::test]
async fn pipelined_requests_mixing_both_paths_are_answered_in_order() {
    let o = common::start_origin(OriginConfig::default()).await;
    let edge = start_tier(common::tier_config(Role::Edge, vec![o.url()])).await;
    let mut c = Raw::connect(edge.http()).await;
    c.send(get("/static/p-hit", "").as_bytes()).await;
    let first = c.response(false).await;
    assert_eq!(first.status, 200);

    // hit (fast), miss (service, fetched), hit with no-cache (service, revalidated or refetched), HEAD hit
    // (fast), a big miss streamed (service), a hit again (fast): all in one write.
    let mut batch = String::new();
    batch.push_str(&get("/static/p-hit", ""));
    batch.push_str(&get("/static/p-miss", ""));
    batch.push_str(&get("/static/p-hit", "Cache-Control: no-cache\r\n"));
    batch.push_str("HEAD /static/p-hit HTTP/1.1\r\nHost: cdn.test\r\n\r\n");
    batch.push_str(&get("/static/p-big?size=300000", ""));
    batch.push_str(&get("/static/p-hit", ""));
    c.send(batch.as_bytes()).await;
    let expect = [
        ("/static/p-hit", false),
        ("/static/p-miss", false),
        ("/static/p-hit", false),
        ("/static/p-hit", true),
        ("/static/p-big?size=300000", false),
        ("/static/p-hit", false),
    ];
    for (i, (target, head_only)) in expect.iter().enumerate() {
        let r = c.response(*head_only).await;
        assert_eq!(r.status, 200, "#{i} {target}: {r:?}");
        assert_eq!(r.header("x-origin-key"), Some(*target), "#{i}");
        if !head_only {
            assert_eq!(
                r.body,
                o.expected(target, &http::HeaderMap::new()).to_vec(),
                "#{i} {target}"
            );
        }
    }
    assert_eq!(o.fetches("/static/p-miss"), 1);
}

#[tokio::test]
async fn http10_clients_get_keep_alive_only_when_they_ask() {
    let o = common::start_origin(OriginConfig::default()).await;
    let edge = start_tier(common::tier_config(Role::Edge, vec![o.url()])).await;
    let warm = "GET /static/ten HTTP/1.0\r\nHost: cdn.test\r\n\r\n";
    let mut c = Raw::connect(edge.http()).await;
    c.send(warm.as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed().await,
        "an HTTP/1.0 request without keep-alive closes"
    );

    let mut c = Raw::connect(edge.http()).await;
    for _ in 0..2 {
        c.send(b"GET /static/ten HTTP/1.0\r\nHost: cdn.test\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert!(r.header("cache-status").unwrap().contains("; hit"), "{r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // HTTP/1.1 with Connection: close, on the fast path too.
    c.send(get("/static/ten", "Connection: close\r\n").as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
}

/// An upstream that answers every request with its own body (uncacheable) and the method it saw.
async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let method = req.method().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let resp = Response::builder()
                        .header("cache-control", "no-store")
                        .header("x-method", method)
                        .body(Full::new(body))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_whole_or_are_refused_with_a_reason() {
    let up = echo_upstream().await;
    let mut plan = TierPlan::default();
    plan.limits.max_body_bytes = 64 * 1024;
    let cfg = TierConfig {
        max_request_body_bytes: 64 * 1024,
        ..common::tier_config(Role::Edge, vec![format!("http://{up}")])
    };
    let edge = start_tier_with(cfg, plan).await;
    let mut c = Raw::connect(edge.http()).await;

    // Chunked, in odd pieces, with an extension and a trailer.
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let mut req =
        b"POST /up/chunked HTTP/1.1\r\nHost: cdn.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in body.chunks(7_001) {
        req.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    c.send(&req).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-method"), Some("POST"));
    assert_eq!(r.body, body);

    // Expect: 100-continue gets the interim response before the body is sent.
    c.send(b"PUT /up/continue HTTP/1.1\r\nHost: cdn.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.response(false).await;
    assert_eq!(interim.status, 100);
    c.send(b"hello").await;
    let r = c.response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));

    // Over the limit by Content-Length: refused before reading the body, with a reason, and closed.
    c.send(b"POST /up/big HTTP/1.1\r\nHost: cdn.test\r\nContent-Length: 70000\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 413);
    assert!(
        String::from_utf8_lossy(&r.body).contains("too large"),
        "{r:?}"
    );
    assert!(c.closed().await);

    // Over the limit while chunked: refused once the chunks pass it.
    let mut c = Raw::connect(edge.http()).await;
    let mut req =
        b"POST /up/big HTTP/1.1\r\nHost: cdn.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"8000\r\n");
        req.extend_from_slice(&[b'x'; 0x8000]);
        req.extend_from_slice(b"\r\n");
    }
    let _ = c.s.write_all(&req).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 413);

    // A bad chunk size is a 400 that closes.
    let mut c = Raw::connect(edge.http()).await;
    c.send(b"POST /up/bad HTTP/1.1\r\nHost: cdn.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 400);
    assert!(c.closed().await);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let o = common::start_origin(OriginConfig::default()).await;
    let cfg = common::tier_config(Role::Edge, vec![o.url()]);
    let (trigger, shutdown) = refbench_common::shutdown::channel();
    let started =
        refbench_cdn::cache::start(cfg.resolve().unwrap(), &TierPlan::default(), shutdown)
            .await
            .unwrap();
    let mut idle = Raw::connect(started.http_addr).await;
    idle.send(get("/static/sd", "").as_bytes()).await;
    assert_eq!(idle.response(false).await.status, 200);
    // Connected, nothing sent yet: also idle.
    let mut silent = Raw::connect(started.http_addr).await;
    let t0 = std::time::Instant::now();
    trigger.trigger();
    assert!(
        idle.closed().await,
        "an idle keep-alive connection is closed on shutdown"
    );
    assert!(
        silent.closed().await,
        "a silent connection is closed on shutdown"
    );
    // Well before the 5 s drain timeout: nothing was waited for.
    tokio::time::timeout(Duration::from_secs(3), started.join())
        .await
        .expect("drained before the drain timeout")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// The head deadline runs from the start of each wait for a head, on either path: a keep-alive connection served
/// only by the fast path stays open long past the timeout while it keeps asking, and an idle one is closed after
/// it. (Deadlines are enforced by the reaper thread, not by a timer on the serving runtime.)
#[tokio::test]
async fn head_deadline_restarts_per_request_on_the_fast_path_and_closes_idle_connections() {
    let o = common::start_origin(OriginConfig::default()).await;
    let timeout = Duration::from_millis(300);
    let mut plan = TierPlan::default();
    plan.limits.header_read_timeout = timeout;
    let edge = start_tier_with(common::tier_config(Role::Edge, vec![o.url()]), plan).await;
    let mut c = Raw::connect(edge.http()).await;
    c.send(get("/static/kept", "").as_bytes()).await;
    assert_eq!(c.response(false).await.status, 200);
    // Hits only, one every 50 ms for over 4 timeouts.
    let started = std::time::Instant::now();
    let mut hits = 0;
    while started.elapsed() < timeout * 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(get("/static/kept", "").as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert!(r.header("cache-status").unwrap().contains("; hit"), "{r:?}");
        hits += 1;
    }
    assert!(hits >= 20, "only {hits} hits");
    assert_eq!(o.fetches("/static/kept"), 1);
    // Then idle: closed within the timeout plus the reaper's tick (an eighth of it), well inside PROMPT.
    let idle_from = std::time::Instant::now();
    assert!(
        c.closed().await,
        "an idle connection outlived its head deadline"
    );
    assert!(idle_from.elapsed() >= timeout, "closed before the deadline");
}
