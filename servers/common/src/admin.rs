//! The admin listener: Prometheus `/metrics` and `/healthz`.
//!
//! It runs on its own port so scraping never shares connection limits or
//! accept queues with the traffic being measured.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::CommonError;
use crate::http::{Limits, serve_inner};
use crate::shutdown::Shutdown;

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How often the exporter's upkeep (histogram bucket rotation, idle metric
/// cleanup) runs while the admin server is up; without it histogram memory
/// grows until the next scrape.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The exporter's upkeep on its own thread, every [`UPKEEP_INTERVAL`], until dropped.
///
/// Not a tokio interval: a pending timer on the serving runtime makes every `epoll_wait` arm a kernel timer, once
/// per request on a fast server (see `crate::reaper`).
#[derive(Debug)]
pub struct Upkeep {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upkeep {
    /// Starts the thread.
    pub fn start(handle: PrometheusHandle) -> Result<Upkeep, CommonError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("refbench-upkeep".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(UPKEEP_INTERVAL);
                    if !flag.load(Ordering::Acquire) {
                        handle.run_upkeep();
                    }
                }
            })
            .map_err(|source| CommonError::Io {
                what: "starting the metrics upkeep thread".into(),
                source,
            })?;
        Ok(Upkeep {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Installs the Prometheus recorder as the global `metrics` recorder on the
/// first call and returns a clone of its handle on every call.
///
/// Fails if some other recorder was installed globally first.
pub fn metrics_handle() -> Result<PrometheusHandle, CommonError> {
    // A Mutex rather than OnceLock: installing is fallible and must happen at
    // most once even when two threads race the first call.
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| CommonError::Metrics(e.to_string()))?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Limits for the admin listener: a scraper and a health checker need only a
/// handful of small connections.
pub fn admin_limits() -> Limits {
    Limits {
        max_connections: 64,
        max_header_bytes: 8 * 1024,
        max_body_bytes: 0,
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(1),
    }
}

/// Routes one admin request; the whole admin API, usable without a socket.
///
/// `GET /metrics` renders `handle`; `GET /healthz` answers "ok"; a known path
/// with another method is 405 (with `Allow: GET`); anything else is 404.
pub fn route(handle: &PrometheusHandle, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /metrics and /healthz\n",
        );
    }
    if method != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let mut r = Response::new(Full::new(Bytes::from(handle.render())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serves [`route`] over HTTP/1.1 and h2c with [`admin_limits`] until
/// `shutdown` fires, running the exporter's upkeep meanwhile. Admin
/// connections are not counted in `http_connections_*`.
pub async fn serve_admin(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), CommonError> {
    // Stops (and is joined) when this function returns.
    let _upkeep = Upkeep::start(handle.clone())?;
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let resp = route(&handle, req.method(), req.uri().path());
        std::future::ready(Ok::<_, Infallible>(resp))
    });
    serve_inner(listener, service, admin_limits(), shutdown, None).await
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn routes() {
        let handle = metrics_handle().unwrap();
        metrics::counter!("admin_route_test_total").increment(3);

        let r = route(&handle, &Method::GET, "/metrics");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], METRICS_CONTENT_TYPE);
        let text = body(r).await;
        assert!(text.contains("admin_route_test_total 3"), "{text}");

        let r = route(&handle, &Method::GET, "/healthz");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ok");

        let r = route(&handle, &Method::POST, "/healthz");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET");

        let r = route(&handle, &Method::GET, "/nope");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body(r).await.contains("/metrics"));
    }

    #[test]
    fn handle_is_installed_once() {
        let a = metrics_handle().unwrap();
        let b = metrics_handle().unwrap();
        metrics::counter!("admin_once_test_total").increment(1);
        // Both handles read the same (global) recorder.
        assert!(a.render().contains("admin_once_test_total 1"));
        assert!(b.render().contains("admin_once_test_total 1"));
    }
}
