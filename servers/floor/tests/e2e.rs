//! The floor binary and the in-process server, over loopback sockets.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use refbench_common::announce::{Ready, parse_ready_line};
use refbench_common::shutdown;
use refbench_floor::{ServeArgs, ServePlan};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Generous: the host is a shared 2-core machine; these bound hangs, they
/// do not measure speed.
const PROMPT: Duration = Duration::from_secs(30);

struct Floor {
    child: Child,
    ready: Ready,
    stdout: BufReader<tokio::process::ChildStdout>,
}

async fn spawn_floor(args: &[&str]) -> Floor {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refbench-floor"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn refbench-floor");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let ready = tokio::time::timeout(PROMPT, async {
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).await.unwrap();
            assert!(n > 0, "floor exited before announcing readiness");
            if let Some(r) = parse_ready_line(&line) {
                return r;
            }
        }
    })
    .await
    .expect("REFBENCH_READY within the timeout");
    Floor {
        child,
        ready,
        stdout,
    }
}

impl Floor {
    fn addr(&self, name: &str) -> SocketAddr {
        self.ready.listeners[name]
    }

    /// SIGTERM, then expect a clean exit with nothing more on stdout.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill() only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(PROMPT, self.child.wait())
            .await
            .expect("exited after SIGTERM")
            .unwrap();
        assert_eq!(status.code(), Some(0), "{status:?}");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "", "stdout carries only the readiness line");
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1(addr: SocketAddr) -> H1 {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://127.0.0.1{path}"))
        .body(Empty::new())
        .unwrap()
}

async fn body(r: Response<Incoming>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

async fn fetch(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let mut c = h1(addr).await;
    let r = c.send_request(get(path)).await.unwrap();
    (r.status(), body(r).await)
}

/// The value of an unlabelled metric in Prometheus text format.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "current_thread")]
async fn binary_serves_h1_h2_metrics_and_exits_cleanly_on_sigterm() {
    let floor = spawn_floor(&[]).await;
    assert_eq!(floor.ready.system, "floor");
    assert_eq!(floor.ready.pid, floor.child.id().unwrap());
    assert_eq!(floor.ready.tls_cert_pem, None);
    let http = floor.addr("http");
    let admin = floor.addr("admin");
    assert!(http.ip().is_loopback() && http.port() != 0);
    assert_ne!(http, admin);

    // HTTP/1.1 keep-alive: three requests on one connection.
    let mut c = h1(http).await;
    for path in ["/", "/a/b?c=d", "/x"] {
        let r = c.send_request(get(path)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers()["content-length"], "2");
        assert_eq!(body(r).await, "ok");
    }

    // HTTP/2 with prior knowledge on the same port.
    let s = TcpStream::connect(http).await.unwrap();
    let (mut c2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = c2.send_request(get("/h2")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(body(r).await, "ok");

    let (s, text) = fetch(admin, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(metric(&text, "floor_requests_total"), Some(4.0), "{text}");
    assert_eq!(metric(&text, "http_connections_total"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "http_connections_active"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        fetch(admin, "/healthz").await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(fetch(admin, "/nope").await.0, StatusCode::NOT_FOUND);

    // Open keep-alive connections must not block the graceful exit.
    floor.terminate().await;
    drop(c);
    drop(c2);
}

#[tokio::test(flavor = "current_thread")]
async fn delay_mode_binary_on_two_threads() {
    let floor = spawn_floor(&["--threads", "2", "--delay-fixed-us", "20000"]).await;
    let http = floor.addr("http");
    let mut c = h1(http).await;
    for _ in 0..3 {
        let start = Instant::now();
        let r = c.send_request(get("/")).await.unwrap();
        assert_eq!(body(r).await, "ok");
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
    let (_, text) = fetch(floor.addr("admin"), "/metrics").await;
    assert_eq!(
        metric(&text, "floor_delayed_requests_total"),
        Some(3.0),
        "{text}"
    );
    floor.terminate().await;
}

/// A frozen server (SIGSTOP for 100 ms while a 20 ms delay is pending) releases its response late, and counts it:
/// these counters are how a check of the instrument tells a run the host disturbed from a wrong instrument.
#[tokio::test(flavor = "current_thread")]
async fn late_release_is_counted_when_the_server_is_frozen() {
    let floor = spawn_floor(&["--delay-fixed-us", "20000"]).await;
    let mut c = h1(floor.addr("http")).await;
    // On time first: a 20 ms timer is not released 1 ms late on an unfrozen server.
    let r = c.send_request(get("/")).await.unwrap();
    assert_eq!(body(r).await, "ok");
    let (_, text) = fetch(floor.addr("admin"), "/metrics").await;
    let on_time_late = metric(&text, "floor_release_late_over_1ms_total").unwrap_or(0.0);

    let pid = floor.child.id().expect("still running") as libc::pid_t;
    let in_flight = tokio::spawn(async move {
        let r = c.send_request(get("/")).await.unwrap();
        body(r).await
    });
    // Let the request arrive and its 20 ms timer start, then freeze the whole process past the release instant.
    tokio::time::sleep(Duration::from_millis(10)).await;
    // SAFETY: kill() only sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(in_flight.await.unwrap(), "ok");

    let (_, text) = fetch(floor.addr("admin"), "/metrics").await;
    assert_eq!(
        metric(&text, "floor_release_late_over_1ms_total"),
        Some(on_time_late + 1.0),
        "{text}"
    );
    assert!(metric(&text, "floor_release_late_over_250us_total").unwrap_or(0.0) >= 1.0);
    floor.terminate().await;
}

/// `--holds-out` writes, after the drain, the realized hold of every delayed response: loadgen's histogram format,
/// one sample per request, none below the injected delay.
#[tokio::test(flavor = "current_thread")]
async fn holds_out_writes_the_realized_holds_after_shutdown() {
    let dir = std::env::temp_dir().join(format!("floor-holds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("holds.hdr");
    let floor = spawn_floor(&[
        "--delay-fixed-us",
        "3000",
        "--holds-out",
        path.to_str().unwrap(),
    ])
    .await;
    let mut c = h1(floor.addr("http")).await;
    for _ in 0..5 {
        let r = c.send_request(get("/")).await.unwrap();
        assert_eq!(body(r).await, "ok");
    }
    assert!(!path.exists(), "written only after shutdown");
    floor.terminate().await;
    let text = std::fs::read_to_string(&path).unwrap();
    use base64::Engine as _;
    use hdrhistogram::serialization::Deserializer;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    let h: hdrhistogram::Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .unwrap();
    assert_eq!(h.len(), 5);
    assert!(h.min() >= 2_990, "a hold below the 3 ms delay: {}", h.min());
    assert!(h.max() < 3_000_000, "a hold of {} us", h.max());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_waits_for_in_flight_delayed_requests() {
    let floor = spawn_floor(&["--delay-fixed-us", "500000"]).await;
    let mut c = h1(floor.addr("http")).await;
    let in_flight = tokio::spawn(async move {
        let r = c.send_request(get("/")).await.unwrap();
        (r.status(), body(r).await)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    floor.terminate().await; // returns only after the process exited 0
    let (s, b) = in_flight.await.unwrap();
    assert_eq!((s, b.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_flags_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--stall-hold-ms", "10", "--stall-every-ms", "5"],
            "--stall-hold-ms",
        ),
        (&["--body-bytes", "20000000"], "--body-bytes"),
        (&["--threads", "0"], "--threads"),
        (&["--cpus", "100000"], "--cpus"),
        (&["--stall-hold-ms", "10"], "--stall-every-ms"),
        (&["--holds-out", "/tmp/never-written"], "--holds-out"),
    ];
    for (args, flag) in cases {
        let out = tokio::time::timeout(
            PROMPT,
            Command::new(env!("CARGO_BIN_EXE_refbench-floor"))
                .args(*args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "no readiness line on failure");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn in_process_start_and_shutdown() {
    let args = ServeArgs {
        body_bytes: 5,
        ..ServeArgs::default()
    };
    let (config, plan) = args.resolve().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let started = refbench_floor::start(config, &plan, shutdown)
        .await
        .unwrap();
    let ready = started.ready();
    assert_eq!(ready.listeners["http"], started.http_addr);
    let (s, b) = fetch(started.http_addr, "/").await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "xxxxx"));
    trigger.trigger();
    tokio::time::timeout(PROMPT, started.join())
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(ready.listeners["http"]).await.is_err());
    // Defaults agree between ServeArgs and ServePlan.
    assert_eq!(ServePlan::default().threads, 1);
}
