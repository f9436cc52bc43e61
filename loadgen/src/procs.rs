//! Child processes (built-in servers, loader processes), their CPU time, resource sampling with sysinfo, and a tiny
//! blocking HTTP GET for `/metrics` scrapes. The coordinator is plain threads: it does little work and must not
//! compete with the loaders for a runtime.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use refbench_common::announce::{Ready, parse_ready_line};
use serde::{Deserialize, Serialize};

use crate::error::RunError;

/// A built-in server started by loadgen.
pub struct ServerProc {
    /// Target name.
    pub name: String,
    /// System (e.g. `floor`).
    pub system: String,
    /// What it announced.
    pub ready: Ready,
    child: Child,
    /// The child's `TMPDIR`. A server's default scratch data (the ledger's temporary data directory, gigabytes
    /// after a long run) lives here, and the directory goes when this value drops, after the child ended: even a
    /// server killed after its grace period leaks nothing. Declared after `child` so it drops after the kill.
    _tmp: Option<tempfile::TempDir>,
}

impl ServerProc {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server to stop (SIGTERM), waits up to `grace`, then kills it. Returns a description of how it ended.
    pub fn stop(mut self, grace: Duration) -> String {
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("{status}"),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "killed after grace period".into();
                }
            }
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Never leave a server running behind a failed run.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` to `pid` (best effort).
pub fn send_signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn cpus_arg(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `loadgen serve <system>` as a child, pinned to `cpus`, and waits for its ready line. `system` may hold a
/// sub-command after the system (`cdn origin`).
pub fn start_builtin(
    exe: &Path,
    name: &str,
    system: &str,
    args: &[String],
    cpus: &[usize],
    log_path: &Path,
    timeout: Duration,
) -> Result<ServerProc, RunError> {
    let log = std::fs::File::create(log_path).map_err(|source| RunError::Write {
        path: log_path.to_path_buf(),
        source,
    })?;
    // Best effort: without a private TMPDIR the server still works, it just cleans up after itself alone.
    let tmp = tempfile::Builder::new()
        .prefix(&format!("refbench-{}-tmp-", system.replace(' ', "-")))
        .tempdir()
        .ok();
    let mut cmd = Command::new(exe);
    if let Some(t) = &tmp {
        cmd.env("TMPDIR", t.path());
    }
    cmd.arg("serve").args(system.split_whitespace()).args([
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
    ]);
    if !cpus.is_empty() {
        cmd.args(["--cpus", &cpus_arg(cpus)]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            log.try_clone().map_err(|e| RunError::io("log file", e))?,
        ));
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        what: format!("server `{name}` ({system})"),
        source,
    })?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = sync_channel::<Result<Ready, String>>(1);
    let target = name.to_string();
    std::thread::Builder::new()
        .name(format!("server-{target}-stdout"))
        .spawn(move || forward_until_ready(stdout, log, tx))
        .map_err(|e| RunError::io("spawn stdout reader", e))?;
    let mut proc = ServerProc {
        name: name.to_string(),
        system: system.to_string(),
        ready: Ready {
            system: system.to_string(),
            pid: 0,
            listeners: BTreeMap::new(),
            tls_cert_pem: None,
        },
        child,
        _tmp: tmp,
    };
    match rx.recv_timeout(timeout) {
        Ok(Ok(ready)) => {
            proc.ready = ready;
            Ok(proc)
        }
        Ok(Err(reason)) => Err(RunError::ServerNotReady {
            target: name.into(),
            reason: format!("{reason}; see {}", log_path.display()),
        }),
        Err(_) => Err(RunError::ServerNotReady {
            target: name.into(),
            reason: format!(
                "no ready line within {timeout:?}; see {}",
                log_path.display()
            ),
        }),
    }
}

fn forward_until_ready(
    stdout: ChildStdout,
    mut log: std::fs::File,
    tx: SyncSender<Result<Ready, String>>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut sent = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if !sent && let Some(r) = parse_ready_line(line.trim_end()) {
                    sent = true;
                    let _ = tx.try_send(Ok(r));
                }
                let _ = log.write_all(line.as_bytes());
            }
        }
    }
    if !sent {
        let _ = tx.try_send(Err(
            "the server exited before announcing its addresses".into()
        ));
    }
}

/// A line from a loader process.
pub enum WorkerLine {
    /// A protocol line (progress or report), prefix stripped.
    Progress(usize, String),
    /// The final report.
    Report(usize, String),
    /// The process closed stdout.
    Eof(usize),
}

/// A running loader process.
pub struct WorkerProc {
    /// Loader index.
    pub index: usize,
    /// The child.
    pub child: Child,
}

/// Starts `loadgen worker`, writes the spec to its stdin, and forwards protocol lines into `tx` (bounded).
pub fn start_worker(
    exe: &Path,
    index: usize,
    spec_json: &str,
    stderr_log: &Path,
    tx: SyncSender<WorkerLine>,
) -> Result<WorkerProc, RunError> {
    let log = std::fs::File::create(stderr_log).map_err(|source| RunError::Write {
        path: stderr_log.to_path_buf(),
        source,
    })?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|source| RunError::Spawn {
            what: format!("loader process {index}"),
            source,
        })?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(spec_json.as_bytes())
            .map_err(|e| RunError::io("send spec to loader", e))?;
        // Dropping stdin closes it: the worker reads to EOF.
    }
    let stdout = child.stdout.take().expect("piped");
    std::thread::Builder::new()
        .name(format!("loader-{index}-stdout"))
        .spawn(move || {
            let reader = BufReader::new(stdout);
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let msg = if let Some(rest) = line.strip_prefix(crate::worker::PROGRESS_PREFIX) {
                    WorkerLine::Progress(index, rest.to_string())
                } else if let Some(rest) = line.strip_prefix(crate::worker::REPORT_PREFIX) {
                    WorkerLine::Report(index, rest.to_string())
                } else {
                    continue;
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            let _ = tx.send(WorkerLine::Eof(index));
        })
        .map_err(|e| RunError::io("spawn loader reader", e))?;
    Ok(WorkerProc { index, child })
}

/// A bounded channel for loader lines: a slow coordinator back-pressures the readers, never grows memory.
pub fn worker_channel() -> (SyncSender<WorkerLine>, Receiver<WorkerLine>) {
    sync_channel(1024)
}

/// CPU time of a process in seconds: the sum of its threads' run time from `/proc/<pid>/task/*/schedstat`
/// (nanoseconds), falling back to `/proc/<pid>/stat` ticks. Threads that already exited are only in the fallback,
/// which is why the larger of the two is taken.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let mut sched_ns: u64 = 0;
    let mut any = false;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let p = entry.path().join("schedstat");
            if let Ok(s) = std::fs::read_to_string(p)
                && let Some(first) = s.split_whitespace().next()
                && let Ok(ns) = first.parse::<u64>()
            {
                sched_ns += ns;
                any = true;
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let ticks = stat.and_then(|s| {
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: u64 = f.get(11)?.parse().ok()?;
        let st: u64 = f.get(12)?.parse().ok()?;
        Some(ut + st)
    });
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let from_ticks = ticks.map(|t| t as f64 / hz);
    let from_sched = any.then_some(sched_ns as f64 / 1e9);
    match (from_sched, from_ticks) {
        // Tick accounting lags by up to a tick; schedstat is exact for live threads.
        (Some(a), Some(b)) => Some(if b > a + 2.0 / hz { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Resource figures of one process over a phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sampled {
    /// Samples taken.
    pub samples: u64,
    /// RSS at the first sample.
    pub rss_bytes_start: u64,
    /// RSS at the last sample.
    pub rss_bytes_end: u64,
    /// Largest RSS seen.
    pub rss_bytes_peak: u64,
    /// Highest CPU usage between two samples, in % of one core.
    pub cpu_percent_peak: f64,
}

/// Where RSS samples come from. On Linux, `/proc/<pid>/statm`: one small read (~10 µs). A sysinfo refresh of two
/// processes measured 170–490 µs here, and on a 2-core host the sampler shares a core with a server or a loader:
/// five such stalls a second showed up in p99.9 of the known-latency check. sysinfo remains the source elsewhere.
enum RssSource {
    Proc { page_bytes: u64 },
    Sysinfo(Box<sysinfo::System>, Vec<sysinfo::Pid>),
    None,
}

impl RssSource {
    fn new(pids: &[u32]) -> RssSource {
        if std::path::Path::new("/proc/self/statm").exists() {
            // SAFETY: sysconf has no memory-safety preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            return RssSource::Proc {
                page_bytes: u64::try_from(page).unwrap_or(4096).max(1),
            };
        }
        match sysinfo::System::new() {
            Ok(sys) => RssSource::Sysinfo(
                Box::new(sys),
                pids.iter().map(|&p| sysinfo::Pid::from_u32(p)).collect(),
            ),
            Err(_) => RssSource::None,
        }
    }

    fn rss_bytes(&mut self, pid: u32) -> Option<u64> {
        match self {
            RssSource::Proc { page_bytes } => {
                let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
                let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
                Some(pages * *page_bytes)
            }
            RssSource::Sysinfo(sys, pids) => {
                let kind = sysinfo::ProcessRefreshKind::nothing().with_memory();
                sys.refresh_processes_specifics(sysinfo::ProcessesToUpdate::Some(pids), true, kind);
                sys.process(sysinfo::Pid::from_u32(pid))
                    .map(sysinfo::Process::memory)
            }
            RssSource::None => None,
        }
    }
}

/// Samples RSS and CPU of a set of processes at a fixed rate until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<BTreeMap<u32, Sampled>>,
}

/// Sampling period: 5 Hz, above the 4 Hz the results promise.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(200);

impl Sampler {
    /// Starts sampling `pids`.
    pub fn start(pids: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out: BTreeMap<u32, Sampled> =
                pids.iter().map(|&p| (p, Sampled::default())).collect();
            let mut source = RssSource::new(&pids);
            let mut last_cpu: BTreeMap<u32, (Instant, f64)> = BTreeMap::new();
            let mut next = Instant::now();
            loop {
                for (&pid, s) in out.iter_mut() {
                    if let Some(rss) = source.rss_bytes(pid) {
                        if s.samples == 0 {
                            s.rss_bytes_start = rss;
                        }
                        s.samples += 1;
                        s.rss_bytes_end = rss;
                        s.rss_bytes_peak = s.rss_bytes_peak.max(rss);
                    }
                    if let Some(cpu) = process_cpu_seconds(pid) {
                        let now = Instant::now();
                        if let Some((t, c)) = last_cpu.insert(pid, (now, cpu)) {
                            let dt = now.duration_since(t).as_secs_f64();
                            if dt > 0.0 {
                                s.cpu_percent_peak = s.cpu_percent_peak.max((cpu - c) / dt * 100.0);
                            }
                        }
                    }
                }
                if flag.load(Ordering::Acquire) {
                    return out;
                }
                next += SAMPLE_PERIOD;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Sampler { stop, handle }
    }

    /// Stops sampling (after one last sample) and returns the figures per pid.
    pub fn finish(self) -> BTreeMap<u32, Sampled> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

/// Resolves `host:port` to one socket address.
pub fn resolve_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    (h, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to nothing"))
}

/// Largest `/metrics` page we read.
const MAX_SCRAPE_BYTES: u64 = 16 * 1024 * 1024;

/// A blocking `GET path` over HTTP/1.1 with `Connection: close`; returns status and body.
pub fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let (status, body) = http_request(
        addr,
        host,
        "GET",
        path,
        None,
        b"",
        timeout,
        MAX_SCRAPE_BYTES,
    )?;
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// A blocking request over HTTP/1.1 with `Connection: close`: `body` is sent with `content_type` (when given), and
/// the response (at most `max_bytes`, head included) is read to the end. Returns status and body bytes.
#[allow(clippy::too_many_arguments)]
pub fn http_request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
    max_bytes: u64,
) -> Result<(u16, Vec<u8>), String> {
    http_request_with(
        addr,
        host,
        method,
        path,
        content_type,
        &[],
        body,
        timeout,
        max_bytes,
    )
}

/// [`http_request`] with extra header fields (`name`, `value`), e.g. an `Authorization`.
#[allow(clippy::too_many_arguments)]
pub fn http_request_with(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    max_bytes: u64,
) -> Result<(u16, Vec<u8>), String> {
    http_exchange(
        addr,
        host,
        method,
        path,
        content_type,
        headers,
        body,
        timeout,
        max_bytes,
    )
    .map(|r| (r.status, r.body))
}

/// A response read by [`http_exchange`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_request_with`] that also returns the response's headers (redirect-driven flows read `Location` and
/// `Set-Cookie`).
#[allow(clippy::too_many_arguments)]
pub fn http_exchange(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    max_bytes: u64,
) -> Result<HttpReply, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    match content_type {
        Some(ct) => head.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            body.len()
        )),
        None => head.push_str("Accept: text/plain\r\n"),
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.take(max_bytes)
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Counters and gauges from a Prometheus text page: `name{labels}` → value. Histogram buckets are skipped (the
/// `_sum` and `_count` series are kept), so the map stays small.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = split_series(line) else {
            continue;
        };
        if key.contains("_bucket{") || key.ends_with("_bucket") {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            // NaN and ±Inf have no JSON form; a counter delta of them means nothing anyway.
            .filter(|v| v.is_finite())
        {
            out.insert(key.to_string(), v);
        }
    }
    out
}

fn split_series(line: &str) -> Option<(&str, &str)> {
    if let Some(close) = line.find('}') {
        Some((&line[..=close], &line[close + 1..]))
    } else {
        let sp = line.find(char::is_whitespace)?;
        Some((&line[..sp], &line[sp..]))
    }
}

/// Path for a per-process log file in the run folder.
pub fn log_path(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join("logs").join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_parsed() {
        let text = "# HELP a x\n# TYPE a counter\na_total 12\nb{x=\"1 2\"} 3.5\nh_bucket{le=\"1\"} 4\nh_sum 9\nq NaN\nr +Inf\n";
        let m = parse_prometheus(text);
        assert_eq!(m.get("a_total"), Some(&12.0));
        assert_eq!(m.get("b{x=\"1 2\"}"), Some(&3.5));
        assert_eq!(m.get("h_sum"), Some(&9.0));
        assert!(!m.keys().any(|k| k.contains("bucket")));
        assert!(
            !m.contains_key("q") && !m.contains_key("r"),
            "non-finite values are dropped"
        );
    }

    #[test]
    fn dechunk_works() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_err());
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let t = process_cpu_seconds(std::process::id()).expect("readable on linux");
        assert!(t > 0.0);
    }
}
