//! A lean HTTP/1.1 server connection, with a fast path for answers that need nothing but the request head.
//!
//! Why not hyper here: on this host hyper's HTTP/1 dispatch costs about 10 µs of CPU per keep-alive request at
//! 5,000 req/s (the floor server measures 23–25 µs per request, a hand-written read → write loop 13.5 µs, same
//! syscalls), and a cache hit needs none of what that buys. [`serve_h1`] reads request heads into one buffer, parses
//! them with `httparse` in place, and offers each head to the application's [`FastPath`] first; a cache answers a
//! fresh hit there by appending the whole response to [`Out`] (no `Request`, no `HeaderMap`, no task, no boxed
//! future). Everything else becomes an `http::Request` with a buffered body and goes through the application's
//! `Service`, and its `Response` is serialized here (Content-Length, chunked, or close-delimited).
//!
//! What stays the same as [`crate::http::serve_http`]: the connection limit (a semaphore, the kernel backlog holds
//! the rest), the first-byte and header-read timeouts (a head must be complete within `header_read_timeout` of the
//! wait for it starting, give or take an eighth of it and at most a second; this also closes idle keep-alive
//! connections), the head size limit (431), cleartext
//! HTTP/2 with prior knowledge (the preface is recognised and the connection handed to hyper's HTTP/2 server), and
//! the drain on shutdown (idle connections close at once, busy ones after their response, all within
//! `drain_timeout`).
//!
//! The head deadlines are not tokio timers: a [`Reaper`] thread checks them every eighth of the timeout and shuts
//! an expired connection's read side. A runtime with a pending timer arms a kernel timer on every `epoll_wait`,
//! that is once per request on a server that answers faster than requests arrive; with deadlines off the runtime
//! an idle hit-serving thread parks with no timeout at all.
//!
//! Request bodies are read whole, up to `max_body_bytes` (413 beyond it, decided from `Content-Length` before
//! reading any of it), with `Expect: 100-continue` honoured. Framing errors that could desynchronise the
//! connection — `Transfer-Encoding` with `Content-Length`, differing `Content-Length`s, a transfer coding other than
//! a final `chunked`, bad chunk sizes — get a 400 and a close (RFC 9112 §6.3).

use std::error::Error as StdError;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::os::fd::AsRawFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use tokio::time::Instant;

use crate::CommonError;
use crate::http::{
    Accepted, ConnGuard, ConnMetrics, H2_MAX_CONCURRENT_STREAMS, Limits, accept_next, first_byte,
};
use crate::reaper::{Reaper, Ticket};
use crate::shutdown::Shutdown;

/// Most header fields in one request head; more get 431.
pub const MAX_HEADERS: usize = 100;

/// The read buffer's starting (and usual) capacity; it grows only for heads or bodies that need it.
const READ_BUF_BYTES: usize = 8 * 1024;

/// Pending output is written once it reaches this many bytes, even while pipelined requests remain.
const FLUSH_AT_BYTES: usize = 64 * 1024;

/// Body frames up to this size are copied into the output buffer (one write for head and body); larger ones are
/// written from their own buffer (vectored), never copied.
const COPY_BODY_BYTES: usize = 4 * 1024;

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The request body the slow path hands to the service: read whole, up to `max_body_bytes`.
pub type H1Body = Full<Bytes>;

/// A parsed request head, borrowed from the connection's read buffer.
#[derive(Debug)]
pub struct Head<'a> {
    /// The method token, as sent.
    pub method: &'a str,
    /// The request target, as sent.
    pub target: &'a str,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header fields, in order.
    pub headers: &'a [httparse::Header<'a>],
    /// Whether the connection stays open after this request (version default and `Connection`).
    pub keep_alive: bool,
}

impl Head<'_> {
    /// The values of the fields named `name` (ASCII case-insensitive).
    pub fn values<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Responses being written to one connection: bytes in a buffer, plus large body frames written from their own
/// buffers, in order.
#[derive(Debug, Default)]
pub struct Out {
    /// Bytes not yet split off into `segs`.
    buf: BytesMut,
    /// Complete segments waiting for the write, in order, before `buf`.
    segs: Vec<Bytes>,
    /// Bytes in `segs`.
    segs_bytes: usize,
    /// Scratch space for the fast path (e.g. building a key), kept to avoid an allocation per request.
    pub scratch: Vec<u8>,
}

impl Out {
    /// The buffer to append head bytes to.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends a body frame: copied when small, otherwise queued as is.
    pub fn body(&mut self, b: Bytes) {
        if b.len() <= COPY_BODY_BYTES {
            self.buf.extend_from_slice(&b);
        } else {
            if !self.buf.is_empty() {
                let head = self.buf.split().freeze();
                self.segs_bytes += head.len();
                self.segs.push(head);
            }
            self.segs_bytes += b.len();
            self.segs.push(b);
        }
    }

    /// Appends the status line of an HTTP/1.1 response.
    pub fn status_line(&mut self, status: StatusCode) {
        self.buf.extend_from_slice(b"HTTP/1.1 ");
        self.buf.extend_from_slice(status.as_str().as_bytes());
        self.buf.extend_from_slice(b" ");
        self.buf
            .extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Appends one header field.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Appends a header field with a decimal value.
    pub fn header_u64(&mut self, name: &[u8], value: u64) {
        let digits = itoa_buf(value);
        self.header(name, digits.as_bytes());
    }

    /// Appends a signed decimal number (no allocation, no formatter).
    pub fn push_i64(&mut self, v: i64) {
        if v < 0 {
            self.buf.extend_from_slice(b"-");
        }
        self.buf
            .extend_from_slice(itoa_buf(v.unsigned_abs()).as_bytes());
    }

    /// Appends every field of `headers`.
    pub fn headers(&mut self, headers: &HeaderMap) {
        for (n, v) in headers {
            self.header(n.as_str().as_bytes(), v.as_bytes());
        }
    }

    /// Appends `Date: <now>` (the formatted date is cached for the second).
    pub fn date(&mut self) {
        DATE_CACHE.with(|d| {
            let mut d = d.borrow_mut();
            d.refresh();
            self.header(b"date", d.text.as_bytes());
        });
    }

    /// Ends the head: `Connection: close` when the connection will not be kept, `Connection: keep-alive` when an
    /// HTTP/1.0 client's will.
    pub fn end_head(&mut self, keep_alive: bool, version: Version) {
        if !keep_alive {
            self.buf.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            self.buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Drops everything pending (benches reuse one `Out`).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.segs.clear();
        self.segs_bytes = 0;
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.segs_bytes + self.buf.len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes everything pending to `w`.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        if self.segs.is_empty() {
            // The common case: one buffer, one write.
            if !self.buf.is_empty() {
                w.write_all(&self.buf).await?;
                self.buf.clear();
            }
            return Ok(());
        }
        if !self.buf.is_empty() {
            let tail = self.buf.split().freeze();
            self.segs_bytes += tail.len();
            self.segs.push(tail);
        }
        let mut first = 0;
        while first < self.segs.len() {
            let n = {
                let slices: Vec<IoSlice<'_>> = self.segs[first..]
                    .iter()
                    .take(MAX_IOVECS)
                    .map(|b| IoSlice::new(b))
                    .collect();
                w.write_vectored(&slices).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let mut left = n;
            while left > 0 {
                let s = &mut self.segs[first];
                if s.len() <= left {
                    left -= s.len();
                    first += 1;
                } else {
                    s.advance(left);
                    left = 0;
                }
            }
            self.segs_bytes -= n;
        }
        self.segs.clear();
        debug_assert_eq!(self.segs_bytes, 0);
        // Large bodies leave a big buffer behind; do not keep it per idle connection.
        if self.buf.capacity() > FLUSH_AT_BYTES {
            self.buf = BytesMut::new();
        }
        Ok(())
    }
}

/// A stack buffer holding a decimal number.
struct Digits {
    bytes: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

fn itoa_buf(mut v: u64) -> Digits {
    let mut d = Digits {
        bytes: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.bytes[d.start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return d;
        }
    }
}

/// The `Date` value, formatted once per second per thread.
struct DateCache {
    secs: u64,
    text: String,
}

impl DateCache {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(now);
        }
    }
}

thread_local! {
    static DATE_CACHE: std::cell::RefCell<DateCache> =
        const { std::cell::RefCell::new(DateCache { secs: 0, text: String::new() }) };
}

/// Answers requests from their head alone, when it can.
pub trait FastPath {
    /// Appends a complete response to `head` to `out` and returns true, or returns false (having appended nothing)
    /// to send the request through the service. Must not block. The response must end its head with
    /// [`Out::end_head`]`(head.keep_alive, head.version)`.
    fn answer(&self, head: &Head<'_>, out: &mut Out) -> bool;
}

/// Serves `app` on `listener` (HTTP/1.1 here, cleartext HTTP/2 through hyper) until `shutdown` fires, then drains.
///
/// Records `http_connections_active` and `http_connections_total` as [`crate::http::serve_http`] does.
pub async fn serve_h1<S, B>(
    listener: TcpListener,
    app: S,
    limits: Limits,
    mut shutdown: Shutdown,
) -> Result<(), CommonError>
where
    S: FastPath
        + Service<Request<H1Body>, Response = Response<B>>
        + Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    <S as Service<Request<H1Body>>>::Future: Send + 'static,
    <S as Service<Request<H1Body>>>::Error: Into<Box<dyn StdError + Send + Sync>> + Send,
    <S as Service<Request<Incoming>>>::Future: Send + 'static,
    <S as Service<Request<Incoming>>>::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>> + Send,
{
    let metrics = ConnMetrics {
        active: metrics::gauge!("http_connections_active"),
        total: metrics::counter!("http_connections_total"),
    };
    let local = listener.local_addr().ok();
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Stopped (joined) when this function returns, after every connection task has ended.
    let reaper = Reaper::start(deadline_slack(limits.header_read_timeout)).map_err(|source| {
        CommonError::Io {
            what: "starting the connection deadline thread".into(),
            source,
        }
    })?;
    let deadlines = reaper.handle();
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut fatal: Option<CommonError> = None;
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, permit) = match accept_next(&listener, &permits, &mut shutdown, local).await {
            Accepted::Conn(stream, permit) => (stream, permit),
            Accepted::Retry => continue,
            Accepted::Shutdown => break,
            Accepted::Fatal(e) => {
                fatal = Some(e);
                break;
            }
        };
        let guard = ConnGuard::new(Some(&metrics), permit);
        let app = app.clone();
        let limits = Arc::clone(&limits);
        let conn_shutdown = shutdown.clone();
        let watcher = graceful.watcher();
        let ticket = deadlines.register(stream.as_raw_fd());
        tasks.spawn(async move {
            let _guard = guard;
            let mut stop_on = conn_shutdown.clone();
            let mut conn = Conn {
                ticket: Some(ticket),
                stream,
                buf: BytesMut::with_capacity(READ_BUF_BYTES),
                out: Out::default(),
                limits,
                shutdown: conn_shutdown,
                stop: Box::pin(async move { stop_on.wait().await }),
                stopped: false,
                refused: false,
            };
            let proto = conn.serve(&app).await;
            if conn.refused {
                conn.linger().await;
            }
            if let Ok(Proto::H2) = proto {
                // HTTP/2 keeps its own timers; the deadline entry must go before the socket can close.
                drop(conn.ticket.take());
                let Conn {
                    stream,
                    buf,
                    limits,
                    ..
                } = conn;
                let io = TokioIo::new(Rewind {
                    prefix: buf.freeze(),
                    inner: stream,
                });
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new())
                    .max_header_list_size(
                        u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
                let c = b.serve_connection(io, HyperService(app));
                let _ = watcher.watch(c).await;
            }
        });
    }
    drop(listener);
    // HTTP/1 connections end by themselves at their next idle point; HTTP/2 ones get GOAWAY. Whatever is left
    // at the deadline is aborted, so nothing outlives this function.
    let deadline = Instant::now() + limits.drain_timeout;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_ok()
    {
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(reaper);
    fatal.map_or(Ok(()), Err)
}

/// Adapts the application's `Service<Request<Incoming>>` for hyper's HTTP/2 server (which needs exactly one
/// `Service` impl to pick).
#[derive(Clone)]
struct HyperService<S>(S);

impl<S, B> Service<Request<Incoming>> for HyperService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> S::Future {
        self.0.call(req)
    }
}

/// What a connection turned out to be.
enum Proto {
    /// Served as HTTP/1 to its end.
    H1Done,
    /// Began with the HTTP/2 preface: the bytes read so far are in the buffer.
    H2,
}

/// Why a connection ends early.
enum Stop {
    /// Closed, reset, timed out, or shut down: nothing more to send.
    Gone,
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Stop::Gone
    }
}

/// One HTTP/1 connection.
struct Conn {
    /// The head deadline's entry in the [`Reaper`]. Declared before `stream` so it is dropped first: the reaper
    /// must never shut down a descriptor number after its socket closed. `None` only after the HTTP/2 handoff.
    ticket: Option<Ticket>,
    stream: TcpStream,
    buf: BytesMut,
    out: Out,
    limits: Arc<Limits>,
    shutdown: Shutdown,
    /// Resolves when shutdown fires: created once per connection, because creating it per wait (a watch
    /// subscription each time) showed up in the per-request profile.
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `stop` has resolved (it must not be polled again).
    stopped: bool,
    /// An error response was queued: the connection closes after it, gracefully (see [`Conn::linger`]).
    refused: bool,
}

/// How long a refused connection's unread input is drained before the close.
const LINGER: Duration = Duration::from_millis(250);

/// Most bytes drained from a refused connection.
const LINGER_BYTES: usize = 256 * 1024;

/// How much later than asked the head timer may fire: an eighth of the timeout, at most a second.
fn deadline_slack(timeout: Duration) -> Duration {
    (timeout / 8).min(Duration::from_secs(1))
}

/// The framing of a request body.
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// A request the service will answer, owned.
struct Owned {
    req: Request<()>,
    framing: ReqFraming,
    expect_continue: bool,
    keep_alive: bool,
    head_only: bool,
}

impl Conn {
    /// Serves requests until the connection ends; returns [`Proto::H2`] for an HTTP/2 client.
    async fn serve<S, B>(&mut self, app: &S) -> Result<Proto, Stop>
    where
        S: FastPath + Service<Request<H1Body>, Response = Response<B>>,
        <S as Service<Request<H1Body>>>::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let timeout = self.limits.header_read_timeout;
        // The first byte, without arming a timer when it is already there (it usually is).
        let has_data = tokio::select! {
            biased;
            ok = first_byte(&self.stream, timeout) => ok,
            () = &mut self.stop => {
                self.stopped = true;
                false
            }
        };
        if !has_data {
            return Ok(Proto::H1Done);
        }
        let mut first = true;
        loop {
            // The deadline for the next complete head starts when we begin waiting for it (armed lazily, at the
            // first read that has to wait, so pipelined heads already in the buffer cost nothing).
            let mut armed = false;
            let owned = loop {
                if first && self.buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&self.buf) {
                    // Maybe an HTTP/2 client: wait for the whole preface (an empty buffer is a prefix too).
                } else if first && self.buf.starts_with(H2_PREFACE) {
                    return Ok(Proto::H2);
                } else {
                    first = false;
                    match self.parse_one(app)? {
                        Parsed::Answered { keep_alive } => {
                            armed = false;
                            if !keep_alive {
                                self.out.flush(&mut self.stream).await?;
                                return Ok(Proto::H1Done);
                            }
                            if self.out.len() >= FLUSH_AT_BYTES {
                                self.out.flush(&mut self.stream).await?;
                            }
                            continue;
                        }
                        Parsed::Slow(o) => break o,
                        Parsed::Partial => {}
                    }
                }
                // Everything parsed so far is answered: send it before waiting for more.
                if !self.out.is_empty() {
                    self.out.flush(&mut self.stream).await?;
                }
                if self.shutdown.is_triggered() && self.buf.is_empty() {
                    return Ok(Proto::H1Done);
                }
                if self.buf.len() >= self.limits.max_header_bytes {
                    self.refuse(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    )
                    .await;
                    return Ok(Proto::H1Done);
                }
                if !armed {
                    self.arm(timeout);
                    armed = true;
                }
                self.read_more().await?;
            };
            // The service may take as long as it needs (a cache miss waits for its upstream): no head deadline.
            self.disarm();
            let keep_alive = self.slow(app, *owned).await?;
            if !keep_alive || self.shutdown.is_triggered() {
                self.out.flush(&mut self.stream).await?;
                return Ok(Proto::H1Done);
            }
        }
    }

    fn arm(&self, timeout: Duration) {
        if let Some(t) = &self.ticket {
            t.arm(timeout);
        }
    }

    fn disarm(&self) {
        if let Some(t) = &self.ticket {
            t.disarm();
        }
    }

    fn deadline_fired(&self) -> bool {
        self.ticket.as_ref().is_some_and(Ticket::fired)
    }

    /// Reads more bytes; ends the connection on EOF, error, an expired head deadline (the reaper shuts the read
    /// side, so the read sees EOF), or shutdown while idle.
    async fn read_more(&mut self) -> Result<(), Stop> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_BUF_BYTES);
        }
        let idle = self.buf.is_empty();
        let watch_stop = idle && !self.stopped;
        let n = tokio::select! {
            biased;
            r = self.stream.read_buf(&mut self.buf) => match r {
                Ok(n) => n,
                Err(_) => return Err(Stop::Gone),
            },
            // Shutdown closes idle connections; a partial head is given until its deadline.
            () = &mut self.stop, if watch_stop => {
                self.stopped = true;
                return Err(Stop::Gone);
            }
        };
        if n == 0 {
            if self.deadline_fired() && !idle {
                self.refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "request head not received in time",
                )
                .await;
            }
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// Parses the next head in the buffer: answers it on the fast path, or returns it owned for the service.
    fn parse_one<S: FastPath>(&mut self, app: &S) -> Result<Parsed, Stop> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let (n, outcome) = match req.parse(&self.buf) {
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Ok(httparse::Status::Complete(n)) => {
                let version = if req.version == Some(0) {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                };
                let method = req.method.unwrap_or("");
                let target = req.path.unwrap_or("");
                let hs: &[httparse::Header<'_>] = req.headers;
                let keep_alive = keep_alive(version, hs);
                let head = Head {
                    method,
                    target,
                    version,
                    headers: hs,
                    keep_alive,
                };
                if app.answer(&head, &mut self.out) {
                    (n, Ok(Parsed::Answered { keep_alive }))
                } else {
                    (n, own(&head))
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                self.refuse_now(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many header fields",
                );
                return Ok(Parsed::Answered { keep_alive: false });
            }
            Err(e) => {
                self.refuse_now(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed request head: {e}"),
                );
                return Ok(Parsed::Answered { keep_alive: false });
            }
        };
        self.buf.advance(n);
        match outcome {
            Ok(p) => Ok(p),
            Err(why) => {
                self.refuse_now(StatusCode::BAD_REQUEST, why);
                Ok(Parsed::Answered { keep_alive: false })
            }
        }
    }

    /// Closes a refused connection so the client reads the error: send FIN, then read and discard what the
    /// client still sends (bounded in time and bytes). Closing with unread input would send a reset, and a reset
    /// can destroy the error response in the client's receive buffer before it is read.
    async fn linger(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 8192];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => return,
            }
        }
    }

    /// Queues an error response that closes the connection.
    fn refuse_now(&mut self, status: StatusCode, why: &str) {
        self.refused = true;
        let o = &mut self.out;
        o.status_line(status);
        o.header(b"content-type", b"text/plain; charset=utf-8");
        o.header_u64(b"content-length", why.len() as u64 + 1);
        o.date();
        o.end_head(false, Version::HTTP_11);
        o.buf().extend_from_slice(why.as_bytes());
        o.buf().extend_from_slice(b"\n");
    }

    /// Sends an error response (after whatever is pending); the caller closes the connection.
    async fn refuse(&mut self, status: StatusCode, why: &str) {
        self.refuse_now(status, why);
        let _ = self.out.flush(&mut self.stream).await;
    }

    /// Reads the body of `o`, calls the service, and queues (streaming) its response. Returns whether the
    /// connection may be kept.
    async fn slow<S, B>(&mut self, app: &S, o: Owned) -> Result<bool, Stop>
    where
        S: Service<Request<H1Body>, Response = Response<B>>,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let Owned {
            req,
            framing,
            expect_continue,
            mut keep_alive,
            head_only,
        } = o;
        let version = req.version();
        let max = self.limits.max_body_bytes;
        if let ReqFraming::Length(n) = framing
            && n > max as u64
        {
            // Refused before reading any of it; the unread body makes the connection unusable.
            self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                .await;
            return Ok(false);
        }
        let has_body = !matches!(framing, ReqFraming::None | ReqFraming::Length(0));
        if has_body && expect_continue && version == Version::HTTP_11 && self.buf.is_empty() {
            self.out
                .buf()
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if !self.out.is_empty() {
            self.out.flush(&mut self.stream).await?;
        }
        let body = match self.read_body(framing, max).await {
            Ok(b) => b,
            Err(BodyFail::TooLarge) => {
                self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    .await;
                return Ok(false);
            }
            Err(BodyFail::Bad(why)) => {
                self.refuse(StatusCode::BAD_REQUEST, why).await;
                return Ok(false);
            }
            Err(BodyFail::Gone) => return Err(Stop::Gone),
        };
        let (parts, ()) = req.into_parts();
        let req = Request::from_parts(parts, Full::new(body));
        let resp = match app.call(req).await {
            Ok(r) => r,
            Err(e) => {
                let why = e.into().to_string();
                self.refuse(StatusCode::INTERNAL_SERVER_ERROR, &why).await;
                return Ok(false);
            }
        };
        let (parts, body) = resp.into_parts();
        if connection_close(&parts.headers) {
            keep_alive = false;
        }
        let status = parts.status;
        let no_body = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = declared_length(&parts.headers);
        let hint = body.size_hint().exact();
        // How the body is framed: the declared length, the body's exact length, chunked, or to the close.
        let framing = if no_body {
            RespFraming::None
        } else if let Some(n) = declared {
            RespFraming::Length(n)
        } else if let Some(n) = hint {
            RespFraming::AddLength(n)
        } else if version == Version::HTTP_11 {
            RespFraming::Chunked
        } else {
            keep_alive = false;
            RespFraming::Close
        };
        let o = &mut self.out;
        o.status_line(status);
        for (n, v) in &parts.headers {
            // Framing and connection management are this layer's.
            if n == TRANSFER_ENCODING || n == CONNECTION {
                continue;
            }
            if n == CONTENT_LENGTH && matches!(framing, RespFraming::Chunked | RespFraming::Close) {
                continue;
            }
            o.header(n.as_str().as_bytes(), v.as_bytes());
        }
        if !parts.headers.contains_key(DATE) {
            o.date();
        }
        match framing {
            RespFraming::AddLength(n) => o.header_u64(b"content-length", n),
            RespFraming::Chunked => o.header(b"transfer-encoding", b"chunked"),
            _ => {}
        }
        o.end_head(keep_alive, version);
        if matches!(framing, RespFraming::None) {
            return Ok(keep_alive);
        }
        let expected = match framing {
            RespFraming::Length(n) | RespFraming::AddLength(n) => Some(n),
            _ => None,
        };
        let chunked = matches!(framing, RespFraming::Chunked);
        let mut sent: u64 = 0;
        let mut body = std::pin::pin!(body);
        loop {
            // Send what is queued before waiting on a body that is not ready (a fetch in flight): the client gets
            // the head and every frame as soon as they exist.
            let frame =
                match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                    Poll::Ready(f) => f,
                    Poll::Pending => {
                        self.out.flush(&mut self.stream).await?;
                        std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                    }
                };
            let frame = frame.map(|f| f.map_err(|_| ()));
            let data = match frame {
                None => break,
                Some(Err(())) => {
                    // The body broke mid-way: the client must see a truncated response, never a complete one.
                    let _ = self.out.flush(&mut self.stream).await;
                    return Err(Stop::Gone);
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue, // trailers are not sent
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let Some(n) = expected
                && sent > n
            {
                // More than declared: what fits was sent; the connection cannot carry on.
                let _ = self.out.flush(&mut self.stream).await;
                return Err(Stop::Gone);
            }
            if chunked {
                let o = &mut self.out;
                write_hex(o.buf(), data.len());
                o.buf().extend_from_slice(b"\r\n");
                o.body(data);
                o.buf().extend_from_slice(b"\r\n");
            } else {
                self.out.body(data);
            }
            if self.out.len() >= FLUSH_AT_BYTES {
                self.out.flush(&mut self.stream).await?;
            }
        }
        if let Some(n) = expected
            && sent != n
        {
            let _ = self.out.flush(&mut self.stream).await;
            return Err(Stop::Gone);
        }
        if chunked {
            self.out.buf().extend_from_slice(b"0\r\n\r\n");
        }
        Ok(keep_alive)
    }

    /// Reads a request body whole (bounded by `max` and by the header-read timeout per read).
    async fn read_body(&mut self, framing: ReqFraming, max: usize) -> Result<Bytes, BodyFail> {
        let timeout = self.limits.header_read_timeout;
        match framing {
            ReqFraming::None | ReqFraming::Length(0) => Ok(Bytes::new()),
            ReqFraming::Length(n) => {
                let n = n as usize; // checked against max by the caller
                while self.buf.len() < n {
                    self.fill(timeout).await?;
                }
                Ok(self.buf.split_to(n).freeze())
            }
            ReqFraming::Chunked => {
                let mut body = BytesMut::new();
                loop {
                    // The size line.
                    let (size, used) = loop {
                        match httparse::parse_chunk_size(&self.buf) {
                            Ok(httparse::Status::Complete((used, size))) => break (size, used),
                            Ok(httparse::Status::Partial) => {
                                if self.buf.len() > 4096 {
                                    return Err(BodyFail::Bad("chunk size line too long"));
                                }
                                self.fill(timeout).await?;
                            }
                            Err(_) => return Err(BodyFail::Bad("malformed chunk size")),
                        }
                    };
                    self.buf.advance(used);
                    if size == 0 {
                        break;
                    }
                    if body.len() as u64 + size > max as u64 {
                        return Err(BodyFail::TooLarge);
                    }
                    let size = size as usize;
                    while self.buf.len() < size + 2 {
                        self.fill(timeout).await?;
                    }
                    body.extend_from_slice(&self.buf[..size]);
                    if &self.buf[size..size + 2] != b"\r\n" {
                        return Err(BodyFail::Bad("chunk data not followed by CRLF"));
                    }
                    self.buf.advance(size + 2);
                }
                // Trailer fields (discarded) up to the empty line.
                loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        self.buf.advance(i + 2);
                        if empty {
                            break;
                        }
                        continue;
                    }
                    if self.buf.len() > self.limits.max_header_bytes {
                        return Err(BodyFail::Bad("trailer section too large"));
                    }
                    self.fill(timeout).await?;
                }
                Ok(body.freeze())
            }
        }
    }

    /// Reads at least one more byte within `timeout`.
    async fn fill(&mut self, timeout: Duration) -> Result<(), BodyFail> {
        self.buf.reserve(READ_BUF_BYTES);
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            _ => Err(BodyFail::Gone),
        }
    }
}

enum BodyFail {
    TooLarge,
    Bad(&'static str),
    Gone,
}

enum RespFraming {
    None,
    Length(u64),
    AddLength(u64),
    Chunked,
    Close,
}

enum Parsed {
    /// Answered on the fast path, or refused (then `keep_alive` is false).
    Answered { keep_alive: bool },
    /// For the service (boxed: the common case, a fast answer, should not move 250 bytes around).
    Slow(Box<Owned>),
    /// The head is not complete yet.
    Partial,
}

fn write_hex(buf: &mut BytesMut, mut n: usize) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Whether a request keeps its connection: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with
/// `Connection: keep-alive`.
fn keep_alive(version: Version, headers: &[httparse::Header<'_>]) -> bool {
    let mut close = false;
    let mut keep = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    !close && (version == Version::HTTP_11 || keep)
}

fn connection_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Takes a head the fast path did not answer into an owned request, or says why it is refused.
fn own(head: &Head<'_>) -> Result<Parsed, &'static str> {
    let method = Method::from_bytes(head.method.as_bytes()).map_err(|_| "invalid method")?;
    let uri: Uri = head.target.parse().map_err(|_| "invalid request target")?;
    let mut map = HeaderMap::with_capacity(head.headers.len());
    let mut lengths: Option<u64> = None;
    let mut te: Option<bool> = None; // Some(chunked last)
    let mut expect_continue = false;
    for h in head.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| "invalid header value")?;
        if name == CONTENT_LENGTH {
            for part in h.value.split(|&b| b == b',') {
                let s =
                    std::str::from_utf8(part.trim_ascii()).map_err(|_| "invalid Content-Length")?;
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("invalid Content-Length");
                }
                let n: u64 = s.parse().map_err(|_| "invalid Content-Length")?;
                match lengths {
                    Some(m) if m != n => return Err("conflicting Content-Length values"),
                    _ => lengths = Some(n),
                }
            }
        } else if name == TRANSFER_ENCODING {
            let last = h
                .value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|t| !t.is_empty())
                .unwrap_or(b"");
            te = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::EXPECT {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err("unsupported Expect");
            }
        }
        map.append(name, value);
    }
    let framing = match (te, lengths) {
        (Some(_), Some(_)) => return Err("both Transfer-Encoding and Content-Length"),
        (Some(_), None) if head.version == Version::HTTP_10 => {
            return Err("Transfer-Encoding in an HTTP/1.0 request");
        }
        (Some(true), None) => ReqFraming::Chunked,
        (Some(false), None) => return Err("the final transfer coding must be chunked"),
        (None, Some(n)) => ReqFraming::Length(n),
        (None, None) => ReqFraming::None,
    };
    let head_only = method == Method::HEAD;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = map;
    Ok(Parsed::Slow(Box::new(Owned {
        req,
        framing,
        expect_continue,
        keep_alive: head.keep_alive,
        head_only,
    })))
}

/// The bytes read before the HTTP/2 preface was recognised, then the stream.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let h = |v: &'static str| {
            [httparse::Header {
                name: "Connection",
                value: v.as_bytes(),
            }]
        };
        assert!(keep_alive(Version::HTTP_11, &[]));
        assert!(!keep_alive(Version::HTTP_10, &[]));
        assert!(!keep_alive(Version::HTTP_11, &h("close")));
        assert!(!keep_alive(Version::HTTP_11, &h("Keep-Alive, Close")));
        assert!(keep_alive(Version::HTTP_10, &h("keep-alive")));
    }

    #[test]
    fn hex_and_digits() {
        let mut b = BytesMut::new();
        write_hex(&mut b, 0);
        b.extend_from_slice(b" ");
        write_hex(&mut b, 0x1a2f);
        assert_eq!(&b[..], b"0 1a2f");
        assert_eq!(itoa_buf(0).as_bytes(), b"0");
        assert_eq!(
            itoa_buf(18_446_744_073_709_551_615).as_bytes(),
            b"18446744073709551615"
        );
    }

    #[test]
    fn framing_errors_are_refused() {
        let head = |hs: &'static [httparse::Header<'static>]| Head {
            method: "POST",
            target: "/x",
            version: Version::HTTP_11,
            headers: hs,
            keep_alive: true,
        };
        let refused = |hs: &'static [httparse::Header<'static>]| own(&head(hs)).err();
        const CL5: httparse::Header<'static> = httparse::Header {
            name: "Content-Length",
            value: b"5",
        };
        const CL6: httparse::Header<'static> = httparse::Header {
            name: "Content-Length",
            value: b"6",
        };
        const TE: httparse::Header<'static> = httparse::Header {
            name: "Transfer-Encoding",
            value: b"chunked",
        };
        const TE_GZIP: httparse::Header<'static> = httparse::Header {
            name: "Transfer-Encoding",
            value: b"chunked, gzip",
        };
        const CL_LIST: httparse::Header<'static> = httparse::Header {
            name: "Content-Length",
            value: b"5, 5",
        };
        const CL_SIGN: httparse::Header<'static> = httparse::Header {
            name: "Content-Length",
            value: b"+5",
        };
        assert!(refused(&[CL5, CL6]).is_some());
        assert!(refused(&[CL5, TE]).is_some());
        assert!(refused(&[TE_GZIP]).is_some());
        assert!(refused(&[CL_SIGN]).is_some());
        assert!(refused(&[CL_LIST]).is_none());
        assert!(refused(&[TE]).is_none());
        let Ok(Parsed::Slow(o)) = own(&head(&[CL5])) else {
            panic!("a POST with Content-Length: 5 is not for the service");
        };
        assert!(matches!(o.framing, ReqFraming::Length(5)));
    }
}
