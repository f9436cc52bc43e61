//! The request handler.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use refbench_common::http::{BodyError, read_body_limited};
use refbench_common::pacer::Pacer;
use refbench_common::timer::sleep_until_precise;

use crate::{DelayModel, StallModel};

/// Largest accepted response body (16 MiB): the floor measures per-request
/// overhead, not bulk transfer, and every response clones one prebuilt buffer.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Default limit on request bodies the floor reads (and discards).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// What the floor answers and how late.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    /// Response body size: 2 gives "ok", anything else that many 'x' bytes
    /// (clamped to [`MAX_BODY_BYTES`]; the CLI rejects larger values).
    pub body_bytes: usize,
    /// Per-request injected delay; `None` for the lean floor path.
    pub delay: Option<DelayModel>,
    /// Periodic stall windows; `None` for the lean floor path.
    pub stall: Option<StallModel>,
    /// Record every delayed or stalled response's realized hold (arrival to release, as the server's clock saw
    /// it) in a histogram, readable with [`FloorApp::holds`]. Ignored on the lean path, which holds nothing.
    pub record_holds: bool,
}

impl Default for FloorConfig {
    fn default() -> Self {
        FloorConfig {
            body_bytes: 2,
            delay: None,
            stall: None,
            record_holds: false,
        }
    }
}

/// Builds the handler. The stall periods count from this call, and the
/// metrics handles are resolved here: install the recorder first (see
/// `refbench_common::admin::metrics_handle`) or the counters are no-ops.
pub fn app(config: FloorConfig) -> FloorApp {
    let body = match config.body_bytes {
        2 => Bytes::from_static(b"ok"),
        n => Bytes::from(vec![b'x'; n.min(MAX_BODY_BYTES)]),
    };
    let holds = (config.record_holds && (config.delay.is_some() || config.stall.is_some()))
        .then(|| Mutex::new(new_holds_histogram()));
    FloorApp {
        inner: Arc::new(Inner {
            body,
            holds,
            delay: config.delay,
            stall: config.stall.filter(|s| s.hold_ms > 0),
            start: Instant::now(),
            next_k: AtomicU64::new(0),
            requests: metrics::counter!("floor_requests_total"),
            delayed: metrics::counter!("floor_delayed_requests_total"),
            stalled: metrics::counter!("floor_stalled_requests_total"),
            late_250us: metrics::counter!("floor_release_late_over_250us_total"),
            late_1ms: metrics::counter!("floor_release_late_over_1ms_total"),
        }),
        max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
        pacer: None,
    }
}

/// The floor handler; cheap to clone (one `Arc`). Implements hyper's
/// [`Service`], so it can be passed straight to
/// `refbench_common::http::serve_http`.
#[derive(Debug, Clone)]
pub struct FloorApp {
    inner: Arc<Inner>,
    max_request_body_bytes: usize,
    /// Timerfd sleeps on the serving runtime; without one (tests driving `handle` directly) the shared timer
    /// thread is used, which costs an extra thread hop per delayed response.
    pacer: Option<Pacer>,
}

#[derive(Debug)]
struct Inner {
    /// Prebuilt once; each response clones it (a refcount bump, or nothing
    /// for the static "ok").
    body: Bytes,
    delay: Option<DelayModel>,
    stall: Option<StallModel>,
    start: Instant,
    /// Request index k for [`DelayModel::delay_for`].
    next_k: AtomicU64,
    requests: metrics::Counter,
    delayed: metrics::Counter,
    stalled: metrics::Counter,
    /// Responses released more than 250 µs / 1 ms after their intended release instant. The wake-up of a timer
    /// is the server's own hiccup meter: a response released late was delayed by this host (a descheduled
    /// thread, a frozen VM), not by the model, so a check of the instrument can tell a disturbed run apart.
    late_250us: metrics::Counter,
    late_1ms: metrics::Counter,
    /// Realized holds in µs, when asked for. A lock per delayed response is cheap next to the timer wait, and
    /// the lean path never gets here.
    holds: Option<Mutex<Histogram<u64>>>,
}

/// Lowest and highest recorded hold (1 µs to 60 s) and the precision (3 significant digits): the bounds of
/// loadgen's latency histograms, so the two compare bucket for bucket.
pub const HOLDS_LOWEST_US: u64 = 1;
/// See [`HOLDS_LOWEST_US`].
pub const HOLDS_HIGHEST_US: u64 = 60_000_000;

fn new_holds_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HOLDS_LOWEST_US, HOLDS_HIGHEST_US, 3)
        .expect("static bounds are valid")
}

impl FloorApp {
    /// Sets the limit on request bodies (read and discarded so HTTP/1
    /// connections stay reusable); larger ones get 413.
    pub fn with_max_request_body_bytes(mut self, max: usize) -> Self {
        self.max_request_body_bytes = max;
        self
    }

    /// Sleeps through `pacer` (a timerfd on the serving runtime) instead of the shared timer thread.
    pub fn with_pacer(mut self, pacer: Pacer) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// Whether delayed responses wait on a runtime-local timerfd.
    pub fn has_pacer(&self) -> bool {
        self.pacer.is_some()
    }

    /// When the stall periods started (the `app()` call).
    pub fn started_at(&self) -> Instant {
        self.inner.start
    }

    /// How many delay indices have been handed out, i.e. the k of the next
    /// delayed request. Requests `0..k` got `delay.delay_for(0..k)`.
    pub fn delays_issued(&self) -> u64 {
        self.inner.next_k.load(Ordering::Relaxed)
    }

    /// A copy of the realized holds so far, when [`FloorConfig::record_holds`] was set on a delayed or stalling
    /// floor: the distribution the server actually injected, timer lateness included.
    pub fn holds(&self) -> Option<Histogram<u64>> {
        self.inner
            .holds
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Whether requests bypass the timer entirely.
    pub fn is_lean(&self) -> bool {
        self.inner.delay.is_none() && self.inner.stall.is_none()
    }

    /// Handles one request: reads and discards its body (413 if over the
    /// limit, 400 if unreadable), waits out the delay/stall if configured,
    /// then answers 200 with the configured body.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let arrival = Instant::now();
        let inner = &*self.inner;
        inner.requests.increment(1);
        let body = req.into_body();
        if !body.is_end_stream() {
            match read_body_limited(body, self.max_request_body_bytes).await {
                Ok(_) => {}
                Err(e @ BodyError::TooLarge { .. }) => {
                    return error_response(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
                }
                Err(e @ BodyError::Read(_)) => {
                    return error_response(StatusCode::BAD_REQUEST, e.to_string());
                }
            }
        }
        if let Some(release) = self.release_time(arrival) {
            match &self.pacer {
                Some(p) => p.sleep_until(release).await,
                None => sleep_until_precise(release).await,
            }
            let now = Instant::now();
            let late = now.saturating_duration_since(release);
            if late > Duration::from_micros(250) {
                inner.late_250us.increment(1);
                if late > Duration::from_millis(1) {
                    inner.late_1ms.increment(1);
                }
            }
            if let Some(h) = &inner.holds {
                let us = (now.saturating_duration_since(arrival).as_micros() as u64)
                    .clamp(HOLDS_LOWEST_US, HOLDS_HIGHEST_US);
                // Cannot fail: the value is clamped into the histogram's bounds.
                let _ = h.lock().unwrap_or_else(PoisonError::into_inner).record(us);
            }
        }
        self.ok_response()
    }

    /// The instant the response may go out, or `None` when it may go now.
    fn release_time(&self, arrival: Instant) -> Option<Instant> {
        let inner = &*self.inner;
        if self.is_lean() {
            return None;
        }
        let mut ready = arrival;
        if let Some(d) = &inner.delay {
            let k = inner.next_k.fetch_add(1, Ordering::Relaxed);
            let delay = d.delay_for(k);
            if delay > Duration::ZERO {
                inner.delayed.increment(1);
            }
            ready += delay;
        }
        let mut release = ready;
        if let Some(s) = &inner.stall {
            release = s.release_at(inner.start, ready);
            if release > ready {
                inner.stalled.increment(1);
            }
        }
        Some(release)
    }

    fn ok_response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.inner.body.clone()));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}

fn error_response(status: StatusCode, reason: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reason + "\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

impl Service<Request<Incoming>> for FloorApp {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = FloorFuture;

    fn call(&self, req: Request<Incoming>) -> FloorFuture {
        // The floor path: no body, no delay, no stall. Answer without
        // boxing a future or touching a clock.
        if self.is_lean() && req.body().is_end_stream() {
            self.inner.requests.increment(1);
            return FloorFuture(FutureKind::Ready(std::future::ready(
                Ok(self.ok_response()),
            )));
        }
        let app = self.clone();
        FloorFuture(FutureKind::Slow(Box::pin(async move {
            Ok(app.handle(req).await)
        })))
    }
}

type SlowFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// The response future of [`FloorApp`]'s [`Service`] impl: immediately ready
/// on the lean path, boxed only when it must wait.
pub struct FloorFuture(FutureKind);

enum FutureKind {
    Ready(std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>),
    Slow(SlowFuture),
}

impl Future for FloorFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            FutureKind::Ready(r) => Pin::new(r).poll(cx),
            FutureKind::Slow(f) => f.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for FloorFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            FutureKind::Ready(_) => "FloorFuture::Ready",
            FutureKind::Slow(_) => "FloorFuture::Slow",
        })
    }
}
