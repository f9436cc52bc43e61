//! The HTTP accept loop every reference server shares.
//!
//! One port speaks HTTP/1.1 (keep-alive) and cleartext HTTP/2 with prior
//! knowledge; hyper-util's `auto` builder tells them apart by the connection
//! preface. Everything is bounded: concurrent connections (a semaphore; while
//! it is exhausted we stop calling `accept` and the kernel backlog holds the
//! rest), header bytes, the wait for the first byte and for each request head,
//! HTTP/2 streams per connection, and the drain on shutdown.
//!
//! The per-request path adds nothing to hyper's own work: connection metrics
//! are recorded per connection, never per request, because this loop is the
//! CPU floor every benchmark result is calibrated against.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::CommonError;
use crate::shutdown::Shutdown;

/// Maximum concurrent HTTP/2 streams per connection. Load generators open many
/// streams per connection; this bounds the per-connection work a single
/// client can queue.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

/// hyper refuses an HTTP/1 read buffer below 8 KiB, so smaller header limits
/// are raised to this for HTTP/1 (HTTP/2 honours the exact value).
pub const MIN_H1_BUF_BYTES: usize = 8 * 1024;

/// How long to back off when `accept` fails for lack of resources (EMFILE and
/// friends): retrying at once would spin a core while nothing can change.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Resource limits for [`serve_http`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; further clients wait in the kernel backlog.
    pub max_connections: usize,
    /// Maximum request head size: HTTP/1 read buffer (at least
    /// [`MIN_H1_BUF_BYTES`]) and HTTP/2 header list size.
    pub max_header_bytes: usize,
    /// Maximum request body size for handlers using [`read_body_limited`].
    pub max_body_bytes: usize,
    /// How long a connection may take to send its first byte, and how long an
    /// HTTP/1 connection may wait for (and read) each request head. Note that
    /// hyper starts this timer as soon as it waits for the next request, so it
    /// also closes HTTP/1 keep-alive connections idle for longer than this.
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight requests get to finish before the
    /// remaining connections are dropped.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` fires, then drains.
///
/// `service` is a hyper [`Service`] (e.g. `hyper::service::service_fn(..)` or
/// a type implementing it); it is cloned once per connection. Spawns one tokio
/// task per connection (and hyper spawns one per HTTP/2 stream), so it works
/// on `current_thread` and `multi_thread` runtimes alike.
///
/// Records the gauge `http_connections_active` and the counter
/// `http_connections_total` through the `metrics` facade; the handles are
/// resolved once per call, so install the recorder before calling this.
///
/// Returns `Ok` after a drain (complete or cut off at `drain_timeout`), or an
/// error (also after draining) if `accept` failed in a way retrying cannot
/// fix.
pub async fn serve_http<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: Shutdown,
) -> Result<(), CommonError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let metrics = ConnMetrics {
        active: metrics::gauge!("http_connections_active"),
        total: metrics::counter!("http_connections_total"),
    };
    serve_inner(listener, service, limits, shutdown, Some(metrics)).await
}

pub(crate) struct ConnMetrics {
    pub(crate) active: metrics::Gauge,
    pub(crate) total: metrics::Counter,
}

/// The accept loop; `metrics` is `None` for the admin listener so scrapes do
/// not count themselves as benchmark connections.
pub(crate) async fn serve_inner<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    mut shutdown: Shutdown,
    metrics: Option<ConnMetrics>,
) -> Result<(), CommonError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let local = listener.local_addr().ok();
    let builder = Arc::new(builder(&limits));
    // A zero limit would deadlock the loop; one connection is the least we serve.
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // Owning the connection tasks lets us abort the stragglers after
    // drain_timeout, so nothing outlives this function.
    let mut tasks = JoinSet::new();
    let first_byte_timeout = limits.header_read_timeout;
    // A broken listener ends accepting, but in-flight requests still drain.
    let mut fatal: Option<CommonError> = None;

    loop {
        // Reap finished connection tasks so the set only holds live ones
        // (plus those finished since the last accept).
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

        let guard = ConnGuard::new(metrics.as_ref(), permit);
        let builder = Arc::clone(&builder);
        let service = service.clone();
        let watcher = graceful.watcher();
        let mut conn_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _guard = guard;
            // The peek is usually ready at once (clients send right after
            // connecting), so the shutdown branch is rarely even polled.
            let has_data = tokio::select! {
                biased;
                ok = first_byte(&stream, first_byte_timeout) => ok,
                () = conn_shutdown.wait() => false,
            };
            if has_data {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                // Errors here are client-side (reset, malformed request,
                // header timeout); the connection is gone either way.
                let _ = watcher.watch(conn).await;
            }
        });
    }

    // Stop accepting before draining so the port refuses new clients.
    drop(listener);
    // Graceful: HTTP/1 connections close after their in-flight response,
    // HTTP/2 ones send GOAWAY and finish open streams.
    let drained = tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await;
    if drained.is_err() {
        tasks.abort_all();
    }
    // Either everything finished or was just aborted; this returns promptly.
    while tasks.join_next().await.is_some() {}
    fatal.map_or(Ok(()), Err)
}

/// What [`accept_next`] got.
pub(crate) enum Accepted {
    /// A connection (Nagle off) with its permit.
    Conn(TcpStream, OwnedSemaphorePermit),
    /// A per-connection accept error: try again.
    Retry,
    /// Shutdown fired: stop accepting.
    Shutdown,
    /// The listener is broken: stop accepting, report this after the drain.
    Fatal(CommonError),
}

/// The accept step both accept loops share: take a permit first (while all are out, new connections wait in the
/// kernel backlog instead of being accepted and dropped), then accept; shutdown wins either wait.
pub(crate) async fn accept_next(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &mut Shutdown,
    local: Option<SocketAddr>,
) -> Accepted {
    let permit = tokio::select! {
        biased;
        () = shutdown.wait() => return Accepted::Shutdown,
        p = Arc::clone(permits).acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return Accepted::Shutdown, // unreachable: the semaphore is never closed
        },
    };
    tokio::select! {
        biased;
        () = shutdown.wait() => Accepted::Shutdown,
        r = listener.accept() => match r {
            Ok((stream, _peer)) => {
                // Small responses must not wait for Nagle; failure only costs latency.
                let _ = stream.set_nodelay(true);
                Accepted::Conn(stream, permit)
            }
            Err(e) => match accept_error(e, local).await {
                Ok(()) => Accepted::Retry,
                Err(e) => Accepted::Fatal(e),
            },
        },
    }
}

/// Per-connection bookkeeping released when the connection task ends, even
/// when it is aborted.
pub(crate) struct ConnGuard {
    active: Option<metrics::Gauge>,
    _permit: OwnedSemaphorePermit,
}

impl ConnGuard {
    pub(crate) fn new(metrics: Option<&ConnMetrics>, permit: OwnedSemaphorePermit) -> Self {
        let active = metrics.map(|m| {
            m.total.increment(1);
            m.active.increment(1.0);
            m.active.clone()
        });
        ConnGuard {
            active,
            _permit: permit,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.active {
            g.decrement(1.0);
        }
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_H1_BUF_BYTES))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    b
}

/// Waits for the connection's first byte. hyper-util's protocol sniffing has
/// no timeout of its own, so without this a client that connects and stays
/// silent would hold a connection permit until shutdown. Returns false on
/// timeout, EOF or error. Costs one `recv(MSG_PEEK)` per connection; the timer
/// is only armed if no data has arrived yet.
pub(crate) async fn first_byte(stream: &TcpStream, timeout: Duration) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut probe)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Classifies an accept error: Ok(()) to retry (after a backoff when the
/// process is out of resources), Err for a broken listener.
async fn accept_error(e: io::Error, local: Option<SocketAddr>) -> Result<(), CommonError> {
    match e.kind() {
        // The client gave up between SYN and accept: not our problem.
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => return Ok(()),
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            // Out of descriptors or memory: closing connections will free
            // some, so wait rather than spin or die.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            Ok(())
        }
        Some(libc::EPROTO | libc::EPERM | libc::ENETDOWN | libc::ENOPROTOOPT)
        | Some(libc::EHOSTDOWN | libc::ENONET | libc::EHOSTUNREACH | libc::EOPNOTSUPP)
        | Some(libc::ENETUNREACH) => Ok(()), // per-connection errors accept(2) may pass on
        _ => Err(CommonError::Io {
            what: match local {
                Some(a) => format!("accept on {a}"),
                None => "accept".to_string(),
            },
            source: e,
        }),
    }
}

/// Why [`read_body_limited`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the limit (by its content-length or by the
    /// bytes received so far); answer 413.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Reading the body failed (client reset, malformed chunking, ...).
    #[error("reading request body: {0}")]
    Read(#[source] Box<dyn StdError + Send + Sync>),
}

/// Collects a request body of at most `max_body_bytes` bytes.
///
/// Fails fast with [`BodyError::TooLarge`] when the declared length is over
/// the limit, and stops reading as soon as the received bytes exceed it, so a
/// large upload never gets buffered. Works for [`Incoming`] and any other body
/// with `Bytes` data (tests use `Full`). A single-chunk body is returned
/// without copying.
pub async fn read_body_limited<B>(body: B, max_body_bytes: usize) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let too_large = BodyError::TooLarge {
        limit: max_body_bytes,
    };
    if body.size_hint().lower() > max_body_bytes as u64 {
        return Err(too_large);
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry no body bytes
        };
        len = len.saturating_add(data.len());
        if len > max_body_bytes {
            return Err(too_large);
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}
