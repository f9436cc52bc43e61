//! Shared helpers of the server-level tests: the real `ledger-writer` binary as a child process (killed on drop),
//! a minimal HTTP/1.1 client (hyper, one connection each) and the 128-byte wire records of `API.md`, encoded here
//! independently of the crate's codec so the tests check the documented layout, not the code against itself.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ledger-writer");

/// Bound on a server's start-up (recovery included) on a noisy shared VM.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on a server's exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub const OCTET: &str = "application/octet-stream";
pub const JSON: &str = "application/json";

// ---------------------------------------------------------------------------------------------------------------
// Processes.

/// Waits for `child` to exit, at most `timeout`; kills it (and panics) when it does not.
pub fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: did not exit within {timeout:?}; killed");
            }
            Err(e) => panic!("{what}: wait: {e}"),
        }
    }
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Runs `BIN args...` to completion (bounded), returning its status, stdout and stderr.
pub fn run_bin(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ledger-writer");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, timeout, &format!("ledger-writer {args:?}"));
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// `ledger-writer verify --data-dir DIR`: exit code and the parsed JSON report.
pub fn verify_cli(dir: &Path) -> (i32, serde_json::Value) {
    let d = dir.to_str().expect("utf-8 path");
    let (status, out, err) = run_bin(&["verify", "--data-dir", d], Duration::from_secs(300));
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): stdout {out:?} stderr {err:?}"));
    (status.code().unwrap_or(-1), report)
}

/// A running `ledger-writer serve`; SIGKILLed and reaped on drop (so a failing test leaves no process behind).
pub struct Server {
    child: Option<Child>,
    /// The API listener, from the ready line.
    pub http: SocketAddr,
    /// The admin listener (`/metrics`), from the ready line.
    pub admin: SocketAddr,
    /// The server's pid, from the ready line.
    pub pid: u32,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// Why a server did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Server {
    /// Starts `serve --data-dir DIR --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 extra...`; panics when it does not
    /// become ready.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        match Server::try_start(dir, extra) {
            Ok(s) => s,
            Err(f) => panic!("server did not start: {} stderr:\n{}", f.status, f.stderr),
        }
    }

    /// Like [`Server::start`], but returns the exit status and stderr of a server that exits instead.
    pub fn try_start(dir: &Path, extra: &[&str]) -> Result<Server, StartFailure> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            dir.to_str().expect("utf-8 path").into(),
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--admin-bind".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ledger-writer serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(r) = refbench_common::announce::parse_ready_line(&line) {
                    let _ = tx.send(r);
                    sent = true;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            http: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            pid: 0,
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(ready) => {
                server.http = ready.listeners["http"];
                server.admin = ready.listeners["admin"];
                server.pid = ready.pid;
                assert_eq!(ready.system, "ledger");
                Ok(server)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without a ready line: the server exited.
                let mut child = server.child.take().expect("child");
                let status = wait_bounded(&mut child, EXIT_TIMEOUT, "server that closed stdout");
                let stderr = server.join_stderr();
                Err(StartFailure { status, stderr })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "server not ready within {START_TIMEOUT:?}; stderr:\n{}",
                    server.stderr()
                )
            }
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn join_stderr(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            // The pipe closes when the process is gone; bounded by the exit wait before this.
            let _ = t.join();
        }
        self.stderr()
    }

    /// The `ledger-writer: recovered ...` line. The server prints it before the ready line, but on another pipe:
    /// wait (bounded) for the reader thread to see it.
    pub fn recovery_line(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let err = self.stderr();
            if let Some(l) = err
                .lines()
                .find(|l| l.starts_with("ledger-writer: recovered "))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no recovery line in stderr:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, reap; returns stderr.
    pub fn kill9(mut self) -> String {
        let mut child = self.child.take().expect("child");
        let _ = child.kill(); // SIGKILL on Unix
        wait_bounded(&mut child, EXIT_TIMEOUT, "SIGKILLed server");
        self.join_stderr()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let pid = self.child.as_ref().expect("child").id() as libc::pid_t;
        // SAFETY: kill(2) with our own child's pid (not yet reaped, so not reused); touches no memory.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
    }

    /// Waits (bounded) for the exit after a signal; returns status and stderr.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("child");
        let status = wait_bounded(&mut child, EXIT_TIMEOUT, "server after SIGTERM");
        (status, self.join_stderr())
    }

    /// SIGTERM and wait; asserts a clean exit; returns stderr.
    pub fn term(self) -> String {
        self.signal_term();
        let (status, stderr) = self.wait_exit();
        assert!(
            status.success(),
            "server exit after SIGTERM: {status}; stderr:\n{stderr}"
        );
        stderr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP/1.1 client.

/// One HTTP/1.1 connection.
pub struct Conn {
    tx: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { tx, addr })
    }

    /// Sends one request; `Err` when no complete response arrived (the outcome of a write is then unknown).
    pub async fn req(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let fut = async {
            self.tx
                .ready()
                .await
                .map_err(|e| format!("not ready: {e}"))?;
            let mut b = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, self.addr.to_string());
            if let Some(ct) = content_type {
                b = b.header(http::header::CONTENT_TYPE, ct);
            }
            let req = b
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("build request: {e}"))?;
            let resp = self
                .tx
                .send_request(req)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Resp {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{method} {path}: timed out"))?
    }

    /// A request that must get a response.
    pub async fn must(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        self.req(method, path, content_type, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get_json(&mut self, path: &str) -> (u16, serde_json::Value) {
        let r = self.must("GET", path, None, Vec::new()).await;
        (r.status, r.json())
    }

    pub async fn post_json(&mut self, path: &str, v: &serde_json::Value) -> Resp {
        self.must(
            "POST",
            path,
            Some(JSON),
            serde_json::to_vec(v).expect("json"),
        )
        .await
    }

    pub async fn status(&mut self) -> serde_json::Value {
        let (code, v) = self.get_json("/status").await;
        assert_eq!(code, 200, "GET /status: {v}");
        v
    }

    pub async fn verify(&mut self) -> serde_json::Value {
        let (code, v) = self.get_json("/verify").await;
        assert_eq!(code, 200, "GET /verify: {v}");
        v
    }

    /// `POST /accounts` (binary): per-item (code, timestamp).
    pub async fn create_accounts(&mut self, accounts: &[Acct]) -> (u16, Vec<(u32, u64)>) {
        let mut body = Vec::new();
        for a in accounts {
            a.encode(&mut body);
        }
        let r = self.must("POST", "/accounts", Some(OCTET), body).await;
        assert!(
            r.status == 200 || r.status == 422,
            "POST /accounts: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        (r.status, decode_results(&r.body))
    }

    /// `POST /transfers` (binary): per-item (code, timestamp).
    pub async fn create_transfers(&mut self, transfers: &[Tr]) -> (u16, Vec<(u32, u64)>) {
        let r = self
            .try_create_transfers(transfers)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.0 == 200 || r.0 == 422,
            "POST /transfers: {} {:?}",
            r.0,
            r.1
        );
        r
    }

    /// `POST /transfers` (binary); `Err` when no complete response arrived, or on a status other than 200/422.
    pub async fn try_create_transfers(
        &mut self,
        transfers: &[Tr],
    ) -> Result<(u16, Vec<(u32, u64)>), String> {
        let mut body = Vec::with_capacity(transfers.len() * 128);
        for t in transfers {
            t.encode(&mut body);
        }
        let r = self.req("POST", "/transfers", Some(OCTET), body).await?;
        if r.status != 200 && r.status != 422 {
            return Err(format!(
                "POST /transfers: status {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        if r.body.len() != transfers.len() * 16 {
            return Err(format!(
                "POST /transfers: {} result bytes for {} items",
                r.body.len(),
                transfers.len()
            ));
        }
        Ok((r.status, decode_results(&r.body)))
    }

    /// `POST /transfers/lookup` (binary), in chunks of 8190.
    pub async fn lookup_transfers(&mut self, ids: &[u128]) -> Vec<Tr> {
        let mut out = Vec::new();
        for chunk in ids.chunks(8190) {
            let mut body = Vec::with_capacity(chunk.len() * 16);
            for id in chunk {
                body.extend_from_slice(&id.to_le_bytes());
            }
            let r = self
                .must("POST", "/transfers/lookup", Some(OCTET), body)
                .await;
            assert_eq!(
                r.status,
                200,
                "lookup: {:?}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.body.len() % 128, 0);
            out.extend(r.body.chunks(128).map(Tr::decode));
        }
        out
    }

    /// `POST /accounts/lookup` (binary).
    pub async fn lookup_accounts(&mut self, ids: &[u128]) -> Vec<Acct> {
        let mut out = Vec::new();
        for chunk in ids.chunks(8190) {
            let mut body = Vec::new();
            for id in chunk {
                body.extend_from_slice(&id.to_le_bytes());
            }
            let r = self
                .must("POST", "/accounts/lookup", Some(OCTET), body)
                .await;
            assert_eq!(
                r.status,
                200,
                "lookup: {:?}",
                String::from_utf8_lossy(&r.body)
            );
            out.extend(r.body.chunks(128).map(Acct::decode));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Wire records (API.md), encoded here on purpose.

/// `u32::from_le_bytes([b0, b1, b2, 0])`.
pub const fn currency(s: &str) -> u32 {
    let b = s.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], 0])
}
pub const USD: u32 = currency("USD");
pub const EUR: u32 = currency("EUR");

pub const LINKED: u16 = 1;
pub const PENDING: u16 = 2;
pub const POST: u16 = 4;
pub const VOID: u16 = 8;

/// Result codes used by the tests.
pub const OK: u32 = 0;
pub const LINKED_EVENT_FAILED: u32 = 1;
pub const EXISTS: u32 = 3;
pub const RESERVED_FIELD: u32 = 6;
pub const DEBIT_ACCOUNT_NOT_FOUND: u32 = 11;
pub const CURRENCY_MISMATCH: u32 = 14;
pub const PENDING_TRANSFER_EXPIRED: u32 = 25;
pub const OVERFLOW: u32 = 29;

fn u128_at(b: &[u8], o: usize) -> u128 {
    u128::from_le_bytes(b[o..o + 16].try_into().expect("16"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4"))
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2"))
}

/// A transfer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tr {
    pub id: u128,
    pub debit: u128,
    pub credit: u128,
    pub amount: u128,
    pub pending_id: u128,
    pub user_data: u128,
    pub timeout_s: u32,
    pub currency: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp: u64,
}

impl Tr {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.debit.to_le_bytes());
        out.extend_from_slice(&self.credit.to_le_bytes());
        out.extend_from_slice(&self.amount.to_le_bytes());
        out.extend_from_slice(&self.pending_id.to_le_bytes());
        out.extend_from_slice(&self.user_data.to_le_bytes());
        out.extend_from_slice(&self.timeout_s.to_le_bytes());
        out.extend_from_slice(&self.currency.to_le_bytes());
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        assert_eq!(out.len() - start, 128);
    }

    /// Decodes a 128-byte record; panics when a reserved byte is set (the server must never return one).
    pub fn decode(b: &[u8]) -> Tr {
        assert_eq!(b.len(), 128);
        assert!(
            b[108..112].iter().chain(&b[120..128]).all(|&x| x == 0),
            "reserved bytes of a returned transfer are set"
        );
        Tr {
            id: u128_at(b, 0),
            debit: u128_at(b, 16),
            credit: u128_at(b, 32),
            amount: u128_at(b, 48),
            pending_id: u128_at(b, 64),
            user_data: u128_at(b, 80),
            timeout_s: u32_at(b, 96),
            currency: u32_at(b, 100),
            code: u16_at(b, 104),
            flags: u16_at(b, 106),
            timestamp: u64_at(b, 112),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        self.encode(&mut v);
        v
    }
}

/// An account record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acct {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub user_data: u128,
    pub currency: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp: u64,
}

impl Acct {
    pub fn new(id: u128, currency: u32) -> Acct {
        Acct {
            id,
            currency,
            code: 1,
            user_data: id * 7,
            ..Acct::default()
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for v in [
            self.id,
            self.debits_pending,
            self.debits_posted,
            self.credits_pending,
            self.credits_posted,
            self.user_data,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.currency.to_le_bytes());
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
        assert_eq!(out.len() - start, 128);
    }

    pub fn decode(b: &[u8]) -> Acct {
        assert_eq!(b.len(), 128);
        assert!(
            b[112..].iter().all(|&x| x == 0),
            "reserved bytes of a returned account are set"
        );
        Acct {
            id: u128_at(b, 0),
            debits_pending: u128_at(b, 16),
            debits_posted: u128_at(b, 32),
            credits_pending: u128_at(b, 48),
            credits_posted: u128_at(b, 64),
            user_data: u128_at(b, 80),
            currency: u32_at(b, 96),
            code: u16_at(b, 100),
            flags: u16_at(b, 102),
            timestamp: u64_at(b, 104),
        }
    }
}

/// Per-item results: (code, timestamp); checks the reserved word is zero.
pub fn decode_results(body: &[u8]) -> Vec<(u32, u64)> {
    assert_eq!(body.len() % 16, 0, "result body length {}", body.len());
    body.chunks(16)
        .map(|c| {
            assert_eq!(u32_at(c, 4), 0, "result reserved word");
            (u32_at(c, 0), u64_at(c, 8))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Log files (API.md "On-disk format"), parsed here to aim damage at record boundaries.

/// One record's place in a segment file.
#[derive(Debug, Clone, Copy)]
pub struct RecordPos {
    pub seq: u64,
    pub kind: u16,
    pub offset: u64,
    pub len: u64,
    /// The id of the first item in the payload (accounts and transfers both start with it).
    pub first_id: u128,
}

/// The segment files of `dir/log`, sorted.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .expect("read log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".log"))
        })
        .collect();
    v.sort();
    v
}

/// The records of one segment file (stops at the first thing that is not a whole record).
pub fn records(segment: &Path) -> Vec<RecordPos> {
    let b = std::fs::read(segment).expect("read segment");
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 64 <= b.len() && &b[off..off + 4] == b"RBLG" {
        let len = u32_at(&b, off + 16) as usize;
        if off + 64 + len > b.len() {
            break;
        }
        out.push(RecordPos {
            seq: u64_at(&b, off + 8),
            kind: u16_at(&b, off + 6),
            offset: off as u64,
            len: (64 + len) as u64,
            first_id: if len >= 16 { u128_at(&b, off + 64) } else { 0 },
        });
        off += 64 + len;
    }
    out
}

/// Every file under `dir` with its contents (to prove a refused start changed nothing).
pub fn snapshot_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Randomness: SplitMix64, deterministic per seed.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `pct`%.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.next_u64() % 100 < pct
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next_u64() % v.len() as u64) as usize]
    }
}
