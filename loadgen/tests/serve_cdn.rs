//! `loadgen serve cdn ...` runs every cdn role as a real process: an origin, a shield in front of it and an edge in
//! front of the shield, each announcing itself on stdout; a request through the edge is a miss, then a hit, with the
//! same bytes, and every process stops on SIGTERM. Bad flags exit 2 naming the flag.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `loadgen serve cdn ...` child, killed if a test fails before stopping it.
struct Server {
    child: Child,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["serve", "cdn"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start loadgen serve cdn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines
        .next()
        .expect("a ready line before stdout closes")
        .expect("read stdout");
    let json = line
        .strip_prefix("REFBENCH_READY ")
        .unwrap_or_else(|| panic!("not a ready line: {line}"));
    let ready: serde_json::Value = serde_json::from_str(json).expect("ready line is JSON");
    let http = ready["listeners"]["http"]
        .as_str()
        .expect("http listener")
        .parse()
        .expect("socket address");
    Server { child, http }
}

/// One HTTP/1.1 GET (connection closed after it); returns the status line, the headers (lower-cased names) and body.
fn get(addr: SocketAddr, path: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: cdn.test\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_hex = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_hex.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn sigterm_and_wait(mut s: Server, deadline: Duration) {
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            assert!(status.success(), "clean exit after SIGTERM: {status}");
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "no exit within {deadline:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn origin_shield_and_edge_run_as_processes_and_serve_a_hit() {
    let origin = spawn(&["origin"]);
    let shield = spawn(&[
        "cache",
        "--role",
        "shield",
        "--upstream",
        &format!("http://{}", origin.http),
    ]);
    let edge = spawn(&[
        "cache",
        "--role",
        "edge",
        "--upstream",
        &format!("http://{}", shield.http),
    ]);

    let (status, h1, body1) = get(edge.http, "/static/a.js");
    assert!(status.contains(" 200 "), "{status}");
    let miss = header(&h1, "cache-status");
    assert!(miss.contains("fwd="), "first request is forwarded: {miss}");
    let (status, h2, body2) = get(edge.http, "/static/a.js");
    assert!(status.contains(" 200 "), "{status}");
    let hit = header(&h2, "cache-status");
    assert!(hit.contains("hit"), "second request is a hit: {hit}");
    assert!(!body1.is_empty());
    assert_eq!(body1, body2, "the hit serves the bytes the miss fetched");
    assert_eq!(header(&h1, "etag"), header(&h2, "etag"));

    for s in [edge, shield, origin] {
        sigterm_and_wait(s, Duration::from_secs(10));
    }
}

#[test]
fn bad_cdn_flags_exit_2_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "serve",
            "cdn",
            "cache",
            "--role",
            "edge",
            "--upstream",
            "ftp://x",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream"), "names the flag: {err}");

    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["serve", "cdn", "cache", "--role", "edge"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "--upstream is required");
}
