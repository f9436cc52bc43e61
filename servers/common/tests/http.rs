//! serve_http, read_body_limited and serve_admin over real loopback sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use refbench_common::CommonError;
use refbench_common::admin::{METRICS_CONTENT_TYPE, metrics_handle, serve_admin};
use refbench_common::bind::{DEFAULT_BIND, bind_tcp};
use refbench_common::http::{BodyError, Limits, read_body_limited, serve_http};
use refbench_common::shutdown::{self, ShutdownTrigger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Generous bound for anything that should happen "promptly" on a noisy,
/// shared 2-core host; the tests assert ordering, not speed.
const PROMPT: Duration = Duration::from_secs(10);

/// `/sleep/<ms>` sleeps, `/body` reads the body with a 16-byte limit,
/// anything else echoes "<version> <method> <path>".
async fn test_service(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/body" {
        return Ok(match read_body_limited(req.into_body(), 16).await {
            Ok(b) => Response::new(Full::new(b)),
            Err(e @ BodyError::TooLarge { .. }) => {
                let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                r
            }
            Err(e) => {
                let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        });
    }
    let text = format!("{:?} {} {}", req.version(), req.method(), path);
    Ok(Response::new(Full::new(Bytes::from(text))))
}

struct Server {
    addr: SocketAddr,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), CommonError>>,
}

async fn spawn_server(limits: Limits) -> Server {
    let listener = bind_tcp(DEFAULT_BIND.parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let service = hyper::service::service_fn(test_service);
    let task = tokio::spawn(serve_http(listener, service, limits, shutdown));
    Server {
        addr,
        trigger,
        task,
    }
}

impl Server {
    async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(PROMPT, self.task)
            .await
            .expect("serve_http returns after shutdown")
            .expect("no panic")
            .expect("clean exit");
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h1(addr: SocketAddr) -> H1 {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

async fn h2(addr: SocketAddr) -> H2 {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn req(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(if body.is_empty() { "GET" } else { "POST" })
        .uri(format!("http://localhost{path}"))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

async fn text(r: Response<Incoming>) -> (StatusCode, Version, String) {
    let status = r.status();
    let version = r.version();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "current_thread")]
async fn http1_keep_alive_and_h2c_on_one_port() {
    let handle = metrics_handle().unwrap();
    let server = spawn_server(Limits::default()).await;

    let mut c = h1(server.addr).await;
    for i in 0..3 {
        let (s, v, b) = text(c.send_request(req(&format!("/a{i}"), b"")).await.unwrap()).await;
        assert_eq!((s, v), (StatusCode::OK, Version::HTTP_11));
        assert_eq!(b, format!("HTTP/1.1 GET /a{i}"));
    }

    let mut c2 = h2(server.addr).await;
    let (s, v, b) = text(c2.send_request(req("/h2", b"")).await.unwrap()).await;
    assert_eq!((s, v), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(b, "HTTP/2.0 GET /h2");

    let rendered = handle.render();
    assert!(rendered.contains("http_connections_total"), "{rendered}");
    assert!(rendered.contains("http_connections_active"), "{rendered}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_multi_thread_runtime_with_concurrent_streams() {
    let server = spawn_server(Limits::default()).await;
    let c = h2(server.addr).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let r = c.send_request(req(&format!("/s{i}"), b"")).await.unwrap();
                text(r).await.2
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("HTTP/2.0 GET /s{i}"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn connection_limit_leaves_extra_clients_in_the_backlog() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let server = spawn_server(limits).await;
    let mut first = h1(server.addr).await;
    let (s, _, _) = text(first.send_request(req("/one", b"")).await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);

    // The kernel completes the handshake, but the server does not accept it
    // while the first connection holds the only permit.
    let mut second = h1(server.addr).await;
    let pending = tokio::spawn(async move {
        let r = second.send_request(req("/two", b"")).await.unwrap();
        text(r).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "second connection was served early");

    drop(first); // closes the first connection, releasing the permit
    let (s, _, b) = tokio::time::timeout(PROMPT, pending)
        .await
        .expect("second connection served after the first closed")
        .unwrap();
    assert_eq!((s, b.as_str()), (StatusCode::OK, "HTTP/1.1 GET /two"));
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn oversized_headers_are_rejected() {
    let server = spawn_server(Limits::default()).await; // 16 KiB
    let big = "v".repeat(20 * 1024);

    let mut c = h1(server.addr).await;
    let r = Request::builder()
        .uri("http://localhost/")
        .header("x-big", &big)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Just under the limit is fine.
    let mut c = h1(server.addr).await;
    let r = Request::builder()
        .uri("http://localhost/")
        .header("x-big", "v".repeat(12 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.send_request(r).await.unwrap().status(), StatusCode::OK);

    let mut c = h2(server.addr).await;
    let r = Request::builder()
        .uri("http://localhost/")
        .header("x-big", &big)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    server.stop().await;
}

/// Reads until EOF or error; returns how long that took.
async fn time_until_closed(mut s: TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PROMPT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("server never closed the connection"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn silent_slow_and_idle_clients_are_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = spawn_server(limits).await;

    // Connects and never sends a byte.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let t = time_until_closed(silent).await;
    assert!(t >= Duration::from_millis(150), "closed after {t:?}");

    // Sends half a request head and stalls.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let t = time_until_closed(slow).await;
    assert!(t >= Duration::from_millis(150), "closed after {t:?}");

    // A complete request is answered; then the idle keep-alive connection
    // is closed once it has waited header_read_timeout for the next head.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let t = time_until_closed(idle).await;
    assert!(t >= Duration::from_millis(150), "idle closed after {t:?}");
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let server = spawn_server(Limits::default()).await;
    let mut c = h1(server.addr).await;
    let in_flight = tokio::spawn(async move {
        let r = c.send_request(req("/sleep/300", b"")).await;
        text(r.unwrap()).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = server.addr;
    server.trigger.trigger();
    let (s, _, b) = tokio::time::timeout(PROMPT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s, b.as_str()), (StatusCode::OK, "HTTP/1.1 GET /sleep/300"));
    tokio::time::timeout(PROMPT, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The listener is closed: new clients are refused.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn drain_gives_up_after_drain_timeout() {
    let limits = Limits {
        drain_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = spawn_server(limits).await;
    let mut c = h1(server.addr).await;
    let stuck = tokio::spawn(async move { c.send_request(req("/sleep/60000", b"")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    server.trigger.trigger();
    tokio::time::timeout(PROMPT, server.task)
        .await
        .expect("serve_http gave up draining")
        .unwrap()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
    // The stuck request was cut off, not answered.
    let r = tokio::time::timeout(PROMPT, stuck).await.unwrap().unwrap();
    assert!(r.is_err(), "the aborted request must fail, got {r:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn request_bodies_over_the_limit_get_413() {
    let server = spawn_server(Limits::default()).await;
    let mut c = h1(server.addr).await;
    let (s, _, b) = text(c.send_request(req("/body", b"0123456789")).await.unwrap()).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "0123456789"));
    let mut c = h1(server.addr).await;
    let (s, _, b) = text(
        c.send_request(req("/body", b"0123456789abcdefX"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(b.contains("16 bytes"), "{b}");
    server.stop().await;
}

/// A body delivered in fixed chunks with no length hint (like chunked
/// transfer encoding), optionally failing at the end.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    fail_at_end: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.chunks.pop_front() {
            Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
            None if self.fail_at_end => {
                self.fail_at_end = false;
                Poll::Ready(Some(Err(std::io::Error::other("reset"))))
            }
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn chunks(parts: &[&'static str], fail_at_end: bool) -> Chunks {
    Chunks {
        chunks: parts
            .iter()
            .map(|p| Bytes::from_static(p.as_bytes()))
            .collect(),
        fail_at_end,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn read_body_limited_cases() {
    assert_eq!(
        read_body_limited(Empty::<Bytes>::new(), 0).await.unwrap(),
        Bytes::new()
    );
    assert_eq!(
        read_body_limited(Full::new(Bytes::from_static(b"abc")), 3)
            .await
            .unwrap(),
        "abc"
    );
    // Declared length over the limit: refused before reading.
    let e = read_body_limited(Full::new(Bytes::from_static(b"abcd")), 3)
        .await
        .unwrap_err();
    assert!(matches!(e, BodyError::TooLarge { limit: 3 }), "{e}");
    // No length hint: concatenated across chunks, and cut off once over.
    assert_eq!(
        read_body_limited(chunks(&["ab", "cd", "e"], false), 5)
            .await
            .unwrap(),
        "abcde"
    );
    let e = read_body_limited(chunks(&["ab", "cd", "ef"], false), 5)
        .await
        .unwrap_err();
    assert!(matches!(e, BodyError::TooLarge { limit: 5 }));
    let e = read_body_limited(chunks(&["ab"], true), 5)
        .await
        .unwrap_err();
    assert!(matches!(e, BodyError::Read(_)), "{e}");
    assert!(e.to_string().contains("reset"), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn admin_listener_serves_metrics_and_health() {
    let handle = metrics_handle().unwrap();
    metrics::counter!("admin_socket_test_total").increment(7);
    let listener = bind_tcp(DEFAULT_BIND.parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(serve_admin(listener, handle, shutdown));

    let mut c = h1(addr).await;
    let r = c.send_request(req("/metrics", b"")).await.unwrap();
    assert_eq!(r.headers()["content-type"], METRICS_CONTENT_TYPE);
    let (s, _, b) = text(r).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("admin_socket_test_total 7"), "{b}");

    let (s, _, b) = text(c.send_request(req("/healthz", b"")).await.unwrap()).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "ok"));
    let (s, _, _) = text(c.send_request(req("/other", b"")).await.unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = text(c.send_request(req("/healthz", b"x")).await.unwrap()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    let mut c2 = h2(addr).await;
    let (s, v, _) = text(c2.send_request(req("/healthz", b"")).await.unwrap()).await;
    assert_eq!((s, v), (StatusCode::OK, Version::HTTP_2));

    drop(c);
    drop(c2);
    trigger.trigger();
    tokio::time::timeout(PROMPT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
